//! `cargo xtask fuzz` and the `fuzz` step of `cargo xtask test`: every cargo-fuzz target of the standalone fuzz
//! crates ([`FUZZ_CRATES`]: the ABI crate's ClientHello and packet parsers, the daemon's ticket, PROXY v2, key
//! file and config parsers; each its own workspace, so the main build never compiles libFuzzer) runs for a
//! bounded time, the ABI's seeded with the captured ClientHello fixtures. A crash fails the step and names the
//! artifact that reproduces it.
//!
//! cargo-fuzz needs unstable rustc flags (`-Zsanitizer`, sancov passes): rustup's nightly when it is installed,
//! else the stable toolchain with `RUSTC_BOOTSTRAP=1` (same flags, no download needed). Neither needs
//! `-Zbuild-std` (absent rust-src is fine). AddressSanitizer is used when the toolchain ships its runtime
//! (`librustc-<channel>_rt.asan.a`); without it the targets still run with `--sanitizer none`, which keeps the
//! checks that matter most here: panics, the targets' own asserts, overflow checks and libFuzzer's timeouts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};

use crate::workspace::Workspace;
use crate::{cmd, env};

/// How long `cargo xtask test` fuzzes each target, in seconds: seven targets keep the step near two minutes.
pub const TEST_SECONDS: u64 = 15;

/// The fuzz crates, relative to the workspace root, each with its seed corpus (read only: libFuzzer writes new
/// inputs into the first corpus dir only, a scratch one), if any.
const FUZZ_CRATES: &[(&str, Option<&str>)] = &[
    (
        "ebpf/portcullis-abi/fuzz",
        Some("ebpf/portcullis-abi/fixtures/client_hello"),
    ),
    ("userspace/portcullis/fuzz", None),
];

/// Slowest a single input may be, in seconds, before libFuzzer calls it a hang (the parser is linear and
/// bounded; anything near this is a bug).
const INPUT_TIMEOUT_SECS: u64 = 10;

/// Builds every fuzz target, then runs each for `seconds` on its scratch corpus (under `target/fuzz/corpus/`)
/// and the committed fixtures.
///
/// # Errors
/// When cargo-fuzz is missing (run `cargo xtask setup`), a build fails, or a target crashes, hangs or leaks
/// (the error names the artifact under `ebpf/portcullis-abi/fuzz/artifacts/<target>/`).
pub fn fuzz(ws: &Workspace, seconds: u64) -> Result<()> {
    let toolchain = Toolchain::detect()?;
    eprintln!(
        "fuzz: toolchain {} ({}), sanitizer {}",
        toolchain.name,
        if toolchain.bootstrap {
            "RUSTC_BOOTSTRAP=1"
        } else {
            "nightly"
        },
        toolchain.sanitizer
    );
    let mut failed = Vec::new();
    for (dir, seeds) in FUZZ_CRATES {
        failed.extend(fuzz_crate(ws, &toolchain, dir, *seeds, seconds)?);
    }
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds and runs every target of the fuzz crate in `dir`; returns the targets that failed, with their
/// artifacts.
fn fuzz_crate(
    ws: &Workspace,
    toolchain: &Toolchain,
    dir: &str,
    seeds: Option<&str>,
    seconds: u64,
) -> Result<Vec<String>> {
    let fuzz_dir = ws.root().join(dir);
    let target_dir = ws.target_dir().join("fuzz");

    let list = cmd::probe(
        toolchain
            .cargo_fuzz(ws, &["list"])?
            .arg("--fuzz-dir")
            .arg(&fuzz_dir),
    )
    .context("`cargo fuzz list` failed; install cargo-fuzz with `cargo xtask setup`")?;
    let targets: Vec<&str> = list.split_whitespace().collect();
    if targets.is_empty() {
        bail!("no fuzz targets in {}", fuzz_dir.display());
    }

    let mut build = toolchain.cargo_fuzz(ws, &["build"])?;
    build
        .arg("--fuzz-dir")
        .arg(&fuzz_dir)
        .arg("--target-dir")
        .arg(&target_dir);
    cmd::run(&mut build).context("building the fuzz targets failed")?;

    let mut failed = Vec::new();
    for target in targets {
        let corpus = target_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let artifacts = fuzz_dir.join("artifacts").join(target);
        let started = SystemTime::now();
        let mut run = toolchain.cargo_fuzz(ws, &["run", target])?;
        run.arg("--fuzz-dir")
            .arg(&fuzz_dir)
            .arg("--target-dir")
            .arg(&target_dir)
            .arg(&corpus)
            .args(seeds.map(|s| ws.root().join(s)))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"));
        if let Err(e) = cmd::run(&mut run) {
            let found = new_files(&artifacts, started);
            eprintln!("fuzz: target `{target}` FAILED: {e:#}");
            for artifact in &found {
                eprintln!(
                    "fuzz: artifact {} (reproduce: cargo fuzz run --fuzz-dir {dir} {target} {})",
                    artifact.display(),
                    artifact.display()
                );
            }
            failed.push(match found.first() {
                Some(a) => format!("{target} ({})", a.display()),
                None => format!("{target} (no artifact written; see its output above)"),
            });
        }
    }
    Ok(failed)
}

/// Files in `dir` modified at or after `since` (the artifacts of this run), oldest first.
fn new_files(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let modified = e.metadata().ok()?.modified().ok()?;
            (modified >= since).then(|| (modified, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// The rustup toolchain cargo-fuzz runs with.
struct Toolchain {
    /// rustup toolchain name (`nightly` or `stable`).
    name: &'static str,
    /// Whether unstable flags need `RUSTC_BOOTSTRAP=1` (stable).
    bootstrap: bool,
    /// `address`, or `none` when the toolchain lacks the ASan runtime.
    sanitizer: &'static str,
}

impl Toolchain {
    /// Nightly when rustup has it, else stable with `RUSTC_BOOTSTRAP=1`; ASan when its runtime is there.
    fn detect() -> Result<Toolchain> {
        let list = cmd::probe(Command::new("rustup").args(["toolchain", "list"]))
            .context("`rustup toolchain list` failed; cargo-fuzz needs rustup's toolchains")?;
        let (name, bootstrap) = if list.lines().any(|l| l.starts_with("nightly")) {
            ("nightly", false)
        } else {
            ("stable", true)
        };
        let sysroot = cmd::probe(Command::new(rustup_proxy("rustc")).args([
            &format!("+{name}"),
            "--print",
            "sysroot",
        ]))
        .with_context(|| format!("`rustc +{name} --print sysroot` failed"))?;
        let channel = if bootstrap { "stable" } else { "nightly" };
        let asan = Path::new(sysroot.trim())
            .join("lib/rustlib/x86_64-unknown-linux-gnu/lib")
            .join(format!("librustc-{channel}_rt.asan.a"));
        let sanitizer = if asan.exists() {
            "address"
        } else {
            eprintln!(
                "fuzz: {} is missing: running without AddressSanitizer (--sanitizer none)",
                asan.display()
            );
            "none"
        };
        Ok(Toolchain {
            name,
            bootstrap,
            sanitizer,
        })
    }

    /// `cargo fuzz <args> --sanitizer S` through rustup's cargo proxy with this toolchain, the outer cargo's
    /// variables removed.
    fn cargo_fuzz(&self, ws: &Workspace, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(rustup_proxy("cargo"));
        env::isolate_from_host_toolchain(&mut cmd, ws.target_dir())?;
        cmd.current_dir(ws.root())
            .env("RUSTUP_TOOLCHAIN", self.name)
            .arg("fuzz")
            .args(args);
        if args.first().is_some_and(|a| *a != "list") {
            cmd.args(["--sanitizer", self.sanitizer]);
        }
        if self.bootstrap {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        Ok(cmd)
    }
}

/// rustup's proxy for `program` (which picks the toolchain from `RUSTUP_TOOLCHAIN` or `+toolchain`), not the
/// toolchain binary `cargo run` pointed `$CARGO` at; `program` from PATH when there is no cargo bin dir.
fn rustup_proxy(program: &str) -> PathBuf {
    env::cargo_bin_dir()
        .map(|bin| bin.join(program))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(program))
}
