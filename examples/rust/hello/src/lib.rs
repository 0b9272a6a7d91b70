//! hello: the smallest useful guest. Answers `hello, world` (or `$GREETING, world`).
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(_req: IncomingRequest, out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
        let body = format!("{greeting}, world\n");
        common::respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

wasi::http::proxy::export!(Hello);
