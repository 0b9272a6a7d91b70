//! The public listeners: gannet-server's accept loop (protocol detection or
//! TLS with ALPN, idle timers, the connection cap, graceful drain) serving
//! [`handle`]. The plain listener serves `http` (or, with
//! `--redirect-http`, answers 308 to the https URL); the TLS listener
//! serves `https`. Their counters are the gateway's `gannet_connections_*`
//! and `gannet_tls_*` metrics.

use crate::body::GatewayBody;
use crate::invoke::{State, handle};
use crate::router::request_host;
use bytes::Bytes;
use gannet_server::{ServerLimits, TlsSettings};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// Where ACME HTTP-01 challenges are asked for: never redirected.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// Serves plain HTTP on `listener` within `limits` until `shutdown` fires,
/// then stops accepting and waits up to `limits.drain_timeout` for
/// in-flight requests to finish. With `redirect_to` (the public HTTPS
/// port), requests for a known host are answered 308 to the https URL.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    limits: ServerLimits,
    redirect_to: Option<u16>,
    shutdown: CancellationToken,
) {
    let stats = state.metrics.server.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        async move {
            if let Some(port) = redirect_to
                && let Some(redirect) = https_redirect(&state, &req, port)
            {
                return Ok::<_, Infallible>(redirect);
            }
            Ok(handle(&state, req, Scheme::Http).await)
        }
    });
    gannet_server::serve(listener, service, limits, stats, shutdown).await;
}

/// Serves HTTPS on `listener` with `tls`, as [`serve`] does HTTP.
pub async fn serve_tls(
    listener: TcpListener,
    tls: TlsSettings,
    state: Arc<State>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let stats = state.metrics.server.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, Scheme::Https).await) }
    });
    gannet_server::serve_tls(listener, tls, service, limits, stats, shutdown).await;
}

/// The 308 to `https://host[:port]/path?query` for a request to a host the
/// gateway serves; `None` (serve it as it is) for ACME challenges and for
/// hosts it does not serve, which then get their 404.
fn https_redirect(
    state: &State,
    req: &Request<Incoming>,
    port: u16,
) -> Option<Response<GatewayBody>> {
    if req.uri().path().starts_with(ACME_CHALLENGE) {
        return None;
    }
    let host = request_host(req)?;
    state.routes.load().lookup(&host)?;
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.into_owned()
    };
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, location)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(GatewayBody::platform(Bytes::from_static(b"use https\n")))
        .ok()
}
