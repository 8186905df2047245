//! `cargo xtask build`: the BPF object with Debian's toolchain, then the userspace workspace with rustup's.
//!
//! Two compilers because neither can do both (`shared/TOOLCHAIN.md`): rustup's stable has no rust-src for
//! `-Z build-std`, and the daemon's dependencies (aya 0.14 generation) are pinned for stable 1.95. The BPF object
//! is handed to the daemon's build.rs through `PORTCULLIS_BPF_OBJECT`, which embeds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::workspace::{Profile, Workspace};
use crate::{cmd, env};

/// The variable through which the daemon's build.rs (and the tests) find the BPF object.
pub const BPF_OBJECT_VAR: &str = "PORTCULLIS_BPF_OBJECT";

/// Builds the BPF object, then the userspace crates in `profile`. Returns the object's path.
pub fn build(ws: &Workspace, profile: Profile) -> Result<PathBuf> {
    let object = build_bpf(ws)?;
    build_userspace(ws, profile, &object)?;
    Ok(object)
}

/// Builds the BPF crate (always release) and returns the path of the object, checked to exist.
pub fn build_bpf(ws: &Workspace) -> Result<PathBuf> {
    cmd::run(&mut bpf_command(ws)?).context(
        "building the BPF crate ebpf/portcullis-ebpf failed (compiler errors above); if the error is about \
         the toolchain or bpf-linker, run `cargo xtask setup`",
    )?;
    let object = ws.bpf_object();
    if !object.is_file() {
        bail!(
            "the BPF build succeeded but left no object at {}; is the crate's [[bin]] still named \
             `portcullis-ebpf`?",
            object.display()
        );
    }
    eprintln!("BPF object: {}", object.display());
    Ok(object)
}

/// The one place that says how the BPF crate is built (change the invocation here):
/// in `ebpf/portcullis-ebpf`, with only Debian's toolchain visible (rustup and outer-cargo variables removed),
/// `RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=<target>/bpf
/// RUSTFLAGS="-C debuginfo=2 -C link-arg=--btf"` (BTF for aya-log and `#[btf_map]`), `~/.cargo/bin` on PATH for
/// bpf-linker, running `/usr/bin/cargo build --release --target bpfel-unknown-none -Z build-std=core`.
pub fn bpf_command(ws: &Workspace) -> Result<Command> {
    let mut cmd = Command::new("/usr/bin/cargo");
    env::isolate_from_host_toolchain(&mut cmd, ws.target_dir())?;
    cmd.current_dir(ws.bpf_crate_dir())
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", ws.bpf_target_dir())
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]);
    Ok(cmd)
}

/// Builds the libraries and binaries of every userspace crate in `profile`, embedding `object`. Tests, benches
/// and examples are left to `cargo xtask test`, which builds them anyway.
pub fn build_userspace(ws: &Workspace, profile: Profile, object: &Path) -> Result<()> {
    let mut cmd = host_cargo(ws, object)?;
    cmd.args(["build", "--workspace", "--exclude", "portcullis-ebpf"])
        .args(profile.cargo_flag());
    cmd::run(&mut cmd).context("building the userspace crates failed (compiler errors above)")
}

/// rustup's cargo in the workspace root with [`BPF_OBJECT_VAR`] set to `object`, for every userspace cargo
/// command: the daemon's build.rs needs the object under `build`, `test` and `clippy` alike, and giving all of
/// them the same value keeps them from rebuilding each other's artifacts.
///
/// Fails, telling the operator what to run, when the object is missing.
pub fn host_cargo(ws: &Workspace, object: &Path) -> Result<Command> {
    if !object.is_file() {
        bail!(
            "BPF object {} is missing; build it first with `cargo xtask build`",
            object.display()
        );
    }
    let mut cmd = env::host_cargo();
    cmd.current_dir(ws.root()).env(BPF_OBJECT_VAR, object);
    Ok(cmd)
}
