//! HTTP/1.1 connections park while idle: after [`PARK_AFTER`] without a request ([`PARK_AFTER_RETURNING`] once the
//! connection came back that soon after a park), hyper's connection (its read
//! and write buffers, 24 KiB after a request, and its dispatcher) is taken apart and dropped; the connection keeps
//! only its TLS stream and waits for the client's next byte, then serves it with a fresh hyper connection.
//! BENCHMARKS.md ("Idle connections", `http` mode): 41 KiB per idle keep-alive connection before, most of it
//! hyper's buffers.
//!
//! Parking is safe only when hyper holds nothing the next request needs: no request in flight and no request body
//! still being read (`watchdog::Busy`), no partial head (all from [`Activity`]), and nothing hyper wrote left
//! unflushed (tracked by [`Watched`], the stream hyper gets).
//! Bytes hyper read and did not parse yet (a pipelined partial head) come back from `into_parts` and are served
//! first by the next hyper connection. h2 connections do not park (hyper's h2 has no such seam).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use super::HttpContext;
use super::proxy::{self, ConnInfo};
use super::tls_stream::TlsStream;
use super::watchdog::{Activity, Expired};
use crate::shutdown::Phase;

/// How long an HTTP/1.1 connection stays idle before it parks, until it shows it is a client that comes back
/// soon ([`PARK_AFTER_RETURNING`]). Short, because every connection inside this window holds hyper's 24-32 KiB of
/// buffers, and the more do at once, the more free memory the worker's heap keeps between live chunks once they
/// park: 100 ms read 10.4-10.8 KiB per idle connection, 10 ms 10.0-10.2 (2 ms no lower; BENCHMARKS.md, "Idle
/// connections", fourth round). A keep-alive client sending back to back (the next request one round trip after
/// the response) never waits this long.
pub const PARK_AFTER: Duration = Duration::from_millis(10);

/// The window once the connection's next request came within this long of the connection going quiet (after a
/// park): a client pausing between requests (a page's later fetches, a poll loop) would otherwise pay for
/// rebuilding hyper's connection and buffers on every request, ≈ 20 µs of CPU each (BENCHMARKS.md, "Idle
/// connections", adaptive park). It pays once; a connection that goes quiet for longer parks after this window.
pub const PARK_AFTER_RETURNING: Duration = Duration::from_millis(100);

/// How long the last words of a parked connection closing (close_notify) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 on `stream` until the connection ends (`None`), or a request head stalls
/// (`Some(Expired::Head)`: the caller answers 408); parks it whenever it is quiet.
///
/// Not an `async fn` (nor is [`park`]): an async fn stores its arguments twice, and this future is the one a
/// parked connection keeps.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice in its future (BENCHMARKS.md, \"Idle connections\")"
)]
pub fn serve_h1<'a>(
    ctx: &'a HttpContext,
    stream: TlsStream,
    info: Arc<ConnInfo>,
    activity: &'a Arc<Activity>,
) -> impl Future<Output = Option<Expired>> + Send + 'a {
    async move {
        let service = service_fn(move |req| {
            let info = info.clone();
            async move { Ok::<_, Infallible>(proxy::handle(info, req).await) }
        });
        let mut phase = ctx.phase.clone();
        let mut prefix = Bytes::new();
        let mut park_after = PARK_AFTER;
        loop {
            let io = Watched {
                stream: stream.clone(),
                prefix: std::mem::take(&mut prefix),
                activity: activity.clone(),
            };
            // Active, boxed: hyper's connection and the watch over it exist only while the connection is active, so
            // the future a parked connection keeps has no room for them.
            let active = Box::pin(async {
                let mut conn = ctx
                    .h1
                    .serve_connection(TokioIo::new(io), service.clone())
                    .with_upgrades();
                let mut closing = *phase.borrow_and_update() != Phase::Running;
                if closing {
                    Pin::new(&mut conn).graceful_shutdown();
                }
                let config = &ctx.config;
                loop {
                    tokio::select! {
                        result = &mut conn => {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "http connection ended with an error");
                            }
                            return Active::Done(None);
                        }
                        changed = phase.changed(), if !closing => {
                            if changed.is_err() || *phase.borrow() != Phase::Running {
                                // `Connection: close` on the response in flight, or closed now if idle.
                                Pin::new(&mut conn).graceful_shutdown();
                                closing = true;
                            }
                        }
                        expired = activity.expired_or_quiet(config.idle_timeout, config.header_read_timeout, Some(park_after)), if !closing => {
                            match expired {
                                Expired::Head => return Active::Done(Some(Expired::Head)),
                                Expired::Idle => {
                                    Pin::new(&mut conn).graceful_shutdown();
                                    closing = true;
                                }
                                Expired::Quiet => break,
                            }
                        }
                    }
                }
                // Quiet: take hyper apart, keeping only what it read and did not parse.
                match conn.into_parts() {
                    Some(parts) => Active::Quiet(parts.read_buf),
                    None => Active::Done(None),
                }
            });
            let read_buf = match active.await {
                Active::Quiet(read_buf) => read_buf,
                Active::Done(expired) => return expired,
            };
            if !read_buf.is_empty() {
                prefix = read_buf;
                // A partial head hyper read during the last request: its head read timeout starts now.
                activity.bytes_in();
                continue;
            }
            // Even empty, hyper's read buffer keeps its whole allocation alive.
            drop(read_buf);
            ctx.metrics.parked.inc();
            // Parked: wait for the client's next byte, the idle timeout or the drain.
            match park(ctx, &stream, activity, &mut phase).await {
                Some(first) => {
                    if activity.quiet_for() < PARK_AFTER_RETURNING {
                        park_after = PARK_AFTER_RETURNING;
                    }
                    prefix = first;
                }
                None => return None,
            }
        }
    }
}

/// How an active period of an HTTP/1.1 connection ended.
enum Active {
    /// Quiet for the park window: hyper was taken apart; what it read and did not parse.
    Quiet(Bytes),
    /// The connection is done (`Some(Expired::Head)`: answer 408).
    Done(Option<Expired>),
}

/// Waits, holding only the TLS stream, until the client sends a byte (returned, to be served first) or the
/// connection ends: client gone, error, idle timeout or drain (`None`; closed with close_notify where polite).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice in its future (BENCHMARKS.md, \"Idle connections\")"
)]
fn park<'a>(
    ctx: &'a HttpContext,
    stream: &'a TlsStream,
    activity: &'a Activity,
    phase: &'a mut tokio::sync::watch::Receiver<Phase>,
) -> impl Future<Output = Option<Bytes>> + Send + 'a {
    async move {
        // One timer for both waits (the future of a parked connection has room for one): the idle timeout, then the
        // close's. The idle timeout only: a head's timeout cannot start while parked (its first byte ends the park).
        let timer = tokio::time::sleep_until(activity.idle_deadline(ctx.config.idle_timeout));
        tokio::pin!(timer);
        if *phase.borrow_and_update() == Phase::Running {
            let mut reader = stream.clone();
            let mut byte = [0u8; 1];
            loop {
                tokio::select! {
                    read = reader.read(&mut byte) => {
                        match read {
                            Ok(1) => return Some(Bytes::copy_from_slice(&byte)),
                            Ok(_) => break,
                            Err(e) => {
                                tracing::debug!(error = %e, "parked http connection ended with an error");
                                return None;
                            }
                        }
                    }
                    changed = phase.changed() => {
                        if changed.is_err() || *phase.borrow() != Phase::Running {
                            break;
                        }
                    }
                    () = &mut timer => break,
                }
            }
        }
        // As hyper closes an idle connection: close_notify, then FIN.
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + CLOSE_TIMEOUT);
        let mut writer = stream.clone();
        tokio::select! {
            _ = writer.shutdown() => {}
            () = timer => {}
        }
        None
    }
}

/// The stream hyper gets: the TLS stream after `prefix`, telling `activity` what hyper left unflushed.
struct Watched {
    stream: TlsStream,
    prefix: Bytes,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Let go of the allocation behind it (hyper's old read buffer, after a pipelined head).
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.activity.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
