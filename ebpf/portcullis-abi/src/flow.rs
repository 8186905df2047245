//! Connection tracking for the ClientHello check: a SYN to a listener port records its flow and initial sequence
//! number in [`crate::names::MAP_XDP_FLOWS`], and the segment that starts the flow's byte stream (sequence number
//! ISN + 1: the first segment, or its retransmission) is parsed as a ClientHello.
//!
//! Untracked flows pass: connections older than the program and flows evicted from the LRU map; so do later
//! segments, even one that arrives before the first (reordering), which is not the start of a ClientHello. The
//! check fails open by construction. Flows are not deleted after the check: the LRU map ages them out.

use crate::limits::ADDR_LEN;

/// One TCP connection as the server sees it arrive: source and destination address (IPv4-mapped for IPv4,
/// see [`crate::limits`]) and ports in host byte order. 36 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address.
    pub src: [u8; ADDR_LEN],
    /// Server (listener) address.
    pub dst: [u8; ADDR_LEN],
    /// Client TCP port.
    pub src_port: u16,
    /// Listener TCP port.
    pub dst_port: u16,
}

const _: () = assert!(size_of::<FlowKey>() == 36);

// SAFETY: `#[repr(C)]`, integers only, no padding (size asserted), so every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}

/// What a resumption offer costs by default, in thousandths of a full handshake, when the config says 0.
pub const FULL_HELLO_COST_MILLI: u64 = 1000;
