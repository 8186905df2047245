//! The session store of early-data listeners: TLS 1.3 tickets there are IDs into it (rustls accepts 0-RTT only
//! with stateful resumption, RFC 8446 §8.1), and each session is taken **once**.
//!
//! # Layout
//! - [`config`]: `[tls.session_store]` and `[listeners.early_data]`.
//! - [`local`]: the embedded store (one instance only); [`redis`]: the fleet's shared store, over a
//!   worker's own connection ([`direct`]).
//! - [`seal`]: values sealed with the fleet's ticket keys for Redis; [`value`]: what we read from rustls'
//!   encoded session (issue time, `age_add`) for the freshness check.
//! - [`breaker`]: the circuit breaker in front of Redis; [`metrics`]: everything counted here.
//!
//! # Use
//! rustls' `take` is synchronous and may run on a crypto thread, so it cannot wait for Redis. The handshake's
//! early-data step (`handshake/early_data.rs`) reads the PSK identity from the raw ClientHello and calls
//! [`SessionStore::fetch`] **before** the expensive step, under `fetch_timeout`; a hit is staged in a map
//! keyed by identity ([`Staged`]), which `take` consumes. Whatever rustls does not consume leaves the map when
//! the [`Staged`] guard drops with the handshake.
//!
//! TLS 1.2 on an early-data listener resumes by session ID from this instance's session cache (rustls has
//! one ticketer for both versions, and it is off there).

pub mod breaker;
pub mod config;
pub mod direct;
pub mod local;
pub mod metrics;
pub mod redis;
pub mod seal;
pub mod value;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::StoresServerSessions;
use zeroize::Zeroizing;

pub use config::{EarlyDataConfig, SessionStoreConfig, StoreKind, UnsafeEarly};

use super::cache::SessionCache;
use super::store::KeyStore;
use breaker::Breaker;
use local::LocalStore;
use metrics::StoreMetrics;
use redis::{FromQueue, RedisBackend};

/// rustls tells clients a stateful ticket lives 24 h (`server/tls13.rs`, "a bit of a punt"); we keep
/// sessions no longer than that nor than `tls.ticket_lifetime`.
const RUSTLS_STATEFUL_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// TLS 1.3 in the encoded session.
const TLS13: u16 = 0x0304;
/// rustls' stateful ticket IDs are 32 random bytes; any other identity is not one of ours.
pub const IDENTITY_LEN: usize = 32;
/// Shards of the staged-session map.
const STAGE_SHARDS: usize = 16;

/// Sessions fetched for handshakes in progress, by identity.
type StagedShard = HashMap<Vec<u8>, Zeroizing<Vec<u8>>>;

/// What a fetch found.
#[derive(Debug)]
pub enum Lookup {
    /// The session (plain), now gone from the store.
    Hit(Zeroizing<Vec<u8>>),
    /// The ticket was used before: a replay.
    Replay,
    /// Unknown or expired.
    Miss,
    /// The store did not answer in time, failed, or its breaker is open.
    Down,
}

enum Backend {
    Local(LocalStore),
    Redis {
        redis: RedisBackend,
        keys: Arc<KeyStore>,
        breaker: Breaker,
    },
}

/// The store, shared by every early-data listener's `ServerConfig` (as its `session_storage`).
pub struct SessionStore {
    backend: Backend,
    staged: Box<[Mutex<StagedShard>]>,
    tls12: Arc<SessionCache>,
    lifetime: Duration,
    fetch_timeout: Duration,
    tickets: usize,
    rng: ring::rand::SystemRandom,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Local(_) => "local",
            Backend::Redis { .. } => "redis",
        };
        f.debug_struct("SessionStore")
            .field("kind", &kind)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    /// Builds the store of `config`. `keys` (the fleet's) seal sessions for Redis; `tls12` keeps TLS 1.2
    /// sessions; sessions live `min(ticket_lifetime, 24 h)`.
    ///
    /// # Errors
    /// Redis without keys, or a Redis URL that does not parse (naming the field).
    pub fn start(
        config: &SessionStoreConfig,
        keys: Option<Arc<KeyStore>>,
        tls12: Arc<SessionCache>,
        ticket_lifetime: Duration,
        metrics: StoreMetrics,
    ) -> anyhow::Result<Self> {
        let lifetime = ticket_lifetime.min(RUSTLS_STATEFUL_LIFETIME);
        let backend = match config.kind {
            StoreKind::Local => Backend::Local(LocalStore::new(config.capacity, lifetime)),
            StoreKind::Redis => {
                let keys = keys.ok_or_else(|| {
                    anyhow::anyhow!(
                        "tls.session_store.kind = \"redis\" needs the fleet's ticket keys (tls.ticket_keys_dir) to seal sessions"
                    )
                })?;
                let url = config.url.as_deref().unwrap_or_default();
                Backend::Redis {
                    redis: RedisBackend::start(url, config.write_queue, lifetime, metrics.clone())?,
                    keys,
                    breaker: Breaker::new(config.breaker_failures, config.breaker_cooldown),
                }
            }
        };
        Ok(Self {
            backend,
            staged: (0..STAGE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            tls12,
            lifetime,
            fetch_timeout: config.fetch_timeout,
            tickets: config.tickets,
            rng: ring::rand::SystemRandom::new(),
            metrics,
        })
    }

    /// TLS 1.3 tickets per handshake on the listeners that use this store (`tls.session_store.tickets`).
    pub fn tickets(&self) -> usize {
        self.tickets
    }

    /// Takes the session of `identity` from the store (single use), waiting at most `fetch_timeout` (see
    /// [`fetch_budget`]).
    /// Never fails: a slow or dead store is [`Lookup::Down`], counted by cause.
    pub async fn fetch(&self, identity: &[u8]) -> Lookup {
        let started = Instant::now();
        let (result, lookup) = match &self.backend {
            Backend::Local(local) => {
                let lookup = local.take(identity, started);
                (result_name(&lookup), lookup)
            }
            Backend::Redis {
                redis,
                keys,
                breaker,
            } => {
                let landing = match redis.take_queued(identity) {
                    FromQueue::Taken(sealed) => {
                        let set = keys.current();
                        let now = SystemTime::now();
                        let lookup = match seal::open(&set, identity, &sealed, now, self.lifetime) {
                            Ok(plain) => Lookup::Hit(plain),
                            Err(_) => Lookup::Miss,
                        };
                        self.metrics.fetch("queued", None);
                        return lookup;
                    }
                    FromQueue::Landing(wait) => Some(wait),
                    FromQueue::Absent => None,
                };
                if !breaker.allow(started) {
                    self.metrics.fetch("breaker_open", None);
                    return Lookup::Down;
                }
                let answer = tokio::time::timeout_at(
                    tokio::time::Instant::from_std(started) + fetch_budget(self.fetch_timeout),
                    async {
                        if let Some(wait) = landing {
                            wait.await;
                        }
                        redis.take(identity).await
                    },
                )
                .await;
                let lookup = match answer {
                    Ok(Ok(lookup)) => {
                        breaker.success();
                        lookup
                    }
                    Ok(Err(e)) => {
                        breaker.failure(Instant::now());
                        tracing::debug!(error = %e, "session store fetch failed: full handshake");
                        self.metrics.breaker(breaker.is_open());
                        self.metrics.fetch("error", None);
                        return Lookup::Down;
                    }
                    Err(_) => {
                        breaker.failure(Instant::now());
                        self.metrics.breaker(breaker.is_open());
                        self.metrics.fetch("timeout", None);
                        return Lookup::Down;
                    }
                };
                self.metrics.breaker(false);
                match lookup {
                    Lookup::Hit(sealed) => {
                        let set = keys.current();
                        match seal::open(&set, identity, &sealed, SystemTime::now(), self.lifetime)
                        {
                            Ok(plain) => ("hit", Lookup::Hit(plain)),
                            Err(why) => {
                                tracing::debug!(cause = why.name(), "stored session did not open");
                                ("unsealed", Lookup::Miss)
                            }
                        }
                    }
                    other => (result_name(&other), other),
                }
            }
        };
        self.metrics.fetch(result, Some(started.elapsed()));
        lookup
    }

    /// Stages a fetched session for rustls' `take`, until the returned guard drops.
    pub fn stage(self: &Arc<Self>, identity: &[u8], session: Zeroizing<Vec<u8>>) -> Staged {
        self.shard(identity).insert(identity.to_vec(), session);
        Staged {
            store: self.clone(),
            identity: identity.to_vec(),
        }
    }

    fn shard(&self, identity: &[u8]) -> std::sync::MutexGuard<'_, StagedShard> {
        // Identities we stage are rustls' random IDs: their last byte spreads them evenly.
        let i = usize::from(identity.last().copied().unwrap_or(0)) % STAGE_SHARDS;
        match self.staged.get(i).or_else(|| self.staged.first()) {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()),
            None => unreachable!("STAGE_SHARDS > 0"),
        }
    }
}

fn result_name(lookup: &Lookup) -> &'static str {
    match lookup {
        Lookup::Hit(_) => "hit",
        Lookup::Replay => "replay",
        Lookup::Miss => "miss",
        Lookup::Down => "error",
    }
}

/// A session staged for one handshake; dropping it removes what rustls did not take.
pub struct Staged {
    store: Arc<SessionStore>,
    identity: Vec<u8>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.store.shard(&self.identity).remove(&self.identity);
    }
}

impl StoresServerSessions for SessionStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        if value::version(&value) != Some(TLS13) {
            return self.tls12.put(key, value);
        }
        match &self.backend {
            Backend::Local(local) => {
                local.put(key, value, Instant::now());
                self.metrics.put("ok", 1, None);
                true
            }
            Backend::Redis { redis, keys, .. } => {
                let value = Zeroizing::new(value);
                let set = keys.current();
                let Some(sealed) = seal::seal(&set, &key, &value, SystemTime::now(), &self.rng)
                else {
                    self.metrics.put("no_key", 1, None);
                    return false;
                };
                if !redis.put(&key, sealed) {
                    self.metrics.put("dropped", 1, None);
                    return false;
                }
                true
            }
        }
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        // Only TLS 1.2 asks `get` (TLS 1.3 always `take`s).
        self.tls12.get(key)
    }

    /// Only what the early-data step staged: never a wait, and a session the store handed to one handshake.
    /// Two handshakes racing with the same identity (a flight replayed while the original is in progress)
    /// share the one staged entry: whichever takes it first resumes, the other gets a full handshake, so the
    /// session is still used once.
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shard(key).remove(key).map(|s| s.to_vec())
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// tokio's timer fires on the first millisecond tick at or after a deadline, so a 5 ms timeout can wait
/// almost 6 ms. `fetch_timeout` is a promise to the handshake ("at most this long"), so the deadline is set one
/// tick early; a timeout of one tick stays one tick.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// The deadline a fetch actually waits for, so that it ends within `fetch_timeout` of its start.
fn fetch_budget(fetch_timeout: Duration) -> Duration {
    fetch_timeout.saturating_sub(TIMER_TICK).max(TIMER_TICK)
}
