//! The HTTP client: one method per API call, errors classified for exit codes.
//! Tokens never cross the network in clear: the control API is `https://`
//! (verified against the built-in public roots and any `--ca-cert`), or
//! plain `http://` only on loopback.

use anyhow::Context;
use gannet_gateway::sync::trust;
use gannet_model::api::Problem;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;

/// The option that adds a CA, named in certificate errors.
const CA_FLAG: &str = "--ca-cert";

/// A failed API call.
#[derive(Debug)]
pub enum ApiFailure {
    /// The server refused the request (4xx): the user can fix it. Exit 1.
    Refused { problem: Problem },
    /// The server failed (5xx). Exit 2.
    Server { status: StatusCode, body: String },
    /// The server could not be reached or answered nonsense. Exit 2.
    Network(String),
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiFailure::Refused { problem, .. } => {
                write!(
                    f,
                    "{}",
                    if problem.detail.is_empty() {
                        &problem.title
                    } else {
                        &problem.detail
                    }
                )?;
                for import in &problem.refused_imports {
                    write!(f, "\n  refused import: {import}")?;
                }
                Ok(())
            }
            ApiFailure::Server { status, body } => {
                // A problem document says what is wrong in words.
                match serde_json::from_str::<Problem>(body) {
                    Ok(problem) if !problem.detail.is_empty() => {
                        write!(f, "the control API failed ({status}): {}", problem.detail)
                    }
                    _ => write!(f, "the control API failed ({status}): {body}"),
                }
            }
            ApiFailure::Network(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiFailure::Refused { .. } => 1,
            _ => 2,
        }
    }
}

/// A client for one endpoint and token.
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    token: String,
}

impl Client {
    /// A client of the control API at `endpoint`, which must be `https://`
    /// or `http://` to a loopback host (refused otherwise, before anything
    /// is sent). Its certificate may chain to the built-in public roots or
    /// to a CA certificate in `ca_cert` (PEM, one or more).
    pub fn new(endpoint: &str, token: &str, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let endpoint = trust::control_api_url(endpoint)?;
        // Never follow redirects: a hop to plain http on the same host would
        // carry the token (and any key being uploaded) in clear.
        let mut http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(path) = ca_cert {
            for der in trust::read_ca_file(path)? {
                let cert = reqwest::Certificate::from_der(der.as_ref())
                    .with_context(|| format!("the CA certificate in {}", path.display()))?;
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().context("setting up the HTTP client")?;
        Ok(Client {
            http,
            endpoint,
            token: token.to_string(),
        })
    }

    /// A request to `path` with the bearer token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.endpoint))
            .bearer_auth(&self.token)
    }

    /// Sends and decodes JSON.
    pub async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ApiFailure> {
        self.send_with_headers(req).await.map(|(v, _)| v)
    }

    /// Sends and decodes JSON, returning the response headers too.
    pub async fn send_with_headers<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> Result<(T, reqwest::header::HeaderMap), ApiFailure> {
        let resp = req.send().await.map_err(|e| {
            let why = trust::tls_failure(&e, CA_FLAG).unwrap_or_else(|| trust::error_chain(&e));
            ApiFailure::Network(format!(
                "cannot reach the control API at {}: {why}",
                self.endpoint
            ))
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiFailure::Network(format!("reading the response: {e}")))?;
        if status.is_success() {
            let body = if bytes.is_empty() {
                b"null".as_slice()
            } else {
                &bytes
            };
            return serde_json::from_slice(body)
                .map(|v| (v, headers))
                .map_err(|e| {
                    ApiFailure::Network(format!("unexpected response from the control API: {e}"))
                });
        }
        if status.is_client_error() {
            let problem = serde_json::from_slice(&bytes).unwrap_or_else(|_| Problem {
                kind: "about:blank".into(),
                title: status.to_string(),
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes).into_owned(),
                refused_imports: Vec::new(),
            });
            return Err(ApiFailure::Refused { problem });
        }
        Err(ApiFailure::Server {
            status,
            body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        })
    }

    /// GET `path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiFailure> {
        self.send(self.request(Method::GET, path)).await
    }

    /// POST `body` as JSON to `path`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiFailure> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// PUT `body` as JSON to `path`.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiFailure> {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    /// POST nothing to `path`.
    pub async fn post_empty(&self, path: &str) -> Result<(), ApiFailure> {
        self.send::<serde_json::Value>(self.request(Method::POST, path))
            .await
            .map(|_| ())
    }

    /// DELETE `path` (any answer body, or none, e.g. 204, is ignored).
    pub async fn delete(&self, path: &str) -> Result<(), ApiFailure> {
        self.send::<serde_json::Value>(self.request(Method::DELETE, path))
            .await
            .map(|_| ())
    }
}
