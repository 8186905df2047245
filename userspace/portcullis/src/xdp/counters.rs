//! [`XdpCounters`]: reads the per-CPU verdict counters.

use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray};
use portcullis_abi::{names::MAP_XDP_VERDICTS, verdict::Verdict};

/// A handle on the XDP verdict counters. Cheap to clone (one `Arc`), `Send + Sync`; it keeps the map open, so it
/// stays readable after the guard detached (the values then stop moving).
#[derive(Clone)]
pub struct XdpCounters {
    map: Arc<PerCpuArray<MapData, u64>>,
}

impl XdpCounters {
    pub(crate) fn new(map: PerCpuArray<MapData, u64>) -> XdpCounters {
        XdpCounters { map: Arc::new(map) }
    }

    /// The packet count of every verdict since the program was loaded, summed over CPUs, in
    /// [`Verdict::ALL`] order.
    ///
    /// # Errors
    /// When the kernel refuses the map lookup (it should not while the map is open).
    pub fn read(&self) -> anyhow::Result<Vec<(Verdict, u64)>> {
        Verdict::ALL
            .iter()
            .map(|&verdict| {
                let per_cpu = self.map.get(&verdict.index(), 0).with_context(|| {
                    format!(
                        "cannot read XDP counter `{}` from map `{MAP_XDP_VERDICTS}`",
                        verdict.name()
                    )
                })?;
                // Wrapping: a u64 packet count does not overflow in practice, and a metric must never panic.
                let total = per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v));
                Ok((verdict, total))
            })
            .collect()
    }
}

impl std::fmt::Debug for XdpCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpCounters")
            .field("map", &MAP_XDP_VERDICTS)
            .finish()
    }
}
