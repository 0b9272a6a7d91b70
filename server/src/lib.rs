//! gannet-server: the one accept loop behind the gateway's public listener
//! and the control API. HTTP/1.1 and HTTP/2 prior knowledge ("h2c") on one
//! port, with what an edge listener needs against idle and slow clients:
//!
//! - the protocol is detected under a timer (a silent socket is closed);
//! - HTTP/1.1 heads have a read timeout; HTTP/2 has keep-alive pings and
//!   limits against rapid reset;
//! - a connection with no request in flight for the idle timeout is closed
//!   gracefully (both protocols);
//! - connections are capped: at the cap the longest-idle one is closed to
//!   make room, and only when none is idle is a new one refused;
//! - shutdown stops accepting and drains, up to the drain timeout.
//!
//! Where things are: [`limits`] (settings and flags), [`stats`] (counters),
//! `detect` (HTTP/1 vs HTTP/2), `conn` (per-connection activity and the
//! registry), `track` (the service wrapper that records activity), `drive`
//! (one connection's life).

#![deny(missing_docs)]

pub mod bind;
pub mod limits;
pub mod stats;
pub mod tickets;
pub mod tls;

mod conn;
mod detect;
mod drive;
mod track;

pub use bind::bind;
pub use limits::{ServerArgs, ServerLimits};
pub use stats::{Alpn, ServerStats};
pub use tls::{TlsArgs, TlsSettings};

use crate::conn::{Admission, ConnState, Registry};
use crate::drive::{Shared, drive};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The error type hyper takes from services and bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `service` on `listener` within `limits`, counting into `stats`,
/// until `shutdown` fires; then stops accepting (the listener is closed at
/// once), lets in-flight requests finish for up to `limits.drain_timeout`,
/// drops the connections left, and returns.
///
/// A failing accept (out of file descriptors…) is logged and retried after
/// a growing pause; it never ends the loop.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: ServerLimits,
    stats: ServerStats,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    run(
        listener,
        None,
        move |_| service.clone(),
        limits,
        stats,
        shutdown,
    )
    .await;
}

/// [`serve`], with a service made per connection from the client's
/// address (`make(peer)`), for services that need it (a traffic split by
/// client address).
pub async fn serve_peers<F, S, B>(
    listener: TcpListener,
    make: F,
    limits: ServerLimits,
    stats: ServerStats,
    shutdown: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    run(listener, None, make, limits, stats, shutdown).await;
}

/// [`serve`] over TLS: every connection first completes a TLS handshake
/// within `tls.handshake_timeout` (at most `tls.max_handshakes` at once),
/// then speaks the HTTP version it chose by ALPN. The connection cap, idle
/// shedding and drain are the plain listener's.
pub async fn serve_tls<S, B>(
    listener: TcpListener,
    tls: TlsSettings,
    service: S,
    limits: ServerLimits,
    stats: ServerStats,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    let handshaker = Arc::new(tls::Handshaker::new(tls));
    run(
        listener,
        Some(handshaker),
        move |_| service.clone(),
        limits,
        stats,
        shutdown,
    )
    .await;
}

/// [`serve_tls`], with a service made per connection from the client's
/// address, as [`serve_peers`].
pub async fn serve_tls_peers<F, S, B>(
    listener: TcpListener,
    tls: TlsSettings,
    make: F,
    limits: ServerLimits,
    stats: ServerStats,
    shutdown: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    let handshaker = Arc::new(tls::Handshaker::new(tls));
    run(listener, Some(handshaker), make, limits, stats, shutdown).await;
}

async fn run<F, S, B>(
    listener: TcpListener,
    tls: Option<Arc<tls::Handshaker>>,
    make: F,
    limits: ServerLimits,
    stats: ServerStats,
    shutdown: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<BoxError>,
{
    let max_connections = limits.max_connections.max(1);
    let drain_timeout = limits.drain_timeout;
    let shared = Arc::new(Shared::new(limits, stats.clone()));
    let registry = Arc::new(Registry::new(stats.clone()));
    let tracker = TaskTracker::new();
    let epoch = Instant::now();
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::from_millis(5);
                    accepted
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't exit.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        stats.count_accepted();
        match registry.admit(max_connections) {
            Admission::Room => {}
            Admission::ShedIdle => stats.count_shed(),
            Admission::Full => {
                stats.count_refused();
                tracing::debug!(
                    max_connections,
                    "at the connection cap, none idle: refusing"
                );
                // Reset rather than close: nothing to say, nothing to wait for.
                let _ = stream.set_zero_linger();
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnState::new(epoch));
        let registration = registry.insert(conn.clone());
        tracker.spawn(drive(
            shared.clone(),
            tls.clone(),
            stream,
            make(peer),
            conn,
            registration,
        ));
    }
    drop(listener);
    tracker.close();
    tracing::info!(
        connections = registry.count(),
        drain_secs = drain_timeout.as_secs_f64(),
        "stopped accepting; draining connections"
    );
    shared.drain.cancel();
    if tokio::time::timeout(drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = registry.count(),
            "drain timeout reached; closing remaining connections"
        );
        shared.abort.cancel();
        tracker.wait().await;
    } else {
        tracing::info!("all connections drained");
    }
}
