//! Guest stdout/stderr → the gateway's logs, one event per line, tagged with
//! the app and version, and rate-limited per app so a chatty guest cannot
//! flood them. Lines over the limit are dropped and counted.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line logged; the rest of a longer line is cut.
const MAX_LINE: usize = 4096;

/// One app version's log sink: its labels and its rate limit.
#[derive(Debug)]
pub struct GuestLog {
    tenant: String,
    app: String,
    version: String,
    lines_per_second: u64,
    epoch: Instant,
    /// Second (since `epoch`) of the current window, and lines in it.
    window: AtomicU64,
    in_window: AtomicU64,
    dropped: AtomicU64,
    reported: AtomicU64,
    logged: AtomicU64,
}

impl GuestLog {
    /// A sink for `app`/`version` allowing `lines_per_second` lines.
    pub fn new(
        tenant: impl Into<String>,
        app: impl Into<String>,
        version: impl Into<String>,
        lines_per_second: u64,
    ) -> Self {
        GuestLog {
            tenant: tenant.into(),
            app: app.into(),
            version: version.into(),
            lines_per_second,
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            logged: AtomicU64::new(0),
        }
    }

    /// Lines dropped by the rate limit so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines dropped since the last call (for exporting to a counter).
    pub fn take_unreported_drops(&self) -> u64 {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let reported = self.reported.swap(dropped, Ordering::Relaxed);
        dropped.saturating_sub(reported)
    }

    /// Lines logged so far.
    pub fn logged(&self) -> u64 {
        self.logged.load(Ordering::Relaxed)
    }

    fn admit(&self) -> bool {
        let now = self.epoch.elapsed().as_secs();
        let window = self.window.load(Ordering::Relaxed);
        if now != window
            && self
                .window
                .compare_exchange(window, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dropped_before = self.in_window.swap(0, Ordering::Relaxed);
            if dropped_before > self.lines_per_second {
                tracing::warn!(
                    target: "guest",
                    tenant = %self.tenant,
                    app = %self.app,
                    version = %self.version,
                    dropped = dropped_before - self.lines_per_second,
                    "guest output rate-limited; lines dropped"
                );
            }
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < self.lines_per_second {
            self.logged.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    fn emit(&self, stream: &'static str, line: &[u8]) {
        if !self.admit() {
            return;
        }
        let line = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
        tracing::info!(
            target: "guest",
            tenant = %self.tenant,
            app = %self.app,
            version = %self.version,
            stream,
            "{}",
            line.trim_end_matches('\r')
        );
    }
}

/// A guest's stdout or stderr, as given to WASI.
#[derive(Clone)]
pub struct GuestStream {
    log: std::sync::Arc<GuestLog>,
    name: &'static str,
}

impl GuestStream {
    /// The guest's stdout.
    pub fn stdout(log: std::sync::Arc<GuestLog>) -> Self {
        GuestStream {
            log,
            name: "stdout",
        }
    }
    /// The guest's stderr.
    pub fn stderr(log: std::sync::Arc<GuestLog>) -> Self {
        GuestStream {
            log,
            name: "stderr",
        }
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// Splits written bytes into lines and emits each one. Never blocks.
struct LineWriter {
    stream: GuestStream,
    partial: Vec<u8>,
}

impl LineWriter {
    fn new(stream: GuestStream) -> Self {
        LineWriter {
            stream,
            partial: Vec::new(),
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.stream.log.emit(self.stream.name, &bytes[..nl]);
            } else {
                self.partial.extend_from_slice(&bytes[..nl]);
                let line = std::mem::take(&mut self.partial);
                self.stream.log.emit(self.stream.name, &line);
            }
            bytes = &bytes[nl + 1..];
        }
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.stream.log.emit(self.stream.name, &line);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_drops_and_counts() {
        let log = std::sync::Arc::new(GuestLog::new("t", "a", "v1", 5));
        let mut w = LineWriter::new(GuestStream::stdout(log.clone()));
        for _ in 0..20 {
            w.push(b"line\n");
        }
        assert_eq!(log.logged(), 5);
        assert_eq!(log.dropped(), 15);
    }

    #[test]
    fn partial_lines_join() {
        let log = std::sync::Arc::new(GuestLog::new("t", "a", "v1", 100));
        let mut w = LineWriter::new(GuestStream::stdout(log.clone()));
        w.push(b"hel");
        w.push(b"lo\nwor");
        assert_eq!(log.logged(), 1);
        drop(w);
        assert_eq!(log.logged(), 2);
    }
}
