//! Zero-downtime binary upgrade: the running daemon hands its listening sockets (and its XDP links) to a
//! successor over a Unix control socket, stops accepting once the successor serves, and drains.
//!
//! The running daemon has no capability left, so it cannot start a privileged successor itself: the operator
//! or the supervisor starts it as root with `portcullis upgrade` (or `portcullis run --takeover SOCKET`). No
//! SYN is refused at any instant: the sockets stay open in the kernel throughout, accepted first by both
//! processes, then by the successor alone. How HAProxy (`-x` + `-sf`, `_getsocks`) and Cloudflare's tableflip
//! do it, and what differs here, is in README.md ("Upgrade").
//!
//! # Layout
//! - [`protocol`]: the messages (JSON over `SOCK_SEQPACKET`, one descriptor per socket message).
//! - [`control`]: the running daemon's control socket and handoff thread ([`Handoff`]).
//! - [`takeover`]: the successor's side ([`Inherited`]): receive, check the config, say ready.
//! - [`cli`]: `portcullis upgrade`, the front door: starts the successor and waits for its outcome.
//!
//! # Invariants
//! - The old daemon closes no listening socket before the successor said ready; a successor that fails
//!   before that leaves the old one serving (its XDP links unpinned again, held by its own descriptors).
//! - The successor replaces the XDP program on the old links (`bpf_link_update`: atomic), reusing the pinned
//!   state maps and the flow table; it unpins the links at once, so they die with the last process holding them.
//! - A configuration whose listeners, workers or XDP interfaces differ is refused with the field named.

pub mod cli;
pub mod control;
pub mod protocol;
pub mod takeover;

use std::path::PathBuf;

pub use control::{ControlSocket, Handoff, Offered, XdpLinks};
pub use takeover::Inherited;

/// Where the control socket lives unless `--control-socket` says otherwise: systemd's `RuntimeDirectory=`,
/// `/run/portcullis` as root, else `$XDG_RUNTIME_DIR/portcullis` (or the temp dir).
pub fn default_control_socket() -> PathBuf {
    let dir = if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several directories, separated by ':'; the first is the unit's own.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        PathBuf::from(first)
    } else if nix::unistd::Uid::effective().is_root() {
        PathBuf::from("/run/portcullis")
    } else if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(dir).join("portcullis")
    } else {
        std::env::temp_dir().join(format!("portcullis-{}", nix::unistd::Uid::effective()))
    };
    dir.join("control.sock")
}

/// How `portcullis run` takes part in upgrades.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    /// This daemon's control socket (`--control-socket`); `None`: [`default_control_socket`].
    pub control_socket: Option<PathBuf>,
    /// Take the sockets over from the daemon listening on this control socket (`--takeover`).
    pub takeover: Option<PathBuf>,
}

impl UpgradeOptions {
    /// The control socket path this daemon binds.
    pub fn control_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .or_else(|| self.takeover.clone())
            .unwrap_or_else(default_control_socket)
    }
}

/// The environment variable naming the datagram socket on which a successor started by `portcullis upgrade`
/// reports `READY pid=N` or `FAILED reason` (beside `NOTIFY_SOCKET`, which stays systemd's).
pub const STATUS_SOCKET_ENV: &str = "PORTCULLIS_UPGRADE_STATUS";

/// Reports the successor's outcome to `portcullis upgrade`, when it started this process.
pub fn report_status(message: &str) {
    if let Some(path) = std::env::var_os(STATUS_SOCKET_ENV) {
        let sent = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.send_to(message.as_bytes(), &path));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot report to `portcullis upgrade`");
        }
    }
}
