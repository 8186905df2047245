//! `cargo xtask run`: set up, build (release unless `--debug`), and replace this process with the daemon on its
//! embedded defaults, in `http` mode in front of the demo upstream unless the arguments choose a mode or config.
//!
//! The daemon is started with `exec`, so it keeps this process's pid: Ctrl-C and `kill <pid>` reach it directly,
//! and its exit status is the status of `cargo xtask run` (cargo and rustup exec their children too).

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::workspace::{Profile, Workspace};
use crate::{build, cmd, env, setup};

/// Runs `portcullis run --state-dir <target>/portcullis-state [--mode http] <daemon_args>` built in `profile`.
/// Only returns on failure: setup, build, or the exec itself.
pub fn run(ws: &Workspace, profile: Profile, daemon_args: &[OsString]) -> Result<()> {
    setup::setup(setup::Options::default())?;
    build::build(ws, profile)?;
    let state_dir = ws.state_dir();
    std::fs::create_dir_all(&state_dir).with_context(|| {
        format!(
            "cannot create the daemon's state dir {}",
            state_dir.display()
        )
    })?;
    let bin = ws.daemon_bin(profile);
    let mut daemon = Command::new(&bin);
    env::forget_cargo_run(&mut daemon);
    daemon.arg("run").arg("--state-dir").arg(&state_dir);
    let chooses = |flag: &str| {
        daemon_args
            .iter()
            .any(|a| a == flag || a.to_string_lossy().starts_with(&format!("{flag}=")))
    };
    if !chooses("--mode") && !chooses("--config") && !chooses("-c") {
        daemon.args(["--mode", "http"]);
    }
    daemon.args(daemon_args);
    eprintln!("+ exec {}", cmd::display(&daemon));
    let err = daemon.exec();
    Err(err).with_context(|| {
        format!(
            "cannot exec the daemon {}; `cargo xtask build` should have produced it",
            bin.display()
        )
    })
}
