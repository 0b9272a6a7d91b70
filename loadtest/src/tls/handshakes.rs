//! New TLS connections per second, driven by a rustls client: tasks that
//! each, in a loop, connect, do the TLS handshake, send one HTTP/1.1
//! `GET /` with `connection: close` and read the response to its end.
//!
//! - **full**: a client configuration with resumption disabled, so every
//!   handshake is a full one (key exchange and certificate signature);
//! - **resumed**: one configuration shared by every task, with rustls's
//!   default in-memory session store; each task makes one uncounted
//!   connection first so a session is there to resume.
//!
//! The load client checks the handshake's signature but, like wrk and
//! h2load, not the certificate chain, so its CPU goes to the handshake
//! itself; [`check`] verifies the chain once, against the scenario's CA,
//! before any load.

use super::cpu::process_cpu_secs;
use anyhow::{Context, Result, anyhow, bail, ensure};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, HandshakeKind, ProtocolVersion, SignatureScheme,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// How long one connection (connect to end of response) may take before
/// it counts as failed.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether handshakes may resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every handshake a full one.
    Full,
    /// Sessions kept and resumed (TLS 1.3 tickets).
    Resumed,
}

/// What one run came to.
#[derive(Debug, Default)]
pub struct Rate {
    /// Connections that got a complete 200, within the window.
    pub ok: u64,
    /// Connections that failed (connect, handshake, status, timeout).
    pub failed: u64,
    /// Of `ok`, those whose handshake was a resumption (client's view).
    pub resumed: u64,
    /// Of `ok`, those on TLS 1.3.
    pub tls13: u64,
    /// The measured window, seconds.
    pub secs: f64,
    /// CPU the server used in the window, seconds.
    pub server_cpu_secs: f64,
    /// The first failure's reason.
    pub first_error: Option<String>,
}

impl Rate {
    /// Successful connections (handshake and request) per second.
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.secs.max(f64::MIN_POSITIVE)
    }

    /// Fraction of successful connections that resumed.
    pub fn resumed_fraction(&self) -> f64 {
        self.resumed as f64 / self.ok.max(1) as f64
    }

    /// Fraction of successful connections on TLS 1.3.
    pub fn tls13_fraction(&self) -> f64 {
        self.tls13 as f64 / self.ok.max(1) as f64
    }

    /// Server CPU per successful connection, microseconds.
    pub fn server_cpu_us(&self) -> f64 {
        self.server_cpu_secs * 1e6 / self.ok.max(1) as f64
    }

    fn add(&mut self, tally: Rate) {
        self.ok += tally.ok;
        self.failed += tally.failed;
        self.resumed += tally.resumed;
        self.tls13 += tally.tls13;
        if self.first_error.is_none() {
            self.first_error = tally.first_error;
        }
    }
}

/// The load client's configuration for `mode`: TLS 1.3 and 1.2, ALPN
/// `http/1.1`, the chain not verified.
pub fn client_config(mode: Mode) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignatureOnly(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if mode == Mode::Full {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Checks that the server at `addr` serves a chain for `host` that `ca`
/// signed and answers `GET /` with a 200, retrying for a few seconds while
/// it starts.
pub async fn check(
    addr: SocketAddr,
    host: &'static str,
    ca: &CertificateDer<'static>,
) -> Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));
    let name = server_name(host)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(CONNECTION_TIMEOUT, once(addr, &connector, name.clone())).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if Instant::now() >= deadline => {
                return Err(e.context(format!("https://{addr}/ (verified against the CA)")));
            }
            Err(_) if Instant::now() >= deadline => bail!("https://{addr}/ never answered"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs `tasks` connection loops against `addr` for `warmup` then `window`,
/// counting the connections that end within the window, and the CPU the
/// server (process `server_pid`) uses in it.
pub async fn measure(
    addr: SocketAddr,
    host: &'static str,
    mode: Mode,
    tasks: u32,
    warmup: Duration,
    window: Duration,
    server_pid: u32,
) -> Result<Rate> {
    let name = server_name(host)?;
    let start = Instant::now() + warmup;
    let end = start + window;
    // A client config (and so a session store) per loop, as each loop
    // stands for one client: rustls keeps at most 8 TLS 1.3 tickets per
    // server name, so 32 loops sharing one store ran out of tickets and
    // fell back to full handshakes.
    let handles = (0..tasks)
        .map(|_| {
            let connector = TlsConnector::from(client_config(mode)?);
            Ok(tokio::spawn(connection_loop(
                addr,
                connector,
                name.clone(),
                start,
                end,
            )))
        })
        .collect::<Result<Vec<_>>>()?;
    tokio::time::sleep_until(start).await;
    let cpu_start = process_cpu_secs(server_pid);
    tokio::time::sleep_until(end).await;
    let cpu_end = process_cpu_secs(server_pid);
    let mut rate = Rate {
        secs: window.as_secs_f64(),
        ..Rate::default()
    };
    for handle in handles {
        rate.add(handle.await.context("a connection task panicked")?);
    }
    rate.server_cpu_secs = cpu_end? - cpu_start?;
    Ok(rate)
}

fn server_name(host: &'static str) -> Result<ServerName<'static>> {
    ServerName::try_from(host).map_err(|e| anyhow!("{host}: {e}"))
}

/// One task: a first uncounted connection (for a session to resume), then
/// connections until `end`; those ending from `start` to `end` count.
async fn connection_loop(
    addr: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
    start: Instant,
    end: Instant,
) -> Rate {
    let mut tally = Rate::default();
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, once(addr, &connector, name.clone())).await;
    while Instant::now() < end {
        let outcome =
            tokio::time::timeout(CONNECTION_TIMEOUT, once(addr, &connector, name.clone())).await;
        let finished = Instant::now();
        if finished < start {
            continue;
        }
        if finished >= end {
            break;
        }
        let failure = match outcome {
            Ok(Ok(done)) => {
                tally.ok += 1;
                tally.resumed += u64::from(done.resumed);
                tally.tls13 += u64::from(done.tls13);
                continue;
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {CONNECTION_TIMEOUT:?}"),
        };
        tally.failed += 1;
        if tally.first_error.is_none() {
            tally.first_error = Some(failure);
        }
    }
    tally
}

/// What one connection's handshake was.
struct Done {
    resumed: bool,
    tls13: bool,
}

/// One connection: connect, handshake, `GET /`, the whole response.
async fn once(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: ServerName<'static>,
) -> Result<Done> {
    let host = name.to_str().into_owned();
    let tcp = TcpStream::connect(addr).await.context("connecting")?;
    tcp.set_nodelay(true)?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let done = {
        let (_, conn) = tls.get_ref();
        Done {
            resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
            tls13: conn.protocol_version() == Some(ProtocolVersion::TLSv1_3),
        }
    };
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    tls.flush().await.context("sending the request")?;
    let mut response = Vec::with_capacity(512);
    // A server that closes without a TLS close_notify shows as an
    // unexpected EOF: fine when the response is complete by its framing.
    let clean_eof = match tls.read_to_end(&mut response).await {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(e).context("reading the response"),
    };
    check_response(&response, clean_eof)?;
    Ok(done)
}

/// Whether `response` is a complete HTTP/1.1 200 (by content-length, by
/// chunked framing, or by a clean end of the connection).
fn check_response(response: &[u8], clean_eof: bool) -> Result<()> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no complete response head in {} bytes", response.len()))?;
    let head = std::str::from_utf8(&response[..head_end]).context("response head not UTF-8")?;
    let body = &response[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    ensure!(status.starts_with("HTTP/1.1 200"), "answered `{status}`");
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let complete = match (chunked, length) {
        (true, _) => body.ends_with(b"0\r\n\r\n"),
        (false, Some(n)) => body.len() == n,
        (false, None) => clean_eof,
    };
    ensure!(complete, "response cut short ({} body bytes)", body.len());
    Ok(())
}

/// Accepts any certificate chain but checks the handshake's signature with
/// the certificate's key, as a client that skips verification still does.
#[derive(Debug)]
struct SignatureOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::check_response;

    #[test]
    fn responses_are_complete_by_their_framing() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\nhello, world\n";
        assert!(check_response(sized, false).is_ok());
        assert!(check_response(&sized[..sized.len() - 1], true).is_err());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nd\r\nhello, world\n\r\n0\r\n\r\n";
        assert!(check_response(chunked, false).is_ok());
        let by_close = b"HTTP/1.1 200 OK\r\n\r\nhello";
        assert!(check_response(by_close, true).is_ok());
        assert!(check_response(by_close, false).is_err());
        assert!(
            check_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", true).is_err()
        );
    }
}
