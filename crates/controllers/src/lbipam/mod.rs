//! Load-balancer IP address management: which address a `type: LoadBalancer` Service gets from
//! the MetalLB `IPAddressPool`s. This is the pure core of the allocation controller, modelled on
//! MetalLB's `internal/allocator/allocator.go` and `controller/service.go`: pools are parsed once
//! ([`Allocator::new`]), Services are then assigned ([`Allocator::assign`]), re-registered from
//! their status at startup ([`Allocator::restore`]) and released ([`Allocator::release`]). It does
//! no I/O; the loop around it ([`controller::LoadBalancerController`]) writes
//! `status.loadBalancer.ingress`, the `metallb.io/ip-allocated-from-pool` annotation and an
//! `AllocationFailed` Event for every [`AllocationError`].
//!
//! Unlike MetalLB, which walks its pools in Go map order, the choice here is deterministic: the
//! lowest usable address of the first eligible pool in name order, so the same cluster state
//! always yields the same assignments.

pub mod controller;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use switchyard_api::k8s::api::core::v1::Service;
use switchyard_api::metallb::IPAddressPool;

/// Requests specific addresses (comma-separated, at most one per IP family).
pub const LOAD_BALANCER_IPS_ANNOTATION: &str = "metallb.io/loadBalancerIPs";
/// Restricts allocation to the named pool (which may have `autoAssign: false`).
pub const ADDRESS_POOL_ANNOTATION: &str = "metallb.io/address-pool";
/// Sharing key: Services with equal keys may share an address when their ports do not overlap.
pub const ALLOW_SHARED_IP_ANNOTATION: &str = "metallb.io/allow-shared-ip";
/// Written by the controller: the pool an assigned address came from.
pub const ALLOCATED_FROM_POOL_ANNOTATION: &str = "metallb.io/ip-allocated-from-pool";
/// MetalLB's legacy annotation prefix, still honoured (MetalLB reads both).
const LEGACY_PREFIX: &str = "metallb.universe.tf/";

/// Why a pool could not be parsed. Reported against the `IPAddressPool`, not a Service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A pool without a name.
    #[error("IPAddressPool without metadata.name")]
    Unnamed,
    /// Two pools with the same name.
    #[error("duplicate IPAddressPool {0:?}")]
    Duplicate(String),
    /// An entry of `spec.addresses` that is neither a CIDR nor a `start-end` range.
    #[error("IPAddressPool {pool:?}: invalid address range {range:?}: {reason}")]
    InvalidRange {
        /// The pool's name.
        pool: String,
        /// The offending entry.
        range: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two ranges (possibly of different pools) share addresses; MetalLB's config validation
    /// rejects this too (`internal/config`: "overlaps with already defined CIDR").
    #[error("IPAddressPool {pool:?}: range {range:?} overlaps pool {other:?}")]
    Overlap {
        /// The pool whose range was found overlapping.
        pool: String,
        /// The offending entry.
        range: String,
        /// The pool it overlaps.
        other: String,
    },
}

/// Why a Service could not get (or keep) an address; each becomes an `AllocationFailed` Event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// No eligible pool has a usable address left.
    #[error("no available IPs")]
    NoAvailableIps,
    /// The pool named by `metallb.io/address-pool` has no usable address left.
    #[error("no available IPs in pool {0:?}")]
    PoolExhausted(String),
    /// `metallb.io/address-pool` names a pool that does not exist.
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    /// A requested (or, on restore, previously assigned) address is in no pool.
    #[error("{0} is not allowed in config")]
    NotInAnyPool(IpAddr),
    /// A requested address belongs to another pool than the one named by the annotation.
    #[error("requested IP {ip} is in pool {actual:?}, not in pool {requested:?}")]
    WrongPool {
        /// The requested address.
        ip: IpAddr,
        /// The pool it belongs to.
        actual: String,
        /// The pool the annotation asked for.
        requested: String,
    },
    /// The address is held by a Service it may not be shared with.
    #[error("{ip} is already in use by {holders} and cannot be shared: {reason}")]
    InUse {
        /// The contested address.
        ip: IpAddr,
        /// The Services holding it, comma-separated.
        holders: String,
        /// Why sharing is refused.
        reason: String,
    },
    /// The request itself is malformed (unparsable IP, both request fields set, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// The outcome of a successful assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// One address per IP family of the Service, in the Service's family order.
    pub ips: Vec<IpAddr>,
    /// The pool they came from (the value of `metallb.io/ip-allocated-from-pool`).
    pub pool: String,
}

/// One port a Service uses on its address: what two sharing Services must not both claim.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    protocol: String,
    port: i32,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// Sharing compatibility key, as MetalLB's `key{sharing, backend}`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    /// `metallb.io/allow-shared-ip`; empty means "do not share".
    sharing: String,
    /// For `externalTrafficPolicy: Local` the selector (the backends must be the same pods,
    /// else traffic to the shared IP would reach nodes without local endpoints); empty for
    /// `Cluster`. MetalLB `controller/service.go` (`backendKey`).
    backend: String,
}

#[derive(Clone, Debug)]
struct Alloc {
    pool: String,
    ips: Vec<IpAddr>,
    ports: BTreeSet<Port>,
    key: Key,
}

/// An inclusive address range of one family, as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    v6: bool,
    start: u128,
    end: u128,
}

impl Range {
    fn contains(&self, ip: IpAddr) -> bool {
        let (v6, n) = to_int(ip);
        v6 == self.v6 && self.start <= n && n <= self.end
    }
}

#[derive(Clone, Debug)]
struct Pool {
    name: String,
    ranges: Vec<Range>,
    auto_assign: bool,
    avoid_buggy_ips: bool,
}

impl Pool {
    fn owns(&self, ip: IpAddr) -> bool {
        // MetalLB `poolFor`: with avoidBuggyIPs the .0/.255 addresses are not the pool's at all.
        !(self.avoid_buggy_ips && confuses_buggy_firmware(ip))
            && self.ranges.iter().any(|r| r.contains(ip))
    }
}

/// Tracks the pools and which Service holds which address.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    /// Sorted by name: the order of automatic allocation.
    pools: Vec<Pool>,
    /// Service key → its allocation.
    allocated: BTreeMap<String, Alloc>,
    /// Address → the Services using it.
    users: BTreeMap<IpAddr, BTreeSet<String>>,
}

impl Allocator {
    /// Parses the pools. Each `spec.addresses` entry is a CIDR (`192.168.1.0/24`, host bits are
    /// ignored as Go's `net.ParseCIDR` does) or an inclusive range `start-end` of one family.
    pub fn new(pools: &[IPAddressPool]) -> Result<Self, PoolError> {
        let mut parsed: Vec<Pool> = Vec::with_capacity(pools.len());
        for p in pools {
            let name = p.metadata.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(PoolError::Unnamed);
            }
            if parsed.iter().any(|q| q.name == name) {
                return Err(PoolError::Duplicate(name));
            }
            let mut ranges = Vec::new();
            for text in &p.spec.addresses {
                let range = parse_range(text).map_err(|reason| PoolError::InvalidRange {
                    pool: name.clone(),
                    range: text.clone(),
                    reason,
                })?;
                let overlapping = parsed
                    .iter()
                    .flat_map(|q| q.ranges.iter().map(move |r| (q.name.as_str(), r)))
                    .chain(ranges.iter().map(|r| (name.as_str(), r)))
                    .find(|(_, r)| {
                        r.v6 == range.v6 && r.start <= range.end && range.start <= r.end
                    });
                if let Some((other, _)) = overlapping {
                    return Err(PoolError::Overlap {
                        pool: name.clone(),
                        range: text.clone(),
                        other: other.to_owned(),
                    });
                }
                ranges.push(range);
            }
            parsed.push(Pool {
                name,
                ranges,
                auto_assign: p.spec.auto_assign.unwrap_or(true),
                avoid_buggy_ips: p.spec.avoid_buggy_ips.unwrap_or(false),
            });
        }
        parsed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Allocator {
            pools: parsed,
            ..Allocator::default()
        })
    }

    /// Whether this allocator is responsible for `svc`: `type: LoadBalancer` without a
    /// `spec.loadBalancerClass` (MetalLB without `--lb-class` ignores every classed Service,
    /// `controller/main.go` / `service.go`: "not our class").
    pub fn manages(svc: &Service) -> bool {
        let Some(spec) = &svc.spec else { return false };
        spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.is_none()
    }

    /// Assigns addresses to `svc` (one per IP family), keeping an existing assignment while it
    /// still satisfies the request. Returns `Ok(None)` (and releases anything held) for Services
    /// this allocator does not manage ([`Allocator::manages`]). On error an existing assignment
    /// is left in place; the caller decides whether to release it.
    ///
    /// Requested addresses come from `metallb.io/loadBalancerIPs` or the deprecated
    /// `spec.loadBalancerIP` (not both). Otherwise `metallb.io/address-pool` selects the pool
    /// (even one with `autoAssign: false`), or else the auto-assign pools are tried in name
    /// order. An address in use may be shared when both Services carry the same
    /// `metallb.io/allow-shared-ip` key, the same backend key and disjoint ports.
    pub fn assign(
        &mut self,
        service_key: &str,
        svc: &Service,
    ) -> Result<Option<Assignment>, AllocationError> {
        if !Self::manages(svc) {
            self.release(service_key);
            return Ok(None);
        }
        let req = Request::of(svc)?;

        if !req.ips.is_empty() {
            let pool = self.pool_of_requested(&req)?;
            return self.commit_checked(service_key, &req, req.ips.clone(), pool);
        }

        // Keep what the Service already holds if it still fits the request: assignments do not
        // move (MetalLB `Allocate`/`AllocateFromPool` re-assign the existing IP first).
        if let Some(old) = self.allocated.get(service_key).cloned() {
            let pool_ok = req.pool.as_ref().is_none_or(|p| *p == old.pool);
            let families_ok = old
                .ips
                .iter()
                .map(|ip| ip.is_ipv6())
                .eq(req.families.iter().copied());
            if pool_ok
                && families_ok
                && old
                    .ips
                    .iter()
                    .all(|ip| self.owner_pool(*ip) == Some(old.pool.as_str()))
            {
                if let Ok(a) = self.commit_checked(service_key, &req, old.ips.clone(), old.pool) {
                    return Ok(a);
                }
            }
        }

        let candidates: Vec<usize> = match &req.pool {
            Some(name) => match self.pools.iter().position(|p| p.name == *name) {
                Some(i) => vec![i],
                None => return Err(AllocationError::UnknownPool(name.clone())),
            },
            // MetalLB `Allocate`: pools with autoAssign=false are only used when asked for.
            None => (0..self.pools.len())
                .filter(|i| self.pools[*i].auto_assign)
                .collect(),
        };
        for i in candidates {
            let mut ips = Vec::new();
            for &v6 in &req.families {
                match self.lowest_usable(service_key, &req, &self.pools[i], v6) {
                    Some(ip) => ips.push(ip),
                    None => break,
                }
            }
            if ips.len() == req.families.len() {
                let pool = self.pools[i].name.clone();
                self.commit(service_key, &req, ips.clone(), pool.clone());
                return Ok(Some(Assignment { ips, pool }));
            }
        }
        Err(match req.pool {
            Some(name) => AllocationError::PoolExhausted(name),
            None => AllocationError::NoAvailableIps,
        })
    }

    /// Re-registers the addresses `svc` already has in `status.loadBalancer.ingress`, so that
    /// assignments survive a controller restart unchanged (MetalLB's controller likewise
    /// `Assign`s the status IP before anything else). Call it for every Service before the first
    /// [`Allocator::assign`]. `Ok(None)` when the Service is not managed or has no address yet;
    /// [`AllocationError::NotInAnyPool`] when a recorded address is no longer in any pool (the
    /// caller reports it and clears the status so that the next `assign` picks a new address).
    pub fn restore(
        &mut self,
        service_key: &str,
        svc: &Service,
    ) -> Result<Option<Assignment>, AllocationError> {
        if !Self::manages(svc) {
            return Ok(None);
        }
        let mut ips = Vec::new();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            if let Some(text) = &ing.ip {
                let ip: IpAddr = text.parse().map_err(|_| {
                    AllocationError::InvalidRequest(format!("status IP {text:?} is not an IP"))
                })?;
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        if ips.is_empty() {
            return Ok(None);
        }
        let mut req = Request::of(svc)?;
        // The status, not the request, is the truth at restore time; the next `assign`
        // reconciles any difference.
        req.families = ips.iter().map(|ip| ip.is_ipv6()).collect();
        let mut pool = None;
        for ip in &ips {
            match self.owner_pool(*ip) {
                Some(p) => pool = pool.or(Some(p.to_owned())),
                None => return Err(AllocationError::NotInAnyPool(*ip)),
            }
        }
        let pool = pool.unwrap_or_default();
        self.commit_checked(service_key, &req, ips, pool)
    }

    /// Frees whatever `service_key` holds; an address shared with others stays theirs.
    /// Returns whether anything was held.
    pub fn release(&mut self, service_key: &str) -> bool {
        let Some(old) = self.allocated.remove(service_key) else {
            return false;
        };
        for ip in old.ips {
            if let Some(users) = self.users.get_mut(&ip) {
                users.remove(service_key);
                if users.is_empty() {
                    self.users.remove(&ip);
                }
            }
        }
        true
    }

    /// The addresses `service_key` currently holds (empty if none).
    pub fn ips(&self, service_key: &str) -> &[IpAddr] {
        self.allocated
            .get(service_key)
            .map_or(&[], |a| a.ips.as_slice())
    }

    /// The pool `service_key`'s addresses came from.
    pub fn pool(&self, service_key: &str) -> Option<&str> {
        self.allocated.get(service_key).map(|a| a.pool.as_str())
    }

    /// The pool that owns `ip`, if any.
    pub fn owner_pool(&self, ip: IpAddr) -> Option<&str> {
        self.pools
            .iter()
            .find(|p| p.owns(ip))
            .map(|p| p.name.as_str())
    }

    /// Checks that requested addresses are in a pool (the annotated one, if any), all the same.
    fn pool_of_requested(&self, req: &Request) -> Result<String, AllocationError> {
        let mut pool: Option<String> = None;
        for ip in &req.ips {
            let Some(actual) = self.owner_pool(*ip) else {
                return Err(AllocationError::NotInAnyPool(*ip));
            };
            if let Some(requested) = req.pool.as_ref().filter(|r| r.as_str() != actual) {
                return Err(AllocationError::WrongPool {
                    ip: *ip,
                    actual: actual.to_owned(),
                    requested: requested.clone(),
                });
            }
            pool.get_or_insert_with(|| actual.to_owned());
        }
        pool.ok_or_else(|| AllocationError::InvalidRequest("no address requested".into()))
    }

    /// The lowest address of `pool` in family `v6` that `service_key` may use.
    fn lowest_usable(
        &self,
        service_key: &str,
        req: &Request,
        pool: &Pool,
        v6: bool,
    ) -> Option<IpAddr> {
        for range in pool.ranges.iter().filter(|r| r.v6 == v6) {
            let mut n = range.start;
            loop {
                let ip = from_int(v6, n);
                // MetalLB `AllocateFromPool` walks the pool in order and takes the first address
                // `Assign` accepts, so a sharing Service lands on a compatible shared address.
                if !(pool.avoid_buggy_ips && confuses_buggy_firmware(ip))
                    && self.check(service_key, req, ip).is_ok()
                {
                    return Some(ip);
                }
                if n == range.end {
                    break;
                }
                n += 1;
            }
        }
        None
    }

    /// Whether `service_key` may use `ip` alongside its current users (MetalLB `Assign` and
    /// `sharingOK`): same non-empty sharing key, same backend key, no port in common.
    fn check(&self, service_key: &str, req: &Request, ip: IpAddr) -> Result<(), AllocationError> {
        let Some(users) = self.users.get(&ip) else {
            return Ok(());
        };
        let others: Vec<&String> = users.iter().filter(|u| *u != service_key).collect();
        if others.is_empty() {
            return Ok(());
        }
        let refuse = |reason: String| AllocationError::InUse {
            ip,
            holders: others
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            reason,
        };
        for other in &others {
            let Some(alloc) = self.allocated.get(*other) else {
                continue;
            };
            if alloc.key.sharing.is_empty() {
                return Err(refuse("existing service does not allow sharing".into()));
            }
            if req.key.sharing.is_empty() {
                return Err(refuse("new service does not allow sharing".into()));
            }
            if alloc.key.sharing != req.key.sharing {
                return Err(refuse(format!(
                    "sharing key {:?} does not match existing sharing key {:?}",
                    req.key.sharing, alloc.key.sharing
                )));
            }
            if alloc.key.backend != req.key.backend {
                return Err(refuse(format!(
                    "backend key {:?} does not match existing backend key {:?}",
                    req.key.backend, alloc.key.backend
                )));
            }
            if let Some(port) = req.ports.intersection(&alloc.ports).next() {
                return Err(refuse(format!("port {port} is already in use")));
            }
        }
        Ok(())
    }

    fn commit_checked(
        &mut self,
        service_key: &str,
        req: &Request,
        ips: Vec<IpAddr>,
        pool: String,
    ) -> Result<Option<Assignment>, AllocationError> {
        for ip in &ips {
            self.check(service_key, req, *ip)?;
        }
        self.commit(service_key, req, ips.clone(), pool.clone());
        Ok(Some(Assignment { ips, pool }))
    }

    fn commit(&mut self, service_key: &str, req: &Request, ips: Vec<IpAddr>, pool: String) {
        self.release(service_key);
        for ip in &ips {
            self.users
                .entry(*ip)
                .or_default()
                .insert(service_key.to_owned());
        }
        self.allocated.insert(
            service_key.to_owned(),
            Alloc {
                pool,
                ips,
                ports: req.ports.clone(),
                key: req.key.clone(),
            },
        );
    }
}

/// What a Service asks for, read from its spec and annotations.
struct Request {
    /// Explicitly requested addresses.
    ips: Vec<IpAddr>,
    /// `metallb.io/address-pool`.
    pool: Option<String>,
    /// One entry per wanted address: `true` for IPv6.
    families: Vec<bool>,
    ports: BTreeSet<Port>,
    key: Key,
}

impl Request {
    fn of(svc: &Service) -> Result<Self, AllocationError> {
        let spec = svc.spec.clone().unwrap_or_default();
        let annotation = |name: &str| -> Option<String> {
            let annotations = svc.metadata.annotations.as_ref()?;
            let suffix = name.strip_prefix("metallb.io/").unwrap_or(name);
            annotations
                .get(name)
                .or_else(|| annotations.get(&format!("{LEGACY_PREFIX}{suffix}")))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let from_annotation = annotation(LOAD_BALANCER_IPS_ANNOTATION);
        let from_spec = spec.load_balancer_ip.clone().filter(|s| !s.is_empty());
        // MetalLB `controller/service.go` (`getDesiredLbIPs`): the two are mutually exclusive.
        let texts: Vec<String> = match (from_annotation, from_spec) {
            (Some(_), Some(_)) => {
                return Err(AllocationError::InvalidRequest(format!(
                    "service can not have both {LOAD_BALANCER_IPS_ANNOTATION} and \
                     spec.loadBalancerIP"
                )));
            }
            (Some(a), None) => a.split(',').map(|s| s.trim().to_owned()).collect(),
            (None, Some(s)) => vec![s],
            (None, None) => Vec::new(),
        };
        let mut ips = Vec::new();
        for t in texts {
            let ip: IpAddr = t
                .parse()
                .map_err(|_| AllocationError::InvalidRequest(format!("invalid IP {t:?}")))?;
            ips.push(ip);
        }
        if ips.len() > 2 || (ips.len() == 2 && ips[0].is_ipv6() == ips[1].is_ipv6()) {
            return Err(AllocationError::InvalidRequest(
                "at most one requested IP per family".into(),
            ));
        }

        let families: Vec<bool> = if !ips.is_empty() {
            ips.iter().map(|ip| ip.is_ipv6()).collect()
        } else {
            match &spec.ip_families {
                Some(f) if !f.is_empty() => f.iter().map(|f| f == "IPv6").collect(),
                _ => vec![false],
            }
        };

        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| Port {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                port: p.port,
            })
            .collect();

        let backend = if spec.external_traffic_policy.as_deref() == Some("Local") {
            // Go's `labels.Set.String()`: sorted `k=v` joined by commas.
            spec.selector
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            String::new()
        };

        Ok(Request {
            ips,
            pool: annotation(ADDRESS_POOL_ANNOTATION),
            families,
            ports,
            key: Key {
                sharing: annotation(ALLOW_SHARED_IP_ANNOTATION).unwrap_or_default(),
                backend,
            },
        })
    }
}

/// MetalLB `ipConfusesBuggyFirmwares`: IPv4 addresses ending in .0 or .255 trip smurf
/// protection on some consumer routers.
fn confuses_buggy_firmware(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(v4.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

fn to_int(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

fn from_int(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

fn parse_range(text: &str) -> Result<Range, String> {
    let text = text.trim();
    if let Some((addr, prefix)) = text.split_once('/') {
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let (v6, n) = to_int(ip);
        let bits: u32 = if v6 { 128 } else { 32 };
        let len: u32 = prefix
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= bits)
            .ok_or_else(|| format!("invalid prefix length {prefix:?}"))?;
        let host_bits = bits - len;
        let host_mask: u128 = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let start = n & !host_mask;
        Ok(Range {
            v6,
            start,
            end: start | host_mask,
        })
    } else if let Some((a, b)) = text.split_once('-') {
        let parse = |s: &str| -> Result<IpAddr, String> {
            s.trim()
                .parse()
                .map_err(|_| format!("{:?} is not an IP address", s.trim()))
        };
        let (v6a, start) = to_int(parse(a)?);
        let (v6b, end) = to_int(parse(b)?);
        if v6a != v6b {
            return Err("range mixes IPv4 and IPv6".into());
        }
        if start > end {
            return Err("range start is after its end".into());
        }
        Ok(Range {
            v6: v6a,
            start,
            end,
        })
    } else {
        Err("expected a CIDR or a start-end range".into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use switchyard_api::k8s::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };
    use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use switchyard_api::metallb::IPAddressPoolSpec;

    fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
        IPAddressPool {
            api_version: String::new(),
            kind: String::new(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: IPAddressPoolSpec {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                ..IPAddressPoolSpec::default()
            },
            status: None,
        }
    }

    fn svc(ports: &[(&str, i32)], annotations: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(proto, port)| ServicePort {
                            protocol: Some(proto.to_string()),
                            port: *port,
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn web() -> Service {
        svc(&[("TCP", 80)], &[])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn assigned(a: &mut Allocator, key: &str, s: &Service) -> Assignment {
        a.assign(key, s).unwrap().unwrap()
    }

    #[test]
    fn cidr_pool_hands_out_lowest_addresses_in_order() {
        let mut a = Allocator::new(&[pool("p", &["10.0.0.0/30"])]).unwrap();
        assert_eq!(assigned(&mut a, "ns/a", &web()).ips, vec![ip("10.0.0.0")]);
        assert_eq!(assigned(&mut a, "ns/b", &web()).ips, vec![ip("10.0.0.1")]);
        // Re-assigning keeps the address.
        let again = assigned(&mut a, "ns/a", &web());
        assert_eq!(
            again,
            Assignment {
                ips: vec![ip("10.0.0.0")],
                pool: "p".into()
            }
        );
    }

    #[test]
    fn range_pool_and_invalid_pools() {
        let mut a = Allocator::new(&[pool("r", &["192.168.1.10 - 192.168.1.11"])]).unwrap();
        assert_eq!(assigned(&mut a, "a", &web()).ips, vec![ip("192.168.1.10")]);
        assert_eq!(assigned(&mut a, "b", &web()).ips, vec![ip("192.168.1.11")]);
        assert_eq!(a.assign("c", &web()), Err(AllocationError::NoAvailableIps));

        assert!(matches!(
            Allocator::new(&[pool("x", &["10.0.0.5-10.0.0.1"])]),
            Err(PoolError::InvalidRange { .. })
        ));
        assert!(matches!(
            Allocator::new(&[pool("x", &["10.0.0.1"])]),
            Err(PoolError::InvalidRange { .. })
        ));
        assert!(matches!(
            Allocator::new(&[pool("x", &["10.0.0.0/24"]), pool("y", &["10.0.0.128/25"])]),
            Err(PoolError::Overlap { .. })
        ));
        assert!(matches!(
            Allocator::new(&[pool("x", &["10.0.0.0/33"])]),
            Err(PoolError::InvalidRange { .. })
        ));
    }

    #[test]
    fn ipv6_pool() {
        let mut a = Allocator::new(&[pool("v6", &["fd00::/126"])]).unwrap();
        let mut s = web();
        if let Some(spec) = s.spec.as_mut() {
            spec.ip_families = Some(vec!["IPv6".into()]);
        }
        assert_eq!(assigned(&mut a, "a", &s).ips, vec![ip("fd00::")]);
        // An IPv4 Service finds nothing in an IPv6-only pool.
        assert_eq!(a.assign("b", &web()), Err(AllocationError::NoAvailableIps));
    }

    #[test]
    fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
        let mut p = pool("p", &["10.0.0.255-10.0.1.1"]);
        p.spec.avoid_buggy_ips = Some(true);
        let mut a = Allocator::new(&[p]).unwrap();
        assert_eq!(assigned(&mut a, "a", &web()).ips, vec![ip("10.0.1.1")]);
        assert_eq!(a.assign("b", &web()), Err(AllocationError::NoAvailableIps));
        // Requested buggy addresses are not the pool's either.
        let req = svc(
            &[("TCP", 80)],
            &[(LOAD_BALANCER_IPS_ANNOTATION, "10.0.1.0")],
        );
        assert_eq!(
            a.assign("c", &req),
            Err(AllocationError::NotInAnyPool(ip("10.0.1.0")))
        );
    }

    #[test]
    fn auto_assign_false_pool_used_only_on_request() {
        let mut manual = pool("a-manual", &["10.1.0.0/30"]);
        manual.spec.auto_assign = Some(false);
        let mut a = Allocator::new(&[manual, pool("b-auto", &["10.2.0.0/31"])]).unwrap();
        assert_eq!(
            assigned(&mut a, "x", &web()),
            Assignment {
                ips: vec![ip("10.2.0.0")],
                pool: "b-auto".into()
            }
        );
        let asks = svc(&[("TCP", 80)], &[(ADDRESS_POOL_ANNOTATION, "a-manual")]);
        assert_eq!(assigned(&mut a, "y", &asks).pool, "a-manual");
        let by_ip = svc(
            &[("TCP", 80)],
            &[(LOAD_BALANCER_IPS_ANNOTATION, "10.1.0.3")],
        );
        assert_eq!(assigned(&mut a, "z", &by_ip).ips, vec![ip("10.1.0.3")]);
        assert_eq!(assigned(&mut a, "w", &web()).ips, vec![ip("10.2.0.1")]);
        assert_eq!(a.assign("v", &web()), Err(AllocationError::NoAvailableIps));
    }

    #[test]
    fn requested_ip_spec_and_annotation() {
        let mut a = Allocator::new(&[pool("p", &["10.0.0.0/24"])]).unwrap();
        let mut s = web();
        if let Some(spec) = s.spec.as_mut() {
            spec.load_balancer_ip = Some("10.0.0.42".into());
        }
        assert_eq!(assigned(&mut a, "a", &s).ips, vec![ip("10.0.0.42")]);
        // Taken and not shareable.
        assert!(matches!(
            a.assign("b", &s),
            Err(AllocationError::InUse { .. })
        ));
        let outside = svc(
            &[("TCP", 80)],
            &[(LOAD_BALANCER_IPS_ANNOTATION, "192.0.2.1")],
        );
        assert_eq!(
            a.assign("c", &outside),
            Err(AllocationError::NotInAnyPool(ip("192.0.2.1")))
        );
        let garbage = svc(&[("TCP", 80)], &[(LOAD_BALANCER_IPS_ANNOTATION, "nope")]);
        assert!(matches!(
            a.assign("d", &garbage),
            Err(AllocationError::InvalidRequest(_))
        ));
        // Changing the request moves the Service to the new address and frees the old one.
        let moved = svc(
            &[("TCP", 80)],
            &[("metallb.io/loadBalancerIPs", "10.0.0.43")],
        );
        assert_eq!(assigned(&mut a, "a", &moved).ips, vec![ip("10.0.0.43")]);
        assert_eq!(assigned(&mut a, "b", &s).ips, vec![ip("10.0.0.42")]);
        // Both request fields at once is refused.
        let mut both = moved.clone();
        if let Some(spec) = both.spec.as_mut() {
            spec.load_balancer_ip = Some("10.0.0.44".into());
        }
        assert!(matches!(
            a.assign("e", &both),
            Err(AllocationError::InvalidRequest(_))
        ));
    }

    #[test]
    fn dual_stack_request_and_legacy_annotation() {
        let mut a = Allocator::new(&[pool("p", &["10.0.0.0/24", "fd00::/120"])]).unwrap();
        let s = svc(
            &[("TCP", 80)],
            &[("metallb.universe.tf/loadBalancerIPs", "10.0.0.7, fd00::7")],
        );
        assert_eq!(
            assigned(&mut a, "a", &s).ips,
            vec![ip("10.0.0.7"), ip("fd00::7")]
        );
        let mut ds = web();
        if let Some(spec) = ds.spec.as_mut() {
            spec.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        }
        assert_eq!(
            assigned(&mut a, "b", &ds).ips,
            vec![ip("fd00::"), ip("10.0.0.0")]
        );
    }

    #[test]
    fn pool_annotation() {
        let mut a =
            Allocator::new(&[pool("a", &["10.1.0.0/31"]), pool("b", &["10.2.0.0/31"])]).unwrap();
        let to_b = svc(&[("TCP", 80)], &[(ADDRESS_POOL_ANNOTATION, "b")]);
        assert_eq!(
            assigned(&mut a, "x", &to_b),
            Assignment {
                ips: vec![ip("10.2.0.0")],
                pool: "b".into()
            }
        );
        assigned(&mut a, "y", &to_b);
        assert_eq!(
            a.assign("z", &to_b),
            Err(AllocationError::PoolExhausted("b".into()))
        );
        let unknown = svc(&[("TCP", 80)], &[(ADDRESS_POOL_ANNOTATION, "c")]);
        assert_eq!(
            a.assign("z", &unknown),
            Err(AllocationError::UnknownPool("c".into()))
        );
        let mismatch = svc(
            &[("TCP", 80)],
            &[
                (ADDRESS_POOL_ANNOTATION, "b"),
                (LOAD_BALANCER_IPS_ANNOTATION, "10.1.0.1"),
            ],
        );
        assert!(matches!(
            a.assign("z", &mismatch),
            Err(AllocationError::WrongPool { .. })
        ));
        // A Service whose pool annotation changes moves to that pool.
        assert_eq!(assigned(&mut a, "w", &web()).pool, "a");
        let to_a = svc(&[("TCP", 80)], &[(ADDRESS_POOL_ANNOTATION, "a")]);
        assert_eq!(assigned(&mut a, "x", &to_a).ips, vec![ip("10.1.0.1")]);
        assert_eq!(a.ips("x"), &[ip("10.1.0.1")]);
    }

    #[test]
    fn sharing_with_same_key_and_disjoint_ports() {
        let mut a = Allocator::new(&[pool("p", &["10.0.0.0/30"])]).unwrap();
        let tcp = svc(&[("TCP", 53)], &[(ALLOW_SHARED_IP_ANNOTATION, "dns")]);
        let udp = svc(&[("UDP", 53)], &[(ALLOW_SHARED_IP_ANNOTATION, "dns")]);
        assert_eq!(
            assigned(&mut a, "ns/dns-tcp", &tcp).ips,
            vec![ip("10.0.0.0")]
        );
        // Automatic allocation lands on the compatible shared address.
        assert_eq!(
            assigned(&mut a, "ns/dns-udp", &udp).ips,
            vec![ip("10.0.0.0")]
        );
        // Releasing one keeps the address for the other.
        assert!(a.release("ns/dns-tcp"));
        assert_eq!(a.ips("ns/dns-udp"), &[ip("10.0.0.0")]);
        assert_eq!(assigned(&mut a, "other", &web()).ips, vec![ip("10.0.0.1")]);
    }

    #[test]
    fn sharing_refused() {
        let mut a = Allocator::new(&[pool("p", &["10.0.0.0/24"])]).unwrap();
        let want = |ports: &[(&str, i32)], key: &str| {
            let mut ann = vec![(LOAD_BALANCER_IPS_ANNOTATION, "10.0.0.9")];
            if !key.is_empty() {
                ann.push((ALLOW_SHARED_IP_ANNOTATION, key));
            }
            svc(ports, &ann)
        };
        assigned(&mut a, "first", &want(&[("TCP", 80), ("TCP", 443)], "k"));
        let refused = |r: Result<Option<Assignment>, AllocationError>| match r {
            Err(AllocationError::InUse { holders, .. }) => holders.starts_with("first"),
            _ => false,
        };
        // Overlapping port.
        assert!(refused(a.assign("s1", &want(&[("TCP", 443)], "k"))));
        // Different key.
        assert!(refused(a.assign("s2", &want(&[("TCP", 8080)], "other"))));
        // No key.
        assert!(refused(a.assign("s3", &want(&[("TCP", 8080)], ""))));
        // Same port number, other protocol: fine.
        assert_eq!(
            assigned(&mut a, "s4", &want(&[("UDP", 443)], "k")).ips,
            vec![ip("10.0.0.9")]
        );
        // externalTrafficPolicy Local with another selector: backend keys differ.
        let mut local = want(&[("TCP", 9000)], "k");
        if let Some(spec) = local.spec.as_mut() {
            spec.external_traffic_policy = Some("Local".into());
            spec.selector = Some(BTreeMap::from([("app".to_string(), "x".to_string())]));
        }
        assert!(refused(a.assign("s5", &local)));
        // Automatic allocation skips the incompatible address.
        let auto = svc(&[("TCP", 80)], &[(ALLOW_SHARED_IP_ANNOTATION, "other")]);
        assert_eq!(assigned(&mut a, "s6", &auto).ips, vec![ip("10.0.0.0")]);
    }

    #[test]
    fn exhaustion_then_release_frees_for_the_next() {
        let mut a = Allocator::new(&[pool("p", &["10.0.0.0/31"])]).unwrap();
        assigned(&mut a, "a", &web());
        assigned(&mut a, "b", &web());
        assert_eq!(a.assign("c", &web()), Err(AllocationError::NoAvailableIps));
        assert!(a.release("a"));
        assert!(!a.release("a"));
        assert_eq!(assigned(&mut a, "c", &web()).ips, vec![ip("10.0.0.0")]);
        assert_eq!(a.ips("a"), &[] as &[IpAddr]);
    }

    fn with_status(mut s: Service, ips: &[&str]) -> Service {
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|i| LoadBalancerIngress {
                            ip: Some(i.to_string()),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        s
    }

    #[test]
    fn restore_after_restart_keeps_ips() {
        let pools = [pool("p", &["10.0.0.0/29"])];
        let mut before = Allocator::new(&pools).unwrap();
        let mut services = Vec::new();
        for key in ["c", "a", "b"] {
            let got = assigned(&mut before, key, &web());
            let ips: Vec<String> = got.ips.iter().map(|i| i.to_string()).collect();
            let ips: Vec<&str> = ips.iter().map(|s| s.as_str()).collect();
            services.push((key, with_status(web(), &ips)));
        }
        before.release("c");
        services.retain(|(k, _)| *k != "c");

        // Restart: a new allocator, Services restored in another order.
        let mut after = Allocator::new(&pools).unwrap();
        for (key, s) in services.iter().rev() {
            assert_eq!(after.restore(key, s).unwrap().unwrap().ips, before.ips(key));
        }
        for (key, s) in &services {
            assert_eq!(assigned(&mut after, key, s).ips, before.ips(key));
        }
        // A new Service gets the freed address, not one of the restored ones.
        assert_eq!(assigned(&mut after, "d", &web()).ips, vec![ip("10.0.0.0")]);
        // Nothing to restore.
        assert_eq!(after.restore("e", &web()), Ok(None));
    }

    #[test]
    fn restore_reports_ip_no_longer_in_any_pool() {
        let mut a = Allocator::new(&[pool("p", &["10.0.0.0/29"])]).unwrap();
        let s = with_status(web(), &["10.9.9.9"]);
        assert_eq!(
            a.restore("a", &s),
            Err(AllocationError::NotInAnyPool(ip("10.9.9.9")))
        );
        assert!(a.ips("a").is_empty());
        // The next assign gives it a fresh address.
        assert_eq!(assigned(&mut a, "a", &s).ips, vec![ip("10.0.0.0")]);
    }

    #[test]
    fn foreign_load_balancer_class_and_other_types_ignored() {
        let mut a = Allocator::new(&[pool("p", &["10.0.0.0/29"])]).unwrap();
        let mut foreign = web();
        if let Some(spec) = foreign.spec.as_mut() {
            spec.load_balancer_class = Some("example.com/other".into());
        }
        assert_eq!(a.assign("a", &foreign), Ok(None));
        assert_eq!(
            a.restore("a", &with_status(foreign, &["10.0.0.1"])),
            Ok(None)
        );
        let mut cluster_ip = web();
        if let Some(spec) = cluster_ip.spec.as_mut() {
            spec.type_ = Some("ClusterIP".into());
        }
        assert_eq!(a.assign("b", &cluster_ip), Ok(None));
        // A Service that stops being a LoadBalancer gives its address back.
        assigned(&mut a, "c", &web());
        assert_eq!(a.assign("c", &cluster_ip), Ok(None));
        assert!(a.ips("c").is_empty());
        assert_eq!(assigned(&mut a, "d", &web()).ips, vec![ip("10.0.0.0")]);
    }
}
