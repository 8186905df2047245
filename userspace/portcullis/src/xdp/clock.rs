//! The clock the XDP budgets read: jiffies, given the kernel's tick (`XdpConfig::jiffy_ns`), so that reading the
//! time is one load in the program instead of a `bpf_ktime_get_coarse_ns` call (`portcullis_abi::xdp_config::clock_ns`).

use nix::time::{ClockId, clock_getres, clock_gettime};
use portcullis_abi::xdp_config::jiffies_clock;

/// `(jiffy_ns, jiffies_origin)` for this kernel: the tick is the resolution of CLOCK_MONOTONIC_COARSE (the kernel
/// reports `TICK_NSEC`). `(0, 0)`, which has the program call the clock helper instead, if the resolution is not
/// a tick of at most one second.
pub(crate) fn jiffies() -> (u32, u32) {
    match clock_getres(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(tick) if tick.tv_sec() == 0 && tick.tv_nsec() > 0 => {
            jiffies_clock(u32::try_from(tick.tv_nsec()).unwrap_or(0))
        }
        other => {
            tracing::warn!(
                resolution = ?other,
                "CLOCK_MONOTONIC_COARSE does not report a tick; the XDP budgets call bpf_ktime_get_coarse_ns instead"
            );
            (0, 0)
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock the drop samples' stamps follow (to within a tick).
///
/// # Errors
/// The kernel refused the read.
pub(crate) fn monotonic_ns() -> nix::Result<u64> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC)?;
    Ok(u64::try_from(std::time::Duration::from(now).as_nanos()).unwrap_or(u64::MAX))
}
