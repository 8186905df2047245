//! The per-worker upstream pool: HTTP/1.1 keep-alive connections on hyper's client connection API, kept per
//! worker thread (a connection never moves between workers), bounded per upstream, closed after an idle timeout.
//!
//! A connection goes back to the pool once hyper says it can take another request, i.e. after the response
//! body was read to its end; a response cut short or an upgrade (101) takes it out for good.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::UpBody;
use crate::proxy::upstream::{ConnectFailure, Upstreams};

/// A connection that can send one request.
pub type Sender = http1::SendRequest<UpBody>;

/// How the pool behaves (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept per upstream.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, VecDeque<Idle>>,
    reaper: bool,
}

thread_local! {
    // Workers are current-thread runtimes, one per OS thread: a thread-local pool is a per-worker pool.
    static POOL: RefCell<Pool> = RefCell::default();
}

/// Why no connection could be had: the `cause` label of `portcullis_http_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutError {
    /// TCP connect failed or timed out.
    Connect(ConnectFailure),
    /// The HTTP/1.1 handshake on a new connection failed.
    Handshake,
}

/// An idle pooled connection to `addr` if one is alive (`true`: reused), else a new one.
pub async fn checkout(
    upstreams: &Upstreams,
    addr: SocketAddr,
    settings: PoolSettings,
) -> Result<(Sender, bool), CheckoutError> {
    if let Some(sender) = take_idle(addr, settings.idle_timeout) {
        return Ok((sender, true));
    }
    let tcp = upstreams
        .connect(addr)
        .await
        .map_err(|(cause, _)| CheckoutError::Connect(cause))?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|_| CheckoutError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok((sender, false))
}

/// Puts `sender` back once its response is done, if it is still usable and the pool has room.
pub fn checkin_when_ready(addr: SocketAddr, mut sender: Sender, settings: PoolSettings) {
    if settings.max_idle == 0 {
        return;
    }
    tokio::spawn(async move {
        if sender.ready().await.is_err() {
            return;
        }
        POOL.with_borrow_mut(|pool| {
            let list = pool.idle.entry(addr).or_default();
            if list.len() < settings.max_idle {
                list.push_back(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
            if !pool.reaper {
                pool.reaper = true;
                tokio::spawn(reap(settings.idle_timeout));
            }
        });
    });
}

fn take_idle(addr: SocketAddr, idle_timeout: Duration) -> Option<Sender> {
    POOL.with_borrow_mut(|pool| {
        let list = pool.idle.get_mut(&addr)?;
        // Most recently used first: it is the least likely to have been closed by the upstream meanwhile.
        while let Some(idle) = list.pop_back() {
            if idle.since.elapsed() < idle_timeout && idle.sender.is_ready() {
                return Some(idle.sender);
            }
        }
        None
    })
}

/// Closes idle connections past their timeout, every half timeout, for the life of the worker.
async fn reap(idle_timeout: Duration) {
    loop {
        tokio::time::sleep(idle_timeout / 2).await;
        POOL.with_borrow_mut(|pool| {
            for list in pool.idle.values_mut() {
                list.retain(|i| i.since.elapsed() < idle_timeout && !i.sender.is_closed());
            }
        });
    }
}
