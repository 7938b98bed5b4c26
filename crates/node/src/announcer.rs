//! The node's LoadBalancer announcer (MetalLB's speaker in L2 mode): watches Services,
//! EndpointSlices, Nodes, IPAddressPools and L2Advertisements, decides with [`announce`] which
//! IPs this node answers for, and drives the [`Speaker`].
//!
//! A node counts as alive for the election when its Node is Ready and its agent's heartbeat is
//! heard ([`heartbeat`]); this node itself acts only once its heartbeat has warmed up (one
//! `timeout` after start: silence before that means nothing) and while it hears at least half
//! of the other Ready nodes. Every change is recomputed at once: an object change, a heartbeat
//! appearing or going silent.
//!
//! # How long two nodes can answer for one IP (split brain)
//!
//! With the defaults (`interval` 150 ms, `timeout` 600 ms; silence is noticed on the next
//! send tick, so within `timeout` + `interval` = 750 ms of the last datagram heard):
//! - **Clean partition** (the node network splits into groups that cannot hear each other): a
//!   node acts only while its group is a strict majority of the Ready nodes (it hears at least
//!   half of the others), and at most one group can be. The old owner, if cut off in a
//!   minority, withdraws within 750 ms of the last heartbeat it heard; the majority's new owner
//!   starts within 750 ms of the last heartbeat it heard from the old one. Those last
//!   heartbeats were sent within one interval of each other, and each side notices on its own
//!   tick, so both answer together for at most about two intervals (300 ms). The newer owner's
//!   gratuitous ARP / unsolicited NA is the latest word for neighbours' caches. A split with no
//!   strict majority (2 + 2, or two nodes) announces nothing until the Node objects change (a
//!   node marked not Ready is no longer expected): unavailability rather than split brain.
//! - **Partial partition** (A and C cannot hear each other but both hear B): each counts the
//!   other dead while holding quorum, so both may announce until the link heals (or one of
//!   them also loses the API server and is marked not Ready after the 40 s grace period). The
//!   heartbeat cannot bound this; MetalLB's memberlist has the same limit.
//! - **Object changes** (a Service, EndpointSlice or label edited) reach the nodes' informers
//!   at slightly different times: the old and new owner overlap for that skew (milliseconds on
//!   one API server), or there is a gap of the same length.
//!
//! Each change is logged, and an Event `nodeAssigned` ("announcing from node X with protocol
//! layer2", MetalLB's wording) is recorded on the Service when this node takes an IP.
//!
//! [`announce`]: crate::announce
//! [`heartbeat`]: crate::heartbeat

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use switchyard_api::metallb::{IPAddressPool, L2Advertisement};
use switchyard_api::selector::LabelSelector;
use switchyard_controllers::runtime::{object_reference, EventRecorder, Informer};
use switchyard_netns::NetNs;
use tokio::sync::Notify;

use crate::announce::{self, Announcement, View};
use crate::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::l2::{Change, L2Metrics, Speaker};

#[derive(Clone, Debug)]
pub struct AnnouncerConfig {
    pub node_name: String,
    /// The node's address: heartbeats are sent from and to `<InternalIP>:heartbeat_port`.
    pub node_ip: IpAddr,
    pub heartbeat_port: u16,
    pub heartbeat: HeartbeatConfig,
}

impl AnnouncerConfig {
    pub fn new(node_name: &str, node_ip: IpAddr) -> Self {
        AnnouncerConfig {
            node_name: node_name.to_string(),
            node_ip,
            heartbeat_port: crate::heartbeat::DEFAULT_PORT,
            heartbeat: HeartbeatConfig::new(node_name),
        }
    }
}

/// A running announcer; dropping it stops answering at once.
pub struct Announcer {
    node_name: String,
    speaker: Arc<Speaker>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.speaker.sync(&[]);
    }
}

impl Announcer {
    /// Start answering for this node, in the node's namespace `ns`.
    pub fn start(
        client: kube::Client,
        ns: &NetNs,
        config: AnnouncerConfig,
    ) -> anyhow::Result<Announcer> {
        let speaker = Arc::new(Speaker::start(ns)?);
        let socket = ns.bind_udp(SocketAddr::new(config.node_ip, config.heartbeat_port))?;
        let heartbeat = Arc::new(Heartbeat::start(socket, config.heartbeat.clone()));
        let services: Informer<Service> = Informer::new(Api::all(client.clone()), false);
        let slices: Informer<EndpointSlice> = Informer::new(Api::all(client.clone()), true);
        let nodes: Informer<Node> = Informer::new(Api::all(client.clone()), false);
        let pools: Informer<IPAddressPool> = Informer::new(Api::all(client.clone()), false);
        let ads: Informer<L2Advertisement> = Informer::new(Api::all(client.clone()), false);
        let wake = Arc::new(Notify::new());
        macro_rules! wake_on {
            ($inf:expr) => {{
                let w = wake.clone();
                $inf.on_change(move |_| w.notify_one());
            }};
        }
        wake_on!(services);
        wake_on!(slices);
        wake_on!(nodes);
        wake_on!(pools);
        wake_on!(ads);
        let events = EventRecorder::new(client, &config.node_name);
        let mut writer = tokio::task::JoinSet::new();
        events.spawn(&mut writer);
        let mut tasks = vec![
            tokio::spawn(services.clone().run()),
            tokio::spawn(slices.clone().run()),
            tokio::spawn(nodes.clone().run()),
            tokio::spawn(pools.clone().run()),
            tokio::spawn(ads.clone().run()),
            tokio::spawn(async move { while writer.join_next().await.is_some() {} }),
        ];
        let sources = Sources {
            services,
            slices,
            nodes,
            pools,
            ads,
        };
        let node_name = config.node_name.clone();
        let speaker_ = speaker.clone();
        tasks.push(tokio::spawn(async move {
            sources.wait_synced().await;
            let mut beats = heartbeat.subscribe();
            // Silence right after a start means nothing yet: decide once the heartbeat is warm.
            let warm = tokio::time::sleep(config.heartbeat.timeout);
            tokio::pin!(warm);
            let mut warmed = false;
            loop {
                let peers = sources.peers(&config);
                heartbeat.set_peers(peers);
                let wanted = if warmed {
                    sources.decide(&config.node_name, &heartbeat)
                } else {
                    Vec::new()
                };
                for change in speaker_.sync(&wanted) {
                    report(&change, &config.node_name, &sources, &events);
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = beats.changed() => {}
                    _ = &mut warm, if !warmed => warmed = true,
                }
            }
        }));
        Ok(Announcer {
            node_name,
            speaker,
            tasks,
        })
    }

    pub fn metrics(&self) -> L2Metrics {
        self.speaker.metrics()
    }

    /// Appends this node's announcements and L2 counters as Prometheus text, under MetalLB's
    /// speaker metric names (see [`crate::l2::render_metrics`]).
    pub fn render_metrics(&self, out: &mut String) {
        self.speaker.render_metrics(&self.node_name, out);
    }
}

struct Sources {
    services: Informer<Service>,
    slices: Informer<EndpointSlice>,
    nodes: Informer<Node>,
    pools: Informer<IPAddressPool>,
    ads: Informer<L2Advertisement>,
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

impl Sources {
    async fn wait_synced(&self) {
        self.services.wait_synced().await;
        self.slices.wait_synced().await;
        self.nodes.wait_synced().await;
        self.pools.wait_synced().await;
        self.ads.wait_synced().await;
    }

    /// Heartbeat addresses of the other nodes.
    fn peers(&self, config: &AnnouncerConfig) -> BTreeMap<String, SocketAddr> {
        self.nodes
            .list()
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let ip = internal_ip(n)?;
                (name != config.node_name)
                    .then(|| (name, SocketAddr::new(ip, config.heartbeat_port)))
            })
            .collect()
    }

    fn decide(&self, me: &str, heartbeat: &Heartbeat) -> Vec<Announcement> {
        let nodes: Vec<Node> = self.nodes.list().iter().map(|n| (**n).clone()).collect();
        let ready: BTreeSet<String> = nodes
            .iter()
            .filter(|n| is_ready(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let others: BTreeSet<String> = ready.iter().filter(|n| *n != me).cloned().collect();
        if !heartbeat.has_quorum(&others) {
            return Vec::new();
        }
        let heard = heartbeat.alive();
        let alive = |n: &str| n == me || (ready.contains(n) && heard.contains(n));
        let pools: Vec<IPAddressPool> = self.pools.list().iter().map(|p| (**p).clone()).collect();
        let ads: Vec<L2Advertisement> = self.ads.list().iter().map(|a| (**a).clone()).collect();
        let services = self.services.list();
        let lb: Vec<&Service> = services
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| !announce::ingress_ips(s).is_empty())
            .collect();
        // Slices of the services at hand, kept alive for the borrow below.
        let slices: BTreeMap<String, Vec<Arc<EndpointSlice>>> = lb
            .iter()
            .map(|s| {
                let ns = s.metadata.namespace.clone().unwrap_or_default();
                let name = s.metadata.name.clone().unwrap_or_default();
                let sel = LabelSelector::from_metav1(
                    &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                        match_labels: Some(
                            [("kubernetes.io/service-name".to_string(), name.clone())].into(),
                        ),
                        ..Default::default()
                    },
                )
                .ok();
                let found = sel
                    .map(|sel| self.slices.select(&ns, &sel))
                    .unwrap_or_default();
                (format!("{ns}/{name}"), found)
            })
            .collect();
        let slices_of = |s: &Service| -> Vec<&EndpointSlice> {
            let key = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            slices
                .get(&key)
                .map(|v| v.iter().map(|a| a.as_ref()).collect())
                .unwrap_or_default()
        };
        let view = View {
            pools: &pools,
            advertisements: &ads,
            nodes: &nodes,
            alive: &alive,
        };
        announce::announcements(me, &lb, &slices_of, &view)
    }
}

fn report(change: &Change, node: &str, sources: &Sources, events: &EventRecorder) {
    match change {
        Change::Announcing { ip, service } => {
            tracing::info!(%ip, %service, node, "announcing (layer2)");
            let (ns, name) = service.split_once('/').unwrap_or(("", service));
            if let Some(svc) = sources.services.get(ns, name) {
                events.normal(
                    &object_reference(svc.as_ref()),
                    "nodeAssigned",
                    format!("announcing from node \"{node}\" with protocol \"layer2\""),
                );
            }
        }
        Change::Withdrawn { ip, service } => {
            tracing::info!(%ip, %service, node, "no longer announcing (layer2)");
        }
    }
}
