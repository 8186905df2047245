//! `portcullis steering status|saturate N|clear N`: inspect and steer the reuseport steering of a running
//! daemon through its pinned maps (`[xdp] pin_dir`, default `/sys/fs/bpf/portcullis`). A mark takes effect on
//! the next new connection. The daemon's own admission hook also writes marks (at a worker's in-flight limit,
//! cleared at 3/4 of it), so a manual mark holds until that worker next crosses its limit.
//!
//! Exit codes: 0 done; 1 the pins cannot be opened or written (daemon not steering, no privileges).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use clap::{Args, Subcommand};
use portcullis_abi::names::{DEFAULT_PIN_DIR, MAP_RP_CONFIG, MAP_RP_OUTCOMES};
use portcullis_abi::steering::{RP_CONFIG_KEY, ReuseportConfig};

use crate::steering::{OutcomeCounters, SaturatedWorkers};

/// `portcullis steering ...`.
#[derive(Debug, Args)]
pub struct SteeringArgs {
    /// The daemon's pin directory (`[xdp] pin_dir`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: SteeringCommand,
}

#[derive(Debug, Subcommand)]
enum SteeringCommand {
    /// Show workers, listeners, the saturated workers and every outcome's count (summed over CPUs).
    Status,
    /// Mark a worker saturated: it gets no new connections while any other worker is not marked.
    Saturate {
        /// Worker index, from 0.
        worker: usize,
    },
    /// Clear a worker's saturated mark.
    Clear {
        /// Worker index, from 0.
        worker: usize,
    },
}

/// Runs a `portcullis steering` subcommand.
pub fn run(args: SteeringArgs) -> ExitCode {
    let result = match args.command {
        SteeringCommand::Status => status(&args.pin_dir),
        SteeringCommand::Saturate { worker } => mark(&args.pin_dir, worker, true),
        SteeringCommand::Clear { worker } => mark(&args.pin_dir, worker, false),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Sets or clears worker `worker`'s mark, refusing a worker the daemon does not have.
fn mark(dir: &Path, worker: usize, saturated: bool) -> anyhow::Result<()> {
    let workers = config(dir)?.workers as usize;
    if worker >= workers {
        bail!("the daemon has workers 0..{workers}; there is no worker {worker}");
    }
    SaturatedWorkers::open(dir)?.set(worker, saturated)
}

/// The steering config as the program sees it.
fn config(dir: &Path) -> anyhow::Result<ReuseportConfig> {
    let config: Array<MapData, ReuseportConfig> = Map::Array(open(dir, MAP_RP_CONFIG)?)
        .try_into()
        .context("the pinned steering config is not an array of ReuseportConfig")?;
    config
        .get(&RP_CONFIG_KEY, 0)
        .context("cannot read the steering config")
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let config = config(dir)?;
    let outcomes: PerCpuArray<MapData, u64> = Map::PerCpuArray(open(dir, MAP_RP_OUTCOMES)?)
        .try_into()
        .context("the pinned steering counters are not a per-CPU array of u64")?;
    let saturated = SaturatedWorkers::open(dir)?.marked()?;
    println!("pin_dir           {}", dir.display());
    println!("workers           {}", config.workers);
    println!("listeners         {}", config.groups);
    println!("prefer_local_cpu  {}", config.prefer_local_cpu != 0);
    println!("saturated         {saturated:?}");
    for (outcome, n) in OutcomeCounters::new(outcomes).read()? {
        println!("{:<25} {n}", outcome.name());
    }
    Ok(())
}

/// Opens the pinned map `name` under `dir`.
fn open(dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open {}; is the daemon running with [steering] enabled = true and this pin_dir? (needs root \
             or CAP_BPF)",
            path.display()
        )
    })
}
