//! The two maps derived from the fingerprint blocklist (`xdp_block_fp`): the count of blocked fingerprints
//! (`xdp_block_fp_n`: while it is 0 the XDP program computes no fingerprint at all) and the blocklist by shape
//! (`xdp_block_fp_sh`, `portcullis_abi::fp_shapes`: the program hashes a complete ClientHello only when a blocked
//! fingerprint has its shape, and compares the fingerprints with that shape's set instead of looking them up).
//!
//! Whoever changes the blocklist rebuilds both from it: `portcullis xdp block-fingerprint add|del` after each
//! change, the daemon at start (the blocklist is pinned for good and may have changed while it was down). A
//! rebuild rather than an increment, so an index that went wrong (two CLIs at once, an entry written with bpftool)
//! is right again after the next change or start. The shapes are written before the count, each entry whole, with
//! its final value.

use std::borrow::{Borrow, BorrowMut};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData};
use portcullis_abi::{
    client_hello::fingerprint::SHAPES,
    fp_shapes::{Membership, ShapeSet, shape_index},
    names::{MAP_XDP_BLOCK_FP_COUNT, MAP_XDP_BLOCK_FP_SHAPES},
};

/// What the program needs to know of a fingerprint blocklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Index {
    /// Entries in the blocklist (entries that cannot be read are counted too: they may block).
    pub(crate) count: u32,
    /// Entries that are not fingerprints of this version's format (format 1, from before 2026-11-23, or a value
    /// written with bpftool): no ClientHello's fingerprint equals them, so they never block.
    pub(crate) other_format: u32,
    /// The blocked fingerprints of each shape.
    pub(crate) shapes: Vec<ShapeSet>,
}

impl Index {
    /// How many shapes some blocked fingerprint has.
    pub(crate) fn shapes_set(&self) -> usize {
        self.shapes.iter().filter(|s| s.any()).count()
    }

    /// How many shapes hold more blocked fingerprints than their set has room for: the program looks a
    /// ClientHello of such a shape up in the blocklist (a kernel function call per fingerprint).
    pub(crate) fn shapes_overflowed(&self) -> usize {
        self.shapes
            .iter()
            .filter(|s| s.len == ShapeSet::OVERFLOW)
            .count()
    }

    /// Whether the program, reading `read`, would still find every fingerprint of this index blocked (it may hash
    /// more than needed: an entry left over is harmless).
    pub(crate) fn covered_by(&self, read: &[ShapeSet]) -> bool {
        self.shapes.iter().zip(read).all(|(needed, read)| {
            needed.len == ShapeSet::OVERFLOW && read.len == ShapeSet::OVERFLOW
                || needed.fingerprints[..needed.len.min(needed.fingerprints.len() as u32) as usize]
                    .iter()
                    .all(|f| read.membership(*f) != Membership::Clear)
        }) && read.len() == self.shapes.len()
    }
}

/// The index of `blocklist`.
pub(crate) fn of<T: Borrow<MapData>>(blocklist: &HashMap<T, u64, u8>) -> Index {
    of_keys(blocklist.keys().map(|key| key.ok()))
}

/// The index of a blocklist's keys (`None` for a key that could not be read).
fn of_keys(keys: impl Iterator<Item = Option<u64>>) -> Index {
    let mut index = Index {
        count: 0,
        other_format: 0,
        shapes: vec![ShapeSet::EMPTY; SHAPES],
    };
    for key in keys {
        index.count = index.count.saturating_add(1);
        let Some(fingerprint) = key else { continue };
        match shape_index(fingerprint).and_then(|shape| index.shapes.get_mut(shape as usize)) {
            Some(set) => set.insert(fingerprint),
            None => index.other_format = index.other_format.saturating_add(1),
        }
    }
    index
}

/// Stores `index` for the program: every shape's set, then the count.
///
/// # Errors
/// The kernel refused a write (the maps are not the arrays this version pins).
pub(crate) fn store<C: BorrowMut<MapData>, S: BorrowMut<MapData>>(
    index: &Index,
    count: &mut Array<C, u32>,
    shapes: &mut Array<S, ShapeSet>,
) -> anyhow::Result<()> {
    for (shape, set) in (0u32..).zip(&index.shapes) {
        shapes
            .set(shape, set, 0)
            .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_FP_SHAPES}`"))?;
    }
    count
        .set(0, index.count, 0)
        .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_FP_COUNT}`"))
}

/// The sets the program reads now, to compare with what the blocklist needs ([`Index::covered_by`]).
///
/// # Errors
/// The kernel refused a read.
pub(crate) fn load_shapes<S: Borrow<MapData>>(
    shapes: &Array<S, ShapeSet>,
) -> anyhow::Result<Vec<ShapeSet>> {
    (0..SHAPES as u32)
        .map(|shape| {
            shapes
                .get(&shape, 0)
                .with_context(|| format!("cannot read map `{MAP_XDP_BLOCK_FP_SHAPES}`"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use portcullis_abi::{
        client_hello::fingerprint::{shape, shape_of},
        fp_shapes::SHAPE_WAYS,
    };

    use super::*;

    /// A format-2 fingerprint of `shape` with hash bits `n`.
    fn fingerprint(shape: u16, n: u64) -> u64 {
        0x0200_0000_0000_0000 | u64::from(shape) << 44 | n
    }

    #[test]
    fn every_blocked_fingerprint_is_found_where_the_program_looks() {
        let crowded = shape(16, 18);
        let mut blocked: Vec<u64> = (1..=SHAPE_WAYS as u64 + 3)
            .map(|n| fingerprint(crowded, n))
            .collect();
        blocked.extend([fingerprint(shape(31, 12), 7), fingerprint(shape(4, 10), 7)]);
        let stale = [0x1fe4_87ba_404e_0690, 0x5c7a_204d_edbf_9bf6];
        let keys = blocked.iter().chain(&stale).map(|k| Some(*k)).chain([None]);
        let index = of_keys(keys);
        assert_eq!(
            index.count,
            blocked.len() as u32 + 3,
            "unreadable keys count"
        );
        assert_eq!(index.other_format, 2);
        assert_eq!(index.shapes_set(), 3);
        assert_eq!(index.shapes_overflowed(), 1);
        for value in &blocked {
            let set = &index.shapes[shape_of(*value).expect("format 2") as usize];
            assert_ne!(set.membership(*value), Membership::Clear, "{value:016x}");
        }
        let clear = fingerprint(shape(31, 12), 8);
        assert_eq!(
            index.shapes[usize::from(shape(31, 12))].membership(clear),
            Membership::Clear
        );
        assert!(index.covered_by(&index.shapes));
        assert!(!index.covered_by(&vec![ShapeSet::EMPTY; SHAPES]));
    }
}
