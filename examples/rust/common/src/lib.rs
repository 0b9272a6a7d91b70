//! Small helpers shared by the example guests: building a response, reading
//! query parameters, streaming a body. Only `wasi` (the WASI 0.2 bindings).

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

/// Sends a complete response with `status`, `headers` and `body`.
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let (resp, body_res) = start(status, headers);
    ResponseOutparam::set(out, Ok(resp));
    write_all(&body_res, body);
    OutgoingBody::finish(body_res, None).expect("finish body");
}

/// Builds a response head and its body handle; the caller sets the outparam.
pub fn start(status: u16, headers: &[(&str, &str)]) -> (OutgoingResponse, OutgoingBody) {
    let list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&list).expect("valid headers");
    let resp = OutgoingResponse::new(fields);
    resp.set_status_code(status).expect("valid status");
    let body = resp.body().expect("body taken once");
    (resp, body)
}

/// Writes `bytes` to the body, in pieces no larger than the stream allows.
pub fn write_all(body: &OutgoingBody, bytes: &[u8]) {
    let stream = body.write().expect("body stream");
    for chunk in bytes.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("write body");
    }
}

/// The value of query parameter `name` in the request's path, if present.
pub fn query_param(req: &IncomingRequest, name: &str) -> Option<String> {
    let path = req.path_with_query()?;
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// Copies the request body into the response body chunk by chunk, so a large
/// body is never held whole in guest memory. Returns the bytes copied.
pub fn stream_body(req: IncomingRequest, body: &OutgoingBody) -> u64 {
    let incoming = req.consume().expect("request body");
    let input = incoming.stream().expect("request body stream");
    let output = body.write().expect("response body stream");
    let mut total = 0;
    loop {
        match output.blocking_splice(&input, 1 << 20) {
            Ok(n) => total += n,
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => panic!("body copy failed: {}", e.to_debug_string()),
        }
    }
    total
}
