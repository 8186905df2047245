//! Metrics of session resumption: tickets issued and refused per listener, the age of the key that opened
//! each ticket, the key set's state, reloads, and the session-ID cache.
//!
//! Resumption rate per listener, from counters only:
//! `portcullis_handshakes_total{mode="resumed"} / portcullis_client_hello_offers_total{offer=~"psk|tls12_ticket"}`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::format::Rejection;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    listener: Arc<str>,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Every resumption metric, registered once, shared by all listeners.
#[derive(Clone, Debug)]
pub struct TicketMetrics {
    issued: Family<ListenerLabel, Counter>,
    rejected: Family<RejectionLabels, Counter>,
    key_age: Family<ListenerLabel, Histogram>,
    reloads: Family<ResultLabel, Counter>,
    cache: CacheCounters,
}

/// The session cache's counters (cheap clones of atomics).
#[derive(Clone, Debug, Default)]
pub struct CacheCounters {
    /// Lookups that found the session.
    pub hits: Counter,
    /// Lookups that did not.
    pub misses: Counter,
    /// Sessions dropped to make room (least recently used first).
    pub evictions: Counter,
    /// Sessions held now.
    pub entries: Gauge,
}

fn key_age_histogram() -> Histogram {
    // 1 minute doubling to ~6 days: covers hourly to weekly rotation.
    Histogram::new(exponential_buckets(60.0, 2.0, 14))
}

impl Default for TicketMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TicketMetrics {
    /// Unregistered metrics (see [`TicketMetrics::register`]).
    pub fn new() -> Self {
        Self {
            issued: Family::default(),
            rejected: Family::default(),
            key_age: Family::new_with_constructor(key_age_histogram as fn() -> Histogram),
            reloads: Family::default(),
            cache: CacheCounters::default(),
        }
    }

    /// Adds every metric to `registry` (the key set's own gauges are [`super::key_gauges`]).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_tickets_issued",
            "Session tickets sealed, by listener",
            self.issued.clone(),
        );
        registry.register(
            "portcullis_ticket_rejections",
            "Tickets offered but not usable, by listener and cause (unknown_key, expired, auth_failed, malformed); the client gets a full handshake",
            self.rejected.clone(),
        );
        registry.register(
            "portcullis_ticket_key_age_seconds",
            "Age of the key (since its encrypt_from, file mtime or generation) that opened each ticket",
            self.key_age.clone(),
        );
        registry.register(
            "portcullis_ticket_key_reloads",
            "Ticket key directory loads, by result (ok, error: the last good set stays in use)",
            self.reloads.clone(),
        );
        for result in ["ok", "error"] {
            let _ = self.reloads.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "portcullis_session_cache_hits",
            "Session-ID cache lookups (TLS 1.2 session IDs, stateful TLS 1.3 tickets) that found the session",
            self.cache.hits.clone(),
        );
        registry.register(
            "portcullis_session_cache_misses",
            "Session-ID cache lookups that did not find the session",
            self.cache.misses.clone(),
        );
        registry.register(
            "portcullis_session_cache_evictions",
            "Sessions evicted from the session-ID cache to make room (least recently used first)",
            self.cache.evictions.clone(),
        );
        registry.register(
            "portcullis_session_cache_entries",
            "Sessions held in the session-ID cache now",
            self.cache.entries.clone(),
        );
    }

    /// Handles for one listener, resolved once; every rejection cause starts at 0.
    pub fn listener(&self, name: &str) -> ListenerTicketMetrics {
        let listener: Arc<str> = Arc::from(name);
        let label = ListenerLabel {
            listener: listener.clone(),
        };
        let rejected = Rejection::ALL.map(|r| {
            self.rejected
                .get_or_create(&RejectionLabels {
                    listener: listener.clone(),
                    cause: r.name(),
                })
                .clone()
        });
        ListenerTicketMetrics {
            issued: self.issued.get_or_create(&label).clone(),
            rejected,
            key_age: self.key_age.get_or_create(&label).clone(),
        }
    }

    /// Counts a key directory load.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// The session cache's counters.
    pub fn cache(&self) -> CacheCounters {
        self.cache.clone()
    }
}

/// One listener's ticket metric handles.
#[derive(Clone, Debug)]
pub struct ListenerTicketMetrics {
    issued: Counter,
    rejected: [Counter; 4],
    key_age: Histogram,
}

impl ListenerTicketMetrics {
    /// A ticket was sealed.
    pub fn issued(&self) {
        self.issued.inc();
    }

    /// A ticket was refused.
    pub fn rejected(&self, why: Rejection) {
        if let Some(c) = Rejection::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.rejected.get(i))
        {
            c.inc();
        }
    }

    /// A ticket opened with a key this old.
    pub fn opened(&self, key_age: std::time::Duration) {
        self.key_age.observe(key_age.as_secs_f64());
    }
}
