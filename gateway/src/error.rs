//! The one rescue point: every response the platform makes itself (rather
//! than the guest) comes from [`Rejection::response`].
//!
//! | cause | status | `gannet-error` |
//! |---|---|---|
//! | unknown host | 404 | `unknown-host` |
//! | request body too large | 413 | `body-too-large` |
//! | request headers too large | 431 | `headers-too-large` |
//! | app at its concurrency limit | 503 + `Retry-After` | `app-busy` |
//! | gateway out of instance slots | 503 + `Retry-After` | `gateway-busy` |
//! | tenant at its share of the slots, rest kept for others | 503 + `Retry-After` | `tenant-busy` |
//! | component not loadable | 503 | `artifact-unavailable` |
//! | CPU or wall-clock limit | 504 | `cpu-limit`, `wall-limit` |
//! | guest trap, memory limit, no response, error code | 500 | `trap`, `memory-limit`, `no-response`, `guest-error` |
//! | anything else | 500 | `internal` |
//!
//! Bodies are short plain text and never carry internal detail; the detail
//! goes to the logs with the app's labels.

use crate::body::GatewayBody;
use bytes::Bytes;
use gannet_runtime::GuestFailure;
use http::{HeaderValue, Response, StatusCode, header};

/// Why the platform answered instead of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No app serves the request's host.
    UnknownHost,
    /// The request body is over the app's limit.
    BodyTooLarge,
    /// The request headers are over the app's limit.
    HeadersTooLarge,
    /// The app has `max_inflight` instances running.
    AppBusy,
    /// The gateway has no instance slot free.
    GatewayBusy,
    /// The app's tenant holds its share of the gateway's instance slots and
    /// the rest is kept for other tenants.
    TenantBusy,
    /// The component could not be loaded or compiled.
    ArtifactUnavailable,
    /// The guest failed before sending a response.
    Guest(GuestFailure),
    /// The guest returned without setting a response.
    NoResponse,
    /// The guest answered with a wasi:http error code instead of a response.
    GuestError,
    /// A bug or an unexpected host failure.
    Internal,
}

impl Rejection {
    /// The status code.
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::UnknownHost => StatusCode::NOT_FOUND,
            Rejection::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::AppBusy
            | Rejection::GatewayBusy
            | Rejection::TenantBusy
            | Rejection::ArtifactUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Guest(GuestFailure::CpuLimit | GuestFailure::WallLimit) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Rejection::Guest(_)
            | Rejection::NoResponse
            | Rejection::GuestError
            | Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable kind, sent as `gannet-error` and used as a metric label.
    pub fn kind(self) -> &'static str {
        match self {
            Rejection::UnknownHost => "unknown-host",
            Rejection::BodyTooLarge => "body-too-large",
            Rejection::HeadersTooLarge => "headers-too-large",
            Rejection::AppBusy => "app-busy",
            Rejection::GatewayBusy => "gateway-busy",
            Rejection::TenantBusy => "tenant-busy",
            Rejection::ArtifactUnavailable => "artifact-unavailable",
            Rejection::Guest(f) => f.as_str(),
            Rejection::NoResponse => "no-response",
            Rejection::GuestError => "guest-error",
            Rejection::Internal => "internal",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Rejection::UnknownHost => "no app is served at this host\n",
            Rejection::BodyTooLarge => "request body too large\n",
            Rejection::HeadersTooLarge => "request headers too large\n",
            Rejection::AppBusy => "app is at its concurrency limit; retry shortly\n",
            Rejection::GatewayBusy => "gateway is at capacity; retry shortly\n",
            Rejection::TenantBusy => {
                "this tenant has its share of the gateway in use; retry shortly\n"
            }
            Rejection::ArtifactUnavailable => "app is not available right now\n",
            Rejection::Guest(GuestFailure::CpuLimit) => "app exceeded its CPU time limit\n",
            Rejection::Guest(GuestFailure::WallLimit) => "app exceeded its time limit\n",
            Rejection::Guest(GuestFailure::MemoryLimit) => "app exceeded its memory limit\n",
            Rejection::Guest(_) => "app failed\n",
            Rejection::NoResponse => "app returned no response\n",
            Rejection::GuestError => "app failed\n",
            Rejection::Internal => "internal error\n",
        }
    }

    /// The response the client gets.
    pub fn response(self) -> Response<GatewayBody> {
        let mut resp = Response::new(GatewayBody::platform(Bytes::from_static(
            self.message().as_bytes(),
        )));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert("gannet-error", HeaderValue::from_static(self.kind()));
        if matches!(
            self,
            Rejection::AppBusy | Rejection::GatewayBusy | Rejection::TenantBusy
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
