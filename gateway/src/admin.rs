//! The admin listener, separate from the public one: Prometheus `/metrics`,
//! `/healthz` (the process is up) and `/readyz` (the routing table has been
//! loaded and its components warmed, and the gateway is not draining).
//!
//! It runs on its own thread and runtime, so a saturated public side cannot
//! starve the scrapes and probes that would tell an operator about it.

use crate::invoke::State;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// Readiness latch.
#[derive(Default)]
pub struct Readiness {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Marks the first routing table as applied and warm.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
    /// Marks the gateway as draining (not ready for new traffic).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }
}

/// Runs the admin server on a thread of its own until `shutdown` fires.
pub fn spawn(
    listener: std::net::TcpListener,
    state: Arc<State>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("gannet-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin runtime failed to start");
                    return;
                }
            };
            rt.block_on(run(listener, state, readiness, shutdown));
        })
}

async fn run(
    listener: std::net::TcpListener,
    state: Arc<State>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener unusable");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = route(&req, &state, &readiness);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn route(req: &Request<Incoming>, state: &State, readiness: &Readiness) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            refresh_scrape_gauges(state);
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Values kept outside prometheus (guest log drops) copied in at scrape time.
fn refresh_scrape_gauges(state: &State) {
    let table = state.routes.load();
    for app in table.apps() {
        let dropped = app.settings.log.take_unreported_drops();
        if dropped > 0 {
            state
                .metrics
                .log_dropped
                .with_label_values(&[app.id.as_str()])
                .inc_by(dropped);
        }
    }
}
