//! The flood senders of `bench flood`, threads of xtask that enter the flood namespace (`setns(2)` on their own
//! thread), pinned to the load generator's CPU at nice 19 so they take what the legitimate client leaves.
//!
//! - Spoofed SYNs: `AF_PACKET` frames with `PACKET_QDISC_BYPASS` (no qdisc), 64 per `sendmmsg`, every one from a
//!   random source in [`SPOOFED_NET`] (routed by the server back into the flood namespace, which neither owns
//!   nor forwards it: the SYN-ACKs die there), random port and sequence number, correct checksums.
//! - Junk ClientHellos: kernel TCP handshakes from the [`JUNK_SOURCES`] addresses of [`CONNECT_NET`] (owned by the
//!   flood namespace through a local route, bound with `IP_FREEBIND`), then a malformed ClientHello (the bad
//!   key_share case of the parser's fixtures), then a reset (`SO_LINGER` 0).
//! - Valid ClientHellos: the same from [`VALID_SOURCES`] addresses with a real captured one (openssl, TLS 1.3),
//!   then a reset: the server pays a full handshake's key exchange and signature for a client already gone.
//!
//! Every sender stops at its deadline or at [`MAX_PACKETS`] / [`MAX_CONNECTIONS`], whichever comes first.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use portcullis_abi::client_hello::Malformed;
use portcullis_abi::hello_fixtures::{CAPTURED, malformed_cases};

/// Spoofed SYN sources: 10.98.0.0/16.
pub const SPOOFED_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 98, 0, 0), 16);
/// Sources of the flood's real TCP connections: 10.99.0.0/16, local in the flood namespace.
pub const CONNECT_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 99, 0, 0), 16);
/// Junk ClientHellos come from this many addresses of [`CONNECT_NET`] (10.99.0.1 on).
pub const JUNK_SOURCES: u32 = 4096;
/// Valid ClientHellos come from this few (10.99.255.1 on).
pub const VALID_SOURCES: u32 = 4;
/// Bound on the spoofed SYNs of one phase.
pub const MAX_PACKETS: u64 = 50_000_000;
/// Bound on the connections of one sender thread in one phase.
pub const MAX_CONNECTIONS: u64 = 5_000_000;
/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// A batch of flood connects waits at most this long: a SYN the guard dropped is not retried, the thread moves
/// on to the next batch as an attacker would (a 3-way handshake here takes well under 1 ms).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(20);
/// Threads per connection flood.
const CONNECT_THREADS: usize = 2;
/// Connects each connection-flood thread starts at once.
const IN_FLIGHT: usize = 64;

/// Which floods run at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mix {
    /// (a) spoofed SYNs.
    pub syn: bool,
    /// (b) junk ClientHellos after real handshakes.
    pub junk: bool,
    /// (c) valid ClientHellos from a few sources.
    pub valid: bool,
}

/// Where the floods go.
#[derive(Clone, Debug)]
pub struct Target {
    /// The flood namespace (`/run/netns/NAME`).
    pub netns: std::path::PathBuf,
    /// The flood namespace's veth end (the frames leave through it).
    pub ifname: String,
    /// Its MAC address.
    pub src_mac: [u8; 6],
    /// The server's end's MAC address.
    pub dst_mac: [u8; 6],
    /// The server's address on that veth.
    pub server: Ipv4Addr,
    /// The listener's port.
    pub port: u16,
    /// CPU the senders run on.
    pub cpu: usize,
}

/// What one phase's floods sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Spoofed SYN frames.
    pub syns: u64,
    /// Junk ClientHellos sent on an established connection.
    pub junk: u64,
    /// Valid ClientHellos sent on an established connection.
    pub valid: u64,
    /// Flood connections whose handshake failed or timed out (SYN dropped, queue full).
    pub connect_failed: u64,
    /// Seconds the floods ran.
    pub secs: f64,
}

impl Sent {
    /// Flood packets per second: SYN frames, and 4 per connection (SYN, ACK, the ClientHello, RST) plus 1 per
    /// failed connect.
    pub fn packets_per_s(&self) -> f64 {
        let packets = self.syns + 4 * (self.junk + self.valid) + self.connect_failed;
        packets as f64 / self.secs.max(1e-9)
    }
}

/// Runs the floods of `mix` at `target` for `duration` (each bounded in count too) and returns what they sent.
pub fn flood(target: &Target, mix: Mix, duration: Duration) -> Result<Sent> {
    let syns = AtomicU64::new(0);
    let junk = AtomicU64::new(0);
    let valid = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + duration;
    let junk_payload = malformed_cases()
        .into_iter()
        .find(|c| c.0 == Malformed::BadKeyShare)
        .map(|c| c.1)
        .context("no bad key_share case in the fixtures")?;
    let valid_payload: &[u8] = CAPTURED
        .iter()
        .find(|c| c.0 == "openssl_tls13")
        .map(|c| c.1)
        .context("no captured openssl_tls13 ClientHello")?;
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        if mix.syn {
            handles.push(scope.spawn(|| {
                enter(target)?;
                spoofed_syns(target, deadline, &syns)
            }));
        }
        for (on, payload, first, sources, count) in [
            (mix.junk, junk_payload.as_slice(), 1, JUNK_SOURCES, &junk),
            (
                mix.valid,
                valid_payload,
                255 * 256 + 1,
                VALID_SOURCES,
                &valid,
            ),
        ] {
            if !on {
                continue;
            }
            for t in 0..CONNECT_THREADS {
                let failed = &failed;
                handles.push(scope.spawn(move || {
                    enter(target)?;
                    connections(
                        target,
                        payload,
                        (first, sources, t),
                        deadline,
                        count,
                        failed,
                    )
                }));
            }
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a flood sender panicked"))??;
        }
        Ok(())
    })?;
    Ok(Sent {
        syns: syns.into_inner(),
        junk: junk.into_inner(),
        valid: valid.into_inner(),
        connect_failed: failed.into_inner(),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Moves this thread into the flood namespace, onto the sender CPU, at nice 19.
fn enter(target: &Target) -> Result<()> {
    let ns = File::open(&target.netns)
        .with_context(|| format!("cannot open {}", target.netns.display()))?;
    // SAFETY: a valid descriptor; setns(2) changes this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns into the flood namespace");
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(target.cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning a flood sender");
        }
        // Linux: PRIO_PROCESS with tid 0 is this thread.
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
    Ok(())
}

/// Spoofed SYN frames through `AF_PACKET` until `deadline` or [`MAX_PACKETS`].
fn spoofed_syns(target: &Target, deadline: Instant, sent: &AtomicU64) -> Result<()> {
    let ifname = std::ffi::CString::new(target.ifname.as_str())?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {} in the flood namespace", target.ifname);
    }
    // Protocol 0: this socket receives nothing.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket (needs root)");
    }
    let _close = Fd(fd);
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    if unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are its address.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&target.dst_mac);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(target.port));
    let mut frames = vec![[0u8; SYN_FRAME_LEN]; BATCH];
    let mut total = 0u64;
    while Instant::now() < deadline && total < MAX_PACKETS {
        for f in &mut frames {
            *f = syn_frame(target, &mut rng);
        }
        let mut iovs: Vec<libc::iovec> = frames
            .iter_mut()
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: a zeroed msghdr is valid; name and iov point at live values for the call below.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&raw mut addr).cast();
                hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: `msgs` holds BATCH valid headers whose buffers outlive the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A full device queue (ENOBUFS) is the flood's limit, not an error.
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(e).context("sendmmsg on the AF_PACKET socket");
            }
            continue;
        }
        total += n as u64;
        sent.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Ethernet + IPv4 + TCP with an MSS option.
const SYN_FRAME_LEN: usize = 14 + 20 + 24;

/// One spoofed SYN to the target from a random source of [`SPOOFED_NET`].
fn syn_frame(target: &Target, rng: &mut Rng) -> [u8; SYN_FRAME_LEN] {
    let r = rng.next();
    let host = (r as u32) & ((1 << (32 - SPOOFED_NET.1)) - 1);
    let src = Ipv4Addr::from(u32::from(SPOOFED_NET.0) | host.max(1));
    let sport = 1024 + ((r >> 32) as u16 % 64_000);
    let seq = (r >> 16) as u32;
    let mut f = [0u8; SYN_FRAME_LEN];
    f[0..6].copy_from_slice(&target.dst_mac);
    f[6..12].copy_from_slice(&target.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&44u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&target.server.octets());
    let sum = checksum(0, ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let tcp = &mut f[34..58];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&target.port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 6 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&target.server.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let sum = checksum(partial(0, &pseudo), tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The one's complement sum of `bytes` added to `acc` (RFC 1071), unfolded.
fn partial(mut acc: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        acc += hi | pair.get(1).map_or(0, |b| u32::from(*b));
    }
    acc
}

/// The Internet checksum of `bytes` after the partial sum `acc`.
fn checksum(acc: u32, bytes: &[u8]) -> u16 {
    let mut sum = partial(acc, bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Real TCP connections from `sources.1` addresses of [`CONNECT_NET`] starting at host number `sources.0`
/// (thread `sources.2` of [`CONNECT_THREADS`] takes every other one), [`IN_FLIGHT`] at a time: each sends
/// `payload` once established and then resets; one not established within [`CONNECT_TIMEOUT`] is abandoned (a
/// SYN the guard or a full queue dropped is not retried), as an attacker would. Until `deadline` or
/// [`MAX_CONNECTIONS`].
fn connections(
    target: &Target,
    payload: &[u8],
    sources: (u32, u32, usize),
    deadline: Instant,
    sent: &AtomicU64,
    failed: &AtomicU64,
) -> Result<()> {
    let (first, count, thread) = sources;
    let mut i = thread as u32;
    let mut n = 0u64;
    while Instant::now() < deadline && n < MAX_CONNECTIONS {
        let mut batch = Vec::with_capacity(IN_FLIGHT);
        for _ in 0..IN_FLIGHT {
            let host = first + i % count;
            i = i.wrapping_add(CONNECT_THREADS as u32);
            let src = Ipv4Addr::from(u32::from(CONNECT_NET.0) | host);
            match start_connect(src, target) {
                Ok(fd) => batch.push(fd),
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        n += IN_FLIGHT as u64;
        let (ok, bad) = finish_batch(&batch, payload);
        sent.fetch_add(ok, Ordering::Relaxed);
        failed.fetch_add(bad, Ordering::Relaxed);
    }
    Ok(())
}

/// Waits up to [`CONNECT_TIMEOUT`] for the batch's connects; on each established one sends `payload` and arms a
/// reset for its close. Returns (sent, abandoned or failed). Dropping the batch closes every socket.
fn finish_batch(batch: &[Fd], payload: &[u8]) -> (u64, u64) {
    let mut polls: Vec<libc::pollfd> = batch
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.0,
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    let give_up = Instant::now() + CONNECT_TIMEOUT;
    let (mut ok, mut settled) = (0u64, 0usize);
    while settled < polls.len() {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // SAFETY: `polls` is a valid array of its length for the call.
        let n = unsafe {
            libc::poll(
                polls.as_mut_ptr(),
                polls.len() as libc::nfds_t,
                left.as_millis().max(1) as libc::c_int,
            )
        };
        if n <= 0 {
            break;
        }
        for (p, sock) in polls.iter_mut().zip(batch) {
            if p.fd < 0 || p.revents == 0 {
                continue;
            }
            settled += 1;
            let established = p.revents & (libc::POLLERR | libc::POLLHUP) == 0;
            // A negative fd is skipped by poll(2): this one is settled.
            p.fd = -1;
            if established && send_and_reset(sock, payload).is_ok() {
                ok += 1;
            }
        }
    }
    (ok, batch.len() as u64 - ok)
}

/// Sends `payload` on an established `sock` and sets `SO_LINGER` 0, so closing it sends a reset.
fn send_and_reset(sock: &Fd, payload: &[u8]) -> std::io::Result<()> {
    // SAFETY: `payload` is valid for its length.
    let n = unsafe {
        libc::send(
            sock.0,
            payload.as_ptr().cast(),
            payload.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setopt(sock.0, libc::SOL_SOCKET, libc::SO_LINGER, &linger)
}

/// A non-blocking socket bound to `src` (port chosen at connect) with its connect to the target started.
fn start_connect(src: Ipv4Addr, target: &Target) -> std::io::Result<Fd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sock = Fd(fd);
    let one: libc::c_int = 1;
    setopt(sock.0, libc::IPPROTO_IP, libc::IP_FREEBIND, &one)?;
    setopt(
        sock.0,
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        &one,
    )?;
    let bind = sockaddr(src, 0);
    // SAFETY: a sockaddr_in of the right size.
    if unsafe {
        libc::bind(
            sock.0,
            (&raw const bind).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let to = sockaddr(target.server, target.port);
    // SAFETY: as above.
    if unsafe {
        libc::connect(
            sock.0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } != 0
    {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(sock)
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn setopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is valid for size_of::<T>() bytes for the call.
    if unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Closes its descriptor on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// xorshift64*: the spoofed sources need spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_frame_checksums_verify() {
        let target = Target {
            netns: "/nonexistent".into(),
            ifname: "x".into(),
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            server: Ipv4Addr::new(10, 233, 2, 1),
            port: 443,
            cpu: 1,
        };
        let f = syn_frame(&target, &mut Rng(7));
        // A header with its checksum sums to 0xffff, i.e. checksums to 0.
        assert_eq!(checksum(0, &f[14..34]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&f[26..30]);
        pseudo[4..8].copy_from_slice(&f[30..34]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(checksum(partial(0, &pseudo), &f[34..]), 0);
        assert_eq!(f[26..28], [10, 98]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 443);
    }
}
