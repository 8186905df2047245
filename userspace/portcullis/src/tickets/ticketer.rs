//! Our `rustls::server::ProducesTickets`: seals with the key set's encrypting key, opens with any accepted
//! key, refuses tickets older than the lifetime, and counts every refusal by cause. One instance per listener
//! (for the `listener` label), all sharing one [`KeyStore`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::server::ProducesTickets;

use super::format;
use super::metrics::ListenerTicketMetrics;
use super::store::KeyStore;

/// Longest ticket lifetime (RFC 8446 §4.6.1: seven days).
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A ticketer for one listener.
pub struct Ticketer {
    store: Arc<KeyStore>,
    lifetime: Duration,
    rng: ring::rand::SystemRandom,
    metrics: ListenerTicketMetrics,
}

impl Ticketer {
    /// Tickets sealed with `store`'s keys, valid for `lifetime` (capped at seven days).
    pub fn new(store: Arc<KeyStore>, lifetime: Duration, metrics: ListenerTicketMetrics) -> Self {
        Self {
            store,
            lifetime: lifetime.min(MAX_LIFETIME),
            rng: ring::rand::SystemRandom::new(),
            metrics,
        }
    }
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    /// The configured lifetime, shortened to what is left of the encrypting key's decrypt window: a client
    /// should not hold on to a ticket no node will open.
    fn lifetime(&self) -> u32 {
        let now = SystemTime::now();
        let left = self
            .store
            .current()
            .encrypting(now)
            .and_then(|k| k.decrypt_until?.duration_since(now).ok());
        let secs = left
            .map_or(self.lifetime, |l| l.min(self.lifetime))
            .as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let now = SystemTime::now();
        let set = self.store.current();
        // No key (before the first load, or every key expired): rustls sends no ticket and carries on.
        let key = set.encrypting(now)?;
        let ticket = format::seal(key, plain, now, &self.rng)?;
        self.metrics.issued();
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let set = self.store.current();
        match format::open(&set, cipher, SystemTime::now(), self.lifetime) {
            Ok(opened) => {
                self.metrics.opened(opened.key_age);
                Some(opened.plain)
            }
            Err(why) => {
                self.metrics.rejected(why);
                tracing::debug!(cause = why.name(), "ticket refused: full handshake");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tickets::key::{KeyKind, TicketKey};
    use crate::tickets::keyset::KeySet;
    use crate::tickets::metrics::TicketMetrics;
    use zeroize::Zeroizing;

    fn windowed(until_from_now: Duration) -> TicketKey {
        let now = SystemTime::now();
        let r = TicketKey::random(false).expect("rng");
        TicketKey::new(
            r.name,
            Zeroizing::new([3; 32]),
            KeyKind::Windowed,
            (
                Some(now - Duration::from_secs(60)),
                Some(now + until_from_now),
            ),
            now,
            String::new(),
        )
    }

    #[test]
    fn seals_opens_counts_and_caps_the_lifetime_hint() {
        let metrics = TicketMetrics::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let set = KeySet::new(vec![windowed(Duration::from_secs(7200))], SystemTime::now())
            .expect("valid");
        let store = Arc::new(KeyStore::fixed(set));
        metrics.register(&mut registry);
        registry.register_collector(Box::new(crate::tickets::key_gauges::KeySetCollector {
            store: store.clone(),
        }));
        let t = Ticketer::new(
            store,
            Duration::from_secs(6 * 3600),
            metrics.listener("https"),
        );
        // The key stops decrypting in 2 h: no point promising 6 h.
        assert!((7100..=7200).contains(&t.lifetime()), "{}", t.lifetime());
        let ticket = t.encrypt(b"state").expect("sealed");
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert_eq!(t.decrypt(&ticket[..10]), None);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("portcullis_tickets_issued_total{listener=\"https\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "portcullis_ticket_rejections_total{listener=\"https\",cause=\"malformed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("portcullis_ticket_key_age_seconds_count{listener=\"https\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_ticket_keys{state=\"encrypting\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn no_key_means_no_ticket() {
        let t = Ticketer::new(
            Arc::new(KeyStore::waiting()),
            Duration::from_secs(3600),
            TicketMetrics::new().listener("https"),
        );
        assert_eq!(t.encrypt(b"state"), None);
        assert_eq!(t.lifetime(), 3600);
    }
}
