//! Bodies on the hot path: the request body as the guest reads it (with the
//! app's size limit) and the response body as the client receives it (with
//! the response limit, and cut — not ended cleanly — when the guest fails
//! mid-stream). Both stream; neither buffers.

use bytes::Bytes;
use gannet_runtime::GuestFailure;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use tokio::sync::oneshot;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the guest's invocation ended, sent by the guest task when it is done.
pub type Outcome = Result<(), GuestFailure>;

/// The request body handed to the guest, cut off with an error once it
/// passes `max` bytes.
pub struct LimitedRequestBody {
    inner: hyper::body::Incoming,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl LimitedRequestBody {
    /// Wraps `inner`; `exceeded` is set if the limit is hit.
    pub fn new(inner: hyper::body::Incoming, max: u64, exceeded: Arc<AtomicBool>) -> Self {
        LimitedRequestBody {
            inner,
            remaining: max,
            exceeded,
        }
    }
}

impl Body for LimitedRequestBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                self.exceeded.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                    None,
                ))));
            }
            self.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body: made by the platform, or streamed from a guest.
pub enum GatewayBody {
    /// A short body the platform made.
    Platform(Full<Bytes>),
    /// A guest's body.
    Guest(GuestBody),
}

impl GatewayBody {
    /// A platform body with `bytes`.
    pub fn platform(bytes: Bytes) -> Self {
        GatewayBody::Platform(Full::new(bytes))
    }
}

/// A guest's response body. Ends cleanly only if the guest finished without
/// failing; otherwise ends with an error so the client sees a cut body
/// (a reset stream, or a connection closed before the last chunk).
pub struct GuestBody {
    inner: HyperOutgoingBody,
    outcome: Option<oneshot::Receiver<Outcome>>,
    remaining: u64,
}

impl GuestBody {
    /// Wraps `inner`, allowing at most `max` bytes, and ending according to
    /// the guest's `outcome`.
    pub fn new(inner: HyperOutgoingBody, outcome: oneshot::Receiver<Outcome>, max: u64) -> Self {
        GuestBody {
            inner,
            outcome: Some(outcome),
            remaining: max,
        }
    }
}

/// Why a guest's body was cut.
#[derive(Debug, thiserror::Error)]
pub enum BodyCut {
    /// The guest failed after its response started.
    #[error("guest failed mid-response: {0}")]
    Guest(&'static str),
    /// The body passed the app's response size limit.
    #[error("response body over the app's limit")]
    TooLarge,
    /// The guest's body stream failed.
    #[error("guest body stream failed")]
    Stream,
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Platform(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            GatewayBody::Guest(g) => g.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Platform(full) => full.is_end_stream(),
            GatewayBody::Guest(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Platform(full) => full.size_hint(),
            GatewayBody::Guest(g) => g.inner.size_hint(),
        }
    }
}

impl GuestBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        return Poll::Ready(Some(Err(BodyCut::TooLarge.into())));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(_)) => Poll::Ready(Some(Err(BodyCut::Stream.into()))),
            None => {
                // The guest closed the stream; it ended cleanly only if the
                // guest's invocation succeeded (a dropped store also closes it).
                let Some(outcome) = self.outcome.as_mut() else {
                    return Poll::Ready(None);
                };
                let result = ready!(Pin::new(outcome).poll(cx));
                self.outcome = None;
                match result {
                    Ok(Ok(())) => Poll::Ready(None),
                    Ok(Err(failure)) => {
                        Poll::Ready(Some(Err(BodyCut::Guest(failure.as_str()).into())))
                    }
                    Err(_) => Poll::Ready(Some(Err(BodyCut::Guest("lost").into()))),
                }
            }
        }
    }
}
