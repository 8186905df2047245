//! `mode = "http"` listeners: HTTP/1.1 and h2 from clients (chosen by ALPN) on hyper, HTTP/1.1 to upstreams over
//! a per-worker keep-alive pool, per-request TLS facts, the access log and request metrics.
//!
//! ```text
//! handshake::run ─► TlsStream (rustls as AsyncRead/Write) ─► hyper server (h1 | h2 by ALPN) ─► proxy::handle
//!                    tls_stream.rs                             serve() below                    proxy.rs
//!   ─► headers.rs (hop-by-hop, Forwarded) ─► pool.rs (per-worker HTTP/1.1 keep-alive) ─► upstream
//!   ◄─ body.rs (streamed, counted; at its end: metrics.rs, access_log.rs)
//! ```
//!
//! 0-RTT (RFC 8470): a connection handed over before the client's Finished is read and completed by
//! `tls_stream.rs`; `early.rs` decides per early request (forward with `Early-Data: 1`, hold, 425, retry).
//! An HTTP/1.1 connection quiet for 10 ms (100 ms once it came back that soon after a park) parks (`park.rs`):
//! hyper's connection and buffers are dropped until the client's next byte (BENCHMARKS.md, "Idle connections").
//!
//! Timeouts: `watchdog.rs` (idle keep-alive; a stalled request head gets 408), `upstream_response_timeout` in
//! `proxy.rs` (504), the connect timeout in `proxy/upstream.rs` (504). Drain: on SIGTERM `serve` asks hyper for
//! a graceful shutdown (HTTP/1.1 `Connection: close` on the next response, h2 GOAWAY).

pub mod access_log;
pub mod body;
pub mod config;
pub mod early;
pub mod facts;
pub mod headers;
pub mod host;
pub mod metrics;
pub mod park;
pub mod pool;
pub mod proxy;
pub mod tls_stream;
pub mod watchdog;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use crate::handshake::Established;
use crate::proxy::upstream::Upstreams;
use crate::shutdown::Phase;
pub use access_log::AccessLog;
pub use config::{HttpConfig, LogConfig};
use facts::TlsFacts;
pub use metrics::HttpMetrics;
use proxy::ConnInfo;
use tls_stream::TlsStream;
use watchdog::{Activity, Expired};

/// The answer to a request head that did not arrive within `header_read_timeout` (RFC 9110 §15.5.9).
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// What every connection of one `http` listener shares.
pub struct HttpContext {
    /// The listener's metric label.
    pub listener: Arc<str>,
    /// `[http]`.
    pub config: HttpConfig,
    /// Backends, round robin.
    pub upstreams: Arc<Upstreams>,
    /// Request metrics.
    pub metrics: HttpMetrics,
    /// The access log, when on.
    pub access_log: Option<AccessLog>,
    /// The daemon's phase: draining starts the graceful shutdown of every connection.
    pub phase: watch::Receiver<Phase>,
    /// The rules for requests in early data (`[listeners.early_data]`); `None` without 0-RTT.
    pub early: Option<early::EarlyPolicy>,
    /// HTTP/1.1 connections are served by hyper's h1 builder directly: `park.rs` takes its connections apart.
    h1: hyper::server::conn::http1::Builder,
    h2: auto::Builder<TokioExecutor>,
}

impl HttpContext {
    /// A listener's context; hyper's builders are made once here from `config`.
    pub fn new(
        listener: &str,
        config: HttpConfig,
        upstreams: Arc<Upstreams>,
        metrics: HttpMetrics,
        access_log: Option<AccessLog>,
        phase: watch::Receiver<Phase>,
    ) -> Self {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            // The watchdog measures head reads (hyper's timer would also run while idle, and only closes).
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(config.max_head_bytes)
            .max_headers(config.max_headers);
        let mut base = auto::Builder::new(TokioExecutor::new());
        base.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_concurrent_streams)
            .initial_stream_window_size(config.h2_stream_window)
            .initial_connection_window_size(config.h2_connection_window)
            .max_header_list_size(config.h2_max_header_list_bytes);
        Self {
            listener: Arc::from(listener),
            h1,
            h2: base.http2_only(),
            config,
            upstreams,
            metrics,
            access_log,
            phase,
            early: None,
        }
    }

    /// The listener's rules for requests in early data, when it accepts 0-RTT.
    #[must_use]
    pub fn with_early(mut self, early: Option<early::EarlyPolicy>) -> Self {
        if early.is_some() {
            self.metrics.early_listener(&self.listener);
        }
        self.early = early;
        self
    }
}

/// Serves HTTP on a TLS connection until it closes, the idle timeout, or the drain ends it. `finishing`: the
/// handshake was handed over before the client's Finished (0-RTT): early requests are served meanwhile, and the
/// connection ends if the Finished does not come by its deadline.
///
/// Not an `async fn`: its arguments (the `Established`, over 1 KB) would stay in the future for the connection's
/// life. The state is built here and the future holds only what it uses.
pub fn serve(
    peer: SocketAddr,
    est: Established,
    accepted: Instant,
    handshake: Duration,
    ctx: Arc<HttpContext>,
    finishing: Option<tls_stream::Finishing>,
) -> impl Future<Output = ()> + Send {
    let mut facts = TlsFacts::new(&est, handshake);
    facts.early_data |= finishing.is_some();
    let h2 = facts.is_h2();
    let unfinished = finishing.is_some();
    let activity = Arc::new(Activity::new(!h2));
    let stream = TlsStream::new(est.tls, activity.clone(), est.early_data, finishing);
    let info = Arc::new(ConnInfo {
        ctx: ctx.clone(),
        peer,
        facts,
        accepted,
        activity: activity.clone(),
        first: AtomicBool::new(true),
        upgraded: std::sync::Mutex::new(None),
        early: stream.early_view(),
    });
    async move {
        // The handshake's end is driven beside hyper, in this task: hyper does not read while an h1 request
        // waits for it. A failed or late Finished ends the connection. Boxed, and only for a connection handed over
        // before the client's Finished: the others' futures keep no room for its timer.
        let finish = unfinished.then(|| Box::pin(stream.finish_handshake()));
        let handshake_end = async {
            if let Some(finish) = finish
                && !finish.await
            {
                return;
            }
            std::future::pending::<()>().await;
        };
        let drive = async {
            if h2 {
                // Boxed: hyper's h2 connection lives inline in it, which an idle HTTP/1.1 connection should not
                // pay for.
                Box::pin(drive_h2(&ctx, stream.clone(), info.clone(), &activity)).await
            } else {
                park::serve_h1(&ctx, stream.clone(), info.clone(), &activity).await
            }
        };
        let expired = tokio::select! {
            expired = drive => expired,
            () = handshake_end => return,
        };
        if stream.is_finishing() {
            // hyper is done (e.g. `Connection: close` answered half-RTT): wait for the Finished, so that a client
            // which sends it is not counted as a failed handshake.
            Box::pin(stream.finish_handshake()).await;
        }
        if expired == Some(Expired::Head) {
            tracing::debug!(peer = %info.peer, "request head not received in time: 408");
            let last_words =
                tokio::time::timeout(Duration::from_secs(1), stream.last_words(REQUEST_TIMEOUT));
            let _ = Box::pin(last_words).await;
            return;
        }
        let relay = info.upgraded.lock().ok().and_then(|mut r| r.take());
        if let Some(relay) = relay {
            let _ = relay.await;
        }
    }
}

/// Runs hyper's h2 on the connection; returns which timeout, if any, ended it. hyper's connection (and its handle
/// on the stream) is dropped on return. (HTTP/1.1: `park::serve_h1`.)
async fn drive_h2(
    ctx: &HttpContext,
    stream: TlsStream,
    info: Arc<ConnInfo>,
    activity: &Activity,
) -> Option<Expired> {
    let service = service_fn(move |req| {
        let info = info.clone();
        async move { Ok::<_, Infallible>(proxy::handle(info, req).await) }
    });
    let conn = ctx
        .h2
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut phase = ctx.phase.clone();
    let mut closing = *phase.borrow_and_update() != Phase::Running;
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                return None;
            }
            changed = phase.changed(), if !closing => {
                if changed.is_err() || *phase.borrow() != Phase::Running {
                    // GOAWAY.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            expired = activity.expired(ctx.config.idle_timeout, ctx.config.header_read_timeout), if !closing => {
                match expired {
                    Expired::Head => return Some(Expired::Head),
                    Expired::Idle | Expired::Quiet => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}
