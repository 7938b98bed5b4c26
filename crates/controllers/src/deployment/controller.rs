//! The loop of the Deployment controller: one key per Deployment. ReplicaSet events reach the
//! Deployment that controls the ReplicaSet (or, for orphans, those whose selector matches it);
//! deleted Pods reach the Deployment of their ReplicaSet, for Recreate, which waits for old Pods
//! to go. A sync reads the caches, asks [`plan`] for the writes and makes them: adoptions,
//! the new ReplicaSet, ReplicaSet rewrites (full replaces carrying the cached resourceVersion, so
//! a stale cache gets a 409 and a retry, never a lost update), deletions beyond the revision
//! history, the status (resourceVersion precondition), and the revision annotation.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use switchyard_api::k8s::api::apps::v1::{Deployment, ReplicaSet};
use switchyard_api::k8s::api::core::v1::Pod;
use switchyard_api::selector::LabelSelector;
use tracing::Instrument;

use super::{plan, ANNOTATION_REVISION};
use crate::controller_ref::{controller_of, controller_ref};
use crate::runtime::{
    is_not_found, object_reference, Change, Context, Controller, Informer, ObjectKey, WorkQueue,
    FIELD_MANAGER,
};

/// Rolls Deployments out through their ReplicaSets.
pub struct DeploymentController {
    ctx: Context,
    queue: WorkQueue<ObjectKey>,
}

/// The key of the Deployment controlling a ReplicaSet, if one does.
fn owner_key(rs: &ReplicaSet) -> Option<ObjectKey> {
    let r = controller_of(&rs.metadata)?;
    (r.kind == "Deployment" && r.api_version.starts_with("apps/")).then(|| {
        ObjectKey::new(
            rs.metadata.namespace.clone().unwrap_or_default(),
            r.name.clone(),
        )
    })
}

/// The Deployments of the ReplicaSet's namespace whose selector matches it (for orphans).
fn matching_deployments(deployments: &Informer<Deployment>, rs: &ReplicaSet) -> Vec<ObjectKey> {
    let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let labels = rs.metadata.labels.as_ref().unwrap_or(&empty);
    deployments
        .list_namespace(ns)
        .iter()
        .filter(|d| {
            d.spec
                .as_ref()
                .and_then(|s| LabelSelector::from_metav1(&s.selector).ok())
                .is_some_and(|sel| !sel.is_everything() && sel.matches(labels))
        })
        .map(|d| ObjectKey::of(d.as_ref()))
        .collect()
}

impl DeploymentController {
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(DeploymentController {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
        });

        let q = this.queue.clone();
        ctx.informers.deployments.on_change(move |change| {
            q.add(ObjectKey::of(change.object()));
        });

        let (q, deployments) = (this.queue.clone(), ctx.informers.deployments.clone());
        ctx.informers.replica_sets.on_change(move |change| {
            let mut keys: Vec<ObjectKey> = Vec::new();
            for rs in [change.old(), Some(change.object())].into_iter().flatten() {
                match owner_key(rs) {
                    Some(k) => keys.push(k),
                    None if !matches!(change, Change::Deleted(_)) => {
                        keys.extend(matching_deployments(&deployments, rs))
                    }
                    None => {}
                }
            }
            keys.dedup();
            keys.into_iter().for_each(|k| q.add(k));
        });

        let (q, replica_sets) = (this.queue.clone(), ctx.informers.replica_sets.clone());
        ctx.informers.pods.on_change(move |change| {
            let Change::Deleted(pod) = change else {
                return;
            };
            let Some(r) = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet") else {
                return;
            };
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            if let Some(key) = replica_sets.get(ns, &r.name).and_then(|rs| owner_key(&rs)) {
                q.add(key);
            }
        });
        this
    }

    /// Adds or removes the Deployment's controller reference on the named ReplicaSets.
    async fn set_ownership(&self, d: &Deployment, names: &[String], adopt: bool) -> Result<()> {
        let ns = d.metadata.namespace.as_deref().unwrap_or_default();
        let uid = d.metadata.uid.as_deref().unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), ns);
        for name in names {
            let Some(rs) = self.ctx.informers.replica_sets.get(ns, name) else {
                continue;
            };
            let mut rs = rs.as_ref().clone();
            let refs = rs.metadata.owner_references.get_or_insert_with(Vec::new);
            if adopt {
                refs.push(controller_ref("apps/v1", "Deployment", &d.metadata));
            } else {
                refs.retain(|r| r.uid != uid);
            }
            match api.replace(name, &PostParams::default(), &rs).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Controller for DeploymentController {
    type Key = ObjectKey;
    const NAME: &'static str = "deployment";

    fn queue(&self) -> &WorkQueue<ObjectKey> {
        &self.queue
    }

    fn all_keys(&self) -> Vec<ObjectKey> {
        self.ctx.informers.deployments.keys()
    }

    async fn sync(&self, key: ObjectKey) -> Result<()> {
        let span = tracing::debug_span!("sync", deployment = %key);
        self.reconcile(&key).instrument(span).await
    }
}

impl DeploymentController {
    async fn reconcile(&self, key: &ObjectKey) -> Result<()> {
        let key = key.clone();
        let Some(d) = self.ctx.informers.deployments.get_key(&key) else {
            return Ok(());
        };
        let informers = &self.ctx.informers;
        let rss = informers.replica_sets.list_namespace(&key.namespace);
        let rs_refs: Vec<&ReplicaSet> = rss.iter().map(Arc::as_ref).collect();
        // Only Recreate reads Pods (to wait for old ones to go).
        let pods: Vec<Pod> = if super::is_recreate(&d) {
            informers
                .pods
                .list_namespace(&key.namespace)
                .iter()
                .map(|p| p.to_pod())
                .collect()
        } else {
            Vec::new()
        };
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan(&d, &rs_refs, &pod_refs, self.ctx.now())?;

        self.set_ownership(&d, &plan.adopt, true).await?;
        self.set_ownership(&d, &plan.release, false).await?;

        let rs_api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
        let reference = object_reference(d.as_ref());
        if let Some(rs) = &plan.create {
            let name = rs.metadata.name.clone().unwrap_or_default();
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            // AlreadyExists means our cache lags (or a collision the next sync will see):
            // the error retries the key.
            rs_api.create(&PostParams::default(), rs).await?;
            self.ctx.events.normal(
                &reference,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {replicas}"),
            );
        }
        for rs in &plan.update {
            let name = rs.metadata.name.clone().unwrap_or_default();
            let before = rss
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|r| r.spec.as_ref().and_then(|s| s.replicas));
            let after = rs.spec.as_ref().and_then(|s| s.replicas);
            rs_api.replace(&name, &PostParams::default(), rs).await?;
            if let (Some(before), Some(after)) = (before, after) {
                if before != after {
                    let verb = if after > before { "up" } else { "down" };
                    self.ctx.events.normal(
                        &reference,
                        "ScalingReplicaSet",
                        format!("Scaled {verb} replica set {name} from {before} to {after}"),
                    );
                }
            }
        }
        for name in &plan.delete {
            let uid = rss
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|r| r.metadata.uid.clone());
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match rs_api.delete(name, &params).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }

        let d_api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
        if let Some(status) = plan.status {
            let mut updated = d.as_ref().clone();
            updated.status = Some(status);
            d_api
                .replace_status(&key.name, &PostParams::default(), &updated)
                .await?;
        }
        if let Some(revision) = plan.revision {
            let patch = json!({"metadata": {"annotations": {ANNOTATION_REVISION: revision}}});
            d_api
                .patch(
                    &key.name,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_string()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        if let Some(after) = plan.requeue_after {
            self.queue.add_after(key, after);
        }
        Ok(())
    }
}
