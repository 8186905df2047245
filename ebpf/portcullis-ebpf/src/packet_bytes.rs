//! The packet of an XDP context as the ABI crate's parsers read it.

use aya_ebpf::programs::XdpContext;
use portcullis_abi::packet::PacketBytes;

/// The packet of an XDP context, read through bounds checks against `data_end`.
pub(crate) struct Packet<'a>(pub(crate) &'a XdpContext);

impl PacketBytes for Packet<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data().checked_add(offset)?;
        // The verifier only allows a packet read after this comparison against data_end, in this form.
        if start.checked_add(N)? > self.0.data_end() {
            return None;
        }
        // SAFETY: `start..start + N` lies within `data..data_end`, the packet buffer the kernel hands the
        // program; `[u8; N]` has alignment 1, so the read is never misaligned.
        Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
    }
}
