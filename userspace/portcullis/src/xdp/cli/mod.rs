//! `portcullis xdp status|stats|drops|set ...|block ...|block-fingerprint ...` and `portcullis fingerprint FILE`: operating the XDP guard of a
//! running daemon through its pinned maps (`[xdp] pin_dir`, default `/sys/fs/bpf/portcullis`), and computing
//! the ClientHello fingerprint the guard and the handshake inspector use.
//!
//! The maps are pinned while the daemon runs with XDP on; changes take effect on the next packet (the
//! program looks the maps up per packet). Needs root (or CAP_BPF) to open the pins.
//!
//! Exit codes: 0 done; 1 the pins cannot be opened or written (daemon not running with XDP, no privileges);
//! 2 bad arguments (an unparsable CIDR, fingerprint or knob) or, for `fingerprint`, a malformed ClientHello.
//!
//! # Layout
//! - this file: the arguments, the dispatch, exit codes, and opening the pins; [`status`]: `xdp status`;
//!   [`set`]: `xdp set KEY=VALUE` (knobs on a live host); [`drops`]: `xdp stats` and `xdp drops`;
//!   [`block`]: the CIDR blocklist; [`fingerprints`]: the fingerprint blocklist and `portcullis fingerprint FILE`.

mod block;
mod drops;
mod fingerprints;
mod set;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData};
use clap::{Args, Subcommand};
use portcullis_abi::{
    client_hello::fingerprint_hex,
    names::{
        DEFAULT_PIN_DIR, MAP_XDP_BLOCK_FP, MAP_XDP_BLOCK_FP_DROPS, MAP_XDP_BLOCK_NET,
        MAP_XDP_CONFIG, MAP_XDP_DROP_RING, MAP_XDP_MALFORMED, MAP_XDP_VERDICTS,
    },
    xdp_config::{XDP_CONFIG_KEY, XdpConfig},
};

use block::BlockAction;
use fingerprints::FingerprintAction;
pub use fingerprints::fingerprint;

/// `portcullis xdp ...`.
#[derive(Debug, Args)]
pub struct XdpArgs {
    /// The daemon's pin directory (`[xdp] pin_dir`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: XdpCommand,
}

#[derive(Debug, Subcommand)]
enum XdpCommand {
    /// Show the guard's configuration as the program sees it, and the blocklist size.
    Status,
    /// Show the packet count of every verdict since the program was loaded (summed over CPUs).
    Stats,
    /// Show who was dropped and why: the sampled drops (one in 64 per CPU, the newest 64 per CPU) of the last
    /// seconds, by source and verdict. Dropped packets reach neither a socket nor tcpdump; this is where they show.
    Drops {
        /// How far back to look, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Manage the source blocklist: TCP from a blocked prefix to a listener port is dropped.
    Block {
        #[command(subcommand)]
        action: BlockAction,
    },
    /// Manage the fingerprint blocklist: a complete ClientHello whose fingerprint (either variant, as
    /// `portcullis fingerprint` prints them) is listed is dropped.
    BlockFingerprint {
        #[command(subcommand)]
        action: FingerprintAction,
    },
    /// Turn knobs of the running guard, effective on the next packet: `enforce=false` (dry run: drops are only
    /// counted), `syn_rate=200`, `hello_burst=40`, ... (the keys and values of the config file's [xdp] section:
    /// enforce, syn_rate, syn_burst, flood_syn_rate, flood_syn_burst, known_ttl, malformed_penalty_ms, hello_rate,
    /// hello_burst, hello_resume_cost, source_prefix_v4, source_prefix_v6). All are checked before any is written. Lasts until the daemon restarts, which applies
    /// its config file again.
    Set {
        /// KEY=VALUE assignments.
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
}

/// `portcullis fingerprint FILE`.
#[derive(Debug, Args)]
pub struct FingerprintArgs {
    /// A file holding the first bytes a client sent (the TLS record with its ClientHello), e.g. the fixtures in
    /// `ebpf/portcullis-abi/fixtures/client_hello/`.
    file: PathBuf,
}

/// Runs `portcullis xdp ...`.
pub fn run(args: XdpArgs) -> ExitCode {
    let result = match args.command {
        XdpCommand::Status => status::status(&args.pin_dir),
        XdpCommand::Stats => drops::stats(&args.pin_dir),
        XdpCommand::Drops { seconds } => drops::drops(&args.pin_dir, seconds),
        XdpCommand::Block { action } => block::block(&args.pin_dir, action),
        XdpCommand::BlockFingerprint { action } => {
            fingerprints::block_fingerprint(&args.pin_dir, action)
        }
        XdpCommand::Set { assignments } => set::set(&args.pin_dir, &assignments),
    };
    report(result)
}

/// Errors that are the operator's arguments, not the system: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct BadArgument(pub(super) String);

pub(super) fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<BadArgument>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

pub(super) fn hex(value: u64) -> String {
    String::from_utf8_lossy(&fingerprint_hex(value)).into_owned()
}

/// Opens the pinned map `name` under `dir`.
pub(super) fn open(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open the pinned XDP map {}; is the daemon running with [xdp] interfaces set and this \
             pin_dir (--pin-dir)? Opening pins needs root or CAP_BPF",
            path.display()
        )
    })?;
    Ok(match name {
        MAP_XDP_VERDICTS | MAP_XDP_MALFORMED | MAP_XDP_BLOCK_FP_DROPS | MAP_XDP_DROP_RING => {
            Map::PerCpuArray(data)
        }
        MAP_XDP_BLOCK_NET => Map::LpmTrie(data),
        MAP_XDP_BLOCK_FP => Map::HashMap(data),
        _ => Map::Array(data),
    })
}

/// The pinned map `name` as a `T`, or `None` when it is not pinned: the running daemon predates it. `what` names
/// the map in the error when the pin holds something else.
pub(super) fn open_if_pinned<T>(dir: &Path, name: &str, what: &str) -> anyhow::Result<Option<T>>
where
    T: TryFrom<Map>,
    T::Error: std::error::Error + Send + Sync + 'static,
{
    if !dir.join(name).exists() {
        return Ok(None);
    }
    let map = T::try_from(open(dir, name)?)
        .with_context(|| format!("the pinned {what}: daemon and CLI versions differ"))?;
    Ok(Some(map))
}

pub(super) fn config(dir: &Path) -> anyhow::Result<XdpConfig> {
    read_config(&config_map(dir)?)
}

/// The pinned config map (`status` reads it, `set` writes it).
pub(super) fn config_map(dir: &Path) -> anyhow::Result<Array<MapData, XdpConfig>> {
    open(dir, MAP_XDP_CONFIG)?.try_into().context(
        "the pinned config map is not an array of XdpConfig: daemon and CLI versions differ",
    )
}

/// The config the program reads now.
pub(super) fn read_config(map: &Array<MapData, XdpConfig>) -> anyhow::Result<XdpConfig> {
    map.get(&XDP_CONFIG_KEY, 0)
        .context("cannot read the pinned config map")
}
