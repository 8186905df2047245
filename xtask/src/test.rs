//! `cargo xtask test`: what CI runs (`.ci/run`). Setup, build, then every check that can fail a submission:
//! all tests (unit, integration, privileged), clippy with warnings denied, rustfmt, the cargo-fuzz targets for
//! [`fuzz::TEST_SECONDS`] each, and the benchmark harness in its quick form (every cell must produce a number).
//!
//! Each step prints its name and duration. Setup and build stop the run when they fail (nothing after them can
//! work); the checks after them all run even when an earlier one fails, so one CI run reports every kind of breakage.
//! The last line names the failed steps.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Result, bail};

use crate::workspace::{Profile, Workspace};
use crate::{build, cmd, env, fuzz, setup};

/// The variable through which the integration tests find the daemon binary.
const DAEMON_BIN_VAR: &str = "PORTCULLIS_BIN";

/// Runs every step; `test_args` go after `cargo test --no-fail-fast --workspace --exclude portcullis-ebpf`
/// (test name filters, or `-- --nocapture` for the test harness).
pub fn test(ws: &Workspace, test_args: &[OsString]) -> Result<()> {
    check_privileges()?;
    let mut report = Vec::new();

    let (result, outcome) = cmd::step("setup", || setup::setup(setup::Options::default()));
    report.push(outcome);
    if let Err(e) = result {
        print_report(&report);
        return Err(e.context("xtask test: step `setup` failed"));
    }
    let (result, outcome) = cmd::step("build", || build::build(ws, Profile::Debug));
    report.push(outcome);
    let object = match result {
        Ok(object) => object,
        Err(e) => {
            print_report(&report);
            return Err(e.context("xtask test: step `build` failed"));
        }
    };

    let daemon = ws.daemon_bin(Profile::Debug);
    let checks = [
        cmd::step("cargo test", || cargo_test(ws, &object, &daemon, test_args)),
        cmd::step("clippy", || clippy(ws, &object)),
        cmd::step("fmt", || fmt(ws)),
        cmd::step("fuzz", || fuzz::fuzz(ws, fuzz::TEST_SECONDS)),
        cmd::step("bench --quick", || bench_smoke(ws)),
    ];
    let mut failed = Vec::new();
    for (result, outcome) in checks {
        if result.is_err() {
            failed.push(outcome.name);
        }
        report.push(outcome);
    }

    print_report(&report);
    if !failed.is_empty() {
        bail!(
            "xtask test: step(s) failed: {} (see the output above)",
            failed.join(", ")
        );
    }
    eprintln!("xtask test: all steps ok");
    Ok(())
}

/// Every test of the userspace crates, told where the daemon binary and the BPF object are. `--no-fail-fast`
/// so one failing test binary does not hide the results of the others.
fn cargo_test(ws: &Workspace, object: &Path, daemon: &Path, test_args: &[OsString]) -> Result<()> {
    let mut cmd = build::host_cargo(ws, object)?;
    cmd.env(DAEMON_BIN_VAR, daemon)
        // tests/fleet.rs and tests/admission.rs drive the load generator built next to the daemon.
        .env(
            "PORTCULLIS_LOAD_BIN",
            daemon.with_file_name("portcullis-load"),
        )
        .args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "portcullis-ebpf",
        ])
        .args(test_args);
    cmd::run(&mut cmd)
}

/// The benchmark harness in its `--quick` form (seconds per cell): `bench handshakes` fails when a cell has no
/// number, `bench storm` when a server produced no summary, `bench http` when a cell has no number or a
/// response was not a whole 2xx, `bench zero-rtt` when a server does not answer, never resumes or never
/// accepts early data, `bench xdp` when a fixture class gets the wrong XDP action, `bench idle` when a server
/// cannot hold its idle connections, `bench flood` when a server completed no legitimate handshake without a
/// flood, a flood sent nothing or the guard dropped no junk ClientHello, `bench upgrade` when portcullis loses a
/// handshake or a request across reloads and upgrades. Installs nginx and HAProxy (`setup --bench`) and builds
/// the release binaries first. The figures of a quick run are smoke, not results: BENCHMARKS.md records
/// full runs.
fn bench_smoke(ws: &Workspace) -> Result<()> {
    let quick = || crate::bench::Common {
        quick: true,
        no_build: false,
        no_setup: false,
        servers: Vec::new(),
    };
    crate::bench::bench(ws, crate::bench::Bench::Handshakes(quick()))?;
    let mut storm = quick();
    // Setup and the release build were just done by the handshakes run.
    storm.no_build = true;
    storm.no_setup = true;
    crate::bench::bench(ws, crate::bench::Bench::Storm(storm.clone()))?;
    // bench http fails when a cell has no number, a response is not 2xx or a body is short.
    crate::bench::bench(ws, crate::bench::Bench::Http(storm.clone()))?;
    // bench zero-rtt fails when a server does not answer, never resumes, never accepts early data, or the
    // original 0-RTT request does not reach the upstream once.
    crate::bench::bench(
        ws,
        crate::bench::Bench::ZeroRtt(crate::bench::ZeroRttArgs {
            common: storm.clone(),
            store_concurrency: crate::bench::DEFAULT_STORE_CONCURRENCY,
            store_gap_ms: 0,
        }),
    )?;
    // bench xdp fails when the program does not load or a class gets the wrong XDP action.
    crate::bench::bench(
        ws,
        crate::bench::Bench::Xdp(crate::bench::XdpArgs {
            common: storm.clone(),
            profile: None,
            seconds: 10,
        }),
    )?;
    // bench idle fails when a server cannot hold the connections or the client cannot open them.
    crate::bench::bench(
        ws,
        crate::bench::Bench::Idle(crate::bench::IdleArgs {
            common: storm.clone(),
            connections: None,
        }),
    )?;
    // bench flood fails when a server completed no legitimate handshake without a flood, a flood sent nothing,
    // or the guard dropped none of the junk ClientHellos.
    crate::bench::bench(
        ws,
        crate::bench::Bench::Flood(crate::bench::FloodArgs {
            common: storm.clone(),
            phases: Vec::new(),
        }),
    )?;
    // bench upgrade fails when portcullis loses a handshake or a request across reloads and upgrades.
    crate::bench::bench(ws, crate::bench::Bench::Upgrade(storm))
}

/// clippy over every userspace target, warnings denied.
fn clippy(ws: &Workspace, object: &Path) -> Result<()> {
    let mut cmd = build::host_cargo(ws, object)?;
    cmd.args([
        "clippy",
        "--workspace",
        "--exclude",
        "portcullis-ebpf",
        "--all-targets",
    ])
    .args(["--", "-D", "warnings"]);
    cmd::run(&mut cmd)
}

/// rustfmt in check mode over the whole workspace, the BPF crate included.
fn fmt(ws: &Workspace) -> Result<()> {
    let mut cmd = env::host_cargo();
    cmd.current_dir(ws.root()).args(["fmt", "--all", "--check"]);
    cmd::run(&mut cmd)
}

/// Privileged tests need root. Under `CI=true` a non-root run fails here rather than after the build (the tests
/// themselves would fail anyway, since CI forbids skipping them); elsewhere it only warns.
fn check_privileges() -> Result<()> {
    if env::is_root() {
        return Ok(());
    }
    if env::is_ci() {
        bail!(
            "CI=true but not running as root: privileged tests cannot be skipped under CI; run `.ci/run` as root"
        );
    }
    eprintln!(
        "warning: not running as root: privileged tests will print SKIP and pass without running"
    );
    Ok(())
}

/// Prints one line per step that ran: name, duration, outcome.
fn print_report(report: &[cmd::Outcome]) {
    eprintln!("xtask test steps:");
    for step in report {
        let outcome = if step.ok { "ok" } else { "FAILED" };
        eprintln!(
            "  {:<12} {:>9}  {outcome}",
            step.name,
            cmd::seconds(step.took)
        );
    }
}
