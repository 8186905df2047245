//! Request metrics of `http` listeners, with bounded labels only: the method folded into eight values, the
//! status into its class, the handshake into full/resumed.

use std::sync::Arc;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metrics::ModeLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: Arc<str>,
    protocol: &'static str,
    method: &'static str,
    code: &'static str,
    handshake: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    listener: Arc<str>,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FirstByteLabels {
    listener: Arc<str>,
    handshake: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EarlyLabels {
    listener: Arc<str>,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

/// Every `cause` of `portcullis_http_upstream_errors_total` (see `proxy.rs`).
pub const UPSTREAM_ERROR_CAUSES: [&str; 7] = [
    "refused",
    "connect_timeout",
    "connect_other",
    "handshake",
    "response_timeout",
    "response",
    "no_upstream",
];

/// The registered families; one per daemon, cloned into each listener.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<DurationLabels, Histogram>,
    first_byte: Family<FirstByteLabels, Histogram>,
    upstream_requests: Family<ConnectionLabels, Counter>,
    upstream_errors: Family<CauseLabels, Counter>,
    early: Family<EarlyLabels, Counter>,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// HTTP/1.1 connections parked (`park.rs`): each one's next request rebuilds hyper's connection.
    pub parked: Counter,
}

fn latency_histogram() -> Histogram {
    // 100 µs doubling to ~13 s, as the handshake durations: TTFB and handshake read side by side.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl HttpMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "portcullis_http_requests",
            "HTTP requests answered on http listeners, by protocol (h1, h2), method (GET, HEAD, POST, PUT, DELETE, \
             OPTIONS, PATCH, other), status class and handshake (full, resumed)",
            requests.clone(),
        );
        let duration = Family::<DurationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_http_request_duration_seconds",
            "Request head received to response body finished",
            duration.clone(),
        );
        let first_byte = Family::<FirstByteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_http_first_byte_seconds",
            "TCP accept to the response head of the connection's first request, by handshake (full, resumed): \
             what a returning user feels",
            first_byte.clone(),
        );
        let upstream_requests = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "portcullis_http_upstream_requests",
            "Requests sent upstream, by connection (reused from the worker's keep-alive pool, or new)",
            upstream_requests.clone(),
        );
        let upstream_errors = Family::<CauseLabels, Counter>::default();
        registry.register(
            "portcullis_http_upstream_errors",
            "Requests answered 502/504 by the proxy, by cause (refused, connect_timeout, connect_other, handshake, \
             response_timeout, response, no_upstream)",
            upstream_errors.clone(),
        );
        // Every cause and connection kind exported from the start, at 0: rates and alerts need the series.
        for cause in UPSTREAM_ERROR_CAUSES {
            let _ = upstream_errors.get_or_create(&CauseLabels { cause });
        }
        for connection in ["reused", "new"] {
            let _ = upstream_requests.get_or_create(&ConnectionLabels { connection });
        }
        let early = Family::<EarlyLabels, Counter>::default();
        registry.register(
            "portcullis_http_early_requests",
            "Requests whose head came in TLS 1.3 early data, by action (forwarded before the client's Finished with \
             Early-Data: 1, held until it, rejected with 425, retried after an upstream 425)",
            early.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "portcullis_access_log_dropped",
            "Access log lines dropped because the log writer fell behind (the workers never wait for it)",
            access_log_dropped.clone(),
        );
        let parked = Counter::default();
        registry.register(
            "portcullis_http_parked",
            "Times an idle HTTP/1.1 connection parked (hyper's connection and buffers dropped until the client's next \
             byte, which rebuilds them): against requests, how often a keep-alive request paid for the rebuild",
            parked.clone(),
        );
        Self {
            parked,
            requests,
            duration,
            first_byte,
            upstream_requests,
            upstream_errors,
            early,
            access_log_dropped,
        }
    }

    /// Pre-registers a 0-RTT listener's `portcullis_http_early_requests_total` series at 0.
    pub fn early_listener(&self, listener: &Arc<str>) {
        for action in super::early::Action::ALL {
            let _ = self.early.get_or_create(&EarlyLabels {
                listener: listener.clone(),
                action: action.name(),
            });
        }
    }

    /// Counts one early request by what was done with it.
    pub fn early_request(&self, listener: &Arc<str>, action: super::early::Action) {
        self.early
            .get_or_create(&EarlyLabels {
                listener: listener.clone(),
                action: action.name(),
            })
            .inc();
    }

    /// Counts one answered request.
    pub fn request(
        &self,
        listener: &Arc<str>,
        protocol: &'static str,
        method: &Method,
        status: u16,
        handshake: ModeLabel,
        seconds: f64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                listener: listener.clone(),
                protocol,
                method: method_label(method),
                code: code_label(status),
                handshake: handshake.name(),
            })
            .inc();
        self.duration
            .get_or_create(&DurationLabels {
                listener: listener.clone(),
                protocol,
            })
            .observe(seconds);
    }

    /// Observes the time to the first response head of a connection.
    pub fn first_byte(&self, listener: &Arc<str>, handshake: ModeLabel, seconds: f64) {
        self.first_byte
            .get_or_create(&FirstByteLabels {
                listener: listener.clone(),
                handshake: handshake.name(),
            })
            .observe(seconds);
    }

    /// Counts a request sent upstream on a reused or new connection.
    pub fn upstream_request(&self, reused: bool) {
        let connection = if reused { "reused" } else { "new" };
        self.upstream_requests
            .get_or_create(&ConnectionLabels { connection })
            .inc();
    }

    /// Counts a request the proxy answered itself because of its upstream.
    pub fn upstream_error(&self, cause: &'static str) {
        self.upstream_errors
            .get_or_create(&CauseLabels { cause })
            .inc();
    }
}

/// The `method` label: the methods of RFC 9110 §9 and PATCH by name, anything else `other`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The `code` label: the status class.
pub fn code_label(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
