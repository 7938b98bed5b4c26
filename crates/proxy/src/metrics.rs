//! What the proxy counts and how `/metrics` shows it (issue 5): Prometheus text (version 0.0.4)
//! under kube-proxy's names (pkg/proxy/metrics/metrics.go), so kube-proxy dashboards and alerts
//! work unchanged. Families kube-proxy labels by `ip_family` carry `ip_family="IPv4"`, as
//! kube-proxy ≥ 1.33 does: Switchyard syncs its `ip` and `ip6` tables in one loop, so one sync
//! is one observation under the primary family's label, and the table counts sum both tables.
//!
//! kube-proxy has no family for the size of its nftables table (only the iptables mode's
//! `kubeproxy_sync_proxy_rules_iptables_total`), so the chain and element counts are ours:
//! `switchyard_proxy_nftables_chains` and `switchyard_proxy_nftables_elements`, as are the
//! counters of configuration reloads. In userspace mode a failed sync of the userspace data
//! plane also counts in `kubeproxy_sync_proxy_rules_nftables_sync_failures_total` (the only
//! failure counter dashboards know), and the table counts stay 0.
//!
//! Recording is cheap: watch events bump relaxed atomics, and a sync takes one small lock once
//! to add its observations to the histograms. Nothing here runs per packet. This module never
//! decides what is programmed; it only counts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// kube-proxy's sync duration buckets: `ExponentialBuckets(0.001, 2, 15)`, 1 ms to 16.384 s.
pub const SYNC_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

/// kube-proxy's network programming buckets: 0.25 s and 0.5 s, every second to 59 s, every 5 s
/// from 60 s to 115 s, every 30 s from 2 min to 5 min (80 buckets).
pub fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

/// The label kube-proxy puts on per-family families; one sync covers both of our tables.
const IP_FAMILY: &str = "ip_family=\"IPv4\"";

/// A Prometheus histogram: per-bucket counts (not cumulative; summed when rendered), the sum
/// and the count of all observations.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// One cell per bound, and one for +Inf.
    cells: Vec<u64>,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: Vec<f64>) -> Self {
        let cells = vec![0; bounds.len() + 1];
        Histogram {
            bounds,
            cells,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, seconds: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.cells[slot] += 1;
        self.sum += seconds;
    }

    pub fn count(&self) -> u64 {
        self.cells.iter().sum()
    }

    /// Appends `name`'s `_bucket` (cumulative, with `le`), `_sum` and `_count` lines.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, cell) in self.bounds.iter().zip(&self.cells) {
            cumulative += cell;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{} {}",
            series(&format!("{name}_sum"), labels),
            self.sum
        );
        let _ = writeln!(out, "{} {count}", series(&format!("{name}_count"), labels));
    }
}

/// `name{labels}`, or `name` alone without labels.
fn series(name: &str, labels: &str) -> String {
    if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    }
}

/// Whether a sync replaced the whole table or touched only changed services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncScope {
    Full,
    Partial,
}

/// One finished sync, as [`Metrics::record_sync`] takes it.
#[derive(Clone, Debug)]
pub struct SyncRecord {
    pub scope: SyncScope,
    pub duration: Duration,
    /// Whether the rules were applied (a failure counts in the sync failures).
    pub succeeded: bool,
    /// When it finished (wall clock).
    pub at: SystemTime,
    /// From each change's `last-change-trigger-time` to the rules being applied.
    pub programming: Vec<Duration>,
    /// Chains and map elements of services in the table afterwards (on success).
    pub chains: usize,
    pub elements: usize,
}

#[derive(Debug)]
struct Histograms {
    sync: Histogram,
    full: Histogram,
    partial: Histogram,
    programming: Histogram,
}

/// The proxy's metrics. Shared (in an `Arc`) by the sync loop, the watch handlers and the
/// `/metrics` server; it outlives a [`crate::Proxy`] replaced after a configuration change.
#[derive(Debug)]
pub struct Metrics {
    histograms: Mutex<Histograms>,
    service_changes: AtomicU64,
    endpoint_changes: AtomicU64,
    sync_failures: AtomicU64,
    /// Unix time in seconds, as `f64::to_bits`.
    last_synced: AtomicU64,
    last_queued: AtomicU64,
    chains: AtomicU64,
    elements: AtomicU64,
    healthz: [AtomicU64; 2],
    livez: [AtomicU64; 2],
    config_applied: AtomicU64,
    config_rejected: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            histograms: Mutex::new(Histograms {
                sync: Histogram::new(SYNC_BUCKETS.to_vec()),
                full: Histogram::new(SYNC_BUCKETS.to_vec()),
                partial: Histogram::new(SYNC_BUCKETS.to_vec()),
                programming: Histogram::new(programming_buckets()),
            }),
            service_changes: AtomicU64::new(0),
            endpoint_changes: AtomicU64::new(0),
            sync_failures: AtomicU64::new(0),
            last_synced: AtomicU64::new(0f64.to_bits()),
            last_queued: AtomicU64::new(0f64.to_bits()),
            chains: AtomicU64::new(0),
            elements: AtomicU64::new(0),
            healthz: [AtomicU64::new(0), AtomicU64::new(0)],
            livez: [AtomicU64::new(0), AtomicU64::new(0)],
            config_applied: AtomicU64::new(0),
            config_rejected: AtomicU64::new(0),
        }
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Which probe of the health server answered (for `kubeproxy_proxy_{healthz,livez}_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Healthz,
    Livez,
}

impl Metrics {
    /// A Service changed (one watch event).
    pub fn service_changed(&self) {
        bump(&self.service_changes);
    }

    /// An EndpointSlice changed (one watch event).
    pub fn endpoints_changed(&self) {
        bump(&self.endpoint_changes);
    }

    /// A sync was requested at `at` (`..._last_queued_timestamp_seconds`).
    pub fn queued(&self, at: SystemTime) {
        self.last_queued
            .store(unix_seconds(at).to_bits(), Ordering::Relaxed);
    }

    /// Adds one sync: one lock for the histograms, atomics for the rest.
    pub fn record_sync(&self, sync: &SyncRecord) {
        {
            let mut h = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
            let seconds = sync.duration.as_secs_f64();
            h.sync.observe(seconds);
            match sync.scope {
                SyncScope::Full => h.full.observe(seconds),
                SyncScope::Partial => h.partial.observe(seconds),
            }
            if sync.succeeded {
                for latency in &sync.programming {
                    h.programming.observe(latency.as_secs_f64());
                }
            }
        }
        if sync.succeeded {
            self.last_synced
                .store(unix_seconds(sync.at).to_bits(), Ordering::Relaxed);
            self.chains.store(sync.chains as u64, Ordering::Relaxed);
            self.elements.store(sync.elements as u64, Ordering::Relaxed);
        } else {
            bump(&self.sync_failures);
        }
    }

    /// The health server answered `probe` with 200 (`healthy`) or 503.
    pub fn probed(&self, probe: Probe, healthy: bool) {
        let cells = match probe {
            Probe::Healthz => &self.healthz,
            Probe::Livez => &self.livez,
        };
        bump(&cells[usize::from(!healthy)]);
    }

    /// A new configuration was applied (`true`) or rejected and the running one kept.
    pub fn config_reloaded(&self, applied: bool) {
        bump(if applied {
            &self.config_applied
        } else {
            &self.config_rejected
        });
    }

    /// How many syncs failed to apply their rules.
    pub fn sync_failures(&self) -> u64 {
        read(&self.sync_failures)
    }

    /// A copy of the network programming histogram (for tests and benches).
    pub fn programming(&self) -> Histogram {
        let h = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        h.programming.clone()
    }

    /// Appends every family as Prometheus text to `out`.
    pub fn render(&self, out: &mut String) {
        {
            let h = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
            for (name, help, histogram) in [
                (
                    "kubeproxy_sync_proxy_rules_duration_seconds",
                    "SyncProxyRules latency in seconds",
                    &h.sync,
                ),
                (
                    "kubeproxy_sync_full_proxy_rules_duration_seconds",
                    "SyncProxyRules latency in seconds for full resyncs",
                    &h.full,
                ),
                (
                    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                    "SyncProxyRules latency in seconds for partial resyncs",
                    &h.partial,
                ),
                (
                    "kubeproxy_network_programming_duration_seconds",
                    "In Cluster Network Programming Latency in seconds",
                    &h.programming,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} histogram");
                histogram.render(out, name, IP_FAMILY);
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, labels: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{} {value}",
                series(name, labels)
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, labels: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{} {value}",
                series(name, labels)
            );
        };
        let seconds = |cell: &AtomicU64| f64::from_bits(read(cell)).to_string();
        gauge(
            out,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "[ALPHA] The last time proxy rules were successfully synced",
            IP_FAMILY,
            seconds(&self.last_synced),
        );
        gauge(
            out,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "[ALPHA] The last time a sync of proxy rules was queued",
            IP_FAMILY,
            seconds(&self.last_queued),
        );
        counter(
            out,
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "[ALPHA] Cumulative proxy rules Endpoint changes",
            "",
            read(&self.endpoint_changes),
        );
        counter(
            out,
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "[ALPHA] Cumulative proxy rules Service changes",
            "",
            read(&self.service_changes),
        );
        counter(
            out,
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "[ALPHA] Cumulative proxy nftables sync failures",
            IP_FAMILY,
            read(&self.sync_failures),
        );
        for (name, help, cells) in [
            (
                "kubeproxy_proxy_healthz_total",
                "[ALPHA] Cumulative proxy healthz HTTP status",
                &self.healthz,
            ),
            (
                "kubeproxy_proxy_livez_total",
                "[ALPHA] Cumulative proxy livez HTTP status",
                &self.livez,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (code, cell) in ["200", "503"].iter().zip(cells) {
                let n = read(cell);
                if n > 0 {
                    let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
                }
            }
        }
        gauge(
            out,
            "switchyard_proxy_nftables_chains",
            "Chains of services in the proxy's nftables table after the last successful sync.",
            "",
            read(&self.chains).to_string(),
        );
        gauge(
            out,
            "switchyard_proxy_nftables_elements",
            "Map elements of services in the proxy's nftables table after the last successful sync.",
            "",
            read(&self.elements).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_proxy_config_reloads_total Configuration changes seen by the proxy, by whether they were applied or rejected (the running configuration kept).\n# TYPE switchyard_proxy_config_reloads_total counter\n\
switchyard_proxy_config_reloads_total{{result=\"applied\"}} {}\n\
switchyard_proxy_config_reloads_total{{result=\"rejected\"}} {}",
            read(&self.config_applied),
            read(&self.config_rejected)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, text: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn buckets_are_kube_proxys() {
        assert_eq!(SYNC_BUCKETS.len(), 15);
        let p = programming_buckets();
        assert_eq!(p.len(), 80);
        assert_eq!(&p[..3], &[0.25, 0.5, 1.0]);
        assert_eq!(p[60], 59.0);
        assert_eq!(p[61], 60.0);
        assert_eq!(p[72], 115.0);
        assert_eq!(p[73], 120.0);
        assert_eq!(p[79], 300.0);
    }

    #[test]
    fn histogram_buckets_render_cumulatively_with_sum_and_count() {
        let mut h = Histogram::new(vec![0.1, 1.0]);
        for s in [0.05, 0.1, 0.5, 3.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "a=\"b\"");
        assert_eq!(
            out,
            "x_seconds_bucket{a=\"b\",le=\"0.1\"} 2\n\
             x_seconds_bucket{a=\"b\",le=\"1\"} 3\n\
             x_seconds_bucket{a=\"b\",le=\"+Inf\"} 4\n\
             x_seconds_sum{a=\"b\"} 3.65\n\
             x_seconds_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn a_sync_lands_in_the_total_and_its_scopes_histogram_with_kube_proxys_names() {
        let m = Metrics::default();
        m.service_changed();
        m.endpoints_changed();
        m.endpoints_changed();
        m.queued(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        m.record_sync(&SyncRecord {
            scope: SyncScope::Partial,
            duration: Duration::from_millis(3),
            succeeded: true,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(101),
            programming: vec![Duration::from_millis(700), Duration::from_secs(61)],
            chains: 7,
            elements: 3,
        });
        m.record_sync(&SyncRecord {
            scope: SyncScope::Full,
            duration: Duration::from_millis(20),
            succeeded: false,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(102),
            programming: vec![Duration::from_secs(1)],
            chains: 0,
            elements: 0,
        });
        m.probed(Probe::Healthz, false);
        m.config_reloaded(false);
        let mut text = String::new();
        m.render(&mut text);
        let at = |name: &str| sample(name, &text).unwrap_or_else(|| panic!("{name}:\n{text}"));
        let family = "{ip_family=\"IPv4\"}";
        assert_eq!(
            at(&format!(
                "kubeproxy_sync_proxy_rules_duration_seconds_count{family}"
            )),
            2.0
        );
        assert_eq!(
            at("kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.004\"}"),
            1.0
        );
        assert_eq!(
            at("kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.032\"}"),
            2.0
        );
        assert_eq!(
            at(&format!(
                "kubeproxy_sync_full_proxy_rules_duration_seconds_count{family}"
            )),
            1.0
        );
        assert_eq!(
            at(&format!(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{family}"
            )),
            1.0
        );
        // Only the successful sync's changes count as programmed.
        assert_eq!(
            at(&format!(
                "kubeproxy_network_programming_duration_seconds_count{family}"
            )),
            2.0
        );
        assert_eq!(
            at("kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"1\"}"),
            1.0
        );
        assert_eq!(
            at("kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"65\"}"),
            2.0
        );
        assert_eq!(
            at(&format!(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds{family}"
            )),
            101.0
        );
        assert_eq!(
            at(&format!(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{family}"
            )),
            100.0
        );
        assert_eq!(at("kubeproxy_sync_proxy_rules_endpoint_changes_total"), 2.0);
        assert_eq!(at("kubeproxy_sync_proxy_rules_service_changes_total"), 1.0);
        assert_eq!(
            at(&format!(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{family}"
            )),
            1.0
        );
        assert_eq!(at("kubeproxy_proxy_healthz_total{code=\"503\"}"), 1.0);
        assert_eq!(at("switchyard_proxy_nftables_chains"), 7.0);
        assert_eq!(at("switchyard_proxy_nftables_elements"), 3.0);
        assert_eq!(
            at("switchyard_proxy_config_reloads_total{result=\"rejected\"}"),
            1.0
        );
        // Every family is declared once, before its samples.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).expect("name");
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
    }
}
