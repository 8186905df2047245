//! The software offload engine: `instances` crypto threads, each draining its own bounded ring.
//!
//! - Bounded: an instance's ring holds `ring_depth` jobs; `submit` never blocks. Submission tries every
//!   instance once, starting round robin, so one slow instance does not refuse work another could take.
//! - Prioritised: a ring is two channels, resumptions ([`Priority::High`]) and full handshakes, sharing the
//!   `ring_depth` slots; the crypto thread takes a queued resumption first, up to [`HIGH_PER_NORMAL`] in a
//!   row while a full handshake waits.
//! - Supervised: each crypto thread runs under a supervisor thread. A panic inside a job unwinds the crypto
//!   thread: the job that panicked is lost (its completion channel drops, so only that connection fails), the
//!   panic is counted, and the supervisor starts a fresh thread on the same ring, so queued jobs are kept.
//! - Shutdown drains: dropping the engine closes the rings; crypto threads finish every queued job, then exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select_biased};
use tokio::sync::Notify;

use super::{OffloadEngine, Priority, SubmitError, Work};

/// The sending side of a ring: high and normal priority, `ring_depth` slots between them.
struct Senders {
    high: Sender<Work>,
    normal: Sender<Work>,
}

/// The receiving side, for the crypto thread.
#[derive(Clone)]
struct Receivers {
    high: Receiver<Work>,
    normal: Receiver<Work>,
}

struct Ring {
    tx: Option<Senders>,
    /// Jobs queued (both priorities); a submit reserves a slot here first, so it never exceeds `ring_depth`.
    depth: Arc<AtomicUsize>,
    /// The most jobs ever queued at once, recorded at each successful submit.
    depth_max: AtomicUsize,
    supervisor: Option<JoinHandle<()>>,
}

/// The software engine.
pub struct SoftwareEngine {
    rings: Vec<Ring>,
    next: AtomicUsize,
    ring_depth: usize,
    freed: Arc<Notify>,
    restarts: Arc<AtomicU64>,
    /// Jobs submitted and not yet finished, over every instance (queued or in service).
    busy: Arc<AtomicUsize>,
    /// The one CPU the crypto threads may run on, when their affinity allows exactly one.
    cpu: Option<usize>,
}

impl SoftwareEngine {
    /// Starts `instances` crypto threads with rings of `ring_depth` slots each.
    pub fn start(instances: usize, ring_depth: usize) -> std::io::Result<Self> {
        let freed = Arc::new(Notify::new());
        let restarts = Arc::new(AtomicU64::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let mut rings = Vec::with_capacity(instances);
        for i in 0..instances.max(1) {
            // Each channel could hold the whole ring; the shared `depth` keeps their sum within it.
            let (high, high_rx) = bounded::<Work>(ring_depth);
            let (normal, normal_rx) = bounded::<Work>(ring_depth);
            let rx = Receivers {
                high: high_rx,
                normal: normal_rx,
            };
            let depth = Arc::new(AtomicUsize::new(0));
            let supervisor = spawn_supervisor(
                i,
                rx,
                depth.clone(),
                freed.clone(),
                restarts.clone(),
                busy.clone(),
            )?;
            rings.push(Ring {
                tx: Some(Senders { high, normal }),
                depth,
                depth_max: AtomicUsize::new(0),
                supervisor: Some(supervisor),
            });
        }
        Ok(Self {
            // The crypto threads are spawned from here and never change their affinity: they inherit this
            // thread's (`taskset`, a cgroup's cpuset).
            cpu: crate::worker::single_cpu(),
            rings,
            next: AtomicUsize::new(0),
            ring_depth,
            freed,
            restarts,
            busy,
        })
    }

    /// The most jobs ever queued at once in `instance`'s ring, since start (0 for an unknown instance). Recorded
    /// only by submissions that got a slot, so it never exceeds `ring_depth` unless the ring does.
    pub fn depth_max(&self, instance: usize) -> usize {
        self.rings
            .get(instance)
            .map_or(0, |r| r.depth_max.load(Ordering::Relaxed))
    }

    /// Crypto threads restarted after a panic, since start.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Closes the rings and waits until every queued job has run.
    pub fn shutdown(&mut self) {
        for ring in &mut self.rings {
            ring.tx = None;
        }
        for ring in &mut self.rings {
            if let Some(h) = ring.supervisor.take() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for SoftwareEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_supervisor(
    index: usize,
    rx: Receivers,
    depth: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    restarts: Arc<AtomicU64>,
    busy: Arc<AtomicUsize>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("portcullis-e{index}s"))
        .spawn(move || {
            loop {
                let (rx, depth, freed, busy) =
                    (rx.clone(), depth.clone(), freed.clone(), busy.clone());
                let crypto = std::thread::Builder::new()
                    .name(format!("portcullis-e{index}"))
                    .spawn(move || crypto_loop(&rx, &depth, &freed, &busy));
                let outcome = match crypto {
                    Ok(handle) => handle.join(),
                    Err(e) => {
                        tracing::error!(instance = index, error = %e, "cannot start crypto thread; retrying");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                };
                match outcome {
                    // The ring was closed and drained: shutdown.
                    Ok(()) => return,
                    Err(_) => {
                        restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(instance = index, "crypto thread panicked; its job failed; restarting it");
                    }
                }
            }
        })
}

/// Serves the ring until both channels are closed and drained, a queued resumption always first.
fn crypto_loop(rx: &Receivers, depth: &AtomicUsize, freed: &Notify, busy: &AtomicUsize) {
    lower_priority();
    let mut high_streak = 0;
    while let Some(work) = next(rx, &mut high_streak) {
        depth.fetch_sub(1, Ordering::Relaxed);
        freed.notify_waiters();
        let _done = Finished(busy);
        work();
    }
}

/// Counts a job finished when it returns or unwinds, so a panicking job does not leave the engine busy forever.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Nice value of the crypto threads: they do milliseconds of CPU per job, the workers microseconds per event.
/// Where both share a core, the worker's accept, read and write must not wait behind a signature for a
/// scheduler slice (3 ms), or every handshake pays that several times over. A lower priority (weight 110 vs
/// 1024 at nice 0) makes the scheduler run a waking worker promptly; the crypto thread still gets every cycle
/// the workers leave.
pub const CRYPTO_NICE: i32 = 10;

/// Gives the calling (crypto) thread [`CRYPTO_NICE`]. Failure only costs latency: logged, not fatal.
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id with a valid `which`.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, CRYPTO_NICE)
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the crypto thread's priority");
    }
}

/// Most high-priority jobs served in a row while a normal one waits: weighted arbitration between the two
/// channels (as QAT arbitrates its rings), so a steady stream of resumptions delays a full handshake by at
/// most this many resumptions' work (about a millisecond) and never starves it.
pub const HIGH_PER_NORMAL: u32 = 8;

/// The next job: high priority if one is queued (up to [`HIGH_PER_NORMAL`] in a row while a normal one waits),
/// else whichever arrives first (high still preferred when both are ready); `None` once both channels are
/// closed and empty. `high_streak` counts the high-priority jobs served since the last normal one.
fn next(rx: &Receivers, high_streak: &mut u32) -> Option<Work> {
    if *high_streak >= HIGH_PER_NORMAL
        && let Ok(work) = rx.normal.try_recv()
    {
        *high_streak = 0;
        return Some(work);
    }
    if let Ok(work) = rx.high.try_recv() {
        *high_streak += 1;
        return Some(work);
    }
    let (mut high_open, mut normal_open) = (true, true);
    while high_open || normal_open {
        let never = crossbeam_channel::never();
        let high = if high_open { &rx.high } else { &never };
        let normal = if normal_open { &rx.normal } else { &never };
        select_biased! {
            recv(high) -> r => match r {
                Ok(work) => {
                    *high_streak += 1;
                    return Some(work);
                }
                Err(_) => high_open = false,
            },
            recv(normal) -> r => match r {
                Ok(work) => {
                    *high_streak = 0;
                    return Some(work);
                }
                Err(_) => normal_open = false,
            },
        }
    }
    None
}

impl OffloadEngine for SoftwareEngine {
    fn name(&self) -> &'static str {
        "software"
    }

    fn submit(&self, mut work: Work, priority: Priority) -> Result<(), SubmitError> {
        let n = self.rings.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let Some(ring) = self.rings.get((start + k) % n) else {
                continue;
            };
            let Some(tx) = &ring.tx else {
                return Err(SubmitError::Closed(work));
            };
            // Reserve a slot before sending, so the ring never holds more than `ring_depth` and the crypto
            // thread's decrement can never go below zero.
            let queued = ring.depth.fetch_add(1, Ordering::Relaxed) + 1;
            if queued > self.ring_depth {
                ring.depth.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let channel = match priority {
                Priority::High => &tx.high,
                Priority::Normal => &tx.normal,
            };
            // Counted before the send, so the crypto thread's decrement never comes first.
            self.busy.fetch_add(1, Ordering::Acquire);
            match channel.try_send(work) {
                Ok(()) => {
                    ring.depth_max.fetch_max(queued, Ordering::Relaxed);
                    return Ok(());
                }
                Err(TrySendError::Full(w)) => {
                    ring.depth.fetch_sub(1, Ordering::Relaxed);
                    self.busy.fetch_sub(1, Ordering::Relaxed);
                    work = w;
                }
                Err(TrySendError::Disconnected(w)) => {
                    ring.depth.fetch_sub(1, Ordering::Relaxed);
                    self.busy.fetch_sub(1, Ordering::Relaxed);
                    return Err(SubmitError::Closed(w));
                }
            }
        }
        Err(SubmitError::Retry(work))
    }

    fn instances(&self) -> usize {
        self.rings.len()
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.rings.len() * self.ring_depth
    }

    fn depth(&self, instance: usize) -> usize {
        self.rings
            .get(instance)
            .map_or(0, |r| r.depth.load(Ordering::Relaxed))
    }

    fn capacity_freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    fn single_cpu(&self) -> Option<usize> {
        self.cpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A job that blocks its crypto thread until released, so rings can be filled deterministically.
    fn gate() -> (Arc<(Mutex<bool>, std::sync::Condvar)>, impl Fn() -> Work) {
        let g = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let g2 = g.clone();
        (g, move || {
            let g = g2.clone();
            Box::new(move || {
                let (lock, cv) = &*g;
                let mut open = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*open {
                    open = cv.wait(open).unwrap_or_else(|e| e.into_inner());
                }
            }) as Work
        })
    }

    fn open(g: &Arc<(Mutex<bool>, std::sync::Condvar)>) {
        *g.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        g.1.notify_all();
    }

    /// Waits (bounded) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn ring_bound_is_never_exceeded_and_full_means_retry() {
        let engine = SoftwareEngine::start(2, 4).expect("start");
        let (g, blocker) = gate();
        // One blocking job in service per instance...
        engine.submit(blocker(), Priority::Normal).expect("first");
        engine.submit(blocker(), Priority::Normal).expect("second");
        eventually("both crypto threads busy", || {
            engine.depth(0) == 0 && engine.depth(1) == 0
        });
        // ...then exactly capacity() more fit.
        let mut accepted = 0;
        let mut retries = 0;
        for i in 0..20 {
            // Both priorities share an instance's slots.
            let priority = if i % 2 == 0 {
                Priority::High
            } else {
                Priority::Normal
            };
            match engine.submit(Box::new(|| {}), priority) {
                Ok(()) => accepted += 1,
                Err(SubmitError::Retry(_)) => retries += 1,
                Err(SubmitError::Closed(_)) => panic!("closed"),
            }
            assert!(
                engine.depth(0) <= 4 && engine.depth(1) <= 4,
                "ring bound exceeded"
            );
        }
        // Both rings were filled exactly: the high-water mark saw it, and no more.
        assert_eq!((engine.depth_max(0), engine.depth_max(1)), (4, 4));
        assert_eq!(accepted, engine.capacity());
        assert_eq!(retries, 20 - engine.capacity());
        open(&g);
        eventually("rings drained", || {
            engine.depth(0) == 0 && engine.depth(1) == 0
        });
    }

    /// `idle` (the inline-when-idle condition) is false from submit until the job returns, also when it panics.
    #[test]
    fn idle_only_with_nothing_queued_or_in_service() {
        let engine = SoftwareEngine::start(1, 4).expect("start");
        assert!(engine.idle());
        let (g, blocker) = gate();
        engine.submit(blocker(), Priority::Normal).expect("blocker");
        eventually("crypto thread busy", || engine.depth(0) == 0);
        assert!(!engine.idle(), "a job in service, dequeued: not idle");
        open(&g);
        eventually("job done", || engine.idle());
        engine
            .submit(Box::new(|| panic!("test panic")), Priority::High)
            .expect("panicking job");
        eventually("panicked job counted done", || {
            engine.idle() && engine.restarts() == 1
        });
    }

    #[test]
    fn resumptions_go_before_queued_full_handshakes() {
        let engine = SoftwareEngine::start(1, 16).expect("start");
        let (g, blocker) = gate();
        engine.submit(blocker(), Priority::Normal).expect("blocker");
        eventually("crypto thread busy", || engine.depth(0) == 0);
        let order = Arc::new(Mutex::new(Vec::new()));
        for (name, priority) in [
            ("full 1", Priority::Normal),
            ("full 2", Priority::Normal),
            ("resumption", Priority::High),
        ] {
            let order = order.clone();
            engine
                .submit(
                    Box::new(move || order.lock().unwrap_or_else(|e| e.into_inner()).push(name)),
                    priority,
                )
                .expect("queued");
        }
        open(&g);
        eventually("all ran", || {
            order.lock().unwrap_or_else(|e| e.into_inner()).len() == 3
        });
        assert_eq!(
            *order.lock().unwrap_or_else(|e| e.into_inner()),
            ["resumption", "full 1", "full 2"]
        );
    }

    #[test]
    fn a_stream_of_resumptions_does_not_starve_full_handshakes() {
        let engine = SoftwareEngine::start(1, 64).expect("start");
        let (g, blocker) = gate();
        engine.submit(blocker(), Priority::Normal).expect("blocker");
        eventually("crypto thread busy", || engine.depth(0) == 0);
        let order = Arc::new(Mutex::new(Vec::new()));
        let job = |name: &'static str| {
            let order = order.clone();
            Box::new(move || order.lock().unwrap_or_else(|e| e.into_inner()).push(name)) as Work
        };
        engine.submit(job("full"), Priority::Normal).expect("full");
        for _ in 0..20 {
            engine
                .submit(job("resumption"), Priority::High)
                .expect("resumption");
        }
        open(&g);
        eventually("all ran", || {
            order.lock().unwrap_or_else(|e| e.into_inner()).len() == 21
        });
        let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let full_at = order.iter().position(|n| *n == "full").expect("full ran");
        assert_eq!(full_at, HIGH_PER_NORMAL as usize, "{order:?}");
    }

    #[test]
    fn completions_reach_the_right_submitter() {
        let engine = SoftwareEngine::start(2, 64).expect("start");
        let mut rxs = Vec::new();
        for i in 0..100u32 {
            let (tx, rx) = mpsc::channel();
            let mut work: Work = Box::new(move || {
                let _ = tx.send(i * 2);
            });
            loop {
                match engine.submit(work, Priority::Normal) {
                    Ok(()) => break,
                    Err(SubmitError::Retry(w)) => {
                        work = w;
                        std::thread::yield_now();
                    }
                    Err(SubmitError::Closed(_)) => panic!("closed"),
                }
            }
            rxs.push((i, rx));
        }
        for (i, rx) in rxs {
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(i * 2));
        }
    }

    #[test]
    fn a_panicking_job_fails_alone_and_the_thread_is_restarted() {
        let engine = SoftwareEngine::start(1, 16).expect("start");
        let (g, blocker) = gate();
        engine.submit(blocker(), Priority::Normal).expect("blocker");
        eventually("crypto thread busy", || engine.depth(0) == 0);
        let (tx_a, rx_a) = mpsc::channel::<u32>();
        engine
            .submit(
                Box::new(move || {
                    let _keep = tx_a;
                    panic!("injected engine failure");
                }),
                Priority::Normal,
            )
            .expect("panicker");
        let (tx_b, rx_b) = mpsc::channel();
        engine
            .submit(
                Box::new(move || {
                    let _ = tx_b.send(7u32);
                }),
                Priority::Normal,
            )
            .expect("queued behind the panic");
        open(&g);
        // The panicking job's completion channel is dropped: its submitter sees a failure, not a hang.
        assert!(rx_a.recv_timeout(Duration::from_secs(10)).is_err());
        // The job queued behind it still runs, on the restarted thread.
        assert_eq!(rx_b.recv_timeout(Duration::from_secs(10)), Ok(7));
        assert_eq!(engine.restarts(), 1);
    }

    #[test]
    fn shutdown_drains_queued_jobs() {
        let mut engine = SoftwareEngine::start(1, 64).expect("start");
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let done = done.clone();
            engine
                .submit(
                    Box::new(move || {
                        std::thread::sleep(Duration::from_micros(100));
                        done.fetch_add(1, Ordering::Relaxed);
                    }),
                    Priority::Normal,
                )
                .expect("submit");
        }
        engine.shutdown();
        assert_eq!(done.load(Ordering::Relaxed), 50);
        assert!(matches!(
            engine.submit(Box::new(|| {}), Priority::Normal),
            Err(SubmitError::Closed(_))
        ));
    }
}
