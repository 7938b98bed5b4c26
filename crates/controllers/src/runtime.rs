//! What runs the controllers' pure cores over the API: shared [`Informer`]s (a cache of one kind
//! fed by list+watch, with change handlers), a de-duplicating [`WorkQueue`], the [`Controller`]
//! trait whose `sync` reconciles one key, and an [`EventRecorder`] for core/v1 Events.
//!
//! The shape follows client-go's shared informers and workqueue: one watch per kind for all
//! controllers, handlers that only enqueue keys, workers that read the caches and write through
//! the API with resourceVersion preconditions, so a stale cache costs a 409 and a retry, never a
//! lost update.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use switchyard_api::k8s::api::apps::v1::{Deployment, ReplicaSet};
use switchyard_api::k8s::api::coordination::v1::Lease;
use switchyard_api::k8s::api::core::v1::{
    Endpoints, Event, EventSource, Node, ObjectReference, Service,
};
use switchyard_api::k8s::api::discovery::v1::EndpointSlice;
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use switchyard_api::metallb::IPAddressPool;
use switchyard_api::selector::{LabelSelector, Operator};
use tokio::sync::Notify;

use crate::pods::CachedPod;
use crate::Config;

/// Namespace of the node heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// The key of an object: namespace (`""` for cluster-scoped objects) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of<K: Resource>(obj: &K) -> Self {
        let meta = obj.meta();
        ObjectKey::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A reference to `obj` for Events and `targetRef`s.
pub fn object_reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Informers
// ---------------------------------------------------------------------------------------------

/// One observed change, handed to [`Informer::on_change`] handlers after the cache is updated.
pub enum Change<'a, K> {
    Added(&'a K),
    Updated { old: &'a K, new: &'a K },
    Deleted(&'a K),
}

impl<K> Change<'_, K> {
    /// The object as it is now, or as it was last seen for a deletion.
    pub fn object(&self) -> &K {
        match self {
            Change::Added(o) | Change::Deleted(o) => o,
            Change::Updated { new, .. } => new,
        }
    }

    /// The object before the change, if it existed.
    pub fn old(&self) -> Option<&K> {
        match self {
            Change::Added(_) => None,
            Change::Updated { old, .. } => Some(old),
            Change::Deleted(o) => Some(o),
        }
    }
}

type Handler<K> = Box<dyn Fn(Change<'_, K>) + Send + Sync>;

struct Cache<K> {
    /// namespace → name → object.
    objects: HashMap<String, HashMap<String, Arc<K>>>,
    /// `namespace\0key=value` → names, when the informer keeps a label index.
    labels: Option<HashMap<String, HashSet<String>>>,
}

struct InformerInner<K> {
    api: Api<K>,
    /// Applied to every object before it is cached: drops what no controller reads.
    transform: Option<fn(&mut K)>,
    watch_config: watcher::Config,
    cache: RwLock<Cache<K>>,
    handlers: RwLock<Vec<Handler<K>>>,
    synced: AtomicBool,
    synced_notify: Notify,
}

/// A shared cache of one kind, fed by list+watch through the API (with `managedFields`
/// stripped), that calls its change handlers for every add, update and delete, including those
/// inferred when a relist replaces the cache. Cheap to clone.
pub struct Informer<K> {
    inner: Arc<InformerInner<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            inner: self.inner.clone(),
        }
    }
}

fn label_key(namespace: &str, key: &str, value: &str) -> String {
    format!("{namespace}\0{key}={value}")
}

impl<K> Cache<K>
where
    K: Resource,
{
    fn index(&mut self, obj: &K, insert: bool) {
        let Some(labels) = self.labels.as_mut() else {
            return;
        };
        let meta = obj.meta();
        let ns = meta.namespace.as_deref().unwrap_or("");
        let name = meta.name.as_deref().unwrap_or("");
        for (k, v) in meta.labels.iter().flatten() {
            let key = label_key(ns, k, v);
            if insert {
                labels.entry(key).or_default().insert(name.to_string());
            } else if let Some(set) = labels.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    labels.remove(&key);
                }
            }
        }
    }

    /// Stores `obj`, returning what it replaces.
    fn insert(&mut self, obj: Arc<K>) -> Option<Arc<K>> {
        let key = ObjectKey::of(obj.as_ref());
        let old = self
            .objects
            .entry(key.namespace)
            .or_default()
            .insert(key.name, obj.clone());
        if let Some(old) = &old {
            self.index(old, false);
        }
        self.index(&obj, true);
        old
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let names = self.objects.get_mut(&key.namespace)?;
        let old = names.remove(&key.name)?;
        if names.is_empty() {
            self.objects.remove(&key.namespace);
        }
        self.index(&old, false);
        Some(old)
    }
}

/// What an informer can cache: a Kubernetes kind decoded from JSON and shared across tasks.
pub trait Cacheable:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static
{
}

impl<K> Cacheable for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static
{
}

impl<K: Cacheable> Informer<K> {
    /// An informer over `api` (namespaced to one namespace or all), optionally keeping a label
    /// index for [`Informer::select`]. Nothing happens until [`Informer::run`].
    pub fn new(api: Api<K>, label_index: bool) -> Self {
        Informer {
            inner: Arc::new(InformerInner {
                api,
                transform: None,
                watch_config: watcher::Config::default().page_size(1000),
                cache: RwLock::new(Cache {
                    objects: HashMap::new(),
                    labels: label_index.then(HashMap::new),
                }),
                handlers: RwLock::new(Vec::new()),
                synced: AtomicBool::new(false),
                synced_notify: Notify::new(),
            }),
        }
    }

    /// This informer with `transform` applied to every object before it is cached (client-go's
    /// `TransformFunc`): controllers of large clusters keep only what they read. Call before the
    /// informer is cloned or started.
    pub fn with_transform(mut self, transform: fn(&mut K)) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.transform = Some(transform);
        }
        self
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.objects.get(namespace)?.get(name).cloned()
    }

    pub fn get_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.get(&key.namespace, &key.name)
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        cache
            .objects
            .values()
            .flat_map(|names| names.values().cloned())
            .collect()
    }

    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        cache
            .objects
            .get(namespace)
            .map(|names| names.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The keys of every cached object.
    pub fn keys(&self) -> Vec<ObjectKey> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        cache
            .objects
            .iter()
            .flat_map(|(ns, names)| names.keys().map(|n| ObjectKey::new(ns.clone(), n.clone())))
            .collect()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.objects.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects of `namespace` whose labels match `selector`. With a label index and an equality
    /// requirement in the selector, only the objects carrying the rarest such label are tested.
    pub fn select(&self, namespace: &str, selector: &LabelSelector) -> Vec<Arc<K>> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        let Some(names) = cache.objects.get(namespace) else {
            return Vec::new();
        };
        let empty = std::collections::BTreeMap::new();
        let matches = |obj: &Arc<K>| selector.matches(obj.meta().labels.as_ref().unwrap_or(&empty));
        if let Some(index) = &cache.labels {
            let candidates = selector
                .requirements()
                .iter()
                .filter_map(|r| match (r.operator(), r.values()) {
                    (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => {
                        Some(index.get(&label_key(namespace, r.key(), v)))
                    }
                    _ => None,
                })
                .min_by_key(|set| set.map_or(0, HashSet::len));
            if let Some(candidates) = candidates {
                return candidates
                    .into_iter()
                    .flatten()
                    .filter_map(|name| names.get(name))
                    .filter(|o| matches(o))
                    .cloned()
                    .collect();
            }
        }
        names.values().filter(|o| matches(o)).cloned().collect()
    }

    /// Registers a handler, called on the informer's task after the cache is updated. It must be
    /// cheap and never block: enqueue keys, update small indexes.
    pub fn on_change(&self, handler: impl Fn(Change<'_, K>) + Send + Sync + 'static) {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(handler));
    }

    /// Whether the first complete list has been stored.
    pub fn has_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    /// Waits for the first complete list.
    pub async fn wait_synced(&self) {
        loop {
            let notified = self.inner.synced_notify.notified();
            if self.has_synced() {
                return;
            }
            notified.await;
        }
    }

    fn notify(&self, change: Change<'_, K>) {
        let handlers = self
            .inner
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for h in handlers.iter() {
            h(match &change {
                Change::Added(o) => Change::Added(o),
                Change::Updated { old, new } => Change::Updated { old, new },
                Change::Deleted(o) => Change::Deleted(o),
            });
        }
    }

    fn apply(&self, mut obj: K) {
        obj.meta_mut().managed_fields = None;
        if let Some(transform) = self.inner.transform {
            transform(&mut obj);
        }
        let obj = Arc::new(obj);
        let old = self
            .inner
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(obj.clone());
        match old {
            Some(old) if old.meta().resource_version == obj.meta().resource_version => {}
            Some(old) => self.notify(Change::Updated {
                old: &old,
                new: &obj,
            }),
            None => self.notify(Change::Added(&obj)),
        }
    }

    fn delete(&self, obj: &K) {
        let old = self
            .inner
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ObjectKey::of(obj));
        if let Some(old) = old {
            self.notify(Change::Deleted(&old));
        }
    }

    /// Replaces the cache with a complete list, reporting what changed.
    fn replace(&self, listed: Vec<K>) {
        let mut seen = HashSet::with_capacity(listed.len());
        for obj in listed {
            seen.insert(ObjectKey::of(&obj));
            self.apply(obj);
        }
        let gone: Vec<Arc<K>> = self
            .list()
            .into_iter()
            .filter(|o| !seen.contains(&ObjectKey::of(o.as_ref())))
            .collect();
        for obj in gone {
            self.delete(&obj);
        }
        if !self.inner.synced.swap(true, Ordering::AcqRel) {
            self.inner.synced_notify.notify_waiters();
        }
    }

    /// Lists and watches until the task is aborted, relisting (with backoff) after errors and
    /// expired resource versions.
    pub async fn run(self) {
        let kind = K::kind(&());
        let stream =
            watcher(self.inner.api.clone(), self.inner.watch_config.clone()).default_backoff();
        futures::pin_mut!(stream);
        let mut listing: Vec<K> = Vec::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(obj)) => listing.push(obj),
                Ok(watcher::Event::InitDone) => self.replace(std::mem::take(&mut listing)),
                Ok(watcher::Event::Apply(obj)) => self.apply(obj),
                Ok(watcher::Event::Delete(obj)) => self.delete(&obj),
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying"),
            }
        }
    }
}

/// The informers every controller shares: one watch per kind.
#[derive(Clone)]
pub struct Informers {
    /// Pods, as the slim [`CachedPod`] view.
    pub pods: Informer<CachedPod>,
    pub services: Informer<Service>,
    pub endpoints: Informer<Endpoints>,
    pub endpoint_slices: Informer<EndpointSlice>,
    pub nodes: Informer<Node>,
    /// Node heartbeats, in [`NODE_LEASE_NAMESPACE`] only.
    pub node_leases: Informer<Lease>,
    pub replica_sets: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub ip_address_pools: Informer<IPAddressPool>,
}

impl Informers {
    pub fn new(client: &kube::Client) -> Self {
        Informers {
            pods: Informer::new(Api::all(client.clone()), true).with_transform(slim_pod),
            services: Informer::new(Api::all(client.clone()), false),
            endpoints: Informer::new(Api::all(client.clone()), false),
            endpoint_slices: Informer::new(Api::all(client.clone()), true),
            nodes: Informer::new(Api::all(client.clone()), false),
            node_leases: Informer::new(
                Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
                false,
            ),
            replica_sets: Informer::new(Api::all(client.clone()), false),
            deployments: Informer::new(Api::all(client.clone()), false),
            ip_address_pools: Informer::new(Api::all(client.clone()), false),
        }
    }

    /// Starts every informer on `tasks`.
    pub(crate) fn spawn(&self, tasks: &mut tokio::task::JoinSet<()>) {
        tasks.spawn(self.pods.clone().run());
        tasks.spawn(self.services.clone().run());
        tasks.spawn(self.endpoints.clone().run());
        tasks.spawn(self.endpoint_slices.clone().run());
        tasks.spawn(self.nodes.clone().run());
        tasks.spawn(self.node_leases.clone().run());
        tasks.spawn(self.replica_sets.clone().run());
        tasks.spawn(self.deployments.clone().run());
        tasks.spawn(self.ip_address_pools.clone().run());
    }

    /// Waits until every informer has its first complete list.
    pub async fn wait_synced(&self) {
        self.pods.wait_synced().await;
        self.services.wait_synced().await;
        self.endpoints.wait_synced().await;
        self.endpoint_slices.wait_synced().await;
        self.nodes.wait_synced().await;
        self.node_leases.wait_synced().await;
        self.replica_sets.wait_synced().await;
        self.deployments.wait_synced().await;
        self.ip_address_pools.wait_synced().await;
    }
}

/// `kubectl apply`'s copy of the whole object: large and read by no controller.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops `kubectl apply`'s annotation from cached Pods.
fn slim_pod(pod: &mut CachedPod) {
    if let Some(a) = pod.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            pod.metadata.annotations = None;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Work queue
// ---------------------------------------------------------------------------------------------

struct QueueState<T> {
    order: VecDeque<T>,
    queued: HashSet<T>,
    processing: HashSet<T>,
    /// Added again while being processed: queued once processing ends.
    dirty: HashSet<T>,
    failures: HashMap<T, u32>,
}

struct QueueInner<T> {
    state: Mutex<QueueState<T>>,
    notify: Notify,
}

/// A de-duplicating work queue (client-go's workqueue): a key added several times before a
/// worker takes it is synced once; a key added while being synced is synced again afterwards;
/// no key is synced by two workers at once. Cheap to clone.
pub struct WorkQueue<T> {
    inner: Arc<QueueInner<T>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// First retry delay after a failed sync; doubles per consecutive failure.
const RETRY_BASE: Duration = Duration::from_millis(5);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The delay before retrying a key that failed `failures` times in a row.
fn retry_delay(failures: u32) -> Duration {
    RETRY_BASE
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)))
        .min(RETRY_MAX)
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<T> {
    pub fn new() -> Self {
        WorkQueue {
            inner: Arc::new(QueueInner {
                state: Mutex::new(QueueState {
                    order: VecDeque::new(),
                    queued: HashSet::new(),
                    processing: HashSet::new(),
                    dirty: HashSet::new(),
                    failures: HashMap::new(),
                }),
                notify: Notify::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState<T>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: T) {
        let mut s = self.state();
        if s.queued.contains(&key) {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.order.push_back(key);
        drop(s);
        self.inner.notify.notify_one();
    }

    /// Adds `key` once `delay` has passed.
    pub fn add_after(&self, key: T, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Number of keys waiting.
    pub fn len(&self) -> usize {
        self.state().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether no key waits and none is being synced (retries waiting out a backoff excepted).
    pub fn is_idle(&self) -> bool {
        let s = self.state();
        s.order.is_empty() && s.processing.is_empty()
    }

    /// Takes the next key, waiting for one; the caller must call [`WorkQueue::done`] after.
    pub async fn next(&self) -> T {
        loop {
            let notified = self.inner.notify.notified();
            {
                let mut s = self.state();
                if let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    let more = !s.order.is_empty();
                    drop(s);
                    if more {
                        self.inner.notify.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends processing of `key`; re-queues it if it was added meanwhile.
    pub fn done(&self, key: &T) {
        let mut s = self.state();
        s.processing.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.clone()) {
            s.order.push_back(key.clone());
            drop(s);
            self.inner.notify.notify_one();
        }
    }

    /// Records a failed sync of `key` and re-adds it after an exponential backoff.
    pub fn retry(&self, key: T) {
        let failures = {
            let mut s = self.state();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        self.add_after(key, retry_delay(failures));
    }

    /// Clears the failure count of `key` after a successful sync.
    pub fn forget(&self, key: &T) {
        self.state().failures.remove(key);
    }

    /// Puts keys whose workers were stopped mid-sync back in the queue.
    pub(crate) fn requeue_in_flight(&self) {
        let in_flight: Vec<T> = {
            let mut s = self.state();
            let keys: Vec<T> = s.processing.drain().collect();
            s.dirty.clear();
            keys
        };
        for key in in_flight {
            self.add(key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Controllers
// ---------------------------------------------------------------------------------------------

/// A controller: a queue of keys and a `sync` that reconciles one key from the informers'
/// caches through the pure core, writing through the API.
#[async_trait::async_trait]
pub trait Controller: Send + Sync + 'static {
    type Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;
    const NAME: &'static str;
    /// Workers syncing keys in parallel.
    const WORKERS: usize = 4;

    fn queue(&self) -> &WorkQueue<Self::Key>;

    /// Every key this controller manages: enqueued when leadership starts and at each resync.
    fn all_keys(&self) -> Vec<Self::Key>;

    /// Reconciles one key. An error is logged and the key retried with backoff.
    async fn sync(&self, key: Self::Key) -> anyhow::Result<()>;
}

/// How long after a write refused for a stale cache the key is synced again at the latest.
const STALE_WRITE_RETRY: Duration = Duration::from_millis(500);

/// Runs `controller`'s workers on `tasks`, after queueing every key, and re-queues every key
/// each `resync` period.
pub(crate) fn run_controller<C: Controller>(
    controller: Arc<C>,
    resync: Duration,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let queue = controller.queue().clone();
    queue.requeue_in_flight();
    for key in controller.all_keys() {
        queue.add(key);
    }
    for _ in 0..C::WORKERS {
        let controller = controller.clone();
        tasks.spawn(async move {
            let queue = controller.queue().clone();
            loop {
                let key = queue.next().await;
                match controller.sync(key.clone()).await {
                    Ok(()) => queue.forget(&key),
                    Err(e) if e.downcast_ref::<kube::Error>().is_some_and(is_conflict) => {
                        // A write refused because the cache was stale (409): the watch event
                        // that makes it current re-queues the key; this is only a safety net.
                        tracing::debug!(controller = C::NAME, ?key, error = %e, "stale cache; syncing again when it catches up");
                        queue.forget(&key);
                        queue.add_after(key.clone(), STALE_WRITE_RETRY);
                    }
                    Err(e) => {
                        tracing::warn!(controller = C::NAME, ?key, error = %format!("{e:#}"), "sync failed; retrying");
                        queue.retry(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(resync);
        tick.tick().await;
        loop {
            tick.tick().await;
            for key in controller.all_keys() {
                controller.queue().add(key);
            }
        }
    });
}

/// Whether an API error is a 409 Conflict or 404 (a stale cache; retry after the watch catches
/// up) rather than a real failure.
pub fn is_stale(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409 || s.code == 404)
}

/// Whether an API error is a 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// Whether an API error is a 409 AlreadyExists/Conflict.
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

// ---------------------------------------------------------------------------------------------
// Context
// ---------------------------------------------------------------------------------------------

/// What every controller shares. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<Config>,
    pub informers: Informers,
    pub events: EventRecorder,
}

impl Context {
    pub fn new(client: kube::Client, config: Config) -> Self {
        let events = EventRecorder::new(client.clone(), &config.identity);
        Context {
            informers: Informers::new(&client),
            client,
            config: Arc::new(config),
            events,
        }
    }

    /// The current time.
    pub fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    /// Server-side apply parameters for our field manager.
    pub fn apply_params(&self) -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }
}

/// The field manager of every write the controllers make.
pub const FIELD_MANAGER: &str = "switchyard-controller-manager";

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Identical events within this window bump the count of the first instead of adding objects.
const EVENT_AGGREGATION_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);
/// Events waiting to be written; more are dropped (events are best effort, as in client-go).
const EVENT_BACKLOG: usize = 1024;
/// Remembered events for aggregation.
const EVENT_CACHE: usize = 4096;

/// What makes two events the same: namespace, object uid, reason, message, type.
type EventIdentity = (String, String, String, String, &'static str);

struct PendingEvent {
    object: ObjectReference,
    type_: &'static str,
    reason: String,
    message: String,
}

/// Writes core/v1 Events in the background: recording never blocks, a full backlog drops
/// events, and an event repeated within ten minutes bumps the `count` of the first.
#[derive(Clone)]
pub struct EventRecorder {
    tx: tokio::sync::mpsc::Sender<PendingEvent>,
    rx: Arc<Mutex<Option<tokio::sync::mpsc::Receiver<PendingEvent>>>>,
    client: kube::Client,
    host: String,
}

impl EventRecorder {
    /// A recorder reporting as instance `host` (`reportingInstance`). Events are written
    /// once [`EventRecorder::spawn`] has started its writer.
    pub fn new(client: kube::Client, host: &str) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BACKLOG);
        EventRecorder {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
            client,
            host: host.to_string(),
        }
    }

    pub fn normal(&self, object: &ObjectReference, reason: &str, message: impl Into<String>) {
        self.record(object, "Normal", reason, message.into());
    }

    pub fn warning(&self, object: &ObjectReference, reason: &str, message: impl Into<String>) {
        self.record(object, "Warning", reason, message.into());
    }

    fn record(&self, object: &ObjectReference, type_: &'static str, reason: &str, message: String) {
        let _ = self.tx.try_send(PendingEvent {
            object: object.clone(),
            type_,
            reason: reason.to_string(),
            message,
        });
    }

    /// Starts the writer task (once; later calls do nothing).
    pub fn spawn(&self, tasks: &mut tokio::task::JoinSet<()>) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let client = self.client.clone();
        let host = self.host.clone();
        tasks.spawn(async move {
            // (namespace, uid, reason, message, type) → (event name, count, first seen).
            let mut seen: HashMap<EventIdentity, (String, i32, jiff::Timestamp)> = HashMap::new();
            while let Some(ev) = rx.recv().await {
                let now = jiff::Timestamp::now();
                let namespace = ev
                    .object
                    .namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "default".to_string());
                let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
                let key = (
                    namespace.clone(),
                    ev.object.uid.clone().unwrap_or_default(),
                    ev.reason.clone(),
                    ev.message.clone(),
                    ev.type_,
                );
                if let Some((name, count, first)) = seen.get_mut(&key) {
                    if now.duration_since(*first) < EVENT_AGGREGATION_WINDOW {
                        *count += 1;
                        let patch = serde_json::json!({
                            "count": *count,
                            "lastTimestamp": Time(now),
                        });
                        if api
                            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .is_ok()
                        {
                            continue;
                        }
                    }
                }
                let object_name = ev.object.name.clone().unwrap_or_default();
                let name = format!("{object_name}.{:x}", now.as_nanosecond());
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    involved_object: ev.object,
                    reason: Some(ev.reason),
                    message: Some(ev.message),
                    type_: Some(ev.type_.to_string()),
                    count: Some(1),
                    first_timestamp: Some(Time(now)),
                    last_timestamp: Some(Time(now)),
                    event_time: Some(MicroTime(now)),
                    action: Some("Reconcile".to_string()),
                    reporting_component: Some(FIELD_MANAGER.to_string()),
                    reporting_instance: Some(host.clone()),
                    source: Some(EventSource {
                        component: Some(FIELD_MANAGER.to_string()),
                        host: None,
                    }),
                    ..Event::default()
                };
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => {
                        if seen.len() >= EVENT_CACHE {
                            seen.retain(|_, (_, _, first)| {
                                now.duration_since(*first) < EVENT_AGGREGATION_WINDOW
                            });
                            if seen.len() >= EVENT_CACHE {
                                seen.clear();
                            }
                        }
                        seen.insert(key, (name, 1, now));
                    }
                    Err(e) => tracing::debug!(error = %e, "event not recorded"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_dedups_and_requeues_keys_added_while_processing() {
        let q: WorkQueue<&str> = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        let a = q.next().await;
        assert_eq!(a, "a");
        q.add("a"); // while processing: synced again afterwards, not concurrently
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.len(), 1);
        assert_eq!(q.next().await, "a");
        q.done(&"a");
        q.done(&"b");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn queue_wakes_a_waiting_worker() {
        let q: WorkQueue<u32> = WorkQueue::new();
        let q2 = q.clone();
        let worker = tokio::spawn(async move { q2.next().await });
        tokio::task::yield_now().await;
        q.add(7);
        assert_eq!(worker.await.ok(), Some(7));
    }

    #[tokio::test]
    async fn stopped_workers_keys_are_requeued() {
        let q: WorkQueue<u32> = WorkQueue::new();
        q.add(1);
        assert_eq!(q.next().await, 1);
        // The worker holding 1 is aborted without calling done.
        q.requeue_in_flight();
        assert_eq!(q.next().await, 1);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(5));
        assert_eq!(retry_delay(2), Duration::from_millis(10));
        assert_eq!(retry_delay(4), Duration::from_millis(40));
        assert_eq!(retry_delay(40), RETRY_MAX);
    }

    #[test]
    fn object_keys_display_like_kubernetes() {
        assert_eq!(ObjectKey::new("ns", "a").to_string(), "ns/a");
        assert_eq!(ObjectKey::new("", "node-1").to_string(), "node-1");
    }
}
