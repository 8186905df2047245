//! Intended start times, as offsets in seconds from the start of the run, from the phases. The open loop asks
//! for the next one and starts a connection then, whether or not earlier ones finished.

use crate::phases::{Arrival, Phase};
use crate::rng::Rng;

/// The arrival schedule over all phases.
#[derive(Debug)]
pub struct Schedule {
    phases: Vec<Phase>,
    index: usize,
    phase_start: f64,
    next: f64,
    in_phase: u64,
    rng: Rng,
}

impl Schedule {
    /// A schedule over `phases` (validated by the caller), Poisson gaps drawn from `seed`.
    pub fn new(phases: Vec<Phase>, seed: u64) -> Self {
        Self {
            phases,
            index: 0,
            phase_start: 0.0,
            next: 0.0,
            in_phase: 0,
            rng: Rng::new(seed),
        }
    }

    /// The next intended start (seconds from the run's start) and the index of its phase; `None` after the
    /// last phase.
    pub fn next_start(&mut self) -> Option<(f64, usize)> {
        loop {
            let phase = self.phases.get(self.index)?;
            let end = self.phase_start + phase.duration_s;
            // A nanosecond of slack so that rate x duration starts come out exact despite rounding.
            if phase.rate > 0.0 && self.next < end - 1e-9 {
                let t = self.next;
                let mean = 1.0 / phase.rate;
                self.in_phase += 1;
                self.next = match phase.arrival {
                    // From the phase start, not accumulated: no drift over long phases.
                    Arrival::Constant => self.phase_start + self.in_phase as f64 * mean,
                    Arrival::Poisson => t + self.rng.exponential(mean),
                };
                return Some((t, self.index));
            }
            self.index += 1;
            self.phase_start = end;
            self.next = end;
            self.in_phase = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, d: f64, rate: f64, arrival: Arrival) -> Phase {
        Phase {
            name: name.into(),
            duration_s: d,
            rate,
            arrival,
        }
    }

    #[test]
    fn constant_phases_give_rate_times_duration_starts_in_order() {
        let mut s = Schedule::new(
            vec![
                phase("a", 2.0, 10.0, Arrival::Constant),
                phase("idle", 1.0, 0.0, Arrival::Constant),
                phase("b", 1.0, 50.0, Arrival::Constant),
            ],
            1,
        );
        let starts: Vec<_> = std::iter::from_fn(|| s.next_start()).collect();
        assert_eq!(starts.iter().filter(|(_, p)| *p == 0).count(), 20);
        assert_eq!(starts.iter().filter(|(_, p)| *p == 2).count(), 50);
        assert!(starts.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(
            starts
                .iter()
                .all(|(t, p)| *p != 2 || (3.0..4.0).contains(t))
        );
    }

    #[test]
    fn poisson_phase_is_near_its_rate() {
        let mut s = Schedule::new(vec![phase("p", 100.0, 100.0, Arrival::Poisson)], 42);
        let n = std::iter::from_fn(|| s.next_start()).count();
        assert!((9_000..11_000).contains(&n), "{n}");
    }
}
