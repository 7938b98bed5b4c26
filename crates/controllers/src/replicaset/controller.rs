//! The loop of the ReplicaSet controller: one key per ReplicaSet. Pod events reach the
//! ReplicaSet that controls the Pod (or, for orphans, the ReplicaSets whose selector matches
//! it) and settle its [`Expectations`]; a sync reads the caches, asks [`plan`] for the writes and
//! makes them: adoptions and releases (full replaces, so a stale cache gets a 409 and a retry),
//! creates in slow-start batches (1, 2, 4, ... as Kubernetes' `slowStartBatch`, so a failing
//! template does not flood the API), deletes with a uid precondition, then the status with the
//! ReplicaSet's resourceVersion as precondition.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures::future::join_all;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use switchyard_api::k8s::api::apps::v1::ReplicaSet;
use switchyard_api::k8s::api::core::v1::Pod;
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::Instrument;

use super::{
    plan, selector_of, status_needs_update, with_replica_failure, Expectations, ReplicaFailure,
};
use crate::controller_ref::{controller_of, controller_ref};
use crate::gc::controller::write_owner_references;
use crate::runtime::{
    is_not_found, object_reference, Change, Context, Controller, Informer, ObjectKey, WorkQueue,
};

type SharedExpectations = Arc<Mutex<Expectations<ObjectKey>>>;

/// Keeps each ReplicaSet's Pods at its replica count.
pub struct ReplicaSetController {
    ctx: Context,
    queue: WorkQueue<ObjectKey>,
    expectations: SharedExpectations,
}

/// The key of the ReplicaSet controlling the Pod, if a ReplicaSet does.
fn owner_key(pod: &ObjectMeta) -> Option<ObjectKey> {
    let r = controller_of(pod)?;
    (r.kind == "ReplicaSet" && r.api_version.starts_with("apps/"))
        .then(|| ObjectKey::new(pod.namespace.clone().unwrap_or_default(), r.name.clone()))
}

/// The ReplicaSets of the Pod's namespace whose selector matches it (for orphans).
fn matching_replica_sets(replica_sets: &Informer<ReplicaSet>, pod: &ObjectMeta) -> Vec<ObjectKey> {
    let ns = pod.namespace.as_deref().unwrap_or_default();
    let empty = Default::default();
    let labels = pod.labels.as_ref().unwrap_or(&empty);
    replica_sets
        .list_namespace(ns)
        .iter()
        .filter(|rs| selector_of(rs).is_ok_and(|sel| !sel.is_everything() && sel.matches(labels)))
        .map(|rs| ObjectKey::of(rs.as_ref()))
        .collect()
}

fn lock(e: &SharedExpectations) -> std::sync::MutexGuard<'_, Expectations<ObjectKey>> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReplicaSetController {
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(ReplicaSetController {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            expectations: Arc::new(Mutex::new(Expectations::default())),
        });

        let (q, exp) = (this.queue.clone(), this.expectations.clone());
        ctx.informers.replica_sets.on_change(move |change| {
            let key = ObjectKey::of(change.object());
            if let Change::Deleted(_) = change {
                lock(&exp).forget(&key);
            }
            q.add(key);
        });

        let (q, exp, replica_sets) = (
            this.queue.clone(),
            this.expectations.clone(),
            ctx.informers.replica_sets.clone(),
        );
        ctx.informers.pods.on_change(move |change| {
            let pod = &change.object().metadata;
            let name = pod.name.as_deref().unwrap_or_default();
            match &change {
                Change::Added(_) => match owner_key(pod) {
                    Some(key) => {
                        let mut e = lock(&exp);
                        if pod.deletion_timestamp.is_some() {
                            // Seen for the first time already terminating (a relist).
                            e.deletion_observed(&key, name);
                        } else {
                            e.creation_observed(&key);
                        }
                        drop(e);
                        q.add(key);
                    }
                    None => matching_replica_sets(&replica_sets, pod)
                        .into_iter()
                        .for_each(|k| q.add(k)),
                },
                Change::Updated { old, new } => {
                    let (old, new) = (&old.metadata, &new.metadata);
                    let (old_owner, new_owner) = (owner_key(old), owner_key(new));
                    if new.deletion_timestamp.is_some() && old.deletion_timestamp.is_none() {
                        if let Some(key) = &new_owner {
                            lock(&exp).deletion_observed(key, name);
                        }
                    }
                    if old_owner != new_owner {
                        old_owner.into_iter().for_each(|k| q.add(k));
                    }
                    match new_owner {
                        Some(key) => q.add(key),
                        None if old.labels != new.labels => {
                            matching_replica_sets(&replica_sets, new)
                                .into_iter()
                                .for_each(|k| q.add(k))
                        }
                        None => {}
                    }
                }
                Change::Deleted(_) => {
                    if let Some(key) = owner_key(pod) {
                        lock(&exp).deletion_observed(&key, name);
                        q.add(key);
                    }
                }
            }
        });
        this
    }

    /// Adds or removes the ReplicaSet's controller reference on the named Pods.
    async fn set_ownership(&self, rs: &ReplicaSet, names: &[String], adopt: bool) -> Result<()> {
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        for name in names {
            let Some(pod) = self.ctx.informers.pods.get(ns, name) else {
                continue;
            };
            let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
            if adopt {
                refs.push(controller_ref("apps/v1", "ReplicaSet", &rs.metadata));
            } else {
                refs.retain(|r| r.uid != uid);
            }
            match write_owner_references(&api, &pod.metadata, &refs).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Creates `pods` in batches of 1, 2, 4, ...; stops at the first batch with a failure. Every
    /// Pod not created lowers the expectations. Returns the first error.
    async fn create_pods(&self, key: &ObjectKey, pods: Vec<Pod>) -> Option<String> {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
        let total = pods.len();
        let mut pods = pods.into_iter();
        let params = PostParams::default();
        let mut batch = 1;
        let mut done = 0;
        while done < total {
            let this: Vec<Pod> = pods.by_ref().take(batch.min(total - done)).collect();
            done += this.len();
            let results = join_all(this.iter().map(|pod| api.create(&params, pod))).await;
            let mut error = None;
            for r in results {
                if let Err(e) = r {
                    lock(&self.expectations).creation_observed(key);
                    error.get_or_insert_with(|| e.to_string());
                }
            }
            if let Some(e) = error {
                for _ in done..total {
                    lock(&self.expectations).creation_observed(key);
                }
                return Some(e);
            }
            batch *= 2;
        }
        None
    }
}

#[async_trait::async_trait]
impl Controller for ReplicaSetController {
    type Key = ObjectKey;
    const NAME: &'static str = "replicaset";

    fn queue(&self) -> &WorkQueue<ObjectKey> {
        &self.queue
    }

    fn all_keys(&self) -> Vec<ObjectKey> {
        self.ctx.informers.replica_sets.keys()
    }

    async fn sync(&self, key: ObjectKey) -> Result<()> {
        let span = tracing::debug_span!("sync", replicaset = %key);
        self.reconcile(&key).instrument(span).await
    }
}

impl ReplicaSetController {
    async fn reconcile(&self, key: &ObjectKey) -> Result<()> {
        let key = key.clone();
        let Some(rs) = self.ctx.informers.replica_sets.get_key(&key) else {
            lock(&self.expectations).forget(&key);
            return Ok(());
        };
        let now = self.ctx.now();
        let pods: Vec<Pod> = self
            .ctx
            .informers
            .pods
            .list_namespace(&key.namespace)
            .iter()
            .map(|p| p.to_pod())
            .collect();
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let satisfied = lock(&self.expectations).satisfied(&key, now);
        let plan = plan(&rs, &pod_refs, satisfied, now)?;

        self.set_ownership(&rs, &plan.adopt, true).await?;
        self.set_ownership(&rs, &plan.release, false).await?;

        let mut failure = None;
        if !plan.create.is_empty() || !plan.delete.is_empty() {
            lock(&self.expectations).expect(
                key.clone(),
                plan.create.len(),
                plan.delete.iter().map(|d| d.name.clone()),
                now,
            );
        }
        let reference = object_reference(rs.as_ref());
        if !plan.create.is_empty() {
            let n = plan.create.len();
            match self.create_pods(&key, plan.create).await {
                None => self.ctx.events.normal(
                    &reference,
                    "SuccessfulCreate",
                    format!("Created {n} pod(s)"),
                ),
                Some(e) => {
                    self.ctx
                        .events
                        .warning(&reference, "FailedCreate", e.clone());
                    failure = Some(ReplicaFailure {
                        reason: "FailedCreate".to_string(),
                        message: e,
                    });
                }
            }
        }
        if !plan.delete.is_empty() {
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
            let results = join_all(plan.delete.iter().map(|d| {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(d.uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let api = api.clone();
                async move { (d, api.delete(&d.name, &params).await) }
            }))
            .await;
            for (d, r) in results {
                match r {
                    Ok(_) => self.ctx.events.normal(
                        &reference,
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", d.name),
                    ),
                    Err(e) => {
                        // Gone already, or failed: either way no deletion event will come.
                        lock(&self.expectations).deletion_observed(&key, &d.name);
                        if !is_not_found(&e) && failure.is_none() {
                            failure = Some(ReplicaFailure {
                                reason: "FailedDelete".to_string(),
                                message: e.to_string(),
                            });
                        }
                    }
                }
            }
        }

        let status = match &failure {
            Some(f) => with_replica_failure(&rs, plan.status, f, now),
            None => plan.status,
        };
        if status_needs_update(&rs, &status) {
            let mut updated = rs.as_ref().clone();
            updated.status = Some(status);
            let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
            api.replace_status(&key.name, &PostParams::default(), &updated)
                .await?;
        }
        if let Some(after) = plan.requeue_after {
            self.queue.add_after(key.clone(), after);
        }
        if let Some(f) = failure {
            anyhow::bail!("{}: {}", f.reason, f.message);
        }
        Ok(())
    }
}
