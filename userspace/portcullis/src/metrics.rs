//! Prometheus metrics: one registry, label types, and handles the workers update.
//!
//! Naming follows Prometheus conventions: `portcullis_` prefix, base units (`_seconds`, `_bytes`), counters end
//! in `_total` (prometheus-client appends it). Hot-path counters are resolved to plain handles at start-up so a
//! connection pays an atomic add, not a label lookup.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use portcullis_abi::client_hello::Fingerprint;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::handshake::stages::Stage;
use crate::seen_fingerprints::SeenFingerprints;

/// TLS version label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum VersionLabel {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
    /// The handshake failed before a version was chosen.
    None,
}

/// Whether the handshake resumed a session.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ModeLabel {
    /// Full handshake: key exchange and a certificate signature.
    Full,
    /// Resumed from a ticket or session ID.
    Resumed,
    /// Unknown: the handshake failed first.
    None,
}

impl VersionLabel {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tls12 => "tls1.2",
            Self::Tls13 => "tls1.3",
            Self::None => "none",
        }
    }
}

impl ModeLabel {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Resumed => "resumed",
            Self::None => "none",
        }
    }
}

impl EncodeLabelValue for VersionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.name())
    }
}

impl EncodeLabelValue for ModeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.name())
    }
}

/// Labels of `portcullis_handshakes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// Listener name.
    pub listener: Arc<str>,
    /// Negotiated version.
    pub version: VersionLabel,
    /// Full or resumed.
    pub mode: ModeLabel,
    /// `ok`, or the failure cause (see `handshake::Failure::name`).
    pub result: &'static str,
}

/// Labels of `portcullis_handshake_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// Listener name.
    pub listener: Arc<str>,
    /// Negotiated version.
    pub version: VersionLabel,
    /// Full or resumed.
    pub mode: ModeLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    listener: Arc<str>,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OfferLabels {
    listener: Arc<str>,
    offer: &'static str,
}

/// Labels of `portcullis_handshake_stage_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
    mode: ModeLabel,
}

/// Labels of `portcullis_upstream_connect_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    cause: &'static str,
}

/// Every metric of the daemon.
#[derive(Clone)]
pub struct Metrics {
    handshakes: Family<HandshakeLabels, Counter>,
    handshake_duration: Family<DurationLabels, Histogram>,
    handshake_stages: Family<StageLabels, Histogram>,
    active: Family<ListenerLabel, Gauge>,
    accepted: Family<ListenerLabel, Counter>,
    worker_accepted: Family<WorkerLabel, Counter>,
    forwarded: Family<BytesLabels, Counter>,
    offers: Family<OfferLabels, Counter>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    /// Not a Prometheus metric (a fingerprint label would be unbounded): served at `/fingerprints`.
    seen: Arc<SeenFingerprints>,
    registry: Arc<Registry>,
}

fn duration_histogram() -> Histogram {
    // 100 µs doubling to ~13 s: resolves a fast resumption and a multi-second queueing collapse alike.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn stage_histogram() -> Histogram {
    // 20 µs growing by 25% a bucket to ~3 s: fine enough to read a p99 within a quarter, for stages from a
    // read syscall to a standing queue.
    Histogram::new(exponential_buckets(0.00002, 1.25, 54))
}

impl Metrics {
    /// A registry with only this module's metrics (tests).
    #[cfg(test)]
    pub fn new(xdp: Option<Box<dyn Collector>>) -> Self {
        Self::new_with(xdp, |_| {})
    }

    /// As [`Metrics::new`], then lets `more` register metrics owned elsewhere (the ticket metrics).
    pub fn new_with(xdp: Option<Box<dyn Collector>>, more: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "portcullis_handshakes",
            "TLS handshakes by listener, version, full or resumed, and result (ok or failure cause)",
            handshakes.clone(),
        );
        let handshake_duration = Family::<DurationLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_handshake_duration_seconds",
            "Time from TCP accept to a finished TLS handshake, successful handshakes only",
            handshake_duration.clone(),
        );
        let handshake_stages = Family::<StageLabels, Histogram>::new_with_constructor(
            stage_histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_handshake_stage_seconds",
            "Where completed handshakes spent their time, by stage (socket: ClientHello waiting in the kernel for \
             its worker; read; queue: admission and the engine ring; crypto; wake: the worker resuming after the \
             crypto; flight: writing the server flight; client: until the client's answer is processed) and mode",
            handshake_stages.clone(),
        );
        let active = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "portcullis_connections_active",
            "Client connections open now (handshaking or established)",
            active.clone(),
        );
        let accepted = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "portcullis_connections_accepted",
            "TCP connections accepted",
            accepted.clone(),
        );
        let worker_accepted = Family::<WorkerLabel, Counter>::default();
        registry.register(
            "portcullis_worker_connections_accepted",
            "TCP connections accepted, by worker (all listeners): shows how connections are spread over workers",
            worker_accepted.clone(),
        );
        let forwarded = Family::<BytesLabels, Counter>::default();
        registry.register(
            "portcullis_forwarded_bytes",
            "Decrypted bytes forwarded, by direction (client_to_upstream, upstream_to_client)",
            forwarded.clone(),
        );
        let offers = Family::<OfferLabels, Counter>::default();
        registry.register(
            "portcullis_client_hello_offers",
            "What ClientHellos offered, from our own parse of the raw record: psk (TLS 1.3 resumption), early_data (0-RTT), tls12_ticket, sni",
            offers.clone(),
        );
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "portcullis_upstream_connect_errors",
            "Failed connects to an upstream backend, by backend and cause (timeout, refused, other)",
            upstream_errors.clone(),
        );
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register(
            "portcullis_build_info",
            "Build information; the value is always 1",
            build,
        );
        if let Some(xdp) = xdp {
            registry.register_collector(xdp);
        }
        more(&mut registry);
        Self {
            handshakes,
            handshake_duration,
            handshake_stages,
            active,
            accepted,
            worker_accepted,
            forwarded,
            offers,
            upstream_errors,
            seen: Arc::default(),
            registry: Arc::new(registry),
        }
    }

    /// The recent ClientHello fingerprints, which `/fingerprints` reports.
    pub fn seen_fingerprints(&self) -> &SeenFingerprints {
        &self.seen
    }

    /// Handles for one listener, resolved once.
    /// Worker `index`'s accepted-connections counter (`portcullis_worker_connections_accepted_total{worker}`).
    pub fn worker_accepted(&self, index: usize) -> Counter {
        self.worker_accepted
            .get_or_create(&WorkerLabel {
                worker: index.to_string(),
            })
            .clone()
    }

    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let listener: Arc<str> = Arc::from(name);
        let label = ListenerLabel {
            listener: listener.clone(),
        };
        let bytes = |direction| {
            self.forwarded
                .get_or_create(&BytesLabels {
                    listener: listener.clone(),
                    direction,
                })
                .clone()
        };
        ListenerMetrics {
            active: self.active.get_or_create(&label).clone(),
            accepted: self.accepted.get_or_create(&label).clone(),
            to_upstream: bytes("client_to_upstream"),
            to_client: bytes("upstream_to_client"),
            handshakes: self.handshakes.clone(),
            handshake_duration: self.handshake_duration.clone(),
            stage_handles: Arc::new([ModeLabel::Full, ModeLabel::Resumed].map(|mode| {
                Stage::ALL.map(|stage| {
                    self.handshake_stages
                        .get_or_create(&StageLabels {
                            stage: stage.name(),
                            mode,
                        })
                        .clone()
                })
            })),
            handshake_stages: self.handshake_stages.clone(),
            ok_handles: Arc::default(),
            offer_handles: Arc::default(),
            offers: self.offers.clone(),
            upstream_errors: self.upstream_errors.clone(),
            seen: self.seen.clone(),
            listener,
        }
    }

    /// The Prometheus text exposition format 0.0.4 (what `promtool check metrics` and scrapers without
    /// OpenMetrics support read): as OpenMetrics, but counters' HELP/TYPE carry the `_total` name and there is
    /// no `# EOF`.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// One listener's metric handles, cheap to clone into each connection.
#[derive(Clone)]
pub struct ListenerMetrics {
    listener: Arc<str>,
    /// Open connections.
    pub active: Gauge,
    /// Accepted connections.
    pub accepted: Counter,
    /// Plaintext bytes client -> upstream.
    pub to_upstream: Counter,
    /// Plaintext bytes upstream -> client.
    pub to_client: Counter,
    handshakes: Family<HandshakeLabels, Counter>,
    handshake_duration: Family<DurationLabels, Histogram>,
    /// `portcullis_handshake_stage_seconds` handles for full and resumed handshakes, resolved once: seven
    /// observations per handshake without a label lookup each.
    stage_handles: Arc<[[Histogram; Stage::ALL.len()]; 2]>,
    handshake_stages: Family<StageLabels, Histogram>,
    /// The `result="ok"` series of `handshakes` and `handshake_duration` per [`ok_index`], and the `offers`
    /// series per [`offer_index`], resolved on first use (a series still appears when it first counts): the
    /// label lookups per handshake (a lock, a hash, the listener name's reference count) done once.
    ok_handles: Arc<[OnceLock<(Counter, Histogram)>; 4]>,
    offer_handles: Arc<[OnceLock<Counter>; 4]>,
    offers: Family<OfferLabels, Counter>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    seen: Arc<SeenFingerprints>,
}

/// Where a successful handshake's handles are kept in `ListenerMetrics::ok_handles`.
fn ok_index(version: VersionLabel, mode: ModeLabel) -> Option<usize> {
    match (version, mode) {
        (VersionLabel::Tls13, ModeLabel::Full) => Some(0),
        (VersionLabel::Tls13, ModeLabel::Resumed) => Some(1),
        (VersionLabel::Tls12, ModeLabel::Full) => Some(2),
        (VersionLabel::Tls12, ModeLabel::Resumed) => Some(3),
        _ => None,
    }
}

/// Where an offer's counter is kept in `ListenerMetrics::offer_handles`.
fn offer_index(offer: &str) -> Option<usize> {
    ["sni", "psk", "early_data", "tls12_ticket"]
        .iter()
        .position(|o| *o == offer)
}

impl ListenerMetrics {
    /// The listener's name (its `listener` label).
    pub fn name(&self) -> &str {
        &self.listener
    }

    /// Counts a finished handshake; `duration` is observed for successful ones.
    pub fn handshake(
        &self,
        version: VersionLabel,
        mode: ModeLabel,
        result: &'static str,
        duration: Option<f64>,
    ) {
        if result == "ok"
            && let Some(seconds) = duration
            && let Some(slot) = ok_index(version, mode).and_then(|i| self.ok_handles.get(i))
        {
            let (count, time) = slot.get_or_init(|| {
                let count = self
                    .handshakes
                    .get_or_create(&HandshakeLabels {
                        listener: self.listener.clone(),
                        version,
                        mode,
                        result,
                    })
                    .clone();
                let time = self
                    .handshake_duration
                    .get_or_create(&DurationLabels {
                        listener: self.listener.clone(),
                        version,
                        mode,
                    })
                    .clone();
                (count, time)
            });
            count.inc();
            time.observe(seconds);
            return;
        }
        self.handshakes
            .get_or_create(&HandshakeLabels {
                listener: self.listener.clone(),
                version,
                mode,
                result,
            })
            .inc();
        if let Some(seconds) = duration {
            self.handshake_duration
                .get_or_create(&DurationLabels {
                    listener: self.listener.clone(),
                    version,
                    mode,
                })
                .observe(seconds);
        }
    }

    /// Observes where a completed handshake's time went.
    pub fn stages(
        &self,
        mode: ModeLabel,
        durations: impl IntoIterator<Item = (Stage, std::time::Duration)>,
    ) {
        let handles = match mode {
            ModeLabel::Full => self.stage_handles.first(),
            ModeLabel::Resumed => self.stage_handles.get(1),
            ModeLabel::None => None,
        };
        for (stage, d) in durations {
            match handles.and_then(|h| h.get(stage.index())) {
                Some(h) => h.observe(d.as_secs_f64()),
                None => self
                    .handshake_stages
                    .get_or_create(&StageLabels {
                        stage: stage.name(),
                        mode,
                    })
                    .observe(d.as_secs_f64()),
            }
        }
    }

    /// Counts something a ClientHello offered (`psk`, `early_data`, `tls12_ticket`, `sni`).
    pub fn offer(&self, offer: &'static str) {
        let counter = || {
            self.offers
                .get_or_create(&OfferLabels {
                    listener: self.listener.clone(),
                    offer,
                })
                .clone()
        };
        match offer_index(offer).and_then(|i| self.offer_handles.get(i)) {
            Some(slot) => slot.get_or_init(counter).inc(),
            None => counter().inc(),
        };
    }

    /// Counts a ClientHello's fingerprint among the recent ones (`/fingerprints`).
    pub fn fingerprint(&self, fingerprint: Fingerprint) {
        self.seen.record(fingerprint, Instant::now());
    }

    /// Counts a failed upstream connect.
    pub fn upstream_error(&self, upstream: std::net::SocketAddr, cause: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
                cause,
            })
            .inc();
    }
}

/// A collector for counters read at scrape time from somewhere else (the XDP per-CPU array).
pub struct ConstCounterCollector<F> {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    read: F,
}

impl<F> ConstCounterCollector<F> {
    /// `read` returns (label value, count) pairs on each scrape, or an error that is logged (the scrape then
    /// omits the metric rather than failing).
    pub fn new(name: &'static str, help: &'static str, label: &'static str, read: F) -> Self {
        Self {
            name,
            help,
            label,
            read,
        }
    }
}

impl<F> fmt::Debug for ConstCounterCollector<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConstCounterCollector")
            .field("name", &self.name)
            .finish()
    }
}

impl<F> Collector for ConstCounterCollector<F>
where
    F: Fn() -> anyhow::Result<Vec<(Cow<'static, str>, u64)>> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.encode_to(&mut encoder)
    }
}

/// The total of a per-CPU counter (a BPF per-CPU array's slot): wrapping, as a metric must never panic and a `u64`
/// count does not overflow in practice.
pub(crate) fn per_cpu_total(per_cpu: &aya::maps::PerCpuValues<u64>) -> u64 {
    per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v))
}

/// A counter family that can write itself into a scrape; lets [`CounterFamilies`] hold several
/// [`ConstCounterCollector`]s with different read closures.
pub trait EncodeCounters: fmt::Debug + Send + Sync + 'static {
    /// Writes the family into `encoder`.
    fn encode_to(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error>;
}

/// Several counter families registered as one collector (the XDP verdicts and malformed reasons).
#[derive(Debug)]
pub struct CounterFamilies(pub Vec<Box<dyn EncodeCounters>>);

impl Collector for CounterFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for family in &self.0 {
            family.encode_to(&mut encoder)?;
        }
        Ok(())
    }
}

impl<F> EncodeCounters for ConstCounterCollector<F>
where
    F: Fn() -> anyhow::Result<Vec<(Cow<'static, str>, u64)>> + Send + Sync + 'static,
{
    fn encode_to(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let values = match (self.read)() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(metric = self.name, error = %format!("{e:#}"), "cannot read counters for scrape");
                return Ok(());
            }
        };
        let mut family = encoder.encode_descriptor(
            self.name,
            self.help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (value_label, count) in values {
            let labels = [(self.label, value_label.as_ref())];
            let counter = ConstCounter::new(count);
            counter.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_format_names_counters_with_total() {
        let m = Metrics::new(None);
        m.listener("https")
            .handshake(VersionLabel::Tls13, ModeLabel::Full, "ok", Some(0.001));
        let text = m.encode_prometheus();
        assert!(
            text.contains("# HELP portcullis_handshakes_total "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE portcullis_handshakes_total counter"),
            "{text}"
        );
        assert!(text.contains("portcullis_handshakes_total{listener=\"https\",version=\"tls1.3\",mode=\"full\",result=\"ok\"} 1"));
        assert!(text.contains("# TYPE portcullis_handshake_duration_seconds histogram"));
        assert!(!text.contains("# EOF"));
    }

    /// The cached series count as the family's own: a listener's handles and a second `ListenerMetrics` of the
    /// same name (after a reload) add to one series, and a series appears only once it counts.
    #[test]
    fn cached_handshake_and_offer_series_are_the_familys() {
        let m = Metrics::new(None);
        let a = m.listener("https");
        a.handshake(VersionLabel::Tls13, ModeLabel::Full, "ok", Some(0.001));
        a.handshake(VersionLabel::Tls13, ModeLabel::Full, "ok", Some(0.001));
        a.handshake(VersionLabel::None, ModeLabel::None, "timeout", None);
        a.offer("sni");
        a.offer("client_cert");
        let b = m.listener("https");
        b.handshake(VersionLabel::Tls13, ModeLabel::Full, "ok", Some(0.001));
        b.offer("sni");
        let text = m.encode_prometheus();
        for line in [
            r#"portcullis_handshakes_total{listener="https",version="tls1.3",mode="full",result="ok"} 3"#,
            r#"portcullis_handshake_duration_seconds_count{listener="https",version="tls1.3",mode="full"} 3"#,
            r#"result="timeout"} 1"#,
            r#"offer="sni"} 2"#,
            r#"offer="client_cert"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l.ends_with(line) || l == line),
                "{line} not in {text}"
            );
        }
        assert!(!text.contains(r#"version="tls1.2""#), "{text}");
    }
}
