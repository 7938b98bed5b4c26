//! What the proxy programs, computed from API objects: `Service` + its `EndpointSlice`s →
//! one [`ServicePort`] per (service, port), and the [`ChangeTracker`] that folds bursts of watch
//! events into one pending change per service.
//!
//! Pure: no IO, no clock. The rule builder ([`crate::nftables`]) reads only these types, so a
//! snapshot built by hand in a test programs exactly what one built from the API would.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_api::k8s::api::core::v1::Service;
use switchyard_api::k8s::api::discovery::v1::EndpointSlice;

/// Services carrying this label belong to another proxy (KEP-2447, kube-proxy ignores them).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Services carrying this label are headless for proxies (no rules), as in kube-proxy.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The label tying an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// kube-proxy's default ClientIP affinity timeout (3 hours, `v1.DefaultClientIPServiceAffinitySeconds`).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// A Service, by namespace and name: the unit of change tracking and of partial syncs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// L4 protocols a Service port may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From the API's `TCP`/`UDP`/`SCTP` (absent means TCP, the API default).
    pub fn from_api(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The nftables keyword (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of one Service (kube-proxy's `ServicePortName`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's name; empty for a Service's single unnamed port.
    pub port_name: String,
    pub protocol: Protocol,
}

impl ServicePortName {
    pub fn service(&self) -> ServiceKey {
        ServiceKey::new(&self.namespace, &self.name)
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port_name
        )
    }
}

/// Everything about a Service port that shapes its rules (kube-proxy's `ServicePortInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub cluster_ips: Vec<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `Some(timeout seconds)` under `sessionAffinity: ClientIP`.
    pub session_affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local` (only meaningful with NodePort/external/LB addresses).
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    pub health_check_node_port: Option<u16>,
}

impl ServicePortInfo {
    /// A plain ClusterIP port (for tests and benchmarks).
    pub fn cluster_ip(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        ServicePortInfo {
            cluster_ips: vec![ip],
            port,
            protocol,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            session_affinity_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
        }
    }

    /// Whether this port is reachable from outside the cluster (NodePort, external or LB IPs).
    pub fn is_external(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// One endpoint of one Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
}

impl Endpoint {
    /// A ready endpoint (tests and benchmarks).
    pub fn ready(ip: IpAddr, port: u16, node_name: Option<&str>) -> Self {
        Endpoint {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            node_name: node_name.map(str::to_string),
            zone: None,
        }
    }

    pub fn is_local(&self, node_name: &str) -> bool {
        self.node_name.as_deref() == Some(node_name)
    }
}

/// A Service port and its endpoints: what the builder turns into rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub info: ServicePortInfo,
    /// Sorted and de-duplicated by (ip, port).
    pub endpoints: Vec<Endpoint>,
}

/// The endpoints traffic may use on one node, after kube-proxy's `CategorizeEndpoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsableEndpoints {
    /// For the cluster-wide policy: every usable endpoint.
    pub all: Vec<Endpoint>,
    /// For a `Local` policy: this node's usable endpoints.
    pub local: Vec<Endpoint>,
}

/// Ready endpoints if there are any, else serving-and-terminating ones (KEP-1669: terminating
/// endpoints are a fallback so rolling updates of `Local` services do not drop traffic).
fn ready_or_terminating<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<Endpoint> {
    let ready: Vec<Endpoint> = eps.clone().filter(|e| e.ready).cloned().collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating)
        .cloned()
        .collect()
}

impl ServicePort {
    /// Which endpoints the cluster-wide and the `Local` policies use on `node_name`.
    pub fn usable_endpoints(&self, node_name: &str) -> UsableEndpoints {
        UsableEndpoints {
            all: ready_or_terminating(self.endpoints.iter()),
            local: ready_or_terminating(self.endpoints.iter().filter(|e| e.is_local(node_name))),
        }
    }
}

/// The whole desired state: every proxied Service port with its endpoints.
pub type Snapshot = BTreeMap<ServicePortName, ServicePort>;

/// Whether the proxy programs anything for `svc` (not another proxy's, not headless, not
/// ExternalName).
pub fn is_proxied(svc: &Service) -> bool {
    let labels = svc.metadata.labels.as_ref();
    if labels
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
    {
        return false;
    }
    let Some(spec) = &svc.spec else {
        return false;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    !(cluster_ip.is_empty() || cluster_ip == "None")
}

fn parse_ips(values: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = values
        .into_iter()
        .filter_map(|v| v.as_ref().trim().parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The ports of `svc` with their endpoints from `slices` (all slices of this service; slices of
/// other services are ignored). Nothing for services [`is_proxied`] rejects.
pub fn service_ports(
    svc: &Service,
    slices: &[&EndpointSlice],
) -> Vec<(ServicePortName, ServicePort)> {
    if !is_proxied(svc) {
        return Vec::new();
    }
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let cluster_ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => parse_ips(ips),
        _ => parse_ips(spec.cluster_ip.iter()),
    };
    let external_ips = parse_ips(spec.external_ips.iter().flatten());
    let load_balancer_ips = parse_ips(
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone()),
    );
    let mut source_ranges: Vec<IpNet> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| r.trim().parse::<IpNet>().ok().map(|n| n.trunc()))
        .collect();
    source_ranges.sort();
    source_ranges.dedup();
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let external_capable = matches!(type_, "NodePort" | "LoadBalancer");
    let external_policy_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0);

    let my_slices: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| {
            s.metadata.namespace.as_deref().unwrap_or("") == namespace
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    .is_some_and(|n| *n == name)
                && matches!(s.address_type.as_str(), "IPv4" | "IPv6")
        })
        .collect();

    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::from_api(port.protocol.as_deref()) else {
            continue;
        };
        let Ok(port_number) = u16::try_from(port.port) else {
            continue;
        };
        let port_name = port.name.clone().unwrap_or_default();
        let spn = ServicePortName {
            namespace: namespace.clone(),
            name: name.clone(),
            port_name: port_name.clone(),
            protocol,
        };
        let info = ServicePortInfo {
            cluster_ips: cluster_ips.clone(),
            port: port_number,
            protocol,
            node_port: if external_capable {
                port.node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
            } else {
                None
            },
            external_ips: external_ips.clone(),
            load_balancer_ips: if type_ == "LoadBalancer" {
                load_balancer_ips.clone()
            } else {
                Vec::new()
            },
            load_balancer_source_ranges: if type_ == "LoadBalancer" {
                source_ranges.clone()
            } else {
                Vec::new()
            },
            session_affinity_seconds: affinity,
            external_policy_local,
            internal_policy_local,
            health_check_node_port,
        };
        let endpoints = endpoints_for(&my_slices, &port_name, protocol);
        out.push((spn, ServicePort { info, endpoints }));
    }
    out
}

/// Endpoints of the slices for the port named `port_name`, merged across slices and
/// de-duplicated by (ip, port): an address listed twice (two slices during a controller's
/// rebalancing) keeps its "best" conditions (ready beats serving beats terminating).
fn endpoints_for(slices: &[&EndpointSlice], port_name: &str, protocol: Protocol) -> Vec<Endpoint> {
    let mut by_addr: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Protocol::from_api(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port_number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            let conditions = ep.conditions.clone().unwrap_or_default();
            // Per the EndpointSlice API, an unknown `ready` means ready, an unknown `serving`
            // means the value of `ready`, an unknown `terminating` means not terminating.
            let ready = conditions.ready.unwrap_or(true);
            let serving = conditions.serving.unwrap_or(ready);
            let terminating = conditions.terminating.unwrap_or(false);
            for address in ep.addresses.iter().take(1) {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                let candidate = Endpoint {
                    ip,
                    port: port_number,
                    ready,
                    serving,
                    terminating,
                    node_name: ep.node_name.clone(),
                    zone: ep.zone.clone(),
                };
                let rank = |e: &Endpoint| (e.ready, e.serving, !e.terminating);
                match by_addr.get(&(ip, port_number)) {
                    Some(existing) if rank(existing) >= rank(&candidate) => {}
                    _ => {
                        by_addr.insert((ip, port_number), candidate);
                    }
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// Folds watch events into one pending change per Service (kube-proxy's
/// `ServiceChangeTracker`/`EndpointsChangeTracker`, keyed by namespace/name). Since the proxy
/// rebuilds a changed service from the informer caches at sync time, the tracker only needs to
/// remember *which* services changed, and since when (for network programming latency).
#[derive(Debug, Default)]
pub struct ChangeTracker<T = ()> {
    pending: BTreeMap<ServiceKey, T>,
    events: u64,
}

impl<T: Clone> ChangeTracker<T> {
    pub fn new() -> Self {
        ChangeTracker {
            pending: BTreeMap::new(),
            events: 0,
        }
    }

    /// Records an event for `key`; a burst for one service keeps the first `stamp` (the
    /// oldest change not yet programmed).
    pub fn record(&mut self, key: ServiceKey, stamp: T) {
        self.events += 1;
        self.pending.entry(key).or_insert(stamp);
    }

    /// Services changed since the last [`ChangeTracker::take`], each once.
    pub fn take(&mut self) -> BTreeMap<ServiceKey, T> {
        self.events = 0;
        std::mem::take(&mut self.pending)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Number of distinct services pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Number of events folded into the pending changes.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn keys(&self) -> BTreeSet<ServiceKey> {
        self.pending.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_api::k8s::api::core::v1::{
        ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ServicePort as ApiPort,
        ServiceSpec, ServiceStatus, SessionAffinityConfig,
    };
    use switchyard_api::k8s::api::discovery::v1::{
        Endpoint as ApiEndpoint, EndpointConditions, EndpointPort,
    };
    use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, cluster_ip: &str, ports: &[(&str, i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: Some(vec![cluster_ip.into()]),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ApiPort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: Some(proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// (address, ready, serving, terminating)
    type EndpointRow<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>);

    fn slice(service: &str, name: &str, port: (&str, i32), eps: &[EndpointRow]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    LABEL_SERVICE_NAME.into(),
                    service.into(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, ready, serving, terminating)| ApiEndpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *serving,
                        terminating: *terminating,
                    }),
                    node_name: Some("node-a".into()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: (!port.0.is_empty()).then(|| port.0.to_string()),
                port: Some(port.1),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn slices_of_one_service_are_merged_and_deduplicated() {
        let s = svc("web", "10.96.0.10", &[("http", 80, "TCP")]);
        let a = slice(
            "web",
            "web-a",
            ("http", 8080),
            &[("10.244.1.2", Some(true), None, None)],
        );
        let b = slice(
            "web",
            "web-b",
            ("http", 8080),
            &[
                ("10.244.1.3", Some(true), None, None),
                ("10.244.1.2", Some(false), None, None),
            ],
        );
        let other = slice(
            "db",
            "db-a",
            ("http", 8080),
            &[("10.244.9.9", None, None, None)],
        );
        let ports = service_ports(&s, &[&a, &b, &other]);
        assert_eq!(ports.len(), 1);
        let (name, port) = &ports[0];
        assert_eq!(name.to_string(), "default/web/tcp/http");
        assert_eq!(port.info.cluster_ips, vec![ip("10.96.0.10")]);
        let ips: Vec<_> = port
            .endpoints
            .iter()
            .map(|e| (e.ip, e.port, e.ready))
            .collect();
        assert_eq!(
            ips,
            vec![
                (ip("10.244.1.2"), 8080, true),
                (ip("10.244.1.3"), 8080, true)
            ],
            "the duplicate keeps its ready condition, the other service's slice is ignored"
        );
    }

    #[test]
    fn endpoints_are_matched_by_port_name() {
        let s = svc(
            "web",
            "10.96.0.10",
            &[("http", 80, "TCP"), ("metrics", 9090, "TCP")],
        );
        let a = slice(
            "web",
            "web-a",
            ("http", 8080),
            &[("10.244.1.2", None, None, None)],
        );
        let m = slice(
            "web",
            "web-m",
            ("metrics", 9100),
            &[("10.244.1.5", None, None, None)],
        );
        let ports = service_ports(&s, &[&a, &m]);
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].1.endpoints[0].port, 8080);
        assert_eq!(ports[1].0.port_name, "metrics");
        assert_eq!(ports[1].1.endpoints[0].port, 9100);
        assert_eq!(ports[1].1.endpoints[0].ip, ip("10.244.1.5"));
    }

    #[test]
    fn ready_endpoints_win_and_terminating_ones_are_the_fallback() {
        let s = svc("web", "10.96.0.10", &[("", 80, "TCP")]);
        let mixed = slice(
            "web",
            "web-a",
            ("", 8080),
            &[
                ("10.244.1.2", Some(true), Some(true), Some(false)),
                ("10.244.1.3", Some(false), Some(true), Some(true)),
                ("10.244.1.4", Some(false), Some(false), Some(true)),
            ],
        );
        let ports = service_ports(&s, &[&mixed]);
        let usable = ports[0].1.usable_endpoints("node-a");
        assert_eq!(usable.all.len(), 1);
        assert_eq!(usable.all[0].ip, ip("10.244.1.2"));

        let terminating_only = slice(
            "web",
            "web-a",
            ("", 8080),
            &[
                ("10.244.1.3", Some(false), Some(true), Some(true)),
                ("10.244.1.4", Some(false), Some(false), Some(true)),
            ],
        );
        let ports = service_ports(&s, &[&terminating_only]);
        let usable = ports[0].1.usable_endpoints("node-a");
        let ips: Vec<_> = usable.all.iter().map(|e| e.ip).collect();
        assert_eq!(
            ips,
            vec![ip("10.244.1.3")],
            "serving+terminating is the fallback"
        );

        let none = slice(
            "web",
            "web-a",
            ("", 8080),
            &[("10.244.1.4", Some(false), Some(false), Some(true))],
        );
        let ports = service_ports(&s, &[&none]);
        let usable = ports[0].1.usable_endpoints("node-a");
        assert!(usable.all.is_empty());
    }

    #[test]
    fn local_endpoints_are_this_nodes_endpoints() {
        let port = ServicePort {
            info: ServicePortInfo::cluster_ip(ip("10.96.0.10"), 80, Protocol::Tcp),
            endpoints: vec![
                Endpoint::ready(ip("10.244.1.2"), 80, Some("node-a")),
                Endpoint::ready(ip("10.244.2.2"), 80, Some("node-b")),
            ],
        };
        let usable = port.usable_endpoints("node-a");
        assert_eq!(usable.all.len(), 2);
        assert_eq!(usable.local.len(), 1);
        assert_eq!(usable.local[0].ip, ip("10.244.1.2"));
        let usable = port.usable_endpoints("node-c");
        assert!(usable.local.is_empty());
    }

    #[test]
    fn ignored_services_produce_nothing() {
        let mut labelled = svc("a", "10.96.0.10", &[("", 80, "TCP")]);
        labelled.metadata.labels = Some(BTreeMap::from([(
            LABEL_SERVICE_PROXY_NAME.into(),
            "other".into(),
        )]));
        let mut headless_label = svc("b", "10.96.0.11", &[("", 80, "TCP")]);
        headless_label.metadata.labels = Some(BTreeMap::from([(LABEL_HEADLESS.into(), "".into())]));
        let headless = svc("c", "None", &[("", 80, "TCP")]);
        let mut external_name = svc("d", "", &[("", 80, "TCP")]);
        if let Some(spec) = external_name.spec.as_mut() {
            spec.type_ = Some("ExternalName".into());
            spec.external_name = Some("example.com".into());
        }
        for s in [labelled, headless_label, headless, external_name] {
            assert!(service_ports(&s, &[]).is_empty(), "{:?}", s.metadata.name);
        }
    }

    #[test]
    fn load_balancer_fields_affinity_and_policies_are_read() {
        let mut s = svc("lb", "10.96.0.20", &[("", 443, "TCP")]);
        {
            let spec = s.spec.as_mut().expect("spec");
            spec.type_ = Some("LoadBalancer".into());
            spec.ports.as_mut().expect("ports")[0].node_port = Some(31443);
            spec.external_ips = Some(vec!["192.0.2.7".into()]);
            spec.load_balancer_source_ranges = Some(vec!["203.0.113.0/24".into()]);
            spec.session_affinity = Some("ClientIP".into());
            spec.session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(60),
                }),
            });
            spec.external_traffic_policy = Some("Local".into());
            spec.health_check_node_port = Some(32000);
        }
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("198.51.100.9".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        let ports = service_ports(&s, &[]);
        let info = &ports[0].1.info;
        assert_eq!(info.node_port, Some(31443));
        assert_eq!(info.external_ips, vec![ip("192.0.2.7")]);
        assert_eq!(info.load_balancer_ips, vec![ip("198.51.100.9")]);
        assert_eq!(
            info.load_balancer_source_ranges,
            vec!["203.0.113.0/24".parse::<IpNet>().expect("net")]
        );
        assert_eq!(info.session_affinity_seconds, Some(60));
        assert!(info.external_policy_local);
        assert_eq!(info.health_check_node_port, Some(32000));
    }

    #[test]
    fn a_burst_of_events_folds_into_one_change_per_service() {
        let mut tracker = ChangeTracker::<u32>::new();
        for i in 0..100 {
            tracker.record(ServiceKey::new("default", "web"), i);
        }
        tracker.record(ServiceKey::new("default", "db"), 7);
        assert_eq!(tracker.events(), 101);
        let changed = tracker.take();
        assert_eq!(changed.len(), 2);
        assert_eq!(
            changed[&ServiceKey::new("default", "web")],
            0,
            "the oldest stamp is kept"
        );
        assert!(tracker.is_empty());
        assert!(tracker.take().is_empty());
    }
}
