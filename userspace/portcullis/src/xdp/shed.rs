//! [`SynShed`]: the load-shedding knob of the XDP program, turned by admission control.
//!
//! Shedding at the SYN is the cheapest action there is: the packet dies in the driver, no socket or byte of
//! crypto is spent, and the client's TCP stack retransmits after 1 s, 3 s, ... — a backoff that costs the
//! server nothing. The knob is `XdpConfig::syn_shed_ppm` in the pinned config map, read by the program on every
//! SYN, so a change takes effect on the next packet.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData};
use portcullis_abi::names::MAP_XDP_CONFIG;
use portcullis_abi::xdp_config::{XDP_CONFIG_KEY, XdpConfig};

/// A handle on the SYN shed fractions of a running XDP program.
pub struct SynShed {
    map: Mutex<Array<MapData, XdpConfig>>,
    current: AtomicU32,
    current_retry: AtomicU32,
}

impl std::fmt::Debug for SynShed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynShed").field("ppm", &self.ppm()).finish()
    }
}

impl SynShed {
    /// Opens the config map pinned under `pin_dir` by a running [`super::XdpGuard`].
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let path = pin_dir.join(MAP_XDP_CONFIG);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("cannot open the pinned XDP config map {}", path.display()))?;
        let map: Array<MapData, XdpConfig> = Map::Array(data).try_into().context(
            "the pinned config map is not an array of XdpConfig: rebuild with `cargo xtask build`",
        )?;
        let config = map
            .get(&XDP_CONFIG_KEY, 0)
            .context("cannot read the XDP config map")?;
        Ok(Self {
            map: Mutex::new(map),
            current: AtomicU32::new(config.syn_shed_ppm),
            current_retry: AtomicU32::new(config.syn_retry_shed_ppm),
        })
    }

    /// The fraction of SYNs dropped now, in parts per million.
    pub fn ppm(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }

    /// Sets the fractions of new SYNs (`ppm`) and of retransmitted SYNs of shed flows (`retry_ppm`) to drop,
    /// in parts per million (clamped to 1,000,000). A no-op when unchanged; otherwise one map read and one
    /// write.
    pub fn set_ppm(&self, ppm: u32, retry_ppm: u32) -> anyhow::Result<()> {
        let (ppm, retry_ppm) = (ppm.min(1_000_000), retry_ppm.min(1_000_000));
        if self.current.load(Ordering::Relaxed) == ppm
            && self.current_retry.load(Ordering::Relaxed) == retry_ppm
        {
            return Ok(());
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut config = map
            .get(&XDP_CONFIG_KEY, 0)
            .context("cannot read the XDP config map")?;
        config.syn_shed_ppm = ppm;
        config.syn_retry_shed_ppm = retry_ppm;
        map.set(XDP_CONFIG_KEY, config, 0)
            .context("cannot write the XDP config map")?;
        self.current.store(ppm, Ordering::Relaxed);
        self.current_retry.store(retry_ppm, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the `[xdp]` knobs of `section` into the program's config map (through the one mapping,
    /// [`super::XdpSection::write_knobs`]), keeping the shed fractions: how a reload turns them on the next
    /// packet. Under the same lock as [`Self::set_ppm`], so neither write loses the other's fields. Needs no
    /// capability: the map's descriptor was opened at start.
    pub fn write_knobs(&self, section: &super::XdpSection) -> anyhow::Result<()> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut config = map
            .get(&XDP_CONFIG_KEY, 0)
            .context("cannot read the XDP config map")?;
        section.write_knobs(&mut config);
        map.set(XDP_CONFIG_KEY, config, 0)
            .context("cannot write the XDP config map")
    }
}
