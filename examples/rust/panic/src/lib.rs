//! panic: panics on every request (`?ok=1` answers normally instead), so the
//! platform must turn a trap into a 500 and keep serving the next request.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Panic;

impl Guest for Panic {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        if common::query_param(&req, "ok").is_some() {
            common::respond(out, 200, &[], b"fine\n");
            return;
        }
        panic!("the guest panicked on purpose (secret-detail-42)");
    }
}

wasi::http::proxy::export!(Panic);
