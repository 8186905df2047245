//! The reference for the differential test (`tests/conformance.rs`): a bare rustls `ServerConnection` server on
//! loopback, and what a server sends back to a scripted byte stream, as comparable [`Item`]s.
//!
//! The bare server is the textbook loop (`read_tls`, `process_new_packets`, `write_tls`), one thread per
//! connection, the plaintext read and dropped. One choice makes it comparable with portcullis: at the client's
//! end of stream after the handshake it sends close_notify, as portcullis closes an established session.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::{ServerConfig, ServerConnection};

/// A running bare rustls server; its listener thread ends with the test process.
#[derive(Debug)]
pub struct BareServer {
    /// Where it listens (loopback, port 0).
    pub addr: SocketAddr,
}

impl BareServer {
    /// Serves `config` on 127.0.0.1, port 0.
    pub fn start(config: Arc<ServerConfig>) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding the bare rustls server")?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let config = config.clone();
                std::thread::spawn(move || serve(stream, config));
            }
        });
        Ok(Self { addr })
    }
}

fn serve(mut tcp: TcpStream, config: Arc<ServerConfig>) {
    let Ok(mut conn) = ServerConnection::new(config) else {
        return;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let mut plaintext = [0u8; 16 * 1024];
    loop {
        if flush(&mut tcp, &mut conn).is_err() {
            return;
        }
        match conn.read_tls(&mut tcp) {
            Ok(0) => {
                if !conn.is_handshaking() {
                    conn.send_close_notify();
                    let _ = flush(&mut tcp, &mut conn);
                }
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        match conn.process_new_packets() {
            Ok(state) => {
                while conn.reader().read(&mut plaintext).is_ok_and(|n| n > 0) {}
                if state.peer_has_closed() {
                    conn.send_close_notify();
                    let _ = flush(&mut tcp, &mut conn);
                    return;
                }
            }
            Err(_) => {
                let _ = flush(&mut tcp, &mut conn);
                return;
            }
        }
    }
}

fn flush(tcp: &mut TcpStream, conn: &mut ServerConnection) -> std::io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    tcp.flush()
}

/// One record a server sent, as the differential test compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A plaintext alert (sent before any keys): its two bytes, level and description, compared exactly.
    Alert([u8; 2]),
    /// Any other record: its content type only (encrypted contents and signature lengths differ).
    Record(u8),
    /// Bytes after the last whole record (never expected).
    Trailing(usize),
}

/// Splits what a server sent into [`Item`]s.
pub fn items(bytes: &[u8]) -> Vec<Item> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut encrypted = false;
    while let Some((&[typ, _, _, hi, lo], body)) = rest.split_first_chunk::<5>() {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let Some((payload, next)) = body.split_at_checked(len) else {
            break;
        };
        match (typ, payload) {
            (21, &[level, description]) if !encrypted => {
                out.push(Item::Alert([level, description]))
            }
            (20, _) => {
                encrypted = true;
                out.push(Item::Record(typ));
            }
            _ => out.push(Item::Record(typ)),
        }
        rest = next;
    }
    if !rest.is_empty() {
        out.push(Item::Trailing(rest.len()));
    }
    out
}

/// Sends `segments` to `addr` (one write each, `gap` apart, so each leaves as its own TCP segment), ends the
/// stream, and returns everything the server sent until it closed (a reset after its last bytes counts as a
/// close). Panics if the server neither closes nor sends within 10 s.
pub fn exchange(addr: SocketAddr, segments: &[Vec<u8>], gap: Duration) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        // The server may refuse (and reset) before the last segment: what it sent until then is the answer.
        if tcp.write_all(segment).is_err() {
            break;
        }
    }
    let _ = tcp.shutdown(Shutdown::Write);
    read_to_close(&mut tcp)
}

/// Reads until the server closes or resets.
pub fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "server neither closed nor answered: {e} (after {} bytes)",
                out.len()
            ),
        }
    }
}
