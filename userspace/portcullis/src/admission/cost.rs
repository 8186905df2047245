//! Each handshake class's cost, learned online: an exponentially weighted moving average of the CPU time the
//! engine measured for its expensive step, so admission prices an RSA full handshake (~1 ms) above an ECDSA one
//! (~150 µs) and a resumption without anyone configuring it.
//!
//! CPU time of the thread that ran the step ([`StepClock`]), not wall-clock time: a crypto thread preempted by
//! other work (the worker accepting a flood's connections, other processes) takes longer by the clock, but the
//! handshake did not cost more, and admission control must not read that as more handshake work
//! (BENCHMARKS.md "Floods"). Without `CONFIG_IRQ_TIME_ACCOUNTING` the kernel still charges softirq work that
//! interrupts the thread to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::handshake::class::HandshakeClass;

/// Weight of a new sample, as a shift: alpha = 1/8 (as TCP's SRTT).
const ALPHA_SHIFT: u32 = 3;

/// Starting estimates before anything was measured (TOOLCHAIN.md, measured here): resumption and ECDSA about
/// 160 µs, RSA-2048 about 1 ms.
fn initial_ns(class: HandshakeClass) -> u64 {
    match class {
        HandshakeClass::FullRsa => 1_000_000,
        _ => 160_000,
    }
}

/// Learned costs, one per class, lock-free.
#[derive(Debug, Clone)]
pub struct CostTable {
    ns: std::sync::Arc<[AtomicU64; 4]>,
}

impl CostTable {
    /// Starts from the initial estimates and registers `portcullis_admission_cost_seconds{class}`.
    pub fn new(registry: &mut Registry) -> Self {
        let ns = std::sync::Arc::new(HandshakeClass::ALL.map(|c| AtomicU64::new(initial_ns(c))));
        let table = Self { ns };
        registry.register_collector(Box::new(table.clone()));
        table
    }

    /// The current estimate for `class`, in nanoseconds.
    pub fn estimate_ns(&self, class: HandshakeClass) -> u64 {
        self.ns
            .get(class.index())
            .map_or(0, |a| a.load(Ordering::Relaxed))
            .max(1)
    }

    /// Folds in one measured service time.
    pub fn observe(&self, class: HandshakeClass, service: Duration) {
        let Some(slot) = self.ns.get(class.index()) else {
            return;
        };
        let sample = u64::try_from(service.as_nanos()).unwrap_or(u64::MAX);
        // A lost update under contention only delays convergence; no lock needed.
        let old = slot.load(Ordering::Relaxed);
        let new = old - (old >> ALPHA_SHIFT) + (sample >> ALPHA_SHIFT);
        slot.store(new, Ordering::Relaxed);
    }
}

impl Collector for CostTable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "portcullis_admission_cost_seconds",
            "Learned cost of the expensive handshake step per class (EWMA of service time)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for class in HandshakeClass::ALL {
            let labels = [("class", class.name())];
            let seconds = self.estimate_ns(class) as f64 / 1e9;
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Measures what one step cost the thread that ran it: the wall-clock time of the step (which the caller reads
/// anyway, through the vDSO) scaled by the thread's CPU share, and the thread's CPU clock itself
/// (`CLOCK_THREAD_CPUTIME_ID`) on sampled steps only.
///
/// The CPU clock is a system call that takes the runqueue lock: two reads per handshake were 2–5% of a full
/// ECDSA handshake's server CPU (BENCHMARKS.md, "Per-handshake overhead, third round"). So a thread reads it
/// around every step for its first [`WARM_UP`] steps, then around one step in [`SAMPLE_EVERY`], and keeps
/// decayed sums of the sampled steps' CPU and wall times; a step not sampled costs its wall time times
/// their ratio.
///
/// Why admission's budget stays right: admission uses these costs only through averages and sums — the
/// per-class EWMA ([`CostTable`], weight 1/8) and the overload detector's completed work per interval
/// (`burst.rs`). Which steps are sampled is a fixed stride, independent of how long a step takes, so the
/// ratio estimates Σcpu/Σwall of this thread's recent steps, and the scaled wall times have the CPU time's
/// sum: a step preempted by other work is over-counted, the steps that were not are under-counted by as much.
/// What is lost is the per-step filtering of preemption: one step preempted for a whole time slice (a few
/// ms) moves its class's estimate by an eighth of that for a few steps, as it moves the ratio; the sampled
/// steps keep the bias at zero on average. And a step's wall time counts at most [`WALL_CLAMP`] times the
/// thread's average (a preempted step reads as a long one, not as a time slice), on sampled steps too, so the sums
/// still agree. Only the worker's inline steps are sampled ([`StepClock::start`]): a crypto thread's queued steps
/// read the CPU clock every time ([`StepClock::exact`]): a crypto thread is preempted in bursts (a flood's
/// accepts, the host's other work) that a ratio learned before the burst would misprice, just when admission
/// decides, and its steps are long enough (RSA: milliseconds) that two system calls are nothing. The wall clock
/// is what the per-step samples fall back to where the CPU clock is unavailable.
#[derive(Debug, Clone, Copy)]
pub struct StepClock {
    cpu: Option<Duration>,
}

/// Steps a thread measures with its CPU clock before it samples (the estimates learn from the first handshakes
/// as fast as before).
pub const WARM_UP: u32 = 64;

/// After [`WARM_UP`], one step in this many reads the CPU clock.
pub const SAMPLE_EVERY: u32 = 16;

/// A thread's measured CPU share: how many steps it started, and decayed sums of the sampled steps' CPU and
/// wall time (ns).
#[derive(Debug, Clone, Copy, Default)]
struct CpuShare {
    steps: u32,
    cpu_ns: u64,
    wall_ns: u64,
}

impl CpuShare {
    /// Whether the next step reads the CPU clock.
    fn sample_next(&mut self) -> bool {
        let n = self.steps;
        self.steps = n.saturating_add(1);
        n < WARM_UP || n.is_multiple_of(SAMPLE_EVERY) || self.wall_ns == 0
    }

    /// Folds in a sampled step (weight 1/8, as the cost table).
    fn sampled(&mut self, cpu: Duration, wall: Duration) {
        let cpu = ns(cpu);
        // The CPU clock and the wall clock are read a few ns apart: a step never used more CPU than time.
        let wall = self.clamp(ns(wall)).max(cpu).max(1);
        if self.wall_ns == 0 {
            // The first sample is the average so far.
            (self.cpu_ns, self.wall_ns) = (cpu, wall);
            return;
        }
        self.cpu_ns = self.cpu_ns - (self.cpu_ns >> ALPHA_SHIFT) + (cpu >> ALPHA_SHIFT);
        self.wall_ns = self.wall_ns - (self.wall_ns >> ALPHA_SHIFT) + (wall >> ALPHA_SHIFT);
    }

    /// A step not sampled: its wall time (clamped) times the CPU share (the wall time itself before any sample).
    fn scale(&self, wall: Duration) -> Duration {
        if self.wall_ns == 0 {
            return wall;
        }
        let wall = self.clamp(ns(wall));
        let scaled = u128::from(wall) * u128::from(self.cpu_ns) / u128::from(self.wall_ns);
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    /// A wall time of at most [`WALL_CLAMP`] times the average: a step preempted for a whole time slice counts
    /// as a long step, not as milliseconds. Applied alike to sampled and unsampled steps, so the ratio of the
    /// sums stays the one that makes the scaled times add up to the CPU time.
    fn clamp(&self, wall_ns: u64) -> u64 {
        if self.wall_ns == 0 {
            wall_ns
        } else {
            wall_ns.min(self.wall_ns.saturating_mul(WALL_CLAMP))
        }
    }
}

/// How many times its thread's average wall time a step counts at most ([`CpuShare::clamp`]).
const WALL_CLAMP: u64 = 4;

thread_local! {
    static SHARE: std::cell::Cell<CpuShare> = const {
        std::cell::Cell::new(CpuShare { steps: 0, cpu_ns: 0, wall_ns: 0 })
    };
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl StepClock {
    /// Starts measuring a step on the calling thread, reading the CPU clock around it always: for a crypto
    /// thread, whose steps are queued full handshakes (RSA: milliseconds) on a thread that other work preempts
    /// (a flood's accepts, other processes), where two system calls are nothing and each step's CPU time is
    /// what keeps a preempted thread's steps from reading as more handshake work (module doc).
    pub fn exact() -> Self {
        Self {
            cpu: thread_cpu_now(),
        }
    }

    /// Starts measuring a step on the calling thread, reading the CPU clock only if this step is sampled: for
    /// the worker's inline steps (tens of µs, most handshakes, where the two reads were 2–5% of the cost).
    pub fn start() -> Self {
        let sample = SHARE.with(|c| {
            let mut share = c.get();
            let sample = share.sample_next();
            c.set(share);
            sample
        });
        Self {
            cpu: if sample { thread_cpu_now() } else { None },
        }
    }

    /// What the step cost the calling thread (the one that called [`StepClock::start`]), given its wall-clock
    /// time `wall`: the CPU clock's difference on a sampled step, else `wall` times the thread's CPU share.
    pub fn cost(&self, wall: Duration) -> Duration {
        SHARE.with(|c| {
            let mut share = c.get();
            match (self.cpu, self.cpu.and_then(|_| thread_cpu_now())) {
                (Some(a), Some(b)) => {
                    let cpu = b.saturating_sub(a);
                    share.sampled(cpu, wall);
                    c.set(share);
                    cpu
                }
                _ => share.scale(wall),
            }
        })
    }
}

/// `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`: a system call, well under a microsecond.
fn thread_cpu_now() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call writes only it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    (rc == 0).then(|| {
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_to_the_measured_cost() {
        let t = CostTable::new(&mut Registry::default());
        for _ in 0..100 {
            t.observe(HandshakeClass::FullRsa, Duration::from_micros(2000));
            t.observe(HandshakeClass::Tls13Psk, Duration::from_micros(40));
        }
        let rsa = t.estimate_ns(HandshakeClass::FullRsa);
        let psk = t.estimate_ns(HandshakeClass::Tls13Psk);
        assert!((1_950_000..=2_000_000).contains(&rsa), "{rsa}");
        assert!((40_000..=41_000).contains(&psk), "{psk}");
    }

    /// A thread that sleeps through its sampled steps has a CPU share near 0, so its unsampled steps cost
    /// near 0 too; a thread that spins has a share near 1.
    #[test]
    fn a_step_costs_cpu_not_sleep_sampled_or_not() {
        std::thread::spawn(|| {
            let mut sampled = 0;
            for _ in 0..WARM_UP {
                let c = StepClock::start();
                sampled += u32::from(c.cpu.is_some());
                let t = std::time::Instant::now();
                std::thread::sleep(Duration::from_micros(500));
                let cost = c.cost(t.elapsed());
                assert!(
                    cost < Duration::from_micros(400),
                    "{cost:?} of CPU while asleep"
                );
            }
            assert_eq!(sampled, WARM_UP, "every warm-up step reads the CPU clock");
            let unsampled = (0..SAMPLE_EVERY)
                .map(|_| StepClock::start())
                .find(|c| c.cpu.is_none())
                .expect("one step in SAMPLE_EVERY samples, the others not");
            let asleep = unsampled.cost(Duration::from_micros(600));
            assert!(asleep < Duration::from_micros(100), "{asleep:?}");
        })
        .join()
        .expect("sleeper");
        std::thread::spawn(|| {
            for _ in 0..WARM_UP {
                let c = StepClock::start();
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_micros(300) {
                    std::hint::black_box(0u64);
                }
                c.cost(t.elapsed());
            }
            let unsampled = (0..SAMPLE_EVERY)
                .map(|_| StepClock::start())
                .find(|c| c.cpu.is_none())
                .expect("unsampled step");
            let busy = unsampled.cost(Duration::from_micros(600));
            // Spinning on a shared host can lose much of its time slice: still well above the sleeper's share.
            assert!(
                (Duration::from_micros(100)..=Duration::from_micros(600)).contains(&busy),
                "{busy:?}"
            );
        })
        .join()
        .expect("spinner");
    }

    /// The scaled wall times add up to the CPU time: sampled steps of 100 µs CPU in 150 µs wall make every
    /// unsampled 150 µs step cost 100 µs, a preempted 450 µs one 300 µs, and one preempted for a whole time slice
    /// no more than four average steps.
    #[test]
    fn unsampled_steps_cost_their_wall_time_times_the_cpu_share() {
        let mut share = CpuShare::default();
        assert_eq!(
            share.scale(Duration::from_micros(7)),
            Duration::from_micros(7)
        );
        for _ in 0..200 {
            share.sampled(Duration::from_micros(100), Duration::from_micros(150));
        }
        let scaled = share.scale(Duration::from_micros(150)).as_nanos();
        assert!((99_000..=101_000).contains(&scaled), "{scaled}");
        let preempted = share.scale(Duration::from_micros(450)).as_nanos();
        assert!((297_000..=303_000).contains(&preempted), "{preempted}");
        let sliced = share.scale(Duration::from_millis(30)).as_nanos();
        assert!((395_000..=405_000).contains(&sliced), "{sliced}");
        // Sampled steps are clamped alike: a sampled time slice does not inflate the average wall time.
        share.sampled(Duration::from_micros(100), Duration::from_millis(30));
        assert!(share.wall_ns < 210_000, "{}", share.wall_ns);
        // The CPU clock read after the wall clock may pass it by a few ns: never a share above 1.
        let mut share = CpuShare::default();
        share.sampled(Duration::from_nanos(1_010), Duration::from_nanos(1_000));
        assert_eq!(
            share.scale(Duration::from_micros(3)),
            Duration::from_micros(3)
        );
    }

    /// Every step is sampled during the warm-up, then one in `SAMPLE_EVERY`.
    #[test]
    fn sampling_after_the_warm_up_is_one_step_in_a_stride() {
        let mut share = CpuShare::default();
        assert!((0..WARM_UP).all(|_| share.sample_next()));
        share.sampled(Duration::from_micros(1), Duration::from_micros(1));
        let sampled = (0..SAMPLE_EVERY * 10)
            .filter(|_| share.sample_next())
            .count();
        assert_eq!(sampled, 10);
    }
}
