//! The userspace backend (`--proxy-mode userspace`), for machines without nftables: an L4 proxy
//! for TCP and UDP listening on each service frontend (cluster IP, node port, external and
//! load-balancer IPs, each `IP:port/protocol`).
//!
//! - Frontend IPs that are not the node's own are added to the loopback of the node's namespace
//!   (as `/32` or `/128`) so the proxy can listen on them, and removed when no frontend uses them.
//!   (Like kube-proxy's IPVS mode, which binds service IPs to a dummy interface, this asks for
//!   `arp_ignore=1` on the node so that only the announcing node answers ARP for a
//!   load-balancer IP.)
//! - A frontend without endpoints has no listener: the kernel refuses the connection (TCP reset,
//!   ICMP port unreachable for UDP), as the nftables backend's REJECT does.
//! - Each family's frontends reach only that family's endpoints, and a family's frontends exist
//!   only when the service has a ClusterIP of that family, as in the nftables backend's
//!   per-family tables (KEP-563: DNAT cannot change a packet's family, so neither may we).
//! - `loadBalancerSourceRanges`: a LoadBalancer IP's socket carries a BPF filter that drops
//!   packets from other sources before the kernel answers them ([`source_ranges`]), so those
//!   clients time out as under the nftables backend's drop.
//! - Backend choice: round-robin (default), least connections (`lc`), random, or source hash
//!   (`sh`); `sessionAffinity: ClientIP` pins a client IP to its backend until it has been idle
//!   for the timeout. When a connect fails the next backend is tried.
//! - All sockets live on a tokio runtime whose threads are inside the node's namespace
//!   ([`switchyard_netns::NetNs::runtime`]), so a connection costs nothing extra to make there.
//!
//! [`UserspaceProxy::sync`] takes the whole desired set of frontends and changes only what
//! differs: new listeners, removed listeners, and endpoint sets swapped in place (connections in
//! progress keep their backend).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use switchyard_netns::NetNs;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::nftables::Family;

mod source_ranges;

/// How long connecting to one backend may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A UDP flow (client address → backend socket) is forgotten after this much silence.
const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest UDP datagram carried.
const UDP_BUFFER: usize = 65_535;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
    Udp,
}

/// One address the proxy answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: L4,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.protocol {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        };
        write!(f, "{}/{proto}", SocketAddr::new(self.ip, self.port))
    }
}

/// How a backend is chosen for a new connection or UDP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
    Random,
    SourceHash,
}

/// Where a frontend's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSet {
    pub endpoints: Vec<SocketAddr>,
    pub balance: Balance,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity: Option<Duration>,
    /// `loadBalancerSourceRanges` of the frontend's family: only these sources reach it
    /// (everyone when empty).
    pub source_ranges: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    #[error(transparent)]
    Netns(#[from] switchyard_netns::Error),
    #[error("cannot listen on {frontend}: {source}")]
    Listen {
        frontend: Frontend,
        source: std::io::Error,
    },
}

/// Counters of the userspace backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserspaceMetrics {
    pub frontends: usize,
    pub listening: usize,
    pub connections: usize,
    pub connect_failures: usize,
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    connect_failures: AtomicUsize,
}

pub struct UserspaceProxy {
    ns: NetNs,
    runtime: Option<tokio::runtime::Runtime>,
    frontends: BTreeMap<Frontend, Running>,
    /// IPs this proxy added to the namespace's loopback.
    added_ips: BTreeSet<IpAddr>,
    counters: Arc<Counters>,
}

struct Running {
    set: BackendSet,
    picker: Arc<RwLock<Arc<Picker>>>,
    /// `None` while there are no endpoints (connections are refused).
    listener: Option<Listener>,
}

/// A frontend's listening socket and the task serving it.
struct Listener {
    task: tokio::task::JoinHandle<()>,
    /// The socket the task serves, shared so its source filter can be refit when the ranges
    /// change (one descriptor per frontend: 10,000 services must fit the open-files limit).
    socket: Bound,
}

/// A frontend's socket.
enum Bound {
    Tcp(Arc<TcpListener>),
    Udp(Arc<UdpSocket>),
}

impl Listener {
    fn stop(self) {
        self.task.abort();
    }

    fn socket(&self) -> socket2::SockRef<'_> {
        match &self.socket {
            Bound::Tcp(l) => socket2::SockRef::from(&**l),
            Bound::Udp(s) => socket2::SockRef::from(&**s),
        }
    }
}

impl Drop for UserspaceProxy {
    fn drop(&mut self) {
        for r in self.frontends.values_mut() {
            if let Some(l) = r.listener.take() {
                l.stop();
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl UserspaceProxy {
    /// A proxy whose sockets live in `ns`.
    pub fn new(ns: NetNs, worker_threads: usize) -> Result<Self, UserspaceError> {
        let runtime = ns.runtime("sy-userspace", worker_threads)?;
        Ok(UserspaceProxy {
            ns,
            runtime: Some(runtime),
            frontends: BTreeMap::new(),
            added_ips: BTreeSet::new(),
            counters: Arc::default(),
        })
    }

    pub fn metrics(&self) -> UserspaceMetrics {
        UserspaceMetrics {
            frontends: self.frontends.len(),
            listening: self
                .frontends
                .values()
                .filter(|r| r.listener.is_some())
                .count(),
            connections: self.counters.connections.load(Ordering::Relaxed),
            connect_failures: self.counters.connect_failures.load(Ordering::Relaxed),
        }
    }

    /// Make the proxy serve exactly `desired`. Errors for single frontends (a port taken by
    /// another program) are returned together after everything else was applied; the
    /// remaining frontends keep working.
    pub async fn sync(
        &mut self,
        desired: &BTreeMap<Frontend, BackendSet>,
    ) -> Result<(), Vec<UserspaceError>> {
        let mut errors = Vec::new();
        // Removed frontends first, so their ports and IPs are free for new ones.
        let gone: Vec<Frontend> = self
            .frontends
            .keys()
            .filter(|f| !desired.contains_key(f))
            .copied()
            .collect();
        for f in gone {
            if let Some(mut r) = self.frontends.remove(&f) {
                if let Some(l) = r.listener.take() {
                    l.stop();
                }
            }
        }
        if let Err(e) = self.sync_ips(desired).await {
            errors.push(e);
        }
        for (f, set) in desired {
            if let Err(e) = self.sync_frontend(*f, set) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Loopback addresses for frontend IPs the namespace does not have; stale ones removed.
    async fn sync_ips(
        &mut self,
        desired: &BTreeMap<Frontend, BackendSet>,
    ) -> Result<(), UserspaceError> {
        let wanted: BTreeSet<IpAddr> = desired.keys().map(|f| f.ip).collect();
        let present = self.local_ips().await?;
        for ip in self.added_ips.clone() {
            if !wanted.contains(&ip) {
                let cidr = host_cidr(ip);
                // Already gone is fine.
                let _ = self.ns.ip(&["addr", "del", &cidr, "dev", "lo"]).await;
                self.added_ips.remove(&ip);
            }
        }
        for ip in wanted {
            if present.contains(&ip) || ip.is_unspecified() {
                continue;
            }
            let cidr = host_cidr(ip);
            let mut args = vec!["addr", "add", &cidr, "dev", "lo"];
            if ip.is_ipv6() {
                // Usable at once: no duplicate address detection (the kernel skips it on the
                // loopback anyway; `nodad` says so rather than rely on it).
                args.push("nodad");
            }
            self.ns.ip(&args).await?;
            self.added_ips.insert(ip);
        }
        Ok(())
    }

    async fn local_ips(&self) -> Result<BTreeSet<IpAddr>, UserspaceError> {
        let out = self.ns.ip(&["-o", "addr", "show"]).await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet" || *w == "inet6")?;
                words.next()?.split('/').next()?.parse().ok()
            })
            .collect())
    }

    fn sync_frontend(&mut self, f: Frontend, set: &BackendSet) -> Result<(), UserspaceError> {
        let Some(runtime) = self.runtime.as_ref() else {
            return Ok(());
        };
        let handle = runtime.handle().clone();
        let running = self.frontends.entry(f).or_insert_with(|| Running {
            set: BackendSet {
                endpoints: Vec::new(),
                balance: set.balance,
                affinity: None,
                source_ranges: set.source_ranges.clone(),
            },
            picker: Arc::new(RwLock::new(Arc::new(Picker::new(set, None)))),
            listener: None,
        });
        if running.set.source_ranges != set.source_ranges {
            if let Some(l) = &running.listener {
                source_ranges::apply(&l.socket(), &set.source_ranges).map_err(|source| {
                    UserspaceError::Listen {
                        frontend: f,
                        source,
                    }
                })?;
            }
        }
        if running.set != *set {
            let old = running
                .picker
                .read()
                .map(|p| p.clone())
                .unwrap_or_else(|e| e.into_inner().clone());
            let next = Arc::new(Picker::new(set, Some(&old)));
            match running.picker.write() {
                Ok(mut p) => *p = next,
                Err(e) => *e.into_inner() = next,
            }
            running.set = set.clone();
        }
        let want_listener = !set.endpoints.is_empty();
        match (&running.listener, want_listener) {
            (Some(_), false) => {
                if let Some(l) = running.listener.take() {
                    l.stop();
                }
            }
            (None, true) => {
                let addr = SocketAddr::new(f.ip, f.port);
                let picker = running.picker.clone();
                let counters = self.counters.clone();
                // Bind on a thread of the namespace's runtime (so the socket is the
                // namespace's), synchronously, so a taken port is reported now.
                let listen_error = |source| UserspaceError::Listen {
                    frontend: f,
                    source,
                };
                let socket = bind(&handle, addr, f.protocol, set.source_ranges.clone())
                    .map_err(listen_error)?;
                // Registered with the namespace runtime's reactor, which serves it.
                let _runtime = handle.enter();
                let (task, socket) = match f.protocol {
                    L4::Tcp => {
                        let listener =
                            Arc::new(TcpListener::from_std(socket.into()).map_err(listen_error)?);
                        let serve = serve_tcp(listener.clone(), picker, counters);
                        (handle.spawn(serve), Bound::Tcp(listener))
                    }
                    L4::Udp => {
                        let udp =
                            Arc::new(UdpSocket::from_std(socket.into()).map_err(listen_error)?);
                        let serve = serve_udp(udp.clone(), picker, counters);
                        (handle.spawn(serve), Bound::Udp(udp))
                    }
                };
                running.listener = Some(Listener { task, socket });
            }
            _ => {}
        }
        Ok(())
    }
}

/// The userspace frontends of a snapshot: every cluster IP, external IP, load-balancer IP and
/// node address (for the NodePort) of each TCP or UDP service port, with the endpoints of the
/// frontend's family its traffic policy allows on `node` (SCTP is left to the nftables
/// backend). As in the nftables backend, a family's frontends exist only for a service with a
/// ClusterIP of that family, and loopback addresses never get a NodePort (CVE-2020-8558).
pub fn frontends(
    snapshot: &crate::model::Snapshot,
    node: &crate::nftables::NodeConfig,
    balance: Balance,
) -> BTreeMap<Frontend, BackendSet> {
    use crate::model::Protocol;
    let mut out = BTreeMap::new();
    for port in snapshot.values() {
        let info = &port.info;
        let protocol = match info.protocol {
            Protocol::Tcp => L4::Tcp,
            Protocol::Udp => L4::Udp,
            Protocol::Sctp => continue,
        };
        let usable = port.usable_endpoints(&node.node_name);
        for family in Family::ALL {
            let of_family = |ip: &&IpAddr| Family::of(ip) == family;
            let set = |local: bool, source_ranges: Vec<IpNet>| BackendSet {
                endpoints: if local { &usable.local } else { &usable.all }
                    .iter()
                    .filter(|e| Family::of(&e.ip) == family)
                    .map(|e| SocketAddr::new(e.ip, e.port))
                    .collect(),
                balance,
                affinity: info
                    .session_affinity_seconds
                    .map(|s| Duration::from_secs(u64::from(s))),
                source_ranges,
            };
            let mut frontend = |ip: &IpAddr, port: u16, set: &BackendSet| {
                out.insert(
                    Frontend {
                        ip: *ip,
                        port,
                        protocol,
                    },
                    set.clone(),
                );
            };
            let cluster_ips: Vec<&IpAddr> = info.cluster_ips.iter().filter(of_family).collect();
            if cluster_ips.is_empty() {
                continue;
            }
            let internal = set(info.internal_policy_local, Vec::new());
            let external = set(info.external_policy_local, Vec::new());
            let ranges: Vec<IpNet> = info
                .load_balancer_source_ranges
                .iter()
                .filter(|n| Family::of_net(n) == family)
                .copied()
                .collect();
            let firewalled = set(info.external_policy_local, ranges);
            for ip in cluster_ips {
                frontend(ip, info.port, &internal);
            }
            for ip in info.external_ips.iter().filter(of_family) {
                frontend(ip, info.port, &external);
            }
            for ip in info.load_balancer_ips.iter().filter(of_family) {
                frontend(ip, info.port, &firewalled);
            }
            if let Some(node_port) = info.node_port {
                let node_ips = node.node_port_ips.iter().filter(of_family);
                for ip in node_ips.filter(|ip| !ip.is_loopback()) {
                    frontend(ip, node_port, &external);
                }
            }
        }
    }
    out
}

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// Runs `f` on one of the runtime's threads (inside the namespace) and waits for it.
fn on_runtime<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    handle.spawn(async move {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| std::io::Error::other("the proxy's runtime did not answer"))?
}

/// Backlog of a TCP frontend's listener.
const LISTEN_BACKLOG: i32 = 1024;

/// A non-blocking socket bound to `addr` (listening, for TCP), its source filter attached
/// before it can receive anything: no packet from outside `ranges` ever reaches it.
fn bind(
    handle: &tokio::runtime::Handle,
    addr: SocketAddr,
    protocol: L4,
    ranges: Vec<IpNet>,
) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    on_runtime(handle, move || {
        let socket = match protocol {
            L4::Tcp => Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?,
            L4::Udp => Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?,
        };
        if !ranges.is_empty() {
            source_ranges::apply(&socket, &ranges)?;
        }
        if protocol == L4::Tcp {
            // As std's `TcpListener::bind`: a restarted proxy rebinds at once.
            socket.set_reuse_address(true)?;
        }
        socket.bind(&addr.into())?;
        if protocol == L4::Tcp {
            socket.listen(LISTEN_BACKLOG)?;
        }
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
}

/// A backend with its count of open connections (for least-connections), kept across endpoint
/// updates for addresses that stay.
#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    active: AtomicUsize,
}

/// The choice of backends for one frontend; replaced as a whole when endpoints change.
struct Picker {
    backends: Vec<Arc<Backend>>,
    balance: Balance,
    affinity: Option<Duration>,
    cursor: AtomicUsize,
    /// Client IP → (backend address, last use).
    sticky: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Picker {
    fn new(set: &BackendSet, old: Option<&Picker>) -> Picker {
        let mut endpoints = set.endpoints.clone();
        endpoints.sort_unstable();
        endpoints.dedup();
        let backends = endpoints
            .into_iter()
            .map(|addr| {
                old.and_then(|o| o.backends.iter().find(|b| b.addr == addr).cloned())
                    .unwrap_or_else(|| {
                        Arc::new(Backend {
                            addr,
                            active: AtomicUsize::new(0),
                        })
                    })
            })
            .collect::<Vec<_>>();
        // Clients stay with their backend if it is still there.
        let sticky = old
            .filter(|_| set.affinity.is_some())
            .map(|o| {
                let map = o.sticky.lock().map(|m| m.clone()).unwrap_or_default();
                map.into_iter()
                    .filter(|(_, (addr, _))| backends.iter().any(|b| b.addr == *addr))
                    .collect()
            })
            .unwrap_or_default();
        Picker {
            backends,
            balance: set.balance,
            affinity: set.affinity,
            cursor: AtomicUsize::new(old.map_or(0, |o| o.cursor.load(Ordering::Relaxed))),
            sticky: Mutex::new(sticky),
        }
    }

    /// Backends to try for `client`, best first; every backend appears once.
    fn order(&self, client: IpAddr) -> Vec<Arc<Backend>> {
        self.order_at(client, Instant::now())
    }

    fn order_at(&self, client: IpAddr, now: Instant) -> Vec<Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return Vec::new();
        }
        if let Some(timeout) = self.affinity {
            if let Ok(mut sticky) = self.sticky.lock() {
                if let Some((addr, last)) = sticky.get(&client).copied() {
                    if now.duration_since(last) <= timeout {
                        if let Some(i) = self.backends.iter().position(|b| b.addr == addr) {
                            sticky.insert(client, (addr, now));
                            return self.rotated(i);
                        }
                    }
                    sticky.remove(&client);
                }
            }
        }
        let first = match self.balance {
            Balance::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            Balance::Random => rand::random_range(0..n),
            Balance::SourceHash => source_hash(client) % n,
            Balance::LeastConnections => {
                // Ties go round-robin so equal backends share the load.
                let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
                (0..n)
                    .map(|k| (start + k) % n)
                    .min_by_key(|&i| self.backends[i].active.load(Ordering::Relaxed))
                    .unwrap_or(start)
            }
        };
        self.rotated(first)
    }

    fn rotated(&self, first: usize) -> Vec<Arc<Backend>> {
        let n = self.backends.len();
        (0..n)
            .map(|k| self.backends[(first + k) % n].clone())
            .collect()
    }

    /// `client` now uses `backend` (for affinity).
    fn chose(&self, client: IpAddr, backend: SocketAddr) {
        if self.affinity.is_some() {
            if let Ok(mut sticky) = self.sticky.lock() {
                sticky.insert(client, (backend, Instant::now()));
            }
        }
    }
}

fn source_hash(ip: IpAddr) -> usize {
    // FNV-1a over the address bytes: stable across restarts and processes.
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 16) as usize
}

fn current(picker: &RwLock<Arc<Picker>>) -> Arc<Picker> {
    picker
        .read()
        .map(|p| p.clone())
        .unwrap_or_else(|e| e.into_inner().clone())
}

async fn serve_tcp(
    listener: Arc<TcpListener>,
    picker: Arc<RwLock<Arc<Picker>>>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let p = current(&picker);
        let counters = counters.clone();
        tokio::spawn(async move {
            counters.connections.fetch_add(1, Ordering::Relaxed);
            for backend in p.order(peer.ip()) {
                let connected =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr)).await;
                let Ok(Ok(upstream)) = connected else {
                    counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                p.chose(peer.ip(), backend.addr);
                backend.active.fetch_add(1, Ordering::Relaxed);
                let _ = relay(client, upstream).await;
                backend.active.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            // No backend answered: reset the client rather than leave it hanging.
            let _ = client.set_zero_linger();
        });
    }
}

/// Move bytes both ways until both sides are done, with `splice(2)` ([`crate::splice`]).
async fn relay(a: TcpStream, b: TcpStream) -> std::io::Result<()> {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    crate::splice::relay(&a, &b).await.map(|_| ())
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    picker: Arc<RwLock<Arc<Picker>>>,
    counters: Arc<Counters>,
) {
    // Client address → the socket connected to its backend (replies flow back through a task).
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let existing = flows.lock().ok().and_then(|f| f.get(&client).cloned());
        let upstream = match existing {
            Some(u) => u,
            None => {
                let p = current(&picker);
                let mut chosen = None;
                for backend in p.order(client.ip()) {
                    let bind: SocketAddr = match backend.addr {
                        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                    };
                    let Ok(u) = UdpSocket::bind(bind).await else {
                        continue;
                    };
                    if u.connect(backend.addr).await.is_err() {
                        counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    p.chose(client.ip(), backend.addr);
                    chosen = Some(Arc::new(u));
                    break;
                }
                let Some(u) = chosen else { continue };
                counters.connections.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = flows.lock() {
                    f.insert(client, u.clone());
                }
                tokio::spawn(udp_replies(
                    socket.clone(),
                    u.clone(),
                    client,
                    flows.clone(),
                ));
                u
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

/// Replies from the backend to `client`, from the frontend's address; the flow ends after
/// [`UDP_IDLE_TIMEOUT`] without replies.
async fn udp_replies(
    frontend: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
) {
    let mut buf = vec![0u8; UDP_BUFFER];
    // A refused datagram (ICMP) or silence ends the flow; the next datagram picks again.
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE_TIMEOUT, upstream.recv(&mut buf)).await {
        let _ = frontend.send_to(&buf[..n], client).await;
    }
    if let Ok(mut f) = flows.lock() {
        if f.get(&client).is_some_and(|u| Arc::ptr_eq(u, &upstream)) {
            f.remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontends_follow_ports_and_policies() {
        use crate::model::{Endpoint, Protocol, ServicePort, ServicePortInfo, ServicePortName};
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let mut info = ServicePortInfo::cluster_ip(ip("10.96.0.20"), 80, Protocol::Tcp);
        info.node_port = Some(30080);
        info.load_balancer_ips = vec![ip("192.168.67.120")];
        info.external_policy_local = true;
        info.session_affinity_seconds = Some(10);
        let port = ServicePort {
            info,
            endpoints: vec![
                Endpoint::ready(ip("10.244.1.5"), 8080, Some("node-1")),
                Endpoint::ready(ip("10.244.2.5"), 8080, Some("node-2")),
            ],
        };
        let name = ServicePortName {
            namespace: "default".into(),
            name: "web".into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
        };
        let snapshot = crate::model::Snapshot::from([(name, port)]);
        let node = crate::nftables::NodeConfig {
            node_name: "node-1".into(),
            node_port_ips: vec![ip("192.168.67.11"), ip("127.0.0.1")],
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            scheduler: crate::nftables::Scheduler::Random,
        };
        let f = frontends(&snapshot, &node, Balance::RoundRobin);
        assert_eq!(
            f.len(),
            3,
            "cluster IP, LB IP, one node address (never loopback): {f:?}"
        );
        let cluster = &f[&Frontend {
            ip: ip("10.96.0.20"),
            port: 80,
            protocol: L4::Tcp,
        }];
        assert_eq!(cluster.endpoints.len(), 2);
        assert_eq!(cluster.affinity, Some(Duration::from_secs(10)));
        let nodeport = &f[&Frontend {
            ip: ip("192.168.67.11"),
            port: 30080,
            protocol: L4::Tcp,
        }];
        assert_eq!(
            nodeport.endpoints,
            vec!["10.244.1.5:8080".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn frontends_keep_families_apart_and_filter_only_load_balancer_ips() {
        use crate::model::{Endpoint, Protocol, ServicePort, ServicePortInfo, ServicePortName};
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let name = |name: &str| ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
        };
        let mut dual = ServicePortInfo::cluster_ip(ip("10.96.0.20"), 80, Protocol::Tcp);
        dual.cluster_ips.push(ip("fd00:96::20"));
        dual.node_port = Some(30080);
        dual.load_balancer_ips = vec![ip("192.0.2.9"), ip("2001:db8::9")];
        dual.load_balancer_source_ranges = vec![
            "203.0.113.0/24".parse().expect("net"),
            "2001:db8:113::/64".parse().expect("net"),
        ];
        // Single-stack IPv4: its IPv6 external IP and the node's IPv6 address serve nothing.
        let mut v4 = ServicePortInfo::cluster_ip(ip("10.96.0.21"), 80, Protocol::Tcp);
        v4.node_port = Some(30081);
        v4.external_ips = vec![ip("2001:db8::77")];
        let endpoints = vec![
            Endpoint::ready(ip("10.244.1.5"), 8080, Some("node-1")),
            Endpoint::ready(ip("fd00:10:244:1::5"), 8080, Some("node-1")),
        ];
        let snapshot = crate::model::Snapshot::from([
            (
                name("dual"),
                ServicePort {
                    info: dual,
                    endpoints: endpoints.clone(),
                },
            ),
            (
                name("v4"),
                ServicePort {
                    info: v4,
                    endpoints,
                },
            ),
        ]);
        let node = crate::nftables::NodeConfig {
            node_name: "node-1".into(),
            node_port_ips: vec![ip("192.168.67.11"), ip("fd00:67::11"), ip("::1")],
            ..Default::default()
        };
        let f = frontends(&snapshot, &node, Balance::RoundRobin);
        let at = |addr: &str, port: u16| {
            f.get(&Frontend {
                ip: ip(addr),
                port,
                protocol: L4::Tcp,
            })
        };
        let addrs = |set: &BackendSet| set.endpoints.clone();
        let v4_eps: Vec<SocketAddr> = vec!["10.244.1.5:8080".parse().expect("addr")];
        let v6_eps: Vec<SocketAddr> = vec!["[fd00:10:244:1::5]:8080".parse().expect("addr")];
        for (addr, port) in [
            ("10.96.0.20", 80),
            ("192.168.67.11", 30080),
            ("192.0.2.9", 80),
        ] {
            assert_eq!(addrs(at(addr, port).expect(addr)), v4_eps, "{addr}");
        }
        for (addr, port) in [
            ("fd00:96::20", 80),
            ("fd00:67::11", 30080),
            ("2001:db8::9", 80),
        ] {
            assert_eq!(addrs(at(addr, port).expect(addr)), v6_eps, "{addr}");
        }
        assert_eq!(
            at("192.0.2.9", 80).expect("LB").source_ranges,
            vec!["203.0.113.0/24".parse::<IpNet>().expect("net")]
        );
        assert_eq!(
            at("2001:db8::9", 80).expect("LB").source_ranges,
            vec!["2001:db8:113::/64".parse::<IpNet>().expect("net")]
        );
        assert!(at("10.96.0.20", 80)
            .expect("ClusterIP")
            .source_ranges
            .is_empty());
        assert!(at("fd00:67::11", 30080)
            .expect("NodePort")
            .source_ranges
            .is_empty());
        assert_eq!(at("10.96.0.21", 80).expect("v4").endpoints, v4_eps);
        assert!(at("2001:db8::77", 80).is_none());
        assert!(at("fd00:67::11", 30081).is_none());
        assert!(at("::1", 30080).is_none() && at("::1", 30081).is_none());
    }

    fn set(endpoints: &[&str], balance: Balance, affinity: Option<Duration>) -> BackendSet {
        BackendSet {
            endpoints: endpoints.iter().map(|e| e.parse().expect("addr")).collect(),
            balance,
            affinity,
            source_ranges: Vec::new(),
        }
    }

    fn first(p: &Picker, client: &str) -> SocketAddr {
        p.order(client.parse().expect("ip"))[0].addr
    }

    #[test]
    fn round_robin_visits_every_backend_and_orders_fallbacks() {
        let p = Picker::new(
            &set(
                &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
                Balance::RoundRobin,
                None,
            ),
            None,
        );
        let picks: BTreeSet<SocketAddr> = (0..3).map(|_| first(&p, "192.0.2.1")).collect();
        assert_eq!(picks.len(), 3);
        let order = p.order("192.0.2.1".parse().expect("ip"));
        let distinct: BTreeSet<SocketAddr> = order.iter().map(|b| b.addr).collect();
        assert_eq!(order.len(), 3);
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let p = Picker::new(
            &set(
                &["10.0.0.1:80", "10.0.0.2:80"],
                Balance::LeastConnections,
                None,
            ),
            None,
        );
        p.backends[0].active.store(5, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(first(&p, "192.0.2.1"), "10.0.0.2:80".parse().expect("addr"));
        }
        // Counts survive an endpoint update for backends that stay.
        let q = Picker::new(
            &set(
                &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
                Balance::LeastConnections,
                None,
            ),
            Some(&p),
        );
        assert_eq!(q.backends[0].active.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn source_hash_is_stable_per_client() {
        let p = Picker::new(
            &set(
                &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
                Balance::SourceHash,
                None,
            ),
            None,
        );
        let a = first(&p, "192.0.2.7");
        for _ in 0..10 {
            assert_eq!(first(&p, "192.0.2.7"), a);
        }
        let spread: BTreeSet<SocketAddr> = (1..50)
            .map(|i| first(&p, &format!("192.0.2.{i}")))
            .collect();
        assert!(spread.len() > 1);
    }

    #[test]
    fn affinity_sticks_until_the_backend_goes() {
        let s = set(
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
            Balance::RoundRobin,
            Some(Duration::from_secs(60)),
        );
        let p = Picker::new(&s, None);
        let a = first(&p, "192.0.2.1");
        p.chose("192.0.2.1".parse().expect("ip"), a);
        for _ in 0..5 {
            assert_eq!(first(&p, "192.0.2.1"), a);
        }
        // Another endpoint set that still has it: still sticky.
        let mut more = s.clone();
        more.endpoints.push("10.0.0.4:80".parse().expect("addr"));
        let q = Picker::new(&more, Some(&p));
        assert_eq!(first(&q, "192.0.2.1"), a);
        // Without it: a new choice.
        let mut less = s.clone();
        less.endpoints.retain(|e| *e != a);
        let r = Picker::new(&less, Some(&q));
        assert_ne!(first(&r, "192.0.2.1"), a);
    }

    #[test]
    fn affinity_expires() {
        let s = set(
            &["10.0.0.1:80", "10.0.0.2:80"],
            Balance::RoundRobin,
            Some(Duration::from_secs(10)),
        );
        let p = Picker::new(&s, None);
        let client: IpAddr = "192.0.2.1".parse().expect("ip");
        let a = first(&p, "192.0.2.1");
        p.chose(client, a);
        let soon = Instant::now() + Duration::from_secs(5);
        assert_eq!(p.order_at(client, soon)[0].addr, a);
        // Idle longer than the timeout: round-robin moves on.
        let later = soon + Duration::from_secs(11);
        assert_ne!(p.order_at(client, later)[0].addr, a);
    }
}
