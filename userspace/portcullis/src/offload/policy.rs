//! Running the handshake's expensive step on an [`OffloadEngine`], with an explicit full-ring policy.
//!
//! The job (the `Accepted` state and the config) moves into the engine inside a closure, and the connection
//! comes back over a oneshot channel that wakes the submitting worker. Queue wait (submit to start of service)
//! and service time are measured on the crypto thread and reported per handshake class to the metrics and to
//! an optional [`Observer`] (admission control learns costs and queue delay from it; its service time is the
//! thread's CPU time, right on average: see `admission::cost::StepClock`). A step run on the worker returns
//! its result without a future ([`Running::Ready`]).
//!
//! With the `wait` policy the deadline bounds the whole queue wait, slot and ring together: a job that reaches
//! its crypto thread after the deadline is dropped there without any crypto and shed as `wait_deadline` (the
//! dequeue-time drop of CoDel and of "Fail at Scale"'s controlled delay). Checking only while waiting for a
//! slot is not enough: a busy worker may be woken for a free slot late, and the job then still queues behind a
//! full ring: without the check, a loaded 2-core host served handshakes that had waited 327 ms against a
//! deadline of 81.92 ms (`tests/tests/admission.rs`).
//!
//! With `engine.inline_when_idle` the step runs on the worker instead when a job submitted now would start at
//! once anyway (the engine idle, nothing overloaded, not an RSA signature) and the worker has time for it
//! ([`InlineBudget`]): the hop to a crypto thread costs two thread wake-ups and their context switches, about
//! a quarter of a full ECDSA handshake's server CPU (BENCHMARKS.md "Handshakes"). Admission control admitted
//! the job before and learns from it as from any other (a queue wait of 0).
//!
//! Where the crypto threads can only run on the one CPU the worker runs on (`taskset` to a single core), neither
//! a busy engine nor a spent inline budget stops a step from running inline: a job queued there would wait for
//! this very worker to leave the CPU (the crypto thread runs at nice 10, about a tenth of the core while the
//! worker is busy), so the hop buys no parallelism and no time for the worker's other connections, only that
//! wait, and every full handshake behind it would queue too while the engine reads busy (phase d of `bench
//! flood` queued 398 steps for 60 ms each in one second of a run, BENCHMARKS.md "Floods"). Admission control's
//! overload still sends steps to the engine: that is where its bounded queue and its shedding are.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::metrics::EngineMetrics;
use super::{FullRingPolicyConfig, OffloadEngine, Priority, SubmitError, Work};
use crate::admission::cost::StepClock;
use crate::handshake::class::HandshakeClass;
use crate::handshake::engine::{
    EngineError, HandshakeEngine, Job, JobResult, Running, ShedReason, step_result,
};

/// What to do when every ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullRingPolicy {
    /// Shed the handshake before any crypto.
    Reject,
    /// Run it on the worker thread.
    Inline,
    /// Wait for a free slot until the deadline, then shed.
    Wait(Duration),
}

impl FullRingPolicy {
    /// From the config section.
    pub fn from_config(c: &super::EngineConfig) -> Self {
        match c.full_ring {
            FullRingPolicyConfig::Reject => Self::Reject,
            FullRingPolicyConfig::Inline => Self::Inline,
            FullRingPolicyConfig::Wait => Self::Wait(c.wait_deadline),
        }
    }
}

/// The `[engine]` knobs a reload changes on the running engine (`reload`): the full-ring policy (with its
/// deadline) and `inline_when_idle`, read once per job, so a job under way keeps the policy it started with.
/// The crypto threads and their rings (`kind`, `instances`, `ring_depth`) are made at start and stay.
#[derive(Debug)]
pub struct EngineKnobs {
    policy: ArcSwap<FullRingPolicy>,
    inline_when_idle: AtomicBool,
}

impl EngineKnobs {
    /// Applies `[engine]`'s live knobs to the jobs submitted from now on.
    pub fn set(&self, c: &super::EngineConfig) {
        self.policy.store(Arc::new(FullRingPolicy::from_config(c)));
        self.inline_when_idle
            .store(c.inline_when_idle, Ordering::Relaxed);
    }

    /// The full-ring policy now.
    pub fn policy(&self) -> FullRingPolicy {
        **self.policy.load()
    }

    /// Whether `inline_when_idle` is on now.
    pub fn inline_when_idle(&self) -> bool {
        self.inline_when_idle.load(Ordering::Relaxed)
    }
}

/// What a crypto thread sends back for one job.
#[expect(
    clippy::large_enum_variant,
    reason = "sent once per job through its own oneshot: boxing would add an allocation per handshake to save \
              bytes in a slot that exists once"
)]
enum Served {
    /// The expensive step ran: its result, when it started and when it finished, and what it cost its thread
    /// (`admission::cost::StepClock`).
    Done(
        Result<rustls::server::ServerConnection, (rustls::Error, rustls::server::AcceptedAlert)>,
        Instant,
        Instant,
        Duration,
    ),
    /// The job waited past the `wait` policy's deadline or admission control's bound and was dropped unserved,
    /// for this reason.
    Expired(ShedReason),
}

/// Learns from completed jobs (admission control).
pub trait Observer: Send + Sync + 'static {
    /// A job of `class` waited `wait` in a ring and took `cpu` of its thread's CPU time (not wall-clock: time
    /// the thread lost to other work is not the handshake's cost; measured by `admission::cost::StepClock`,
    /// right on average).
    fn completed(&self, class: HandshakeClass, wait: Duration, cpu: Duration);

    /// The longest a job may have waited when a crypto thread takes it, judged then (admission control: while
    /// overloaded, `target`, so work queued before an overload began does not wait the whole burst out). `None`:
    /// no bound beyond the job's own and the engine's policy.
    fn max_wait_now(&self) -> Option<Duration> {
        None
    }
}

/// The handshake seam's engine, backed by an offload engine.
pub struct OffloadHandshakes<E> {
    engine: E,
    knobs: Arc<EngineKnobs>,
    metrics: EngineMetrics,
    observer: Option<Arc<dyn Observer>>,
    /// The one CPU the engine's instances are confined to ([`OffloadEngine::single_cpu`]).
    engine_cpu: Option<usize>,
}

/// A worker's inline steps may take at most half of each window of this length (their CPU time on the worker,
/// `admission::cost::StepClock`); past that, its handshakes go to the engine even when it is idle, so a storm of
/// cheap handshakes still queues where admission control sees it, and the worker keeps time for its established
/// connections. Not where the engine shares the worker's one CPU: a crypto thread there takes its time from the
/// same core (`OffloadHandshakes::runs_inline`).
pub const INLINE_WINDOW: Duration = Duration::from_millis(10);

thread_local! {
    /// This worker's inline budget: when its current window started and the inline time spent in it.
    static INLINE_SPENT: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// The calling worker's budget for inline steps ([`INLINE_WINDOW`]).
pub struct InlineBudget;

impl InlineBudget {
    /// Whether the worker may run a step inline at `now` (starts a new window when the last one is over).
    pub fn allows(now: Instant) -> bool {
        INLINE_SPENT.with(|c| match c.get() {
            Some((start, spent)) if now.saturating_duration_since(start) < INLINE_WINDOW => {
                spent < INLINE_WINDOW / 2
            }
            _ => {
                c.set(Some((now, Duration::ZERO)));
                true
            }
        })
    }

    /// Charges `took` to the current window.
    pub fn spend(took: Duration) {
        INLINE_SPENT.with(|c| {
            if let Some((start, spent)) = c.get() {
                c.set(Some((start, spent.saturating_add(took))));
            }
        });
    }
}

impl<E: OffloadEngine> OffloadHandshakes<E> {
    /// Wraps `engine`.
    pub fn new(
        engine: E,
        policy: FullRingPolicy,
        metrics: EngineMetrics,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        Self {
            engine_cpu: engine.single_cpu(),
            engine,
            knobs: Arc::new(EngineKnobs {
                policy: ArcSwap::from_pointee(policy),
                inline_when_idle: AtomicBool::new(false),
            }),
            metrics,
            observer,
        }
    }

    /// Runs the step on the worker when the engine is idle (`engine.inline_when_idle`).
    #[must_use]
    pub fn inline_when_idle(self, on: bool) -> Self {
        self.knobs.inline_when_idle.store(on, Ordering::Relaxed);
        self
    }

    /// Overrides the CPU the engine's instances are taken to be confined to (tests: the same routing on any host).
    #[cfg(test)]
    #[must_use]
    pub fn with_engine_cpu(mut self, cpu: Option<usize>) -> Self {
        self.engine_cpu = cpu;
        self
    }

    /// The knobs a reload sets ([`EngineKnobs::set`]).
    pub fn knobs(&self) -> Arc<EngineKnobs> {
        self.knobs.clone()
    }

    /// Whether this job runs on the worker now. Never while overloaded (admission's bound on the job's wait, or
    /// its overload flag) nor for an RSA signature (milliseconds on the worker). Otherwise always when the engine
    /// is confined to the worker's own CPU ([`Self::shares_the_worker_cpu`]: queued, the job would only wait for
    /// this worker to sleep); else when the engine is idle (a submitted job would start at once) or the job is a
    /// resumption, and the worker's [`InlineBudget`] is left.
    ///
    /// A resumption runs inline even while the engine is busy: its step (an X25519 and a few HMACs, ≈ 75 µs) costs
    /// little more than the hop itself (two wake-ups and their context switches), so queueing it behind full
    /// handshakes only adds the hop and the wait. Before, a busy engine sent three in four resumptions of a
    /// saturating load through the hop and a TLS 1.3 resumption cost more server CPU than a full handshake
    /// (BENCHMARKS.md, "Handshakes"). The inline budget still bounds the worker's share.
    fn runs_inline(&self, class: HandshakeClass, max_wait: Option<Duration>, now: Instant) -> bool {
        if !self.knobs.inline_when_idle()
            || class == HandshakeClass::FullRsa
            || max_wait.is_some()
            || self
                .observer
                .as_ref()
                .is_some_and(|o| o.max_wait_now().is_some())
        {
            return false;
        }
        self.shares_the_worker_cpu()
            || ((class.is_resumption() || self.engine.idle()) && InlineBudget::allows(now))
    }

    /// The engine's crypto threads may only run on the one CPU the calling worker may run on: a job queued there
    /// waits for this worker to leave the CPU, whatever the engine's queue holds. The calling thread's affinity
    /// (a system call and a walk of the whole CPU set) is read on its first such question and remembered: a
    /// worker is pinned before it serves, and the engine's side was read once at start.
    fn shares_the_worker_cpu(&self) -> bool {
        thread_local! {
            static WORKER_CPU: std::cell::OnceCell<Option<usize>> = const { std::cell::OnceCell::new() };
        }
        self.engine_cpu.is_some_and(|cpu| {
            WORKER_CPU.with(|c| *c.get_or_init(crate::worker::single_cpu)) == Some(cpu)
        })
    }

    /// Runs the step on the calling worker when [`Self::runs_inline`] says so (no future, no allocation),
    /// else queues it on the engine.
    fn run_job(&self, job: Job) -> Running<'_> {
        let submitted = Instant::now();
        if self.runs_inline(job.class, job.max_wait, submitted) {
            return Running::ready(self.run_inline(job, submitted));
        }
        Running::Queued(Box::pin(self.run_queued(job, submitted)))
    }

    fn run_inline(&self, job: Job, submitted: Instant) -> JobResult {
        let class = job.class;
        let clock = StepClock::start();
        let result = job.accepted.into_connection(job.config);
        let finished = Instant::now();
        let service = finished.saturating_duration_since(submitted);
        // The budget is the worker's own time: a step stretched by other threads on its CPU charges what it
        // cost this thread, not the wall time (else a busy host would send steps to a crypto thread that gets
        // even less of the CPU: BENCHMARKS.md "Floods", phase d's tail).
        let cost = clock.cost(service);
        InlineBudget::spend(cost);
        self.metrics.idle_inline(class);
        self.metrics.completed(class, Duration::ZERO, service);
        if let Some(o) = &self.observer {
            o.completed(class, Duration::ZERO, cost);
        }
        step_result(result, submitted, finished)
    }

    async fn run_queued(&self, job: Job, submitted: Instant) -> JobResult {
        let class = job.class;
        let Job {
            accepted,
            config,
            max_wait,
            ..
        } = job;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let policy = self.knobs.policy();
        let policy_wait = match policy {
            FullRingPolicy::Wait(d) => Some(d),
            FullRingPolicy::Reject | FullRingPolicy::Inline => None,
        };
        let observer = self.observer.clone();
        let mut work: Work = Box::new(move || {
            let start = Instant::now();
            let wait = start.saturating_duration_since(submitted);
            let now_bound = observer.as_ref().and_then(|o| o.max_wait_now());
            let bound = match (max_wait, now_bound) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some((limit, reason)) = expiry(policy_wait, bound)
                && wait > limit
            {
                let _ = tx.send(Served::Expired(reason));
                return;
            }
            let clock = StepClock::exact();
            let result = accepted.into_connection(config);
            let finished = Instant::now();
            let cost = clock.cost(finished.saturating_duration_since(start));
            let _ = tx.send(Served::Done(result, start, finished, cost));
        });
        let deadline = policy_wait.map(|d| tokio::time::Instant::now() + d);
        let priority = if class.is_resumption() {
            Priority::High
        } else {
            Priority::Normal
        };
        loop {
            let freed = self.engine.capacity_freed();
            tokio::pin!(freed);
            // Register for the wake-up before trying, so a slot freed in between is not missed.
            freed.as_mut().enable();
            match self.engine.submit(work, priority) {
                Ok(()) => break,
                Err(SubmitError::Closed(_)) => {
                    self.metrics.rejected(class, ShedReason::EngineClosed);
                    return Err(EngineError::Shed(ShedReason::EngineClosed));
                }
                Err(SubmitError::Retry(w)) => {
                    self.metrics.retry();
                    match (policy, deadline) {
                        (FullRingPolicy::Inline, _) => {
                            self.metrics.fallback(class);
                            w();
                            break;
                        }
                        (FullRingPolicy::Wait(_), Some(deadline)) => {
                            if tokio::time::Instant::now() >= deadline {
                                self.metrics.rejected(class, ShedReason::WaitDeadline);
                                return Err(EngineError::Shed(ShedReason::WaitDeadline));
                            }
                            tokio::select! {
                                () = &mut freed => {}
                                () = tokio::time::sleep_until(deadline) => {}
                            }
                            work = w;
                        }
                        _ => {
                            self.metrics.rejected(class, ShedReason::RingFull);
                            return Err(EngineError::Shed(ShedReason::RingFull));
                        }
                    }
                }
            }
        }
        match rx.await {
            // Not observed as a wait: the histogram and the controller see served jobs only, and the
            // controller still sees the standing queue in the served jobs' waits (all above its target long
            // before any job reaches the deadline).
            Ok(Served::Expired(reason)) => {
                self.metrics.rejected(class, reason);
                Err(EngineError::Shed(reason))
            }
            Ok(Served::Done(result, started, finished, cpu)) => {
                let wait = started.saturating_duration_since(submitted);
                let service = finished.saturating_duration_since(started);
                self.metrics.completed(class, wait, service);
                if let Some(o) = &self.observer {
                    o.completed(class, wait, cpu);
                }
                step_result(result, started, finished)
            }
            Err(_) => {
                self.metrics.lost();
                Err(EngineError::Lost)
            }
        }
    }
}

impl<E: OffloadEngine> HandshakeEngine for OffloadHandshakes<E> {
    fn name(&self) -> &'static str {
        self.engine.name()
    }

    fn run(&self, job: Job) -> Running<'_> {
        self.run_job(job)
    }
}

/// How long a job may wait in a ring before the crypto thread drops it, and the reason counted then: the
/// tighter of the full-ring policy's deadline (`wait`) and admission control's bound while overloaded.
fn expiry(
    policy_wait: Option<Duration>,
    max_wait: Option<Duration>,
) -> Option<(Duration, ShedReason)> {
    match (policy_wait, max_wait) {
        (Some(p), Some(m)) if m <= p => Some((m, ShedReason::QueueDeadline)),
        (Some(p), _) => Some((p, ShedReason::WaitDeadline)),
        (None, Some(m)) => Some((m, ShedReason::QueueDeadline)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::software::SoftwareEngine;
    use prometheus_client::registry::Registry;

    /// A server configuration with a fresh P-256 certificate, and a client's ClientHello to it, accepted.
    fn accepted() -> (rustls::server::Accepted, Arc<rustls::ServerConfig>) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().expect("name"))
                .expect("client");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("client hello");
        let mut acceptor = rustls::server::Acceptor::default();
        acceptor
            .read_tls(&mut hello.as_slice())
            .expect("read hello");
        let accepted = acceptor.accept().ok().flatten().expect("whole hello");
        (accepted, Arc::new(server))
    }

    fn job() -> Job {
        job_of(HandshakeClass::FullEcdsa)
    }

    /// A job labelled `class` (its ClientHello is the same full one: the label decides the policy).
    fn job_of(class: HandshakeClass) -> Job {
        let (accepted, config) = accepted();
        Job {
            accepted,
            config,
            class,
            max_wait: None,
        }
    }

    /// Engine metrics registered in `registry`, with gauges that read an idle engine.
    fn idle_engine_metrics(registry: &mut Registry) -> EngineMetrics {
        EngineMetrics::register(
            registry,
            Arc::new(|| vec![0]),
            Arc::new(|| vec![0]),
            Arc::new(|| 0),
        )
    }

    /// Keeps `engine`'s one crypto thread busy until the returned sender is used (or 10 s pass).
    fn block(engine: &SoftwareEngine) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        engine
            .submit(
                Box::new(move || {
                    let _ = rx.recv_timeout(Duration::from_secs(10));
                }),
                Priority::Normal,
            )
            .expect("blocker");
        tx
    }

    fn idle_inline_count(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text.lines()
            .filter(|l| l.starts_with("portcullis_engine_idle_inline_total"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// An idle engine: the step runs inline (counted, served); a busy one: the job queues behind the work in
    /// service and a crypto thread runs it; and never inline with the option off.
    #[tokio::test]
    async fn the_step_runs_inline_only_while_the_engine_is_idle() {
        let engine = Arc::new(SoftwareEngine::start(1, 4).expect("start"));
        let mut registry = Registry::default();
        let metrics = idle_engine_metrics(&mut registry);
        let on = OffloadHandshakes::new(
            engine.clone(),
            FullRingPolicy::Reject,
            metrics.clone(),
            None,
        )
        .inline_when_idle(true)
        .with_engine_cpu(None);
        assert!(on.run(job()).await.is_ok());
        let one = r#"portcullis_engine_idle_inline_total{class="full_ecdsa"} 1"#;
        assert_eq!(idle_inline_count(&registry), one);

        let tx = block(&engine);
        let busy = tokio::spawn(async move {
            let done = on.run(job()).await.is_ok();
            (done, on)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !busy.is_finished(),
            "queued behind the blocker, not run inline"
        );
        tx.send(()).expect("release the blocker");
        let (done, _) = busy.await.expect("task");
        assert!(done);
        assert_eq!(
            idle_inline_count(&registry),
            one,
            "the busy engine's job was not inline"
        );

        let off = OffloadHandshakes::new(engine.clone(), FullRingPolicy::Reject, metrics, None);
        assert!(off.run(job()).await.is_ok());
        assert_eq!(idle_inline_count(&registry), one, "off: never inline");
    }

    /// A resumption runs on the worker even while the engine is busy (the hop would cost about what its step
    /// does); a full handshake submitted at the same time waits for the engine.
    #[tokio::test]
    async fn a_resumption_runs_inline_while_the_engine_is_busy() {
        let engine = Arc::new(SoftwareEngine::start(1, 4).expect("start"));
        let mut registry = Registry::default();
        let metrics = idle_engine_metrics(&mut registry);
        let on = Arc::new(
            OffloadHandshakes::new(engine.clone(), FullRingPolicy::Reject, metrics, None)
                .inline_when_idle(true)
                .with_engine_cpu(None),
        );
        let tx = block(&engine);
        let full = tokio::spawn({
            let on = on.clone();
            async move { on.run(job()).await.is_ok() }
        });
        let resumed = tokio::time::timeout(
            Duration::from_secs(5),
            on.run(job_of(HandshakeClass::Tls13Psk)),
        )
        .await
        .expect("the resumption did not wait for the busy engine");
        assert!(resumed.is_ok());
        assert_eq!(
            idle_inline_count(&registry),
            r#"portcullis_engine_idle_inline_total{class="tls13_psk"} 1"#
        );
        assert!(
            !full.is_finished(),
            "the full handshake waits for the engine"
        );
        tx.send(()).expect("release the blocker");
        assert!(full.await.expect("task"));
    }

    /// Crypto threads confined to the worker's one CPU: a full handshake runs on the worker even while the engine
    /// is busy and the inline budget is spent (a queued job would wait for the worker to leave the CPU); admission
    /// control's overload still sends it to the engine.
    #[tokio::test]
    async fn a_full_handshake_runs_inline_when_the_engine_shares_the_workers_cpu() {
        let cpu = *crate::worker::allowed_cpus().first().expect("a CPU");
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).expect("cpu set");
        // This test's own thread (the worker here); the crypto threads started below inherit it.
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .expect("pin the test thread");
        let engine = Arc::new(SoftwareEngine::start(1, 4).expect("start"));
        assert_eq!(engine.single_cpu(), Some(cpu));
        let mut registry = Registry::default();
        let metrics = idle_engine_metrics(&mut registry);
        let overloaded = Arc::new(AtomicBool::new(false));
        let on = OffloadHandshakes::new(
            engine.clone(),
            FullRingPolicy::Reject,
            metrics,
            Some(Arc::new(Overload(overloaded.clone()))),
        )
        .inline_when_idle(true);
        let tx = block(&engine);
        let full = tokio::time::timeout(Duration::from_secs(5), on.run(job()))
            .await
            .expect("the full handshake did not wait for the busy engine");
        assert!(full.is_ok());
        assert_eq!(
            idle_inline_count(&registry),
            r#"portcullis_engine_idle_inline_total{class="full_ecdsa"} 1"#
        );
        // The budget spent: still inline.
        InlineBudget::spend(INLINE_WINDOW);
        let past_budget = tokio::time::timeout(Duration::from_secs(5), on.run(job()))
            .await
            .expect("past the inline budget the job still did not wait for the engine");
        assert!(past_budget.is_ok());
        assert_eq!(
            idle_inline_count(&registry),
            r#"portcullis_engine_idle_inline_total{class="full_ecdsa"} 2"#
        );
        // Overloaded: the next one queues behind the blocker, where admission control bounds its wait.
        overloaded.store(true, Ordering::Relaxed);
        let queued = tokio::spawn(async move { on.run(job()).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!queued.is_finished(), "while overloaded the job queues");
        tx.send(()).expect("release the blocker");
        assert!(queued.await.expect("task"));
    }

    /// An observer whose overload is switched by the test: `max_wait_now` is admission control's overload flag.
    struct Overload(Arc<AtomicBool>);

    impl Observer for Overload {
        fn completed(&self, _: HandshakeClass, _: Duration, _: Duration) {}

        fn max_wait_now(&self) -> Option<Duration> {
            self.0
                .load(Ordering::Relaxed)
                .then_some(Duration::from_secs(5))
        }
    }

    /// A reload's knobs apply to the next job: a full ring rejects under `reject`, runs the step on the worker
    /// once `full_ring = "inline"` is set, and `inline_when_idle` turns on and off.
    #[tokio::test]
    async fn knobs_set_on_a_running_engine_apply_to_the_next_job() {
        let engine = Arc::new(SoftwareEngine::start(1, 1).expect("start"));
        let mut registry = Registry::default();
        let metrics = idle_engine_metrics(&mut registry);
        let handshakes =
            OffloadHandshakes::new(engine.clone(), FullRingPolicy::Reject, metrics, None);
        let knobs = handshakes.knobs();
        let release = Arc::new(AtomicBool::new(false));
        let blocker = || -> Work {
            let release = release.clone();
            Box::new(move || {
                let until = Instant::now() + Duration::from_secs(10);
                while !release.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        // One blocker in service (out of the ring), then the ring filled behind it.
        assert!(engine.submit(blocker(), Priority::Normal).is_ok());
        for _ in 0..1000 {
            if engine.depth(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut full = false;
        for _ in 0..8 {
            if engine.submit(blocker(), Priority::Normal).is_err() {
                full = true;
                break;
            }
        }
        assert!(full, "the ring of depth 1 fills");
        assert!(matches!(
            handshakes.run(job()).await,
            Err(EngineError::Shed(ShedReason::RingFull))
        ));
        let mut config = crate::offload::EngineConfig {
            full_ring: FullRingPolicyConfig::Inline,
            inline_when_idle: true,
            ..Default::default()
        };
        knobs.set(&config);
        assert_eq!(knobs.policy(), FullRingPolicy::Inline);
        assert!(knobs.inline_when_idle());
        assert!(
            handshakes.run(job()).await.is_ok(),
            "the full ring's job ran on the worker"
        );
        release.store(true, Ordering::Relaxed);
        config.inline_when_idle = false;
        knobs.set(&config);
        assert!(!knobs.inline_when_idle());
    }

    /// Inline steps may take half of each window, no more; a new window starts afresh.
    #[test]
    fn the_inline_budget_is_half_of_each_window() {
        let t0 = Instant::now();
        assert!(InlineBudget::allows(t0));
        InlineBudget::spend(INLINE_WINDOW / 2 - Duration::from_micros(1));
        assert!(InlineBudget::allows(t0 + Duration::from_millis(1)));
        InlineBudget::spend(Duration::from_micros(1));
        assert!(!InlineBudget::allows(t0 + Duration::from_millis(2)));
        assert!(InlineBudget::allows(t0 + INLINE_WINDOW));
        assert!(InlineBudget::allows(
            t0 + INLINE_WINDOW + Duration::from_millis(1)
        ));
    }

    #[test]
    fn the_tighter_bound_expires_a_job_and_names_the_reason() {
        let ms = Duration::from_millis;
        assert_eq!(expiry(None, None), None);
        assert_eq!(
            expiry(Some(ms(50)), None),
            Some((ms(50), ShedReason::WaitDeadline))
        );
        assert_eq!(
            expiry(None, Some(ms(10))),
            Some((ms(10), ShedReason::QueueDeadline))
        );
        assert_eq!(
            expiry(Some(ms(50)), Some(ms(10))),
            Some((ms(10), ShedReason::QueueDeadline))
        );
        assert_eq!(
            expiry(Some(ms(5)), Some(ms(10))),
            Some((ms(5), ShedReason::WaitDeadline))
        );
    }
}
