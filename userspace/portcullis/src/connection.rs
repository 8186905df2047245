//! One client connection, from accept to close, as its phases in order: [`serve`] runs the handshake
//! ([`establish`], under its timeout), records it ([`record_handshake`]), then hands the connection to the `http`
//! front end or to [`serve_tcp`]: first bytes, upstream connect, preamble (PROXY v2, early data), relay, access
//! log. The TLS I/O is [`TlsConn`]'s.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use rustls::ServerConfig;
use tokio::net::TcpStream;

use crate::handshake::{self, engine::HandshakeEngine, failure::Failure};
use crate::limits::Closed;
use crate::metrics::{ListenerMetrics, ModeLabel, VersionLabel};
use crate::proxy::proxy_v2::{self, ProxyInfo};
use crate::proxy::relay::{self, OnMoved};
use crate::proxy::upstream::Upstreams;
use crate::tls::resolver::SniResolver;
use crate::tls_conn::{self, TlsConn};

/// Everything a connection on one listener needs, shared by the worker's connections.
pub struct ListenerContext {
    /// TLS configuration.
    pub tls: Arc<ServerConfig>,
    /// The certificate choice inside `tls`, asked again (cheaply) to classify handshakes.
    pub certs: Arc<SniResolver>,
    /// The expensive-step engine.
    pub engine: Arc<dyn HandshakeEngine>,
    /// Backends.
    pub upstreams: Arc<Upstreams>,
    /// Metric handles.
    pub metrics: ListenerMetrics,
    /// `tls.handshake_timeout`.
    pub handshake_timeout: std::time::Duration,
    /// `tls.max_client_hello_size`, in bytes.
    pub max_client_hello_size: usize,
    /// Send a PROXY v2 header upstream.
    pub proxy_protocol: bool,
    /// `upstream.idle_timeout`.
    pub idle_timeout: std::time::Duration,
    /// `upstream.lazy_connect`: connect upstream on the client's first byte.
    pub lazy_connect: bool,
    /// `mode = "http"`: the HTTP front end serves the connection after the handshake; `None` is `tcp` mode.
    pub http: Option<Arc<crate::http::HttpContext>>,
    /// `tcp` mode's access log (one line per connection), when `[log] access` is on.
    pub access_log: Option<crate::http::AccessLog>,
    /// The listener's 0-RTT step (`[listeners.early_data]`).
    pub early: crate::handshake::early_data::EarlyData,
    /// Connection limits: the first-byte timeout, and the counters of limit closes.
    pub limits: Arc<crate::limits::Limits>,
}

impl OnMoved for ListenerMetrics {
    fn to_upstream(&self, n: u64) {
        if n > 0 {
            self.to_upstream.inc_by(n);
        }
    }

    fn to_client(&self, n: u64) {
        if n > 0 {
            self.to_client.inc_by(n);
        }
    }
}

/// Serves one accepted connection to the end, phase by phase: the handshake, then the `http` front end or the
/// `tcp` relay. Never panics on client bytes; every outcome is counted. `tcp` has `TCP_NODELAY` from its
/// listening socket (`listener::bind_one`). `held` (the worker's counts of this connection) is dropped when the
/// connection ends.
///
/// Not an `async fn`, and meant to be spawned as it is: this future is the connection task's for its whole life,
/// and an `async fn` stores its arguments twice (as does an async block that awaits a future it captured).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice in its future (BENCHMARKS.md, \"Idle connections\")"
)]
pub fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerContext>,
    held: impl Send + 'static,
) -> impl Future<Output = ()> + Send {
    async move {
        // Captured (dropped when the connection ends), not moved into a local: that would be a second copy.
        let _ = &held;
        let started = Instant::now();
        let m = &ctx.metrics;
        m.accepted.inc();
        m.active.inc();
        let _active = ActiveGuard(&ctx.metrics);

        // Matched where it is awaited, and handed to `after_handshake` (not async) by value: this future is the
        // connection task's, sized once at spawn for the largest of its phases, so an `Established` (over 1 KB)
        // or a phase's state kept here would be paid for the connection's whole life by both modes (a borrowed
        // or moved-from local still has storage until its scope ends). BENCHMARKS.md, "Idle connections".
        let est = match establish(&ctx, tcp, started).await {
            Ok(est) => est,
            Err(refused) => {
                let e = &refused.error;
                if e.failure == Failure::Shed {
                    // Shed before any crypto: reset rather than close, so the socket leaves no TIME_WAIT and
                    // costs nothing more; the client sees ECONNRESET, which clients retry with backoff
                    // (ARCHITECTURE.md).
                    tls_conn::reset_on_close(&refused.tcp);
                }
                m.handshake(VersionLabel::None, ModeLabel::None, e.failure.name(), None);
                tracing::debug!(%peer, cause = e.failure.name(), detail = %e.detail, "handshake failed");
                return;
            }
        };
        after_handshake(&ctx, est, started, peer).await;
    }
}

/// Records the handshake and returns the rest of the connection, boxed: the `http` front end, or `tcp` mode with
/// its [`TcpPhase`] in the same box (an async block owns it and lends it to `serve_tcp`: passed by value, an
/// async fn's argument is stored twice).
fn after_handshake<'a>(
    ctx: &'a Arc<ListenerContext>,
    mut est: handshake::Established,
    started: Instant,
    peer: SocketAddr,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    let done = Instant::now();
    let on_finished = record_handshake(ctx, &mut est, started, done, peer);
    if let Some(http) = &ctx.http {
        let handshake = done.saturating_duration_since(started);
        let finishing = on_finished.map(|on_finished| crate::http::tls_stream::Finishing {
            on_finished,
            deadline: started + ctx.handshake_timeout,
        });
        return Box::pin(crate::http::serve(
            peer,
            est,
            started,
            handshake,
            http.clone(),
            finishing,
        ));
    }
    let facts = ctx.access_log.as_ref().map(|_| {
        Box::new(crate::http::facts::TlsFacts::new(
            &est,
            done.saturating_duration_since(started),
        ))
    });
    let mut phase = TcpPhase {
        tls: est.tls,
        early_data: est.early_data,
        sni: est.hello.sni,
        version: est.version,
        facts,
    };
    Box::pin(async move { serve_tcp(ctx, &mut phase, peer, started).await })
}

/// What `tcp` mode keeps of the handshake while it waits for the client's first bytes and relays: the rest of the
/// `Established` (the ClientHello's inspection, the stage clock) is dropped once counted, so an idle connection
/// does not carry it (BENCHMARKS.md, "Idle connections").
struct TcpPhase {
    tls: TlsConn,
    /// Early data held until the client's Finished: the first bytes for the upstream.
    early_data: Vec<u8>,
    /// The SNI host name (the PROXY v2 header's authority).
    sni: Option<String>,
    version: VersionLabel,
    /// The access log's facts, read at the handshake's end; `None` when the log is off.
    facts: Option<Box<crate::http::facts::TlsFacts>>,
}

/// The handshake stage under `tls.handshake_timeout`, with the listener's inputs. Boxed (and not an `async fn`, so
/// the task's future keeps only the box's pointer): an async fn's state is as large as its largest await, and
/// this future is the task an idle connection keeps, so unboxed the handshake's state (kilobytes) would stay
/// allocated for the connection's whole life (BENCHMARKS.md, "Idle connections").
///
/// The timeout counts from `started`, the connection's start as `serve` read it (no await in between), rather
/// than from a clock read of its own: one read of the clock less per connection, the same deadline.
fn establish(
    ctx: &ListenerContext,
    tcp: TcpStream,
    started: Instant,
) -> Pin<Box<impl Future<Output = Result<handshake::Established, handshake::Refused>> + Send + '_>>
{
    let m = &ctx.metrics;
    let deadline = relay::deadline_at(
        tokio::time::Instant::from_std(started),
        ctx.handshake_timeout,
    );
    Box::pin(handshake::run(
        tcp,
        deadline,
        &ctx.tls,
        &ctx.certs,
        &*ctx.engine,
        ctx.max_client_hello_size,
        &ctx.early,
        // http listeners answer early requests before the client's Finished (RFC 8470); tcp holds them.
        ctx.http.is_some(),
        |hello| count_offers(m, hello),
    ))
}

/// Counts a finished handshake; for one handed over before the client's Finished, returns what records its end
/// (the http stream calls it when it processes the Finished).
fn record_handshake(
    ctx: &Arc<ListenerContext>,
    est: &mut handshake::Established,
    started: Instant,
    done: Instant,
    peer: SocketAddr,
) -> Option<handshake::OnFinished> {
    let m = &ctx.metrics;
    if let Some(reason) = est.hello.malformed {
        tracing::debug!(%peer, reason, "rustls accepted a ClientHello our parser calls malformed");
    }
    if let Some(unfinished) = est.unfinished.take() {
        return Some(handshake_end(ctx, est, unfinished, started, peer));
    }
    m.handshake(
        est.version,
        est.mode,
        "ok",
        Some(done.saturating_duration_since(started).as_secs_f64()),
    );
    m.stages(est.mode, est.stages.durations(done));
    None
}

/// `tcp` mode after the handshake: wait for the client's first bytes (lazy connect), connect upstream, send the
/// PROXY v2 header and the held early data, relay, and log the connection.
///
/// Not an `async fn` (which stores its arguments twice): its future lives in the connection's phase box.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice in its future (BENCHMARKS.md, \"Idle connections\")"
)]
fn serve_tcp<'a>(
    ctx: &'a ListenerContext,
    est: &'a mut TcpPhase,
    peer: SocketAddr,
    started: Instant,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        let m = &ctx.metrics;
        // Early data already counts as the client's first bytes.
        if ctx.lazy_connect
            && est.early_data.is_empty()
            && !first_bytes(ctx, &mut est.tls, peer).await
        {
            return;
        }
        let Some(backend) = ctx.upstreams.pick() else {
            return;
        };
        let upstream = match Box::pin(ctx.upstreams.connect(backend)).await {
            Ok(s) => s,
            Err((cause, e)) => {
                m.upstream_error(backend, cause.name());
                tracing::warn!(%peer, upstream = %backend, cause = cause.name(), error = %e, "upstream connect failed");
                Box::pin(est.tls.close()).await;
                return;
            }
        };
        // Boxed where there is one (once per connection), as is every await here but the wait for the first bytes:
        // this future lives in the connection's phase box for its whole life, sized for its largest await.
        let needs_preamble = ctx.proxy_protocol || !est.early_data.is_empty();
        if needs_preamble && let Err(e) = Box::pin(preamble(ctx, est, &upstream, peer)).await {
            tracing::warn!(%peer, upstream = %backend, error = %e, "upstream write failed");
            return;
        }
        // Boxed, like the handshake and the upstream connect: the task of an idle connection keeps only a pointer to
        // each (BENCHMARKS.md "Idle connections").
        let moved = match Box::pin(relay::relay(&mut est.tls, &upstream, m, ctx.idle_timeout)).await
        {
            Ok(moved) => {
                tracing::trace!(%peer, up = moved.to_upstream, down = moved.to_client, "connection closed");
                Some(moved)
            }
            Err(e) => {
                if matches!(e, relay::RelayError::Idle(_)) {
                    ctx.limits.metrics.closed(Closed::Idle);
                }
                tracing::debug!(%peer, error = %e, "relay ended with an error");
                None
            }
        };
        if let (Some(log), Some(facts)) = (&ctx.access_log, &est.facts) {
            log.log_connection(&crate::http::access_log::ConnectionEntry {
                time: std::time::SystemTime::now()
                    .checked_sub(started.elapsed())
                    .unwrap_or_else(std::time::SystemTime::now),
                listener: m.name(),
                client: peer,
                bytes_in: moved.as_ref().map_or(0, |m| m.to_upstream),
                bytes_out: moved.as_ref().map_or(0, |m| m.to_client),
                duration: started.elapsed().as_secs_f64(),
                upstream: backend,
                tls: facts,
            });
        }
    }
}

/// Lazy connect: waits (under `limits.first_byte_timeout`) for the client's first bytes; `false` when the
/// connection ends instead (closed cleanly when the client left without a byte: no upstream was ever needed).
///
/// The idle wait of a `tcp` connection: its future is kept for as long as the client sends nothing, so it polls
/// the connection in place (`TlsConn::poll_first_client_bytes`: no future per step of the wait) and is not an
/// `async fn` (which stores its arguments twice). BENCHMARKS.md, "Idle connections".
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice in its future (BENCHMARKS.md, \"Idle connections\")"
)]
fn first_bytes<'a>(
    ctx: &'a ListenerContext,
    tls: &'a mut TlsConn,
    peer: SocketAddr,
) -> impl Future<Output = bool> + Send + 'a {
    async move {
        // Looked at once before the timer is armed: the client's first bytes (or its close_notify) often came
        // with its Finished, and then no clock read or timer is needed (the bound counts from the first wait,
        // as before). A `Pending` here leaves the waker registered, and the timed poll below checks again.
        // (A labelled block, so no result of the first look is kept across the timed wait: this future is an
        // idle connection's.)
        let ready = 'ready: {
            if let Poll::Ready(r) =
                std::future::poll_fn(|cx| Poll::Ready(tls.poll_first_client_bytes(cx))).await
            {
                break 'ready Ok(r);
            }
            let first_byte = ctx.limits.settings().first_byte_timeout;
            let first = std::future::poll_fn(|cx| tls.poll_first_client_bytes(cx));
            tokio::time::timeout(first_byte, first).await
        };
        match ready {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                Box::pin(tls.close()).await;
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "client failed before its first request byte");
                false
            }
            Err(_) => {
                ctx.limits.metrics.closed(Closed::FirstByteTimeout);
                tracing::debug!(%peer, "client sent no data after the handshake; closing");
                false
            }
        }
    }
}

/// What the upstream gets before the relay: the PROXY v2 header (when on), then the early data held until the
/// client's Finished (README "0-RTT"): a byte relay cannot tell safe requests apart, so a replayed flight must
/// never reach the upstream.
async fn preamble(
    ctx: &ListenerContext,
    est: &mut TcpPhase,
    upstream: &TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    if ctx.proxy_protocol {
        let local = est.tls.tcp().local_addr().unwrap_or(peer);
        let version = match est.version {
            VersionLabel::Tls13 => Some("TLSv1.3"),
            VersionLabel::Tls12 => Some("TLSv1.2"),
            VersionLabel::None => None,
        };
        let header = proxy_v2::encode(
            peer,
            local,
            &ProxyInfo {
                authority: est.sni.as_deref(),
                alpn: est.tls.alpn_protocol(),
                tls_version: version,
            },
        );
        relay::write_all(upstream, &header).await?;
    }
    if !est.early_data.is_empty() {
        relay::write_all(upstream, &est.early_data).await?;
        ctx.metrics.to_upstream(est.early_data.len() as u64);
        est.early_data = Vec::new();
    }
    Ok(())
}

/// What the end of a handshake handed over before the client's Finished records: the early-data outcome and
/// the handshake metrics, as `serve` records them for a handshake finished in the stage.
fn handshake_end(
    ctx: &Arc<ListenerContext>,
    est: &mut handshake::Established,
    unfinished: handshake::Unfinished,
    started: Instant,
    peer: SocketAddr,
) -> handshake::OnFinished {
    let ctx = ctx.clone();
    let (version, mode) = (est.version, est.mode);
    let stages = std::mem::take(&mut est.stages);
    Box::new(move |result| {
        unfinished.complete(result.as_ref().map(|_| ()));
        let m = &ctx.metrics;
        match result {
            Ok(()) => {
                let done = Instant::now();
                let seconds = done.saturating_duration_since(started).as_secs_f64();
                m.handshake(version, mode, "ok", Some(seconds));
                m.stages(mode, stages.durations(done));
            }
            Err(e) => {
                m.handshake(VersionLabel::None, ModeLabel::None, e.failure.name(), None);
                tracing::debug!(%peer, cause = e.failure.name(), detail = %e.detail, "handshake failed after early data");
            }
        }
    })
}

fn count_offers(m: &ListenerMetrics, hello: &handshake::inspect::HelloInfo) {
    if hello.sni.is_some() {
        m.offer("sni");
    }
    if hello.offers_psk {
        m.offer("psk");
    }
    if hello.offers_early_data {
        m.offer("early_data");
    }
    if hello.offers_tls12_ticket {
        m.offer("tls12_ticket");
    }
    if let Some(fingerprint) = hello.fingerprint {
        m.fingerprint(fingerprint);
    }
}

/// Keeps the active-connection gauge right on every exit path, including cancellation at shutdown.
struct ActiveGuard<'a>(&'a ListenerMetrics);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}
