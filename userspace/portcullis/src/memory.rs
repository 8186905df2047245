//! Giving free heap pages back to the kernel once the workers go quiet (`[memory]`).
//!
//! glibc hands the top of a heap back by itself (`M_TRIM_THRESHOLD`), not the free pages inside it: after a
//! burst of handshakes and requests, the holes that their freed buffers leave between the connections'
//! long-lived allocations stay in RSS (BENCHMARKS.md, "Idle connections"). `malloc_trim(0)` returns what of them
//! fills whole pages (`MADV_DONTNEED` on each free page of every arena: 0.1-0.2 KiB per idle `http` connection
//! after a burst; holes smaller than a page stay), holding each arena's lock while it walks that arena's
//! free chunks, so a worker allocating meanwhile would wait. Hence it runs only when **every** worker has been
//! quiet for a whole interval (busy at most 0.1% of it: stray timers, no traffic), only once the workers have
//! done at least a tenth of an interval's work since the last release (so a trickle of requests between quiet
//! spells does not buy one release per interval: one costs 0.1-1.3 ms with 9,000-19,500 idle connections, tens of
//! ms after thousands close at once; BENCHMARKS.md, "Idle connections", seventh round), and at most once per
//! interval.
//!
//! Cost on the data path: none. A task on the control runtime reads, once per interval, the busy time that
//! tokio's runtimes keep per worker anyway (`RuntimeMetrics::worker_total_busy_duration`, updated at each
//! park); no hook runs on a worker.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Deserialize;

/// The `[memory]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Give the heap's free pages back to the kernel (glibc `malloc_trim`) once every worker has been quiet
    /// (busy at most 0.1% of it) for this long, after at least a tenth of it of work since the last release; at
    /// most once per this interval, counted in `portcullis_memory_releases_total`. `"0s"` turns it off; read at start (a reload keeps
    /// the running value). A duration, at most
    /// `"1h"`. Default: `"500ms"`.
    #[serde(with = "humantime_serde")]
    pub release_after_quiet: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            release_after_quiet: Duration::from_millis(500),
        }
    }
}

impl MemoryConfig {
    /// Checks values; returns the offending field's name and why.
    ///
    /// # Errors
    /// `release_after_quiet` above an hour, or not a whole number of milliseconds.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        crate::config::at_most(
            "memory.release_after_quiet",
            self.release_after_quiet,
            Duration::from_secs(3600),
        )?;
        if !self
            .release_after_quiet
            .subsec_nanos()
            .is_multiple_of(1_000_000)
        {
            return Err((
                "memory.release_after_quiet",
                "must be a whole number of milliseconds".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The worker runtimes whose busy time decides a release; each worker adds its own once built.
#[derive(Clone, Default)]
pub struct Workers(Arc<Mutex<Vec<tokio::runtime::Handle>>>);

impl Workers {
    /// Adds a worker's runtime (a current-thread runtime: its one worker is index 0).
    pub fn register(&self, runtime: &tokio::runtime::Handle) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(runtime.clone());
    }

    /// Each worker's total busy time so far, in registration order.
    fn busy(&self) -> Vec<Duration> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|h| h.metrics().worker_total_busy_duration(0))
            .collect()
    }
}

/// `portcullis_memory_*`: what the releases cost and gave back.
#[derive(Clone, Default)]
pub struct ReleaseMetrics {
    releases: Counter,
    bytes: Counter,
    seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl ReleaseMetrics {
    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_memory_releases",
            "Free heap pages given back to the kernel (malloc_trim) after the workers went quiet \
             (memory.release_after_quiet)",
            self.releases.clone(),
        );
        registry.register(
            "portcullis_memory_released_bytes",
            "How much the process's RSS fell across those releases",
            self.bytes.clone(),
        );
        registry.register(
            "portcullis_memory_release_seconds",
            "Time spent in those releases (each holds one allocator arena's lock at a time)",
            self.seconds.clone(),
        );
    }
}

/// Runs until the runtime stops: every `window`, releases free heap pages when the workers were quiet.
/// `window` zero: returns at once (off).
pub async fn release_when_quiet(window: Duration, workers: Workers, metrics: ReleaseMetrics) {
    run(window, || workers.busy(), || release(&metrics)).await;
}

/// The loop, with the busy times and the release passed in (tests).
async fn run(window: Duration, mut busy: impl FnMut() -> Vec<Duration>, mut release: impl FnMut()) {
    if window.is_zero() {
        return;
    }
    let mut quiet = Quiet::new(window);
    let mut ticks = tokio::time::interval(window);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    quiet.observe(&busy());
    loop {
        ticks.tick().await;
        if quiet.observe(&busy()) {
            release();
        }
    }
}

/// The decision, one interval at a time.
struct Quiet {
    /// Busy time allowed in a quiet interval: 0.1% of it.
    allowance: Duration,
    /// Work owed before a release: a tenth of the interval.
    enough: Duration,
    /// Each worker's busy total at the last observation.
    last: Vec<Duration>,
    /// Busy time of all workers since the last release.
    owed: Duration,
}

impl Quiet {
    fn new(window: Duration) -> Self {
        Self {
            allowance: window / 1000,
            enough: window / 10,
            last: Vec::new(),
            owed: Duration::ZERO,
        }
    }

    /// Takes each worker's busy total now; true when the interval since the last call was quiet on every
    /// worker and the workers worked since the last release (then the work owed starts again from zero).
    fn observe(&mut self, busy: &[Duration]) -> bool {
        let mut busiest = Duration::ZERO;
        for (i, &total) in busy.iter().enumerate() {
            let spent = total.saturating_sub(self.last.get(i).copied().unwrap_or_default());
            busiest = busiest.max(spent);
            self.owed = self.owed.saturating_add(spent);
        }
        self.last = busy.to_vec();
        if busiest > self.allowance || self.owed < self.enough {
            return false;
        }
        self.owed = Duration::ZERO;
        true
    }
}

/// One `malloc_trim(0)`, with what it cost and what RSS it gave back.
fn release(metrics: &ReleaseMetrics) {
    let before = rss_bytes();
    let start = Instant::now();
    trim();
    let took = start.elapsed();
    let after = rss_bytes();
    let freed = before.zip(after).map_or(0, |(b, a)| b.saturating_sub(a));
    metrics.releases.inc();
    metrics.bytes.inc_by(freed);
    metrics.seconds.inc_by(took.as_secs_f64());
    tracing::debug!(
        freed_bytes = freed,
        took_us = took.as_micros(),
        "gave free heap pages back to the kernel"
    );
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim takes no pointers; it locks each arena itself.
    let _ = unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}

/// This process's resident set, from `/proc/self/statm` (pages); `None` if unreadable.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    const WINDOW: Duration = Duration::from_millis(500);

    /// Drives `run` with a paused clock: `load(k)` is each worker's busy time in interval `k`; returns the
    /// interval numbers after which a release ran.
    async fn releases(intervals: u32, load: impl Fn(u32) -> Vec<Duration> + 'static) -> Vec<u32> {
        let now = Rc::new(Cell::new(0u32));
        let totals = Rc::new(std::cell::RefCell::new(Vec::<Duration>::new()));
        let released = Rc::new(std::cell::RefCell::new(Vec::new()));
        let busy = {
            let (now, totals) = (now.clone(), totals.clone());
            move || {
                let mut totals = totals.borrow_mut();
                let k = now.get();
                // The busy time of the interval that ends now (none before the first tick).
                if k > 0 {
                    for (i, b) in load(k).into_iter().enumerate() {
                        if totals.len() <= i {
                            totals.push(Duration::ZERO);
                        }
                        totals[i] += b;
                    }
                }
                totals.clone()
            }
        };
        let release = {
            let (now, released) = (now.clone(), released.clone());
            move || released.borrow_mut().push(now.get())
        };
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let task = tokio::task::spawn_local(run(WINDOW, busy, release));
                tokio::task::yield_now().await;
                for k in 1..=intervals {
                    now.set(k);
                    tokio::time::advance(WINDOW).await;
                    tokio::task::yield_now().await;
                }
                task.abort();
            })
            .await;
        released.take()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_burst_then_quiet_releases_once_after_the_first_quiet_interval() {
        // Busy in intervals 1-3 (handshakes), then 9,000 idle connections: a few µs of timers per interval.
        let got = releases(10, |k| vec![if k <= 3 { ms(300) } else { ms(0) }]).await;
        assert_eq!(
            got,
            vec![4],
            "one release, at the end of the first quiet interval"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_loaded_worker_is_never_trimmed() {
        // Light steady traffic on one worker of two (0.2% busy: a few requests per interval), for 50 intervals:
        // never quiet, so never released.
        let got = releases(50, |_| vec![ms(0), ms(1)]).await;
        assert_eq!(got, Vec::<u32>::new());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn each_burst_followed_by_quiet_is_released_once() {
        let got = releases(12, |k| {
            vec![if k == 2 || k == 7 { ms(50) } else { ms(0) }, ms(0)]
        })
        .await;
        assert_eq!(got, vec![3, 8]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_trickle_is_released_once_it_adds_up_to_a_tenth_of_an_interval() {
        // 0.5 ms per interval (0.1%: quiet) owes the 50 ms after 100 intervals.
        let got = releases(210, |_| vec![Duration::from_micros(500)]).await;
        assert_eq!(got, vec![100, 200]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_small_burst_waits_for_more_work() {
        // 20 ms of work, then quiet: not worth a release until 30 ms more came.
        let got = releases(12, |k| {
            vec![if k == 1 || k == 8 {
                ms(20)
            } else if k == 10 {
                ms(10)
            } else {
                ms(0)
            }]
        })
        .await;
        assert_eq!(got, vec![11]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn zero_turns_it_off() {
        let calls = Cell::new(0);
        run(Duration::ZERO, Vec::new, || calls.set(calls.get() + 1)).await;
        assert_eq!(calls.get(), 0);
    }

    #[test]
    fn the_window_is_bounded_and_whole_milliseconds() {
        let c = |d| MemoryConfig {
            release_after_quiet: d,
        };
        assert!(c(Duration::ZERO).validate().is_ok());
        assert!(MemoryConfig::default().validate().is_ok());
        assert_eq!(
            c(Duration::from_secs(3601))
                .validate()
                .expect_err("over an hour")
                .0,
            "memory.release_after_quiet"
        );
        assert!(c(Duration::from_micros(1500)).validate().is_err());
    }

    #[test]
    fn a_release_reads_rss_and_counts() {
        let metrics = ReleaseMetrics::default();
        assert!(rss_bytes().is_some_and(|b| b > 0));
        release(&metrics);
        release(&metrics);
        assert_eq!(metrics.releases.get(), 2);
    }
}
