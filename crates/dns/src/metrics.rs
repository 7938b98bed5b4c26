//! What the DNS server counts and how it shows it (issue 6): Prometheus text at `/metrics` under
//! CoreDNS's metric names where one exists (so CoreDNS dashboards and alerts work unchanged),
//! `/healthz` (200 while the process serves) and `/ready` (200 only after the first complete
//! sync of the zone, 503 before: a load balancer must not send queries that would get SERVFAIL).
//!
//! Recording is on the query path, so it is only relaxed atomic increments into fixed arrays
//! indexed by small enums: no lock, no allocation, no label strings per query. Label strings are
//! built when a scrape renders the text. This module never decides an answer; it only counts.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::forward::{rcode_slot, RCODE_SLOTS};
use crate::server::Dns;

/// The zone a query was counted under: the cluster domain, or `.` (everything forwarded or
/// refused), as CoreDNS labels by server block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneLabel {
    Cluster = 0,
    Root = 1,
}
const ZONES: usize = 2;

/// The plugin that wrote a response, CoreDNS's `plugin` label: `kubernetes` for the cluster zone,
/// `forward` for forwarded names, empty for errors the server writes itself (REFUSED, FORMERR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginLabel {
    Kubernetes = 0,
    Forward = 1,
    Server = 2,
}
const PLUGINS: usize = 3;
const PLUGIN_NAMES: [&str; PLUGINS] = ["kubernetes", "forward", ""];

/// The transport a query came in on, CoreDNS's `proto` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp = 0,
    Tcp = 1,
}
const PROTOS: usize = 2;
const PROTO_NAMES: [&str; PROTOS] = ["udp", "tcp"];
/// CoreDNS's `family` label: "1" for IPv4 clients, "2" for IPv6 (the address family numbers).
const FAMILIES: usize = 2;
const FAMILY_NAMES: [&str; FAMILIES] = ["1", "2"];

/// The query types counted one by one, CoreDNS's monitored types (`plugin/pkg/response`); every
/// other type is `other`.
const TYPES: [RecordType; 14] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::PTR,
    RecordType::SRV,
    RecordType::TXT,
    RecordType::SOA,
    RecordType::NS,
    RecordType::MX,
    RecordType::ANY,
    RecordType::HTTPS,
    RecordType::DS,
    RecordType::AXFR,
    RecordType::IXFR,
];
const TYPE_SLOTS: usize = TYPES.len() + 1;

fn type_slot(qtype: Option<RecordType>) -> usize {
    qtype
        .and_then(|t| TYPES.iter().position(|known| *known == t))
        .unwrap_or(TYPES.len())
}

fn type_name(slot: usize) -> String {
    TYPES
        .get(slot)
        .map_or_else(|| "other".to_string(), ToString::to_string)
}

/// CoreDNS's `rcode` label values (miekg/dns `RcodeToString`) by [`rcode_slot`].
fn rcode_name(slot: usize) -> &'static str {
    const NAMES: [&str; RCODE_SLOTS] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
        "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
        "BADVERS", "OTHER",
    ];
    NAMES[slot]
}

/// Upper bounds of the request duration histogram, CoreDNS's `plugin.TimeBuckets`:
/// `prometheus.ExponentialBuckets(0.00025, 2, 16)`, 0.25 ms to 8.192 s.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];
/// The buckets in nanoseconds, for the comparison on the query path.
const DURATION_BUCKETS_NANOS: [u64; 16] = [
    250_000,
    500_000,
    1_000_000,
    2_000_000,
    4_000_000,
    8_000_000,
    16_000_000,
    32_000_000,
    64_000_000,
    128_000_000,
    256_000_000,
    512_000_000,
    1_024_000_000,
    2_048_000_000,
    4_096_000_000,
    8_192_000_000,
];
/// One slot per bucket and one for +Inf.
const DURATION_SLOTS: usize = DURATION_BUCKETS.len() + 1;

/// One query as the server saw it, for [`Metrics::record`].
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub zone: ZoneLabel,
    pub plugin: PluginLabel,
    pub proto: Proto,
    pub ipv6_client: bool,
    /// The question's type; `None` for a query that did not decode.
    pub qtype: Option<RecordType>,
    pub rcode: ResponseCode,
    pub duration: Duration,
}

/// The server's counters: fixed arrays of atomics, one cell per label combination.
#[derive(Debug)]
pub struct Metrics {
    /// CoreDNS's `server` label, `dns://<listen address>`.
    server: String,
    /// The cluster domain as the `zone` label (`cluster.local.`).
    cluster_zone: String,
    /// `[zone][proto][family][type]`
    requests: Box<[AtomicU64]>,
    /// `[zone][plugin][rcode]`
    responses: Box<[AtomicU64]>,
    /// `[zone][type][bucket]`, not cumulative (summed when rendered).
    duration_buckets: Box<[AtomicU64]>,
    /// `[zone][type]`, in nanoseconds.
    duration_sum_nanos: Box<[AtomicU64]>,
}

fn boxed(len: usize) -> Box<[AtomicU64]> {
    (0..len).map(|_| AtomicU64::new(0)).collect()
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    /// Counters labelled `server` (`dns://127.0.0.1:53`) and `cluster_zone` (`cluster.local.`).
    pub fn new(server: impl Into<String>, cluster_zone: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            cluster_zone: cluster_zone.into(),
            requests: boxed(ZONES * PROTOS * FAMILIES * TYPE_SLOTS),
            responses: boxed(ZONES * PLUGINS * RCODE_SLOTS),
            duration_buckets: boxed(ZONES * TYPE_SLOTS * DURATION_SLOTS),
            duration_sum_nanos: boxed(ZONES * TYPE_SLOTS),
        }
    }

    /// The same counters under another `server` label (set before serving).
    pub fn set_server_label(&mut self, server: impl Into<String>) {
        self.server = server.into();
    }

    /// Counts one query: five relaxed increments, no lock.
    pub fn record(&self, seen: &Observation) {
        let zone = seen.zone as usize;
        let type_slot = type_slot(seen.qtype);
        let family = usize::from(seen.ipv6_client);
        add(
            &self.requests[((zone * PROTOS + seen.proto as usize) * FAMILIES + family)
                * TYPE_SLOTS
                + type_slot],
            1,
        );
        add(
            &self.responses
                [(zone * PLUGINS + seen.plugin as usize) * RCODE_SLOTS + rcode_slot(seen.rcode)],
            1,
        );
        let nanos = u64::try_from(seen.duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BUCKETS_NANOS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        add(
            &self.duration_buckets[(zone * TYPE_SLOTS + type_slot) * DURATION_SLOTS + bucket],
            1,
        );
        add(
            &self.duration_sum_nanos[zone * TYPE_SLOTS + type_slot],
            nanos,
        );
    }

    /// How many queries were counted in all.
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().map(read).sum()
    }

    fn zone_name(&self, zone: usize) -> &str {
        if zone == ZoneLabel::Cluster as usize {
            &self.cluster_zone
        } else {
            "."
        }
    }

    /// Appends this server's counters as Prometheus text (version 0.0.4) to `out`; cells never
    /// counted are left out, as CoreDNS's client library does for unseen label values.
    pub fn render(&self, out: &mut String) {
        let server = &self.server;
        out.push_str("# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.\n# TYPE coredns_dns_requests_total counter\n");
        for zone in 0..ZONES {
            for (proto, proto_name) in PROTO_NAMES.iter().enumerate() {
                for (family, family_name) in FAMILY_NAMES.iter().enumerate() {
                    for slot in 0..TYPE_SLOTS {
                        let n = read(
                            &self.requests
                                [((zone * PROTOS + proto) * FAMILIES + family) * TYPE_SLOTS + slot],
                        );
                        if n > 0 {
                            let _ = writeln!(
                                out,
                                "coredns_dns_requests_total{{server=\"{server}\",zone=\"{}\",view=\"\",proto=\"{}\",family=\"{}\",type=\"{}\"}} {n}",
                                self.zone_name(zone),
                                proto_name,
                                family_name,
                                type_name(slot)
                            );
                        }
                    }
                }
            }
        }
        out.push_str("# HELP coredns_dns_responses_total Counter of response status codes.\n# TYPE coredns_dns_responses_total counter\n");
        for zone in 0..ZONES {
            for (plugin, plugin_name) in PLUGIN_NAMES.iter().enumerate() {
                for slot in 0..RCODE_SLOTS {
                    let n = read(&self.responses[(zone * PLUGINS + plugin) * RCODE_SLOTS + slot]);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "coredns_dns_responses_total{{server=\"{server}\",zone=\"{}\",view=\"\",rcode=\"{}\",plugin=\"{plugin_name}\"}} {n}",
                            self.zone_name(zone),
                            rcode_name(slot)
                        );
                    }
                }
            }
        }
        out.push_str("# HELP coredns_dns_request_duration_seconds Histogram of the time (in seconds) each request took per zone.\n# TYPE coredns_dns_request_duration_seconds histogram\n");
        for zone in 0..ZONES {
            for slot in 0..TYPE_SLOTS {
                let base = (zone * TYPE_SLOTS + slot) * DURATION_SLOTS;
                let cells: Vec<u64> = (0..DURATION_SLOTS)
                    .map(|b| read(&self.duration_buckets[base + b]))
                    .collect();
                let count: u64 = cells.iter().sum();
                if count == 0 {
                    continue;
                }
                let labels = format!(
                    "server=\"{server}\",zone=\"{}\",view=\"\",type=\"{}\"",
                    self.zone_name(zone),
                    type_name(slot)
                );
                let mut cumulative = 0;
                for (bound, cell) in DURATION_BUCKETS.iter().zip(&cells) {
                    cumulative += cell;
                    let _ = writeln!(
                        out,
                        "coredns_dns_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "coredns_dns_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
                );
                let sum = read(&self.duration_sum_nanos[zone * TYPE_SLOTS + slot]) as f64 / 1e9;
                let _ = writeln!(
                    out,
                    "coredns_dns_request_duration_seconds_sum{{{labels}}} {sum}"
                );
                let _ = writeln!(
                    out,
                    "coredns_dns_request_duration_seconds_count{{{labels}}} {count}"
                );
            }
        }
    }
}

/// The whole `/metrics` text of `dns`: its query counters, its forwarder's cache and upstream
/// counters (CoreDNS's `cache` and `forward` plugins), whether the zone is synced, and the build.
pub fn render(dns: &Dns) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let metrics = dns.metrics();
    metrics.render(&mut out);
    let server = &metrics.server;
    let forwarder = dns.forwarder();
    let counts = forwarder.metrics();
    let (positive, denial) = forwarder.cache_len_by_kind();
    let _ = write!(
        out,
        "# HELP coredns_cache_entries The number of elements in the cache.\n# TYPE coredns_cache_entries gauge\n\
coredns_cache_entries{{server=\"{server}\",type=\"success\",zones=\".\",view=\"\"}} {positive}\n\
coredns_cache_entries{{server=\"{server}\",type=\"denial\",zones=\".\",view=\"\"}} {denial}\n\
# HELP coredns_cache_hits_total The count of cache hits.\n# TYPE coredns_cache_hits_total counter\n\
coredns_cache_hits_total{{server=\"{server}\",type=\"success\",zones=\".\",view=\"\"}} {}\n\
coredns_cache_hits_total{{server=\"{server}\",type=\"denial\",zones=\".\",view=\"\"}} {}\n\
# HELP coredns_cache_misses_total The count of cache misses.\n# TYPE coredns_cache_misses_total counter\n\
coredns_cache_misses_total{{server=\"{server}\",zones=\".\",view=\"\"}} {}\n",
        counts.cache_hits - counts.cache_denial_hits,
        counts.cache_denial_hits,
        counts.cache_misses,
    );
    let upstreams = forwarder.upstream_metrics();
    out.push_str("# HELP coredns_forward_requests_total Counter of requests made per upstream.\n# TYPE coredns_forward_requests_total counter\n");
    for upstream in &upstreams {
        let _ = writeln!(
            out,
            "coredns_forward_requests_total{{to=\"{}\"}} {}",
            upstream.upstream, upstream.requests
        );
    }
    out.push_str("# HELP coredns_forward_responses_total Counter of responses received per upstream.\n# TYPE coredns_forward_responses_total counter\n");
    for upstream in &upstreams {
        for (slot, n) in upstream.responses.iter().enumerate() {
            if *n > 0 {
                let _ = writeln!(
                    out,
                    "coredns_forward_responses_total{{to=\"{}\",rcode=\"{}\"}} {n}",
                    upstream.upstream,
                    rcode_name(slot)
                );
            }
        }
    }
    // Ours, without a CoreDNS counterpart.
    let _ = write!(
        out,
        "# HELP switchyard_dns_forward_deduplicated_total Cache misses that joined an upstream exchange already in flight.\n# TYPE switchyard_dns_forward_deduplicated_total counter\n\
switchyard_dns_forward_deduplicated_total {}\n\
# HELP switchyard_dns_forward_overloaded_total Questions refused because too many upstream exchanges were in flight.\n# TYPE switchyard_dns_forward_overloaded_total counter\n\
switchyard_dns_forward_overloaded_total {}\n\
# HELP switchyard_dns_forward_mismatched_replies_total Upstream replies dropped for a wrong id or question.\n# TYPE switchyard_dns_forward_mismatched_replies_total counter\n\
switchyard_dns_forward_mismatched_replies_total {}\n\
# HELP switchyard_dns_zone_synced Whether every watched kind has been listed once (1) or not (0).\n# TYPE switchyard_dns_zone_synced gauge\n\
switchyard_dns_zone_synced {}\n\
# HELP coredns_build_info A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.\n# TYPE coredns_build_info gauge\n\
coredns_build_info{{version=\"{}\",revision=\"{}\",goversion=\"none (switchyard, rust)\"}} 1\n",
        counts.deduplicated,
        counts.overloaded,
        counts.mismatched_replies,
        u8::from(dns.is_synced()),
        env!("CARGO_PKG_VERSION"),
        option_env!("SWITCHYARD_REVISION").unwrap_or("unknown"),
    );
    out
}

/// The reply to one HTTP request of the metrics listener.
pub fn http_reply(dns: &Dns, path: &str) -> (StatusCode, String) {
    match path {
        "/metrics" => (StatusCode::OK, render(dns)),
        // Serving at all is health: this listener starts together with the DNS sockets.
        "/healthz" | "/health" => (StatusCode::OK, "OK".to_string()),
        "/ready" | "/readyz" if dns.is_synced() => (StatusCode::OK, "OK".to_string()),
        "/ready" | "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the zone has not been listed yet".to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    }
}

/// Serves `/metrics`, `/healthz` and `/ready` of `dns` over HTTP/1.1 on `listener` until the
/// task is dropped.
pub async fn serve_http(dns: Arc<Dns>, listener: TcpListener) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let dns = Arc::clone(&dns);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (status, body) = http_reply(&dns, request.uri().path());
                    let content_type =
                        if status == StatusCode::OK && request.uri().path() == "/metrics" {
                            "text/plain; version=0.0.4; charset=utf-8"
                        } else {
                            "text/plain; charset=utf-8"
                        };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(content_type),
                    );
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                debug!(%client, %error, "metrics connection ended");
            }
        });
    }
}

/// `dns://ADDR`, CoreDNS's `server` label for a server listening on `addr`.
pub fn server_label(addr: SocketAddr) -> String {
    format!("dns://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(rcode: ResponseCode, millis: u64) -> Observation {
        Observation {
            zone: ZoneLabel::Cluster,
            plugin: PluginLabel::Kubernetes,
            proto: Proto::Udp,
            ipv6_client: false,
            qtype: Some(RecordType::A),
            rcode,
            duration: Duration::from_millis(millis),
        }
    }

    #[test]
    fn duration_buckets_in_nanoseconds_match_the_seconds() {
        for (seconds, nanos) in DURATION_BUCKETS.iter().zip(DURATION_BUCKETS_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
    }

    #[test]
    fn recorded_queries_render_under_coredns_names_with_cumulative_buckets() {
        let metrics = Metrics::new("dns://127.0.0.1:53", "cluster.local.");
        metrics.record(&observation(ResponseCode::NoError, 0));
        metrics.record(&observation(ResponseCode::NXDomain, 3));
        metrics.record(&Observation {
            zone: ZoneLabel::Root,
            plugin: PluginLabel::Server,
            proto: Proto::Tcp,
            ipv6_client: true,
            qtype: Some(RecordType::NULL),
            rcode: ResponseCode::Refused,
            duration: Duration::from_secs(20),
        });
        assert_eq!(metrics.requests_total(), 3);
        let mut text = String::new();
        metrics.render(&mut text);
        for line in [
            r#"coredns_dns_requests_total{server="dns://127.0.0.1:53",zone="cluster.local.",view="",proto="udp",family="1",type="A"} 2"#,
            r#"coredns_dns_requests_total{server="dns://127.0.0.1:53",zone=".",view="",proto="tcp",family="2",type="other"} 1"#,
            r#"coredns_dns_responses_total{server="dns://127.0.0.1:53",zone="cluster.local.",view="",rcode="NOERROR",plugin="kubernetes"} 1"#,
            r#"coredns_dns_responses_total{server="dns://127.0.0.1:53",zone="cluster.local.",view="",rcode="NXDOMAIN",plugin="kubernetes"} 1"#,
            r#"coredns_dns_responses_total{server="dns://127.0.0.1:53",zone=".",view="",rcode="REFUSED",plugin=""} 1"#,
            r#"coredns_dns_request_duration_seconds_bucket{server="dns://127.0.0.1:53",zone="cluster.local.",view="",type="A",le="0.00025"} 1"#,
            r#"coredns_dns_request_duration_seconds_bucket{server="dns://127.0.0.1:53",zone="cluster.local.",view="",type="A",le="0.002"} 1"#,
            r#"coredns_dns_request_duration_seconds_bucket{server="dns://127.0.0.1:53",zone="cluster.local.",view="",type="A",le="0.004"} 2"#,
            r#"coredns_dns_request_duration_seconds_bucket{server="dns://127.0.0.1:53",zone=".",view="",type="other",le="8.192"} 0"#,
            r#"coredns_dns_request_duration_seconds_bucket{server="dns://127.0.0.1:53",zone=".",view="",type="other",le="+Inf"} 1"#,
            r#"coredns_dns_request_duration_seconds_count{server="dns://127.0.0.1:53",zone="cluster.local.",view="",type="A"} 2"#,
            r#"coredns_dns_request_duration_seconds_sum{server="dns://127.0.0.1:53",zone="cluster.local.",view="",type="A"} 0.003"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line}\nin\n{text}"
            );
        }
        assert!(!text.contains("type=\"AAAA\""), "unseen cells are left out");
    }
}
