//! `cargo xtask bench`: portcullis beside nginx and HAProxy from Debian, measured with `portcullis-load`.
//!
//! Every server gets one worker pinned to CPU 0 and the load generator runs on CPU 1. On 2 cores one client core
//! cannot saturate one server core (a TLS client spends more CPU per handshake than a server), so the primary
//! figure is server CPU time per handshake (utime+stime from /proc, divided by handshakes completed); it also
//! stays honest while other work shares the machine. Everything lands under `target/bench/`.
//!
//! # Layout
//! - [`handshakes`]: `bench handshakes`, the CPU-per-handshake table with the three ratios, JSON and SVG.
//! - [`storm`]: `bench storm`, steady -> 10x storm -> recovery against each server (portcullis with admission
//!   control on and off), RSA-4096.
//! - [`fleet`]: `bench fleet`, three portcullis instances, cross-instance resumption through a rolling restart
//!   and a key rotation, `fleet` vs `per-process` tickets; session cache cost beside rustls'.
//! - [`idle`]: `bench idle`, memory per idle TLS connection (RSS and Pss deltas) beside nginx and HAProxy.
//! - [`http`]: `bench http`, the three as HTTPS reverse proxies to one shared upstream: CPU per proxied request
//!   (h1 with `wrk`, h2 with `h2load`, 1 KiB and 64 KiB) and TTFB of a new connection, full vs resumed.
//! - [`zero_rtt`]: `bench zero-rtt`, client and servers in two namespaces with a delayed link (RTT 30 and
//!   100 ms): TTFB full / resumed / 0-RTT (`portcullis-load ttfb`), and a captured 0-RTT flight replayed to
//!   two instances sharing ticket keys: how many times the upstream got the request; then (`zero_rtt/store.rs`)
//!   the session store's CPU per resumption, local vs Redis, and handshake p99 with redis-server stopped.
//! - [`netns`]: the client and server namespaces of `zero-rtt` and the frame relay that delays the link between
//!   them (this kernel has no `netem`).
//! - [`flood`]: `bench flood` (root), legitimate handshakes at half load kept through spoofed SYN, junk and
//!   valid ClientHello floods, three namespaces, portcullis with and without the XDP guard beside nginx and HAProxy.
//! - [`upgrade`]: `bench upgrade`, paced handshakes and long-lived streams through 3 certificate reloads and 3
//!   binary upgrades per server (portcullis `upgrade`, nginx `USR2`+`QUIT`, HAProxy `-x`+`-sf`): what was lost.
//! - [`servers`]: starting portcullis, nginx and HAProxy (configs written here), readiness, stop by PID.
//! - [`certs`]: the shared ECDSA P-256 and RSA-2048 certificates.
//! - [`load`]: running `portcullis-load` pinned to CPU 1 and reading its JSON.
//! - [`merge`]: one report from the reports of load generator processes that shared a run.
//! - [`procstat`]: CPU time of a process tree from `/proc/PID/stat`.
//! - [`svg`]: a small hand-written bar chart (no plotting dependency in xtask).
//! - [`xdp`]: `bench xdp`, the XDP guard's ns/packet per fixture class beside the userspace rejection cost; with
//!   `--profile CLASS`, where one class's time goes in the JIT'd program.
//!
//! Room for more: `xdp` and `fleet` benchmarks are new files here plus a variant of [`Bench`].

mod certs;
mod fleet;
mod flood;
mod handshakes;
mod http;
mod idle;
mod load;
mod merge;
mod netns;
mod procstat;
mod servers;
mod stages;
mod storm;
mod svg;
mod upgrade;
mod xdp;
mod zero_rtt;

pub use zero_rtt::DEFAULT_STORE_CONCURRENCY;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::workspace::{Profile, Workspace};
use crate::{build, setup};

pub use servers::ServerKind;

/// The benchmarks.
#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Server CPU per handshake (full, resumed TLS 1.3/1.2; ECDSA and RSA), latency at 50% and 90% of
    /// capacity, for portcullis, nginx, HAProxy and rustls in memory; table with ratios, JSON and SVG.
    Handshakes(Common),
    /// Steady load at 50% capacity -> open-loop storm at 10x -> recovery, per server (portcullis with admission
    /// control on and off);
    /// summary (goodput, p99 during the storm, time to recover) and a chart per server.
    Storm(Common),
    /// Three portcullis instances, clients resuming round robin across them through a rolling restart and a
    /// key rotation, with `fleet` and with `per-process` tickets: cross-instance resumption rate and p99 per
    /// second; session cache take/put cost at 256, 4,096, 65,536 entries beside rustls' cache.
    Fleet(Common),
    /// XDP guard ns/packet by fixture class (SYN, ClientHello, post-quantum first segment, malformed, blocked
    /// fingerprint) through BPF_PROG_TEST_RUN minus an empty program, beside the daemon's CPU per userspace
    /// rejection of the same malformed ClientHello; table, ratio, JSON. Needs root. With `--profile CLASS`: where
    /// the JIT'd program spends that class's time instead, by function and instruction.
    Xdp(XdpArgs),
    /// Reverse proxies to one shared upstream (nginx, static files): server CPU per proxied request, keep-alive
    /// h1 (`wrk`) and h2 (`h2load`), 1 KiB and 64 KiB responses; TTFB of one request per new connection, full
    /// vs resumed TLS 1.3 (`portcullis-load --http`); table with ratios and the targets, JSON.
    Http(Common),
    /// Memory per idle TLS 1.3 connection (20,000 held; `--quick` 2,000): RSS and Pss deltas of each server's
    /// processes after the handshake (and after one keep-alive request), then with 100 bytes of an unfinished
    /// request pending; ratio to nginx; whether portcullis meets 10 KiB.
    Idle(IdleArgs),
    /// What TLS 1.3 0-RTT saves and what replays reach the upstream: client and server in two network
    /// namespaces over a link delayed by a frame relay (RTT 30 and 100 ms; `--quick` 30 ms), TTFB of a GET per new
    /// connection with a full handshake, a resumption and 0-RTT; a captured 0-RTT flight re-sent to the same
    /// instance and to a second one sharing the ticket keys (portcullis: and one Redis); then, portcullis alone,
    /// the session store's CPU per resumption (one client at a time, and `--store-concurrency` at once: the
    /// target's row) and handshake p99 with Redis stopped. Needs root.
    ZeroRtt(ZeroRttArgs),
    /// Legitimate handshakes (50% of capacity, full + resumed, ECDSA) kept during floods: none, spoofed SYNs,
    /// junk ClientHellos, valid ClientHellos from a few sources, all three; server, client and flood in three
    /// network namespaces, portcullis with and without the XDP guard, nginx, HAProxy. Success %, p99 vs no
    /// flood, CPU by kind, where the flood was dropped; targets met or not. Needs root.
    Flood(FloodArgs),
    /// Paced handshakes and long-lived streaming connections while each server gets 3 certificate reloads and 3
    /// binary upgrades (portcullis `upgrade`, nginx `USR2` + `QUIT`, HAProxy `-x` + `-sf`): refused, failed and
    /// stale-certificate handshakes, requests cut or connections closed between requests; table and JSON. Fails
    /// when portcullis loses anything.
    Upgrade(Common),
}

/// Options of `bench idle`.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to hold per server (default 20,000; 2,000 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(100..=200_000))]
    pub connections: Option<u64>,
}

/// `bench flood`'s options.
#[derive(Args, Debug, Clone)]
pub struct FloodArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only these flood phases, by letter: a (spoofed SYN), b (junk ClientHellos), c (valid ClientHellos),
    /// d (all three); the no-flood phase, every ratio's base, always runs. Default: all.
    #[arg(long, value_delimiter = ',', value_parser = ["a", "b", "c", "d"])]
    pub phases: Vec<String>,
}

impl IdleArgs {
    /// The number of connections to hold.
    pub fn connections(&self) -> usize {
        let default = if self.common.quick { 2_000 } else { 20_000 };
        self.connections.map_or(default, |n| n as usize)
    }
}

/// Options of `bench zero-rtt`.
#[derive(Args, Debug, Clone)]
pub struct ZeroRttArgs {
    #[command(flatten)]
    pub common: Common,
    /// Probe processes at once in the store's CPU phase (its concurrent form, on which the ≤ 20 µs target is
    /// judged; the phase also runs one client at a time).
    #[arg(long, value_name = "K", default_value_t = zero_rtt::DEFAULT_STORE_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(2..=32))]
    pub store_concurrency: u32,
    /// Milliseconds each probe waits between its connections in the store's CPU phase (default 0). Above the
    /// store's 2 ms write linger, every resumption's session has reached Redis before the client returns,
    /// so no fetch is answered from the daemon's side table of writes not yet landed.
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub store_gap_ms: u32,
}

/// Options of `bench xdp`.
#[derive(Args, Debug, Clone)]
pub struct XdpArgs {
    #[command(flatten)]
    pub common: Common,
    /// Instead of the table: run this class (its name as the table prints it, e.g. "client_hello (curl)") under
    /// `perf record` and report where the JIT'd program spends the time, by function and by instruction
    /// (`target/bench/xdp-profile.txt`). x86-64 only.
    #[arg(long, value_name = "CLASS")]
    pub profile: Option<String>,
    /// How long the profile samples, in seconds.
    #[arg(long, default_value_t = 10, requires = "profile", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
}

/// Options every benchmark takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Seconds per cell instead of tens of seconds: a smoke run (the numbers are noisier).
    #[arg(long)]
    pub quick: bool,
    /// Use the release binaries already built (skip `cargo xtask build --release`).
    #[arg(long)]
    pub no_build: bool,
    /// Skip `cargo xtask setup --bench` (nginx and haproxy must already be installed).
    #[arg(long)]
    pub no_setup: bool,
    /// Only these servers (default: all three). In `bench handshakes`, portcullis brings the floor column with
    /// it (`portcullis-load floor`: rustls over TCP and nothing else).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub servers: Vec<ServerKind>,
}

/// What every benchmark needs: binaries, output directory, which servers, how long.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `target/bench`.
    pub out: PathBuf,
    /// The release daemon.
    pub daemon: PathBuf,
    /// The release load generator.
    pub load: PathBuf,
    /// Servers to measure, in table order.
    pub servers: Vec<ServerKind>,
    /// Smoke-run lengths.
    pub quick: bool,
    /// `bench xdp --profile CLASS --seconds N`: the class to profile, and for how many seconds.
    pub profile: Option<(String, u64)>,
    /// `bench idle`: the servers must hold this many idle connections (descriptor limits, connection caps and
    /// idle timeouts are raised to fit).
    pub hold: Option<usize>,
    /// `bench zero-rtt --store-concurrency K`: probe processes at once in the store's concurrent CPU form.
    pub store_concurrency: u32,
    /// `bench zero-rtt --store-gap-ms MS`: each probe's pause between connections in the store's CPU phase.
    pub store_gap_ms: u32,
    /// `bench flood --phases`: the flood phases to run, by letter (empty: all).
    pub flood_phases: Vec<String>,
}

/// Runs one benchmark.
pub fn bench(ws: &Workspace, what: Bench) -> Result<()> {
    let (common, run): (&Common, fn(&Ctx) -> Result<()>) = match &what {
        Bench::Handshakes(c) => (c, handshakes::run),
        Bench::Storm(c) => (c, storm::run),
        Bench::Fleet(c) => (c, fleet::run),
        Bench::Xdp(a) => (&a.common, xdp::run),
        Bench::Idle(a) => (&a.common, idle::run),
        Bench::Http(c) => (c, http::run),
        Bench::ZeroRtt(a) => (&a.common, zero_rtt::run),
        Bench::Flood(a) => (&a.common, flood::run),
        Bench::Upgrade(c) => (c, upgrade::run),
    };
    if !common.no_setup {
        setup::setup(setup::Options { bench: true })?;
    }
    if !common.no_build {
        build::build(ws, Profile::Release)?;
    }
    let release = ws.target_dir().join("release");
    let ctx = Ctx {
        out: ws.target_dir().join("bench"),
        daemon: ws.daemon_bin(Profile::Release),
        load: release.join("portcullis-load"),
        servers: if common.servers.is_empty() {
            vec![
                ServerKind::Portcullis,
                ServerKind::Nginx,
                ServerKind::Haproxy,
            ]
        } else {
            common.servers.clone()
        },
        quick: common.quick,
        profile: match &what {
            Bench::Xdp(a) => a.profile.clone().map(|class| (class, a.seconds)),
            _ => None,
        },
        hold: match &what {
            Bench::Idle(a) => Some(a.connections()),
            _ => None,
        },
        store_concurrency: match &what {
            Bench::ZeroRtt(a) => a.store_concurrency,
            _ => zero_rtt::DEFAULT_STORE_CONCURRENCY,
        },
        store_gap_ms: match &what {
            Bench::ZeroRtt(a) => a.store_gap_ms,
            _ => 0,
        },
        flood_phases: match &what {
            Bench::Flood(a) => a.phases.clone(),
            _ => Vec::new(),
        },
    };
    for bin in [&ctx.daemon, &ctx.load] {
        if !bin.is_file() {
            bail!(
                "{} is missing: run `cargo xtask build --release` (or drop --no-build)",
                bin.display()
            );
        }
    }
    std::fs::create_dir_all(&ctx.out)?;
    run(&ctx)
}
