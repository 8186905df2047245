//! The shared store (`kind = "redis"`): sessions sealed with the fleet's ticket keys under
//! `portcullis:0rtt:<identity>` with a TTL, taken once with an atomic read-and-replace.
//!
//! The fetch is `SET key "" XX KEEPTTL GET`: atomic like `GETDEL`, but it leaves an empty tombstone until the
//! session would have expired, so a second use of the same ticket (a replayed 0-RTT flight, on any
//! instance) is told apart from an unknown one in the same round trip. Writes are asynchronous (rustls'
//! `put` is synchronous): a bounded queue drained by a thread of our own, where the connection manager and its
//! reconnects live too.
//!
//! A session still waiting in the queue is in no other instance's reach, so a client that comes back at once
//! takes it from the queue's side table here (no round trip); the writer then stores a tombstone instead of
//! the session, and a replay elsewhere is still recognised. One lock decides who has it: writer or taker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use super::Lookup;
use super::metrics::StoreMetrics;

/// Prefix of every key we write.
pub const KEY_PREFIX: &[u8] = b"portcullis:0rtt:";

/// A Redis problem: the message names the server and what to check.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The URL does not parse.
    #[error("tls.session_store.url `{url}` is not a Redis URL: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
    /// The store thread could not start.
    #[error("cannot start the session store thread: {0}")]
    Thread(String),
}

/// Sessions queued for Redis, by identity: the writer or a handshake on this instance takes each.
type Pending = Arc<Mutex<HashMap<Vec<u8>, Queued>>>;

/// A queued session's state.
enum Queued {
    /// Waiting for the writer: a handshake here may take it.
    Waiting(Vec<u8>),
    /// Being written: a fetch waits for the write to land (notified), then asks Redis.
    Writing(Arc<tokio::sync::Notify>),
}

/// What the write queue had for an identity.
pub enum FromQueue {
    /// The sealed session, taken here (the writer will store a tombstone).
    Taken(Vec<u8>),
    /// Its write is in flight: await this, then ask Redis (asking at once could overtake the write).
    Landing(tokio::sync::futures::OwnedNotified),
    /// Not queued.
    Absent,
}

/// The Redis backend: a connection manager shared by every worker, and the write queue.
pub struct RedisBackend {
    conn: ConnectionManager,
    writes: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    ttl_secs: u64,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Starts the store thread for `url` (connecting lazily: a Redis that is down at start only makes
    /// resumptions on early-data listeners full handshakes until it is back).
    pub fn start(
        url: &str,
        queue: usize,
        ttl: Duration,
        metrics: StoreMetrics,
    ) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|source| RedisStoreError::Url {
            url: url.to_owned(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let pending: Pending = Arc::default();
        let writer_pending = pending.clone();
        let ttl_secs = ttl.as_secs().max(1);
        let (conn_tx, conn_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = conn_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_max_delay(Duration::from_secs(1))
                    .set_number_of_retries(2);
                let conn =
                    rt.block_on(async { ConnectionManager::new_lazy_with_config(client, config) });
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = conn_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = conn_tx.send(Ok(conn.clone()));
                // Connect now, not on the first handshake's fetch (which would spend its whole timeout on it).
                let mut first = conn.clone();
                rt.spawn(async move {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut first).await;
                    if let Err(e) = pong {
                        tracing::warn!(error = %e, "the session store's Redis does not answer yet: resumptions on early-data listeners are full handshakes until it does");
                    }
                });
                rt.block_on(write_loop(conn, rx, writer_pending, ttl_secs, metrics));
            })
            .map_err(|e| RedisStoreError::Thread(e.to_string()))?;
        let conn = conn_rx
            .recv()
            .map_err(|e| RedisStoreError::Thread(e.to_string()))?
            .map_err(RedisStoreError::Thread)?;
        Ok(Self {
            conn,
            writes: tx,
            pending,
            ttl_secs,
        })
    }

    /// Queues a sealed session; `false` when the queue is full (the write is dropped).
    pub fn put(&self, identity: &[u8], sealed: Vec<u8>) -> bool {
        lock(&self.pending).insert(identity.to_vec(), Queued::Waiting(sealed));
        if self.writes.try_send(identity.to_vec()).is_ok() {
            return true;
        }
        lock(&self.pending).remove(identity);
        false
    }

    /// A sealed session still queued for Redis, taken on this instance, or the wait for its write to land.
    pub fn take_queued(&self, identity: &[u8]) -> FromQueue {
        let mut pending = lock(&self.pending);
        match pending.remove(identity) {
            Some(Queued::Waiting(sealed)) => FromQueue::Taken(sealed),
            Some(Queued::Writing(landed)) => {
                // Created under the lock, so the writer's notification cannot come before it.
                let wait = landed.clone().notified_owned();
                pending.insert(identity.to_vec(), Queued::Writing(landed));
                FromQueue::Landing(wait)
            }
            None => FromQueue::Absent,
        }
    }

    /// Takes the sealed session under `identity` (one round trip). Errors are the caller's to time and count.
    pub async fn take(&self, identity: &[u8]) -> redis::RedisResult<Lookup> {
        let mut conn = self.conn.clone();
        let old: Option<Vec<u8>> = redis::cmd("SET")
            .arg(key(identity))
            .arg(b"".as_slice())
            .arg("XX")
            .arg("KEEPTTL")
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        Ok(match old {
            None => Lookup::Miss,
            Some(v) if v.is_empty() => Lookup::Replay,
            Some(v) => Lookup::Hit(zeroize::Zeroizing::new(v)),
        })
    }
}

fn key(identity: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(KEY_PREFIX.len() + identity.len());
    k.extend_from_slice(KEY_PREFIX);
    k.extend_from_slice(identity);
    k
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Queued>> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

async fn write_loop(
    conn: ConnectionManager,
    mut rx: mpsc::Receiver<Vec<u8>>,
    pending: Pending,
    ttl_secs: u64,
    metrics: StoreMetrics,
) {
    while let Some(identity) = rx.recv().await {
        // Taken on this instance while queued: store the tombstone, so a replay elsewhere is seen as one.
        let landed = Arc::new(tokio::sync::Notify::new());
        let value = match lock(&pending).insert(identity.clone(), Queued::Writing(landed.clone())) {
            Some(Queued::Waiting(sealed)) => sealed,
            _ => Vec::new(),
        };
        let mut c = conn.clone();
        let started = Instant::now();
        let done: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key(&identity))
            .arg(&value)
            .arg("EX")
            .arg(ttl_secs)
            .query_async(&mut c)
            .await;
        lock(&pending).remove(&identity);
        landed.notify_waiters();
        match done {
            Ok(()) => metrics.put("ok", Some(started.elapsed())),
            Err(e) => {
                metrics.put("error", None);
                tracing::debug!(error = %e, "session store write failed: that ticket will not resume");
            }
        }
    }
}
