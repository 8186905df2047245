//! The kernel/user ABI of portcullis.
//!
//! # Layout
//! - [`names`]: program, map and pin names, shared by the BPF crate and the daemon.
//! - [`verdict`]: the XDP verdict counters, a `#[repr(u32)]` enum indexing a per-CPU array.
//! - [`xdp_config`]: the `#[repr(C)]` configuration the daemon writes into the XDP config map (listener ports,
//!   SYN budget, source prefix lengths, enforcement).
//! - [`flow`]: the key of the connection tracking map (a SYN records a flow, its first segment is parsed).
//! - [`fp_shapes`]: the fingerprint blocklist indexed by shape, which spares the XDP program the hashing of most
//!   ClientHellos and the hash map lookups of the rest.
//! - [`drop_samples`]: one drop in 64 per CPU, its source, verdict and time, for `portcullis xdp drops`.
//! - [`limits`]: per-source token buckets and the blocklist key, the map layouts and the arithmetic.
//! - [`steering`]: the reuseport steering pick (flow hash, skip saturated workers), its config and outcome
//!   counters, shared by the SK_REUSEPORT program and the daemon.
//! - [`known`]: the sources that recently sent a ClientHello the guard passed, which pass a spoofed-source SYN
//!   flood that the per-CPU budget of unknown sources' SYNs stops.
//! - [`shed`]: the tags of the flows whose SYN load shedding dropped, to tell their retransmissions apart.
//! - [`packet`]: the Ethernet/IP/TCP classifier the XDP program runs, unit-tested here on the host.
//! - `hello_fixtures` (host only: `fixtures` feature or tests): crafted and captured ClientHellos, one malformed
//!   input per reason, shared by the parser's tests and the daemon's BPF_PROG_TEST_RUN test.
//! - `packet_fixtures` (host only: `fixtures` feature or tests): the classifier's fixture table, also run through the
//!   loaded BPF program by the daemon's privileged test.
//!
//! Everything but `packet_fixtures` is `no_std`, allocation-free and compiles for `bpfel-unknown-none` as well as
//! the host.
//! The `user` feature implements `aya::Pod` for the shared structs, for the daemon. The `fixtures` feature adds the
//! fixture tables, for tests, benchmarks and fuzzing only: the daemon's build never carries them.
#![no_std]

#[cfg(any(test, feature = "user", feature = "fixtures"))]
extern crate alloc;

pub mod block_filter;
pub mod client_hello;
pub mod drop_samples;
pub mod flow;
pub mod fp_shapes;
#[cfg(any(test, feature = "fixtures"))]
pub mod hello_fixtures;
pub mod known;
pub mod limits;
pub mod names;
pub mod packet;
#[cfg(any(test, feature = "fixtures"))]
pub mod packet_fixtures;
pub mod shed;
pub mod steering;
pub mod verdict;
pub mod xdp_config;
