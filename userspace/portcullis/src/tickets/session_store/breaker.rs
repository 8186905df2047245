//! A circuit breaker in front of the shared store: after `failures` consecutive failures it stops asking for
//! `cooldown`, then lets one request probe; the probe's success closes it, its failure opens it again.
//! While open, a resumption costs no wait at all (the handshake goes on as a full one at once).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker. Cheap: one uncontended lock per store request.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    open_until: Option<Instant>,
    /// When the current probe started: a probe whose answer never came (its handshake was dropped) stops
    /// counting after a cooldown, so the breaker cannot stay open for good.
    probing: Option<Instant>,
}

impl Breaker {
    /// Opens after `failures` consecutive failures, for `cooldown` each time.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a request may go to the store at `now` (when open: one probe per cooldown).
    pub fn allow(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) if s.probing.is_some_and(|p| now < p + self.cooldown) => false,
            Some(_) => {
                s.probing = Some(now);
                true
            }
        }
    }

    /// The store answered.
    pub fn success(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = State::default();
    }

    /// The store failed or timed out at `now`.
    pub fn failure(&self, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.consecutive = s.consecutive.saturating_add(1);
        if s.probing.is_some() || s.consecutive >= self.failures {
            s.open_until = Some(now + self.cooldown);
            s.probing = None;
        }
    }

    /// Whether the breaker is open (for the gauge).
    pub fn is_open(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.failure(t0);
        }
        assert!(!b.is_open());
        b.failure(t0);
        assert!(b.is_open());
        assert!(!b.allow(t0 + Duration::from_millis(999)));
        // One probe after the cooldown, not two.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
        // The probe fails: open for another cooldown.
        b.failure(t1);
        assert!(!b.allow(t1 + Duration::from_millis(500)));
        let t2 = t1 + Duration::from_secs(1);
        assert!(b.allow(t2));
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(t2) && b.allow(t2));
        // A probe that never answers: another one a cooldown later.
        for _ in 0..3 {
            b.failure(t2);
        }
        let t3 = t2 + Duration::from_secs(1);
        assert!(b.allow(t3));
        assert!(!b.allow(t3 + Duration::from_millis(999)));
        assert!(b.allow(t3 + Duration::from_secs(1)));
    }
}
