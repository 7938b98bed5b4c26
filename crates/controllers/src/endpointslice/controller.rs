//! The loop of the EndpointSlice, Endpoints and EndpointSlice-mirroring controllers: one key per
//! Service. A Service with a selector gets its slices and its core/v1 Endpoints from the Pods it
//! selects; a selector-less Service gets the user's Endpoints mirrored into slices.
//!
//! Pod changes reach only the Services that select the Pod, found through an index of Service
//! selectors by label, and only when something an endpoint shows changed (addresses, readiness,
//! termination, node, hostname, ports, labels). The time a change was first observed becomes the
//! slices' `endpoints.kubernetes.io/last-change-trigger-time`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use kube::api::{Api, DeleteParams, PostParams};
use switchyard_api::k8s::api::core::v1::{Endpoints, Pod, Service};
use switchyard_api::k8s::api::discovery::v1::EndpointSlice;
use switchyard_api::selector::LabelSelector;

use super::{
    desired_endpoints, desired_endpoints_object, mirror_slices, reconcile_slices, selector_of,
    SliceChanges, ANNOTATION_TRIGGER_TIME, DEFAULT_MAX_ENDPOINTS_PER_SLICE, LABEL_MANAGED_BY,
    LABEL_SERVICE_NAME, LABEL_TOPOLOGY_ZONE, MANAGED_BY_CONTROLLER, MANAGED_BY_MIRRORING,
};
use crate::pods::CachedPod;
use crate::runtime::{is_not_found, Change, Context, Controller, ObjectKey, WorkQueue};

/// Service selectors by `namespace\0key=value`: which Services may select a Pod with that label.
type SelectorIndex = HashMap<String, HashSet<String>>;

fn index_key(namespace: &str, key: &str, value: &str) -> String {
    format!("{namespace}\0{key}={value}")
}

/// Keeps Services' EndpointSlices and Endpoints in step with their Pods.
pub struct EndpointsController {
    ctx: Context,
    queue: WorkQueue<ObjectKey>,
    selectors: Arc<Mutex<SelectorIndex>>,
    /// When the oldest change not yet synced was observed, per Service.
    triggers: Arc<Mutex<HashMap<ObjectKey, jiff::Timestamp>>>,
}

/// Enqueues Service keys, remembering when each change was first observed.
#[derive(Clone)]
struct Enqueuer {
    queue: WorkQueue<ObjectKey>,
    triggers: Arc<Mutex<HashMap<ObjectKey, jiff::Timestamp>>>,
}

impl Enqueuer {
    fn add(&self, key: ObjectKey) {
        self.triggers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert_with(jiff::Timestamp::now);
        self.queue.add(key);
    }
}

impl EndpointsController {
    pub fn new(ctx: &Context) -> Arc<Self> {
        let this = Arc::new(EndpointsController {
            ctx: ctx.clone(),
            queue: WorkQueue::new(),
            selectors: Arc::new(Mutex::new(HashMap::new())),
            triggers: Arc::new(Mutex::new(HashMap::new())),
        });
        let enqueue = Enqueuer {
            queue: this.queue.clone(),
            triggers: this.triggers.clone(),
        };

        let (q, selectors) = (enqueue.clone(), this.selectors.clone());
        ctx.informers.services.on_change(move |change| {
            let mut index = selectors.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = change.old() {
                update_index(&mut index, old, false);
            }
            if !matches!(change, Change::Deleted(_)) {
                update_index(&mut index, change.object(), true);
            }
            drop(index);
            q.add(ObjectKey::of(change.object()));
        });

        let (q, selectors, services) = (
            enqueue.clone(),
            this.selectors.clone(),
            ctx.informers.services.clone(),
        );
        ctx.informers.pods.on_change(move |change| {
            if let Change::Updated { old, new } = &change {
                if !endpoint_relevant_change(old, new) {
                    return;
                }
            }
            let index = selectors.lock().unwrap_or_else(|e| e.into_inner());
            let mut keys = HashSet::new();
            for pod in [change.old(), Some(change.object())].into_iter().flatten() {
                selecting_services(&index, &services, pod, &mut keys);
            }
            drop(index);
            for key in keys {
                q.add(key);
            }
        });

        let q = enqueue.clone();
        ctx.informers.endpoint_slices.on_change(move |change| {
            let slice = change.object();
            let labels = slice.metadata.labels.as_ref();
            let managed = labels
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                .is_some_and(|m| m == MANAGED_BY_CONTROLLER || m == MANAGED_BY_MIRRORING);
            if let (true, Some(service)) = (managed, labels.and_then(|l| l.get(LABEL_SERVICE_NAME)))
            {
                let ns = slice.metadata.namespace.clone().unwrap_or_default();
                q.add(ObjectKey::new(ns, service.clone()));
            }
        });

        let q = enqueue.clone();
        ctx.informers.endpoints.on_change(move |change| {
            q.add(ObjectKey::of(change.object()));
        });

        let (q, services) = (enqueue, ctx.informers.services.clone());
        ctx.informers.nodes.on_change(move |change| {
            let zone = |n: Option<&switchyard_api::k8s::api::core::v1::Node>| {
                n.and_then(|n| n.metadata.labels.as_ref())
                    .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
                    .cloned()
            };
            let before = match &change {
                Change::Added(_) => None,
                other => zone(other.old()),
            };
            if before != zone(Some(change.object())) {
                for svc in services.list() {
                    q.add(ObjectKey::of(svc.as_ref()));
                }
            }
        });
        this
    }

    async fn apply(&self, namespace: &str, changes: SliceChanges) -> Result<()> {
        let api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), namespace);
        for slice in &changes.create {
            api.create(&PostParams::default(), slice).await?;
        }
        for slice in &changes.update {
            let name = slice.metadata.name.as_deref().unwrap_or_default();
            api.replace(name, &PostParams::default(), slice).await?;
        }
        for name in &changes.delete {
            match api.delete(name, &DeleteParams::default()).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes the Endpoints object the Service's selector calls for, when it differs.
    async fn sync_endpoints_object(
        &self,
        key: &ObjectKey,
        mut want: Endpoints,
        trigger: &str,
    ) -> Result<()> {
        let current = self.ctx.informers.endpoints.get_key(key);
        if let Some(current) = &current {
            let annotations = |e: &Endpoints| {
                let mut a = e.metadata.annotations.clone().unwrap_or_default();
                a.remove(ANNOTATION_TRIGGER_TIME);
                a
            };
            if current.subsets == want.subsets
                && current.metadata.labels == want.metadata.labels
                && annotations(current) == annotations(&want)
            {
                return Ok(());
            }
        }
        want.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ANNOTATION_TRIGGER_TIME.to_string(), trigger.to_string());
        let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
        match current {
            Some(current) => {
                want.metadata.resource_version = current.metadata.resource_version.clone();
                api.replace(&key.name, &PostParams::default(), &want)
                    .await?;
            }
            None => {
                api.create(&PostParams::default(), &want).await?;
            }
        }
        Ok(())
    }

    /// The Service is gone: remove what the controllers wrote for it.
    async fn cleanup(&self, key: &ObjectKey, slices: &[EndpointSlice]) -> Result<()> {
        let delete = slices
            .iter()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_MANAGED_BY))
                    .is_some_and(|m| m == MANAGED_BY_CONTROLLER)
            })
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        self.apply(
            &key.namespace,
            SliceChanges {
                delete,
                ..SliceChanges::default()
            },
        )
        .await?;
        // Endpoints the controller wrote (marked skip-mirror) go with the Service; user-written
        // ones stay, as their mirrored slices are owned by them.
        if let Some(ep) = self.ctx.informers.endpoints.get_key(key) {
            let ours = ep
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(super::LABEL_SKIP_MIRROR))
                .is_some_and(|v| v == "true")
                && !(key.namespace == "default" && key.name == "kubernetes");
            if ours {
                let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), &key.namespace);
                match api.delete(&key.name, &DeleteParams::default()).await {
                    Err(e) if !is_not_found(&e) => return Err(e.into()),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Adds or removes `service`'s selector labels in the index.
fn update_index(index: &mut SelectorIndex, service: &Service, insert: bool) {
    let Some(selector) = selector_of(service) else {
        return;
    };
    let ns = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    for (k, v) in selector {
        let key = index_key(ns, k, v);
        if insert {
            index.entry(key).or_default().insert(name.to_string());
        } else if let Some(set) = index.get_mut(&key) {
            set.remove(name);
            if set.is_empty() {
                index.remove(&key);
            }
        }
    }
}

/// Adds the keys of the Services whose selector matches `pod`'s labels.
fn selecting_services(
    index: &SelectorIndex,
    services: &crate::runtime::Informer<Service>,
    pod: &CachedPod,
    out: &mut HashSet<ObjectKey>,
) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let mut candidates: HashSet<&String> = HashSet::new();
    for (k, v) in labels {
        if let Some(names) = index.get(&index_key(ns, k, v)) {
            candidates.extend(names);
        }
    }
    for name in candidates {
        let Some(svc) = services.get(ns, name) else {
            continue;
        };
        if selector_of(&svc).is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v))) {
            out.insert(ObjectKey::new(ns, name.clone()));
        }
    }
}

/// Whether a Pod update can change any endpoint: what [`desired_endpoints`] reads.
fn endpoint_relevant_change(old: &CachedPod, new: &CachedPod) -> bool {
    let status = |p: &CachedPod| {
        p.status.as_ref().map(|s| {
            (
                s.pod_ip.clone(),
                s.pod_ips.clone(),
                s.phase.clone(),
                p.condition("Ready").map(str::to_string),
            )
        })
    };
    let spec = |p: &CachedPod| {
        p.spec.as_ref().map(|s| {
            (
                s.node_name.clone(),
                s.hostname.clone(),
                s.subdomain.clone(),
                s.containers
                    .iter()
                    .map(|c| c.ports.clone())
                    .collect::<Vec<_>>(),
            )
        })
    };
    old.metadata.labels != new.metadata.labels
        || old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
        || status(old) != status(new)
        || spec(old) != spec(new)
}

#[async_trait::async_trait]
impl Controller for EndpointsController {
    type Key = ObjectKey;
    const NAME: &'static str = "endpoints";
    // Writes wait on the store's group commit: many in flight keep it busy.
    const WORKERS: usize = 16;

    fn queue(&self) -> &WorkQueue<ObjectKey> {
        &self.queue
    }

    fn all_keys(&self) -> Vec<ObjectKey> {
        self.ctx.informers.services.keys()
    }

    async fn sync(&self, key: ObjectKey) -> Result<()> {
        let informers = &self.ctx.informers;
        let trigger = self
            .triggers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .unwrap_or_else(|| self.ctx.now())
            .to_string();
        let slice_selector = LabelSelector::from_map(&BTreeMap::from([(
            LABEL_SERVICE_NAME.to_string(),
            key.name.clone(),
        )]));
        let slices: Vec<EndpointSlice> = informers
            .endpoint_slices
            .select(&key.namespace, &slice_selector)
            .iter()
            .map(|s| s.as_ref().clone())
            .collect();

        let Some(service) = informers.services.get_key(&key) else {
            return self.cleanup(&key, &slices).await;
        };
        let Some(selector) = selector_of(&service) else {
            // Selector-less: mirror the user's Endpoints; slices computed from Pods go.
            let mut changes = match informers.endpoints.get_key(&key) {
                Some(ep) => mirror_slices(&ep, &service, &slices),
                None => SliceChanges {
                    delete: names_managed_by(&slices, MANAGED_BY_MIRRORING),
                    ..SliceChanges::default()
                },
            };
            changes
                .delete
                .extend(names_managed_by(&slices, MANAGED_BY_CONTROLLER));
            return self.apply(&key.namespace, changes).await;
        };

        let pods = informers
            .pods
            .select(&key.namespace, &LabelSelector::from_map(selector));
        let mut zones = BTreeMap::new();
        for pod in &pods {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            if zones.contains_key(node) {
                continue;
            }
            if let Some(zone) = informers.nodes.get("", node).and_then(|n| {
                n.metadata
                    .labels
                    .as_ref()?
                    .get(LABEL_TOPOLOGY_ZONE)
                    .cloned()
            }) {
                zones.insert(node.to_string(), zone);
            }
        }
        let pods: Vec<Pod> = pods.iter().map(|p| p.to_pod()).collect();
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let desired = desired_endpoints(&service, &pod_refs, &zones);
        let mut changes = reconcile_slices(
            &service,
            &desired,
            &slices,
            &trigger,
            DEFAULT_MAX_ENDPOINTS_PER_SLICE,
        );
        changes
            .delete
            .extend(names_managed_by(&slices, MANAGED_BY_MIRRORING));
        self.apply(&key.namespace, changes).await?;
        self.sync_endpoints_object(&key, desired_endpoints_object(&service, &desired), &trigger)
            .await
    }
}

fn names_managed_by(slices: &[EndpointSlice], managed_by: &str) -> Vec<String> {
    slices
        .iter()
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                .is_some_and(|m| m == managed_by)
        })
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}
