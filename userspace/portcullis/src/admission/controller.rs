//! The queue-delay controller, in the spirit of CoDel (Nichols & Jacobson, "Controlling Queue Delay", 2012)
//! and Facebook's "Fail at Scale": what matters is not how long the queue is but whether it ever drains. Over
//! each `interval`, track the *minimum* time a job waited in a ring (its sojourn time). A minimum above
//! `target` means even the luckiest job queued: a standing queue, not a burst. Then shed new full handshakes.
//!
//! A queue only stands if jobs keep coming: an interval with fewer than [`MIN_SAMPLES`] jobs is never bad, so
//! one handshake delayed on a busy host (its crypto thread descheduled for a few milliseconds) does not make an
//! almost idle server shed.
//!
//! And a standing queue is a handshake overload only while the offered handshake work reaches what the engine
//! completes ([`Controller::set_saturated`], from `admission::burst::Overload`): sojourn is wall-clock time, and
//! a crypto thread that other work keeps off the CPU (a flood's accepts, softirq, other processes) makes every
//! job wait without any more handshakes to do. Shedding handshakes then refuses clients and shortens nothing
//! (BENCHMARKS.md "Floods"); an interval with a standing queue but unsaturated is good.
//!
//! States, with hysteresis so the controller does not flap:
//! - `Normal` -> `Shedding` after one bad interval (minimum sojourn > target over at least [`MIN_SAMPLES`] jobs,
//!   and saturated).
//! - `Shedding` -> `Recovering` after one good interval (minimum <= target, or no job queued at all).
//! - `Recovering` -> `Normal` after `recover_intervals` consecutive good intervals; one bad interval sends it
//!   back to `Shedding`.
//!
//! Time is passed in (`now`), so tests drive it deterministically.

use std::time::Duration;

use tokio::time::Instant;

/// Fewest jobs in an interval for it to count as a standing queue.
pub const MIN_SAMPLES: u32 = 5;

/// The engine serves resumptions before full handshakes, so each has its own queue: a standing queue of full
/// handshakes is invisible in the minimum over both (resumptions jump it), and is judged on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Full handshakes.
    Full,
    /// Resumptions (served first).
    Resumptions,
}

/// One queue's minimum sojourn time over the current interval.
#[derive(Debug, Default, Clone, Copy)]
struct Sojourn {
    min: Option<Duration>,
    samples: u32,
}

impl Sojourn {
    fn standing(&self, target: Duration) -> bool {
        self.samples >= MIN_SAMPLES && self.min.is_some_and(|m| m > target)
    }
}

/// The controller's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Admit everything the budget allows.
    Normal,
    /// A standing queue: shed new full handshakes, admit resumptions.
    Shedding,
    /// The queue drained; admit everything again, watching for a relapse.
    Recovering,
}

impl State {
    /// Label / log value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Shedding => "shedding",
            Self::Recovering => "recovering",
        }
    }

    /// Gauge value: 0 normal, 1 shedding, 2 recovering.
    pub fn code(self) -> i64 {
        match self {
            Self::Normal => 0,
            Self::Shedding => 1,
            Self::Recovering => 2,
        }
    }
}

/// The sojourn-time controller.
#[derive(Debug)]
pub struct Controller {
    target: Duration,
    interval: Duration,
    recover_intervals: u32,
    state: State,
    interval_start: Instant,
    /// Per [`Queue`], indexed by `Queue as usize`.
    sojourn: [Sojourn; 2],
    good_streak: u32,
    /// Whether the offered handshake work reaches what the engine completes (set before each use).
    saturated: bool,
}

impl Controller {
    /// A controller in `Normal`, its first interval starting at `now`.
    pub fn new(target: Duration, interval: Duration, recover_intervals: u32, now: Instant) -> Self {
        Self {
            target,
            interval,
            recover_intervals: recover_intervals.max(1),
            state: State::Normal,
            interval_start: now,
            sojourn: [Sojourn::default(); 2],
            good_streak: 0,
            saturated: true,
        }
    }

    /// Sets whether the offered handshake work reaches what the engine completes, for the intervals still to
    /// close: without it, a standing queue is not a bad interval. Starts `true` (the controller alone).
    pub fn set_saturated(&mut self, saturated: bool) {
        self.saturated = saturated;
    }

    /// Sets the target for the intervals still to close (admission control scales it with the learned costs).
    pub fn set_target(&mut self, target: Duration) {
        self.target = target;
    }

    /// Sets the interval and the good intervals needed to recover (a reload), keeping the state, the streak and
    /// what the current interval measured; the current interval ends `interval` after it started, or now.
    pub fn set_params(&mut self, interval: Duration, recover_intervals: u32, now: Instant) {
        self.interval = interval;
        self.recover_intervals = recover_intervals.max(1);
        if self.state == State::Recovering && self.good_streak >= self.recover_intervals {
            self.state = State::Normal;
        }
        // A shorter interval would otherwise replay the time since the interval began as many short ones.
        if now.saturating_duration_since(self.interval_start) > interval {
            self.interval_start = now;
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Records one job's sojourn time. Returns the new state if it changed.
    pub fn observe(&mut self, queue: Queue, sojourn: Duration, now: Instant) -> Option<State> {
        let changed = self.tick(now);
        let q = &mut self.sojourn[queue as usize];
        q.min = Some(q.min.map_or(sojourn, |m| m.min(sojourn)));
        q.samples = q.samples.saturating_add(1);
        changed
    }

    /// Closes every interval that ended by `now`. Returns the new state if it changed.
    pub fn tick(&mut self, now: Instant) -> Option<State> {
        let before = self.state;
        while now.saturating_duration_since(self.interval_start) >= self.interval {
            let bad = self.saturated && self.sojourn.iter().any(|q| q.standing(self.target));
            self.state = match (self.state, bad) {
                (_, true) => {
                    self.good_streak = 0;
                    State::Shedding
                }
                (State::Normal, false) => State::Normal,
                (State::Shedding, false) => {
                    self.good_streak = 1;
                    if self.good_streak >= self.recover_intervals {
                        State::Normal
                    } else {
                        State::Recovering
                    }
                }
                (State::Recovering, false) => {
                    self.good_streak += 1;
                    if self.good_streak >= self.recover_intervals {
                        State::Normal
                    } else {
                        State::Recovering
                    }
                }
            };
            self.sojourn = [Sojourn::default(); 2];
            self.interval_start += self.interval;
            // After a long idle gap, skip ahead rather than replaying empty intervals one by one.
            if now.saturating_duration_since(self.interval_start) > self.interval * 64 {
                self.interval_start = now;
                if self.state != State::Shedding {
                    self.state = State::Normal;
                }
            }
        }
        (self.state != before).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(5);
    const INTERVAL: Duration = Duration::from_millis(100);

    /// Observes `MIN_SAMPLES` jobs that each waited `sojourn`.
    fn observe_n(c: &mut Controller, sojourn: Duration) {
        for _ in 0..MIN_SAMPLES {
            c.observe(Queue::Full, sojourn, Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_late_jobs_are_no_standing_queue() {
        let mut c = Controller::new(TARGET, INTERVAL, 3, Instant::now());
        for _ in 0..MIN_SAMPLES - 1 {
            c.observe(Queue::Full, Duration::from_millis(50), Instant::now());
        }
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), None);
        assert_eq!(c.state(), State::Normal);
    }

    #[tokio::test(start_paused = true)]
    async fn a_standing_queue_of_full_handshakes_shows_behind_prompt_resumptions() {
        let mut c = Controller::new(TARGET, INTERVAL, 3, Instant::now());
        for _ in 0..MIN_SAMPLES {
            c.observe(
                Queue::Resumptions,
                Duration::from_micros(500),
                Instant::now(),
            );
            c.observe(Queue::Full, Duration::from_millis(9), Instant::now());
        }
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), Some(State::Shedding));
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_do_not_shed_but_a_standing_queue_does() {
        let mut c = Controller::new(TARGET, INTERVAL, 3, Instant::now());
        // A burst: some jobs wait long, but one got through quickly in the interval.
        c.observe(Queue::Full, Duration::from_millis(40), Instant::now());
        c.observe(Queue::Full, Duration::from_millis(1), Instant::now());
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), None);
        assert_eq!(c.state(), State::Normal);
        // A standing queue: every job waited more than the target for a whole interval.
        for _ in 0..10 {
            c.observe(Queue::Full, Duration::from_millis(8), Instant::now());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(c.tick(Instant::now()), Some(State::Shedding));
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_needs_consecutive_good_intervals() {
        let mut c = Controller::new(TARGET, INTERVAL, 3, Instant::now());
        observe_n(&mut c, Duration::from_millis(50));
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), Some(State::Shedding));
        // One good interval: recovering, not normal yet.
        c.observe(Queue::Full, Duration::from_millis(1), Instant::now());
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), Some(State::Recovering));
        // A relapse goes straight back to shedding.
        observe_n(&mut c, Duration::from_millis(9));
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), Some(State::Shedding));
        // Three good intervals in a row: normal.
        for expected in [Some(State::Recovering), None, Some(State::Normal)] {
            c.observe(Queue::Full, Duration::from_millis(1), Instant::now());
            tokio::time::advance(INTERVAL).await;
            assert_eq!(c.tick(Instant::now()), expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn new_parameters_keep_the_state_and_apply_to_the_next_intervals() {
        let mut c = Controller::new(TARGET, INTERVAL, 5, Instant::now());
        observe_n(&mut c, Duration::from_millis(50));
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), Some(State::Shedding));
        c.set_params(INTERVAL * 2, 1, Instant::now());
        assert_eq!(c.state(), State::Shedding, "a reload keeps the state");
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), None, "the interval is 200 ms now");
        tokio::time::advance(INTERVAL).await;
        assert_eq!(
            c.tick(Instant::now()),
            Some(State::Normal),
            "one good interval recovers with recover_intervals = 1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_standing_queue_below_saturation_is_no_overload() {
        // Every job waited 50 ms (the crypto thread kept off the CPU by other work), but the handshake work
        // offered is below what the engine completes: nothing to shed.
        let mut c = Controller::new(TARGET, INTERVAL, 3, Instant::now());
        c.set_saturated(false);
        for _ in 0..5 {
            observe_n(&mut c, Duration::from_millis(50));
            tokio::time::advance(INTERVAL).await;
            assert_eq!(c.tick(Instant::now()), None);
        }
        c.set_saturated(true);
        observe_n(&mut c, Duration::from_millis(50));
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), Some(State::Shedding));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_interval_counts_as_good() {
        let mut c = Controller::new(TARGET, INTERVAL, 2, Instant::now());
        observe_n(&mut c, Duration::from_millis(50));
        tokio::time::advance(INTERVAL).await;
        assert_eq!(c.tick(Instant::now()), Some(State::Shedding));
        tokio::time::advance(INTERVAL * 2).await;
        assert_eq!(c.tick(Instant::now()), Some(State::Normal));
    }
}
