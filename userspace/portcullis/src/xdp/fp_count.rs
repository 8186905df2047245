//! The count of blocked fingerprints (`xdp_block_fp_n`) beside the fingerprint blocklist (`xdp_block_fp`): the
//! XDP program fingerprints a ClientHello only while it is non-zero.
//!
//! Whoever changes the blocklist recounts it and stores the count: `portcullis xdp block-fingerprint add|del`
//! after each change, the daemon at start (the blocklist is pinned for good and may have changed while it was
//! down). A recount rather than an increment, so a count that went wrong (two CLIs at once, an entry written
//! with bpftool) is right again after the next change or start.

use std::borrow::{Borrow, BorrowMut};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData};
use portcullis_abi::names::MAP_XDP_BLOCK_FP_COUNT;

/// The number of fingerprints in `blocklist` (entries that cannot be read are counted too: they may block).
pub(crate) fn count<T: Borrow<MapData>>(blocklist: &HashMap<T, u64, u8>) -> u32 {
    u32::try_from(blocklist.keys().count()).unwrap_or(u32::MAX)
}

/// Stores `blocked` as the count the XDP program reads.
///
/// # Errors
/// The kernel refused the write (the map is not the one-element array this version pins).
pub(crate) fn store<T: BorrowMut<MapData>>(
    map: &mut Array<T, u32>,
    blocked: u32,
) -> anyhow::Result<()> {
    map.set(0, blocked, 0)
        .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_FP_COUNT}`"))
}
