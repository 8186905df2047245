//! The prefilter of the CIDR blocklist (`xdp_block_pre`, `portcullis_abi::block_filter`): set from the trie's
//! entries by whoever changes the trie, `portcullis xdp block add|del` with each change, the daemon at start
//! (the trie is pinned for good and may have changed while it was down).
//!
//! An added prefix ORs its bits into the words it touches ([`add`]: a few map updates, so loading a long list one
//! `block add` at a time stays cheap); a removal rebuilds the whole filter from the trie ([`of`], [`store`]), as
//! the daemon does at start, so a filter that went wrong (two CLIs at once, an entry written with bpftool) is
//! right again after the next removal or start. Every word is written with its final value, so while the filter
//! is rewritten a bit still needed is never cleared: an added prefix blocks once its bits are written, a removed
//! one's bits clear only where no other prefix needs them.

use std::borrow::{Borrow, BorrowMut};

use anyhow::Context as _;
use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use portcullis_abi::{
    block_filter::{FILTER_WORDS, Filter, mark},
    limits::ADDR_LEN,
    names::{MAP_XDP_BLOCK_NET, MAP_XDP_BLOCK_NET_FILTER},
};

/// The filter of every entry of `trie`.
///
/// # Errors
/// The trie could not be read.
pub(crate) fn of<T: Borrow<MapData>>(
    trie: &LpmTrie<T, [u8; ADDR_LEN], u8>,
) -> anyhow::Result<Box<Filter>> {
    Ok(of_keys(&keys(trie)?))
}

/// Every entry of `trie`, read once (`portcullis xdp status` counts them and checks the filter against them).
///
/// # Errors
/// The trie could not be read.
pub(crate) fn keys<T: Borrow<MapData>>(
    trie: &LpmTrie<T, [u8; ADDR_LEN], u8>,
) -> anyhow::Result<Vec<Key<[u8; ADDR_LEN]>>> {
    trie.keys()
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read map `{MAP_XDP_BLOCK_NET}`"))
}

/// The filter of `keys`.
pub(crate) fn of_keys(keys: &[Key<[u8; ADDR_LEN]>]) -> Box<Filter> {
    let mut filter: Box<Filter> = Box::new([0; FILTER_WORDS]);
    for key in keys {
        mark(&mut filter, key.prefix_len(), &key.data());
    }
    filter
}

/// Writes `filter` into the map the XDP program reads, word by word.
///
/// # Errors
/// The kernel refused a write (the map is not the array this version pins).
pub(crate) fn store<T: BorrowMut<MapData>>(
    map: &mut Array<T, u64>,
    filter: &Filter,
) -> anyhow::Result<()> {
    for (index, word) in (0u32..).zip(filter.iter()) {
        map.set(index, *word, 0)
            .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_NET_FILTER}`"))?;
    }
    Ok(())
}

/// The filter the XDP program reads, word by word.
///
/// # Errors
/// The kernel refused a read (the map is not the array this version pins).
pub(crate) fn load<T: Borrow<MapData>>(map: &Array<T, u64>) -> anyhow::Result<Box<Filter>> {
    let mut filter: Box<Filter> = Box::new([0; FILTER_WORDS]);
    for (index, word) in (0u32..).zip(filter.iter_mut()) {
        *word = map
            .get(&index, 0)
            .with_context(|| format!("cannot read map `{MAP_XDP_BLOCK_NET_FILTER}`"))?;
    }
    Ok(filter)
}

/// Sets the bits of the trie entry `(prefix_bits, addr)` in the map the XDP program reads, word by word (read,
/// OR, write), leaving the others as they are.
///
/// # Errors
/// The kernel refused a read or a write (the map is not the array this version pins).
pub(crate) fn add<T: BorrowMut<MapData>>(
    map: &mut Array<T, u64>,
    prefix_bits: u32,
    addr: &[u8; ADDR_LEN],
) -> anyhow::Result<()> {
    let mut entry: Box<Filter> = Box::new([0; FILTER_WORDS]);
    mark(&mut entry, prefix_bits, addr);
    for (index, bits) in (0u32..).zip(entry.iter()) {
        if *bits == 0 {
            continue;
        }
        let word = map
            .get(&index, 0)
            .with_context(|| format!("cannot read map `{MAP_XDP_BLOCK_NET_FILTER}`"))?;
        map.set(index, word | bits, 0)
            .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_NET_FILTER}`"))?;
    }
    Ok(())
}

/// Bits set in `filter`, for `portcullis xdp status`.
pub(crate) fn bits_set(filter: &Filter) -> u32 {
    filter.iter().map(|w| w.count_ones()).sum()
}
