//! The shared store (`kind = "redis"`): sessions sealed with the fleet's ticket keys under
//! `portcullis:0rtt:<identity>` with a TTL, taken once with an atomic read-and-replace.
//!
//! The fetch is `SET key "" XX KEEPTTL GET`: atomic like `GETDEL`, but it leaves an empty tombstone until the
//! session would have expired, so a second use of the same ticket (a replayed 0-RTT flight, on any
//! instance) is told apart from an unknown one in the same round trip. Writes are asynchronous (rustls'
//! `put` is synchronous) and bounded in number: each runtime has one writer task, and the puts queued while
//! it waited leave as one pipeline (one encode, one channel send, one `writev` for the batch, instead of a
//! spawned task and a command per write; BENCHMARKS.md, "Where the store's CPU per resumption goes").
//!
//! Every worker thread talks to Redis over a connection of its own, driven by its own runtime ([`link`]):
//! a fetch or a write is a socket write and a read on the thread that asked, with no hop to another thread
//! and no wake-up of one (that hop was most of the store's CPU per resumption; BENCHMARKS.md, "The session
//! store"). For `redis://` over TCP that connection is [`Direct`]: the requesting tasks write and read the
//! socket themselves, no driver task or channel; a URL asking for RESP3 uses redis-rs'
//! `ConnectionManager`. Both leave the requests queued before a write in that one `write`.
//!
//! A session whose write has not landed yet is in no other instance's reach, so a client that comes back at
//! once takes it from the side table here (no round trip); the writer then stores a tombstone instead of
//! the session, and a replay elsewhere is still recognised. One lock decides who has it: writer or taker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Lookup;
use super::direct::Direct;
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

/// Sessions not yet in Redis, by identity: the writer or a handshake on this instance takes each.
type Pending = Mutex<HashMap<Vec<u8>, Queued>>;

/// A queued session's state.
enum Queued {
    /// Waiting for the writer: a handshake here may take it.
    Waiting(Vec<u8>),
    /// Being written: a fetch waits for the write to land (notified), then asks Redis.
    Writing(Arc<tokio::sync::Notify>),
}

/// What the side table of writes not yet landed had for an identity.
pub enum FromQueue {
    /// The sealed session, taken here (the writer will store a tombstone).
    Taken(Vec<u8>),
    /// Its write is in flight: await this, then ask Redis (asking at once could overtake the write).
    Landing(tokio::sync::futures::OwnedNotified),
    /// Not queued.
    Absent,
}

/// How long a put waits for a fetch to travel with before it is sent alone: a few handshakes' time on a busy
/// worker, short beside any client's reconnection to another instance.
const LINGER: Duration = Duration::from_millis(2);

/// Tells one backend's connections from another's in a thread's [`link`] (a daemon has one; tests many).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's connection to the Redis of backend `.0`, driven by the runtime it was first used on
    /// (a worker's own current-thread runtime).
    static LINK: RefCell<Option<(u64, Link)>> = const { RefCell::new(None) };
    /// The write queue of backend `.0` served by a writer on this thread's runtime.
    static QUEUE: RefCell<Option<(u64, Arc<Queue>)>> = const { RefCell::new(None) };
}

/// A thread's connection: its own ([`Direct`], for `redis://` over TCP) or redis-rs' `ConnectionManager`
/// (a URL asking for RESP3).
#[derive(Clone)]
enum Link {
    Direct(Arc<Direct>),
    Managed(ConnectionManager),
}

impl Link {
    /// Sends `cmd` and returns its reply (a reply that is an error is an `Err`). With `defer`, the command waits
    /// one turn of the runtime so the writer woken just before sends with it (direct connections only).
    async fn command(&mut self, cmd: &redis::Cmd, defer: bool) -> redis::RedisResult<redis::Value> {
        let reply = match self {
            Self::Direct(d) => d
                .request(cmd.get_packed_command(), 1, defer)
                .await?
                .pop()
                .unwrap_or(redis::Value::Nil),
            Self::Managed(m) => {
                use redis::aio::ConnectionLike as _;
                m.req_packed_command(cmd).await?
            }
        };
        reply.extract_error()
    }

    /// Sends `pipe` and checks every reply (one that is an error fails the whole).
    async fn pipeline(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
        let replies = match self {
            Self::Direct(d) => {
                d.request(pipe.get_packed_pipeline(), pipe.len(), false)
                    .await?
            }
            Self::Managed(m) => {
                use redis::aio::ConnectionLike as _;
                m.req_packed_commands(pipe, 0, pipe.len()).await?
            }
        };
        for reply in replies {
            reply.extract_error()?;
        }
        Ok(())
    }
}

/// Puts waiting for one runtime's writer task, by identity (their sealed values wait in the side table).
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// A put arrived.
    wake: tokio::sync::Notify,
    /// A fetch is leaving on this runtime: the queued puts go with it.
    flush: tokio::sync::Notify,
}

#[derive(Default)]
struct QueueState {
    identities: Vec<Vec<u8>>,
    /// The writer is gone (its runtime shut down): the next put on this thread starts another.
    closed: bool,
}

impl Queue {
    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `identity` for the writer; `false` when the writer is gone.
    fn push(&self, identity: Vec<u8>) -> bool {
        {
            let mut state = self.state();
            if state.closed {
                return false;
            }
            state.identities.push(identity);
        }
        // A permit when the writer is busy: it looks at the queue again after its batch.
        self.wake.notify_one();
        true
    }

    /// Asks the writer to send what is queued now (when anything is), so that it leaves with the request
    /// being sent; whether it asked.
    fn flush(&self) -> bool {
        let queued = !self.state().identities.is_empty();
        if queued {
            self.flush.notify_one();
        }
        queued
    }

    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state().identities)
    }
}

/// What the write tasks share with the backend.
struct Shared {
    id: u64,
    client: redis::Client,
    config: ConnectionManagerConfig,
    pending: Pending,
    /// Writes accepted and not finished (queued or in a batch), at most `max_writes`.
    writes: AtomicUsize,
    max_writes: usize,
    ttl_secs: u64,
    metrics: StoreMetrics,
}

/// The Redis backend: a connection per worker thread, and the writes in flight.
pub struct RedisBackend {
    shared: Arc<Shared>,
    /// The queue of the store thread's writer: puts made outside any runtime go there.
    fallback: Arc<Queue>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("ttl_secs", &self.shared.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Starts the store thread for `url` and checks Redis answers (connecting lazily: a Redis that is down at
    /// start only makes resumptions on early-data listeners full handshakes until it is back). At most
    /// `max_writes` session writes are in flight; more are dropped and counted.
    pub fn start(
        url: &str,
        max_writes: usize,
        ttl: Duration,
        metrics: StoreMetrics,
    ) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|source| RedisStoreError::Url {
            url: url.to_owned(),
            source,
        })?;
        // No response timeout of redis-rs': a fetch has its own deadline, and a timer armed per command costs
        // the worker a wake-up of its own runtime (tokio unparks when a timer is earlier than its next wake).
        // A write to a hung Redis waits for the connection to fail, holding one of `max_writes`.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(None)
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client,
            config,
            pending: Mutex::default(),
            writes: AtomicUsize::new(0),
            max_writes: max_writes.max(1),
            ttl_secs: ttl.as_secs().max(1),
            metrics,
        });
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let probe = shared.clone();
        std::thread::Builder::new()
            .name("session-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async move {
                    // Tell the operator now, not on the first handshake, when Redis does not answer.
                    let pong = match probe.link() {
                        Ok(mut c) => c.command(&redis::cmd("PING"), false).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = pong {
                        tracing::warn!(error = %e, "the session store's Redis does not answer yet: resumptions on early-data listeners are full handshakes until it does");
                    }
                    // Serve the writes handed over from outside a runtime, for the life of the process.
                    std::future::pending::<()>().await;
                });
            })
            .map_err(|e| RedisStoreError::Thread(e.to_string()))?;
        let store_thread: tokio::runtime::Handle = handle_rx
            .recv()
            .map_err(|e| RedisStoreError::Thread(e.to_string()))?
            .map_err(RedisStoreError::Thread)?;
        let fallback = Arc::new(Queue::default());
        drop(store_thread.spawn(writer(shared.clone(), fallback.clone())));
        Ok(Self { shared, fallback })
    }

    /// Writes a sealed session (asynchronously, by the writer of the calling worker's runtime); `false` when
    /// too many writes are in flight (this one is dropped).
    pub fn put(&self, identity: &[u8], sealed: Vec<u8>) -> bool {
        let shared = &self.shared;
        if shared.writes.fetch_add(1, Ordering::Relaxed) >= shared.max_writes {
            shared.writes.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        lock(&shared.pending).insert(identity.to_vec(), Queued::Waiting(sealed));
        let queued = match tokio::runtime::Handle::try_current() {
            Ok(here) => shared.queue_here(&here).push(identity.to_vec()),
            Err(_) => self.fallback.push(identity.to_vec()),
        };
        if !queued {
            // Its writer went with its runtime (shutting down) since the lookup.
            shared.forget(std::iter::once(identity));
            shared.metrics.put("error", 1, None);
        }
        true
    }

    /// A sealed session still queued for Redis, taken on this instance, or the wait for its write to land.
    pub fn take_queued(&self, identity: &[u8]) -> FromQueue {
        let mut pending = lock(&self.shared.pending);
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
        let mut conn = self.shared.link()?;
        // The writer runs before this fetch writes (woken first, and the fetch yields once when it was), so
        // the puts queued on this runtime and this fetch leave in one `write`.
        let flushed = QUEUE.with_borrow(|slot| match slot {
            Some((id, queue)) if *id == self.shared.id => queue.flush(),
            _ => false,
        });
        let mut fetch = redis::cmd("SET");
        fetch
            .arg(key(identity))
            .arg(b"".as_slice())
            .arg("XX")
            .arg("KEEPTTL")
            .arg("GET");
        let old: Option<Vec<u8>> = redis::from_redis_value(conn.command(&fetch, flushed).await?)?;
        Ok(match old {
            None => Lookup::Miss,
            Some(v) if v.is_empty() => Lookup::Replay,
            Some(v) => Lookup::Hit(zeroize::Zeroizing::new(v)),
        })
    }
}

impl Shared {
    /// Takes writes off the books, landed or abandoned: their side-table entries (a fetch on this instance then
    /// asks Redis) and their places in the `max_writes` count.
    fn forget<'i>(&self, identities: impl ExactSizeIterator<Item = &'i [u8]>) {
        let n = identities.len();
        let mut pending = lock(&self.pending);
        for identity in identities {
            pending.remove(identity);
        }
        drop(pending);
        self.writes.fetch_sub(n, Ordering::Relaxed);
    }

    /// The write queue of this thread's runtime, whose writer task is started on first use (and again
    /// after its runtime shut down).
    fn queue_here(self: &Arc<Self>, here: &tokio::runtime::Handle) -> Arc<Queue> {
        QUEUE.with_borrow_mut(|slot| {
            if let Some((id, queue)) = slot.as_ref()
                && *id == self.id
                && !queue.state().closed
            {
                return queue.clone();
            }
            let queue = Arc::new(Queue::default());
            drop(here.spawn(writer(self.clone(), queue.clone())));
            *slot = Some((self.id, queue.clone()));
            queue
        })
    }

    /// This thread's connection (made on first use, in the current runtime, which drives it).
    fn link(&self) -> redis::RedisResult<Link> {
        LINK.with_borrow_mut(|slot| {
            if let Some((id, conn)) = slot.as_ref()
                && *id == self.id
            {
                return Ok(conn.clone());
            }
            let conn = match Direct::for_info(self.client.get_connection_info()) {
                Some(direct) => Link::Direct(Arc::new(direct)),
                None => Link::Managed(ConnectionManager::new_lazy_with_config(
                    self.client.clone(),
                    self.config.clone(),
                )?),
            };
            *slot = Some((self.id, conn.clone()));
            Ok(conn)
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

/// A runtime's writer: waits for puts, and writes each batch queued meanwhile as one pipeline. Ends with its
/// runtime; whatever was still queued then is abandoned like a failed write (the ticket will not resume).
async fn writer(shared: Arc<Shared>, queue: Arc<Queue>) {
    let _close = Close {
        shared: shared.clone(),
        queue: queue.clone(),
    };
    loop {
        queue.wake.notified().await;
        // Hold the puts for this runtime's next fetch: both then cost one packet to Redis and one back instead
        // of two each, the largest part of the store's CPU (BENCHMARKS.md). A session held here is taken
        // from the side table by a handshake on this instance; other instances see it `LINGER` later at most.
        let _ = tokio::time::timeout(LINGER, queue.flush.notified()).await;
        let identities = queue.take();
        if identities.is_empty() {
            continue;
        }
        Batch::start(shared.clone(), identities).write().await;
    }
}

/// Closes a writer's queue when its task ends (dropped with its runtime).
struct Close {
    shared: Arc<Shared>,
    queue: Arc<Queue>,
}

impl Drop for Close {
    fn drop(&mut self) {
        let abandoned = {
            let mut state = self.queue.state();
            state.closed = true;
            std::mem::take(&mut state.identities)
        };
        if !abandoned.is_empty() {
            self.shared.forget(abandoned.iter().map(Vec::as_slice));
        }
    }
}

/// Session writes in flight together. Each session taken on this instance while queued is written as a
/// tombstone, so a replay elsewhere is seen as one. Its end, also when its task is dropped (the runtime
/// shutting down): the side-table entries go, fetches waiting for them go on (no fetch waits for a write that
/// is gone), the count drops.
struct Batch {
    shared: Arc<Shared>,
    identities: Vec<Vec<u8>>,
    /// The sealed values (empty: a tombstone), in the order of `identities`, until written.
    values: Vec<Vec<u8>>,
    landed: Arc<tokio::sync::Notify>,
}

impl Batch {
    /// Moves the batch's sessions from waiting to being written (one lock for the batch): from here a fetch
    /// on this instance waits for the landing, then asks Redis.
    fn start(shared: Arc<Shared>, identities: Vec<Vec<u8>>) -> Self {
        let landed = Arc::new(tokio::sync::Notify::new());
        let mut values = Vec::with_capacity(identities.len());
        {
            let mut pending = lock(&shared.pending);
            for identity in &identities {
                let writing = Queued::Writing(landed.clone());
                let before = match pending.get_mut(identity.as_slice()) {
                    Some(entry) => Some(std::mem::replace(entry, writing)),
                    None => pending.insert(identity.clone(), writing),
                };
                values.push(match before {
                    Some(Queued::Waiting(sealed)) => sealed,
                    _ => Vec::new(),
                });
            }
        }
        Self {
            shared,
            identities,
            values,
            landed,
        }
    }

    async fn write(self) {
        let n = u64::try_from(self.identities.len()).unwrap_or(u64::MAX);
        // Not `.ignore()`d: that records each index in a hash set; `()` takes the replies, and a reply that
        // is an error fails the batch.
        let mut pipe = redis::Pipeline::with_capacity(self.identities.len());
        for (identity, value) in self.identities.iter().zip(&self.values) {
            pipe.cmd("SET")
                .arg(key(identity))
                .arg(value.as_slice())
                .arg("EX")
                .arg(self.shared.ttl_secs);
        }
        let started = Instant::now();
        let done = match self.shared.link() {
            Ok(mut c) => c.pipeline(&pipe).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => self.shared.metrics.put("ok", n, Some(started.elapsed())),
            Err(e) => {
                self.shared.metrics.put("error", n, None);
                tracing::debug!(error = %e, writes = n, "session store write failed: those tickets will not resume");
            }
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.shared
            .forget(self.identities.iter().map(Vec::as_slice));
        self.landed.notify_waiters();
    }
}
