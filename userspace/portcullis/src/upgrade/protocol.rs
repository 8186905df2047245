//! The handoff protocol between the running daemon (the *old* one) and its successor, over a Unix
//! `SOCK_SEQPACKET` socket (message boundaries kept, so a descriptor travels with the message that names it).
//!
//! 1. successor → old: [`Message::Hello`].
//! 2. old → successor: [`Message::Offer`] (what it serves), then one [`Message::Socket`] per listening socket,
//!    each carrying that socket's descriptor (`SCM_RIGHTS`), or [`Message::Refused`].
//! 3. successor → old: [`Message::Ready`] once its workers accept on the sockets, or [`Message::Abort`].
//! 4. old → successor: [`Message::Draining`]; the old one stops accepting and drains.
//!
//! Every message is one JSON object; a message that does not parse is an error naming the peer.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// The protocol version; a successor of another version is refused (the message says which).
pub const VERSION: u32 = 1;

/// The largest message, in bytes (an offer of many listeners stays far below).
const MAX_MESSAGE: usize = 64 * 1024;

/// One message of the handoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// The successor introduces itself.
    Hello {
        /// Protocol version.
        version: u32,
        /// Its process id.
        pid: u32,
    },
    /// What the old daemon serves; its sockets follow.
    Offer(Offer),
    /// One listening socket; the message carries its descriptor.
    Socket(SocketTag),
    /// The old daemon will not hand over, and why.
    Refused {
        /// Why, for the successor's operator.
        reason: String,
    },
    /// The successor serves on the sockets: the old one may stop accepting.
    Ready,
    /// The successor gives up, and why (the old one goes on serving).
    Abort {
        /// Why, logged by the old daemon.
        reason: String,
    },
    /// The old daemon has stopped accepting and drains for up to `drain_timeout_ms`.
    Draining {
        /// Its `shutdown.drain_timeout`, in milliseconds.
        drain_timeout_ms: u64,
    },
}

/// What the old daemon serves, so the successor can check its own configuration against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Protocol version.
    pub version: u32,
    /// The old daemon's process id.
    pub pid: u32,
    /// Sockets per listener (`workers`).
    pub workers: usize,
    /// Each listener, in config order.
    pub listeners: Vec<ListenerOffer>,
    /// The admin endpoint's configured address, when its socket follows.
    pub admin: Option<SocketAddr>,
    /// The XDP program's attachments, each pinned for the successor to take over; `None` without XDP.
    pub xdp: Option<XdpOffer>,
}

/// One listener of the old daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerOffer {
    /// `listeners[].address` as configured (port 0 stays 0).
    pub configured: SocketAddr,
    /// The address it is bound to.
    pub bound: SocketAddr,
}

/// The XDP state handed over: the pin directory and one pinned link per interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpOffer {
    /// `[xdp] pin_dir`.
    pub pin_dir: PathBuf,
    /// Each attachment: interface, mode name (`native`/`generic`), and the pinned link's path.
    pub links: Vec<LinkOffer>,
}

/// One XDP attachment, its bpf_link pinned for the successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOffer {
    /// The interface.
    pub interface: String,
    /// `native` or `generic`.
    pub mode: String,
    /// Where the link is pinned.
    pub pin: PathBuf,
}

/// Which socket a [`Message::Socket`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SocketTag {
    /// Worker `worker`'s socket of listener `listener` (indexes from 0).
    Listener {
        /// Listener index, in config order.
        listener: usize,
        /// Worker index.
        worker: usize,
    },
    /// The admin endpoint's socket.
    Admin,
}

/// A failure of the handoff exchange itself.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed.
    #[error("{peer}: {op} failed: {source}")]
    Io {
        /// Who is at the other end.
        peer: &'static str,
        /// `send` or `receive`.
        op: &'static str,
        /// The error.
        source: nix::Error,
    },
    /// The peer closed the connection.
    #[error("{peer} closed the control connection")]
    Closed {
        /// Who is at the other end.
        peer: &'static str,
    },
    /// The peer sent something that is not a message of this protocol.
    #[error("{peer} sent a message that is not part of the handoff protocol: {detail}")]
    Garbled {
        /// Who is at the other end.
        peer: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Sends `message`, with `fd` attached when given.
///
/// # Errors
/// The socket failed (the peer is gone, or the send timed out).
pub fn send(
    socket: BorrowedFd<'_>,
    message: &Message,
    fd: Option<BorrowedFd<'_>>,
    peer: &'static str,
) -> Result<(), ProtocolError> {
    let bytes = serde_json::to_vec(message).map_err(|e| ProtocolError::Garbled {
        peer,
        detail: e.to_string(),
    })?;
    let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|source| ProtocolError::Io {
        peer,
        op: "send",
        source,
    })?;
    Ok(())
}

/// Receives one message and the descriptor it carries, if any (extra descriptors are closed).
///
/// # Errors
/// The socket failed or timed out, the peer closed it, or the bytes are not a message of this protocol.
pub fn receive(
    socket: BorrowedFd<'_>,
    peer: &'static str,
) -> Result<(Message, Option<OwnedFd>), ProtocolError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (len, truncated, mut fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|source| ProtocolError::Io {
            peer,
            op: "receive",
            source,
        })?;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors in this process for us alone.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, truncated, fds)
    };
    if len == 0 {
        return Err(ProtocolError::Closed { peer });
    }
    if truncated {
        return Err(ProtocolError::Garbled {
            peer,
            detail: format!("a message over {MAX_MESSAGE} bytes or with too many descriptors"),
        });
    }
    let message = serde_json::from_slice(buf.get(..len).unwrap_or_default()).map_err(|e| {
        ProtocolError::Garbled {
            peer,
            detail: e.to_string(),
        }
    })?;
    let fd = if fds.is_empty() {
        None
    } else {
        Some(fds.swap_remove(0))
    };
    Ok((message, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;

    #[test]
    fn a_message_and_its_descriptor_cross_a_seqpacket_pair() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let tag = Message::Socket(SocketTag::Listener {
            listener: 1,
            worker: 3,
        });
        send(a.as_fd(), &tag, Some(listener.as_fd()), "test").expect("send");
        let (got, fd) = receive(b.as_fd(), "test").expect("receive");
        assert_eq!(got, tag);
        let received = std::net::TcpListener::from(fd.expect("a descriptor"));
        assert_eq!(
            received.local_addr().expect("addr"),
            listener.local_addr().expect("addr")
        );
        send(a.as_fd(), &Message::Ready, None, "test").expect("send");
        let (got, fd) = receive(b.as_fd(), "test").expect("receive");
        assert_eq!(got, Message::Ready);
        assert!(fd.is_none());
    }

    #[test]
    fn garbage_and_a_closed_peer_are_errors_naming_the_peer() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        nix::sys::socket::send(a.as_raw_fd(), b"{\"nope\":1}", MsgFlags::empty()).expect("send");
        let e = receive(b.as_fd(), "the old daemon").expect_err("garbage");
        assert!(e.to_string().contains("the old daemon sent"), "{e}");
        drop(a);
        let e = receive(b.as_fd(), "the old daemon").expect_err("closed");
        assert!(matches!(e, ProtocolError::Closed { .. }), "{e}");
    }
}
