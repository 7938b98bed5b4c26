//! The cluster zone (issue 6): the records of the
//! [Kubernetes DNS-Based Service Discovery specification 1.1.0](https://github.com/kubernetes/dns/blob/master/docs/specification.md)
//! kept in memory and answered without IO. The watches feed it one object at a time
//! ([`Zone::upsert_service`], [`Zone::upsert_slice`], [`Zone::upsert_pod`] and their removals);
//! each update rewrites only that object's compact entry and its reverse-index rows, never the
//! whole zone. [`Zone::answer`] resolves one question from those entries, building records on
//! demand, so a query costs a few hash lookups plus the size of the answer.
//!
//! The zone never keeps Kubernetes objects: a Service is its kind, addresses and named ports, a
//! slice is its service name, ports and `(ip, hostname, ready)` per address, a Pod is its
//! namespace and IPs. It never decides whether it is synced (the server answers SERVFAIL until
//! the first full list), and it never forwards: names outside [`Zone::is_in_zone`] belong to the
//! forwarder, and an ExternalName pointing outside the zone is answered with its CNAME alone.
//!
//! Behaviour follows CoreDNS's `kubernetes` plugin where the specification leaves room: SOA with
//! `ns.dns.<zone>` and `hostmaster.<zone>`, SRV priority 0 with weights sharing 100, endpoints
//! without a hostname named by their dashed IP, headless SRV records carrying the endpoint
//! (target) port, and `pods insecure` by default.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use switchyard_api::k8s::api::core::v1::{Pod, Service, ServiceSpec};
use switchyard_api::k8s::api::discovery::v1::EndpointSlice;

/// The version of the specification this zone implements, served at `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// `kubernetes.io/service-name`: the label naming the Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// How many ExternalName services in the zone may point at each other before the chase stops
/// (a loop of two ExternalName services must not recurse forever).
const MAX_CNAME_CHASE: usize = 8;

/// How `<a-b-c-d>.<ns>.pod.<zone>` names are answered (CoreDNS's `pods` option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodMode {
    /// No pod records: every pod name is NXDOMAIN (`pods disabled`).
    Disabled,
    /// Any well-formed dashed IP answers that IP, as kube-dns did (`pods insecure`, the
    /// deprecated record of section 2.6 of the specification).
    #[default]
    Insecure,
    /// Only IPs of a Pod that exists in that namespace answer (`pods verified`).
    Verified,
}

/// What the zone serves and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain; kubelet's `--cluster-domain` default `cluster.local.`.
    pub domain: Name,
    /// TTL of every record, and the SOA minimum (negative-caching TTL); CoreDNS's `ttl` default 5.
    pub ttl: u32,
    /// Pod records; CoreDNS's deployed Corefile uses `pods insecure`.
    pub pod_mode: PodMode,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self {
            domain: Name::from_ascii("cluster.local.").expect("cluster.local. is a valid name"),
            ttl: 5,
            pod_mode: PodMode::Insecure,
        }
    }
}

/// The response to one question, ready to copy into a DNS message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR (with or without data), NXDOMAIN, or REFUSED for a name outside the zone.
    pub rcode: ResponseCode,
    /// The answer section: owner names as the question wrote them.
    pub answers: Vec<Record>,
    /// The additional section: addresses of SRV targets.
    pub additionals: Vec<Record>,
    /// The authority section: the zone's SOA on NXDOMAIN and NODATA (RFC 2308).
    pub authority: Vec<Record>,
    /// The AA bit: set for every name of the zone.
    pub authoritative: bool,
}

impl Answer {
    fn refused() -> Self {
        Self {
            rcode: ResponseCode::Refused,
            answers: Vec::new(),
            additionals: Vec::new(),
            authority: Vec::new(),
            authoritative: false,
        }
    }
}

/// A named port, as an SRV record needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NamedPort {
    /// Lowercase port name (an IANA_SVC_NAME).
    name: Box<str>,
    protocol: Protocol,
    port: u16,
}

/// The protocols a Service port may use; the SRV label is the lowercase name (`_tcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// `spec.ports[].protocol`, TCP when unset (the API default); `None` for anything else.
    fn parse(protocol: Option<&String>) -> Option<Self> {
        match protocol.map(String::as_str) {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ServiceKind {
    /// A virtual IP per family; empty while the allocator has not assigned one.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: answered from the ready endpoints of its slices.
    Headless,
    /// A CNAME; `None` when `spec.externalName` is not a valid DNS name.
    ExternalName(Option<Name>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceEntry {
    kind: ServiceKind,
    /// Named ports with their Service port number (unnamed ports have no SRV record).
    ports: Vec<NamedPort>,
    /// `spec.publishNotReadyAddresses`: every endpoint counts as ready. The EndpointSlice
    /// controller already marks such endpoints ready; this covers slices written by others.
    publish_not_ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct EndpointEntry {
    ip: IpAddr,
    /// Lowercase `hostname` of the endpoint, if set.
    hostname: Option<Box<str>>,
    /// `conditions.ready`, unset meaning ready (as the discovery/v1 API documents).
    ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SliceEntry {
    /// `ns/name` of the Service from the `kubernetes.io/service-name` label.
    service: String,
    /// Named ports with their endpoint (target) port number.
    ports: Vec<NamedPort>,
    endpoints: Vec<EndpointEntry>,
}

/// Who may own the PTR record of an IP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PtrOwner {
    /// A ClusterIP of the Service `ns/name`.
    Service(String),
    /// An endpoint address of the slice `ns/name`.
    Slice(String),
}

/// The in-memory cluster zone. See the module documentation.
#[derive(Debug)]
pub struct Zone {
    config: ZoneConfig,
    /// Changes on every update that changes an answer; the SOA serial.
    serial: u32,
    /// `ns/name` → Service.
    services: HashMap<String, ServiceEntry>,
    /// Namespace → how many Services it holds (`<ns>.svc.<zone>` exists while non-zero).
    namespaces: HashMap<Box<str>, usize>,
    /// `ns/name` → slice.
    slices: HashMap<String, SliceEntry>,
    /// Service `ns/name` → names (`ns/name`) of the slices labelled with it.
    slices_by_service: HashMap<String, HashSet<String>>,
    /// IP → the objects that may give it a PTR record.
    ptr_owners: HashMap<IpAddr, Vec<PtrOwner>>,
    /// Pod `ns/name` → its IPs (for verified pod records).
    pods: HashMap<String, Vec<IpAddr>>,
    /// `(namespace, ip)` → how many Pods have that IP there (hostNetwork Pods share one).
    pod_ips: HashMap<(Box<str>, IpAddr), usize>,
    /// Namespace → how many Pods it holds.
    pod_namespaces: HashMap<Box<str>, usize>,
}

fn key(namespace: &str, name: &str) -> String {
    format!(
        "{}/{}",
        namespace.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    )
}

fn parse_port(
    name: Option<&String>,
    protocol: Option<&String>,
    port: Option<i32>,
) -> Option<NamedPort> {
    let name = name.filter(|n| !n.is_empty())?;
    let port = u16::try_from(port?).ok()?;
    Some(NamedPort {
        name: name.to_ascii_lowercase().into(),
        protocol: Protocol::parse(protocol)?,
        port,
    })
}

fn service_entry(service: &Service) -> ServiceEntry {
    let unset = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&unset);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| parse_port(p.name.as_ref(), p.protocol.as_ref(), Some(p.port)))
        .collect();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec
            .external_name
            .as_deref()
            .map(|n| n.trim_end_matches('.'))
            .filter(|n| !n.is_empty())
            .and_then(|n| Name::from_ascii(format!("{n}.")).ok());
        ServiceKind::ExternalName(target)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        // clusterIPs holds every family (primary first); older objects may carry clusterIP only.
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let mut seen = HashSet::new();
        ips.retain(|ip| seen.insert(*ip));
        ServiceKind::ClusterIp(ips)
    };
    ServiceEntry {
        kind,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses == Some(true),
    }
}

fn slice_entry(namespace: &str, slice: &EndpointSlice) -> Option<SliceEntry> {
    let service = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| parse_port(p.name.as_ref(), p.protocol.as_ref(), p.port))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flat_map(|ep| {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let hostname: Option<Box<str>> = ep
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase().into());
            ep.addresses.iter().filter_map(move |a| {
                Some(EndpointEntry {
                    ip: a.parse().ok()?,
                    hostname: hostname.clone(),
                    ready,
                })
            })
        })
        .collect();
    Some(SliceEntry {
        service: key(namespace, service),
        ports,
        endpoints,
    })
}

/// The label naming an endpoint without a hostname: its IP with `.`/`:` turned into `-`.
fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The IP a pod-record label spells (`10-0-0-1`, `fd00--1`).
fn undashed(label: &str) -> Option<IpAddr> {
    if label.contains(':') || label.contains('.') {
        return None;
    }
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The IP of a full reverse name (`4.3.2.1.in-addr.arpa.`, 32 nibbles `.ip6.arpa.`), given its
/// lowercase labels from the left.
fn reverse_ip(labels: &[String]) -> Option<IpAddr> {
    match labels {
        [d, c, b, a, in_addr, arpa] if in_addr == "in-addr" && arpa == "arpa" => {
            // Only canonical decimal: `01` is not the label of 1.
            let octet = |s: &String| s.parse::<u8>().ok().filter(|n| n.to_string() == *s);
            Some(IpAddr::V4(Ipv4Addr::new(
                octet(a)?,
                octet(b)?,
                octet(c)?,
                octet(d)?,
            )))
        }
        [nibbles @ .., ip6, arpa] if ip6 == "ip6" && arpa == "arpa" && nibbles.len() == 32 => {
            let mut value: u128 = 0;
            for nibble in nibbles.iter().rev() {
                if nibble.len() != 1 {
                    return None;
                }
                value = (value << 4) | u128::from(u8::from_str_radix(nibble, 16).ok()?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

fn lowercase_labels(name: &Name) -> Vec<String> {
    name.iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect()
}

fn address_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn matches(qtype: RecordType, data: &RData) -> bool {
    qtype == RecordType::ANY || data.record_type() == qtype
}

/// What a name holds, before filtering by type.
enum Node {
    /// No such name.
    Missing,
    /// The name exists; these are its records (possibly none: an empty non-terminal).
    Data {
        records: Vec<RData>,
        additionals: Vec<Record>,
    },
    /// An ExternalName service: a CNAME to this target.
    Alias(Name),
}

impl Node {
    fn empty() -> Self {
        Node::Data {
            records: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

impl Zone {
    /// An empty zone. The domain is kept lowercase and fully qualified (`cluster.local` and
    /// `Cluster.Local.` configure the same zone).
    pub fn new(config: ZoneConfig) -> Self {
        let mut domain = config.domain.to_lowercase();
        domain.set_fqdn(true);
        Self {
            config: ZoneConfig { domain, ..config },
            serial: 1,
            services: HashMap::new(),
            namespaces: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            ptr_owners: HashMap::new(),
            pods: HashMap::new(),
            pod_ips: HashMap::new(),
            pod_namespaces: HashMap::new(),
        }
    }

    /// The configuration the zone answers with.
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// The SOA serial; it changes whenever an update changes the zone.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    fn bump(&mut self) {
        self.serial = self.serial.wrapping_add(1).max(1);
    }

    fn add_ptr(&mut self, ip: IpAddr, owner: PtrOwner) {
        let owners = self.ptr_owners.entry(ip).or_default();
        if !owners.contains(&owner) {
            owners.push(owner);
        }
    }

    fn remove_ptr(&mut self, ip: IpAddr, owner: &PtrOwner) {
        if let Some(owners) = self.ptr_owners.get_mut(&ip) {
            owners.retain(|o| o != owner);
            if owners.is_empty() {
                self.ptr_owners.remove(&ip);
            }
        }
    }

    fn count(map: &mut HashMap<Box<str>, usize>, namespace: &str, delta: isize) {
        let n = map.entry(namespace.into()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            map.remove(namespace);
        }
    }

    /// Adds or replaces a Service's records.
    pub fn upsert_service(&mut self, service: &Service) {
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        let Some(name) = service.metadata.name.as_deref() else {
            return;
        };
        let entry = service_entry(service);
        let k = key(namespace, name);
        if self.services.get(&k) == Some(&entry) {
            return;
        }
        self.drop_service(&k);
        if let ServiceKind::ClusterIp(ips) = &entry.kind {
            for ip in ips {
                self.add_ptr(*ip, PtrOwner::Service(k.clone()));
            }
        }
        Self::count(&mut self.namespaces, &namespace.to_ascii_lowercase(), 1);
        self.services.insert(k, entry);
        self.bump();
    }

    /// Removes a Service's records (its slices stay, to serve again if it comes back).
    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        if self.drop_service(&key(namespace, name)) {
            self.bump();
        }
    }

    fn drop_service(&mut self, k: &str) -> bool {
        let Some(old) = self.services.remove(k) else {
            return false;
        };
        if let ServiceKind::ClusterIp(ips) = old.kind {
            for ip in ips {
                self.remove_ptr(ip, &PtrOwner::Service(k.to_owned()));
            }
        }
        let namespace = k.split_once('/').map_or(k, |(ns, _)| ns);
        Self::count(&mut self.namespaces, namespace, -1);
        true
    }

    /// Adds or replaces an EndpointSlice's endpoints. A slice without the
    /// `kubernetes.io/service-name` label serves nothing.
    pub fn upsert_slice(&mut self, slice: &EndpointSlice) {
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        let Some(name) = slice.metadata.name.as_deref() else {
            return;
        };
        let k = key(namespace, name);
        let Some(entry) = slice_entry(namespace, slice) else {
            self.remove_slice(namespace, name);
            return;
        };
        if self.slices.get(&k) == Some(&entry) {
            return;
        }
        self.drop_slice(&k);
        for ep in &entry.endpoints {
            self.add_ptr(ep.ip, PtrOwner::Slice(k.clone()));
        }
        self.slices_by_service
            .entry(entry.service.clone())
            .or_default()
            .insert(k.clone());
        self.slices.insert(k, entry);
        self.bump();
    }

    /// Removes an EndpointSlice's endpoints.
    pub fn remove_slice(&mut self, namespace: &str, name: &str) {
        if self.drop_slice(&key(namespace, name)) {
            self.bump();
        }
    }

    fn drop_slice(&mut self, k: &str) -> bool {
        let Some(old) = self.slices.remove(k) else {
            return false;
        };
        let owner = PtrOwner::Slice(k.to_owned());
        for ep in &old.endpoints {
            self.remove_ptr(ep.ip, &owner);
        }
        if let Some(set) = self.slices_by_service.get_mut(&old.service) {
            set.remove(k);
            if set.is_empty() {
                self.slices_by_service.remove(&old.service);
            }
        }
        true
    }

    /// Records a Pod's IPs in its namespace, for [`PodMode::Verified`]. Finished Pods and Pods
    /// being deleted no longer count (as CoreDNS skips them).
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let Some(name) = pod.metadata.name.as_deref() else {
            return;
        };
        let status = pod.status.as_ref();
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let mut ips: Vec<IpAddr> = if finished || pod.metadata.deletion_timestamp.is_some() {
            Vec::new()
        } else {
            status
                .map(|s| {
                    s.pod_ips
                        .iter()
                        .flatten()
                        .map(|p| p.ip.as_str())
                        .chain(s.pod_ip.as_deref())
                        .filter_map(|ip| ip.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut seen = HashSet::new();
        ips.retain(|ip| seen.insert(*ip));
        let k = key(namespace, name);
        if self.pods.get(&k).map_or(&[][..], Vec::as_slice) == ips.as_slice() {
            return;
        }
        self.drop_pod(&k);
        if !ips.is_empty() {
            let ns = namespace.to_ascii_lowercase();
            for ip in &ips {
                *self.pod_ips.entry((ns.as_str().into(), *ip)).or_insert(0) += 1;
            }
            Self::count(&mut self.pod_namespaces, &ns, 1);
            self.pods.insert(k, ips);
        }
        if self.config.pod_mode == PodMode::Verified {
            self.bump();
        }
    }

    /// Forgets a Pod.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        if self.drop_pod(&key(namespace, name)) && self.config.pod_mode == PodMode::Verified {
            self.bump();
        }
    }

    fn drop_pod(&mut self, k: &str) -> bool {
        let Some(ips) = self.pods.remove(k) else {
            return false;
        };
        let namespace: Box<str> = k.split_once('/').map_or(k, |(ns, _)| ns).into();
        for ip in ips {
            let row = (namespace.clone(), ip);
            if let Some(n) = self.pod_ips.get_mut(&row) {
                *n -= 1;
                if *n == 0 {
                    self.pod_ips.remove(&row);
                }
            }
        }
        Self::count(&mut self.pod_namespaces, &namespace, -1);
        true
    }

    /// Whether `name` is this zone's to answer: the cluster domain and everything under it, and
    /// the reverse name of an IP that has a PTR record here. Other names (other reverse names
    /// too) belong to the forwarder.
    pub fn is_in_zone(&self, name: &Name) -> bool {
        if self.config.domain.zone_of(name) {
            return true;
        }
        reverse_ip(&lowercase_labels(name)).is_some_and(|ip| !self.ptr_records(ip).is_empty())
    }

    /// Answers one question. Names outside [`Zone::is_in_zone`] get REFUSED and no AA bit.
    pub fn answer(&self, name: &Name, qtype: RecordType) -> Answer {
        self.answer_chased(name, qtype, 0)
    }

    fn answer_chased(&self, name: &Name, qtype: RecordType, depth: usize) -> Answer {
        let labels = lowercase_labels(name);
        let zone_labels = usize::from(self.config.domain.num_labels());
        let (node, apex) = if self.config.domain.zone_of(name) {
            let relative = &labels[..labels.len() - zone_labels];
            (self.node(relative), self.config.domain.clone())
        } else if let Some(ip) = reverse_ip(&labels) {
            let records = self.ptr_records(ip);
            if records.is_empty() {
                return Answer::refused();
            }
            let apex = if ip.is_ipv4() {
                "in-addr.arpa."
            } else {
                "ip6.arpa."
            };
            let apex = Name::from_ascii(apex).expect("a literal reverse zone is a valid name");
            (
                Node::Data {
                    records,
                    additionals: Vec::new(),
                },
                apex,
            )
        } else {
            return Answer::refused();
        };
        let ttl = self.config.ttl;
        let mut answer = Answer {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            additionals: Vec::new(),
            authority: Vec::new(),
            authoritative: true,
        };
        match node {
            Node::Missing => answer.rcode = ResponseCode::NXDomain,
            Node::Data {
                records,
                additionals,
            } => {
                answer.answers = records
                    .into_iter()
                    .filter(|r| matches(qtype, r))
                    .map(|r| Record::from_rdata(name.clone(), ttl, r))
                    .collect();
                if answer
                    .answers
                    .iter()
                    .any(|r| r.record_type() == RecordType::SRV)
                {
                    answer.additionals = additionals;
                }
            }
            Node::Alias(target) => {
                answer.answers.push(Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                // RFC 1034 4.3.2: restart at the target when it is ours; the rcode and authority
                // of a chain are those of its last name (RFC 6604).
                if qtype != RecordType::CNAME && self.config.domain.zone_of(&target) {
                    if depth >= MAX_CNAME_CHASE {
                        // A loop of ExternalName services: no answer exists.
                        answer.rcode = ResponseCode::ServFail;
                        return answer;
                    }
                    let chased = self.answer_chased(&target, qtype, depth + 1);
                    answer.rcode = chased.rcode;
                    answer.answers.extend(chased.answers);
                    answer.additionals = chased.additionals;
                    answer.authority = chased.authority;
                }
                return answer;
            }
        }
        if answer.answers.is_empty() {
            answer.authority.push(self.soa_record(apex));
        }
        answer
    }

    fn soa_record(&self, apex: Name) -> Record {
        let domain = &self.config.domain;
        let mname = Name::from_ascii("ns.dns").and_then(|n| n.append_domain(domain));
        let rname = Name::from_ascii("hostmaster").and_then(|n| n.append_domain(domain));
        let soa = SOA::new(
            mname.unwrap_or_else(|_| domain.clone()),
            rname.unwrap_or_else(|_| domain.clone()),
            self.serial,
            7200,
            1800,
            86400,
            self.config.ttl,
        );
        Record::from_rdata(apex, self.config.ttl, RData::SOA(soa))
    }

    /// `<relative>.<zone>` as a name; `None` only if it would be too long for DNS.
    fn in_zone(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(relative)
            .ok()?
            .append_domain(&self.config.domain)
            .ok()
    }

    fn service_name(&self, k: &str) -> Option<Name> {
        let (namespace, name) = k.split_once('/')?;
        self.in_zone(&format!("{name}.{namespace}.svc"))
    }

    /// The name at `relative` (lowercase labels left of the cluster domain).
    fn node(&self, relative: &[String]) -> Node {
        let label = |i: usize| relative[i].as_str();
        match relative.len() {
            0 => {
                let soa = self.soa_record(self.config.domain.clone()).data;
                let ns = self.in_zone("ns.dns").map(|n| RData::NS(NS(n)));
                Node::Data {
                    records: [Some(soa), ns].into_iter().flatten().collect(),
                    additionals: Vec::new(),
                }
            }
            1 => match label(0) {
                "dns-version" => Node::Data {
                    records: vec![RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()]))],
                    additionals: Vec::new(),
                },
                "svc" if !self.services.is_empty() => Node::empty(),
                "pod"
                    if self.config.pod_mode == PodMode::Insecure
                        || (self.config.pod_mode == PodMode::Verified && !self.pods.is_empty()) =>
                {
                    Node::empty()
                }
                _ => Node::Missing,
            },
            2 => match label(1) {
                "svc" if self.namespaces.contains_key(label(0)) => Node::empty(),
                "pod"
                    if self.config.pod_mode == PodMode::Insecure
                        || (self.config.pod_mode == PodMode::Verified
                            && self.pod_namespaces.contains_key(label(0))) =>
                {
                    Node::empty()
                }
                _ => Node::Missing,
            },
            3 => match label(2) {
                "svc" => self.service_node(&key(label(1), label(0))),
                "pod" => self.pod_node(label(1), label(0)),
                _ => Node::Missing,
            },
            4 if label(3) == "svc" => {
                let k = key(label(2), label(1));
                if let Some(protocol) = label(0).strip_prefix('_') {
                    // `_<proto>.<svc>...`: an empty non-terminal while some SRV name is below it.
                    self.srv_node(&k, None, protocol, true)
                } else {
                    self.hostname_node(&k, label(0))
                }
            }
            5 if label(4) == "svc" => {
                match (label(0).strip_prefix('_'), label(1).strip_prefix('_')) {
                    (Some(port), Some(protocol)) => {
                        self.srv_node(&key(label(3), label(2)), Some(port), protocol, false)
                    }
                    _ => Node::Missing,
                }
            }
            _ => Node::Missing,
        }
    }

    fn service_node(&self, k: &str) -> Node {
        let Some(service) = self.services.get(k) else {
            return Node::Missing;
        };
        match &service.kind {
            ServiceKind::ExternalName(Some(target)) => Node::Alias(target.clone()),
            ServiceKind::ExternalName(None) => Node::Missing,
            ServiceKind::ClusterIp(ips) => Node::Data {
                records: ips.iter().map(|ip| address_rdata(*ip)).collect(),
                additionals: Vec::new(),
            },
            ServiceKind::Headless => {
                let mut seen = HashSet::new();
                let records: Vec<RData> = self
                    .ready_endpoints(k, service)
                    .filter(|(_, ep)| seen.insert(ep.ip))
                    .map(|(_, ep)| address_rdata(ep.ip))
                    .collect();
                // Specification 2.4.1: no ready endpoint, no name.
                if records.is_empty() {
                    Node::Missing
                } else {
                    Node::Data {
                        records,
                        additionals: Vec::new(),
                    }
                }
            }
        }
    }

    /// The ready endpoints of a Service's slices, with their slice.
    fn ready_endpoints<'a>(
        &'a self,
        k: &str,
        service: &'a ServiceEntry,
    ) -> impl Iterator<Item = (&'a SliceEntry, &'a EndpointEntry)> + 'a {
        self.slices_by_service
            .get(k)
            .into_iter()
            .flatten()
            .filter_map(|s| self.slices.get(s))
            .flat_map(|slice| slice.endpoints.iter().map(move |ep| (slice, ep)))
            .filter(|(_, ep)| ep.ready || service.publish_not_ready)
    }

    fn endpoint_label(ep: &EndpointEntry) -> String {
        ep.hostname
            .as_deref()
            .map_or_else(|| dashed(&ep.ip), str::to_owned)
    }

    fn hostname_node(&self, k: &str, hostname: &str) -> Node {
        let Some(service) = self.services.get(k) else {
            return Node::Missing;
        };
        if service.kind != ServiceKind::Headless {
            return Node::Missing;
        }
        let mut seen = HashSet::new();
        let records: Vec<RData> = self
            .ready_endpoints(k, service)
            .filter(|(_, ep)| match &ep.hostname {
                Some(h) => &**h == hostname,
                None => dashed(&ep.ip) == hostname,
            })
            .filter(|(_, ep)| seen.insert(ep.ip))
            .map(|(_, ep)| address_rdata(ep.ip))
            .collect();
        if records.is_empty() {
            Node::Missing
        } else {
            Node::Data {
                records,
                additionals: Vec::new(),
            }
        }
    }

    /// SRV records of `_<port>._<protocol>.<svc>`; with `port` `None`, whether `_<protocol>.<svc>`
    /// has any below it (then it is an empty non-terminal).
    fn srv_node(&self, k: &str, port: Option<&str>, protocol: &str, non_terminal: bool) -> Node {
        let Some(service) = self.services.get(k) else {
            return Node::Missing;
        };
        let wanted =
            |p: &NamedPort| p.protocol.label() == protocol && port.is_none_or(|n| &*p.name == n);
        let Some(service_name) = self.service_name(k) else {
            return Node::Missing;
        };
        let mut targets: Vec<(u16, Name)> = Vec::new();
        let mut additionals = Vec::new();
        let ttl = self.config.ttl;
        match &service.kind {
            ServiceKind::ExternalName(_) => return Node::Missing,
            ServiceKind::ClusterIp(ips) => {
                for p in service.ports.iter().filter(|p| wanted(p)) {
                    targets.push((p.port, service_name.clone()));
                }
                additionals.extend(
                    ips.iter().map(|ip| {
                        Record::from_rdata(service_name.clone(), ttl, address_rdata(*ip))
                    }),
                );
            }
            ServiceKind::Headless => {
                // The endpoint's own port: clients of a headless Service connect to the Pod.
                let mut seen = HashSet::new();
                let mut named = HashSet::new();
                for (slice, ep) in self.ready_endpoints(k, service) {
                    let Some(target) = self.in_zone(&format!(
                        "{}.{}",
                        Self::endpoint_label(ep),
                        service_name_relative(k)
                    )) else {
                        continue;
                    };
                    for p in slice.ports.iter().filter(|p| wanted(p)) {
                        if seen.insert((p.port, ep.ip)) {
                            // One SRV per (port, name); a dual-stack pod has one name, two
                            // addresses.
                            if named.insert((p.port, target.clone())) {
                                targets.push((p.port, target.clone()));
                            }
                            additionals.push(Record::from_rdata(
                                target.clone(),
                                ttl,
                                address_rdata(ep.ip),
                            ));
                        }
                    }
                }
            }
        }
        if targets.is_empty() {
            return Node::Missing;
        }
        if non_terminal {
            return Node::empty();
        }
        let weight = u16::try_from(100 / targets.len()).unwrap_or(1).max(1);
        let records = targets
            .into_iter()
            .map(|(port, target)| RData::SRV(SRV::new(0, weight, port, target)))
            .collect();
        Node::Data {
            records,
            additionals,
        }
    }

    fn pod_node(&self, namespace: &str, label: &str) -> Node {
        let Some(ip) = undashed(label) else {
            return Node::Missing;
        };
        let exists = match self.config.pod_mode {
            PodMode::Disabled => false,
            PodMode::Insecure => true,
            PodMode::Verified => self.pod_ips.contains_key(&(namespace.into(), ip)),
        };
        if exists {
            Node::Data {
                records: vec![address_rdata(ip)],
                additionals: Vec::new(),
            }
        } else {
            Node::Missing
        }
    }

    /// PTR data for an IP: the Services with it as ClusterIP and the ready endpoints of headless
    /// Services with it as address.
    fn ptr_records(&self, ip: IpAddr) -> Vec<RData> {
        let mut targets: Vec<Name> = Vec::new();
        for owner in self.ptr_owners.get(&ip).into_iter().flatten() {
            match owner {
                PtrOwner::Service(k) => {
                    let Some(ServiceEntry {
                        kind: ServiceKind::ClusterIp(ips),
                        ..
                    }) = self.services.get(k)
                    else {
                        continue;
                    };
                    if ips.contains(&ip) {
                        targets.extend(self.service_name(k));
                    }
                }
                PtrOwner::Slice(s) => {
                    let Some(slice) = self.slices.get(s) else {
                        continue;
                    };
                    let Some(service) = self.services.get(&slice.service) else {
                        continue;
                    };
                    if service.kind != ServiceKind::Headless {
                        continue;
                    }
                    for ep in slice
                        .endpoints
                        .iter()
                        .filter(|ep| ep.ip == ip && (ep.ready || service.publish_not_ready))
                    {
                        let relative = format!(
                            "{}.{}",
                            Self::endpoint_label(ep),
                            service_name_relative(&slice.service)
                        );
                        if let Some(name) = self.in_zone(&relative) {
                            targets.push(name);
                        }
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        targets.retain(|t| seen.insert(t.clone()));
        targets.into_iter().map(|t| RData::PTR(PTR(t))).collect()
    }
}

/// `<svc>.<ns>.svc` for the key `ns/svc`.
fn service_name_relative(k: &str) -> String {
    let (namespace, name) = k.split_once('/').unwrap_or(("", k));
    format!("{name}.{namespace}.svc")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn service(namespace: &str, name: &str, spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name},
            "spec": spec,
        }))
        .expect("test Service is valid")
    }

    /// `endpoints`: `(ip, hostname, ready)`; `ready` `None` leaves the condition unset.
    fn slice(
        namespace: &str,
        name: &str,
        service: &str,
        address_type: &str,
        ports: Value,
        endpoints: &[(&str, Option<&str>, Option<bool>)],
    ) -> EndpointSlice {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(ip, hostname, ready)| {
                let mut ep = json!({"addresses": [ip]});
                if let Some(h) = hostname {
                    ep["hostname"] = json!(h);
                }
                if let Some(r) = ready {
                    ep["conditions"] = json!({"ready": r});
                }
                ep
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {
                "namespace": namespace,
                "name": name,
                "labels": {LABEL_SERVICE_NAME: service},
            },
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": ports,
        }))
        .expect("test EndpointSlice is valid")
    }

    fn pod(namespace: &str, name: &str, ips: &[&str]) -> Pod {
        let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": namespace, "name": name},
            "status": {"phase": "Running", "podIP": ips.first(), "podIPs": pod_ips},
        }))
        .expect("test Pod is valid")
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name is valid")
    }

    /// The fixture cluster every table row is asked against.
    fn cluster() -> Zone {
        let mut zone = Zone::new(ZoneConfig::default());
        zone.upsert_service(&service(
            "default",
            "web",
            json!({
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ipFamilies": ["IPv4", "IPv6"],
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"port": 9000, "protocol": "TCP"},
                ],
            }),
        ));
        zone.upsert_service(&service(
            "default",
            "db",
            json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": 15432}]}),
        ));
        let pg = json!([{"name": "pg", "port": 15432, "protocol": "TCP"}]);
        zone.upsert_slice(&slice(
            "default",
            "db-v4",
            "db",
            "IPv4",
            pg.clone(),
            &[
                ("10.1.0.1", Some("db-0"), Some(true)),
                ("10.1.0.2", Some("db-1"), Some(false)),
                ("10.1.0.3", None, None),
            ],
        ));
        zone.upsert_slice(&slice(
            "default",
            "db-v6",
            "db",
            "IPv6",
            pg,
            &[("fd00:1::5", None, Some(true))],
        ));
        zone.upsert_service(&service(
            "default",
            "pub",
            json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
        ));
        zone.upsert_slice(&slice(
            "default",
            "pub-1",
            "pub",
            "IPv4",
            json!([]),
            &[
                ("10.2.0.1", None, Some(true)),
                ("10.2.0.2", None, Some(false)),
            ],
        ));
        zone.upsert_service(&service("default", "empty", json!({"clusterIP": "None"})));
        zone.upsert_slice(&slice(
            "default",
            "empty-1",
            "empty",
            "IPv4",
            json!([]),
            &[("10.3.0.1", None, Some(false))],
        ));
        zone.upsert_service(&service(
            "default",
            "ext",
            json!({"type": "ExternalName", "externalName": "www.example.com"}),
        ));
        zone.upsert_service(&service(
            "other",
            "alias",
            json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local."}),
        ));
        zone.upsert_service(&service(
            "other",
            "dangling",
            json!({"type": "ExternalName", "externalName": "gone.default.svc.cluster.local"}),
        ));
        zone.upsert_service(&service(
            "other",
            "loop-a",
            json!({"type": "ExternalName", "externalName": "loop-b.other.svc.cluster.local"}),
        ));
        zone.upsert_service(&service(
            "other",
            "loop-b",
            json!({"type": "ExternalName", "externalName": "loop-a.other.svc.cluster.local"}),
        ));
        zone
    }

    /// How an answer reads: rcode and AA bit, then each section in `dig` order, records sorted
    /// (their order carries no meaning), the SOA shown without its serial.
    fn render(answer: &Answer) -> Vec<String> {
        let section = |title: &str, records: &[Record]| {
            let mut lines: Vec<String> = records
                .iter()
                .map(|r| match &r.data {
                    RData::SOA(soa) => {
                        format!("{} {} SOA {} {}", r.name, r.ttl, soa.mname, soa.rname)
                    }
                    _ => r.to_string().replace(" IN ", " "),
                })
                .map(|l| format!("{title} {l}"))
                .collect();
            lines.sort();
            lines
        };
        let mut out = vec![format!(
            "{:?}{}",
            answer.rcode,
            if answer.authoritative { " aa" } else { "" }
        )];
        out.extend(section("an", &answer.answers));
        out.extend(section("ad", &answer.additionals));
        out.extend(section("au", &answer.authority));
        out
    }

    /// The SOA of a negative answer in the default zone.
    const NEGATIVE: &str =
        "au cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local.";

    /// Specification 1.1.0, section by section, against [`cluster`].
    #[test]
    fn the_specification_table_answers_as_written() {
        use RecordType::*;
        let zone = cluster();
        let table: &[(&str, RecordType, &[&str])] = &[
            // 2.2 schema version.
            ("dns-version.cluster.local.", TXT, &["NoError aa", "an dns-version.cluster.local. 5 TXT 1.1.0"]),
            // 2.3.1 ClusterIP A/AAAA, every family.
            ("web.default.svc.cluster.local.", A, &["NoError aa", "an web.default.svc.cluster.local. 5 A 10.96.0.10"]),
            ("web.default.svc.cluster.local.", AAAA, &["NoError aa", "an web.default.svc.cluster.local. 5 AAAA fd00::10"]),
            (
                "web.default.svc.cluster.local.",
                ANY,
                &[
                    "NoError aa",
                    "an web.default.svc.cluster.local. 5 A 10.96.0.10",
                    "an web.default.svc.cluster.local. 5 AAAA fd00::10",
                ],
            ),
            // Case-insensitive; the answer keeps the question's spelling.
            ("WeB.DeFault.SVC.Cluster.LOCAL.", A, &["NoError aa", "an WeB.DeFault.SVC.Cluster.LOCAL. 5 A 10.96.0.10"]),
            // An existing name asked for another type is NODATA with the SOA.
            ("web.default.svc.cluster.local.", TXT, &["NoError aa", NEGATIVE]),
            // 2.3.2 SRV for named ports only, with the service port; addresses in additional.
            (
                "_http._tcp.web.default.svc.cluster.local.",
                SRV,
                &[
                    "NoError aa",
                    "an _http._tcp.web.default.svc.cluster.local. 5 SRV 0 100 80 web.default.svc.cluster.local.",
                    "ad web.default.svc.cluster.local. 5 A 10.96.0.10",
                    "ad web.default.svc.cluster.local. 5 AAAA fd00::10",
                ],
            ),
            (
                "_DNS._UDP.web.default.svc.cluster.local.",
                SRV,
                &[
                    "NoError aa",
                    "an _DNS._UDP.web.default.svc.cluster.local. 5 SRV 0 100 53 web.default.svc.cluster.local.",
                    "ad web.default.svc.cluster.local. 5 A 10.96.0.10",
                    "ad web.default.svc.cluster.local. 5 AAAA fd00::10",
                ],
            ),
            ("_http._udp.web.default.svc.cluster.local.", SRV, &["NXDomain aa", NEGATIVE]),
            ("_9000._tcp.web.default.svc.cluster.local.", SRV, &["NXDomain aa", NEGATIVE]),
            ("_http._tcp.web.default.svc.cluster.local.", A, &["NoError aa", NEGATIVE]),
            // `_tcp.<svc>` has SRV names below it: an empty non-terminal.
            ("_tcp.web.default.svc.cluster.local.", SRV, &["NoError aa", NEGATIVE]),
            ("_sctp.web.default.svc.cluster.local.", SRV, &["NXDomain aa", NEGATIVE]),
            // 2.3.3 PTR for ClusterIPs, v4 and v6.
            ("10.0.96.10.in-addr.arpa.", PTR, &["NoError aa", "an 10.0.96.10.in-addr.arpa. 5 PTR web.default.svc.cluster.local."]),
            (
                "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
                PTR,
                &[
                    "NoError aa",
                    "an 0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 5 PTR web.default.svc.cluster.local.",
                ],
            ),
            (
                "10.0.96.10.in-addr.arpa.",
                A,
                &["NoError aa", "au in-addr.arpa. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local."],
            ),
            // 2.4.1 headless: one record per ready endpoint, per family; unready left out.
            (
                "db.default.svc.cluster.local.",
                A,
                &["NoError aa", "an db.default.svc.cluster.local. 5 A 10.1.0.1", "an db.default.svc.cluster.local. 5 A 10.1.0.3"],
            ),
            ("db.default.svc.cluster.local.", AAAA, &["NoError aa", "an db.default.svc.cluster.local. 5 AAAA fd00:1::5"]),
            ("db-0.db.default.svc.cluster.local.", A, &["NoError aa", "an db-0.db.default.svc.cluster.local. 5 A 10.1.0.1"]),
            ("db-0.db.default.svc.cluster.local.", AAAA, &["NoError aa", NEGATIVE]),
            ("db-1.db.default.svc.cluster.local.", A, &["NXDomain aa", NEGATIVE]),
            // Endpoints without a hostname are named by their dashed IP.
            ("10-1-0-3.db.default.svc.cluster.local.", A, &["NoError aa", "an 10-1-0-3.db.default.svc.cluster.local. 5 A 10.1.0.3"]),
            ("fd00-1--5.db.default.svc.cluster.local.", AAAA, &["NoError aa", "an fd00-1--5.db.default.svc.cluster.local. 5 AAAA fd00:1::5"]),
            // Endpoint names exist only under headless Services.
            ("db-0.web.default.svc.cluster.local.", A, &["NXDomain aa", NEGATIVE]),
            // publishNotReadyAddresses: every endpoint counts.
            (
                "pub.default.svc.cluster.local.",
                A,
                &["NoError aa", "an pub.default.svc.cluster.local. 5 A 10.2.0.1", "an pub.default.svc.cluster.local. 5 A 10.2.0.2"],
            ),
            // No ready endpoint: NXDOMAIN (2.4.1).
            ("empty.default.svc.cluster.local.", A, &["NXDomain aa", NEGATIVE]),
            // 2.4.2 headless SRV: one per ready endpoint, endpoint port, targets' addresses added.
            (
                "_pg._tcp.db.default.svc.cluster.local.",
                SRV,
                &[
                    "NoError aa",
                    "an _pg._tcp.db.default.svc.cluster.local. 5 SRV 0 33 15432 10-1-0-3.db.default.svc.cluster.local.",
                    "an _pg._tcp.db.default.svc.cluster.local. 5 SRV 0 33 15432 db-0.db.default.svc.cluster.local.",
                    "an _pg._tcp.db.default.svc.cluster.local. 5 SRV 0 33 15432 fd00-1--5.db.default.svc.cluster.local.",
                    "ad 10-1-0-3.db.default.svc.cluster.local. 5 A 10.1.0.3",
                    "ad db-0.db.default.svc.cluster.local. 5 A 10.1.0.1",
                    "ad fd00-1--5.db.default.svc.cluster.local. 5 AAAA fd00:1::5",
                ],
            ),
            // 2.4.3 PTR for ready headless endpoints.
            ("1.0.1.10.in-addr.arpa.", PTR, &["NoError aa", "an 1.0.1.10.in-addr.arpa. 5 PTR db-0.db.default.svc.cluster.local."]),
            ("3.0.1.10.in-addr.arpa.", PTR, &["NoError aa", "an 3.0.1.10.in-addr.arpa. 5 PTR 10-1-0-3.db.default.svc.cluster.local."]),
            (
                "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa.",
                PTR,
                &[
                    "NoError aa",
                    "an 5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa. 5 PTR fd00-1--5.db.default.svc.cluster.local.",
                ],
            ),
            // An unready endpoint's IP has no PTR here: the forwarder's.
            ("2.0.1.10.in-addr.arpa.", PTR, &["Refused"]),
            // 2.5 ExternalName: a CNAME; out of the zone it is not chased.
            ("ext.default.svc.cluster.local.", A, &["NoError aa", "an ext.default.svc.cluster.local. 5 CNAME www.example.com."]),
            ("ext.default.svc.cluster.local.", CNAME, &["NoError aa", "an ext.default.svc.cluster.local. 5 CNAME www.example.com."]),
            // In the zone it is chased.
            (
                "alias.other.svc.cluster.local.",
                A,
                &[
                    "NoError aa",
                    "an alias.other.svc.cluster.local. 5 CNAME web.default.svc.cluster.local.",
                    "an web.default.svc.cluster.local. 5 A 10.96.0.10",
                ],
            ),
            (
                "alias.other.svc.cluster.local.",
                AAAA,
                &[
                    "NoError aa",
                    "an alias.other.svc.cluster.local. 5 CNAME web.default.svc.cluster.local.",
                    "an web.default.svc.cluster.local. 5 AAAA fd00::10",
                ],
            ),
            (
                "alias.other.svc.cluster.local.",
                CNAME,
                &["NoError aa", "an alias.other.svc.cluster.local. 5 CNAME web.default.svc.cluster.local."],
            ),
            // A chain's rcode is its last name's (RFC 6604).
            (
                "dangling.other.svc.cluster.local.",
                A,
                &["NXDomain aa", "an dangling.other.svc.cluster.local. 5 CNAME gone.default.svc.cluster.local.", NEGATIVE],
            ),
            // 2.6 pod records (insecure by default), v4 and v6.
            ("10-244-1-5.default.pod.cluster.local.", A, &["NoError aa", "an 10-244-1-5.default.pod.cluster.local. 5 A 10.244.1.5"]),
            ("fd00--5.default.pod.cluster.local.", AAAA, &["NoError aa", "an fd00--5.default.pod.cluster.local. 5 AAAA fd00::5"]),
            ("fd00--5.default.pod.cluster.local.", A, &["NoError aa", NEGATIVE]),
            ("not-an-ip.default.pod.cluster.local.", A, &["NXDomain aa", NEGATIVE]),
            // The apex and the names above services.
            ("cluster.local.", SOA, &["NoError aa", "an cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local."]),
            ("cluster.local.", NS, &["NoError aa", "an cluster.local. 5 NS ns.dns.cluster.local."]),
            ("cluster.local.", A, &["NoError aa", NEGATIVE]),
            ("svc.cluster.local.", A, &["NoError aa", NEGATIVE]),
            ("default.svc.cluster.local.", A, &["NoError aa", NEGATIVE]),
            ("nope.svc.cluster.local.", A, &["NXDomain aa", NEGATIVE]),
            ("gone.default.svc.cluster.local.", A, &["NXDomain aa", NEGATIVE]),
            ("www.cluster.local.", A, &["NXDomain aa", NEGATIVE]),
            ("a.b.db-0.db.default.svc.cluster.local.", A, &["NXDomain aa", NEGATIVE]),
            // Not ours.
            ("www.example.com.", A, &["Refused"]),
        ];
        let mut failures = Vec::new();
        for (question, qtype, expected) in table {
            let got = render(&zone.answer(&name(question), *qtype));
            if got != *expected {
                failures.push(format!(
                    "{question} {qtype}:\n  want {expected:#?}\n  got  {got:#?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn external_name_loops_stop_after_a_bounded_chase_with_servfail() {
        let zone = cluster();
        let answer = zone.answer(&name("loop-a.other.svc.cluster.local."), RecordType::A);
        assert_eq!(answer.rcode, ResponseCode::ServFail);
        assert_eq!(answer.answers.len(), MAX_CNAME_CHASE + 1);
        assert!(answer
            .answers
            .iter()
            .all(|r| r.record_type() == RecordType::CNAME));
    }

    #[test]
    fn names_of_the_cluster_domain_and_known_reverse_ips_are_in_the_zone() {
        let zone = cluster();
        assert!(zone.is_in_zone(&name("cluster.local.")));
        assert!(zone.is_in_zone(&name("anything.Cluster.Local.")));
        assert!(zone.is_in_zone(&name("10.0.96.10.in-addr.arpa.")));
        assert!(zone.is_in_zone(&name("1.0.1.10.IN-ADDR.ARPA.")));
        assert!(!zone.is_in_zone(&name("8.8.8.8.in-addr.arpa.")));
        assert!(!zone.is_in_zone(&name("96.10.in-addr.arpa.")));
        assert!(!zone.is_in_zone(&name("010.0.96.10.in-addr.arpa.")));
        assert!(!zone.is_in_zone(&name("www.example.com.")));
        assert!(!zone.is_in_zone(&name("local.")));
    }

    #[test]
    fn pod_records_follow_the_pod_mode() {
        let question = name("10-244-1-5.default.pod.cluster.local.");
        let mut disabled = Zone::new(ZoneConfig {
            pod_mode: PodMode::Disabled,
            ..ZoneConfig::default()
        });
        disabled.upsert_pod(&pod("default", "p", &["10.244.1.5"]));
        assert_eq!(
            disabled.answer(&question, RecordType::A).rcode,
            ResponseCode::NXDomain
        );

        let mut verified = Zone::new(ZoneConfig {
            pod_mode: PodMode::Verified,
            ..ZoneConfig::default()
        });
        assert_eq!(
            verified.answer(&question, RecordType::A).rcode,
            ResponseCode::NXDomain
        );
        verified.upsert_pod(&pod("default", "p", &["10.244.1.5", "fd00::5"]));
        let answer = verified.answer(&question, RecordType::A);
        assert_eq!(
            render(&answer),
            [
                "NoError aa",
                "an 10-244-1-5.default.pod.cluster.local. 5 A 10.244.1.5"
            ]
        );
        let v6 = verified.answer(
            &name("fd00--5.default.pod.cluster.local."),
            RecordType::AAAA,
        );
        assert_eq!(v6.answers.len(), 1);
        // The same IP in another namespace is not that pod.
        let other = verified.answer(&name("10-244-1-5.other.pod.cluster.local."), RecordType::A);
        assert_eq!(other.rcode, ResponseCode::NXDomain);
        // Two hostNetwork pods share an IP: removing one keeps the record.
        verified.upsert_pod(&pod("default", "q", &["10.244.1.5"]));
        verified.remove_pod("default", "p");
        assert_eq!(
            verified.answer(&question, RecordType::A).rcode,
            ResponseCode::NoError
        );
        verified.remove_pod("default", "q");
        assert_eq!(
            verified.answer(&question, RecordType::A).rcode,
            ResponseCode::NXDomain
        );
        // A finished pod no longer owns its IP.
        let mut done = pod("default", "p", &["10.244.1.5"]);
        verified.upsert_pod(&done);
        assert_eq!(
            verified.answer(&question, RecordType::A).rcode,
            ResponseCode::NoError
        );
        done.status.as_mut().expect("test pod has a status").phase = Some("Succeeded".to_owned());
        verified.upsert_pod(&done);
        assert_eq!(
            verified.answer(&question, RecordType::A).rcode,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn deleting_a_service_makes_its_names_nxdomain_and_changes_the_serial() {
        let mut zone = cluster();
        let before = zone.serial();
        zone.remove_service("default", "web");
        assert_ne!(zone.serial(), before);
        for (question, qtype) in [
            ("web.default.svc.cluster.local.", RecordType::A),
            ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ] {
            let answer = zone.answer(&name(question), qtype);
            assert_eq!(answer.rcode, ResponseCode::NXDomain, "{question}");
            match &answer.authority[..] {
                [soa] => match &soa.data {
                    RData::SOA(soa) => assert_eq!(soa.serial, zone.serial()),
                    other => panic!("authority holds {other}"),
                },
                other => panic!("authority is {other:?}"),
            }
        }
        assert!(!zone.is_in_zone(&name("10.0.96.10.in-addr.arpa.")));
        // The chased alias now ends in NXDOMAIN.
        let alias = zone.answer(&name("alias.other.svc.cluster.local."), RecordType::A);
        assert_eq!(alias.rcode, ResponseCode::NXDomain);
        // The namespace still holds services; a namespace emptied of them disappears.
        assert_eq!(
            zone.answer(&name("default.svc.cluster.local."), RecordType::A)
                .rcode,
            ResponseCode::NoError
        );
        for svc in ["alias", "dangling", "loop-a", "loop-b"] {
            zone.remove_service("other", svc);
        }
        assert_eq!(
            zone.answer(&name("other.svc.cluster.local."), RecordType::A)
                .rcode,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn an_updated_slice_replaces_the_addresses_of_its_service() {
        let mut zone = cluster();
        let pg = json!([{"name": "pg", "port": 15432, "protocol": "TCP"}]);
        zone.upsert_slice(&slice(
            "default",
            "db-v4",
            "db",
            "IPv4",
            pg,
            &[
                ("10.1.0.9", Some("db-0"), Some(true)),
                ("10.1.0.2", Some("db-1"), Some(true)),
            ],
        ));
        let answer = zone.answer(&name("db.default.svc.cluster.local."), RecordType::A);
        assert_eq!(
            render(&answer),
            [
                "NoError aa",
                "an db.default.svc.cluster.local. 5 A 10.1.0.2",
                "an db.default.svc.cluster.local. 5 A 10.1.0.9"
            ]
        );
        let pet = zone.answer(&name("db-0.db.default.svc.cluster.local."), RecordType::A);
        assert_eq!(
            render(&pet),
            [
                "NoError aa",
                "an db-0.db.default.svc.cluster.local. 5 A 10.1.0.9"
            ]
        );
        // The old IPs lost their PTR; the new ones have it.
        assert!(!zone.is_in_zone(&name("1.0.1.10.in-addr.arpa.")));
        assert!(!zone.is_in_zone(&name("3.0.1.10.in-addr.arpa.")));
        let ptr = zone.answer(&name("9.0.1.10.in-addr.arpa."), RecordType::PTR);
        assert_eq!(
            render(&ptr),
            [
                "NoError aa",
                "an 9.0.1.10.in-addr.arpa. 5 PTR db-0.db.default.svc.cluster.local."
            ]
        );
        // Removing every slice leaves a headless service without ready endpoints: NXDOMAIN.
        zone.remove_slice("default", "db-v4");
        zone.remove_slice("default", "db-v6");
        assert_eq!(
            zone.answer(&name("db.default.svc.cluster.local."), RecordType::A)
                .rcode,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn slices_seen_before_their_service_serve_once_it_arrives() {
        let mut zone = Zone::new(ZoneConfig::default());
        zone.upsert_slice(&slice(
            "ns",
            "late-1",
            "late",
            "IPv4",
            json!([]),
            &[("10.5.0.1", None, Some(true))],
        ));
        let question = name("late.ns.svc.cluster.local.");
        assert_eq!(
            zone.answer(&question, RecordType::A).rcode,
            ResponseCode::NXDomain
        );
        zone.upsert_service(&service("ns", "late", json!({"clusterIP": "None"})));
        assert_eq!(
            render(&zone.answer(&question, RecordType::A)),
            ["NoError aa", "an late.ns.svc.cluster.local. 5 A 10.5.0.1"]
        );
    }

    #[test]
    fn an_unchanged_object_does_not_change_the_serial() {
        let mut zone = cluster();
        let serial = zone.serial();
        zone.upsert_service(&service(
            "default",
            "db",
            json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": 15432}]}),
        ));
        zone.upsert_slice(&slice(
            "default",
            "empty-1",
            "empty",
            "IPv4",
            json!([]),
            &[("10.3.0.1", None, Some(false))],
        ));
        zone.remove_service("default", "never-existed");
        assert_eq!(zone.serial(), serial);
    }

    #[test]
    fn a_custom_domain_and_ttl_are_used_everywhere() {
        let mut zone = Zone::new(ZoneConfig {
            domain: name("Corp.Example."),
            ttl: 30,
            ..ZoneConfig::default()
        });
        zone.upsert_service(&service(
            "default",
            "web",
            json!({"clusterIP": "10.96.0.10"}),
        ));
        let answer = zone.answer(&name("web.default.svc.corp.example."), RecordType::A);
        assert_eq!(
            render(&answer),
            [
                "NoError aa",
                "an web.default.svc.corp.example. 30 A 10.96.0.10"
            ]
        );
        let ptr = zone.answer(&name("10.0.96.10.in-addr.arpa."), RecordType::PTR);
        assert_eq!(
            render(&ptr),
            [
                "NoError aa",
                "an 10.0.96.10.in-addr.arpa. 30 PTR web.default.svc.corp.example."
            ]
        );
        let miss = zone.answer(&name("x.corp.example."), RecordType::A);
        assert_eq!(
            render(&miss),
            [
                "NXDomain aa",
                "au corp.example. 30 SOA ns.dns.corp.example. hostmaster.corp.example."
            ]
        );
        assert!(!zone.is_in_zone(&name("web.default.svc.cluster.local.")));
    }

    #[test]
    fn a_slice_relabelled_to_another_service_moves_its_endpoints() {
        let mut zone = Zone::new(ZoneConfig::default());
        for svc in ["a", "b"] {
            zone.upsert_service(&service("ns", svc, json!({"clusterIP": "None"})));
        }
        let endpoints = [("10.6.0.1", None, Some(true))];
        zone.upsert_slice(&slice("ns", "s", "a", "IPv4", json!([]), &endpoints));
        let a = name("a.ns.svc.cluster.local.");
        let b = name("b.ns.svc.cluster.local.");
        assert_eq!(zone.answer(&a, RecordType::A).answers.len(), 1);
        zone.upsert_slice(&slice("ns", "s", "b", "IPv4", json!([]), &endpoints));
        assert_eq!(zone.answer(&a, RecordType::A).rcode, ResponseCode::NXDomain);
        assert_eq!(zone.answer(&b, RecordType::A).answers.len(), 1);
        let ptr = zone.answer(&name("1.0.6.10.in-addr.arpa."), RecordType::PTR);
        assert_eq!(
            render(&ptr),
            [
                "NoError aa",
                "an 1.0.6.10.in-addr.arpa. 5 PTR 10-6-0-1.b.ns.svc.cluster.local."
            ]
        );
        // Without the service-name label a slice belongs to no Service.
        let mut unlabelled = slice("ns", "s", "b", "IPv4", json!([]), &endpoints);
        unlabelled.metadata.labels = None;
        zone.upsert_slice(&unlabelled);
        assert_eq!(zone.answer(&b, RecordType::A).rcode, ResponseCode::NXDomain);
        assert!(!zone.is_in_zone(&name("1.0.6.10.in-addr.arpa.")));
    }

    #[test]
    fn a_service_turned_external_name_loses_its_cluster_ip_records() {
        let mut zone = cluster();
        zone.upsert_service(&service(
            "default",
            "web",
            json!({"type": "ExternalName", "externalName": "web.example.com"}),
        ));
        let answer = zone.answer(&name("web.default.svc.cluster.local."), RecordType::A);
        assert_eq!(
            render(&answer),
            [
                "NoError aa",
                "an web.default.svc.cluster.local. 5 CNAME web.example.com."
            ]
        );
        assert!(!zone.is_in_zone(&name("10.0.96.10.in-addr.arpa.")));
        let srv = zone.answer(
            &name("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(srv.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn a_dual_stack_pet_has_one_srv_target_with_both_addresses() {
        let mut zone = Zone::new(ZoneConfig::default());
        zone.upsert_service(&service("ns", "set", json!({"clusterIP": "None"})));
        let ports = json!([{"name": "peer", "port": 7000, "protocol": "TCP"}]);
        zone.upsert_slice(&slice(
            "ns",
            "set-v4",
            "set",
            "IPv4",
            ports.clone(),
            &[("10.7.0.1", Some("set-0"), Some(true))],
        ));
        zone.upsert_slice(&slice(
            "ns",
            "set-v6",
            "set",
            "IPv6",
            ports,
            &[("fd00:7::1", Some("set-0"), Some(true))],
        ));
        let srv = zone.answer(
            &name("_peer._tcp.set.ns.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(
            render(&srv),
            [
                "NoError aa",
                "an _peer._tcp.set.ns.svc.cluster.local. 5 SRV 0 100 7000 set-0.set.ns.svc.cluster.local.",
                "ad set-0.set.ns.svc.cluster.local. 5 A 10.7.0.1",
                "ad set-0.set.ns.svc.cluster.local. 5 AAAA fd00:7::1",
            ]
        );
        let pet = zone.answer(&name("set-0.set.ns.svc.cluster.local."), RecordType::ANY);
        assert_eq!(pet.answers.len(), 2);
    }

    #[test]
    fn pods_without_ips_do_not_change_a_verified_zone() {
        let mut zone = Zone::new(ZoneConfig {
            pod_mode: PodMode::Verified,
            ..ZoneConfig::default()
        });
        let serial = zone.serial();
        zone.upsert_pod(&pod("ns", "pending", &[]));
        zone.remove_pod("ns", "pending");
        assert_eq!(zone.serial(), serial);
        zone.upsert_pod(&pod("ns", "running", &["10.8.0.1"]));
        assert_ne!(zone.serial(), serial);
    }
}
