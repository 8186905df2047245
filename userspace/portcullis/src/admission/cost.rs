//! Each handshake class's cost, learned online: an exponentially weighted moving average of the CPU time the
//! engine measured for its expensive step, so admission prices an RSA full handshake (~1 ms) above an ECDSA one
//! (~150 µs) and a resumption without anyone configuring it.
//!
//! CPU time of the thread that ran the step ([`ThreadCpu`]), not wall-clock time: a crypto thread preempted by
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

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) at the start of a step, to measure what the step
/// cost that thread. Falls back to the wall clock where the CPU clock is unavailable.
#[derive(Debug, Clone, Copy)]
pub struct ThreadCpu {
    cpu: Option<Duration>,
    wall: std::time::Instant,
}

impl ThreadCpu {
    /// Starts measuring on the calling thread.
    pub fn start() -> Self {
        Self {
            cpu: thread_cpu_now(),
            wall: std::time::Instant::now(),
        }
    }

    /// The calling thread's CPU time since [`ThreadCpu::start`] (call it on the same thread); the wall-clock
    /// time if the CPU clock failed.
    pub fn elapsed(&self) -> Duration {
        match (self.cpu, thread_cpu_now()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => self.wall.elapsed(),
        }
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

    #[test]
    fn thread_cpu_counts_work_not_sleep() {
        let t = ThreadCpu::start();
        std::thread::sleep(Duration::from_millis(30));
        let slept = t.elapsed();
        assert!(
            slept < Duration::from_millis(10),
            "{slept:?} of CPU while asleep"
        );
        let t = ThreadCpu::start();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(0u64);
        }
        assert!(t.elapsed() > Duration::ZERO);
    }
}
