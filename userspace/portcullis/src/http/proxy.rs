//! One request: rewrite its head, send it upstream over the worker's pool, stream the answer back; answer
//! 502/504 ourselves when the upstream fails, and pass an HTTP/1.1 upgrade through as a byte relay after 101.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::HttpContext;
use super::body::{Counted, OnEnd, Reported, UpBody, full};
use super::early::{self, Action};
use super::facts::TlsFacts;
use super::headers;
use super::pool::{self, CheckoutError, PoolSettings};
use super::tls_stream::EarlyView;
use super::watchdog::{Activity, Busy};
use crate::proxy::upstream::ConnectFailure;

/// What every request on one client connection shares.
pub struct ConnInfo {
    /// The listener's context.
    pub ctx: Arc<HttpContext>,
    /// Client address.
    pub peer: SocketAddr,
    /// The handshake's facts.
    pub facts: TlsFacts,
    /// When TCP accepted the connection (for the first request's time to first byte).
    pub accepted: Instant,
    /// Timeouts' view of the connection.
    pub activity: Arc<Activity>,
    /// The first request's response head is still to come.
    pub first: AtomicBool,
    /// An upgraded (101) connection's byte relay, awaited before the connection counts as closed.
    pub upgraded: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The handshake's state when the connection was handed over before the client's Finished (0-RTT).
    pub early: Option<super::tls_stream::EarlyView>,
}

/// The proxy's own answer when the upstream could not give one.
struct Failed {
    status: StatusCode,
    cause: &'static str,
    upstream: Option<SocketAddr>,
}

/// The upstream's answer.
struct Answered {
    response: Response<Incoming>,
    upstream: SocketAddr,
    upstream_time: f64,
}

/// Handles one request to the end of its response head; the body streams afterwards.
pub async fn handle(conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<Reported> {
    let in_flight = InFlight::start(conn.activity.clone());
    let started = Instant::now();
    let time = SystemTime::now();
    let protocol = if req.version() == Version::HTTP_2 {
        "h2"
    } else {
        "h1"
    };
    let method = req.method().clone();
    let named = super::host::authority(&req);
    let authority = named
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .map(|a| a.as_str().to_owned());
    let refused = named.err();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let bytes_in = Arc::new(AtomicU64::new(0));

    let (outcome, early) = match conn.early.as_ref().filter(|view| view.is_early()) {
        // A reverse proxy has no tunnel to open: CONNECT's authority-form target names no resource upstream.
        _ if method == Method::CONNECT => (
            Err(Failed {
                status: StatusCode::METHOD_NOT_ALLOWED,
                cause: "connect_not_allowed",
                upstream: None,
            }),
            None,
        ),
        // Before anything reaches the upstream, an early request too (`host.rs`).
        _ if refused.is_some() => (
            Err(Failed {
                status: StatusCode::BAD_REQUEST,
                cause: refused.map_or("invalid_host", super::host::HostError::cause),
                upstream: None,
            }),
            None,
        ),
        None => (
            forward(&conn, req, authority.as_deref(), &target, &bytes_in).await,
            None,
        ),
        Some(view) => {
            let (outcome, action) =
                early_request(&conn, view, req, authority.as_deref(), &target, &bytes_in).await;
            conn.ctx.metrics.early_request(&conn.ctx.listener, action);
            (outcome, Some(action.name()))
        }
    };
    let (response, upstream, upstream_time) = match outcome {
        Ok(a) => {
            let (mut parts, body) = a.response.into_parts();
            let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
            headers::remove_hop_by_hop(&mut parts.headers, upgrade);
            // Our own version towards the client, whatever the upstream spoke (RFC 9110 §6.2): an
            // HTTP/1.0 upstream's version would also make hyper drop the client's keep-alive.
            parts.version = if protocol == "h2" {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            (
                Response::from_parts(parts, body.boxed()),
                Some(a.upstream),
                Some(a.upstream_time),
            )
        }
        Err(f) => {
            // Our own early-data answers (425, a handshake that failed meanwhile) are not upstream errors.
            let whose = if f.upstream.is_some() || f.cause == "no_upstream" {
                conn.ctx.metrics.upstream_error(f.cause);
                "upstream "
            } else {
                ""
            };
            tracing::debug!(peer = %conn.peer, upstream = ?f.upstream, cause = f.cause, status = f.status.as_u16(), "answered for the upstream");
            let mut r = Response::new(full(format!(
                "{} {}: {whose}{}\n",
                f.status.as_u16(),
                f.status.canonical_reason().unwrap_or(""),
                f.cause
            )));
            *r.status_mut() = f.status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            if f.status == StatusCode::METHOD_NOT_ALLOWED {
                // RFC 9110 §15.5.6: a 405 lists what the target does allow; here, everything but CONNECT.
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
                );
            }
            (r, f.upstream, None)
        }
    };
    if conn.first.swap(false, Ordering::Relaxed) {
        conn.ctx.metrics.first_byte(
            &conn.ctx.listener,
            conn.facts.mode,
            conn.accepted.elapsed().as_secs_f64(),
        );
    }
    let status = response.status().as_u16();
    let end = RequestEnd {
        _in_flight: in_flight,
        conn: conn.clone(),
        time,
        started,
        protocol,
        method,
        authority,
        target,
        status,
        bytes_in,
        upstream,
        upstream_time,
        early,
    };
    response.map(|body| Reported::new(body, Box::new(end)))
}

/// A request whose head came in early data (`early.rs` has the rules).
async fn early_request(
    conn: &ConnInfo,
    view: &EarlyView,
    mut req: Request<Incoming>,
    authority: Option<&str>,
    target: &str,
    bytes_in: &Arc<AtomicU64>,
) -> (Result<Answered, Failed>, Action) {
    let Some(policy) = &conn.ctx.early else {
        // Not reached (a view exists only on 0-RTT listeners): the safe answer is to wait.
        return (
            held(conn, view, req, authority, target, bytes_in).await,
            Action::Held,
        );
    };
    if !view.is_unfinished() {
        // The Finished came while the head was parsed: nothing left to decide, nothing to mark.
        return (
            forward(conn, req, authority, target, bytes_in).await,
            Action::Held,
        );
    }
    let action = policy.decide(
        req.method(),
        req.headers(),
        hyper::body::Body::is_end_stream(req.body()),
    );
    match action {
        Action::Forwarded => {}
        Action::Held | Action::Retried => {
            return (
                held(conn, view, req, authority, target, bytes_in).await,
                Action::Held,
            );
        }
        Action::Rejected => return (Err(too_early()), Action::Rejected),
    }
    // Kept to send again after an upstream 425: the request has no body.
    let again = {
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        head
    };
    early::mark(req.headers_mut());
    let first = forward(conn, req, authority, target, bytes_in).await;
    match first {
        Ok(a) if a.response.status() == StatusCode::TOO_EARLY => {
            // RFC 8470 §5.2: we sent it early, so we may send it again once the handshake is complete.
            if !view.finished().await {
                return (Err(handshake_failed()), Action::Retried);
            }
            let (parts, ()) = again.into_parts();
            let empty =
                http_body_util::Empty::<bytes::Bytes>::new().map_err(|never| match never {});
            let retry = forward(
                conn,
                Request::from_parts(parts, empty),
                authority,
                target,
                bytes_in,
            );
            (retry.await, Action::Retried)
        }
        other => (other, Action::Forwarded),
    }
}

/// An early request that waits for the client's Finished, then goes as any other.
async fn held(
    conn: &ConnInfo,
    view: &EarlyView,
    req: Request<Incoming>,
    authority: Option<&str>,
    target: &str,
    bytes_in: &Arc<AtomicU64>,
) -> Result<Answered, Failed> {
    if !view.finished().await {
        return Err(handshake_failed());
    }
    forward(conn, req, authority, target, bytes_in).await
}

/// Our 425 to an early request `unsafe = "reject"` does not wait for (RFC 8470 §5.2: the client retries it
/// after the handshake).
fn too_early() -> Failed {
    Failed {
        status: StatusCode::TOO_EARLY,
        cause: "early_data",
        upstream: None,
    }
}

/// The handshake failed while a request waited for it: the connection is closing, no one reads this answer.
fn handshake_failed() -> Failed {
    Failed {
        status: StatusCode::BAD_REQUEST,
        cause: "handshake_failed",
        upstream: None,
    }
}

/// Sends one request upstream (the client's body, or none for an early request sent again after a 425).
async fn forward<B>(
    conn: &ConnInfo,
    mut req: Request<B>,
    authority: Option<&str>,
    target: &str,
    bytes_in: &Arc<AtomicU64>,
) -> Result<Answered, Failed>
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + Sync + Unpin + 'static,
{
    let ctx = &conn.ctx;
    let upgrade = req.version() != Version::HTTP_2 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    headers::set_forwarded(
        &mut parts.headers,
        conn.peer,
        authority,
        ctx.config.trusted_forwarded,
    );
    // HTTP/1.1 upstream: origin form (RFC 9112 §3.2.1), whatever form the client used.
    parts.uri = target
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let body: UpBody =
        Busy::new(Counted::new(body, bytes_in.clone()), conn.activity.clone()).boxed();
    let mut request = Request::from_parts(parts, body);

    let Some(addr) = ctx.upstreams.pick() else {
        return Err(Failed {
            status: StatusCode::BAD_GATEWAY,
            cause: "no_upstream",
            upstream: None,
        });
    };
    // The authority the request names (an absolute-form target's over its Host field, `host.rs`), else the
    // upstream's address: an HTTP/1.1 request needs a Host.
    let host = match authority {
        Some(a) => HeaderValue::from_str(a).ok(),
        None => HeaderValue::from_str(&addr.to_string()).ok(),
    };
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
    let fail = |status, cause| Failed {
        status,
        cause,
        upstream: Some(addr),
    };
    let settings = PoolSettings {
        max_idle: ctx.config.pool_max_idle,
        idle_timeout: ctx.config.pool_idle_timeout,
    };
    // A pooled connection the upstream closed meanwhile fails before the request is written: hyper hands the
    // request back and it goes once more, on a new connection.
    for attempt in 0..2 {
        let (mut sender, reused) = match pool::checkout(&ctx.upstreams, addr, settings).await {
            Ok(s) => s,
            Err(CheckoutError::Connect(ConnectFailure::Timeout)) => {
                return Err(fail(StatusCode::GATEWAY_TIMEOUT, "connect_timeout"));
            }
            Err(CheckoutError::Connect(ConnectFailure::Refused)) => {
                return Err(fail(StatusCode::BAD_GATEWAY, "refused"));
            }
            Err(CheckoutError::Connect(ConnectFailure::Other)) => {
                return Err(fail(StatusCode::BAD_GATEWAY, "connect_other"));
            }
            Err(CheckoutError::Handshake) => {
                return Err(fail(StatusCode::BAD_GATEWAY, "handshake"));
            }
        };
        if !reused && sender.ready().await.is_err() {
            return Err(fail(StatusCode::BAD_GATEWAY, "handshake"));
        }
        ctx.metrics.upstream_request(reused);
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            ctx.config.upstream_response_timeout,
            sender.try_send_request(request),
        )
        .await;
        let mut response = match answer {
            Err(_) => return Err(fail(StatusCode::GATEWAY_TIMEOUT, "response_timeout")),
            Ok(Ok(r)) => r,
            Ok(Err(mut e)) => {
                if reused
                    && attempt == 0
                    && let Some(again) = e.take_message()
                {
                    request = again;
                    continue;
                }
                tracing::debug!(upstream = %addr, error = %e.error(), "upstream request failed");
                return Err(fail(StatusCode::BAD_GATEWAY, "response"));
            }
        };
        let upstream_time = sent.elapsed().as_secs_f64();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            match client_upgrade {
                Some(client) => {
                    let upstream = hyper::upgrade::on(&mut response);
                    let relay = tokio::spawn(relay_upgraded(client, upstream));
                    if let Ok(mut slot) = conn.upgraded.lock() {
                        *slot = Some(relay);
                    }
                }
                // 101 to a request that did not ask for it (RFC 9110 §15.2.2): not passed on.
                None => return Err(fail(StatusCode::BAD_GATEWAY, "response")),
            }
        } else {
            pool::checkin_when_ready(addr, sender, settings);
        }
        return Ok(Answered {
            response,
            upstream: addr,
            upstream_time,
        });
    }
    Err(fail(StatusCode::BAD_GATEWAY, "response"))
}

/// Relays bytes both ways between an upgraded client connection and the upstream's, until both close.
async fn relay_upgraded(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded relay ended with an error");
    }
}

/// A request in flight for the connection's timeouts, until dropped: also when the client cancels it (an h2
/// stream reset) before its response exists.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Logs and counts a request when its response body ends.
struct RequestEnd {
    _in_flight: InFlight,
    conn: Arc<ConnInfo>,
    time: SystemTime,
    started: Instant,
    protocol: &'static str,
    method: http::Method,
    authority: Option<String>,
    target: String,
    status: u16,
    bytes_in: Arc<AtomicU64>,
    upstream: Option<SocketAddr>,
    upstream_time: Option<f64>,
    early: Option<&'static str>,
}

impl OnEnd for RequestEnd {
    fn ended(self: Box<Self>, bytes: u64, _complete: bool) {
        let duration = self.started.elapsed().as_secs_f64();
        let ctx = &self.conn.ctx;
        ctx.metrics.request(
            &ctx.listener,
            self.protocol,
            &self.method,
            self.status,
            self.conn.facts.mode,
            duration,
        );
        if let Some(log) = &ctx.access_log {
            log.log(&super::access_log::Entry {
                time: self.time,
                listener: &ctx.listener,
                client: self.conn.peer,
                protocol: self.protocol,
                method: self.method.as_str(),
                authority: self.authority.as_deref(),
                path_and_query: &self.target,
                status: self.status,
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out: bytes,
                duration,
                upstream: self.upstream,
                upstream_time: self.upstream_time,
                early: self.early,
                tls: &self.conn.facts,
            });
        }
    }
}
