//! Per-app limits: what an app asks for (every field optional) and what the
//! platform enforces once its defaults fill the gaps.
//!
//! | limit | unit | default | when exceeded |
//! |---|---|---|---|
//! | `memory` | bytes, all linear memories of one instance together | 128 MiB | memory.grow fails; a guest that then traps gets 500 |
//! | `cpu_ms` | milliseconds of guest code running (not sleeping or awaiting I/O) | 50 | 504, or the body is cut if the response started |
//! | `wall_ms` | milliseconds from instantiation to the end of the response body | 30 000 | 504, or the body is cut if the response started |
//! | `max_inflight` | instances of this app running at once on one gateway | 100 | 503 with `Retry-After` |
//! | `max_request_body` | bytes | 100 MiB | 413 |
//! | `max_response_body` | bytes | 100 MiB | the body is cut |
//! | `max_request_headers` | bytes of request header names and values | 32 KiB | 431 |

use crate::ByteSize;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Limits as an app (or a routes file) states them: each one optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    /// Memory for one instance, all linear memories together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// CPU time (guest code running) per request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Wall-clock time per request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
    /// Instances of this app running at once on one gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
    /// Largest request body accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<ByteSize>,
    /// Largest response body sent; a longer one is cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_body: Option<ByteSize>,
    /// Largest total size of request header names and values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers: Option<ByteSize>,
}

/// The limits the platform enforces for one app: every value present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedLimits {
    /// Memory for one instance, all linear memories together.
    pub memory: ByteSize,
    /// CPU time per request, in milliseconds.
    pub cpu_ms: u64,
    /// Wall-clock time per request, in milliseconds.
    pub wall_ms: u64,
    /// Instances running at once on one gateway.
    pub max_inflight: u32,
    /// Largest request body accepted.
    pub max_request_body: ByteSize,
    /// Largest response body sent.
    pub max_response_body: ByteSize,
    /// Largest total size of request headers.
    pub max_request_headers: ByteSize,
}

impl Default for ResolvedLimits {
    /// The platform defaults.
    fn default() -> Self {
        ResolvedLimits {
            memory: ByteSize::mib(128),
            cpu_ms: 50,
            wall_ms: 30_000,
            max_inflight: 100,
            max_request_body: ByteSize::mib(100),
            max_response_body: ByteSize::mib(100),
            max_request_headers: ByteSize::kib(32),
        }
    }
}

impl Limits {
    /// Fills every missing limit from `defaults`.
    pub fn resolve(&self, defaults: &ResolvedLimits) -> ResolvedLimits {
        ResolvedLimits {
            memory: self.memory.unwrap_or(defaults.memory),
            cpu_ms: self.cpu_ms.unwrap_or(defaults.cpu_ms),
            wall_ms: self.wall_ms.unwrap_or(defaults.wall_ms),
            max_inflight: self.max_inflight.unwrap_or(defaults.max_inflight),
            max_request_body: self.max_request_body.unwrap_or(defaults.max_request_body),
            max_response_body: self.max_response_body.unwrap_or(defaults.max_response_body),
            max_request_headers: self
                .max_request_headers
                .unwrap_or(defaults.max_request_headers),
        }
    }
}

impl ResolvedLimits {
    /// The CPU budget as a duration.
    pub fn cpu(&self) -> Duration {
        Duration::from_millis(self.cpu_ms)
    }
    /// The wall-clock budget as a duration.
    pub fn wall(&self) -> Duration {
        Duration::from_millis(self.wall_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_limits_take_defaults() {
        let limits: Limits = toml::from_str("memory = \"64MiB\"\ncpu_ms = 20").unwrap();
        let r = limits.resolve(&ResolvedLimits::default());
        assert_eq!(r.memory, ByteSize::mib(64));
        assert_eq!(r.cpu_ms, 20);
        assert_eq!(r.wall_ms, 30_000);
        assert_eq!(r.max_request_body, ByteSize::mib(100));
    }

    #[test]
    fn bad_size_is_an_error() {
        let err = toml::from_str::<Limits>("memory = \"lots\"").unwrap_err();
        assert!(err.to_string().contains("not a size"), "{err}");
    }
}
