//! probe: tries what a sandbox must refuse — read the filesystem, open and
//! connect sockets, look up names, read stdin, see the host's environment —
//! and reports each result, one `name: outcome` line per attempt.
use std::io::Read;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Probe;

fn outcome<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "allowed".into(),
        Err(e) => format!("denied ({e})"),
    }
}

impl Guest for Probe {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let target = common::query_param(&req, "connect").unwrap_or_else(|| "127.0.0.1:9".into());
        let mut lines = vec![
            format!("read_dir /: {}", outcome(std::fs::read_dir("/"))),
            format!("read /etc/passwd: {}", outcome(std::fs::read("/etc/passwd"))),
            format!("write /tmp/x: {}", outcome(std::fs::write("/tmp/x", b"x"))),
            format!("read_dir .: {}", outcome(std::fs::read_dir("."))),
            format!("tcp connect {target}: {}", outcome(std::net::TcpStream::connect(&target))),
            format!("tcp bind: {}", outcome(std::net::TcpListener::bind("0.0.0.0:0"))),
            format!("udp bind: {}", outcome(std::net::UdpSocket::bind("0.0.0.0:0"))),
            format!(
                "dns lookup: {}",
                outcome(std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)))
            ),
        ];
        let mut stdin = Vec::new();
        let n = std::io::stdin().read_to_end(&mut stdin).unwrap_or(0);
        lines.push(format!("stdin bytes: {n}"));
        let mut env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        env.sort();
        lines.push(format!("env keys: {}", env.join(",")));
        let body = lines.join("\n") + "\n";
        common::respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

wasi::http::proxy::export!(Probe);
