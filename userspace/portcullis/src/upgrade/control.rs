//! The running daemon's side: the control socket and the thread that hands the listening sockets to a
//! successor.
//!
//! The socket is bound before the privilege drop, mode 0600 and owned by the daemon's user, and every peer's
//! credentials are checked (`SO_PEERCRED`: root or the daemon's own uid), so only the operator or the
//! service itself can take the sockets. The sockets offered are duplicates kept by the control thread; they are
//! closed as soon as the daemon starts draining for any other reason, so a plain SIGTERM still empties the
//! SO_REUSEPORT group of this process.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, connect, getsockopt,
    listen, socket, sockopt,
};

use super::protocol::{self, Message, Offer, SocketTag, XdpOffer};

/// How long the old daemon waits for a successor to say ready after the sockets were sent (its whole
/// start-up: certificates, XDP load, workers).
const READY_WAIT: Duration = Duration::from_secs(120);

/// A bound, listening control socket; its path is removed on drop while it is still this socket's.
#[derive(Debug)]
pub struct ControlSocket {
    fd: OwnedFd,
    path: PathBuf,
    /// (device, inode) of the socket file this process created, so it never removes a successor's.
    identity: (u64, u64),
}

impl ControlSocket {
    /// Binds `path` (mode 0600, owned by `owner` when given), creating its directory (mode 0700) if needed.
    /// A stale socket file (nobody listening) is replaced; a live one belongs to another daemon: `Ok(None)`
    /// with a warning, this daemon then cannot be upgraded in place.
    ///
    /// # Errors
    /// The directory cannot be created or the socket cannot be bound there.
    pub fn bind(
        path: &Path,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> anyhow::Result<Option<ControlSocket>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the control socket's directory {}",
                    dir.display()
                )
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = owner {
                nix::unistd::chown(dir, Some(uid), Some(gid)).with_context(|| {
                    format!("cannot give {} to the daemon's user", dir.display())
                })?;
            }
        }
        if let (Some(dir), Some((uid, _))) = (path.parent(), owner)
            && std::fs::metadata(dir).is_ok_and(|m| m.uid() != uid.as_raw())
        {
            tracing::warn!(
                dir = %dir.display(),
                "the control socket's directory is not the daemon user's: a successor, once unprivileged, cannot \
                 move its socket there, so only the first upgrade works; give the directory to the user"
            );
        }
        if path.exists() {
            if connect_to(path).is_ok() {
                tracing::warn!(
                    path = %path.display(),
                    "another daemon listens on this control socket: this one cannot be upgraded in place; give \
                     each daemon its own --control-socket"
                );
                return Ok(None);
            }
            std::fs::remove_file(path).with_context(|| {
                format!("cannot remove the stale control socket {}", path.display())
            })?;
        }
        Self::bind_at(path, owner).map(Some)
    }

    /// Binds at `path` as it is (the successor's staging path, renamed over the old one by [`Self::publish`]).
    ///
    /// # Errors
    /// The socket cannot be created, bound, given to `owner` or listened on.
    pub fn bind_at(
        path: &Path,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> anyhow::Result<ControlSocket> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("cannot create the control socket")?;
        let addr = UnixAddr::new(path).context("control socket path")?;
        // Created 0600 from the start: no window in which another user could connect.
        let old_mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = bind(fd.as_raw_fd(), &addr);
        nix::sys::stat::umask(old_mask);
        bound.with_context(|| format!("cannot bind the control socket {}", path.display()))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(path, Some(uid), Some(gid)).with_context(|| {
                format!(
                    "cannot give the control socket {} to the daemon's user",
                    path.display()
                )
            })?;
        }
        listen(&fd, Backlog::new(4).unwrap_or(Backlog::MAXCONN))
            .with_context(|| format!("cannot listen on the control socket {}", path.display()))?;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot stat the control socket {}", path.display()))?;
        Ok(ControlSocket {
            fd,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// Moves this socket to `path` (over the old daemon's), once the handoff is done.
    ///
    /// # Errors
    /// The rename failed (the directory is not writable by this user): the socket stays at its staging path.
    pub fn publish(&mut self, path: &Path) -> anyhow::Result<()> {
        std::fs::rename(&self.path, path).with_context(|| {
            format!(
                "cannot move the control socket {} to {}; the next upgrade must name --control-socket {}",
                self.path.display(),
                path.display(),
                self.path.display()
            )
        })?;
        self.path = path.to_path_buf();
        Ok(())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Connects to the control socket at `path`.
pub(super) fn connect_to(path: &Path) -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// How a control connection ended without an error.
enum Handed {
    /// A successor serves: this daemon drains.
    Over,
    /// The peer closed before its hello: a daemon checking whether the socket is in use.
    Probe,
}

/// What the old daemon can hand over, shared by the main thread and the control thread.
pub struct Handoff {
    /// The offer and the duplicated sockets; `None` once draining (withdrawn) or handed over.
    offered: Mutex<Option<Arc<Offered>>>,
    /// Pins the XDP links for a successor (`None` without XDP), and unpins them if it fails.
    xdp: Option<Box<dyn XdpLinks>>,
    /// Told once a successor is ready.
    on_ready: Box<dyn Fn() + Send + Sync>,
    /// `shutdown.drain_timeout` (as last reloaded), told to the successor.
    drain_timeout: crate::shutdown::DrainTimeout,
}

/// The sockets and their description.
pub struct Offered {
    /// What is served (its `xdp` is filled at handoff).
    pub offer: Offer,
    /// Each socket with its tag.
    pub sockets: Vec<(SocketTag, OwnedFd)>,
}

/// The XDP guard's part of a handoff: pin each attachment's link where the successor can open it, and remove
/// those pins again if it fails.
pub trait XdpLinks: Send + Sync {
    /// Pins the links; what the successor needs to take them over.
    ///
    /// # Errors
    /// A link cannot be pinned (netlink attachment, pin directory not writable).
    fn pin(&self) -> anyhow::Result<XdpOffer>;
    /// Removes the pins made by [`XdpLinks::pin`] (the links stay attached through this process).
    fn unpin(&self);
}

impl Handoff {
    /// What this daemon offers; `on_ready` runs when a successor serves (it should start the drain).
    pub fn new(
        offered: Offered,
        xdp: Option<Box<dyn XdpLinks>>,
        drain_timeout: crate::shutdown::DrainTimeout,
        on_ready: Box<dyn Fn() + Send + Sync>,
    ) -> Handoff {
        Handoff {
            offered: Mutex::new(Some(Arc::new(offered))),
            xdp,
            on_ready,
            drain_timeout,
        }
    }

    /// Closes the offered duplicates (the daemon drains for another reason): no successor can take them now.
    pub fn withdraw(&self) {
        if let Ok(mut offered) = self.offered.lock() {
            offered.take();
        }
    }

    /// Serves successors on `control` from a thread of its own until one takes over.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn serve(self: Arc<Self>, control: &ControlSocket) -> anyhow::Result<()> {
        let listener = control
            .fd
            .try_clone()
            .context("cannot duplicate the control socket")?;
        std::thread::Builder::new()
            .name("portcullis-control".into())
            .spawn(move || self.accept_loop(&listener))
            .context("cannot start the control socket thread")?;
        Ok(())
    }

    fn accept_loop(&self, listener: &OwnedFd) {
        loop {
            let conn = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed; upgrades are off");
                    return;
                }
            };
            match self.hand_over(&conn) {
                Ok(Handed::Over) => return,
                Ok(Handed::Probe) => {}
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "upgrade: the handoff did not happen; this daemon goes on serving"
                ),
            }
        }
    }

    /// One successor: check who it is, offer, wait for ready.
    fn hand_over(&self, conn: &OwnedFd) -> anyhow::Result<Handed> {
        let peer = "the successor";
        let send_timeout = nix::sys::time::TimeVal::new(10, 0);
        let _ = nix::sys::socket::setsockopt(conn, sockopt::SendTimeout, &send_timeout);
        let _ = nix::sys::socket::setsockopt(
            conn,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(READY_WAIT.as_secs() as i64, 0),
        );
        let creds = getsockopt(conn, sockopt::PeerCredentials)
            .context("cannot read the successor's credentials")?;
        let me = nix::unistd::geteuid().as_raw();
        if creds.uid() != 0 && creds.uid() != me {
            let reason = format!(
                "uid {} may not take over this daemon's sockets: run `portcullis upgrade` as root or as uid {me}",
                creds.uid()
            );
            refuse(conn.as_fd(), peer, &reason);
            anyhow::bail!("refused pid {}: {reason}", creds.pid());
        }
        let first = match protocol::receive(conn.as_fd(), peer) {
            Err(protocol::ProtocolError::Closed { .. }) => {
                // `ControlSocket::bind` of a daemon started with the same --control-socket connects to see
                // whether the socket is in use, then closes: not an upgrade.
                tracing::debug!(
                    pid = creds.pid(),
                    "control socket: a connection closed without a hello (another daemon checking that this socket is in use)"
                );
                return Ok(Handed::Probe);
            }
            received => received?.0,
        };
        match first {
            Message::Hello { version, .. } if version == protocol::VERSION => {}
            Message::Hello { version, pid } => {
                let reason = format!(
                    "protocol version {version} from pid {pid}, this daemon speaks {}: upgrade with a restart",
                    protocol::VERSION
                );
                refuse(conn.as_fd(), peer, &reason);
                anyhow::bail!(reason);
            }
            other => anyhow::bail!("{peer} opened with {other:?} instead of hello"),
        }
        tracing::info!(
            pid = creds.pid(),
            "upgrade: a successor connected; offering the listening sockets"
        );
        // Cloned out of the lock: a SIGTERM meanwhile withdraws the offer without waiting for this successor.
        let offered = self
            .offered
            .lock()
            .map_err(|_| anyhow::anyhow!("handoff state poisoned"))?
            .clone();
        let Some(offered) = offered else {
            let reason = "this daemon is draining; start the new version normally".to_owned();
            refuse(conn.as_fd(), peer, &reason);
            anyhow::bail!(reason);
        };
        let mut offer = offered.offer.clone();
        if let Some(xdp) = &self.xdp {
            match xdp.pin() {
                Ok(links) => offer.xdp = Some(links),
                Err(e) => {
                    let reason = format!("cannot pin the XDP links for the successor: {e:#}");
                    refuse(conn.as_fd(), peer, &reason);
                    anyhow::bail!(reason);
                }
            }
        }
        match self.offer_and_wait(conn, offer, &offered) {
            Ok(()) => Ok(Handed::Over),
            Err(e) => {
                if let Some(xdp) = &self.xdp {
                    xdp.unpin();
                }
                Err(e)
            }
        }
    }

    fn offer_and_wait(
        &self,
        conn: &OwnedFd,
        offer: Offer,
        offered: &Offered,
    ) -> anyhow::Result<()> {
        let peer = "the successor";
        protocol::send(conn.as_fd(), &Message::Offer(offer), None, peer)?;
        for (tag, fd) in &offered.sockets {
            protocol::send(conn.as_fd(), &Message::Socket(*tag), Some(fd.as_fd()), peer)?;
        }
        match protocol::receive(conn.as_fd(), peer)?.0 {
            Message::Ready => {}
            Message::Abort { reason } => anyhow::bail!("the successor gave up: {reason}"),
            other => anyhow::bail!("{peer} answered {other:?} instead of ready"),
        }
        // Stop accepting first: the successor already accepts on the same sockets.
        (self.on_ready)();
        let drain_timeout = self.drain_timeout.get();
        tracing::info!(drain_timeout = ?drain_timeout, "upgrade: the successor serves; draining");
        let drain_timeout_ms = u64::try_from(drain_timeout.as_millis()).unwrap_or(u64::MAX);
        // The successor waits for this before it announces; if it is gone, the drain goes on anyway.
        let _ = protocol::send(
            conn.as_fd(),
            &Message::Draining { drain_timeout_ms },
            None,
            peer,
        );
        Ok(())
    }
}

/// Tells a successor why it is refused (best effort: it may be gone); the caller fails with the same reason.
fn refuse(conn: std::os::fd::BorrowedFd<'_>, peer: &'static str, reason: &str) {
    let _ = protocol::send(
        conn,
        &Message::Refused {
            reason: reason.to_owned(),
        },
        None,
        peer,
    );
}
