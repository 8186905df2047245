//! How much work may queue in normal operation, and when the load is past it.
//!
//! Below overload the cost budget must refuse nothing, yet Poisson arrivals bunch: at a utilisation `rho` the
//! work queued in front of a single server (M/G/1) exceeds `x` with probability about
//! `rho * exp(-theta * x)`, where `theta ≈ 2 (1 - rho) / rho * E[c] / E[c²]` (the diffusion approximation; `c`
//! the cost of one arrival). A budget fixed in time ignores the second factor: 20 ms is about 130 ECDSA
//! signatures but 14 RSA-4096 ones, and at 80% load a mix of RSA-4096 handshakes and resumptions went past it
//! about once in a thousand arrivals (`admission::simulation`, BENCHMARKS.md). So the burst is sized in units of
//! the size-biased mean cost `E[c²] / E[c]`, learned from the arrivals ([`CostMoments`]): [`BURST_UNITS`] of
//! them is what 80% load exceeds with probability below 1e-7.
//!
//! Work past that burst is then evidence of more than 80% load, not of bad luck: admission control enters
//! overload at once ([`Overload`]: the short queue of twice `target` and the wait bound), instead of only once
//! the SYN shed loop or the sojourn controller notices, and stays there while the offered work is at or over
//! the crypto threads' capacity (or XDP sheds SYNs), plus a short hold, so a storm does not refill the long
//! queue of normal operation each time it relents for a moment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The normal-operation burst, in units of `E[c²] / E[c]`. At `rho = 0.8` and a probability of 1e-7 the
/// diffusion approximation gives `ln(0.8 / 1e-7) * 0.8 / (2 * 0.2) ≈ 32`; the exact decay rate for constant
/// service times, or for half RSA-4096 handshakes and half resumptions, is about 20% slower (38); the rest is
/// margin for service times that vary.
pub const BURST_UNITS: u64 = 48;

/// A queue is standing (the sojourn controller's test) only when its minimum wait over an interval exceeds this
/// many size-biased mean costs as well as `target`: a quarter of the burst. With RSA-4096 a 5 ms target is under
/// four signatures, and at 80% load the full handshakes' queue (behind the resumptions served first) stayed
/// above it for whole intervals every few seconds in `admission::simulation`, which shed every full handshake
/// for half a second each time. With ECDSA the target itself is the larger.
pub const STANDING_UNITS: u64 = BURST_UNITS / 4;

/// Weight of a new arrival in the moments, as a shift: 1/64, a memory of about a hundred arrivals.
const MOMENT_SHIFT: u32 = 6;

/// What the engine holds, which the burst never exceeds: work admitted beyond it would be refused there anyway
/// (ring full, or expired past `wait_deadline`), after its accept and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineBounds {
    /// Jobs one instance's ring holds (`engine.ring_depth`).
    pub ring_depth: usize,
    /// With `engine.full_ring = "wait"`: the longest a job may wait before a crypto thread starts it.
    pub wait_deadline: Option<Duration>,
}

impl EngineBounds {
    /// No bound beyond the burst itself (tests).
    #[cfg(test)]
    pub const NONE: Self = Self {
        ring_depth: usize::MAX,
        wait_deadline: None,
    };
}

/// The first two moments of the learned cost of arriving handshakes (shed or not), as EWMAs, lock-free.
#[derive(Debug)]
pub struct CostMoments {
    /// E[c], in nanoseconds.
    mean: AtomicU64,
    /// E[c²], in nanoseconds squared.
    square: AtomicU64,
}

impl CostMoments {
    /// Starts as if every arrival cost `initial_ns`.
    pub fn new(initial_ns: u64) -> Self {
        Self {
            mean: AtomicU64::new(initial_ns),
            square: AtomicU64::new(initial_ns.saturating_mul(initial_ns)),
        }
    }

    /// Folds in one arrival's learned cost.
    pub fn observe(&self, cost_ns: u64) {
        // A lost update under contention only delays convergence, as in `CostTable`.
        for (slot, sample) in [
            (&self.mean, cost_ns),
            (&self.square, cost_ns.saturating_mul(cost_ns)),
        ] {
            let old = slot.load(Ordering::Relaxed);
            slot.store(
                old - (old >> MOMENT_SHIFT) + (sample >> MOMENT_SHIFT),
                Ordering::Relaxed,
            );
        }
    }

    /// `E[c²] / E[c]`, in ns: the mean cost of the handshake a random instant of work belongs to.
    fn size_biased_ns(&self) -> u64 {
        let mean = self.mean.load(Ordering::Relaxed).max(1);
        self.square.load(Ordering::Relaxed) / mean
    }

    /// The work one server may have queued in normal operation: [`BURST_UNITS`] size-biased mean costs (no more
    /// than the ring holds, nor than the engine lets wait), in ns.
    pub fn burst_ns(&self, engine: EngineBounds) -> u64 {
        let units = BURST_UNITS.min(u64::try_from(engine.ring_depth).unwrap_or(u64::MAX));
        let burst = self.size_biased_ns().saturating_mul(units);
        engine.wait_deadline.map_or(burst, |d| {
            burst.min(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        })
    }

    /// The least minimum wait over an interval that makes a queue standing: [`STANDING_UNITS`] size-biased
    /// mean costs.
    pub fn standing(&self) -> Duration {
        Duration::from_nanos(self.size_biased_ns().saturating_mul(STANDING_UNITS))
    }
}

/// Whether the offered load is past what normal operation absorbs: entered when the burst is exceeded (or XDP
/// sheds SYNs), kept while each window's offered work reaches the crypto threads' capacity, left `hold` after
/// the last window that did.
#[derive(Debug)]
pub struct Overload {
    window: Duration,
    hold: Duration,
    /// Work the crypto threads complete in one window: `instances` times the window, in ns.
    capacity_ns: u64,
    until: Option<Instant>,
    window_start: Instant,
    offered_ns: u64,
}

impl Overload {
    /// Not overloaded; `instances` crypto threads; offered work judged per `window`.
    pub fn new(window: Duration, hold: Duration, instances: usize, now: Instant) -> Self {
        let capacity_ns = u64::try_from(window.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(instances.max(1) as u64);
        Self {
            window,
            hold,
            capacity_ns,
            until: None,
            window_start: now,
            offered_ns: 0,
        }
    }

    /// Sets the window and the hold (a reload); an overload under way keeps its end, the window its work so far.
    pub fn set_window(&mut self, window: Duration, hold: Duration) {
        let instances = self.capacity_ns
            / u64::try_from(self.window.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
        self.capacity_ns = u64::try_from(window.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(instances.max(1));
        self.window = window;
        self.hold = hold;
    }

    /// Overloaded from now until at least `hold` from now.
    pub fn trigger(&mut self, now: Instant) {
        self.until = Some(now + self.hold);
    }

    /// Notes one arrival of learned cost `cost_ns`.
    pub fn offered(&mut self, cost_ns: u64, now: Instant) {
        self.tick(now);
        self.offered_ns = self.offered_ns.saturating_add(cost_ns);
    }

    /// Closes the window if it ended: while overloaded, a window offered at least the capacity extends it.
    pub fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) < self.window {
            return;
        }
        if self.active(now) && self.offered_ns >= self.capacity_ns {
            self.trigger(now);
        }
        self.window_start = now;
        self.offered_ns = 0;
    }

    /// Whether overloaded at `now`.
    pub fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_follows_the_size_biased_mean_cost() {
        let m = CostMoments::new(160_000);
        // Half RSA-4096 (1.4 ms), half resumptions (90 µs): E[c²]/E[c] = (1.4² + 0.09²) / (1.4 + 0.09) ≈ 1.32 ms.
        for i in 0..2_000 {
            m.observe(if i % 2 == 0 { 1_400_000 } else { 90_000 });
        }
        let burst = m.burst_ns(EngineBounds::NONE);
        assert!(
            (BURST_UNITS * 1_250_000..=BURST_UNITS * 1_400_000).contains(&burst),
            "{burst}"
        );
        // All ECDSA-like: the burst is 48 costs, or what the engine holds.
        let m = CostMoments::new(150_000);
        assert_eq!(m.burst_ns(EngineBounds::NONE), BURST_UNITS * 150_000);
        let ring = EngineBounds {
            ring_depth: 8,
            wait_deadline: None,
        };
        assert_eq!(m.burst_ns(ring), 8 * 150_000);
        let deadline = EngineBounds {
            ring_depth: 256,
            wait_deadline: Some(Duration::from_millis(5)),
        };
        assert_eq!(m.burst_ns(deadline), 5_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn overload_lasts_while_the_offered_work_reaches_capacity() {
        let ms = Duration::from_millis;
        let mut o = Overload::new(ms(100), ms(200), 1, Instant::now());
        assert!(!o.active(Instant::now()));
        o.trigger(Instant::now());
        // Three windows each offered 120 ms of work: still overloaded at the end of them.
        for _ in 0..30 {
            tokio::time::advance(ms(10)).await;
            o.offered(12_000_000, Instant::now());
        }
        tokio::time::advance(ms(10)).await;
        o.tick(Instant::now());
        assert!(o.active(Instant::now()));
        // Then half load: over within the hold of the last full window.
        for _ in 0..30 {
            tokio::time::advance(ms(10)).await;
            o.offered(5_000_000, Instant::now());
        }
        assert!(!o.active(Instant::now()));
    }
}
