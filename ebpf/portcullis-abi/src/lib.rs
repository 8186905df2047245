//! The kernel/user ABI of portcullis.
//!
//! # Layout
//! - [`names`]: program, map and pin names, shared by the BPF crate and the daemon.
//! - [`verdict`]: the XDP verdict counters, a `#[repr(u32)]` enum indexing a per-CPU array.
//!
//! Everything here is `no_std`, allocation-free and compiles for `bpfel-unknown-none` as well as the host.
#![no_std]

pub mod client_hello;
