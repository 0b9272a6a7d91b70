//! echo: returns the request body streamed back, with the method, the path and
//! scheme and every request header reflected as `x-echo-*` response headers.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, OutgoingBody, ResponseOutparam, Scheme};

struct Echo;

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

impl Guest for Echo {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let method = method_name(&req.method());
        let path = req.path_with_query().unwrap_or_default();
        let scheme = match req.scheme() {
            Some(Scheme::Http) => "http".to_string(),
            Some(Scheme::Https) => "https".to_string(),
            Some(Scheme::Other(s)) => s,
            None => "none".to_string(),
        };
        let mut headers: Vec<(String, String)> = vec![
            ("x-echo-method".into(), method),
            ("x-echo-path".into(), path),
            ("x-echo-scheme".into(), scheme),
        ];
        for (name, value) in req.headers().entries() {
            if matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
                continue;
            }
            headers.push((format!("x-echo-header-{name}"), String::from_utf8_lossy(&value).into_owned()));
        }
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (resp, body) = common::start(200, &refs);
        ResponseOutparam::set(out, Ok(resp));
        common::stream_body(req, &body);
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

wasi::http::proxy::export!(Echo);
