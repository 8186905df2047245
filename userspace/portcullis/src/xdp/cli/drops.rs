//! `portcullis xdp stats` and `portcullis xdp drops`: verdict totals, and who was dropped and why.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray};
use portcullis_abi::{
    drop_samples::{DROP_SAMPLES, DropRing, SAMPLE_EVERY},
    names::{MAP_XDP_DROP_RING, MAP_XDP_MALFORMED, MAP_XDP_VERDICTS},
};

use crate::xdp::counters::{malformed_totals, verdict_totals};

use super::*;

pub(super) fn stats(dir: &Path) -> anyhow::Result<()> {
    for (verdict, total) in verdict_totals(&verdict_map(dir)?)? {
        println!("{:<26} {total}", verdict.name());
    }
    let malformed: PerCpuArray<MapData, u64> = open(dir, MAP_XDP_MALFORMED)?.try_into().context(
        "the pinned malformed-ClientHello map is not a per-CPU array of u64: daemon and CLI versions differ",
    )?;
    for (reason, total) in malformed_totals(&malformed)? {
        if total != 0 {
            println!("malformed {:<30} {total}", reason.name());
        }
    }
    Ok(())
}

/// The pinned verdict counters (`stats` prints them, `drops` totals the drop verdicts).
pub(super) fn verdict_map(dir: &Path) -> anyhow::Result<PerCpuArray<MapData, u64>> {
    open(dir, MAP_XDP_VERDICTS)?.try_into().context(
        "the pinned verdict map is not a per-CPU array of u64: daemon and CLI versions differ",
    )
}

/// `portcullis xdp drops`: the sampled drops of the last `seconds`, by source and verdict (`xdp::drop_report`).
pub(super) fn drops(dir: &Path, seconds: u64) -> anyhow::Result<()> {
    let map: PerCpuArray<MapData, DropRing> = open(dir, MAP_XDP_DROP_RING)?.try_into().context(
        "the pinned drop samples are not a per-CPU array of drop rings: daemon and CLI versions differ",
    )?;
    let rings = map
        .get(&0, 0)
        .context("cannot read the pinned drop samples")?;
    let now_ns = crate::xdp::clock::monotonic_ns().context("cannot read CLOCK_MONOTONIC")?;
    let window_ns = seconds.saturating_mul(1_000_000_000);
    let rings: Vec<DropRing> = rings.iter().copied().collect();
    let rows = crate::xdp::drop_report::report(&rings, now_ns, window_ns);
    let totals: std::collections::HashMap<&str, u64> = verdict_totals(&verdict_map(dir)?)?
        .into_iter()
        .filter(|(verdict, _)| verdict.drops())
        .map(|(verdict, n)| (verdict.name(), n))
        .collect();
    let total = totals.values().fold(0u64, |sum, n| sum.wrapping_add(*n));
    println!(
        "{total} drops since the program was loaded; one drop of each verdict in {SAMPLE_EVERY} per CPU is \
         sampled, the newest {DROP_SAMPLES} samples per CPU kept (under a flood they cover its last moments only)"
    );
    if rows.is_empty() {
        println!("no drop sampled in the last {seconds} s");
        return Ok(());
    }
    println!(
        "{:<40} {:<24} {:>8} {:>10} {:>10}",
        "source", "verdict", "samples", "~drops", "last"
    );
    let estimates =
        crate::xdp::drop_report::estimated_drops(&rows, |verdict| totals.get(verdict).copied());
    for (row, estimate) in rows.iter().zip(estimates) {
        let ago = now_ns.saturating_sub(row.last_ns) as f64 / 1e9;
        println!(
            "{:<40} {:<24} {:>8} {:>10} {:>8.1} s",
            row.src.to_string(),
            row.verdict,
            row.samples,
            estimate,
            ago
        );
    }
    Ok(())
}
