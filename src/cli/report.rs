//! Human and JSON output of each command.

use flowrun_cache::{EntryInfo, GcReport, NodeRunRecord, RunRecord};
use flowrun_engine::flow::Diagnostics;
use flowrun_engine::schedule::{RunReport, RunStatus};
use flowrun_engine::{Flow, NodeReport, Registry, Status};
use flowrun_lake::MaterializeReport;
use serde_json::json;

use super::Ui;

fn ms(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 { format!("{:.2} s", ms / 1000.0) } else { format!("{ms:.1} ms") }
}

pub fn paint(ui: &Ui, code: &str, text: &str) -> String {
    if ui.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

pub fn diagnostics_json(d: &Diagnostics) -> String {
    let errors: Vec<_> = (d.0.iter())
        .map(
            |e| json!({"code": e.code, "message": e.message, "node": e.node, "location": e.location(), "help": e.help}),
        )
        .collect();
    json!({ "status": "invalid", "errors": errors }).to_string()
}

fn report_json(flow: &Flow, r: &RunReport, materialized: Option<&MaterializeReport>) -> serde_json::Value {
    let outputs: Vec<_> = (r.outputs.iter())
        .map(|o| {
            let rows = o.value.as_ref().and_then(|v| v.rows());
            let identity = o.identity.map(|h| h.to_hex().to_string());
            json!({"node": &*o.node, "item": o.item, "rows": rows, "identity": identity})
        })
        .collect();
    use Status::*;
    let counts: serde_json::Map<_, _> = [Executed, Reused, Failed, Skipped, Cancelled, WouldRun, WouldReuse]
        .into_iter()
        .map(|s| (s.as_str().to_string(), r.count(s).into()))
        .collect();
    json!({
        "run_id": r.run_id,
        "flow": flow.name,
        "status": r.status,
        "duration_ms": r.finished_ms - r.started_ms,
        "counts": counts,
        "nodes": r.nodes,
        "outputs": outputs,
        "materialized": materialized,
        "warnings": r.warnings,
        "left_out": r.left_out(),
        "left_out_causes": r.left_out_causes(),
    })
}

/// A node's line, with `-vv` its cache key and input identities below it.
fn print_node(ui: &Ui, n: &NodeReport) {
    let (word, code) = match n.status {
        Status::Executed => ("ran", "32"),
        Status::Reused | Status::WouldReuse => ("cached", "90"),
        Status::Failed => ("FAILED", "1;31"),
        Status::Skipped => ("skipped", "33"),
        Status::Cancelled => ("cancelled", "33"),
        Status::Deferred => ("deferred", "90"),
        Status::WouldRun => ("would run", "32"),
    };
    let mut line = format!("  {} {}", paint(ui, code, &format!("{word:<9}")), n.name);
    if matches!(n.status, Status::Executed | Status::Reused) {
        line.push_str(&format!("  {}", ms(n.duration)));
    }
    if let Some(rows) = n.rows {
        line.push_str(&format!("  {rows} rows"));
    }
    if !n.reasons.is_empty() {
        let reasons: Vec<String> = n.reasons.iter().map(|r| r.to_string()).collect();
        line.push_str(&format!("  ({})", reasons.join("; ")));
    }
    println!("{line}");
    if ui.verbose > 1 {
        if let Some(k) = &n.key {
            println!("      key {k}");
        }
        for (p, id) in &n.inputs {
            println!("      {p} = {id}");
        }
    }
}

/// `value` as JSON on stdout.
fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

/// A run a Ctrl-C stopped: its report (with `--json`, `"status": "interrupted"` and what happened), then
/// what happened on stderr.
pub fn print_interrupted(flow: &Flow, r: &RunReport, what: &str, ui: &Ui) {
    if ui.json {
        let mut report = report_json(flow, r, None);
        report["status"] = "interrupted".into();
        report["interrupted"] = what.into();
        println!("{report}");
    } else {
        print_run(flow, r, None, ui);
    }
    eprintln!("interrupted: {what}; run again to go on");
}

pub fn print_run(flow: &Flow, r: &RunReport, materialized: Option<&MaterializeReport>, ui: &Ui) {
    if ui.json {
        return print_json(&report_json(flow, r, materialized));
    }
    if ui.verbose > 0 {
        r.nodes.iter().for_each(|n| print_node(ui, n));
    }
    for n in r.nodes.iter().filter(|n| n.status == Status::Failed) {
        eprintln!("{}: node `{}` failed", paint(ui, "1;31", "error"), n.name);
        for (i, cause) in n.error.iter().enumerate() {
            eprintln!("  {}{cause}", if i == 0 { "" } else { "caused by: " });
        }
        if !n.inputs.is_empty() {
            let inputs: Vec<String> = n.inputs.iter().map(|(p, id)| format!("{p}={}", &id.to_hex()[..12])).collect();
            eprintln!("  inputs: {}", inputs.join(", "));
        }
        if let Some(k) = &n.key {
            eprintln!("  key: {k}");
        }
    }
    let skipped = r.names(Status::Skipped);
    if !skipped.is_empty() {
        let more = if skipped.len() > 10 { format!(" and {} more", skipped.len() - 10) } else { String::new() };
        eprintln!("skipped (upstream failed): {}{more}", skipped[..skipped.len().min(10)].join(", "));
    }
    if ui.quiet {
        return;
    }
    for n in &r.nodes {
        for note in &n.notes {
            eprintln!("{}: {}: {note}", paint(ui, "36", "note"), n.name);
        }
        for w in &n.warnings {
            eprintln!("{}: {}: {w}", paint(ui, "33", "warning"), n.name);
        }
    }
    for w in &r.warnings {
        eprintln!("{}: {w}", paint(ui, "33", "warning"));
    }
    for t in materialized.iter().flat_map(|m| &m.targets) {
        println!("  wrote {}", t.describe());
    }
    for cause in r.left_out_causes() {
        eprintln!(
            "{}: left out by on_item_error = \"skip\" (the results and the lake are without it): {cause}",
            paint(ui, "1;31", "partial"),
        );
    }
    let (mark, code) = match r.status {
        RunStatus::Ok => ("ok", "32"),
        RunStatus::Partial => ("PARTIAL", "1;31"),
        RunStatus::Failed => ("FAILED", "1;31"),
    };
    println!(
        "{} flow `{}`: {} node runs: {} ran, {} cached, {} failed, {} skipped in {} (run {})",
        paint(ui, code, mark),
        flow.name,
        r.nodes.len(),
        r.count(Status::Executed),
        r.count(Status::Reused),
        r.count(Status::Failed),
        r.count(Status::Skipped) + r.count(Status::Cancelled),
        ms(std::time::Duration::from_millis((r.finished_ms - r.started_ms).max(0) as u64)),
        r.run_id
    );
}

/// `explain`: what would run, and where it would be written (`destinations`: what, where).
pub fn print_explain(flow: &Flow, r: &RunReport, destinations: &[(String, String)], ui: &Ui) {
    if ui.json {
        let mut v = report_json(flow, r, None);
        v["target"] = json!(flow.target);
        v["destinations"] = destinations.iter().map(|(what, at)| json!({"what": what, "where": at})).collect();
        return print_json(&v);
    }
    let target = flow.target.as_deref().map(|t| format!(" (target `{t}`)")).unwrap_or_default();
    let (run, cached) = (r.count(Status::WouldRun), r.count(Status::WouldReuse));
    println!("flow `{}`{target}: {run} would run, {cached} cached", flow.name);
    for (what, at) in destinations {
        println!("  writes {what}: {at}");
    }
    for n in r.nodes.iter().filter(|n| n.status != Status::WouldReuse || ui.verbose > 0) {
        print_node(ui, n);
    }
    if !flow.disabled.is_empty() {
        println!("  disabled by config: {}", flow.disabled.join(", "));
    }
}

pub fn print_nodes(reg: &Registry, filter: Option<&str>, ui: &Ui) {
    let defs: Vec<_> =
        reg.all().iter().filter(|d| filter.is_none_or(|f| d.name.contains(f) || d.module.contains(f))).collect();
    if ui.json {
        let list: Vec<_> = (defs.iter())
            .map(|d| {
                json!({
                    "name": d.name,
                    "module": d.module,
                    "signature": d.signature(),
                    "doc": d.doc,
                    "tags": d.tags.iter().map(|(k, v)| json!({k.to_string(): v})).collect::<Vec<_>>(),
                    "code_version": d.code_version,
                    "version": d.version,
                    "source": format!("{}:{}", d.file, d.line),
                })
            })
            .collect();
        return print_json(&list);
    }
    for d in defs {
        println!("{}  [{}]", paint(ui, "1", &d.signature()), d.module);
        if let Some(first) = d.doc.lines().next().filter(|l| !l.is_empty()) {
            println!("    {first}");
        }
    }
}

pub fn print_entries(entries: &[EntryInfo], ui: &Ui) {
    if ui.json {
        return print_json(entries);
    }
    let total: u64 = entries.iter().map(|e| e.entry.size).sum();
    println!("{} entries, {} bytes", entries.len(), total);
    for e in entries {
        println!(
            "  {}  {:<30} {:>10} B {:>8} rows  {}{}",
            &e.key.to_hex()[..12],
            e.entry.node,
            e.entry.size,
            e.entry.rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            flowrun_engine::value::short_type_name(&e.entry.type_name),
            if e.live { "" } else { "  (superseded)" }
        );
    }
}

pub fn print_gc(r: &GcReport, ui: &Ui) {
    if ui.json {
        print_json(r);
    } else if !ui.quiet {
        println!(
            "removed {} entries, {} blobs ({} bytes), {} temporary files",
            r.entries, r.blobs, r.bytes, r.temp_files
        );
    }
}

pub fn print_orphans(files: &[String], dry_run: bool, ui: &Ui) {
    if ui.json {
        println!("{}", json!({ "dry_run": dry_run, "files": files }));
    } else if !ui.quiet {
        for f in files {
            println!("{f}");
        }
        let verb = if dry_run { "would delete" } else { "deleted" };
        println!("{verb} {} orphaned data files", files.len());
    }
}

pub fn print_runs(runs: &[RunRecord], ui: &Ui) {
    if ui.json {
        return print_json(runs);
    }
    for r in runs {
        println!(
            "{}  {:<20} {:<7} {:>6} nodes {:>6} ran {:>6} cached {:>4} failed  {:.1} s",
            r.run_id,
            r.flow,
            r.status,
            r.nodes,
            r.executed,
            r.reused,
            r.failed,
            (r.finished_ms - r.started_ms) as f64 / 1000.0
        );
    }
}

pub fn print_node_runs(nodes: &[NodeRunRecord], ui: &Ui) {
    if ui.json {
        return print_json(nodes);
    }
    for n in nodes {
        println!(
            "  {:<10} {:<40} {:>10.1} ms {:>10}  {}",
            n.status,
            n.node,
            n.duration_ms,
            n.rows.map(|r| format!("{r} rows")).unwrap_or_default(),
            n.error.as_deref().unwrap_or("")
        );
    }
}
