//! The proxy's IO shell: watches (Services, EndpointSlices, the own Node) feeding the change
//! tracker, the sync loop deciding between full and partial syncs, and [`NftDataPlane`], which
//! programs the node's namespace (`nft -f -` for full syncs, one netlink batch for partial
//! ones) and remembers what it applied.
//!
//! Rules of the loop (kube-proxy's, see pkg/proxy/nftables/proxier.go `syncProxyRules`):
//! - nothing is programmed before every informer has stored its first complete list;
//! - there are two tables, `ip switchyard` and `ip6 switchyard` (kube-proxy runs one proxier
//!   per family); every sync covers both, each in its own transaction, and each family decides
//!   alone between full and partial;
//! - a family's first sync, one every [`FULL_SYNC_PERIOD`] (an hour, kube-proxy's
//!   `proxyutil.FullSyncPeriod`), any change of the node's facts that changes its base rules and
//!   its sync after a failure (of that family) are full (its table is replaced atomically); all
//!   others, including the periodic sync every `sync_period`, touch only the services that
//!   changed (nothing when nothing did): a full sync of 10,000 services costs seconds of `nft`,
//!   so it must stay rare;
//! - syncs are at least `min_sync_period` apart, so a burst of events costs one sync.
//!
//! Every sync is recorded in an [`Observer`] (the Prometheus [`Metrics`] and the
//! [`ProxierHealth`] behind `/healthz`), which outlives the proxy when a new configuration
//! replaces it. A sync counts once however many families it touched; rule and element counts
//! are the sums of both tables.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use kube::api::Api;
use switchyard_api::k8s::api::core::v1::{Node, Service};
use switchyard_api::k8s::api::discovery::v1::EndpointSlice;
use switchyard_api::selector::LabelSelector;
use switchyard_controllers::runtime::{Change, Informer};
use switchyard_netns::NetNs;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::healthcheck::{HealthServers, ProxierHealth};
use crate::metrics::{Metrics, SyncRecord, SyncScope};
use crate::model::{self, ChangeTracker, ServiceKey, Snapshot, LABEL_SERVICE_NAME};
use crate::nftables::{self, Family, NodeConfig, Ruleset, Scheduler, ServiceRules, UdpFlow};

/// How often the table is rebuilt whole even when nothing failed (kube-proxy's
/// `proxyutil.FullSyncPeriod`): repairs rules changed behind the proxy's back.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// Errors of applying rules. All are retryable: the next sync is then a full one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `nft` rejected the transaction or could not run.
    #[error("nft: {0}")]
    Nft(#[source] switchyard_netns::Error),
    /// The kernel rejected a partial sync's netlink batch, or the socket failed.
    #[error("netlink: {0}")]
    Netlink(#[source] nftables::netlink::Error),
}

/// How the proxy runs (kube-proxy's flags and `KubeProxyConfiguration` fields).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This node's name: decides which endpoints are local, and which Node to watch.
    pub node_name: String,
    /// The namespace whose nftables are programmed (the node's).
    pub netns: NetNs,
    /// The pod network (`--cluster-cidr`), at most one CIDR per family: traffic to ClusterIPs
    /// from outside it is masqueraded. A family without one masquerades no such traffic (as
    /// kube-proxy without a cluster CIDR for a family).
    pub cluster_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses`: NodePorts answer on this namespace's addresses inside these
    /// CIDRs; empty means the Node's InternalIP addresses.
    pub node_port_addresses: Vec<IpNet>,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// Period of the periodic sync (kube-proxy's `syncPeriod`, default 30s); full syncs are hourly.
    pub sync_period: Duration,
    /// Minimum time between syncs (kube-proxy's nftables `minSyncPeriod`, default 1s): a burst
    /// of events within it is one sync.
    pub min_sync_period: Duration,
    pub scheduler: Scheduler,
    /// The data plane: nftables (default) or the userspace L4 proxy.
    pub mode: ProxyMode,
}

/// kube-proxy's `--proxy-mode`, as Switchyard offers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    #[default]
    Nftables,
    /// [`crate::userspace`], for machines without nftables, with its backend choice.
    Userspace(crate::userspace::Balance),
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            node_name: String::new(),
            netns: NetNs::current(),
            cluster_cidrs: Vec::new(),
            node_port_addresses: Vec::new(),
            masquerade_all: false,
            // Same as kube-proxy's `--config-sync-period`/nftables `syncPeriod` default.
            sync_period: Duration::from_secs(30),
            // Same as kube-proxy's nftables `minSyncPeriod` default.
            min_sync_period: Duration::from_secs(1),
            scheduler: Scheduler::Random,
            mode: ProxyMode::Nftables,
        }
    }
}

/// Counters of the sync loop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyMetrics {
    pub full_syncs: u64,
    pub partial_syncs: u64,
    pub sync_errors: u64,
    pub last_sync_duration: Duration,
    pub last_full_sync_duration: Duration,
    /// From the oldest change folded into the last sync to its rules being applied.
    pub last_programming_latency: Duration,
    /// Chains and map elements of services in the table after the last sync.
    pub chains: usize,
    pub elements: usize,
}

/// What a sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    Full,
    Partial,
    /// Nothing had changed.
    Nothing,
}

/// Runs `nft -f -` transactions inside a namespace.
#[derive(Clone, Debug)]
pub struct NftApplier {
    netns: NetNs,
}

impl NftApplier {
    pub fn new(netns: NetNs) -> Self {
        NftApplier { netns }
    }

    pub async fn apply(&self, transaction: &str) -> Result<(), Error> {
        if transaction.is_empty() {
            return Ok(());
        }
        self.netns
            .nft(&["-f", "-"], Some(transaction))
            .await
            .map(|_| ())
            .map_err(Error::Nft)
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }
}

/// Our two tables (`ip` and `ip6`) in one namespace, and what was last applied to each. The
/// families are synced as separate transactions and tracked apart: a failure forgets only that
/// family's applied state, so only its next sync replaces the whole table.
///
/// Full syncs run `nft -f`; partial syncs go through [`nftables::netlink`] on one socket kept
/// for the data plane's life (`nft` would dump the whole table into its cache first), falling
/// back to `nft -f` for the few rule shapes the encoder leaves to nft.
#[derive(Debug)]
pub struct NftDataPlane {
    applier: NftApplier,
    node: NodeConfig,
    /// Indexed by [`family_index`].
    applied: [Option<Ruleset>; 2],
    /// Opened on the first partial sync; dropped when it fails, so the next one reopens it.
    netlink: Option<nftables::netlink::Socket>,
}

/// The slot of `family` in per-family arrays.
fn family_index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// The outcome of syncing both families: the widest kind, or the first error (after every
/// family was tried).
fn combine(results: impl IntoIterator<Item = Result<SyncKind, Error>>) -> Result<SyncKind, Error> {
    let mut kind = SyncKind::Nothing;
    let mut error = None;
    for result in results {
        match result {
            Ok(SyncKind::Full) => kind = SyncKind::Full,
            Ok(SyncKind::Partial) if kind == SyncKind::Nothing => kind = SyncKind::Partial,
            Ok(_) => {}
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    error.map_or(Ok(kind), Err)
}

impl NftDataPlane {
    pub fn new(netns: NetNs, node: NodeConfig) -> Self {
        NftDataPlane {
            applier: NftApplier::new(netns),
            node,
            applied: [None, None],
            netlink: None,
        }
    }

    pub fn node(&self) -> &NodeConfig {
        &self.node
    }

    /// Changes the node's facts; the next sync of a family is full if its base rules differ.
    pub fn set_node(&mut self, node: NodeConfig) {
        self.node = node;
    }

    /// Whether the next sync of `family` must be full.
    pub fn needs_full_sync_of(&self, family: Family) -> bool {
        match &self.applied[family_index(family)] {
            None => true,
            Some(applied) => applied.base != nftables::base(&self.node, family),
        }
    }

    /// Whether the next sync of either family must be full.
    pub fn needs_full_sync(&self) -> bool {
        Family::ALL.into_iter().any(|f| self.needs_full_sync_of(f))
    }

    /// The rules last applied to `family`'s table (None before its first sync or after a
    /// failure).
    pub fn applied(&self, family: Family) -> Option<&Ruleset> {
        self.applied[family_index(family)].as_ref()
    }

    /// Chains and map elements of services in both tables (for metrics).
    pub fn counts(&self) -> (usize, usize) {
        self.applied
            .iter()
            .flatten()
            .map(Ruleset::counts)
            .fold((0, 0), |(c, e), (c2, e2)| (c + c2, e + e2))
    }

    /// Replaces the whole table of `ruleset`'s family with it.
    pub async fn sync_full(&mut self, ruleset: Ruleset) -> Result<(), Error> {
        let slot = family_index(ruleset.family);
        self.applied[slot] = None;
        self.applier
            .apply(&nftables::full_transaction(&ruleset))
            .await?;
        self.applied[slot] = Some(ruleset);
        Ok(())
    }

    /// Programs `snapshot` into both tables: each fully if needed, else only the services whose
    /// rules differ.
    pub async fn sync_snapshot(&mut self, snapshot: &Snapshot) -> Result<SyncKind, Error> {
        let mut results = Vec::new();
        for family in Family::ALL {
            results.push(self.sync_family(snapshot, family).await);
        }
        combine(results)
    }

    async fn sync_family(
        &mut self,
        snapshot: &Snapshot,
        family: Family,
    ) -> Result<SyncKind, Error> {
        let ruleset = nftables::build(snapshot, &self.node, family);
        if self.needs_full_sync_of(family) {
            self.sync_full(ruleset).await?;
            return Ok(SyncKind::Full);
        }
        let applied = self.applied(family).map(|a| &a.services);
        let empty = BTreeMap::new();
        let applied = applied.unwrap_or(&empty);
        let mut changed: BTreeMap<ServiceKey, Option<ServiceRules>> = BTreeMap::new();
        for (key, rules) in &ruleset.services {
            if applied.get(key) != Some(rules) {
                changed.insert(key.clone(), Some(rules.clone()));
            }
        }
        for key in applied.keys() {
            if !ruleset.services.contains_key(key) {
                changed.insert(key.clone(), None);
            }
        }
        self.sync_services(family, changed).await
    }

    /// Moves the `changed` services to their new rules in `family`'s table (`None`: the service
    /// has none there any more), in one partial transaction when possible, else by a full sync
    /// of the applied rules with these changes.
    pub async fn sync_services(
        &mut self,
        family: Family,
        changed: BTreeMap<ServiceKey, Option<ServiceRules>>,
    ) -> Result<SyncKind, Error> {
        let slot = family_index(family);
        let Some(applied) = self.applied[slot].take() else {
            let ruleset = Ruleset {
                family,
                base: nftables::base(&self.node, family),
                services: changed
                    .into_iter()
                    .filter_map(|(k, r)| r.map(|r| (k, r)))
                    .collect(),
            };
            self.sync_full(ruleset).await?;
            return Ok(SyncKind::Full);
        };
        let mut next = applied;
        let stale: Vec<UdpFlow> = changed
            .iter()
            .flat_map(|(key, rules)| {
                let old = next.services.get(key).map(|r| &r.udp_flows);
                let new = rules.as_ref().map(|r| &r.udp_flows);
                old.into_iter()
                    .flatten()
                    .filter(move |f| !new.is_some_and(|n| n.contains(*f)))
                    .cloned()
            })
            .collect();
        let transaction = nftables::partial_transaction(
            family,
            changed
                .iter()
                .map(|(key, rules)| (next.services.get(key), rules.as_ref())),
        );
        for (key, rules) in changed {
            match rules {
                Some(r) => next.services.insert(key, r),
                None => next.services.remove(&key),
            };
        }
        let base = nftables::base(&self.node, family);
        let kind = match transaction {
            Some(text) if next.base == base => {
                if text.is_empty() {
                    self.applied[slot] = Some(next);
                    return Ok(SyncKind::Nothing);
                }
                self.apply_partial(&text).await?;
                self.applied[slot] = Some(next);
                SyncKind::Partial
            }
            _ => {
                next.base = base;
                self.sync_full(next).await?;
                SyncKind::Full
            }
        };
        // Only after the rules no longer lead there: a UDP packet arriving in between would
        // recreate the entry.
        self.delete_conntrack(&stale).await;
        Ok(kind)
    }

    /// Applies a partial transaction as one netlink batch, or with `nft -f` when the encoder
    /// leaves one of its lines to nft. Any other error fails the sync (the next one is full).
    async fn apply_partial(&mut self, text: &str) -> Result<(), Error> {
        use nftables::netlink::{self, Socket};
        let socket = match &mut self.netlink {
            Some(socket) => socket,
            None => self
                .netlink
                .insert(Socket::open(self.applier.netns()).map_err(Error::Netlink)?),
        };
        // The kernel may take a while to validate the table (see PERFORMANCE.md): on a
        // multi-threaded runtime the worker hands its other tasks (health, watches) on first.
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let result = if multi_thread {
            tokio::task::block_in_place(|| socket.apply(text))
        } else {
            socket.apply(text)
        };
        match result {
            Ok(()) => Ok(()),
            Err(netlink::Error::Unsupported { line, reason }) => {
                tracing::debug!(%line, %reason, "partial sync through nft");
                self.applier.apply(text).await
            }
            Err(e) => {
                if matches!(e, netlink::Error::Socket(_)) {
                    self.netlink = None;
                }
                Err(Error::Netlink(e))
            }
        }
    }

    /// Deletes the conntrack entries of UDP flows whose endpoint is gone. Failures are logged
    /// only: `conntrack` exits 1 when there was nothing to delete.
    async fn delete_conntrack(&self, flows: &[UdpFlow]) {
        for flow in flows {
            let mut command = self.applier.netns().command("conntrack");
            command.args(flow.conntrack_delete_args());
            if let Err(e) = switchyard_netns::run_checked(&mut command).await {
                tracing::debug!(?flow, error = %e, "conntrack delete");
            }
        }
    }
}

struct Shared {
    synced: AtomicBool,
    metrics: Mutex<ProxyMetrics>,
    observer: Observer,
}

/// Where a proxy reports: shared with the status servers, and kept across a configuration
/// change (so counters continue and health covers the new proxy's first sync).
#[derive(Clone, Debug)]
pub struct Observer {
    pub metrics: Arc<Metrics>,
    pub health: Arc<ProxierHealth>,
}

impl Observer {
    /// Fresh metrics, and health with kube-proxy's timeout of 2 × `sync_period`.
    pub fn new(sync_period: Duration) -> Self {
        Observer {
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(ProxierHealth::new(sync_period * 2)),
        }
    }
}

/// Oldest `endpoints.kubernetes.io/last-change-trigger-time` per service not yet programmed.
type TriggerTimes = Arc<Mutex<HashMap<ServiceKey, SystemTime>>>;

/// The trigger time of a slice, if it is later than `since` (kube-proxy ignores those from
/// before it started: they would count the proxy's downtime as programming latency).
fn trigger_time(slice: &EndpointSlice, since: SystemTime) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(switchyard_controllers::endpointslice::ANNOTATION_TRIGGER_TIME)?;
    let at: SystemTime = text.parse::<jiff::Timestamp>().ok()?.into();
    (at > since).then_some(at)
}

/// The running proxy. Dropping it stops the watches and the sync loop; the rules stay in place
/// (a restarted proxy replaces them atomically, so established connections keep flowing).
pub struct Proxy {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Proxy {
    /// Watch Services, EndpointSlices and the own Node through `client`; program the
    /// namespace's nftables; never from a partial initial list.
    pub fn start(client: kube::Client, config: ProxyConfig) -> Proxy {
        let observer = Observer::new(config.sync_period);
        Proxy::start_observed(client, config, observer)
    }

    /// [`Proxy::start`], reporting to `observer`.
    pub fn start_observed(client: kube::Client, config: ProxyConfig, observer: Observer) -> Proxy {
        let services: Informer<Service> = Informer::new(Api::all(client.clone()), false);
        let slices: Informer<EndpointSlice> = Informer::new(Api::all(client.clone()), true);
        let nodes: Informer<Node> = Informer::new(Api::all(client), false);
        let tracker = Arc::new(Mutex::new(ChangeTracker::<Instant>::new()));
        let wake = Arc::new(Notify::new());
        let node_changed = Arc::new(AtomicBool::new(true));
        let triggers: TriggerTimes = Arc::default();
        let started = SystemTime::now();

        {
            let (tracker, wake, observer) = (tracker.clone(), wake.clone(), observer.clone());
            services.on_change(move |change| {
                let key = ServiceKey::new(
                    change
                        .object()
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_default(),
                    change.object().metadata.name.clone().unwrap_or_default(),
                );
                lock(&tracker).record(key, Instant::now());
                observer.metrics.service_changed();
                observer.metrics.queued(SystemTime::now());
                observer.health.queued();
                wake.notify_one();
            });
        }
        {
            let (tracker, wake, observer) = (tracker.clone(), wake.clone(), observer.clone());
            let triggers = triggers.clone();
            slices.on_change(move |change| {
                let mut keys = Vec::new();
                for slice in [Some(change.object()), change.old()].into_iter().flatten() {
                    if let Some(key) = slice_service(slice) {
                        keys.push(key);
                    }
                }
                if let (Change::Added(slice) | Change::Updated { new: slice, .. }, Some(key)) =
                    (&change, keys.first())
                {
                    if let Some(at) = trigger_time(slice, started) {
                        let mut t = lock(&triggers);
                        let oldest = t.entry(key.clone()).or_insert(at);
                        *oldest = (*oldest).min(at);
                    }
                }
                observer.metrics.endpoints_changed();
                observer.metrics.queued(SystemTime::now());
                observer.health.queued();
                let mut t = lock(&tracker);
                for key in keys {
                    t.record(key, Instant::now());
                }
                drop(t);
                wake.notify_one();
            });
        }
        {
            let (node_changed, wake, name) =
                (node_changed.clone(), wake.clone(), config.node_name.clone());
            let health = observer.health.clone();
            nodes.on_change(move |change: Change<'_, Node>| {
                if change.object().metadata.name.as_deref() == Some(name.as_str()) {
                    health.set_node_eligible(
                        !matches!(change, Change::Deleted(_))
                            && crate::healthcheck::node_eligible(change.object()),
                    );
                    node_changed.store(true, Ordering::Release);
                    wake.notify_one();
                }
            });
        }

        let shared = Arc::new(Shared {
            synced: AtomicBool::new(false),
            metrics: Mutex::new(ProxyMetrics::default()),
            observer,
        });
        let mut tasks = vec![
            tokio::spawn(services.clone().run()),
            tokio::spawn(slices.clone().run()),
            tokio::spawn(nodes.clone().run()),
        ];
        let sync_loop = SyncLoop {
            config,
            services,
            slices,
            nodes,
            tracker,
            triggers,
            wake,
            node_changed,
            shared: shared.clone(),
        };
        tasks.push(tokio::spawn(sync_loop.run()));
        Proxy { shared, tasks }
    }

    /// Whether the first full sync has been applied.
    pub fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    pub fn metrics(&self) -> ProxyMetrics {
        lock(&self.shared.metrics).clone()
    }

    /// Where this proxy reports (Prometheus metrics and health).
    pub fn observer(&self) -> &Observer {
        &self.shared.observer
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn slice_service(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some(ServiceKey::new(
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

struct SyncLoop {
    config: ProxyConfig,
    services: Informer<Service>,
    slices: Informer<EndpointSlice>,
    nodes: Informer<Node>,
    tracker: Arc<Mutex<ChangeTracker<Instant>>>,
    triggers: TriggerTimes,
    wake: Arc<Notify>,
    node_changed: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl SyncLoop {
    async fn run(self) {
        // Never program from a half-listed cache: an empty or partial list would delete the
        // rules of services that exist (a restart would blackhole them).
        self.services.wait_synced().await;
        self.slices.wait_synced().await;
        self.nodes.wait_synced().await;
        if let ProxyMode::Userspace(balance) = self.config.mode {
            return self.run_userspace(balance).await;
        }
        let mut plane = NftDataPlane::new(self.config.netns.clone(), self.node_config().await);
        let mut last_full = Instant::now();
        let mut health: BTreeMap<ServiceKey, (u16, usize)> = BTreeMap::new();
        let mut health_servers = HealthServers::default();
        loop {
            let started = Instant::now();
            if self.node_changed.swap(false, Ordering::AcqRel) {
                plane.set_node(self.node_config().await);
            }
            let changes = lock(&self.tracker).take();
            let triggered = std::mem::take(&mut *lock(&self.triggers));
            let oldest = changes.values().min().copied();
            let hourly = last_full.elapsed() >= FULL_SYNC_PERIOD;
            let (full, partial): (Vec<Family>, Vec<Family>) = Family::ALL
                .into_iter()
                .partition(|f| hourly || plane.needs_full_sync_of(*f));
            let span = tracing::info_span!("sync", full = ?full, services = changes.len());
            let _enter = span.enter();
            let mut results = Vec::new();
            if !full.is_empty() {
                let (snapshot, health_now) = self.snapshot_all(plane.node());
                health = health_now;
                for family in &full {
                    let ruleset = nftables::build(&snapshot, plane.node(), *family);
                    results.push(plane.sync_full(ruleset).await.map(|()| SyncKind::Full));
                }
            }
            if !partial.is_empty() {
                let node = plane.node().clone();
                let mut changed: [BTreeMap<ServiceKey, Option<ServiceRules>>; 2] =
                    Default::default();
                for key in changes.keys() {
                    let ports = self.ports_of(key);
                    if full.is_empty() {
                        match health_of(&ports, &node) {
                            Some(h) => health.insert(key.clone(), h),
                            None => health.remove(key),
                        };
                    }
                    for (family, changed) in partial.iter().zip(&mut changed) {
                        let rules = nftables::build_service(
                            ports.iter().map(|(n, p)| (n, p)),
                            &node,
                            *family,
                        );
                        changed.insert(key.clone(), rules);
                    }
                }
                for (family, changed) in partial.iter().zip(changed) {
                    results.push(plane.sync_services(*family, changed).await);
                }
            }
            let result = combine(results);
            let wanted: BTreeMap<u16, (ServiceKey, usize)> = health
                .iter()
                .map(|(k, (port, local))| (*port, (k.clone(), *local)))
                .collect();
            let netns = self.config.netns.clone();
            health_servers.sync(&wanted, |port| bind_health_check(&netns, port));
            let elapsed = started.elapsed();
            self.record(
                if matches!(result, Ok(SyncKind::Full)) || (!full.is_empty() && result.is_err()) {
                    SyncScope::Full
                } else {
                    SyncScope::Partial
                },
                elapsed,
                result.is_ok(),
                &triggered,
                plane.counts(),
            );
            {
                let mut m = lock(&self.shared.metrics);
                match &result {
                    Ok(kind) => {
                        match kind {
                            SyncKind::Full => {
                                m.full_syncs += 1;
                                m.last_full_sync_duration = elapsed;
                                // The hourly repair is due again once every table was
                                // replaced, not when one family recovered from a failure.
                                if full.len() == Family::ALL.len() {
                                    last_full = Instant::now();
                                }
                            }
                            SyncKind::Partial => m.partial_syncs += 1,
                            SyncKind::Nothing => {}
                        }
                        m.last_sync_duration = elapsed;
                        if let Some(oldest) = oldest {
                            m.last_programming_latency = oldest.elapsed();
                        }
                        (m.chains, m.elements) = plane.counts();
                    }
                    Err(_) => m.sync_errors += 1,
                }
            }
            // After a failure, retry soon; the data plane knows which families' tables that
            // retry replaces whole (a failure forgets what its family had applied).
            let failed = result.is_err();
            match result {
                Ok(kind) => {
                    tracing::debug!(?kind, ?elapsed, "synced");
                    self.shared.synced.store(
                        self.shared.synced.load(Ordering::Acquire) || kind == SyncKind::Full,
                        Ordering::Release,
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sync failed; the next sync is full");
                }
            }
            drop(_enter);
            // Syncs are at least min_sync_period apart; wake early for changes, at the latest
            // for the periodic sync (or a retry after a failure).
            tokio::time::sleep_until(started + self.config.min_sync_period).await;
            let next_full = if failed {
                Instant::now() + self.config.min_sync_period.max(Duration::from_millis(500))
            } else {
                (started + self.config.sync_period).min(last_full + FULL_SYNC_PERIOD)
            };
            if lock(&self.tracker).is_empty() && !self.node_changed.load(Ordering::Acquire) {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep_until(next_full) => {}
                }
            }
        }
    }

    /// Records a finished sync in the observer: durations, network programming latency of
    /// the changes it programmed, and health.
    fn record(
        &self,
        scope: SyncScope,
        duration: Duration,
        succeeded: bool,
        triggered: &HashMap<ServiceKey, SystemTime>,
        (chains, elements): (usize, usize),
    ) {
        let at = SystemTime::now();
        let observer = &self.shared.observer;
        observer.metrics.record_sync(&SyncRecord {
            scope,
            duration,
            succeeded,
            at,
            // A trigger time after now is clock skew between the node and the controller.
            programming: triggered
                .values()
                .filter_map(|t| at.duration_since(*t).ok())
                .collect(),
            chains,
            elements,
        });
        if succeeded {
            observer.health.updated();
        } else if !triggered.is_empty() {
            // Not programmed: keep them for the next sync's latency.
            let mut t = lock(&self.triggers);
            for (key, at) in triggered {
                let oldest = t.entry(key.clone()).or_insert(*at);
                *oldest = (*oldest).min(*at);
            }
        }
    }

    /// The service ports of `key` as the informers know them now (none when it is gone).
    fn ports_of(&self, key: &ServiceKey) -> Vec<(model::ServicePortName, model::ServicePort)> {
        let Some(svc) = self.services.get(&key.namespace, &key.name) else {
            return Vec::new();
        };
        let selector = LabelSelector::from_map(&BTreeMap::from([(
            LABEL_SERVICE_NAME.to_string(),
            key.name.clone(),
        )]));
        let slices = self.slices.select(&key.namespace, &selector);
        let refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        model::service_ports(&svc, &refs)
    }

    /// The userspace backend's loop: each sync computes every frontend (cheap: no kernel
    /// transaction) and the proxy changes only the listeners and endpoint sets that differ.
    async fn run_userspace(self, balance: crate::userspace::Balance) {
        let mut proxy = match crate::userspace::UserspaceProxy::new(self.config.netns.clone(), 2) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the userspace proxy");
                return;
            }
        };
        let mut node = self.node_config().await;
        loop {
            let started = Instant::now();
            if self.node_changed.swap(false, Ordering::AcqRel) {
                node = self.node_config().await;
            }
            let changes = lock(&self.tracker).take();
            let triggered = std::mem::take(&mut *lock(&self.triggers));
            let oldest = changes.values().min().copied();
            let (snapshot, _) = self.snapshot_all(&node);
            let desired = crate::userspace::frontends(&snapshot, &node, balance);
            let result = proxy.sync(&desired).await;
            self.record(
                SyncScope::Full,
                started.elapsed(),
                result.is_ok(),
                &triggered,
                (0, 0),
            );
            {
                let mut m = lock(&self.shared.metrics);
                m.full_syncs += 1;
                m.last_sync_duration = started.elapsed();
                m.last_full_sync_duration = m.last_sync_duration;
                if let Some(oldest) = oldest {
                    m.last_programming_latency = oldest.elapsed();
                }
                if let Err(errors) = &result {
                    m.sync_errors += 1;
                    for e in errors {
                        tracing::warn!(error = %e, "userspace proxy");
                    }
                }
            }
            self.shared.synced.store(true, Ordering::Release);
            tokio::time::sleep_until(started + self.config.min_sync_period).await;
            if lock(&self.tracker).is_empty() && !self.node_changed.load(Ordering::Acquire) {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.config.sync_period) => {}
                }
            }
        }
    }

    fn snapshot_all(&self, node: &NodeConfig) -> (Snapshot, BTreeMap<ServiceKey, (u16, usize)>) {
        let mut by_service: HashMap<ServiceKey, Vec<Arc<EndpointSlice>>> = HashMap::new();
        for slice in self.slices.list() {
            if let Some(key) = slice_service(&slice) {
                by_service.entry(key).or_default().push(slice);
            }
        }
        let mut snapshot = Snapshot::new();
        let mut health = BTreeMap::new();
        for svc in self.services.list() {
            let key = ServiceKey::new(
                svc.metadata.namespace.clone().unwrap_or_default(),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            let slices = by_service.get(&key);
            let refs: Vec<&EndpointSlice> =
                slices.into_iter().flatten().map(|s| s.as_ref()).collect();
            let ports = model::service_ports(&svc, &refs);
            if let Some(h) = health_of(&ports, node) {
                health.insert(key, h);
            }
            snapshot.extend(ports);
        }
        (snapshot, health)
    }

    /// This node's facts now: NodePort addresses from `--nodeport-addresses` (the namespace's
    /// addresses inside those CIDRs) or else the Node's InternalIPs.
    async fn node_config(&self) -> NodeConfig {
        let node_port_ips = if self.config.node_port_addresses.is_empty() {
            self.nodes
                .get("", &self.config.node_name)
                .and_then(|n| n.status.clone())
                .and_then(|s| s.addresses)
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .collect()
        } else {
            match self.config.netns.ip(&["-o", "addr", "show"]).await {
                Ok(text) => addresses_in(&text, &self.config.node_port_addresses),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the namespace's addresses");
                    Vec::new()
                }
            }
        };
        NodeConfig {
            node_name: self.config.node_name.clone(),
            node_port_ips,
            cluster_cidrs: self.config.cluster_cidrs.clone(),
            masquerade_all: self.config.masquerade_all,
            scheduler: self.config.scheduler,
        }
    }
}

/// The `healthCheckNodePort` of a service's ports (externalTrafficPolicy Local) and how many
/// local endpoints it has on this node.
fn health_of(
    ports: &[(model::ServicePortName, model::ServicePort)],
    node: &NodeConfig,
) -> Option<(u16, usize)> {
    let port = ports.iter().find_map(|(_, p)| {
        p.info
            .external_policy_local
            .then_some(p.info.health_check_node_port)
            .flatten()
    })?;
    let local = ports
        .iter()
        .map(|(_, p)| p.usable_endpoints(&node.node_name).local.len())
        .max()
        .unwrap_or(0);
    Some((port, local))
}

/// A `healthCheckNodePort` listener on every address of both families (one dual-stack socket,
/// as Go's `":port"` that kube-proxy listens on), or of IPv4 alone where the namespace has no
/// IPv6.
fn bind_health_check(netns: &NetNs, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    netns
        .bind_tcp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| netns.bind_tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Addresses in `ip -o addr show` output that lie in one of `cidrs` (loopback never).
pub fn addresses_in(ip_addr_output: &str, cidrs: &[IpNet]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = ip_addr_output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            let addr = words.next()?.split('/').next()?;
            addr.parse::<IpAddr>().ok()
        })
        .filter(|ip| !ip.is_loopback() && cidrs.iter().any(|c| c.contains(ip)))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_port_addresses_are_the_namespaces_addresses_in_the_cidrs() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                    3: eth0    inet 192.168.67.1/24 brd 192.168.67.255 scope global eth0\n\
                    4: br0    inet 10.244.1.1/24 scope global br0\n";
        let cidrs = vec![
            "192.168.67.0/24".parse().expect("cidr"),
            "127.0.0.0/8".parse().expect("cidr"),
        ];
        assert_eq!(
            addresses_in(text, &cidrs),
            vec!["192.168.67.1".parse::<IpAddr>().expect("ip")]
        );
    }
}
