//! The key of the budget tables' set hash (`xdp_budget_seed`, see `portcullis_abi::limits::BudgetSet`).
//!
//! Drawn at random by the first start that finds it 0 and pinned for good with the tables, so a restart keeps
//! every source in its set (and its spent budget with it). Secret, so a client cannot choose addresses that
//! share a set and push each other out in turn for fresh bursts; never logged.

use std::borrow::BorrowMut;

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use portcullis_abi::names::MAP_XDP_BUDGET_SEED;
use ring::rand::{SecureRandom as _, SystemRandom};

/// Draws the key into `map` unless it holds one already (non-zero).
///
/// # Errors
/// The map cannot be read or written (not the one-element array this version pins), or the system's random
/// source failed.
pub(crate) fn ensure<T: BorrowMut<MapData>>(map: &mut Array<T, u64>) -> anyhow::Result<()> {
    let current = map
        .get(&0, 0)
        .with_context(|| format!("cannot read map `{MAP_XDP_BUDGET_SEED}`"))?;
    if current != 0 {
        return Ok(());
    }
    let seed = draw()?;
    map.set(0, seed, 0)
        .with_context(|| format!("cannot write map `{MAP_XDP_BUDGET_SEED}`"))
}

/// A random non-zero `u64` (0 means "none drawn yet").
fn draw() -> anyhow::Result<u64> {
    let rng = SystemRandom::new();
    for _ in 0..8 {
        let mut bytes = [0u8; 8];
        rng.fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("the system random source failed (getrandom)"))?;
        let seed = u64::from_ne_bytes(bytes);
        if seed != 0 {
            return Ok(seed);
        }
    }
    anyhow::bail!("the system random source returned only zeros")
}

#[cfg(test)]
mod tests {
    use super::draw;

    #[test]
    fn draws_differ_and_are_not_zero() {
        let (a, b) = (draw().expect("random"), draw().expect("random"));
        assert_ne!(a, 0);
        assert_ne!(a, b, "two 64-bit draws collide with probability 2^-64");
    }
}
