//! The progress bar: an [`Observer`] drawing node runs done / total and the node running now, plus a
//! byte bar for nodes that report progress (downloads). Drawn only on a terminal, never with -q/--json.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use flowrun_engine::{Event, Observer, Status};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    main: ProgressBar,
    bytes: Mutex<HashMap<String, ProgressBar>>,
    verbose: bool,
}

impl Progress {
    pub fn new(enabled: bool, verbose: bool) -> Progress {
        let visible = enabled && std::io::stderr().is_terminal();
        let target = if visible { ProgressDrawTarget::stderr_with_hz(10) } else { ProgressDrawTarget::hidden() };
        let multi = MultiProgress::with_draw_target(target);
        let main = multi.add(ProgressBar::new(0));
        main.set_style(style("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes  {wide_msg}"));
        main.enable_steady_tick(Duration::from_millis(200));
        Progress { multi, main, bytes: Mutex::new(HashMap::new()), verbose }
    }

    pub fn finish(&self) {
        self.bytes.lock().unwrap().drain().for_each(|(_, bar)| bar.finish_and_clear());
        self.main.finish_and_clear();
    }

    /// A line above the bars, while they are drawn. Without bars nothing is printed live: the summary
    /// after the run lists failures and warnings once.
    fn println(&self, line: String) {
        if !self.main.is_hidden() {
            let _ = self.multi.println(line);
        }
    }
}

impl Observer for Progress {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::RunStarted { tasks, .. } => {
                self.main.set_length(*tasks as u64);
                self.main.set_position(0);
            }
            Event::TasksAdded(n) => self.main.inc_length(*n as u64),
            Event::NodeStarted(name) => self.main.set_message(name.to_string()),
            Event::NodeFinished(r) => {
                self.main.inc(1);
                if let Some(bar) = self.bytes.lock().unwrap().remove(&*r.name) {
                    bar.finish_and_clear();
                }
                if r.status == Status::Failed {
                    self.println(format!("failed: {}: {}", r.name, r.error.join(": ")));
                } else if self.verbose && r.status == Status::Executed {
                    self.println(format!("ran {} ({:.1} ms)", r.name, r.duration.as_secs_f64() * 1000.0));
                }
            }
            Event::Progress { node, done, total } => {
                let mut bars = self.bytes.lock().unwrap();
                let bar = bars.entry(node.to_string()).or_insert_with(|| {
                    let style = style("  {msg:30} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}");
                    self.multi
                        .add(ProgressBar::new(total.unwrap_or(0)).with_style(style).with_message(node.to_string()))
                });
                if let Some(t) = total {
                    bar.set_length(*t);
                }
                bar.set_position(*done);
            }
            Event::Warning { node: Some(n), message } => self.println(format!("warning: {n}: {message}")),
            Event::Warning { node: None, message } => self.println(format!("warning: {message}")),
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ")
}
