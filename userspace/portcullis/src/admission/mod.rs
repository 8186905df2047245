//! Admission control in front of the offload engine: decide, before any crypto, which handshakes to take.
//!
//! # Layout
//! - [`controller`]: the queue-delay (sojourn time) controller and its states `normal`, `shedding`,
//!   `recovering`, with hysteresis.
//! - [`burst`]: the normal-operation budget sized from the spread of the learned costs, the engine's measured
//!   service rate, and when the load is past them (saturated, overloaded).
//! - [`cost`]: each handshake class's cost, learned online (EWMA of the CPU time its step took).
//! - [`config`]: the `[admission]` config section.
//! - [`syn_shed`]: the loop that sets how many SYNs the XDP program drops.
//! - this file: [`Admission`] (shared state, fed by the engine's completions) and [`AdmissionEngine`], which
//!   wraps any `HandshakeEngine` and sheds before delegating.
//!
//! Nothing is shed unless the engine is **saturated**: the handshake work offered (learned CPU time per class)
//! over the last 300 ms (three controller intervals) reaches what the crypto threads completed per 300 ms while
//! busy (their measured service rate, [`burst::Overload`]). A queue that grew because other work took the CPU (a flood's accepts, softirq,
//! other processes) is not a handshake overload: it is admitted and drains when the CPU comes back
//! (`portcullis_admission_unsaturated_bursts`); the engine's ring is the bound then.
//!
//! Decisions, cheapest first, per handshake (classified from the raw ClientHello, see `handshake::class`):
//! 1. the worker's in-flight limit (`max_in_flight_per_worker`);
//! 2. while `shedding` (a standing queue while saturated), new full handshakes are shed; resumptions go on;
//! 3. (before all of these, in the kernel) the XDP program drops a fraction of new SYNs, set every interval by
//!    [`syn_shed`] so that about as many connections reach userspace as it admits ([`SynShedControl`]), counting
//!    refusals only while the offered work exceeds a core per crypto thread (a starved engine sheds no SYN);
//! 4. the cost budget: admitted work (learned cost per class) queued or in service may not exceed, per engine
//!    instance, the burst of normal operation (the larger of `queue_budget` and what Poisson arrivals at 80%
//!    load stay within, [`burst`]: nothing is shed below overload; past it unsaturated, nothing is shed
//!    either), twice `target` while overloaded (the burst exceeded while saturated, any state but `normal`, or
//!    XDP shedding SYNs: so admitted handshakes wait little);
//!    resumptions may use 1.5x that, and the engine serves them first;
//! 5. while overloaded, a job that still waited longer than `target` in an engine queue is dropped when a
//!    crypto thread takes it, before any crypto ([`Admitted::max_wait`]; judged again at dequeue through
//!    `Observer::max_wait_now`, so the work queued in the burst before an overload began is not served late).
//!
//! A shed handshake's connection is reset before any crypto (see ARCHITECTURE.md for why a reset). Traffic on
//! established connections never waits behind handshakes: the expensive step runs on crypto threads, not on
//! the workers that relay established connections.

pub mod burst;
pub mod config;
pub mod controller;
pub mod cost;
pub mod syn_shed;

#[cfg(test)]
mod simulation;

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

pub use burst::EngineBounds;
use burst::{CostMoments, Overload};
pub use config::AdmissionConfig;
use controller::{Controller, State};
use cost::CostTable;
use syn_shed::{SynShed, SynShedLoop};

use crate::handshake::class::HandshakeClass;
use crate::handshake::engine::{EngineError, HandshakeEngine, Job, Running, ShedReason};
use crate::offload::policy::Observer;

/// How long overload outlasts the last window whose offered work reached capacity (or the last exceeded burst,
/// or the last SYN XDP was told to shed), in controller intervals: 200 ms by default. Long enough that a storm
/// relenting for a moment (the SYN shed loop letting all SYNs in for one interval) does not reopen the long
/// queue of normal operation; short enough that recovery takes well under a second.
const OVERLOAD_HOLD_INTERVALS: u32 = 2;

/// The window over which offered handshake work is compared with the engine's service rate, in controller
/// intervals: 300 ms by default. At 80% of capacity, Poisson arrivals of RSA-4096 full handshakes and resumptions
/// offer more than a 100 ms window's capacity about once in a hundred windows (2.3 standard deviations of a
/// window's work), which made a quiet machine shed 164 handshakes at 80% (BENCHMARKS.md, "Storm"); over 300 ms
/// that takes 4 standard deviations. A storm is still seen within a fraction of the window: the current window's
/// work counts as soon as it reaches the rate (a 10x storm's in about 30 ms).
const SATURATION_WINDOW_INTERVALS: u32 = 3;

thread_local! {
    /// Handshakes in flight on this worker thread (each worker is one thread with its own runtime).
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    action: &'static str,
    reason: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

/// Something that drops a fraction of new SYNs before they become connections: the XDP program's
/// `syn_shed_ppm` knob ([`crate::xdp::SynShed`]). The cheapest shedding action: the client's TCP backs off.
pub trait SynShedControl: Send + Sync {
    /// From now on drops `shed.ppm` parts per million of new SYNs and `shed.retry_ppm` of retransmitted SYNs of
    /// flows already shed.
    fn set_syn_shed(&self, shed: SynShed) -> anyhow::Result<()>;
}

impl SynShedControl for crate::xdp::SynShed {
    fn set_syn_shed(&self, shed: SynShed) -> anyhow::Result<()> {
        self.set_ppm(shed.ppm, shed.retry_ppm)
    }
}

/// An admitted handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The learned cost reserved, to give back with [`Admission::release`] when the handshake step finishes.
    pub cost: u64,
    /// While overloaded, the longest it may wait in an engine queue before it is dropped there, before any
    /// crypto: `target`. The overload budget (twice `target`) bounds the *estimated* work ahead of a job; when
    /// the estimate runs behind (the crypto thread gets less of the core than usual, as when the workers'
    /// accepts and resets take their share in a storm), this bounds the wait itself, at the delay the controller
    /// aims for. `None` in normal operation.
    pub max_wait: Option<Duration>,
}

/// Admission control's shared state.
pub struct Admission {
    /// Swapped whole by a reload ([`Admission::set_params`]).
    config: arc_swap::ArcSwap<AdmissionConfig>,
    controller: Mutex<Controller>,
    costs: CostTable,
    /// Admitted work not yet finished, in nanoseconds of learned cost.
    outstanding_ns: AtomicU64,
    /// Admitted handshakes not yet finished: fewer than `instances` means a crypto thread may be idle.
    outstanding_jobs: AtomicUsize,
    /// `portcullis_admission_unsaturated_bursts`: admitted past the normal burst, unsaturated.
    unsaturated_bursts: Counter,
    /// `portcullis_admission_service_rate`: the engine's measured service rate.
    rate_gauge: Gauge<f64, AtomicU64>,
    /// `outstanding_ns` for `/metrics`, in seconds.
    outstanding_gauge: Gauge<f64, AtomicU64>,
    /// The floor of the normal-operation budget: `queue_budget` per instance.
    budget_ns: AtomicU64,
    /// Learned cost of the arrivals, whose spread sizes the normal-operation budget ([`burst`]).
    moments: CostMoments,
    /// Whether the offered load is past what normal operation absorbs ([`burst`]).
    overload: Mutex<Overload>,
    /// `portcullis_admission_overloaded`: 1 while admitting into the short queue.
    overloaded_gauge: Gauge,
    instances: u64,
    engine: arc_swap::ArcSwap<EngineBounds>,
    /// The budget while overloaded: twice the target per instance (never above `budget_ns`).
    overload_budget_ns: AtomicU64,
    shed: Family<ShedLabels, Counter>,
    admitted: Family<ClassLabel, Counter>,
    transitions: Family<StateLabel, Counter>,
    state_gauge: Gauge,
    syn_shed: Option<Arc<dyn SynShedControl>>,
    syn_loop: Mutex<SynShedLoop>,
    /// The fraction of new SYNs the XDP program was last told to drop (ppm); `> 0` means overloaded.
    syn_shed_ppm: AtomicU32,
    syn_shed_gauge: Gauge,
    syn_retry_shed_gauge: Gauge,
}

impl Admission {
    /// Creates the admission state for an engine with `instances` instances, each holding `engine`, registering
    /// its metrics. `syn_shed`, when XDP runs, is turned up while shedding (see [`AdmissionConfig::syn_shed`]).
    pub fn new(
        config: AdmissionConfig,
        instances: usize,
        engine: EngineBounds,
        registry: &mut Registry,
        syn_shed: Option<Arc<dyn SynShedControl>>,
    ) -> Arc<Self> {
        let shed = Family::<ShedLabels, Counter>::default();
        registry.register(
            "portcullis_admission_shed",
            "Handshakes shed before any crypto, by action (close), reason and class",
            shed.clone(),
        );
        let admitted = Family::<ClassLabel, Counter>::default();
        registry.register(
            "portcullis_admission_admitted",
            "Handshakes admitted, by class",
            admitted.clone(),
        );
        let transitions = Family::<StateLabel, Counter>::default();
        registry.register(
            "portcullis_admission_transitions",
            "Controller state changes, by the state entered",
            transitions.clone(),
        );
        let state_gauge = Gauge::default();
        registry.register(
            "portcullis_admission_state",
            "Controller state: 0 normal, 1 shedding (full handshakes shed), 2 recovering",
            state_gauge.clone(),
        );
        let syn_shed_gauge = Gauge::default();
        registry.register(
            "portcullis_admission_syn_shed_ppm",
            "Parts per million of new SYNs the XDP program is told to drop (0 without XDP)",
            syn_shed_gauge.clone(),
        );
        let syn_retry_shed_gauge = Gauge::default();
        registry.register(
            "portcullis_admission_syn_retry_shed_ppm",
            "Parts per million of retransmitted SYNs of already shed flows the XDP program is told to drop",
            syn_retry_shed_gauge.clone(),
        );
        let outstanding_gauge = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "portcullis_admission_outstanding_seconds",
            "Admitted handshake work queued or in service, in learned cost (what the queue budget bounds)",
            outstanding_gauge.clone(),
        );
        let overloaded_gauge = Gauge::default();
        registry.register(
            "portcullis_admission_overloaded",
            "1 while overloaded (admitting into a queue of twice the target, the wait bounded): the normal burst \
             was exceeded while saturated (offered handshake work at the measured service rate), XDP sheds SYNs \
             or the controller is not normal; kept while saturated",
            overloaded_gauge.clone(),
        );
        let unsaturated_bursts = Counter::default();
        registry.register(
            "portcullis_admission_unsaturated_bursts",
            "Handshakes admitted past the normal-operation burst because the offered handshake work was below the \
             engine's measured service rate (the queue grew from other work taking the CPU, not from handshakes)",
            unsaturated_bursts.clone(),
        );
        let rate_gauge = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "portcullis_admission_service_rate",
            "Handshake CPU seconds the crypto threads complete per second while busy (measured; at most one per \
             thread): nothing is shed while the offered handshake work stays below it",
            rate_gauge.clone(),
        );
        let costs = CostTable::new(registry);
        let (budget_ns, overload_budget_ns) = budgets(&config, instances);
        Arc::new(Self {
            overload_budget_ns: AtomicU64::new(overload_budget_ns),
            moments: CostMoments::new(costs.estimate_ns(HandshakeClass::FullEcdsa)),
            overload: Mutex::new(Overload::new(
                config.interval * SATURATION_WINDOW_INTERVALS,
                config.interval * OVERLOAD_HOLD_INTERVALS,
                instances,
                Instant::now(),
            )),
            overloaded_gauge,
            instances: instances.max(1) as u64,
            engine: arc_swap::ArcSwap::from_pointee(engine),
            controller: Mutex::new(Controller::new(
                config.target,
                config.interval,
                config.recover_intervals,
                Instant::now(),
            )),
            syn_loop: Mutex::new(SynShedLoop::new(
                syn_shed::loop_interval(config.interval),
                config.syn_shed,
                config.syn_retry_hold,
                Instant::now(),
            )),
            config: arc_swap::ArcSwap::from_pointee(config),
            costs,
            outstanding_ns: AtomicU64::new(0),
            outstanding_jobs: AtomicUsize::new(0),
            unsaturated_bursts,
            rate_gauge,
            outstanding_gauge,
            budget_ns: AtomicU64::new(budget_ns),
            shed,
            admitted,
            transitions,
            state_gauge,
            syn_shed,
            syn_shed_ppm: AtomicU32::new(0),
            syn_shed_gauge,
            syn_retry_shed_gauge,
        })
    }

    /// Applies a reloaded `[admission]` and the engine's bounds (`reload`): target, budgets, thresholds and
    /// intervals change in place, and what was measured stays: the learned costs and their spread, the
    /// controller's state and streak, the work outstanding, the SYN shed loop's fraction. Nothing here is only
    /// smoothing that a rebuild could restart cheaply: a reload during a storm must not forget it. `enabled` is
    /// not read: admission control is put in front of the engine at start (`reload` refuses that field).
    pub fn set_params(&self, config: &AdmissionConfig, engine: EngineBounds) {
        let instances = usize::try_from(self.instances).unwrap_or(usize::MAX);
        let (budget_ns, overload_budget_ns) = budgets(config, instances);
        self.budget_ns.store(budget_ns, Ordering::Relaxed);
        self.overload_budget_ns
            .store(overload_budget_ns, Ordering::Relaxed);
        self.engine.store(Arc::new(engine));
        let now = Instant::now();
        lock(&self.controller).set_params(config.interval, config.recover_intervals, now);
        lock(&self.overload).set_window(
            config.interval * SATURATION_WINDOW_INTERVALS,
            config.interval * OVERLOAD_HOLD_INTERVALS,
        );
        let shed = {
            let mut l = lock(&self.syn_loop);
            l.set_params(
                syn_shed::loop_interval(config.interval),
                config.syn_shed,
                config.syn_retry_hold,
            );
            l.shed()
        };
        self.config.store(Arc::new(config.clone()));
        // A lower `syn_shed` bounds the fraction XDP drops now, not at the next change.
        if let Some(knob) = &self.syn_shed
            && shed.ppm != self.syn_shed_ppm.load(Ordering::Relaxed)
        {
            self.set_syn_shed(knob.as_ref(), shed);
        }
    }

    /// The `[admission]` parameters in force (the last [`Admission::set_params`], else those of the start).
    pub fn params(&self) -> Arc<AdmissionConfig> {
        self.config.load_full()
    }

    /// Advances the controller to now (closing any interval that has ended, which may change its state, log the
    /// change and move the gauge), then returns its state. Not a plain getter: that is why it is not `state()`.
    pub fn advance_to_now(&self) -> State {
        let mut c = self.controller();
        if let Some(s) = c.tick(Instant::now()) {
            self.entered(s);
        }
        c.state()
    }

    /// The controller, its target the larger of `target` and what the learned costs make a standing queue
    /// ([`burst::STANDING_UNITS`]), told whether the engine is saturated (a standing queue counts only then).
    fn controller(&self) -> std::sync::MutexGuard<'_, Controller> {
        let saturated = self.overload().saturated();
        let mut c = self.controller.lock().unwrap_or_else(|e| e.into_inner());
        c.set_target(self.config.load().target.max(self.moments.standing()));
        c.set_saturated(saturated);
        c
    }

    fn overload(&self) -> std::sync::MutexGuard<'_, Overload> {
        self.overload.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entered(&self, state: State) {
        self.state_gauge.set(state.code());
        self.transitions
            .get_or_create(&StateLabel { to: state.name() })
            .inc();
        tracing::warn!(
            state = state.name(),
            syn_shed_ppm = self.syn_shed_ppm.load(Ordering::Relaxed),
            "admission control state changed"
        );
    }

    /// Decides on a handshake of `class`.
    pub fn admit(&self, class: HandshakeClass) -> Result<Admitted, ShedReason> {
        let decision = self.decide(class);
        // A refusal counts towards SYN shedding only when more handshake work is offered than the crypto threads
        // complete with a core each: a true handshake overload. Refusals of an engine starved by other work stay
        // in userspace (`Overload::beyond_capacity`).
        let counted_ok = decision.is_ok() || !self.overload().beyond_capacity();
        self.step_syn_loop(|l, now| l.record(counted_ok, now));
        decision
    }

    /// Runs one step of the SYN shed loop (with XDP only) and hands a changed drop fraction to the XDP program.
    fn step_syn_loop(&self, step: impl FnOnce(&mut SynShedLoop, Instant) -> Option<SynShed>) {
        if let Some(knob) = &self.syn_shed {
            let changed = step(
                &mut self.syn_loop.lock().unwrap_or_else(|e| e.into_inner()),
                Instant::now(),
            );
            if let Some(shed) = changed {
                self.set_syn_shed(knob.as_ref(), shed);
            }
        }
    }

    /// Starts the thread that calls [`Admission::tick`] every `interval` while `admission` lives.
    pub fn start_ticker(admission: &Arc<Self>) {
        let weak = Arc::downgrade(admission);
        // The SYN shed loop's interval, the shorter of the two; read each time, as a reload may change it.
        let mut interval = syn_shed::loop_interval(admission.config.load().interval);
        let spawned = std::thread::Builder::new()
            .name("admission-tick".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    match weak.upgrade() {
                        Some(a) => {
                            a.tick();
                            interval = syn_shed::loop_interval(a.config.load().interval);
                        }
                        None => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the admission ticker: states change only when handshakes arrive");
        }
    }

    /// Closes the controller's and the SYN shed loop's intervals if they ended: called every `interval` by a
    /// timer, so an idle server returns to `normal` and SYN shedding ends when nothing reaches userspace.
    pub fn tick(&self) {
        let state = self.advance_to_now();
        self.step_syn_loop(SynShedLoop::tick);
        let now = Instant::now();
        let mut overload = self.overload();
        overload.tick(now);
        if self.outstanding_jobs.load(Ordering::Relaxed) < self.instances as usize {
            overload.slack(now);
        }
        self.rate_gauge.set(overload.rate());
        self.judge_overload(&mut overload, state, now);
    }

    /// Cheapest action first: the XDP program drops a fraction of new SYNs (their clients retry after 1 s,
    /// 3 s, ...), and of retransmitted ones.
    fn set_syn_shed(&self, knob: &dyn SynShedControl, shed: SynShed) {
        if let Err(e) = knob.set_syn_shed(shed) {
            tracing::warn!(error = %format!("{e:#}"), "cannot set the XDP SYN shed fractions");
            return;
        }
        let before = self.syn_shed_ppm.swap(shed.ppm, Ordering::Relaxed);
        self.syn_shed_gauge.set(i64::from(shed.ppm));
        self.syn_retry_shed_gauge.set(i64::from(shed.retry_ppm));
        if (before == 0) != (shed.ppm == 0) {
            tracing::warn!(
                syn_shed_ppm = shed.ppm,
                syn_retry_shed_ppm = shed.retry_ppm,
                "XDP SYN shedding {}",
                if shed.ppm == 0 { "off" } else { "on" }
            );
        }
    }

    /// Whether admission control is in overload: admitting into the short queue of twice `target`, with the
    /// wait bound ([`Admitted::max_wait`]). For tests: the admission path judges it as it admits.
    #[cfg(test)]
    pub fn overloaded(&self) -> bool {
        let state = self.advance_to_now();
        let mut overload = self.overload();
        self.judge_overload(&mut overload, state, Instant::now())
    }

    /// Overloaded: the controller is not `normal`, or XDP sheds SYNs (which starts or extends the overload), or
    /// an overload started by an exceeded burst lasts. Keeps the gauge and the log in step.
    fn judge_overload(&self, overload: &mut Overload, state: State, now: Instant) -> bool {
        if self.syn_shed_ppm.load(Ordering::Relaxed) > 0 {
            overload.trigger(now);
        }
        let overloaded = state != State::Normal || overload.active(now);
        let code = i64::from(overloaded);
        if self.overloaded_gauge.set(code) != code {
            tracing::warn!(
                overloaded,
                state = state.name(),
                syn_shed_ppm = self.syn_shed_ppm.load(Ordering::Relaxed),
                "admission control {}",
                if overloaded {
                    "overloaded: admitting into a short queue"
                } else {
                    "back to normal operation"
                }
            );
        }
        overloaded
    }

    /// The budget of normal operation: the larger of `queue_budget` and the burst Poisson arrivals at 80% load
    /// stay within ([`burst`]), per instance.
    fn burst_budget_ns(&self) -> u64 {
        self.budget_ns.load(Ordering::Relaxed).max(
            self.moments
                .burst_ns(**self.engine.load())
                .saturating_mul(self.instances),
        )
    }

    fn decide(&self, class: HandshakeClass) -> Result<Admitted, ShedReason> {
        if IN_FLIGHT.get() >= self.config.load().max_in_flight_per_worker {
            return Err(self.count_shed(class, ShedReason::InFlightLimit));
        }
        let now = Instant::now();
        let cost = self.costs.estimate_ns(class);
        self.moments.observe(cost);
        let state = self.advance_to_now();
        let mut overload = self.overload();
        overload.offered(cost, now);
        let overloaded = self.judge_overload(&mut overload, state, now);
        if state == State::Shedding && !class.is_resumption() {
            return Err(self.count_shed(class, ShedReason::Overload));
        }
        // Overloaded (the burst exceeded lately, a standing queue, or XDP shedding SYNs): admit only into a short
        // queue, so those admitted wait about twice the target at most, not the whole burst-tolerant
        // budget of normal operation; and bound the wait itself at the target ([`Admitted::max_wait`]).
        let budget = if overloaded {
            self.overload_budget_ns.load(Ordering::Relaxed)
        } else {
            self.burst_budget_ns()
        };
        let limit = if class.is_resumption() {
            budget.saturating_add(budget / 2)
        } else {
            budget
        };
        let reserved = self
            .outstanding_ns
            .fetch_add(cost, Ordering::Relaxed)
            .saturating_add(cost);
        // Always admit into an empty pipeline, so a class whose learned cost exceeds the budget still runs.
        if reserved > limit && reserved != cost {
            if !overloaded && !overload.saturated() {
                // More queued than 80% load makes, but less handshake work offered than the engine completes:
                // other work took the CPU (or the host stalled). The queue drains when it comes back; shedding
                // handshakes would refuse clients and shorten nothing. The engine's ring is the bound.
                self.unsaturated_bursts.inc();
            } else {
                self.outstanding_ns.fetch_sub(cost, Ordering::Relaxed);
                if !overloaded {
                    // More queued than 80% load makes with any likelihood, and at least as much handshake work
                    // offered as the engine completes: a storm, not a bunch of arrivals.
                    overload.trigger(now);
                    self.judge_overload(&mut overload, state, now);
                }
                return Err(self.count_shed(class, ShedReason::CostBudget));
            }
        }
        drop(overload);
        self.outstanding_jobs.fetch_add(1, Ordering::Relaxed);
        self.outstanding_gauge.set(reserved as f64 / 1e9);
        self.admitted
            .get_or_create(&ClassLabel {
                class: class.name(),
            })
            .inc();
        Ok(Admitted {
            cost,
            max_wait: overloaded.then_some(self.config.load().target),
        })
    }

    /// Returns a reservation made by [`Admission::admit`].
    pub fn release(&self, cost: u64) {
        let left = self
            .outstanding_ns
            .fetch_sub(cost, Ordering::Relaxed)
            .saturating_sub(cost);
        self.outstanding_gauge.set(left as f64 / 1e9);
        let jobs = self
            .outstanding_jobs
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |j| {
                Some(j.saturating_sub(1))
            })
            .unwrap_or(0)
            .saturating_sub(1);
        if jobs < self.instances as usize {
            self.overload().slack(Instant::now());
        }
    }

    fn count_shed(&self, class: HandshakeClass, reason: ShedReason) -> ShedReason {
        self.shed
            .get_or_create(&ShedLabels {
                action: "close",
                reason: reason.name(),
                class: class.name(),
            })
            .inc();
        reason
    }
}

impl Observer for Admission {
    fn max_wait_now(&self) -> Option<Duration> {
        // The gauge is the overload flag as last judged (every arrival and every tick): one atomic load on the
        // crypto thread, no lock.
        (self.overloaded_gauge.get() != 0).then_some(self.config.load().target)
    }

    fn completed(&self, class: HandshakeClass, wait: Duration, cpu: Duration) {
        self.costs.observe(class, cpu);
        self.overload().completed(
            u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX),
            Instant::now(),
        );
        let mut c = self.controller();
        let queue = if class.is_resumption() {
            controller::Queue::Resumptions
        } else {
            controller::Queue::Full
        };
        if let Some(s) = c.observe(queue, wait, Instant::now()) {
            self.entered(s);
        }
    }
}

/// The normal-operation budget's floor (`queue_budget`) and the overload budget (twice `target`, at most the
/// floor), both per instance times `instances`, in ns.
fn budgets(config: &AdmissionConfig, instances: usize) -> (u64, u64) {
    let budget_ns = u64::try_from(config.queue_budget.as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_mul(instances.max(1) as u64);
    let overload_budget_ns = u64::try_from(config.target.as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_mul(instances.max(1) as u64)
        .min(budget_ns);
    (budget_ns, overload_budget_ns)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wraps an engine with admission control.
pub struct AdmissionEngine<E> {
    inner: E,
    admission: Arc<Admission>,
}

impl<E: HandshakeEngine> AdmissionEngine<E> {
    /// Puts `admission` in front of `inner`.
    pub fn new(inner: E, admission: Arc<Admission>) -> Self {
        Self { inner, admission }
    }

    /// Admits the job (or sheds it) at once, then runs it on the inner engine, holding its in-flight slot and
    /// reservation until the step is done: released before returning when the step ran on the calling worker,
    /// carried in the future when it was queued.
    fn run_job(&self, mut job: Job) -> Running<'_> {
        let admitted = match self.admission.admit(job.class) {
            Ok(admitted) => admitted,
            Err(reason) => return Running::ready(Err(EngineError::Shed(reason))),
        };
        let guard = InFlight::enter(&self.admission, admitted.cost);
        job.max_wait = admitted.max_wait;
        match self.inner.run(job) {
            ready @ Running::Ready(_) => {
                drop(guard);
                ready
            }
            Running::Queued(queued) => Running::Queued(Box::pin(async move {
                let _guard = guard;
                queued.await
            })),
        }
    }
}

/// Holds a worker's in-flight slot and the cost reservation until the handshake step finishes (or is
/// cancelled by the handshake timeout).
struct InFlight<'a> {
    admission: &'a Admission,
    cost: u64,
}

impl<'a> InFlight<'a> {
    fn enter(admission: &'a Admission, cost: u64) -> Self {
        IN_FLIGHT.set(IN_FLIGHT.get() + 1);
        crate::steering::in_flight_changed(
            IN_FLIGHT.get(),
            admission.config.load().max_in_flight_per_worker,
        );
        Self { admission, cost }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        IN_FLIGHT.set(IN_FLIGHT.get().saturating_sub(1));
        crate::steering::in_flight_changed(
            IN_FLIGHT.get(),
            self.admission.config.load().max_in_flight_per_worker,
        );
        self.admission.release(self.cost);
    }
}

impl<E: HandshakeEngine> HandshakeEngine for AdmissionEngine<E> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn run(&self, job: Job) -> Running<'_> {
        self.run_job(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(budget_ms: u64) -> Arc<Admission> {
        let config = AdmissionConfig {
            queue_budget: Duration::from_millis(budget_ms),
            ..AdmissionConfig::default()
        };
        Admission::new(
            config,
            1,
            EngineBounds::NONE,
            &mut Registry::default(),
            None,
        )
    }

    /// Offered handshake work of `ms` milliseconds now (the arrivals of a storm, without their bookkeeping).
    fn offer(a: &Admission, ms: u64) {
        a.overload().offered(ms * 1_000_000, Instant::now());
    }

    /// One saturation window of the default interval, in ms: offering this much saturates one crypto thread.
    const WINDOW_MS: u64 = 100 * SATURATION_WINDOW_INTERVALS as u64;

    /// A standing queue of full handshakes for a whole interval while saturated: the controller enters
    /// `shedding`.
    async fn shed_full_handshakes(a: &Admission) {
        for _ in 0..2 * controller::MIN_SAMPLES {
            offer(a, 20 * u64::from(SATURATION_WINDOW_INTERVALS));
            a.completed(
                HandshakeClass::FullEcdsa,
                Duration::from_millis(20),
                Duration::from_micros(150),
            );
            tokio::time::advance(Duration::from_millis(12)).await;
        }
        assert_eq!(a.advance_to_now(), State::Shedding);
    }

    /// A reload's parameters apply to the next decision; the controller's state is kept.
    #[tokio::test(start_paused = true)]
    async fn new_parameters_apply_in_place_and_keep_what_was_measured() {
        let a = admission(1000);
        shed_full_handshakes(&a).await;
        let config = AdmissionConfig {
            target: Duration::from_millis(9),
            max_in_flight_per_worker: 1,
            ..AdmissionConfig::default()
        };
        a.set_params(&config, EngineBounds::NONE);
        assert_eq!(a.advance_to_now(), State::Shedding, "the state is kept");
        assert_eq!(a.params().target, Duration::from_millis(9));
        let admitted = a
            .admit(HandshakeClass::Tls13Psk)
            .expect("a resumption while shedding");
        a.release(admitted.cost);
        assert_eq!(
            admitted.max_wait,
            Some(Duration::from_millis(9)),
            "the new target bounds the wait"
        );
        IN_FLIGHT.set(1);
        assert_eq!(
            a.admit(HandshakeClass::Tls13Psk),
            Err(ShedReason::InFlightLimit)
        );
        IN_FLIGHT.set(0);
    }

    /// The same standing queue with half a core's handshake work offered (the crypto thread kept off the CPU by
    /// other work): not an overload, nothing shed.
    #[tokio::test(start_paused = true)]
    async fn a_standing_queue_below_the_service_rate_sheds_nothing() {
        let a = admission(1);
        for _ in 0..4 * controller::MIN_SAMPLES {
            offer(&a, 6);
            a.completed(
                HandshakeClass::FullEcdsa,
                Duration::from_millis(20),
                Duration::from_micros(150),
            );
            tokio::time::advance(Duration::from_millis(12)).await;
            a.tick();
        }
        assert_eq!(a.advance_to_now(), State::Normal);
        // And the burst (48 x 150 µs), exceeded six times over in a new window, refuses nothing.
        tokio::time::advance(Duration::from_millis(100)).await;
        a.tick();
        for _ in 0..300 {
            assert!(a.admit(HandshakeClass::FullEcdsa).is_ok());
        }
        assert!(!a.overloaded());
        assert!(
            a.unsaturated_bursts.get() > 200,
            "{}",
            a.unsaturated_bursts.get()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shedding_drops_full_handshakes_but_admits_resumptions() {
        let a = admission(1000);
        shed_full_handshakes(&a).await;
        assert_eq!(
            a.admit(HandshakeClass::FullEcdsa),
            Err(ShedReason::Overload)
        );
        assert_eq!(a.admit(HandshakeClass::FullRsa), Err(ShedReason::Overload));
        assert!(a.admit(HandshakeClass::Tls13Psk).is_ok());
        assert!(a.admit(HandshakeClass::Tls12Resumption).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn while_shedding_resumptions_get_the_overload_budget_and_the_wait_bound() {
        // A 1 s budget in normal operation; overloaded: 2 x target (5 ms) = 10 ms, 15 ms for resumptions.
        let a = admission(1000);
        for _ in 0..50 {
            a.completed(
                HandshakeClass::Tls13Psk,
                Duration::ZERO,
                Duration::from_millis(1),
            );
        }
        shed_full_handshakes(&a).await;
        let mut admitted = Vec::new();
        while let Ok(ok) = a.admit(HandshakeClass::Tls13Psk) {
            admitted.push(ok);
            assert!(admitted.len() < 100, "the overload budget never filled");
        }
        // ~1 ms each against 15 ms (the learned cost is an EWMA, so within a couple).
        assert!(
            (13..=17).contains(&admitted.len()),
            "{} resumptions admitted while shedding",
            admitted.len()
        );
        assert!(
            admitted
                .iter()
                .all(|ok| ok.max_wait == Some(AdmissionConfig::default().target))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_prefers_resumptions() {
        // Learned costs: full ECDSA 150 µs, PSK 100 µs; arrivals of full handshakes only: the burst is
        // `BURST_UNITS` of them (above the 1 ms `queue_budget`).
        let a = admission(1);
        for _ in 0..50 {
            a.completed(
                HandshakeClass::FullEcdsa,
                Duration::ZERO,
                Duration::from_micros(150),
            );
            a.completed(
                HandshakeClass::Tls13Psk,
                Duration::ZERO,
                Duration::from_micros(100),
            );
        }
        let fill = |class| {
            let mut held = Vec::new();
            while let Ok(ok) = a.admit(class) {
                held.push(ok.cost);
                assert!(held.len() < 100, "budget never filled");
            }
            held
        };
        // Normal operation, a window's worth of handshake work offered: full handshakes fill the burst,
        // `BURST_UNITS` of them (above the 1 ms budget).
        offer(&a, WINDOW_MS);
        let held = fill(HandshakeClass::FullEcdsa);
        let units = burst::BURST_UNITS as usize;
        assert!(
            (units - 2..=units + 1).contains(&held.len()),
            "{} full handshakes admitted",
            held.len()
        );
        // Exceeding the burst started an overload: the short queue (here 1 ms), resumptions 1.5x that.
        assert!(a.overloaded());
        for cost in held {
            a.release(cost);
        }
        let full = fill(HandshakeClass::FullEcdsa).len();
        assert!((5..=8).contains(&full), "{full} full handshakes admitted");
        let psk = fill(HandshakeClass::Tls13Psk).len();
        assert!(
            psk >= 3,
            "{psk} resumptions admitted after full handshakes filled the budget"
        );
        assert_eq!(
            a.admit(HandshakeClass::FullEcdsa),
            Err(ShedReason::CostBudget)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_are_returned() {
        let a = admission(1);
        let costs: Vec<u64> =
            std::iter::from_fn(|| a.admit(HandshakeClass::FullRsa).ok().map(|a| a.cost))
                .take(1000)
                .collect();
        assert!(!costs.is_empty());
        assert!(a.admit(HandshakeClass::FullRsa).is_err());
        assert!(a.outstanding_gauge.get() > 0.0);
        for c in costs {
            a.release(c);
        }
        assert_eq!(a.outstanding_ns.load(Ordering::Relaxed), 0);
        assert_eq!(a.outstanding_gauge.get(), 0.0);
        assert!(a.admit(HandshakeClass::FullRsa).is_ok());
    }

    #[derive(Default)]
    struct Knob(std::sync::Mutex<Vec<u32>>);

    impl SynShedControl for Knob {
        fn set_syn_shed(&self, shed: SynShed) -> anyhow::Result<()> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(shed.ppm);
            Ok(())
        }
    }

    /// Admission control for one crypto thread whose SYN shed fractions are recorded by the returned knob.
    fn with_knob(config: AdmissionConfig) -> (Arc<Admission>, Arc<Knob>) {
        let knob = Arc::new(Knob::default());
        let a = Admission::new(
            config,
            1,
            EngineBounds::NONE,
            &mut Registry::default(),
            Some(knob.clone()),
        );
        (a, knob)
    }

    /// Refusals while less handshake work is offered than a core per crypto thread completes (an engine starved
    /// by other work, or as here a worker at its in-flight limit) stay in userspace: no SYN is shed.
    #[tokio::test(start_paused = true)]
    async fn refusals_below_capacity_shed_no_syns() {
        let config = AdmissionConfig {
            max_in_flight_per_worker: 10,
            ..AdmissionConfig::default()
        };
        let (a, knob) = with_knob(config);
        for _ in 0..20 {
            let mut held = Vec::new();
            let mut refused = 0;
            for _ in 0..100 {
                match a.admit(HandshakeClass::FullEcdsa) {
                    Ok(ok) => {
                        IN_FLIGHT.set(IN_FLIGHT.get() + 1);
                        held.push(ok.cost);
                    }
                    Err(_) => refused += 1,
                }
            }
            assert_eq!(refused, 90);
            for cost in held {
                IN_FLIGHT.set(IN_FLIGHT.get() - 1);
                a.release(cost);
            }
            tokio::time::advance(syn_shed::loop_interval(Duration::from_millis(100))).await;
            a.tick();
        }
        let seen = knob.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(seen.iter().all(|&ppm| ppm == 0), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn syn_shed_follows_what_userspace_admits() {
        let config = AdmissionConfig {
            syn_shed: 0.9,
            max_in_flight_per_worker: 10,
            ..AdmissionConfig::default()
        };
        let (a, knob) = with_knob(config);
        // One interval in which 100 handshakes arrive on a worker that may have 10 in flight, beyond what the
        // crypto thread completes: 10 admitted.
        offer(&a, WINDOW_MS);
        let mut held = Vec::new();
        for _ in 0..100 {
            if let Ok(Admitted { cost, .. }) = a.admit(HandshakeClass::FullEcdsa) {
                IN_FLIGHT.set(IN_FLIGHT.get() + 1);
                held.push(cost);
            }
        }
        assert_eq!(held.len(), 10);
        tokio::time::advance(syn_shed::loop_interval(Duration::from_millis(100))).await;
        // The next arrival closes the interval: keep 10 * 1.25 / 100 = 12.5%, floored at 1 - 0.9.
        let _ = a.admit(HandshakeClass::FullEcdsa);
        assert_eq!(
            knob.0.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            vec![875_000]
        );
        // The storm is over: the slots free up, a few arrive and are admitted; shedding is released.
        for cost in held {
            IN_FLIGHT.set(IN_FLIGHT.get() - 1);
            a.release(cost);
        }
        for _ in 0..4 * SATURATION_WINDOW_INTERVALS {
            tokio::time::advance(Duration::from_millis(100)).await;
            if let Ok(Admitted { cost, .. }) = a.admit(HandshakeClass::FullEcdsa) {
                a.release(cost);
            }
        }
        let seen = knob.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(seen.last(), Some(&0), "{seen:?}");
        assert_eq!(a.syn_shed_gauge.get(), 0);
    }
}
