//! outbound: fetches `?url=...` with wasi:http/outgoing-handler and answers
//! with the upstream's status and body, or 502 and the error code.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, IncomingRequest, OutgoingRequest, ResponseOutparam, Scheme};
use wasi::io::streams::StreamError;

struct Outbound;

fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(format!("unsupported url {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_scheme(Some(&scheme)).map_err(|_| "scheme")?;
    req.set_authority(Some(authority)).map_err(|_| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "path")?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let resp = future
        .get()
        .ok_or("response not ready")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp.consume().map_err(|_| "body")?;
    let stream = body.stream().map_err(|_| "body stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
    Ok((status, bytes))
}

impl Guest for Outbound {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let Some(url) = common::query_param(&req, "url") else {
            common::respond(out, 400, &[], b"missing ?url=\n");
            return;
        };
        match fetch(&url) {
            Ok((status, body)) => {
                let status = status.to_string();
                common::respond(out, 200, &[("x-upstream-status", status.as_str())], &body)
            }
            Err(e) => common::respond(out, 502, &[], format!("outbound error: {e}\n").as_bytes()),
        }
    }
}

wasi::http::proxy::export!(Outbound);
