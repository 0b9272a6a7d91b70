//! print: writes `?lines=N` lines (default 3) to stdout and to stderr, then
//! answers. The platform must route them to its logs and rate-limit them.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Print;

impl Guest for Print {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let lines: u64 = common::query_param(&req, "lines").and_then(|v| v.parse().ok()).unwrap_or(3);
        for i in 0..lines {
            println!("stdout line {i} from the print guest");
            eprintln!("stderr line {i} from the print guest");
        }
        common::respond(out, 200, &[("content-type", "text/plain")], format!("printed {lines} lines\n").as_bytes());
    }
}

wasi::http::proxy::export!(Print);
