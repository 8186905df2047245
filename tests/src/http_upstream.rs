//! An HTTP/1.1 upstream for the HTTP tests, on hyper, on a thread of its own (port 0 on loopback):
//!
//! - `/headers`: the request line and every header, one `name: value` per line;
//! - `/echo`: the request body streamed back (chunked);
//! - `/upgrade`: `101 Switching Protocols` to a request with `Upgrade`, then echoes bytes;
//! - `/slow?ms=N`: answers `slow` after N milliseconds;
//! - anything else: `ok PATH`.

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
                    () = accept(listener, count) => {}
                }
            });
        });
        Ok(Self {
            addr,
            connections,
            _stop: stop,
        })
    }

    /// TCP connections accepted so far (the proxy's pool reuses them).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

async fn accept(listener: tokio::net::TcpListener, count: Arc<AtomicU64>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        count.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(route))
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
        _ => text(StatusCode::OK, format!("ok {path}\n")),
    })
}
