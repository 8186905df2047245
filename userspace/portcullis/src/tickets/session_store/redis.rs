//! The shared store (`kind = "redis"`): sessions sealed with the fleet's ticket keys under
//! `portcullis:0rtt:<identity>` with a TTL, taken once with an atomic read-and-replace.
//!
//! The fetch is `SET key "" XX KEEPTTL GET`: atomic like `GETDEL`, but it leaves an empty tombstone until the
//! session would have expired, so a second use of the same ticket (a replayed 0-RTT flight, on any
//! instance) is told apart from an unknown one in the same round trip. Writes are asynchronous (rustls'
//! `put` is synchronous): a bounded queue drained by a thread of our own, where the connection manager and its
//! reconnects live too.

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

/// A session write waiting for Redis.
struct Write {
    key: Vec<u8>,
    value: Vec<u8>,
    ttl_secs: u64,
}

/// The Redis backend: a connection manager shared by every worker, and the write queue.
pub struct RedisBackend {
    conn: ConnectionManager,
    writes: mpsc::Sender<Write>,
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
                rt.block_on(write_loop(conn, rx, metrics));
            })
            .map_err(|e| RedisStoreError::Thread(e.to_string()))?;
        let conn = conn_rx
            .recv()
            .map_err(|e| RedisStoreError::Thread(e.to_string()))?
            .map_err(RedisStoreError::Thread)?;
        Ok(Self {
            conn,
            writes: tx,
            ttl_secs: ttl.as_secs().max(1),
        })
    }

    /// Queues a sealed session; `false` when the queue is full (the write is dropped).
    pub fn put(&self, identity: &[u8], sealed: Vec<u8>) -> bool {
        self.writes
            .try_send(Write {
                key: key(identity),
                value: sealed,
                ttl_secs: self.ttl_secs,
            })
            .is_ok()
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

async fn write_loop(conn: ConnectionManager, mut rx: mpsc::Receiver<Write>, metrics: StoreMetrics) {
    while let Some(w) = rx.recv().await {
        let mut c = conn.clone();
        let started = Instant::now();
        let done: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&w.key)
            .arg(&w.value)
            .arg("EX")
            .arg(w.ttl_secs)
            .query_async(&mut c)
            .await;
        match done {
            Ok(()) => metrics.put("ok", Some(started.elapsed())),
            Err(e) => {
                metrics.put("error", None);
                tracing::debug!(error = %e, "session store write failed: that ticket will not resume");
            }
        }
    }
}
