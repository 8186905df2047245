//! The packet fixture table: {description, frame, expected verdict}, one row per case the classifier must get
//! right (Katran's `KatranTestFixtures.h` is the model).
//!
//! Shared by the host unit test of [`crate::packet::classify`] and the daemon's privileged test that runs every
//! row through the loaded BPF program with `BPF_PROG_TEST_RUN`, so the kernel's copy of the classifier is held to
//! the same table. Built only for the host (`user` feature or tests): it allocates.

use alloc::{vec, vec::Vec};

use crate::{
    packet::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPV6_HLEN, TCP_FLAG_ACK, TCP_FLAG_SYN,
        TCP_MIN_HLEN,
    },
    verdict::Verdict,
};

/// The listener port most fixtures address.
pub const LISTENER: u16 = 8443;

/// The listener ports the table expects in the [`crate::xdp_config::XdpConfig`].
pub const FIXTURE_LISTENER_PORTS: [u16; 2] = [443, LISTENER];

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixture {
    /// What the row checks, for failure messages.
    pub description: &'static str,
    /// The Ethernet frame, starting at the destination MAC.
    pub frame: Vec<u8>,
    /// The verdict the classifier must reach with [`FIXTURE_LISTENER_PORTS`] configured.
    pub expected: Verdict,
}

/// Builds a frame: Ethernet (with the given VLAN tag protocol ids, if any) + L3 + L4 bytes as given.
pub fn frame(tags: &[u16], ether_type: u16, l3: &[u8], l4: &[u8]) -> Vec<u8> {
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

/// An IPv4 header of `ihl_words` 32-bit words (options zero-filled) carrying `proto`, with the flags/fragment
/// offset field set to `frag`. `ihl_words` below 5 still yields 20 bytes, so the IHL check can be exercised.
pub fn ipv4(proto: u8, ihl_words: u8, frag: u16) -> Vec<u8> {
    let mut h = vec![0u8; usize::from(ihl_words.max(5)) * 4];
    h[0] = 0x40 | (ihl_words & 0x0f);
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[10, 0, 0, 1]);
    h[16..20].copy_from_slice(&[10, 0, 0, 2]);
    h
}

/// An IPv6 header whose next header is `next`.
pub fn ipv6(next: u8) -> Vec<u8> {
    let mut h = vec![0u8; IPV6_HLEN];
    h[0] = 0x60;
    h[6] = next;
    h[7] = 64;
    h
}

/// A TCP header without options to port `dst` with `flags`.
pub fn tcp(dst: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; TCP_MIN_HLEN];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dst.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

/// The table. Kept one row per line.
#[rustfmt::skip]
pub fn fixtures() -> Vec<Fixture> {
    let syn = TCP_FLAG_SYN;
    let row = |description, frame, expected| Fixture { description, frame, expected };
    vec![
        row("ipv4 syn to listener", frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
        row("ipv4 syn to second listener", frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(443, syn)), Verdict::PassListenerTcp),
        row("ipv4 with options to listener", frame(&[], ETH_P_IP, &ipv4(6, 15, 0), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
        row("ipv4 first fragment (MF set) to listener", frame(&[], ETH_P_IP, &ipv4(6, 5, 0x2000), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
        row("ipv4 to other port", frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(22, syn)), Verdict::PassOtherPort),
        row("ipv6 to listener", frame(&[], ETH_P_IPV6, &ipv6(6), &tcp(LISTENER, TCP_FLAG_ACK)), Verdict::PassListenerTcp),
        row("ipv6 to other port", frame(&[], ETH_P_IPV6, &ipv6(6), &tcp(80, syn)), Verdict::PassOtherPort),
        row("802.1Q ipv4 to listener", frame(&[ETH_P_8021Q], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
        row("802.1AD ipv6 to listener", frame(&[ETH_P_8021AD], ETH_P_IPV6, &ipv6(6), &tcp(LISTENER, syn)), Verdict::PassListenerTcp),
        row("QinQ is not walked", frame(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, syn)), Verdict::PassNotIp),
        row("arp", frame(&[], 0x0806, &[0u8; 28], &[]), Verdict::PassNotIp),
        row("ipv4 udp", frame(&[], ETH_P_IP, &ipv4(17, 5, 0), &[0u8; 8]), Verdict::PassNotTcp),
        row("ipv6 icmpv6", frame(&[], ETH_P_IPV6, &ipv6(58), &[0u8; 8]), Verdict::PassNotTcp),
        row("ipv6 hop-by-hop ext header", frame(&[], ETH_P_IPV6, &ipv6(0), &tcp(LISTENER, syn)), Verdict::PassNotTcp),
        row("ipv4 non-first fragment", frame(&[], ETH_P_IP, &ipv4(6, 5, 185), &tcp(LISTENER, syn)), Verdict::PassFragment),
        row("ipv4 ihl < 5", frame(&[], ETH_P_IP, &ipv4(6, 4, 0), &tcp(LISTENER, syn)), Verdict::PassMalformed),
        row("ipv4 version 6 in 0x0800 frame", frame(&[], ETH_P_IP, &{ let mut h = ipv4(6, 5, 0); h[0] = 0x65; h }, &tcp(LISTENER, syn)), Verdict::PassMalformed),
        row("ipv4 options run past the end", frame(&[], ETH_P_IP, &ipv4(6, 15, 0)[..30], &[]), Verdict::PassMalformed),
        row("tcp header cut short", frame(&[], ETH_P_IP, &ipv4(6, 5, 0), &tcp(LISTENER, syn)[..19]), Verdict::PassMalformed),
        row("ipv6 header cut short", frame(&[], ETH_P_IPV6, &ipv6(6)[..39], &[]), Verdict::PassMalformed),
        row("vlan tag cut short", frame(&[], ETH_P_8021Q, &[0x00], &[]), Verdict::PassMalformed),
        row("runt frame", vec![0u8; 13], Verdict::PassMalformed),
        row("empty frame", Vec::new(), Verdict::PassMalformed),
    ]
}
