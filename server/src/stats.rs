//! [`ServerStats`]: what the accept loop and its connections counted, for
//! an embedder to export (the gateway reads them at scrape time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Connection counters of one server, shared by clones. Counters only grow;
/// [`ServerStats::open`] goes up and down.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    accepted: AtomicU64,
    shed_idle: AtomicU64,
    refused_at_cap: AtomicU64,
    detect_timeouts: AtomicU64,
    idle_closed: AtomicU64,
    header_timeouts: AtomicU64,
    ping_timeouts: AtomicU64,
    tls: TlsCounters,
}

/// Which protocol a TLS client chose by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`.
    H2,
    /// `http/1.1`.
    Http1,
    /// The client offered no ALPN (served as HTTP/1.1).
    None,
}

#[derive(Debug, Default)]
struct TlsCounters {
    tls12: AtomicU64,
    tls13: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    alpn_h2: AtomicU64,
    alpn_http1: AtomicU64,
    alpn_none: AtomicU64,
}

impl ServerStats {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections held now (including ones still being detected or
    /// closing).
    pub fn open(&self) -> u64 {
        self.inner.open.load(Relaxed)
    }

    /// Connections accepted from the listener (including refused ones).
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Relaxed)
    }

    /// Idle connections closed to make room for a new one at the cap.
    pub fn shed_idle(&self) -> u64 {
        self.inner.shed_idle.load(Relaxed)
    }

    /// Connections refused (closed at once) at the cap, none being idle.
    pub fn refused_at_cap(&self) -> u64 {
        self.inner.refused_at_cap.load(Relaxed)
    }

    /// Connections closed because they did not send their first bytes (or
    /// the whole HTTP/2 preface) within the detect timeout.
    pub fn detect_timeouts(&self) -> u64 {
        self.inner.detect_timeouts.load(Relaxed)
    }

    /// Connections closed after the idle timeout with no request in flight.
    pub fn idle_closed(&self) -> u64 {
        self.inner.idle_closed.load(Relaxed)
    }

    /// HTTP/1.1 connections closed because a request head (or, on a
    /// kept-alive connection, the next one) did not arrive within the
    /// header read timeout.
    pub fn header_timeouts(&self) -> u64 {
        self.inner.header_timeouts.load(Relaxed)
    }

    /// HTTP/2 connections closed because a keep-alive ping went unanswered.
    pub fn ping_timeouts(&self) -> u64 {
        self.inner.ping_timeouts.load(Relaxed)
    }

    /// TLS handshakes completed with TLS 1.2 and with TLS 1.3.
    pub fn tls_handshakes(&self) -> (u64, u64) {
        let t = &self.inner.tls;
        (t.tls12.load(Relaxed), t.tls13.load(Relaxed))
    }

    /// Completed TLS handshakes that resumed an earlier session (ticket or
    /// session ID).
    pub fn tls_resumed(&self) -> u64 {
        self.inner.tls.resumed.load(Relaxed)
    }

    /// TLS handshakes the client failed (old protocol version, no shared
    /// cipher suite, closed mid-way…).
    pub fn tls_failed(&self) -> u64 {
        self.inner.tls.failed.load(Relaxed)
    }

    /// TLS handshakes not finished within the handshake timeout.
    pub fn tls_timed_out(&self) -> u64 {
        self.inner.tls.timed_out.load(Relaxed)
    }

    /// Completed TLS handshakes by the protocol chosen by ALPN.
    pub fn tls_alpn(&self, alpn: Alpn) -> u64 {
        let t = &self.inner.tls;
        match alpn {
            Alpn::H2 => t.alpn_h2.load(Relaxed),
            Alpn::Http1 => t.alpn_http1.load(Relaxed),
            Alpn::None => t.alpn_none.load(Relaxed),
        }
    }

    pub(crate) fn count_tls_handshake(&self, tls13: bool, resumed: bool, alpn: Alpn) {
        let t = &self.inner.tls;
        if tls13 { &t.tls13 } else { &t.tls12 }.fetch_add(1, Relaxed);
        if resumed {
            t.resumed.fetch_add(1, Relaxed);
        }
        match alpn {
            Alpn::H2 => &t.alpn_h2,
            Alpn::Http1 => &t.alpn_http1,
            Alpn::None => &t.alpn_none,
        }
        .fetch_add(1, Relaxed);
    }

    pub(crate) fn count_tls_handshake_failed(&self) {
        self.inner.tls.failed.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_tls_handshake_timeout(&self) {
        self.inner.tls.timed_out.fetch_add(1, Relaxed);
    }

    pub(crate) fn opened(&self) {
        self.inner.open.fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.inner.open.fetch_sub(1, Relaxed);
    }

    pub(crate) fn count_accepted(&self) {
        self.inner.accepted.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_shed(&self) {
        self.inner.shed_idle.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_refused(&self) {
        self.inner.refused_at_cap.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_detect_timeout(&self) {
        self.inner.detect_timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_idle_closed(&self) {
        self.inner.idle_closed.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_header_timeout(&self) {
        self.inner.header_timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_ping_timeout(&self) {
        self.inner.ping_timeouts.fetch_add(1, Relaxed);
    }
}
