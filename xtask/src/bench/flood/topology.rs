//! The three namespaces of `bench flood` and the two veth pairs joining them to the server, deleted on drop.
//!
//! ```text
//!   client ns                     server ns                          flood ns
//!   10.233.1.2 + 64 sources  ---  10.233.1.1 [XDP] | 10.233.2.1 [XDP] ---  10.233.2.2, 10.99.0.0/16 local
//!                                 routes 10.98/16 and 10.99/16 via 10.233.2.2
//! ```
//!
//! Two pairs rather than a bridge: XDP runs native on each server end, and each side's traffic has a link of its
//! own, so the flood cannot take the legitimate client's veth queue. Spoofed sources (10.98/16) are routed back
//! into the flood namespace, which neither owns them nor forwards: the SYN-ACKs die there, inside our
//! namespaces. The server's veth ends steer received packets to the server's CPU (RPS), so the kernel's TCP work
//! for the flood lands where a NIC's receive queue would put it; on veth XDP itself runs in the NAPI poll of the
//! CPU that sent the frame (see the module docs of `flood`).
//!
//! Names carry this process's PID (`pfl<pid>-s`, ...); [`Topology::new`] first deletes the namespaces a killed
//! earlier run left behind (their PID is gone), so a Ctrl-C costs nothing on the next run.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use super::sender::{CONNECT_NET, SPOOFED_NET};

/// The server's address on the client's veth (the legitimate target).
pub const SERVER_FOR_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 233, 1, 1);
/// The server's address on the flood's veth (the flood's target).
pub const SERVER_FOR_FLOOD: Ipv4Addr = Ipv4Addr::new(10, 233, 2, 1);
/// The legitimate client connects from this many addresses (10.233.1.10 on), so a per-source budget sized for
/// one client is not what limits the load generator.
pub const CLIENT_SOURCES: u8 = 64;

/// The namespaces and links.
#[derive(Debug)]
pub struct Topology {
    /// Server namespace name.
    pub server: String,
    /// Client namespace name.
    pub client: String,
    /// Flood namespace name.
    pub flood: String,
    /// The server's end towards the client (XDP attached here).
    pub server_client_if: String,
    /// The server's end towards the flood (XDP attached here).
    pub server_flood_if: String,
    /// The flood's end.
    pub flood_if: String,
    /// The legitimate client's source addresses.
    pub client_sources: Vec<Ipv4Addr>,
    /// Whether RPS to the server CPU could be set on the server's ends.
    pub rps: bool,
}

impl Topology {
    /// Creates the namespaces, the veths, addresses and routes; `server_cpu` receives the server ends' packets.
    pub fn new(server_cpu: usize) -> Result<Topology> {
        remove_stale();
        let pid = std::process::id();
        let mut t = Topology {
            server: format!("pfl{pid}-s"),
            client: format!("pfl{pid}-c"),
            flood: format!("pfl{pid}-f"),
            // Interface names are at most 15 bytes; `pfl` + a PID of up to 7 digits + 2 fits.
            server_client_if: format!("pfl{pid}sc"),
            server_flood_if: format!("pfl{pid}sf"),
            flood_if: format!("pfl{pid}f"),
            client_sources: Vec::new(),
            rps: false,
        };
        let client_if = format!("pfl{pid}c");
        for ns in [&t.server, &t.client, &t.flood] {
            ip(&["netns", "add", ns])?;
        }
        // From here on, Drop deletes what exists.
        for ns in [&t.server, &t.client, &t.flood] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        veth(&t.server, &t.server_client_if, &t.client, &client_if)?;
        veth(&t.server, &t.server_flood_if, &t.flood, &t.flood_if)?;
        ip(&[
            "-n",
            &t.server,
            "addr",
            "add",
            &format!("{SERVER_FOR_CLIENT}/24"),
            "dev",
            &t.server_client_if,
        ])?;
        ip(&[
            "-n",
            &t.client,
            "addr",
            "add",
            "10.233.1.2/24",
            "dev",
            &client_if,
        ])?;
        for i in 0..CLIENT_SOURCES {
            let a = Ipv4Addr::new(10, 233, 1, 10 + i);
            ip(&[
                "-n",
                &t.client,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                &client_if,
            ])?;
            t.client_sources.push(a);
        }
        ip(&[
            "-n",
            &t.server,
            "addr",
            "add",
            &format!("{SERVER_FOR_FLOOD}/24"),
            "dev",
            &t.server_flood_if,
        ])?;
        ip(&[
            "-n",
            &t.flood,
            "addr",
            "add",
            "10.233.2.2/24",
            "dev",
            &t.flood_if,
        ])?;
        for (ns, dev) in [
            (&t.server, &t.server_client_if),
            (&t.server, &t.server_flood_if),
            (&t.client, &client_if),
            (&t.flood, &t.flood_if),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        for (net, len) in [SPOOFED_NET, CONNECT_NET] {
            ip(&[
                "-n",
                &t.server,
                "route",
                "add",
                &format!("{net}/{len}"),
                "via",
                "10.233.2.2",
            ])?;
        }
        // The flood namespace owns all of 10.99/16 (binds any of it), not 10.98/16.
        let (net, len) = CONNECT_NET;
        ip(&[
            "-n",
            &t.flood,
            "route",
            "add",
            "local",
            &format!("{net}/{len}"),
            "dev",
            "lo",
        ])?;
        // Kernel SYN cookies on (the default, said explicitly) and room in the queues, as on an edge host.
        t.sysctl("net.ipv4.tcp_syncookies=1")?;
        t.sysctl("net.core.somaxconn=4096")?;
        t.sysctl("net.ipv4.tcp_max_syn_backlog=4096")?;
        let mask = format!("{:x}", 1u64 << server_cpu);
        t.rps = [&t.server_client_if, &t.server_flood_if].iter().all(|dev| {
            sh_in(
                &t.server,
                &format!("echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"),
            )
            .is_ok()
        });
        Ok(t)
    }

    /// `/run/netns/<name>`.
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{name}"))
    }

    /// `sysctl -w` in the server namespace.
    pub fn sysctl(&self, setting: &str) -> Result<()> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.server))
            .args(["sysctl", "-q", "-w", setting])
            .stdin(Stdio::null())
            .output()
            .context("cannot run nsenter sysctl")?;
        if !out.status.success() {
            bail!(
                "sysctl -w {setting} in {} failed: {}",
                self.server,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The MAC address of `dev` in namespace `ns`.
    pub fn mac(ns: &str, dev: &str) -> Result<[u8; 6]> {
        let text = ip(&["-n", ns, "link", "show", "dev", dev])?;
        let word = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .with_context(|| format!("no link/ether in `ip link show dev {dev}`: {text}"))?;
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = word.split(':').collect();
        if parts.len() != 6 {
            bail!("{dev}: MAC {word:?} is not six bytes");
        }
        for (m, p) in mac.iter_mut().zip(parts) {
            *m = u8::from_str_radix(p, 16).with_context(|| format!("{dev}: MAC {word:?}"))?;
        }
        Ok(mac)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace destroys its ends of the veths, and with them the pairs.
        for ns in [&self.server, &self.client, &self.flood] {
            if Topology::path(ns).exists()
                && let Err(e) = ip(&["netns", "del", ns])
            {
                eprintln!("cannot delete network namespace {ns}: {e:#}");
            }
        }
    }
}

/// A veth pair `a_dev` in `a` and `b_dev` in `b`, created inside them (the names never touch the host's).
fn veth(a: &str, a_dev: &str, b: &str, b_dev: &str) -> Result<()> {
    ip(&[
        "link", "add", a_dev, "netns", a, "type", "veth", "peer", "name", b_dev, "netns", b,
    ])?;
    Ok(())
}

/// Deletes `pfl<pid>-*` namespaces whose PID no longer runs (an earlier run killed before its cleanup).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("pfl")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            eprintln!(
                "removing network namespace {name}, left by an earlier bench flood (pid {pid})"
            );
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// `sh -c SCRIPT` with the namespace's own /sys (`ip netns exec` remounts it; nothing else needs it).
fn sh_in(ns: &str, script: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip netns exec")?;
    if !out.status.success() {
        bail!(
            "`{script}` in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip ARGS`, its stdout; fails with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
