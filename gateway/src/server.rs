//! The public listeners: gannet-server's accept loop (protocol detection or
//! TLS with ALPN, idle timers, the connection cap, graceful drain) serving
//! [`handle`]. The plain listener serves `http` (or, with
//! `--redirect-http`, answers 308 to the https URL); the TLS listener
//! serves `https`. Both answer ACME HTTP-01 challenges first, by host and
//! token ([`crate::challenges`]), before any redirect or routing; other
//! paths pay one `starts_with`. Their counters are the gateway's
//! `gannet_connections_*` and `gannet_tls_*` metrics.

use crate::body::GatewayBody;
use crate::challenges::{ACME_CHALLENGE, Challenges, OWNERSHIP_CHALLENGE, WELL_KNOWN};
use crate::invoke::{State, handle};
use crate::metrics::Metrics;
use crate::router::request_host;
use bytes::Bytes;
use gannet_server::{ServerLimits, TlsSettings};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// Serves plain HTTP on `listener` within `limits` until `shutdown` fires,
/// then stops accepting and waits up to `limits.drain_timeout` for
/// in-flight requests to finish. ACME challenges in `challenges` are
/// answered first; then, with `redirect_to` (the public HTTPS port),
/// requests for a known host are answered 308 to the https URL.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    challenges: Arc<Challenges>,
    limits: ServerLimits,
    redirect_to: Option<u16>,
    shutdown: CancellationToken,
) {
    let stats = state.metrics.server.clone();
    let make = move |peer: SocketAddr| {
        let state = state.clone();
        let challenges = challenges.clone();
        service_fn(move |req: Request<Incoming>| {
            let acme = acme_answer(&challenges, &state.metrics, &req);
            let state = state.clone();
            async move {
                if let Some(answer) = acme {
                    return Ok::<_, Infallible>(answer);
                }
                if let Some(port) = redirect_to
                    && let Some(redirect) = https_redirect(&state, &req, port)
                {
                    return Ok::<_, Infallible>(redirect);
                }
                Ok(handle(&state, req, Scheme::Http, peer).await)
            }
        })
    };
    gannet_server::serve_peers(listener, make, limits, stats, shutdown).await;
}

/// Serves HTTPS on `listener` with `tls`, as [`serve`] does HTTP.
pub async fn serve_tls(
    listener: TcpListener,
    tls: TlsSettings,
    state: Arc<State>,
    challenges: Arc<Challenges>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let stats = state.metrics.server.clone();
    let make = move |peer: SocketAddr| {
        let state = state.clone();
        let challenges = challenges.clone();
        service_fn(move |req: Request<Incoming>| {
            let acme = acme_answer(&challenges, &state.metrics, &req);
            let state = state.clone();
            async move {
                if let Some(answer) = acme {
                    return Ok::<_, Infallible>(answer);
                }
                Ok(handle(&state, req, Scheme::Https, peer).await)
            }
        })
    };
    gannet_server::serve_tls_peers(listener, tls, make, limits, stats, shutdown).await;
}

/// The answer to an ACME HTTP-01 challenge in `challenges` (200, the key
/// authorization as `text/plain`), counted; `None` for every other request,
/// which costs it one `starts_with`.
fn acme_answer<B>(
    challenges: &Challenges,
    metrics: &Metrics,
    req: &Request<B>,
) -> Option<Response<GatewayBody>> {
    if !req.uri().path().starts_with(WELL_KNOWN) {
        return None;
    }
    let key_authorization = challenges.answer(req)?;
    metrics.acme_challenges_answered.inc();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(GatewayBody::platform(key_authorization))
        .ok()
}

/// The 308 to `https://host[:port]/path?query` for a request to a host the
/// gateway serves; `None` (serve it as it is) for ACME challenges and for
/// hosts it does not serve, which then get their 404.
fn https_redirect(
    state: &State,
    req: &Request<Incoming>,
    port: u16,
) -> Option<Response<GatewayBody>> {
    let path = req.uri().path();
    if path.starts_with(ACME_CHALLENGE) || path.starts_with(OWNERSHIP_CHALLENGE) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenges::ChallengeTable;
    use gannet_model::snapshot::AcmeChallenge;
    use http_body_util::BodyExt;

    fn request(method: http::Method, host: &str, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn a_challenge_in_the_table_is_answered_and_counted_and_nothing_else_is() {
        let metrics = Metrics::new().unwrap();
        let challenges = Challenges::new();
        let apps = [AcmeChallenge {
            hostname: "www.example.com".into(),
            token: "tok-1".into(),
            key_authorization: "tok-1.thumbprint".into(),
        }];
        challenges.replace(ChallengeTable::build([("acme/shop", &apps[..])]));
        let path = "/.well-known/acme-challenge/tok-1";

        for method in [http::Method::GET, http::Method::HEAD] {
            let answer = acme_answer(
                &challenges,
                &metrics,
                &request(method, "WWW.example.com:80", path),
            )
            .expect("answered");
            assert_eq!(answer.status(), StatusCode::OK);
            assert_eq!(answer.headers()[header::CONTENT_TYPE], "text/plain");
            let body = answer.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"tok-1.thumbprint");
        }
        assert_eq!(metrics.acme_challenges_answered.get(), 2);

        // Everything else falls through to redirecting and routing.
        for (method, host, path) in [
            (
                http::Method::GET,
                "www.example.com",
                "/.well-known/acme-challenge/tok-2",
            ),
            (http::Method::GET, "shop.example.com", path),
            (http::Method::POST, "www.example.com", path),
            (http::Method::GET, "www.example.com", "/tok-1"),
            (http::Method::GET, "www.example.com", "/"),
        ] {
            let req = request(method, host, path);
            assert!(
                acme_answer(&challenges, &metrics, &req).is_none(),
                "{req:?}"
            );
        }
        assert_eq!(metrics.acme_challenges_answered.get(), 2);
    }
}
