//! The control API's own metrics, served at `GET /metrics` (Prometheus
//! text format; operator token): what its background work did.

use prometheus::{IntCounterVec, Opts, Registry};

/// Counters of the background work.
pub struct ApiMetrics {
    registry: Registry,
    /// ACME orders by result: `issued`, `failed`.
    pub acme_orders: IntCounterVec,
    /// Hostname ownership checks by result: `verified`, `not_proved`.
    pub ownership_checks: IntCounterVec,
}

impl ApiMetrics {
    /// Registers every metric.
    pub fn new() -> Result<ApiMetrics, prometheus::Error> {
        let registry = Registry::new();
        let acme_orders = IntCounterVec::new(
            Opts::new(
                "gannet_acme_orders_total",
                "ACME orders (first certificates and renewals) by result",
            ),
            &["result"],
        )?;
        let ownership_checks = IntCounterVec::new(
            Opts::new(
                "gannet_ownership_checks_total",
                "Checks of custom hostnames' proofs of control by result",
            ),
            &["result"],
        )?;
        registry.register(Box::new(acme_orders.clone()))?;
        registry.register(Box::new(ownership_checks.clone()))?;
        Ok(ApiMetrics {
            registry,
            acme_orders,
            ownership_checks,
        })
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            Ok(()) => out,
            Err(e) => format!("# encoding metrics failed: {e}\n"),
        }
    }
}
