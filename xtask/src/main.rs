//! `cargo xtask`: set up a machine, build, run and test portcullis (`cargo xtask --help`).
//!
//! # Layout
//! - [`setup`]: Debian packages, bpf-linker, bpffs; idempotent.
//! - [`build`]: the BPF object with Debian's toolchain, then the userspace crates with rustup's.
//! - [`run`]: setup + build, then exec the daemon on its embedded defaults.
//! - [`test`]: setup + build, then tests, clippy and rustfmt; what `.ci/run` runs.
//! - [`fuzz`]: the cargo-fuzz targets (ABI parsers; the daemon's ticket, PROXY v2, key file, config parsers) for a
//!   bounded time each (also a step of `test`).
//! - [`bench`]: portcullis beside nginx and HAProxy, measured with `portcullis-load` (`bench handshakes|storm`).
//! - [`cmd`]: running commands and named steps, echoing each; [`env`]: the environment children inherit;
//!   [`workspace`]: where things live.

mod bench;
mod build;
mod cmd;
mod env;
mod fuzz;
mod run;
mod setup;
mod test;
mod workspace;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::workspace::{Profile, Workspace};

/// Development tasks for portcullis.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building, running and testing need (Debian packages, bpf-linker, bpffs). Idempotent.
    Setup {
        /// Also install the reference servers the benchmarks compare against (nginx, haproxy).
        #[arg(long)]
        bench: bool,
    },
    /// Build the BPF object (always release) and the userspace crates embedding it.
    Build {
        /// Build the userspace crates with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, then run the daemon on its defaults (TLS on 127.0.0.1:8443, metrics on 127.0.0.1:9090).
    Run {
        /// Run the debug build (the default is the release build: a debug build's handshakes are ~10x slower).
        #[arg(long)]
        debug: bool,
        /// Extra arguments for `portcullis run`, after `--` (without `--mode` or `--config`, `--mode http`).
        #[arg(last = true)]
        daemon_args: Vec<OsString>,
    },
    /// Setup, build, then all tests, clippy, rustfmt, the fuzz targets (bounded) and the quick benchmarks: what CI
    /// runs.
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        test_args: Vec<OsString>,
    },
    /// Run every cargo-fuzz target of the ABI crate for a bounded time, seeded with the ClientHello fixtures.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::TEST_SECONDS)]
        seconds: u64,
    },
    /// Benchmarks against nginx and HAProxy (release build, results under target/bench/).
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().task) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> Result<ExitCode> {
    let ws = Workspace::locate()?;
    match task {
        Task::Setup { bench } => setup::setup(setup::Options { bench })?,
        Task::Build { release } => drop(build::build(&ws, Profile::from_release_flag(release))?),
        Task::Run { debug, daemon_args } => {
            run::run(&ws, Profile::from_release_flag(!debug), &daemon_args)?
        }
        Task::Test { test_args } => test::test(&ws, &test_args)?,
        Task::Fuzz { seconds } => fuzz::fuzz(&ws, seconds)?,
        Task::Bench { what } => bench::bench(&ws, what)?,
    }
    Ok(ExitCode::SUCCESS)
}
