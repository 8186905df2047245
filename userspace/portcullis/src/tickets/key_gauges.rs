//! Gauges of the live key set (keys by state, seconds to the next activation), read from the store at scrape
//! time: windows move with the clock, not with reloads.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::keyset::KeyState;
use super::store::KeyStore;

/// Reads the key set at scrape time: windows move with the clock, not with reloads.
#[derive(Debug)]
pub struct KeySetCollector {
    /// The live key set.
    pub store: Arc<KeyStore>,
}

impl Collector for KeySetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = SystemTime::now();
        let set = self.store.current();
        let states = set.states(now);
        let mut family = encoder.encode_descriptor(
            "portcullis_ticket_keys",
            "Ticket keys loaded, by state (pending, encrypting, decrypt_only)",
            None,
            MetricType::Gauge,
        )?;
        for state in [
            KeyState::Pending,
            KeyState::Encrypting,
            KeyState::DecryptOnly,
        ] {
            let n = states.iter().filter(|(_, s)| *s == state).count();
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                .encode(family.encode_family(&[("state", state.name())])?)?;
        }
        if let Some(secs) = set.next_activation(now) {
            let metric = encoder.encode_descriptor(
                "portcullis_ticket_key_next_activation_seconds",
                "Seconds until the next staged key starts encrypting (absent when none is staged: run `portcullis keys rotate`)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(secs).encode(metric)?;
        }
        Ok(())
    }
}
