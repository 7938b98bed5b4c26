//! The pure core of the EndpointSlice, Endpoints and EndpointSlice-mirroring controllers. From a
//! Service and the Pods it selects, [`desired_endpoints`] computes one [`DesiredEndpoint`] per Pod
//! and address family (conditions, node, zone, hostname, target reference and the Service's ports
//! resolved against that Pod); [`reconcile_slices`] turns those into the EndpointSlice writes that
//! reach the desired state with minimal churn, following Kubernetes' reconciler
//! (`staging/src/k8s.io/endpointslice/reconciler.go`): unchanged endpoints keep their slice, new
//! ones fill slices that change anyway, then a single existing slice with room, then new slices.
//! [`desired_endpoints_object`] builds the legacy core/v1 Endpoints object
//! (`pkg/controller/endpoint/endpoints_controller.go`), and [`mirror_slices`] mirrors user-written
//! Endpoints of selector-less Services into EndpointSlices (`pkg/controller/endpointslicemirroring`).
//! Nothing here does IO; the time of the change is passed in.

pub mod controller;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use switchyard_api::k8s::api::core::v1::{
    EndpointAddress, EndpointPort as CoreEndpointPort, EndpointSubset, Endpoints, ObjectReference,
    Pod, Service, ServicePort,
};
use switchyard_api::k8s::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use switchyard_api::k8s::apimachinery::pkg::util::intstr::IntOrString;
use switchyard_api::selector::LabelSelector;

/// `kubernetes.io/service-name`: the Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// `endpointslice.kubernetes.io/managed-by`: the controller that owns a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`LABEL_MANAGED_BY`] for slices computed from Pods.
pub const MANAGED_BY_CONTROLLER: &str = "switchyard-endpointslice-controller";
/// Our value of [`LABEL_MANAGED_BY`] for slices mirrored from user-written Endpoints.
pub const MANAGED_BY_MIRRORING: &str = "switchyard-endpointslicemirroring-controller";
/// `endpointslice.kubernetes.io/skip-mirror`: set on Endpoints the mirroring must ignore.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// `service.kubernetes.io/headless`: set (empty) on slices and Endpoints of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// `endpoints.kubernetes.io/last-change-trigger-time`.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// `endpoints.kubernetes.io/over-capacity`: set to `truncated` when Endpoints were cut.
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Node label holding a node's zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// Default maximum number of endpoints in one slice (`--max-endpoints-per-slice`).
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Most addresses one Endpoints object carries (`maxCapacity` in endpoints_controller.go).
pub const MAX_ENDPOINTS_CAPACITY: usize = 1000;
/// Most endpoints one mirrored slice carries (`mirroringMaxEndpointsPerSubset` default).
pub const MIRRORING_MAX_ENDPOINTS_PER_SLICE: usize = 1000;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One Pod's endpoint in one address family, with the Service ports resolved for that Pod.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredEndpoint {
    /// `IPv4` or `IPv6`.
    pub address_type: String,
    /// The endpoint as it appears in a slice.
    pub endpoint: Endpoint,
    /// The Service's ports as resolved for this Pod; endpoints are grouped by this set.
    pub ports: Vec<EndpointPort>,
}

/// The writes a reconcile asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceChanges {
    /// New slices (no name, `generateName` set).
    pub create: Vec<EndpointSlice>,
    /// Existing slices, rewritten in full (name and resourceVersion kept).
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

impl SliceChanges {
    /// True when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Desired endpoints from Pods
// ---------------------------------------------------------------------------------------------

fn service_name(service: &Service) -> &str {
    service.metadata.name.as_deref().unwrap_or_default()
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

fn publish_not_ready(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn selector_of(service: &Service) -> Option<&BTreeMap<String, String>> {
    // A Service without a selector (or with an empty one) gets no managed endpoints: its
    // Endpoints are written by the user and mirrored (endpoints_controller.go syncService).
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

fn is_ipv6(ip: &str) -> Option<bool> {
    ip.parse::<IpAddr>().ok().map(|a| a.is_ipv6())
}

fn family_type(ipv6: bool) -> &'static str {
    if ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Whether the Service has a cluster IP (not headless); `helper.IsServiceIPSet`.
fn is_service_ip_set(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The address types a Service's slices use: its `ipFamilies`; else the family of its cluster
/// IP; else (headless, not dual-stack aware) both. `getAddressTypesForService` in
/// pkg/controller/endpointslice/utils.go.
pub fn address_types_for_service(service: &Service) -> BTreeSet<String> {
    let mut types = BTreeSet::new();
    let spec = service.spec.as_ref();
    for family in spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
    {
        match family.as_str() {
            "IPv4" | "IPv6" => {
                types.insert(family.clone());
            }
            _ => {}
        }
    }
    if !types.is_empty() {
        return types;
    }
    if is_service_ip_set(service) {
        let ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        types.insert(family_type(is_ipv6(ip).unwrap_or(false)).to_string());
        return types;
    }
    types.insert("IPv4".to_string());
    types.insert("IPv6".to_string());
    types
}

/// The Service's primary family, if it has one (first `ipFamilies` entry or cluster-IP family).
fn primary_address_type(service: &Service) -> Option<String> {
    let spec = service.spec.as_ref()?;
    if let Some(first) = spec.ip_families.as_ref().and_then(|f| f.first()) {
        return Some(first.clone());
    }
    if is_service_ip_set(service) {
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        return Some(family_type(is_ipv6(ip).unwrap_or(false)).to_string());
    }
    None
}

fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    status
        .pod_ip
        .iter()
        .filter(|ip| !ip.is_empty())
        .cloned()
        .collect()
}

fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// `ShouldPodBeInEndpoints(pod, includeTerminating=true)` (endpointslice/util/controller_utils.go):
/// a Pod needs an IP and must not have finished.
fn pod_can_be_endpoint(pod: &Pod) -> bool {
    if pod_ips(pod).is_empty() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// `podutil.FindPort`: a numeric targetPort is used as is; a named one is looked up among the
/// Pod's container ports by name and protocol (pkg/api/v1/pod/util.go). `None` when the Pod has
/// no such named port, which leaves that Service port out of the Pod's port set.
fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) if *n == 0 => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let spec = pod.spec.as_ref()?;
            // Restartable init containers (sidecars) expose ports too (FindPort since 1.29).
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// `getEndpointPorts` (staging/src/k8s.io/endpointslice/utils.go).
fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            find_port(pod, sp).map(|n| EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(n),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoints a Service selects: for every Pod in its namespace matching its selector, with an
/// IP and not finished, one [`DesiredEndpoint`] per address family the Service uses
/// ([`address_types_for_service`]) in which the Pod has an address. `node_zones` maps node names
/// to zones (may be empty). A Service without a selector yields nothing.
///
/// Conditions follow `podToEndpoint` (staging/src/k8s.io/endpointslice/utils.go): serving = Pod
/// Ready; terminating = deletionTimestamp set; ready = serving and not terminating, or always with
/// `publishNotReadyAddresses`. The hostname is set when `spec.hostname` is set and
/// `spec.subdomain` equals the Service name (`ShouldSetHostname`).
pub fn desired_endpoints(
    service: &Service,
    pods: &[&Pod],
    node_zones: &BTreeMap<String, String>,
) -> Vec<DesiredEndpoint> {
    let Some(selector) = selector_of(service) else {
        return Vec::new();
    };
    let selector = LabelSelector::from_map(selector);
    let namespace = namespace_of(&service.metadata);
    let types = address_types_for_service(service);
    let publish = publish_not_ready(service);
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for pod in pods {
        if namespace_of(&pod.metadata) != namespace
            || !selector.matches(pod.metadata.labels.as_ref().unwrap_or(&empty))
            || !pod_can_be_endpoint(pod)
        {
            continue;
        }
        let serving = is_pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        // "For compatibility reasons, ready should never be true if a pod is terminating, unless
        // publishNotReadyAddresses was set." (podToEndpoint)
        let ready = publish || (serving && !terminating);
        let spec = pod.spec.as_ref();
        let node_name = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let zone = node_name.as_ref().and_then(|n| node_zones.get(n)).cloned();
        let hostname = spec
            .and_then(|s| s.hostname.as_ref())
            .filter(|h| !h.is_empty())
            .filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == Some(service_name(service)))
            .cloned();
        let ports = endpoint_ports(service, pod);
        let ips = pod_ips(pod);
        // Keep the order of the Pod's IPs so the first family is the Pod's primary one.
        let mut families: Vec<bool> = Vec::new();
        for ip in &ips {
            if let Some(v6) = is_ipv6(ip) {
                if !families.contains(&v6) {
                    families.push(v6);
                }
            }
        }
        for v6 in families {
            let address_type = family_type(v6);
            if !types.contains(address_type) {
                continue;
            }
            let addresses: Vec<String> = ips
                .iter()
                .filter(|ip| is_ipv6(ip) == Some(v6))
                .cloned()
                .collect();
            out.push(DesiredEndpoint {
                address_type: address_type.to_string(),
                endpoint: Endpoint {
                    addresses,
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    hostname: hostname.clone(),
                    node_name: node_name.clone(),
                    zone: zone.clone(),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".to_string()),
                        namespace: pod.metadata.namespace.clone(),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                },
                ports: ports.clone(),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Slice reconciliation (shared by the EndpointSlice controller and the mirroring)
// ---------------------------------------------------------------------------------------------

/// The identity of an endpoint across reconciles: sorted addresses, hostname and target
/// namespace/name (`hashEndpoint` in staging/src/k8s.io/endpointslice/util/endpointset.go).
/// Other fields (conditions, node, zone) may change in place.
fn endpoint_key(ep: &Endpoint) -> String {
    let mut addresses = ep.addresses.clone();
    addresses.sort();
    let (ns, name) = ep
        .target_ref
        .as_ref()
        .map(|r| {
            (
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    format!(
        "{}|{}|{}/{}",
        addresses.join(","),
        ep.hostname.as_deref().unwrap_or_default(),
        ns,
        name
    )
}

/// `EndpointsEqualBeyondHash`: equal once addresses are put in order.
fn endpoints_equal(a: &Endpoint, b: &Endpoint) -> bool {
    let mut a = a.clone();
    let mut b = b.clone();
    a.addresses.sort();
    b.addresses.sort();
    a == b
}

/// `NewPortMapKey`: a key for a set of ports, independent of their order.
fn port_key(ports: &[EndpointPort]) -> String {
    let mut parts: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}/{}",
                p.name.as_deref().unwrap_or_default(),
                p.protocol.as_deref().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.app_protocol.as_deref().unwrap_or_default()
            )
        })
        .collect();
    parts.sort();
    parts.join(";")
}

/// What every slice of one owner carries.
struct SliceTemplate {
    namespace: String,
    generate_name: String,
    labels: BTreeMap<String, String>,
    /// Annotations kept in sync besides the trigger time (mirroring copies the Endpoints').
    annotations: Option<BTreeMap<String, String>>,
    owner_ref: OwnerReference,
    trigger_time: Option<String>,
}

impl SliceTemplate {
    fn new_slice(&self, address_type: &str, ports: Vec<EndpointPort>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(self.namespace.clone()),
                generate_name: Some(self.generate_name.clone()),
                labels: Some(self.labels.clone()),
                annotations: self.annotations.clone().filter(|a| !a.is_empty()),
                owner_references: Some(vec![self.owner_ref.clone()]),
                ..ObjectMeta::default()
            },
            address_type: address_type.to_string(),
            endpoints: Vec::new(),
            ports: Some(ports),
        }
    }

    fn metadata_changed(&self, slice: &EndpointSlice) -> bool {
        if slice.metadata.labels.as_ref() != Some(&self.labels) {
            return true;
        }
        if let Some(want) = &self.annotations {
            let mut have = slice.metadata.annotations.clone().unwrap_or_default();
            have.remove(ANNOTATION_TRIGGER_TIME);
            if &have != want {
                return true;
            }
        }
        false
    }

    /// Labels, annotations and the trigger time of a slice about to be written
    /// (`addTriggerTimeAnnotation` in reconciler.go).
    fn finish(&self, slice: &mut EndpointSlice) {
        slice.metadata.labels = Some(self.labels.clone());
        let mut annotations = match &self.annotations {
            Some(a) => a.clone(),
            None => slice.metadata.annotations.clone().unwrap_or_default(),
        };
        match &self.trigger_time {
            Some(t) => {
                annotations.insert(ANNOTATION_TRIGGER_TIME.to_string(), t.clone());
            }
            None => {
                annotations.remove(ANNOTATION_TRIGGER_TIME);
            }
        }
        slice.metadata.annotations = if annotations.is_empty() {
            None
        } else {
            Some(annotations)
        };
    }

    fn owns(&self, slice: &EndpointSlice) -> bool {
        slice.metadata.owner_references.iter().flatten().any(|r| {
            r.kind == self.owner_ref.kind
                && r.name == self.owner_ref.name
                && (self.owner_ref.uid.is_empty() || r.uid == self.owner_ref.uid)
        })
    }
}

/// The desired endpoints of one address type and port set, in a deterministic order.
struct PortGroup {
    ports: Vec<EndpointPort>,
    endpoints: BTreeMap<String, Endpoint>,
}

type Groups = BTreeMap<String, BTreeMap<String, PortGroup>>;

fn group_desired(desired: &[DesiredEndpoint]) -> Groups {
    let mut groups: Groups = BTreeMap::new();
    for d in desired {
        if d.endpoint.addresses.is_empty() {
            continue;
        }
        groups
            .entry(d.address_type.clone())
            .or_default()
            .entry(port_key(&d.ports))
            .or_insert_with(|| PortGroup {
                ports: d.ports.clone(),
                endpoints: BTreeMap::new(),
            })
            .endpoints
            .insert(endpoint_key(&d.endpoint), d.endpoint.clone());
    }
    groups
}

fn pop_first(set: &mut BTreeMap<String, Endpoint>) -> Option<Endpoint> {
    let key = set.keys().next()?.clone();
    set.remove(&key)
}

/// `reconcileByPortMapping` (reconciler.go): returns (create, update, delete).
fn reconcile_port_group(
    template: &SliceTemplate,
    address_type: &str,
    existing: &[&EndpointSlice],
    group: PortGroup,
    max: usize,
) -> (Vec<EndpointSlice>, Vec<EndpointSlice>, Vec<EndpointSlice>) {
    let PortGroup {
        ports,
        endpoints: mut desired,
    } = group;
    let mut to_update: Vec<EndpointSlice> = Vec::new();
    let mut to_delete: Vec<EndpointSlice> = Vec::new();
    let mut unchanged: Vec<EndpointSlice> = Vec::new();

    // 1. Keep desired endpoints where they are; drop the ones no longer desired.
    for slice in existing {
        let mut kept = Vec::new();
        let mut changed = false;
        for ep in &slice.endpoints {
            if let Some(want) = desired.remove(&endpoint_key(ep)) {
                if !endpoints_equal(&want, ep) {
                    changed = true;
                }
                kept.push(want);
            }
        }
        if changed || kept.len() != slice.endpoints.len() {
            if kept.is_empty() {
                to_delete.push((*slice).clone());
            } else {
                let mut s = (*slice).clone();
                s.endpoints = kept;
                to_update.push(s);
            }
        } else if template.metadata_changed(slice) {
            to_update.push((*slice).clone());
        } else {
            unchanged.push((*slice).clone());
        }
    }

    // 2. Fill the slices that are written anyway, fullest first.
    if !desired.is_empty() && !to_update.is_empty() {
        to_update.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
        for slice in &mut to_update {
            while slice.endpoints.len() < max {
                let Some(ep) = pop_first(&mut desired) else {
                    break;
                };
                slice.endpoints.push(ep);
            }
        }
    }

    // 3. Put what is left into the one unchanged slice it fits best, else into new slices.
    let mut to_create = Vec::new();
    while !desired.is_empty() {
        let mut fill: Option<EndpointSlice> = None;
        if desired.len() < max && !unchanged.is_empty() {
            // getSliceToFill: the slice closest to full that still fits all remaining endpoints.
            let mut best: Option<(usize, usize)> = None;
            for (i, s) in unchanged.iter().enumerate() {
                let used = desired.len() + s.endpoints.len();
                if used <= max {
                    let diff = max - used;
                    if best.is_none_or(|(_, d)| diff < d) {
                        best = Some((i, diff));
                    }
                }
            }
            if let Some((i, _)) = best {
                fill = Some(unchanged.remove(i));
            }
        }
        let is_new = fill.is_none();
        let mut slice = fill.unwrap_or_else(|| template.new_slice(address_type, ports.clone()));
        while slice.endpoints.len() < max {
            let Some(ep) = pop_first(&mut desired) else {
                break;
            };
            slice.endpoints.push(ep);
        }
        if is_new {
            to_create.push(slice);
        } else {
            to_update.push(slice);
        }
    }
    (to_create, to_update, to_delete)
}

/// `reconcileByAddressType` plus `finalize` (reconciler.go) over already-filtered slices.
fn reconcile_core(
    template: &SliceTemplate,
    supported: &BTreeSet<String>,
    mut desired: Groups,
    existing: &[&EndpointSlice],
    max: usize,
    placeholder: bool,
) -> SliceChanges {
    let max = max.max(1);
    let mut changes = SliceChanges::default();
    let mut by_type: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        if supported.contains(&slice.address_type) {
            by_type
                .entry(slice.address_type.as_str())
                .or_default()
                .push(slice);
        } else {
            // Address types the Service no longer supports are deleted (reconciler.go reconcile).
            changes
                .delete
                .push(slice.metadata.name.clone().unwrap_or_default());
        }
    }
    for address_type in supported {
        let existing = by_type.remove(address_type.as_str()).unwrap_or_default();
        let mut create = Vec::new();
        let mut update = Vec::new();
        let mut delete = Vec::new();
        let mut by_ports: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in &existing {
            if template.owns(slice) {
                by_ports
                    .entry(port_key(slice.ports.as_deref().unwrap_or_default()))
                    .or_default()
                    .push(slice);
            } else {
                // Same labels but another owner: left over from a deleted Service of that name.
                delete.push((*slice).clone());
            }
        }
        let groups = desired.remove(address_type).unwrap_or_default();
        for (key, group) in groups {
            let slices = by_ports.remove(&key).unwrap_or_default();
            let (c, u, d) = reconcile_port_group(template, address_type, &slices, group, max);
            create.extend(c);
            update.extend(u);
            delete.extend(d);
        }
        // Port sets no longer desired at all.
        for slices in by_ports.into_values() {
            delete.extend(slices.into_iter().cloned());
        }
        // "When no endpoint slices would usually exist, we need to add a placeholder."
        if placeholder && existing.len() == delete.len() && create.is_empty() {
            let empty = template.new_slice(address_type, Vec::new());
            let is_placeholder = |s: &EndpointSlice| {
                s.endpoints.is_empty()
                    && s.ports.as_deref().unwrap_or_default().is_empty()
                    && template.owns(s)
                    && !template.metadata_changed(s)
            };
            if delete.len() == 1 && is_placeholder(&delete[0]) {
                delete.clear();
            } else {
                create.push(empty);
            }
        }
        // finalize: turn creates into updates of slices that would otherwise be deleted.
        let mut kept_delete = Vec::new();
        for old in delete {
            match create.pop() {
                Some(mut new) if template.owns(&old) => {
                    new.metadata.name = old.metadata.name.clone();
                    new.metadata.uid = old.metadata.uid.clone();
                    new.metadata.resource_version = old.metadata.resource_version.clone();
                    new.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                    update.push(new);
                }
                Some(new) => {
                    create.push(new);
                    kept_delete.push(old);
                }
                None => kept_delete.push(old),
            }
        }
        for mut s in create {
            template.finish(&mut s);
            changes.create.push(s);
        }
        for mut s in update {
            template.finish(&mut s);
            changes.update.push(s);
        }
        changes.delete.extend(
            kept_delete
                .into_iter()
                .map(|s| s.metadata.name.unwrap_or_default()),
        );
    }
    changes
}

fn is_ours(slice: &EndpointSlice, namespace: &str, name: &str, managed_by: &str) -> bool {
    let labels = slice.metadata.labels.as_ref();
    namespace_of(&slice.metadata) == namespace
        && labels
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .map(String::as_str)
            == Some(managed_by)
        && labels
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .map(String::as_str)
            == Some(name)
}

/// `setEndpointSliceLabels` (staging/src/k8s.io/endpointslice/utils.go): the Service's labels
/// minus the reserved ones, the headless label for headless Services, then service-name and
/// managed-by.
fn slice_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = service
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                LABEL_SERVICE_NAME | LABEL_MANAGED_BY | LABEL_HEADLESS
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !is_service_ip_set(service) {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    labels.insert(
        LABEL_SERVICE_NAME.to_string(),
        service_name(service).to_string(),
    );
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        MANAGED_BY_CONTROLLER.to_string(),
    );
    labels
}

fn controller_ref(kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: kind.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The EndpointSlice writes that bring a Service's slices to `desired` (from
/// [`desired_endpoints`]). Only slices labelled with our managed-by value and the Service's name
/// in its namespace are considered; others are ignored. Unchanged endpoints stay in their slice;
/// a changed endpoint rewrites only its slice; new endpoints first fill slices being rewritten,
/// then the one unchanged slice that fits them all, then new slices of at most `max_per_slice`.
/// A Service without endpoints keeps (or gets) exactly one empty placeholder slice per address
/// type, which — as in Kubernetes — has no ports. A Service without a selector yields no changes
/// (its slices are mirrored, see [`mirror_slices`]). Written slices carry `now_rfc3339` as their
/// last-change trigger time.
pub fn reconcile_slices(
    service: &Service,
    desired: &[DesiredEndpoint],
    existing_slices: &[EndpointSlice],
    now_rfc3339: &str,
    max_per_slice: usize,
) -> SliceChanges {
    if selector_of(service).is_none() {
        return SliceChanges::default();
    }
    let name = service_name(service);
    let namespace = namespace_of(&service.metadata);
    let template = SliceTemplate {
        namespace: namespace.to_string(),
        generate_name: format!("{name}-"),
        labels: slice_labels(service),
        annotations: None,
        owner_ref: controller_ref("Service", &service.metadata),
        trigger_time: Some(now_rfc3339.to_string()),
    };
    let existing: Vec<&EndpointSlice> = existing_slices
        .iter()
        .filter(|s| is_ours(s, namespace, name, MANAGED_BY_CONTROLLER))
        .collect();
    let supported = address_types_for_service(service);
    let mut changes = reconcile_core(
        &template,
        &supported,
        group_desired(desired),
        &existing,
        max_per_slice,
        true,
    );
    // "Don't create new EndpointSlices if the Service is pending deletion" (finalize).
    if service.metadata.deletion_timestamp.is_some() {
        changes.create.clear();
    }
    changes
}

// ---------------------------------------------------------------------------------------------
// core/v1 Endpoints
// ---------------------------------------------------------------------------------------------

fn to_core_port(p: &EndpointPort) -> CoreEndpointPort {
    CoreEndpointPort {
        name: p.name.clone().filter(|n| !n.is_empty()),
        port: p.port.unwrap_or_default(),
        protocol: p.protocol.clone(),
        app_protocol: p.app_protocol.clone(),
    }
}

fn address_key(a: &EndpointAddress) -> (String, String) {
    let name = a
        .target_ref
        .as_ref()
        .and_then(|r| r.name.clone())
        .unwrap_or_default();
    (a.ip.clone(), name)
}

/// The core/v1 Endpoints object the Endpoints controller writes for a Service
/// (endpoints_controller.go `syncService`). One address per Pod, in the Service's primary family;
/// ready endpoints go to `addresses`, others to `notReadyAddresses`; terminating Pods are left out
/// unless `publishNotReadyAddresses`. Subsets are packed as `endpoints.RepackSubsets` does (ports
/// served by the same addresses share a subset) and sorted. Over [`MAX_ENDPOINTS_CAPACITY`]
/// addresses the object is truncated and annotated. It is labelled like the Service plus
/// `skip-mirror` (and `headless` for headless Services). Callers only write it for Services with a
/// selector.
pub fn desired_endpoints_object(service: &Service, desired: &[DesiredEndpoint]) -> Endpoints {
    let publish = publish_not_ready(service);
    let primary = primary_address_type(service);
    let headless = !is_service_ip_set(service);
    let has_service_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());

    // port key -> (port, address key -> (address, ready))
    type AddrMap = BTreeMap<(String, String), (EndpointAddress, bool)>;
    let mut per_port: BTreeMap<String, (Option<CoreEndpointPort>, AddrMap)> = BTreeMap::new();
    let mut seen_pods: BTreeSet<String> = BTreeSet::new();
    for d in desired {
        let pod_key = d
            .endpoint
            .target_ref
            .as_ref()
            .map(|r| {
                format!(
                    "{}/{}",
                    r.namespace.as_deref().unwrap_or_default(),
                    r.name.as_deref().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| endpoint_key(&d.endpoint));
        // One address per Pod: the primary family, else the Pod's first family.
        if let Some(p) = &primary {
            if &d.address_type != p {
                continue;
            }
        }
        if !seen_pods.insert(pod_key) {
            continue;
        }
        let conditions = d.endpoint.conditions.clone().unwrap_or_default();
        let terminating = conditions.terminating.unwrap_or(false);
        // ShouldPodBeInEndpoints(pod, service.Spec.PublishNotReadyAddresses).
        if terminating && !publish {
            continue;
        }
        let ready = publish || conditions.ready.unwrap_or(false);
        let Some(ip) = d.endpoint.addresses.first() else {
            continue;
        };
        let address = EndpointAddress {
            ip: ip.clone(),
            hostname: d.endpoint.hostname.clone(),
            node_name: d.endpoint.node_name.clone(),
            target_ref: d.endpoint.target_ref.clone(),
        };
        let akey = address_key(&address);
        if d.ports.is_empty() {
            // A Service without ports only gets (port-less) endpoints when headless.
            if !has_service_ports && headless {
                per_port
                    .entry(String::new())
                    .or_insert_with(|| (None, BTreeMap::new()))
                    .1
                    .insert(akey, (address, ready));
            }
            continue;
        }
        for p in &d.ports {
            let core = to_core_port(p);
            per_port
                .entry(port_key(std::slice::from_ref(p)))
                .or_insert_with(|| (Some(core), BTreeMap::new()))
                .1
                .insert(akey.clone(), (address.clone(), ready));
        }
    }

    // RepackSubsets (pkg/api/v1/endpoints/util.go): group ports by their identical address sets.
    type AddrSetKey = Vec<((String, String), bool)>;
    let mut packed: BTreeMap<AddrSetKey, (Vec<CoreEndpointPort>, AddrMap)> = BTreeMap::new();
    for (_, (port, addrs)) in per_port {
        let key: AddrSetKey = addrs.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
        let entry = packed.entry(key).or_insert_with(|| (Vec::new(), addrs));
        if let Some(p) = port {
            entry.0.push(p);
        }
    }
    let mut subsets: Vec<EndpointSubset> = packed
        .into_values()
        .map(|(mut ports, addrs)| {
            ports.sort_by(|a, b| {
                (a.name.as_deref(), a.port, a.protocol.as_deref()).cmp(&(
                    b.name.as_deref(),
                    b.port,
                    b.protocol.as_deref(),
                ))
            });
            let (ready, not_ready): (Vec<_>, Vec<_>) = addrs.into_values().partition(|(_, r)| *r);
            let ready: Vec<EndpointAddress> = ready.into_iter().map(|(a, _)| a).collect();
            let not_ready: Vec<EndpointAddress> = not_ready.into_iter().map(|(a, _)| a).collect();
            EndpointSubset {
                addresses: Some(ready).filter(|v| !v.is_empty()),
                not_ready_addresses: Some(not_ready).filter(|v| !v.is_empty()),
                ports: Some(ports).filter(|v| !v.is_empty()),
            }
        })
        .collect();
    let truncated = truncate_endpoints(&mut subsets);

    let mut labels: BTreeMap<String, String> = service.metadata.labels.clone().unwrap_or_default();
    if headless {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels.insert(LABEL_SKIP_MIRROR.to_string(), "true".to_string());
    let annotations = truncated.then(|| {
        BTreeMap::from([(
            ANNOTATION_OVER_CAPACITY.to_string(),
            "truncated".to_string(),
        )])
    });
    Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            labels: Some(labels),
            annotations,
            ..ObjectMeta::default()
        },
        subsets: Some(subsets).filter(|s| !s.is_empty()),
    }
}

/// `truncateEndpoints` (endpoints_controller.go): keep at most [`MAX_ENDPOINTS_CAPACITY`]
/// addresses, cutting not-ready ones first and each subset in proportion to its size.
fn truncate_endpoints(subsets: &mut [EndpointSubset]) -> bool {
    let len = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let total_ready: usize = subsets.iter().map(|s| len(&s.addresses)).sum();
    let total_not_ready: usize = subsets.iter().map(|s| len(&s.not_ready_addresses)).sum();
    if total_ready + total_not_ready <= MAX_ENDPOINTS_CAPACITY {
        return false;
    }
    let truncate_ready = total_ready > MAX_ENDPOINTS_CAPACITY;
    let (max, num_total) = if truncate_ready {
        (MAX_ENDPOINTS_CAPACITY, total_ready)
    } else {
        (MAX_ENDPOINTS_CAPACITY - total_ready, total_not_ready)
    };
    let mut can_be_added = max;
    for subset in subsets.iter_mut() {
        let in_subset = if truncate_ready {
            len(&subset.addresses)
        } else {
            len(&subset.not_ready_addresses)
        };
        // ceil(in_subset / num_total * max), capped by what is left.
        let to_add = (in_subset * max)
            .div_ceil(num_total.max(1))
            .min(can_be_added);
        if truncate_ready {
            if let Some(a) = subset.addresses.as_mut() {
                a.truncate(to_add);
                can_be_added -= a.len();
            }
            subset.not_ready_addresses = None;
        } else if let Some(a) = subset.not_ready_addresses.as_mut() {
            a.truncate(to_add);
            can_be_added -= a.len();
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Mirroring
// ---------------------------------------------------------------------------------------------

/// The EndpointSlice writes mirroring user-written Endpoints of a selector-less Service
/// (pkg/controller/endpointslicemirroring). Endpoints labelled `skip-mirror: "true"` (those the
/// Endpoints controller writes) are not mirrored; if the Service has a selector, mirrored slices
/// are deleted. Each subset's addresses become endpoints (ready from `addresses`, not ready from
/// `notReadyAddresses`; `addressToEndpoint`) in slices of their IP family, grouped by the
/// subset's ports, at most [`MIRRORING_MAX_ENDPOINTS_PER_SLICE`] per slice. Mirrored slices carry
/// the Endpoints' labels and annotations, our mirroring managed-by value, an owner reference to
/// the Endpoints, and the Endpoints' trigger time. Unlike the EndpointSlice controller, mirroring
/// keeps no placeholder slice.
pub fn mirror_slices(
    endpoints: &Endpoints,
    service: &Service,
    existing: &[EndpointSlice],
) -> SliceChanges {
    let name = endpoints.metadata.name.clone().unwrap_or_default();
    let namespace = namespace_of(&endpoints.metadata).to_string();
    let ours: Vec<&EndpointSlice> = existing
        .iter()
        .filter(|s| is_ours(s, &namespace, &name, MANAGED_BY_MIRRORING))
        .collect();
    let skip = endpoints
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .is_some_and(|v| v == "true");
    let has_selector = selector_of(service).is_some();
    if skip || has_selector {
        return SliceChanges {
            delete: ours
                .iter()
                .map(|s| s.metadata.name.clone().unwrap_or_default())
                .collect(),
            ..SliceChanges::default()
        };
    }

    let mut desired = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let addresses = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false));
        for (address, ready) in addresses.chain(not_ready) {
            // Addresses that are not IPs (FQDNs) are not mirrored.
            let Some(v6) = is_ipv6(&address.ip) else {
                continue;
            };
            desired.push(DesiredEndpoint {
                address_type: family_type(v6).to_string(),
                endpoint: Endpoint {
                    addresses: vec![address.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        ..EndpointConditions::default()
                    }),
                    hostname: address.hostname.clone().filter(|h| !h.is_empty()),
                    node_name: address.node_name.clone(),
                    target_ref: address.target_ref.clone(),
                    ..Endpoint::default()
                },
                ports: ports.clone(),
            });
        }
    }

    let mut labels: BTreeMap<String, String> = endpoints
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), LABEL_SERVICE_NAME | LABEL_MANAGED_BY))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_SERVICE_NAME.to_string(), name.clone());
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        MANAGED_BY_MIRRORING.to_string(),
    );
    let mut annotations = endpoints.metadata.annotations.clone().unwrap_or_default();
    let trigger_time = annotations.remove(ANNOTATION_TRIGGER_TIME);
    annotations.remove(LAST_APPLIED);
    let template = SliceTemplate {
        namespace,
        generate_name: format!("{name}-"),
        labels,
        annotations: Some(annotations),
        owner_ref: controller_ref("Endpoints", &endpoints.metadata),
        trigger_time,
    };
    let supported = BTreeSet::from(["IPv4".to_string(), "IPv6".to_string()]);
    reconcile_core(
        &template,
        &supported,
        group_desired(&desired),
        &ours,
        MIRRORING_MAX_ENDPOINTS_PER_SLICE,
        false,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test fixtures are built by hand; a panic is a failed test.
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const NOW: &str = "2026-11-22T03:00:00Z";

    fn service(spec: Value) -> Service {
        let mut svc = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid",
                         "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.0.0.10",
                     "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        });
        if let (Some(base), Some(extra)) = (svc["spec"].as_object_mut(), spec.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(svc).unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                     "ports": [{"name": "http-alt", "containerPort": 9090, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        })
    }

    fn typed(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn with(mut v: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[key] = value;
        v
    }

    fn many(n: usize, ready: bool) -> Vec<Pod> {
        (0..n)
            .map(|i| {
                typed(pod(
                    &format!("p{i}"),
                    &format!("10.1.{}.{}", i / 200, i % 200 + 1),
                    ready,
                ))
            })
            .collect()
    }

    fn desired(svc: &Service, pods: &[Pod]) -> Vec<DesiredEndpoint> {
        let refs: Vec<&Pod> = pods.iter().collect();
        desired_endpoints(svc, &refs, &BTreeMap::new())
    }

    /// Applies changes the way the API server would, naming created slices.
    fn apply(
        mut slices: Vec<EndpointSlice>,
        changes: &SliceChanges,
        counter: &mut usize,
    ) -> Vec<EndpointSlice> {
        slices.retain(|s| !changes.delete.contains(s.metadata.name.as_ref().unwrap()));
        for u in &changes.update {
            let i = slices
                .iter()
                .position(|s| s.metadata.name == u.metadata.name)
                .unwrap();
            slices[i] = u.clone();
        }
        for c in &changes.create {
            let mut c = c.clone();
            *counter += 1;
            c.metadata.name = Some(format!(
                "{}{}",
                c.metadata.generate_name.as_ref().unwrap(),
                counter
            ));
            slices.push(c);
        }
        slices
    }

    fn converge(
        svc: &Service,
        pods: &[Pod],
        existing: Vec<EndpointSlice>,
        counter: &mut usize,
    ) -> Vec<EndpointSlice> {
        let changes = reconcile_slices(svc, &desired(svc, pods), &existing, NOW, 100);
        apply(existing, &changes, counter)
    }

    fn conditions(d: &DesiredEndpoint) -> (bool, bool, bool) {
        let c = d.endpoint.conditions.clone().unwrap();
        (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
    }

    #[test]
    fn conditions_follow_pod_readiness_and_termination() {
        let terminating = |v: Value| {
            with(
                v,
                "/metadata/deletionTimestamp",
                json!("2026-11-22T02:00:00Z"),
            )
        };
        // (pod, publishNotReadyAddresses, expected (ready, serving, terminating))
        let cases = [
            (pod("a", "10.1.0.1", true), false, (true, true, false)),
            (pod("a", "10.1.0.1", false), false, (false, false, false)),
            (
                terminating(pod("a", "10.1.0.1", true)),
                false,
                (false, true, true),
            ),
            (
                terminating(pod("a", "10.1.0.1", false)),
                false,
                (false, false, true),
            ),
            (pod("a", "10.1.0.1", false), true, (true, false, false)),
            (
                terminating(pod("a", "10.1.0.1", true)),
                true,
                (true, true, true),
            ),
        ];
        for (i, (p, publish, want)) in cases.into_iter().enumerate() {
            let svc = service(json!({"publishNotReadyAddresses": publish}));
            let got = desired(&svc, &[typed(p)]);
            assert_eq!(got.len(), 1, "case {i}");
            assert_eq!(conditions(&got[0]), want, "case {i}");
        }
    }

    #[test]
    fn pods_without_ip_finished_or_not_selected_are_left_out() {
        let cases = [
            (
                "no IP",
                with(
                    with(pod("a", "", true), "/status/podIPs", json!([])),
                    "/status/podIP",
                    Value::Null,
                ),
            ),
            (
                "succeeded",
                with(
                    pod("a", "10.1.0.1", true),
                    "/status/phase",
                    json!("Succeeded"),
                ),
            ),
            (
                "failed",
                with(pod("a", "10.1.0.1", true), "/status/phase", json!("Failed")),
            ),
            (
                "other namespace",
                with(
                    pod("a", "10.1.0.1", true),
                    "/metadata/namespace",
                    json!("other"),
                ),
            ),
            (
                "other labels",
                with(
                    pod("a", "10.1.0.1", true),
                    "/metadata/labels",
                    json!({"app": "db"}),
                ),
            ),
        ];
        let svc = service(json!({}));
        for (name, p) in cases {
            assert!(desired(&svc, &[typed(p)]).is_empty(), "{name}");
        }
    }

    #[test]
    fn endpoint_carries_node_zone_and_target_ref() {
        let svc = service(json!({}));
        let p = typed(pod("a", "10.1.0.1", true));
        let zones = BTreeMap::from([("node-1".to_string(), "zone-a".to_string())]);
        let got = desired_endpoints(&svc, &[&p], &zones);
        let ep = &got[0].endpoint;
        assert_eq!(ep.addresses, vec!["10.1.0.1"]);
        assert_eq!(ep.node_name.as_deref(), Some("node-1"));
        assert_eq!(ep.zone.as_deref(), Some("zone-a"));
        let r = ep.target_ref.clone().unwrap();
        assert_eq!(
            (
                r.kind.as_deref(),
                r.namespace.as_deref(),
                r.name.as_deref(),
                r.uid.as_deref()
            ),
            (Some("Pod"), Some("default"), Some("a"), Some("uid-a"))
        );
        assert_eq!(got[0].address_type, "IPv4");
        assert_eq!(got[0].ports[0].port, Some(8080));
        assert_eq!(got[0].ports[0].name.as_deref(), Some("http"));
    }

    #[test]
    fn hostname_is_set_only_when_subdomain_is_the_service_name() {
        let cases = [
            (json!("h1"), json!("web"), Some("h1")),
            (json!("h1"), json!("other"), None),
            (json!("h1"), Value::Null, None),
            (Value::Null, json!("web"), None),
        ];
        let svc = service(json!({}));
        for (hostname, subdomain, want) in cases {
            let p = with(
                with(pod("a", "10.1.0.1", true), "/spec/hostname", hostname),
                "/spec/subdomain",
                subdomain,
            );
            let got = desired(&svc, &[typed(p)]);
            assert_eq!(got[0].endpoint.hostname.as_deref(), want);
        }
    }

    #[test]
    fn named_target_ports_resolve_per_pod_by_name_and_protocol() {
        let svc = service(json!({"ports": [
            {"name": "http", "port": 80, "targetPort": "http-alt", "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": "http-alt", "protocol": "UDP"},
            {"name": "metrics", "port": 9100, "targetPort": 9100, "protocol": "TCP"}
        ]}));
        let other = with(
            pod("b", "10.1.0.2", true),
            "/spec/containers",
            json!([{"name": "c", "ports": [{"name": "http-alt", "containerPort": 7070}]}]),
        );
        let lacking = with(
            pod("c", "10.1.0.3", true),
            "/spec/containers",
            json!([{"name": "c"}]),
        );
        let pods = [
            typed(pod("a", "10.1.0.1", true)),
            typed(other),
            typed(lacking),
        ];
        let got = desired(&svc, &pods);
        let ports: Vec<Vec<(String, i32)>> = got
            .iter()
            .map(|d| {
                d.ports
                    .iter()
                    .map(|p| (p.name.clone().unwrap(), p.port.unwrap()))
                    .collect()
            })
            .collect();
        // The UDP port finds no UDP container port named http-alt; pod c has no http-alt at all.
        assert_eq!(
            ports[0],
            vec![("http".into(), 9090), ("metrics".into(), 9100)]
        );
        assert_eq!(
            ports[1],
            vec![("http".into(), 7070), ("metrics".into(), 9100)]
        );
        assert_eq!(ports[2], vec![("metrics".into(), 9100)]);

        // Three different resolved port sets: three slices.
        let changes = reconcile_slices(&svc, &got, &[], NOW, 100);
        assert_eq!(changes.create.len(), 3);
        assert!(changes.create.iter().all(|s| s.endpoints.len() == 1));
    }

    #[test]
    fn new_slices_carry_labels_owner_and_trigger_time() {
        let svc = service(json!({}));
        let changes = reconcile_slices(&svc, &desired(&svc, &many(3, true)), &[], NOW, 100);
        assert_eq!(changes.create.len(), 1);
        let s = &changes.create[0];
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(
            labels.get(LABEL_SERVICE_NAME).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(MANAGED_BY_CONTROLLER)
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert!(!labels.contains_key(LABEL_HEADLESS));
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.address_type, "IPv4");
        let owner = &s.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Service", "web", "svc-uid")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        let annotations = s.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations.get(ANNOTATION_TRIGGER_TIME).map(String::as_str),
            Some(NOW)
        );
        assert_eq!(s.endpoints.len(), 3);
    }

    #[test]
    fn two_hundred_fifty_endpoints_make_three_slices_of_at_most_a_hundred() {
        let svc = service(json!({}));
        let changes = reconcile_slices(&svc, &desired(&svc, &many(250, true)), &[], NOW, 100);
        let mut sizes: Vec<usize> = changes.create.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![50, 100, 100]);
        assert!(changes.update.is_empty() && changes.delete.is_empty());
    }

    #[test]
    fn reconciling_a_converged_state_changes_nothing() {
        let svc = service(json!({}));
        let pods = many(250, true);
        let mut n = 0;
        let slices = converge(&svc, &pods, Vec::new(), &mut n);
        let changes = reconcile_slices(
            &svc,
            &desired(&svc, &pods),
            &slices,
            "2030-01-01T00:00:00Z",
            100,
        );
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn one_pod_becoming_unready_rewrites_exactly_one_slice() {
        let svc = service(json!({}));
        let mut pods = many(250, true);
        let mut n = 0;
        let slices = converge(&svc, &pods, Vec::new(), &mut n);
        pods[137] = typed(pod("p137", "10.1.0.138", false));
        let changes = reconcile_slices(&svc, &desired(&svc, &pods), &slices, NOW, 100);
        assert!(changes.create.is_empty() && changes.delete.is_empty());
        assert_eq!(changes.update.len(), 1);
        let updated = &changes.update[0];
        let before = slices
            .iter()
            .find(|s| s.metadata.name == updated.metadata.name)
            .unwrap();
        assert_eq!(updated.endpoints.len(), before.endpoints.len());
        let ep = updated
            .endpoints
            .iter()
            .find(|e| e.addresses[0] == "10.1.0.138")
            .unwrap();
        assert_eq!(ep.conditions.clone().unwrap().ready, Some(false));
    }

    #[test]
    fn new_endpoints_fill_an_existing_slice_with_room_before_creating_one() {
        let svc = service(json!({}));
        let mut n = 0;
        let slices = converge(&svc, &many(150, true), Vec::new(), &mut n);
        assert_eq!(slices.len(), 2);
        let changes = reconcile_slices(&svc, &desired(&svc, &many(160, true)), &slices, NOW, 100);
        assert!(changes.create.is_empty() && changes.delete.is_empty());
        assert_eq!(changes.update.len(), 1);
        assert_eq!(changes.update[0].endpoints.len(), 60);
    }

    #[test]
    fn removing_one_pod_rewrites_only_its_slice() {
        let svc = service(json!({}));
        let mut pods = many(250, true);
        let mut n = 0;
        let slices = converge(&svc, &pods, Vec::new(), &mut n);
        pods.remove(10);
        let changes = reconcile_slices(&svc, &desired(&svc, &pods), &slices, NOW, 100);
        assert_eq!(
            (
                changes.create.len(),
                changes.update.len(),
                changes.delete.len()
            ),
            (0, 1, 0)
        );
    }

    #[test]
    fn removing_all_pods_leaves_one_empty_slice() {
        let svc = service(json!({}));
        let mut n = 0;
        let slices = converge(&svc, &many(250, true), Vec::new(), &mut n);
        let changes = reconcile_slices(&svc, &[], &slices, NOW, 100);
        assert!(changes.create.is_empty());
        assert_eq!((changes.update.len(), changes.delete.len()), (1, 2));
        let left = apply(slices, &changes, &mut n);
        assert_eq!(left.len(), 1);
        assert!(left[0].endpoints.is_empty());
        // The placeholder is stable.
        assert!(reconcile_slices(&svc, &[], &left, NOW, 100).is_empty());
    }

    #[test]
    fn a_service_without_pods_gets_one_placeholder_slice() {
        let svc = service(json!({}));
        let changes = reconcile_slices(&svc, &[], &[], NOW, 100);
        assert_eq!(changes.create.len(), 1);
        assert!(changes.create[0].endpoints.is_empty());
        assert_eq!(changes.create[0].address_type, "IPv4");
    }

    #[test]
    fn pods_appearing_reuse_the_placeholder_slice() {
        let svc = service(json!({}));
        let mut n = 0;
        let placeholder = converge(&svc, &[], Vec::new(), &mut n);
        assert_eq!(placeholder.len(), 1);
        let changes =
            reconcile_slices(&svc, &desired(&svc, &many(3, true)), &placeholder, NOW, 100);
        assert!(changes.create.is_empty() && changes.delete.is_empty());
        assert_eq!(changes.update.len(), 1);
        assert_eq!(
            changes.update[0].metadata.name,
            placeholder[0].metadata.name
        );
        assert_eq!(changes.update[0].endpoints.len(), 3);
        assert_eq!(changes.update[0].ports.clone().unwrap()[0].port, Some(8080));
    }

    #[test]
    fn slices_managed_by_others_or_for_other_services_are_ignored() {
        let svc = service(json!({}));
        let mut n = 0;
        let mut slices = converge(&svc, &many(5, true), Vec::new(), &mut n);
        let mut foreign = slices[0].clone();
        foreign.metadata.name = Some("foreign".into());
        foreign
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_MANAGED_BY.into(), "someone-else".into());
        let mut other = slices[0].clone();
        other.metadata.name = Some("other".into());
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_SERVICE_NAME.into(), "db".into());
        slices.push(foreign);
        slices.push(other);
        let changes = reconcile_slices(&svc, &desired(&svc, &many(5, true)), &slices, NOW, 100);
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn changed_service_labels_rewrite_the_slices() {
        let svc = service(json!({}));
        let mut n = 0;
        let slices = converge(&svc, &many(5, true), Vec::new(), &mut n);
        let mut relabelled = svc.clone();
        relabelled.metadata.labels = Some(BTreeMap::from([("team".into(), "b".into())]));
        let changes = reconcile_slices(
            &relabelled,
            &desired(&relabelled, &many(5, true)),
            &slices,
            NOW,
            100,
        );
        assert_eq!(changes.update.len(), 1);
        let labels = changes.update[0].metadata.labels.clone().unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("b"));
    }

    #[test]
    fn a_service_without_selector_produces_no_changes() {
        let svc = service(json!({"selector": null}));
        assert!(desired(&svc, &many(3, true)).is_empty());
        assert!(reconcile_slices(&svc, &[], &[], NOW, 100).is_empty());
    }

    #[test]
    fn an_ipv6_pod_goes_to_an_ipv6_slice() {
        let dual = service(json!({"ipFamilies": ["IPv4", "IPv6"]}));
        let v6 = typed(pod("six", "fd00::6", true));
        let dual_stack = typed(with(
            pod("both", "10.1.0.2", true),
            "/status/podIPs",
            json!([{"ip": "10.1.0.2"}, {"ip": "fd00::2"}]),
        ));
        let pods = [typed(pod("four", "10.1.0.4", true)), v6, dual_stack];
        let changes = reconcile_slices(&dual, &desired(&dual, &pods), &[], NOW, 100);
        let mut by_type: Vec<(String, Vec<String>)> = changes
            .create
            .iter()
            .map(|s| {
                let mut a: Vec<String> =
                    s.endpoints.iter().map(|e| e.addresses.join(",")).collect();
                a.sort();
                (s.address_type.clone(), a)
            })
            .collect();
        by_type.sort();
        assert_eq!(
            by_type,
            vec![
                (
                    "IPv4".to_string(),
                    vec!["10.1.0.2".to_string(), "10.1.0.4".to_string()]
                ),
                (
                    "IPv6".to_string(),
                    vec!["fd00::2".to_string(), "fd00::6".to_string()]
                ),
            ]
        );
        // A single-stack IPv4 Service ignores the IPv6-only Pod.
        let v4 = service(json!({}));
        assert!(desired(&v4, &[typed(pod("six", "fd00::6", true))]).is_empty());
    }

    #[test]
    fn headless_services_label_slices_headless() {
        let svc = service(json!({"clusterIP": "None", "ipFamilies": null}));
        let changes = reconcile_slices(&svc, &desired(&svc, &many(1, true)), &[], NOW, 100);
        // Headless without families: both address types; IPv6 has no endpoints and gets a
        // placeholder.
        assert_eq!(changes.create.len(), 2);
        assert!(changes.create.iter().all(|s| s
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(LABEL_HEADLESS)));
    }

    fn subset_ips(e: &Endpoints) -> Vec<(Vec<String>, Vec<String>, Vec<i32>)> {
        e.subsets
            .iter()
            .flatten()
            .map(|s| {
                let ips = |v: &Option<Vec<EndpointAddress>>| {
                    v.iter().flatten().map(|a| a.ip.clone()).collect()
                };
                (
                    ips(&s.addresses),
                    ips(&s.not_ready_addresses),
                    s.ports.iter().flatten().map(|p| p.port).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn endpoints_object_splits_ready_and_not_ready_and_drops_terminating() {
        let terminating = with(
            pod("t", "10.1.0.3", true),
            "/metadata/deletionTimestamp",
            json!(NOW),
        );
        let pods = [
            typed(pod("a", "10.1.0.1", true)),
            typed(pod("b", "10.1.0.2", false)),
            typed(terminating),
        ];
        // (publishNotReadyAddresses, expected subsets)
        let cases = [
            (
                false,
                vec![(
                    vec!["10.1.0.1".to_string()],
                    vec!["10.1.0.2".to_string()],
                    vec![8080],
                )],
            ),
            (
                true,
                vec![(
                    vec![
                        "10.1.0.1".to_string(),
                        "10.1.0.2".to_string(),
                        "10.1.0.3".to_string(),
                    ],
                    vec![],
                    vec![8080],
                )],
            ),
        ];
        for (publish, want) in cases {
            let svc = service(json!({"publishNotReadyAddresses": publish}));
            let e = desired_endpoints_object(&svc, &desired(&svc, &pods));
            assert_eq!(subset_ips(&e), want, "publish={publish}");
            let labels = e.metadata.labels.clone().unwrap();
            assert_eq!(
                labels.get(LABEL_SKIP_MIRROR).map(String::as_str),
                Some("true")
            );
            assert_eq!(labels.get("team").map(String::as_str), Some("a"));
            assert_eq!(e.metadata.name.as_deref(), Some("web"));
            assert!(e.metadata.annotations.is_none());
        }
    }

    #[test]
    fn endpoints_object_groups_addresses_by_port_set() {
        let svc = service(json!({"ports": [
            {"name": "http", "port": 80, "targetPort": "http-alt", "protocol": "TCP"},
            {"name": "metrics", "port": 9100, "targetPort": 9100, "protocol": "TCP"}
        ]}));
        let lacking = with(
            pod("c", "10.1.0.3", true),
            "/spec/containers",
            json!([{"name": "c"}]),
        );
        let pods = [typed(pod("a", "10.1.0.1", true)), typed(lacking)];
        let e = desired_endpoints_object(&svc, &desired(&svc, &pods));
        let mut got = subset_ips(&e);
        got.sort();
        assert_eq!(
            got,
            vec![
                (vec!["10.1.0.1".to_string()], vec![], vec![9090]),
                (
                    vec!["10.1.0.1".to_string(), "10.1.0.3".to_string()],
                    vec![],
                    vec![9100]
                ),
            ]
        );
    }

    #[test]
    fn endpoints_object_is_truncated_at_a_thousand_addresses() {
        let svc = service(json!({}));
        let mut pods = many(900, true);
        pods.extend((0..300).map(|i| {
            typed(pod(
                &format!("u{i}"),
                &format!("10.9.{}.{}", i / 200, i % 200 + 1),
                false,
            ))
        }));
        let e = desired_endpoints_object(&svc, &desired(&svc, &pods));
        let got = subset_ips(&e);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.len(), got[0].1.len()), (900, 100));
        let annotations = e.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations
                .get(ANNOTATION_OVER_CAPACITY)
                .map(String::as_str),
            Some("truncated")
        );
    }

    fn user_endpoints(labels: Value) -> Endpoints {
        serde_json::from_value(json!({
            "metadata": {"name": "ext", "namespace": "default", "uid": "ep-uid", "labels": labels,
                         "annotations": {ANNOTATION_TRIGGER_TIME: NOW, "note": "x"}},
            "subsets": [{
                "addresses": [{"ip": "192.0.2.1"}, {"ip": "2001:db8::1"}, {"ip": "example.com"}],
                "notReadyAddresses": [{"ip": "192.0.2.2"}],
                "ports": [{"name": "https", "port": 443}]
            }]
        }))
        .unwrap()
    }

    fn selectorless() -> Service {
        let mut svc = service(json!({"selector": null}));
        svc.metadata.name = Some("ext".into());
        svc
    }

    #[test]
    fn endpoints_of_a_selectorless_service_are_mirrored_by_family() {
        let ep = user_endpoints(json!({"owner": "me"}));
        let changes = mirror_slices(&ep, &selectorless(), &[]);
        assert_eq!(changes.create.len(), 2);
        let v4 = changes
            .create
            .iter()
            .find(|s| s.address_type == "IPv4")
            .unwrap();
        let v6 = changes
            .create
            .iter()
            .find(|s| s.address_type == "IPv6")
            .unwrap();
        let ready: Vec<(String, Option<bool>)> = v4
            .endpoints
            .iter()
            .map(|e| (e.addresses[0].clone(), e.conditions.clone().unwrap().ready))
            .collect();
        assert_eq!(
            ready,
            vec![
                ("192.0.2.1".into(), Some(true)),
                ("192.0.2.2".into(), Some(false))
            ]
        );
        assert_eq!(v6.endpoints[0].addresses, vec!["2001:db8::1"]);
        let labels = v4.metadata.labels.clone().unwrap();
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(MANAGED_BY_MIRRORING)
        );
        assert_eq!(
            labels.get(LABEL_SERVICE_NAME).map(String::as_str),
            Some("ext")
        );
        assert_eq!(labels.get("owner").map(String::as_str), Some("me"));
        let annotations = v4.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.get("note").map(String::as_str), Some("x"));
        assert_eq!(
            annotations.get(ANNOTATION_TRIGGER_TIME).map(String::as_str),
            Some(NOW)
        );
        let ports = v4.ports.clone().unwrap();
        assert_eq!(
            (ports[0].port, ports[0].protocol.as_deref()),
            (Some(443), Some("TCP"))
        );
        assert_eq!(
            v4.metadata.owner_references.clone().unwrap()[0].kind,
            "Endpoints"
        );

        // Mirroring again changes nothing.
        let mut n = 0;
        let slices = apply(Vec::new(), &changes, &mut n);
        assert!(mirror_slices(&ep, &selectorless(), &slices).is_empty());
    }

    #[test]
    fn mirroring_skips_marked_endpoints_and_services_with_selectors() {
        let ep = user_endpoints(json!({}));
        let mut n = 0;
        let slices = apply(
            Vec::new(),
            &mirror_slices(&ep, &selectorless(), &[]),
            &mut n,
        );
        let cases = [
            (
                "skip-mirror",
                user_endpoints(json!({LABEL_SKIP_MIRROR: "true"})),
                selectorless(),
            ),
            ("selector", ep.clone(), {
                let mut s = service(json!({}));
                s.metadata.name = Some("ext".into());
                s
            }),
        ];
        for (name, endpoints, svc) in cases {
            assert!(mirror_slices(&endpoints, &svc, &[]).is_empty(), "{name}");
            let changes = mirror_slices(&endpoints, &svc, &slices);
            assert_eq!(changes.delete.len(), 2, "{name}");
            assert!(
                changes.create.is_empty() && changes.update.is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn mirrored_endpoints_that_empty_out_delete_their_slices() {
        let ep = user_endpoints(json!({}));
        let mut n = 0;
        let slices = apply(
            Vec::new(),
            &mirror_slices(&ep, &selectorless(), &[]),
            &mut n,
        );
        let mut emptied = ep.clone();
        emptied.subsets = None;
        let changes = mirror_slices(&emptied, &selectorless(), &slices);
        assert_eq!(changes.delete.len(), 2);
        assert!(changes.create.is_empty() && changes.update.is_empty());
    }
}
