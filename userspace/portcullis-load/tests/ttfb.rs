//! `portcullis-load ttfb` against an in-process rustls server that accepts TLS 1.3 early data (stateful
//! tickets, `max_early_data_size` > 0) and answers every `GET` with a 200: each mode resumes or not as it says,
//! 0-RTT requests arrive as early data, and the captured first flight is a ClientHello followed by the early
//! request's records. Early data the server refuses is sent again after the handshake, and the sample says so.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portcullis_load::ttfb::{self, Mode, TtfbArgs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

/// Requests the server read from early data.
#[derive(Debug, Default)]
struct Seen {
    early_requests: AtomicU64,
}

fn server_config(max_early_data_size: u32) -> ServerConfig {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("cert");
    // rustls accepts early data only with stateful tickets: keep the default session cache, no ticketer.
    config.max_early_data_size = max_early_data_size;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Serves connection `n` with `configs[n]`, the last one for every later connection.
fn start(configs: Vec<Arc<ServerConfig>>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let config = configs[n.min(configs.len() - 1)].clone();
            let seen = seen2.clone();
            std::thread::spawn(move || serve(stream, config, &seen));
        }
    });
    (addr, seen)
}

/// One connection: the request from early data or after the handshake, a 200, close_notify.
fn serve(mut tcp: TcpStream, config: Arc<ServerConfig>, seen: &Seen) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut tls) = ServerConnection::new(config) else {
        return;
    };
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.ends_with(b"\r\n\r\n") {
        while tls.wants_write() {
            if tls.write_tls(&mut tcp).is_err() {
                return;
            }
        }
        match tls.read_tls(&mut tcp) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if tls.process_new_packets().is_err() {
            let _ = tls.write_tls(&mut tcp);
            return;
        }
        if let Some(mut early) = tls.early_data() {
            let before = request.len();
            let _ = early.read_to_end(&mut request);
            if request.len() > before && request.ends_with(b"\r\n\r\n") {
                seen.early_requests.fetch_add(1, Ordering::SeqCst);
            }
        }
        if !tls.is_handshaking() {
            while let Ok(n) = tls.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
        }
    }
    // Answer only once the handshake is done (a server that holds early requests until the Finished).
    while tls.is_handshaking() {
        if tls.complete_io(&mut tcp).is_err() {
            return;
        }
    }
    let _ = tls
        .writer()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    tls.send_close_notify();
    while tls.wants_write() {
        if tls.write_tls(&mut tcp).is_err() {
            return;
        }
    }
}

fn args(target: SocketAddr, mode: Mode, samples: u32) -> TtfbArgs {
    TtfbArgs {
        target,
        sni: "localhost".into(),
        mode,
        path: "/".into(),
        prime_path: "/prime".into(),
        samples,
        max_seconds: 30.0,
        timeout: 5.0,
        gap_ms: 0,
        capture: None,
        primes: 1,
        stash_only: false,
        pause_file: None,
    }
}

#[test]
fn each_mode_resumes_as_it_says_and_zero_rtt_sends_the_request_early() {
    let (addr, seen) = start(vec![Arc::new(server_config(16384))]);
    let full = ttfb::run(&args(addr, Mode::Full, 3)).expect("full");
    assert_eq!((full.ok, full.resumed, full.early_sent), (3, 0, 0));
    let resumed = ttfb::run(&args(addr, Mode::Resumed, 3)).expect("resumed");
    assert_eq!((resumed.ok, resumed.resumed, resumed.early_sent), (3, 3, 0));
    assert_eq!(seen.early_requests.load(Ordering::SeqCst), 0);

    let dir = std::env::temp_dir().join(format!("ttfb-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let capture = dir.join("flight.bin");
    let mut z = args(addr, Mode::ZeroRtt, 4);
    z.capture = Some(capture.clone());
    let zero = ttfb::run(&z).expect("0-RTT");
    assert_eq!(
        (zero.ok, zero.resumed, zero.early_sent, zero.early_accepted),
        (4, 4, 4, 4),
        "{zero:?}"
    );
    assert_eq!(seen.early_requests.load(Ordering::SeqCst), 4);
    assert!(zero.ttfb_ms.is_some_and(|q| q.p50 > 0.0 && q.p90 >= q.p50));
    let flight = std::fs::read(&capture).expect("captured flight");
    let _ = std::fs::remove_dir_all(&dir);
    // Record types in order: the ClientHello (handshake), maybe a compatibility ChangeCipherSpec, then the
    // early request as application data.
    let mut types = Vec::new();
    let mut rest = &flight[..];
    while let [kind, _, _, hi, lo, body @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        assert!(body.len() >= len, "a truncated record in {flight:?}");
        types.push(*kind);
        rest = &body[len..];
    }
    assert!(rest.is_empty(), "trailing bytes after the records");
    assert_eq!(types.first(), Some(&0x16), "{types:?}");
    assert_eq!(types.last(), Some(&0x17), "{types:?}");
}

#[test]
fn early_data_the_server_refuses_is_sent_again_after_the_handshake() {
    // The priming connection gets a ticket that allows early data; the sample's server shares the session cache
    // (so it resumes) but has early data off (so it refuses the early request).
    let early = server_config(16384);
    let mut refusing = server_config(0);
    refusing.session_storage = early.session_storage.clone();
    let (addr, seen) = start(vec![Arc::new(early), Arc::new(refusing)]);
    let zero = ttfb::run(&args(addr, Mode::ZeroRtt, 1)).expect("0-RTT");
    assert_eq!(
        (zero.ok, zero.resumed, zero.early_sent, zero.early_accepted),
        (1, 1, 1, 0),
        "{zero:?}"
    );
    assert_eq!(seen.early_requests.load(Ordering::SeqCst), 0);
}

#[test]
fn stash_only_samples_use_the_primed_tickets_after_the_pause() {
    // Priming connections offer no ticket (full handshakes) and rustls sends two per handshake: four stashed, so
    // six samples that keep none resume four times and then make full handshakes.
    let (addr, _) = start(vec![Arc::new(server_config(16384))]);
    let dir = std::env::temp_dir().join(format!("ttfb-stash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pause = dir.join("pause");
    let remover = {
        let pause = pause.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !pause.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            std::fs::remove_file(&pause).expect("the probe created the pause file");
        })
    };
    let mut a = args(addr, Mode::Resumed, 6);
    a.primes = 2;
    a.stash_only = true;
    a.pause_file = Some(pause);
    let report = ttfb::run(&a).expect("stash-only");
    remover.join().expect("remover");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (report.ok, report.resumed, report.primes),
        (6, 4, 2),
        "{report:?}"
    );
    assert!(
        report
            .samples
            .iter()
            .all(|s| s.handshake_us > 0 && s.handshake_us <= s.ttfb_us)
    );
}
