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

/// Weight of a new busy window in the engine's measured service rate, as a shift: 1/8, as the learned costs.
const RATE_SHIFT: u32 = 3;

/// A window tells the engine's rate only when the crypto threads were busy throughout it and the one before:
/// a stall (the threads off the CPU for tens of milliseconds) makes a busy window that completed little, and
/// the queue it left drains in the next; a rate that low would be no rate the engine keeps. An overload keeps
/// them busy for as long as it lasts.
const BUSY_STREAK: u32 = 2;

/// Whether the offered load is past what normal operation absorbs, judged against what the engine completes.
///
/// - *Saturated* ([`Overload::saturated`]): the handshake work offered in the last window (or already in the
///   current one) reaches the engine's **measured service rate**: the CPU time of the handshakes its crypto
///   threads completed in windows during which they were busy throughout, as in the window before
///   ([`BUSY_STREAK`]; an EWMA, starting at one core per crypto thread, and drifting back to it in windows in
///   which a thread idled, so a rate learned while the engine was starved does not outlive the starvation). Work is learned CPU time ([`super::cost`]), so other work taking the CPU (a flood's accepts,
///   softirq, other processes) neither inflates the offered work nor, unless it keeps the engine from completing
///   what is admitted, lowers the rate: a queue that grew because the crypto thread was preempted is not a
///   handshake overload, and shedding handshakes would not shorten it.
/// - *Overloaded* ([`Overload::active`]): entered when the burst is exceeded while saturated (or XDP sheds
///   SYNs), kept while each window's offered work stays saturated, left `hold` after the last one that did.
#[derive(Debug)]
pub struct Overload {
    window: Duration,
    hold: Duration,
    /// The most the crypto threads can complete in one window: `instances` times the window, in ns.
    max_rate_ns: u64,
    /// The engine's measured service rate: handshake CPU work completed per window while busy, in ns.
    rate_ns: u64,
    until: Option<Instant>,
    window_start: Instant,
    offered_ns: u64,
    /// `offered_ns` of the last window closed (0 after an idle gap).
    last_offered_ns: u64,
    completed_ns: u64,
    /// Whether the engine had fewer jobs than crypto threads at some moment of the window (then its completions
    /// say nothing of its rate).
    slack: bool,
    /// Consecutive windows closed without slack.
    busy_streak: u32,
}

impl Overload {
    /// Not overloaded; `instances` crypto threads; offered work judged per `window`.
    pub fn new(window: Duration, hold: Duration, instances: usize, now: Instant) -> Self {
        let max_rate_ns = u64::try_from(window.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(instances.max(1) as u64);
        Self {
            window,
            hold,
            max_rate_ns,
            rate_ns: max_rate_ns,
            until: None,
            window_start: now,
            offered_ns: 0,
            last_offered_ns: 0,
            completed_ns: 0,
            slack: true,
            busy_streak: 0,
        }
    }

    /// Sets the window and the hold (a reload); an overload under way keeps its end, the window its work so far.
    pub fn set_window(&mut self, window: Duration, hold: Duration) {
        let old_window = u64::try_from(self.window.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let new_window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let instances = self.max_rate_ns / old_window;
        self.max_rate_ns = new_window.saturating_mul(instances.max(1));
        // The measured rate is work per window: the same rate in the new window's terms.
        let rescaled = u128::from(self.rate_ns) * u128::from(new_window) / u128::from(old_window);
        self.rate_ns = u64::try_from(rescaled)
            .unwrap_or(u64::MAX)
            .min(self.max_rate_ns);
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

    /// Notes one completed handshake that took `cpu_ns` of its crypto thread's CPU.
    pub fn completed(&mut self, cpu_ns: u64, now: Instant) {
        self.tick(now);
        self.completed_ns = self.completed_ns.saturating_add(cpu_ns);
    }

    /// Notes that the engine had fewer jobs than crypto threads (some thread idle) at `now`.
    pub fn slack(&mut self, now: Instant) {
        self.tick(now);
        self.slack = true;
    }

    /// Closes the window if it ended: a window busy throughout updates the measured rate; while overloaded, a
    /// saturated window extends the overload.
    pub fn tick(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < self.window {
            return;
        }
        self.busy_streak = if !self.slack && elapsed < self.window * 2 {
            self.busy_streak.saturating_add(1)
        } else {
            0
        };
        if self.slack {
            // The engine had time to spare: a rate learned while it was starved (a storm's accepts and resets
            // taking its core) must not outlive that, or the load after it stays "saturated". Back to one core
            // per crypto thread within about two seconds of such windows.
            self.rate_ns += (self.max_rate_ns - self.rate_ns.min(self.max_rate_ns)) >> RATE_SHIFT;
        } else if self.busy_streak >= BUSY_STREAK {
            // Per window of the nominal length: the window closes at the first event after its end.
            let sample =
                u128::from(self.completed_ns) * self.window.as_nanos() / elapsed.as_nanos().max(1);
            let sample = u64::try_from(sample)
                .unwrap_or(u64::MAX)
                .min(self.max_rate_ns);
            self.rate_ns = self.rate_ns - (self.rate_ns >> RATE_SHIFT) + (sample >> RATE_SHIFT);
        }
        if self.active(now) && self.offered_ns > 0 && self.offered_ns >= self.rate_ns {
            self.trigger(now);
        }
        self.last_offered_ns = if elapsed < self.window * 2 {
            self.offered_ns
        } else {
            0
        };
        self.window_start = now;
        self.offered_ns = 0;
        self.completed_ns = 0;
        self.slack = false;
    }

    /// Whether the offered handshake work reaches what the engine completes: in the last window, or already
    /// in the current one.
    pub fn saturated(&self) -> bool {
        let offered = self.last_offered_ns.max(self.offered_ns);
        offered > 0 && offered >= self.rate_ns
    }

    /// Whether the offered handshake work reaches what the crypto threads complete with a core each (in the last
    /// window, or already in the current one): more handshakes than the engine could serve even if nothing else
    /// took its CPU. Saturated without this, the engine was starved by other work (a flood's accepts, softirq):
    /// shedding in userspace bounds the queue, but dropping SYNs in XDP would turn clients away for seconds for
    /// work that is not theirs.
    pub fn beyond_capacity(&self) -> bool {
        self.last_offered_ns.max(self.offered_ns) >= self.max_rate_ns
    }

    /// The engine's measured service rate, in handshake CPU seconds per second (at most one per crypto thread).
    pub fn rate(&self) -> f64 {
        self.rate_ns as f64 / self.window.as_nanos().max(1) as f64
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
    async fn the_rate_is_learned_from_busy_windows_only() {
        let ms = Duration::from_millis;
        let mut o = Overload::new(ms(100), ms(200), 1, Instant::now());
        assert!((o.rate() - 1.0).abs() < 1e-9);
        // Windows in which the engine idled at times say nothing of its rate, however little completed.
        for _ in 0..20 {
            o.slack(Instant::now());
            o.completed(10_000_000, Instant::now());
            tokio::time::advance(ms(100)).await;
            o.tick(Instant::now());
        }
        assert!((o.rate() - 1.0).abs() < 1e-9, "{}", o.rate());
        // One busy window that completed little (a stall) is no rate.
        o.completed(1_000_000, Instant::now());
        tokio::time::advance(ms(100)).await;
        o.tick(Instant::now());
        o.slack(Instant::now());
        tokio::time::advance(ms(100)).await;
        o.tick(Instant::now());
        assert!((o.rate() - 1.0).abs() < 1e-9, "{}", o.rate());
        // Busy throughout, the crypto thread completing 40 ms of handshake CPU per 100 ms (the rest of the core
        // taken by other work): the rate follows.
        for _ in 0..40 {
            o.completed(40_000_000, Instant::now());
            tokio::time::advance(ms(100)).await;
            o.tick(Instant::now());
        }
        assert!((o.rate() - 0.4).abs() < 0.02, "{}", o.rate());
        // Half of a core's work offered: above what this engine completes.
        o.offered(50_000_000, Instant::now());
        assert!(o.saturated());
        // Then the engine idles at times again: within about two seconds the starved rate is gone.
        for _ in 0..20 {
            o.slack(Instant::now());
            tokio::time::advance(ms(100)).await;
            o.tick(Instant::now());
        }
        assert!(o.rate() > 0.9, "{}", o.rate());
    }

    #[tokio::test(start_paused = true)]
    async fn overload_lasts_while_the_offered_work_reaches_capacity() {
        let ms = Duration::from_millis;
        let mut o = Overload::new(ms(100), ms(200), 1, Instant::now());
        assert!(!o.active(Instant::now()));
        o.trigger(Instant::now());
        // Three windows each offered 120 ms of work, the crypto thread busy completing 100 ms each: still
        // overloaded at the end of them.
        for _ in 0..30 {
            tokio::time::advance(ms(10)).await;
            o.offered(12_000_000, Instant::now());
            o.completed(10_000_000, Instant::now());
        }
        tokio::time::advance(ms(10)).await;
        o.tick(Instant::now());
        assert!(o.active(Instant::now()));
        // Then half load, the crypto thread idle at times: over within the hold of the last full window.
        for _ in 0..30 {
            tokio::time::advance(ms(10)).await;
            o.offered(5_000_000, Instant::now());
            o.slack(Instant::now());
        }
        assert!(!o.active(Instant::now()));
    }
}
