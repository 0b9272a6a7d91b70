//! Test harness: runs the real `gannet-gateway` binary on loopback port 0
//! with a routes file of real example components, and talks to it with a
//! real HTTP client over real sockets.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Path of an example component, built by `examples/build.sh`.
pub fn component(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `bash examples/build.sh` first",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// The cache directory shared by tests that do not test the cache itself,
/// warmed once per test run so no test waits on another's compilation.
pub fn shared_cache() -> PathBuf {
    static WARM: OnceLock<PathBuf> = OnceLock::new();
    WARM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gannet-test-cache");
        let routes_dir = tempfile::tempdir().unwrap();
        let all = [
            "hello", "echo", "env", "spin", "hog", "panic", "sleep", "print", "outbound", "probe",
            "page", "hello-js", "echo-js", "hello-py", "echo-py",
        ];
        let mut routes = String::new();
        for name in all {
            routes.push_str(&app(name, name, &[&format!("{name}.warm.test")], ""));
        }
        let file = routes_dir.path().join("routes.toml");
        std::fs::write(&file, routes).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_gannet-gateway"))
            .args(["--check", "--pool-instances", "20", "--routes"])
            .arg(&file)
            .arg("--cache-dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "warming the shared cache failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .clone()
}

/// One `[[app]]` table for a routes file.
pub fn app(id: &str, component_name: &str, hosts: &[&str], extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "[[app]]\nid = \"{id}\"\nhosts = [{}]\ncomponent = \"{}\"\n{extra}\n",
        hosts.join(", "),
        component(component_name).display()
    )
}

/// A running gateway process. Killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS listener, when started with `--tls-listen`.
    pub tls: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway on `routes` with the shared warm cache.
    pub fn start(routes: &str) -> Gateway {
        Self::start_with(routes, &shared_cache(), &[])
    }

    /// Starts a gateway with `cache_dir` and extra arguments.
    pub fn start_with(routes: &str, cache_dir: &Path, args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let routes_path = dir.path().join("routes.toml");
        std::fs::write(&routes_path, routes).unwrap();
        let mut all: Vec<std::ffi::OsString> = vec!["--routes".into(), routes_path.into()];
        all.extend(["--cache-dir".into(), cache_dir.into()]);
        all.extend(args.iter().map(Into::into));
        Self::spawn(all, dir)
    }

    /// Starts a gateway following the control API at `api_url` as a gateway
    /// of `pop`, with its node token read from a file, its state in
    /// `state_dir` and its compiled components in `cache_dir`.
    pub fn follow(
        api_url: &str,
        pop: &str,
        node_token: &str,
        state_dir: &Path,
        cache_dir: &Path,
        args: &[&str],
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("node-token");
        std::fs::write(&token_file, format!("{node_token}\n")).unwrap();
        let mut all: Vec<std::ffi::OsString> = vec![
            "--control-api".into(),
            api_url.into(),
            "--pop".into(),
            pop.into(),
            "--node-token-file".into(),
            token_file.into(),
            "--state-dir".into(),
            state_dir.into(),
            "--cache-dir".into(),
            cache_dir.into(),
        ];
        all.extend(args.iter().map(Into::into));
        Self::spawn(all, dir)
    }

    /// Runs the binary on loopback port 0 with `args` (the public listener
    /// on the address they give with `--listen`, if they do), and waits
    /// until both listeners are up (and the HTTPS one, with `--tls-listen`).
    fn spawn(args: Vec<std::ffi::OsString>, dir: tempfile::TempDir) -> Gateway {
        let want_tls = args
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--tls-listen"));
        let listen_given = args.iter().any(|a| a.to_str() == Some("--listen"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_gannet-gateway"));
        if !listen_given {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--pool-instances", "64", "--drain-timeout-secs", "10"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(("public", a.parse::<SocketAddr>().unwrap()));
                } else if let Some(a) = line.strip_prefix("listening on https://") {
                    let _ = tx.send(("tls", a.parse::<SocketAddr>().unwrap()));
                } else if let Some(a) = line.strip_prefix("admin listening on http://") {
                    let _ = tx.send(("admin", a.parse::<SocketAddr>().unwrap()));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut addr = None;
        let mut admin = None;
        let mut tls = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        while addr.is_none() || admin.is_none() || (want_tls && tls.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("public", a)) => addr = Some(a),
                Ok(("tls", a)) => tls = Some(a),
                Ok((_, a)) => admin = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "gateway did not start:\n{}",
                        logs.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Gateway {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            tls,
            logs,
            dir,
        }
    }

    pub fn routes_path(&self) -> PathBuf {
        self.dir.path().join("routes.toml")
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "gateway did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// GET `path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = Http::h1()
            .send(self.admin, "admin", "GET", path, &[], Bytes::new())
            .await
            .unwrap();
        (r.status, r.text())
    }

    /// The value of one sample in `/metrics` (0 if absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        metric_value(&text, name_and_labels)
    }

    /// Peak resident memory of the process, bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `name{labels}` (labels in any order given as a substring set) in a
/// Prometheus text exposition.
pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    let (name, labels) = match name_and_labels.split_once('{') {
        Some((n, l)) => (n, l.trim_end_matches('}')),
        None => (name_and_labels, ""),
    };
    let wanted: Vec<&str> = labels.split(',').filter(|s| !s.is_empty()).collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let series = l.split_whitespace().next().unwrap_or("");
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && wanted.iter().all(|w| rest.contains(w))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// A response read whole.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    /// Reads `resp` whole.
    pub async fn read<B>(resp: http::Response<B>) -> Result<Reply, String>
    where
        B: hyper::body::Body,
        B::Error: std::fmt::Display,
    {
        let status = resp.status().as_u16();
        let version = resp.version();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers: parts.headers,
            body,
            version,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A real HTTP client over real sockets: HTTP/1.1, or HTTP/2 with prior
/// knowledge. One connection per request, so requests never share state.
#[derive(Clone, Copy)]
pub struct Http {
    h2: bool,
}

impl Http {
    pub fn h1() -> Self {
        Http { h2: false }
    }
    pub fn h2() -> Self {
        Http { h2: true }
    }

    /// Sends a request with `host` as the Host (HTTP/1.1) or :authority
    /// (HTTP/2) and reads the whole reply.
    pub async fn send(
        &self,
        addr: SocketAddr,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let body: Body = Full::new(body).map_err(|never| match never {}).boxed();
        self.send_body(addr, host, method, path, headers, body)
            .await
    }

    pub async fn send_body(
        &self,
        addr: SocketAddr,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Reply, String> {
        let resp = self
            .request(addr, host, method, path, headers, body)
            .await?;
        Reply::read(resp).await
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn request(
        &self,
        addr: SocketAddr,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let io = TokioIo::new(stream);
        let mut req = http::Request::builder().method(method);
        req = if self.h2 {
            req.uri(format!("http://{host}{path}"))
        } else {
            req.uri(path).header("host", host)
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).map_err(|e| e.to_string())?;
        if self.h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e:?}"))
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e:?}"))
        }
    }

    /// GET with the given host.
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Reply {
        self.send(addr, host, "GET", path, &[], Bytes::new())
            .await
            .unwrap()
    }
}

/// Sends a raw HTTP/1.1 request head and returns the raw response head
/// (status line and headers), without sending any body.
pub async fn raw_head(addr: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("no response head within 10 s")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// An empty request body.
pub fn empty_body() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}
