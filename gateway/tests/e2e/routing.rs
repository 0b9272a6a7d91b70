//! Routing by host, echo correctness, env isolation, HTTP/2.

use crate::harness::{Gateway, Http, app};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_exact_and_wildcard_host_and_404s_the_rest() {
    let routes = [
        app(
            "hello",
            "hello",
            &["hello.localhost", "*.hello.test"],
            "env = { GREETING = \"hi\" }",
        ),
        app(
            "deep",
            "hello",
            &["*.deep.hello.test"],
            "env = { GREETING = \"deep\" }",
        ),
    ]
    .concat();
    let gw = Gateway::start(&routes);
    let http = Http::h1();

    let r = http.get(gw.addr, "hello.localhost", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi, world\n"));
    // Case and port do not matter.
    let r = http.get(gw.addr, "HELLO.localhost:8080", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi, world\n"));
    // Wildcards match subdomains, the most specific wildcard wins.
    let r = http.get(gw.addr, "a.hello.test", "/").await;
    assert_eq!(r.text(), "hi, world\n");
    let r = http.get(gw.addr, "x.y.hello.test", "/").await;
    assert_eq!(r.text(), "hi, world\n");
    let r = http.get(gw.addr, "x.deep.hello.test", "/").await;
    assert_eq!(r.text(), "deep, world\n");
    // A wildcard does not match its bare domain; unknown hosts are 404.
    for host in ["hello.test", "nothing.example", "localhost"] {
        let r = http.get(gw.addr, host, "/").await;
        assert_eq!(r.status, 404, "{host}");
        assert_eq!(r.header("gannet-error"), Some("unknown-host"));
        assert_eq!(r.text(), "no app is served at this host\n");
    }
    assert_eq!(
        gw.metric("gannet_rejections_total{kind=\"unknown-host\"}")
            .await,
        3.0
    );
    assert_eq!(
        gw.metric("gannet_requests_total{app=\"hello\",status=\"200\"}")
            .await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_http2_with_prior_knowledge() {
    let gw = Gateway::start(&app("hello", "hello", &["hello.localhost"], ""));
    let r = Http::h2().get(gw.addr, "hello.localhost", "/").await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!((r.status, r.text().as_str()), (200, "hello, world\n"));
    let r = Http::h2().get(gw.addr, "other.localhost", "/").await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_reflects_method_path_headers_and_body() {
    let gw = Gateway::start(&app("echo", "echo", &["echo.test"], ""));
    for http in [Http::h1(), Http::h2()] {
        let r = http
            .send(
                gw.addr,
                "echo.test",
                "PUT",
                "/a/b?c=d&e",
                &[
                    ("x-custom", "value 1"),
                    ("content-type", "application/json"),
                ],
                Bytes::from_static(b"{\"k\": [1, 2, 3]}"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-echo-method"), Some("PUT"));
        assert_eq!(r.header("x-echo-path"), Some("/a/b?c=d&e"));
        assert_eq!(r.header("x-echo-header-x-custom"), Some("value 1"));
        assert_eq!(
            r.header("x-echo-header-content-type"),
            Some("application/json")
        );
        assert_eq!(&r.body[..], b"{\"k\": [1, 2, 3]}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_streams_a_100_mib_body_without_buffering_it() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 400; // 100 MiB
    let gw = Gateway::start(&app(
        "echo",
        "echo",
        &["echo.test"],
        "[app.limits]\nmax_request_body = \"200MiB\"\nmax_response_body = \"200MiB\"\nwall_ms = 120000\ncpu_ms = 20000",
    ));
    let http = Http::h1();
    // Warm up, then measure the gateway's peak memory around the transfer.
    let _ = http.get(gw.addr, "echo.test", "/").await;
    let before = gw.peak_rss();

    let mut sent = Sha256::new();
    let chunks: Vec<Bytes> = (0..CHUNKS)
        .map(|i| Bytes::from(vec![(i % 251) as u8; CHUNK]))
        .collect();
    for c in &chunks {
        sent.update(c);
    }
    let stream = futures::stream::iter(chunks.into_iter().map(|c| Ok(hyper::body::Frame::data(c))));
    let body = BodyExt::boxed(StreamBody::new(stream));
    let resp = http
        .request(gw.addr, "echo.test", "POST", "/upload", &[], body)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = Sha256::new();
    let mut len = 0usize;
    let mut stream = resp.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        received.update(&chunk);
    }
    assert_eq!(len, CHUNK * CHUNKS);
    assert_eq!(received.finalize(), sent.finalize());
    let grew = gw.peak_rss().saturating_sub(before);
    assert!(
        grew < 48 << 20,
        "gateway peak memory grew by {} MiB for a 100 MiB echo: the body was buffered",
        grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn env_is_per_app_and_nothing_else_leaks() {
    let routes = [
        app("env-a", "env", &["a.test"], "env = { FOO = \"a\" }"),
        app(
            "env-b",
            "env",
            &["b.test"],
            "env = { FOO = \"b\", BAR = \"only-b\" }",
        ),
    ]
    .concat();
    let gw = Gateway::start(&routes);
    let http = Http::h1();
    let a = http.get(gw.addr, "a.test", "/").await.text();
    let b = http.get(gw.addr, "b.test", "/").await.text();
    assert_eq!(a, "FOO=a\n");
    assert_eq!(b, "BAR=only-b\nFOO=b\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_apps_share_one_gateway() {
    let routes: String = (0..300)
        .map(|i| {
            let component = if i % 2 == 0 { "env" } else { "hello" };
            app(
                &format!("app{i}"),
                component,
                &[&format!("app{i}.test")],
                &format!("env = {{ N = \"{i}\", GREETING = \"g{i}\" }}"),
            )
        })
        .collect();
    let gw = Gateway::start(&routes);
    assert_eq!(gw.metric("gannet_routes_apps").await, 300.0);
    let http = Http::h1();
    for i in (0..300).step_by(7) {
        let r = http.get(gw.addr, &format!("app{i}.test"), "/").await;
        let want = if i % 2 == 0 {
            format!("GREETING=g{i}\nN={i}\n")
        } else {
            format!("g{i}, world\n")
        };
        assert_eq!((r.status, r.text()), (200, want), "app{i}");
    }
    // Two components serve all 300 apps: each compiled or loaded once.
    assert_eq!(gw.metric("gannet_component_loads_total").await, 2.0);
}
