//! `portcullis xdp set KEY=VALUE ...`: the guard's knobs turned on a live host (`crate::xdp::knobs`).

use std::path::Path;

use anyhow::{Context as _, bail};
use portcullis_abi::{names::MAP_XDP_CONFIG, xdp_config::XDP_CONFIG_KEY};

use super::*;

/// How long `set` waits before reading its write back (see there).
pub(super) const SET_VERIFY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes that `set` tries before it gives up.
pub(super) const SET_ATTEMPTS: usize = 3;

/// `portcullis xdp set KEY=VALUE ...`: every assignment parsed and checked first (all or none), then one write
/// of the config map value read just before (keeping what the daemon owns in it: ports, SYN shed fractions).
/// The daemon's admission control rewrites the same value while it sheds (a read-modify-write of its own), so
/// the write is read back a moment later and made again if one of the two was lost.
pub(super) fn set(dir: &Path, assignments: &[String]) -> anyhow::Result<()> {
    let parsed = assignments
        .iter()
        .map(|text| crate::xdp::knobs::parse(text).map_err(|e| BadArgument(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut map = config_map(dir)?;
    let before = read_config(&map)?;
    let mut wanted = before;
    for assignment in &parsed {
        assignment.apply(&mut wanted);
    }
    for _ in 0..SET_ATTEMPTS {
        let mut config = read_config(&map)?;
        for assignment in &parsed {
            assignment.apply(&mut config);
        }
        map.set(XDP_CONFIG_KEY, config, 0)
            .context("cannot write the pinned config map")?;
        std::thread::sleep(SET_VERIFY_AFTER);
        let now = read_config(&map).context("reading it back")?;
        if crate::xdp::knobs::holds(&now, &wanted) {
            for assignment in &parsed {
                let key = assignment.key();
                println!(
                    "xdp.{key}: {} -> {}",
                    crate::xdp::knobs::show(key, &before),
                    crate::xdp::knobs::show(key, &now)
                );
            }
            println!(
                "in effect now, until the daemon restarts (it applies its config file's [xdp] at start: change \
                 the file too to keep it)"
            );
            return Ok(());
        }
    }
    bail!(
        "the change did not hold after {SET_ATTEMPTS} writes: something else keeps rewriting {} (another \
         `portcullis xdp set`?); `portcullis xdp status` shows what the program reads",
        dir.join(MAP_XDP_CONFIG).display()
    )
}
