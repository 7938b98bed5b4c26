//! The node lifecycle loop: every `node_monitor_period` each Node is checked with
//! [`crate::nodelifecycle::node_health`]; the loop writes the `Unknown` conditions
//! (`nodes/status`) and the controller's taints (`nodes`), marks the Pods of a node that is not
//! ready not ready (`pods/status`) and deletes Pods whose `NoExecute` toleration ran out.
//! Writes carry the cached resourceVersion, so a write based on a stale cache fails with 409 and
//! the node is checked again with backoff.

use crate::pods::{patch_pod_conditions, CachedPod};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use switchyard_api::k8s::api::core::v1::{Node, NodeStatus, Pod};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::nodelifecycle::{
    evictions_allowed, node_health, pod_eviction_time, pod_not_ready_conditions, zone_of,
    Readiness, NODE_LEASE_NAMESPACE,
};
use crate::runtime::{is_stale, object_reference, Change, Context, Controller, WorkQueue};
use crate::scheduler::controller::PodsByNode;
use crate::scheduler::ready_status;
use crate::signed;

/// Reason of the Event recorded on a Pod deleted because its node failed (the taint manager's).
pub const EVENT_TAINT_MANAGER_EVICTION: &str = "TaintManagerEviction";

/// Reason of the Event recorded on a Node the controller found not posting status
/// (`nodeutil.RecordNodeStatusChange`).
pub const EVENT_NODE_NOT_READY: &str = "NodeNotReady";

/// Watches node heartbeats; taints, marks and evicts.
pub struct NodeLifecycleController {
    ctx: Context,
    queue: WorkQueue<String>,
    pods: PodsByNode,
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}

fn node_of(pod: &CachedPod) -> Option<&str> {
    pod.node_name()
}

impl NodeLifecycleController {
    /// Registers the Node and Pod handlers.
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(Self {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            pods: PodsByNode::watch(&ctx.informers.pods),
        });
        let queue = this.queue.clone();
        ctx.informers.nodes.on_change(move |change| match change {
            Change::Added(node) | Change::Updated { new: node, .. } => {
                if let Some(name) = node.metadata.name.as_deref() {
                    queue.add(name.to_string());
                }
            }
            Change::Deleted(_) => {}
        });
        // A Pod that lands on (or turns ready on) a node that is not ready is marked at once.
        let queue = this.queue.clone();
        let nodes = ctx.informers.nodes.clone();
        ctx.informers.pods.on_change(move |change| {
            let pod = match change {
                Change::Added(pod) | Change::Updated { new: pod, .. } => pod,
                Change::Deleted(_) => return,
            };
            if let Some(name) = node_of(pod) {
                let ready = nodes
                    .get("", name)
                    .map(|n| ready_status(&n) == Some("True"));
                if ready == Some(false) {
                    queue.add(name.to_string());
                }
            }
        });
        this
    }

    async fn check(&self, name: &str) -> anyhow::Result<()> {
        let Some(node) = self.ctx.informers.nodes.get("", name) else {
            return Ok(());
        };
        let config = &self.ctx.config;
        let now = self.ctx.now();
        let lease = self
            .ctx
            .informers
            .node_leases
            .get(NODE_LEASE_NAMESPACE, name);
        let verdict = node_health(
            &node,
            lease.as_deref(),
            now,
            signed(config.node_monitor_grace_period),
        );
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let mut current = node.as_ref().clone();
        if let Some(conditions) = verdict.conditions.clone() {
            warn!(readiness = ?verdict.readiness, "node stopped posting status");
            current
                .status
                .get_or_insert_with(NodeStatus::default)
                .conditions = Some(conditions);
            current = nodes
                .replace_status(name, &PostParams::default(), &current)
                .await?;
            self.ctx.events.normal(
                &object_reference(&current),
                EVENT_NODE_NOT_READY,
                format!("Node {name} status is now: {EVENT_NODE_NOT_READY}"),
            );
        }
        if let Some(taints) = verdict.taints.clone() {
            info!(taints = taints.len(), "updating taints");
            current.spec.get_or_insert_with(Default::default).taints =
                (!taints.is_empty()).then_some(taints);
            current = nodes
                .replace(name, &PostParams::default(), &current)
                .await?;
        }
        let taints = current
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        // Check again after a monitor period, or sooner when the heartbeat runs out or a Pod's
        // eviction is due.
        let mut next = now
            .checked_add(signed(config.node_monitor_period))
            .unwrap_or(Timestamp::MAX);
        if verdict.expires_at >= now {
            next = next.min(
                verdict
                    .expires_at
                    .checked_add(SignedDuration::from_millis(1))
                    .unwrap_or(Timestamp::MAX),
            );
        }
        let pods: Vec<_> = self
            .pods
            .pods_on(name)
            .iter()
            .filter_map(|k| self.ctx.informers.pods.get_key(k))
            .collect();
        let fallback_start = verdict.not_ready_since.unwrap_or(now);
        // This node's readiness as just decided; the others' as cached.
        let all_nodes = self.ctx.informers.nodes.list();
        let may_evict = evictions_allowed(
            all_nodes.iter().map(|n| {
                let ready = if n.metadata.name.as_deref() == Some(name) {
                    verdict.readiness == Readiness::Ready
                } else {
                    ready_status(n) == Some("True")
                };
                (zone_of(n), ready)
            }),
            zone_of(&node),
        );
        for pod in pods {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(at) = pod_eviction_time(
                &pod.to_pod(),
                &taints,
                fallback_start,
                signed(config.pod_eviction_timeout),
            ) {
                if at > now {
                    next = next.min(at);
                } else if !may_evict {
                    debug!(pod = %format!("{namespace}/{pod_name}"), "eviction due but paused: zone disrupted");
                } else {
                    info!(pod = %format!("{namespace}/{pod_name}"), "evicting");
                    self.ctx.events.normal(
                        &object_reference(pod.as_ref()),
                        EVENT_TAINT_MANAGER_EVICTION,
                        format!("Marking for deletion Pod {namespace}/{pod_name}"),
                    );
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: pod.metadata.uid.clone(),
                            resource_version: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match api.delete(&pod_name, &dp).await {
                        Ok(_) => {}
                        Err(e) if is_stale(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
            }
            if verdict.marks_pods_not_ready() {
                if let Some(conditions) = pod_not_ready_conditions(&pod.to_pod(), now) {
                    patch_pod_conditions(&api, &pod, conditions).await?;
                }
            }
        }
        self.queue.add_after(name.to_string(), until(now, next));
        Ok(())
    }
}

#[async_trait::async_trait]
impl Controller for NodeLifecycleController {
    type Key = String;
    const NAME: &'static str = "node-lifecycle";

    fn queue(&self) -> &WorkQueue<String> {
        &self.queue
    }

    fn all_keys(&self) -> Vec<String> {
        self.ctx
            .informers
            .nodes
            .keys()
            .into_iter()
            .map(|k| k.name)
            .collect()
    }

    async fn sync(&self, key: String) -> anyhow::Result<()> {
        let span = info_span!("node_lifecycle", node = %key);
        self.check(&key).instrument(span).await
    }
}
