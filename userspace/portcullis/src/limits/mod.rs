//! What one client, one worker and the process may hold: caps on open connections (checked at accept, before
//! any TLS work), the first-byte timeout after the handshake, TCP keepalive and the maximum connection
//! lifetime, with the metrics that count what they refuse and close.
//!
//! # Layout
//! - [`config`]: the `[limits]` config section.
//! - this file: [`Limits`] (the process-wide counts, shared by the workers), [`Admitted`] (one connection's
//!   place in them, given back on drop) and [`LimitMetrics`].
//!
//! A refused connection is reset (SO_LINGER 0) as soon as it is accepted: it costs no TLS work, leaves no
//! TIME_WAIT, and the client sees ECONNRESET, as for a shed handshake.

pub mod config;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use config::LimitsConfig;

/// Why a connection was refused at accept (`portcullis_connections_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The process holds `limits.max_connections`.
    Process,
    /// The accepting worker holds `limits.max_connections_per_worker`.
    Worker,
    /// The client's source holds `limits.max_connections_per_source`.
    Source,
}

impl Refused {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Process => "process_limit",
            Self::Worker => "worker_limit",
            Self::Source => "source_limit",
        }
    }
}

/// Why a limit closed an open connection (`portcullis_connections_closed_total{cause}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No data within `limits.first_byte_timeout` after the handshake.
    FirstByteTimeout,
    /// Nothing moved for `upstream.idle_timeout`.
    Idle,
    /// Open for `limits.max_connection_lifetime`.
    Lifetime,
}

impl Closed {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::FirstByteTimeout => "first_byte_timeout",
            Self::Idle => "idle",
            Self::Lifetime => "lifetime",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

/// The counters of refused and limit-closed connections.
#[derive(Clone, Default)]
pub struct LimitMetrics {
    refused: Family<ReasonLabel, Counter>,
    closed: Family<CauseLabel, Counter>,
}

impl LimitMetrics {
    /// Registers the families in `registry`, every label present from the start (at 0).
    pub fn register(&self, registry: &mut Registry) {
        for r in [Refused::Process, Refused::Worker, Refused::Source] {
            let _ = self
                .refused
                .get_or_create(&ReasonLabel { reason: r.name() });
        }
        for c in [Closed::FirstByteTimeout, Closed::Idle, Closed::Lifetime] {
            let _ = self.closed.get_or_create(&CauseLabel { cause: c.name() });
        }
        registry.register(
            "portcullis_connections_refused",
            "Client connections reset at accept by a connection cap, by reason (process_limit, worker_limit, \
             source_limit)",
            self.refused.clone(),
        );
        registry.register(
            "portcullis_connections_closed",
            "Client connections closed by a limit, by cause (first_byte_timeout, idle, lifetime)",
            self.closed.clone(),
        );
    }

    /// Counts a refusal.
    pub fn refused(&self, reason: Refused) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.name(),
            })
            .inc();
    }

    /// Counts a close.
    pub fn closed(&self, cause: Closed) {
        self.closed
            .get_or_create(&CauseLabel {
                cause: cause.name(),
            })
            .inc();
    }
}

/// Shards of the per-source counts: a worker locks one of them per accept and close.
const SOURCE_SHARDS: usize = 16;

/// The process-wide connection counts and the limits' settings, shared by every worker.
pub struct Limits {
    /// Swapped whole by a reload ([`Limits::update`]); read once per accepted connection.
    settings: arc_swap::ArcSwap<Settings>,
    /// `limits.tcp_keepalive` (`None` when off), watched by every accept loop, which puts it on its listening
    /// socket: accepted sockets inherit it ([`set_listener_keepalive`]).
    keepalive: tokio::sync::watch::Sender<Option<Duration>>,
    open: AtomicUsize,
    sources: [Mutex<HashMap<IpAddr, usize>>; SOURCE_SHARDS],
    /// The counters.
    pub metrics: LimitMetrics,
}

/// The `[limits]` settings in force. A connection takes them at accept: a reload changes the caps for the
/// next accept and the timeouts and lifetime for connections accepted after it (keepalive: [`Limits::update`]).
#[derive(Debug)]
pub struct Settings {
    process_cap: usize,
    worker_cap: Option<usize>,
    source_cap: usize,
    /// `limits.first_byte_timeout`.
    pub first_byte_timeout: Duration,
    /// `limits.max_connection_lifetime`, `None` when unlimited.
    pub lifetime: Option<Duration>,
}

impl Settings {
    /// The settings of `config`; the first-byte timeout is capped at `idle_timeout`.
    fn new(config: &LimitsConfig, idle_timeout: Duration) -> Self {
        Self {
            process_cap: config.process_cap(),
            worker_cap: config.max_connections_per_worker,
            source_cap: config.max_connections_per_source,
            first_byte_timeout: config.first_byte_timeout.min(idle_timeout),
            lifetime: (!config.max_connection_lifetime.is_zero())
                .then_some(config.max_connection_lifetime),
        }
    }
}

impl Limits {
    /// The limits of `config`, with no connection open; the first-byte timeout is capped at `idle_timeout`.
    pub fn new(config: &LimitsConfig, idle_timeout: Duration, metrics: LimitMetrics) -> Self {
        Self {
            settings: arc_swap::ArcSwap::from_pointee(Settings::new(config, idle_timeout)),
            keepalive: tokio::sync::watch::Sender::new(config.keepalive()),
            open: AtomicUsize::new(0),
            sources: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Puts the settings of `config` in force (a reload), keeping the counts of open connections: a lower cap
    /// refuses new connections until enough close; none is closed for it. A changed `tcp_keepalive` wakes every
    /// accept loop to put it on its listening socket: connections accepted after that have it, and so does none
    /// already open. One the kernel completed before its worker got there (in the accept queue) keeps the old
    /// values, since the kernel copies the listener's options when it creates the connection, not at accept.
    pub fn update(&self, config: &LimitsConfig, idle_timeout: Duration) {
        self.settings
            .store(Arc::new(Settings::new(config, idle_timeout)));
        let keepalive = config.keepalive();
        self.keepalive.send_if_modified(|k| {
            let changed = *k != keepalive;
            *k = keepalive;
            changed
        });
    }

    /// `limits.tcp_keepalive` in force (`None`: off), marked changed by each reload that changes it.
    pub fn keepalive(&self) -> tokio::sync::watch::Receiver<Option<Duration>> {
        self.keepalive.subscribe()
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// The process cap in force.
    pub fn process_cap(&self) -> usize {
        self.settings.load().process_cap
    }

    /// Takes a place for a connection from `peer` on a worker that has `worker_open` open already, or says
    /// (and counts) which cap refuses it.
    ///
    /// # Errors
    /// The cap that is full.
    pub fn admit(
        self: &Arc<Self>,
        peer: SocketAddr,
        worker_open: usize,
    ) -> Result<Admitted, Refused> {
        let refused = |reason| {
            self.metrics.refused(reason);
            Err(reason)
        };
        let settings = self.settings.load();
        if settings.worker_cap.is_some_and(|cap| worker_open >= cap) {
            return refused(Refused::Worker);
        }
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < settings.process_cap).then_some(n + 1)
            })
            .is_err()
        {
            return refused(Refused::Process);
        }
        let mut admitted = Admitted {
            limits: self.clone(),
            source: None,
        };
        if settings.source_cap > 0 {
            let source = source_key(peer.ip());
            let mut shard = self.shard(&source);
            let n = shard.entry(source).or_insert(0);
            if *n >= settings.source_cap {
                drop(shard);
                drop(admitted); // gives the process place back
                return refused(Refused::Source);
            }
            *n += 1;
            admitted.source = Some(source);
        }
        Ok(admitted)
    }

    /// Connections open in the process (tests).
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn shard(&self, source: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(source);
        let index = usize::try_from(hash % SOURCE_SHARDS as u64).unwrap_or(0);
        // A poisoned shard only means a panic elsewhere while it was held; its counts are still whole numbers.
        match self.sources.get(index).unwrap_or(&self.sources[0]).lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// What the per-source cap counts as one source: the address for IPv4, the /64 for IPv6 (one subscriber
/// usually has a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// One admitted connection's place in the process and source counts, given back on drop.
pub struct Admitted {
    limits: Arc<Limits>,
    source: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(source) = self.source {
            let mut shard = self.limits.shard(&source);
            if let Some(n) = shard.get_mut(&source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    shard.remove(&source);
                }
            }
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (as Go's runtime does): the soft default of 1024 is for
/// programs that use `select`, and the default process cap follows the soft limit. Best effort.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(soft, hard, error = %e, "cannot raise RLIMIT_NOFILE");
    }
}

/// Puts TCP keepalive on a listening socket, for the client sockets it accepts: first probe after `idle`, then
/// every 10 s, 3 probes; `None` turns it off. Linux copies SO_KEEPALIVE and TCP_KEEPIDLE/INTVL/CNT from the
/// listener to each connection it creates (`sk_clone_lock` copies the socket; `tcp_create_openreq_child` starts
/// the keepalive timer), so an accepted socket needs no setsockopt of its own: four system calls less per
/// connection (BENCHMARKS.md, "Per-handshake overhead").
pub fn set_listener_keepalive(listener: &impl AsFd, idle: Option<Duration>) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(listener);
    match idle {
        Some(idle) => socket.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(10))
                .with_retries(3),
        ),
        None => socket.set_keepalive(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(config: LimitsConfig) -> Arc<Limits> {
        Arc::new(Limits::new(
            &config,
            Duration::from_secs(600),
            LimitMetrics::default(),
        ))
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    /// What an accepted socket carries: SO_KEEPALIVE, and TCP_KEEPIDLE when on.
    fn accepted_keepalive(
        listener: &std::net::TcpListener,
        client: &std::net::TcpStream,
    ) -> Option<Duration> {
        let (tcp, _) = listener.accept().expect("loopback test socket");
        assert_eq!(
            tcp.peer_addr().ok(),
            client.local_addr().ok(),
            "accepted in connect order"
        );
        let sock = socket2::SockRef::from(&tcp);
        if !sock.keepalive().expect("SO_KEEPALIVE") {
            return None;
        }
        assert_eq!(
            sock.tcp_keepalive_interval().ok(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(sock.tcp_keepalive_retries().ok(), Some(3));
        Some(sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"))
    }

    #[test]
    fn accepted_sockets_inherit_the_listeners_keepalive_as_it_was_when_they_connected() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback test socket");
        let addr = listener.local_addr().expect("loopback test socket");
        let connect = || std::net::TcpStream::connect(addr).expect("loopback test socket");
        let (idle, longer) = (Duration::from_secs(45), Duration::from_secs(90));
        set_listener_keepalive(&listener, Some(idle)).expect("setsockopt");
        let a = connect();
        assert_eq!(accepted_keepalive(&listener, &a), Some(idle));
        // Connected (in the accept queue) before the change, accepted after: the kernel copied the old values.
        let queued = connect();
        set_listener_keepalive(&listener, Some(longer)).expect("setsockopt");
        let b = connect();
        assert_eq!(accepted_keepalive(&listener, &queued), Some(idle));
        assert_eq!(accepted_keepalive(&listener, &b), Some(longer));
        set_listener_keepalive(&listener, None).expect("setsockopt");
        let c = connect();
        assert_eq!(accepted_keepalive(&listener, &c), None);
    }

    #[test]
    fn a_reload_marks_the_keepalive_changed_only_when_it_changed() {
        let l = limits(LimitsConfig::default());
        let mut rx = l.keepalive();
        assert_eq!(*rx.borrow_and_update(), Some(Duration::from_secs(60)));
        l.update(&LimitsConfig::default(), Duration::from_secs(600));
        assert!(!rx.has_changed().expect("sender alive"));
        l.update(
            &LimitsConfig {
                tcp_keepalive: Duration::ZERO,
                ..LimitsConfig::default()
            },
            Duration::from_secs(600),
        );
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(*rx.borrow_and_update(), None);
    }

    #[test]
    fn the_process_cap_refuses_until_a_place_is_given_back() {
        let l = limits(LimitsConfig {
            max_connections: Some(2),
            ..LimitsConfig::default()
        });
        let a = l.admit(peer("10.0.0.1:1"), 0).expect("first");
        let _b = l.admit(peer("10.0.0.2:1"), 0).expect("second");
        assert_eq!(l.admit(peer("10.0.0.3:1"), 0).err(), Some(Refused::Process));
        drop(a);
        assert_eq!(l.open(), 1);
        assert!(l.admit(peer("10.0.0.3:1"), 0).is_ok());
    }

    #[test]
    fn the_worker_cap_uses_the_worker_count() {
        let l = limits(LimitsConfig {
            max_connections_per_worker: Some(3),
            ..LimitsConfig::default()
        });
        assert!(l.admit(peer("10.0.0.1:1"), 2).is_ok());
        assert_eq!(l.admit(peer("10.0.0.1:1"), 3).err(), Some(Refused::Worker));
    }

    #[test]
    fn the_source_cap_counts_ipv4_addresses_and_ipv6_slash_64s() {
        let l = limits(LimitsConfig {
            max_connections_per_source: 1,
            ..LimitsConfig::default()
        });
        let _a = l.admit(peer("10.0.0.1:1"), 0).expect("first from 10.0.0.1");
        assert_eq!(l.admit(peer("10.0.0.1:2"), 0).err(), Some(Refused::Source));
        assert_eq!(l.open(), 1, "a refused source gives its process place back");
        let _b = l.admit(peer("10.0.0.2:1"), 0).expect("another address");
        let c = l
            .admit(peer("[2001:db8::1]:1"), 0)
            .expect("first in the /64");
        assert_eq!(
            l.admit(peer("[2001:db8::ffff]:1"), 0).err(),
            Some(Refused::Source)
        );
        let _d = l
            .admit(peer("[2001:db8:0:1::1]:1"), 0)
            .expect("another /64");
        drop(c);
        assert!(l.admit(peer("[2001:db8::ffff]:1"), 0).is_ok());
    }
}
