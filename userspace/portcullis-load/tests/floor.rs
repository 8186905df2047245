//! The floor server (`portcullis-load floor`) against the load generator's own clients: every kind completes,
//! resuming kinds resume (TLS 1.3 tickets, TLS 1.2 tickets and session IDs), and the server answers the client's
//! close_notify with its own and closes.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_load::client_config::{ClientConfigs, TlsOptions};
use portcullis_load::connection::{ConnSpec, Target};
use portcullis_load::floor;
use portcullis_load::kind::Kind;
use portcullis_load::runner::{self, Load, RunSpec};
use rustls::pki_types::ServerName;

/// A fresh self-signed ECDSA P-256 certificate for `localhost` as PEM files in a directory of this test.
fn cert_files(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-load-floor-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

/// Starts the floor on 127.0.0.1:0 in a thread (it ends with the test process).
fn start(name: &str) -> SocketAddr {
    let (cert, key) = cert_files(name);
    let config = floor::server_config(&cert, &key).expect("floor config");
    // Loaded: the files are not needed any more.
    if let Some(dir) = cert.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let listener = floor::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || floor::serve(listener, config));
    addr
}

#[test]
fn every_kind_completes_and_resuming_kinds_resume() {
    let addr = start("kinds");
    let kinds = "full13:1,resume13:1,resume12-ticket:1,resume12-id:1,full12:1";
    let spec = RunSpec {
        targets: vec![Target {
            addr,
            sni: ServerName::try_from("localhost").expect("name"),
        }],
        mix: kinds.parse().expect("mix"),
        tls: TlsOptions::default(),
        conn: ConnSpec {
            request: None,
            keep: Duration::ZERO,
            timeout: Duration::from_secs(5),
            sources: Vec::new().into(),
        },
        load: Load::Closed {
            concurrency: 4,
            duration: Duration::from_millis(500),
        },
        max_connections: 200,
        max_inflight: 64,
        seed: 1,
        preflight: true,
        progress: false,
    };
    let report = runner::run(spec).expect("run");
    assert_eq!(report.failed, 0, "{}", report.table());
    assert!(report.ok >= 20, "{}", report.table());
    for kind in [Kind::Resume13, Kind::Resume12Ticket, Kind::Resume12Id] {
        let k = &report.kinds[kind.name()];
        // Only each slot's first connection of a kind has nothing to resume with.
        assert!(
            k.ok >= 4 && k.resumed + 4 >= k.ok,
            "{}: {} ok, {} resumed\n{}",
            kind.name(),
            k.ok,
            k.resumed,
            report.table()
        );
    }
    for kind in [Kind::Full13, Kind::Full12] {
        let k = &report.kinds[kind.name()];
        assert!(
            k.ok >= 4 && k.resumed == 0,
            "{}\n{}",
            kind.name(),
            report.table()
        );
    }
}

#[test]
fn the_server_answers_close_notify_with_its_own_and_closes() {
    let addr = start("close");
    let configs =
        ClientConfigs::new(&TlsOptions::default(), [Kind::Resume13]).expect("client configs");
    let config = configs.of(Kind::Resume13).expect("config");
    let name = ServerName::try_from("localhost").expect("name");
    // Twice: the second connection resumes with a ticket the first one collected before the server closed.
    for round in 0..2 {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut tls =
            rustls::ClientConnection::new(Arc::clone(&config), name.clone()).expect("client");
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).expect("handshake");
        }
        let resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        assert_eq!(resumed, round == 1, "round {round}");
        tls.send_close_notify();
        tls.complete_io(&mut tcp).expect("send close_notify");
        tcp.shutdown(std::net::Shutdown::Write).expect("shutdown");
        // Read to the end: the tickets, the server's close_notify, then EOF (a timeout fails the test).
        let mut got_close_notify = false;
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).expect("read until the server closes");
            if n == 0 {
                break;
            }
            let mut bytes = &buf[..n];
            while !bytes.is_empty() {
                tls.read_tls(&mut bytes).expect("read_tls");
                let state = tls.process_new_packets().expect("server records");
                got_close_notify |= state.peer_has_closed();
            }
        }
        assert!(got_close_notify, "round {round}: EOF without close_notify");
        let _ = tls.writer().flush();
    }
}
