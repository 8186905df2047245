//! `portcullis xdp status|stats|drops|set ...|block ...|block-fingerprint ...` and `portcullis fingerprint FILE`: operating the XDP guard of a
//! running daemon through its pinned maps (`[xdp] pin_dir`, default `/sys/fs/bpf/portcullis`), and computing
//! the ClientHello fingerprint the guard and the handshake inspector use.
//!
//! The maps are pinned while the daemon runs with XDP on; changes take effect on the next packet (the
//! program looks the maps up per packet). Needs root (or CAP_BPF) to open the pins.
//!
//! Exit codes: 0 done; 1 the pins cannot be opened or written (daemon not running with XDP, no privileges);
//! 2 bad arguments (an unparsable CIDR, fingerprint or knob) or, for `fingerprint`, a malformed ClientHello.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use clap::{Args, Subcommand};
use portcullis_abi::{
    block_filter::FILTER_BITS,
    client_hello::{
        self,
        fingerprint::{FORMAT, SHAPES, shape_of},
        fingerprint_hex,
    },
    drop_samples::{DROP_SAMPLES, DropRing, SAMPLE_EVERY},
    fp_shapes::{SHAPE_WAYS, ShapeSet},
    limits::{ADDR_LEN, block_entry, block_network},
    names::{
        DEFAULT_PIN_DIR, MAP_XDP_BLOCK_FP, MAP_XDP_BLOCK_FP_COUNT, MAP_XDP_BLOCK_FP_DROPS,
        MAP_XDP_BLOCK_FP_SHAPES, MAP_XDP_BLOCK_NET, MAP_XDP_BLOCK_NET_FILTER, MAP_XDP_CONFIG,
        MAP_XDP_DROP_RING, MAP_XDP_HELLO_PROG, MAP_XDP_MALFORMED, MAP_XDP_VERDICTS, PROG_XDP_HELLO,
    },
    xdp_config::{XDP_CONFIG_KEY, XdpConfig},
};

use crate::xdp::counters::{malformed_totals, verdict_totals};

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
    /// enforce, syn_rate, syn_burst, hello_rate, hello_burst, hello_resume_cost, source_prefix_v4,
    /// source_prefix_v6). All are checked before any is written. Lasts until the daemon restarts, which applies
    /// its config file again.
    Set {
        /// KEY=VALUE assignments.
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FingerprintAction {
    /// Block a fingerprint: the 16 hex digits `portcullis fingerprint` prints, e.g. `027cc046e3adee47` (this
    /// version's fingerprints start with `02`, their format).
    Add {
        /// The fingerprint.
        hex: String,
    },
    /// Unblock a fingerprint added before (any 16 hex digits: values of an older format can be removed too).
    Del {
        /// The fingerprint.
        hex: String,
    },
    /// List blocked fingerprints, one per line, each with the ClientHellos dropped for it since it was blocked (or
    /// the daemon started); a value of another format is marked, as it blocks nothing.
    List,
}

#[derive(Debug, Subcommand)]
enum BlockAction {
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
        XdpCommand::Status => status(&args.pin_dir),
        XdpCommand::Stats => stats(&args.pin_dir),
        XdpCommand::Drops { seconds } => drops(&args.pin_dir, seconds),
        XdpCommand::Block { action } => block(&args.pin_dir, action),
        XdpCommand::BlockFingerprint { action } => block_fingerprint(&args.pin_dir, action),
        XdpCommand::Set { assignments } => set(&args.pin_dir, &assignments),
    };
    report(result)
}

/// Runs `portcullis fingerprint FILE`.
pub fn fingerprint(args: FingerprintArgs) -> ExitCode {
    let bytes = match std::fs::read(&args.file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.file.display());
            return ExitCode::from(1);
        }
    };
    match client_hello::parse(&bytes) {
        Err(reason) => {
            eprintln!(
                "error: {} is not a well-formed ClientHello: {reason} ({})",
                args.file.display(),
                reason.name()
            );
            ExitCode::from(2)
        }
        Ok(summary) => match summary.fingerprint {
            Some(fp) => {
                println!("ordered   {}", hex(fp.ordered));
                println!("unordered {}", hex(fp.unordered));
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "error: {} holds only part of a ClientHello (it ends in {}); a fingerprint needs all of it",
                    args.file.display(),
                    summary.stage.name()
                );
                ExitCode::from(2)
            }
        },
    }
}

/// Errors that are the operator's arguments, not the system: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadArgument(String);

fn report(result: anyhow::Result<()>) -> ExitCode {
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

fn hex(value: u64) -> String {
    String::from_utf8_lossy(&fingerprint_hex(value)).into_owned()
}

/// Opens the pinned map `name` under `dir`.
fn open(dir: &Path, name: &str) -> anyhow::Result<Map> {
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

fn config(dir: &Path) -> anyhow::Result<XdpConfig> {
    read_config(&config_map(dir)?)
}

/// The pinned config map (`status` reads it, `set` writes it).
fn config_map(dir: &Path) -> anyhow::Result<Array<MapData, XdpConfig>> {
    open(dir, MAP_XDP_CONFIG)?.try_into().context(
        "the pinned config map is not an array of XdpConfig: daemon and CLI versions differ",
    )
}

/// The config the program reads now.
fn read_config(map: &Array<MapData, XdpConfig>) -> anyhow::Result<XdpConfig> {
    map.get(&XDP_CONFIG_KEY, 0)
        .context("cannot read the pinned config map")
}

/// How long `set` waits before reading its write back (see there).
const SET_VERIFY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes that `set` tries before it gives up.
const SET_ATTEMPTS: usize = 3;

/// `portcullis xdp set KEY=VALUE ...`: every assignment parsed and checked first (all or none), then one write
/// of the config map value read just before (keeping what the daemon owns in it: ports, SYN shed fractions).
/// The daemon's admission control rewrites the same value while it sheds (a read-modify-write of its own), so
/// the write is read back a moment later and made again if one of the two was lost.
fn set(dir: &Path, assignments: &[String]) -> anyhow::Result<()> {
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

fn blocklist(dir: &Path) -> anyhow::Result<LpmTrie<MapData, [u8; ADDR_LEN], u8>> {
    open(dir, MAP_XDP_BLOCK_NET)?.try_into().context(
        "the pinned blocklist is not an LPM trie of 16-byte keys: daemon and CLI versions differ",
    )
}

/// The pinned prefilter of the blocklist (`xdp::block_filter`); `None` when the blocklist is pinned without it: no
/// daemon runs (it is pinned per run; the next start rebuilds it from the trie) or the running daemon's program
/// predates it (it looks every source up in the trie).
fn block_filter(dir: &Path) -> anyhow::Result<Option<Array<MapData, u64>>> {
    if !dir.join(MAP_XDP_BLOCK_NET_FILTER).exists() && dir.join(MAP_XDP_BLOCK_NET).exists() {
        return Ok(None);
    }
    let map = open(dir, MAP_XDP_BLOCK_NET_FILTER)?.try_into().context(
        "the pinned prefilter of the blocklist is not an array of u64: daemon and CLI versions differ",
    )?;
    Ok(Some(map))
}

fn status(dir: &Path) -> anyhow::Result<()> {
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

/// The ClientHello check line of `portcullis xdp status`: whether the XDP program has its ClientHello program to
/// tail-call (without it first payload segments pass unjudged).
fn hello_status(dir: &Path) -> anyhow::Result<()> {
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
fn fingerprint_status(dir: &Path) -> anyhow::Result<()> {
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

fn ppm_percent(ppm: u32) -> String {
    format!("{:.1}%", f64::from(ppm) / 10_000.0)
}

fn fingerprint_count(dir: &Path) -> anyhow::Result<Array<MapData, u32>> {
    open(dir, MAP_XDP_BLOCK_FP_COUNT)?.try_into().context(
        "the pinned count of blocked fingerprints is not an array of u32: daemon and CLI versions differ",
    )
}

/// The pinned map `name` as a `T`, or `None` when it is not pinned: the running daemon predates it. `what` names
/// the map in the error when the pin holds something else.
fn open_if_pinned<T>(dir: &Path, name: &str, what: &str) -> anyhow::Result<Option<T>>
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

/// The pinned blocklist by shape, or `None` when the running daemon predates it (and format 2: its program hashes
/// every complete ClientHello into an older fingerprint).
fn fingerprint_shapes(dir: &Path) -> anyhow::Result<Option<Array<MapData, ShapeSet>>> {
    open_if_pinned(
        dir,
        MAP_XDP_BLOCK_FP_SHAPES,
        "blocklist by shape is not an array of 64-byte sets",
    )
}

/// The pinned drop counters of the blocked fingerprints, or `None` when the running daemon predates them.
fn fingerprint_drops(dir: &Path) -> anyhow::Result<Option<PerCpuArray<MapData, u64>>> {
    open_if_pinned(
        dir,
        MAP_XDP_BLOCK_FP_DROPS,
        "fingerprint drop counters are not a per-CPU array of u64",
    )
}

fn fingerprint_blocklist(dir: &Path) -> anyhow::Result<HashMap<MapData, u64, u8>> {
    open(dir, MAP_XDP_BLOCK_FP)?.try_into().context(
        "the pinned fingerprint blocklist is not a hash of u64 keys: daemon and CLI versions differ",
    )
}

/// Rebuilds the count and shapes of the fingerprint blocklist after a change and stores them for the XDP program:
/// while the count is 0 the program computes no fingerprint, and it hashes only ClientHellos of a shape with blocked
/// fingerprints, so an added fingerprint would not block without them (`xdp::fp_index`). A daemon from before the
/// shapes has no shape map: only the count is stored, and this returns `false` (its program computes format-1
/// fingerprints).
fn store_fingerprint_index(
    dir: &Path,
    blocklist: &HashMap<MapData, u64, u8>,
) -> anyhow::Result<bool> {
    let mut count = fingerprint_count(dir)?;
    let index = crate::xdp::fp_index::of(blocklist);
    match fingerprint_shapes(dir)? {
        Some(mut shapes) => {
            let mut drops = fingerprint_drops(dir)?;
            crate::xdp::fp_index::store(&index, &mut count, &mut shapes, drops.as_mut())?;
            Ok(true)
        }
        None => {
            count
                .set(0, index.count, 0)
                .with_context(|| format!("cannot write map `{MAP_XDP_BLOCK_FP_COUNT}`"))?;
            Ok(false)
        }
    }
}

fn block_fingerprint(dir: &Path, action: FingerprintAction) -> anyhow::Result<()> {
    match action {
        FingerprintAction::Add { hex: text } => {
            let value = parse_fingerprint(&text)?;
            if shape_of(value).is_none() {
                bail!(BadArgument(format!(
                    "`{text}` is not a fingerprint of this version's format: its first two digits must be \
                     0{FORMAT} (format {FORMAT}, since 2026-11-23; older fingerprints never match). Print the \
                     client's fingerprint again with `portcullis fingerprint`"
                )));
            }
            let mut blocklist = fingerprint_blocklist(dir)?;
            blocklist
                .insert(value, 1, 0)
                .with_context(|| format!("cannot block fingerprint {text} (is the list full?)"))?;
            if !store_fingerprint_index(dir, &blocklist)? {
                eprintln!(
                    "warning: the running daemon's XDP program predates fingerprint format {FORMAT} (no \
                     {MAP_XDP_BLOCK_FP_SHAPES} is pinned): it computes older fingerprints, so {text} is stored but \
                     blocks nothing until the daemon runs this version"
                );
            }
        }
        FingerprintAction::Del { hex: text } => {
            let value = parse_fingerprint(&text)?;
            let mut blocklist = fingerprint_blocklist(dir)?;
            blocklist
                .remove(&value)
                .with_context(|| format!("fingerprint {text} is not blocked"))?;
            store_fingerprint_index(dir, &blocklist)?;
        }
        FingerprintAction::List => {
            // Drops per fingerprint, where the running daemon counts them.
            let counted = match (fingerprint_shapes(dir)?, fingerprint_drops(dir)?) {
                (Some(shapes), Some(drops)) => {
                    Some((crate::xdp::fp_index::load_shapes(&shapes)?, drops))
                }
                _ => None,
            };
            for key in fingerprint_blocklist(dir)?.keys() {
                let value = key.context("cannot read the fingerprint blocklist")?;
                if shape_of(value).is_none() {
                    println!(
                        "{}  not format {FORMAT}: blocks nothing; `block-fingerprint del` it",
                        hex(value)
                    );
                    continue;
                }
                let Some((sets, drops)) = &counted else {
                    println!("{}", hex(value));
                    continue;
                };
                match crate::xdp::fp_index::drops_of(sets, drops, value)? {
                    Some(n) => println!("{}  dropped {n}", hex(value)),
                    None => println!(
                        "{}  dropped ? (its shape holds more than {SHAPE_WAYS} blocked fingerprints, or the index \
                         is stale: counted in the verdict total only)",
                        hex(value)
                    ),
                }
            }
        }
    }
    Ok(())
}

/// 16 hex digits (an optional `0x` accepted) as a fingerprint.
fn parse_fingerprint(text: &str) -> anyhow::Result<u64> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if digits.len() != 16 {
        bail!(BadArgument(format!(
            "`{text}` is not a fingerprint: expected 16 hex digits as `portcullis fingerprint` prints"
        )));
    }
    u64::from_str_radix(digits, 16)
        .map_err(|_| BadArgument(format!("`{text}` is not a fingerprint: not hex")).into())
}

fn stats(dir: &Path) -> anyhow::Result<()> {
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
fn verdict_map(dir: &Path) -> anyhow::Result<PerCpuArray<MapData, u64>> {
    open(dir, MAP_XDP_VERDICTS)?.try_into().context(
        "the pinned verdict map is not a per-CPU array of u64: daemon and CLI versions differ",
    )
}

/// `portcullis xdp drops`: the sampled drops of the last `seconds`, by source and verdict (`xdp::drop_report`).
fn drops(dir: &Path, seconds: u64) -> anyhow::Result<()> {
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

fn block(dir: &Path, action: BlockAction) -> anyhow::Result<()> {
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
fn parse_cidr(cidr: &str) -> anyhow::Result<(u32, [u8; ADDR_LEN])> {
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
    fn fingerprints_parse_as_printed() {
        assert_eq!(
            parse_fingerprint("0123456789abcdef").expect("valid"),
            0x0123_4567_89ab_cdef
        );
        assert_eq!(
            parse_fingerprint("0xFFFFFFFFFFFFFFFF").expect("valid"),
            u64::MAX
        );
        assert_eq!(hex(0x0123_4567_89ab_cdef), "0123456789abcdef");
        for bad in ["", "123", "0123456789abcdeg", "0123456789abcdef0"] {
            let e = parse_fingerprint(bad).expect_err(bad);
            assert!(e.downcast_ref::<BadArgument>().is_some(), "{bad}: {e}");
        }
    }

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
