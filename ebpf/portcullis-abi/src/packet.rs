//! The XDP packet classifier: Ethernet (with at most one 802.1Q/802.1AD tag), IPv4 or IPv6, TCP.
//!
//! Written once, `no_std` and bounds-checked, over the [`PacketBytes`] trait: the BPF program implements it on
//! the XDP context (each read checked against `data_end`, which is what the verifier wants to see), the host
//! implements it on `[u8]`, so the very code the kernel runs is unit-tested here with a fixture table.
//! Nothing here trusts the packet: every read is checked, and a short read classifies as
//! [`Verdict::PassMalformed`] instead of failing.

use crate::{verdict::Verdict, xdp_config::XdpConfig};

/// EtherType of IPv4 (IEEE 802 numbers).
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of an IEEE 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an IEEE 802.1AD (QinQ service) tag.
pub const ETH_P_8021AD: u16 = 0x88A8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;

/// Length of an Ethernet II header without tags.
pub const ETH_HLEN: usize = 14;
/// Length of one VLAN tag (TCI + inner EtherType).
pub const VLAN_HLEN: usize = 4;
/// Length of the fixed IPv4 header (IHL = 5).
pub const IPV4_MIN_HLEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Length of the TCP header without options.
pub const TCP_MIN_HLEN: usize = 20;

/// TCP SYN flag bit (RFC 9293 §3.1).
pub const TCP_FLAG_SYN: u8 = 0x02;
/// TCP ACK flag bit.
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Read access to the bytes of one packet.
pub trait PacketBytes {
    /// Copies the `N` bytes starting at `offset`, or `None` when the packet ends before `offset + N`.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// What [`classify`] found out about one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    /// The counter to bump.
    pub verdict: Verdict,
    /// TCP destination port in host byte order; 0 when the packet is not (readable) TCP.
    pub dst_port: u16,
    /// TCP flags byte (`TCP_FLAG_*`); 0 when the packet is not (readable) TCP.
    pub tcp_flags: u8,
}

impl Classification {
    #[inline(always)]
    const fn only(verdict: Verdict) -> Classification {
        Classification {
            verdict,
            dst_port: 0,
            tcp_flags: 0,
        }
    }

    /// Whether this is a connection opener: SYN without ACK.
    pub const fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

/// Classifies one Ethernet frame against the configured listener ports.
#[inline(always)]
pub fn classify<P: PacketBytes + ?Sized>(packet: &P, config: &XdpConfig) -> Classification {
    let Some(eth) = packet.bytes::<ETH_HLEN>(0) else {
        return Classification::only(Verdict::PassMalformed);
    };
    let mut ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // One tag only: a QinQ frame's inner tag shows up below as an unknown EtherType (PassNotIp).
        let Some(tag) = packet.bytes::<VLAN_HLEN>(ETH_HLEN) else {
            return Classification::only(Verdict::PassMalformed);
        };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += VLAN_HLEN;
    }

    let l4 = match ether_type {
        ETH_P_IP => {
            let Some(ip) = packet.bytes::<IPV4_MIN_HLEN>(l3) else {
                return Classification::only(Verdict::PassMalformed);
            };
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HLEN {
                return Classification::only(Verdict::PassMalformed);
            }
            // Fragment offset (RFC 791 §3.1): only the first fragment carries the TCP header.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return Classification::only(Verdict::PassFragment);
            }
            if ip[9] != IPPROTO_TCP {
                return Classification::only(Verdict::PassNotTcp);
            }
            l3 + ihl
        }
        ETH_P_IPV6 => {
            let Some(ip) = packet.bytes::<IPV6_HLEN>(l3) else {
                return Classification::only(Verdict::PassMalformed);
            };
            if ip[0] >> 4 != 6 {
                return Classification::only(Verdict::PassMalformed);
            }
            // Extension headers are not walked: a TCP segment behind one counts as not TCP.
            if ip[6] != IPPROTO_TCP {
                return Classification::only(Verdict::PassNotTcp);
            }
            l3 + IPV6_HLEN
        }
        _ => return Classification::only(Verdict::PassNotIp),
    };

    let Some(tcp) = packet.bytes::<TCP_MIN_HLEN>(l4) else {
        return Classification::only(Verdict::PassMalformed);
    };
    let dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let tcp_flags = tcp[13];
    let verdict = if config.is_listener_port(dst_port) {
        Verdict::PassListenerTcp
    } else {
        Verdict::PassOtherPort
    };
    Classification {
        verdict,
        dst_port,
        tcp_flags,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const LISTENER: u16 = 8443;

    /// Builds a frame: Ethernet (optionally tagged) + L3 + L4 bytes as given.
    fn frame(tags: &[u16], ether_type: u16, l3: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        for &tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]); // TCI: VLAN 42
        }
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.extend_from_slice(l3);
        f.extend_from_slice(l4);
        f
    }

    fn ipv4(proto: u8, ihl_words: u8, frag: u16) -> Vec<u8> {
        let mut h = std::vec![0u8; usize::from(ihl_words) * 4];
        h[0] = 0x40 | ihl_words;
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        h
    }

    fn ipv6(next: u8) -> Vec<u8> {
        let mut h = std::vec![0u8; IPV6_HLEN];
        h[0] = 0x60;
        h[6] = next;
        h[7] = 64;
        h
    }

    fn tcp(dst: u16, flags: u8) -> Vec<u8> {
        let mut h = std::vec![0u8; TCP_MIN_HLEN];
        h[0..2].copy_from_slice(&40000u16.to_be_bytes());
        h[2..4].copy_from_slice(&dst.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        h
    }

    /// {description, frame, expected verdict}: the fixture table (Katran style). Kept one row per line.
    #[rustfmt::skip]
    fn fixtures() -> Vec<(&'static str, Vec<u8>, Verdict)> {
        let syn = TCP_FLAG_SYN;
        std::vec![
            ("ipv4 syn to listener", frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
            ("ipv4 with options to listener", frame(&[], ETH_P_IP, &ipv4(6, 15, 0), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
            ("ipv4 first fragment (MF set) to listener", frame(&[], ETH_P_IP, &ipv4(6, 5, 0x2000), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
            ("ipv4 to other port", frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(22, syn)), Verdict::PassOtherPort),
            ("ipv6 to listener", frame(&[], ETH_P_IPV6, &ipv6(6), &tcp(LISTENER, TCP_FLAG_ACK)), Verdict::PassListenerTcp),
            ("ipv6 to other port", frame(&[], ETH_P_IPV6, &ipv6(6), &tcp(80, syn)), Verdict::PassOtherPort),
            ("802.1Q ipv4 to listener", frame(&[ETH_P_8021Q], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
            ("802.1AD ipv6 to listener", frame(&[ETH_P_8021AD], ETH_P_IPV6, &ipv6(6), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
            ("QinQ is not walked", frame(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, syn)), Verdict::PassNotIp),
            ("arp", frame(&[], 0x0806, &[0u8; 28], &[]), Verdict::PassNotIp),
            ("ipv4 udp", frame(&[], ETH_P_IP, &ipv4(17, 5, 0), &[0u8; 8]), Verdict::PassNotTcp),
            ("ipv6 icmpv6", frame(&[], ETH_P_IPV6, &ipv6(58), &[0u8; 8]), Verdict::PassNotTcp),
            ("ipv6 hop-by-hop ext header", frame(&[], ETH_P_IPV6, &ipv6(0), &tcp(LISTENER, syn)), Verdict::PassNotTcp),
            ("ipv4 non-first fragment", frame(&[], ETH_P_IP, &ipv4(6, 5, 185), &tcp(LISTENER, syn)), Verdict::PassFragment),
            ("ipv4 ihl < 5", frame(&[], ETH_P_IP, &{ let mut h = ipv4(6, 5, 0); h[0] = 0x44; h }, &tcp(LISTENER, syn)), Verdict::PassMalformed),
            ("ipv4 version 6 in 0x0800 frame", frame(&[], ETH_P_IP, &{ let mut h = ipv4(6, 5, 0); h[0] = 0x65; h }, &tcp(LISTENER, syn)), Verdict::PassMalformed),
            ("ipv4 options run past the end", frame(&[], ETH_P_IP, &ipv4(6, 15, 0)[..30], &[]), Verdict::PassMalformed),
            ("tcp header cut short", frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, syn)[..19]), Verdict::PassMalformed),
            ("ipv6 header cut short", frame(&[], ETH_P_IPV6, &ipv6(6)[..39], &[]), Verdict::PassMalformed),
            ("vlan tag cut short", frame(&[], ETH_P_8021Q, &[0x00], &[]), Verdict::PassMalformed),
            ("runt frame", std::vec![0u8; 13], Verdict::PassMalformed),
            ("empty frame", Vec::new(), Verdict::PassMalformed),
        ]
    }

    #[test]
    fn fixture_table() {
        let config = XdpConfig::new(&[443, LISTENER]).expect("two ports fit");
        for (description, bytes, expected) in fixtures() {
            let got = classify(bytes.as_slice(), &config);
            assert_eq!(got.verdict, expected, "{description}");
        }
    }

    #[test]
    fn reports_port_and_syn() {
        let config = XdpConfig::new(&[LISTENER]).expect("one port fits");
        let c = classify(
            frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, TCP_FLAG_SYN)).as_slice(),
            &config,
        );
        assert_eq!((c.dst_port, c.is_syn()), (LISTENER, true));
        let c = classify(
            frame(
                &[],
                ETH_P_IP,
                &ipv4(6, 5, 0),
                &tcp(LISTENER, TCP_FLAG_SYN | TCP_FLAG_ACK),
            )
            .as_slice(),
            &config,
        );
        assert!(!c.is_syn(), "SYN-ACK is not a connection opener");
    }

    #[test]
    fn empty_config_matches_no_port() {
        let c = classify(
            frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, 0)).as_slice(),
            &XdpConfig::EMPTY,
        );
        assert_eq!(c.verdict, Verdict::PassOtherPort);
    }

    #[test]
    fn every_prefix_of_a_valid_frame_is_classified_without_panic() {
        let config = XdpConfig::new(&[LISTENER]).expect("one port fits");
        let full = frame(
            &[ETH_P_8021Q],
            ETH_P_IP,
            &ipv4(6, 15, 0),
            &tcp(LISTENER, TCP_FLAG_SYN),
        );
        for len in 0..full.len() {
            assert_eq!(
                classify(&full[..len], &config).verdict,
                Verdict::PassMalformed,
                "prefix {len}"
            );
        }
        assert_eq!(
            classify(full.as_slice(), &config).verdict,
            Verdict::PassListenerTcp
        );
    }
}
