//! Session resumption across a fleet: our ticket format and ticketer, keys from a watched directory with
//! validity windows, and a sharded session-ID cache.
//!
//! # Layout
//! - [`cli`]: `portcullis keys init|rotate|prune|list`, managing a key directory.
//! - [`key`]: one key (name, zeroized secret, window); [`keyset`]: which key encrypts/decrypts when.
//! - [`format`]: the ticket bytes (name || nonce || AES-256-GCM(issue time || state)) and rejection causes.
//! - [`keyfile`]: the directory on disk (portcullis `.toml` keys, nginx 48/80-byte files, permissions).
//! - [`store`]: the live set, swapped whole, and the watcher thread; [`ticketer`]: rustls `ProducesTickets`.
//! - [`cache`]: the sharded O(1) LRU `StoresServerSessions`; [`metrics`]: everything counted here;
//!   [`key_gauges`]: the key set's gauges, read from the store at scrape time.
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
