//! `portcullis xdp block-fingerprint add|del|list` and `portcullis fingerprint FILE`: the fingerprint blocklist.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use clap::Subcommand;
use portcullis_abi::{
    client_hello::{
        self,
        fingerprint::{FORMAT, shape_of},
    },
    fp_shapes::{SHAPE_WAYS, ShapeSet},
    names::{
        MAP_XDP_BLOCK_FP, MAP_XDP_BLOCK_FP_COUNT, MAP_XDP_BLOCK_FP_DROPS, MAP_XDP_BLOCK_FP_SHAPES,
    },
};

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum FingerprintAction {
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

pub(super) fn fingerprint_count(dir: &Path) -> anyhow::Result<Array<MapData, u32>> {
    open(dir, MAP_XDP_BLOCK_FP_COUNT)?.try_into().context(
        "the pinned count of blocked fingerprints is not an array of u32: daemon and CLI versions differ",
    )
}

/// The pinned blocklist by shape, or `None` when the running daemon predates it (and format 2: its program hashes
/// every complete ClientHello into an older fingerprint).
pub(super) fn fingerprint_shapes(dir: &Path) -> anyhow::Result<Option<Array<MapData, ShapeSet>>> {
    open_if_pinned(
        dir,
        MAP_XDP_BLOCK_FP_SHAPES,
        "blocklist by shape is not an array of 64-byte sets",
    )
}

/// The pinned drop counters of the blocked fingerprints, or `None` when the running daemon predates them.
pub(super) fn fingerprint_drops(dir: &Path) -> anyhow::Result<Option<PerCpuArray<MapData, u64>>> {
    open_if_pinned(
        dir,
        MAP_XDP_BLOCK_FP_DROPS,
        "fingerprint drop counters are not a per-CPU array of u64",
    )
}

pub(super) fn fingerprint_blocklist(dir: &Path) -> anyhow::Result<HashMap<MapData, u64, u8>> {
    open(dir, MAP_XDP_BLOCK_FP)?.try_into().context(
        "the pinned fingerprint blocklist is not a hash of u64 keys: daemon and CLI versions differ",
    )
}

/// Rebuilds the count and shapes of the fingerprint blocklist after a change and stores them for the XDP program:
/// while the count is 0 the program computes no fingerprint, and it hashes only ClientHellos of a shape with blocked
/// fingerprints, so an added fingerprint would not block without them (`xdp::fp_index`). A daemon from before the
/// shapes has no shape map: only the count is stored, and this returns `false` (its program computes format-1
/// fingerprints).
pub(super) fn store_fingerprint_index(
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

pub(super) fn block_fingerprint(dir: &Path, action: FingerprintAction) -> anyhow::Result<()> {
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
pub(super) fn parse_fingerprint(text: &str) -> anyhow::Result<u64> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if digits.len() != 16 {
        bail!(BadArgument(format!(
            "`{text}` is not a fingerprint: expected 16 hex digits as `portcullis fingerprint` prints"
        )));
    }
    u64::from_str_radix(digits, 16)
        .map_err(|_| BadArgument(format!("`{text}` is not a fingerprint: not hex")).into())
}

#[cfg(test)]
mod tests {

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
}
