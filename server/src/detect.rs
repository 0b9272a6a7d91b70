//! Telling HTTP/1.1 from HTTP/2 prior knowledge, under a timer: the first
//! bytes are peeked (not read), so hyper reads them again.

use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The length of [`H2_PREFACE`].
const PREFACE_LEN: usize = 24;

/// What every HTTP/2 prior-knowledge connection starts with.
pub const H2_PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first wait after a partial preface; doubled up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(5);
const MAX_WAIT: Duration = Duration::from_millis(250);

/// What a new connection turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// Its first bytes are not the HTTP/2 preface.
    Http1,
    /// It sent the whole HTTP/2 preface.
    Http2,
    /// It sent nothing (or only part of the preface) before the timeout.
    TimedOut,
    /// The peer closed it (or it failed) first.
    Closed,
}

/// Classifies the bytes received so far, or `None` while they are a proper
/// prefix of the preface.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    let len = bytes.len().min(PREFACE_LEN);
    if bytes[..len] != H2_PREFACE[..len] {
        Some(Detected::Http1)
    } else if len == PREFACE_LEN {
        Some(Detected::Http2)
    } else {
        None
    }
}

/// Peeks at `stream` until its first bytes decide the protocol, or
/// `timeout` passes. A peer that sends the preface a few bytes at a time is
/// peeked again after short, growing waits (readiness stays set while
/// unread bytes wait, so waiting for it would spin).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; PREFACE_LEN];
    let mut wait = FIRST_WAIT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_elapsed) => return Detected::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return Detected::Closed,
            Ok(Ok(n)) => n,
        };
        if let Some(detected) = classify(&buf[..n]) {
            return detected;
        }
        let now = Instant::now();
        if now >= deadline {
            return Detected::TimedOut;
        }
        tokio::time::sleep_until((now + wait).min(deadline)).await;
        wait = (wait * 2).min(MAX_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_mismatching_byte_decides_http1() {
        assert_eq!(classify(b"G"), Some(Detected::Http1));
        assert_eq!(classify(b"POST / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(&H2_PREFACE[..23]), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
    }
}
