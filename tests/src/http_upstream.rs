//! An HTTP/1.1 upstream for the HTTP tests, on hyper, on a thread of its own (port 0 on loopback):
//!
//! - `/headers`: the request line and every header, one `name: value` per line;
//! - `/echo`: the request body streamed back (chunked);
//! - `/upgrade`: `101 Switching Protocols` to a request with `Upgrade`, then echoes bytes;
//! - `/slow?ms=N`: answers `slow` after N milliseconds;
//! - `/too-early`: `425 Too Early` to a request with `Early-Data` (RFC 8470 §5.2), `ok` otherwise;
//! - anything else: `ok PATH`.
//!
//! Every request is recorded as `METHOD PATH early-data=VALUE` (`-` without the header), see
//! [`HttpUpstream::requests`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Body = BoxBody<Bytes, hyper::Error>;

/// A running upstream; stops when dropped (its runtime goes with the thread).
pub struct HttpUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl HttpUpstream {
    /// Binds 127.0.0.1:0 and serves on a background thread.
    pub fn start() -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                tokio::select! {
                    _ = stopped => {}
                    () = accept(listener, count, log) => {}
                }
            });
        });
        Ok(Self {
            addr,
            connections,
            requests,
            _stop: stop,
        })
    }

    /// The requests received so far, in order: `METHOD PATH early-data=VALUE` (`-` without the header).
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// TCP connections accepted so far (the proxy's pool reuses them).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    count: Arc<AtomicU64>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        count.fetch_add(1, Ordering::Relaxed);
        let log = log.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let early = req.headers().get("early-data").map_or_else(
                    || "-".to_owned(),
                    |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
                );
                if let Ok(mut log) = log.lock() {
                    log.push(format!(
                        "{} {} early-data={early}",
                        req.method(),
                        req.uri().path()
                    ));
                }
                route(req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

async fn route(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match path.as_str() {
        "/headers" => {
            let mut body = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (name, value) in req.headers() {
                body.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            text(StatusCode::OK, body)
        }
        "/echo" => Response::new(req.into_body().boxed()),
        "/upgrade" if req.headers().contains_key("upgrade") => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0
                            || io
                                .write_all(buf.get(..n).unwrap_or_default())
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                }
            });
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
            r.headers_mut()
                .insert("upgrade", hyper::header::HeaderValue::from_static("echo"));
            r.headers_mut().insert(
                "connection",
                hyper::header::HeaderValue::from_static("upgrade"),
            );
            r
        }
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, "slow\n".into())
        }
        "/too-early" if req.headers().contains_key("early-data") => {
            text(StatusCode::TOO_EARLY, "too early\n".into())
        }
        _ => text(StatusCode::OK, format!("ok {path}\n")),
    })
}
