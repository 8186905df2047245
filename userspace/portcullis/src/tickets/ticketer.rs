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

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
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
