//! The L2 speaker: answers ARP for the LoadBalancer IPs this node announces (see [`announce`])
//! and sends gratuitous ARP when it takes one over, as MetalLB's speaker does in layer-2 mode.
//!
//! One packet socket per interface of the node's namespace (a thread each, inside the
//! namespace), reading ARP requests and answering those for an announced IP with the
//! interface's MAC. Nothing is added to the kernel: the IP stays virtual (the proxy's rules take
//! the packets), and when the agent dies its answers stop with it: no stale address keeps
//! answering. The kernel must not answer for these IPs either: the node sets `arp_ignore=1` so an
//! address on the loopback (the userspace proxy's) is never announced by the kernel.
//!
//! A takeover sends a gratuitous ARP (a request from and for the IP, broadcast) at once and
//! repeats it after 250 ms and 1 s, so neighbours' caches move to this node even if one is lost.
//!
//! [`announce`]: crate::announce

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use pnet_datalink::{Channel, Config, MacAddr, NetworkInterface};
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::{MutablePacket, Packet};
use switchyard_netns::NetNs;

use crate::announce::Announcement;

/// When gratuitous ARPs go out after a takeover.
const GARP_SCHEDULE: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_secs(1),
];
/// How often a responder thread wakes without traffic (to send scheduled ARPs and to stop).
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

#[derive(Debug, Default)]
pub struct L2Counters {
    pub requests_received: AtomicU64,
    pub replies_sent: AtomicU64,
    pub gratuitous_sent: AtomicU64,
    pub takeovers: AtomicU64,
}

/// A snapshot of the speaker's counters (for `/metrics`).
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
    Announcing { ip: Ipv4Addr, service: String },
    Withdrawn { ip: Ipv4Addr, service: String },
}

/// IP → the interfaces it is answered on.
type Table = BTreeMap<Ipv4Addr, (String, Option<BTreeSet<String>>)>;

pub struct Speaker {
    table: Arc<RwLock<Table>>,
    counters: Arc<L2Counters>,
    stop: Arc<AtomicBool>,
    /// Per interface: where to ask for gratuitous ARPs.
    garp: BTreeMap<String, mpsc::Sender<Ipv4Addr>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
            table: Arc::default(),
            counters: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            garp: BTreeMap::new(),
            threads: Vec::new(),
        };
        for iface in interfaces {
            let (tx, rx) = mpsc::channel();
            let (opened_tx, opened_rx) = mpsc::channel();
            let table = speaker.table.clone();
            let counters = speaker.counters.clone();
            let stop = speaker.stop.clone();
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
                        respond(&iface, tx, rx_frames, &rx, &table, &counters, &stop);
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
            speaker.garp.insert(name, tx);
            speaker.threads.push(thread);
        }
        Ok(speaker)
    }

    /// The interfaces the speaker listens on.
    pub fn interfaces(&self) -> Vec<String> {
        self.garp.keys().cloned().collect()
    }

    /// Answer for exactly `wanted` (IPv4 entries; others are skipped). New IPs are announced
    /// with gratuitous ARP.
    pub fn sync(&self, wanted: &[Announcement]) -> Vec<Change> {
        let mut next = Table::new();
        for a in wanted {
            if let std::net::IpAddr::V4(ip) = a.ip {
                next.insert(ip, (a.service.clone(), a.interfaces.clone()));
            }
        }
        let mut changes = Vec::new();
        let previous = match self.table.write() {
            Ok(mut t) => std::mem::replace(&mut *t, next.clone()),
            Err(e) => std::mem::replace(&mut *e.into_inner(), next.clone()),
        };
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
            self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
            for (name, tx) in &self.garp {
                if ifaces.as_ref().is_none_or(|set| set.contains(name)) {
                    let _ = tx.send(*ip);
                }
            }
            changes.push(Change::Announcing {
                ip: *ip,
                service: service.clone(),
            });
        }
        changes
    }

    pub fn metrics(&self) -> L2Metrics {
        let c = &self.counters;
        L2Metrics {
            announced: self.table.read().map(|t| t.len()).unwrap_or(0),
            requests_received: c.requests_received.load(Ordering::Relaxed),
            replies_sent: c.replies_sent.load(Ordering::Relaxed),
            gratuitous_sent: c.gratuitous_sent.load(Ordering::Relaxed),
            takeovers: c.takeovers.load(Ordering::Relaxed),
        }
    }
}

/// The responder loop of one interface.
fn respond(
    iface: &NetworkInterface,
    mut tx: Box<dyn pnet_datalink::DataLinkSender>,
    mut rx: Box<dyn pnet_datalink::DataLinkReceiver>,
    garp_requests: &mpsc::Receiver<Ipv4Addr>,
    table: &RwLock<Table>,
    counters: &L2Counters,
    stop: &AtomicBool,
) {
    let Some(mac) = iface.mac else { return };
    let mut scheduled: Vec<(Instant, Ipv4Addr)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Ok(ip) = garp_requests.try_recv() {
            scheduled.extend(GARP_SCHEDULE.iter().map(|d| (now + *d, ip)));
        }
        scheduled.retain(|(at, ip)| {
            if *at > now {
                return true;
            }
            // Only while still announced here.
            let announced = table
                .read()
                .map(|t| serves(&t, *ip, &iface.name))
                .unwrap_or(false);
            if announced {
                let frame = arp_frame(
                    ArpOperations::Request,
                    mac,
                    *ip,
                    MacAddr::broadcast(),
                    *ip,
                    MacAddr::broadcast(),
                );
                if let Some(Ok(())) = tx.send_to(&frame, None) {
                    counters.gratuitous_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            false
        });
        let frame = match rx.next() {
            Ok(f) => f,
            Err(_) => continue,
        };
        let Some((requester_mac, requester_ip, target_ip)) = arp_request(frame) else {
            continue;
        };
        if requester_ip == target_ip {
            // Someone else's gratuitous ARP.
            continue;
        }
        let answer = table
            .read()
            .map(|t| serves(&t, target_ip, &iface.name))
            .unwrap_or(false);
        if !answer {
            continue;
        }
        counters.requests_received.fetch_add(1, Ordering::Relaxed);
        let reply = arp_frame(
            ArpOperations::Reply,
            mac,
            target_ip,
            requester_mac,
            requester_ip,
            requester_mac,
        );
        if let Some(Ok(())) = tx.send_to(&reply, None) {
            counters.replies_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn serves(table: &Table, ip: Ipv4Addr, iface: &str) -> bool {
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
        let ip: Ipv4Addr = "192.168.67.150".parse().expect("ip");
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
}
