//! The built-in demo upstream, started when no backend is configured so a fresh install answers
//! `curl -k https://127.0.0.1:8443/` end to end. An HTTP/1.1 keep-alive server on hyper on a loopback port: it
//! answers every request with a short text naming what portcullis told it (the request line, `Forwarded` and
//! `X-Forwarded-For` in `http` mode; client address, SNI and ALPN from the PROXY v2 header when
//! `upstream.proxy_protocol` is on). Not for production traffic.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::proxy_v2;

/// Largest PROXY v2 header read before the HTTP/1.1 stream (the 16-byte fixed part plus its TLVs).
const MAX_PROXY_HEADER: usize = 16 + 512;

/// Binds the demo upstream on an ephemeral loopback port.
pub async fn bind() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves until dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(handle(stream));
        }
    }
}

async fn handle(mut stream: TcpStream) {
    let proxy =
        match tokio::time::timeout(Duration::from_secs(10), read_proxy_header(&mut stream)).await {
            Ok(Ok(p)) => p.map(Arc::new),
            _ => return,
        };
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(answer(&req, proxy.as_deref())) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = result {
        tracing::trace!(error = %e, "demo upstream connection ended with an error");
    }
}

/// Consumes a PROXY v2 header if the stream starts with one (`upstream.proxy_protocol`).
async fn read_proxy_header(stream: &mut TcpStream) -> std::io::Result<Option<proxy_v2::Decoded>> {
    let mut head = [0u8; 16];
    let n = stream.peek(&mut head).await?;
    if n < proxy_v2::SIGNATURE.len() || head.get(..12) != Some(&proxy_v2::SIGNATURE[..]) {
        // Not a PROXY header (or not yet 12 bytes: HTTP requests are longer, so this is a short request).
        return Ok(None);
    }
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_PROXY_HEADER {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "PROXY v2 header too long",
        ));
    }
    let mut whole = fixed.to_vec();
    whole.resize(16 + len, 0);
    stream
        .read_exact(whole.get_mut(16..).unwrap_or_default())
        .await?;
    Ok(proxy_v2::decode(&whole).ok().flatten())
}

fn answer(req: &Request<Incoming>, proxy: Option<&proxy_v2::Decoded>) -> Response<Full<Bytes>> {
    let mut body = String::from("hello from the portcullis demo upstream\n");
    if let Some(p) = proxy {
        let _ = writeln!(
            body,
            "client={} sni={} alpn={}",
            p.client,
            p.authority.as_deref().unwrap_or("-"),
            p.alpn
                .as_deref()
                .map(String::from_utf8_lossy)
                .as_deref()
                .unwrap_or("-"),
        );
    }
    let _ = writeln!(body, "{} {} {:?}", req.method(), req.uri(), req.version());
    for name in ["host", "forwarded", "x-forwarded-for", "x-forwarded-proto"] {
        for v in req.headers().get_all(name) {
            let _ = writeln!(body, "{name}: {}", String::from_utf8_lossy(v.as_bytes()));
        }
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}
