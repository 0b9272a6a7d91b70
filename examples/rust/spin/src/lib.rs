//! spin: burns CPU forever, so the platform's CPU limit must stop it.
//! `?after_head=1` first sends the response head and a line of body, so the
//! limit hits after the response has started.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

impl Guest for Spin {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        // Hold the outparam (or the started body) while spinning: dropping
        // it would tell the host there will be no response.
        let mut _pending = Some(out);
        let mut _body = None;
        if common::query_param(&req, "after_head").is_some() {
            let (resp, body) = common::start(200, &[("content-type", "text/plain")]);
            if let Some(out) = _pending.take() {
                ResponseOutparam::set(out, Ok(resp));
            }
            common::write_all(&body, b"started\n");
            _body = Some(body);
        }
        let mut x: u64 = 1;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

wasi::http::proxy::export!(Spin);
