//! gannet-server over real sockets on loopback: floods of silent and
//! preface-only connections, slowloris, HTTP/2 rapid reset, the connection
//! cap, graceful drain. Each test starts its own server on port 0 and stops
//! it (and every task it started) before it ends.

use bytes::Bytes;
use gannet_server::{ServerLimits, ServerStats};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every HTTP/2 prior-knowledge client sends first, then an empty
/// SETTINGS frame.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A server answering `hello` (or, for `/slow`, once released), counting
/// the requests that reached it.
struct TestServer {
    addr: SocketAddr,
    stats: ServerStats,
    calls: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(limits: ServerLimits) -> TestServer {
    let listener = gannet_server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, gate) = watch::channel(false);
    let service = {
        let calls = calls.clone();
        service_fn(move |req: Request<Incoming>| {
            let calls = calls.clone();
            let mut gate = gate.clone();
            async move {
                calls.fetch_add(1, SeqCst);
                if req.uri().path() == "/slow" {
                    loop {
                        let open = *gate.borrow_and_update();
                        if open || gate.changed().await.is_err() {
                            break;
                        }
                    }
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
            }
        })
    };
    let stats = ServerStats::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gannet_server::serve(
        listener,
        service,
        limits,
        stats.clone(),
        shutdown.clone(),
    ));
    TestServer {
        addr,
        stats,
        calls,
        release,
        shutdown,
        task,
    }
}

impl TestServer {
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    /// Shuts the server down and waits for it to return.
    async fn stop(self) {
        self.release.send_replace(true);
        self.shutdown.cancel();
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server returns after shutdown")
            .expect("server task");
    }
}

/// One HTTP/1.1 connection made with hyper's client.
struct H1 {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    conn: JoinHandle<()>,
}

impl H1 {
    async fn connect(addr: SocketAddr) -> Result<H1, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H1 { send, conn })
    }

    async fn get(&mut self, path: &str) -> Result<StatusCode, BoxError> {
        self.send.ready().await?;
        let req = Request::get(path)
            .header(hyper::header::HOST, "test")
            .body(Empty::new())?;
        let response = self.send.send_request(req).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }

    /// Whether the server closed the connection.
    fn is_closed(&self) -> bool {
        self.conn.is_finished()
    }
}

/// `GET path` on a new connection, within 10 s.
async fn get(addr: SocketAddr, path: &str) -> Result<StatusCode, BoxError> {
    timeout(Duration::from_secs(10), async {
        H1::connect(addr).await?.get(path).await
    })
    .await?
}

/// Reads until the peer closes (or resets) the connection; what it sent.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits (up to 5 s) until `cond` holds.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; the soft
/// limit in force afterwards.
fn raise_nofile_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    let target = limit.rlim_max.min(1 << 20);
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = target;
        }
    }
    limit.rlim_cur
}

/// How many sockets of each of two kinds fit in the descriptor limit (each
/// costs two: the client's and the server's), up to `wanted`, leaving room
/// for the other tests of this binary, which run alongside. (Past the
/// limit the server cannot accept, and a silent socket left in the listen
/// backlog has no timer to close it.)
fn flood_size(wanted: usize) -> usize {
    let limit = raise_nofile_limit();
    let fits = usize::try_from(limit.saturating_sub(3_000) / 4).unwrap_or(usize::MAX);
    if fits < wanted {
        eprintln!(
            "note: RLIMIT_NOFILE allows {limit} descriptors: flooding with {fits} sockets of each kind instead of {wanted}"
        );
    }
    fits.min(wanted)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flood {
    /// Connects and sends nothing.
    Silent,
    /// Sends the HTTP/2 preface and an empty SETTINGS frame, then nothing.
    PrefaceOnly,
}

// ---------------------------------------------------------------------------
// Idle floods: sockets that never send a request hold a descriptor each.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_and_preface_only_floods_are_closed_in_time_while_real_clients_are_served() {
    let per_kind = flood_size(5_000);
    let detect = Duration::from_secs(1);
    let idle = Duration::from_secs(1);
    let grace = Duration::from_secs(1);
    // Generous: on a loaded machine (CI runs the other tests alongside) the
    // accept loop and timers lag; what matters is that every socket closes.
    let slack = Duration::from_secs(20);
    let server = start(ServerLimits {
        detect_timeout: detect,
        idle_timeout: idle,
        close_grace: grace,
        // No pings: the idle timer alone must close preface-only clients.
        h2_keepalive_interval: None,
        // Room for all: none is closed by shedding.
        max_connections: 4 * per_kind + 100,
        ..ServerLimits::default()
    })
    .await;
    let addr = server.addr;

    let flooding = CancellationToken::new();
    let bystander = tokio::spawn({
        let flooding = flooding.clone();
        async move {
            let mut served = 0u32;
            while !flooding.is_cancelled() {
                let status = get(addr, "/")
                    .await
                    .expect("a real client during the flood");
                assert_eq!(status, StatusCode::OK);
                served += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            served
        }
    });

    // At most 256 connects at once, so the listen backlog never overflows.
    let connecting = Arc::new(Semaphore::new(256));
    let mut flood = JoinSet::new();
    for i in 0..2 * per_kind {
        // Never more than 512 handshakes ahead of the accept loop: past the
        // listen backlog the kernel drops the handshake's last ACK, and a
        // socket the client thinks open is one the server never saw.
        while i as u64 > server.stats.accepted() + 512 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let kind = if i % 2 == 0 {
            Flood::Silent
        } else {
            Flood::PrefaceOnly
        };
        let connecting = connecting.clone();
        flood.spawn(async move {
            let permit = connecting.acquire_owned().await.expect("semaphore");
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            if kind == Flood::PrefaceOnly {
                stream
                    .write_all(PREFACE_AND_SETTINGS)
                    .await
                    .expect("send the preface");
            }
            drop(permit);
            let opened = Instant::now();
            let allowed = match kind {
                Flood::Silent => detect + slack,
                Flood::PrefaceOnly => idle + grace + slack,
            };
            let closed = timeout(allowed, read_until_closed(&mut stream))
                .await
                .is_ok();
            (kind, closed, opened.elapsed())
        });
    }
    let mut still_open = Vec::new();
    while let Some(joined) = flood.join_next().await {
        let (kind, closed, after) = joined.expect("flood task");
        if !closed {
            still_open.push((kind, after));
        }
    }
    flooding.cancel();
    let served = bystander.await.expect("bystander task");

    assert!(
        still_open.is_empty(),
        "{} of {} flood sockets were still open past their timeout (accepted {}, detect timeouts {}, idle closed {}), e.g. {:?}",
        still_open.len(),
        2 * per_kind,
        server.stats.accepted(),
        server.stats.detect_timeouts(),
        server.stats.idle_closed(),
        &still_open[..still_open.len().min(5)]
    );
    assert!(
        served >= 5,
        "only {served} requests were served during the flood"
    );
    let per_kind = per_kind as u64;
    assert!(
        server.stats.detect_timeouts() >= per_kind,
        "{} detect timeouts for {per_kind} silent sockets",
        server.stats.detect_timeouts()
    );
    assert!(
        server.stats.idle_closed() >= per_kind,
        "{} idle closes for {per_kind} preface-only sockets",
        server.stats.idle_closed()
    );
    assert_eq!(server.stats.shed_idle(), 0);
    wait_until("every flood connection is gone", || {
        server.stats.open() == 0
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Slowloris: a request head sent a byte at a time holds a connection.

/// 66 bytes: 13 s at one byte per 200 ms.
const SLOW_HEAD: &[u8] =
    b"GET / HTTP/1.1\r\nHost: test\r\nUser-Agent: slowloris\r\nAccept: */*\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_head_is_cut_by_the_header_read_timeout_while_others_are_served() {
    let server = start(ServerLimits {
        header_read_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    })
    .await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let slowloris = tokio::spawn(async move {
        for byte in SLOW_HEAD {
            if write.write_all(&[*byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        true
    });

    assert_eq!(
        get(server.addr, "/").await.expect("another client"),
        StatusCode::OK
    );
    let answer = timeout(Duration::from_secs(5), read_until_closed(&mut read))
        .await
        .expect("the slowloris connection is closed");
    let cut_after = started.elapsed();
    assert!(
        cut_after < Duration::from_secs(3),
        "cut only after {cut_after:?}"
    );
    assert!(
        answer.is_empty(),
        "the slow request was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    slowloris.abort();
    assert!(
        !matches!(slowloris.await, Ok(true)),
        "the whole head went through before the cut"
    );
    assert_eq!(
        server.calls(),
        1,
        "only the other client reached the service"
    );
    assert!(server.stats.header_timeouts() >= 1);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// HTTP/2 rapid reset: streams opened and cancelled at once cost the server
// work and the client nothing.

struct RapidReset {
    /// Streams opened and reset before the connection refused more.
    sent: usize,
    /// How the connection ended, if it did within 5 s of the last stream.
    ended: Option<Result<(), h2::Error>>,
}

/// Opens up to `streams` streams, resetting each at once. Runs on its own
/// single-threaded runtime, so frames leave in batches as an attacker's do.
async fn rapid_reset(addr: SocketAddr, streams: usize) -> RapidReset {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut sent = 0;
    while sent < streams {
        if std::future::poll_fn(|cx| client.poll_ready(cx))
            .await
            .is_err()
        {
            break;
        }
        let req = Request::get(format!("http://{addr}/"))
            .body(())
            .expect("request");
        let Ok((_response, mut stream)) = client.send_request(req, true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        if sent % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(client);
    let ended = timeout(Duration::from_secs(5), conn)
        .await
        .ok()
        .map(|joined| joined.expect("h2 connection task"));
    RapidReset { sent, ended }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_is_cut_off_after_a_bounded_number_of_streams() {
    const STREAMS: usize = 5_000;
    let server = start(ServerLimits::default()).await;
    let addr = server.addr;
    let attacker = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("attacker runtime")
            .block_on(rapid_reset(addr, STREAMS))
    });
    let outcome = tokio::task::spawn_blocking(move || attacker.join())
        .await
        .expect("join")
        .expect("attacker thread");
    let invoked = server.calls();

    assert!(
        outcome.sent < STREAMS,
        "the server let all {STREAMS} reset streams through"
    );
    match outcome.ended {
        Some(Err(e)) => {
            if e.is_go_away() {
                assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e}");
            }
        }
        Some(Ok(())) => panic!("the connection ended cleanly, not by the server"),
        None => panic!("the server kept the attacker's connection open"),
    }
    assert!(
        invoked <= 500,
        "the service ran {invoked} times for {} reset streams",
        outcome.sent
    );
    assert_eq!(get(addr, "/").await.expect("a bystander"), StatusCode::OK);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The connection cap: idle connections make room; busy ones are kept.

#[tokio::test(flavor = "multi_thread")]
async fn at_the_cap_the_longest_idle_connection_makes_room_for_a_new_client() {
    let server = start(ServerLimits {
        max_connections: 50,
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..ServerLimits::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut client = H1::connect(server.addr).await.expect("connect");
        assert_eq!(client.get("/").await.expect("request"), StatusCode::OK);
        idle.push(client);
    }
    assert_eq!(server.stats.open(), 50);

    let mut newcomer = H1::connect(server.addr).await.expect("connect at the cap");
    let status = timeout(Duration::from_secs(5), newcomer.get("/"))
        .await
        .expect("the newcomer is served in time")
        .expect("the newcomer's request");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.stats.shed_idle(), 1);
    assert_eq!(server.stats.refused_at_cap(), 0);
    wait_until("the oldest idle connection is closed", || {
        idle[0].is_closed()
    })
    .await;
    assert!(
        idle[1..].iter().all(|c| !c.is_closed()),
        "only the oldest idle connection was closed"
    );
    // The others still work.
    assert_eq!(
        idle[49].get("/").await.expect("a kept connection"),
        StatusCode::OK
    );
    drop(idle);
    drop(newcomer);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused() {
    let server = start(ServerLimits {
        max_connections: 50,
        ..ServerLimits::default()
    })
    .await;
    let mut slow = JoinSet::new();
    for _ in 0..50 {
        let addr = server.addr;
        slow.spawn(async move { get(addr, "/slow").await });
    }
    wait_until("50 slow requests are in flight", || server.calls() == 50).await;

    // The kernel completes the handshake; the server's reset may arrive
    // before `connect` returns (then connect itself fails with a reset).
    match TcpStream::connect(server.addr).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(mut refused) => {
            let _ = refused
                .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                .await;
            let answer = timeout(Duration::from_secs(2), read_until_closed(&mut refused))
                .await
                .expect("the 51st connection is closed at once");
            assert!(
                answer.is_empty(),
                "the 51st connection was answered: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    wait_until("the refusal is counted", || {
        server.stats.refused_at_cap() == 1
    })
    .await;
    assert_eq!(server.stats.refused_at_cap(), 1);
    assert_eq!(server.stats.shed_idle(), 0);
    assert_eq!(server.calls(), 50);

    // None of the busy connections was cut.
    server.release.send_replace(true);
    while let Some(joined) = slow.join_next().await {
        assert_eq!(
            joined.expect("slow task").expect("slow request"),
            StatusCode::OK
        );
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Graceful shutdown.

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stops_accepting_and_drains_the_request_in_flight() {
    let server = start(ServerLimits {
        drain_timeout: Duration::from_secs(10),
        ..ServerLimits::default()
    })
    .await;
    let addr = server.addr;
    let in_flight = tokio::spawn(get(addr, "/slow"));
    wait_until("the request is in flight", || server.calls() == 1).await;

    server.shutdown.cancel();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !server.task.is_finished(),
        "the server returned with a request in flight"
    );

    server.release.send_replace(true);
    assert_eq!(
        in_flight
            .await
            .expect("request task")
            .expect("the drained request"),
        StatusCode::OK
    );
    timeout(Duration::from_secs(5), server.task)
        .await
        .expect("the server returns once drained")
        .expect("server task");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_still_running_at_the_drain_timeout_is_cut() {
    let server = start(ServerLimits {
        drain_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    })
    .await;
    let in_flight = tokio::spawn(get(server.addr, "/slow"));
    wait_until("the request is in flight", || server.calls() == 1).await;

    let started = Instant::now();
    server.shutdown.cancel();
    timeout(Duration::from_secs(5), server.task)
        .await
        .expect("the server returns at the drain timeout")
        .expect("server task");
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(3)).contains(&took),
        "returned after {took:?}"
    );
    assert!(
        in_flight.await.expect("request task").is_err(),
        "the request outlived the drain timeout"
    );
    drop(server.release);
}
