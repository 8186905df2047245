//! `portcullis xdp status`: the guard's configuration as the program reads it, and the blocklists' state.

use std::path::Path;

use anyhow::Context as _;
use portcullis_abi::{
    block_filter::FILTER_BITS,
    client_hello::fingerprint::{FORMAT, SHAPES},
    fp_shapes::SHAPE_WAYS,
    known::{KNOWN_SETS, KNOWN_WAYS, KnownSet},
    limits::{BUDGET_SETS, BUDGET_WAYS, BudgetSet, SYN_COST_MILLI},
    names::{
        MAP_XDP_HELLO_BUDGET, MAP_XDP_HELLO_PROG, MAP_XDP_KNOWN, MAP_XDP_SYN_BUDGET, PROG_XDP_HELLO,
    },
};

use super::block::{block_filter, blocklist};
use super::fingerprints::{fingerprint_blocklist, fingerprint_count, fingerprint_shapes};
use super::*;

pub(super) fn status(dir: &Path) -> anyhow::Result<()> {
    let config = config(dir)?;
    let trie = blocklist(dir)?;
    // Read once: counted here, checked against the prefilter below.
    let prefixes = crate::xdp::block_filter::keys(&trie)?;
    let blocked = prefixes.len();
    println!("pin_dir          {}", dir.display());
    println!("listener ports   {:?}", config.listener_ports());
    if config.syn_rate == 0 {
        println!("syn budget       off");
    } else {
        println!(
            "syn budget       {}/s, burst {}, per IPv4 /{} and IPv6 /{}",
            config.syn_rate, config.syn_burst, config.v4_prefix_len, config.v6_prefix_len
        );
    }
    println!(
        "enforce          {}",
        if config.enforce != 0 {
            "yes (drop)"
        } else {
            "no (count only)"
        }
    );
    if config.hello_rate == 0 {
        println!("hello budget     off");
    } else {
        println!(
            "hello budget     {}/s, burst {}, a resumption costs {}/1000",
            config.hello_rate, config.hello_burst, config.hello_resume_cost_milli
        );
    }
    if config.flood_syn_rate == 0 {
        println!("flood budget     off");
    } else {
        println!(
            "flood budget     {}/s per CPU, burst {}, for SYNs of unknown sources (known: a ClientHello passed \
             within {} s)",
            config.flood_syn_rate, config.flood_syn_burst, config.known_ttl_s
        );
        known_table_status(dir, config.known_ttl_s)?;
    }
    if config.malformed_penalty_ms == 0 || config.syn_rate == 0 {
        println!("malformed penalty off");
    } else {
        println!(
            "malformed penalty {} ms of SYNs dropped after a malformed ClientHello",
            config.malformed_penalty_ms
        );
    }
    budget_table_status(dir, MAP_XDP_SYN_BUDGET, "syn budget")?;
    budget_table_status(dir, MAP_XDP_HELLO_BUDGET, "hello budget")?;
    if config.jiffy_ns == 0 {
        println!("budget clock     bpf_ktime_get_coarse_ns");
    } else {
        println!(
            "budget clock     jiffies, {} ns a tick (one load, no helper call)",
            config.jiffy_ns
        );
    }
    println!(
        "syn shedding     {} of new SYNs, {} of retransmitted SYNs of shed flows (set by admission control)",
        ppm_percent(config.syn_shed_ppm),
        ppm_percent(config.syn_retry_shed_ppm)
    );
    hello_status(dir)?;
    println!("blocked prefixes {blocked}");
    // What the program reads against what the trie needs: a stale prefilter lets blocked sources through.
    let Some(pinned) = block_filter(dir)? else {
        println!(
            "prefilter        none (the running daemon's program looks every source up in the trie)"
        );
        return fingerprint_status(dir);
    };
    let read = crate::xdp::block_filter::load(&pinned)
        .context("the pinned prefilter of the blocklist: daemon and CLI versions differ")?;
    let needed = crate::xdp::block_filter::of_keys(&prefixes);
    let set = crate::xdp::block_filter::bits_set(&read);
    if read.iter().zip(needed.iter()).all(|(r, n)| r & n == *n) {
        println!(
            "prefilter        {set} of {FILTER_BITS} bits set (a source whose bit is clear skips the trie lookup)"
        );
    } else {
        println!(
            "prefilter        STALE: the trie holds prefixes whose bits are clear, so they do not block (an entry \
             written with bpftool?); a `block del` or a daemon restart rebuilds it"
        );
    }
    fingerprint_status(dir)
}

/// A budget table's line of `portcullis xdp status`: how many of its ways hold a source, and how many of those had
/// less than one token left at their last packet (spent: a flooding source, or one that stopped right after).
fn budget_table_status(dir: &Path, name: &str, label: &str) -> anyhow::Result<()> {
    let Some(table) =
        open_if_pinned::<Array<MapData, BudgetSet>>(dir, name, &format!("{label} table"))?
    else {
        return Ok(());
    };
    let (mut used, mut spent) = (0usize, 0usize);
    for set in table.iter() {
        let set = set.with_context(|| format!("cannot read the pinned {label} table {name}"))?;
        for way in set.ways.iter().filter(|way| way.bucket.last_ns != 0) {
            used += 1;
            spent += usize::from(way.bucket.tokens_milli < SYN_COST_MILLI);
        }
    }
    let capacity = BUDGET_SETS * BUDGET_WAYS;
    println!(
        "{:<17}{used} of {capacity} sources tracked, {spent} spent at their last packet ({BUDGET_WAYS}-way sets: a new \
         source pushes out the fuller bucket, never a spent one first)",
        format!("{label} table")
    );
    Ok(())
}

/// The known-source line of `portcullis xdp status`: how many sources pass a SYN flood now.
fn known_table_status(dir: &Path, ttl_s: u32) -> anyhow::Result<()> {
    let Some(table) =
        open_if_pinned::<Array<MapData, KnownSet>>(dir, MAP_XDP_KNOWN, "known sources table")?
    else {
        return Ok(());
    };
    let now = crate::xdp::clock::monotonic_ns().context("cannot read CLOCK_MONOTONIC")?;
    let mut live = 0usize;
    for set in table.iter() {
        let set =
            set.with_context(|| format!("cannot read the pinned known sources {MAP_XDP_KNOWN}"))?;
        live += set.live(now, ttl_s);
    }
    println!(
        "known sources    {live} of {} (they pass while the flood budget is spent)",
        KNOWN_SETS * KNOWN_WAYS
    );
    Ok(())
}

/// The ClientHello check line of `portcullis xdp status`: whether the XDP program has its ClientHello program to
/// tail-call (without it first payload segments pass unjudged).
pub(super) fn hello_status(dir: &Path) -> anyhow::Result<()> {
    if !dir.join(MAP_XDP_HELLO_PROG).exists() {
        println!(
            "hello check      in the XDP program (the running daemon predates the ClientHello program)"
        );
        return Ok(());
    }
    match crate::xdp::hello_prog::installed(dir)? {
        Some(id) => println!(
            "hello check      on: {PROG_XDP_HELLO} (program id {id}) judges first segments"
        ),
        None => println!(
            "hello check      OFF: the program array {MAP_XDP_HELLO_PROG} is empty, so first segments pass \
             unjudged; restart the daemon"
        ),
    }
    Ok(())
}

/// The fingerprint lines of `portcullis xdp status`.
pub(super) fn fingerprint_status(dir: &Path) -> anyhow::Result<()> {
    let index = crate::xdp::fp_index::of(&fingerprint_blocklist(dir)?);
    let listed = index.count;
    if index.other_format == 0 {
        println!("blocked fingerprints {listed}");
    } else {
        println!(
            "blocked fingerprints {listed}, {} of them NOT of this version's format (format {FORMAT}: 16 hex digits \
             starting with 0{FORMAT}): they block nothing; `block-fingerprint list` marks them, `block-fingerprint \
             del` removes them, and `portcullis fingerprint` prints the values to block now",
            index.other_format
        );
    }
    let counted = fingerprint_count(dir)?.get(&0, 0).context(
        "cannot read the pinned count of blocked fingerprints: daemon and CLI versions differ",
    )?;
    match (counted, listed) {
        (0, 0) => println!("fingerprinting   off (nothing blocked: the program skips it)"),
        (c, l) if (c == 0) == (l == 0) => println!("fingerprinting   on"),
        (c, l) => println!(
            "fingerprinting   {} but the list holds {l}: the count the program reads ({c}) is stale (an entry \
             written with bpftool?); any `block-fingerprint add|del` or a daemon restart recounts",
            if c == 0 { "off" } else { "on" }
        ),
    }
    if listed == 0 {
        return Ok(());
    }
    // What the program reads against what the blocklist needs: a shape left clear lets its fingerprints through.
    let Some(pinned) = fingerprint_shapes(dir)? else {
        println!(
            "shapes           none: the running daemon predates fingerprint format {FORMAT} and matches only \
             older fingerprints; restart it with this version"
        );
        return Ok(());
    };
    let read = crate::xdp::fp_index::load_shapes(&pinned)?;
    let wanted = index.shapes_set();
    if index.covered_by(&read) {
        println!(
            "shapes           {wanted} of {SHAPES} (a complete ClientHello of another shape is not hashed: no \
             blocked fingerprint could match it)"
        );
        let overflowed = index.shapes_overflowed();
        if overflowed != 0 {
            println!(
                "                 {overflowed} of them with more than {SHAPE_WAYS} blocked fingerprints: their \
                 ClientHellos are looked up in the blocklist (slower; still correct)"
            );
        }
    } else {
        println!(
            "shapes           STALE: blocked fingerprints have shapes the program does not hash, so they do not \
             block (an entry written with bpftool?); any `block-fingerprint add|del` or a daemon restart rebuilds them"
        );
    }
    Ok(())
}

pub(super) fn ppm_percent(ppm: u32) -> String {
    format!("{:.1}%", f64::from(ppm) / 10_000.0)
}
