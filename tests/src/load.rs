//! Running the `portcullis-load` binary from a test and reading its JSON report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::daemon::TempDir;

/// The load generator binary: `$PORTCULLIS_LOAD_BIN`, else the workspace's debug build.
pub fn binary() -> PathBuf {
    match std::env::var_os("PORTCULLIS_LOAD_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/portcullis-load"),
    }
}

/// Runs `portcullis-load run ARGS --quiet --no-preflight --json FILE` to the end and returns its report (the
/// fields are documented in `userspace/portcullis-load/src/report.rs`). Fails if the run fails.
pub fn run(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let tmp = TempDir::new("load")?;
    let json = tmp.path().join("report.json");
    let out = Command::new(binary())
        .arg("run")
        .args(args)
        .args(["--quiet", "--no-preflight", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build -p portcullis-load`)",
                binary().display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "portcullis-load {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("reading the load report {}", json.display()))?;
    serde_json::from_str(&text).context("parsing the load report")
}
