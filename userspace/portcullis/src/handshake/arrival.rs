//! When the kernel received a connection's first bytes: `SO_TIMESTAMPNS` on the listening socket (accepted
//! sockets inherit it), read back as a control message by the first `recvmsg` of the ClientHello.
//!
//! The stamp shows the wait no userspace clock sees: bytes sitting in the socket while the connection waited
//! in the accept queue and for its worker ([`super::stages::Stage::Socket`]). The option makes the kernel
//! stamp each received packet (one clock read); a socket without it reads as usual, with no stamp.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Asks the kernel to stamp what `listener`'s connections receive.
pub fn enable(listener: &impl AsFd) -> io::Result<()> {
    setsockopt(listener, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Room for the one control message a read can carry (`SCM_TIMESTAMPNS`).
const CMSG_SPACE: usize = nix::sys::socket::cmsg_space::<TimeSpec>();

/// A control-message buffer on the stack (`cmsg_space!` allocates a `Vec` per read), aligned as the `cmsghdr`
/// the kernel writes at its start.
#[repr(C, align(8))]
struct CmsgBuffer([u8; CMSG_SPACE]);

/// `try_read` that also returns the kernel's receive time of the bytes read, when the socket is stamped.
/// `WouldBlock` when nothing is ready, as `TcpStream::try_read`.
pub fn try_read(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    tcp.try_io(Interest::READABLE, || {
        let mut cmsg = CmsgBuffer([0; CMSG_SPACE]);
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            tcp.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg.0),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let stamp = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                _ => None,
            })
        });
        Ok((msg.bytes, stamp.and_then(to_system_time)))
    })
}

/// Marks `tcp` not readable, without a system call, after a read that returned fewer bytes than it asked for:
/// a short TCP read empties the receive queue and its backlog (`tcp_recvmsg` stops early only there, or at
/// urgent data), so the next read would only find `EAGAIN` (one `recvfrom` per handshake before the client's
/// Finished, BENCHMARKS.md "Per-handshake overhead"). tokio clears the readiness only at the tick it observed
/// here: an edge its driver reports later (bytes that arrive after the read) still wakes the reader. Call it with
/// no await since the short read, so the driver cannot have seen a newer edge in between.
pub fn drained(tcp: &TcpStream) {
    let _ = tcp.try_io(Interest::READABLE, || {
        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
    });
}

fn to_system_time(ts: TimeSpec) -> Option<SystemTime> {
    let secs = u64::try_from(ts.tv_sec()).ok()?;
    let nanos = u32::try_from(ts.tv_nsec()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A loopback connection whose client has sent `first`: (the accepted server side, the client side).
#[cfg(test)]
pub(crate) async fn loopback_with(first: &[u8]) -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback test socket");
    let addr = listener.local_addr().expect("loopback test socket");
    let mut client = TcpStream::connect(addr)
        .await
        .expect("loopback test socket");
    tokio::io::AsyncWriteExt::write_all(&mut client, first)
        .await
        .expect("loopback test socket");
    let (server, _) = listener.accept().await.expect("loopback test socket");
    (server, client)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_some(server: &TcpStream, buf: &mut [u8]) -> (usize, Option<SystemTime>) {
        loop {
            server.readable().await.expect("loopback test socket");
            match try_read(server, buf) {
                Ok(r) => return r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_the_stamp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback test socket");
        enable(&listener).expect("loopback test socket");
        listener
            .set_nonblocking(true)
            .expect("loopback test socket");
        let listener = tokio::net::TcpListener::from_std(listener).expect("loopback test socket");
        let addr = listener.local_addr().expect("loopback test socket");
        // The kernel turns packet stamping on with deferred work after the first socket asks for it, so the
        // first connections' packets may carry none: try a bounded number of connections.
        for _ in 0..200 {
            let before = SystemTime::now();
            let mut client = tokio::net::TcpStream::connect(addr)
                .await
                .expect("loopback test socket");
            tokio::io::AsyncWriteExt::write_all(&mut client, b"hello")
                .await
                .expect("loopback test socket");
            let (server, _) = listener.accept().await.expect("loopback test socket");
            let mut buf = [0u8; 16];
            let (n, stamp) = read_some(&server, &mut buf).await;
            assert_eq!(buf.get(..n), Some(&b"hello"[..]));
            if let Some(stamp) = stamp {
                assert!(stamp >= before && stamp <= SystemTime::now());
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "no accepted socket of a stamped listener got a receive timestamp in 200 connections"
        );
    }

    #[tokio::test]
    async fn an_unstamped_socket_reads_without_a_stamp() {
        let (server, _client) = loopback_with(b"x").await;
        let mut buf = [0u8; 4];
        let (n, stamp) = read_some(&server, &mut buf).await;
        assert_eq!(n, 1);
        assert_eq!(stamp, None);
    }
}
