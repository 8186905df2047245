//! The connection's clock: what the idle keep-alive timeout and the request head read timeout (slowloris)
//! measure. hyper's own `header_read_timeout` only closes the connection, and it also runs while a keep-alive
//! connection is idle; we want a 408 for a head that started and stalled, and a separate, longer idle timeout.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// What the connection is doing, updated by the stream (bytes in) and the service (requests in and out).
/// Times are nanoseconds since `base`, 0 meaning "not set".
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Requests whose response has not finished.
    in_flight: AtomicU32,
    /// When the first byte of a request head arrived with no request in flight (0: none pending).
    head_started: AtomicU64,
    /// When the connection last became idle (no request in flight).
    idle_since: AtomicU64,
    /// Track request heads (HTTP/1.1 only: h2 sends frames of its own while idle).
    track_heads: bool,
    /// Wakes the watchdog when a head starts: its deadline may come before the idle one it sleeps towards.
    head_began: tokio::sync::Notify,
}

/// Why the watchdog fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request for `idle_timeout`: close politely (h1 close, h2 GOAWAY).
    Idle,
    /// A request head started and did not complete within `header_read_timeout`: 408 and close.
    Head,
}

impl Activity {
    /// A fresh connection, idle from now.
    pub fn new(track_heads: bool) -> Self {
        Self {
            base: Instant::now(),
            in_flight: AtomicU32::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(1),
            track_heads,
            head_began: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Request bytes arrived.
    pub fn bytes_in(&self) {
        if self.track_heads
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.now(), Ordering::Relaxed);
            self.head_began.notify_one();
        }
    }

    /// A request head is complete and its handling starts.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    /// A response is complete (or abandoned).
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Resolves when a timeout expires; cheap to poll (one timer per connection, re-armed on wake).
    pub async fn expired(&self, idle_timeout: Duration, head_timeout: Duration) -> Expired {
        let check = idle_timeout.min(head_timeout);
        loop {
            let now = self.now();
            let mut wait = check;
            if self.in_flight.load(Ordering::Relaxed) == 0 {
                let head = self.head_started.load(Ordering::Relaxed);
                if head != 0 {
                    let due = head.saturating_add(nanos(head_timeout));
                    if now >= due {
                        return Expired::Head;
                    }
                    wait = Duration::from_nanos(due - now);
                } else {
                    let due = self
                        .idle_since
                        .load(Ordering::Relaxed)
                        .saturating_add(nanos(idle_timeout));
                    if now >= due {
                        return Expired::Idle;
                    }
                    wait = Duration::from_nanos(due - now);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.head_began.notified() => {}
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_then_head_timeouts() {
        let a = Activity::new(true);
        let got = a
            .expired(Duration::from_secs(60), Duration::from_secs(10))
            .await;
        assert_eq!(got, Expired::Idle);
        assert!(a.base.elapsed() >= Duration::from_secs(60));

        let a = Activity::new(true);
        a.request_started();
        a.request_finished();
        a.bytes_in();
        let started = tokio::time::Instant::now();
        let got = a
            .expired(Duration::from_secs(60), Duration::from_secs(10))
            .await;
        assert_eq!(got, Expired::Head);
        assert!(started.elapsed() < Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_starting_while_idle_times_out_on_its_own_deadline() {
        let a = std::sync::Arc::new(Activity::new(true));
        let started = tokio::time::Instant::now();
        let watch = tokio::spawn({
            let a = a.clone();
            async move {
                a.expired(Duration::from_secs(60), Duration::from_secs(10))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.bytes_in();
        assert_eq!(watch.await.ok(), Some(Expired::Head));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(15) && waited < Duration::from_secs(16),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_while_a_request_is_in_flight() {
        let a = Activity::new(true);
        a.request_started();
        let r = tokio::time::timeout(
            Duration::from_secs(600),
            a.expired(Duration::from_secs(60), Duration::from_secs(10)),
        )
        .await;
        assert!(r.is_err(), "fired while a request was in flight");
    }
}
