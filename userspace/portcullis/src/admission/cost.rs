//! Each handshake class's cost, learned online: an exponentially weighted moving average of the service time
//! the engine measured, so admission prices an RSA full handshake (~1 ms) above an ECDSA one (~150 µs) and a
//! resumption without anyone configuring it.

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
}
