//! The gateway's client of the control API: its registration, state
//! polls, component downloads, ACKs and counter reports, over one keep-alive HTTP client (HTTPS, or plain
//! HTTP to loopback: see [`super::trust`]), each with a timeout and every
//! body read with a size bound.

use super::SyncError;
use super::trust::{self, TrustError};
use crate::config::ControlPlane;
use bytes::Bytes;
use gannet_model::Sha256Digest;
use gannet_model::snapshot::{GatewayAck, GatewayRegistration, GatewayReport, StateUpdate};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Largest body of an answer to an ACK (a problem document at most).
const MAX_ACK_ANSWER: usize = 64 << 10;

/// The flag that names the CAs to trust, for error messages.
const CA_FLAG: &str = "--control-api-ca";

/// The control API as one gateway sees it.
pub(super) struct Api {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub(super) cp: ControlPlane,
}

impl Api {
    /// A client for `cp`: its URL checked (https, or http to loopback),
    /// its certificate verified against `cp.trusted_cas` or the web roots.
    pub(super) fn new(cp: ControlPlane) -> Result<Api, TrustError> {
        trust::control_api_url(&cp.url)?;
        let tls = trust::client_config(cp.trusted_cas.as_deref())?;
        // HTTP/1.1 only, as over plain HTTP: no ALPN is offered.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Api {
            client: Client::builder(TokioExecutor::new()).build(connector),
            cp,
        })
    }

    fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, SyncError> {
        http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.cp.url.trim_end_matches('/')))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.cp.node_token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| SyncError::Api(e.to_string()))
    }

    /// Sends `req`; the response head within `timeout`.
    async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<http::Response<Incoming>, SyncError> {
        tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| SyncError::Api("timed out".into()))?
            .map_err(|e| match trust::tls_failure(&e, CA_FLAG) {
                Some(why) => SyncError::Tls(why),
                None => SyncError::Api(format!("unreachable: {}", trust::error_chain(&e))),
            })
    }

    /// Sends `req` and reads the whole answer, at most `max_body` bytes of
    /// it, within `timeout`.
    async fn call(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(http::StatusCode, Bytes), SyncError> {
        let resp = self.send(req, timeout).await?;
        let status = resp.status();
        let body =
            tokio::time::timeout(timeout, Limited::new(resp.into_body(), max_body).collect())
                .await
                .map_err(|_| SyncError::Api("timed out reading the body".into()))?
                .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => SyncError::TooLarge(format!(
                        "the control API's answer is larger than {max_body} bytes"
                    )),
                    Err(e) => SyncError::Api(e.to_string()),
                })?
                .to_bytes();
        Ok((status, body))
    }

    /// The update since `since`, waiting up to `wait` (at most the
    /// configured poll wait) for one; `None` when nothing changed.
    pub(super) async fn poll(
        &self,
        since: i64,
        wait: Option<Duration>,
    ) -> Result<Option<StateUpdate>, SyncError> {
        let wait = wait.unwrap_or(self.cp.poll_wait).min(self.cp.poll_wait);
        let path = format!(
            "/v1/pops/{}/state?since={since}&wait_ms={}",
            self.cp.pop,
            wait.as_millis()
        );
        let (status, body) = self
            .call(
                self.request(http::Method::GET, &path, Bytes::new())?,
                wait + Duration::from_secs(10),
                usize::try_from(self.cp.max_body.bytes()).unwrap_or(usize::MAX),
            )
            .await?;
        match status {
            http::StatusCode::NOT_MODIFIED => Ok(None),
            s if s.is_success() => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| SyncError::Api(format!("bad state document: {e}"))),
            s => Err(SyncError::Api(format!(
                "{s}: {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    /// Starts downloading `digest`: the response body, to be read by the
    /// caller within its own bounds.
    pub(super) async fn component(&self, digest: &Sha256Digest) -> Result<Incoming, SyncError> {
        let path = format!("/v1/pops/{}/components/{digest}", self.cp.pop);
        let resp = self
            .send(
                self.request(http::Method::GET, &path, Bytes::new())?,
                Duration::from_secs(30),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(SyncError::Api(format!(
                "downloading {digest}: {}",
                resp.status()
            )));
        }
        Ok(resp.into_body())
    }

    /// Registers the gateway: what it runs and where it listens.
    pub(super) async fn register(
        &self,
        registration: &GatewayRegistration,
    ) -> Result<(), SyncError> {
        self.post_json("register", registration).await
    }

    /// Reports an ACK or NACK with the gateway's figures.
    pub(super) async fn ack(&self, ack: &GatewayAck) -> Result<(), SyncError> {
        self.post_json("ack", ack).await
    }

    /// Pushes the request counters of every version served.
    pub(super) async fn report(&self, report: &GatewayReport) -> Result<(), SyncError> {
        self.post_json("report", report).await
    }

    /// POSTs `body` as JSON to `/v1/pops/{pop}/{what}`; any 2xx is success.
    async fn post_json<T: serde::Serialize>(&self, what: &str, body: &T) -> Result<(), SyncError> {
        let body = serde_json::to_vec(body).map_err(|e| SyncError::Api(e.to_string()))?;
        let path = format!("/v1/pops/{}/{what}", self.cp.pop);
        let (status, body) = self
            .call(
                self.request(http::Method::POST, &path, body.into())?,
                Duration::from_secs(10),
                MAX_ACK_ANSWER,
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(SyncError::Api(format!(
                "{what}: {status}: {}",
                String::from_utf8_lossy(&body)
            )))
        }
    }
}
