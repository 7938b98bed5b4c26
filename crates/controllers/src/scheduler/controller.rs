//! The scheduler loop: binds every unbound Pod of the default scheduler to a Node chosen by
//! [`crate::scheduler::schedule`], through the `pods/binding` subresource. A Pod that fits nowhere
//! gets `PodScheduled=False` (reason `Unschedulable`) and a `FailedScheduling` Warning Event, and
//! is tried again whenever a Node is added or changes, and every [`UNSCHEDULABLE_RETRY`].
//!
//! Like kube-scheduler it *assumes* a Pod on its node before the binding is written, so Pods
//! scheduled in quick succession spread even though the Pod cache has not seen the bindings yet;
//! an assumption is dropped once the cache shows the Pod bound or gone, or when the binding fails.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, PostParams};
use switchyard_api::k8s::api::core::v1::{Node, Pod, PodStatus};
use tracing::{debug, info, info_span, Instrument};

use crate::runtime::{
    is_stale, object_reference, Change, Context, Controller, ObjectKey, WorkQueue,
};
use crate::scheduler::{
    binding, pod_counts, responsible_for, schedule, unschedulable_conditions,
    EVENT_FAILED_SCHEDULING, EVENT_SCHEDULED,
};

/// How often a Pod that fits nowhere is tried again when no Node changes (kube-scheduler moves
/// unschedulable Pods back to the active queue after at most 5 minutes; we are more eager).
pub const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(15);

/// Binds Pods to Nodes.
pub struct SchedulerController {
    ctx: Context,
    queue: WorkQueue<ObjectKey>,
    /// Pods bound (or being bound) by us that the Pod cache still shows unbound: Pod → Node.
    assumed: Mutex<BTreeMap<ObjectKey, String>>,
}

impl SchedulerController {
    /// Registers the Pod and Node handlers.
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(Self {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            assumed: Mutex::new(BTreeMap::new()),
        });
        let queue = this.queue.clone();
        ctx.informers.pods.on_change(move |change| match change {
            Change::Added(pod) | Change::Updated { new: pod, .. } => {
                if responsible_for(pod) {
                    queue.add(ObjectKey::of(pod));
                }
            }
            Change::Deleted(_) => {}
        });
        // Any Node change may make a waiting Pod fit: requeue every unbound Pod.
        let queue = this.queue.clone();
        let pods = ctx.informers.pods.clone();
        ctx.informers.nodes.on_change(move |change| {
            if let Change::Updated { old, new } = &change {
                if !scheduling_relevant_change(old, new) {
                    return;
                }
            }
            if let Change::Deleted(_) = change {
                return;
            }
            for pod in pods.list() {
                if responsible_for(&pod) {
                    queue.add(ObjectKey::of(pod.as_ref()));
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
    fn decide(
        &self,
        key: &ObjectKey,
        pod: &Pod,
    ) -> Result<String, crate::scheduler::Unschedulable> {
        let mut assumed = self.assumed_lock();
        let pods = self.ctx.informers.pods.list();
        // Forget assumptions the cache has caught up with.
        assumed.retain(|k, _| {
            self.ctx
                .informers
                .pods
                .get(&k.namespace, &k.name)
                .is_some_and(|p| responsible_for(&p))
        });
        let mut counts = pod_counts(pods.iter().map(|p| p.as_ref()));
        for node in assumed.values() {
            *counts.entry(node.clone()).or_insert(0) += 1;
        }
        let nodes = self.ctx.informers.nodes.list();
        let refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
        let node = schedule(pod, &refs, &counts)?;
        assumed.insert(key.clone(), node.clone());
        Ok(node)
    }
}

/// Whether a Node update can change where Pods fit: labels, taints, cordon or readiness (not
/// heartbeats alone).
fn scheduling_relevant_change(old: &Node, new: &Node) -> bool {
    old.metadata.labels != new.metadata.labels
        || old.spec != new.spec
        || crate::scheduler::ready_status(old) != crate::scheduler::ready_status(new)
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
            let Some(pod) = self.ctx.informers.pods.get(&key.namespace, &key.name) else {
                self.assumed_lock().remove(&key);
                return Ok(());
            };
            if !responsible_for(&pod) {
                self.assumed_lock().remove(&key);
                return Ok(());
            }
            if self.assumed_lock().contains_key(&key) {
                debug!("already bound; waiting for the cache");
                return Ok(());
            }
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
            match self.decide(&key, &pod) {
                Ok(node) => {
                    let result = api
                        .create_subresource::<_, serde_json::Value>(
                            "binding",
                            &key.name,
                            &PostParams::default(),
                            &binding(&pod, &node),
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
                        unschedulable_conditions(&pod, &unschedulable, self.ctx.now())
                    {
                        let mut updated = pod.as_ref().clone();
                        updated
                            .status
                            .get_or_insert_with(PodStatus::default)
                            .conditions = Some(conditions);
                        // The resourceVersion from the cache makes a stale write fail with 409;
                        // the error requeues the Pod with backoff.
                        api.replace_status(&key.name, &PostParams::default(), &updated)
                            .await?;
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
