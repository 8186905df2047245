//! The live key set: swapped whole (readers clone an `Arc` under a read lock held for nanoseconds), fed by a
//! watcher thread that polls the key directory every second.
//!
//! A valid change is swapped in atomically: connections in flight keep the set they started with. An invalid
//! one (unreadable, wrong size, group/world-readable file, no key valid for encryption, ...) keeps the last good
//! set, is logged with the reason, and counts `portcullis_ticket_key_reloads_total{result="error"}` once per
//! distinct problem. Keys past `decrypt_until` are erased from memory on the next tick.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::keyfile::{self, Fingerprint, KeyDirError};
use super::keyset::KeySet;
use super::metrics::TicketMetrics;

/// How often the key directory is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The current key set, shared by every listener's ticketer.
#[derive(Debug)]
pub struct KeyStore {
    current: RwLock<Arc<KeySet>>,
    loaded: watch::Sender<bool>,
}

impl KeyStore {
    /// A store holding `set` for good (the per-process key), already loaded.
    pub fn fixed(set: KeySet) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
            loaded: watch::Sender::new(true),
        }
    }

    /// An empty store waiting for its first valid set.
    pub fn waiting() -> Self {
        Self {
            current: RwLock::new(Arc::new(KeySet::empty())),
            loaded: watch::Sender::new(false),
        }
    }

    /// The set in use now.
    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the set and marks the store loaded.
    pub fn swap(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut g) => *g = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        self.loaded.send_replace(true);
    }

    /// Whether a valid set has been loaded.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Becomes true once a valid set is loaded (for `/readyz`).
    pub fn loaded(&self) -> watch::Receiver<bool> {
        self.loaded.subscribe()
    }
}

/// Reads and validates the directory at `now`.
pub fn load(dir: &Path, now: SystemTime) -> Result<KeySet, KeyDirError> {
    let keys = keyfile::read_dir(dir)?;
    KeySet::new(keys, now).map_err(|source| KeyDirError::Set {
        dir: dir.to_owned(),
        source,
    })
}

/// The watcher thread; stops (and is joined) when dropped.
#[derive(Debug)]
pub struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Loads `dir` once now (logging and counting the outcome), then watches it on a thread.
pub fn watch_dir(
    dir: PathBuf,
    store: Arc<KeyStore>,
    metrics: TicketMetrics,
) -> std::io::Result<Watcher> {
    let mut state = WatchState::default();
    state.tick(&dir, &store, &metrics);
    if !store.is_loaded() {
        tracing::warn!(dir = %dir.display(), "no valid ticket key set yet: /readyz stays false until one is loaded");
    }
    let (tx, rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("portcullis-keys".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(POLL_INTERVAL) {
                state.tick(&dir, &store, &metrics);
            }
        })?;
    Ok(Watcher {
        stop: Some(tx),
        thread: Some(thread),
    })
}

#[derive(Default)]
struct WatchState {
    seen: Option<Result<Fingerprint, String>>,
    failing: Option<String>,
}

impl WatchState {
    fn tick(&mut self, dir: &Path, store: &KeyStore, metrics: &TicketMetrics) {
        let now = SystemTime::now();
        let fp = keyfile::fingerprint(dir).map_err(|e| e.to_string());
        let changed = self.seen.as_ref() != Some(&fp);
        if changed || self.failing.is_some() {
            match load(dir, now) {
                Ok(set) => {
                    let names: Vec<String> = set
                        .states(now)
                        .iter()
                        .map(|(k, s)| format!("{}:{}", k.name, s.name()))
                        .collect();
                    tracing::info!(dir = %dir.display(), keys = ?names, "ticket key set loaded");
                    store.swap(set);
                    metrics.reload(true);
                    self.failing = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if changed || self.failing.as_deref() != Some(msg.as_str()) {
                        if store.is_loaded() {
                            tracing::error!(error = %msg, "ticket key dir change refused: keeping the last good key set");
                        } else {
                            tracing::error!(error = %msg, "ticket key dir not usable: no key set loaded yet");
                        }
                        metrics.reload(false);
                    }
                    self.failing = Some(msg);
                }
            }
            self.seen = Some(fp);
        }
        let set = store.current();
        if set.has_expired(now) {
            let fresh = set.without_expired(now);
            tracing::info!(
                left = fresh.len(),
                "ticket keys past decrypt_until erased from memory"
            );
            if fresh.encrypting(now).is_none() {
                tracing::error!(
                    "no ticket key can encrypt now: new connections get no ticket; run `portcullis keys rotate`"
                );
            }
            store.swap(fresh);
        }
    }
}
