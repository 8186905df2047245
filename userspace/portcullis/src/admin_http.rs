//! The plain-HTTP admin endpoint on its own listener: `/metrics` (Prometheus text), `/fingerprints` (the most
//! frequent ClientHello fingerprints lately, `seen_fingerprints`), `/healthz` (the process is alive), `/readyz`
//! (listeners bound and certificates loaded, and not draining: a load balancer should stop sending us connections
//! as soon as it turns false).
//!
//! HTTP/1.1 on hyper, GET and HEAD only (HEAD answers the same head without a body), one request per
//! connection. It shares the process's descriptors and memory with the TLS listeners, so a scraper can never
//! hold more than [`AdminLimits`] allow: at most `max_connections` at once (more are closed at accept), the
//! request head within `request_timeout`, no write stalled longer than `write_timeout` (a client that asks for
//! `/metrics` and never reads is cut off), and the whole exchange within `connection_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// Bounds on what admin clients may hold.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections served at once; one more is closed as soon as it is accepted. Default: 16.
    pub max_connections: usize,
    /// Time a client has to send its request head. Default: 5 s.
    pub request_timeout: Duration,
    /// Longest a response write may wait for the client to read. Default: 5 s.
    pub write_timeout: Duration,
    /// Longest a connection may last, from accept to close. Default: 30 s.
    pub connection_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 16,
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

/// Shared state of the endpoint.
pub struct Admin {
    /// The registry to expose.
    pub metrics: Metrics,
    /// Readiness, flipped by the daemon.
    pub ready: Arc<AtomicBool>,
    /// Connection bounds.
    pub limits: AdminLimits,
}

/// Serves until the listener fails or the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let permits = Arc::new(Semaphore::new(admin.limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closing at once costs nothing to keep; a scraper retries on its next interval.
            tracing::debug!(
                max = admin.limits.max_connections,
                "admin connection refused: too many open"
            );
            drop(stream);
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let limits = admin.limits;
            let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
            let service = hyper::service::service_fn(|req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(answer(&req, &admin)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.request_timeout)
                .keep_alive(false)
                .serve_connection(io, service);
            match tokio::time::timeout(limits.connection_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "admin connection failed"),
                Err(_) => tracing::debug!("admin connection closed: took too long"),
            }
        });
    }
}

fn answer(req: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    // hyper sends a HEAD response's head (Content-Length included) and never its body (RFC 9110 §9.3.2).
    match req.uri().path() {
        "/metrics" => {
            // Prometheus asks for OpenMetrics in its Accept header; everything else (curl | promtool, older
            // scrapers) gets the classic text format.
            if accepts_openmetrics(req) {
                body(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    admin.metrics.encode(),
                )
            } else {
                body(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    admin.metrics.encode_prometheus(),
                )
            }
        }
        "/fingerprints" => body(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            crate::seen_fingerprints::render(
                admin.metrics.seen_fingerprints(),
                std::time::Instant::now(),
            ),
        ),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if admin.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /fingerprints, /healthz, /readyz\n",
        ),
    }
}

fn accepts_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers().get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    })
}

fn text(status: StatusCode, body_text: &'static str) -> Response<Full<Bytes>> {
    body(status, "text/plain", body_text)
}

fn body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A stream whose writes fail with `TimedOut` once one has waited `limit` for the peer to make room.
struct WriteTimeout {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteTimeout {
    fn new(inner: TcpStream, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Runs a write-side poll; while it is pending, arms (once) and checks the stall timer.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(r) = poll(Pin::new(&mut self.inner), cx) {
            self.stalled = None;
            return Poll::Ready(r);
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("admin client read nothing for {limit:?}"),
        )))
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().guard(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().guard(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().guard(cx, |s, cx| s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(metrics: Metrics, limits: AdminLimits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admin = Arc::new(Admin {
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
            limits,
        });
        tokio::spawn(serve(listener, admin));
        addr
    }

    /// Sends `request` and reads to the end (bounded); `None` if the server closed without answering.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> Option<String> {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(request.as_bytes()).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the admin endpoint did not close in 10 s");
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    }

    /// A registry whose exposition is several megabytes, more than loopback socket buffers hold.
    /// A `/metrics` body of about 9 MiB: more than a loopback socket takes into its send buffer (autotuned up
    /// to `tcp_wmem`'s 4 MiB; 60,000 series, 2.9 MB, fitted there whole on this kernel), so a client that does
    /// not read really stalls the write.
    fn big_metrics() -> Metrics {
        Metrics::new_with(None, |registry| {
            let padding = Family::<Vec<(String, String)>, Counter>::default();
            for i in 0..180_000 {
                padding
                    .get_or_create(&vec![("series".to_owned(), format!("padding-{i:08}"))])
                    .inc();
            }
            registry.register("test_padding", "makes /metrics large", padding);
        })
    }

    #[tokio::test]
    async fn get_and_head_answer_the_same_head_and_head_has_no_body() {
        let addr = start(Metrics::new(None), AdminLimits::default()).await;
        let get = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("an answer");
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.ends_with("\r\n\r\nok\n"), "{get}");
        let head = exchange(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("an answer");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD carried a body: {head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: "),
            "{head}"
        );
        let post = exchange(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("an answer");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let missing = exchange(addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("an answer");
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_until_a_slot_frees() {
        let limits = AdminLimits {
            max_connections: 2,
            request_timeout: Duration::from_secs(20),
            ..AdminLimits::default()
        };
        let addr = start(Metrics::new(None), limits).await;
        // Two clients hold their connections without sending a request.
        let held: Vec<TcpStream> = vec![
            TcpStream::connect(addr).await.expect("connect"),
            TcpStream::connect(addr).await.expect("connect"),
        ];
        let third = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(
            third, None,
            "a third connection was served over the cap of 2"
        );
        drop(held);
        // The slots free as the server sees the held connections close.
        let mut answered = None;
        for _ in 0..100 {
            answered = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if answered.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answered = answered.expect("served once the held connections closed");
        assert!(answered.starts_with("HTTP/1.1 200 "), "{answered}");
    }

    #[tokio::test]
    async fn a_scraper_that_stops_reading_is_cut_off_and_frees_its_slot() {
        let limits = AdminLimits {
            max_connections: 1,
            write_timeout: Duration::from_millis(200),
            ..AdminLimits::default()
        };
        let addr = start(big_metrics(), limits).await;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let mut slow = socket.connect(addr).await.expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        // Read nothing for well past the write timeout, then everything that is left.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match slow.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the stalled connection was not closed");
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .and_then(|v| v.trim().parse().ok())
            .expect("a content length");
        assert!(
            body.len() < length,
            "the whole {length}-byte body was sent to a client that did not read for 1.5 s"
        );
        // Its slot is free again.
        let next = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(next.is_some_and(|n| n.starts_with("HTTP/1.1 200 ")));
    }
}
