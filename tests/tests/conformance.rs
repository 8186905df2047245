//! Differential test (issue 17): the same scripted byte streams sent to the portcullis daemon (tcp mode) and to
//! a bare rustls server with the same configuration (same certificates, ALPN, versions, tickets off and the same
//! session cache size), and the bytes each sends back until it closes compared: plaintext alerts exactly, other
//! records by content type ([`Item`]).
//!
//! Deliberate differences, each asserted on its own in [`deliberate`]:
//! - Bytes that cannot start a TLS record (first byte not a content type 20..=24, or a major version other than
//!   3): portcullis closes without a byte and counts `not_tls` (plaintext HTTP, scanners), where rustls answers
//!   with an alert nobody reads.
//! - A first handshake message longer than `tls.max_client_hello_size` (64 KiB here): portcullis sends
//!   `decode_error` (RFC 8446 §6) and counts `hello_too_large`; rustls closes without an alert past its own
//!   limit (a body over 65,535 bytes). The same for a ClientHello whose records, headers included, overflow
//!   rustls' 64 KiB buffer (one cut into tiny records): rustls' `read_tls` fails and the server closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_abi::hello_fixtures::{CAPTURED, Rng, mutate};
use portcullis_tests::bare_rustls::{BareServer, Item, exchange, items, read_to_close};
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir};
use portcullis_tests::pki::Pki;

/// Time between two scripted writes, so each leaves as its own TCP segment and the server reads them apart.
const SEGMENT_GAP: Duration = Duration::from_millis(3);
/// Cases of the seeded mutation run.
const MUTATIONS: usize = 300;
/// Largest TLS plaintext fragment (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 1 << 14;

struct Servers {
    daemon: Daemon,
    bare: BareServer,
    pki: Pki,
    _dir: TempDir,
}

impl Servers {
    fn start() -> Self {
        let dir = TempDir::new("conformance").expect("tempdir");
        let pki = Pki::generate(dir.path()).expect("pki");
        let toml = pki.tls_section("tickets = \"off\"");
        let daemon = Daemon::start(DaemonOptions {
            config_toml: Some(toml.clone()),
            ..Default::default()
        })
        .expect("daemon starts");
        // The reference is built by the daemon's own code from the same config, plus the daemon's session cache
        // size: rustls' defaults for everything else, as in the daemon.
        let config = portcullis::config::Config::parse(&toml).expect("config");
        let provider = portcullis::tls::provider();
        let certs = portcullis::tls::load_certificates(&config.tls, dir.path(), &provider)
            .expect("certificates");
        let resolver = portcullis::tls::resolver(&certs).expect("resolver");
        let base =
            portcullis::tls::server_config(&config.tls, resolver, provider).expect("server config");
        let mut reference = (*base).clone();
        reference.session_storage =
            rustls::server::ServerSessionMemoryCache::new(config.tls.session_cache_size);
        let bare = BareServer::start(Arc::new(reference)).expect("bare rustls server");
        Self {
            daemon,
            bare,
            pki,
            _dir: dir,
        }
    }

    /// Both servers' answers to `segments`, sent to each at the same time.
    fn answers(&self, segments: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
        let (ours, theirs) = (self.daemon.addr(), self.bare.addr);
        std::thread::scope(|s| {
            let ours = s.spawn(|| exchange(ours, segments, SEGMENT_GAP));
            let theirs = exchange(theirs, segments, SEGMENT_GAP);
            (ours.join().expect("daemon exchange"), theirs)
        })
    }
}

/// A scripted client: a name for the report and the TCP segments it sends before ending the stream.
struct Case {
    name: String,
    segments: Vec<Vec<u8>>,
    /// A difference [`deliberate`] cannot see in the bytes.
    deliberate: Option<Deliberate>,
}

impl Case {
    fn new(name: impl Into<String>, segments: Vec<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            segments,
            deliberate: None,
        }
    }

    fn whole(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self::new(name, vec![bytes])
    }
}

/// Runs every case against both servers; returns the cases whose answers differ, with both answers.
fn differences(servers: &Servers, cases: &[Case]) -> Vec<String> {
    let mut out = Vec::new();
    for case in cases {
        let (ours, theirs) = servers.answers(&case.segments);
        let sent: Vec<u8> = case.segments.concat();
        let (ours, theirs) = (items(&ours), items(&theirs));
        let agree = match case.deliberate.as_ref().or(deliberate(&sent).as_ref()) {
            Some(Deliberate::NotTls) => ours.is_empty(),
            Some(Deliberate::TooLarge) => ours == [Item::Alert([2, 50])],
            None => ours == theirs,
        };
        if !agree {
            out.push(format!(
                "{} (starts {:?}, {} bytes): portcullis {ours:?}, rustls {theirs:?}",
                case.name,
                &sent[..sent.len().min(12)],
                sent.len()
            ));
        }
    }
    out
}

/// Why portcullis answers a stream differently from bare rustls on purpose (see the module docs).
#[derive(Debug, Clone, Copy)]
enum Deliberate {
    NotTls,
    TooLarge,
}

fn deliberate(sent: &[u8]) -> Option<Deliberate> {
    // As the daemon's `handshake::inspect::looks_like_tls`: a TLS record header, or an SSL 2.0 CLIENT-HELLO's.
    let tls = match sent {
        [] => true,
        [typ] => (20..=24).contains(typ) || typ & 0x80 != 0,
        [typ, _] if typ & 0x80 != 0 => true,
        [typ, _, msg] if typ & 0x80 != 0 => *msg == 1,
        [typ, _, msg, major, ..] if typ & 0x80 != 0 => *msg == 1 && *major == 3,
        [typ, major, ..] => (20..=24).contains(typ) && *major == 3,
    };
    if !tls {
        return Some(Deliberate::NotTls);
    }
    // The first handshake message's declared length, from its header however records split it.
    let mut header: Vec<u8> = Vec::new();
    let mut rest = sent;
    while header.len() < 4 {
        let [22, _, _, hi, lo, body @ ..] = rest else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let payload = body.get(..len).unwrap_or(body);
        header.extend(payload.iter().take(4 - header.len()));
        rest = body.get(len..).unwrap_or_default();
    }
    let declared =
        4 + (usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]));
    (declared > 64 * 1024).then_some(Deliberate::TooLarge)
}

fn assert_no_differences(servers: &Servers, cases: &[Case]) {
    let diffs = differences(servers, cases);
    assert!(
        diffs.is_empty(),
        "{} of {} cases differ from bare rustls:\n{}",
        diffs.len(),
        cases.len(),
        diffs.join("\n")
    );
}

// --- Building scripts -------------------------------------------------------------------------------------

/// The handshake message of a captured ClientHello (its first record's payload).
fn message(raw: &[u8]) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([raw[3], raw[4]]));
    raw[5..5 + len].to_vec()
}

/// What a captured ClientHello sent after its first record (early data), if anything.
fn after_first_record(raw: &[u8]) -> &[u8] {
    &raw[5 + message(raw).len()..]
}

/// `message` in handshake records (version 0x0301) whose payloads end at `cuts` and are at most 2^14 bytes.
fn records(message: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut bounds: Vec<usize> = cuts.to_vec();
    bounds.extend((1..=message.len() / MAX_FRAGMENT).map(|i| i * MAX_FRAGMENT));
    bounds.push(message.len());
    bounds.sort_unstable();
    bounds.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for end in bounds.into_iter().filter(|&b| b > 0) {
        let payload = &message[start..end];
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        start = end;
    }
    out
}

/// `wire` cut into TCP segments at `cuts`.
fn segments(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain([&wire.len()]) {
        if cut > start && cut <= wire.len() {
            out.push(wire[start..cut].to_vec());
            start = cut;
        }
    }
    out
}

/// Offsets of the record boundaries in `wire` (a sequence of whole records).
fn record_boundaries(wire: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        at += 5 + usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        out.push(at);
    }
    out
}

/// Where a ClientHello message's extensions block length sits (after version, random, session id, cipher
/// suites and compression methods).
fn extensions_offset(message: &[u8]) -> usize {
    let sid = 4 + 2 + 32;
    let suites = sid + 1 + usize::from(message[sid]);
    let compression =
        suites + 2 + usize::from(u16::from_be_bytes([message[suites], message[suites + 1]]));
    compression + 1 + usize::from(message[compression])
}

/// `message` grown to `total` bytes by an unknown extension (type 0x7777, which servers ignore) put first, so
/// that pre_shared_key stays last (RFC 8446 §4.2.11).
fn padded(message: &[u8], total: usize) -> Vec<u8> {
    let at = extensions_offset(message);
    let body = total - message.len() - 4;
    let mut out = message[..at].to_vec();
    let ext_len = u16::from_be_bytes([message[at], message[at + 1]]) as usize + 4 + body;
    out.extend_from_slice(&(ext_len as u16).to_be_bytes());
    out.extend_from_slice(&0x7777u16.to_be_bytes());
    out.extend_from_slice(&(body as u16).to_be_bytes());
    out.extend(std::iter::repeat_n(0x5a, body));
    out.extend_from_slice(&message[at + 2..]);
    let len = (out.len() - 4) as u32;
    out[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
    out
}

fn captured(name: &str) -> &'static [u8] {
    CAPTURED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, bytes, _)| *bytes)
        .unwrap_or_else(|| panic!("no captured ClientHello {name}"))
}

// --- The cases --------------------------------------------------------------------------------------------

/// Valid ClientHellos from every captured stack, whole, in records cut at several places (inside the handshake
/// header, inside the random, mid-way, every 512 bytes), and in segments cut at every record boundary and at
/// several other places.
fn valid_hello_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, raw, _) in CAPTURED {
        let m = message(raw);
        let tail = after_first_record(raw);
        let with_tail = |wire: Vec<u8>| [wire, tail.to_vec()].concat();
        cases.push(Case::whole(format!("{name} as captured"), raw.to_vec()));
        let every_512: Vec<usize> = (1..m.len() / 512 + 1).map(|i| i * 512).collect();
        for cuts in [vec![1], vec![4], vec![40], vec![m.len() / 2], every_512] {
            let wire = with_tail(records(&m, &cuts));
            cases.push(Case::whole(
                format!("{name} in records cut at {cuts:?}"),
                wire.clone(),
            ));
            let at = record_boundaries(&wire);
            cases.push(Case::new(
                format!("{name} in records cut at {cuts:?}, a segment per record"),
                segments(&wire, &at),
            ));
        }
        let len = raw.len();
        for cuts in [vec![5], vec![1, 6, 9, len / 2, len - 1]] {
            cases.push(Case::new(
                format!("{name} in segments cut at {cuts:?}"),
                segments(raw, &cuts),
            ));
        }
    }
    cases
}

/// ClientHellos longer than one record: the 18,872 bytes (two records) and 41,312 (three), and 60 KiB
/// (four), from three stacks, whole and a segment per record; and one declared over the limit.
fn oversized_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for name in ["curl_sni", "openssl_tls13", "rustls_x25519mlkem768"] {
        let m = message(captured(name));
        for wire_len in [18_872, 41_312, 60 * 1024] {
            let records_needed = wire_len / (MAX_FRAGMENT + 5) + 1;
            let wire = records(&padded(&m, wire_len - 5 * records_needed), &[]);
            cases.push(Case::whole(
                format!("{name} padded to {} bytes", wire.len()),
                wire.clone(),
            ));
            let at = record_boundaries(&wire);
            cases.push(Case::new(
                format!(
                    "{name} padded to {} bytes, a segment per record",
                    wire.len()
                ),
                segments(&wire, &at),
            ));
        }
    }
    // One record of 2^14 + 200 bytes of plaintext (tlsfuzzer's "too big ClientHello msg"): over RFC 8446 §5.1's
    // limit, yet rustls serves it (its limit on a record is 2^14 + 2048), and so must we.
    let m = padded(&message(captured("curl_sni")), MAX_FRAGMENT + 200);
    let mut wire = vec![22, 3, 1];
    wire.extend_from_slice(&(m.len() as u16).to_be_bytes());
    wire.extend_from_slice(&m);
    cases.push(Case::whole(
        "curl_sni in one record of 2^14 + 200 bytes",
        wire,
    ));
    // Declared longer than 64 KiB: refused as soon as the header is in (deliberate difference).
    let mut header = vec![22, 3, 1, 0, 4, 1, 0x01, 0x20, 0x00];
    header.extend(std::iter::repeat_n(0, 64));
    cases.push(Case::whole("declared 73,732 bytes", header));
    // 12 KiB in records of 16 bytes: 3.8 KiB of record headers, within rustls' buffer; in records of 1 byte,
    // 61 KiB of headers overflow it (deliberate difference).
    let m = padded(&message(captured("curl_sni")), 12 * 1024);
    for (size, deliberate) in [(16, None), (1, Some(Deliberate::TooLarge))] {
        let cuts: Vec<usize> = (1..m.len().div_ceil(size)).map(|i| i * size).collect();
        cases.push(Case {
            name: format!("curl_sni padded to 12 KiB in records of {size} bytes"),
            segments: vec![records(&m, &cuts)],
            deliberate,
        });
    }
    cases
}

/// Invalid ClientHellos, by field, from curl's: every other handshake type, wrong lengths, wrong versions,
/// truncations, other records first.
fn invalid_hello_cases() -> Vec<Case> {
    let raw = captured("curl_sni");
    let m = message(raw);
    let mut cases = Vec::new();
    for typ in (0..=255u8).filter(|t| *t != 1) {
        let mut bad = raw.to_vec();
        bad[5] = typ;
        cases.push(Case::whole(format!("handshake type {typ}"), bad));
    }
    let hs_len = |delta: i64| {
        let mut bad = raw.to_vec();
        let len = (m.len() as i64 - 4 + delta) as u32;
        bad[6..9].copy_from_slice(&len.to_be_bytes()[1..]);
        bad
    };
    for delta in [-1, 1, -100] {
        cases.push(Case::whole(
            format!("handshake length {delta:+}"),
            hs_len(delta),
        ));
    }
    let mut zero = raw[..5].to_vec();
    zero[3..5].copy_from_slice(&4u16.to_be_bytes());
    zero.extend_from_slice(&[1, 0, 0, 0]);
    cases.push(Case::whole("empty ClientHello body", zero));
    let record_len = |len: u16| {
        let mut bad = raw.to_vec();
        bad[3..5].copy_from_slice(&len.to_be_bytes());
        bad
    };
    cases.push(Case::whole("record length 0", record_len(0)));
    cases.push(Case::whole(
        "record length one short",
        record_len(m.len() as u16 - 1),
    ));
    cases.push(Case::whole(
        "record length 2^14 + 2048 + 1",
        [
            record_len((MAX_FRAGMENT + 2048 + 1) as u16),
            vec![0; MAX_FRAGMENT + 2048],
        ]
        .concat(),
    ));
    for (what, at, value) in [
        ("record version 3.127", 2, 0x7f),
        ("legacy_version 2.0", 9, 0x02),
        ("session id length 33", 5 + 38, 33),
        ("session id length 255", 5 + 38, 255),
    ] {
        let mut bad = raw.to_vec();
        bad[at] = value;
        cases.push(Case::whole(what, bad));
    }
    let ext = 5 + extensions_offset(&m);
    for delta in [-1i32, 1] {
        let mut bad = raw.to_vec();
        let len = (i32::from(u16::from_be_bytes([bad[ext], bad[ext + 1]])) + delta) as u16;
        bad[ext..ext + 2].copy_from_slice(&len.to_be_bytes());
        cases.push(Case::whole(format!("extensions length {delta:+}"), bad));
    }
    for cut in [1, 3, 5, 6, 9, 50, raw.len() / 2, raw.len() - 1] {
        cases.push(Case::whole(
            format!("truncated to {cut} bytes"),
            raw[..cut].to_vec(),
        ));
    }
    for (what, first) in [
        ("ChangeCipherSpec first", vec![20, 3, 3, 0, 1, 1]),
        ("warning alert first", vec![21, 3, 3, 0, 2, 1, 0]),
        ("fatal alert first", vec![21, 3, 3, 0, 2, 2, 40]),
        ("application data first", vec![23, 3, 3, 0, 3, 1, 2, 3]),
        ("heartbeat first", vec![24, 3, 3, 0, 3, 1, 0, 0]),
    ] {
        cases.push(Case::whole(what, [first, raw.to_vec()].concat()));
    }
    // An SSL 2.0 CLIENT-HELLO offering TLS 1.3 suites (tlsfuzzer's test-tls13-version-negotiation, which expects
    // an alert): rustls' alert, as from rustls (RFC 8446 Appendix D.5: TLS 1.3 is never negotiated with one).
    let mut body = vec![
        1, 3, 3, 0, 6, 0, 0, 0, 16, 0x00, 0x13, 0x01, 0x00, 0x13, 0x02,
    ];
    body.extend([0x42; 16]);
    let sslv2 = [vec![0x80, body.len() as u8], body].concat();
    cases.push(Case::whole(
        "SSL 2.0 CLIENT-HELLO with TLS 1.3 suites",
        sslv2,
    ));
    cases.push(Case::whole(
        "a ChangeCipherSpec between two records of the ClientHello",
        [
            records(&m, &[100])[..105].to_vec(),
            vec![20, 3, 3, 0, 1, 1],
            records(&m, &[100])[105..].to_vec(),
        ]
        .concat(),
    ));
    cases
}

/// The seeded mutation run: captured ClientHellos with 1–4 random edits each.
fn mutation_cases() -> Vec<Case> {
    let mut rng = Rng(0x1717_c0ff_ee17_2026);
    (0..MUTATIONS)
        .map(|i| {
            let (name, raw, _) = CAPTURED[rng.below(CAPTURED.len())];
            Case::whole(format!("mutation {i} of {name}"), mutate(&mut rng, raw))
        })
        .collect()
}

#[test]
fn valid_client_hellos_split_anywhere_are_answered_as_bare_rustls() {
    let servers = Servers::start();
    assert_no_differences(&servers, &valid_hello_cases());
    servers.daemon.stop_ok();
}

#[test]
fn client_hellos_longer_than_a_record_are_served() {
    let servers = Servers::start();
    let cases = oversized_cases();
    assert_no_differences(&servers, &cases);
    // The acceptance case itself: 41,312 bytes in three records, a segment each, gets a ServerHello.
    let m = padded(&message(captured("rustls_x25519mlkem768")), 41_312 - 15);
    let wire = records(&m, &[]);
    assert_eq!((wire.len(), record_boundaries(&wire).len()), (41_312, 3));
    let (ours, _) = servers.answers(&segments(&wire, &record_boundaries(&wire)));
    assert_eq!(items(&ours).first(), Some(&Item::Record(22)), "ServerHello");
    assert_eq!(
        ours.get(5),
        Some(&2),
        "the first handshake message is a ServerHello"
    );
    let count = |result| {
        servers
            .daemon
            .metric("portcullis_handshakes_total", &[("result", result)])
            .expect("metrics")
    };
    // The one declared over 64 KiB and the one in 1-byte records.
    assert_eq!(count("hello_too_large"), 2.0);
    servers.daemon.stop_ok();
}

#[test]
fn invalid_client_hellos_get_the_alert_bare_rustls_sends() {
    let servers = Servers::start();
    let cases = invalid_hello_cases();
    assert_no_differences(&servers, &cases);
    let count = |result| {
        servers
            .daemon
            .metric("portcullis_handshakes_total", &[("result", result)])
            .expect("metrics")
    };
    assert_eq!(count("ok"), 0.0);
    assert!(
        count("protocol_error") >= 255.0,
        "every wrong handshake type is a protocol error"
    );
    servers.daemon.stop_ok();
}

#[test]
fn mutated_client_hellos_are_answered_as_bare_rustls() {
    let servers = Servers::start();
    assert_no_differences(&servers, &mutation_cases());
    servers.daemon.stop_ok();
}

// --- After the handshake ----------------------------------------------------------------------------------

/// Completes a handshake with a rustls client at `version`, sends `probe` raw, ends the stream, and returns the
/// records the server sent after the handshake and what the client made of them (the alert it received, or how
/// the stream ended).
fn probe_after_handshake(
    pki: &Pki,
    addr: SocketAddr,
    version: &'static rustls::SupportedProtocolVersion,
    probe: &[u8],
) -> (Vec<Item>, String) {
    use std::io::Write;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).expect("CA");
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = "ecdsa.test".try_into().expect("server name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    while client.is_handshaking() {
        client.complete_io(&mut tcp).expect("handshake");
    }
    while client.wants_write() {
        client.write_tls(&mut tcp).expect("client Finished");
    }
    let _ = tcp.write_all(probe);
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let sent = read_to_close(&mut tcp);
    let mut rest = sent.as_slice();
    let outcome = loop {
        if rest.is_empty() {
            break "end of stream".to_owned();
        }
        if let Err(e) = client.read_tls(&mut rest) {
            break format!("client read: {e}");
        }
        match client.process_new_packets() {
            Err(e) => break e.to_string(),
            Ok(state) if state.peer_has_closed() => break "close_notify".to_owned(),
            Ok(_) => {}
        }
    };
    (items(&sent), outcome)
}

#[test]
fn records_after_the_handshake_are_answered_as_bare_rustls() {
    let servers = Servers::start();
    let junk = |len: usize| {
        [
            vec![23, 3, 3],
            (len as u16).to_be_bytes().to_vec(),
            vec![0x5a; len],
        ]
        .concat()
    };
    // (probe, its bytes, what the client must see: so that two servers both failing the same way cannot pass)
    let probes: [(&str, Vec<u8>, &str); 6] = [
        ("nothing", vec![], "close_notify"),
        (
            "ChangeCipherSpec after Finished",
            vec![20, 3, 3, 0, 1, 1],
            "received fatal alert: UnexpectedMessage",
        ),
        (
            "plaintext alert after Finished",
            vec![21, 3, 3, 0, 2, 2, 40],
            "received fatal alert: BadRecordMac",
        ),
        (
            "undecryptable record of the maximum size, 2^14 + 256",
            junk(MAX_FRAGMENT + 256),
            "received fatal alert: BadRecordMac",
        ),
        (
            "record of 2^14 + 256 + 1 bytes",
            junk(MAX_FRAGMENT + 257),
            "received fatal alert: BadRecordMac",
        ),
        (
            "record of 2^14 + 2048 + 1 bytes",
            junk(MAX_FRAGMENT + 2049),
            "received fatal alert: DecodeError",
        ),
    ];
    let mut diffs = Vec::new();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for (what, probe, expected) in &probes {
            let ours = probe_after_handshake(&servers.pki, servers.daemon.addr(), version, probe);
            let theirs = probe_after_handshake(&servers.pki, servers.bare.addr, version, probe);
            if ours != theirs || ours.1 != *expected {
                diffs.push(format!(
                    "{version:?} {what}: portcullis {ours:?}, rustls {theirs:?}, expected {expected}"
                ));
            }
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    servers.daemon.stop_ok();
}

// --- Padding and plaintext-size probes, sealed by hand ----------------------------------------------------

/// A TLS 1.3 AES-128-GCM traffic key taken from a finished rustls client (RFC 8446 §5.2-5.3), to seal records
/// rustls will not send (all-zero or maximal padding, oversized plaintext) and open the server's answer.
struct RecordKey {
    key: ring::aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl RecordKey {
    fn new((seq, secrets): (u64, rustls::ConnectionTrafficSecrets)) -> Self {
        let rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("the probe client offers TLS_AES_128_GCM_SHA256 only");
        };
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, key.as_ref()).expect("key");
        Self {
            key: ring::aead::LessSafeKey::new(key),
            iv: iv.as_ref().try_into().expect("12-byte IV"),
            seq,
        }
    }

    fn nonce(&mut self) -> ring::aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        ring::aead::Nonce::assume_unique_for_key(nonce)
    }

    /// A record carrying `inner` as its TLSInnerPlaintext (content, type, padding: the caller's choice).
    fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let len = (inner.len() + 16) as u16;
        let header = [23, 3, 3, (len >> 8) as u8, len as u8];
        let mut body = inner.to_vec();
        let nonce = self.nonce();
        self.key
            .seal_in_place_append_tag(nonce, ring::aead::Aad::from(header), &mut body)
            .expect("seal");
        [header.to_vec(), body].concat()
    }

    /// What each record in `bytes` carries: `alert <level> <description>`, the inner content type, or `opaque`.
    fn open_all(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some((header, body)) = rest.split_first_chunk::<5>() {
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let Some((payload, next)) = body.split_at_checked(len) else {
                out.push(format!("{} trailing bytes", rest.len()));
                break;
            };
            rest = next;
            let mut inner = payload.to_vec();
            let nonce = self.nonce();
            let Ok(plain) =
                self.key
                    .open_in_place(nonce, ring::aead::Aad::from(*header), &mut inner)
            else {
                out.push("opaque".to_owned());
                continue;
            };
            let end = plain.iter().rposition(|b| *b != 0).unwrap_or(0);
            out.push(match (plain.get(end), plain.get(..end)) {
                (Some(21), Some(&[level, description])) => format!("alert {level} {description}"),
                (Some(typ), _) => format!("type {typ}"),
                (None, _) => "empty".to_owned(),
            });
        }
        out
    }
}

/// Completes a TLS 1.3 handshake, sends `probe` (given the client's key to seal records) and ends the stream;
/// returns what each record the server sent afterwards carries.
fn sealed_probe(
    pki: &Pki,
    addr: SocketAddr,
    probe: impl Fn(&mut RecordKey) -> Vec<u8>,
) -> Vec<String> {
    use std::io::Write;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).expect("CA");
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.enable_secret_extraction = true;
    let name = "ecdsa.test".try_into().expect("server name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    while client.is_handshaking() {
        client.complete_io(&mut tcp).expect("handshake");
    }
    while client.wants_write() {
        client.write_tls(&mut tcp).expect("client Finished");
    }
    let secrets = client.dangerous_extract_secrets().expect("secrets");
    let mut tx = RecordKey::new(secrets.tx);
    let mut rx = RecordKey::new(secrets.rx);
    let _ = tcp.write_all(&probe(&mut tx));
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    rx.open_all(&read_to_close(&mut tcp))
}

#[test]
fn padding_and_plaintext_size_probes_are_answered_as_bare_rustls() {
    let servers = Servers::start();
    let with_type =
        |content: &[u8], typ: u8, padding: usize| [content, &[typ], &vec![0; padding]].concat();
    // (probe, TLSInnerPlaintext, what the last record the client gets carries; RFC 8446 §5.4: at most 2^14 + 1
    // bytes, padding included, and a content type that is not all zeros). After an all-zero plaintext rustls 0.23
    // closes without the unexpected_message §5.4 asks for (its error, IllegalTlsInnerPlaintext, queues no
    // alert), so only the session tickets come back; portcullis answers as rustls does.
    let probes: [(&str, Vec<u8>, &str); 5] = [
        ("all-zero inner plaintext", vec![0; 64], "type 22"),
        (
            "empty application data, padded to 2^14 + 1",
            with_type(&[], 23, MAX_FRAGMENT),
            "alert 1 0",
        ),
        (
            "empty application data, padded to 2^14 + 2",
            with_type(&[], 23, MAX_FRAGMENT + 1),
            "alert 2 22",
        ),
        (
            "2^14 + 1 bytes of application data",
            with_type(&[b'x'; MAX_FRAGMENT + 1], 23, 0),
            "alert 2 22",
        ),
        (
            "a handshake message of another type, padded",
            with_type(&[0, 0, 0, 0], 22, 100),
            "alert 2 10",
        ),
    ];
    let mut diffs = Vec::new();
    for (what, inner, expected_last) in &probes {
        let ours = sealed_probe(&servers.pki, servers.daemon.addr(), |k| k.seal(inner));
        let theirs = sealed_probe(&servers.pki, servers.bare.addr, |k| k.seal(inner));
        let last = ours.last().map(String::as_str);
        if ours != theirs || last != Some(*expected_last) {
            diffs.push(format!(
                "{what}: portcullis {ours:?}, rustls {theirs:?}, expected to end with {expected_last}"
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    servers.daemon.stop_ok();
}
