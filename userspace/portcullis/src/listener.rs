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
