//! The XDP packet classifier: Ethernet (with at most one 802.1Q/802.1AD tag), IPv4 or IPv6, TCP.
//!
//! Written once, `no_std` and bounds-checked, over the [`PacketBytes`] trait: the BPF program implements it on
//! the XDP context (each read checked against `data_end`, which is what the verifier wants to see), the host
//! implements it on `[u8]`, so the very code the kernel runs is unit-tested here with a fixture table.
//! Nothing here trusts the packet: every read is checked, and a short read classifies as
//! [`Verdict::PassMalformed`] instead of failing.

use crate::{
    limits::{ADDR_LEN, v4_mapped},
    verdict::Verdict,
    xdp_config::XdpConfig,
};

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
    /// IP source address, IPv4 sources IPv4-mapped (see [`crate::limits`]); zero when the packet is not
    /// (readable) TCP.
    pub src: [u8; ADDR_LEN],
    /// IP destination address, IPv4-mapped like `src`; zero when the packet is not (readable) TCP.
    pub dst: [u8; ADDR_LEN],
    /// TCP source port in host byte order; 0 when the packet is not (readable) TCP.
    pub src_port: u16,
    /// TCP sequence number in host byte order; 0 when the packet is not (readable) TCP.
    pub seq: u32,
    /// Offset of the TCP payload from the start of the frame; 0 when the packet is not (readable) TCP.
    pub payload_offset: u16,
    /// TCP payload bytes according to the IP length fields (Ethernet padding excluded), as declared
    /// (the frame may hold fewer: a reader must still check); 0 when there is none.
    pub payload_len: u16,
}

impl Classification {
    #[inline(always)]
    const fn only(verdict: Verdict) -> Classification {
        Classification {
            verdict,
            dst_port: 0,
            tcp_flags: 0,
            src: [0; ADDR_LEN],
            dst: [0; ADDR_LEN],
            src_port: 0,
            seq: 0,
            payload_offset: 0,
            payload_len: 0,
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

    let (l4, src, dst, segment) = match ether_type {
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
            // Total length counts the IP header; what is left after it is the TCP segment.
            let segment = usize::from(u16::from_be_bytes([ip[2], ip[3]])).saturating_sub(ihl);
            (
                l3 + ihl,
                v4_mapped([ip[12], ip[13], ip[14], ip[15]]),
                v4_mapped([ip[16], ip[17], ip[18], ip[19]]),
                segment,
            )
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
            let mut src = [0u8; ADDR_LEN];
            src.copy_from_slice(&ip[8..24]);
            let mut dst = [0u8; ADDR_LEN];
            dst.copy_from_slice(&ip[24..40]);
            // Payload length counts everything after the fixed header: here, the TCP segment.
            let segment = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            (l3 + IPV6_HLEN, src, dst, segment)
        }
        _ => return Classification::only(Verdict::PassNotIp),
    };

    let Some(tcp) = packet.bytes::<TCP_MIN_HLEN>(l4) else {
        return Classification::only(Verdict::PassMalformed);
    };
    let dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let tcp_flags = tcp[13];
    let tcp_hlen = usize::from(tcp[12] >> 4) * 4;
    // A data offset below 5 words is a broken header; its segment is treated as carrying no payload.
    let payload_len = if tcp_hlen < TCP_MIN_HLEN {
        0
    } else {
        segment.saturating_sub(tcp_hlen)
    };
    let verdict = if config.is_listener_port(dst_port) {
        Verdict::PassListenerTcp
    } else {
        Verdict::PassOtherPort
    };
    Classification {
        verdict,
        dst_port,
        tcp_flags,
        src,
        dst,
        src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        // Both fit: frames are at most 64 KiB, and the IP length fields are 16 bits.
        payload_offset: u16::try_from(l4 + tcp_hlen).unwrap_or(u16::MAX),
        payload_len: u16::try_from(payload_len).unwrap_or(0),
    }
}

/// The IP source (IPv4-mapped) and TCP destination port of a frame [`classify`] found to be TCP to a listener port,
/// read again with a few small reads: the drop samples' second look at a dropped packet, in a BPF subprogram that
/// must keep its stack small (a whole [`Classification`] there pushed the call chain past 512 bytes). `None` when a
/// read falls outside the frame; for any other frame the answer means nothing.
#[inline(always)]
pub fn source_and_port<P: PacketBytes + ?Sized>(packet: &P) -> Option<([u8; ADDR_LEN], u16)> {
    let [hi, lo] = packet.bytes::<2>(12)?;
    let mut ether_type = u16::from_be_bytes([hi, lo]);
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let [hi, lo] = packet.bytes::<2>(ETH_HLEN + 2)?;
        ether_type = u16::from_be_bytes([hi, lo]);
        l3 += VLAN_HLEN;
    }
    let (src, l4) = if ether_type == ETH_P_IPV6 {
        (packet.bytes::<ADDR_LEN>(l3 + 8)?, l3 + IPV6_HLEN)
    } else {
        let [version_ihl] = packet.bytes::<1>(l3)?;
        let [a, b, c, d] = packet.bytes::<4>(l3 + 12)?;
        (
            v4_mapped([a, b, c, d]),
            l3 + usize::from(version_ihl & 0x0f) * 4,
        )
    };
    let [hi, lo] = packet.bytes::<2>(l4 + 2)?;
    Some((src, u16::from_be_bytes([hi, lo])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet_fixtures::{
        FIXTURE_LISTENER_PORTS, LISTENER, fixtures, frame, ipv4, ipv6, tcp,
    };

    #[test]
    fn fixture_table() {
        let config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
        for fixture in fixtures() {
            let got = classify(fixture.frame.as_slice(), &config);
            assert_eq!(got.verdict, fixture.expected, "{}", fixture.description);
        }
    }

    #[test]
    fn source_and_port_agree_with_classify_on_listener_tcp() {
        let config = XdpConfig::new(&FIXTURE_LISTENER_PORTS).expect("fixture ports fit");
        let mut v6 = ipv6(6);
        v6[8..24].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        v6[24..40].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        let extra = [
            frame(
                &[ETH_P_8021Q],
                ETH_P_IPV6,
                &v6,
                &tcp(LISTENER, TCP_FLAG_SYN),
            ),
            frame(&[], ETH_P_IPV6, &v6, &tcp(443, TCP_FLAG_ACK)),
        ];
        let frames = fixtures()
            .into_iter()
            .map(|f| f.frame)
            .chain(extra)
            .collect::<alloc::vec::Vec<_>>();
        let mut checked = 0;
        for frame in &frames {
            let c = classify(frame.as_slice(), &config);
            if c.verdict != Verdict::PassListenerTcp {
                continue;
            }
            assert_eq!(
                source_and_port(frame.as_slice()),
                Some((c.src, c.dst_port)),
                "{frame:02x?}"
            );
            checked += 1;
        }
        assert!(checked >= 8, "only {checked} listener frames");
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
