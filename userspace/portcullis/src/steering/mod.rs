//! Reuseport steering, userspace side: the SK_REUSEPORT program picks each new connection's worker socket by
//! flow hash, skipping workers marked saturated (`ebpf/portcullis-ebpf/src/reuseport.rs`, pick logic in
//! `portcullis_abi::steering`).
//!
//! # Layout
//! - [`cli`]: `portcullis steering status|saturate|clear`, operating the pinned maps of a running daemon.
//! - [`config`]: the `[steering]` config section.
//! - [`loader`]: [`Steering`], which loads the program from the embedded object (independently of XDP), fills
//!   the socket array with every worker's socket of every listener (key `group * MAX_WORKERS + worker`),
//!   pins `portcullis_rp`, `rp_config`, `rp_saturated`, `rp_outcomes`, `rp_socks` (for a successor, `upgrade`) under `[xdp] pin_dir` and attaches.
//! - [`saturation`]: [`SaturatedWorkers`], the saturated-worker bitmask map (daemon hook and CLI).
//! - [`hook`]: what admission control calls as a worker's in-flight count changes (mark at the limit, unmark
//!   at 3/4); per worker thread.
//! - [`counters`]: the outcome counters and the `/metrics` collector.
//!
//! # Invariants
//! - Fail open: if anything fails before the program is attached, the daemon logs it and the kernel's hash
//!   spreads connections; the program itself never drops (all workers saturated = kernel hash).
//! - The program stays attached until the listening sockets close; pins are removed when [`Steering`] drops.

pub mod cli;
pub mod config;
pub mod counters;
pub mod hook;
pub mod loader;
pub mod saturation;

pub use config::SteeringConfig;
pub use counters::OutcomeCounters;
pub use hook::{SaturationMap, in_flight_changed, register_worker};
pub use loader::{Steering, SteeringSettings};
pub use saturation::SaturatedWorkers;
