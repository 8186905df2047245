//! The connection's clock: what the idle keep-alive timeout and the request head read timeout (slowloris)
//! measure. hyper's own `header_read_timeout` only closes the connection, and it also runs while a keep-alive
//! connection is idle; we want a 408 for a head that started and stalled, and a separate, longer idle timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
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
    /// hyper wrote bytes that its last flush has not yet seen through (`park.rs`: not parked meanwhile, or they
    /// would be lost with hyper's write buffer).
    unflushed: AtomicBool,
    /// Wakes the watchdog when a head starts (its deadline may come before the idle one it sleeps towards) and
    /// when the last request in flight ends (the idle and quiet clocks start).
    changed: tokio::sync::Notify,
}

/// Why the watchdog fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request for `idle_timeout`: close politely (h1 close, h2 GOAWAY).
    Idle,
    /// No request, no partial head and nothing unflushed for the `park_after` of [`Activity::expired_or_quiet`]:
    /// the HTTP/1.1 connection can park (`park.rs`).
    Quiet,
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
            unflushed: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// hyper wrote response bytes (into its stream): they are not on their way until [`Self::flushed`].
    pub fn wrote(&self) {
        self.unflushed.store(true, Ordering::Relaxed);
    }

    /// A flush completed: everything hyper wrote reached rustls and the socket.
    pub fn flushed(&self) {
        self.unflushed.store(false, Ordering::Relaxed);
    }

    /// Request bytes arrived.
    pub fn bytes_in(&self) {
        if self.track_heads
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.now(), Ordering::Relaxed);
            self.changed.notify_one();
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
            self.changed.notify_one();
        }
    }

    /// When the idle timeout ends the connection if no request comes before: for a parked connection, whose
    /// next byte ends the park, so nothing else can move the deadline (`park.rs` sleeps until it, with no
    /// waiter on [`Activity`]). A deadline past what `Instant` can hold is a year away.
    pub fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        let since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
        self.base
            .checked_add(since)
            .and_then(|t| t.checked_add(idle_timeout))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400))
    }

    /// How long the connection has been without a request in flight: since the last response ended, or since it
    /// was accepted.
    pub fn quiet_for(&self) -> Duration {
        let since = self.idle_since.load(Ordering::Relaxed);
        Duration::from_nanos(self.now().saturating_sub(since))
    }

    /// Resolves when a timeout expires; cheap to poll (one timer per connection, re-armed on wake).
    pub async fn expired(&self, idle_timeout: Duration, head_timeout: Duration) -> Expired {
        self.expired_or_quiet(idle_timeout, head_timeout, None)
            .await
    }

    /// [`Self::expired`], and [`Expired::Quiet`] once the connection has been idle for `park_after` (if given) with
    /// nothing left to flush.
    pub async fn expired_or_quiet(
        &self,
        idle_timeout: Duration,
        head_timeout: Duration,
        park_after: Option<Duration>,
    ) -> Expired {
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
                    let since = self.idle_since.load(Ordering::Relaxed);
                    let due = since.saturating_add(nanos(idle_timeout));
                    if now >= due {
                        return Expired::Idle;
                    }
                    wait = Duration::from_nanos(due - now);
                    if let Some(after) = park_after {
                        let quiet = since.saturating_add(nanos(after));
                        if now < quiet {
                            wait = wait.min(Duration::from_nanos(quiet - now));
                        } else if !self.unflushed.load(Ordering::Relaxed) {
                            return Expired::Quiet;
                        } else {
                            // A slow reader: look again later (a flush does not wake the watchdog).
                            wait = wait.min(after);
                        }
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// A request body on its way upstream that keeps its connection busy (no idle timeout, no park) until dropped:
/// hyper may still be reading it from the client after the response ended (an upstream that answers before the
/// upload is done), and parking then would cut the body short.
pub struct Busy<B> {
    inner: B,
    activity: Arc<Activity>,
}

impl<B> Busy<B> {
    /// Wraps a request body; the connection counts one more request in flight until it is dropped.
    pub fn new(inner: B, activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self { inner, activity }
    }
}

impl<B> Drop for Busy<B> {
    fn drop(&mut self) {
        self.activity.request_finished();
    }
}

impl<B: Body + Unpin> Body for Busy<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    async fn quiet_after_park_after_unless_unflushed_or_busy() {
        let (idle, head, park) = (
            Duration::from_secs(60),
            Duration::from_secs(10),
            Some(Duration::from_millis(100)),
        );
        let a = Activity::new(true);
        let started = tokio::time::Instant::now();
        assert_eq!(a.expired_or_quiet(idle, head, park).await, Expired::Quiet);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(110),
            "{waited:?}"
        );

        // Bytes hyper wrote and has not flushed keep the connection awake until the idle timeout.
        a.wrote();
        assert_eq!(a.expired_or_quiet(idle, head, park).await, Expired::Idle);
        a.flushed();

        // A request in flight: no quiet; after it, quiet counts from its end.
        let a = Activity::new(true);
        a.request_started();
        let r = tokio::time::timeout(Duration::from_secs(1), a.expired_or_quiet(idle, head, park))
            .await;
        assert!(r.is_err(), "quiet while a request was in flight");
        a.request_finished();
        let ended = tokio::time::Instant::now();
        assert_eq!(a.expired_or_quiet(idle, head, park).await, Expired::Quiet);
        let waited = ended.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(110),
            "{waited:?}"
        );

        // The watchdog already waiting while the request runs wakes when it ends.
        let waiting = tokio::spawn({
            let a = std::sync::Arc::new(Activity::new(true));
            a.request_started();
            async move {
                let started = tokio::time::Instant::now();
                let watch = tokio::spawn({
                    let a = a.clone();
                    async move { a.expired_or_quiet(idle, head, park).await }
                });
                tokio::time::sleep(Duration::from_secs(5)).await;
                a.request_finished();
                (watch.await.ok(), started.elapsed())
            }
        });
        let (got, waited) = waiting.await.expect("task");
        assert_eq!(got, Some(Expired::Quiet));
        assert!(
            waited >= Duration::from_millis(5_100) && waited < Duration::from_millis(5_110),
            "{waited:?}"
        );

        // A partial head: its own timeout, never quiet.
        a.bytes_in();
        assert_eq!(a.expired_or_quiet(idle, head, park).await, Expired::Head);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_body_still_open_keeps_the_connection_busy() {
        let a = std::sync::Arc::new(Activity::new(true));
        let park = Some(Duration::from_millis(100));
        let body = Busy::new(http_body_util::Empty::<bytes::Bytes>::new(), a.clone());
        // The response ended; the request body is still being read.
        a.request_started();
        a.request_finished();
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            a.expired_or_quiet(Duration::from_secs(60), Duration::from_secs(10), park),
        )
        .await;
        assert!(r.is_err(), "quiet while a request body was open");
        drop(body);
        assert_eq!(
            a.expired_or_quiet(Duration::from_secs(60), Duration::from_secs(10), park)
                .await,
            Expired::Quiet
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
