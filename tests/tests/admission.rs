//! Admission control on loopback (issue 6): `portcullis-load` offers five times the daemon's measured capacity
//! for a bounded time, and the daemon's own metrics must show that it shed, that no engine ring ever held more
//! than its depth, that resumptions got at least the share of full handshakes, that no served handshake waited
//! longer than the configured deadline, and that it is back to normal afterwards.
//!
//! Unprivileged: loopback only, port 0, readiness by notification. The daemon is the debug build with one
//! worker and one crypto thread serving an RSA-4096 certificate: 2-5 ms of signing per full handshake on the
//! crypto thread, depending on the host's other work, while the client only verifies, so one client process
//! on a small shared host can overload it. (With RSA-2048 the client, a debug build too, was the bottleneck of
//! the capacity run on a busy 2-core host, so "5x capacity" was barely 1.5x of what the daemon could serve.)

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir, metric_value};
use portcullis_tests::load;
use portcullis_tests::pki::Pki;
use serde_json::Value;

/// `engine.ring_depth`: small, so the ring is full for most of the storm.
const RING_DEPTH: u32 = 8;
/// `engine.wait_deadline` with `full_ring = "wait"`, in seconds. It bounds a handshake's whole queue wait
/// (slot and ring, see `offload/policy.rs`), and 81.92 ms = 10 µs x 2^13 is a bucket boundary of
/// `portcullis_engine_queue_wait_seconds`, so "nothing waited longer" is exact: no observation above it.
const WAIT_DEADLINE_S: f64 = 0.08192;
/// How long the storm lasts, in seconds.
const STORM_S: f64 = 3.0;
/// The storm offers this many times the measured capacity (the 5x).
const OVERLOAD: f64 = 5.0;
/// The state must be `normal` again within this long after the storm's last connection ended.
const RECOVERY: Duration = Duration::from_secs(5);
/// The handshake classes the storm produces: full13 with the RSA certificate, resume13 with a ticket.
const FULL: &str = "full_rsa";
const RESUMED: &str = "tls13_psk";

/// The daemon's config. Admission control's defaults are sized for ~1 ms handshakes; an RSA-4096 signature
/// takes 2-5 ms here, depending on what else the host runs, so two are scaled to it:
/// - `queue_budget` 20 ms -> 60 ms: about what the ring holds (8 x ~5 ms), and below the wait deadline, so
///   admitted work can be served within it. With 20 ms (four signatures) the budget alone shed a few
///   handshakes at half capacity whenever the host stalled the crypto thread.
/// - `target` 5 ms -> 20 ms: a few service times, as 5 ms is for 1 ms handshakes. With 5 ms (one or two
///   signatures) a slower moment of the host at half capacity was already a standing queue.
///
/// The storm's standing queue (a full ring, waits of tens of milliseconds) is far above both.
fn config(pki: &Pki) -> String {
    format!(
        "workers = 1\n\
         pin_workers = false\n\
         [engine]\n\
         kind = \"software\"\n\
         instances = 1\n\
         ring_depth = {RING_DEPTH}\n\
         full_ring = \"wait\"\n\
         wait_deadline = \"81920us\"\n\
         [admission]\n\
         enabled = true\n\
         queue_budget = \"60ms\"\n\
         target = \"20ms\"\n\
         {}",
        pki.tls_section("tickets = \"per-process\"")
    )
}

/// One `/metrics` scrape.
struct Scrape(String);

impl Scrape {
    fn of(d: &Daemon) -> Self {
        Self(d.metrics_text().expect("/metrics"))
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.0, name, labels)
    }

    /// Observations of `portcullis_engine_queue_wait_seconds` (every class) above `bound` seconds, which must
    /// be one of its bucket boundaries; and the smallest boundary holding every observation (the longest wait,
    /// rounded up to its bucket).
    fn waits_above(&self, bound: f64) -> (f64, f64) {
        let name = "portcullis_engine_queue_wait_seconds";
        let prefix = format!("{name}_bucket{{le=\"");
        let mut les: Vec<&str> = self
            .0
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix)?.split_once('"').map(|(le, _)| le))
            .collect();
        les.sort_by(|a, b| parse_le(a).total_cmp(&parse_le(b)));
        les.dedup();
        let count = self.sum(&format!("{name}_count"), &[]);
        let within = |le: &str| self.sum(&format!("{name}_bucket"), &[("le", le)]);
        let at_bound = les
            .iter()
            .find(|le| (parse_le(le) - bound).abs() < 1e-9)
            .unwrap_or_else(|| panic!("no bucket boundary at {bound} s in {name}: {les:?}"));
        let longest = les
            .iter()
            .find(|le| within(le) >= count)
            .map_or(f64::INFINITY, |le| parse_le(le));
        (count - within(at_bound), longest)
    }
}

fn parse_le(le: &str) -> f64 {
    if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse().unwrap_or(f64::NAN)
    }
}

/// Per-class counters of admission control and the engine, between two scrapes.
#[derive(Debug)]
struct ClassDelta {
    /// Admitted by admission control.
    admitted: f64,
    /// Shed by admission control (any reason).
    shed: f64,
    /// Admitted, then refused by the engine (the wait deadline passed).
    engine_rejected: f64,
}

impl ClassDelta {
    fn between(before: &Scrape, after: &Scrape, class: &str) -> Self {
        let d = |name: &str| {
            after.sum(name, &[("class", class)]) - before.sum(name, &[("class", class)])
        };
        Self {
            admitted: d("portcullis_admission_admitted_total"),
            shed: d("portcullis_admission_shed_total"),
            engine_rejected: d("portcullis_engine_rejected_total"),
        }
    }

    /// Handshakes of this class that reached admission control.
    fn arrived(&self) -> f64 {
        self.admitted + self.shed
    }

    /// Admitted and served by a crypto thread.
    fn served(&self) -> f64 {
        self.admitted - self.engine_rejected
    }

    /// The share of arrivals that was served.
    fn share(&self) -> f64 {
        if self.arrived() == 0.0 {
            0.0
        } else {
            self.served() / self.arrived()
        }
    }
}

/// The number at `path` in a load report (array elements by index), 0 if absent.
fn num(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for p in path {
        at = match p.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[*p],
        };
    }
    at.as_f64().unwrap_or(0.0)
}

fn load(args: &[&str], addr: SocketAddr) -> Value {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend([
        "--target".to_owned(),
        addr.to_string(),
        "--sni".to_owned(),
        "rsa.test".to_owned(),
    ]);
    load::run(&all).expect("portcullis-load")
}

fn client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).expect("read ca");
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One full handshake, whatever its outcome. The controller closes its intervals when a handshake arrives
/// or completes, so an idle daemon's state gauge only moves when something knocks.
fn knock(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) {
    let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    let name = rustls::pki_types::ServerName::try_from("rsa.test").expect("name");
    let Ok(mut conn) = rustls::ClientConnection::new(config.clone(), name) else {
        return;
    };
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return;
        }
    }
}

/// A closed loop of full handshakes for 2 s, two in flight: one in service, at most one queued, so the
/// controller (target 20 ms of minimum wait) does not shed and this measures service, not shedding (a stalled
/// host may make the cost budget refuse one or two). Returns the completed rate per second.
fn measure_capacity(addr: SocketAddr) -> f64 {
    let report = load(
        &[
            "--mix",
            "full13",
            "--concurrency",
            "2",
            "--duration",
            "2",
            "--timeout",
            "5",
        ],
        addr,
    );
    let capacity = num(&report, &["rate_ok"]);
    println!(
        "capacity: {capacity:.0} full handshakes/s ({} failed)",
        num(&report, &["failed"])
    );
    capacity
}

#[test]
fn five_times_capacity_sheds_full_handshakes_first_and_recovers() {
    let tmp = TempDir::new("admission").expect("tempdir");
    let pki = Pki::generate_with_rsa(tmp.path(), rcgen::RsaKeySize::_4096).expect("pki");
    let d = Daemon::start(DaemonOptions {
        config_toml: Some(config(&pki)),
        ..Default::default()
    })
    .expect("daemon starts");
    let addr = d.addr();

    // 1. Capacity: what the daemon completes with no queue to speak of.
    let capacity = measure_capacity(addr);
    assert!(
        capacity >= 20.0,
        "capacity {capacity:.1}/s: the daemon barely served"
    );

    // 2. The storm: open loop at 5x capacity, half full handshakes, half resumptions. resume13 connections
    // find no ticket at first (a full handshake, counted `no_ticket`) and keep the shared store filled from
    // then on: each served one brings new tickets. The client's timeout and in-flight bound keep the run
    // bounded whatever the daemon does.
    let before = Scrape::of(&d);
    let rate = format!("{:.0}", capacity * OVERLOAD);
    let storm = load(
        &[
            "--mix",
            "full13:1,resume13:1",
            "--rate",
            &rate,
            "--duration",
            &STORM_S.to_string(),
            "--timeout",
            "2",
            "--max-inflight",
            "512",
        ],
        addr,
    );
    let storm_end = Instant::now();
    let after = Scrape::of(&d);
    let full = ClassDelta::between(&before, &after, FULL);
    let resumed = ClassDelta::between(&before, &after, RESUMED);
    let shed = after.sum("portcullis_admission_shed_total", &[])
        - before.sum("portcullis_admission_shed_total", &[]);
    let arrived = full.arrived() + resumed.arrived();
    println!(
        "storm: offered {} at {rate}/s, client ok {} (resumed {}), failed {}; server: arrived {arrived}, \
         shed {shed}, full {full:?}, resumed {resumed:?}",
        num(&storm, &["phase_stats", "0", "offered"]),
        num(&storm, &["ok"]),
        num(&storm, &["kinds", "resume13", "resumed"]),
        num(&storm, &["failed"]),
    );

    // The storm really was an overload, else every assertion below would hold trivially: the daemon received
    // at least 3x what it served per second in the capacity run (5x was offered; the margin is for a client
    // slowed by a busy host), and refused at least a quarter of it, shed or expired at the deadline (about
    // 40-50% in runs on a busy 2-core host; resumptions are cheaper, so it serves more than its full-handshake
    // capacity).
    let refused = shed + full.engine_rejected + resumed.engine_rejected;
    assert!(
        arrived >= 3.0 * capacity * STORM_S,
        "only {arrived} handshakes reached admission control in {STORM_S} s at a capacity of \
         {capacity:.0}/s: no overload"
    );
    assert!(
        shed > 0.0 && refused >= 0.25 * arrived,
        "shed counters rose by {shed}, {refused} refused in all, of {arrived} arrivals during a 5x storm"
    );

    // Resumptions were served at least as readily as full handshakes, and there were some.
    assert!(
        resumed.served() > 0.0,
        "no resumption served during the storm: {resumed:?}"
    );
    assert!(
        resumed.share() >= full.share(),
        "resumptions served {:.2} of arrivals, full handshakes {:.2}: {resumed:?} {full:?}",
        resumed.share(),
        full.share()
    );
    assert!(
        num(&storm, &["kinds", "resume13", "resumed"]) > 0.0,
        "the client saw no resumption"
    );

    // The ring never held more than its depth, and it was used (in every run so far it filled: 8).
    let ring_max = after.sum("portcullis_engine_ring_depth_max", &[]);
    assert!(
        ring_max > 0.0 && ring_max <= f64::from(RING_DEPTH),
        "ring depth high-water mark {ring_max}, bound {RING_DEPTH}"
    );

    // No served handshake waited longer than the deadline.
    let (late, max_wait_bucket) = after.waits_above(WAIT_DEADLINE_S);
    assert_eq!(
        late, 0.0,
        "{late} handshakes waited longer than wait_deadline = {WAIT_DEADLINE_S} s (all within {max_wait_bucket} s)"
    );
    println!(
        "ring depth max {ring_max} of {RING_DEPTH}; queue wait max <= {max_wait_bucket} s (deadline {WAIT_DEADLINE_S} s); \
         expired at the deadline: full {}, resumed {}",
        full.engine_rejected, resumed.engine_rejected
    );

    // 3. Back to normal: the state gauge and the overload flag return to 0 within RECOVERY. Each poll knocks
    // with one handshake, since the controller only closes its intervals when a handshake arrives or completes.
    let client = client_config(&pki);
    let (state, overloaded) = loop {
        knock(addr, &client);
        let scrape = Scrape::of(&d);
        let s = scrape.sum("portcullis_admission_state", &[]);
        let o = scrape.sum("portcullis_admission_overloaded", &[]);
        if (s == 0.0 && o == 0.0) || storm_end.elapsed() > RECOVERY {
            break (s, o);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let recovery = storm_end.elapsed();
    assert_eq!(
        (state, overloaded),
        (0.0, 0.0),
        "admission state {state} (1 shedding, 2 recovering), overloaded {overloaded}, {recovery:?} after the storm"
    );
    println!("normal again {recovery:?} after the storm's last connection");

    // ...and half the capacity is served in full again: nothing shed, nothing failed. Capacity is measured
    // again first and the lower figure used: on a shared host other work can halve the daemon's speed within
    // seconds (a build starting), and half of a capacity it no longer has would be an overload, not calm.
    // (Once, at a load average of 10 on 2 cores, half the first figure was already above what the crypto
    // thread could serve: the cost budget shed two thirds.)
    let capacity_now = measure_capacity(addr).min(capacity);
    let calm_before = Scrape::of(&d);
    let calm_rate = format!("{:.0}", capacity_now * 0.5);
    let calm = load(
        &[
            "--mix",
            "full13",
            "--rate",
            &calm_rate,
            "--duration",
            "1",
            "--timeout",
            "5",
        ],
        addr,
    );
    let calm_after = Scrape::of(&d);
    let (offered, ok) = (
        num(&calm, &["phase_stats", "0", "offered"]),
        num(&calm, &["ok"]),
    );
    println!("after: {ok} of {offered} at {calm_rate}/s");
    let shed_by = |reason: &str| {
        let labels = [("reason", reason)];
        calm_after.sum("portcullis_admission_shed_total", &labels)
            - calm_before.sum("portcullis_admission_shed_total", &labels)
    };
    assert!(
        offered > 0.0 && ok == offered,
        "after the storm, {ok} of {offered} handshakes at {calm_rate}/s completed; errors {}; shed: overload {}, \
         cost_budget {}, in_flight_limit {}; engine refused {}; state transitions {}",
        calm["kinds"]["full13"]["errors"],
        shed_by("overload"),
        shed_by("cost_budget"),
        shed_by("in_flight_limit"),
        calm_after.sum("portcullis_engine_rejected_total", &[])
            - calm_before.sum("portcullis_engine_rejected_total", &[]),
        calm_after.sum("portcullis_admission_transitions_total", &[])
            - calm_before.sum("portcullis_admission_transitions_total", &[]),
    );
    // Every reservation of the storm came back (shed, expired, completed or cut by the handshake timeout): the
    // budget is whole again once the last connection is done. Polled, bounded: the calm load's last
    // connections may still be finishing.
    let deadline = Instant::now() + Duration::from_secs(5);
    let outstanding = loop {
        let scrape = Scrape::of(&d);
        assert!(
            scrape
                .0
                .lines()
                .any(|l| l.starts_with("portcullis_admission_outstanding_seconds ")),
            "no portcullis_admission_outstanding_seconds on /metrics"
        );
        let o = scrape.sum("portcullis_admission_outstanding_seconds", &[]);
        if o == 0.0 || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        outstanding, 0.0,
        "admitted work still reserved after everything finished: {outstanding} s"
    );
    d.stop_ok();
}
