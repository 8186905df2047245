//! The XDP guard's operator controls end to end: the real daemon with XDP in a server namespace, a client in
//! another, and `portcullis xdp block add|del` (the CLI on the pinned maps) cutting and restoring the client's
//! handshakes without a reload; the block survives a daemon restart (pinned map reused; for fingerprints,
//! recounted); `portcullis xdp set` turns the guard's knobs live (the dry-run switch); ClientHellos spanning TLS
//! records (a 40 KiB one in three) pass native XDP and are answered, a ChangeCipherSpec inside one is dropped. Also
//! `portcullis fingerprint` on the captured ClientHello fixtures.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use portcullis_abi::{
    hello_fixtures::{enlarged, handshake_of, in_records, record},
    names::{MAP_XDP_BLOCK_FP, MAP_XDP_BUDGET_SEED, PROG_XDP},
    packet::{ETH_P_IP, TCP_FLAG_ACK, TCP_FLAG_SYN},
    packet_fixtures::{frame, ipv4, tcp},
};
use portcullis_tests::{
    bpftool::{map_update, prog_run, single_u64},
    daemon::{Daemon, TempDir, binary, metric_value},
    privileged::require_root,
    testbed::XdpTestbed,
};

/// How long a blocked connect may wait for the SYN-ACK that must not come.
const BLOCKED_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[test]
fn blocked_prefix_cannot_handshake_until_removed() {
    if !require_root("blocked_prefix_cannot_handshake_until_removed") {
        return;
    }
    let bed = XdpTestbed::builder("guard-prefix")
        .build()
        .expect("XDP testbed");
    let (client, veth) = (&bed.client, &bed.veth);
    let daemon = bed.start_daemon();
    let listener = daemon.addr();

    assert!(bed.s_client(listener, 30), "handshake before any block");

    let cidr = format!("{}/24", veth.a.addr);
    bed.cli(&["block", "add", &cidr]);
    let listed = bed.cli(&["block", "list"]);
    assert!(
        listed.lines().count() == 1 && listed.contains("/24"),
        "block list after add: {listed}"
    );
    // The program looks the trie up per packet: the very next SYN is dropped, no reload, no wait.
    let connect = client
        .run(|| TcpStream::connect_timeout(&listener, BLOCKED_CONNECT_TIMEOUT))
        .expect("enter client namespace");
    assert!(
        connect.is_err(),
        "a TCP connect from blocked {cidr} completed"
    );
    let metrics = daemon.metrics_text().expect("GET /metrics");
    let dropped = metric_value(
        &metrics,
        "portcullis_xdp_packets_total",
        &[("verdict", "drop_blocked_source")],
    );
    assert!(
        dropped >= 1.0,
        "no drop_blocked_source on /metrics:\n{metrics}"
    );
    // The pinned program gives the same verdict to a packet file through `bpftool prog run`.
    let frame_dir = TempDir::new("xdp-guard-frame").expect("tempdir");
    let syn_file = frame_dir.path().join("syn.bin");
    std::fs::write(&syn_file, syn_frame(&veth.a.addr, listener.port())).expect("write frame");
    let run_out = prog_run(&bed.pin_dir.path().join(PROG_XDP), &syn_file);
    assert!(
        run_out.contains("Return value: 1"),
        "bpftool prog run on a SYN from {cidr}: expected XDP_DROP (1):\n{run_out}"
    );
    let stats = bed.cli(&["stats"]);
    assert!(stats.contains("drop_blocked_source"), "stats: {stats}");
    // Who was dropped: the first drop of each verdict on a CPU is sampled, with its source.
    let drops = bed.cli(&["drops"]);
    assert!(
        drops
            .lines()
            .any(|l| l.starts_with(&veth.a.addr.to_string()) && l.contains("drop_blocked_source")),
        "`xdp drops` does not show {} dropped as drop_blocked_source:\n{drops}",
        veth.a.addr
    );
    let status = bed.cli(&["status"]);
    assert!(status.contains("blocked prefixes 1"), "status: {status}");
    assert!(
        status.contains("hello check      on: portcullis_ch (program id "),
        "the daemon should have put the ClientHello program in its program array: {status}"
    );
    assert!(
        status.contains("prefilter        2 of 131072 bits set"),
        "the prefilter should hold the prefix's IPv4 /16 and its IPv6 hash bit: {status}"
    );

    // The budget tables' hash key was drawn (0 would be an unkeyed hash)...
    let seed_pin = bed.pin_dir.path().join(MAP_XDP_BUDGET_SEED);
    let seed = single_u64(&seed_pin);
    assert_ne!(seed, 0, "the daemon drew no budget hash key");

    // A restart reuses the pinned blocklist: the block holds across it.
    let daemon = restart(&bed, daemon);
    let listener = daemon.addr();
    assert_eq!(
        bed.cli(&["block", "list"]),
        listed,
        "the blocklist did not survive a restart"
    );
    // ...and kept across it, so every source keeps its budget slot.
    assert_eq!(
        single_u64(&seed_pin),
        seed,
        "a restart drew another budget hash key"
    );
    let connect = client
        .run(|| TcpStream::connect_timeout(&listener, BLOCKED_CONNECT_TIMEOUT))
        .expect("enter client namespace");
    assert!(
        connect.is_err(),
        "after a restart, a TCP connect from blocked {cidr} completed"
    );

    bed.cli(&["block", "del", &cidr]);
    assert!(bed.cli(&["block", "list"]).trim().is_empty());
    assert!(
        bed.s_client(listener, 30),
        "handshake after the block was removed"
    );

    daemon.stop_ok();
}

#[test]
fn fingerprint_prints_both_hashes_of_a_captured_hello() {
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf/portcullis-abi/fixtures/client_hello");
    let out = run(Command::new(binary())
        .arg("fingerprint")
        .arg(fixtures.join("curl_sni.bin")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hashes: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(hashes.len(), 2, "{text}");
    assert!(
        hashes
            .iter()
            .all(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text}"
    );
    // This version's format, in the top byte: an operator can tell the values apart from older ones.
    assert!(hashes.iter().all(|h| h.starts_with("02")), "{text}");
    // A value of the old format (curl's, as printed before 2026-11-23) is refused, naming the problem, before any
    // map is opened.
    let out = run(Command::new(binary()).args([
        "xdp",
        "--pin-dir",
        "/nonexistent",
        "block-fingerprint",
        "add",
        "1fe487ba404e0690",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an old-format value exits 2: {stderr}"
    );
    assert!(
        stderr.contains("not a fingerprint of this version's format")
            && stderr.contains("portcullis fingerprint"),
        "{stderr}"
    );

    let junk = TempDir::new("fingerprint").expect("tempdir");
    let file = junk.path().join("http.bin");
    std::fs::write(&file, b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let out = run(Command::new(binary()).arg("fingerprint").arg(&file));
    assert_eq!(out.status.code(), Some(2), "a malformed hello exits 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_handshake_record"));
}

#[test]
fn blocked_fingerprint_cannot_handshake_until_removed() {
    if !require_root("blocked_fingerprint_cannot_handshake_until_removed") {
        return;
    }
    let bed = XdpTestbed::builder("guard-fp")
        .build()
        .expect("XDP testbed");
    let (client, veth) = (&bed.client, &bed.veth);
    let daemon = bed.start_daemon();
    let listener = daemon.addr();
    assert!(bed.s_client(listener, 30), "handshake before any block");

    // What an operator does: capture the client's first bytes, print their fingerprint, block it.
    let capture = client
        .run(|| TcpListener::bind((veth.a.addr, 0)))
        .expect("enter client namespace")
        .expect("bind a capture listener in the client namespace");
    let capture_addr = capture.local_addr().expect("capture address");
    let mut cmd = Command::new("timeout");
    cmd.args([
        "5",
        "openssl",
        "s_client",
        "-connect",
        &capture_addr.to_string(),
    ])
    .args(["-servername", "ecdsa.test"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    client
        .enter_on_spawn(&mut cmd)
        .expect("enter client namespace");
    let mut openssl = cmd.spawn().expect("run openssl s_client");
    let (mut stream, _) = capture
        .accept()
        .expect("s_client connects to the capture listener");
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).expect("record header");
    let mut hello = header.to_vec();
    hello.resize(
        5 + usize::from(u16::from_be_bytes([header[3], header[4]])),
        0,
    );
    stream
        .read_exact(&mut hello[5..])
        .expect("ClientHello record");
    drop(stream);
    let _ = openssl.wait();
    let files = TempDir::new("xdp-fp-capture").expect("tempdir");
    let file = files.path().join("hello.bin");
    std::fs::write(&file, &hello).expect("write capture");
    let out = run(Command::new(binary()).arg("fingerprint").arg(&file));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let unordered = printed
        .lines()
        .find_map(|l| l.strip_prefix("unordered "))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|| panic!("no unordered fingerprint printed: {printed}"));

    // Without a capture: the daemon lists the fingerprints of the ClientHellos it got, the handshake above's among
    // them, where an operator under attack finds the one to block.
    let (code, seen) = daemon
        .admin_get("/fingerprints")
        .expect("GET /fingerprints");
    assert!(
        code == 200
            && seen
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some(unordered.as_str())),
        "{unordered} not in /fingerprints ({code}):\n{seen}"
    );

    let status = bed.cli(&["status"]);
    assert!(
        status.contains("fingerprinting   off (nothing blocked"),
        "status before a block: {status}"
    );
    bed.cli(&["block-fingerprint", "add", &unordered]);
    assert_eq!(
        bed.cli(&["block-fingerprint", "list"]).trim(),
        format!("{unordered}  dropped 0")
    );
    let status = bed.cli(&["status"]);
    assert!(
        status.contains("blocked fingerprints 1")
            && status.contains("fingerprinting   on")
            && status.contains("shapes           1 of 4096"),
        "status after a block: {status}"
    );
    // The program looks the set up per ClientHello: the very next handshake is dropped.
    assert!(
        !bed.s_client(listener, 3),
        "a handshake with blocked fingerprint {unordered} completed"
    );
    let metrics = daemon.metrics_text().expect("GET /metrics");
    let dropped = metric_value(
        &metrics,
        "portcullis_xdp_packets_total",
        &[("verdict", "drop_blocked_fingerprint")],
    );
    assert!(
        dropped >= 1.0,
        "no drop_blocked_fingerprint on /metrics:\n{metrics}"
    );
    // ...and each of those drops is counted for the fingerprint that caused it.
    let listed = bed.cli(&["block-fingerprint", "list"]);
    let for_it: f64 = listed
        .trim()
        .strip_prefix(&format!("{unordered}  dropped "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop count for {unordered}: {listed}"));
    assert!(
        (1.0..=dropped).contains(&for_it),
        "{for_it} drops for {unordered}, {dropped} in all"
    );
    // The same count on /metrics (nothing more reached the program in between: the client gave up).
    let metrics = daemon.metrics_text().expect("GET /metrics");
    assert_eq!(
        metric_value(
            &metrics,
            "portcullis_xdp_fingerprint_drops_total",
            &[("fingerprint", unordered.as_str())],
        ),
        for_it,
        "per-fingerprint drops on /metrics:\n{metrics}"
    );
    assert!(
        metrics.contains("portcullis_xdp_malformed_total{reason=\"bad_key_share\"} 0"),
        "malformed counters are exported per reason:\n{metrics}"
    );
    // The pinned program gives the same verdict to packet files through `bpftool prog run`: a SYN records
    // the flow, the captured ClientHello as its first segment is dropped (XDP_DROP, 1).
    let syn_file = files.path().join("syn.bin");
    std::fs::write(&syn_file, syn_frame(&veth.a.addr, listener.port())).expect("write frame");
    let hello_file = files.path().join("hello-segment.bin");
    std::fs::write(
        &hello_file,
        first_segment_frame(&veth.a.addr, listener.port(), &hello),
    )
    .expect("write frame");
    assert!(bpftool_run(&bed, &syn_file).contains("Return value: 2"));
    let run_out = bpftool_run(&bed, &hello_file);
    assert!(
        run_out.contains("Return value: 1"),
        "bpftool prog run on the blocked ClientHello: expected XDP_DROP (1):\n{run_out}"
    );

    // An upgrade's leftover: the pinned blocklist also holds a value an older version blocked (curl's fingerprint in
    // format 1, from before 2026-11-23), written as that version would have.
    let stale = 0x1fe4_87ba_404e_0690_u64;
    map_update(
        &bed.pin_dir.path().join(MAP_XDP_BLOCK_FP),
        &stale.to_le_bytes(),
        &[1],
    );

    // A restart reuses the pinned blocklist and rebuilds its count and shapes (the program fingerprints only while
    // the count is non-zero, and hashes only ClientHellos of a blocked shape): the block holds across it, and the
    // stale value is reported, not silently kept as if it blocked.
    let daemon = restart(&bed, daemon);
    let listener = daemon.addr();
    assert!(
        !bed.s_client(listener, 3),
        "after a restart, a handshake with blocked fingerprint {unordered} completed"
    );
    let status = bed.cli(&["status"]);
    assert!(
        status.contains("blocked fingerprints 2, 1 of them NOT of this version's format")
            && status.contains("shapes           1 of 4096"),
        "status with a format-1 value in the blocklist: {status}"
    );
    let listed = bed.cli(&["block-fingerprint", "list"]);
    assert!(
        listed.contains("1fe487ba404e0690  not format 2: blocks nothing"),
        "{listed}"
    );
    bed.cli(&["block-fingerprint", "del", "1fe487ba404e0690"]);

    bed.cli(&["block-fingerprint", "del", &unordered]);
    assert!(bed.cli(&["block-fingerprint", "list"]).trim().is_empty());
    assert!(
        bed.cli(&["status"]).contains("fingerprinting   off"),
        "fingerprinting still on with an empty blocklist"
    );
    assert!(
        bed.s_client(listener, 30),
        "handshake after the fingerprint block was removed"
    );
    daemon.stop_ok();
}

/// The incident switch: `portcullis xdp set enforce=false` on a live host turns a drop into a count on the next
/// packet (a blocked source handshakes, and its packets still count as `drop_blocked_source`), `enforce=true`
/// turns it back, and a bad assignment is refused whole (exit 2, nothing written). Budgets are knobs too.
#[test]
fn set_enforce_turns_drops_into_counts_and_back() {
    if !require_root("set_enforce_turns_drops_into_counts_and_back") {
        return;
    }
    let bed = XdpTestbed::builder("guard-set")
        .build()
        .expect("XDP testbed");
    let daemon = bed.start_daemon();
    let listener = daemon.addr();
    let connect = || {
        bed.client
            .run(|| TcpStream::connect_timeout(&listener, BLOCKED_CONNECT_TIMEOUT))
            .expect("enter client namespace")
    };
    let cidr = format!("{}/32", bed.veth.a.addr);
    bed.cli(&["block", "add", &cidr]);
    assert!(
        connect().is_err(),
        "a connect from blocked {cidr} completed"
    );

    let out = bed.cli(&["set", "enforce=false"]);
    assert!(out.contains("xdp.enforce: true -> false"), "{out}");
    assert!(
        bed.cli(&["status"])
            .contains("enforce          no (count only)"),
        "status after enforce=false"
    );
    let counted = |daemon: &Daemon| {
        daemon
            .metric(
                "portcullis_xdp_packets_total",
                &[("verdict", "drop_blocked_source")],
            )
            .expect("GET /metrics")
    };
    let before = counted(&daemon);
    assert!(
        bed.s_client(listener, 30),
        "a blocked source could not handshake with enforce=false"
    );
    assert!(
        counted(&daemon) > before,
        "a dry run must still count what it would drop"
    );

    // Refused whole: the valid half is not written either.
    let out = run(Command::new(binary()).args([
        "xdp",
        "--pin-dir",
        bed.pin_dir.path().to_str().expect("utf-8 pin dir"),
        "set",
        "enforce=true",
        "syn_burst=0",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a bad knob exits 2: {stderr}");
    assert!(
        stderr.contains("xdp.syn_burst = 0: must be at least 1"),
        "{stderr}"
    );
    assert!(
        bed.cli(&["status"])
            .contains("enforce          no (count only)"),
        "a refused set wrote part of itself"
    );

    let out = bed.cli(&["set", "syn_rate=50", "syn_burst=5", "enforce=true"]);
    assert!(out.contains("xdp.enforce: false -> true"), "{out}");
    let status = bed.cli(&["status"]);
    assert!(
        status.contains("syn budget       50/s, burst 5,"),
        "status after syn_rate=50 syn_burst=5: {status}"
    );
    // The pinned budget table, read whole: the capacity of its sets (`portcullis_abi::limits::BudgetSet`).
    assert!(
        status.contains("syn budget table ") && status.contains(" of 4096 sources tracked, "),
        "status shows the SYN budget table: {status}"
    );
    assert!(
        connect().is_err(),
        "a connect from blocked {cidr} completed after enforce=true"
    );

    daemon.stop_ok();
}

#[test]
fn client_hellos_spanning_records_pass_native_xdp() {
    if !require_root("client_hellos_spanning_records_pass_native_xdp") {
        return;
    }
    let bed = split_testbed("guard-split");
    let daemon = bed.start_daemon();
    let listener = daemon.addr();
    let hello = rustls_client_hello();

    // Issue 17's case: the first segment ends exactly after the first of two records (sent alone: the rest is
    // written only once the first is acknowledged), the ClientHello goes on in the second.
    let two = in_records(handshake_of(&hello), &[100]);
    let before = XdpCounts::of(&daemon);
    let answer = bed
        .client
        .run(|| exchange(listener, &[&two[..105], &two[105..]]))
        .expect("enter client namespace");
    XdpCounts::of(&daemon).assert_passed_since(&before, "first segment = first record");
    assert_server_hello(
        &answer,
        "a ClientHello in two records, one per segment",
        &daemon,
    );

    // 40 KiB in three records of up to 2^14 bytes, segmented by the kernel: the first segment is judged (cut short)
    // and passes. (Whether the daemon answers: `a_40_kib_client_hello_in_three_records_is_answered_over_xdp`.)
    let big = enlarged(&hello, 40 * 1024);
    let before = XdpCounts::of(&daemon);
    let _ = bed
        .client
        .run(|| exchange(listener, &[&big]))
        .expect("enter client namespace");
    XdpCounts::of(&daemon).assert_passed_since(&before, "40 KiB ClientHello in three records");

    // A ChangeCipherSpec after the first record, before the ClientHello's last byte (RFC 8446 §5.1 forbids
    // interleaving): the segment is dropped as malformed, and so are its retransmissions: no answer.
    let ccs = [&two[..105], &record(20, &[1])].concat();
    let before = XdpCounts::of(&daemon);
    let answer = bed
        .client
        .run(|| exchange(listener, &[&ccs]))
        .expect("enter client namespace");
    let after = XdpCounts::of(&daemon);
    assert!(
        answer.is_err()
            && after.dropped > before.dropped
            && after.not_handshake_record > before.not_handshake_record,
        "ChangeCipherSpec inside a ClientHello: answer {answer:?}, XDP counts {before:?} -> {after:?}"
    );

    daemon.stop_ok();
}

/// Issue 17's acceptance: a ClientHello of 40 KiB in three records, over native XDP, is answered (XDP passes it,
/// the handshake reads it across the records).
#[test]
fn a_40_kib_client_hello_in_three_records_is_answered_over_xdp() {
    if !require_root("a_40_kib_client_hello_in_three_records_is_answered_over_xdp") {
        return;
    }
    let bed = split_testbed("guard-40k");
    let daemon = bed.start_daemon();
    let listener = daemon.addr();
    let big = enlarged(&rustls_client_hello(), 40 * 1024);
    assert_eq!(big.len(), 40 * 1024 + 3 * 5, "three records");
    let before = XdpCounts::of(&daemon);
    let answer = bed
        .client
        .run(|| exchange(listener, &[&big]))
        .expect("enter client namespace");
    XdpCounts::of(&daemon).assert_passed_since(&before, "40 KiB ClientHello in three records");
    assert_server_hello(&answer, "a 40 KiB ClientHello in three records", &daemon);
    daemon.stop_ok();
}

/// A bed with XDP attached in native mode: the veth driver runs the program on each frame as the wire has it,
/// segment by segment.
fn split_testbed(tag: &str) -> XdpTestbed {
    XdpTestbed::builder(tag)
        .xdp("mode = \"native\"")
        .build()
        .expect("XDP testbed")
}

/// The XDP counters a ClientHello's verdict moves, from `/metrics`.
#[derive(Debug)]
struct XdpCounts {
    passed: f64,
    dropped: f64,
    not_handshake_record: f64,
}

impl XdpCounts {
    fn of(daemon: &Daemon) -> XdpCounts {
        let metrics = daemon.metrics_text().expect("GET /metrics");
        let verdict = |v| metric_value(&metrics, "portcullis_xdp_packets_total", &[("verdict", v)]);
        XdpCounts {
            passed: verdict("pass_client_hello"),
            dropped: verdict("drop_malformed_hello"),
            not_handshake_record: metric_value(
                &metrics,
                "portcullis_xdp_malformed_total",
                &[("reason", "not_handshake_record")],
            ),
        }
    }

    /// Asserts that a first segment passed as a ClientHello since `before`, and nothing was dropped as malformed.
    fn assert_passed_since(&self, before: &XdpCounts, what: &str) {
        assert!(
            self.passed > before.passed && self.dropped == before.dropped,
            "{what}: XDP counts {before:?} -> {self:?}"
        );
    }
}

/// The ClientHello a rustls client (default config: X25519MLKEM768 and X25519 key shares) sends to `ecdsa.test`,
/// one record.
fn rustls_client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("ecdsa.test").expect("a DNS name");
    let mut client =
        rustls::ClientConnection::new(Arc::new(config), name).expect("a rustls client");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("the ClientHello");
    hello
}

/// Connects to `addr`, writes each of `writes` in turn (each but the last only once the server acknowledged it,
/// so that it travels in segments of its own), and reads the first 6 bytes of the answer: a record header and
/// the handshake type. An error when none comes within 3 seconds.
fn exchange(addr: SocketAddr, writes: &[&[u8]]) -> std::io::Result<[u8; 6]> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    for (i, bytes) in writes.iter().enumerate() {
        stream.write_all(bytes)?;
        if i + 1 < writes.len() {
            wait_acknowledged(&stream)?;
        }
    }
    let mut head = [0u8; 6];
    stream.read_exact(&mut head)?;
    Ok(head)
}

/// Waits (up to 3 seconds, polling TCP_INFO) until every byte written on `stream` is acknowledged.
fn wait_acknowledged(stream: &TcpStream) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        // SAFETY: an all-zero tcp_info is valid; getsockopt fills at most `len` bytes of it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a valid socket, a buffer of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if info.tcpi_unacked == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the first write was not acknowledged within 3 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts that `answer` starts with a handshake record carrying a ServerHello (type 2; a HelloRetryRequest is one
/// too); the failure message has the daemon's handshake outcomes.
fn assert_server_hello(answer: &std::io::Result<[u8; 6]>, what: &str, daemon: &Daemon) {
    if let Ok([22, 3, _, _, _, 2]) = answer {
        return;
    }
    let metrics = daemon.metrics_text().unwrap_or_default();
    let outcomes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_handshakes_total"))
        .collect();
    panic!("{what}: expected a ServerHello record, got {answer:?}; handshakes: {outcomes:#?}");
}

/// Stops `daemon` with SIGTERM (a clean exit) and starts another on the same testbed.
fn restart(bed: &XdpTestbed, daemon: Daemon) -> Daemon {
    daemon.stop_ok();
    bed.start_daemon()
}

/// An Ethernet/IPv4/TCP SYN from `src` to the listener port, as the program sees it on the wire.
fn syn_frame(src: &Ipv4Addr, port: u16) -> Vec<u8> {
    let mut ip = ipv4(6, 5, 0);
    ip[12..16].copy_from_slice(&src.octets());
    frame(&[], ETH_P_IP, &ip, &tcp(port, TCP_FLAG_SYN))
}

/// The first data segment (sequence number ISN + 1 after [`syn_frame`]'s ISN 0) of the same flow, carrying
/// `payload`, with the IPv4 total length filled in.
fn first_segment_frame(src: &Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut ip = ipv4(6, 5, 0);
    ip[12..16].copy_from_slice(&src.octets());
    let mut segment = tcp(port, TCP_FLAG_ACK | 0x08);
    segment[4..8].copy_from_slice(&1u32.to_be_bytes());
    segment.extend_from_slice(payload);
    let total = u16::try_from(20 + segment.len()).expect("one segment");
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    frame(&[], ETH_P_IP, &ip, &segment)
}

/// `bpftool prog run` of the bed's pinned program on `frame_file`; its output.
fn bpftool_run(bed: &XdpTestbed, frame_file: &Path) -> String {
    prog_run(&bed.pin_dir.path().join(PROG_XDP), frame_file)
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .expect("run the portcullis binary")
}
