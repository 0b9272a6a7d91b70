//! A native hyper "hello" server: the ceiling the gateway is measured against.
//!
//!     native-hello 127.0.0.1:0                          # prints `listening on http://ADDR`
//!     native-hello 127.0.0.1:0 --tls-cert C --tls-key K # prints `listening on https://ADDR`
//!
//! With `--tls-cert/--tls-key` it serves HTTPS only, with the gateway's own
//! rustls settings (`gannet_server::tls::server_config`: TLS 1.3 and 1.2,
//! ALPN `h2` then `http/1.1`, tickets and session IDs), and picks HTTP/2 or
//! HTTP/1.1 by ALPN as the gateway does: the ceiling for the TLS scenario.

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Answers every request with `hello, world`.
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(default_value = "127.0.0.1:0")]
    addr: String,
    /// Serve HTTPS with this PEM certificate chain (leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"hello, world\n",
    ))))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.addr).await?;
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let key = gannet_server::tls::read_certified_key(cert, key)
                .context("reading --tls-cert/--tls-key")?;
            let config =
                gannet_server::tls::server_config(gannet_server::tls::ReloadableCert::new(key))?;
            eprintln!("listening on https://{}", listener.local_addr()?);
            serve_tls(listener, TlsAcceptor::from(config)).await
        }
        _ => {
            eprintln!("listening on http://{}", listener.local_addr()?);
            serve_plain(listener).await
        }
    }
}

async fn serve_plain(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}

async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let builder = auto::Builder::new(TokioExecutor::new());
            let builder = if h2 {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}
