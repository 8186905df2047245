//! A one-line progress display on stderr, only when stderr is a terminal: quiet in CI and under the harness.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use tokio::time::Instant;

use crate::recorder::Recorder;

/// Redraws at most every 200 ms.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    /// A display that draws only if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> Self {
        Self {
            enabled: wanted && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Redraws the line if enough time passed.
    pub fn tick(&mut self, rec: &Recorder, inflight: usize) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        eprint!(
            "\r{:>6.1} s  ok {:>8}  failed {:>6}  in flight {:>5}   ",
            rec.start().elapsed().as_secs_f64(),
            rec.ok(),
            rec.failed(),
            inflight
        );
        let _ = std::io::stderr().flush();
    }

    /// Ends the line.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            eprintln!();
        }
    }
}
