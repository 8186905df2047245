//! The environment xtask's children inherit, and how to clean it.
//!
//! `cargo xtask` runs through the rustup proxy and `cargo run`, which leave variables behind (measured on this
//! machine with a probe binary under `cargo run`): `CARGO` (the rustup toolchain's cargo), `CARGO_MANIFEST_DIR`,
//! `CARGO_MANIFEST_PATH`, `CARGO_PKG_*`, `RUSTUP_TOOLCHAIN`, `RUSTUP_TOOLCHAIN_SOURCE`, `RUST_RECURSION_COUNT`, and
//! an `LD_LIBRARY_PATH` with the rustup toolchain's `lib` dirs prepended. A second cargo started from here must
//! not see the per-package ones, and Debian's cargo must see none of the rustup ones.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

/// Variables that select or wrap a compiler; the Debian toolchain build must not inherit any of them.
const TOOLCHAIN_VARS: &[&str] = &[
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "RUST_RECURSION_COUNT",
];

/// `CARGO_*` variables that are the user's own configuration (where cargo keeps its registry, network and
/// terminal settings), kept for every child. All other `CARGO_*` ones are dropped for the Debian build: e.g.
/// `CARGO_ENCODED_RUSTFLAGS` or `CARGO_BUILD_RUSTFLAGS` would silently replace its `RUSTFLAGS`.
const USER_CARGO_PREFIXES: &[&str] = &[
    "CARGO_HOME",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRY_",
    "CARGO_REGISTRIES_",
    "CARGO_TERM_",
];

/// The cargo of the toolchain that built xtask (`$CARGO`, set by `cargo run`), or `cargo` from PATH.
pub fn host_cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    forget_cargo_run(&mut cmd);
    cmd
}

/// Removes from `cmd` the variables `cargo run` set for the xtask package itself (its manifest and `CARGO_PKG_*`
/// metadata), which would describe the wrong package to anything the child starts.
pub fn forget_cargo_run(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*k,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&key);
        }
    }
}

/// Prepares `cmd` to run Debian's `/usr/bin/cargo` untouched by rustup or the outer cargo: removes every
/// compiler-selecting variable and every non-user `CARGO_*` one, drops from `LD_LIBRARY_PATH` the dirs `cargo run`
/// prepended (the rustup toolchain's `lib` dirs and those under `target_dir`), and puts `~/.cargo/bin` (where
/// `bpf-linker` is installed) on PATH.
pub fn isolate_from_host_toolchain(cmd: &mut Command, target_dir: &Path) -> Result<()> {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let user_cargo = USER_CARGO_PREFIXES.iter().any(|p| k.starts_with(p));
        if TOOLCHAIN_VARS.contains(&&*k) || (k.starts_with("CARGO_") && !user_cargo) {
            cmd.env_remove(&key);
        }
    }
    match library_path_without(target_dir) {
        Some(paths) if !paths.is_empty() => cmd.env("LD_LIBRARY_PATH", paths),
        _ => cmd.env_remove("LD_LIBRARY_PATH"),
    };
    cmd.env("PATH", path_with_cargo_bin()?);
    Ok(())
}

/// `$PATH` with the cargo bin dir (`$CARGO_HOME/bin`, default `~/.cargo/bin`) in front when it is not on it yet:
/// `cargo install` puts `bpf-linker` there and rustc finds the linker through PATH.
pub fn path_with_cargo_bin() -> Result<OsString> {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let Some(bin) = cargo_bin_dir() else {
        return Ok(current);
    };
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    if !dirs.contains(&bin) {
        dirs.insert(0, bin);
    }
    std::env::join_paths(dirs)
        .context("PATH contains a directory with ':' in its name; remove it from PATH")
}

/// Finds `program` on PATH (as [`path_with_cargo_bin`] extends it), like `command -v`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = path_with_cargo_bin().ok()?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// Whether this process runs as root (effective uid 0), read from `/proc/self/status` so xtask needs no libc.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_uid(&status))
        == Some(0)
}

/// Whether this run is under CI (`CI=true`, as `.ci/run` sets it).
pub fn is_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true")
}

/// The effective uid from the `Uid:` line of a `/proc/<pid>/status` text (real, effective, saved, fs).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `$CARGO_HOME/bin`, or `$HOME/.cargo/bin` when `CARGO_HOME` is unset: where `cargo install` puts binaries
/// and rustup its proxies (`cargo`, `rustc`, which honour `RUSTUP_TOOLCHAIN`).
pub fn cargo_bin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    Some(home.join("bin"))
}

/// `LD_LIBRARY_PATH` without the entries `cargo run` prepended (under the rustup home or `target_dir`), or
/// `None` if unset.
fn library_path_without(target_dir: &Path) -> Option<OsString> {
    let current = std::env::var_os("LD_LIBRARY_PATH")?;
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".rustup")));
    let kept: Vec<PathBuf> = std::env::split_paths(&current)
        .filter(|dir| {
            let from_rustup = rustup_home
                .as_ref()
                .is_some_and(|home| dir.starts_with(home));
            !from_rustup && !dir.starts_with(target_dir)
        })
        .collect();
    std::env::join_paths(kept).ok()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn isolated_command_drops_rustup_and_cargo_run_variables() {
        let mut cmd = Command::new("/usr/bin/cargo");
        isolate_from_host_toolchain(&mut cmd, Path::new("/nonexistent/target"))
            .expect("PATH is joinable");
        let removed: Vec<&OsStr> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        for (key, _) in std::env::vars_os() {
            if [
                "RUSTUP_TOOLCHAIN",
                "CARGO",
                "CARGO_PKG_NAME",
                "CARGO_MANIFEST_DIR",
            ]
            .iter()
            .any(|v| key == OsStr::new(v))
            {
                assert!(
                    removed.contains(&key.as_os_str()),
                    "{key:?} leaks into the Debian build"
                );
            }
            if key == OsStr::new("CARGO_HOME") {
                assert!(
                    !removed.contains(&key.as_os_str()),
                    "CARGO_HOME must be kept"
                );
            }
        }
    }
}
