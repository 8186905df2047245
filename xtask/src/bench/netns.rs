//! A WAN for a benchmark: a client and a server network namespace, each joined by a veth pair to a third one in
//! between, where a relay in this process forwards every Ethernet frame from one side to the other after a
//! one-way delay of half the round trip. Named `pcb-<pid>-{client,wan,server}`, deleted on drop (the veth pairs
//! go with them), also when the benchmark fails.
//!
//! Why a relay and not `tc qdisc ... netem delay`: this machine's kernel is built without `sch_netem`
//! (`CONFIG_NET_SCH_NETEM` is not set), and the relay gives the same thing, a fixed delay on every packet both
//! ways, TCP's handshake included. It reads and writes frames with `AF_PACKET` sockets carrying a
//! `virtio_net_hdr` (`PACKET_VNET_HDR`), so frames whose checksum a veth left to offload keep that state and
//! arrive valid. One thread per direction receives and one sends when a frame's time has come: a frame is late
//! by the scheduler's wake-up (tens of µs on an idle core), never early.
//!
//! Code enters a namespace with `setns(2)` on a thread of its own ([`run_in`]) or through `nsenter --net=PATH`
//! for a child ([`nsenter`]), never with `ip netns exec` (which remounts `/sys`).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::output_ok;

/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The server's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);

/// `linux/if_packet.h`: a `virtio_net_hdr` before every frame read or written.
const PACKET_VNET_HDR: libc::c_int = 15;
/// `linux/if_packet.h`: do not read back the frames this socket's interface sends.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// The largest frame a veth hands over with GSO (64 KiB), its `virtio_net_hdr` and room to spare.
const FRAME_BUFFER: usize = 70_000;

/// The three namespaces and the relay between them.
#[derive(Debug)]
pub struct Wan {
    client: String,
    wan: String,
    server: String,
    /// One-way delay, µs.
    delay_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Wan {
    /// Creates the namespaces with `lo` up, veth pairs client <-> wan <-> server with [`CLIENT_IP`] and
    /// [`SERVER_IP`] on the outer ends, and starts the relay with no delay.
    pub fn new() -> Result<Wan> {
        let pid = std::process::id();
        let mut wan = Wan {
            client: format!("pcb-{pid}-client"),
            wan: format!("pcb-{pid}-wan"),
            server: format!("pcb-{pid}-server"),
            delay_us: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        remove_orphans();
        for ns in [&wan.client, &wan.wan, &wan.server] {
            // Only an earlier process with our pid that died before its drop ran could have left one.
            if Path::new("/run/netns").join(ns).exists() {
                ip(&["netns", "del", ns])?;
            }
        }
        // From here on a failure drops `wan`, which deletes what exists.
        for ns in [&wan.client, &wan.wan, &wan.server] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let [(end_c, relay_c), (end_s, relay_s)] = veths();
        for (ns, end, relay, addr) in [
            (&wan.client, &end_c, &relay_c, CLIENT_IP),
            (&wan.server, &end_s, &relay_s, SERVER_IP),
        ] {
            ip(&[
                "link", "add", end, "netns", ns, "type", "veth", "peer", "name", relay, "netns",
                &wan.wan,
            ])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", end])?;
            ip(&["-n", ns, "link", "set", end, "up"])?;
            ip(&["-n", &wan.wan, "link", "set", relay, "up", "promisc", "on"])?;
        }
        let wan_path = Path::new("/run/netns").join(&wan.wan);
        let (c, s) = run_in(&wan_path, || -> Result<_> {
            Ok((packet_socket(&relay_c)?, packet_socket(&relay_s)?))
        })??;
        let (c2, s2) = (c.try_clone()?, s.try_clone()?);
        wan.forward(c, s2, "client -> server");
        wan.forward(s, c2, "server -> client");
        Ok(wan)
    }

    /// Relays frames read from `from` to `to` after the delay: a reader thread stamps each frame's due time
    /// and a writer thread sends it then.
    fn forward(&mut self, from: OwnedFd, to: OwnedFd, what: &'static str) {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let (delay, stop) = (self.delay_us.clone(), self.stop.clone());
        self.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; FRAME_BUFFER];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: reads into a buffer of the length given, from a socket this thread owns.
                let n =
                    unsafe { libc::recv(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else {
                    continue; // the receive timeout: look at `stop` again
                };
                let due = Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }));
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((due, frame)) = rx.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // ENOBUFS: the device queue is full for a moment; a few tries, as a NIC's ring would wait.
                for attempt in 0..5 {
                    // SAFETY: writes a frame of the length given to a socket this thread owns.
                    let sent = unsafe {
                        libc::send(to.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0)
                    };
                    if sent >= 0 {
                        break;
                    }
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOBUFS) || attempt == 4 {
                        eprintln!(
                            "relay {what}: dropped a frame of {} bytes: {e}",
                            frame.len()
                        );
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }));
    }

    /// Sets the round trip: half of it each way.
    pub fn set_rtt(&self, rtt_ms: u32) -> Result<()> {
        self.delay_us
            .store(u64::from(rtt_ms) * 500, Ordering::Relaxed);
        Ok(())
    }

    /// `/run/netns/<client>`.
    pub fn client_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.client)
    }

    /// `/run/netns/<server>`.
    pub fn server_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.server)
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Deleting a namespace destroys its interfaces; a veth pair goes with either end.
        for ns in [&self.client, &self.wan, &self.server] {
            if Path::new("/run/netns").join(ns).exists()
                && let Err(e) = ip(&["netns", "del", ns])
            {
                eprintln!("cannot delete network namespace {ns}: {e:#}");
            }
        }
    }
}

/// Deletes the `pcb-<pid>-*` namespaces of benchmark runs whose process is gone (interrupted before their drop
/// ran: Ctrl-C, SIGKILL). Only this module's naming is touched, and only for dead pids.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("pcb-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            eprintln!("deleting network namespace {name}, left by an interrupted run (pid {pid})");
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("cannot delete {name}: {e:#}");
            }
        }
    }
}

/// The veth pairs' names (at most 15 bytes): (client end, its relay end), (server end, its relay end).
fn veths() -> [(String, String); 2] {
    let pid = std::process::id();
    [
        (format!("pcbc{pid}"), format!("pcbrc{pid}")),
        (format!("pcbs{pid}"), format!("pcbrs{pid}")),
    ]
}

/// An `AF_PACKET` socket on `dev` (in the calling thread's namespace) for every protocol, with
/// `virtio_net_hdr`s, not reading back what it sends, with a 100 ms receive timeout.
fn packet_socket(dev: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
    if fd < 0 {
        bail!(
            "AF_PACKET socket: {}; the benchmark needs root",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).context("interface name")?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {dev} in the relay namespace");
    }
    let one: libc::c_int = 1;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    for (level, opt, val, len) in [
        (
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>(),
        ),
        (
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            (&raw const one).cast(),
            size_of::<libc::c_int>(),
        ),
        (
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>(),
        ),
    ] {
        // SAFETY: each value points to a live local of the length given.
        if unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, val, len as libc::socklen_t) } != 0
        {
            bail!(
                "setsockopt {opt} on the {dev} packet socket: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as libc::c_int;
    // SAFETY: a sockaddr_ll of its own size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "binding a packet socket to {dev}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(fd)
}

/// `nsenter --net=<netns>`: the prefix that starts a program in that namespace (nsenter execs it, so the
/// child's PID is the program's).
pub fn nsenter(netns: &Path) -> Vec<String> {
    vec!["nsenter".into(), format!("--net={}", netns.display())]
}

/// Runs `f` on a fresh thread that has entered `netns`; sockets it creates stay in that namespace.
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                // SAFETY: setns(2) on a descriptor this closure owns; it changes only this thread's namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "setns into {} failed: {}; the benchmark needs root",
                        netns.display(),
                        std::io::Error::last_os_error()
                    );
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn ip(args: &[&str]) -> Result<()> {
    output_ok(
        Command::new("ip").args(args),
        &format!("ip {} (iproute2; the benchmark needs root)", args.join(" ")),
    )?;
    Ok(())
}
