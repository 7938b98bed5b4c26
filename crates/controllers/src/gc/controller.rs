//! The loop of the garbage collector. Keys are one dependent (checked when it appears or its
//! owner references change, and at every resync), an owner that was deleted (every dependent
//! naming its uid is checked), or an owner being deleted with the `orphan` or
//! `foregroundDeletion` finalizer (its dependents lose their reference to it, or are deleted
//! first; then the finalizer is removed). Owners are looked up in the informers by name and
//! compared by uid; before acting on an owner that looks absent it is read from the API, since
//! the informers of different kinds are not ordered with each other (an owner created just
//! before its dependent may not be cached yet). Deletes carry the dependent's uid as
//! precondition and background propagation; removing dangling references is a full replace
//! with the cached resourceVersion.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use anyhow::Result;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use switchyard_api::k8s::api::apps::v1::{Deployment, ReplicaSet};
use switchyard_api::k8s::api::core::v1::{Endpoints, Service};
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{
    api_group, decide, finalizers_without, owner_finalizing, GcDecision, OwnerFinalizing,
    OwnerState, FINALIZER_FOREGROUND, FINALIZER_ORPHAN, TRACKED_OWNER_KINDS,
};
use crate::runtime::{is_not_found, Cacheable, Context, Controller, Informer, WorkQueue};

/// The kinds whose objects the collector deletes when their owners are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DependentKind {
    ReplicaSet,
    Pod,
    EndpointSlice,
}

/// The kinds whose objects own dependents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    Deployment,
    ReplicaSet,
    Service,
    Endpoints,
}

impl OwnerKind {
    /// The owner kind an owner reference names, if we track it.
    fn of(r: &OwnerReference) -> Option<Self> {
        match (api_group(&r.api_version), r.kind.as_str()) {
            ("apps", "Deployment") => Some(Self::Deployment),
            ("apps", "ReplicaSet") => Some(Self::ReplicaSet),
            ("", "Service") => Some(Self::Service),
            ("", "Endpoints") => Some(Self::Endpoints),
            _ => None,
        }
    }

    /// The kinds of its dependents.
    fn dependents(self) -> &'static [DependentKind] {
        match self {
            Self::Deployment => &[DependentKind::ReplicaSet],
            Self::ReplicaSet => &[DependentKind::Pod],
            Self::Service | Self::Endpoints => &[DependentKind::EndpointSlice],
        }
    }
}

/// A unit of work of the garbage collector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GcKey {
    /// One dependent.
    Object {
        kind: DependentKind,
        namespace: String,
        name: String,
    },
    /// The dependents of `kind` in `namespace` that name the deleted owner `uid`.
    OwnerGone {
        kind: DependentKind,
        namespace: String,
        uid: String,
    },
    /// An owner being deleted with the `orphan` or `foregroundDeletion` finalizer.
    Finalizing {
        kind: OwnerKind,
        namespace: String,
        name: String,
    },
}

/// How long a foreground deletion waits before checking its dependents again, should a
/// dependent's deletion event be missed.
const FOREGROUND_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Deletes dependents whose owners are gone (background propagation).
pub struct GarbageCollector {
    ctx: Context,
    queue: WorkQueue<GcKey>,
}

fn has_owners(meta: &ObjectMeta) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|r| !r.is_empty())
}

fn object_key(kind: DependentKind, meta: &ObjectMeta) -> GcKey {
    GcKey::Object {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Enqueues a dependent when it appears with owners or its owner references change.
fn watch_dependents<K>(informer: &Informer<K>, kind: DependentKind, queue: &WorkQueue<GcKey>)
where
    K: Cacheable,
{
    let q = queue.clone();
    informer.on_change(move |change| {
        let obj = change.object();
        let meta = obj.meta();
        let relevant = match change.old() {
            None => has_owners(meta),
            Some(old) => old.meta().owner_references != meta.owner_references,
        };
        if let crate::runtime::Change::Deleted(_) = change {
            // An owner in foreground deletion may be waiting for this one.
            for r in meta.owner_references.iter().flatten() {
                if let Some(kind) = OwnerKind::of(r) {
                    q.add(GcKey::Finalizing {
                        kind,
                        namespace: meta.namespace.clone().unwrap_or_default(),
                        name: r.name.clone(),
                    });
                }
            }
        } else if relevant {
            q.add(object_key(kind, meta));
        }
    });
}

/// Enqueues the owner's dependents when it is deleted, and the owner itself when it is being
/// deleted with a collector finalizer.
fn watch_owners<K>(informer: &Informer<K>, owner_kind: OwnerKind, queue: &WorkQueue<GcKey>)
where
    K: Cacheable,
{
    let q = queue.clone();
    let kinds = owner_kind.dependents();
    informer.on_change(move |change| {
        let meta = change.object().meta();
        if !matches!(change, crate::runtime::Change::Deleted(_))
            && owner_finalizing(meta) != OwnerFinalizing::Nothing
        {
            q.add(GcKey::Finalizing {
                kind: owner_kind,
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
            });
        }
        if let crate::runtime::Change::Deleted(owner) = change {
            let meta = owner.meta();
            let (Some(uid), namespace) = (meta.uid.clone(), meta.namespace.clone()) else {
                return;
            };
            for kind in kinds {
                q.add(GcKey::OwnerGone {
                    kind: *kind,
                    namespace: namespace.clone().unwrap_or_default(),
                    uid: uid.clone(),
                });
            }
        }
    });
}

/// Writes `refs` as the object's owner references with a merge patch that names the cached
/// resourceVersion, so a decision taken on a stale cache fails with 409 instead of overwriting a
/// newer list. A patch rather than a replace: cached objects may be slim views
/// ([`crate::pods::CachedPod`]) that must never be written back whole.
pub(crate) async fn write_owner_references<K>(
    api: &Api<K>,
    meta: &ObjectMeta,
    refs: &[OwnerReference],
) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let name = meta.name.as_deref().unwrap_or_default();
    let patch = json!({"metadata": {
        "resourceVersion": meta.resource_version,
        "ownerReferences": refs,
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

impl GarbageCollector {
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(GarbageCollector {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
        });
        let inf = &ctx.informers;
        watch_dependents(&inf.replica_sets, DependentKind::ReplicaSet, &this.queue);
        watch_dependents(&inf.pods, DependentKind::Pod, &this.queue);
        watch_dependents(
            &inf.endpoint_slices,
            DependentKind::EndpointSlice,
            &this.queue,
        );
        watch_owners(&inf.deployments, OwnerKind::Deployment, &this.queue);
        watch_owners(&inf.replica_sets, OwnerKind::ReplicaSet, &this.queue);
        watch_owners(&inf.services, OwnerKind::Service, &this.queue);
        watch_owners(&inf.endpoints, OwnerKind::Endpoints, &this.queue);
        this
    }

    /// The owner's state according to the caches.
    fn cached_state(&self, namespace: &str, r: &OwnerReference) -> OwnerState {
        fn state<K>(inf: &Informer<K>, ns: &str, r: &OwnerReference) -> OwnerState
        where
            K: Cacheable,
        {
            match inf.get(ns, &r.name) {
                Some(o) if o.meta().uid.as_deref() == Some(r.uid.as_str()) => OwnerState::Present,
                _ => OwnerState::Absent,
            }
        }
        let inf = &self.ctx.informers;
        match (api_group(&r.api_version), r.kind.as_str()) {
            ("apps", "Deployment") => state(&inf.deployments, namespace, r),
            ("apps", "ReplicaSet") => state(&inf.replica_sets, namespace, r),
            ("", "Service") => state(&inf.services, namespace, r),
            ("", "Endpoints") => state(&inf.endpoints, namespace, r),
            _ => OwnerState::Unknown,
        }
    }

    /// Whether the owner exists, read from the API.
    async fn live_present(&self, namespace: &str, r: &OwnerReference) -> Result<bool> {
        async fn get<K>(client: &kube::Client, ns: &str, r: &OwnerReference) -> Result<bool>
        where
            K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
                + Clone
                + DeserializeOwned
                + Debug,
        {
            let api: Api<K> = Api::namespaced(client.clone(), ns);
            Ok(api
                .get_opt(&r.name)
                .await?
                .is_some_and(|o| o.meta().uid.as_deref() == Some(r.uid.as_str())))
        }
        let c = &self.ctx.client;
        match (api_group(&r.api_version), r.kind.as_str()) {
            ("apps", "Deployment") => get::<Deployment>(c, namespace, r).await,
            ("apps", "ReplicaSet") => get::<ReplicaSet>(c, namespace, r).await,
            ("", "Service") => get::<Service>(c, namespace, r).await,
            ("", "Endpoints") => get::<Endpoints>(c, namespace, r).await,
            _ => Ok(true),
        }
    }

    /// Collects one dependent if its owners are gone.
    async fn collect<K>(&self, informer: &Informer<K>, namespace: &str, name: &str) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let Some(obj) = informer.get(namespace, name) else {
            return Ok(());
        };
        let meta = obj.meta();
        let decision = decide(meta, |r| self.cached_state(namespace, r));
        let dangling: Vec<&OwnerReference> = match &decision {
            GcDecision::Keep => return Ok(()),
            GcDecision::Delete => meta.owner_references.iter().flatten().collect(),
            GcDecision::RemoveDanglingOwners(uids) => meta
                .owner_references
                .iter()
                .flatten()
                .filter(|r| uids.contains(&r.uid))
                .collect(),
        };
        // Confirm with the API: a cache may not have seen a new owner yet.
        let mut gone = HashSet::new();
        for r in &dangling {
            if !self.live_present(namespace, r).await? {
                gone.insert(r.uid.clone());
            }
        }
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
        let all_gone = meta
            .owner_references
            .iter()
            .flatten()
            .all(|r| gone.contains(&r.uid));
        if decision == GcDecision::Delete && all_gone {
            tracing::info!(
                namespace,
                name,
                kind = K::kind(&()).as_ref(),
                "deleting object whose owners are gone"
            );
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: meta.uid.clone(),
                    resource_version: None,
                }),
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            match api.delete(name, &params).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => return Ok(()),
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let kept: Vec<OwnerReference> = meta
            .owner_references
            .iter()
            .flatten()
            .filter(|r| !gone.contains(&r.uid))
            .cloned()
            .collect();
        match write_owner_references(&api, meta, &kept).await {
            Err(e) if !is_not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn collect_kind(&self, kind: DependentKind, namespace: &str, name: &str) -> Result<()> {
        let inf = &self.ctx.informers;
        match kind {
            DependentKind::ReplicaSet => self.collect(&inf.replica_sets, namespace, name).await,
            DependentKind::Pod => self.collect(&inf.pods, namespace, name).await,
            DependentKind::EndpointSlice => {
                self.collect(&inf.endpoint_slices, namespace, name).await
            }
        }
    }

    /// Removes the owner reference with `uid` from one dependent.
    async fn drop_owner_ref<K>(
        &self,
        informer: &Informer<K>,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<()>
    where
        K: Cacheable + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let Some(obj) = informer.get(namespace, name) else {
            return Ok(());
        };
        let meta = obj.meta();
        let kept: Vec<OwnerReference> = meta
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != uid)
            .cloned()
            .collect();
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
        match write_owner_references(&api, meta, &kept).await {
            Err(e) if !is_not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Deletes one dependent of an owner in foreground deletion (unless already being deleted),
    /// itself in the foreground when it may own objects (a ReplicaSet its Pods, as Kubernetes
    /// does all the way down) and in the background otherwise: Pods and EndpointSlices own
    /// nothing, and a `foregroundDeletion` finalizer on them would wait for nothing forever.
    async fn delete_for_foreground<K>(
        &self,
        informer: &Informer<K>,
        namespace: &str,
        name: &str,
        propagation: PropagationPolicy,
    ) -> Result<()>
    where
        K: Cacheable + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let Some(obj) = informer.get(namespace, name) else {
            return Ok(());
        };
        if obj.meta().deletion_timestamp.is_some() {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: obj.meta().uid.clone(),
                resource_version: None,
            }),
            propagation_policy: Some(propagation),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Err(e) if !is_not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Orphans or deletes a finalizing owner's dependents; once that is done, removes the
    /// finalizer so the owner goes.
    async fn finalize<K>(
        &self,
        informer: &Informer<K>,
        kind: OwnerKind,
        namespace: &str,
        name: &str,
    ) -> Result<()>
    where
        K: Cacheable + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let Some(owner) = informer.get(namespace, name) else {
            return Ok(());
        };
        let meta = owner.meta();
        let uid = meta.uid.clone().unwrap_or_default();
        let finalizing = owner_finalizing(meta);
        let finalizer = match finalizing {
            OwnerFinalizing::Nothing => return Ok(()),
            OwnerFinalizing::Orphan => FINALIZER_ORPHAN,
            OwnerFinalizing::Foreground => FINALIZER_FOREGROUND,
        };
        let inf = &self.ctx.informers;
        let mut remaining = 0;
        for dependent_kind in kind.dependents() {
            for dependent in self.dependents_of(*dependent_kind, namespace, &uid) {
                if finalizing == OwnerFinalizing::Orphan {
                    match dependent_kind {
                        DependentKind::ReplicaSet => {
                            self.drop_owner_ref(&inf.replica_sets, namespace, &dependent, &uid)
                                .await?
                        }
                        DependentKind::Pod => {
                            self.drop_owner_ref(&inf.pods, namespace, &dependent, &uid)
                                .await?
                        }
                        DependentKind::EndpointSlice => {
                            self.drop_owner_ref(&inf.endpoint_slices, namespace, &dependent, &uid)
                                .await?
                        }
                    }
                } else {
                    remaining += 1;
                    match dependent_kind {
                        DependentKind::ReplicaSet => {
                            self.delete_for_foreground(
                                &inf.replica_sets,
                                namespace,
                                &dependent,
                                PropagationPolicy::Foreground,
                            )
                            .await?
                        }
                        DependentKind::Pod => {
                            self.delete_for_foreground(
                                &inf.pods,
                                namespace,
                                &dependent,
                                PropagationPolicy::Background,
                            )
                            .await?
                        }
                        DependentKind::EndpointSlice => {
                            self.delete_for_foreground(
                                &inf.endpoint_slices,
                                namespace,
                                &dependent,
                                PropagationPolicy::Background,
                            )
                            .await?
                        }
                    }
                }
            }
        }
        if remaining > 0 {
            // Each dependent's deletion re-queues this owner; this is a safety net.
            self.queue.add_after(
                GcKey::Finalizing {
                    kind,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                },
                FOREGROUND_RECHECK,
            );
            return Ok(());
        }
        tracing::info!(
            namespace,
            name,
            finalizer,
            "dependents handled; removing finalizer"
        );
        let patch = json!({"metadata": {
            "resourceVersion": meta.resource_version,
            "finalizers": finalizers_without(meta, finalizer),
        }});
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(e) if !is_not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn finalize_kind(&self, kind: OwnerKind, namespace: &str, name: &str) -> Result<()> {
        let inf = &self.ctx.informers;
        match kind {
            OwnerKind::Deployment => self.finalize(&inf.deployments, kind, namespace, name).await,
            OwnerKind::ReplicaSet => {
                self.finalize(&inf.replica_sets, kind, namespace, name)
                    .await
            }
            OwnerKind::Service => self.finalize(&inf.services, kind, namespace, name).await,
            OwnerKind::Endpoints => self.finalize(&inf.endpoints, kind, namespace, name).await,
        }
    }

    /// Names of the dependents of `kind` in `namespace` naming `uid` as owner.
    fn dependents_of(&self, kind: DependentKind, namespace: &str, uid: &str) -> Vec<String> {
        fn names<K>(inf: &Informer<K>, ns: &str, uid: &str) -> Vec<String>
        where
            K: Cacheable,
        {
            inf.list_namespace(ns)
                .iter()
                .filter(|o| {
                    o.meta()
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|r| r.uid == uid)
                })
                .filter_map(|o| o.meta().name.clone())
                .collect()
        }
        let inf = &self.ctx.informers;
        match kind {
            DependentKind::ReplicaSet => names(&inf.replica_sets, namespace, uid),
            DependentKind::Pod => names(&inf.pods, namespace, uid),
            DependentKind::EndpointSlice => names(&inf.endpoint_slices, namespace, uid),
        }
    }
}

#[async_trait::async_trait]
impl Controller for GarbageCollector {
    type Key = GcKey;
    const NAME: &'static str = "garbagecollector";

    fn queue(&self) -> &WorkQueue<GcKey> {
        &self.queue
    }

    fn all_keys(&self) -> Vec<GcKey> {
        fn keys<K>(inf: &Informer<K>, kind: DependentKind, out: &mut Vec<GcKey>)
        where
            K: Cacheable,
        {
            for o in inf.list() {
                let meta = o.meta();
                let tracked = meta.owner_references.iter().flatten().any(|r| {
                    TRACKED_OWNER_KINDS.contains(&(api_group(&r.api_version), r.kind.as_str()))
                });
                if tracked {
                    out.push(object_key(kind, meta));
                }
            }
        }
        fn finalizing<K>(inf: &Informer<K>, kind: OwnerKind, out: &mut Vec<GcKey>)
        where
            K: Cacheable,
        {
            for o in inf.list() {
                let meta = o.meta();
                if owner_finalizing(meta) != OwnerFinalizing::Nothing {
                    out.push(GcKey::Finalizing {
                        kind,
                        namespace: meta.namespace.clone().unwrap_or_default(),
                        name: meta.name.clone().unwrap_or_default(),
                    });
                }
            }
        }
        let inf = &self.ctx.informers;
        let mut out = Vec::new();
        finalizing(&inf.deployments, OwnerKind::Deployment, &mut out);
        finalizing(&inf.replica_sets, OwnerKind::ReplicaSet, &mut out);
        finalizing(&inf.services, OwnerKind::Service, &mut out);
        finalizing(&inf.endpoints, OwnerKind::Endpoints, &mut out);
        keys(&inf.replica_sets, DependentKind::ReplicaSet, &mut out);
        keys(&inf.pods, DependentKind::Pod, &mut out);
        keys(&inf.endpoint_slices, DependentKind::EndpointSlice, &mut out);
        out
    }

    async fn sync(&self, key: GcKey) -> Result<()> {
        match key {
            GcKey::Object {
                kind,
                namespace,
                name,
            } => self.collect_kind(kind, &namespace, &name).await,
            GcKey::OwnerGone {
                kind,
                namespace,
                uid,
            } => {
                let mut first_error = None;
                for name in self.dependents_of(kind, &namespace, &uid) {
                    if let Err(e) = self.collect_kind(kind, &namespace, &name).await {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
            GcKey::Finalizing {
                kind,
                namespace,
                name,
            } => self.finalize_kind(kind, &namespace, &name).await,
        }
    }
}
