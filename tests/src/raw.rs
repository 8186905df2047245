//! Crafted IPv4/TCP packets sent through a raw socket (`IPPROTO_RAW`, which implies `IP_HDRINCL`) from a test's
//! namespace: SYN floods and first segments the kernel's TCP would never send, from any address the namespace
//! owns. The kernel routes them (and resolves the neighbour) like any other packet, so they cross the veth and
//! meet the XDP program as real traffic.
//!
//! Checksums are computed (RFC 791 §3.1, RFC 9293 §3.1 with the pseudo-header), so a packet XDP passes is also
//! accepted by the server's TCP.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;

use crate::netns::NetNsGuard;

/// TCP SYN flag.
pub const SYN: u8 = 0x02;
/// TCP PSH | ACK, the flags of a data segment.
pub const PSH_ACK: u8 = 0x18;

/// A raw IPv4 socket that belongs to the namespace it was opened in, whichever thread sends on it later.
#[derive(Debug)]
pub struct RawSender(OwnedFd);

impl RawSender {
    /// Opens the socket inside `ns`.
    ///
    /// # Errors
    /// When the namespace cannot be entered or the socket cannot be opened (needs CAP_NET_RAW).
    pub fn open(ns: &NetNsGuard) -> anyhow::Result<RawSender> {
        ns.run(|| {
            // SAFETY: socket(2) with constant arguments; the fd is owned right below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context(
                    "socket(AF_INET, SOCK_RAW, IPPROTO_RAW); raw sockets need CAP_NET_RAW",
                );
            }
            // SAFETY: a fresh fd nobody else owns.
            Ok(RawSender(unsafe { OwnedFd::from_raw_fd(fd) }))
        })?
    }

    /// Sends one IPv4 packet (header included) to its destination address.
    ///
    /// # Errors
    /// The `sendto(2)` error, e.g. `ENOBUFS` when the device queue is full.
    pub fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        let dst = packet
            .get(16..20)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .ok_or_else(|| std::io::Error::other("not an IPv4 packet"))?;
        // SAFETY: a zeroed sockaddr_in is valid; the fields are set below.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes(dst);
        // SAFETY: the buffer and the address outlive the call; their lengths are passed.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One IPv4/TCP packet from `src:src_port` to `dst` with sequence number `seq`, `flags` and `payload`, both
/// checksums filled in, no options.
pub fn tcp_packet(
    src: Ipv4Addr,
    src_port: u16,
    dst: SocketAddrV4,
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let tcp_len = 20 + payload.len();
    let total = u16::try_from(20 + tcp_len).expect("one IPv4 packet");
    let mut p = vec![0u8; 20 + tcp_len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = checksum(0, &p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..].copy_from_slice(payload);
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    let tcp_sum = checksum(sum_words(0, &pseudo), t);
    t[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// The Internet checksum of `data` added to a running sum `start` (RFC 1071).
fn checksum(start: u32, data: &[u8]) -> u16 {
    let mut sum = sum_words(start, data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `start`, without folding.
fn sum_words(start: u32, data: &[u8]) -> u32 {
    data.chunks(2).fold(start, |sum, pair| {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum + u32::from(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let packet = tcp_packet(
            Ipv4Addr::new(10, 0, 0, 3),
            40000,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 8443),
            7,
            PSH_ACK,
            b"odd",
        );
        // A header with its checksum in place sums to 0xffff, whose complement is 0.
        assert_eq!(checksum(0, &packet[..20]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&packet[12..16]);
        pseudo[4..8].copy_from_slice(&packet[16..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&((packet.len() - 20) as u16).to_be_bytes());
        assert_eq!(checksum(sum_words(0, &pseudo), &packet[20..]), 0);
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // The example header from Wikipedia's "Internet checksum" article: checksum 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(0, &header), 0xb861);
    }
}
