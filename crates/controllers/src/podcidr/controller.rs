//! The node IPAM loop: gives every Node a `spec.podCIDR`/`spec.podCIDRs` from
//! [`crate::podcidr::CidrAllocator`]. Before handing anything out it restores what every cached
//! Node already holds, so one subnet never goes to two nodes across restarts or leader changes;
//! a deleted Node's subnets are released (and Nodes still waiting for one are tried again).
//! When the range is full the Node gets a `CIDRNotAvailable` Event and is tried again later. The
//! allocator catches up with the Node cache again whenever leadership starts (and at each
//! resync), since another instance may have allocated while this one stood by.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, PostParams};
use switchyard_api::k8s::api::core::v1::Node;
use tracing::{info, info_span, warn, Instrument};

use crate::podcidr::{
    node_pod_cidrs, CidrAllocator, CidrError, DEFAULT_NODE_CIDR_MASK_SIZE_IPV6,
    EVENT_CIDR_NOT_AVAILABLE,
};
use crate::runtime::{is_conflict, object_reference, Change, Context, Controller, WorkQueue};

/// How often a Node that found the range full is tried again (a Node deletion retries at once).
pub const CIDR_NOT_AVAILABLE_RETRY: Duration = Duration::from_secs(30);

/// Allocates pod CIDRs to Nodes.
pub struct NodeIpamController {
    ctx: Context,
    queue: WorkQueue<String>,
    /// Built (and restored from the Node cache) at the first sync.
    allocator: Mutex<Option<CidrAllocator>>,
    /// Set when leadership starts (and at each resync): the allocator must catch up with the
    /// Node cache before its next decision, since another leader may have allocated meanwhile.
    restore_pending: AtomicBool,
}

impl NodeIpamController {
    /// Registers the Node handler.
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(Self {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            allocator: Mutex::new(None),
            restore_pending: AtomicBool::new(true),
        });
        let queue = this.queue.clone();
        let nodes = ctx.informers.nodes.clone();
        ctx.informers.nodes.on_change(move |change| match change {
            Change::Added(node) | Change::Updated { new: node, .. } => {
                if let Some(name) = node.metadata.name.as_deref() {
                    queue.add(name.to_string());
                }
            }
            Change::Deleted(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    queue.add(name.to_string());
                }
                // Its subnet may be what a waiting Node needs.
                for waiting in nodes.list() {
                    if node_pod_cidrs(&waiting).is_empty() {
                        if let Some(name) = waiting.metadata.name.as_deref() {
                            queue.add(name.to_string());
                        }
                    }
                }
            }
        });
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CidrAllocator>> {
        self.allocator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The allocator, built on first use and brought in line with the Node cache whenever a
    /// restore is pending: every cached Node's CIDRs are registered (so nothing held is handed
    /// out again) and Nodes no longer cached are released. Allocations whose write has not
    /// reached the cache yet stay, as their Nodes are still cached.
    fn with_allocator<T>(&self, f: impl FnOnce(&mut CidrAllocator) -> T) -> Result<T, CidrError> {
        let mut guard = self.lock();
        if guard.is_none() {
            let config = &self.ctx.config;
            *guard = Some(CidrAllocator::new(
                &config.cluster_cidr,
                config.node_cidr_mask_size,
                DEFAULT_NODE_CIDR_MASK_SIZE_IPV6,
            )?);
            self.restore_pending.store(true, Ordering::Release);
        }
        let allocator = guard.as_mut().expect("built above");
        if self.restore_pending.swap(false, Ordering::AcqRel) {
            let nodes = self.ctx.informers.nodes.list();
            let cached: HashSet<&str> = nodes
                .iter()
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            for gone in allocator.nodes() {
                if !cached.contains(gone.as_str()) {
                    allocator.release(&gone);
                }
            }
            for node in &nodes {
                let name = node.metadata.name.as_deref().unwrap_or_default();
                let cidrs = node_pod_cidrs(node);
                if cidrs.is_empty() {
                    continue;
                }
                if let Err(e) = allocator.restore(name, &cidrs) {
                    warn!(node = %name, error = %e, "cannot restore pod CIDR");
                }
            }
        }
        Ok(f(allocator))
    }

    async fn reconcile(&self, name: &str) -> anyhow::Result<()> {
        let Some(node) = self.ctx.informers.nodes.get("", name) else {
            if self.with_allocator(|a| a.release(name))? {
                info!("released pod CIDR");
            }
            return Ok(());
        };
        let existing = node_pod_cidrs(&node);
        if !existing.is_empty() {
            if let Err(e) = self.with_allocator(|a| a.restore(name, &existing))? {
                warn!(error = %e, "node holds a pod CIDR the allocator cannot track");
            }
            return Ok(());
        }
        let cidrs = match self.with_allocator(|a| a.allocate(name))? {
            Ok(cidrs) => cidrs,
            Err(CidrError::Exhausted(range)) => {
                warn!(range = %range, "no pod CIDR left");
                self.ctx.events.normal(
                    &object_reference(node.as_ref()),
                    EVENT_CIDR_NOT_AVAILABLE,
                    format!("Node {name} status is now: {EVENT_CIDR_NOT_AVAILABLE}"),
                );
                self.queue
                    .add_after(name.to_string(), CIDR_NOT_AVAILABLE_RETRY);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let texts: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        let mut updated = node.as_ref().clone();
        let spec = updated.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = texts.first().cloned();
        spec.pod_cidrs = Some(texts.clone());
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        match nodes.replace(name, &PostParams::default(), &updated).await {
            Ok(_) => {
                info!(cidrs = ?texts, "allocated pod CIDR");
                Ok(())
            }
            // A conflict means the cached Node is stale, possibly because our own earlier write
            // of these very subnets succeeded: keep them recorded, the retry writes the same.
            Err(e) if is_conflict(&e) => Err(e.into()),
            Err(e) => {
                // Nothing was written: give the subnets back so they do not leak; the retry (or
                // the Node's next update) allocates again.
                self.with_allocator(|a| a.release(name))?;
                Err(e.into())
            }
        }
    }
}

#[async_trait::async_trait]
impl Controller for NodeIpamController {
    type Key = String;
    const NAME: &'static str = "node-ipam";

    fn queue(&self) -> &WorkQueue<String> {
        &self.queue
    }

    fn all_keys(&self) -> Vec<String> {
        self.restore_pending.store(true, Ordering::Release);
        self.ctx
            .informers
            .nodes
            .keys()
            .into_iter()
            .map(|k| k.name)
            .collect()
    }

    async fn sync(&self, key: String) -> anyhow::Result<()> {
        let span = info_span!("node_ipam", node = %key);
        self.reconcile(&key).instrument(span).await
    }
}
