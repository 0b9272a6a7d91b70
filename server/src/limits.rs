//! What a server tolerates from its clients: [`ServerLimits`] (plain data,
//! built directly by tests and embedders) and [`ServerArgs`], the
//! command-line flags that resolve into it.

use std::time::Duration;

/// Most header fields an HTTP/1.1 request head may have.
pub const MAX_HEADERS: usize = 1000;

/// The smallest HTTP/1.1 read buffer hyper accepts (it panics below this).
const MIN_HEAD_BYTES: usize = 8 * 1024;

/// Timeouts and caps of one listener. Every field has a production default
/// ([`ServerLimits::default`]); tests shorten the timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// How long a new connection has to send the bytes that tell HTTP/1.1
    /// from the HTTP/2 preface. A connection silent this long is closed.
    pub detect_timeout: Duration,
    /// How long an HTTP/1.1 request head may take to arrive (hyper's
    /// `header_read_timeout`). hyper starts it whenever it waits for a head,
    /// so it also bounds how long a kept-alive HTTP/1.1 connection may wait
    /// for its next request.
    pub header_read_timeout: Duration,
    /// A connection (either protocol) with no request in flight for this
    /// long is asked to close gracefully.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged when it received nothing;
    /// `None` sends no pings.
    pub h2_keepalive_interval: Option<Duration>,
    /// How long a keep-alive ping may wait for its answer before the
    /// HTTP/2 connection is closed.
    pub h2_keepalive_timeout: Duration,
    /// How long a connection asked to close because it was idle (or shed)
    /// may take to finish closing (an HTTP/2 peer has to answer the
    /// GOAWAY's ping) before it is dropped, if it still has nothing in
    /// flight.
    pub close_grace: Duration,
    /// Connections held at once. At the cap, the connection idle the
    /// longest is closed to make room; when none is idle, the new one is
    /// refused.
    pub max_connections: usize,
    /// HTTP/2 streams a client may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the server accepted them
    /// (at once) before the connection is closed with `ENHANCE_YOUR_CALM`:
    /// the "rapid reset" attack.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the server may reset because of the client's protocol
    /// errors before the connection is closed ("MadeYouReset").
    pub h2_max_local_error_reset_streams: usize,
    /// Largest request head: hyper's HTTP/1.1 read buffer and the HTTP/2
    /// header list size. At least 8 KiB.
    pub max_head_bytes: usize,
    /// On shutdown, how long in-flight requests may take to finish before
    /// the remaining connections are dropped.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            detect_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_keepalive_interval: Some(Duration::from_secs(20)),
            h2_keepalive_timeout: Duration::from_secs(20),
            close_grace: Duration::from_secs(2),
            max_connections: 20_000,
            h2_max_concurrent_streams: 256,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
            max_head_bytes: 1 << 20,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl ServerLimits {
    /// The HTTP/1.1 read buffer: `max_head_bytes`, but never below what
    /// hyper accepts.
    pub(crate) fn h1_buffer(&self) -> usize {
        self.max_head_bytes.max(MIN_HEAD_BYTES)
    }

    /// The HTTP/2 header list size: `max_head_bytes`, within `u32`.
    pub(crate) fn h2_header_list(&self) -> u32 {
        u32::try_from(self.max_head_bytes).unwrap_or(u32::MAX)
    }
}

/// The listener's flags, to `#[command(flatten)]` into a binary's
/// arguments. [`ServerArgs::limits`] resolves them; the drain timeout and
/// the head size stay at their defaults (binaries have their own flags).
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Seconds a new connection has to send its first bytes (an HTTP/1.1
    /// request or the HTTP/2 preface) before it is closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub conn_detect_timeout_secs: u64,
    /// Seconds an HTTP/1.1 request head may take to arrive; also how long a
    /// kept-alive HTTP/1.1 connection may wait for its next request.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay with no request in flight before it is
    /// closed gracefully (HTTP/1.1 and HTTP/2).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// Seconds between HTTP/2 keep-alive pings on a quiet connection (0: no
    /// pings).
    #[arg(long, default_value_t = 20)]
    pub h2_keepalive_interval_secs: u64,
    /// Seconds an HTTP/2 keep-alive ping may go unanswered before the
    /// connection is closed.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub h2_keepalive_timeout_secs: u64,
    /// Connections held at once; at the cap the longest-idle one is closed
    /// to make room, and when none is idle new ones are refused.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// HTTP/2 streams a client may have open at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_max_streams: u32,
    /// HTTP/2 streams a client may reset before they are accepted before
    /// its connection is closed (rapid reset).
    #[arg(long, default_value_t = 20)]
    pub h2_max_pending_accept_resets: usize,
    /// HTTP/2 streams the server may reset for a client's protocol errors
    /// before its connection is closed.
    #[arg(long, default_value_t = 256)]
    pub h2_max_local_error_resets: usize,
}

impl ServerArgs {
    /// The limits these flags set; the rest at their defaults.
    pub fn limits(&self) -> ServerLimits {
        let secs = Duration::from_secs;
        ServerLimits {
            detect_timeout: secs(self.conn_detect_timeout_secs),
            header_read_timeout: secs(self.header_read_timeout_secs),
            idle_timeout: secs(self.idle_timeout_secs),
            h2_keepalive_interval: match self.h2_keepalive_interval_secs {
                0 => None,
                s => Some(secs(s)),
            },
            h2_keepalive_timeout: secs(self.h2_keepalive_timeout_secs),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            h2_max_concurrent_streams: self.h2_max_streams,
            h2_max_pending_accept_reset_streams: self.h2_max_pending_accept_resets,
            h2_max_local_error_reset_streams: self.h2_max_local_error_resets,
            ..ServerLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn the_flags_default_to_the_default_limits() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["test"]).expect("no flags parse");
        assert_eq!(cli.server.limits(), ServerLimits::default());
    }

    #[test]
    fn flags_set_their_limits_and_zero_disables_pings() {
        let cli = Cli::try_parse_from([
            "test",
            "--conn-detect-timeout-secs",
            "3",
            "--idle-timeout-secs",
            "7",
            "--h2-keepalive-interval-secs",
            "0",
            "--max-connections",
            "50",
            "--h2-max-streams",
            "8",
        ])
        .expect("flags parse");
        let limits = cli.server.limits();
        assert_eq!(limits.detect_timeout, Duration::from_secs(3));
        assert_eq!(limits.idle_timeout, Duration::from_secs(7));
        assert_eq!(limits.h2_keepalive_interval, None);
        assert_eq!(limits.max_connections, 50);
        assert_eq!(limits.h2_max_concurrent_streams, 8);
        assert!(Cli::try_parse_from(["test", "--idle-timeout-secs", "0"]).is_err());
    }

    #[test]
    fn the_head_size_stays_within_what_hyper_accepts() {
        let tiny = ServerLimits {
            max_head_bytes: 10,
            ..ServerLimits::default()
        };
        assert_eq!(tiny.h1_buffer(), MIN_HEAD_BYTES);
        let huge = ServerLimits {
            max_head_bytes: usize::MAX,
            ..ServerLimits::default()
        };
        assert_eq!(huge.h2_header_list(), u32::MAX);
    }
}
