//! The XDP handshake guard, userspace side: loads the embedded BPF object, attaches it, exposes its counters.
//!
//! # Layout
//! - [`cli`]: `portcullis xdp ...` and `portcullis fingerprint FILE`, operating a running daemon's guard through its
//!   pins.
//! - [`config`]: the `[xdp]` config section ([`XdpSection`]), [`XdpMode`], and the one mapping of its knobs onto the
//!   ABI's `XdpConfig` the program reads.
//! - [`object`]: the BPF object embedded at build time (see `build.rs`); the steering loader
//!   (`crate::steering`) loads it too, and pins with [`pins`].
//! - [`guard`]: [`XdpGuard`], which owns the loaded program for the daemon's lifetime and detaches on drop.
//! - [`hello_prog`]: the ClientHello program the XDP program tail-calls, put in its program array.
//! - [`attach`]: attaching to one interface in the requested mode (native, generic, or native then generic).
//! - [`pins`]: the pin directory on bpffs and the map pins the guard creates and removes.
//! - [`budget_seed`]: the random key of the budget tables' slot hash, drawn once and pinned with them.
//! - [`fp_index`]: the count and the shapes of the blocked fingerprints, rebuilt from the blocklist, which let the
//!   program skip fingerprinting while none is blocked and hash only ClientHellos of a blocked shape (the CLI
//!   shares it).
//! - [`clock`]: the kernel's tick, so the budgets read the time as jiffies (one load) instead of a helper call.
//! - [`block_filter`]: the prefilter of the CIDR blocklist, rebuilt from the trie, which lets the program skip the
//!   trie lookup for sources no blocked prefix can cover (the CLI shares it).
//! - [`counters`]: [`XdpCounters`], a cheap handle that sums the per-CPU verdict counters.
//! - [`shed`]: [`SynShed`], the SYN shed fraction admission control turns while it sheds.
//! - [`refusal`]: what to say when the kernel refuses a program with "permission denied": the verifier's
//!   verdict when it left a log, else the privileges the daemon needs (the steering loader uses it too).
//! - [`logs`]: forwards the BPF program's aya-log records to `tracing` from a small thread.
//! - `tests/` (tests only): `run`, the ABI's packet fixture table through the loaded program (`BPF_PROG_TEST_RUN`);
//!   `hello`, SYN then first segment of real, crafted-malformed, cut-short, split and blocked ClientHellos (the
//!   ClientHello check, flow tracking, the ClientHello budget); `differential`, prefixes and seeded mutants of the
//!   captured ClientHellos judged by the loaded program and by the host build of the parser, which must agree.
//!
//! # Invariants
//! - The links, the counter and config pins (`xdp_verdicts`, `xdp_config`) and the pin directory (if it made it
//!   and it is empty) are removed by [`XdpGuard::detach`] or its `Drop`. A crash leaves them behind; the next
//!   start replaces them with a warning. The links are bpf_links owned by this process: the kernel detaches them
//!   when the process dies, whatever happens.
//! - State pins (`xdp_syn_budget`, `xdp_ch_budget` and their hash key `xdp_budget_seed`, `xdp_block_net`,
//!   `xdp_block_fp`) are never removed: the next
//!   start reuses them (after checking their key and value sizes), so budgets and blocklists survive restarts and
//!   upgrades. `xdp_malformed`, `xdp_flows`, `xdp_block_fp_n` and `xdp_block_fp_sh` (the blocklist's count and
//!   shapes, rebuilt at start), `xdp_fp_drops` (drops per blocked fingerprint), `xdp_block_pre` (the CIDR
//!   blocklist's prefilter, rebuilt at start), `xdp_drop_ring` (the sampled drops, `drop_report`) and `xdp_hello_prog` (the program array holding the ClientHello
//!   program `portcullis_ch`, pinned beside `portcullis_xdp`) are pinned per run like the verdict counters.
//! - The program fails open: it drops only blocked sources and fingerprints, over-budget SYNs and ClientHellos and
//!   proven-malformed ClientHellos (never one cut short), and `[xdp] enforce = false` turns even that into
//!   counting (on a live host too: `portcullis xdp set enforce=false`, `knobs`).

mod attach;
mod block_filter;
mod budget_seed;
pub mod cli;
mod clock;
mod config;
mod counters;
mod drop_report;
mod fp_index;
mod guard;
mod hello_prog;
mod knobs;
mod logs;
pub(crate) mod object;
pub(crate) mod pins;
pub(crate) mod refusal;
mod shed;
#[cfg(test)]
mod tests;

pub use config::{XdpMode, XdpSection};
pub use counters::XdpCounters;
pub(crate) use counters::register_attached;
pub use guard::XdpGuard;
pub use shed::SynShed;
