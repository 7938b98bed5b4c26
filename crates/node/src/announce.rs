//! Which node announces which LoadBalancer IP on the local network (L2 mode, as MetalLB's
//! speaker decides it): a pure function every node computes the same way, without talking.
//!
//! For a Service of type LoadBalancer with ingress IPs:
//! - it is announced only while at least one endpoint can serve;
//! - the IPs' pool is the one that allocated them (`metallb.io/ip-allocated-from-pool`, else
//!   the pool whose addresses contain the first IP); the L2Advertisements covering that pool
//!   (by `ipAddressPools` names or `ipAddressPoolSelectors`; neither means every pool) decide
//!   which nodes may announce (`nodeSelectors`; none means every node) and on which
//!   `interfaces` (none means all);
//! - candidates are the nodes that are alive (Ready, heartbeat fresh: the caller's judgement),
//!   selected by an advertisement, not labelled
//!   `node.kubernetes.io/exclude-from-external-load-balancers`, and — for
//!   `externalTrafficPolicy: Local` — hosting a serving endpoint;
//! - the announcer is the candidate with the smallest sha256(node + "#" + first IP). The order
//!   depends only on the node names and the IP, so removing a node that is not announcing never
//!   moves an IP, and adding one moves only the IPs it wins.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sha2::{Digest, Sha256};
use switchyard_api::metallb::{IPAddressPool, L2Advertisement};
use switchyard_api::selector::LabelSelector;

/// Nodes with this label never announce (Kubernetes' well-known label).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
const ALLOCATED_FROM_POOL: &str = "metallb.io/ip-allocated-from-pool";

/// One IP this node must answer for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    pub ip: IpAddr,
    /// `namespace/name` of the Service.
    pub service: String,
    /// Interfaces to answer on; `None` means every interface.
    pub interfaces: Option<BTreeSet<String>>,
}

/// The cluster state the decision reads.
pub struct View<'a> {
    pub pools: &'a [IPAddressPool],
    pub advertisements: &'a [L2Advertisement],
    pub nodes: &'a [Node],
    /// Whether a node is alive (Ready and heartbeating); the caller decides how.
    pub alive: &'a dyn Fn(&str) -> bool,
}

/// The node that announces `ip` among `candidates`.
pub fn elect<'n>(ip: IpAddr, candidates: impl IntoIterator<Item = &'n str>) -> Option<&'n str> {
    let ip = ip.to_string();
    candidates
        .into_iter()
        .min_by_key(|node| Sha256::digest(format!("{node}#{ip}").as_bytes()))
}

/// The ingress IPs of a LoadBalancer Service.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    let is_lb = svc
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t == "LoadBalancer");
    if !is_lb {
        return Vec::new();
    }
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref())
                .filter_map(|ip| ip.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    LabelSelector::from_metav1(sel).is_ok_and(|s| s.matches(labels))
}

/// The pool that allocated the Service's IPs.
fn pool_of<'p>(
    svc: &Service,
    first_ip: IpAddr,
    pools: &'p [IPAddressPool],
) -> Option<&'p IPAddressPool> {
    let named = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOCATED_FROM_POOL));
    if let Some(name) = named {
        if let Some(p) = pools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
        {
            return Some(p);
        }
    }
    pools.iter().find(|p| {
        p.spec
            .addresses
            .iter()
            .any(|range| range_contains(range, first_ip))
    })
}

/// Whether a pool entry (`CIDR` or `first-last`) contains `ip`.
fn range_contains(range: &str, ip: IpAddr) -> bool {
    let range = range.trim();
    if let Some((a, b)) = range.split_once('-') {
        match (a.trim().parse::<IpAddr>(), b.trim().parse::<IpAddr>()) {
            (Ok(a), Ok(b)) => a <= ip && ip <= b && a.is_ipv4() == ip.is_ipv4(),
            _ => false,
        }
    } else {
        range
            .parse::<ipnet::IpNet>()
            .is_ok_and(|net| net.contains(&ip))
    }
}

/// The advertisements that cover `pool`.
fn advertisements_for<'a>(
    pool: &IPAddressPool,
    ads: &'a [L2Advertisement],
) -> Vec<&'a L2Advertisement> {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let labels = labels_of(&pool.metadata);
    ads.iter()
        .filter(|ad| {
            let Some(spec) = ad.spec.as_ref() else {
                return true;
            };
            let names = spec.ip_address_pools.as_deref().unwrap_or_default();
            let selectors = spec
                .ip_address_pool_selectors
                .as_deref()
                .unwrap_or_default();
            if names.is_empty() && selectors.is_empty() {
                return true;
            }
            names.iter().any(|n| n == name)
                || selectors.iter().any(|s| selector_matches(s, &labels))
        })
        .collect()
}

fn ad_selects_node(ad: &L2Advertisement, node: &Node) -> bool {
    let selectors = ad
        .spec
        .as_ref()
        .and_then(|s| s.node_selectors.as_deref())
        .unwrap_or_default();
    selectors.is_empty() || {
        let labels = labels_of(&node.metadata);
        selectors.iter().any(|s| selector_matches(s, &labels))
    }
}

/// Nodes hosting an endpoint that can serve (ready, or serving while terminating).
fn nodes_with_endpoints(slices: &[&EndpointSlice]) -> (bool, BTreeSet<String>) {
    let mut any = false;
    let mut nodes = BTreeSet::new();
    for ep in slices.iter().flat_map(|s| s.endpoints.iter()) {
        let c = ep.conditions.as_ref();
        let serving = c.and_then(|c| c.serving.or(c.ready)).unwrap_or(true);
        if !serving {
            continue;
        }
        any = true;
        if let Some(n) = &ep.node_name {
            nodes.insert(n.clone());
        }
    }
    (any, nodes)
}

/// What `me` must announce, given every LoadBalancer Service and its EndpointSlices.
pub fn announcements<'s>(
    me: &str,
    services: &[&Service],
    slices_of: &dyn Fn(&Service) -> Vec<&'s EndpointSlice>,
    view: &View<'_>,
) -> Vec<Announcement> {
    let mut out = Vec::new();
    for svc in services {
        let ips = ingress_ips(svc);
        let Some(&first) = ips.first() else { continue };
        let Some(pool) = pool_of(svc, first, view.pools) else {
            continue;
        };
        let ads = advertisements_for(pool, view.advertisements);
        if ads.is_empty() {
            continue;
        }
        let slices = slices_of(svc);
        let (any_endpoint, endpoint_nodes) = nodes_with_endpoints(&slices);
        if !any_endpoint {
            continue;
        }
        let local = svc
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_deref())
            == Some("Local");
        let candidates = view.nodes.iter().filter(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            (view.alive)(name)
                && !labels_of(&n.metadata).contains_key(EXCLUDE_LABEL)
                && ads.iter().any(|ad| ad_selects_node(ad, n))
                && (!local || endpoint_nodes.contains(name))
        });
        let names = candidates.filter_map(|n| n.metadata.name.as_deref());
        if elect(first, names) != Some(me) {
            continue;
        }
        let Some(my_node) = view
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(me))
        else {
            continue;
        };
        // Interfaces: the union over the advertisements that select this node; one without
        // interfaces means all of them.
        let mine: Vec<_> = ads
            .iter()
            .filter(|ad| ad_selects_node(ad, my_node))
            .collect();
        let all = mine.iter().any(|ad| {
            ad.spec
                .as_ref()
                .and_then(|s| s.interfaces.as_ref())
                .is_none_or(|i| i.is_empty())
        });
        let interfaces = (!all).then(|| {
            mine.iter()
                .filter_map(|ad| ad.spec.as_ref().and_then(|s| s.interfaces.clone()))
                .flatten()
                .collect()
        });
        for ip in ips {
            out.push(Announcement {
                ip,
                service: key(svc),
                interfaces: interfaces.clone(),
            });
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("node")
    }

    fn svc(name: &str, ip: &str, etp: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {ALLOCATED_FROM_POOL: "first-pool"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": etp},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
        }))
        .expect("svc")
    }

    fn slice(nodes: &[(&str, bool)]) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "s"}, "addressType": "IPv4",
            "endpoints": nodes.iter().enumerate().map(|(i, (n, ready))| json!({
                "addresses": [format!("10.244.0.{}", i + 2)], "nodeName": n,
                "conditions": {"ready": ready, "serving": ready}
            })).collect::<Vec<_>>()
        }))
        .expect("slice")
    }

    fn pool() -> IPAddressPool {
        serde_json::from_value(json!({
            "metadata": {"name": "first-pool", "namespace": "metallb-system"},
            "spec": {"addresses": ["192.168.67.120-192.168.67.200"]}
        }))
        .expect("pool")
    }

    fn ad(spec: serde_json::Value) -> L2Advertisement {
        serde_json::from_value(json!({"metadata": {"name": "example"}, "spec": spec})).expect("ad")
    }

    fn announcers(
        services: &[Service],
        slices: &[EndpointSlice],
        nodes: &[Node],
        ads: &[L2Advertisement],
        dead: &[&str],
    ) -> BTreeMap<IpAddr, Vec<String>> {
        let pools = [pool()];
        let alive = |n: &str| !dead.contains(&n);
        let view = View {
            pools: &pools,
            advertisements: ads,
            nodes,
            alive: &alive,
        };
        let refs: Vec<&Service> = services.iter().collect();
        let slices_of = |_: &Service| slices.iter().collect::<Vec<_>>();
        let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for n in nodes {
            let me = n.metadata.name.as_deref().expect("name");
            for a in announcements(me, &refs, &slices_of, &view) {
                out.entry(a.ip).or_default().push(me.to_string());
            }
        }
        out
    }

    fn three_nodes() -> Vec<Node> {
        vec![
            node("node-1", json!({})),
            node("node-2", json!({})),
            node("node-3", json!({})),
        ]
    }

    #[test]
    fn exactly_one_node_announces_each_ip() {
        let services: Vec<Service> = (0..20)
            .map(|i| {
                svc(
                    &format!("s{i}"),
                    &format!("192.168.67.{}", 120 + i),
                    "Cluster",
                )
            })
            .collect();
        let slices = [slice(&[("node-1", true)])];
        let got = announcers(&services, &slices, &three_nodes(), &[ad(json!({}))], &[]);
        assert_eq!(got.len(), 20);
        assert!(got.values().all(|n| n.len() == 1), "{got:?}");
        // The hash spreads IPs over the nodes.
        let used: BTreeSet<&String> = got.values().flatten().collect();
        assert!(used.len() > 1, "{got:?}");
    }

    #[test]
    fn a_dead_announcer_moves_its_ips_and_nothing_else_moves() {
        let services: Vec<Service> = (0..20)
            .map(|i| {
                svc(
                    &format!("s{i}"),
                    &format!("192.168.67.{}", 120 + i),
                    "Cluster",
                )
            })
            .collect();
        let slices = [slice(&[("node-1", true)])];
        let nodes = three_nodes();
        let ads = [ad(json!({}))];
        let before = announcers(&services, &slices, &nodes, &ads, &[]);
        let after = announcers(&services, &slices, &nodes, &ads, &["node-2"]);
        for (ip, owner) in &before {
            if owner[0] == "node-2" {
                assert_ne!(after[ip][0], "node-2");
            } else {
                assert_eq!(after[ip], *owner, "{ip} moved although its node lives");
            }
        }
    }

    #[test]
    fn local_policy_needs_a_local_endpoint() {
        let services = [svc("web", "192.168.67.150", "Local")];
        for holder in ["node-1", "node-2", "node-3"] {
            let slices = [slice(&[(holder, true)])];
            let got = announcers(&services, &slices, &three_nodes(), &[ad(json!({}))], &[]);
            assert_eq!(
                got.values().next().expect("announced"),
                &vec![holder.to_string()]
            );
        }
        // Only an unready endpoint: nobody announces.
        let slices = [slice(&[("node-1", false)])];
        assert!(announcers(&services, &slices, &three_nodes(), &[ad(json!({}))], &[]).is_empty());
    }

    #[test]
    fn selectors_exclusion_and_interfaces() {
        let nodes = vec![
            node("node-1", json!({"lan": "yes"})),
            node("node-2", json!({"lan": "yes", EXCLUDE_LABEL: ""})),
            node("node-3", json!({})),
        ];
        let ads = [ad(json!({"ipAddressPools": ["first-pool"],
                             "nodeSelectors": [{"matchLabels": {"lan": "yes"}}],
                             "interfaces": ["eth1"]}))];
        let services = [svc("web", "192.168.67.150", "Cluster")];
        let slices = [slice(&[("node-3", true)])];
        let got = announcers(&services, &slices, &nodes, &ads, &[]);
        assert_eq!(
            got.values().next().expect("announced"),
            &vec!["node-1".to_string()]
        );
        let pools = [pool()];
        let alive = |_: &str| true;
        let view = View {
            pools: &pools,
            advertisements: &ads,
            nodes: &nodes,
            alive: &alive,
        };
        let slices_of = |_: &Service| slices.iter().collect::<Vec<_>>();
        let a = announcements("node-1", &[&services[0]], &slices_of, &view);
        assert_eq!(a[0].interfaces, Some(BTreeSet::from(["eth1".to_string()])));
        // An advertisement for another pool covers nothing here.
        let other = [ad(json!({"ipAddressPools": ["other"]}))];
        assert!(announcers(&services, &slices, &nodes, &other, &[]).is_empty());
    }

    #[test]
    fn election_is_metallbs_hash_order() {
        let ip: IpAddr = "192.168.67.120".parse().expect("ip");
        let nodes = ["node-1", "node-2", "node-3"];
        let expected = nodes
            .iter()
            .min_by_key(|n| Sha256::digest(format!("{n}#192.168.67.120").as_bytes()))
            .copied();
        assert_eq!(elect(ip, nodes), expected);
        assert_eq!(elect(ip, []), None);
        assert!(range_contains("192.168.67.0/24", ip));
        assert!(!range_contains("192.168.67.121-192.168.67.200", ip));
    }
}
