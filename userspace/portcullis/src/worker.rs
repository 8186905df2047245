//! Workers: one OS thread per core, pinned, each running a current-thread tokio runtime and accepting on its
//! own SO_REUSEPORT socket of every listener. A connection lives and dies on the worker that accepted it, so
//! there is no cross-thread hand-off on the data path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::connection::{self, ListenerContext};
use crate::limits::{Closed, Limits};
use crate::shutdown::Phase;

/// Where a worker reads a listener's context for each new connection: a reload stores a new one (new
/// upstreams, timeouts, TLS settings) and connections already open keep the one they started with. A load is
/// one atomic read and a reference count, per accepted connection.
pub type ContextSlot = Arc<arc_swap::ArcSwap<ListenerContext>>;

/// What one worker runs.
pub struct WorkerSpec {
    /// Worker number, from 0.
    pub index: usize,
    /// CPU to pin to, if pinning.
    pub cpu: Option<usize>,
    /// This worker's socket of each listener, with the listener's context slot.
    pub listeners: Vec<(std::net::TcpListener, ContextSlot)>,
    /// This worker's accepted-connections counter (all listeners).
    pub accepted: Counter,
    /// Where admission control marks this worker saturated for reuseport steering, when steering runs.
    pub saturation: Option<Arc<dyn crate::steering::SaturationMap>>,
    /// Connection caps, keepalive and lifetime, shared by every worker.
    pub limits: Arc<Limits>,
    /// Where the worker registers its runtime, whose busy time decides when free heap is given back.
    pub runtimes: crate::memory::Workers,
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The one CPU the calling thread may run on, when its affinity allows exactly one (pinned, or `taskset` to a
/// single core).
pub fn single_cpu() -> Option<usize> {
    match allowed_cpus().as_slice() {
        [cpu] => Some(*cpu),
        _ => None,
    }
}

/// Starts the worker thread.
pub fn spawn(
    spec: WorkerSpec,
    phase: watch::Receiver<Phase>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    // Here, before the daemon reports ready: the kernel completes connections (and copies the listener's
    // keepalive to them) from `listen` on, before the worker's accept loop first runs.
    let keepalive = *spec.limits.keepalive().borrow();
    for (socket, _) in &spec.listeners {
        keep_alive(socket, keepalive);
    }
    let name = format!("portcullis-w{}", spec.index);
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || run(spec, phase))
        .with_context(|| format!("cannot start worker thread {name}"))
}

fn run(spec: WorkerSpec, mut phase: watch::Receiver<Phase>) {
    if let Some(cpu) = spec.cpu {
        let mut set = nix::sched::CpuSet::new();
        let pinned = set
            .set(cpu)
            .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
        match pinned {
            Ok(()) => tracing::debug!(worker = spec.index, cpu, "worker pinned"),
            Err(e) => {
                tracing::warn!(worker = spec.index, cpu, error = %e, "cannot pin worker; running unpinned")
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = spec.index, error = %e, "cannot build the worker runtime");
            return;
        }
    };
    spec.runtimes.register(rt.handle());
    if let Some(map) = spec.saturation {
        crate::steering::register_worker(spec.index, map);
    }
    let tracker = Arc::new(Tracker::default());
    rt.block_on(async {
        for (socket, ctx) in spec.listeners {
            // Set in `listener::bind_one` too; again here for a socket bound elsewhere (inherited).
            let _ = socket2::SockRef::from(&socket).set_tcp_nodelay(true);
            let listener = match TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(worker = spec.index, error = %e, "cannot register listener");
                    continue;
                }
            };
            tokio::spawn(accept_loop(
                listener,
                ctx,
                spec.accepted.clone(),
                spec.limits.clone(),
                tracker.clone(),
                phase.clone(),
            ));
        }
        // Run until told to stop, then drain.
        let final_phase = loop {
            let p = *phase.borrow_and_update();
            if p != Phase::Running {
                break p;
            }
            if phase.changed().await.is_err() {
                break Phase::Stop;
            }
        };
        if let Phase::Draining { deadline } = final_phase {
            tokio::select! {
                () = tracker.idle() => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    tracing::info!(worker = spec.index, open = tracker.count(), "drain deadline reached; closing open connections");
                }
                _ = wait_for_stop(&mut phase) => {}
            }
        }
    });
    // Dropping the runtime cancels the remaining connection tasks, closing their sockets.
    drop(rt);
    tracing::debug!(worker = spec.index, "worker stopped");
}

async fn wait_for_stop(phase: &mut watch::Receiver<Phase>) {
    while *phase.borrow_and_update() != Phase::Stop {
        if phase.changed().await.is_err() {
            return;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    slot: ContextSlot,
    accepted_total: Counter,
    limits: Arc<Limits>,
    tracker: Arc<Tracker>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut keepalive = limits.keepalive();
    let mut watching = true;
    // Again (set at spawn): a reload may have come in between.
    keep_alive(&listener, *keepalive.borrow_and_update());
    loop {
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() || *phase.borrow() != Phase::Running {
                    // Closing our socket stops new connections reaching this worker.
                    return;
                }
            }
            // Before the next accept: a reload's keepalive is on the listener before it accepts again.
            r = keepalive.changed(), if watching => match r {
                Ok(()) => keep_alive(&listener, *keepalive.borrow_and_update()),
                Err(_) => watching = false,
            },
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    accepted_total.inc();
                    let Ok(admitted) = limits.admit(peer, tracker.count()) else {
                        // Reset before any TLS work: nothing to keep, no TIME_WAIT (limits module docs).
                        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                        continue;
                    };
                    // Taken now: a reload changes it for connections accepted after it. TCP keepalive came with
                    // the socket, from the listener (`keep_alive`).
                    let lifetime = limits.settings().lifetime;
                    let guard = tracker.enter();
                    let ctx = slot.load_full();
                    // Two task types: a connection without a lifetime limit (the default) keeps no room for
                    // the lifetime's timer in its task for its whole life, and its task is `serve`'s future
                    // itself (BENCHMARKS.md, "Idle connections").
                    let held = (guard, admitted);
                    match lifetime {
                        Some(lifetime) => {
                            let limits = limits.clone();
                            tokio::spawn(async move {
                                let serve = connection::serve(tcp, peer, ctx, held);
                                if tokio::time::timeout(lifetime, serve).await.is_err() {
                                    limits.metrics.closed(Closed::Lifetime);
                                    tracing::debug!(%peer, ?lifetime, "connection closed at its maximum lifetime");
                                }
                            });
                        }
                        None => {
                            tokio::spawn(connection::serve(tcp, peer, ctx, held));
                        }
                    }
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning on the same error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Puts `limits.tcp_keepalive` (`None`: off) on `listener`, for the connections it accepts from now on.
fn keep_alive(listener: &impl std::os::fd::AsFd, idle: Option<std::time::Duration>) {
    if let Err(e) = crate::limits::set_listener_keepalive(listener, idle) {
        tracing::warn!(error = %e, ?idle, "cannot set TCP keepalive on a listening socket; its connections go without");
    }
}

/// Counts a worker's open connections so a drain knows when it is done.
#[derive(Default)]
struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

struct TrackerGuard(Arc<Tracker>);

impl Tracker {
    fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        TrackerGuard(self.clone())
    }

    fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
