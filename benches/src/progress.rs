//! A one-line progress bar on stderr: redrawn in place on a terminal, a plain line every ten
//! seconds otherwise (CI logs).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const WIDTH: usize = 30;
const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct ProgressBar {
    terminal: bool,
    phase: String,
    started: Instant,
    last_line: Option<Instant>,
    drawn: bool,
}

impl ProgressBar {
    /// Starts a phase: `phase` names what is counted.
    pub fn new(phase: impl Into<String>) -> Self {
        Self::since(phase, Instant::now())
    }

    /// A bar for a phase that began at `started`.
    pub fn since(phase: impl Into<String>, started: Instant) -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            phase: phase.into(),
            started,
            last_line: None,
            drawn: false,
        }
    }

    /// Shows `done` of `total`, the rate since the phase began and the time left at that rate.
    pub fn update(&mut self, done: u64, total: u64, extra: &str) {
        let now = Instant::now();
        if !self.terminal && self.last_line.is_some_and(|t| now - t < LOG_EVERY) {
            return;
        }
        self.last_line = Some(now);
        let line = render(&self.phase, done, total, now - self.started, extra);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// Ends the line (on a terminal) so later output starts on a fresh one.
    pub fn finish(&mut self, done: u64, total: u64, extra: &str) {
        self.last_line = None;
        self.update(done, total, extra);
        if self.drawn {
            eprintln!();
        }
    }
}

fn render(phase: &str, done: u64, total: u64, elapsed: Duration, extra: &str) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * WIDTH as f64).round() as usize;
    let secs = elapsed.as_secs_f64();
    let rate = done as f64 / secs.max(0.001);
    let eta = if done == 0 || done >= total {
        String::new()
    } else {
        format!(", {:.0}s left", (total - done) as f64 / rate)
    };
    format!(
        "{phase:<14} [{}{}] {done:>9}/{total} {:>3.0}% {secs:>6.1}s {rate:>8.0}/s{eta}{extra}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        fraction * 100.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_fraction_done() {
        let line = render("pipeline", 50, 100, Duration::from_secs(10), "");
        assert!(
            line.contains(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))),
            "{line}"
        );
        assert!(line.contains(" 50% "), "{line}");
        assert!(line.contains("5/s, 10s left"), "{line}");
    }
}
