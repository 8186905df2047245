//! `portcullis xdp status|stats|block ...` and `portcullis fingerprint FILE`: operating the XDP guard of a
//! running daemon through its pinned maps (`[xdp] pin_dir`, default `/sys/fs/bpf/portcullis`), and computing
//! the ClientHello fingerprint the guard and the handshake inspector use.
//!
//! The maps are pinned while the daemon runs with XDP on; changes take effect on the next packet (the
//! program looks the maps up per packet). Needs root (or CAP_BPF) to open the pins.
//!
//! Exit codes: 0 done; 1 the pins cannot be opened or written (daemon not running with XDP, no privileges);
//! 2 bad arguments (an unparsable CIDR) or, for `fingerprint`, a malformed ClientHello.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use aya::maps::{Array, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use clap::{Args, Subcommand};
use portcullis_abi::{
    client_hello::{self, fingerprint_hex},
    limits::{ADDR_LEN, block_entry, block_network},
    names::{DEFAULT_PIN_DIR, MAP_XDP_BLOCK_NET, MAP_XDP_CONFIG, MAP_XDP_VERDICTS},
    verdict::Verdict,
    xdp_config::{XDP_CONFIG_KEY, XdpConfig},
};

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
    /// Manage the source blocklist: TCP from a blocked prefix to a listener port is dropped.
    Block {
        #[command(subcommand)]
        action: BlockAction,
    },
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
        XdpCommand::Block { action } => block(&args.pin_dir, action),
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
        MAP_XDP_VERDICTS => Map::PerCpuArray(data),
        MAP_XDP_BLOCK_NET => Map::LpmTrie(data),
        _ => Map::Array(data),
    })
}

fn config(dir: &Path) -> anyhow::Result<XdpConfig> {
    let map: Array<MapData, XdpConfig> = open(dir, MAP_XDP_CONFIG)?.try_into().context(
        "the pinned config map is not an array of XdpConfig: daemon and CLI versions differ",
    )?;
    map.get(&XDP_CONFIG_KEY, 0)
        .context("cannot read the pinned config map")
}

fn blocklist(dir: &Path) -> anyhow::Result<LpmTrie<MapData, [u8; ADDR_LEN], u8>> {
    open(dir, MAP_XDP_BLOCK_NET)?.try_into().context(
        "the pinned blocklist is not an LPM trie of 16-byte keys: daemon and CLI versions differ",
    )
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let config = config(dir)?;
    let blocked = blocklist(dir)?.keys().count();
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
    println!("blocked prefixes {blocked}");
    Ok(())
}

fn stats(dir: &Path) -> anyhow::Result<()> {
    let map: PerCpuArray<MapData, u64> = open(dir, MAP_XDP_VERDICTS)?.try_into().context(
        "the pinned verdict map is not a per-CPU array of u64: daemon and CLI versions differ",
    )?;
    for verdict in Verdict::ALL {
        let total: u64 = map
            .get(&verdict.index(), 0)
            .with_context(|| format!("cannot read counter {}", verdict.name()))?
            .iter()
            .fold(0, |sum, v| sum.wrapping_add(*v));
        println!("{:<22} {total}", verdict.name());
    }
    Ok(())
}

fn block(dir: &Path, action: BlockAction) -> anyhow::Result<()> {
    match action {
        BlockAction::Add { cidr } => {
            let (bits, addr) = parse_cidr(&cidr)?;
            blocklist(dir)?
                .insert(&Key::new(bits, addr), 1, 0)
                .with_context(|| format!("cannot add {cidr} to the blocklist (is it full?)"))?;
        }
        BlockAction::Del { cidr } => {
            let (bits, addr) = parse_cidr(&cidr)?;
            blocklist(dir)?
                .remove(&Key::new(bits, addr))
                .with_context(|| format!("{cidr} is not in the blocklist"))?;
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
