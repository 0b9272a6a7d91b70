//! Counts of outbound requests the platform refused or cut short, by reason,
//! for the whole process. The gateway exports them as
//! `gannet_outbound_refused_total{reason}`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why an outbound request was refused or cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The instance already had its most requests in flight.
    ConcurrencyCap,
    /// The instance already sent its most requests in total.
    TotalCap,
    /// The host, scheme or port is not on the app's allowlist.
    DeniedHost,
    /// Every address the host resolved to is private or special.
    DeniedIp,
    /// A DNS lookup, connect, TLS handshake, first byte or the request's
    /// total time ran out.
    Timeout,
    /// Every DNS lookup slot of the process stayed busy past the connect
    /// timeout.
    DnsBusy,
}

impl Refusal {
    /// Every reason, in the order [`outbound_refusals`] reports them.
    pub const ALL: [Refusal; 6] = [
        Refusal::ConcurrencyCap,
        Refusal::TotalCap,
        Refusal::DeniedHost,
        Refusal::DeniedIp,
        Refusal::Timeout,
        Refusal::DnsBusy,
    ];

    /// The reason's metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ConcurrencyCap => "concurrency-cap",
            Refusal::TotalCap => "total-cap",
            Refusal::DeniedHost => "denied-host",
            Refusal::DeniedIp => "denied-ip",
            Refusal::Timeout => "timeout",
            Refusal::DnsBusy => "dns-busy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static COUNTS: [AtomicU64; Refusal::ALL.len()] = [const { AtomicU64::new(0) }; Refusal::ALL.len()];

/// Counts one refusal.
pub(crate) fn count(reason: Refusal) {
    COUNTS[reason.index()].fetch_add(1, Ordering::Relaxed);
    tracing::debug!(reason = reason.label(), "outbound request refused");
}

/// Refusals since the process started: `(label, count)` per reason.
pub fn outbound_refusals() -> [(&'static str, u64); Refusal::ALL.len()] {
    Refusal::ALL.map(|r| (r.label(), COUNTS[r.index()].load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_reported_by_label() {
        let before = outbound_refusals();
        count(Refusal::TotalCap);
        let after = outbound_refusals();
        let labels: Vec<&str> = after.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            labels,
            [
                "concurrency-cap",
                "total-cap",
                "denied-host",
                "denied-ip",
                "timeout",
                "dns-busy"
            ]
        );
        // Other tests count concurrently: the counter rose by at least one.
        assert!(after[1].1 > before[1].1);
    }
}
