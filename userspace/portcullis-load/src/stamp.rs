//! When the server's bytes reached this host: the kernel's receive timestamp (`SO_TIMESTAMPNS`) of a read,
//! as an [`Instant`].
//!
//! A saturated load generator reads a server's flight late; the kernel's stamp is when it arrived, so a
//! latency measured to it is the server's (and the network's), not the client's scheduling.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Asks the kernel to stamp what `tcp` receives from now on.
pub fn enable(tcp: &TcpStream) -> io::Result<()> {
    setsockopt(tcp, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Reads once (waiting for data), returning the byte count (0 at end of stream) and when the kernel received
/// the bytes, if it stamped them.
pub async fn read(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<Instant>)> {
    loop {
        tcp.readable().await?;
        match try_read(tcp, buf) {
            Ok(r) => return Ok(r),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn try_read(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<Instant>)> {
    tcp.try_io(Interest::READABLE, || {
        let mut cmsg = nix::cmsg_space!(TimeSpec);
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            tcp.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let stamp = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                _ => None,
            })
        });
        Ok((msg.bytes, stamp.and_then(to_instant)))
    })
}

/// The monotonic instant of a realtime kernel stamp: now, less how long ago the stamp was (a stamp from the
/// future, after a clock step, counts as now).
fn to_instant(ts: TimeSpec) -> Option<Instant> {
    let secs = u64::try_from(ts.tv_sec()).ok()?;
    let nanos = u32::try_from(ts.tv_nsec()).ok()?;
    let stamp = SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?;
    let (now, wall) = (Instant::now(), SystemTime::now());
    let ago = wall.duration_since(stamp).unwrap_or_default();
    Some(now.checked_sub(ago).unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stamp_is_when_the_bytes_arrived_not_when_they_were_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback test socket");
        let addr = listener.local_addr().expect("loopback test socket");
        let client = TcpStream::connect(addr)
            .await
            .expect("loopback test socket");
        enable(&client).expect("loopback test socket");
        let (mut server, _) = listener.accept().await.expect("loopback test socket");
        // The kernel turns packet stamping on with deferred work after the first socket asks: retry a bounded
        // number of times until stamps flow.
        for _ in 0..200 {
            let sent = Instant::now();
            tokio::io::AsyncWriteExt::write_all(&mut server, b"flight")
                .await
                .expect("loopback test socket");
            tokio::time::sleep(Duration::from_millis(30)).await;
            let mut buf = [0u8; 16];
            let (n, at) = read(&client, &mut buf).await.expect("loopback test socket");
            assert_eq!(buf.get(..n), Some(&b"flight"[..]));
            let read_at = Instant::now();
            if let Some(at) = at {
                // Received right after the write, read 30 ms later.
                assert!(at >= sent - Duration::from_millis(1), "{at:?} {sent:?}");
                assert!(read_at.duration_since(at) >= Duration::from_millis(25));
                return;
            }
        }
        panic!("no read of a stamped socket carried a receive timestamp in 200 tries");
    }
}
