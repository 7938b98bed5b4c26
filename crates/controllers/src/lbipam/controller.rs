//! The loop of the LoadBalancer IP allocation controller (MetalLB's `controller/service.go`):
//! one key per Service. A managed Service (`type: LoadBalancer` without a foreign
//! `loadBalancerClass`) gets `status.loadBalancer.ingress` and the
//! `metallb.io/ip-allocated-from-pool` annotation from the shared [`Allocator`]; any other
//! Service gives its addresses back and loses what this controller wrote.
//!
//! The allocator is in-memory state shared by every Service, so the loop runs one worker and
//! keeps the allocator behind a mutex that is never held across an `.await`. It is rebuilt from
//! the `IPAddressPool`s whenever they change and whenever every key is enqueued (leadership
//! start, resync), and a rebuild re-registers every Service's current addresses from its status
//! before anything is assigned: assigned addresses never change across controller restarts.
//! Services whose allocation failed wait in a pending set and are retried when an address is
//! released or the pools change, as MetalLB retries "when another service gets deleted".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Result;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use switchyard_api::k8s::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus,
};
use switchyard_api::metallb::IPAddressPool;
use tracing::Instrument;

use super::{AllocationError, Allocator, PoolError, ALLOCATED_FROM_POOL_ANNOTATION};
use crate::runtime::{
    is_not_found, object_reference, Context, Controller, ObjectKey, WorkQueue, FIELD_MANAGER,
};

/// The pre-`metallb.io` spelling of [`ALLOCATED_FROM_POOL_ANNOTATION`]; MetalLB deletes it
/// whenever it writes the current one.
const LEGACY_ALLOCATED_FROM_POOL_ANNOTATION: &str = "metallb.universe.tf/ip-allocated-from-pool";

/// `status.loadBalancer.ingress[].ipMode` for an address the nodes answer for themselves
/// (KEP-1860; MetalLB announces the address, it does not proxy).
const IP_MODE_VIP: &str = "VIP";

/// The key that stands for "the pools changed": no Service has an empty namespace. Its sync
/// rebuilds the allocator (reporting invalid pools) even when no Service is to be synced.
const POOLS_KEY: ObjectKey = ObjectKey {
    namespace: String::new(),
    name: String::new(),
};

/// Keeps LoadBalancer Services' addresses assigned from the `IPAddressPool`s.
pub struct LoadBalancerController {
    ctx: Context,
    queue: WorkQueue<ObjectKey>,
    state: Arc<Mutex<State>>,
}

/// The allocator and what the loop remembers between syncs.
#[derive(Default)]
struct State {
    allocator: Allocator,
    /// The allocator must be rebuilt from the pools and the Services' status before the next
    /// sync (pools changed, or every key was enqueued).
    stale: bool,
    /// Services whose allocation failed: retried when an address is released.
    pending: BTreeSet<ObjectKey>,
    /// Services whose recorded address the last rebuild could not restore, with why; reported
    /// (`ClearAssignment`) at their next sync, which assigns them a new address.
    cleared: HashMap<ObjectKey, AllocationError>,
}

/// An Event to record on the synced Service.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceEvent {
    warning: bool,
    reason: &'static str,
    message: String,
}

/// What one sync decided, computed under the allocator lock and written afterwards. Writes are
/// only present when the Service differs from what it should be.
#[derive(Debug, Default, PartialEq)]
struct Decision {
    /// The ingress to write (empty: none).
    ingress: Option<Vec<LoadBalancerIngress>>,
    /// The pool annotation to write: `Some(None)` removes it.
    pool_annotation: Option<Option<String>>,
    events: Vec<ServiceEvent>,
    /// Pending Services to retry because addresses were released.
    wake: Vec<ObjectKey>,
}

/// A rebuilt allocator, and what the rebuild found wrong.
struct Rebuilt {
    allocator: Allocator,
    /// Pools left out, with why.
    invalid: Vec<(Arc<IPAddressPool>, PoolError)>,
    cleared: HashMap<ObjectKey, AllocationError>,
}

impl LoadBalancerController {
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(LoadBalancerController {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            state: Arc::new(Mutex::new(State {
                stale: true,
                ..State::default()
            })),
        });

        let q = this.queue.clone();
        ctx.informers.services.on_change(move |change| {
            q.add(ObjectKey::of(change.object()));
        });

        let (q, state, services) = (
            this.queue.clone(),
            this.state.clone(),
            ctx.informers.services.clone(),
        );
        ctx.informers.ip_address_pools.on_change(move |_| {
            state.lock().unwrap_or_else(|e| e.into_inner()).stale = true;
            q.add(POOLS_KEY);
            for svc in services.list() {
                if is_load_balancer(&svc) {
                    q.add(ObjectKey::of(svc.as_ref()));
                }
            }
        });
        this
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the allocator from the informers' caches, reporting invalid pools.
    fn rebuild(&self, state: &mut State) {
        let pools = self.ctx.informers.ip_address_pools.list();
        let services = self.ctx.informers.services.list();
        let rebuilt = rebuild(&state.allocator, &pools, &services);
        for (pool, err) in &rebuilt.invalid {
            tracing::warn!(pool = %ObjectKey::of(pool.as_ref()), error = %err, "IPAddressPool left out");
            self.ctx.events.warning(
                &object_reference(pool.as_ref()),
                "InvalidConfiguration",
                err.to_string(),
            );
        }
        tracing::info!(
            pools = pools.len() - rebuilt.invalid.len(),
            services = services.len(),
            cleared = rebuilt.cleared.len(),
            "load-balancer allocator rebuilt"
        );
        state.allocator = rebuilt.allocator;
        state.cleared = rebuilt.cleared;
        state.stale = false;
    }

    /// Reconciles one key: rebuilds the allocator if it is stale, decides, then writes.
    async fn sync_service(&self, key: ObjectKey) -> Result<()> {
        let svc = self.ctx.informers.services.get_key(&key);
        let decision = {
            let mut state = self.state();
            if state.stale {
                self.rebuild(&mut state);
            }
            if key == POOLS_KEY {
                return Ok(());
            }
            decide(&mut state, &key, svc.as_deref())
        };
        for pending in &decision.wake {
            self.queue.add(pending.clone());
        }
        let Some(svc) = svc else {
            return Ok(());
        };
        let reference = object_reference(svc.as_ref());
        for ev in &decision.events {
            if ev.warning {
                tracing::warn!(reason = ev.reason, message = %ev.message, "allocation");
                self.ctx
                    .events
                    .warning(&reference, ev.reason, ev.message.clone());
            } else {
                tracing::info!(reason = ev.reason, message = %ev.message, "allocation");
                self.ctx
                    .events
                    .normal(&reference, ev.reason, ev.message.clone());
            }
        }
        self.write(&key, &decision).await
    }

    async fn write(&self, key: &ObjectKey, decision: &Decision) -> Result<()> {
        let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        // Status first: a sync that sees the annotation but not yet the status would otherwise
        // write the status again.
        if let Some(ingress) = &decision.ingress {
            let ingress = if ingress.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::to_value(ingress)?
            };
            let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
            match api
                .patch_status(&key.name, &params, &Patch::Merge(&patch))
                .await
            {
                Err(e) if is_not_found(&e) => return Ok(()),
                r => {
                    r?;
                }
            }
        }
        if let Some(pool) = &decision.pool_annotation {
            let patch = json!({"metadata": {"annotations": {
                ALLOCATED_FROM_POOL_ANNOTATION: pool,
                LEGACY_ALLOCATED_FROM_POOL_ANNOTATION: null,
            }}});
            match api.patch(&key.name, &params, &Patch::Merge(&patch)).await {
                Err(e) if is_not_found(&e) => return Ok(()),
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// The addresses recorded in `svc`'s status.
fn ingress_of(svc: &Service) -> &[LoadBalancerIngress] {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or(&[])
}

fn annotation<'a>(svc: &'a Service, name: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

/// `svc` as if its status showed `ips`.
fn with_ingress(svc: &Service, ips: &[IpAddr]) -> Service {
    let mut svc = svc.clone();
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(desired_ingress(ips)),
        }),
        ..ServiceStatus::default()
    });
    svc
}

fn desired_ingress(ips: &[IpAddr]) -> Vec<LoadBalancerIngress> {
    ips.iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some(IP_MODE_VIP.to_string()),
            ..LoadBalancerIngress::default()
        })
        .collect()
}

/// Go's `%q` of a `[]net.IP`, as in MetalLB's `Assigned IP ["192.168.1.240"]`.
fn quoted(ips: &[IpAddr]) -> String {
    let items: Vec<String> = ips
        .iter()
        .map(|ip| format!("{:?}", ip.to_string()))
        .collect();
    format!("[{}]", items.join(" "))
}

/// A new allocator over the valid `pools` (in namespace/name order; a pool that does not parse
/// or overlaps an earlier one is left out), with every Service's addresses re-registered:
/// first as its status records them (the truth after a restart, as MetalLB's controller
/// `Assign`s the status IP first), then, for Services whose status shows nothing usable, as
/// `old` holds them (written by this controller but not yet seen in the cache).
fn rebuild(old: &Allocator, pools: &[Arc<IPAddressPool>], services: &[Arc<Service>]) -> Rebuilt {
    let mut pools = pools.to_vec();
    pools.sort_by_key(|p| ObjectKey::of(p.as_ref()));
    let mut accepted: Vec<IPAddressPool> = Vec::with_capacity(pools.len());
    let mut allocator = Allocator::default();
    let mut invalid = Vec::new();
    for pool in pools {
        accepted.push(pool.as_ref().clone());
        match Allocator::new(&accepted) {
            Ok(a) => allocator = a,
            Err(e) => {
                accepted.pop();
                invalid.push((pool, e));
            }
        }
    }

    let mut services = services.to_vec();
    services.sort_by_key(|s| ObjectKey::of(s.as_ref()));
    let mut cleared = HashMap::new();
    let mut restored = HashSet::new();
    for svc in &services {
        let key = ObjectKey::of(svc.as_ref());
        match allocator.restore(&key.to_string(), svc) {
            Ok(Some(_)) => {
                restored.insert(key);
            }
            Ok(None) => {}
            Err(e) => {
                cleared.insert(key, e);
            }
        }
    }
    for svc in &services {
        let key = ObjectKey::of(svc.as_ref());
        let ips = old.ips(&key.to_string());
        if restored.contains(&key) || ips.is_empty() {
            continue;
        }
        if let Ok(Some(_)) = allocator.restore(&key.to_string(), &with_ingress(svc, ips)) {
            cleared.remove(&key);
        }
    }
    Rebuilt {
        allocator,
        invalid,
        cleared,
    }
}

/// Reconciles one Service against the allocator: what to write, which Events to record and
/// which pending Services to retry.
fn decide(state: &mut State, key: &ObjectKey, svc: Option<&Service>) -> Decision {
    let name = key.to_string();
    let mut decision = Decision::default();
    let before = state.allocator.ips(&name).to_vec();
    let cleared = state.cleared.remove(key);

    let release = |state: &mut State, decision: &mut Decision| {
        if state.allocator.release(&name) {
            decision.wake = state
                .pending
                .iter()
                .filter(|k| *k != key)
                .cloned()
                .collect();
        }
    };
    // Clears what this controller writes (MetalLB `clearServiceState`).
    let clear = |svc: &Service, decision: &mut Decision| {
        if !ingress_of(svc).is_empty() {
            decision.ingress = Some(Vec::new());
        }
        if annotation(svc, ALLOCATED_FROM_POOL_ANNOTATION).is_some()
            || annotation(svc, LEGACY_ALLOCATED_FROM_POOL_ANNOTATION).is_some()
        {
            decision.pool_annotation = Some(None);
        }
    };

    let Some(svc) = svc else {
        state.pending.remove(key);
        release(state, &mut decision);
        return decision;
    };
    if !Allocator::manages(svc) {
        state.pending.remove(key);
        release(state, &mut decision);
        // Not a LoadBalancer (any more): nothing may advertise an address for it. A Service of
        // another class is someone else's, unless it carries what we wrote.
        let ours = annotation(svc, ALLOCATED_FROM_POOL_ANNOTATION).is_some()
            || annotation(svc, LEGACY_ALLOCATED_FROM_POOL_ANNOTATION).is_some();
        if !is_load_balancer(svc) || ours {
            clear(svc, &mut decision);
        }
        return decision;
    }

    if let Some(err) = &cleared {
        decision.events.push(ServiceEvent {
            warning: false,
            reason: "ClearAssignment",
            message: format!(
                "current IP for {name:?} not allowed by config, will attempt for new IP \
                 assignment: {err}"
            ),
        });
    }
    match state.allocator.assign(&name, svc) {
        Ok(Some(assignment)) => {
            state.pending.remove(key);
            if assignment.ips != before {
                decision.events.push(ServiceEvent {
                    warning: false,
                    reason: "IPAllocated",
                    message: format!("Assigned IP {}", quoted(&assignment.ips)),
                });
                if !before.is_empty() {
                    decision.wake = state.pending.iter().cloned().collect();
                }
            }
            let want = desired_ingress(&assignment.ips);
            if ingress_of(svc) != want.as_slice() {
                decision.ingress = Some(want);
            }
            if annotation(svc, ALLOCATED_FROM_POOL_ANNOTATION) != Some(assignment.pool.as_str())
                || annotation(svc, LEGACY_ALLOCATED_FROM_POOL_ANNOTATION).is_some()
            {
                decision.pool_annotation = Some(Some(assignment.pool));
            }
        }
        Ok(None) => {
            // `manages` said yes; nothing to hold if the allocator disagrees.
            release(state, &mut decision);
            clear(svc, &mut decision);
        }
        Err(err) => {
            // The Service stays pending without an address (MetalLB clears the state and
            // waits to be called again when something is released).
            release(state, &mut decision);
            state.pending.insert(key.clone());
            decision.events.push(ServiceEvent {
                warning: true,
                reason: "AllocationFailed",
                message: format!("Failed to allocate IP for {name:?}: {err}"),
            });
            clear(svc, &mut decision);
        }
    }
    decision
}

#[async_trait::async_trait]
impl Controller for LoadBalancerController {
    type Key = ObjectKey;
    const NAME: &'static str = "loadbalancer-ipam";
    /// One worker: assignments depend on the order Services are synced in, and the allocator is
    /// shared by all of them.
    const WORKERS: usize = 1;

    fn queue(&self) -> &WorkQueue<ObjectKey> {
        &self.queue
    }

    fn all_keys(&self) -> Vec<ObjectKey> {
        // Called when leadership starts (another leader may have assigned meanwhile) and at each
        // resync: start again from what the Services show.
        self.state().stale = true;
        self.ctx.informers.services.keys()
    }

    async fn sync(&self, key: ObjectKey) -> Result<()> {
        let span = tracing::info_span!("sync", controller = Self::NAME, service = %key);
        self.sync_service(key).instrument(span).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test fixtures are built by hand; a panic is a failed test.
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::json;

    fn pool(name: &str, addresses: &[&str]) -> Arc<IPAddressPool> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "metallb-system"},
                "spec": {"addresses": addresses},
            }))
            .unwrap(),
        )
    }

    fn service(name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn lb(name: &str) -> Service {
        service(
            name,
            json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
        )
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `svc` after the writes of `decision`.
    fn written(mut svc: Service, decision: &Decision) -> Service {
        if let Some(ingress) = &decision.ingress {
            svc.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: (!ingress.is_empty()).then(|| ingress.clone()),
                }),
                ..ServiceStatus::default()
            });
        }
        if let Some(pool) = &decision.pool_annotation {
            let annotations = svc.metadata.annotations.get_or_insert_with(BTreeMap::new);
            annotations.remove(LEGACY_ALLOCATED_FROM_POOL_ANNOTATION);
            match pool {
                Some(p) => annotations.insert(ALLOCATED_FROM_POOL_ANNOTATION.into(), p.clone()),
                None => annotations.remove(ALLOCATED_FROM_POOL_ANNOTATION),
            };
        }
        svc
    }

    fn state(pools: &[Arc<IPAddressPool>], services: &[Service]) -> State {
        let services: Vec<Arc<Service>> = services.iter().cloned().map(Arc::new).collect();
        let rebuilt = rebuild(&Allocator::default(), pools, &services);
        State {
            allocator: rebuilt.allocator,
            cleared: rebuilt.cleared,
            ..State::default()
        }
    }

    #[test]
    fn assigns_writes_status_and_annotation_once_then_writes_nothing() {
        let mut s = state(
            &[pool("first-pool", &["192.168.67.120-192.168.67.200"])],
            &[],
        );
        let d = decide(&mut s, &key("web"), Some(&lb("web")));
        assert_eq!(d.ingress, Some(desired_ingress(&[ip("192.168.67.120")])));
        assert_eq!(d.pool_annotation, Some(Some("first-pool".into())));
        assert_eq!(
            d.events,
            vec![ServiceEvent {
                warning: false,
                reason: "IPAllocated",
                message: r#"Assigned IP ["192.168.67.120"]"#.into(),
            }]
        );
        let after = written(lb("web"), &d);
        assert_eq!(
            decide(&mut s, &key("web"), Some(&after)),
            Decision::default()
        );
    }

    #[test]
    fn exhausted_pool_leaves_service_pending_until_a_release_wakes_it() {
        let mut s = state(&[pool("two", &["10.0.0.1-10.0.0.2"])], &[]);
        decide(&mut s, &key("a"), Some(&lb("a")));
        decide(&mut s, &key("b"), Some(&lb("b")));
        let c = decide(&mut s, &key("c"), Some(&lb("c")));
        assert_eq!(c.ingress, None, "nothing to clear");
        assert_eq!(c.events.len(), 1);
        assert!(c.events[0].warning && c.events[0].reason == "AllocationFailed");
        assert_eq!(
            c.events[0].message,
            r#"Failed to allocate IP for "default/c": no available IPs"#
        );
        assert!(s.pending.contains(&key("c")));
        let gone = decide(&mut s, &key("a"), None);
        assert_eq!(gone.wake, vec![key("c")]);
        let c = decide(&mut s, &key("c"), Some(&lb("c")));
        assert_eq!(c.ingress, Some(desired_ingress(&[ip("10.0.0.1")])));
        assert!(s.pending.is_empty());
    }

    #[test]
    fn type_change_releases_and_clears_what_was_written() {
        let mut s = state(&[pool("p", &["10.0.0.0/30"])], &[]);
        let d = decide(&mut s, &key("web"), Some(&lb("web")));
        let mut svc = written(lb("web"), &d);
        if let Some(spec) = svc.spec.as_mut() {
            spec.type_ = Some("ClusterIP".into());
        }
        let d = decide(&mut s, &key("web"), Some(&svc));
        assert_eq!(d.ingress, Some(Vec::new()));
        assert_eq!(d.pool_annotation, Some(None));
        assert!(s.allocator.ips("default/web").is_empty());
        let svc = written(svc, &d);
        assert_eq!(decide(&mut s, &key("web"), Some(&svc)), Decision::default());
    }

    #[test]
    fn foreign_class_is_left_alone() {
        let mut s = state(&[pool("p", &["10.0.0.0/30"])], &[]);
        let other = with_ingress(
            &service(
                "x",
                json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/other"}),
            ),
            &[ip("203.0.113.9")],
        );
        assert_eq!(decide(&mut s, &key("x"), Some(&other)), Decision::default());
    }

    #[test]
    fn restart_restores_status_before_assigning_and_replaces_foreign_addresses() {
        let pools = [pool("p", &["10.0.0.0/29"])];
        let b = with_ingress(&lb("b"), &[ip("10.0.0.1")]);
        // Written by a user, in no pool (CVE-2020-8554).
        let evil = with_ingress(&lb("evil"), &[ip("8.8.8.8")]);
        let mut s = state(&pools, &[b.clone(), evil.clone()]);
        // A new Service does not take b's address even though it is synced first.
        let a = decide(&mut s, &key("a"), Some(&lb("a")));
        assert_eq!(a.ingress, Some(desired_ingress(&[ip("10.0.0.0")])));
        let d = decide(&mut s, &key("b"), Some(&b));
        assert_eq!(d.ingress, None);
        assert!(d.events.is_empty(), "no IPAllocated for a restored address");
        let d = decide(&mut s, &key("evil"), Some(&evil));
        assert_eq!(d.ingress, Some(desired_ingress(&[ip("10.0.0.2")])));
        assert_eq!(d.events[0].reason, "ClearAssignment");
        assert_eq!(d.events[1].reason, "IPAllocated");
    }

    #[test]
    fn rebuild_keeps_assignments_the_cache_does_not_show_yet_and_skips_invalid_pools() {
        let pools = [
            pool("a", &["10.0.0.0/30"]),
            pool("b", &["10.0.0.2/31"]),
            pool("c", &["nonsense"]),
        ];
        let mut s = state(&pools, &[]);
        decide(&mut s, &key("web"), Some(&lb("web")));
        let services = [Arc::new(lb("web"))];
        let rebuilt = rebuild(&s.allocator, &pools, &services);
        assert_eq!(rebuilt.allocator.ips("default/web"), &[ip("10.0.0.0")]);
        let invalid: Vec<String> = rebuilt
            .invalid
            .iter()
            .map(|(p, _)| p.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(invalid, ["b", "c"]);
    }
}
