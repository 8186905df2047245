//! Requests that arrived in TLS 1.3 early data, by RFC 8470: which go upstream before the client's Finished.
//!
//! ```text
//! early request ─► safe (method in `methods`, no body, no Upgrade, no client Early-Data)
//!                    yes ─► forwarded at once with `Early-Data: 1`
//!                             └─ upstream 425 ─► wait for the Finished, sent again without it ("retried")
//!                    no  ─► `unsafe = "hold"`: wait for the Finished, then forwarded ("held")
//!                           `unsafe = "reject"`: 425 Too Early ("rejected")
//! ```
//!
//! Early data can be replayed by whoever captured it; the session store makes a flight usable once across
//! the fleet, but a replay may still race the original. Only requests safe to repeat go before the Finished,
//! and the upstream learns it from `Early-Data: 1` (RFC 8470 §5.2), to answer 425 if it disagrees. A client's
//! own `Early-Data` is kept (proxies add it, never remove it): such a request waits, forwarded as sent.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method};

use crate::tickets::session_store::{EarlyDataConfig, UnsafeEarly};

/// The `Early-Data` header (RFC 8470 §5.1).
pub const EARLY_DATA: HeaderName = HeaderName::from_static("early-data");

/// One listener's rules for early requests (`[listeners.early_data]` `methods` and `unsafe`).
#[derive(Debug, Clone)]
pub struct EarlyPolicy {
    methods: Vec<Method>,
    reject_unsafe: bool,
}

/// What was done with an early request (label `action` of `portcullis_http_early_requests_total`, and the
/// access log's `early`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sent upstream before the client's Finished, with `Early-Data: 1`.
    Forwarded,
    /// Sent upstream only after the client's Finished (it waited, or the Finished had come meanwhile).
    Held,
    /// Answered 425 Too Early (`unsafe = "reject"`).
    Rejected,
    /// Forwarded early, answered 425 by the upstream, sent again after the Finished.
    Retried,
}

impl Action {
    /// Every action, for pre-registering series.
    pub const ALL: [Action; 4] = [Self::Forwarded, Self::Held, Self::Rejected, Self::Retried];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Held => "held",
            Self::Rejected => "rejected",
            Self::Retried => "retried",
        }
    }
}

impl EarlyPolicy {
    /// The rules of a listener's early-data section (validated: every method is a token).
    pub fn new(config: &EarlyDataConfig) -> Self {
        Self {
            methods: config
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            reject_unsafe: config.unsafe_requests == UnsafeEarly::Reject,
        }
    }

    /// The first decision on a request whose head came in early data: forward now, hold, or reject.
    /// `body_ended`: the request has no body (hyper knows it from the head: no length, or h2 END_STREAM).
    pub fn decide(&self, method: &Method, headers: &HeaderMap, body_ended: bool) -> Action {
        let has_body = !body_ended
            || headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        let safe = self.methods.contains(method)
            && !has_body
            && !headers.contains_key(header::UPGRADE)
            && !client_sent(headers);
        match (safe, self.reject_unsafe) {
            (true, _) => Action::Forwarded,
            (false, false) => Action::Held,
            (false, true) => Action::Rejected,
        }
    }
}

/// Whether the client itself sent `Early-Data` (an intermediary before us forwarded it early).
pub fn client_sent(headers: &HeaderMap) -> bool {
    headers.contains_key(EARLY_DATA)
}

/// Marks a request forwarded before the client's Finished (RFC 8470 §5.1: the value is `1`).
pub fn mark(headers: &mut HeaderMap) {
    headers.insert(EARLY_DATA, HeaderValue::from_static("1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(reject: bool) -> EarlyPolicy {
        EarlyPolicy::new(&EarlyDataConfig {
            unsafe_requests: if reject {
                UnsafeEarly::Reject
            } else {
                UnsafeEarly::Hold
            },
            ..Default::default()
        })
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_static(value));
        }
        h
    }

    /// {description, method, headers, body ended, expected action}.
    type Case = (
        &'static str,
        Method,
        &'static [(&'static str, &'static str)],
        bool,
        Action,
    );

    #[test]
    fn only_safe_requests_without_body_go_early() {
        let hold = policy(false);
        let cases: &[Case] = &[
            ("plain GET", Method::GET, &[], true, Action::Forwarded),
            ("HEAD", Method::HEAD, &[], true, Action::Forwarded),
            ("OPTIONS", Method::OPTIONS, &[], true, Action::Forwarded),
            (
                "GET, length 0",
                Method::GET,
                &[("content-length", "0")],
                true,
                Action::Forwarded,
            ),
            ("POST", Method::POST, &[], true, Action::Held),
            ("DELETE", Method::DELETE, &[], true, Action::Held),
            (
                "GET with a length",
                Method::GET,
                &[("content-length", "5")],
                false,
                Action::Held,
            ),
            (
                "GET, chunked",
                Method::GET,
                &[("transfer-encoding", "chunked")],
                false,
                Action::Held,
            ),
            (
                "GET, h2 body (no END_STREAM)",
                Method::GET,
                &[],
                false,
                Action::Held,
            ),
            (
                "GET with Upgrade",
                Method::GET,
                &[("upgrade", "websocket")],
                true,
                Action::Held,
            ),
            (
                "client's Early-Data",
                Method::GET,
                &[("early-data", "1")],
                true,
                Action::Held,
            ),
        ];
        for (what, method, h, ended, want) in cases {
            assert_eq!(hold.decide(method, &headers(h), *ended), *want, "{what}");
        }
        let reject = policy(true);
        assert_eq!(
            reject.decide(&Method::POST, &HeaderMap::new(), true),
            Action::Rejected
        );
        assert_eq!(
            reject.decide(&Method::GET, &HeaderMap::new(), true),
            Action::Forwarded
        );
    }

    #[test]
    fn the_header_is_added_once() {
        let mut h = headers(&[("host", "a")]);
        mark(&mut h);
        mark(&mut h);
        assert_eq!(h.get_all(EARLY_DATA).iter().count(), 1);
        assert!(client_sent(&h));
    }
}
