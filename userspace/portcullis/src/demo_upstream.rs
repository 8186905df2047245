//! The built-in demo upstream, started when no backend is configured so a fresh install answers
//! `curl -k https://127.0.0.1:8443/` end to end. An HTTP/1.1 keep-alive server on hyper on a loopback port: it
//! answers every request with a short text naming what portcullis told it (the request line, `Forwarded` and
//! `X-Forwarded-For` in `http` mode; client address, SNI and ALPN from the PROXY v2 header when
//! `upstream.proxy_protocol` is on) and how many body bytes came. It reads a request's whole body before it
//! answers (up to [`MAX_BODY`]; more is answered 413): a server that answers first and closes with the body
//! unread resets the connection, and the proxy may see the reset before the answer. Not for production traffic.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::proxy_v2;

/// Largest PROXY v2 header read before the HTTP/1.1 stream (the 16-byte fixed part plus its TLVs).
const MAX_PROXY_HEADER: usize = 16 + 512;

/// Largest request body the demo reads (bytes); a longer one is answered 413.
pub const MAX_BODY: usize = 1 << 20;

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
        async move {
            let (head, body) = req.into_parts();
            let head = Request::from_parts(head, ());
            let response = match Limited::new(body, MAX_BODY).collect().await {
                Ok(body) => answer(&head, proxy.as_deref(), body.to_bytes().len()),
                Err(_) => too_large(),
            };
            Ok::<_, Infallible>(response)
        }
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

/// 413 to a body over [`MAX_BODY`] (or one that failed to arrive); the connection closes after it.
fn too_large() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(
        b"request body over the demo's 1 MiB\n",
    )));
    *r.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

fn answer(
    req: &Request<()>,
    proxy: Option<&proxy_v2::Decoded>,
    body_len: usize,
) -> Response<Full<Bytes>> {
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
    if body_len > 0 {
        let _ = writeln!(body, "body: {body_len} bytes");
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Sends `head` then `body_len` bytes, returns all the demo answered until it closed.
    async fn exchange(head: &str, body_len: usize) -> String {
        let (listener, addr) = bind().await.expect("bind");
        tokio::spawn(serve(listener));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("head");
        // Written in pieces, as a proxy would stream it; a reset here would fail the test.
        let piece = vec![b'x'; 4096];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(piece.len());
            if s.write_all(&piece[..n]).await.is_err() {
                break;
            }
            left -= n;
        }
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .await
            .expect("the demo answered and closed cleanly");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn reads_the_whole_body_before_answering() {
        let answer = exchange(
            "POST /echo HTTP/1.1\r\nhost: demo\r\ncontent-length: 50000\r\nconnection: close\r\n\r\n",
            50_000,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("body: 50000 bytes"), "{answer}");
    }

    #[tokio::test]
    async fn answers_413_to_a_body_over_the_limit() {
        let head = format!(
            "POST / HTTP/1.1\r\nhost: demo\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let answer = exchange(&head, MAX_BODY + 1).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
}
