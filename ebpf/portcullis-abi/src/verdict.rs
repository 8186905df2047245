//! The XDP verdict counters.
//!
//! Each packet the XDP program sees gets exactly one [`Verdict`]; its discriminant indexes the per-CPU counter
//! array [`crate::names::MAP_XDP_VERDICTS`]. Verdicts named `Pass*` pass the packet on to the kernel stack,
//! `Drop*` verdicts drop it (or only count it, when the config's `enforce` is 0).

/// What the XDP program decided about one packet. The discriminant is the counter index in the per-CPU array.
///
/// The values are ABI shared with the loaded BPF object and with dashboards: append new verdicts at the end,
/// never renumber or reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The frame is not IPv4 or IPv6 (ARP, LLDP, a second VLAN tag, ...).
    PassNotIp = 0,
    /// IP, but the next protocol is not TCP (UDP, ICMP, an IPv6 extension header: those are not walked).
    PassNotTcp = 1,
    /// A non-first IPv4 fragment: it carries no TCP header, so its ports cannot be read.
    PassFragment = 2,
    /// A header is cut short or inconsistent (bad IP version, IHL < 5, TCP header beyond the frame end).
    PassMalformed = 3,
    /// TCP to a port that no listener of this daemon owns.
    PassOtherPort = 4,
    /// TCP to one of the listener ports configured in [`crate::xdp_config::XdpConfig`].
    PassListenerTcp = 5,
    /// TCP to a listener port from a source in the blocklist [`crate::names::MAP_XDP_BLOCK_NET`].
    DropBlockedSource = 6,
    /// A SYN to a listener port from a source prefix over its SYN budget (see [`crate::limits`]).
    DropSynRate = 7,
    /// A SYN to a listener port dropped by load shedding: the daemon's admission control asked the program to
    /// drop a fraction of new SYNs (`XdpConfig::syn_shed_ppm`); the client's TCP retransmits after 1 s, 3 s, ...
    DropSynShed = 8,
    /// The first payload segment of a tracked connection to a listener port is a malformed ClientHello; the
    /// reason is counted in [`crate::names::MAP_XDP_MALFORMED`]. Never for a ClientHello cut short.
    DropMalformedHello = 9,
    /// A ClientHello from a source prefix over its ClientHello budget (resumption offers cost less).
    DropHelloRate = 10,
    /// A complete ClientHello whose fingerprint is in [`crate::names::MAP_XDP_BLOCK_FP`].
    DropBlockedFingerprint = 11,
    /// The first payload segment of a tracked connection was judged as a ClientHello (whole or cut short) and
    /// passed.
    PassClientHello = 12,
    /// A retransmitted SYN (same flow, same initial sequence number) of a connection whose earlier SYN load
    /// shedding dropped, dropped again (`XdpConfig::syn_retry_shed_ppm`): under overload fresh clients go first
    /// ("adaptive LIFO"), since a retrying client has already waited a second or more.
    DropSynRetryShed = 13,
    /// A SYN to a listener port from a source the guard does not know (no valid ClientHello from it within
    /// `XdpConfig::known_ttl_s`) while this CPU's budget of such SYNs (`XdpConfig::flood_syn_rate`) is spent: a
    /// spoofed-source SYN flood, kept out of the kernel's receive backlog and SYN cookie work. Legitimate new
    /// clients compete with the flood for that budget; known ones pass.
    DropSynFlood = 14,
    /// A SYN to a listener port from a source prefix serving a penalty: its last first segment was a malformed
    /// ClientHello (`XdpConfig::malformed_penalty_ms`), so its next connections would only cost the server an
    /// accept each.
    DropSynPenalty = 15,
}

impl Verdict {
    /// Number of verdicts, and so the number of entries of the counter array.
    pub const COUNT: usize = 16;

    /// Every verdict, in counter-index order.
    pub const ALL: [Verdict; Verdict::COUNT] = [
        Verdict::PassNotIp,
        Verdict::PassNotTcp,
        Verdict::PassFragment,
        Verdict::PassMalformed,
        Verdict::PassOtherPort,
        Verdict::PassListenerTcp,
        Verdict::DropBlockedSource,
        Verdict::DropSynRate,
        Verdict::DropSynShed,
        Verdict::DropMalformedHello,
        Verdict::DropHelloRate,
        Verdict::DropBlockedFingerprint,
        Verdict::PassClientHello,
        Verdict::DropSynRetryShed,
        Verdict::DropSynFlood,
        Verdict::DropSynPenalty,
    ];

    /// The snake_case label of this verdict, used as the `verdict` label value of
    /// `portcullis_xdp_packets_total`. Stable: dashboards and alerts key on it.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::PassNotIp => "pass_not_ip",
            Verdict::PassNotTcp => "pass_not_tcp",
            Verdict::PassFragment => "pass_fragment",
            Verdict::PassMalformed => "pass_malformed",
            Verdict::PassOtherPort => "pass_other_port",
            Verdict::PassListenerTcp => "pass_listener_tcp",
            Verdict::DropBlockedSource => "drop_blocked_source",
            Verdict::DropSynRate => "drop_syn_rate",
            Verdict::DropSynShed => "drop_syn_shed",
            Verdict::DropMalformedHello => "drop_malformed_hello",
            Verdict::DropHelloRate => "drop_hello_rate",
            Verdict::DropBlockedFingerprint => "drop_blocked_fingerprint",
            Verdict::PassClientHello => "pass_client_hello",
            Verdict::DropSynRetryShed => "drop_syn_retry_shed",
            Verdict::DropSynFlood => "drop_syn_flood",
            Verdict::DropSynPenalty => "drop_syn_penalty",
        }
    }

    /// The verdict whose counter index is `index`, or `None` when no verdict has that index (a newer BPF object
    /// than this daemon, or a corrupt read).
    pub const fn from_u32(index: u32) -> Option<Verdict> {
        match index {
            0 => Some(Verdict::PassNotIp),
            1 => Some(Verdict::PassNotTcp),
            2 => Some(Verdict::PassFragment),
            3 => Some(Verdict::PassMalformed),
            4 => Some(Verdict::PassOtherPort),
            5 => Some(Verdict::PassListenerTcp),
            6 => Some(Verdict::DropBlockedSource),
            7 => Some(Verdict::DropSynRate),
            8 => Some(Verdict::DropSynShed),
            9 => Some(Verdict::DropMalformedHello),
            10 => Some(Verdict::DropHelloRate),
            11 => Some(Verdict::DropBlockedFingerprint),
            12 => Some(Verdict::PassClientHello),
            13 => Some(Verdict::DropSynRetryShed),
            14 => Some(Verdict::DropSynFlood),
            15 => Some(Verdict::DropSynPenalty),
            _ => None,
        }
    }

    /// Whether the program drops the packet for this verdict (when enforcing).
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Verdict::DropBlockedSource
                | Verdict::DropSynRate
                | Verdict::DropSynShed
                | Verdict::DropSynRetryShed
                | Verdict::DropSynFlood
                | Verdict::DropSynPenalty
                | Verdict::DropMalformedHello
                | Verdict::DropHelloRate
                | Verdict::DropBlockedFingerprint
        )
    }

    /// The counter index of this verdict in the per-CPU array.
    pub const fn index(self) -> u32 {
        self as u32
    }
}

// `ALL` must list every verdict at its own index, so `ALL[i].index() == i` and `COUNT` matches the enum.
const _: () = {
    let mut i = 0;
    while i < Verdict::COUNT {
        assert!(Verdict::ALL[i] as usize == i);
        i += 1;
    }
    assert!(Verdict::from_u32(Verdict::COUNT as u32).is_none());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u32_round_trips_every_verdict() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_u32(v.index()), Some(v));
        }
        assert_eq!(Verdict::from_u32(u32::MAX), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (i, a) in Verdict::ALL.iter().enumerate() {
            let name = a.name();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            for b in &Verdict::ALL[i + 1..] {
                assert_ne!(name, b.name());
            }
        }
    }
}
