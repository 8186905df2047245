//! `cargo xtask setup`: make a fresh Debian 12 machine able to build, run and test portcullis.
//!
//! Idempotent: every step checks first and prints `ok: ... already present` when there is nothing to do, so it
//! costs well under a second on a machine that is set up. The recipe is `shared/TOOLCHAIN.md`:
//! 1. Debian packages ([`PACKAGES`]; with `--bench` also [`BENCH_PACKAGES`]), checked one by one with
//!    `dpkg-query`, installed together by one `apt-get install -y` after an `apt-get update`.
//! 2. Debian's toolchain files the BPF build uses (`/usr/bin/rustc`, `/usr/bin/cargo`, the core sources).
//! 3. clippy and rustfmt in the rustup toolchain (`cargo xtask test` runs both; rustup here cannot download, so
//!    this only checks and says what to run).
//! 4. `bpf-linker` [`BPF_LINKER_VERSION`], built by `cargo install` against Debian's libLLVM 22.
//! 5. `cargo-fuzz` [`CARGO_FUZZ_VERSION`] (the `fuzz` step of `cargo xtask test`), built by `cargo install`.
//! 6. bpffs mounted at [`BPFFS`] (the daemon pins maps and programs there).
//!
//! Steps that need root (apt, mount) run directly as root, through `sudo` when it is installed, or fail with the
//! exact command to run.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, env};

/// Debian packages every build, run and test needs: Debian's Rust toolchain with std sources (builds the BPF
/// crate with `-Z build-std=core`), libLLVM 22 headers (bpf-linker builds against them), bpftool and iproute2
/// (inspect programs, set up test namespaces), openssl and curl (poke the TLS listener), prometheus (its
/// `promtool` checks the metrics output), g++ (libfuzzer-sys compiles libFuzzer for the fuzz targets),
/// redis-server (the 0-RTT tests start their own on a free port: the fleet's session store, never a mock).
pub const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "bpftool",
    "iproute2",
    "openssl",
    "curl",
    "prometheus",
    "g++",
    "redis-server",
    // systemd-analyze scores the unit's hardening (tests/deploy.rs); setpriv starts the daemon the way the
    // unit does, unprivileged with ambient capabilities (tests/privilege.rs).
    "systemd",
    "util-linux",
];

/// Packages only the benchmarks need: reference TLS front ends to compare against, perf and objdump for
/// `bench xdp --profile`, and the HTTP load generators `bench http` cross-checks with (`wrk`, `h2load`). Installed by `cargo xtask setup --bench`, which `cargo xtask bench` will run; plain setup
/// skips them, since they cost install time and start services no test uses.
pub const BENCH_PACKAGES: &[&str] = &[
    "nginx",
    "haproxy",
    "linux-perf",
    "binutils",
    "wrk",
    "nghttp2-client",
];

/// The bpf-linker release that links against LLVM 22, the LLVM of Debian's rustc-web.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-fuzz release `cargo xtask test` fuzzes with; `cargo install --locked` builds it on rustup stable 1.95.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Where Debian's llvm-22-dev lives; bpf-linker's build looks in /usr and fails on `-lLLVM` without it.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The bpffs mount point the daemon pins to.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Debian toolchain paths the BPF build relies on, with the package that provides each.
const DEBIAN_TOOLCHAIN_FILES: &[(&str, &str)] = &[
    ("/usr/bin/rustc", "rustc-web"),
    ("/usr/bin/cargo", "cargo-web"),
    ("/usr/lib/rustlib/src/rust/library/core", "rust-web-src"),
];

/// What `setup` installs beyond the base.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Also install [`BENCH_PACKAGES`].
    pub bench: bool,
}

/// Runs every setup step in order; stops at the first that fails.
pub fn setup(options: Options) -> Result<()> {
    let mut packages = PACKAGES.to_vec();
    if options.bench {
        packages.extend_from_slice(BENCH_PACKAGES);
    }
    debian_packages(&packages)?;
    debian_toolchain()?;
    rustup_components()?;
    bpf_linker()?;
    cargo_fuzz()?;
    bpffs()?;
    Ok(())
}

/// Installs the packages of `wanted` that `dpkg-query` does not report as installed.
fn debian_packages(wanted: &[&str]) -> Result<()> {
    if env::which("dpkg-query").is_none() {
        bail!(
            "dpkg-query not found: setup supports Debian 12 only; elsewhere install the equivalents of {} by hand",
            wanted.join(" ")
        );
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("ok: Debian packages {} already present", wanted.join(" "));
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {}", missing.join(" "));
    let apt_env = [("DEBIAN_FRONTEND", "noninteractive")];
    let mut install = vec!["install", "-y"];
    install.extend_from_slice(&missing);
    let root = Root::for_command(&format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get {}",
        install.join(" ")
    ))?;
    cmd::run(&mut root.command("apt-get", &["update"], &apt_env)).context(
        "apt-get update failed; check the network and /etc/apt/sources.list.d, then rerun setup",
    )?;
    cmd::run(&mut root.command("apt-get", &install, &apt_env)).context(
        "apt-get install failed; the packages come from bookworm and bookworm-security: check both are in \
         the apt sources, then rerun setup",
    )
}

/// Whether `dpkg-query` reports `package` as installed (status `install ok installed`; an unknown package makes
/// dpkg-query fail, which counts as not installed).
fn is_installed(package: &str) -> bool {
    let status = cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
    status.is_some_and(|s| s.split_whitespace().last() == Some("installed"))
}

/// Checks the files of Debian's Rust toolchain that the BPF build uses directly.
fn debian_toolchain() -> Result<()> {
    for (path, package) in DEBIAN_TOOLCHAIN_FILES {
        if !Path::new(path).exists() {
            bail!(
                "{path} is missing although {package} is installed; reinstall it: apt-get install --reinstall {package}"
            );
        }
    }
    let version = cmd::probe(Command::new("/usr/bin/rustc").arg("--version")).context(
        "/usr/bin/rustc --version failed; reinstall it: apt-get install --reinstall rustc-web",
    )?;
    eprintln!("ok: Debian toolchain already present ({})", version.trim());
    Ok(())
}

/// Checks that the rustup toolchain has clippy and rustfmt, which `cargo xtask test` runs.
fn rustup_components() -> Result<()> {
    for (subcommand, component) in [("clippy", "clippy"), ("fmt", "rustfmt")] {
        let mut check = env::host_cargo();
        check.args([subcommand, "--version"]);
        if cmd::probe(&mut check).is_none() {
            bail!(
                "`cargo {subcommand}` is not available; install it with `rustup component add {component}`"
            );
        }
    }
    eprintln!("ok: clippy and rustfmt already present");
    Ok(())
}

/// A tool `cargo install` builds, pinned to one version.
struct CargoTool {
    /// The crate, which is also the binary's name.
    name: &'static str,
    /// The version to install and to find in `<name> --version`.
    version: &'static str,
    /// Arguments after `cargo install <name>@<version>`.
    install_args: &'static [&'static str],
    /// Variables the build needs.
    install_env: &'static [(&'static str, &'static str)],
    /// Said when installing, e.g. how long it takes.
    note: &'static str,
    /// Added to the error when the build fails: what to check.
    failure_hint: &'static str,
}

/// bpf-linker [`BPF_LINKER_VERSION`], built against Debian's libLLVM 22.
const BPF_LINKER: CargoTool = CargoTool {
    name: "bpf-linker",
    version: BPF_LINKER_VERSION,
    install_args: &["--locked", "--no-default-features", "--features", "llvm-22"],
    install_env: &[("LLVM_PREFIX", LLVM_PREFIX)],
    note: " (about 75 s on 2 cores)",
    failure_hint: "it needs llvm-22-dev (rerun setup to install it)",
};

/// cargo-fuzz [`CARGO_FUZZ_VERSION`].
const CARGO_FUZZ: CargoTool = CargoTool {
    name: "cargo-fuzz",
    version: CARGO_FUZZ_VERSION,
    install_args: &["--locked"],
    install_env: &[],
    note: "",
    failure_hint: "it needs crates.io (check the network and the registry settings in ~/.cargo)",
};

/// Installs bpf-linker [`BPF_LINKER_VERSION`] unless it is there.
fn bpf_linker() -> Result<()> {
    cargo_install(&BPF_LINKER)
}

/// Installs cargo-fuzz [`CARGO_FUZZ_VERSION`] (the `fuzz` step of `cargo xtask test`) unless it is there.
fn cargo_fuzz() -> Result<()> {
    cargo_install(&CARGO_FUZZ)
}

/// Installs `tool` with `cargo install` unless `<name> --version` (PATH with the cargo bin dir) reports its
/// version; afterwards checks that PATH finds the installed one.
fn cargo_install(tool: &CargoTool) -> Result<()> {
    let (name, want) = (tool.name, tool.version);
    let path = env::path_with_cargo_bin()?;
    let version = || cmd::probe(Command::new(name).arg("--version").env("PATH", &path));
    match version() {
        Some(v) if reports_version(&v, want) => {
            eprintln!("ok: {name} {want} already present");
            return Ok(());
        }
        Some(v) => eprintln!(
            "setup: {name} reports `{}`, want {want}: installing",
            v.trim()
        ),
        None => eprintln!("setup: {name} not found: installing {want}{}", tool.note),
    }
    let mut install = env::host_cargo();
    install
        .envs(tool.install_env.iter().copied())
        .arg("install")
        .arg(format!("{name}@{want}"))
        .args(tool.install_args);
    cmd::run(&mut install)
        .with_context(|| format!("building {name} failed; {}", tool.failure_hint))?;
    match version() {
        Some(v) if reports_version(&v, want) => Ok(()),
        other => bail!(
            "{name} was installed but PATH finds one reporting `{}`; remove the other {name} from PATH",
            other.as_deref().unwrap_or("nothing").trim()
        ),
    }
}

/// Whether a `--version` line such as `bpf-linker 0.13.0` names exactly `version`.
fn reports_version(output: &str, version: &str) -> bool {
    output.split_whitespace().any(|word| word == version)
}

/// Mounts bpffs at [`BPFFS`] unless `/proc/mounts` shows it there already.
fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")
        .context("cannot read /proc/mounts; is /proc mounted?")?;
    if is_bpffs_mounted(&mounts) {
        eprintln!("ok: bpffs already present at {BPFFS}");
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at {BPFFS}");
    let mount = ["-t", "bpf", "bpf", BPFFS];
    let root = Root::for_command(&format!("mount {}", mount.join(" ")))?;
    cmd::run(&mut root.command("mount", &mount, &[])).with_context(|| {
        format!("cannot mount bpffs at {BPFFS}; in a container, start it with {BPFFS} mounted (or privileged)")
    })
}

/// Whether a `/proc/mounts` text has a bpf filesystem mounted at [`BPFFS`].
fn is_bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

/// How setup gets root for apt and mount.
#[derive(Clone, Copy, Debug)]
enum Root {
    /// We are root: run commands directly.
    Already,
    /// Not root, but `sudo` is installed: run commands through `sudo env` (sudo resets the environment).
    Sudo,
}

impl Root {
    /// How to get root for `todo` (the shell command to show the operator), or an error telling them to run
    /// `todo` themselves when we are neither root nor have sudo.
    fn for_command(todo: &str) -> Result<Self> {
        if env::is_root() {
            Ok(Self::Already)
        } else if env::which("sudo").is_some() {
            Ok(Self::Sudo)
        } else {
            bail!(
                "setup needs root to run `{todo}`: run that as root (or install sudo), then rerun `cargo xtask setup`"
            )
        }
    }

    /// `program args` with `envs` set, run as root.
    fn command(self, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Command {
        match self {
            Self::Already => {
                let mut cmd = Command::new(program);
                cmd.args(args).envs(envs.iter().copied());
                cmd
            }
            Self::Sudo => {
                let mut cmd = Command::new("sudo");
                cmd.arg("env")
                    .args(envs.iter().map(|(k, v)| format!("{k}={v}")))
                    .arg(program)
                    .args(args);
                cmd
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_must_match_a_whole_word() {
        assert!(reports_version("bpf-linker 0.13.0\n", "0.13.0"));
        assert!(!reports_version("bpf-linker 0.13.01", "0.13.0"));
        assert!(!reports_version("bpf-linker 0.9.13", "0.13.0"));
    }

    #[test]
    fn bpffs_detection_needs_type_and_mount_point() {
        assert!(is_bpffs_mounted(
            "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n"
        ));
        assert!(!is_bpffs_mounted("sysfs /sys sysfs rw 0 0\n"));
        assert!(!is_bpffs_mounted("none /sys/fs/bpf tmpfs rw 0 0\n"));
    }
}
