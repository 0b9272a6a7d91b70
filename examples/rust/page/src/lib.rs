//! page: an HTML page whose inline script writes, into `#out`, the scheme
//! and the HTTP version it was loaded over (`rendered https: h2` from a
//! browser over HTTPS and HTTP/2). Without a running script it says
//! `not rendered`. Only `GET /` gets the page; anything else is a 404.
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>gannet page</title></head>
<body>
<p id="out">not rendered</p>
<script>
document.getElementById('out').textContent = 'rendered ' + location.protocol + ' ' +
  performance.getEntriesByType('navigation')[0].nextHopProtocol;
</script>
</body></html>
"#;

struct Page;

impl Guest for Page {
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let path = req.path_with_query().unwrap_or_default();
        if matches!(req.method(), Method::Get) && path.split('?').next() == Some("/") {
            let html = [("content-type", "text/html; charset=utf-8")];
            common::respond(out, 200, &html, PAGE.as_bytes());
        } else {
            let text = [("content-type", "text/plain")];
            common::respond(out, 404, &text, b"not found\n");
        }
    }
}

wasi::http::proxy::export!(Page);
