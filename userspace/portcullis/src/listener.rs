//! Listening sockets: one SO_REUSEPORT socket per worker per listener, so each worker accepts on its own
//! socket and the kernel spreads new connections among them (no shared accept queue, no thundering herd).

use std::net::SocketAddr;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

/// Binds `count` SO_REUSEPORT sockets to `addr`. When the port is 0 the first socket picks a free port and
/// the rest join it. Returns the sockets (non-blocking, listening) and the bound address.
pub fn bind_group(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> anyhow::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let mut sockets = Vec::with_capacity(count);
    let mut bound = addr;
    for i in 0..count {
        let socket = bind_one(bound, backlog).with_context(|| {
            format!(
                "cannot listen on {bound} (socket {} of {count}): is another process using the port, or is the address not on this host?",
                i + 1
            )
        })?;
        if i == 0 {
            bound = socket.local_addr().context("reading the bound address")?;
        }
        sockets.push(socket);
    }
    Ok((sockets, bound))
}

/// Sets `TCP_DEFER_ACCEPT` on a listening socket (`listeners[].defer_accept`; zero: off), in whole seconds,
/// rounded up: the kernel keeps a connection that has sent no data since its TCP handshake out of the accept
/// queue for that long, then hands it over at its next SYN-ACK retransmission. Set on every socket the workers
/// will accept on, new or inherited in an upgrade, so the running config decides.
pub fn defer_accept(socket: &std::net::TcpListener, d: std::time::Duration) -> std::io::Result<()> {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let secs = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid descriptor and a c_int option value of its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The `TCP_DEFER_ACCEPT` of `socket` as the kernel keeps it (seconds of its retransmission schedule; 0: off).
#[cfg(test)]
fn deferred_accept_secs(socket: &std::net::TcpListener) -> std::io::Result<u32> {
    let mut secs: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid descriptor, and an out value of the given length.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw mut secs).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(u32::try_from(secs).unwrap_or(0))
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn bind_one(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Must be set before bind (TOOLCHAIN.md): every worker's socket joins one reuseport group.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit it: the first ClientHello bytes carry the kernel's receive time
    // (`portcullis_handshake_stage_seconds{stage="socket"}`).
    crate::handshake::arrival::enable(&socket)?;
    // Accepted sockets inherit it too: one setsockopt per listener instead of one per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::time::Duration;

    /// With the option on, a connection is not accepted before its first bytes; they come with it. Off, the TCP
    /// handshake alone makes it acceptable.
    #[test]
    fn a_deferred_listener_hands_over_a_connection_with_its_first_bytes() {
        let (mut sockets, addr) =
            bind_group("127.0.0.1:0".parse().expect("addr"), 1, 16).expect("bind");
        let listener = sockets.pop().expect("one socket");
        defer_accept(&listener, Duration::from_millis(1500)).expect("set");
        assert_eq!(
            deferred_accept_secs(&listener).expect("get"),
            3,
            "1.5 s rounds up to 2 s, kept as the schedule's 3"
        );
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            listener.accept().map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "accepted before any data"
        );
        client.write_all(b"hello").expect("write");
        let mut accepted = None;
        for _ in 0..200 {
            match listener.accept() {
                Ok((s, _)) => {
                    accepted = Some(s);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        let mut accepted = accepted.expect("accepted once the data came");
        accepted.set_nonblocking(false).expect("blocking");
        let mut buf = [0u8; 5];
        accepted.read_exact(&mut buf).expect("the data is there");
        assert_eq!(&buf, b"hello");

        defer_accept(&listener, Duration::ZERO).expect("off");
        assert_eq!(deferred_accept_secs(&listener).expect("get"), 0);
        let _silent = std::net::TcpStream::connect(addr).expect("connect");
        let mut ok = false;
        for _ in 0..200 {
            if listener.accept().is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ok, "off: accepted without data");
    }
}
