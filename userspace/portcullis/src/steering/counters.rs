//! The steering metrics, read from the maps at scrape time: `portcullis_steering_total{outcome}` and
//! `portcullis_steering_saturated_workers`.

use std::fmt;
use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray};
use portcullis_abi::names::MAP_RP_OUTCOMES;
use portcullis_abi::steering::Outcome;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::SaturatedWorkers;
use crate::metrics::{ConstCounterCollector, EncodeCounters, per_cpu_total};

/// A handle on the per-CPU outcome counters. Cheap to clone.
#[derive(Clone)]
pub struct OutcomeCounters(Arc<PerCpuArray<MapData, u64>>);

impl OutcomeCounters {
    /// Wraps the map taken from the loaded object (or opened from its pin).
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self(Arc::new(map))
    }

    /// Every outcome's count since the program was loaded, summed over CPUs, in [`Outcome::ALL`] order.
    ///
    /// # Errors
    /// A map lookup the kernel refused.
    pub fn read(&self) -> anyhow::Result<Vec<(Outcome, u64)>> {
        Outcome::ALL
            .iter()
            .map(|&outcome| {
                let per_cpu = self.0.get(&outcome.index(), 0).with_context(|| {
                    format!(
                        "cannot read counter `{}` from map `{MAP_RP_OUTCOMES}`",
                        outcome.name()
                    )
                })?;
                Ok((outcome, per_cpu_total(&per_cpu)))
            })
            .collect()
    }
}

/// Both steering families for `/metrics`.
pub(crate) fn collector(
    outcomes: OutcomeCounters,
    saturated: Arc<SaturatedWorkers>,
) -> Box<dyn Collector> {
    Box::new(SteeringCollector {
        outcomes: Box::new(ConstCounterCollector::new(
            "portcullis_steering",
            "New connections seen by the reuseport steering program, by outcome (the *_fallback ones were left \
             to the kernel's hash)",
            "outcome",
            move || {
                Ok(outcomes
                    .read()?
                    .into_iter()
                    .map(|(o, n)| (o.name().into(), n))
                    .collect())
            },
        )),
        saturated,
    })
}

struct SteeringCollector {
    outcomes: Box<dyn EncodeCounters>,
    saturated: Arc<SaturatedWorkers>,
}

impl fmt::Debug for SteeringCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteeringCollector").finish()
    }
}

impl Collector for SteeringCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.outcomes.encode_to(&mut encoder)?;
        let marked = match self.saturated.marked() {
            Ok(marked) => marked.len() as i64,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the saturated-worker map");
                return Ok(());
            }
        };
        let metric = encoder.encode_descriptor(
            "portcullis_steering_saturated_workers",
            "Workers marked saturated in the steering map now (they get no new connections while another is free)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(marked).encode(metric)
    }
}
