//! Reuseport steering against the real daemon, in a network namespace of its own: a worker marked saturated
//! (through `portcullis steering saturate`, the operator's tool, which writes the same map the daemon's
//! admission hook writes) gets no new connection on any listener; cleared, it gets its share again; without
//! the program the kernel's hash spreads connections over both workers.
//!
//! Per-worker counts come from `portcullis_worker_connections_accepted_total{worker}`. Needs root and a daemon
//! built with the BPF object (`cargo xtask build`); under `CI=true` a skip is a failure.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use portcullis_tests::{
    bpffs::BpfDir,
    daemon::{Daemon, DaemonOptions, TempDir, binary, metric_value},
    netns::NetNsGuard,
    privileged::require_root,
};

/// Connections per round: with two workers and the kernel's hash, the chance that one worker gets none is
/// 2^-199.
const CONNECTIONS: usize = 200;

const ACCEPTED: &str = "portcullis_worker_connections_accepted_total";

#[test]
fn saturated_worker_gets_no_new_connections() {
    if !require_root("saturated_worker_gets_no_new_connections") {
        return;
    }
    let ns = NetNsGuard::new().expect("namespace");
    let pin_dir = BpfDir::new("steer");
    // Two listeners, so the program's search for the right listener group is exercised too.
    let daemon = start(&ns, &pin_dir, true, 2);
    let text = daemon.metrics_text().expect("metrics");
    assert!(
        text.contains("portcullis_steering_total"),
        "steering did not start (built without the BPF object? run `cargo xtask build`); stderr:\n{}",
        daemon.stderr()
    );

    let no_such_worker = steering_cli_output(pin_dir.path(), &["saturate", "2"]);
    assert_eq!(no_such_worker.status.code(), Some(1), "{no_such_worker:?}");
    steering_cli(pin_dir.path(), &["saturate", "0"]);
    let status = steering_cli(pin_dir.path(), &["status"]);
    assert!(status.contains("saturated         [0]"), "{status}");
    let (w0, w1) = connect_round(&ns, &daemon);
    assert_eq!(
        (w0, w1),
        (0, CONNECTIONS as u64),
        "worker 0 is marked saturated and must get no new connection"
    );
    let text = daemon.metrics_text().expect("metrics");
    assert!(outcome(&text, "skipped_saturated") > 0.0, "{text}");
    assert_eq!(
        metric_value(&text, "portcullis_steering_saturated_workers", &[]),
        1.0
    );

    // Every worker saturated: the kernel's hash decides, nothing is dropped.
    steering_cli(pin_dir.path(), &["saturate", "1"]);
    let (w0, w1) = connect_round(&ns, &daemon);
    assert!(w0 > 0 && w1 > 0, "all saturated, kernel hash: {w0}, {w1}");
    let text = daemon.metrics_text().expect("metrics");
    assert!(
        outcome(&text, "all_saturated_fallback") >= CONNECTIONS as f64,
        "{text}"
    );

    steering_cli(pin_dir.path(), &["clear", "0"]);
    steering_cli(pin_dir.path(), &["clear", "1"]);
    let (w0, w1) = connect_round(&ns, &daemon);
    assert!(
        w0 > 0 && w1 > 0,
        "after clearing the mark both workers get connections: {w0}, {w1}"
    );
    let text = daemon.metrics_text().expect("metrics");
    // Every connection of both rounds was steered by the program (a retransmitted SYN runs it again).
    let steered = metric_value(
        &text,
        "portcullis_steering_total",
        &[("outcome", "steered")],
    ) + metric_value(
        &text,
        "portcullis_steering_total",
        &[("outcome", "skipped_saturated")],
    );
    assert!(steered >= (CONNECTIONS * 2) as f64, "{text}");
    assert_eq!(
        outcome(&text, "no_socket_fallback"),
        0.0,
        "every connection found its listener group's socket"
    );
    daemon.stop_ok();
    assert!(
        !pin_dir.path().join("rp_saturated").exists(),
        "steering pins removed on shutdown"
    );
}

#[test]
fn without_steering_the_kernel_hash_spreads_connections() {
    if !require_root("without_steering_the_kernel_hash_spreads_connections") {
        return;
    }
    let ns = NetNsGuard::new().expect("namespace");
    let pin_dir = BpfDir::new("nosteer");
    let daemon = start(&ns, &pin_dir, false, 1);
    let text = daemon.metrics_text().expect("metrics");
    assert!(!text.contains("portcullis_steering_total"), "{text}");
    let (w0, w1) = connect_round(&ns, &daemon);
    assert!(w0 > 0 && w1 > 0, "kernel hash: {w0}, {w1}");
    daemon.stop_ok();
}

#[test]
fn steering_that_cannot_start_leaves_the_kernel_hash() {
    if !require_root("steering_that_cannot_start_leaves_the_kernel_hash") {
        return;
    }
    let ns = NetNsGuard::new().expect("namespace");
    // A pin directory that is not on bpffs: steering fails before attaching, the daemon runs on.
    let not_bpffs = TempDir::new("steer-not-bpffs").expect("tempdir");
    let config = format!(
        "workers = 2\npin_workers = false\n[steering]\nenabled = true\n[xdp]\npin_dir = {:?}\n",
        not_bpffs.path().join("pins")
    );
    let daemon = Daemon::start(DaemonOptions {
        config_toml: Some(config),
        netns: Some(ns.name().to_owned()),
        ..Default::default()
    })
    .expect("daemon starts although steering cannot");
    assert!(
        daemon.stderr().contains("reuseport steering is off"),
        "{}",
        daemon.stderr()
    );
    let (w0, w1) = connect_round(&ns, &daemon);
    assert!(w0 > 0 && w1 > 0, "kernel hash: {w0}, {w1}");
    daemon.stop_ok();
}

#[test]
fn prefer_local_cpu_steers_to_the_receiving_cpus_worker() {
    if !require_root("prefer_local_cpu_steers_to_the_receiving_cpus_worker") {
        return;
    }
    // Workers are pinned to the first two CPUs this process may use; on loopback the SYN is received on the
    // CPU of the thread that sends it, so a client pinned to worker 1's CPU reaches worker 1.
    let cpus = allowed_cpus();
    assert!(
        cpus.len() >= 2,
        "this test needs two CPUs to pin the daemon's two workers to, found {cpus:?}"
    );
    let ns = NetNsGuard::new().expect("namespace");
    let pin_dir = BpfDir::new("local");
    let daemon = start_with(
        &ns,
        &pin_dir,
        true,
        "pin_workers = true",
        "prefer_local_cpu = true\n",
        1,
    );
    let (w0, w1) = connect_round_on(&ns, &daemon, Some(cpus[1]));
    assert_eq!(
        (w0, w1),
        (0, CONNECTIONS as u64),
        "client on worker 1's CPU"
    );
    let text = daemon.metrics_text().expect("metrics");
    assert!(
        outcome(&text, "steered_local_cpu") >= CONNECTIONS as f64,
        "{text}"
    );
    // A saturated local worker is skipped like any other.
    steering_cli(pin_dir.path(), &["saturate", "1"]);
    let (w0, w1) = connect_round_on(&ns, &daemon, Some(cpus[1]));
    assert_eq!((w0, w1), (CONNECTIONS as u64, 0), "worker 1 saturated");
    daemon.stop_ok();
}

/// A daemon with two unpinned workers in `ns`, `listeners` listeners on loopback port 0.
fn start(ns: &NetNsGuard, pin_dir: &BpfDir, steering: bool, listeners: usize) -> Daemon {
    start_with(ns, pin_dir, steering, "pin_workers = false", "", listeners)
}

/// As [`start`], with an extra top-level line `top` and extra `[steering]` lines.
fn start_with(
    ns: &NetNsGuard,
    pin_dir: &BpfDir,
    steering: bool,
    top: &str,
    steering_lines: &str,
    listeners: usize,
) -> Daemon {
    let mut config = format!("workers = 2\n{top}\n");
    for i in 0..listeners {
        config.push_str(&format!(
            "[[listeners]]\naddress = \"127.0.0.{}:0\"\n",
            i + 1
        ));
    }
    config.push_str(&format!(
        "[steering]\nenabled = {steering}\n{steering_lines}[xdp]\npin_dir = {:?}\n",
        pin_dir.path()
    ));
    Daemon::start(DaemonOptions {
        config_toml: Some(config),
        netns: Some(ns.name().to_owned()),
        ..Default::default()
    })
    .expect("daemon starts")
}

/// Opens [`CONNECTIONS`] TCP connections, spread over the daemon's listeners, waits until the daemon accepted
/// all of them, and returns how many each worker accepted.
fn connect_round(ns: &NetNsGuard, daemon: &Daemon) -> (u64, u64) {
    connect_round_on(ns, daemon, None)
}

/// As [`connect_round`], from a thread pinned to `cpu` if given.
fn connect_round_on(ns: &NetNsGuard, daemon: &Daemon, cpu: Option<usize>) -> (u64, u64) {
    let before = per_worker(daemon);
    let targets: Vec<SocketAddr> = daemon.listen.clone();
    let open = ns
        .run(|| {
            if let Some(cpu) = cpu {
                let mut set = CpuSet::new();
                set.set(cpu).expect("CPU number in range");
                sched_setaffinity(Pid::from_raw(0), &set).expect("pin the client thread");
            }
            (0..CONNECTIONS)
                .map(|i| TcpStream::connect(targets[i % targets.len()]))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("enter the namespace")
        .expect("connect to the daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = per_worker(daemon);
        let delta = (now.0 - before.0, now.1 - before.1);
        if delta.0 + delta.1 >= CONNECTIONS as u64 {
            drop(open);
            return delta;
        }
        assert!(
            Instant::now() < deadline,
            "only {delta:?} of {CONNECTIONS} connections accepted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CPUs this process may run on, in order (the daemon pins worker `i` to the `i`-th).
fn allowed_cpus() -> Vec<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// `portcullis_steering_total{outcome}` in a metrics text.
fn outcome(text: &str, outcome: &str) -> f64 {
    metric_value(text, "portcullis_steering_total", &[("outcome", outcome)])
}

fn per_worker(daemon: &Daemon) -> (u64, u64) {
    let text = daemon.metrics_text().expect("metrics");
    let n = |w: &str| metric_value(&text, ACCEPTED, &[("worker", w)]) as u64;
    (n("0"), n("1"))
}

/// Runs `portcullis steering --pin-dir DIR ARGS` and returns its stdout; fails the test if it fails.
fn steering_cli(pin_dir: &Path, args: &[&str]) -> String {
    let out = steering_cli_output(pin_dir, args);
    assert!(
        out.status.success(),
        "portcullis steering {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `portcullis steering --pin-dir DIR ARGS`.
fn steering_cli_output(pin_dir: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("steering")
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .output()
        .expect("run portcullis steering")
}
