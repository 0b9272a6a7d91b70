//! Sending one admitted outbound request: resolve, check the address,
//! connect, TLS, HTTP/1.1, all within the request's deadline.
//!
//! The connection is driven by a task of its own that holds the request's
//! concurrency permit and ends at the deadline at the latest; the worker
//! future handed to wasi:http waits for it, and aborts it when dropped (when
//! the guest drops the response body, or the instance ends).

use super::OutboundPolicy;
use super::allowlist::Scheme;
use super::dns;
use super::refusals::{self, Refusal};
use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use wasmtime_wasi::runtime::AbortOnDropJoinHandle;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The worker future wasi:http keeps while the response body is read.
pub(crate) type WorkerFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Where an admitted request goes.
pub(crate) struct Target {
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// HTTP or HTTPS.
    pub scheme: Scheme,
    /// The port, explicit or the scheme's default.
    pub port: u16,
}

/// Sends `request` to `target`. `permit` is the instance's concurrency slot,
/// held until the connection ends; `deadline` bounds everything.
pub(crate) async fn send(
    policy: &OutboundPolicy,
    target: Target,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
) -> Result<(http::Response<WasiBody>, WorkerFuture), Error> {
    let head = tokio::time::timeout_at(
        deadline,
        connect_and_send(policy, target, request, options, permit, deadline),
    );
    match head.await {
        Ok(result) => result,
        Err(_elapsed) => {
            refusals::count(Refusal::Timeout);
            Err(Error::HttpResponseTimeout)
        }
    }
}

async fn connect_and_send(
    policy: &OutboundPolicy,
    target: Target,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
) -> Result<(http::Response<WasiBody>, WorkerFuture), Error> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);
    let connect_by = Instant::now()
        .checked_add(connect_timeout)
        .map_or(deadline, |t| t.min(deadline));
    let addr = resolve(&target, policy, connect_by).await?;
    let tcp = tokio::time::timeout_at(connect_by, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out(Error::ConnectionTimeout))?
        .map_err(|_| Error::ConnectionRefused)?;

    // Origin-form request target: the authority travels in the Host header.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let timeouts = Timeouts {
        connect_by,
        first_byte: first_byte_timeout,
        deadline,
    };
    match target.scheme {
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(target.host)
                .map_err(|_| Error::TlsProtocolError)?;
            let connector =
                tokio_rustls::TlsConnector::from(tls_config().ok_or(Error::TlsProtocolError)?);
            let stream = tokio::time::timeout_at(connect_by, connector.connect(name, tcp))
                .await
                .map_err(|_| timed_out(Error::ConnectionTimeout))?
                .map_err(|_| Error::TlsProtocolError)?;
            exchange(TokioIo::new(stream), request, permit, timeouts).await
        }
        Scheme::Http => exchange(TokioIo::new(tcp), request, permit, timeouts).await,
    }
}

/// Counts a timeout refusal and returns `e`.
fn timed_out(e: Error) -> Error {
    refusals::count(Refusal::Timeout);
    e
}

/// The first resolved address the policy allows.
async fn resolve(
    target: &Target,
    policy: &OutboundPolicy,
    deadline: Instant,
) -> Result<SocketAddr, Error> {
    let addrs = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => dns::lookup(&target.host, target.port, deadline).await?,
    };
    if addrs.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    match addrs.into_iter().find(|a| policy.allows_ip(a.ip())) {
        Some(addr) => Ok(addr),
        None => {
            refusals::count(Refusal::DeniedIp);
            tracing::debug!(host = %target.host, "outbound request to a private address refused");
            Err(Error::DestinationIpProhibited)
        }
    }
}

struct Timeouts {
    /// When the HTTP handshake must be done.
    connect_by: Instant,
    /// Longest wait for the response head once the request is sent.
    first_byte: Duration,
    /// When the connection is cut, body or not.
    deadline: Instant,
}

async fn exchange<IO>(
    io: IO,
    request: http::Request<WasiBody>,
    permit: OwnedSemaphorePermit,
    t: Timeouts,
) -> Result<(http::Response<WasiBody>, WorkerFuture), Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let (mut sender, conn) = tokio::time::timeout_at(
        t.connect_by,
        hyper::client::conn::http1::Builder::new().handshake::<IO, WasiBody>(io),
    )
    .await
    .map_err(|_| timed_out(Error::ConnectionTimeout))?
    .map_err(Error::from)?;
    // The driver holds the concurrency permit: it is released when the
    // connection ends (body read, dropped, failed or past the deadline).
    let deadline = t.deadline;
    let mut driver: AbortOnDropJoinHandle<Result<(), Error>> = tokio::spawn(async move {
        let _permit = permit;
        match tokio::time::timeout_at(deadline, conn).await {
            Ok(result) => result.map_err(Error::from),
            Err(_elapsed) => Err(timed_out(Error::HttpResponseTimeout)),
        }
    })
    .into();
    let response = tokio::time::timeout(t.first_byte, sender.send_request(request))
        .await
        .map_err(|_| timed_out(Error::ConnectionReadTimeout))?
        .map_err(Error::from)?;
    let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
    let worker = async move {
        match (&mut *driver).await {
            Ok(result) => result,
            Err(_) => Err(Error::ConnectionTerminated),
        }
    };
    Ok((response, Box::new(worker)))
}

/// The client TLS configuration (webpki roots, ring), built once.
fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| tracing::error!(error = %e, "outbound TLS unavailable"))
                .ok()
        })
        .clone()
}
