//! [`Steering`]: loads the reuseport program from the embedded object, fills its socket array and attaches it
//! to every listener group. Independent of XDP: it loads its own instance of the object (the XDP maps shrunk to
//! one entry, the XDP program never loaded), so it runs with or without `[xdp] interfaces`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use aya::EbpfLoader;
use aya::maps::{Array, PerCpuArray, ReusePortSockArray};
use aya::programs::SkReuseport;
use portcullis_abi::names::{
    ALL_MAPS, MAP_RP_CONFIG, MAP_RP_CPU_WORKER, MAP_RP_OUTCOMES, MAP_RP_SATURATED, MAP_RP_SOCKS,
    PROG_REUSEPORT, RP_MAPS,
};
use portcullis_abi::steering::{
    MAX_CPUS, MAX_GROUPS, MAX_WORKERS, RP_CONFIG_KEY, ReuseportConfig, sock_key,
};
use prometheus_client::collector::Collector;

use super::{OutcomeCounters, SaturatedWorkers, counters};
use crate::xdp::{object, pins::Pins, refusal};

/// What [`Steering::start`] needs.
#[derive(Clone, Debug)]
pub struct SteeringSettings {
    /// Prefer the worker pinned to the receiving CPU (see [`super::SteeringConfig::prefer_local_cpu`]).
    pub prefer_local_cpu: bool,
    /// The CPU each worker is pinned to (`None`: not pinned), indexed by worker.
    pub worker_cpus: Vec<Option<usize>>,
    /// Where the program and maps are pinned (`[xdp] pin_dir`); created if missing.
    pub pin_dir: PathBuf,
    /// Taking over a running daemon's groups (`upgrade`): its pins are replaced, and so is its program on
    /// each group (`SO_ATTACH_REUSEPORT_EBPF` replaces).
    pub take_over: bool,
}

/// The steering program, loaded and attached to every listener group. Dropping it removes its pins; the
/// program stays attached to the groups until their sockets close (the kernel keeps it alive), which is what
/// a draining daemon wants.
pub struct Steering {
    /// Keeps the maps and program open for the daemon's lifetime.
    _ebpf: aya::Ebpf,
    pins: PinsOnDrop,
    saturated: Arc<SaturatedWorkers>,
    outcomes: OutcomeCounters,
}

impl Steering {
    /// Loads the program, writes its config, puts worker `w`'s socket of group `g` at `sock_key(g, w)`, pins
    /// the program and maps under `settings.pin_dir`, and attaches the program to each group (last, so a
    /// failure before leaves the groups on the kernel's hash).
    ///
    /// # Errors
    /// No BPF object embedded, no privileges (CAP_BPF), more than [`MAX_WORKERS`] workers or [`MAX_GROUPS`]
    /// listeners, groups of unequal size, a pin directory not on bpffs. The daemon logs it and runs on the
    /// kernel's hash.
    pub fn start(
        settings: &SteeringSettings,
        groups: &[Vec<TcpListener>],
    ) -> anyhow::Result<Steering> {
        let workers = groups.first().map_or(0, Vec::len);
        if workers == 0 || workers > MAX_WORKERS {
            bail!(
                "steering addresses 1 to {MAX_WORKERS} workers, not {workers}; set `workers` lower"
            );
        }
        if groups.len() > MAX_GROUPS {
            bail!(
                "steering holds at most {MAX_GROUPS} listeners, not {}",
                groups.len()
            );
        }
        if groups.iter().any(|g| g.len() != workers) {
            bail!("every listener must have one socket per worker");
        }
        let object = object::embedded()?;
        // Removes what was pinned if a later step fails (and when the steering handle drops).
        let mut pins = PinsOnDrop(Pins::default());
        pins.0.prepare_dir(&settings.pin_dir)?;
        pins.0.replacing_predecessor = settings.take_over;
        let mut loader = EbpfLoader::new();
        // Taking over, the socket array is the running daemon's: a socket sits in one such array at a time
        // (the kernel answers EBUSY), and it already holds every inherited socket at its key.
        let socks_pin = settings.pin_dir.join(MAP_RP_SOCKS);
        let inherit_socks = settings.take_over && socks_pin.exists();
        if inherit_socks {
            loader.map_pin_path(MAP_RP_SOCKS, socks_pin.as_path());
        }
        // The XDP program is not loaded from this instance: its maps need not be big.
        for name in ALL_MAPS.iter().filter(|name| !RP_MAPS.contains(name)) {
            loader.map_max_entries(name, 1);
        }
        let mut ebpf = loader
            .load(object)
            .context("cannot load the embedded BPF object for steering (needs root or CAP_BPF)")?;

        let config = ReuseportConfig {
            workers: workers as u32,
            groups: groups.len() as u32,
            prefer_local_cpu: u32::from(settings.prefer_local_cpu),
            _pad: 0,
        };
        let mut config_map: Array<_, ReuseportConfig> = crate::xdp::object::typed_map(
            ebpf.map_mut(MAP_RP_CONFIG),
            MAP_RP_CONFIG,
            "an array of ReuseportConfig",
        )?;
        config_map
            .set(RP_CONFIG_KEY, config, 0)
            .with_context(|| format!("cannot write map `{MAP_RP_CONFIG}`"))?;

        if settings.prefer_local_cpu && settings.worker_cpus.iter().all(Option::is_none) {
            tracing::warn!(
                "[steering] prefer_local_cpu has no effect: no worker is pinned to a CPU (set pin_workers = true)"
            );
        }
        if settings.prefer_local_cpu {
            let mut cpu_map: Array<_, u32> = ebpf
                .map_mut(MAP_RP_CPU_WORKER)
                .with_context(|| format!("the BPF object has no map `{MAP_RP_CPU_WORKER}`"))?
                .try_into()?;
            // Several workers on one CPU: the first one is that CPU's local worker.
            for (worker, cpu) in settings.worker_cpus.iter().enumerate().rev() {
                if let Some(cpu) = cpu.filter(|&c| c < MAX_CPUS) {
                    cpu_map
                        .set(cpu as u32, worker as u32 + 1, 0)
                        .with_context(|| format!("cannot write map `{MAP_RP_CPU_WORKER}`"))?;
                }
            }
        }

        let mut socks: ReusePortSockArray<_> = ebpf
            .map_mut(MAP_RP_SOCKS)
            .with_context(|| format!("the BPF object has no map `{MAP_RP_SOCKS}`"))?
            .try_into()?;
        for (g, group) in groups.iter().enumerate().filter(|_| !inherit_socks) {
            for (w, socket) in group.iter().enumerate() {
                socks
                    .set(sock_key(g as u32, w as u32), socket, 0)
                    .with_context(|| {
                        format!(
                            "cannot put worker {w}'s socket of listener {g} into `{MAP_RP_SOCKS}`"
                        )
                    })?;
            }
        }

        for name in [
            MAP_RP_CONFIG,
            MAP_RP_SATURATED,
            MAP_RP_OUTCOMES,
            MAP_RP_SOCKS,
        ] {
            let map = ebpf
                .map(name)
                .with_context(|| format!("the BPF object has no map `{name}`"))?;
            pins.0.pin_map(map, &settings.pin_dir, name)?;
        }
        let program: &mut SkReuseport = ebpf
            .program_mut(PROG_REUSEPORT)
            .with_context(|| format!("the BPF object has no program `{PROG_REUSEPORT}`; rebuild with `cargo xtask build`"))?
            .try_into()?;
        program
            .load()
            .map_err(anyhow::Error::new)
            .map_err(|e| refusal::explain(&format!("reuseport program `{PROG_REUSEPORT}`"), e))
            .with_context(|| format!("the kernel refused to load `{PROG_REUSEPORT}`"))?;
        pins.0.pin_with(&settings.pin_dir, PROG_REUSEPORT, |path| {
            program
                .pin(path)
                .with_context(|| format!("cannot pin `{PROG_REUSEPORT}` at {}", path.display()))
        })?;
        for (g, group) in groups.iter().enumerate() {
            // Attaching through any socket attaches to the whole group.
            if let Err(e) = program.attach(&group[0]) {
                // Undo the groups done so far: all or nothing.
                for done in &groups[..g] {
                    let _ = SkReuseport::detach(&done[0]);
                }
                return Err(e)
                    .with_context(|| format!("cannot attach `{PROG_REUSEPORT}` to listener {g}"));
            }
        }

        let saturated: Array<_, u64> = ebpf
            .take_map(MAP_RP_SATURATED)
            .with_context(|| format!("the BPF object has no map `{MAP_RP_SATURATED}`"))?
            .try_into()?;
        let outcomes: PerCpuArray<_, u64> = ebpf
            .take_map(MAP_RP_OUTCOMES)
            .with_context(|| format!("the BPF object has no map `{MAP_RP_OUTCOMES}`"))?
            .try_into()?;
        tracing::info!(
            workers,
            listeners = groups.len(),
            prefer_local_cpu = settings.prefer_local_cpu,
            pin_dir = %settings.pin_dir.display(),
            "reuseport steering attached"
        );
        Ok(Steering {
            _ebpf: ebpf,
            pins,
            saturated: Arc::new(SaturatedWorkers::new(saturated)),
            outcomes: OutcomeCounters::new(outcomes),
        })
    }

    /// After a successor took over the groups: its pins replaced this one's, so none is removed.
    pub fn hand_over(mut self) {
        self.pins.0.forget();
    }

    /// The saturated-worker map, for the admission hook on each worker.
    pub fn saturated(&self) -> Arc<SaturatedWorkers> {
        self.saturated.clone()
    }

    /// `portcullis_steering_total{outcome}` and `portcullis_steering_saturated_workers`, read at scrape time.
    pub fn collector(&self) -> Box<dyn Collector> {
        counters::collector(self.outcomes.clone(), self.saturated.clone())
    }
}

/// The pins of one steering instance, removed on drop.
struct PinsOnDrop(Pins);

impl Drop for PinsOnDrop {
    fn drop(&mut self) {
        // Failures were logged by `remove_all`.
        let _ = self.0.remove_all();
    }
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("pins", &self.pins.0)
            .finish()
    }
}
