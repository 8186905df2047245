//! [`SaturatedWorkers`]: the saturated-worker bitmask the reuseport program reads on every new connection.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use aya::maps::{Array, Map, MapData};
use portcullis_abi::names::MAP_RP_SATURATED;
use portcullis_abi::steering::{MAX_WORKERS, SATURATED_WORDS};

use super::SaturationMap;

/// A handle on the map [`MAP_RP_SATURATED`]: bit `w % 64` of word `w / 64` marks worker `w`. Writes are a
/// read-modify-write of one word under a mutex, so the daemon's workers never lose each other's marks (an
/// operator's concurrent `bpftool` write can race with them; `portcullis steering` goes through this type).
pub struct SaturatedWorkers {
    map: Mutex<Array<MapData, u64>>,
}

impl SaturatedWorkers {
    /// Wraps the map taken from the loaded object.
    pub(crate) fn new(map: Array<MapData, u64>) -> Self {
        Self {
            map: Mutex::new(map),
        }
    }

    /// Opens the map pinned under `pin_dir` by a daemon that steers.
    ///
    /// # Errors
    /// When the pin is missing (the daemon is not running with `[steering] enabled = true`, or another
    /// `pin_dir`), the caller lacks CAP_BPF, or the pin is not an array of `u64`.
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let path = pin_dir.join(MAP_RP_SATURATED);
        let data = MapData::from_pin(&path).with_context(|| {
            format!(
                "cannot open the pinned steering map {}; is the daemon running with [steering] enabled = true \
                 and this pin_dir? (needs root or CAP_BPF)",
                path.display()
            )
        })?;
        let map: Array<MapData, u64> = Map::Array(data)
            .try_into()
            .context("the pinned saturated-worker map is not an array of u64: rebuild with `cargo xtask build`")?;
        Ok(Self::new(map))
    }

    /// Sets or clears worker `worker`'s mark.
    ///
    /// # Errors
    /// `worker` at or above [`MAX_WORKERS`], or a map read/write the kernel refused.
    pub fn set(&self, worker: usize, saturated: bool) -> anyhow::Result<()> {
        if worker >= MAX_WORKERS {
            bail!("worker {worker} is out of range: steering addresses workers 0..{MAX_WORKERS}");
        }
        let key = (worker / 64) as u32;
        let bit = 1u64 << (worker % 64);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let word = map
            .get(&key, 0)
            .with_context(|| format!("cannot read map `{MAP_RP_SATURATED}`"))?;
        let word = if saturated { word | bit } else { word & !bit };
        map.set(key, word, 0)
            .with_context(|| format!("cannot write map `{MAP_RP_SATURATED}`"))
    }

    /// The marked workers, ascending.
    ///
    /// # Errors
    /// A map read the kernel refused.
    pub fn marked(&self) -> anyhow::Result<Vec<usize>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut marked = Vec::new();
        for word in 0..SATURATED_WORDS {
            let bits = map
                .get(&(word as u32), 0)
                .with_context(|| format!("cannot read map `{MAP_RP_SATURATED}`"))?;
            marked.extend(
                (0..64)
                    .filter(|b| bits & (1 << b) != 0)
                    .map(|b| word * 64 + b),
            );
        }
        Ok(marked)
    }
}

impl SaturationMap for SaturatedWorkers {
    fn set_saturated(&self, worker: usize, saturated: bool) -> anyhow::Result<()> {
        self.set(worker, saturated)
    }
}

impl std::fmt::Debug for SaturatedWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaturatedWorkers")
            .field("map", &MAP_RP_SATURATED)
            .finish()
    }
}
