//! How much outbound traffic one instance (one incoming request) may make:
//! the operator's [`OutboundLimits`], and `Caps`, the per-instance state
//! that enforces them.
//!
//! A request past a cap is refused at once, never queued. The concurrency
//! permit travels with the request into the task that drives its connection,
//! so it is released when the response body has been read (or dropped, or
//! timed out), not when the headers arrive.

use super::refusals::Refusal;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default [`OutboundLimits::max_concurrent`].
pub const DEFAULT_MAX_CONCURRENT: u32 = 16;
/// Default [`OutboundLimits::max_per_request`].
pub const DEFAULT_MAX_PER_REQUEST: u32 = 256;
/// Default [`OutboundLimits::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Operator limits on one instance's outbound requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Requests in flight at once (connecting, waiting or streaming a body).
    pub max_concurrent: u32,
    /// Requests sent in total by one instance, i.e. per incoming request.
    pub max_per_request: u32,
    /// Longest one request may take, from its DNS lookup to the end of the
    /// response body. The connect and first-byte timeouts apply within it.
    pub timeout: Duration,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        OutboundLimits {
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_per_request: DEFAULT_MAX_PER_REQUEST,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One instance's use of its [`OutboundLimits`].
#[derive(Debug)]
pub(crate) struct Caps {
    max_per_request: u32,
    sent: u32,
    in_flight: Arc<Semaphore>,
}

impl Caps {
    /// Fresh caps for a new instance.
    pub(crate) fn new(limits: &OutboundLimits) -> Self {
        Caps {
            max_per_request: limits.max_per_request,
            sent: 0,
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent as usize)),
        }
    }

    /// Admits one more request, or says which cap refuses it. Hold the
    /// permit until the request's connection is done.
    pub(crate) fn admit(&mut self) -> Result<OwnedSemaphorePermit, Refusal> {
        if self.sent >= self.max_per_request {
            return Err(Refusal::TotalCap);
        }
        let permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::ConcurrencyCap)?;
        self.sent += 1;
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_frees_on_release_and_the_total_does_not() {
        let mut caps = Caps::new(&OutboundLimits {
            max_concurrent: 2,
            max_per_request: 3,
            timeout: DEFAULT_TIMEOUT,
        });
        let a = caps.admit().unwrap();
        let _b = caps.admit().unwrap();
        assert_eq!(caps.admit().unwrap_err(), Refusal::ConcurrencyCap);
        drop(a);
        let c = caps.admit().unwrap();
        assert_eq!(caps.admit().unwrap_err(), Refusal::TotalCap);
        drop(c);
        assert_eq!(caps.admit().unwrap_err(), Refusal::TotalCap);
    }

    #[test]
    fn zero_concurrency_refuses_everything() {
        let mut caps = Caps::new(&OutboundLimits {
            max_concurrent: 0,
            ..OutboundLimits::default()
        });
        assert_eq!(caps.admit().unwrap_err(), Refusal::ConcurrencyCap);
    }
}
