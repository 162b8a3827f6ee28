//! Command-line arguments as the user typed them (clap). `cli::mod` turns them into engine options.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

pub const EXIT_CODES: &str = "Exit codes:
  0  success
  1  a node failed (or a data check with severity \"error\"), also in a partial run
     (items left out by on_item_error = \"skip\", the rest written)
  2  the flow is invalid, or the command line is wrong (nothing was run)
  3  cache, I/O or materialization error

`flowrun FLOW.toml` is short for `flowrun run FLOW.toml`.
Set NO_COLOR to disable colours; progress bars are only drawn on a terminal.";

/// Declarative, cached, parallel dataflows that build a geospatial lakehouse.
#[derive(Parser, Debug)]
#[command(name = "flowrun", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More output: -v lists every node run, -vv adds cache keys and input identities.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// The result cache.
    #[arg(long, global = true, env = "FLOWRUN_CACHE_DIR", default_value = ".flowrun/cache")]
    pub cache_dir: PathBuf,
    /// When another flowrun process holds the cache or the lake catalog: fail at once (exit 3) instead of
    /// waiting for it (and saying so).
    #[arg(long, global = true)]
    pub no_wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a flow (the default command).
    Run(RunArgs),
    /// Say which nodes would run and why, without running anything (same as `run --dry-run`).
    Explain(FlowArgs),
    /// Draw the flow as Graphviz DOT or Mermaid.
    Graph(GraphArgs),
    /// List the registered node functions with their signatures and docs.
    Nodes(NodesArgs),
    /// Inspect or clean the result cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// List recent runs.
    Runs(RunsArgs),
    /// Maintain the flow's DuckLake.
    #[command(subcommand)]
    Lake(LakeCommand),
}

#[derive(Subcommand, Debug)]
pub enum LakeCommand {
    /// Delete the data files in the lake's data path that no snapshot references and that are older than
    /// --older-than-hours (a killed commit's), with DuckLake's `ducklake_delete_orphaned_files`. The data
    /// path must be this lake's alone: another lake's files there would be deleted too.
    Gc {
        #[command(flatten)]
        flow: FlowArgs,
        /// Only files last modified this many hours ago or earlier (a running commit's files are newer).
        #[arg(long, default_value_t = 24)]
        older_than_hours: u64,
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct FlowArgs {
    /// The flow file (flows/*.toml).
    pub flow: PathBuf,
    /// Override a [config] value: --set key=value (value parsed as TOML, else a string).
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Give an [inputs] value: --input name=value (relative paths are relative to the current directory).
    #[arg(long, value_name = "NAME=VALUE")]
    pub input: Vec<String>,
    /// Build only these nodes (and what they need) instead of the flow's outputs; only their
    /// [materialize] sections are written (dbt's --select).
    #[arg(long, value_name = "NODE")]
    pub output: Vec<String>,
    /// Build only the nodes tagged KEY=VALUE (and what they need), with any --output; repeated: nodes
    /// with any of the tags. A node's tags are its function's, overridden by the flow file's.
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Vec<String>,
    /// Take every dataset from this directory, HTTP base or s3:// location (`<mirror>/<dataset>/<files>`); short for
    /// --input mirror=...
    #[arg(long, value_name = "DIR|URL")]
    pub mirror: Option<String>,
    /// Run these nodes even if their results are cached.
    #[arg(long, value_name = "NODE")]
    pub recompute: Vec<String>,
    /// Do not read or write the cache (every node runs; nothing is stored).
    #[arg(long)]
    pub no_cache: bool,
    /// Override a [lake] setting: --lake catalog=PATH, --lake data_path=DIR (relative to the current
    /// directory).
    #[arg(long, value_name = "KEY=VALUE")]
    pub lake: Vec<String>,
    /// Use the flow's [targets.NAME]: its lake, storage and cache settings over the file's own (dbt's
    /// --target). Without it, the file's own settings (the local default).
    #[arg(long, value_name = "NAME", env = "FLOWRUN_TARGET")]
    pub target: Option<String>,
    /// Share results through this remote cache (s3://bucket/prefix), read-through and write-through;
    /// overrides [cache] remote.
    #[arg(long, value_name = "URL")]
    pub remote_cache: Option<String>,
    /// Run only shard I of N (0-based, "I/N"): this process computes every N-th item of each fan-out,
    /// starting at I, shares the results through the remote cache and stops before the fan-ins; a run
    /// without --shard then finds every item in the cache and writes the lake once.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub flow: FlowArgs,
    /// Worker threads (default: the number of CPUs; 1 runs sequentially). The nodes' own parallel loops run
    /// on the same threads; DuckDB (SQL nodes, the lake commit) and the GeoParquet writer get as many.
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Stop starting nodes after the first failure.
    #[arg(long)]
    pub fail_fast: bool,
    /// Say what would run, run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    #[command(flatten)]
    pub flow: FlowArgs,
    /// Graphviz DOT (the default).
    #[arg(long, conflicts_with = "mermaid")]
    pub dot: bool,
    /// Mermaid flowchart.
    #[arg(long)]
    pub mermaid: bool,
    /// Colour nodes by what happened in the flow's last run (ran, cached, failed, skipped).
    #[arg(long)]
    pub last_run: bool,
}

#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Only nodes whose name or module contains this.
    pub filter: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached results, newest first.
    Ls,
    /// Remove results no flow's latest run uses (older than --keep-days), then unreferenced blobs.
    Gc {
        /// Keep superseded results younger than this many days.
        #[arg(long, default_value_t = 7)]
        keep_days: u64,
    },
    /// Remove everything.
    Clear,
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    /// How many runs.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
    /// Show the node runs of this run id.
    #[arg(long)]
    pub run: Option<String>,
}

/// `flowrun FLOW.toml ...` means `flowrun run FLOW.toml ...`.
pub fn with_default_command(mut args: Vec<String>) -> Vec<String> {
    // the first word that is not an option (nor the value of --cache-dir) and not a command
    if let Some(i) = args.iter().skip(1).position(|a| !a.starts_with('-')).map(|i| i + 1)
        && !(i > 1 && args[i - 1] == "--cache-dir")
        && args[i] != "help"
        && Cli::command().find_subcommand(&args[i]).is_none()
    {
        args.insert(1, "run".to_string());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flow_path_alone_means_run() {
        assert_eq!(with_default_command(v("flowrun flows/a.toml -j 2")), v("flowrun run flows/a.toml -j 2"));
        assert_eq!(with_default_command(v("flowrun -v flows/a.toml")), v("flowrun run -v flows/a.toml"));
        assert_eq!(with_default_command(v("flowrun graph flows/a.toml")), v("flowrun graph flows/a.toml"));
        assert_eq!(with_default_command(v("flowrun --cache-dir x nodes")), v("flowrun --cache-dir x nodes"));
        assert_eq!(with_default_command(v("flowrun --version")), v("flowrun --version"));
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
