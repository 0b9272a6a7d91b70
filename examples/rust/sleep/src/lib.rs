//! sleep: waits `?ms=N` milliseconds (default 1000) on a WASI clock without
//! using CPU, then answers. `?head_first=1` sends the head before sleeping.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, OutgoingBody, ResponseOutparam};

struct Sleep;

fn sleep_ms(ms: u64) {
    wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

impl Guest for Sleep {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let ms: u64 = common::query_param(&req, "ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
        if common::query_param(&req, "head_first").is_some() {
            let (resp, body) = common::start(200, &[("content-type", "text/plain")]);
            ResponseOutparam::set(out, Ok(resp));
            common::write_all(&body, b"sleeping\n");
            sleep_ms(ms);
            common::write_all(&body, format!("slept {ms} ms\n").as_bytes());
            OutgoingBody::finish(body, None).expect("finish body");
        } else {
            sleep_ms(ms);
            common::respond(out, 200, &[("content-type", "text/plain")], format!("slept {ms} ms\n").as_bytes());
        }
    }
}

wasi::http::proxy::export!(Sleep);
