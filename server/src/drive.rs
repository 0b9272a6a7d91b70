//! One connection from accept to close: detect the protocol under its
//! timer, serve it with hyper, and close it gracefully when it has been
//! idle too long, when the accept loop sheds it, or when the server drains.

use crate::BoxError;
use crate::conn::{ConnState, Registration};
use crate::detect::{Detected, detect};
use crate::limits::{MAX_HEADERS, ServerLimits};
use crate::stats::ServerStats;
use crate::tls::{Handshake, Handshaker};
use crate::track::Tracked;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// What every connection of one server shares.
pub struct Shared {
    /// The limits.
    pub limits: ServerLimits,
    /// The counters.
    pub stats: ServerStats,
    /// Serves connections detected as HTTP/1.1.
    h1: auto::Builder<TokioExecutor>,
    /// Serves connections detected as HTTP/2.
    h2: auto::Builder<TokioExecutor>,
    /// Cancelled when the server drains: every connection closes gracefully.
    pub drain: CancellationToken,
    /// Cancelled when the drain time is up: every connection is dropped.
    pub abort: CancellationToken,
}

impl Shared {
    /// Builders configured from `limits`.
    pub fn new(limits: ServerLimits, stats: ServerStats) -> Self {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.h1_buffer())
            .max_headers(MAX_HEADERS);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.h2_header_list())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
            .keep_alive_interval(limits.h2_keepalive_interval)
            .keep_alive_timeout(limits.h2_keepalive_timeout);
        Shared {
            h1: b.clone().http1_only(),
            h2: b.http2_only(),
            limits,
            stats,
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
        }
    }
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The server drains.
    Drain,
    /// Nothing in flight for the idle timeout.
    Idle,
    /// The accept loop needed its place.
    Shed,
}

/// Drives the connection `stream` until it ends; `registration` holds its
/// place in the registry until then. With `tls`, the TLS handshake (under
/// its timer) takes the place of protocol detection, and ALPN decides
/// between HTTP/2 and HTTP/1.1.
pub async fn drive<S, B>(
    shared: Arc<Shared>,
    tls: Option<Arc<Handshaker>>,
    stream: TcpStream,
    service: S,
    conn: Arc<ConnState>,
    _registration: Registration,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(tls) = tls else {
        let detected = tokio::select! {
            detected = detect(&stream, shared.limits.detect_timeout) => detected,
            () = conn.shed_requested() => return,
            () = shared.drain.cancelled() => return,
        };
        match detected {
            Detected::Http1 | Detected::Http2 => {}
            Detected::TimedOut => {
                shared.stats.count_detect_timeout();
                tracing::debug!("connection sent no request in time; closing");
                return;
            }
            Detected::Closed => return,
        }
        return serve_http(&shared, TokioIo::new(stream), detected, service, conn).await;
    };
    let handshake = tokio::select! {
        done = tls.handshake(stream, &shared.stats) => done,
        () = conn.shed_requested() => return,
        () = shared.drain.cancelled() => return,
    };
    match handshake {
        Handshake::Done { stream, h2 } => {
            let detected = if h2 { Detected::Http2 } else { Detected::Http1 };
            serve_http(&shared, TokioIo::new(stream), detected, service, conn).await;
        }
        Handshake::TimedOut | Handshake::Failed => {}
    }
}

/// Serves HTTP (`detected` says which version) on `io` until the
/// connection ends, closing it gracefully when idle, shed or drained.
async fn serve_http<I, S, B>(
    shared: &Shared,
    io: TokioIo<I>,
    detected: Detected,
    service: S,
    conn: Arc<ConnState>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    let limits = &shared.limits;
    let builder = match detected {
        Detected::Http2 => &shared.h2,
        _ => &shared.h1,
    };
    let http = builder.serve_connection(io, Tracked::new(service, conn.clone()));
    let mut http = std::pin::pin!(http);

    let close = loop {
        let check_idle = conn.idle_deadline(limits.idle_timeout);
        tokio::select! {
            result = http.as_mut() => {
                ended(&shared.stats, detected, result);
                return;
            }
            () = shared.drain.cancelled() => break Close::Drain,
            () = conn.shed_requested() => break Close::Shed,
            () = tokio::time::sleep_until(check_idle) => {
                let idle = conn
                    .idle_since()
                    .is_some_and(|since| since.elapsed() >= limits.idle_timeout);
                if idle {
                    if conn.start_closing() {
                        shared.stats.count_idle_closed();
                        break Close::Idle;
                    }
                    // Shed meantime: its notification is waiting.
                    break Close::Shed;
                }
            }
        }
    };
    tracing::debug!(reason = ?close, "closing connection gracefully");
    http.as_mut().graceful_shutdown();
    // Requests in flight finish (until the drain time is up); an idle
    // connection gets `close_grace` to close by itself (an HTTP/2 peer has
    // to answer the GOAWAY's ping), then is dropped.
    loop {
        tokio::select! {
            result = http.as_mut() => {
                ended(&shared.stats, detected, result);
                return;
            }
            () = shared.abort.cancelled() => return,
            () = tokio::time::sleep(limits.close_grace) => {
                if !conn.is_busy() {
                    return;
                }
            }
        }
    }
}

/// Counts (and logs) how a connection ended by itself.
fn ended(stats: &ServerStats, detected: Detected, result: Result<(), BoxError>) {
    let Err(e) = result else {
        return;
    };
    let timed_out = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    match (timed_out, detected) {
        (true, Detected::Http2) => stats.count_ping_timeout(),
        (true, _) => stats.count_header_timeout(),
        (false, _) => {}
    }
    tracing::debug!(error = %e, "connection ended with an error");
}
