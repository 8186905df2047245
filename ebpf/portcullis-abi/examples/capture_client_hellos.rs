//! Captures real ClientHellos on loopback, for the parser's fixtures.
//!
//! ```text
//! capture_client_hellos rustls DIR   # rustls clients: X25519, X25519MLKEM768, TLS 1.3 PSK,
//!                                    # TLS 1.3 PSK + 0-RTT, TLS 1.2 ticket -> DIR/rustls_*.bin
//! capture_client_hellos listen FILE  # print a port, save the first bytes of one connection
//! capture_client_hellos serve N KIND # print a port, complete N TLS handshakes, issuing
//!                                    # KIND = stateless tickets (TLS 1.2 session_ticket and 1.3)
//!                                    # or stateful 1.3 tickets that allow 0-RTT
//! ```
//!
//! `listen` and `serve` let `fixtures/capture.sh` drive curl, openssl and Python against the
//! same capture code. Everything binds 127.0.0.1 port 0 and prints the port once bound, so callers
//! wait on that line instead of sleeping. The certificate is a throwaway CA-signed one for
//! `example.com`; clients other than rustls skip verification.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// The host name every client sends as SNI.
const SNI: &str = "example.com";
/// How long a capture waits for bytes that belong with the first record (e.g. 0-RTT data).
const LINGER: Duration = Duration::from_millis(300);
/// How long a capture waits at most for the first record to complete.
const DEADLINE: Duration = Duration::from_secs(5);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["rustls", dir] => capture_rustls(Path::new(dir)),
        ["listen", file] => listen(Path::new(file)),
        ["serve", count, kind] => serve(count.parse()?, kind.parse()?),
        _ => Err(
            "usage: capture_client_hellos rustls DIR | listen FILE | serve N stateless|stateful"
                .into(),
        ),
    }
}

/// `listen FILE`: one capture for an outside client.
fn listen(file: &Path) -> Result<()> {
    let listener = bind()?;
    let bytes = capture(&listener)?;
    std::fs::write(file, &bytes)?;
    eprintln!("{}: {} bytes", file.display(), bytes.len());
    Ok(())
}

/// `serve N`: a real TLS server, so outside clients can obtain session tickets to resume with.
fn serve(count: usize, tickets: Tickets) -> Result<()> {
    let (server, _roots) = server_config(tls_versions_all(), tickets)?;
    let listener = bind()?;
    for _ in 0..count {
        let (stream, _) = listener.accept()?;
        if let Err(error) = serve_one(&server, stream) {
            eprintln!("serve: connection failed: {error}");
        }
    }
    Ok(())
}

/// All rustls fixtures.
fn capture_rustls(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let (server, roots) = server_config(tls_versions_all(), Tickets::Stateless)?;

    let classical = client_config(&roots, &[kx_group::X25519, kx_group::SECP256R1], false)?;
    save(dir, "rustls_x25519", capture_client(classical)?)?;

    // Offered first, X25519MLKEM768 gets a 1216-byte key share: a ClientHello over 1 KB.
    let post_quantum = client_config(&roots, &[kx_group::X25519MLKEM768, kx_group::X25519], false)?;
    save(dir, "rustls_x25519mlkem768", capture_client(post_quantum)?)?;

    let resuming = client_config(&roots, &[kx_group::X25519], false)?;
    handshake_with(&server, resuming.clone())?;
    save(dir, "rustls_tls13_psk", capture_client(resuming)?)?;

    let (stateful, roots) = server_config(tls_versions_all(), Tickets::Stateful)?;
    let early = client_config(&roots, &[kx_group::X25519], true)?;
    handshake_with(&stateful, early.clone())?;
    save(dir, "rustls_tls13_psk_early_data", capture_client(early)?)?;

    let (server12, roots12) = server_config(vec![&rustls::version::TLS12], Tickets::Stateless)?;
    let tls12 = client_config_versions(
        &roots12,
        &[kx_group::X25519],
        false,
        &[&rustls::version::TLS12],
    )?;
    handshake_with(&server12, tls12.clone())?;
    save(dir, "rustls_tls12_ticket", capture_client(tls12)?)?;
    Ok(())
}

fn save(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<()> {
    let path: PathBuf = dir.join(format!("{name}.bin"));
    std::fs::write(&path, &bytes)?;
    eprintln!("{}: {} bytes", path.display(), bytes.len());
    Ok(())
}

/// Binds loopback port 0 and prints the port on stdout: the readiness signal for callers.
fn bind() -> Result<TcpListener> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    io::stdout().flush()?;
    Ok(listener)
}

/// Accepts one connection and returns what the client sent first: the whole first TLS record,
/// plus whatever follows within [`LINGER`] (0-RTT records), then closes.
fn capture(listener: &TcpListener) -> Result<Vec<u8>> {
    let (mut stream, _) = listener.accept()?;
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let record_done = first_record_len(&bytes).is_some_and(|len| bytes.len() >= len);
        let wait = if record_done {
            LINGER
        } else {
            DEADLINE.saturating_sub(started.elapsed())
        };
        if wait.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(bytes)
}

/// Header plus payload length of the first TLS record, once its header arrived.
fn first_record_len(bytes: &[u8]) -> Option<usize> {
    match bytes.get(..5)? {
        [_, _, _, hi, lo] => Some(5 + usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// Runs `config`'s client against a capture listener and returns its first bytes.
fn capture_client(config: Arc<ClientConfig>) -> Result<Vec<u8>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let client = thread::spawn(move || -> Result<()> {
        let mut conn = ClientConnection::new(config, ServerName::try_from(SNI)?)?;
        if let Some(mut early) = conn.early_data() {
            // 0-RTT data goes out right behind the ClientHello, as a real client's would.
            early.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")?;
        }
        let mut tcp = TcpStream::connect(addr)?;
        // The capture side hangs up after the ClientHello, so the handshake error is expected.
        let _ = conn.complete_io(&mut tcp);
        Ok(())
    });
    let bytes = capture(&listener)?;
    client.join().map_err(|_| "client thread panicked")??;
    Ok(bytes)
}

/// One full handshake of `client` against a rustls server, reading until the server closes so the
/// client stores the tickets it was sent.
fn handshake_with(server: &Arc<ServerConfig>, client: Arc<ClientConfig>) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = Arc::clone(server);
    let serving = thread::spawn(move || -> Result<()> {
        let (stream, _) = listener.accept()?;
        serve_one(&server, stream)
    });
    let mut conn = ClientConnection::new(client, ServerName::try_from(SNI)?)?;
    let mut tcp = TcpStream::connect(addr)?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut response = Vec::new();
    tls.read_to_end(&mut response)?;
    serving.join().map_err(|_| "server thread panicked")??;
    Ok(())
}

/// Completes a handshake, answers one line, and closes cleanly.
fn serve_one(config: &Arc<ServerConfig>, mut tcp: TcpStream) -> Result<()> {
    tcp.set_read_timeout(Some(DEADLINE))?;
    let mut conn = ServerConnection::new(Arc::clone(config))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    conn.writer().write_all(b"portcullis fixture server\n")?;
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut tcp)?;
    }
    Ok(())
}

fn tls_versions_all() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13, &rustls::version::TLS12]
}

/// How a fixture server lets clients resume.
#[derive(Clone, Copy, Debug)]
enum Tickets {
    /// Encrypted tickets (RFC 5077 for TLS 1.2, and TLS 1.3): what TLS 1.2 ticket resumption needs.
    Stateless,
    /// Server-side session cache: rustls allows 0-RTT only then (RFC 8446 §8.1 replay defence).
    Stateful,
}

impl std::str::FromStr for Tickets {
    type Err = String;

    fn from_str(kind: &str) -> std::result::Result<Self, String> {
        match kind {
            "stateless" => Ok(Self::Stateless),
            "stateful" => Ok(Self::Stateful),
            _ => Err(format!(
                "ticket kind {kind:?} is neither stateless nor stateful"
            )),
        }
    }
}

/// A server for `example.com` issuing `tickets`, and the root store that trusts it.
fn server_config(
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    tickets: Tickets,
) -> Result<(Arc<ServerConfig>, RootCertStore)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec![SNI.to_owned()])?.signed_by(&leaf_key, &issuer)?;

    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&versions)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)?;
    match tickets {
        Tickets::Stateless => server.ticketer = aws_lc_rs::Ticketer::new()?,
        Tickets::Stateful => server.max_early_data_size = 16 * 1024,
    }
    Ok((Arc::new(server), roots))
}

fn client_config(
    roots: &RootCertStore,
    groups: &[&'static dyn SupportedKxGroup],
    early_data: bool,
) -> Result<Arc<ClientConfig>> {
    client_config_versions(roots, groups, early_data, &tls_versions_all())
}

/// A client offering exactly `groups`, in order (the first gets the key share).
fn client_config_versions(
    roots: &RootCertStore,
    groups: &[&'static dyn SupportedKxGroup],
    early_data: bool,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>> {
    let provider = CryptoProvider {
        kx_groups: groups.to_vec(),
        ..aws_lc_rs::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.enable_early_data = early_data;
    Ok(Arc::new(config))
}
