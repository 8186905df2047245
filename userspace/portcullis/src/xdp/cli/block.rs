//! `portcullis xdp block add|del|list`: the CIDR blocklist and its prefilter.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use clap::Subcommand;
use portcullis_abi::{
    limits::{ADDR_LEN, block_entry, block_network},
    names::{MAP_XDP_BLOCK_NET, MAP_XDP_BLOCK_NET_FILTER},
};

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum BlockAction {
    /// Block a prefix: `192.0.2.0/24`, `2001:db8::/48`, or one address (`/32` or `/128`).
    Add {
        /// The prefix.
        cidr: String,
    },
    /// Unblock a prefix added before (exactly as added; host bits are ignored).
    Del {
        /// The prefix.
        cidr: String,
    },
    /// List blocked prefixes, one per line.
    List,
}

pub(super) fn blocklist(dir: &Path) -> anyhow::Result<LpmTrie<MapData, [u8; ADDR_LEN], u8>> {
    open(dir, MAP_XDP_BLOCK_NET)?.try_into().context(
        "the pinned blocklist is not an LPM trie of 16-byte keys: daemon and CLI versions differ",
    )
}

/// The pinned prefilter of the blocklist (`xdp::block_filter`); `None` when the blocklist is pinned without it: no
/// daemon runs (it is pinned per run; the next start rebuilds it from the trie) or the running daemon's program
/// predates it (it looks every source up in the trie).
pub(super) fn block_filter(dir: &Path) -> anyhow::Result<Option<Array<MapData, u64>>> {
    if !dir.join(MAP_XDP_BLOCK_NET_FILTER).exists() && dir.join(MAP_XDP_BLOCK_NET).exists() {
        return Ok(None);
    }
    let map = open(dir, MAP_XDP_BLOCK_NET_FILTER)?.try_into().context(
        "the pinned prefilter of the blocklist is not an array of u64: daemon and CLI versions differ",
    )?;
    Ok(Some(map))
}

pub(super) fn block(dir: &Path, action: BlockAction) -> anyhow::Result<()> {
    match action {
        BlockAction::Add { cidr } => {
            let (bits, addr) = parse_cidr(&cidr)?;
            // Both maps opened before either changes, so a version mismatch changes nothing.
            let mut trie = blocklist(dir)?;
            let filter = block_filter(dir)?;
            trie.insert(&Key::new(bits, addr), 1, 0)
                .with_context(|| format!("cannot add {cidr} to the blocklist (is it full?)"))?;
            // The program looks a source up only where the prefilter says (`xdp::block_filter`).
            if let Some(mut filter) = filter {
                crate::xdp::block_filter::add(&mut filter, bits, &addr)?;
            }
        }
        BlockAction::Del { cidr } => {
            let (bits, addr) = parse_cidr(&cidr)?;
            let mut trie = blocklist(dir)?;
            let filter = block_filter(dir)?;
            trie.remove(&Key::new(bits, addr))
                .with_context(|| format!("{cidr} is not in the blocklist"))?;
            if let Some(mut filter) = filter {
                let rebuilt = crate::xdp::block_filter::of(&trie)?;
                crate::xdp::block_filter::store(&mut filter, &rebuilt)?;
            }
        }
        BlockAction::List => {
            for key in blocklist(dir)?.keys() {
                let key = key.context("cannot read the blocklist")?;
                let (net, len) = block_network(key.prefix_len(), key.data());
                println!("{net}/{len}");
            }
        }
    }
    Ok(())
}

/// `ADDR/LEN` or `ADDR` as an LPM trie entry.
pub(super) fn parse_cidr(cidr: &str) -> anyhow::Result<(u32, [u8; ADDR_LEN])> {
    let (addr, len) = match cidr.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (cidr, None),
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        bail!(BadArgument(format!(
            "`{cidr}` is not a prefix: expected ADDR/LEN such as 192.0.2.0/24 or 2001:db8::/48"
        )));
    };
    let len = match len {
        None if addr.is_ipv4() => 32,
        None => 128,
        Some(len) => len.parse::<u8>().map_err(|_| {
            BadArgument(format!(
                "`{cidr}`: the prefix length must be a number of bits"
            ))
        })?,
    };
    block_entry(addr, len).map_err(|e| BadArgument(format!("`{cidr}`: {e}")).into())
}

#[cfg(test)]
mod tests {
    use portcullis_abi::limits::v4_mapped;

    use super::*;

    #[test]
    fn cidrs_parse_to_trie_entries() {
        assert_eq!(
            parse_cidr("192.0.2.9/24").expect("valid"),
            (120, v4_mapped([192, 0, 2, 0]))
        );
        assert_eq!(parse_cidr("192.0.2.9").expect("valid").0, 128);
        assert_eq!(parse_cidr("2001:db8::1/32").expect("valid").0, 32);
        for bad in ["192.0.2.0/33", "example.com/8", "10.0.0.0/x", "::/129"] {
            let e = parse_cidr(bad).expect_err(bad);
            assert!(e.downcast_ref::<BadArgument>().is_some(), "{bad}: {e}");
        }
    }
}
