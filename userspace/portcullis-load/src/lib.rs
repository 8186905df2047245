//! `portcullis-load`: an open-loop TLS handshake load generator that measures latency honestly.
//!
//! Connections start at intended times drawn from a schedule (constant or Poisson arrivals), whatever happened to
//! earlier ones, and every latency is measured from that intended start: a server that stalls shows the stall in
//! the percentiles instead of silently slowing the client down (no coordinated omission). A closed-loop mode
//! (`--concurrency N`) exists for saturating a server; its latencies are measured from the actual start.
//!
//! # Layout
//! - [`kind`]: the handshake kinds (full/resumed, TLS 1.3/1.2, ticket/session ID) and a weighted mix of them.
//! - [`store`]: the client-side session store shared by every target, keyed per SNI or globally, so a ticket
//!   from target A can be offered to target B; it tells each connection whether it offered resumption.
//! - [`client_config`]: rustls client configurations per kind (versions, groups, ALPN, verification).
//! - [`verifier`]: the certificate verifier used without a CA: chain not checked, handshake signatures are.
//! - [`cause`]: why a connection failed or fell back to a full handshake; the labels of every error count.
//! - [`connection`]: one connection from intended start to close: TCP connect, handshake, request, first byte.
//! - [`phases`]: the load profile (steady -> storm -> recovery) from flags or a TOML file.
//! - [`schedule`]: intended start times from the phases; [`rng`] the small seeded generator behind Poisson.
//! - [`recorder`]: HdrHistograms per kind and the per-second time series.
//! - [`runner`]: the open-loop and closed-loop drivers, both bounded by duration and connection count.
//! - [`preflight`]: one connection per target before the run, so unreachable targets fail with a clear error.
//! - [`report`]: the JSON report and the human table; [`chart`]: the SVG chart.
//! - [`limit`]: rustls in-memory handshakes, server-side CPU only: the "limit" a TLS server could reach here.
//! - [`floor`]: `floor`, the least a rustls server over TCP can do: the "floor" column of `bench handshakes`.
//! - [`hold`]: `hold`, N idle connections held open for a memory benchmark (`cargo xtask bench idle`).
//! - [`ttfb`]: `ttfb`, time to first response byte per new connection, full / resumed / 0-RTT, and the captured
//!   first flight a replay test re-sends (`cargo xtask bench zero-rtt`).
//! - [`progress`]: a one-line progress display when stderr is a terminal.
//! - [`cli`]: command-line parsing into a [`runner::RunSpec`].

pub mod cause;
pub mod chart;
pub mod cli;
pub mod client_config;
pub mod connection;
pub mod floor;
pub mod hold;
pub mod kind;
pub mod limit;
pub mod phases;
pub mod preflight;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod rng;
pub mod runner;
pub mod schedule;
pub mod stamp;
pub mod store;
pub mod ttfb;
pub mod verifier;
