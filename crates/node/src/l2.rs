//! The L2 speaker: answers ARP (IPv4) and Neighbor Solicitations (IPv6, [`ndp`]) for the
//! LoadBalancer IPs this node announces (see [`announce`]), and tells the segment when it takes
//! one over, as MetalLB's speaker does in layer-2 mode.
//!
//! One packet socket per interface of the node's namespace (a thread each, inside the
//! namespace), reading requests and answering those for an announced IP with the interface's
//! MAC; nothing else is ever answered (strict). Nothing is added to the kernel: the IP stays
//! virtual (the proxy's rules take the packets), and when the agent dies its answers stop with
//! it: no stale address keeps answering. The kernel must not answer for these IPs either: the
//! node sets `arp_ignore=1` so an address on the loopback (the userspace proxy's) is never
//! announced by ARP, and Linux answers a solicitation only for an address on the interface it
//! arrived on.
//!
//! Solicitations are sent to the target's solicited-node multicast group, which a NIC (or a
//! snooping bridge) delivers only to members: each responder joins, on its interface, the
//! groups of the IPv6 addresses it answers for (with an ordinary UDP socket of the node's
//! namespace, so the join is the namespace's own and ends with the agent) and leaves them when
//! the last such address is withdrawn.
//!
//! A takeover announces the IP at once and again after 250 ms and 1 s, so neighbours' caches
//! move to this node even if one is lost: a gratuitous ARP (a request from and for the IP,
//! broadcast) for IPv4, an unsolicited Neighbor Advertisement to all nodes (override set) for
//! IPv6.
//!
//! Counters are kept per IP under MetalLB's names ([`Speaker::render_metrics`]) and survive a
//! withdrawal, as Prometheus counters must.
//!
//! [`announce`]: crate::announce
//! [`ndp`]: crate::ndp

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pnet_datalink::{Channel, Config, MacAddr, NetworkInterface};
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::{MutablePacket, Packet};
use switchyard_netns::NetNs;

use crate::announce::Announcement;
use crate::ndp::{self, Advertisement, Solicitation};

/// When a takeover is announced (gratuitous ARP, unsolicited NA).
const GARP_SCHEDULE: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_secs(1),
];
/// How often a responder thread wakes without traffic (to send scheduled announcements and to
/// stop).
const WAKE: Duration = Duration::from_millis(50);
const ARP_FRAME: usize = 42;

/// Interfaces of the node's namespace that never announce: the loopback, the pod bridge and
/// the pods' veths.
fn is_announce_capable(iface: &NetworkInterface) -> bool {
    !iface.is_loopback()
        && iface.mac.is_some_and(|m| m != MacAddr::zero())
        && iface.name != "sy-br0"
        && !iface.name.starts_with("syv")
}

/// What the speaker did for one IP, MetalLB's per-IP counters plus takeovers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpCounters {
    /// ARP requests and Neighbor Solicitations received for the IP while announcing it.
    pub requests_received: u64,
    /// Replies and solicited advertisements sent.
    pub responses_sent: u64,
    /// Gratuitous ARPs and unsolicited advertisements sent after takeovers.
    pub gratuitous_sent: u64,
    /// Times this node started announcing the IP (each one a takeover on the segment).
    pub takeovers: u64,
}

/// A snapshot of the speaker's counters, summed over IPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Metrics {
    pub announced: usize,
    pub requests_received: u64,
    pub replies_sent: u64,
    pub gratuitous_sent: u64,
    pub takeovers: u64,
}

/// What changed in a sync, for log lines and Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Announcing { ip: IpAddr, service: String },
    Withdrawn { ip: IpAddr, service: String },
}

/// IP → (`namespace/name` of its Service, the interfaces it is answered on; `None`: all).
type Table = BTreeMap<IpAddr, (String, Option<BTreeSet<String>>)>;

/// What the responder threads share with the [`Speaker`].
#[derive(Default)]
struct State {
    table: RwLock<Table>,
    counters: Mutex<BTreeMap<IpAddr, IpCounters>>,
    stop: AtomicBool,
}

impl State {
    fn serves(&self, ip: IpAddr, iface: &str) -> bool {
        self.table
            .read()
            .map(|t| serves(&t, ip, iface))
            .unwrap_or(false)
    }

    fn count(&self, ip: IpAddr, bump: impl FnOnce(&mut IpCounters)) {
        let mut counters = match self.counters.lock() {
            Ok(c) => c,
            Err(e) => e.into_inner(),
        };
        bump(counters.entry(ip).or_default());
    }

    /// The solicited-node groups `iface` must receive: those of the IPv6 addresses it answers.
    fn groups_of(&self, iface: &str) -> BTreeSet<Ipv6Addr> {
        let Ok(table) = self.table.read() else {
            return BTreeSet::new();
        };
        table
            .keys()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) if serves(&table, *ip, iface) => {
                    Some(ndp::solicited_node_multicast(*v6))
                }
                _ => None,
            })
            .collect()
    }
}

/// What [`Speaker::sync`] tells a responder thread.
enum Command {
    /// Announce this IP now (and on the takeover schedule).
    Takeover(IpAddr),
    /// The table changed: join and leave multicast groups to match.
    Refresh,
}

pub struct Speaker {
    state: Arc<State>,
    /// Per interface: where to send [`Command`]s.
    commands: BTreeMap<String, mpsc::Sender<Command>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error(transparent)]
    Netns(#[from] switchyard_netns::Error),
    #[error("packet socket on {interface}: {source}")]
    Socket {
        interface: String,
        source: std::io::Error,
    },
}

impl Speaker {
    /// Listen on every announce-capable interface of `ns`.
    pub fn start(ns: &NetNs) -> Result<Speaker, L2Error> {
        let interfaces: Vec<NetworkInterface> = ns
            .run(pnet_datalink::interfaces)?
            .into_iter()
            .filter(is_announce_capable)
            .collect();
        let mut speaker = Speaker {
            state: Arc::default(),
            commands: BTreeMap::new(),
            threads: Vec::new(),
        };
        for iface in interfaces {
            let (tx, rx) = mpsc::channel();
            let (opened_tx, opened_rx) = mpsc::channel();
            let state = speaker.state.clone();
            let name = iface.name.clone();
            let thread = ns.spawn_thread(&format!("sy-l2-{}", iface.name), move || {
                let config = Config {
                    read_timeout: Some(WAKE),
                    promiscuous: false,
                    ..Config::default()
                };
                match pnet_datalink::channel(&iface, config) {
                    Ok(Channel::Ethernet(tx, rx_frames)) => {
                        let _ = opened_tx.send(Ok(()));
                        if let Some(mut responder) = Responder::new(&iface, tx) {
                            responder.run(rx_frames, &rx, &state);
                        }
                    }
                    Ok(_) => {
                        let _ =
                            opened_tx.send(Err(std::io::Error::other("not an Ethernet channel")));
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
                }
            })?;
            let opened = opened_rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("responder thread died")));
            if let Err(source) = opened {
                let _ = thread.join();
                return Err(L2Error::Socket {
                    interface: name,
                    source,
                });
            }
            speaker.commands.insert(name, tx);
            speaker.threads.push(thread);
        }
        Ok(speaker)
    }

    /// The interfaces the speaker listens on.
    pub fn interfaces(&self) -> Vec<String> {
        self.commands.keys().cloned().collect()
    }

    /// Answer for exactly `wanted`. New IPs are announced (gratuitous ARP, unsolicited NA).
    pub fn sync(&self, wanted: &[Announcement]) -> Vec<Change> {
        let next: Table = wanted
            .iter()
            .map(|a| (a.ip, (a.service.clone(), a.interfaces.clone())))
            .collect();
        let previous = match self.state.table.write() {
            Ok(mut t) => std::mem::replace(&mut *t, next.clone()),
            Err(e) => std::mem::replace(&mut *e.into_inner(), next.clone()),
        };
        let mut changes = Vec::new();
        for (ip, (service, _)) in &previous {
            if !next.contains_key(ip) {
                changes.push(Change::Withdrawn {
                    ip: *ip,
                    service: service.clone(),
                });
            }
        }
        for (ip, (service, ifaces)) in &next {
            if previous.contains_key(ip) {
                continue;
            }
            self.state.count(*ip, |c| c.takeovers += 1);
            for (name, tx) in &self.commands {
                if ifaces.as_ref().is_none_or(|set| set.contains(name)) {
                    let _ = tx.send(Command::Takeover(*ip));
                }
            }
            changes.push(Change::Announcing {
                ip: *ip,
                service: service.clone(),
            });
        }
        if previous != next {
            for tx in self.commands.values() {
                let _ = tx.send(Command::Refresh);
            }
        }
        changes
    }

    pub fn metrics(&self) -> L2Metrics {
        let announced = self.state.table.read().map(|t| t.len()).unwrap_or(0);
        let counters = self.counters();
        let sum = |f: fn(&IpCounters) -> u64| counters.values().map(f).sum();
        L2Metrics {
            announced,
            requests_received: sum(|c| c.requests_received),
            replies_sent: sum(|c| c.responses_sent),
            gratuitous_sent: sum(|c| c.gratuitous_sent),
            takeovers: sum(|c| c.takeovers),
        }
    }

    /// The counters of every IP this speaker ever announced.
    pub fn counters(&self) -> BTreeMap<IpAddr, IpCounters> {
        match self.state.counters.lock() {
            Ok(c) => c.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    /// Prometheus text for node `node` (see [`render_metrics`]).
    pub fn render_metrics(&self, node: &str, out: &mut String) {
        let announced: Vec<(IpAddr, String)> = self
            .state
            .table
            .read()
            .map(|t| t.iter().map(|(ip, (svc, _))| (*ip, svc.clone())).collect())
            .unwrap_or_default();
        render_metrics(node, &announced, &self.counters(), out);
    }
}

/// A per-IP counter family of [`render_metrics`].
struct CounterFamily {
    name: &'static str,
    help: &'static str,
    value: fn(&IpCounters) -> u64,
}

/// MetalLB's help texts, and ours for the takeovers.
const PER_IP_COUNTERS: [CounterFamily; 4] = [
    CounterFamily {
        name: "metallb_layer2_requests_received",
        help: "Number of layer2 requests received for owned IPs",
        value: |c| c.requests_received,
    },
    CounterFamily {
        name: "metallb_layer2_responses_sent",
        help: "Number of layer2 responses sent for owned IPs in response to requests",
        value: |c| c.responses_sent,
    },
    CounterFamily {
        name: "metallb_layer2_gratuitous_sent",
        help: "Number of gratuitous layer2 packets sent for owned IPs as a result of failovers",
        value: |c| c.gratuitous_sent,
    },
    CounterFamily {
        name: "switchyard_l2_takeovers_total",
        help: "Times this node started announcing the IP (a failover, or the first assignment)",
        value: |c| c.takeovers,
    },
];

/// Prometheus text exposition of the speaker: MetalLB's names and labels
/// (`metallb_speaker_announced` from its speaker, the `metallb_layer2_*` counters from
/// `internal/layer2/stats.go`), so MetalLB dashboards and alerts work unchanged, plus
/// Switchyard's takeover counter. Labels are in Prometheus' sorted order.
pub fn render_metrics(
    node: &str,
    announced: &[(IpAddr, String)],
    counters: &BTreeMap<IpAddr, IpCounters>,
    out: &mut String,
) {
    family(
        out,
        "metallb_speaker_announced",
        "gauge",
        "Services being announced from this node. This is desired state, it does not \
         guarantee that the routing protocols have converged.",
    );
    for (ip, service) in announced {
        let _ = writeln!(
            out,
            "metallb_speaker_announced{{ip=\"{}\",node=\"{}\",protocol=\"layer2\",service=\"{}\"}} 1",
            escape(&ip.to_string()),
            escape(node),
            escape(service)
        );
    }
    for counter in &PER_IP_COUNTERS {
        family(out, counter.name, "counter", counter.help);
        for (ip, c) in counters {
            let _ = writeln!(
                out,
                "{}{{ip=\"{}\"}} {}",
                counter.name,
                escape(&ip.to_string()),
                (counter.value)(c)
            );
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// One interface's multicast memberships, held by a UDP socket of the node's namespace (opened
/// with the first group: a node without IPv6 LoadBalancer IPs needs none).
struct Groups {
    socket: Option<UdpSocket>,
    index: u32,
    joined: BTreeSet<Ipv6Addr>,
}

impl Groups {
    fn new(index: u32) -> Groups {
        Groups {
            socket: None,
            index,
            joined: BTreeSet::new(),
        }
    }

    /// Join `wanted` and leave the rest.
    fn sync(&mut self, iface: &str, wanted: BTreeSet<Ipv6Addr>) {
        if self.socket.is_none() && !wanted.is_empty() {
            match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)) {
                Ok(socket) => self.socket = Some(socket),
                Err(error) => {
                    tracing::warn!(interface = iface, %error, "no IPv6 socket to join multicast groups with");
                    return;
                }
            }
        }
        let Some(socket) = &self.socket else { return };
        for group in self.joined.difference(&wanted) {
            if let Err(error) = socket.leave_multicast_v6(group, self.index) {
                tracing::warn!(interface = iface, %group, %error, "cannot leave multicast group");
            }
        }
        self.joined.retain(|g| wanted.contains(g));
        for group in wanted {
            if self.joined.contains(&group) {
                continue;
            }
            match socket.join_multicast_v6(&group, self.index) {
                Ok(()) => {
                    self.joined.insert(group);
                }
                Err(error) => {
                    tracing::warn!(interface = iface, %group, %error, "cannot join multicast group: solicitations may not arrive");
                }
            }
        }
    }
}

/// The responder of one interface.
struct Responder {
    iface: String,
    mac: MacAddr,
    /// The source of advertisements (MetalLB uses the link-local address too); without one
    /// (IPv6 not yet configured), the announced address itself.
    link_local: Option<Ipv6Addr>,
    tx: Box<dyn pnet_datalink::DataLinkSender>,
    groups: Groups,
    scheduled: Vec<(Instant, IpAddr)>,
}

impl Responder {
    fn new(iface: &NetworkInterface, tx: Box<dyn pnet_datalink::DataLinkSender>) -> Option<Self> {
        let link_local = iface.ips.iter().find_map(|net| match net.ip() {
            IpAddr::V6(ip) if ndp::is_link_local(ip) => Some(ip),
            _ => None,
        });
        Some(Responder {
            iface: iface.name.clone(),
            mac: iface.mac?,
            link_local,
            tx,
            groups: Groups::new(iface.index),
            scheduled: Vec::new(),
        })
    }

    fn run(
        &mut self,
        mut rx: Box<dyn pnet_datalink::DataLinkReceiver>,
        commands: &mpsc::Receiver<Command>,
        state: &State,
    ) {
        while !state.stop.load(Ordering::Relaxed) {
            self.take_commands(commands, state);
            self.send_due(state);
            if let Ok(frame) = rx.next() {
                self.answer(frame, state);
            }
        }
    }

    fn take_commands(&mut self, commands: &mpsc::Receiver<Command>, state: &State) {
        let now = Instant::now();
        let mut refresh = false;
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Takeover(ip) => self
                    .scheduled
                    .extend(GARP_SCHEDULE.iter().map(|d| (now + *d, ip))),
                Command::Refresh => refresh = true,
            }
        }
        if refresh {
            let wanted = state.groups_of(&self.iface);
            self.groups.sync(&self.iface, wanted);
        }
    }

    /// Scheduled announcements that are due, for IPs still announced here.
    fn send_due(&mut self, state: &State) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            self.scheduled.drain(..).partition(|(at, _)| *at <= now);
        self.scheduled = later;
        for (_, ip) in due {
            if !state.serves(ip, &self.iface) {
                continue;
            }
            let frame = match ip {
                IpAddr::V4(v4) => arp_frame(
                    ArpOperations::Request,
                    self.mac,
                    v4,
                    MacAddr::broadcast(),
                    v4,
                    MacAddr::broadcast(),
                ),
                IpAddr::V6(v6) => ndp::advertisement(
                    Advertisement::Unsolicited,
                    self.mac,
                    self.link_local.unwrap_or(v6),
                    v6,
                ),
            };
            if self.send(&frame) {
                state.count(ip, |c| c.gratuitous_sent += 1);
            }
        }
    }

    fn answer(&mut self, frame: &[u8], state: &State) {
        // Frames this interface sent come back on a packet socket too.
        if EthernetPacket::new(frame).is_none_or(|eth| eth.get_source() == self.mac) {
            return;
        }
        if let Some((requester_mac, requester_ip, target_ip)) = arp_request(frame) {
            self.answer_arp(requester_mac, requester_ip, target_ip, state);
        } else if let Some(ns) = ndp::solicitation(frame) {
            self.answer_solicitation(ns, state);
        }
    }

    fn answer_arp(
        &mut self,
        requester_mac: MacAddr,
        requester_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
        state: &State,
    ) {
        let ip = IpAddr::V4(target_ip);
        // A requester asking for itself is someone else's gratuitous ARP.
        if requester_ip == target_ip || !state.serves(ip, &self.iface) {
            return;
        }
        state.count(ip, |c| c.requests_received += 1);
        let reply = arp_frame(
            ArpOperations::Reply,
            self.mac,
            target_ip,
            requester_mac,
            requester_ip,
            requester_mac,
        );
        if self.send(&reply) {
            state.count(ip, |c| c.responses_sent += 1);
        }
    }

    fn answer_solicitation(&mut self, ns: Solicitation, state: &State) {
        let ip = IpAddr::V6(ns.target);
        if !state.serves(ip, &self.iface) {
            return;
        }
        state.count(ip, |c| c.requests_received += 1);
        let reply = ndp::advertisement(
            Advertisement::Reply(ns),
            self.mac,
            self.link_local.unwrap_or(ns.target),
            ns.target,
        );
        if self.send(&reply) {
            state.count(ip, |c| c.responses_sent += 1);
        }
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        matches!(self.tx.send_to(frame, None), Some(Ok(())))
    }
}

fn serves(table: &Table, ip: IpAddr, iface: &str) -> bool {
    table
        .get(&ip)
        .is_some_and(|(_, ifaces)| ifaces.as_ref().is_none_or(|s| s.contains(iface)))
}

/// (sender MAC, sender IP, target IP) of an ARP request frame.
fn arp_request(frame: &[u8]) -> Option<(MacAddr, Ipv4Addr, Ipv4Addr)> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_operation() != ArpOperations::Request
        || arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
    {
        return None;
    }
    Some((
        arp.get_sender_hw_addr(),
        arp.get_sender_proto_addr(),
        arp.get_target_proto_addr(),
    ))
}

/// An Ethernet frame carrying an ARP packet.
fn arp_frame(
    op: pnet_packet::arp::ArpOperation,
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
    eth_destination: MacAddr,
) -> Vec<u8> {
    let mut buf = vec![0u8; ARP_FRAME];
    if let Some(mut eth) = MutableEthernetPacket::new(&mut buf) {
        eth.set_destination(eth_destination);
        eth.set_source(sender_mac);
        eth.set_ethertype(EtherTypes::Arp);
        if let Some(mut arp) = MutableArpPacket::new(eth.payload_mut()) {
            arp.set_hardware_type(ArpHardwareTypes::Ethernet);
            arp.set_protocol_type(EtherTypes::Ipv4);
            arp.set_hw_addr_len(6);
            arp.set_proto_addr_len(4);
            arp.set_operation(op);
            arp.set_sender_hw_addr(sender_mac);
            arp.set_sender_proto_addr(sender_ip);
            // A gratuitous request carries zeros as the target hardware address.
            arp.set_target_hw_addr(if op == ArpOperations::Request {
                MacAddr::zero()
            } else {
                target_mac
            });
            arp.set_target_proto_addr(target_ip);
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip() {
        let me = MacAddr::new(2, 0, 0, 0, 0, 1);
        let ip: Ipv4Addr = "192.168.67.2".parse().expect("ip");
        let target: Ipv4Addr = "192.168.67.150".parse().expect("ip");
        let req = arp_frame(
            ArpOperations::Request,
            me,
            ip,
            MacAddr::zero(),
            target,
            MacAddr::broadcast(),
        );
        assert_eq!(arp_request(&req), Some((me, ip, target)));
        let reply = arp_frame(ArpOperations::Reply, me, target, me, ip, me);
        assert_eq!(arp_request(&reply), None, "a reply is not a request");
        assert_eq!(arp_request(&[0u8; 10]), None);
    }

    #[test]
    fn table_interfaces() {
        let mut t = Table::new();
        let ip: IpAddr = "192.168.67.150".parse().expect("ip");
        t.insert(ip, ("default/web".into(), None));
        assert!(serves(&t, ip, "eth0") && serves(&t, ip, "eth1"));
        t.insert(
            ip,
            (
                "default/web".into(),
                Some(BTreeSet::from(["eth1".to_string()])),
            ),
        );
        assert!(!serves(&t, ip, "eth0") && serves(&t, ip, "eth1"));
    }

    #[test]
    fn metrics_render_with_metallbs_names_and_labels() {
        let v4: IpAddr = "192.168.67.150".parse().expect("ip");
        let v6: IpAddr = "fd00:67::150".parse().expect("ip");
        let counters = BTreeMap::from([
            (
                v4,
                IpCounters {
                    requests_received: 3,
                    responses_sent: 2,
                    gratuitous_sent: 3,
                    takeovers: 1,
                },
            ),
            (
                v6,
                IpCounters {
                    requests_received: 1,
                    responses_sent: 1,
                    gratuitous_sent: 6,
                    takeovers: 2,
                },
            ),
        ]);
        let mut out = String::new();
        render_metrics(
            "node-1",
            &[(v6, "default/web6".into())],
            &counters,
            &mut out,
        );
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                r#"metallb_speaker_announced{ip="fd00:67::150",node="node-1",protocol="layer2",service="default/web6"} 1"#,
                r#"metallb_layer2_requests_received{ip="192.168.67.150"} 3"#,
                r#"metallb_layer2_requests_received{ip="fd00:67::150"} 1"#,
                r#"metallb_layer2_responses_sent{ip="192.168.67.150"} 2"#,
                r#"metallb_layer2_responses_sent{ip="fd00:67::150"} 1"#,
                r#"metallb_layer2_gratuitous_sent{ip="192.168.67.150"} 3"#,
                r#"metallb_layer2_gratuitous_sent{ip="fd00:67::150"} 6"#,
                r#"switchyard_l2_takeovers_total{ip="192.168.67.150"} 1"#,
                r#"switchyard_l2_takeovers_total{ip="fd00:67::150"} 2"#,
            ]
        );
        let types: Vec<&str> = out.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            [
                "# TYPE metallb_speaker_announced gauge",
                "# TYPE metallb_layer2_requests_received counter",
                "# TYPE metallb_layer2_responses_sent counter",
                "# TYPE metallb_layer2_gratuitous_sent counter",
                "# TYPE switchyard_l2_takeovers_total counter",
            ]
        );
        assert_eq!(out.lines().filter(|l| l.starts_with("# HELP")).count(), 5);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        let ip: IpAddr = "192.168.67.150".parse().expect("ip");
        render_metrics(
            "a\"b\\c\nd",
            &[(ip, "default/web".into())],
            &BTreeMap::new(),
            &mut out,
        );
        assert!(out.contains(r#"node="a\"b\\c\nd""#), "{out}");
    }
}
