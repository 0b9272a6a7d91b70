//! The hot path: one end-user request, from routing to the guest's response.
//!
//! Per request, in order (allocations noted):
//! 1. load the routing table (atomic pointer, no lock), pick the version
//!    (during a rollout: the `gannet-version` pin, else a hash of the
//!    affinity key — a header, a cookie or the client address — against
//!    the canary's weight; no lock, no allocation) and clone its `Arc` (an
//!    atomic increment);
//! 2. check header and declared body sizes against the app's limits;
//! 3. take an app permit (`try_acquire`: shed load rather than queue; a
//!    request over its app's or tenant's share is answered 503 after a
//!    short hold);
//! 4. get the pre-instantiated component from the memory cache (a miss
//!    loads or compiles once, off the executor);
//! 5. take the instance's footprint of the pool for its tenant (one mutex;
//!    refused when the pool is full or the tenant has its share);
//! 6. make a fresh store (allocates: the store, WASI context and env copy,
//!    resource table), push the request and the response outparam into it,
//!    and two oneshot channels;
//! 7. spawn the guest on the guest runtime in its own task (one task
//!    allocation), polled only while it holds a CPU turn of the fair
//!    scheduler (a waiter allocation when it has to queue), under the app's
//!    wall-clock limit; its CPU limit is enforced by the epoch deadline;
//! 8. await the response head; stream its body to the client, cut if the
//!    guest fails later; count it and its time to the head in the version's
//!    report counters (atomic adds).
//!
//! Nothing here touches the disk on a cache hit, a database or the network
//! beyond the client's connection.

use crate::body::{GatewayBody, GuestBody, LimitedRequestBody, Outcome};
use crate::cache::ComponentCache;
use crate::error::Rejection;
use crate::guests::GuestRuntime;
use crate::metrics::Metrics;
use crate::proxies::TrustedProxies;
use crate::router::{App, RouteTable, request_host};
use arc_swap::ArcSwap;
use gannet_runtime::fair::Shares;
use gannet_runtime::fair::cpu::GuestTurn;
use gannet_runtime::fair::slots::{Slot, SlotRefusal};
use gannet_runtime::{GuestFailure, Prepared, Runtime, host::new_store};
use http::{Request, Response, header};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// Everything the hot path shares.
pub struct State {
    /// The current routing table.
    pub routes: ArcSwap<RouteTable>,
    /// Pre-instantiated components.
    pub cache: ComponentCache,
    /// The engine and friends.
    pub runtime: Arc<Runtime>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How tenants share the pool's slots, the guest CPU and memory.
    pub shares: Arc<Shares>,
    /// Where guests run, apart from connections.
    pub guests: GuestRuntime,
    /// How long an app-busy or tenant-busy answer is held.
    pub busy_hold: std::time::Duration,
    /// Proxies whose `X-Forwarded-For` gives the client address.
    pub proxies: TrustedProxies,
}

/// Answers one request that came in over `scheme` (the guest sees it) from
/// `peer`. Never fails: every failure becomes a response.
pub async fn handle(
    state: &State,
    req: Request<Incoming>,
    scheme: Scheme,
    peer: SocketAddr,
) -> Response<GatewayBody> {
    let start = Instant::now();
    let app = {
        let table = state.routes.load();
        let deployment = request_host(&req).and_then(|h| table.lookup(&h));
        match deployment {
            Some(d) => d.pick(req.headers(), peer, &state.proxies).clone(),
            None => return reject(state, None, Rejection::UnknownHost),
        }
    };
    let limits = app.limits();

    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes as u64 > limits.max_request_headers.bytes() {
        return reject(state, Some(&app), Rejection::HeadersTooLarge);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_request_body.bytes()) {
        return reject(state, Some(&app), Rejection::BodyTooLarge);
    }

    let Ok(app_permit) = app.inflight.clone().try_acquire_owned() else {
        return hold_then_reject(state, &app, Rejection::AppBusy).await;
    };

    let prepared = match state.cache.get(app.digest, &app.component_path).await {
        Ok(p) => p,
        Err(_) => return reject(state, Some(&app), Rejection::ArtifactUnavailable),
    };

    let slot = match state
        .shares
        .slots
        .try_take(app.share.tenant.id, &prepared.footprint)
    {
        Ok(slot) => slot,
        Err(SlotRefusal::Full) => return reject(state, Some(&app), Rejection::GatewayBusy),
        Err(SlotRefusal::OverShare) => {
            drop(app_permit);
            return hold_then_reject(state, &app, Rejection::TenantBusy).await;
        }
    };

    let response = invoke(state, &app, prepared, req, scheme, (app_permit, slot)).await;
    let elapsed = start.elapsed();
    app.metrics.duration.observe(elapsed.as_secs_f64());
    app.metrics.counts.record_latency(elapsed);
    response
}

async fn invoke(
    state: &State,
    app: &Arc<App>,
    prepared: Arc<Prepared>,
    req: Request<Incoming>,
    scheme: Scheme,
    permits: (OwnedSemaphorePermit, Slot),
) -> Response<GatewayBody> {
    let limits = *app.limits();
    let mut store = new_store(state.runtime.engine(), &app.settings);
    // Its CPU turns, shared by the task and the store's epoch callback
    // (allocates: one Arc).
    let turn = GuestTurn::new(&state.shares.cpu, app.share.cpu.clone());
    store.data_mut().set_turn(turn.clone());
    let body_exceeded = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        LimitedRequestBody::new(body, limits.max_request_body.bytes(), body_exceeded.clone())
    });
    let (head_tx, head_rx) = oneshot::channel();
    let pushed = {
        let mut http = store.data_mut().http();
        http.new_incoming_request(scheme, req)
            .and_then(|r| Ok((r, http.new_response_outparam(head_tx)?)))
    };
    let (incoming, outparam) = match pushed {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(app = %app.id, error = %e, "request not accepted by wasi:http");
            return reject(state, Some(app), Rejection::Internal);
        }
    };

    let (outcome_tx, outcome_rx) = oneshot::channel::<Outcome>();
    let task_app = app.clone();
    let guest = async move {
        let _permits = permits;
        let app = task_app;
        app.metrics.inflight.inc();
        let run = async {
            let t = Instant::now();
            let proxy = prepared.pre.instantiate_async(&mut store).await?;
            app.metrics.instantiate.observe(t.elapsed().as_secs_f64());
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        };
        let outcome = match tokio::time::timeout(limits.wall(), run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let failure = GuestFailure::classify(&e, store.data().memory_limit_hit());
                tracing::warn!(
                    app = %app.id,
                    version = %app.version,
                    kind = failure.as_str(),
                    cpu_ms = store.data().cpu_used().as_millis() as u64,
                    error = %format!("{e:?}"),
                    "guest failed"
                );
                Err(failure)
            }
            Err(_elapsed) => {
                tracing::warn!(app = %app.id, version = %app.version, kind = "wall-limit", wall_ms = limits.wall_ms, "guest failed");
                Err(GuestFailure::WallLimit)
            }
        };
        if let Err(f) = outcome {
            app.metrics.failure(f.as_str());
        }
        drop(store);
        app.metrics.inflight.dec();
        let _ = outcome_tx.send(outcome);
    };
    // In the CPU round from now (a waiter allocation when it must queue),
    // so a guest yielding before this task is first polled can hand over.
    turn.queue_early();
    state.guests.spawn(turn.run(guest));

    match head_rx.await {
        Ok(Ok(resp)) => {
            let resp = resp.map(|body| {
                GatewayBody::Guest(GuestBody::new(
                    body,
                    outcome_rx,
                    limits.max_response_body.bytes(),
                ))
            });
            app.metrics.count(resp.status().as_u16());
            resp
        }
        Ok(Err(code)) => {
            tracing::info!(app = %app.id, version = %app.version, error = ?code, "guest answered with an error code");
            let r = if body_exceeded.load(Ordering::Relaxed) {
                Rejection::BodyTooLarge
            } else {
                Rejection::GuestError
            };
            reject(state, Some(app), r)
        }
        Err(_) => {
            // The guest dropped its outparam: it finished without a response,
            // or failed (trap, limit) before setting one.
            let outcome = outcome_rx.await.unwrap_or(Err(GuestFailure::Host));
            let r = if body_exceeded.load(Ordering::Relaxed) {
                Rejection::BodyTooLarge
            } else {
                match outcome {
                    Ok(()) => Rejection::NoResponse,
                    Err(f) => Rejection::Guest(f),
                }
            };
            reject(state, Some(app), r)
        }
    }
}

/// Answers a request over its app's or tenant's share after
/// [`State::busy_hold`]: holding it costs a timer, while answering at once
/// would let a client that retries at once spend the connection threads
/// every tenant shares.
async fn hold_then_reject(state: &State, app: &Arc<App>, r: Rejection) -> Response<GatewayBody> {
    tokio::time::sleep(state.busy_hold).await;
    reject(state, Some(app), r)
}

/// Counts, logs and renders a platform response.
fn reject(state: &State, app: Option<&Arc<App>>, r: Rejection) -> Response<GatewayBody> {
    let resp = r.response();
    state
        .metrics
        .rejections
        .with_label_values(&[r.kind()])
        .inc();
    match app {
        Some(app) => {
            app.metrics.count(resp.status().as_u16());
            if matches!(r, Rejection::GatewayBusy | Rejection::TenantBusy) {
                app.metrics.counts.shed.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(r, Rejection::NoResponse | Rejection::GuestError) {
                app.metrics.failure(r.kind());
            }
            tracing::info!(app = %app.id, version = %app.version, status = resp.status().as_u16(), kind = r.kind(), "request rejected");
        }
        None => tracing::debug!(
            status = resp.status().as_u16(),
            kind = r.kind(),
            "request rejected"
        ),
    }
    resp
}
