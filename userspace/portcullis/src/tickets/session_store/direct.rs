//! A worker's own connection to Redis (`redis://` over TCP, RESP2), driven by the tasks that use it: a request
//! appends its packed commands (redis-rs' `Cmd`/`Pipeline` packing) to the connection's output, writes what is
//! pending, and reads replies (redis-rs' `ValueCodec`) until its own have come, handing the replies it reads for
//! other requests to them. No driver task, no channel and no oneshot per command, which redis-rs'
//! `ConnectionManager` costs (BENCHMARKS.md, "The store's CPU: sealing and a direct connection"). A
//! `redis://` URL asking for RESP3 (`?protocol=resp3`) keeps the `ConnectionManager` (`redis.rs`), as would a
//! Unix socket or TLS, which `tls.session_store.url` does not admit in this build (no Redis TLS feature).
//!
//! `redis::ValueCodec` is public but `#[doc(hidden)]` in redis 1.8 (kept for redis-rs' own codec benches):
//! a redis upgrade that drops it fails to build here, and the fallback is the `ConnectionManager` for all.
//!
//! Replies are matched to requests by order: each request owns the next `n` replies. A request dropped before
//! its replies came (a fetch past its deadline) leaves its place in the line, marked abandoned: its replies are
//! read and dropped, never taken as the next request's. A read or write error, an end of stream or a reply
//! that does not parse closes the connection: every request on it fails, and the next request connects again
//! (so a Redis restart costs the requests in flight, as with the `ConnectionManager`).
//!
//! tokio wakes only the task that last asked for a socket's readiness, so whenever a request ends (answered
//! or dropped) it wakes the next one still waiting, which then reads for everyone.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use redis::{RedisResult, Value};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder as _;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffer growth step.
const READ_CHUNK: usize = 4096;

type Connect = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// One thread's connection to one Redis.
pub struct Direct {
    host: String,
    port: u16,
    /// `AUTH` and `SELECT` as the URL asks, sent first on every connection, and how many replies they get.
    setup: (Vec<u8>, usize),
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    /// Connection attempts that failed: a request that waited for one fails with it.
    failed_attempts: u64,
    /// Requests waiting for the connection attempt in progress.
    waiting: Vec<Waker>,
    /// The next request's id (ids are never reused, across connections too).
    next_id: u64,
}

enum State {
    Down,
    /// A request is connecting (it owns the attempt).
    Connecting,
    Up(Up),
}

struct Up {
    stream: TcpStream,
    out: Vec<u8>,
    written: usize,
    input: BytesMut,
    codec: redis::ValueCodec,
    /// Requests waiting for replies, in the order their commands were written.
    line: VecDeque<Place>,
}

/// A request's place in the line of replies.
struct Place {
    id: u64,
    want: usize,
    replies: Vec<Value>,
    waker: Option<Waker>,
    /// Its request is gone: its replies are read and dropped.
    abandoned: bool,
}

impl Place {
    fn complete(&self) -> bool {
        self.replies.len() >= self.want
    }
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// A connection to `info` (made on first use), or `None` when `info` needs the `ConnectionManager`
    /// (not plain TCP, or RESP3).
    pub fn for_info(info: &redis::ConnectionInfo) -> Option<Self> {
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        if settings.protocol() != redis::ProtocolVersion::RESP2 {
            return None;
        }
        let mut setup = redis::Pipeline::new();
        if let Some(password) = settings.password() {
            let auth = setup.cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
        }
        if settings.db() != 0 {
            setup.cmd("SELECT").arg(settings.db());
        }
        Some(Self {
            host: host.clone(),
            port: *port,
            setup: (setup.get_packed_pipeline(), setup.len()),
            inner: Mutex::new(Inner {
                state: State::Down,
                failed_attempts: 0,
                waiting: Vec::new(),
                next_id: 0,
            }),
        })
    }

    /// Sends `packed` (redis-rs-packed commands expecting `replies` replies) and waits for its replies. With
    /// `defer`, the request yields once after queueing its bytes and before writing them, so that a task woken
    /// just before (the runtime's session writer) sends its commands in the same `write`.
    pub fn request(self: &Arc<Self>, packed: Vec<u8>, replies: usize, defer: bool) -> Exchange {
        Exchange {
            direct: self.clone(),
            step: Step::Start { packed, replies },
            defer,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request's exchange with Redis: its replies, in order.
pub struct Exchange {
    direct: Arc<Direct>,
    step: Step,
    defer: bool,
}

enum Step {
    Start {
        packed: Vec<u8>,
        replies: usize,
    },
    /// Another request is connecting; `attempt` is the failure count when we began to wait.
    AwaitConnect {
        packed: Vec<u8>,
        replies: usize,
        attempt: u64,
    },
    Connecting {
        packed: Vec<u8>,
        replies: usize,
        connect: Connect,
    },
    Sent {
        id: u64,
    },
    Done,
}

impl Future for Exchange {
    type Output = RedisResult<Vec<Value>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.step, Step::Done) {
                Step::Start { packed, replies } => {
                    let direct = this.direct.clone();
                    let mut inner = direct.inner();
                    let inner = &mut *inner;
                    match &mut inner.state {
                        State::Up(up) => {
                            let id = inner.next_id;
                            inner.next_id = id.wrapping_add(1);
                            up.out.extend_from_slice(&packed);
                            up.line.push_back(Place {
                                id,
                                want: replies,
                                replies: Vec::with_capacity(replies),
                                waker: None,
                                abandoned: false,
                            });
                            this.step = Step::Sent { id };
                            if std::mem::take(&mut this.defer) {
                                cx.waker().wake_by_ref();
                                return Poll::Pending;
                            }
                        }
                        State::Connecting => {
                            inner.waiting.push(cx.waker().clone());
                            this.step = Step::AwaitConnect {
                                packed,
                                replies,
                                attempt: inner.failed_attempts,
                            };
                            return Poll::Pending;
                        }
                        State::Down => {
                            inner.state = State::Connecting;
                            let (host, port) = (direct.host.clone(), direct.port);
                            this.step = Step::Connecting {
                                packed,
                                replies,
                                connect: Box::pin(connect(host, port)),
                            };
                        }
                    }
                }
                Step::AwaitConnect {
                    packed,
                    replies,
                    attempt,
                } => {
                    let mut inner = this.direct.inner();
                    match inner.state {
                        State::Connecting => {
                            inner.waiting.push(cx.waker().clone());
                            this.step = Step::AwaitConnect {
                                packed,
                                replies,
                                attempt,
                            };
                            return Poll::Pending;
                        }
                        State::Down if inner.failed_attempts != attempt => {
                            return Poll::Ready(Err(lost("could not connect")));
                        }
                        // Connected, or the connecting request went away without an answer: go again.
                        _ => this.step = Step::Start { packed, replies },
                    }
                }
                Step::Connecting {
                    packed,
                    replies,
                    mut connect,
                } => {
                    let done = match connect.as_mut().poll(cx) {
                        Poll::Pending => {
                            this.step = Step::Connecting {
                                packed,
                                replies,
                                connect,
                            };
                            return Poll::Pending;
                        }
                        Poll::Ready(done) => done,
                    };
                    let mut inner = this.direct.inner();
                    for w in inner.waiting.drain(..) {
                        w.wake();
                    }
                    match done {
                        Ok(stream) => {
                            let mut up = Up {
                                stream,
                                out: Vec::new(),
                                written: 0,
                                input: BytesMut::with_capacity(READ_CHUNK),
                                codec: redis::ValueCodec::default(),
                                line: VecDeque::new(),
                            };
                            let (setup, n) = &this.direct.setup;
                            if *n > 0 {
                                // Checked by the requests after it: a failed AUTH fails them (NOAUTH).
                                up.out.extend_from_slice(setup);
                                up.line.push_back(Place {
                                    id: inner.next_id,
                                    want: *n,
                                    replies: Vec::new(),
                                    waker: None,
                                    abandoned: true,
                                });
                                inner.next_id = inner.next_id.wrapping_add(1);
                            }
                            inner.state = State::Up(up);
                            this.step = Step::Start { packed, replies };
                        }
                        Err(e) => {
                            inner.state = State::Down;
                            inner.failed_attempts = inner.failed_attempts.wrapping_add(1);
                            return Poll::Ready(Err(e.into()));
                        }
                    }
                }
                Step::Sent { id } => {
                    let mut inner = this.direct.inner();
                    let State::Up(up) = &mut inner.state else {
                        return Poll::Ready(Err(lost("connection closed")));
                    };
                    if let Err(e) = up.drive(cx, id) {
                        tracing::debug!(error = %e, "session store connection to Redis closed");
                        if let State::Up(up) = std::mem::replace(&mut inner.state, State::Down) {
                            for place in up.line {
                                if let Some(w) = place.waker {
                                    w.wake();
                                }
                            }
                        }
                        return Poll::Ready(Err(e));
                    }
                    let Some(at) = up.line.iter().position(|p| p.id == id) else {
                        return Poll::Ready(Err(lost("connection closed")));
                    };
                    let answered = up.line.get(at).is_some_and(Place::complete);
                    if answered && let Some(place) = up.line.remove(at) {
                        up.wake_next();
                        return Poll::Ready(Ok(place.replies));
                    }
                    if let Some(place) = up.line.get_mut(at) {
                        match &place.waker {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => place.waker = Some(cx.waker().clone()),
                        }
                    }
                    this.step = Step::Sent { id };
                    return Poll::Pending;
                }
                Step::Done => return Poll::Ready(Err(lost("polled after its answer"))),
            }
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        match self.step {
            Step::Connecting { .. } => {
                // Nobody connects now: the waiting requests try themselves.
                let mut inner = self.direct.inner();
                if matches!(inner.state, State::Connecting) {
                    inner.state = State::Down;
                }
                for w in inner.waiting.drain(..) {
                    w.wake();
                }
            }
            Step::Sent { id } => {
                let mut inner = self.direct.inner();
                if let State::Up(up) = &mut inner.state
                    && let Some(at) = up.line.iter().position(|p| p.id == id)
                {
                    let answered = up.line.get(at).is_some_and(Place::complete);
                    if answered {
                        up.line.remove(at);
                    } else if let Some(place) = up.line.get_mut(at) {
                        place.abandoned = true;
                        place.waker = None;
                    }
                    up.wake_next();
                }
            }
            _ => {}
        }
    }
}

impl Up {
    /// Writes what is pending and reads what has come, handing out replies, until request `id` has its
    /// replies (then it stops: reading on until the socket says "would block" costs a `recvfrom` per request;
    /// the next request waiting reads on, woken by [`Up::wake_next`]). Registers `cx` for the socket's
    /// readiness when it would block.
    fn drive(&mut self, cx: &mut Context<'_>, id: u64) -> RedisResult<()> {
        while self.written < self.out.len() {
            let pending = self.out.get(self.written..).unwrap_or_default();
            match self.stream.try_write(pending) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Err(e.into()),
                        Poll::Pending => break,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        loop {
            if self.line.iter().any(|p| p.id == id && p.complete()) {
                return Ok(());
            }
            self.input.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.input) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "Redis closed the connection",
                    )
                    .into());
                }
                Ok(_) => {
                    while let Some(reply) = self.codec.decode(&mut self.input)? {
                        self.deliver(reply)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.stream.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Err(e.into()),
                        Poll::Pending => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Gives `reply` to the first request still short of replies.
    fn deliver(&mut self, reply: Value) -> RedisResult<()> {
        let Some(place) = self.line.iter_mut().find(|p| !p.complete()) else {
            return Err(lost(
                "a reply nobody asked for (the connection is out of step)",
            ));
        };
        place.replies.push(reply);
        if place.complete()
            && let Some(w) = place.waker.take()
        {
            w.wake();
        }
        while self
            .line
            .front()
            .is_some_and(|p| p.abandoned && p.complete())
        {
            self.line.pop_front();
        }
        Ok(())
    }

    /// Wakes the first request still waiting, so that one is registered for the socket's readiness.
    fn wake_next(&mut self) {
        if let Some(w) = self
            .line
            .iter_mut()
            .find(|p| !p.abandoned && !p.complete())
            .and_then(|p| p.waker.take())
        {
            w.wake();
        }
    }
}

async fn connect(host: String, port: u16) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection to Redis at {host}:{port} within {CONNECT_TIMEOUT:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn lost(why: &str) -> redis::RedisError {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("session store connection to Redis: {why}"),
    )
    .into()
}

#[cfg(test)]
mod tests {
    //! Against a scripted server on loopback (the real `redis-server` is in `tests/tests/zero_rtt*.rs`): it
    //! decodes each command with redis-rs' codec and answers `ECHO x` with `x` when the test says so, so
    //! replies can be held back, and closes the connection on `QUIT`.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A server that answers each command once the test sends a permit; `None` as a permit closes the
    /// connection. Every accepted connection is counted.
    async fn scripted() -> (u16, mpsc::UnboundedSender<Option<()>>, Arc<Mutex<u32>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (permits, mut rx) = mpsc::unbounded_channel::<Option<()>>();
        let accepted = Arc::new(Mutex::new(0u32));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                *count.lock().expect("count") += 1;
                let mut codec = redis::ValueCodec::default();
                let mut input = BytesMut::new();
                'conn: loop {
                    let Some(command) = codec.decode(&mut input).expect("a command") else {
                        if s.read_buf(&mut input).await.unwrap_or(0) == 0 {
                            break 'conn;
                        }
                        continue;
                    };
                    let Some(Some(())) = rx.recv().await else {
                        break 'conn;
                    };
                    let Value::Array(args) = command else {
                        panic!("not a command: {command:?}")
                    };
                    let Some(Value::BulkString(last)) = args.last() else {
                        panic!("no argument")
                    };
                    let mut reply = format!("${}\r\n", last.len()).into_bytes();
                    reply.extend_from_slice(last);
                    reply.extend_from_slice(b"\r\n");
                    if s.write_all(&reply).await.is_err() {
                        break 'conn;
                    }
                }
            }
        });
        (port, permits, accepted)
    }

    fn direct(port: u16) -> Arc<Direct> {
        let info =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://127.0.0.1:{port}"))
                .expect("url");
        Arc::new(Direct::for_info(&info).expect("a direct connection for redis://"))
    }

    fn echo(direct: &Arc<Direct>, what: &str) -> Exchange {
        direct.request(redis::cmd("ECHO").arg(what).get_packed_command(), 1, false)
    }

    fn text(replies: RedisResult<Vec<Value>>) -> Vec<String> {
        replies
            .expect("replies")
            .into_iter()
            .map(|v| redis::from_redis_value::<String>(v).expect("a string"))
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replies_go_to_their_requests_in_order_also_pipelined() {
        let (port, permits, accepted) = scripted().await;
        let d = direct(port);
        let (a, b) = (tokio::spawn(echo(&d, "a")), tokio::spawn(echo(&d, "b")));
        let mut pipe = redis::pipe();
        pipe.cmd("ECHO").arg("c1").cmd("ECHO").arg("c2");
        let c = tokio::spawn(d.request(pipe.get_packed_pipeline(), 2, true));
        for _ in 0..4 {
            permits.send(Some(())).expect("server");
        }
        assert_eq!(text(b.await.expect("task")), ["b"]);
        assert_eq!(text(a.await.expect("task")), ["a"]);
        assert_eq!(text(c.await.expect("task")), ["c1", "c2"]);
        assert_eq!(*accepted.lock().expect("count"), 1, "one connection");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_request_s_late_reply_is_not_the_next_one_s() {
        let (port, permits, _) = scripted().await;
        let d = direct(port);
        // Connected first, so the timed-out request's command surely went out.
        permits.send(Some(())).expect("server");
        assert_eq!(text(echo(&d, "warm").await), ["warm"]);
        let late = tokio::time::timeout(Duration::from_millis(50), echo(&d, "late")).await;
        assert!(late.is_err(), "no permit: no reply in time");
        permits.send(Some(())).expect("server");
        permits.send(Some(())).expect("server");
        assert_eq!(text(echo(&d, "next").await), ["next"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_connection_fails_its_requests_and_the_next_one_reconnects() {
        let (port, permits, accepted) = scripted().await;
        let d = direct(port);
        permits.send(Some(())).expect("server");
        assert_eq!(text(echo(&d, "one").await), ["one"]);
        permits.send(None).expect("server");
        assert!(echo(&d, "lost").await.is_err(), "in flight when closed");
        permits.send(Some(())).expect("server");
        assert_eq!(text(echo(&d, "again").await), ["again"]);
        assert_eq!(*accepted.lock().expect("count"), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nobody_listening_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let d = direct(port);
        let (a, b) = (tokio::spawn(echo(&d, "a")), tokio::spawn(echo(&d, "b")));
        assert!(a.await.expect("task").is_err());
        assert!(b.await.expect("task").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn many_at_once_with_some_dropped_each_gets_its_own_reply() {
        let (port, permits, accepted) = scripted().await;
        for _ in 0..100_000 {
            permits.send(Some(())).expect("server");
        }
        let d = direct(port);
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let d = d.clone();
                tokio::spawn(async move {
                    let mut answered = 0;
                    for i in 0..50 {
                        let what = format!("{t}-{i}");
                        // Every third request gives up at once, some with its command written.
                        let patience = if i % 3 == 0 { 0 } else { 2_000_000 };
                        let exchange = d.request(
                            redis::cmd("ECHO").arg(&what).get_packed_command(),
                            1,
                            i % 2 == 0,
                        );
                        match tokio::time::timeout(Duration::from_micros(patience), exchange).await
                        {
                            Ok(replies) => {
                                assert_eq!(text(replies), [what]);
                                answered += 1;
                            }
                            Err(_) => assert_eq!(patience, 0, "{what} waited 2 s"),
                        }
                    }
                    answered
                })
            })
            .collect();
        let mut answered = 0;
        for t in tasks {
            answered += tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("no request hangs")
                .expect("task");
        }
        assert!(answered >= 64 * 33, "{answered}");
        assert_eq!(*accepted.lock().expect("count"), 1, "one connection");
    }

    #[test]
    fn only_plain_tcp_resp2_goes_direct() {
        let info = |url: &str| redis::IntoConnectionInfo::into_connection_info(url).expect("url");
        assert!(Direct::for_info(&info("redis://127.0.0.1:1/2")).is_some());
        assert!(Direct::for_info(&info("redis://127.0.0.1:1/?protocol=resp3")).is_none());
        assert!(Direct::for_info(&info("redis+unix:///tmp/redis.sock")).is_none());
    }
}
