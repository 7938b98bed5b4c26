//! ClusterIP and NodePort allocation, transactional in the store.
//!
//! Every allocated ClusterIP and NodePort is a key of its own (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) whose value names the owning service. A service is
//! written in the same transaction that creates the keys it newly holds (each guarded by
//! "absent") and deletes the keys it gives up, so two creates on one server or on several servers
//! sharing a store can never hold the same IP or port: the loser's transaction fails its compare
//! and it picks again. The in-memory `taken` sets are only hints that make the first pick likely
//! to succeed; the store is the truth.
//!
//! At start, [`ServiceAllocator::repair`] reconciles the keys with the services that exist
//! (kube-apiserver's repair controllers do the same).

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

use serde_json::Value;
use switchyard_api::allocator::{self, IpRange, PortRange};
use switchyard_api::service;
use switchyard_api::status::{FieldError, StatusError};
use switchyard_store::{Compare, ListOptions, Op, SharedStore, Txn, TxnOutcome};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

pub fn ip_key(ip: &IpAddr) -> String {
    format!("{IP_PREFIX}{ip}")
}

pub fn port_key(port: u16) -> String {
    format!("{PORT_PREFIX}{port}")
}

/// What one service holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub ips: BTreeSet<IpAddr>,
    pub ports: BTreeSet<u16>,
}

impl Held {
    pub fn of(svc: &Value) -> Held {
        let mut held = Held::default();
        if let Some(ips) = svc.pointer("/spec/clusterIPs").and_then(Value::as_array) {
            for ip in ips.iter().filter_map(Value::as_str) {
                if let Ok(ip) = ip.parse() {
                    held.ips.insert(ip);
                }
            }
        } else if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str) {
            if let Ok(ip) = ip.parse() {
                held.ips.insert(ip);
            }
        }
        if let Some(ports) = svc.pointer("/spec/ports").and_then(Value::as_array) {
            for p in ports {
                if let Some(n) = p.get("nodePort").and_then(Value::as_u64).filter(|n| *n > 0) {
                    held.ports.insert(n as u16);
                }
            }
        }
        if let Some(n) = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
        {
            held.ports.insert(n as u16);
        }
        held
    }

    /// The keys this set of allocations occupies.
    pub fn keys(&self) -> Vec<String> {
        self.ips
            .iter()
            .map(ip_key)
            .chain(self.ports.iter().map(|p| port_key(*p)))
            .collect()
    }
}

/// The compares and ops a write of one service must carry for its allocations.
#[derive(Debug, Default)]
pub struct AllocationPlan {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    /// For each compare, whether the value was asked for by the user (a failure is then an
    /// error) or picked by us (a failure means: pick again).
    pub requested: Vec<bool>,
}

pub struct ServiceAllocator {
    pub ip_range: IpRange,
    pub port_range: PortRange,
    taken_ips: Mutex<HashSet<IpAddr>>,
    taken_ports: Mutex<HashSet<u16>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ServiceAllocator {
    pub fn new(ip_range: IpRange, port_range: PortRange) -> Self {
        Self {
            ip_range,
            port_range,
            taken_ips: Mutex::default(),
            taken_ports: Mutex::default(),
        }
    }

    /// Note that a key turned out to be taken (another server allocated it).
    pub fn mark_taken(&self, key: &str) {
        if let Some(ip) = key.strip_prefix(IP_PREFIX).and_then(|s| s.parse().ok()) {
            lock(&self.taken_ips).insert(ip);
        } else if let Some(p) = key.strip_prefix(PORT_PREFIX).and_then(|s| s.parse().ok()) {
            lock(&self.taken_ports).insert(p);
        }
    }

    /// Record the outcome of a committed write: `now` held, `before` released.
    pub fn committed(&self, before: &Held, now: &Held) {
        let mut ips = lock(&self.taken_ips);
        for ip in before.ips.difference(&now.ips) {
            ips.remove(ip);
        }
        ips.extend(now.ips.iter().copied());
        drop(ips);
        let mut ports = lock(&self.taken_ports);
        for p in before.ports.difference(&now.ports) {
            ports.remove(p);
        }
        ports.extend(now.ports.iter().copied());
    }

    fn pick_ip(&self, avoid: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let taken = lock(&self.taken_ips);
        self.ip_range
            .candidate_order(rand::random())
            .find(|ip| !taken.contains(ip) && !avoid.contains(ip))
    }

    fn pick_port(&self, avoid: &BTreeSet<u16>) -> Option<u16> {
        let taken = lock(&self.taken_ports);
        self.port_range
            .candidate_order(rand::random())
            .find(|p| !taken.contains(p) && !avoid.contains(p))
    }

    /// A node port the client asked for: new to this service, it must be in range, and its key is
    /// marked as requested (so losing it to another service is an error, not a retry).
    fn check_requested_port(
        &self,
        path: &str,
        port: u64,
        before: &Held,
        errors: &mut Vec<FieldError>,
        requested_keys: &mut HashSet<String>,
    ) {
        let port16 = port as u16;
        if before.ports.contains(&port16) {
            return;
        }
        if port > u16::MAX as u64 || !self.port_range.contains(port16) {
            errors.push(allocator::node_port_out_of_range_error(
                path,
                port as i32,
                &self.port_range,
            ));
        }
        requested_keys.insert(port_key(port16));
    }

    /// Fill in the allocations `svc` needs and is missing, check the ones the user asked for,
    /// and return the transaction parts that take the new keys and release the old ones.
    /// `old` is the stored version on update (its allocations are already held).
    pub fn plan(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> Result<AllocationPlan, StatusError> {
        let before = old.map(Held::of).unwrap_or_default();
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let owner = format!(
            "{}/{}",
            svc.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            name
        );
        let mut errors = Vec::new();
        let mut requested_keys: HashSet<String> = HashSet::new();

        // ClusterIP.
        if service::needs_cluster_ip(svc) {
            let current = svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if current.is_empty() {
                match self.pick_ip(&before.ips) {
                    Some(ip) => {
                        svc["spec"]["clusterIP"] = Value::String(ip.to_string());
                        svc["spec"]["clusterIPs"] = serde_json::json!([ip.to_string()]);
                    }
                    None => {
                        return Err(StatusError::internal(
                            allocator::cluster_ip_range_full_message(),
                        ))
                    }
                }
            } else if let Ok(ip) = current.parse::<IpAddr>() {
                if !before.ips.contains(&ip) {
                    if !self.ip_range.contains(ip) {
                        errors.push(allocator::cluster_ip_out_of_range_error(
                            &cluster_ips(svc),
                            &current,
                            &self.ip_range,
                        ));
                    }
                    requested_keys.insert(ip_key(&ip));
                }
                if svc.pointer("/spec/clusterIPs").is_none() {
                    svc["spec"]["clusterIPs"] = serde_json::json!([current]);
                }
            }
        }

        // NodePorts, then the health check node port.
        let mut used: BTreeSet<u16> = BTreeSet::new();
        if let Some(ports) = svc.pointer("/spec/ports").and_then(Value::as_array) {
            for p in ports {
                if let Some(n) = p.get("nodePort").and_then(Value::as_u64).filter(|n| *n > 0) {
                    used.insert(n as u16);
                }
            }
        }
        let node_port_type = matches!(
            svc.pointer("/spec/type").and_then(Value::as_str),
            Some("NodePort" | "LoadBalancer")
        );
        if node_port_type {
            // LoadBalancers with allocateLoadBalancerNodePorts=false get no new node ports, but
            // those asked for are still allocated (kube-apiserver's initNodePorts).
            let allocate = service::needs_node_ports(svc);
            let n = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..n {
                let path = format!("spec.ports[{i}].nodePort");
                // On create, ports with the same number share one node port (TCP and UDP of
                // DNS), the one asked for on any of them if any (initNodePorts again).
                let shared = if old.is_none() {
                    let ports = svc.pointer("/spec/ports").and_then(Value::as_array);
                    let number = ports
                        .and_then(|ps| ps.get(i))
                        .and_then(|p| p.get("port"))
                        .cloned();
                    ports
                        .into_iter()
                        .flatten()
                        .filter(|p| p.get("port") == number.as_ref())
                        .find_map(|p| {
                            p.get("nodePort")
                                .and_then(Value::as_u64)
                                .filter(|n| *n > 0 && *n <= u16::MAX as u64)
                        })
                        .map(|n| n as u16)
                } else {
                    None
                };
                let port = &mut svc["spec"]["ports"][i];
                match port
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .filter(|n| *n > 0)
                {
                    Some(np) => self.check_requested_port(
                        &path,
                        np,
                        &before,
                        &mut errors,
                        &mut requested_keys,
                    ),
                    None if !allocate => {}
                    None => {
                        let mut avoid = used.clone();
                        avoid.extend(before.ports.iter().copied());
                        // Reuse a port the service already holds for the same port number (TCP
                        // and UDP of one port share a node port, as in Kubernetes).
                        let reuse = old
                            .and_then(|o| o.pointer("/spec/ports").and_then(Value::as_array))
                            .and_then(|olds| {
                                olds.iter().find(|op| op.get("port") == port.get("port"))
                            })
                            .and_then(|op| op.get("nodePort").and_then(Value::as_u64))
                            .map(|n| n as u16)
                            .filter(|n| *n > 0 && !used.contains(n));
                        let chosen = match shared.or(reuse) {
                            Some(p) => Some(p),
                            None => self.pick_port(&avoid),
                        };
                        match chosen {
                            Some(p) => {
                                port["nodePort"] = Value::from(p);
                                used.insert(p);
                            }
                            None => {
                                return Err(StatusError::internal(
                                    allocator::node_port_range_full_message(),
                                ))
                            }
                        }
                    }
                }
            }
        }
        if service::needs_health_check_node_port(svc) {
            match svc
                .pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
            {
                Some(np) => self.check_requested_port(
                    "spec.healthCheckNodePort",
                    np,
                    &before,
                    &mut errors,
                    &mut requested_keys,
                ),
                None => {
                    let mut avoid = used.clone();
                    avoid.extend(before.ports.iter().copied());
                    match self.pick_port(&avoid) {
                        Some(p) => svc["spec"]["healthCheckNodePort"] = Value::from(p),
                        None => {
                            return Err(StatusError::internal(
                                allocator::node_port_range_full_message(),
                            ))
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(invalid(&name, &errors));
        }

        let now = Held::of(svc);
        let mut plan = AllocationPlan::default();
        for key in now.keys() {
            if !before.keys().contains(&key) {
                plan.requested.push(requested_keys.contains(&key));
                plan.compares.push(Compare::Absent(key.clone()));
                plan.ops
                    .push(Op::Put(key, owner.clone().into_bytes().into()));
            }
        }
        for key in before.keys() {
            if !now.keys().contains(&key) {
                plan.ops.push(Op::Delete(key));
            }
        }
        Ok(plan)
    }

    /// The 422 for a requested IP or port another service holds.
    pub fn already_allocated(&self, svc: &Value, key: &str) -> StatusError {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let err = if let Some(ip) = key.strip_prefix(IP_PREFIX) {
            allocator::cluster_ip_already_allocated_error(&cluster_ips(svc), ip)
        } else {
            let port: i32 = key
                .strip_prefix(PORT_PREFIX)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let path = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .and_then(|ps| {
                    ps.iter().position(|p| {
                        p.get("nodePort").and_then(Value::as_i64) == Some(port as i64)
                    })
                })
                .map(|i| format!("spec.ports[{i}].nodePort"))
                .unwrap_or_else(|| "spec.healthCheckNodePort".to_string());
            allocator::port_already_allocated_error(&path, port)
        };
        invalid(name, &[err])
    }

    /// Reconcile the allocation keys with the services in the store: create keys services hold
    /// but lack, delete keys no service holds. Safe to run on several servers at once.
    pub async fn repair(&self, store: &SharedStore, services_prefix: &str) -> anyhow::Result<()> {
        let services = store.list(services_prefix, ListOptions::default()).await?;
        let mut holders: std::collections::HashMap<String, String> = Default::default();
        for kv in &services.kvs {
            let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let owner = format!(
                "{}/{}",
                svc.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                svc.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            let held = Held::of(&svc);
            self.committed(&Held::default(), &held);
            for key in held.keys() {
                holders.insert(key, owner.clone());
            }
        }
        let mut existing = HashSet::new();
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            let keys = store.list(prefix, ListOptions::default()).await?;
            for kv in keys.kvs {
                if holders.contains_key(&kv.key) {
                    existing.insert(kv.key);
                } else {
                    // Nobody holds it: release, unless it changed meanwhile.
                    let txn = Txn::new()
                        .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                        .delete(kv.key.clone());
                    store.txn(txn).await?;
                    tracing::info!(key = %kv.key, "released leaked allocation");
                }
            }
        }
        for (key, owner) in holders {
            if !existing.contains(&key) {
                let txn = Txn::new()
                    .when(Compare::Absent(key.clone()))
                    .put(key.clone(), owner.clone().into_bytes());
                if let TxnOutcome::Failed { .. } = store.txn(txn).await? {
                    tracing::warn!(key = %key, owner = %owner, "allocation held by two services");
                } else {
                    tracing::info!(key = %key, owner = %owner, "restored missing allocation");
                }
            }
        }
        Ok(())
    }
}

fn cluster_ips(svc: &Value) -> Vec<String> {
    switchyard_api::object::strings_at(svc, "/spec/clusterIPs")
}

fn invalid(name: &str, errors: &[FieldError]) -> StatusError {
    StatusError::invalid("", "Service", name, errors)
}
