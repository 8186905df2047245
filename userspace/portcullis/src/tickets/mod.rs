//! Session resumption across a fleet: our ticket format and ticketer, keys from a watched directory with
//! validity windows, and a sharded session-ID cache.
//!
//! # Layout
//! - [`cli`]: `portcullis keys init|rotate|prune|list`, managing a key directory.
//! - [`key`]: one key (name, zeroized secret, window); [`keyset`]: which key encrypts/decrypts when.
//! - [`format`]: the ticket bytes (name || nonce || AES-256-GCM(issue time || state)) and rejection causes;
//!   [`nonce`]: per-thread counter nonces (no system call per seal).
//! - [`keyfile`]: the directory on disk (portcullis `.toml` keys, nginx 48/80-byte files, permissions).
//! - [`store`]: the live set, swapped whole, and the watcher thread; [`ticketer`]: rustls `ProducesTickets`.
//! - [`cache`]: the sharded O(1) LRU `StoresServerSessions`; [`metrics`]: everything counted here;
//!   [`key_gauges`]: the key set's gauges, read from the store at scrape time.
//! - [`session_store`]: stateful TLS 1.3 sessions of early-data listeners (local or Redis), single use.
//!
//! Modes (`tls.tickets`): `fleet` (keys from `tls.ticket_keys_dir`, the default when it is set),
//! `per-process` (one random key per process: tickets resume only on the instance that issued them, the
//! anti-pattern kept for comparison), `off` (no tickets: TLS 1.3 resumes statefully from the cache).

pub mod cache;
pub mod cli;
pub mod format;
pub mod key;
pub mod key_gauges;
pub mod keyfile;
pub mod keyset;
pub mod metrics;
pub mod nonce;
pub mod session_store;
pub mod store;
pub mod ticketer;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::config::{TicketMode, TlsConfig};
use cache::SessionCache;
use key::TicketKey;
use keyset::KeySet;
use metrics::TicketMetrics;
use store::{KeyStore, Watcher};
use ticketer::Ticketer;

/// Resumption for the whole daemon: the key store (when tickets are on), the session cache, the watcher.
#[derive(Debug)]
pub struct Tickets {
    mode: TicketMode,
    store: Option<Arc<KeyStore>>,
    cache: Arc<SessionCache>,
    lifetime: Duration,
    metrics: TicketMetrics,
    _watcher: Option<Watcher>,
}

impl Tickets {
    /// Sets resumption up from `tls`: in `fleet` mode, loads the key directory once (a failure is logged and
    /// leaves the daemon unready, not dead) and starts watching it.
    pub fn start(tls: &TlsConfig) -> anyhow::Result<Self> {
        let metrics = TicketMetrics::new();
        let cache = Arc::new(SessionCache::new(tls.session_cache_size, metrics.cache()));
        let mode = tls.ticket_mode();
        let (store, watcher) = match mode {
            TicketMode::Off => (None, None),
            TicketMode::PerProcess => {
                let key = TicketKey::random(true).map_err(|_| {
                    anyhow::anyhow!("the system RNG failed generating a ticket key")
                })?;
                let set = KeySet::new(vec![key], SystemTime::now())
                    .context("the per-process ticket key")?;
                (Some(Arc::new(KeyStore::fixed(set))), None)
            }
            TicketMode::Fleet => {
                let dir = tls.ticket_keys_dir.clone().context(
                    "tls.tickets = \"fleet\" needs tls.ticket_keys_dir (or --ticket-keys DIR)",
                )?;
                let store = Arc::new(KeyStore::waiting());
                let watcher = store::watch_dir(dir.clone(), store.clone(), metrics.clone())
                    .with_context(|| {
                        format!("cannot start the ticket key watcher for {}", dir.display())
                    })?;
                (Some(store), Some(watcher))
            }
        };
        Ok(Self {
            mode,
            store,
            cache,
            lifetime: tls.ticket_lifetime,
            metrics,
            _watcher: watcher,
        })
    }

    /// The mode in use.
    pub fn mode(&self) -> TicketMode {
        self.mode
    }

    /// Adds the resumption metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let store = match self.mode {
            TicketMode::Fleet => self.store.clone(),
            _ => None,
        };
        self.metrics.register(registry);
        if let Some(store) = store {
            registry.register_collector(Box::new(key_gauges::KeySetCollector { store }));
        }
    }

    /// Becomes true once a valid key set is loaded; `None` when nothing needs waiting for.
    pub fn keys_loaded(&self) -> Option<watch::Receiver<bool>> {
        match (self.mode, &self.store) {
            (TicketMode::Fleet, Some(store)) => Some(store.loaded()),
            _ => None,
        }
    }

    /// The fleet's key store (in `fleet` mode), which also seals sessions for a shared session store.
    pub fn fleet_keys(&self) -> Option<Arc<KeyStore>> {
        match self.mode {
            TicketMode::Fleet => self.store.clone(),
            _ => None,
        }
    }

    /// The session-ID cache (TLS 1.2 sessions of early-data listeners go there too).
    pub fn session_cache(&self) -> Arc<SessionCache> {
        self.cache.clone()
    }

    /// `base` for an early-data listener: no ticketer (TLS 1.3 tickets are IDs into `store`, the only way
    /// rustls accepts 0-RTT), `max_early_data_size` bytes of early data (0: resumes, refuses 0-RTT), and
    /// the store's number of tickets per handshake (each one is a store write).
    pub fn early_data_config(
        base: &ServerConfig,
        store: Arc<session_store::SessionStore>,
        max_early_data_size: u32,
    ) -> Arc<ServerConfig> {
        let mut config = base.clone();
        config.ticketer = Arc::new(NoTickets);
        config.max_early_data_size = max_early_data_size;
        config.send_tls13_tickets = store.tickets();
        config.session_storage = store;
        Arc::new(config)
    }

    /// `base` with this daemon's ticketer (labelled with `listener`) and session cache.
    pub fn server_config(&self, base: &ServerConfig, listener: &str) -> Arc<ServerConfig> {
        let mut config = base.clone();
        config.session_storage = self.cache.clone();
        if let Some(store) = &self.store {
            config.ticketer = Arc::new(Ticketer::new(
                store.clone(),
                self.lifetime,
                self.metrics.listener(listener),
            ));
        }
        Arc::new(config)
    }
}

/// A disabled ticketer: TLS 1.3 tickets become IDs into the session store (rustls' own one is private).
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}
