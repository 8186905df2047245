//! `[tls.session_store]` and a listener's `[listeners.early_data]`: where stateful TLS 1.3 sessions live and
//! which listeners accept 0-RTT.

use std::time::Duration;

use serde::Deserialize;

/// Where TLS 1.3 sessions of early-data listeners live (`tls.session_store.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process (sharded, bounded, single use). Protects **one instance only**: a 0-RTT flight
    /// replayed to another instance of the fleet is not detected (that instance never saw the session and
    /// answers with a full handshake, so nothing is accepted twice, but neither is the ticket usable there).
    #[default]
    Local,
    /// A Redis server shared by the fleet: a ticket is usable once in the whole fleet.
    Redis,
}

/// The session store of early-data listeners (`[tls.session_store]`). Listeners without early data keep
/// the fleet's stateless tickets and never touch it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionStoreConfig {
    /// `"local"` or `"redis"`. Default: `"local"` (one instance only; see README "0-RTT").
    pub kind: StoreKind,
    /// The Redis server, `redis://[user:pass@]host:port[/db]`; required with `kind = "redis"` (or
    /// `--session-store URL`). Default: none.
    pub url: Option<String>,
    /// Longest wait for a session before the handshake goes on as a full one without early data. A duration.
    /// Default: `"5ms"`.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Sessions the local store keeps (oldest evicted first). Unit: sessions. Default: 65536.
    pub capacity: usize,
    /// Session writes to Redis in flight at once; more are dropped and counted (`op="put", result="dropped"`).
    /// Unit: writes. Default: 4096.
    pub write_queue: usize,
    /// TLS 1.3 tickets an early-data listener issues per handshake, each one session written to the store.
    /// A 0-RTT attempt spends one ticket, and every resumption brings a fresh one, so one is enough for a
    /// client that reconnects one connection at a time; a client opening several connections at once resumes
    /// only as many of them as it holds tickets (the others make full handshakes). Unit: tickets, 1 to 4.
    /// Default: 1.
    pub tickets: usize,
    /// Consecutive store failures (timeouts or errors) that open the circuit breaker: while open, handshakes
    /// do not ask the store at all. Default: 5.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one request probes the store again. A duration. Default: `"1s"`.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

impl Default for SessionStoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Local,
            url: None,
            fetch_timeout: Duration::from_millis(5),
            capacity: 65536,
            write_queue: 4096,
            tickets: 1,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(1),
        }
    }
}

impl SessionStoreConfig {
    /// Checks the fields: the one at fault (without the `tls.session_store.` prefix) and why.
    ///
    /// # Errors
    /// The first field out of its range.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.kind == StoreKind::Redis {
            let Some(url) = &self.url else {
                return Err((
                    "url",
                    "kind = \"redis\" needs a url (or --session-store redis://HOST:PORT)".into(),
                ));
            };
            if !url.starts_with("redis://") {
                return Err((
                    "url",
                    format!(
                        "`{url}`: only redis:// URLs are supported (this build has no Redis TLS)"
                    ),
                ));
            }
        }
        if self.fetch_timeout.is_zero() || self.fetch_timeout > Duration::from_secs(1) {
            return Err((
                "fetch_timeout",
                "must be greater than zero and at most 1s (it is added to a resumption's latency when the store is slow)".into(),
            ));
        }
        if self.capacity == 0 {
            return Err(("capacity", "must be at least 1".into()));
        }
        if self.write_queue == 0 {
            return Err(("write_queue", "must be at least 1".into()));
        }
        if !(1..=4).contains(&self.tickets) {
            return Err((
                "tickets",
                "must be 1 to 4 (each ticket is one session written to the store)".into(),
            ));
        }
        if self.breaker_failures == 0 {
            return Err(("breaker_failures", "must be at least 1".into()));
        }
        if self.breaker_cooldown.is_zero() {
            return Err(("breaker_cooldown", "must be greater than zero".into()));
        }
        Ok(())
    }
}

/// A listener's 0-RTT settings (`[listeners.early_data]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyDataConfig {
    /// Most bytes of early data a client may send (advertised in the listener's tickets). 0 turns 0-RTT off
    /// and keeps the fleet's stateless tickets. With a size, the listener's TLS 1.3 tickets become IDs into
    /// `[tls.session_store]`. Unit: bytes. Default: 0.
    pub max_size: u32,
    /// Request methods that may be forwarded while still in early data (RFC 8470; used by the HTTP mode).
    /// Default: `["GET", "HEAD", "OPTIONS"]`.
    pub methods: Vec<String>,
    /// Early data is refused (the handshake still resumes) when the client's ticket age and ours differ by
    /// more than this (RFC 8446 §8.3; rustls alone allows 60 s). A duration. Default: `"10s"`.
    #[serde(with = "humantime_serde")]
    pub freshness: Duration,
    /// What the HTTP mode does with any other request that came in early data (RFC 8470): `hold` it until the
    /// client's Finished, or answer `reject` (425 Too Early, which the client retries after the handshake).
    /// Default: `"hold"`.
    #[serde(rename = "unsafe")]
    pub unsafe_requests: UnsafeEarly,
}

/// `[listeners.early_data] unsafe`: an early request that may not be forwarded before the handshake completes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsafeEarly {
    /// Wait for the client's Finished, then forward it (without `Early-Data`).
    #[default]
    Hold,
    /// Answer 425 Too Early at once.
    Reject,
}

impl Default for EarlyDataConfig {
    fn default() -> Self {
        Self {
            max_size: 0,
            methods: vec!["GET".into(), "HEAD".into(), "OPTIONS".into()],
            freshness: Duration::from_secs(10),
            unsafe_requests: UnsafeEarly::Hold,
        }
    }
}

impl EarlyDataConfig {
    /// Whether the listener accepts 0-RTT.
    pub fn enabled(&self) -> bool {
        self.max_size > 0
    }

    /// Checks the fields: the one at fault (without the `listeners[i].early_data.` prefix) and why.
    ///
    /// # Errors
    /// The first field out of its range.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, m) in self.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                return Err((
                    format!("methods[{i}]"),
                    format!("`{m}` is not an HTTP method token in upper case"),
                ));
            }
        }
        if self.freshness.is_zero() || self.freshness > Duration::from_secs(60) {
            return Err((
                "freshness".into(),
                "must be greater than zero and at most 60s (rustls' own window)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation_name_the_field() {
        assert!(SessionStoreConfig::default().validate().is_ok());
        assert!(!EarlyDataConfig::default().enabled());
        let redis = SessionStoreConfig {
            kind: StoreKind::Redis,
            ..Default::default()
        };
        assert_eq!(redis.validate().err().map(|e| e.0), Some("url"));
        let tls = SessionStoreConfig {
            kind: StoreKind::Redis,
            url: Some("rediss://x:1".into()),
            ..Default::default()
        };
        assert_eq!(tls.validate().err().map(|e| e.0), Some("url"));
        let slow = SessionStoreConfig {
            fetch_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        assert_eq!(slow.validate().err().map(|e| e.0), Some("fetch_timeout"));
        let none = SessionStoreConfig {
            tickets: 0,
            ..Default::default()
        };
        assert_eq!(none.validate().err().map(|e| e.0), Some("tickets"));
        let bad = EarlyDataConfig {
            methods: vec!["get".into()],
            ..Default::default()
        };
        assert_eq!(bad.validate().err().map(|e| e.0), Some("methods[0]".into()));
        let reject: EarlyDataConfig =
            toml::from_str("max_size = 1\nunsafe = \"reject\"").expect("unsafe = reject");
        assert_eq!(reject.unsafe_requests, UnsafeEarly::Reject);
        let err = toml::from_str::<EarlyDataConfig>("unsafe = \"drop\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unsafe") && err.contains("hold"), "{err}");
    }
}
