//! The runtime configuration of the XDP program, carried in the one-entry array map
//! [`crate::names::MAP_XDP_CONFIG`].
//!
//! Runtime knobs reach BPF through this map rather than `#[cfg]` or recompilation, so one object serves every
//! deployment and the daemon can fill in the ports it only learns after binding (`--listen addr:0`).

use core::fmt;

/// Most listener ports one [`XdpConfig`] holds. A fixed array keeps the map value `#[repr(C)]` and the BPF
/// lookup a bounded loop.
pub const MAX_LISTENER_PORTS: usize = 16;

/// Index of the single entry of the config array map.
pub const XDP_CONFIG_KEY: u32 = 0;

/// The XDP program's configuration: the set of TCP ports the daemon's listeners own and the per-source SYN
/// budget. Rewritten by the daemon at any time; the program reads it on every packet, so no reload is needed.
///
/// Layout (104 bytes): `ports` at 0, `port_count` at 32, `syn_shed_ppm` at 36, `syn_rate` at 40, `syn_burst` at 44,
/// `v4_prefix_len` at 48, `v6_prefix_len` at 52, `enforce` at 56, `hello_rate` at 60, `hello_burst` at 64,
/// `hello_resume_cost_milli` at 68, `syn_retry_shed_ppm` at 72, `jiffy_ns` at 76, `jiffies_origin` at 80, `_pad2`
/// at 84, `flood_syn_rate` at 88, `flood_syn_burst` at 92, `known_ttl_s` at 96, `malformed_penalty_ms` at 100. Host byte order throughout so that `bpftool map dump` prints values as an operator types them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// Listener TCP ports in host byte order; only the first `port_count` entries are meaningful, the rest are 0.
    pub ports: [u16; MAX_LISTENER_PORTS],
    /// How many entries of `ports` are in use, at most [`MAX_LISTENER_PORTS`]; larger values are read as the
    /// maximum.
    pub port_count: u32,
    /// Load shedding: parts per million of SYNs to listener ports to drop (verdict `drop_syn_shed`), chosen at
    /// random, after the blocklist and the per-source budget. Written by the daemon's admission control while
    /// it sheds; 0 = none, 1_000_000 = all.
    pub syn_shed_ppm: u32,
    /// SYNs per second each source prefix may send to the listener ports; 0 turns the SYN budget off.
    pub syn_rate: u32,
    /// SYNs a source prefix may send at once after being idle (the bucket size); at least 1 when `syn_rate` is
    /// set (0 is read as 1).
    pub syn_burst: u32,
    /// Bits of an IPv4 source that name one budget (32 = per address); larger values are read as 32.
    pub v4_prefix_len: u32,
    /// Bits of an IPv6 source that name one budget (64 = per /64, one typical end site); larger read as 128.
    pub v6_prefix_len: u32,
    /// 1: `Drop*` verdicts drop the packet. 0: they are counted but the packet passes (a dry run).
    pub enforce: u32,
    /// ClientHellos per second each source prefix (same prefixes as the SYN budget) may send to the listener
    /// ports, counted as full handshakes; 0 turns the ClientHello budget off.
    pub hello_rate: u32,
    /// ClientHellos (full handshakes) a source prefix may send at once after being idle; 0 is read as 1.
    pub hello_burst: u32,
    /// What a resumption offer (TLS 1.3 PSK or TLS 1.2 ticket, cheap to serve) costs, in thousandths of a full
    /// handshake: 1000 = the same, 250 = four resumptions per full handshake; 0 is read as 1000.
    pub hello_resume_cost_milli: u32,
    /// Load shedding of retransmitted SYNs: parts per million of the SYNs that repeat a flow (same addresses,
    /// ports and initial sequence number) whose SYN was shed, to drop again (verdict `drop_syn_retry_shed`).
    /// The larger of this and `syn_shed_ppm` applies to them. Written by admission control, which keeps it up
    /// for a while after a storm so the storm's retransmissions do not crowd out clients arriving afterwards.
    pub syn_retry_shed_ppm: u32,
    /// Nanoseconds per jiffy (the kernel's tick, `clock_getres(CLOCK_MONOTONIC_COARSE)`): the budgets read the
    /// time as jiffies (`bpf_jiffies64`, which the verifier turns into one load) instead of calling
    /// `bpf_ktime_get_coarse_ns` (≈ 17 ns of a SYN's 41 with a budget). 0: call it. See [`clock_ns`].
    pub jiffy_ns: u32,
    /// `INITIAL_JIFFIES`, the jiffies count at boot, for [`clock_ns`]: set with `jiffy_ns` ([`jiffies_clock`]).
    pub jiffies_origin: u32,
    /// Explicit padding; always 0.
    pub _pad2: u32,
    /// SYNs per second, per CPU, that sources the guard does not know (no passed ClientHello within
    /// `known_ttl_s`, [`crate::known`]) may send to the listener ports together; over it they are dropped
    /// (verdict `drop_syn_flood`) while known sources pass. 0 turns the flood budget off (and the known-source
    /// set is then not kept).
    pub flood_syn_rate: u32,
    /// The flood budget's bucket, per CPU, in SYNs; 0 is read as 1.
    pub flood_syn_burst: u32,
    /// Seconds a source stays known after its last passed ClientHello; 0 is read as 1.
    pub known_ttl_s: u32,
    /// Milliseconds a source prefix's SYNs are dropped (verdict `drop_syn_penalty`) after its first segment was a
    /// malformed ClientHello; its SYN budget is emptied and refills only after. Needs `syn_rate`; 0 = no penalty.
    pub malformed_penalty_ms: u32,
}

const _: () = assert!(size_of::<XdpConfig>() == 104);
const _: () = assert!(align_of::<XdpConfig>() == 4);

/// `(jiffy_ns, jiffies_origin)` for a kernel whose tick is `tick_ns` nanoseconds: `INITIAL_JIFFIES` is
/// `(unsigned int)(-300 * HZ)` (include/linux/jiffies.h: the count wraps 32 bits five minutes after boot), and the
/// tick `(10^9 + HZ / 2) / HZ` ns (`TICK_NSEC`), so HZ is the nearest whole number of ticks per second.
pub const fn jiffies_clock(tick_ns: u32) -> (u32, u32) {
    if tick_ns == 0 {
        return (0, 0);
    }
    let hz = (1_000_000_000 + tick_ns / 2) / tick_ns;
    (tick_ns, (300u32.wrapping_mul(hz)).wrapping_neg())
}

/// CLOCK_MONOTONIC, in nanoseconds to within a tick, from the jiffies count: the kernel advances jiffies by whole
/// `TICK_NSEC`s of the monotonic clock, counting from `INITIAL_JIFFIES` at boot, so the budgets' timestamps agree
/// with those of `bpf_ktime_get_coarse_ns` (the clock when `jiffy_ns` is 0, and in earlier versions, whose pinned
/// buckets a new daemon reuses).
#[inline(always)]
pub const fn clock_ns(jiffies: u64, config: &XdpConfig) -> u64 {
    jiffies
        .wrapping_sub(config.jiffies_origin as u64)
        .wrapping_mul(config.jiffy_ns as u64)
}

/// Returned by [`XdpConfig::new`] when more listener ports are given than the map value holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyPorts {
    /// How many distinct ports were requested.
    pub requested: usize,
}

impl fmt::Display for TooManyPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} distinct listener ports configured, but the XDP program holds at most {MAX_LISTENER_PORTS}; \
             use fewer listener ports",
            self.requested
        )
    }
}

impl core::error::Error for TooManyPorts {}

impl XdpConfig {
    /// A configuration that classifies no port as a listener port (and, if it did, would limit nothing).
    pub const EMPTY: XdpConfig = XdpConfig {
        ports: [0; MAX_LISTENER_PORTS],
        port_count: 0,
        syn_shed_ppm: 0,
        syn_rate: 0,
        syn_burst: 0,
        v4_prefix_len: 32,
        v6_prefix_len: 64,
        enforce: 1,
        hello_rate: 0,
        hello_burst: 0,
        hello_resume_cost_milli: 0,
        syn_retry_shed_ppm: 0,
        jiffy_ns: 0,
        jiffies_origin: 0,
        _pad2: 0,
        flood_syn_rate: 0,
        flood_syn_burst: 0,
        known_ttl_s: 0,
        malformed_penalty_ms: 0,
    };

    /// Builds the configuration for these listener ports, with no SYN budget and enforcement on. Duplicates are dropped (two listeners on different
    /// addresses often share a port). Port 0 is not a port a packet can be addressed to and is dropped too.
    ///
    /// # Errors
    /// [`TooManyPorts`] when more than [`MAX_LISTENER_PORTS`] distinct ports remain.
    pub fn new(ports: &[u16]) -> Result<XdpConfig, TooManyPorts> {
        let mut config = XdpConfig::EMPTY;
        let mut count = 0usize;
        let mut requested = 0usize;
        for &port in ports {
            if port == 0 || config.ports[..count].contains(&port) {
                continue;
            }
            requested += 1;
            if let Some(slot) = config.ports.get_mut(count) {
                *slot = port;
                count += 1;
            }
        }
        if requested > MAX_LISTENER_PORTS {
            return Err(TooManyPorts { requested });
        }
        // `count <= MAX_LISTENER_PORTS` (16), so the cast cannot truncate.
        config.port_count = count as u32;
        Ok(config)
    }

    /// The listener ports in use (the first `port_count` entries, clamped to the array).
    pub fn listener_ports(&self) -> &[u16] {
        let count = (self.port_count as usize).min(MAX_LISTENER_PORTS);
        self.ports.get(..count).unwrap_or(&[])
    }

    /// Whether `port` (host byte order) is one of the listener ports.
    ///
    /// Written as a fixed-trip loop over the whole array so the BPF verifier sees a bounded loop with constant
    /// indices, whatever `port_count` holds.
    #[inline(always)]
    pub fn is_listener_port(&self, port: u16) -> bool {
        let count = self.port_count as usize;
        let mut i = 0;
        while i < MAX_LISTENER_PORTS {
            if i < count && self.ports[i] == port && port != 0 {
                return true;
            }
            i += 1;
        }
        false
    }
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig::EMPTY
    }
}

// SAFETY: `XdpConfig` is `#[repr(C)]`, `Copy`, made of integers only, with explicit padding and no implicit holes
// (size asserted above), so every bit pattern is valid and its bytes can be copied to and from a map value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_dedups_and_drops_port_zero() {
        let c = XdpConfig::new(&[443, 0, 8443, 443]).expect("two ports fit");
        assert_eq!(c.listener_ports(), &[443, 8443]);
        assert!(c.is_listener_port(443));
        assert!(c.is_listener_port(8443));
        assert!(!c.is_listener_port(80));
        assert!(!c.is_listener_port(0));
    }

    #[test]
    fn new_rejects_more_than_the_array_holds() {
        let ports: [u16; MAX_LISTENER_PORTS + 1] = core::array::from_fn(|i| 1000 + i as u16);
        assert_eq!(
            XdpConfig::new(&ports),
            Err(TooManyPorts {
                requested: MAX_LISTENER_PORTS + 1
            })
        );
        assert!(XdpConfig::new(&ports[..MAX_LISTENER_PORTS]).is_ok());
    }

    #[test]
    fn oversized_port_count_is_clamped() {
        let mut c = XdpConfig::new(&[443]).expect("one port fits");
        c.port_count = u32::MAX;
        assert_eq!(c.listener_ports().len(), MAX_LISTENER_PORTS);
        assert!(c.is_listener_port(443));
        assert!(
            !c.is_listener_port(0),
            "unused slots hold 0, which must never match"
        );
    }

    #[test]
    fn jiffies_clock_matches_the_kernels_constants() {
        use super::jiffies_clock;
        // TICK_NSEC and INITIAL_JIFFIES for the usual HZ values (x86-64: unsigned long of the unsigned int).
        assert_eq!(jiffies_clock(4_000_000), (4_000_000, 4_294_892_296)); // HZ=250
        assert_eq!(jiffies_clock(1_000_000), (1_000_000, 4_294_667_296)); // HZ=1000
        assert_eq!(jiffies_clock(3_333_333), (3_333_333, 4_294_877_296)); // HZ=300
        assert_eq!(jiffies_clock(10_000_000), (10_000_000, 4_294_937_296)); // HZ=100
        assert_eq!(jiffies_clock(0), (0, 0));
    }
}
