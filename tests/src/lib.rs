//! Helpers for the integration tests that run against the real `portcullis` binary.
//!
//! # Layout
//! - [`privileged`]: root detection; a skipped privileged test fails the run under `CI=true`.
//! - [`netns`]: one network namespace guard per test (veth pairs, torn down on drop).
//! - [`pki`]: a test CA with an ECDSA and an RSA server certificate.
//! - [`bpffs`]: a per-test pin directory on bpffs.
//! - [`clients`]: real clients (openssl s_client) run from a test's namespace.
//! - [`daemon`]: starts the daemon binary, waits for its readiness notification, stops it.
//! - [`http_upstream`]: an HTTP/1.1 upstream with routes the HTTP tests need (headers, echo, upgrade, slow).
//! - [`load`]: runs the `portcullis-load` binary and reads its JSON report.
//! - [`testbed`]: the XDP end-to-end bed (two namespaces, a veth, pins, PKI, config) the XDP tests share.
//! - [`bpftool`]: reads the pinned maps with `bpftool`, runs the pinned program on a packet file.
//! - [`bare_rustls`]: the differential test's reference, a bare rustls server, and the records a server sent.
//! - [`redis`]: a real `redis-server` per test on a free port (stopped or killed in fault tests).
//! - [`raw`]: crafted IPv4/TCP packets (floods, malformed first segments) sent through a raw socket.

pub mod bare_rustls;
pub mod bpffs;
pub mod bpftool;
pub mod clients;
pub mod daemon;
pub mod http_upstream;
pub mod load;
pub mod netns;
pub mod pki;
pub mod privileged;
pub mod raw;
pub mod redis;
pub mod testbed;
