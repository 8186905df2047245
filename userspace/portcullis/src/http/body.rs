//! Bodies streamed through the proxy, frame by frame (no whole-body buffering; hyper's flow control and
//! rustls' buffer limit give the backpressure), counted on the way, with a hook when a response ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

/// A request body on its way upstream.
pub type UpBody = BoxBody<Bytes, hyper::Error>;
/// A response body on its way to the client.
pub type DownBody = BoxBody<Bytes, hyper::Error>;

/// A short fixed body (our own answers: 502, 504, ...).
pub fn full(text: impl Into<Bytes>) -> DownBody {
    http_body_util::Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Counts the data bytes of `inner` into `count`.
pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    /// Wraps `inner`; `count` grows by each data frame's length.
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when a response body ends, fails, or is dropped unfinished, with the bytes sent.
pub trait OnEnd: Send + 'static {
    /// `complete`: the body reached its end.
    fn ended(self: Box<Self>, bytes: u64, complete: bool);
}

/// A response body that reports its end to an [`OnEnd`].
pub struct Reported {
    inner: DownBody,
    bytes: u64,
    on_end: Option<Box<dyn OnEnd>>,
}

impl Reported {
    /// Wraps `inner`.
    pub fn new(inner: DownBody, on_end: Box<dyn OnEnd>) -> Self {
        Self {
            inner,
            bytes: 0,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, complete: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end.ended(self.bytes, complete);
        }
    }
}

impl Body for Reported {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Poll::Ready(None) => self.end(true),
            Poll::Ready(Some(Err(_))) => self.end(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Reported {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.end(complete);
    }
}
