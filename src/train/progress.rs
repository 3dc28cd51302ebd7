//! Progress reporting shared by squeeze / relabel / validate: an indicatif bar on a terminal, one line
//! per epoch otherwise (both on stderr; stdout is kept for the final JSON line).

use std::cell::Cell;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Without a terminal, a status line at most this often.
const LINE_EVERY_S: f64 = 60.0;

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: Cell<u64>,
    start: Instant,
    last_line: Cell<f64>,
}

impl Progress {
    pub fn new(total_steps: u64, show: bool) -> Progress {
        let bar = show.then(|| {
            let b = ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta} {msg}").expect("valid template").progress_chars("=> "),
            );
            b
        });
        Progress { bar, total: total_steps, done: Cell::new(0), start: Instant::now(), last_line: Cell::new(0.0) }
    }
    pub fn step(&self, msg: impl FnOnce() -> String) {
        self.done.set(self.done.get() + 1);
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.set_message(msg());
            }
            None => {
                let t = self.start.elapsed().as_secs_f64();
                if t - self.last_line.get() >= LINE_EVERY_S {
                    self.last_line.set(t);
                    let (d, n) = (self.done.get(), self.total);
                    let eta = if d > 0 { t / d as f64 * (n.saturating_sub(d)) as f64 } else { 0.0 };
                    eprintln!("  step {d}/{n}, {:.0}s elapsed, ETA {:.0}s: {}", t, eta, msg());
                }
            }
        }
    }
    /// A line that stays (epoch summaries).
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
