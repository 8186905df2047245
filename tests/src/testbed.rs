//! The bed every XDP end-to-end test stands on: a client namespace and a server namespace joined by a veth, a
//! per-test pin directory, a test PKI, and a config that runs the daemon with XDP on the server's end of the
//! veth, its listener on the server's veth address (port 0).
//!
//! ```no_run
//! # use portcullis_tests::testbed::XdpTestbed;
//! let bed = XdpTestbed::builder("doc").xdp("syn_rate = 100").build().expect("testbed");
//! let daemon = bed.start_daemon();
//! assert!(bed.s_client(daemon.addr(), 30));
//! ```
//!
//! Declare the [`crate::daemon::Daemon`] after the bed, so it is dropped (killed) first and the namespaces and
//! the pin directory go last.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;

use crate::bpffs::BpfDir;
use crate::clients::s_client;
use crate::daemon::{Daemon, DaemonOptions, TempDir, binary};
use crate::netns::{NetNsGuard, VETH_PREFIX_LEN, VethPair, veth_pair};
use crate::pki::Pki;

/// Builds an [`XdpTestbed`]; every knob has the default the plain tests use.
#[derive(Clone, Debug)]
pub struct XdpTestbedBuilder {
    tag: String,
    xdp_lines: Vec<String>,
    extra_client_addrs: u8,
}

impl XdpTestbedBuilder {
    /// Adds a `key = value` line to the config's `[xdp]` section (`mode = "auto"`, `syn_rate = 100`, ...).
    pub fn xdp(mut self, line: &str) -> XdpTestbedBuilder {
        self.xdp_lines.push(line.to_owned());
        self
    }

    /// Gives the client's end of the veth `n` more addresses after its first (`.3`, `.4`, ... of the pair's
    /// /24), for tests that need traffic from two sources. At most 250.
    pub fn extra_client_addrs(mut self, n: u8) -> XdpTestbedBuilder {
        self.extra_client_addrs = n.min(250);
        self
    }

    /// Creates the namespaces, the veth, the extra addresses and the PKI.
    ///
    /// # Errors
    /// When a namespace, the veth or an address cannot be set up (privileged tests need root), or the PKI
    /// cannot be written.
    pub fn build(self) -> anyhow::Result<XdpTestbed> {
        let client = NetNsGuard::new().context("client namespace")?;
        let server = NetNsGuard::new().context("server namespace")?;
        let veth = veth_pair(&client, &server).context("veth pair between client and server")?;
        let mut extra = Vec::new();
        for i in 0..self.extra_client_addrs {
            let [a, b, c, _] = veth.a.addr.octets();
            let addr = Ipv4Addr::new(a, b, c, 3 + i);
            client.ip(&[
                "addr",
                "add",
                &format!("{addr}/{VETH_PREFIX_LEN}"),
                "dev",
                &veth.a.name,
            ])?;
            extra.push(addr);
        }
        let pin_dir = BpfDir::new(&self.tag);
        let pki_dir = TempDir::new(&format!("{}-pki", self.tag))?;
        let pki = Pki::generate(pki_dir.path()).context("test PKI")?;
        let mut config = format!(
            "{tls}\n[[listeners]]\naddress = \"{addr}:0\"\n\n[xdp]\ninterfaces = [\"{iface}\"]\npin_dir = {pin_dir:?}\n",
            tls = pki.tls_section(""),
            addr = veth.b.addr,
            iface = veth.b.name,
            pin_dir = pin_dir.path(),
        );
        for line in &self.xdp_lines {
            config.push_str(line);
            config.push('\n');
        }
        Ok(XdpTestbed {
            config,
            pki,
            _pki_dir: pki_dir,
            pin_dir,
            extra_client_addrs: extra,
            veth,
            server,
            client,
        })
    }
}

/// Two namespaces, a veth between them, a pin directory and a PKI; see the module docs. Dropping it deletes the
/// namespaces (and with them the veth) and removes the pin directory and the PKI files.
#[derive(Debug)]
pub struct XdpTestbed {
    config: String,
    /// The test CA and server certificates the daemon serves.
    pub pki: Pki,
    _pki_dir: TempDir,
    /// Where the daemon pins its maps and program.
    pub pin_dir: BpfDir,
    /// The client end's addresses beyond `veth.a.addr` (see [`XdpTestbedBuilder::extra_client_addrs`]).
    pub extra_client_addrs: Vec<Ipv4Addr>,
    /// `a` is the client's end, `b` the server's (XDP attached, the listener on its address).
    pub veth: VethPair,
    /// The namespace the daemon runs in.
    pub server: NetNsGuard,
    /// The namespace clients run in.
    pub client: NetNsGuard,
}

impl XdpTestbed {
    /// A builder; `tag` names the pin directory and temporary files (tests running in parallel get distinct
    /// paths anyway).
    pub fn builder(tag: &str) -> XdpTestbedBuilder {
        XdpTestbedBuilder {
            tag: tag.to_owned(),
            xdp_lines: Vec::new(),
            extra_client_addrs: 0,
        }
    }

    /// The daemon's config file.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Starts the daemon in the server namespace with the bed's config and waits until it is ready. Panics if
    /// it does not start (the message carries its log).
    pub fn start_daemon(&self) -> Daemon {
        Daemon::start(DaemonOptions {
            config_toml: Some(self.config.clone()),
            netns: Some(self.server.name().to_owned()),
            ..Default::default()
        })
        .expect("daemon starts with XDP in the server namespace")
    }

    /// One `openssl s_client` handshake from the client namespace (first client address) to `addr`, verified
    /// against the bed's CA, given up after `secs` seconds. Whether it succeeded.
    pub fn s_client(&self, addr: SocketAddr, secs: u32) -> bool {
        s_client(&self.client, &self.pki, addr, secs)
    }

    /// `portcullis xdp --pin-dir <pin dir> ARGS`, which must succeed; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        xdp_cli(self.pin_dir.path(), args)
    }
}

/// `portcullis xdp --pin-dir DIR ARGS`, which must succeed (panics with its stderr otherwise); returns its stdout.
pub fn xdp_cli(pin_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("xdp")
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the portcullis binary");
    assert!(
        out.status.success(),
        "portcullis xdp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
