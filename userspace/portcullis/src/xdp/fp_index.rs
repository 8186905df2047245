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
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use portcullis_abi::{
    client_hello::fingerprint::SHAPES,
    fp_shapes::{Membership, SHAPE_WAYS, ShapeSet, hit_slot, shape_index},
    names::{MAP_XDP_BLOCK_FP_COUNT, MAP_XDP_BLOCK_FP_DROPS, MAP_XDP_BLOCK_FP_SHAPES},
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
                || needed
                    .fingerprints
                    .iter()
                    .filter(|f| **f != 0)
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
            Some(set) => {
                set.insert(fingerprint);
            }
            None => index.other_format = index.other_format.saturating_add(1),
        }
    }
    index
}

/// How the set `now` becomes the one `needed` describes, every fingerprint in both keeping its way: the next set,
/// the ways given to a new fingerprint and the ways freed (each way's drop counter must start from 0 for its new
/// holder).
fn settle(needed: &ShapeSet, now: &ShapeSet) -> (ShapeSet, Vec<u32>, Vec<u32>) {
    let all_ways = || (0..SHAPE_WAYS as u32).collect::<Vec<_>>();
    if needed.len == ShapeSet::OVERFLOW {
        // Counted in the verdict total only: whatever the ways counted is stale.
        let freed = if now.len == ShapeSet::OVERFLOW {
            Vec::new()
        } else {
            all_ways()
        };
        return (*needed, Vec::new(), freed);
    }
    let (mut next, mut freed) = if now.len == ShapeSet::OVERFLOW {
        (ShapeSet::EMPTY, all_ways())
    } else {
        (*now, Vec::new())
    };
    for gone in now.fingerprints {
        if gone != 0 && needed.way_of(gone).is_none() {
            freed.extend(next.remove(gone));
        }
    }
    let mut assigned = Vec::new();
    for new in needed.fingerprints {
        if new != 0 && next.way_of(new).is_none() {
            // At most SHAPE_WAYS are needed and the others left: a way is free.
            assigned.extend(next.insert(new));
        }
    }
    (next, assigned, freed)
}

/// Stores `index` for the program: every shape's set that changes, each blocked fingerprint kept in the way it has
/// in the pinned set (so its drop counter goes on counting it), then the count. A way's drop counter is zeroed before
/// a new fingerprint is put in it and after its fingerprint left it (the program may count one more drop in
/// between).
///
/// # Errors
/// The kernel refused a read or a write (the maps are not the arrays this version pins).
pub(crate) fn store<C: BorrowMut<MapData>, S: BorrowMut<MapData>, D: BorrowMut<MapData>>(
    index: &Index,
    count: &mut Array<C, u32>,
    shapes: &mut Array<S, ShapeSet>,
    mut drops: Option<&mut PerCpuArray<D, u64>>,
) -> anyhow::Result<()> {
    let current = load_shapes(shapes)?;
    let cpus =
        aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("cannot read {path}: {e}"))?;
    let mut zero = |shape: u32, ways: &[u32]| -> anyhow::Result<()> {
        let Some(drops) = drops.as_deref_mut() else {
            return Ok(());
        };
        for way in ways {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus])
                .with_context(|| format!("cannot build {cpus} per-CPU zeros"))?;
            drops
                .set(hit_slot(shape, *way), zeros, 0)
                .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_FP_DROPS}`"))?;
        }
        Ok(())
    };
    for (shape, (needed, now)) in (0u32..).zip(index.shapes.iter().zip(&current)) {
        let (next, assigned, freed) = settle(needed, now);
        if next == *now {
            continue;
        }
        zero(shape, &assigned)?;
        shapes
            .set(shape, next, 0)
            .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_FP_SHAPES}`"))?;
        zero(shape, &freed)?;
    }
    count
        .set(0, index.count, 0)
        .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_FP_COUNT}`"))
}

/// ClientHellos the program dropped for `fingerprint` since it took its way in `sets` (read with
/// [`load_shapes`]), summed over CPUs; `None` when its shape holds more blocked fingerprints than a set (counted in
/// the verdict total only) or it is not in its set (not indexed: a stale index).
///
/// # Errors
/// The kernel refused a read.
pub(crate) fn drops_of<D: Borrow<MapData>>(
    sets: &[ShapeSet],
    drops: &PerCpuArray<D, u64>,
    fingerprint: u64,
) -> anyhow::Result<Option<u64>> {
    let Some(shape) = shape_index(fingerprint) else {
        return Ok(None);
    };
    let Some(way) = sets
        .get(shape as usize)
        .and_then(|set| set.way_of(fingerprint))
    else {
        return Ok(None);
    };
    way_drops(drops, shape, way).map(Some)
}

/// Every blocked fingerprint with a way of its own in `sets` (read with [`load_shapes`]; overflowed shapes are
/// counted in the verdict total only), with its drops as [`drops_of`] gives them, in one pass over the sets.
///
/// # Errors
/// The kernel refused a read.
pub(crate) fn all_drops<D: Borrow<MapData>>(
    sets: &[ShapeSet],
    drops: &PerCpuArray<D, u64>,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for (shape, set) in (0u32..).zip(sets) {
        if set.len == ShapeSet::OVERFLOW {
            continue;
        }
        for (way, fingerprint) in (0u32..).zip(set.fingerprints) {
            if fingerprint != 0 {
                out.push((fingerprint, way_drops(drops, shape, way)?));
            }
        }
    }
    Ok(out)
}

/// The drops counted for `way` of the set of `shape`, summed over CPUs.
fn way_drops<D: Borrow<MapData>>(
    drops: &PerCpuArray<D, u64>,
    shape: u32,
    way: u32,
) -> anyhow::Result<u64> {
    let per_cpu = drops
        .get(&hit_slot(shape, way), 0)
        .with_context(|| format!("cannot read map `{MAP_XDP_BLOCK_FP_DROPS}`"))?;
    Ok(crate::metrics::per_cpu_total(&per_cpu))
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

    #[test]
    fn a_rebuild_keeps_every_blocked_fingerprint_in_its_way() {
        let s = shape(31, 12);
        let [a, b, c, d] = [1, 2, 3, 4].map(|n| fingerprint(s, n));
        let set = |fps: &[u64]| {
            let mut set = ShapeSet::EMPTY;
            for fp in fps {
                set.insert(*fp);
            }
            set
        };
        let now = set(&[a, b, c]);
        // b unblocked, d blocked: a and c stay put, d takes b's way, whose counter restarts from 0.
        let (next, assigned, freed) = settle(&set(&[d, c, a]), &now);
        assert_eq!(
            [a, b, c, d].map(|fp| next.way_of(fp)),
            [Some(0), None, Some(2), Some(1)]
        );
        assert_eq!((assigned, freed), (vec![1], vec![1]));
        // Nothing changed: nothing moves, no counter is touched.
        assert_eq!(settle(&set(&[c, a, b]), &now), (now, vec![], vec![]));
        // Overflowing (counted in the total only) frees every way; leaving overflow starts afresh.
        let crowded = of_keys((1..=SHAPE_WAYS as u64 + 1).map(|n| Some(fingerprint(s, n))));
        let needed = &crowded.shapes[usize::from(s)];
        let (over, assigned, freed) = settle(needed, &now);
        assert_eq!(over.len, ShapeSet::OVERFLOW);
        assert!(assigned.is_empty() && freed.len() == SHAPE_WAYS);
        let (back, assigned, freed) = settle(&set(&[c]), &over);
        assert_eq!(back.way_of(c), Some(0));
        assert_eq!((assigned, freed.len()), (vec![0], SHAPE_WAYS));
    }
}
