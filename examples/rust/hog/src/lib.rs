//! hog: allocates and touches `?mb=N` MiB (default 256), holds it for
//! `?hold_ms=N` (default 0) on a WASI clock, then answers how much.
//! Under a smaller memory limit the allocation fails and the guest traps.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Hog;

impl Guest for Hog {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let mb: usize = common::query_param(&req, "mb").and_then(|v| v.parse().ok()).unwrap_or(256);
        let mut blocks = Vec::new();
        for _ in 0..mb {
            let block = vec![0xA5u8; 1 << 20];
            blocks.push(std::hint::black_box(block));
        }
        let hold_ms: u64 = common::query_param(&req, "hold_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        if hold_ms > 0 {
            wasi::clocks::monotonic_clock::subscribe_duration(hold_ms * 1_000_000).block();
        }
        let body = format!("allocated {} MiB\n", blocks.len());
        common::respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

wasi::http::proxy::export!(Hog);
