//! The built-in demo upstream, started when no backend is configured so a fresh install answers
//! `curl -k https://127.0.0.1:8443/` end to end. An HTTP/1.1 responder on a loopback port: it reads one
//! request head and answers with a short text naming what portcullis told it (client address, SNI and ALPN
//! from the PROXY v2 header when `upstream.proxy_protocol` is on). Not for production traffic.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::proxy_v2;

const MAX_HEAD: usize = 16 * 1024;

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
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), handle(stream)).await;
            });
        }
    }
}

async fn handle(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let proxy = match proxy_v2::decode(&buf) {
            Ok(Some(p)) => Some(p),
            Ok(None) => continue,
            Err(_) => None,
        };
        let skip = proxy.as_ref().map_or(0, |p| p.len);
        let rest = buf.get(skip..).unwrap_or_default();
        if rest.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_HEAD {
            let mut body = String::from("hello from the portcullis demo upstream\n");
            if let Some(p) = proxy {
                body.push_str(&format!(
                    "client={} sni={} alpn={}\n",
                    p.client,
                    p.authority.as_deref().unwrap_or("-"),
                    p.alpn
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .as_deref()
                        .unwrap_or("-"),
                ));
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            return stream.shutdown().await;
        }
    }
}
