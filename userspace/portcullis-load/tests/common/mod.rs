//! A rustls server in the test process: blocking threads, counting full and resumed handshakes as the server
//! saw them, with an optional stall before it starts accepting.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{HandshakeKind, ServerConfig, ServerConnection};

/// What the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub full: AtomicU64,
    pub resumed: AtomicU64,
    pub failed: AtomicU64,
    /// Handshakes that used the X25519MLKEM768 hybrid group.
    pub post_quantum: AtomicU64,
    /// Handshakes that agreed on ALPN `http/1.1`.
    pub alpn_http11: AtomicU64,
}

impl Seen {
    pub fn full(&self) -> u64 {
        self.full.load(Ordering::SeqCst)
    }
    pub fn resumed(&self) -> u64 {
        self.resumed.load(Ordering::SeqCst)
    }
}

/// A server configuration with a fresh self-signed certificate and its own ticket keys.
pub fn server_config() -> Arc<ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(rustls::ALL_VERSIONS)
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("cert");
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Starts a server on 127.0.0.1:0 with `config`; it accepts only after `stall`. Threads end with the test
/// process.
pub fn start(config: Arc<ServerConfig>, stall: Duration) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        std::thread::sleep(stall);
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            let seen = seen2.clone();
            std::thread::spawn(move || serve(stream, config, &seen));
        }
    });
    (addr, seen)
}

fn serve(mut tcp: TcpStream, config: Arc<ServerConfig>, seen: &Seen) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut tls) = ServerConnection::new(config) else {
        return;
    };
    while tls.is_handshaking() {
        if tls.complete_io(&mut tcp).is_err() {
            seen.failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    if tls.negotiated_key_exchange_group().map(|g| g.name())
        == Some(rustls::NamedGroup::X25519MLKEM768)
    {
        seen.post_quantum.fetch_add(1, Ordering::SeqCst);
    }
    if tls.alpn_protocol() == Some(b"http/1.1") {
        seen.alpn_http11.fetch_add(1, Ordering::SeqCst);
    }
    match tls.handshake_kind() {
        Some(HandshakeKind::Resumed) => seen.resumed.fetch_add(1, Ordering::SeqCst),
        _ => seen.full.fetch_add(1, Ordering::SeqCst),
    };
    // Tickets (TLS 1.3) go out now; then answer a request if one comes, until the client closes.
    let _ = tls.complete_io(&mut tcp);
    let mut buf = [0u8; 4096];
    loop {
        match tls.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {
                let _ = tls.writer().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                let _ = tls.complete_io(&mut tcp);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        match tls.complete_io(&mut tcp) {
            Ok((0, 0)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    tls.send_close_notify();
    let _ = tls.complete_io(&mut tcp);
}

/// Polls `f` every 10 ms for up to 5 s; waits on readiness instead of sleeping a guessed time.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
