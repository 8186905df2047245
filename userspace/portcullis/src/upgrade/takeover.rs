//! The successor's side: `portcullis run --takeover SOCKET` receives the running daemon's listening sockets,
//! checks its own configuration against them, and says ready once its workers accept on them.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::control::connect_to;
use super::protocol::{self, Message, Offer, ProtocolError, SocketTag, XdpOffer};
use crate::config::Config;

/// How long the successor waits for each message of the old daemon.
const MESSAGE_WAIT: Duration = Duration::from_secs(30);

/// Why a takeover did not happen; each names who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// No daemon answers at the path.
    #[error(
        "cannot connect to the running daemon's control socket {path}: {source}; is it running, started with the \
         same --control-socket, and is this command run as root or the daemon's user?"
    )]
    Connect {
        /// The control socket path.
        path: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// The old daemon said no.
    #[error("the running daemon refused the handoff: {0}")]
    Refused(String),
    /// The exchange failed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// This configuration cannot take over these sockets.
    #[error(
        "the configuration differs from the running daemon's in `{field}` ({detail}): that needs a restart, not an \
         upgrade; revert it for the upgrade and change it with a restart"
    )]
    Mismatch {
        /// The config field at fault.
        field: &'static str,
        /// What differs.
        detail: String,
    },
    /// The old daemon sent fewer sockets than it offered, or a socket it did not offer.
    #[error("the running daemon sent an incomplete handoff: {0}")]
    Incomplete(String),
}

/// What the successor received: the offer and the sockets, and the connection to answer on.
#[derive(Debug)]
pub struct Inherited {
    conn: OwnedFd,
    /// What the old daemon serves.
    pub offer: Offer,
    groups: Vec<Vec<Option<TcpListener>>>,
    admin: Option<TcpListener>,
}

impl Inherited {
    /// Connects to the running daemon at `path` and receives its sockets.
    ///
    /// # Errors
    /// See [`TakeoverError`].
    pub fn connect(path: &Path) -> Result<Inherited, TakeoverError> {
        let conn = connect_to(path).map_err(|source| TakeoverError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let wait = nix::sys::time::TimeVal::new(MESSAGE_WAIT.as_secs() as i64, 0);
        let _ =
            nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::ReceiveTimeout, &wait);
        let _ = nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::SendTimeout, &wait);
        let peer = "the running daemon";
        protocol::send(
            conn.as_fd(),
            &Message::Hello {
                version: protocol::VERSION,
                pid: std::process::id(),
            },
            None,
            peer,
        )?;
        let offer = match protocol::receive(conn.as_fd(), peer)?.0 {
            Message::Offer(offer) => offer,
            Message::Refused { reason } => return Err(TakeoverError::Refused(reason)),
            other => {
                return Err(TakeoverError::Incomplete(format!(
                    "{other:?} instead of an offer"
                )));
            }
        };
        let mut groups: Vec<Vec<Option<TcpListener>>> = offer
            .listeners
            .iter()
            .map(|_| (0..offer.workers).map(|_| None).collect())
            .collect();
        let mut admin = None;
        let expected = offer.listeners.len() * offer.workers + usize::from(offer.admin.is_some());
        for _ in 0..expected {
            let (message, fd) = protocol::receive(conn.as_fd(), peer)?;
            let (Message::Socket(tag), Some(fd)) = (message, fd) else {
                return Err(TakeoverError::Incomplete(
                    "a message without a socket where a socket was due".into(),
                ));
            };
            let socket = TcpListener::from(fd);
            match tag {
                SocketTag::Listener { listener, worker } => {
                    let slot = groups
                        .get_mut(listener)
                        .and_then(|g| g.get_mut(worker))
                        .ok_or_else(|| {
                            TakeoverError::Incomplete(format!(
                                "socket of listener {listener} worker {worker}, not offered"
                            ))
                        })?;
                    *slot = Some(socket);
                }
                SocketTag::Admin => admin = Some(socket),
            }
        }
        tracing::info!(
            pid = offer.pid,
            listeners = offer.listeners.len(),
            workers = offer.workers,
            xdp = offer.xdp.is_some(),
            "upgrade: received the running daemon's listening sockets"
        );
        Ok(Inherited {
            conn,
            offer,
            groups,
            admin,
        })
    }

    /// Checks that `config` (with `workers` resolved) can serve these sockets: same listeners in the same order,
    /// same worker count, same XDP interfaces and pin directory.
    ///
    /// # Errors
    /// [`TakeoverError::Mismatch`] naming the field.
    pub fn check(&self, config: &Config, workers: usize) -> Result<(), TakeoverError> {
        let configured: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
        let offered: Vec<SocketAddr> = self.offer.listeners.iter().map(|l| l.configured).collect();
        if configured != offered {
            return Err(TakeoverError::Mismatch {
                field: "listeners[].address",
                detail: format!("running {offered:?}, configured {configured:?}"),
            });
        }
        if workers != self.offer.workers {
            return Err(TakeoverError::Mismatch {
                field: "workers",
                detail: format!("running {}, configured {workers}", self.offer.workers),
            });
        }
        let running: BTreeSet<&str> = self
            .offer
            .xdp
            .iter()
            .flat_map(|x| x.links.iter().map(|l| l.interface.as_str()))
            .collect();
        let wanted: BTreeSet<&str> = config.xdp.interfaces.iter().map(String::as_str).collect();
        if running != wanted {
            return Err(TakeoverError::Mismatch {
                field: "xdp.interfaces",
                detail: format!("running {running:?}, configured {wanted:?}"),
            });
        }
        if let Some(xdp) = &self.offer.xdp
            && xdp.pin_dir != config.xdp.pin_dir
        {
            return Err(TakeoverError::Mismatch {
                field: "xdp.pin_dir",
                detail: format!(
                    "running {}, configured {}",
                    xdp.pin_dir.display(),
                    config.xdp.pin_dir.display()
                ),
            });
        }
        Ok(())
    }

    /// The sockets by listener (one per worker, in worker order) and each listener's bound address.
    ///
    /// # Errors
    /// A socket was not sent.
    pub fn take_groups(
        &mut self,
    ) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), TakeoverError> {
        let mut groups = Vec::new();
        for (l, group) in self.groups.iter_mut().enumerate() {
            let mut sockets = Vec::new();
            for (w, slot) in group.iter_mut().enumerate() {
                sockets.push(slot.take().ok_or_else(|| {
                    TakeoverError::Incomplete(format!("no socket for listener {l} worker {w}"))
                })?);
            }
            groups.push(sockets);
        }
        let bound = self.offer.listeners.iter().map(|l| l.bound).collect();
        Ok((groups, bound))
    }

    /// The admin endpoint's socket, when the old one listens on the `configured` address.
    pub fn take_admin(&mut self, configured: SocketAddr) -> Option<TcpListener> {
        if self.offer.admin == Some(configured) {
            self.admin.take()
        } else {
            None
        }
    }

    /// The XDP links to take over, when the old daemon runs XDP.
    pub fn xdp(&self) -> Option<&XdpOffer> {
        self.offer.xdp.as_ref()
    }

    /// Tells the old daemon that this one gives up (it goes on serving).
    pub fn abort(self, reason: &str) {
        let _ = protocol::send(
            self.conn.as_fd(),
            &Message::Abort {
                reason: reason.to_owned(),
            },
            None,
            "the running daemon",
        );
    }

    /// Tells the old daemon that this one serves, and waits for it to stop accepting; its drain timeout.
    ///
    /// # Errors
    /// The old daemon did not confirm (it may have exited meanwhile: this one serves either way).
    pub fn ready(self) -> Result<Duration, TakeoverError> {
        let peer = "the running daemon";
        protocol::send(self.conn.as_fd(), &Message::Ready, None, peer)?;
        match protocol::receive(self.conn.as_fd(), peer)?.0 {
            Message::Draining { drain_timeout_ms } => Ok(Duration::from_millis(drain_timeout_ms)),
            other => Err(TakeoverError::Incomplete(format!(
                "{other:?} instead of draining"
            ))),
        }
    }
}
