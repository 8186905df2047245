//! Metrics of the offload engine: ring depth per instance (now and its high-water mark), queue wait and service time per class, retries,
//! rejections by reason, inline fallbacks, lost jobs and crypto-thread restarts.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::handshake::class::HandshakeClass;
use crate::handshake::engine::ShedReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    class: &'static str,
    reason: &'static str,
}

fn time_histogram() -> Histogram {
    // 10 µs doubling to ~5 s: resolves a crypto step (~150 µs) and a collapsed queue alike.
    Histogram::new(exponential_buckets(0.00001, 2.0, 20))
}

/// The engine's metric handles.
#[derive(Clone)]
pub struct EngineMetrics {
    wait: Family<ClassLabel, Histogram>,
    service: Family<ClassLabel, Histogram>,
    retries: Counter,
    rejected: Family<RejectLabels, Counter>,
    fallbacks: Family<ClassLabel, Counter>,
    idle_inline: Family<ClassLabel, Counter>,
    lost: Counter,
}

impl EngineMetrics {
    /// Registers the engine metrics. `depth` (jobs queued now, per instance), `depth_max` (the most ever queued,
    /// per instance) and `restarts` are read at scrape time.
    pub fn register(
        registry: &mut Registry,
        depth: PerInstance,
        depth_max: PerInstance,
        restarts: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        let wait = Family::<ClassLabel, Histogram>::new_with_constructor(
            time_histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_engine_queue_wait_seconds",
            "Time a handshake's expensive step waited in an engine ring before a crypto thread took it",
            wait.clone(),
        );
        let service = Family::<ClassLabel, Histogram>::new_with_constructor(
            time_histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_engine_service_seconds",
            "Time the expensive step (certificate, key exchange, signature) took on a crypto thread (or on the \
             worker, for the steps run inline)",
            service.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "portcullis_engine_retries",
            "Submissions that found every ring full (QAT's CPA_STATUS_RETRY)",
            retries.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "portcullis_engine_rejected",
            "Handshakes the engine did not take, by class and reason (ring_full, wait_deadline, engine_closed)",
            rejected.clone(),
        );
        let fallbacks = Family::<ClassLabel, Counter>::default();
        registry.register(
            "portcullis_engine_inline_fallbacks",
            "Handshakes run on the worker because every ring was full (full_ring = \"inline\")",
            fallbacks.clone(),
        );
        let idle_inline = Family::<ClassLabel, Counter>::default();
        registry.register(
            "portcullis_engine_idle_inline",
            "Handshakes whose expensive step ran on the worker, the engine being idle or the handshake a \
             resumption (engine.inline_when_idle; counted in the queue wait histogram with a wait of 0)",
            idle_inline.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "portcullis_engine_lost_jobs",
            "Jobs whose crypto thread panicked (the connection was closed)",
            lost.clone(),
        );
        registry.register_collector(Box::new(crate::metrics::ConstCounterCollector::new(
            "portcullis_engine_thread_restarts",
            "Crypto threads restarted after a panic",
            "engine",
            move || Ok(vec![("software".into(), restarts())]),
        )));
        registry.register_collector(Box::new(DepthCollector {
            name: "portcullis_engine_ring_depth",
            help: "Jobs queued now in each engine instance's ring",
            read: depth,
        }));
        registry.register_collector(Box::new(DepthCollector {
            name: "portcullis_engine_ring_depth_max",
            help: "The most jobs ever queued at once in each engine instance's ring, since start (never above ring_depth)",
            read: depth_max,
        }));
        Self {
            wait,
            service,
            retries,
            rejected,
            fallbacks,
            idle_inline,
            lost,
        }
    }

    pub(crate) fn completed(&self, class: HandshakeClass, wait: Duration, service: Duration) {
        let label = ClassLabel {
            class: class.name(),
        };
        self.wait.get_or_create(&label).observe(wait.as_secs_f64());
        self.service
            .get_or_create(&label)
            .observe(service.as_secs_f64());
    }

    pub(crate) fn retry(&self) {
        self.retries.inc();
    }

    pub(crate) fn rejected(&self, class: HandshakeClass, reason: ShedReason) {
        self.rejected
            .get_or_create(&RejectLabels {
                class: class.name(),
                reason: reason.name(),
            })
            .inc();
    }

    pub(crate) fn fallback(&self, class: HandshakeClass) {
        self.fallbacks
            .get_or_create(&ClassLabel {
                class: class.name(),
            })
            .inc();
    }

    pub(crate) fn idle_inline(&self, class: HandshakeClass) {
        self.idle_inline
            .get_or_create(&ClassLabel {
                class: class.name(),
            })
            .inc();
    }

    pub(crate) fn lost(&self) {
        self.lost.inc();
    }
}

/// A per-instance reading taken at scrape time: one value per engine instance, in instance order.
pub type PerInstance = Arc<dyn Fn() -> Vec<u64> + Send + Sync>;

/// A gauge with an `instance` label, read at scrape time.
struct DepthCollector {
    name: &'static str,
    help: &'static str,
    read: PerInstance,
}

impl std::fmt::Debug for DepthCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl prometheus_client::collector::Collector for DepthCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let depths = (self.read)();
        let mut family = encoder.encode_descriptor(
            self.name,
            self.help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (i, d) in depths.into_iter().enumerate() {
            let instance = i.to_string();
            let labels = [("instance", instance.as_str())];
            ConstGauge::new(i64::try_from(d).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
