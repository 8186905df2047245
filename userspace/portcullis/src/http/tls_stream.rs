//! A [`TlsConn`] (rustls over the client socket) as one `AsyncRead + AsyncWrite`, for hyper.
//!
//! tokio-rustls builds its stream only through its own `Accept`, but our handshake stage drives rustls itself
//! (`handshake::run`), so this small poll-based adapter takes over the established connection. It is also the
//! shape 0-RTT needs: it reads whatever plaintext rustls releases, early data included.
//!
//! 0-RTT (RFC 8470): with early data accepted, the stage hands the connection over right after its flight,
//! before the client's Finished ([`Finishing`]). The stream then reads the early data from rustls first, drives
//! the rest of the handshake (read_tls/process_new_packets) while hyper reads, and reads `conn.reader()` once
//! the Finished is processed. [`EarlyView`] tells the proxy whether a request's head came entirely in early
//! data (no post-handshake byte handed to hyper yet) and waits for the handshake's end. hyper does not poll
//! reads while an h1 service future is pending, so [`TlsStream::finish_handshake`], run beside hyper in the
//! connection's own task, drives the reads too: one task reads the socket, so tokio's single read waker per
//! socket always wakes the task that must read next.
//!
//! The stream is a cheap handle (`Clone`) on shared state: hyper owns one, and the connection's driver keeps
//! another to answer 408 itself after cancelling hyper on a header read timeout (hyper only closes).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::watchdog::Activity;
use crate::handshake::failure::Failure;
use crate::handshake::{HandshakeError, OnFinished};
use crate::tls_conn::TlsConn;

/// A handshake handed over before the client's Finished: what to call at its end, and by when.
pub struct Finishing {
    /// Records the handshake's end (metrics), success or failure.
    pub on_finished: OnFinished,
    /// `tls.handshake_timeout` after accept: the Finished must be processed by then.
    pub deadline: Instant,
}

/// The TLS connection, shared by the handles.
struct Inner {
    tls: TlsConn,
    /// close_notify already queued.
    closing: bool,
    /// What 0-RTT adds; boxed, so a connection without early data (nearly all) keeps no room for it
    /// (BENCHMARKS.md, "Idle connections").
    zero_rtt: Option<Box<ZeroRtt>>,
}

/// A connection's 0-RTT state.
struct ZeroRtt {
    /// Early data (0-RTT) the handshake stage took out of rustls, held until the client's Finished and read
    /// before anything rustls releases after it.
    early: bytes::Bytes,
    /// The handshake is not finished (0-RTT handed over): its end still has to be recorded.
    finishing: Option<Finishing>,
    /// rustls may still hold early data to read first (0-RTT handed over, not all read yet).
    early_in_rustls: bool,
    /// Shared with the proxy's [`EarlyView`]s; `None` unless the connection was handed over unfinished.
    handover: Option<Arc<Handover>>,
}

/// What the requests of a connection handed over before the client's Finished see of it.
struct Handover {
    /// A plaintext byte from after the handshake went to hyper: no later request head is early.
    late: AtomicBool,
    /// `None` while handshaking, then whether it finished well; with the tasks waiting for that.
    state: Mutex<(Option<bool>, Vec<Waker>)>,
}

impl Handover {
    fn lock(&self) -> MutexGuard<'_, (Option<bool>, Vec<Waker>)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A request's view of a connection handed over before the client's Finished (cheap to clone).
#[derive(Clone)]
pub struct EarlyView(Arc<Handover>);

impl EarlyView {
    /// Whether a request whose head hyper just parsed came entirely in early data: no byte from after the
    /// client's Finished was handed to hyper yet. A head that straddles counts as not early (safe: it comes
    /// after the Finished, and is forwarded without `Early-Data`).
    pub fn is_early(&self) -> bool {
        !self.0.late.load(Ordering::Acquire)
    }

    /// Whether the client's Finished is still to come (a request may then go upstream before it).
    pub fn is_unfinished(&self) -> bool {
        self.0.lock().0.is_none()
    }

    /// Waits for the handshake's end (bounded by the connection's handshake deadline, which the connection's
    /// task enforces); `true` when it finished well.
    pub async fn finished(&self) -> bool {
        std::future::poll_fn(|cx| {
            let mut state = self.0.lock();
            if let Some(ok) = state.0 {
                return Poll::Ready(ok);
            }
            if !state.1.iter().any(|w| w.will_wake(cx.waker())) {
                state.1.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// A handle on one TLS connection; every handle reads and writes the same stream.
#[derive(Clone)]
pub struct TlsStream {
    inner: Arc<Mutex<Inner>>,
    activity: Arc<Activity>,
}

impl TlsStream {
    /// Takes over an established connection. `activity` learns when request bytes arrive. `early` is the early
    /// data the handshake stage took out of rustls (empty without 0-RTT): it is read first. `finishing`: the
    /// handshake is not finished (0-RTT handed over before the client's Finished, its early data in rustls).
    pub fn new(
        tls: TlsConn,
        activity: Arc<Activity>,
        early: Vec<u8>,
        finishing: Option<Finishing>,
    ) -> Self {
        let handover = finishing.as_ref().map(|_| {
            Arc::new(Handover {
                late: AtomicBool::new(false),
                state: Mutex::new((None, Vec::new())),
            })
        });
        let zero_rtt = (!early.is_empty() || finishing.is_some()).then(|| {
            Box::new(ZeroRtt {
                early: bytes::Bytes::from(early),
                early_in_rustls: finishing.is_some(),
                finishing,
                handover,
            })
        });
        Self {
            inner: Arc::new(Mutex::new(Inner {
                tls,
                closing: false,
                zero_rtt,
            })),
            activity,
        }
    }

    /// The requests' view of the handshake, when the connection was handed over before the client's Finished.
    pub fn early_view(&self) -> Option<EarlyView> {
        self.lock().handover().cloned().map(EarlyView)
    }

    /// Whether the handshake still waits for the client's Finished.
    pub fn is_finishing(&self) -> bool {
        self.lock().finishing().is_some()
    }

    /// Drives the handshake to the client's Finished, reading the socket itself (hyper may not be reading), by
    /// the handshake deadline; `true` when it finished well (at once when it was not handed over unfinished).
    /// A timeout is recorded as the handshake's failure. Run it in the connection's task, beside hyper: bytes
    /// it reads for hyper wake that task.
    pub async fn finish_handshake(&self) -> bool {
        let deadline = self.lock().finishing().map(|f| f.deadline);
        let Some(deadline) = deadline else {
            let inner = self.lock();
            return inner.handover().is_none_or(|h| h.lock().0 == Some(true));
        };
        let drive = std::future::poll_fn(|cx| self.lock().poll_finish(cx));
        match tokio::time::timeout_at(deadline.into(), drive).await {
            Ok(ok) => ok,
            Err(_) => {
                self.lock().finished(Err(HandshakeError::new(
                    Failure::Timeout,
                    "no Finished from the client after its early data",
                )));
                false
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic mid-call on this connection; the state is still a valid rustls state.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `bytes` as plaintext, then close_notify, and flushes: the last words on a connection no other
    /// handle uses any more (the 408 after a header read timeout). Best effort.
    pub async fn last_words(&self, bytes: &[u8]) {
        {
            let mut inner = self.lock();
            let _ = inner.tls.writer().write_all(bytes);
            inner.tls.send_close_notify();
            inner.closing = true;
        }
        let _ = std::future::poll_fn(|cx| self.lock().poll_flush_tls(cx)).await;
    }
}

impl Inner {
    /// The unfinished handshake's end to record (0-RTT handed over).
    fn finishing(&self) -> Option<&Finishing> {
        self.zero_rtt.as_ref()?.finishing.as_ref()
    }

    /// The requests' view of a connection handed over unfinished.
    fn handover(&self) -> Option<&Arc<Handover>> {
        self.zero_rtt.as_ref()?.handover.as_ref()
    }

    /// A plaintext byte from after the handshake goes to hyper (tells a connection handed over unfinished).
    fn late(&self) {
        if let Some(h) = self.handover() {
            h.late.store(true, Ordering::Release);
        }
    }

    /// Records the handshake's end (once) and wakes the requests waiting for it.
    fn finished(&mut self, result: Result<(), HandshakeError>) {
        let Some(zero_rtt) = &mut self.zero_rtt else {
            return;
        };
        let Some(finishing) = zero_rtt.finishing.take() else {
            return;
        };
        let ok = result.is_ok();
        (finishing.on_finished)(result);
        if let Some(h) = &zero_rtt.handover {
            let waiters = {
                let mut state = h.lock();
                state.0 = Some(ok);
                std::mem::take(&mut state.1)
            };
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// One step of an unfinished handshake: reads and processes what the socket has. `Ready(Ok)` after any
    /// progress (or at the end), `Pending` with the waker registered. A failure is recorded as the handshake's.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let fail = |this: &mut Self, failure, detail: String, kind| {
            this.finished(Err(HandshakeError::new(failure, detail)));
            Poll::Ready(Err(io::Error::from(kind)))
        };
        if !self.tls.is_handshaking() {
            self.finished(Ok(()));
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
            return fail(self, Failure::from_io(&e), e.to_string(), e.kind());
        }
        match self.tls.read_tls() {
            Ok(0) => fail(
                self,
                Failure::ClientClosed,
                "end of stream before the client's Finished".into(),
                io::ErrorKind::UnexpectedEof,
            ),
            Ok(_) => match self.tls.process_new_packets() {
                Ok(_) => {
                    if !self.tls.is_handshaking() {
                        self.finished(Ok(()));
                        // The session tickets rustls queued on the Finished (best effort: the next flush
                        // sends what the socket did not take).
                        let _ = self.poll_flush_tls(cx);
                    }
                    Poll::Ready(Ok(()))
                }
                Err(e) => {
                    // Best effort: tell the client why (the alert rustls queued) before failing.
                    let _ = self.tls.write_tls();
                    fail(
                        self,
                        Failure::from_rustls(&e),
                        e.to_string(),
                        io::ErrorKind::InvalidData,
                    )
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match self.tls.tcp().poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                    Poll::Ready(Err(e)) => {
                        fail(self, Failure::from_io(&e), e.to_string(), e.kind())
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            Err(e) => fail(self, Failure::from_io(&e), e.to_string(), e.kind()),
        }
    }

    /// Drives an unfinished handshake until its end (`Ready(ok)`) or until the socket has nothing more. Any
    /// progress wakes the task, so hyper, polled by the same task, reads what arrived.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut progress = false;
        while self.finishing().is_some() {
            match self.poll_handshake(cx) {
                Poll::Ready(Ok(())) => progress = true,
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Pending => {
                    if progress {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
            }
        }
        if progress {
            cx.waker().wake_by_ref();
        }
        Poll::Ready(self.handover().is_none_or(|h| h.lock().0 == Some(true)))
    }

    /// Early data still in rustls (0-RTT handed over), then the handshake's end: `Ready(Some(n))` with early
    /// bytes, `Ready(None)` once all is read and the handshake finished, `Pending` while waiting for either.
    fn poll_early(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<Option<usize>>> {
        loop {
            if let Some(mut early) = self.tls.early_data() {
                let n = early.read(buf.initialize_unfilled()).unwrap_or(0);
                if n > 0 {
                    buf.advance(n);
                    return Poll::Ready(Ok(Some(n)));
                }
            }
            if self.finishing().is_none() {
                if let Some(zero_rtt) = &mut self.zero_rtt {
                    zero_rtt.early_in_rustls = false;
                }
                return Poll::Ready(Ok(None));
            }
            match self.poll_handshake(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes what rustls has queued until it is empty or the socket is full (then Pending, waker registered).
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tls.poll_flush(cx)
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        if let Some(zero_rtt) = &mut self.zero_rtt
            && !zero_rtt.early.is_empty()
        {
            let n = zero_rtt.early.len().min(buf.remaining());
            buf.put_slice(&zero_rtt.early.split_to(n));
            return Poll::Ready(Ok(n));
        }
        if self.zero_rtt.as_ref().is_some_and(|z| z.early_in_rustls) {
            match self.poll_early(cx, buf) {
                Poll::Ready(Ok(Some(n))) => return Poll::Ready(Ok(n)),
                Poll::Ready(Ok(None)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            match self.tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 {
                        self.late();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The client closed TCP without close_notify: an end of stream to hyper, which itself calls a
                // message cut short an error.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Whatever rustls wants to send (tickets, alerts, key updates) goes out before we wait.
            if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            match self.tls.read_tls() {
                Ok(0) => {
                    // End of TCP stream: let rustls say whether close_notify came first (next loop's read).
                    if let Err(e) = self.tls.process_new_packets() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    match self.tls.reader().read(buf.initialize_unfilled()) {
                        Ok(n) => {
                            buf.advance(n);
                            if n > 0 {
                                self.late();
                            }
                            return Poll::Ready(Ok(n));
                        }
                        Err(_) => return Poll::Ready(Ok(0)),
                    }
                }
                Ok(_) => {
                    if let Err(e) = self.tls.process_new_packets() {
                        // Best effort: tell the client why (the alert rustls queued) before failing.
                        let _ = self.tls.write_tls();
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.tls.tcp().poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Records reach the socket on poll_flush (hyper flushes after each h1 message, h2 after each batch of frames),
        // so what one flush covers leaves in one writev instead of one per write: h2 writes a frame's head and payload
        // separately (BENCHMARKS.md, "HTTP proxying"). rustls takes what fits under its buffer limit (64 KiB): that
        // limit is the backpressure. A full buffer flushed completely takes bytes on the second try; if it still takes
        // none, say so (0) rather than spin.
        let n = self.tls.writer().write(buf)?;
        if n > 0 || buf.is_empty() {
            return Poll::Ready(Ok(n));
        }
        if self.poll_flush_tls(cx)?.is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Ok(self.tls.writer().write(buf)?))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            self.tls.send_close_notify();
            self.closing = true;
        }
        match self.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => {
                self.tls.shutdown_write();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The connection ended before the client's Finished (client gone, or closed by us): still recorded once.
        self.finished(Err(HandshakeError::new(
            Failure::ClientClosed,
            "connection closed before the client's Finished",
        )));
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = match self.lock().poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if n > 0 {
            self.activity.bytes_in();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.lock().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().poll_shutdown(cx)
    }
}
