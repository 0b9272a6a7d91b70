//! env: lists the environment the platform gave this instance, one `KEY=VALUE`
//! per line, sorted.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Env;

impl Guest for Env {
    fn handle(_req: IncomingRequest, out: ResponseOutparam) {
        let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}\n")).collect();
        vars.sort();
        common::respond(out, 200, &[("content-type", "text/plain")], vars.concat().as_bytes());
    }
}

wasi::http::proxy::export!(Env);
