//! outbound: fetches `?url=...` with wasi:http/outgoing-handler and answers
//! with the upstream's status and body, or 502 and the error code.
//!
//! With `&fire=N`, sends N requests to the url as fast as it can instead (up
//! to `WINDOW` waiting at once) and answers `ok=… failed=…` and a count per
//! error code.
use std::collections::BTreeMap;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, FutureIncomingResponse, IncomingRequest, OutgoingRequest, ResponseOutparam, Scheme,
};
use wasi::io::poll::{poll, Pollable};
use wasi::io::streams::StreamError;

struct Outbound;

/// Most requests of a `fire` run waiting for their response at once.
const WINDOW: usize = 64;

fn start(url: &str) -> Result<FutureIncomingResponse, String> {
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
    outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))
}

fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let future = start(url)?;
    future.subscribe().block();
    finish(future)
}

/// The status and whole body of a ready response, or its error.
fn finish(future: FutureIncomingResponse) -> Result<(u16, Vec<u8>), String> {
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

/// Sends `n` requests to `url`, reading each response whole, and reports
/// how many succeeded and how many failed, by error.
fn fire(url: &str, n: u32) -> String {
    let (mut ok, mut sent) = (0u32, 0u32);
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    let mut failed = |e: String| {
        let kind = e.split('(').next().unwrap_or_default().to_string();
        *errors.entry(kind).or_default() += 1;
    };
    let mut waiting: Vec<FutureIncomingResponse> = Vec::new();
    while sent < n || !waiting.is_empty() {
        while sent < n && waiting.len() < WINDOW {
            sent += 1;
            match start(url) {
                Ok(f) => waiting.push(f),
                Err(e) => failed(e),
            }
        }
        if waiting.is_empty() {
            continue;
        }
        let mut ready = {
            let pollables: Vec<Pollable> = waiting.iter().map(|f| f.subscribe()).collect();
            let refs: Vec<&Pollable> = pollables.iter().collect();
            poll(&refs)
        };
        ready.sort_unstable();
        for i in ready.into_iter().rev() {
            match finish(waiting.swap_remove(i as usize)) {
                Ok(_) => ok += 1,
                Err(e) => failed(e),
            }
        }
    }
    let total: u32 = errors.values().sum();
    let mut report = format!("ok={ok} failed={total}\n");
    for (kind, count) in &errors {
        report.push_str(&format!("{kind}={count}\n"));
    }
    report
}

impl Guest for Outbound {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let Some(url) = common::query_param(&req, "url") else {
            common::respond(out, 400, &[], b"missing ?url=\n");
            return;
        };
        if let Some(n) = common::query_param(&req, "fire").and_then(|n| n.parse().ok()) {
            common::respond(out, 200, &[], fire(&url, n).as_bytes());
            return;
        }
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
