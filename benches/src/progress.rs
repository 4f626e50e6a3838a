//! A one-line progress bar on stderr: indicatif's bar, redrawn in place on a terminal; a plain line
//! every ten seconds otherwise (CI logs, where a redrawn bar would be noise or nothing).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressDrawTarget, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(10);
const TEMPLATE: &str = "{prefix:<14} [{bar:30}] {pos:>9}/{len} {percent:>3}% {elapsed:>5} {per_sec:>12}, {eta} left{msg}";

pub struct ProgressBar {
    /// The bar, on a terminal only.
    bar: Option<indicatif::ProgressBar>,
    phase: String,
    started: Instant,
    last_line: Option<Instant>,
}

impl ProgressBar {
    /// Starts a phase: `phase` names what is counted.
    pub fn new(phase: impl Into<String>) -> Self {
        Self::since(phase, Instant::now())
    }

    /// A bar for a phase that began at `started`.
    pub fn since(phase: impl Into<String>, started: Instant) -> Self {
        let phase = phase.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_elapsed(started.elapsed())
                .with_prefix(phase.clone());
            if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
                bar.set_style(style.progress_chars("#>-"));
            }
            bar
        });
        Self {
            bar,
            phase,
            started,
            last_line: None,
        }
    }

    /// Shows `done` of `total`, the rate since the phase began and the time left at that rate.
    pub fn update(&mut self, done: u64, total: u64, extra: &str) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(extra.to_owned());
            return;
        }
        let now = Instant::now();
        if self.last_line.is_some_and(|t| now - t < LOG_EVERY) {
            return;
        }
        self.last_line = Some(now);
        eprintln!(
            "{}",
            line(&self.phase, done, total, now - self.started, extra)
        );
    }

    /// Ends the phase: the bar stays on screen, and later output starts on a fresh line.
    pub fn finish(&mut self, done: u64, total: u64, extra: &str) {
        self.last_line = None;
        self.update(done, total, extra);
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// The plain line written to a log.
fn line(phase: &str, done: u64, total: u64, elapsed: Duration, extra: &str) -> String {
    let percent = if total == 0 {
        100.0
    } else {
        (done as f64 / total as f64).min(1.0) * 100.0
    };
    let secs = elapsed.as_secs_f64();
    let rate = done as f64 / secs.max(0.001);
    let eta = if done == 0 || done >= total {
        String::new()
    } else {
        format!(", {:.0}s left", (total - done) as f64 / rate)
    };
    format!("{phase:<14} {done:>9}/{total} {percent:>3.0}% {secs:>6.1}s {rate:>8.0}/s{eta}{extra}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_says_how_far_how_fast_and_how_long_still() {
        let line = line("pipeline", 50, 100, Duration::from_secs(10), "");
        assert!(line.contains("       50/100  50% "), "{line}");
        assert!(line.contains("5/s, 10s left"), "{line}");
    }

    #[test]
    fn the_template_is_one_indicatif_understands() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }
}
