//! The scheduler loop: binds every unbound Pod of the default scheduler to a Node chosen by
//! [`crate::scheduler::schedule`], through the `pods/binding` subresource. A Pod that fits nowhere
//! gets `PodScheduled=False` (reason `Unschedulable`) and a `FailedScheduling` Warning Event, and
//! is tried again whenever a Node is added or changes, and every [`UNSCHEDULABLE_RETRY`].
//!
//! Like kube-scheduler it *assumes* a Pod on its node before the binding is written, so Pods
//! scheduled in quick succession spread even though the Pod cache has not seen the bindings yet;
//! an assumption is dropped once the cache shows the Pod bound or gone, or when the binding fails.
//! Node loads come from [`PodsByNode`], an index kept by a Pod handler, so a decision costs a
//! pass over the Nodes, not over every Pod.

use crate::pods::{patch_pod_conditions, CachedPod};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, PostParams};
use switchyard_api::k8s::api::core::v1::{Node, Pod};
use tracing::{debug, info, info_span, Instrument};

use crate::runtime::{
    is_stale, object_reference, Change, Context, Controller, Informer, ObjectKey, WorkQueue,
};
use crate::scheduler::{
    binding, is_terminated, ready_status, responsible_for, schedule, unschedulable_conditions,
    Unschedulable, EVENT_FAILED_SCHEDULING, EVENT_SCHEDULED,
};

/// How often a Pod that fits nowhere is tried again when no Node changes (kube-scheduler moves
/// unschedulable Pods back to the active queue after at most 5 minutes; we are more eager).
pub const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(15);

/// The node a Pod occupies: bound and not terminated (what the spread counts).
fn occupied_node(pod: &CachedPod) -> Option<&str> {
    if is_terminated(pod) {
        return None;
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The Pods occupying each node (bound, not terminated), kept up to date by a Pod handler.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct PodsByNode {
    inner: Arc<Mutex<HashMap<String, BTreeSet<ObjectKey>>>>,
}

impl PodsByNode {
    /// An index fed by `pods`' changes; register before the informer starts.
    pub fn watch(pods: &Informer<CachedPod>) -> Self {
        let index = PodsByNode::default();
        let this = index.clone();
        pods.on_change(move |change| {
            let mut map = this.lock();
            if let Some(old) = change.old() {
                if let Some(node) = occupied_node(old) {
                    if let Some(set) = map.get_mut(node) {
                        set.remove(&ObjectKey::of(old));
                        if set.is_empty() {
                            map.remove(node);
                        }
                    }
                }
            }
            if !matches!(change, Change::Deleted(_)) {
                let pod = change.object();
                if let Some(node) = occupied_node(pod) {
                    map.entry(node.to_string())
                        .or_default()
                        .insert(ObjectKey::of(pod));
                }
            }
        });
        index
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<ObjectKey>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Pods occupying `node`.
    pub fn pods_on(&self, node: &str) -> Vec<ObjectKey> {
        self.lock()
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The number of Pods occupying each node.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.lock()
            .iter()
            .map(|(node, pods)| (node.clone(), pods.len()))
            .collect()
    }
}

/// Binds Pods to Nodes.
pub struct SchedulerController {
    ctx: Context,
    queue: WorkQueue<ObjectKey>,
    /// Pods bound (or being bound) by us that the Pod cache still shows unbound: Pod → Node.
    assumed: Mutex<BTreeMap<ObjectKey, String>>,
    load: PodsByNode,
    /// Pods found unschedulable, tried again when a Node changes.
    waiting: Arc<Mutex<BTreeSet<ObjectKey>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SchedulerController {
    /// Registers the Pod and Node handlers.
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(Self {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            assumed: Mutex::new(BTreeMap::new()),
            load: PodsByNode::watch(&ctx.informers.pods),
            waiting: Arc::new(Mutex::new(BTreeSet::new())),
        });
        let (queue, waiting) = (this.queue.clone(), this.waiting.clone());
        ctx.informers.pods.on_change(move |change| {
            let pod = change.object();
            if !matches!(change, Change::Deleted(_)) && responsible_for(pod) {
                queue.add(ObjectKey::of(pod));
            } else {
                locked(&waiting).remove(&ObjectKey::of(pod));
            }
        });
        // A Node added or changed may make a waiting Pod fit.
        let (queue, waiting) = (this.queue.clone(), this.waiting.clone());
        ctx.informers.nodes.on_change(move |change| {
            let relevant = match &change {
                Change::Added(_) => true,
                Change::Updated { old, new } => scheduling_relevant_change(old, new),
                Change::Deleted(_) => false,
            };
            if relevant {
                for key in locked(&waiting).iter() {
                    queue.add(key.clone());
                }
            }
        });
        this
    }

    fn assumed_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectKey, String>> {
        self.assumed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks a node for the Pod and assumes it there, under the lock so that two workers do not
    /// both count a node as the emptiest.
    fn decide(&self, key: &ObjectKey, pod: &CachedPod) -> Result<String, Unschedulable> {
        let mut assumed = self.assumed_lock();
        // Forget assumptions the cache has caught up with.
        assumed.retain(|k, _| {
            self.ctx
                .informers
                .pods
                .get_key(k)
                .is_some_and(|p| responsible_for(&p))
        });
        let mut counts = self.load.counts();
        for node in assumed.values() {
            *counts.entry(node.clone()).or_insert(0) += 1;
        }
        let nodes = self.ctx.informers.nodes.list();
        let refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
        let node = schedule(&pod.to_pod(), &refs, &counts)?;
        assumed.insert(key.clone(), node.clone());
        Ok(node)
    }
}

/// Whether a Node update can change where Pods fit: labels, taints, cordon or readiness (not
/// heartbeats alone).
fn scheduling_relevant_change(old: &Node, new: &Node) -> bool {
    old.metadata.labels != new.metadata.labels
        || old.spec != new.spec
        || ready_status(old) != ready_status(new)
}

#[async_trait::async_trait]
impl Controller for SchedulerController {
    type Key = ObjectKey;
    const NAME: &'static str = "scheduler";

    fn queue(&self) -> &WorkQueue<ObjectKey> {
        &self.queue
    }

    fn all_keys(&self) -> Vec<ObjectKey> {
        self.ctx
            .informers
            .pods
            .list()
            .iter()
            .filter(|p| responsible_for(p))
            .map(|p| ObjectKey::of(p.as_ref()))
            .collect()
    }

    async fn sync(&self, key: ObjectKey) -> anyhow::Result<()> {
        let span = info_span!("schedule", pod = %key);
        async {
            let pod = self.ctx.informers.pods.get_key(&key);
            let Some(pod) = pod.filter(|p| responsible_for(p)) else {
                // Bound, finished or gone.
                self.assumed_lock().remove(&key);
                locked(&self.waiting).remove(&key);
                return Ok(());
            };
            if self.assumed_lock().contains_key(&key) {
                debug!("already bound; waiting for the cache");
                return Ok(());
            }
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
            // Waiting from before the decision, so a Node that appears meanwhile retries it.
            locked(&self.waiting).insert(key.clone());
            match self.decide(&key, &pod) {
                Ok(node) => {
                    locked(&self.waiting).remove(&key);
                    let result = api
                        .create_subresource::<_, serde_json::Value>(
                            "binding",
                            &key.name,
                            &PostParams::default(),
                            &binding(&pod.to_pod(), &node),
                        )
                        .await;
                    match result {
                        Ok(_) => {
                            info!(node = %node, "bound");
                            self.ctx.events.normal(
                                &object_reference(pod.as_ref()),
                                EVENT_SCHEDULED,
                                format!("Successfully assigned {key} to {node}"),
                            );
                            Ok(())
                        }
                        Err(e) => {
                            self.assumed_lock().remove(&key);
                            if is_stale(&e) {
                                // Bound by someone else meanwhile, or deleted: the cache will tell.
                                debug!(error = %e, "binding refused");
                                return Ok(());
                            }
                            Err(e.into())
                        }
                    }
                }
                Err(unschedulable) => {
                    info!(reason = %unschedulable.message, "unschedulable");
                    self.ctx.events.warning(
                        &object_reference(pod.as_ref()),
                        EVENT_FAILED_SCHEDULING,
                        unschedulable.message.clone(),
                    );
                    if let Some(conditions) =
                        unschedulable_conditions(&pod.to_pod(), &unschedulable, self.ctx.now())
                    {
                        // The resourceVersion from the cache makes a stale write fail with 409;
                        // the error requeues the Pod with backoff.
                        patch_pod_conditions(&api, &pod, conditions).await?;
                    }
                    self.queue.add_after(key.clone(), UNSCHEDULABLE_RETRY);
                    Ok(())
                }
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test fixtures are built by hand; a panic is a failed test.
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_label_spec_and_readiness_changes_wake_waiting_pods() {
        let base = json!({
            "metadata": {"name": "n", "labels": {"a": "1"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                                        "lastHeartbeatTime": "2026-11-22T03:00:00Z"}]}
        });
        let old = node(base.clone());
        let mut heartbeat = base.clone();
        heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-11-22T03:00:10Z");
        let mut relabelled = base.clone();
        relabelled["metadata"]["labels"]["disk"] = json!("ssd");
        let mut cordoned = base.clone();
        cordoned["spec"]["unschedulable"] = json!(true);
        let mut not_ready = base;
        not_ready["status"]["conditions"][0]["status"] = json!("False");
        assert!(!scheduling_relevant_change(&old, &node(heartbeat)));
        assert!(scheduling_relevant_change(&old, &node(relabelled)));
        assert!(scheduling_relevant_change(&old, &node(cordoned)));
        assert!(scheduling_relevant_change(&old, &node(not_ready)));
    }

    #[test]
    fn a_pod_occupies_its_node_until_it_terminates() {
        let pod = |v: serde_json::Value| -> CachedPod { serde_json::from_value(v).unwrap() };
        assert_eq!(
            occupied_node(&pod(json!({"spec": {"nodeName": "n", "containers": []}}))),
            Some("n")
        );
        assert_eq!(
            occupied_node(&pod(json!({"spec": {"nodeName": "n", "containers": []},
                                      "status": {"phase": "Succeeded"}}))),
            None
        );
        assert_eq!(
            occupied_node(&pod(json!({"spec": {"nodeName": "", "containers": []}}))),
            None
        );
    }
}
