//! portcullis: an edge TLS front end that stays fast when handshakes storm in.
//!
//! # Layout
//! Modules are private unless the binary, the integration tests or the benchmarks use them (`cli`, `config`,
//! `process`, `proxy`, `tickets`, `tls`, `xdp`); the doc links below to private modules read as plain names.
//!
//! - [`cli`]: the command line and exit codes; [`config`]: the typed TOML config.
//! - [`daemon`]: start-up order and shutdown; [`shutdown`]: what the signals do; [`reload`]: SIGHUP and
//!   certificate file watching; [`process`]: the drop to an unprivileged user with no capability after start-up.
//! - [`listener`]: SO_REUSEPORT socket groups; [`worker`]: pinned per-core threads with their own runtime;
//!   [`memory`]: free heap pages given back to the kernel once the workers go quiet.
//! - [`connection`]: one connection from accept to close; [`http`]: `mode = "http"` listeners (HTTP/1.1 and h2
//!   on hyper, the per-worker upstream pool, access log, request metrics).
//! - [`limits`]: connection caps (process, worker, source), first-byte timeout, keepalive, lifetime.
//! - [`offload`]: the QAT-style offload engine (bounded rings on crypto threads); [`admission`]: admission
//!   control in front of it (cost classes, queue-delay controller, shedding).
//! - [`handshake`]: the handshake stage and its seam (read ClientHello -> inspect -> engine -> finish).
//! - [`tls`]: certificates, OCSP staples, SNI choice, the rustls `ServerConfig`; [`tls_conn`]: one TLS connection
//!   (socket + rustls) and its I/O; [`secret_file`]: reading key files (owner, mode, size checked on the open
//!   file; zeroized buffers).
//! - [`proxy`]: upstream pool, PROXY v2, the plaintext relay; [`demo_upstream`]: the built-in demo backend.
//! - [`metrics`] and [`admin_http`]: Prometheus metrics and `/metrics`, `/healthz`, `/readyz`, `/fingerprints`
//!   ([`seen_fingerprints`]: the most frequent ClientHello fingerprints lately, for operators to block).
//! - [`xdp`]: the XDP program's loader, pins and counters; [`notify`]: sd_notify readiness.
//! - [`upgrade`]: zero-downtime binary upgrade: the control socket, the socket and XDP-link handoff to a
//!   successor (`portcullis upgrade`, `run --takeover`).
//! - [`steering`]: the SK_REUSEPORT program that picks each connection's worker, skipping saturated ones
//!   (`steering::cli`: `portcullis steering status|saturate|clear`).
//! - [`tickets`]: fleet-wide session resumption (ticket keys from a watched directory, the session cache;
//!   `tickets::cli`: `portcullis keys init|rotate|prune|list`).
//! - Each operator CLI lives in the module it drives: `xdp::cli` is `portcullis xdp ...` and
//!   `portcullis fingerprint`.

mod admin_http;
mod admission;
pub mod cli;
pub mod config;
mod connection;
mod daemon;
mod demo_upstream;
mod handshake;
mod http;
mod limits;
mod listener;
mod memory;
mod metrics;
mod notify;
mod offload;
pub mod process;
pub mod proxy;
mod reload;
mod secret_file;
mod seen_fingerprints;
mod shutdown;
mod steering;
#[cfg(test)]
mod test_tls;
pub mod tickets;
pub mod tls;
mod tls_conn;
mod upgrade;
mod worker;
pub mod xdp;
