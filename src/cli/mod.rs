//! The command-line interface. [`main`] is the one place where outcomes become exit codes and errors are
//! printed (once, with their chain).

mod args;
mod interrupt;
mod progress;
mod report;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use flowrun_cache::Store;
use flowrun_engine::flow::{BuildOptions, Diagnostic, Diagnostics};
use flowrun_engine::schedule::{self, RunOptions, RunStatus};
use flowrun_engine::{Flow, Registry, Status};

use args::{CacheCommand, Cli, Command, FlowArgs, LakeCommand, RunArgs};

/// How a command ended.
pub enum Outcome {
    Ok,
    /// A node failed: exit 1.
    Failed,
    /// Stopped by Ctrl-C: exit 130, as shells expect.
    Interrupted,
}

/// Errors that end a command early.
pub enum CliError {
    /// The flow or a command-line argument is invalid: exit 2.
    Invalid(Diagnostics),
    /// Anything else (cache, I/O, materialization): exit 3.
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::Other(e.into())
    }
}

pub struct Ui {
    pub verbose: u8,
    pub quiet: bool,
    pub json: bool,
    pub color: bool,
}

pub fn main() -> ExitCode {
    // a wrong command line exits 2 (--help and --version 0)
    let cli = Cli::parse_from(args::with_default_command(std::env::args().collect()));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = !no_color && !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let ui = Ui { verbose: cli.verbose, quiet: cli.quiet, json: cli.json, color };
    match dispatch(&cli, &ui) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(CliError::Invalid(d)) => {
            if ui.json {
                println!("{}", report::diagnostics_json(&d));
            }
            eprint!("{}", d.render(ui.color));
            ExitCode::from(2)
        }
        // a Ctrl-C that ended a wait for a lock, or the run before any node
        Err(CliError::Other(e)) if interrupt::interrupted() => {
            if ui.json {
                println!("{}", serde_json::json!({"status": "interrupted", "error": format!("{e:#}")}));
            }
            eprintln!("interrupted: {e:#}");
            ExitCode::from(130)
        }
        Err(CliError::Other(e)) => {
            if ui.json {
                let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
                println!("{}", serde_json::json!({"status": "error", "error": e.to_string(), "causes": causes}));
            }
            eprintln!("{}: {e}", report::paint(&ui, "1;31", "error"));
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(3)
        }
    }
}

fn dispatch(cli: &Cli, ui: &Ui) -> Result<Outcome, CliError> {
    match &cli.command {
        Command::Run(a) => return run(cli, ui, a),
        Command::Explain(f) => {
            return run(cli, ui, &RunArgs { flow: f.clone(), jobs: Some(1), fail_fast: false, dry_run: true });
        }
        Command::Graph(g) => {
            let (flow, _) = build(&g.flow)?;
            let overlay = g.last_run.then(|| last_run_overlay(cli, &flow)).transpose()?;
            let draw = if g.mermaid { flowrun_engine::graph::mermaid } else { flowrun_engine::graph::dot };
            print!("{}", draw(&flow, overlay.as_ref()));
        }
        Command::Nodes(n) => report::print_nodes(Registry::global(), n.filter.as_deref(), ui),
        Command::Cache(c) => {
            // `gc` and `clear` take their turn on the cache first; `ls` only reads it
            let lock = |cmd: &str| lock_cache(cli, format!("`flowrun cache {cmd}` (pid {})", std::process::id()));
            match c {
                CacheCommand::Ls => report::print_entries(&Store::open(&cli.cache_dir)?.entries()?, ui),
                CacheCommand::Gc { keep_days } => {
                    let _turn = lock("gc")?;
                    let r = Store::open(&cli.cache_dir)?.gc(Duration::from_secs(keep_days * 86_400))?;
                    report::print_gc(&r, ui);
                }
                CacheCommand::Clear => {
                    let _turn = lock("clear")?;
                    Store::open(&cli.cache_dir)?.clear()?;
                    if !ui.quiet {
                        println!("cache {} cleared", cli.cache_dir.display());
                    }
                }
            }
        }
        Command::Lake(LakeCommand::Gc { flow, older_than_hours, dry_run }) => {
            let (flow_def, lake) = build(flow)?;
            let lake = lake.ok_or_else(|| bad_argument(format!("{} has no [lake] section", flow.flow.display())))?;
            let older = Duration::from_secs(older_than_hours * 3600);
            let files = flowrun_lake::ducklake::delete_orphaned_files(&lake, older, *dry_run)
                .map_err(|e| in_target(&flow_def, e, "lake gc failed"))?;
            report::print_orphans(&files, *dry_run, ui);
        }
        Command::Runs(r) => {
            let store = Store::open(&cli.cache_dir)?;
            match &r.run {
                Some(id) => report::print_node_runs(&store.node_runs(id)?, ui),
                None => report::print_runs(&store.runs(r.limit)?, ui),
            }
        }
    }
    Ok(Outcome::Ok)
}

fn split_kv(items: &[String], what: &str) -> Result<Vec<(String, String)>, CliError> {
    (items.iter())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| bad_argument(format!("{what} `{kv}` is not of the form NAME=VALUE")))
        })
        .collect()
}

/// The flow of `f`, built with its command-line options and checked, `[lake]` included (read once, with its
/// `--lake` overrides: the run uses what comes back).
pub fn build(f: &FlowArgs) -> Result<(Flow, Option<flowrun_lake::LakeConfig>), CliError> {
    let mut set_inputs = split_kv(&f.input, "--input")?;
    set_inputs.extend(f.mirror.iter().map(|m| ("mirror".to_string(), m.clone())));
    let opts = BuildOptions {
        registry: Registry::global(),
        set_config: split_kv(&f.set, "--set")?,
        set_inputs,
        outputs: (!f.output.is_empty()).then(|| f.output.clone()),
        tags: split_kv(&f.tag, "--tag")?,
        materializer_kinds: flowrun_lake::MATERIALIZER_KINDS.iter().map(|s| s.to_string()).collect(),
    };
    let mut flow = flowrun_engine::flow::load(&f.flow, &opts).map_err(CliError::Invalid)?;
    if let Some(target) = &f.target {
        flow.apply_target(target).map_err(bad_argument)?;
    }
    let lake = flowrun_lake::check(&flow, &split_kv(&f.lake, "--lake")?).map_err(CliError::Invalid)?;
    // nodes that read s3:// locations (an S3 mirror) reach them as the flow's [storage] says
    flowrun_storage::set_process_config(flowrun_lake::storage_config(&flow)?);
    if let Some(name) = f.recompute.iter().find(|name| flow.node(name).is_none()) {
        return Err(bad_argument(format!("--recompute {name}: the flow has no node `{name}`")));
    }
    Ok((flow, lake))
}

/// A command-line argument the flow cannot take: exit 2, like an invalid flow (nothing ran).
fn bad_argument(message: String) -> CliError {
    CliError::Invalid(Diagnostics(vec![Diagnostic::new("bad-argument", message)]))
}

/// The shared cache to use: `--remote-cache`, else the flow's `[cache] remote`.
fn remote_cache_url(f: &FlowArgs, flow: &Flow) -> Result<Option<String>, CliError> {
    let Some(url) = &f.remote_cache else { return Ok(flowrun_lake::remote_cache_url(flow)?) };
    flowrun_storage::Bucket::parse_url(url).map_err(|e| bad_argument(format!("--remote-cache: {e:#}")))?;
    Ok(Some(url.clone()))
}

/// The local cache in `dir`, read-through and write-through to `remote` when there is one. A remote that
/// cannot be opened (no credentials) is a warning of the run, like one that fails later: the run goes on
/// with the local cache.
fn open_store(dir: &Path, remote: Option<&str>, flow: &Flow, read_only: bool) -> Result<Arc<Store>, CliError> {
    let store = Store::open(dir)?;
    let Some(url) = remote else { return Ok(Arc::new(store)) };
    let opened = flowrun_lake::storage_config(flow).and_then(|cfg| flowrun_storage::Bucket::open(url, &cfg));
    Ok(Arc::new(match opened.map(|bucket| Arc::new(flowrun_storage::RemoteCache(bucket))) {
        Ok(remote) if read_only => store.with_remote_read_only(remote),
        Ok(remote) => store.with_remote(remote),
        Err(e) => {
            store.warn(format!("the remote cache {url} cannot be used, this run uses the local cache only: {e:#}"));
            store
        }
    }))
}

/// `--shard I/N` -> (I, N), 0 <= I < N.
fn parse_shard(text: &str) -> Result<(usize, usize), CliError> {
    let parsed = text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
    match parsed {
        Some((i, n)) if i < n => Ok((i, n)),
        _ => Err(bad_argument(format!(
            "--shard {text}: write I/N with 0 <= I < N (a Slurm array: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)"
        ))),
    }
}

fn run(cli: &Cli, ui: &Ui, &RunArgs { flow: ref f, jobs, fail_fast, dry_run }: &RunArgs) -> Result<Outcome, CliError> {
    // watched from the start: a Ctrl-C while the flow is read still ends the run with 130, before any node
    let interrupt = interrupt::watch();
    flowrun_cache::lock::stop_waiting_when(interrupt);
    let (flow, mut lake) = build(f)?;
    if let Some(l) = &mut lake {
        l.wait = !cli.no_wait;
        l.interrupt = Some(interrupt);
    }
    let shard = f.shard.as_deref().map(parse_shard).transpose()?;
    let remote = remote_cache_url(f, &flow)?;
    if shard.is_some() && (f.no_cache || remote.is_none()) {
        return Err(bad_argument(
            "--shard shares its items through a remote cache: give --remote-cache s3://... or [cache] remote, and no --no-cache"
                .into(),
        ));
    }
    let writes_lake = !dry_run && shard.is_none() && !flow.materialize.is_empty();
    if writes_lake {
        flowrun_lake::reach(&flow, lake.as_ref()).map_err(|e| in_target(&flow, e, "cannot write its results"))?;
    }
    // one run at a time on a cache (a second one waits, saying for whom); explain only reads it
    let run_id = schedule::new_run_id();
    let holder = format!("run {run_id} (`flowrun run {}`, pid {})", f.flow.display(), std::process::id());
    let _turn = if dry_run || f.no_cache { None } else { Some(lock_cache(cli, holder)?) };
    let store = (!f.no_cache).then(|| open_store(&cli.cache_dir, remote.as_deref(), &flow, dry_run)).transpose()?;
    // with the cache's lock held, a file in its tmp/ is a killed run's
    if let (Some(s), Some(_)) = (&store, &_turn) {
        s.remove_temporaries(Duration::ZERO)?;
    }
    let progress = Arc::new(progress::Progress::new(!ui.quiet && !ui.json && !dry_run, ui.verbose > 0));
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // --jobs bounds DuckDB's threads too (SQL nodes, the lake's commit)
    flowrun_lake::duck::limit_threads(jobs);
    let opts = RunOptions {
        jobs,
        fail_fast,
        dry_run,
        store: store.clone(),
        observer: progress.clone(),
        sql: Some(Arc::new(flowrun_lake::DuckSql::with_lake(lake.clone()))),
        recompute: f.recompute.clone(),
        shard,
        targets: None,
        flow_path: f.flow.display().to_string(),
        interrupt: Some(interrupt),
        run_id: Some(run_id),
    };
    let result = schedule::run(&flow, &opts)?;
    progress.finish();
    if opts.interrupted() {
        // the nodes that finished are in the cache; the lake and the exports are left as they were
        let what = "the nodes that finished are cached, nothing was written to the lake";
        report::print_interrupted(&flow, &result, what, ui);
        return Ok(Outcome::Interrupted);
    }
    // a worker exists to share its items: one whose remote cache failed has not done its job
    if shard.is_some() && !dry_run && store.as_ref().is_some_and(|s| !s.has_remote()) {
        if !ui.json {
            report::print_run(&flow, &result, None, ui);
        }
        let e = anyhow::anyhow!(
            "--shard: the remote cache failed (see the warning), so this worker's results were not shared; \
             they are in its local cache: run it again"
        );
        return Err(in_target(&flow, e, "a worker could not share its results"));
    }
    // a partial run (items left out by on_item_error = "skip") writes what succeeded, and still exits 1
    // a shard run leaves the fan-ins, and so the lake, to the run without --shard
    let materialize = || flowrun_lake::materialize(&flow, &result, store.as_deref(), lake.as_ref(), &opts.flow_path);
    let materialized = match (writes_lake && result.status != RunStatus::Failed).then(materialize).transpose() {
        Ok(m) => m,
        // a first Ctrl-C while the lake was being written: what was not committed is not
        // (the error says whether the lake's commit happened)
        Err(e) if opts.interrupted() => {
            report::print_interrupted(&flow, &result, &format!("{e:#}"), ui);
            return Ok(Outcome::Interrupted);
        }
        Err(e) => return Err(in_target(&flow, e, "writing the run's results failed")),
    };
    if dry_run {
        let mut destinations = flowrun_lake::destinations(&flow, lake.as_ref());
        destinations.extend(remote.iter().map(|url| ("remote cache".to_string(), url.clone())));
        report::print_explain(&flow, &result, &destinations, ui);
    } else {
        report::print_run(&flow, &result, materialized.as_ref(), ui);
    }
    Ok(if result.status == RunStatus::Ok { Outcome::Ok } else { Outcome::Failed })
}

/// This process's turn on the cache directory (see `flowrun_cache::lock`): waits for another run, `cache gc`
/// or `cache clear` to finish, or with `--no-wait` fails at once. `holder` is what the others are told:
/// "run <id> (`flowrun run flow.toml`, pid N)" or "`flowrun cache gc` (pid N)".
fn lock_cache(cli: &Cli, holder: String) -> Result<flowrun_cache::lock::FileLock, CliError> {
    let path = cli.cache_dir.join("lock");
    let on_wait = |other: &str| eprintln!("waiting for {other} to release {}", path.display());
    Ok(flowrun_cache::lock::FileLock::acquire(&path, &holder, !cli.no_wait, on_wait)?)
}

/// An error of the flow's `--target`, said with its name (exit 3).
fn in_target(flow: &Flow, e: anyhow::Error, what: &str) -> CliError {
    CliError::Other(if let Some(t) = &flow.target { e.context(format!("target `{t}`: {what}")) } else { e })
}

fn last_run_overlay(cli: &Cli, flow: &Flow) -> Result<HashMap<String, Status>, CliError> {
    let store = Store::open(&cli.cache_dir)?;
    let (name, dir) = (&flow.name, cli.cache_dir.display());
    let last = store.runs(1000)?.into_iter().find(|r| &r.flow == name);
    let last = last.ok_or_else(|| anyhow::anyhow!("flow `{name}` has no recorded run in {dir}; run it first"))?;
    use flowrun_engine::Status::{Cancelled, Executed, Failed, Reused, Skipped};
    let mut reports = Vec::new();
    for n in store.node_runs(&last.run_id)? {
        // the statuses a graph colours; any other is drawn as skipped
        let status =
            [Executed, Reused, Failed, Cancelled].into_iter().find(|s| s.as_str() == n.status).unwrap_or(Skipped);
        let node = n.node.split('[').next().unwrap_or(&n.node).into();
        reports.push(flowrun_engine::NodeReport::new(n.node.as_str().into(), node, None, status));
    }
    Ok(flowrun_engine::graph::overlay(&reports))
}
