//! The hook admission control calls as a worker's in-flight handshake count changes: marks the worker
//! saturated in the steering map at its in-flight limit and unmarks it once it is back at 3/4 of the limit.
//!
//! Each worker is one thread, so the hook's state is thread-local: [`register_worker`] (called by the worker
//! thread at start) says which worker this thread is and where to write; a thread that never registered (no
//! steering, unit tests) makes [`in_flight_changed`] a no-op.

use std::cell::RefCell;
use std::sync::Arc;

/// Where saturation marks go: the reuseport program's saturated-worker map ([`super::SaturatedWorkers`]).
pub trait SaturationMap: Send + Sync {
    /// Marks (`true`) or unmarks worker `worker` as saturated: a marked worker gets no new connections while
    /// any other is not marked.
    fn set_saturated(&self, worker: usize, saturated: bool) -> anyhow::Result<()>;
}

struct WorkerMark {
    index: usize,
    map: Arc<dyn SaturationMap>,
    saturated: bool,
}

thread_local! {
    static WORKER: RefCell<Option<WorkerMark>> = const { RefCell::new(None) };
}

/// Makes this thread worker `index`, whose saturation is written to `map`; starts unmarked.
pub fn register_worker(index: usize, map: Arc<dyn SaturationMap>) {
    WORKER.set(Some(WorkerMark {
        index,
        map,
        saturated: false,
    }));
}

/// Called by admission control with this worker's handshakes in flight and its limit, after each change. Writes
/// the map only when the mark changes (see [`next_saturated`]).
pub fn in_flight_changed(in_flight: usize, limit: usize) {
    WORKER.with_borrow_mut(|worker| {
        let Some(w) = worker else { return };
        let next = next_saturated(w.saturated, in_flight, limit);
        if next == w.saturated {
            return;
        }
        w.saturated = next;
        match w.map.set_saturated(w.index, next) {
            Ok(()) => tracing::debug!(
                worker = w.index,
                saturated = next,
                in_flight,
                limit,
                "steering mark changed"
            ),
            Err(e) => tracing::warn!(
                worker = w.index,
                error = %format!("{e:#}"),
                "cannot write the steering saturation mark"
            ),
        }
    });
}

/// The saturation mark after a change of the in-flight count: set at `limit`, cleared at or below 3/4 of it,
/// unchanged in between (hysteresis, so a worker at its limit does not flap on every handshake).
pub fn next_saturated(saturated: bool, in_flight: usize, limit: usize) -> bool {
    if saturated {
        in_flight > limit - limit / 4
    } else {
        in_flight >= limit.max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn marks_at_the_limit_and_unmarks_at_three_quarters() {
        assert!(!next_saturated(false, 99, 100));
        assert!(next_saturated(false, 100, 100));
        assert!(next_saturated(true, 99, 100));
        assert!(next_saturated(true, 76, 100));
        assert!(!next_saturated(true, 75, 100));
        assert!(!next_saturated(false, 75, 100));
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, bool)>>);

    impl SaturationMap for Recorder {
        fn set_saturated(&self, worker: usize, saturated: bool) -> anyhow::Result<()> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((worker, saturated));
            Ok(())
        }
    }

    #[test]
    fn writes_only_transitions_of_the_registered_worker() {
        let recorder = Arc::new(Recorder::default());
        let map = recorder.clone();
        std::thread::spawn(move || {
            // Unregistered: nothing happens.
            in_flight_changed(8, 8);
            register_worker(3, map);
            for n in [1, 7, 8, 7, 8, 7, 6, 5, 4, 8] {
                in_flight_changed(n, 8);
            }
        })
        .join()
        .expect("worker thread");
        let seen = recorder.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(seen, vec![(3, true), (3, false), (3, true)]);
    }
}
