//! Direct heartbeats between node agents, for failure detection in well under a second (the
//! node Lease only tells within the 40 s node grace period).
//!
//! Every agent sends a small UDP datagram to every peer each `interval` (150 ms by default) on
//! the node network, and counts a peer alive while its last datagram is younger than `timeout`
//! (600 ms: four missed beats). Datagrams are `SYHB1 <node> <boot id> <seq>` (the boot id and
//! sequence number are for debugging captures).
//!
//! Split brain is bounded with a majority rule ([`Heartbeat::has_quorum`]): a node acts on
//! the election only while it hears at least half of the other nodes it expects (rounded down),
//! so a node cut off from the others stops within `timeout` of losing them, which is also when
//! the others take over. With three or more nodes a dead node's IPs move within `timeout` plus
//! one interval; with two, the survivor waits until the dead node is no longer expected (marked
//! not Ready by the node lifecycle controller).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// The port node agents heartbeat on (memberlist's, as MetalLB's speakers use).
pub const DEFAULT_PORT: u16 = 7946;

#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    pub node_name: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl HeartbeatConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        HeartbeatConfig {
            node_name: node_name.into(),
            interval: Duration::from_millis(150),
            timeout: Duration::from_millis(600),
        }
    }
}

/// The pure part: who was heard when.
#[derive(Debug, Default)]
pub struct Membership {
    last_seen: HashMap<String, Instant>,
}

impl Membership {
    /// A datagram from `node` arrived at `now`.
    pub fn observe(&mut self, node: &str, now: Instant) {
        self.last_seen.insert(node.to_string(), now);
    }

    /// Nodes heard within `timeout` before `now`.
    pub fn alive(&self, now: Instant, timeout: Duration) -> BTreeSet<String> {
        self.last_seen
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) < timeout)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Forget nodes that are no longer peers.
    pub fn retain(&mut self, peers: &BTreeSet<String>) {
        self.last_seen.retain(|n, _| peers.contains(n));
    }
}

/// Whether a node hearing `heard` of the `expected` other nodes may act (see the module docs).
pub fn quorum(heard: usize, expected_others: usize) -> bool {
    heard * 2 >= expected_others
}

struct Shared {
    membership: Membership,
    peers: BTreeMap<String, SocketAddr>,
    alive: BTreeSet<String>,
}

/// A running heartbeat; dropping it stops sending and listening.
pub struct Heartbeat {
    config: HeartbeatConfig,
    shared: Arc<Mutex<Shared>>,
    started: Instant,
    changes: tokio::sync::watch::Sender<BTreeSet<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Heartbeat {
    /// Heartbeat on `socket` (bound by the caller on the node network, in the node's namespace).
    pub fn start(socket: UdpSocket, config: HeartbeatConfig) -> Heartbeat {
        let socket = Arc::new(socket);
        let shared = Arc::new(Mutex::new(Shared {
            membership: Membership::default(),
            peers: BTreeMap::new(),
            alive: BTreeSet::new(),
        }));
        let (changes, _) = tokio::sync::watch::channel(BTreeSet::new());
        let boot = rand::random::<u64>();
        let sender = {
            let socket = socket.clone();
            let shared = shared.clone();
            let changes = changes.clone();
            let config = config.clone();
            tokio::spawn(async move {
                let mut seq: u64 = 0;
                let mut tick = tokio::time::interval(config.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    seq += 1;
                    let msg = format!("SYHB1 {} {boot} {seq}", config.node_name);
                    let peers: Vec<SocketAddr> = match shared.lock() {
                        Ok(s) => s.peers.values().copied().collect(),
                        Err(_) => return,
                    };
                    for p in peers {
                        let _ = socket.send_to(msg.as_bytes(), p).await;
                    }
                    refresh(&shared, &changes, config.timeout);
                }
            })
        };
        let receiver = {
            let shared = shared.clone();
            let changes = changes.clone();
            let config = config.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    let Ok((n, _from)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    let Some(node) = parse(&buf[..n]) else {
                        continue;
                    };
                    let fresh = match shared.lock() {
                        Ok(mut s) => {
                            if !s.peers.contains_key(node) {
                                continue;
                            }
                            s.membership.observe(node, Instant::now());
                            !s.alive.contains(node)
                        }
                        Err(_) => return,
                    };
                    if fresh {
                        refresh(&shared, &changes, config.timeout);
                    }
                }
            })
        };
        Heartbeat {
            config,
            shared,
            started: Instant::now(),
            changes,
            tasks: vec![sender, receiver],
        }
    }

    /// The other nodes and their heartbeat addresses (from the Node objects).
    pub fn set_peers(&self, peers: BTreeMap<String, SocketAddr>) {
        if let Ok(mut s) = self.shared.lock() {
            let names: BTreeSet<String> = peers.keys().cloned().collect();
            s.membership.retain(&names);
            s.peers = peers;
            s.peers.remove(&self.config.node_name);
        }
        refresh(&self.shared, &self.changes, self.config.timeout);
    }

    /// The peers heard within the timeout (not including this node).
    pub fn alive(&self) -> BTreeSet<String> {
        self.shared
            .lock()
            .map(|s| s.alive.clone())
            .unwrap_or_default()
    }

    /// Whether this node hears enough of `expected_others` to act.
    pub fn has_quorum(&self, expected_others: &BTreeSet<String>) -> bool {
        let alive = self.alive();
        let heard = expected_others
            .iter()
            .filter(|n| alive.contains(*n))
            .count();
        quorum(heard, expected_others.len())
    }

    /// Whether the first `timeout` has passed: before it, silence means nothing yet.
    pub fn warmed_up(&self) -> bool {
        self.started.elapsed() >= self.config.timeout
    }

    /// Notified with the alive set whenever it changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<BTreeSet<String>> {
        self.changes.subscribe()
    }
}

fn refresh(
    shared: &Mutex<Shared>,
    changes: &tokio::sync::watch::Sender<BTreeSet<String>>,
    timeout: Duration,
) {
    let changed = match shared.lock() {
        Ok(mut s) => {
            let now_alive = s.membership.alive(Instant::now(), timeout);
            if now_alive != s.alive {
                s.alive = now_alive.clone();
                Some(now_alive)
            } else {
                None
            }
        }
        Err(_) => None,
    };
    if let Some(alive) = changed {
        changes.send_replace(alive);
    }
}

/// The sender of a heartbeat datagram.
fn parse(datagram: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut words = text.split(' ');
    if words.next()? != "SYHB1" {
        return None;
    }
    let node = words.next()?;
    let _boot: u64 = words.next()?.parse().ok()?;
    let _seq: u64 = words.next()?.parse().ok()?;
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_expires_silent_nodes() {
        let t0 = Instant::now();
        let mut m = Membership::default();
        m.observe("a", t0);
        m.observe("b", t0 + Duration::from_millis(400));
        let timeout = Duration::from_millis(600);
        assert_eq!(m.alive(t0 + Duration::from_millis(500), timeout).len(), 2);
        let later = m.alive(t0 + Duration::from_millis(700), timeout);
        assert_eq!(later, BTreeSet::from(["b".to_string()]));
        m.retain(&BTreeSet::from(["a".to_string()]));
        assert!(m.alive(t0, timeout).contains("a") && !m.alive(t0, timeout).contains("b"));
    }

    #[test]
    fn quorum_is_half_of_the_others() {
        assert!(quorum(0, 0), "a lone node acts");
        assert!(!quorum(0, 1), "two nodes: silence is not enough");
        assert!(quorum(1, 1));
        assert!(quorum(1, 2), "three nodes: one other is a majority");
        assert!(!quorum(0, 2), "three nodes: cut off");
        assert!(!quorum(1, 3) && quorum(2, 3) && quorum(2, 4) && !quorum(1, 4));
    }

    #[test]
    fn datagrams_parse() {
        assert_eq!(parse(b"SYHB1 node-1 42 7"), Some("node-1"));
        assert_eq!(parse(b"SYHB2 node-1 42 7"), None);
        assert_eq!(parse(b"SYHB1 node-1 x 7"), None);
        assert_eq!(parse(&[0xff, 0xfe]), None);
    }

    #[tokio::test]
    async fn peers_see_each_other_and_notice_a_death() {
        let bind = |_: ()| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sockets: Vec<std::net::UdpSocket> = (0..3).map(|_| bind(())).collect();
        let addrs: Vec<SocketAddr> = sockets
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        let names = ["n1", "n2", "n3"];
        let peers: BTreeMap<String, SocketAddr> = names
            .iter()
            .map(|n| n.to_string())
            .zip(addrs.iter().copied())
            .collect();
        let mut beats: Vec<Heartbeat> = sockets
            .into_iter()
            .zip(names)
            .map(|(s, n)| {
                s.set_nonblocking(true).expect("nonblocking");
                let mut c = HeartbeatConfig::new(n);
                c.interval = Duration::from_millis(20);
                c.timeout = Duration::from_millis(200);
                Heartbeat::start(UdpSocket::from_std(s).expect("tokio"), c)
            })
            .collect();
        for b in &beats {
            b.set_peers(peers.clone());
        }
        let mut rx = beats[0].subscribe();
        let both = BTreeSet::from(["n2".to_string(), "n3".to_string()]);
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|a| *a == both))
            .await
            .expect("n1 hears both peers")
            .expect("watch");
        assert!(beats[0].has_quorum(&both));
        // n3 dies: n1 notices within the timeout (plus scheduling slack).
        let died = Instant::now();
        drop(beats.pop());
        let only_n2 = BTreeSet::from(["n2".to_string()]);
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|a| *a == only_n2))
            .await
            .expect("n1 notices n3's death")
            .expect("watch");
        assert!(
            died.elapsed() < Duration::from_secs(2),
            "{:?}",
            died.elapsed()
        );
        assert!(beats[0].has_quorum(&both), "two of three still decide");
    }
}
