//! Prometheus metrics. Labels are app and version (never the path); the
//! per-app handles are resolved once when the routing table is built, so the
//! hot path does no label hashing for the common statuses.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `gannet_requests_total` | counter | app, version, status |
//! | `gannet_request_duration_seconds` | histogram | app, version |
//! | `gannet_instantiate_duration_seconds` | histogram | app |
//! | `gannet_inflight_instances` | gauge | app |
//! | `gannet_guest_failures_total` | counter | app, version, kind (cpu-limit, wall-limit, memory-limit, trap, host-error, no-response) |
//! | `gannet_rejections_total` | counter | kind (the `gannet-error` value) |
//! | `gannet_compile_duration_seconds` | histogram | |
//! | `gannet_component_loads_total` | counter | source (disk, compiled, recompiled_corrupt) |
//! | `gannet_corrupt_artifacts_total` | counter | |
//! | `gannet_cache_hits_total`, `gannet_cache_misses_total` | counter | |
//! | `gannet_cache_evictions_total` | counter | cause |
//! | `gannet_guest_log_lines_dropped_total` | counter | app |
//! | `gannet_routes_reloads_total` | counter | result (ok, error) |
//! | `gannet_routes_apps` | gauge | |
//! | `gannet_sync_revision` | gauge | |
//! | `gannet_sync_applies_total` | counter | result (ack, nack) |
//! | `gannet_sync_reports_total` | counter | result (ok, error) |
//! | `gannet_sync_apply_duration_seconds` | histogram | |
//! | `gannet_sync_downloads_total`, `gannet_sync_download_bytes_total` | counter | |
//! | `gannet_sync_last_success_timestamp_seconds` | gauge | |
//! | `gannet_component_prepare_failures_total` | counter | kind (refused, remembered, transient) |
//! | `gannet_sync_artifacts_collected_total` | counter | |
//! | `gannet_acme_challenges_answered_total` | counter | |
//! | `gannet_outbound_refused_total` | counter | reason (concurrency-cap, total-cap, denied-host, denied-ip, timeout, dns-busy) |
//! | `gannet_connections_open` | gauge | |
//! | `gannet_connections_accepted_total`, `gannet_connections_shed_total`, `gannet_connections_refused_total` | counter | |
//! | `gannet_connections_detect_timeouts_total`, `gannet_connections_idle_closed_total` | counter | |
//! | `gannet_connections_header_timeouts_total`, `gannet_connections_ping_timeouts_total` | counter | |
//! | `gannet_memory_budget_bytes`, `gannet_memory_used_bytes` | gauge | |
//! | `gannet_memory_budget_refusals_total` | counter | |
//!
//! When a version stops being served, its series (and, when the app is
//! gone, the app's) are removed, so a gateway's `/metrics` does not grow
//! with every deploy.

use std::sync::{Arc, OnceLock};

use gannet_runtime::fair::memory::MemoryBudget;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const COMPILE_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// All gateway metrics, registered in one registry.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) duration: HistogramVec,
    pub(crate) instantiate: HistogramVec,
    pub(crate) inflight: IntGaugeVec,
    pub(crate) guest_failures: IntCounterVec,
    pub(crate) rejections: IntCounterVec,
    pub(crate) compile: Histogram,
    pub(crate) loads: IntCounterVec,
    pub(crate) corrupt: IntCounter,
    pub(crate) cache_hits: IntCounter,
    pub(crate) cache_misses: IntCounter,
    pub(crate) cache_evictions: IntCounterVec,
    pub(crate) log_dropped: IntCounterVec,
    pub(crate) reloads: IntCounterVec,
    pub(crate) apps: IntGauge,
    pub(crate) sync_revision: IntGauge,
    pub(crate) sync_applies: IntCounterVec,
    pub(crate) sync_reports: IntCounterVec,
    pub(crate) sync_apply_seconds: Histogram,
    pub(crate) sync_downloads: IntCounter,
    pub(crate) sync_download_bytes: IntCounter,
    pub(crate) sync_last_success: IntGauge,
    pub(crate) prepare_failures: IntCounterVec,
    pub(crate) sync_collected: IntCounter,
    pub(crate) acme_challenges_answered: IntCounter,
    /// The public listeners' connection and TLS counters
    /// (`gannet_connections_*`, `gannet_tls_*`).
    pub server: gannet_server::ServerStats,
    pub(crate) cert_expiry: IntGaugeVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are static and unique, so registration cannot collide.
    if let Err(e) = r.register(Box::new(m.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    m
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        OutboundRefusals::register(&r)?;
        let server = gannet_server::ServerStats::new();
        ServerConnections::register(&r, server.clone())?;
        TlsHandshakes::register(&r, server.clone())?;
        Ok(Metrics {
            requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_requests_total",
                        "Requests answered, by app, version and status.",
                    ),
                    &["app", "version", "status"],
                )?,
            ),
            duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gannet_request_duration_seconds",
                        "Time to the response head, by app and version.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["app", "version"],
                )?,
            ),
            instantiate: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gannet_instantiate_duration_seconds",
                        "Time to instantiate a component per request.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["app"],
                )?,
            ),
            inflight: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "gannet_inflight_instances",
                        "Instances running now, by app.",
                    ),
                    &["app"],
                )?,
            ),
            guest_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_guest_failures_total",
                        "Guest invocations that failed, by kind.",
                    ),
                    &["app", "version", "kind"],
                )?,
            ),
            rejections: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_rejections_total",
                        "Responses made by the platform instead of a guest, by kind.",
                    ),
                    &["kind"],
                )?,
            ),
            compile: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gannet_compile_duration_seconds",
                        "Time to compile a component.",
                    )
                    .buckets(COMPILE_BUCKETS.to_vec()),
                )?,
            ),
            loads: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_component_loads_total",
                        "Components prepared, by where the code came from.",
                    ),
                    &["source"],
                )?,
            ),
            corrupt: reg(
                &r,
                IntCounter::new(
                    "gannet_corrupt_artifacts_total",
                    "Precompiled artifacts that failed their checksum and were recompiled.",
                )?,
            ),
            cache_hits: reg(
                &r,
                IntCounter::new("gannet_cache_hits_total", "In-memory component cache hits.")?,
            ),
            cache_misses: reg(
                &r,
                IntCounter::new(
                    "gannet_cache_misses_total",
                    "In-memory component cache misses.",
                )?,
            ),
            cache_evictions: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_cache_evictions_total",
                        "Components evicted from the in-memory cache.",
                    ),
                    &["cause"],
                )?,
            ),
            log_dropped: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_guest_log_lines_dropped_total",
                        "Guest output lines dropped by the log rate limit.",
                    ),
                    &["app"],
                )?,
            ),
            reloads: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_routes_reloads_total",
                        "Routes file reloads, by result.",
                    ),
                    &["result"],
                )?,
            ),
            apps: reg(
                &r,
                IntGauge::new("gannet_routes_apps", "Apps in the routing table.")?,
            ),
            sync_revision: reg(
                &r,
                IntGauge::new("gannet_sync_revision", "Desired-state revision applied.")?,
            ),
            sync_applies: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_sync_applies_total",
                        "Revisions applied (ack) or refused (nack).",
                    ),
                    &["result"],
                )?,
            ),
            sync_reports: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_sync_reports_total",
                        "Request-counter reports pushed to the control API (ok) or not delivered (error).",
                    ),
                    &["result"],
                )?,
            ),
            sync_apply_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gannet_sync_apply_duration_seconds",
                        "Time to fetch, warm and swap a revision.",
                    )
                    .buckets(COMPILE_BUCKETS.to_vec()),
                )?,
            ),
            sync_downloads: reg(
                &r,
                IntCounter::new(
                    "gannet_sync_downloads_total",
                    "Components downloaded from the control API.",
                )?,
            ),
            sync_download_bytes: reg(
                &r,
                IntCounter::new(
                    "gannet_sync_download_bytes_total",
                    "Bytes of components downloaded.",
                )?,
            ),
            sync_last_success: reg(
                &r,
                IntGauge::new(
                    "gannet_sync_last_success_timestamp_seconds",
                    "When the control API last answered a poll (sync lag = now - this).",
                )?,
            ),
            prepare_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "gannet_component_prepare_failures_total",
                        "Components that could not be prepared: refused (does not compile, fit the pool or link), remembered (refused before, not compiled again), transient (I/O, bytes not matching their digest).",
                    ),
                    &["kind"],
                )?,
            ),
            sync_collected: reg(
                &r,
                IntCounter::new(
                    "gannet_sync_artifacts_collected_total",
                    "Components deleted from the state and cache directories because no served or retained version uses them.",
                )?,
            ),
            acme_challenges_answered: reg(
                &r,
                IntCounter::new(
                    "gannet_acme_challenges_answered_total",
                    "ACME HTTP-01 challenges answered.",
                )?,
            ),
            server,
            cert_expiry: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "gannet_tls_cert_expiry_timestamp_seconds",
                        "When the certificate served for a name expires (unix seconds).",
                    ),
                    &["name"],
                )?,
            ),
            registry: r,
        })
    }

    /// Removes the series of a version no longer served and, when the app
    /// itself is gone, the app's series. Requests of that version still
    /// running are no longer counted.
    pub fn forget_version(&self, m: &AppMetrics, app_gone: bool) {
        m.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        let version = [("app", m.app.as_str()), ("version", m.version.as_str())];
        remove_matching(&self.requests, &version);
        remove_matching(&self.guest_failures, &version);
        let _ = self.duration.remove_label_values(&[&m.app, &m.version]);
        if app_gone {
            let _ = self.instantiate.remove_label_values(&[&m.app]);
            let _ = self.inflight.remove_label_values(&[&m.app]);
            let _ = self.log_dropped.remove_label_values(&[&m.app]);
        }
    }

    /// Replaces the certificate expiry series with `names` (name, notAfter).
    pub(crate) fn set_cert_expiry<'a>(&self, names: impl Iterator<Item = (&'a str, i64)>) {
        self.cert_expiry.reset();
        for (name, not_after) in names {
            self.cert_expiry.with_label_values(&[name]).set(not_after);
        }
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// `gannet_outbound_refused_total{reason}`: the runtime's process-wide
/// outbound refusal counters
/// ([`gannet_runtime::outbound::outbound_refusals`]), copied in whenever
/// the registry is gathered.
struct OutboundRefusals {
    counters: IntCounterVec,
    /// Serialises the copy, so two scrapes cannot both add the same delta.
    copying: std::sync::Mutex<()>,
}

impl OutboundRefusals {
    fn register(r: &Registry) -> Result<(), prometheus::Error> {
        let counters = IntCounterVec::new(
            Opts::new(
                "gannet_outbound_refused_total",
                "Guest outbound requests refused or cut short, by reason.",
            ),
            &["reason"],
        )?;
        r.register(Box::new(OutboundRefusals {
            counters,
            copying: std::sync::Mutex::new(()),
        }))
    }
}

impl prometheus::core::Collector for OutboundRefusals {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        prometheus::core::Collector::desc(&self.counters)
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _copying = self
            .copying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (reason, total) in gannet_runtime::outbound::outbound_refusals() {
            catch_up(&self.counters.with_label_values(&[reason]), total);
        }
        prometheus::core::Collector::collect(&self.counters)
    }
}

/// Reads one of the listener's counters.
type ReadStat = fn(&gannet_server::ServerStats) -> u64;

/// `gannet_connections_*`: the public listener's counters
/// ([`gannet_server::ServerStats`]), copied in whenever the registry is
/// gathered.
struct ServerConnections {
    stats: gannet_server::ServerStats,
    open: IntGauge,
    counters: Vec<(IntCounter, ReadStat)>,
    /// Serialises the copy, so two scrapes cannot both add the same delta.
    copying: std::sync::Mutex<()>,
}

impl ServerConnections {
    fn register(r: &Registry, stats: gannet_server::ServerStats) -> Result<(), prometheus::Error> {
        use gannet_server::ServerStats as S;
        let counter = |name: &str, help: &str, read: ReadStat| {
            IntCounter::new(name, help).map(|counter| (counter, read))
        };
        let counters = vec![
            counter(
                "gannet_connections_accepted_total",
                "Connections accepted on the public listener (including refused ones).",
                S::accepted,
            )?,
            counter(
                "gannet_connections_shed_total",
                "Idle connections closed to make room at the connection cap.",
                S::shed_idle,
            )?,
            counter(
                "gannet_connections_refused_total",
                "Connections refused at the connection cap, none being idle.",
                S::refused_at_cap,
            )?,
            counter(
                "gannet_connections_detect_timeouts_total",
                "Connections closed for not sending a request or the HTTP/2 preface in time.",
                S::detect_timeouts,
            )?,
            counter(
                "gannet_connections_idle_closed_total",
                "Connections closed after the idle timeout with no request in flight.",
                S::idle_closed,
            )?,
            counter(
                "gannet_connections_header_timeouts_total",
                "HTTP/1.1 connections closed by the header read timeout.",
                S::header_timeouts,
            )?,
            counter(
                "gannet_connections_ping_timeouts_total",
                "HTTP/2 connections closed for not answering a keep-alive ping.",
                S::ping_timeouts,
            )?,
        ];
        let open = IntGauge::new(
            "gannet_connections_open",
            "Connections open on the public listener.",
        )?;
        r.register(Box::new(ServerConnections {
            stats,
            open,
            counters,
            copying: std::sync::Mutex::new(()),
        }))
    }
}

impl prometheus::core::Collector for ServerConnections {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs = prometheus::core::Collector::desc(&self.open);
        for (counter, _) in &self.counters {
            descs.extend(prometheus::core::Collector::desc(counter));
        }
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _copying = self
            .copying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.open
            .set(i64::try_from(self.stats.open()).unwrap_or(i64::MAX));
        let mut families = prometheus::core::Collector::collect(&self.open);
        for (counter, read) in &self.counters {
            catch_up(counter, read(&self.stats));
            families.extend(prometheus::core::Collector::collect(counter));
        }
        families
    }
}

/// `gannet_tls_*`: the TLS listener's handshake counters
/// ([`gannet_server::ServerStats`]), copied in whenever the registry is
/// gathered.
struct TlsHandshakes {
    stats: gannet_server::ServerStats,
    handshakes: IntCounterVec,
    resumed: IntCounter,
    alpn: IntCounterVec,
    /// Serialises the copy, so two scrapes cannot both add the same delta.
    copying: std::sync::Mutex<()>,
}

impl TlsHandshakes {
    fn register(r: &Registry, stats: gannet_server::ServerStats) -> Result<(), prometheus::Error> {
        r.register(Box::new(TlsHandshakes {
            stats,
            handshakes: IntCounterVec::new(
                Opts::new(
                    "gannet_tls_handshakes_total",
                    "TLS handshakes by result (ok, failed, timeout) and protocol version.",
                ),
                &["result", "version"],
            )?,
            resumed: IntCounter::new(
                "gannet_tls_resumed_total",
                "TLS handshakes that resumed an earlier session.",
            )?,
            alpn: IntCounterVec::new(
                Opts::new(
                    "gannet_tls_alpn_total",
                    "TLS handshakes by the protocol the client chose by ALPN.",
                ),
                &["protocol"],
            )?,
            copying: std::sync::Mutex::new(()),
        }))
    }
}

/// Raises `counter` to `now`.
fn catch_up(counter: &IntCounter, now: u64) {
    counter.inc_by(now.saturating_sub(counter.get()));
}

impl prometheus::core::Collector for TlsHandshakes {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs = prometheus::core::Collector::desc(&self.handshakes);
        descs.extend(prometheus::core::Collector::desc(&self.resumed));
        descs.extend(prometheus::core::Collector::desc(&self.alpn));
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use gannet_server::Alpn;
        let _copying = self
            .copying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &self.stats;
        let (tls12, tls13) = s.tls_handshakes();
        for (labels, now) in [
            (["ok", "1.2"], tls12),
            (["ok", "1.3"], tls13),
            (["failed", ""], s.tls_failed()),
            (["timeout", ""], s.tls_timed_out()),
        ] {
            catch_up(&self.handshakes.with_label_values(&labels), now);
        }
        catch_up(&self.resumed, s.tls_resumed());
        for (protocol, alpn) in [
            ("h2", Alpn::H2),
            ("http/1.1", Alpn::Http1),
            ("none", Alpn::None),
        ] {
            catch_up(&self.alpn.with_label_values(&[protocol]), s.tls_alpn(alpn));
        }
        let mut families = prometheus::core::Collector::collect(&self.handshakes);
        families.extend(prometheus::core::Collector::collect(&self.resumed));
        families.extend(prometheus::core::Collector::collect(&self.alpn));
        families
    }
}

/// `gannet_memory_*`: the shared memory budget of all instances
/// ([`MemoryBudget`]), read whenever the registry is gathered.
pub(crate) struct MemoryBudgetGauges {
    budget: Arc<MemoryBudget>,
    limit: IntGauge,
    used: IntGauge,
    refusals: IntCounter,
    /// Serialises the copy, so two scrapes cannot both add the same delta.
    copying: std::sync::Mutex<()>,
}

impl MemoryBudgetGauges {
    /// Registers the budget's gauges in `metrics`' registry.
    pub(crate) fn register(
        metrics: &Metrics,
        budget: Arc<MemoryBudget>,
    ) -> Result<(), prometheus::Error> {
        let gauges = MemoryBudgetGauges {
            budget,
            limit: IntGauge::new(
                "gannet_memory_budget_bytes",
                "Linear memory all instances may hold together.",
            )?,
            used: IntGauge::new(
                "gannet_memory_used_bytes",
                "Linear memory all instances hold now.",
            )?,
            refusals: IntCounter::new(
                "gannet_memory_budget_refusals_total",
                "Memory grows refused by the shared budget or a tenant's part of it.",
            )?,
            copying: std::sync::Mutex::new(()),
        };
        metrics.registry.register(Box::new(gauges))
    }
}

impl prometheus::core::Collector for MemoryBudgetGauges {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs = prometheus::core::Collector::desc(&self.limit);
        descs.extend(prometheus::core::Collector::desc(&self.used));
        descs.extend(prometheus::core::Collector::desc(&self.refusals));
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let _copying = self
            .copying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.limit.set(gauge(self.budget.limit()));
        self.used.set(gauge(self.budget.used()));
        catch_up(&self.refusals, self.budget.refused());
        let mut families = prometheus::core::Collector::collect(&self.limit);
        families.extend(prometheus::core::Collector::collect(&self.used));
        families.extend(prometheus::core::Collector::collect(&self.refusals));
        families
    }
}

/// Removes every series of `vec` whose labels include all of `labels`.
fn remove_matching<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    labels: &[(&str, &str)],
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let series: std::collections::HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.iter().all(|(k, v)| series.get(k) == Some(v)) {
                let _ = vec.remove(&series);
            }
        }
    }
}

/// Statuses whose counters each app keeps a handle to after first use.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 413, 431, 500, 502, 503, 504,
];

/// One app version's metric handles, resolved once per routing table.
pub struct AppMetrics {
    app: String,
    version: String,
    requests: IntCounterVec,
    failures: IntCounterVec,
    /// Resolved on first use, so unused statuses do not show as zeros.
    by_status: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
    pub(crate) duration: Histogram,
    pub(crate) instantiate: Histogram,
    pub(crate) inflight: IntGauge,
    /// Responses counted, for reports to the control API; kept across
    /// routing-table rebuilds while the app's version stays.
    pub counts: std::sync::Arc<RequestCounts>,
    /// Set when the version stops being served and its series are removed:
    /// late requests of it do not bring them back.
    retired: std::sync::atomic::AtomicBool,
}

/// Responses of one app version since the gateway started (kept across
/// routing-table rebuilds while the version is served): what the gateway
/// reports to the control API, whose scheduler diffs them into analysis
/// windows for rollouts.
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// Responses.
    pub answered: std::sync::atomic::AtomicU64,
    /// Of which 5xx.
    pub failed: std::sync::atomic::AtomicU64,
    /// Guests that trapped.
    pub traps: std::sync::atomic::AtomicU64,
    /// Guests killed at a limit (CPU, memory, wall time).
    pub limit_kills: std::sync::atomic::AtomicU64,
    /// Requests answered 503 for the gateway's or the tenant's load
    /// (gateway-busy, tenant-busy): not the version's doing, so left out
    /// of its report.
    pub shed: std::sync::atomic::AtomicU64,
    /// Time to the response head, per bucket of
    /// [`gannet_scheduler::analysis::LATENCY_BOUNDS_US`] (and an overflow
    /// bucket).
    pub latency: [std::sync::atomic::AtomicU64; gannet_scheduler::analysis::LATENCY_BUCKETS],
}

impl RequestCounts {
    /// Counts one request's time to its response head (a lookup in 16
    /// bounds and one atomic add).
    pub fn record_latency(&self, latency: std::time::Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bounds = &gannet_scheduler::analysis::LATENCY_BOUNDS_US;
        let bucket = bounds.partition_point(|&b| b < us);
        self.latency[bucket].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counts now, as a report carries them.
    pub fn snapshot(&self, key: String, version: u32) -> gannet_model::snapshot::VersionCounters {
        use std::sync::atomic::Ordering::Relaxed;
        let traps = self.traps.load(Relaxed);
        let limit_kills = self.limit_kills.load(Relaxed);
        let shed = self.shed.load(Relaxed);
        gannet_model::snapshot::VersionCounters {
            key,
            version,
            requests: self.answered.load(Relaxed).saturating_sub(shed),
            // A trap or a kill is answered 5xx too: counted once, as what
            // it is; a shed request not at all.
            server_errors: self
                .failed
                .load(Relaxed)
                .saturating_sub(traps.saturating_add(limit_kills).saturating_add(shed)),
            traps,
            limit_kills,
            latency: self.latency.iter().map(|b| b.load(Relaxed)).collect(),
        }
    }
}

impl AppMetrics {
    /// Resolves the handles for `app` at `version`.
    pub fn new(
        m: &Metrics,
        app: &str,
        version: &str,
        counts: std::sync::Arc<RequestCounts>,
    ) -> Self {
        AppMetrics {
            app: app.to_string(),
            version: version.to_string(),
            requests: m.requests.clone(),
            failures: m.guest_failures.clone(),
            by_status: Default::default(),
            duration: m.duration.with_label_values(&[app, version]),
            instantiate: m.instantiate.with_label_values(&[app]),
            inflight: m.inflight.with_label_values(&[app]),
            counts,
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Counts one response with `status`.
    pub fn count(&self, status: u16) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counts.answered.fetch_add(1, Relaxed);
        if status >= 500 {
            self.counts.failed.fetch_add(1, Relaxed);
        }
        if self.retired.load(Relaxed) {
            return;
        }
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.by_status[i]
                .get_or_init(|| {
                    self.requests.with_label_values(&[
                        &self.app,
                        &self.version,
                        &status.to_string(),
                    ])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[&self.app, &self.version, &status.to_string()])
                .inc(),
        }
    }

    /// Counts one failed invocation.
    pub fn failure(&self, kind: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        match kind {
            "trap" => {
                self.counts.traps.fetch_add(1, Relaxed);
            }
            "cpu-limit" | "wall-limit" | "memory-limit" => {
                self.counts.limit_kills.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        if self.retired.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        self.failures
            .with_label_values(&[&self.app, &self.version, kind])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    #[test]
    fn a_report_counts_each_failure_once_and_leaves_shed_requests_out() {
        let c = RequestCounts::default();
        c.answered.store(10, Relaxed);
        c.failed.store(6, Relaxed); // 5xx answers: 1 guest, 2 traps, 1 kill, 2 shed
        c.traps.store(2, Relaxed);
        c.limit_kills.store(1, Relaxed);
        c.shed.store(2, Relaxed);
        for ms in [0, 1, 3, 40_000] {
            c.record_latency(Duration::from_millis(ms));
        }
        let r = c.snapshot("acme/shop".into(), 7);
        assert_eq!((r.key.as_str(), r.version), ("acme/shop", 7));
        assert_eq!(r.requests, 8);
        assert_eq!(r.server_errors, 1);
        assert_eq!((r.traps, r.limit_kills), (2, 1));
        assert_eq!(r.latency.len(), gannet_scheduler::analysis::LATENCY_BUCKETS);
        // 0 ms ≤ 250 µs; 1 ms ≤ 1 ms; 3 ms ≤ 5 ms; 40 s overflows.
        assert_eq!(r.latency[0], 1);
        assert_eq!(r.latency[2], 1);
        assert_eq!(r.latency[4], 1);
        assert_eq!(r.latency[16], 1);
        assert_eq!(r.latency.iter().sum::<u64>(), 4);
    }
}
