//! Metrics of the session store and of 0-RTT:
//! - `portcullis_session_store_requests_total{op, result}`: `op="fetch"` with `hit`, `miss`, `replay` (a
//!   second use of a ticket we issued, within its lifetime), `timeout`, `error`, `breaker_open`, `unsealed`
//!   (a value that did not open), `queued` (taken on this instance before its write reached Redis); `op="put"` with `ok`, `error`, `dropped` (queue full), `no_key`.
//! - `portcullis_session_store_request_seconds{op}`: latency of answered requests.
//! - `portcullis_session_store_breaker_open`: 1 while the circuit breaker keeps handshakes off the store.
//! - `portcullis_early_data_total{listener, outcome}`: each 0-RTT attempt, `accepted` or why not.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EarlyLabels {
    listener: Arc<str>,
    outcome: &'static str,
}

/// What became of a 0-RTT attempt: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Early data accepted.
    Accepted,
    /// The listener has no early data (`max_size = 0`).
    Off,
    /// The client sent more than `max_size` (the handshake fails).
    TooLarge,
    /// The ticket ages differ by more than `freshness`: resumed without early data.
    Stale,
    /// The store does not know the ticket (expired, evicted, another store, or no PSK we could read).
    StoreMiss,
    /// The ticket was already used: a replayed 0-RTT flight.
    Replay,
    /// The store timed out, failed, or its breaker is open: full handshake.
    StoreDown,
    /// Admission control sheds: resumed without early data.
    Shedding,
    /// rustls refused it (ALPN, SNI, cipher suite differ from the session's).
    Mismatch,
    /// The ClientHello is suspect (our parser, the XDP guard's, calls it malformed): resumed without early data.
    Suspect,
}

impl Outcome {
    /// Every outcome, for pre-registering series.
    pub const ALL: [Outcome; 10] = [
        Self::Accepted,
        Self::Off,
        Self::TooLarge,
        Self::Stale,
        Self::StoreMiss,
        Self::Replay,
        Self::StoreDown,
        Self::Shedding,
        Self::Mismatch,
        Self::Suspect,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Off => "off",
            Self::TooLarge => "too_large",
            Self::Stale => "stale",
            Self::StoreMiss => "store_miss",
            Self::Replay => "replay",
            Self::StoreDown => "store_down",
            Self::Shedding => "shedding",
            Self::Mismatch => "mismatch",
            Self::Suspect => "suspect",
        }
    }
}

/// Every `result` of `op="fetch"`, in the order of [`Handles::fetch`].
const FETCH_RESULTS: [&str; 8] = [
    "hit",
    "miss",
    "replay",
    "timeout",
    "error",
    "breaker_open",
    "unsealed",
    "queued",
];
/// Every `result` of `op="put"`, in the order of [`Handles::put`].
const PUT_RESULTS: [&str; 4] = ["ok", "error", "dropped", "no_key"];

/// The series counted on every resumption, looked up once: `Family::get_or_create` hashes the labels and
/// takes a lock on each call, a few hundred ns twice per store request (BENCHMARKS.md, "Where the store's
/// CPU per resumption goes").
#[derive(Debug)]
struct Handles {
    fetch: [Counter; FETCH_RESULTS.len()],
    put: [Counter; PUT_RESULTS.len()],
    fetch_latency: Histogram,
    put_latency: Histogram,
}

/// The store's metrics (cheap clones).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabel, Histogram>,
    breaker_open: Gauge,
    early: Family<EarlyLabels, Counter>,
    handles: Arc<Handles>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 10 µs doubling to ~80 ms: a loopback Redis answers in tens of µs, the timeout is 5 ms.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 14))
}

impl StoreMetrics {
    /// Unregistered metrics.
    pub fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let counter = |op, result| {
            requests
                .get_or_create(&RequestLabels { op, result })
                .clone()
        };
        let histogram = |op| latency.get_or_create(&OpLabel { op }).clone();
        let handles = Arc::new(Handles {
            fetch: FETCH_RESULTS.map(|result| counter("fetch", result)),
            put: PUT_RESULTS.map(|result| counter("put", result)),
            fetch_latency: histogram("fetch"),
            put_latency: histogram("put"),
        });
        Self {
            requests,
            latency,
            breaker_open: Gauge::default(),
            early: Family::default(),
            handles,
        }
    }

    /// Adds them to `registry` (every `op`/`result` series is there from the start, at 0).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_session_store_requests",
            "Session store requests by operation and result (fetch: hit, miss, replay, timeout, error, breaker_open, unsealed, queued; put: ok, error, dropped, no_key)",
            self.requests.clone(),
        );
        registry.register(
            "portcullis_session_store_request_seconds",
            "Latency of answered session store requests",
            self.latency.clone(),
        );
        registry.register(
            "portcullis_session_store_breaker_open",
            "1 while the session store's circuit breaker keeps handshakes from asking it",
            self.breaker_open.clone(),
        );
        registry.register(
            "portcullis_early_data",
            "TLS 1.3 0-RTT attempts by listener and outcome (accepted, or why not)",
            self.early.clone(),
        );
    }

    /// Adds `n` to the `op`/`result` series: its cached handle (`results[i]` is `handles[i]`'s result), else the
    /// family's (a result outside the list).
    fn count(
        &self,
        op: &'static str,
        results: &[&str],
        handles: &[Counter],
        result: &'static str,
        n: u64,
    ) {
        let cached = results.iter().position(|r| *r == result);
        match cached.and_then(|i| handles.get(i)) {
            Some(c) => {
                c.inc_by(n);
            }
            None => {
                self.requests
                    .get_or_create(&RequestLabels { op, result })
                    .inc_by(n);
            }
        }
    }

    /// Counts a fetch with its `result`, and its latency when the store answered.
    pub fn fetch(&self, result: &'static str, latency: Option<Duration>) {
        self.count("fetch", &FETCH_RESULTS, &self.handles.fetch, result, 1);
        if let Some(l) = latency {
            self.handles.fetch_latency.observe(l.as_secs_f64());
        }
    }

    /// Counts `n` puts with their `result`, and each one's latency when the store answered (a batch of
    /// writes lands together).
    pub fn put(&self, result: &'static str, n: u64, latency: Option<Duration>) {
        self.count("put", &PUT_RESULTS, &self.handles.put, result, n);
        if let Some(l) = latency {
            for _ in 0..n {
                self.handles.put_latency.observe(l.as_secs_f64());
            }
        }
    }

    /// Sets the breaker gauge.
    pub fn breaker(&self, open: bool) {
        self.breaker_open.set(i64::from(open));
    }

    /// The 0-RTT counters of `listener`, every outcome pre-registered.
    pub fn listener(&self, listener: &str) -> EarlyDataCounters {
        let listener: Arc<str> = Arc::from(listener);
        EarlyDataCounters {
            counters: Arc::new(Outcome::ALL.map(|outcome| {
                self.early
                    .get_or_create(&EarlyLabels {
                        listener: listener.clone(),
                        outcome: outcome.name(),
                    })
                    .clone()
            })),
        }
    }
}

/// One listener's `portcullis_early_data_total` handles.
#[derive(Clone, Debug)]
pub struct EarlyDataCounters {
    counters: Arc<[Counter; Outcome::ALL.len()]>,
}

impl EarlyDataCounters {
    /// Counts one attempt.
    pub fn count(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some(c) = self.counters.get(i) {
            c.inc();
        }
    }
}
