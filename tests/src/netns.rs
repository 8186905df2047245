//! Network namespaces for privileged tests: one [`NetNsGuard`] per namespace, named `ptc-<pid>-<n>`, deleted on
//! drop, so tests can run in parallel and a failed test leaves nothing on the host.
//!
//! Code enters a namespace with `setns(2)` on a thread of its own ([`NetNsGuard::run`]) or in a child right
//! before `exec` ([`NetNsGuard::enter_on_spawn`]), never with `ip netns exec`: that also remounts `/sys`, which
//! hides `/sys/fs/bpf` and makes pinning fail.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// Numbers the namespaces (and their veth subnets) of this test process.
static NEXT_NS: AtomicU32 = AtomicU32::new(0);
/// Numbers the veth pairs of this test process.
static NEXT_VETH: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`/run/netns/<name>`) with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct NetNsGuard {
    name: String,
}

impl NetNsGuard {
    /// Creates `ptc-<pid>-<n>` with `ip netns add` and brings its loopback up.
    ///
    /// # Errors
    /// When `ip` is missing or the caller lacks CAP_SYS_ADMIN (run privileged tests as root).
    pub fn new() -> anyhow::Result<NetNsGuard> {
        let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
        let name = format!("ptc-{}-{n}", std::process::id());
        // A namespace of the same name can only be left over from an earlier process that had our pid and died
        // before its drop ran; it is ours to replace.
        if PathBuf::from(format!("/run/netns/{name}")).exists() {
            run_ip(&["netns", "del", &name])?;
        }
        run_ip(&["netns", "add", &name])?;
        let guard = NetNsGuard { name };
        guard.ip(&["link", "set", "lo", "up"])?;
        Ok(guard)
    }

    /// The namespace's name, as `ip -n` and `nsenter --net=/run/netns/<name>` take it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount path.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `ip -n <name> <args>` and fails with its stderr if it fails.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result. Only that thread
    /// changes namespace; the test's own threads stay where they are.
    ///
    /// # Errors
    /// When the namespace cannot be entered; a panic in `f` is re-raised on the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let ns = File::open(self.path())
            .with_context(|| format!("cannot open {}", self.path().display()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> anyhow::Result<T> {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("setns(CLONE_NEWNET) failed; privileged tests need root")?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Makes `command` start inside this namespace: the child calls `setns(2)` between `fork` and `exec`.
    ///
    /// # Errors
    /// When the namespace file cannot be opened. A failed `setns` in the child fails the spawn.
    pub fn enter_on_spawn(&self, command: &mut Command) -> anyhow::Result<()> {
        let ns = File::open(self.path())
            .with_context(|| format!("cannot open {}", self.path().display()))?;
        // SAFETY: the closure only calls setns(2), which is async-signal-safe, on an fd opened before the fork
        // (and kept open by the closure, which `command` owns); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        // Deleting the namespace destroys the interfaces in it (a veth pair goes with either end).
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e:#}", self.name);
        }
    }
}

/// One end of a veth pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethEnd {
    /// Interface name (at most 15 bytes), unique in this test process.
    pub name: String,
    /// The end's IPv4 address, in the pair's /24.
    pub addr: Ipv4Addr,
}

/// A veth pair between two namespaces, with addresses on both ends and both ends up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethPair {
    /// The end in the first namespace given to [`veth_pair`], address `.1`.
    pub a: VethEnd,
    /// The end in the second namespace, address `.2`.
    pub b: VethEnd,
}

/// Prefix length of every veth pair's subnet.
pub const VETH_PREFIX_LEN: u8 = 24;

/// Creates a veth pair with one end in `a` and the other in `b`, addresses `10.231.<k>.1/24` and `.2/24` where
/// `k` numbers the pairs of this process (so two pairs of one test never share a subnet), and brings both up.
/// The addresses exist only inside the two namespaces.
///
/// # Errors
/// When `ip` fails (the message carries its stderr).
pub fn veth_pair(a: &NetNsGuard, b: &NetNsGuard) -> anyhow::Result<VethPair> {
    let k = NEXT_VETH.fetch_add(1, Ordering::Relaxed);
    if k > u32::from(u8::MAX) {
        bail!("more than 256 veth pairs in one test process; their /24 subnets would repeat");
    }
    let subnet = k as u8;
    let end = |suffix: char, host: u8| VethEnd {
        name: format!("ptc{k}{suffix}"),
        addr: Ipv4Addr::new(10, 231, subnet, host),
    };
    let pair = VethPair {
        a: end('a', 1),
        b: end('b', 2),
    };
    // Created directly inside the two namespaces, so the names never touch (or clash in) the host's namespace.
    run_ip(&[
        "link",
        "add",
        &pair.a.name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &pair.b.name,
        "netns",
        b.name(),
    ])?;
    for (ns, end) in [(a, &pair.a), (b, &pair.b)] {
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/{VETH_PREFIX_LEN}", end.addr),
            "dev",
            &end.name,
        ])?;
        ns.ip(&["link", "set", &end.name, "up"])?;
    }
    Ok(pair)
}

/// Runs `ip <args>`, returning its stdout; fails with its stderr.
fn run_ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::privileged::require_root;

    #[test]
    fn veth_pair_connects_two_namespaces() {
        if !require_root("veth_pair_connects_two_namespaces") {
            return;
        }
        let client = NetNsGuard::new().expect("client namespace");
        let server = NetNsGuard::new().expect("server namespace");
        let pair = veth_pair(&client, &server).expect("veth pair");
        let server_addr = pair.b.addr;
        let listener = server
            .run(|| TcpListener::bind((server_addr, 0)))
            .expect("enter server namespace")
            .expect("bind in server namespace");
        let port = listener.local_addr().expect("local addr").port();
        client
            .run(|| TcpStream::connect((server_addr, port)))
            .expect("enter client namespace")
            .expect("connect across the veth");
        listener.accept().expect("accept");
        // No check from the host namespace on purpose: there 10.231.x.x would be routed off the machine.
        assert!(
            client
                .ip(&["-o", "addr", "show", "dev", &pair.a.name])
                .expect("ip addr")
                .contains(&pair.a.addr.to_string())
        );
    }

    #[test]
    fn command_starts_inside_the_namespace() {
        if !require_root("command_starts_inside_the_namespace") {
            return;
        }
        let ns = NetNsGuard::new().expect("namespace");
        let mut cmd = Command::new("ip");
        cmd.args(["-o", "link", "show"]);
        ns.enter_on_spawn(&mut cmd).expect("enter on spawn");
        let out = cmd.output().expect("run ip in the namespace");
        let links = String::from_utf8_lossy(&out.stdout);
        // A fresh namespace has exactly one interface: its loopback.
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:"), "{links}");
        let path = ns.path();
        drop(ns);
        assert!(!path.exists(), "namespace not deleted on drop");
    }
}
