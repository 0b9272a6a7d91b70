//! The public listener: gannet-server's accept loop (HTTP/1.1 and HTTP/2
//! prior knowledge on one port, protocol detection and idle timers, the
//! connection cap, graceful drain) serving [`handle`]. Its counters are the
//! gateway's `gannet_connections_*` metrics.

use crate::invoke::{State, handle};
use gannet_server::ServerLimits;
use hyper::service::service_fn;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `listener` within `limits` until `shutdown` fires, then stops
/// accepting and waits up to `limits.drain_timeout` for in-flight requests
/// to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let stats = state.metrics.server.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    gannet_server::serve(listener, service, limits, stats, shutdown).await;
}
