//! The DNS server (issue 6): turns one query's bytes into one reply's bytes ([`Dns::handle`]) and
//! drives that over UDP and TCP sockets it is handed ([`Dns::serve_udp`], [`Dns::serve_tcp`]).
//!
//! Names of the cluster zone are answered from the in-memory [`Zone`] with AA set, but only once
//! the watches have listed everything ([`Dns::mark_synced`]): before that the answer is SERVFAIL,
//! never an NXDOMAIN that a client would cache for a Service that exists. Every other name goes to
//! the [`Forwarder`], and only for clients inside `recursion_networks`: the server must never be
//! an open resolver (RFC 5358). It never serves zone transfers.
//!
//! The hot path is short because most queries repeat: a reply that depends only on the query's
//! bytes, the zone and the clock is kept encoded ((`reply_cache`)) and an identical query
//! (but its id) gets those bytes back without decoding or encoding; a zone update that changes
//! the serial moves the zone generation on, which retires every kept reply at once. Each UDP
//! socket is served by an OS thread of its own, a batch of datagrams per pair of system calls
//! (`udp_batch`), answered inline; only a question that waits for an upstream gets a task of
//! its own.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use ipnet::IpNet;
use nix::sys::socket::{MsgFlags, SockaddrStorage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::forward::{ForwardError, Forwarder, EDNS_UDP_PAYLOAD};
use crate::metrics::{Metrics, Observation, PluginLabel, Proto, ZoneLabel};
use crate::reply_cache::{Freshness, ReplyCache, ReplyFacts};
use crate::udp_batch::UdpBatch;
use crate::zone::Zone;

/// The largest UDP reply to a client without EDNS(0) (RFC 1035 section 4.2.1).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// How long a TCP connection may sit idle between queries; CoreDNS's default TCP read timeout
/// (RFC 7766 section 6.2.3 asks servers to time idle connections out).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// UDP queries waiting for an upstream at once, per socket (the others are answered inline);
/// past this, such datagrams are dropped and clients retry. Bounds the tasks
/// a flood of uncached names can spawn.
const MAX_UDP_IN_FLIGHT: usize = 1024;
/// How soon a UDP thread notices that its [`Dns::serve_udp`] future was dropped, when no
/// datagram arrives meanwhile.
const UDP_STOP_CHECK: Duration = Duration::from_millis(100);
/// TCP connections served at once; past this, new connections are closed at once.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A DNS message over TCP is at most this long (its 2-byte length prefix, RFC 1035 4.2.2).
const TCP_MAX_MESSAGE: usize = u16::MAX as usize;

/// What [`Dns::handle_now`] got to without waiting.
enum Step {
    /// The reply to send is in the caller's buffer.
    Reply,
    /// Send nothing.
    Silent,
    /// The query waits for the forwarder.
    Forward(Box<Pending>),
}

/// A decoded query on its way to a reply.
struct Pending {
    query: Message,
    udp: bool,
    started: Instant,
    /// The zone generation read before answering.
    generation: u64,
    /// The metrics so far.
    seen: Observation,
}

/// How the zone or the server answered a query, or that it is the forwarder's.
enum Answered {
    Here {
        reply: Message,
        zone: ZoneLabel,
        plugin: PluginLabel,
        keep: Keep,
    },
    Forward,
}

/// Whether a reply is kept for identical queries (see (`reply_cache`)).
enum Keep {
    /// Not kept: it depends on more than the query bytes, the zone and the clock (on the
    /// client, on the sync, on an upstream exchange).
    No,
    /// Kept until the zone generation moves on.
    UntilZoneChanges,
    /// A forwarder cache hit: kept until its TTLs would count down, served only to clients that
    /// may recurse.
    Forwarded { same_until: Instant, positive: bool },
}

/// The cluster DNS server: the zone, whether the watches have synced it, the forwarder for other
/// names and who may use it.
#[derive(Debug)]
pub struct Dns {
    zone: RwLock<Zone>,
    /// Moves on whenever an update changes the zone's serial, and at the sync: kept replies of
    /// an older generation are never served.
    generation: AtomicU64,
    /// Encoded replies for identical queries.
    replies: ReplyCache,
    synced: AtomicBool,
    forwarder: Forwarder,
    recursion_networks: Vec<IpNet>,
    tcp_idle_timeout: Duration,
    metrics: Metrics,
}

impl Dns {
    /// A server answering from `zone` (not yet synced) and forwarding other names for clients in
    /// `recursion_networks` through `forwarder`.
    pub fn new(zone: Zone, forwarder: Forwarder, recursion_networks: Vec<IpNet>) -> Self {
        let metrics = Metrics::new("dns://:53", zone.config().domain.to_string());
        Self {
            metrics,
            zone: RwLock::new(zone),
            generation: AtomicU64::new(0),
            replies: ReplyCache::default(),
            synced: AtomicBool::new(false),
            forwarder,
            recursion_networks,
            tcp_idle_timeout: TCP_IDLE_TIMEOUT,
        }
    }

    /// Closes TCP connections idle for `timeout` instead of [`TCP_IDLE_TIMEOUT`].
    pub fn with_tcp_idle_timeout(mut self, timeout: Duration) -> Self {
        self.tcp_idle_timeout = timeout;
        self
    }

    /// Labels the metrics with `server` (CoreDNS's `dns://ADDR`, see
    /// [`crate::metrics::server_label`]) instead of `dns://:53`.
    pub fn with_server_label(mut self, server: impl Into<String>) -> Self {
        self.metrics.set_server_label(server);
        self
    }

    /// The query counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The forwarder for names outside the zone (for its counters).
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Changes the zone under its write lock; queries see all of `change` or none of it. When
    /// the serial changed (the zone changes it with every answer it changes), replies kept from
    /// before are no longer served.
    pub fn update_zone<R>(&self, change: impl FnOnce(&mut Zone) -> R) -> R {
        let mut zone = self.zone.write().unwrap_or_else(PoisonError::into_inner);
        let serial = zone.serial();
        let result = change(&mut zone);
        if zone.serial() != serial {
            // Still under the write lock: no query answers from the new zone under the old
            // generation.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        result
    }

    /// Declares the zone complete: every watched kind has been listed once. From now on names of
    /// the zone are answered from it instead of SERVFAIL.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether [`Dns::mark_synced`] has been called.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The reply to one query from `client`, encoded, or `None` when nothing should be sent (the
    /// bytes are not a DNS query at all, or are a response: answering those invites loops).
    /// Over UDP (`udp`), a reply larger than the client accepts is sent truncated (TC set).
    pub async fn handle(
        &self,
        query_bytes: &[u8],
        client: SocketAddr,
        udp: bool,
    ) -> Option<Vec<u8>> {
        let mut reply = Vec::new();
        match self.handle_now(query_bytes, client, udp, &mut reply) {
            Step::Reply => Some(reply),
            Step::Silent => None,
            Step::Forward(pending) => self.forward(*pending, query_bytes).await,
        }
    }

    /// Everything of [`Dns::handle`] that needs no waiting: the reply kept for an identical
    /// query, or an answer of the zone or the server itself; otherwise the decoded query for the
    /// forwarder. A reply is written to `out`, replacing what it held: a buffer reused from query
    /// to query makes a reply cache hit cost no allocation.
    fn handle_now(
        &self,
        query_bytes: &[u8],
        client: SocketAddr,
        udp: bool,
        out: &mut Vec<u8>,
    ) -> Step {
        let started = Instant::now();
        // Read before answering: a reply may be kept under a generation older than the zone it
        // came from (then it is never served), never under a newer one.
        let generation = self.generation.load(Ordering::Acquire);
        let mut seen = Observation {
            zone: ZoneLabel::Root,
            plugin: PluginLabel::Server,
            proto: if udp { Proto::Udp } else { Proto::Tcp },
            ipv6_client: client.ip().to_canonical().is_ipv6(),
            qtype: None,
            rcode: ResponseCode::FormErr,
            duration: Duration::ZERO,
        };
        let hit = self.replies.get(query_bytes, udp, generation, started, out);
        if let Some(facts) = hit.filter(|facts| !facts.forwarded || self.may_recurse(client)) {
            if facts.forwarded {
                self.forwarder.count_cache_hit(facts.positive);
            }
            seen.zone = facts.zone;
            seen.plugin = facts.plugin;
            seen.qtype = facts.qtype;
            seen.rcode = facts.rcode;
            seen.duration = started.elapsed();
            self.metrics.record(&seen);
            return Step::Reply;
        }
        let query = match Message::from_vec(query_bytes) {
            Ok(query) => query,
            Err(error) => {
                let Ok(header) = Header::read(&mut BinDecoder::new(query_bytes)) else {
                    return Step::Silent;
                };
                if header.metadata.message_type != MessageType::Query {
                    return Step::Silent;
                }
                debug!(%client, %error, "undecodable query");
                let mut reply = Message::error_msg(
                    header.metadata.id,
                    header.metadata.op_code,
                    ResponseCode::FormErr,
                );
                reply.metadata.recursion_desired = header.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                seen.duration = started.elapsed();
                self.metrics.record(&seen);
                return written(reply.to_vec().ok(), out);
            }
        };
        if query.metadata.message_type != MessageType::Query {
            return Step::Silent;
        }
        seen.qtype = query.queries.first().map(Query::query_type);
        let pending = Pending {
            query,
            udp,
            started,
            generation,
            seen,
        };
        match self.answer(&pending.query, client) {
            Answered::Here {
                reply,
                zone,
                plugin,
                keep,
            } => written(
                self.finish(pending, query_bytes, reply, zone, plugin, keep),
                out,
            ),
            Answered::Forward => Step::Forward(Box::new(pending)),
        }
    }

    /// The reply to a query outside the zone, from the forwarder.
    async fn forward(&self, pending: Pending, query_bytes: &[u8]) -> Option<Vec<u8>> {
        let query = &pending.query;
        let failed = |rcode| Message::error_msg(query.metadata.id, query.metadata.op_code, rcode);
        let (reply, keep) = match self.forwarder.resolve_with_freshness(query).await {
            // Only an answer from the forwarder's cache is what the next identical query gets
            // too; an upstream's answer just went into that cache, to be served from there.
            Ok(resolved) => {
                let keep = resolved
                    .from_cache
                    .map_or(Keep::No, |cached| Keep::Forwarded {
                        same_until: cached.same_until,
                        positive: cached.positive,
                    });
                (resolved.reply, keep)
            }
            Err(ForwardError::Overloaded) => (failed(ResponseCode::Refused), Keep::No),
            Err(ForwardError::Unsupported(_)) => (failed(ResponseCode::FormErr), Keep::No),
            Err(error) => {
                let name = query.queries.first().map(|q| q.name().to_string());
                debug!(name = ?name, %error, "forwarding failed");
                (failed(ResponseCode::ServFail), Keep::No)
            }
        };
        self.finish(
            pending,
            query_bytes,
            reply,
            ZoneLabel::Root,
            PluginLabel::Forward,
            keep,
        )
    }

    /// Addresses `reply` to the query, encodes it within the transport's limit, counts it, and
    /// keeps it for identical queries as `keep` says.
    fn finish(
        &self,
        pending: Pending,
        query_bytes: &[u8],
        mut reply: Message,
        zone: ZoneLabel,
        plugin: PluginLabel,
        keep: Keep,
    ) -> Option<Vec<u8>> {
        let Pending {
            query,
            udp,
            started,
            generation,
            mut seen,
        } = pending;
        address_reply(&mut reply, &query);
        seen.zone = zone;
        seen.plugin = plugin;
        seen.rcode = reply.metadata.response_code;
        let bytes = encode(reply, reply_limit(&query, udp));
        seen.duration = started.elapsed();
        self.metrics.record(&seen);
        let (freshness, forwarded, positive) = match keep {
            Keep::No => return bytes,
            Keep::UntilZoneChanges => (Freshness::Zone, false, false),
            Keep::Forwarded {
                same_until,
                positive,
            } => (Freshness::Until(same_until), true, positive),
        };
        if let Some(bytes) = &bytes {
            let facts = ReplyFacts {
                zone,
                plugin,
                qtype: seen.qtype,
                rcode: seen.rcode,
                forwarded,
                positive,
            };
            self.replies
                .insert(query_bytes, udp, generation, bytes, freshness, facts);
        }
        bytes
    }

    /// The rcode and sections of the reply to `query` when the zone or the server itself
    /// answers it, with which zone and plugin (for the metrics) answered and whether the reply
    /// may be kept; [`Answered::Forward`] when the forwarder has to.
    fn answer(&self, query: &Message, client: SocketAddr) -> Answered {
        let op_code = query.metadata.op_code;
        // Refusals that follow from the query's bytes alone are kept like zone answers.
        let refuse = |rcode| Answered::Here {
            reply: Message::error_msg(query.metadata.id, op_code, rcode),
            zone: ZoneLabel::Root,
            plugin: PluginLabel::Server,
            keep: Keep::UntilZoneChanges,
        };
        if op_code != OpCode::Query {
            return refuse(ResponseCode::NotImp);
        }
        // RFC 6891 section 6.1.3: we speak EDNS version 0 only; the reply's OPT says so.
        if query.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            return refuse(ResponseCode::BADVERS);
        }
        let [question] = query.queries.as_slice() else {
            return refuse(ResponseCode::FormErr);
        };
        let (name, qtype) = (question.name(), question.query_type());
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // Zone transfers would hand out every Service of the cluster at once.
            debug!(%client, %name, "zone transfer refused");
            return refuse(ResponseCode::Refused);
        }
        let zone_answer = {
            let zone = self.zone.read().unwrap_or_else(PoisonError::into_inner);
            let synced = self.is_synced();
            // A reverse name is ours only if it has a PTR record here, which an unsynced zone
            // cannot know yet: those wait for the sync too rather than be forwarded.
            if zone.is_in_zone(name) || (!synced && is_reverse_name(name)) {
                Some(synced.then(|| zone.answer(name, qtype)))
            } else {
                None
            }
        };
        match zone_answer {
            // Not yet listed: a client may retry SERVFAIL, but would cache a wrong NXDOMAIN.
            // Not kept: the sync changes it.
            Some(None) => Answered::Here {
                reply: Message::error_msg(query.metadata.id, op_code, ResponseCode::ServFail),
                zone: ZoneLabel::Cluster,
                plugin: PluginLabel::Kubernetes,
                keep: Keep::No,
            },
            Some(Some(answer)) => {
                let mut reply = Message::response(query.metadata.id, op_code);
                reply.metadata.response_code = answer.rcode;
                reply.metadata.authoritative = answer.authoritative;
                reply.answers = answer.answers;
                reply.authorities = answer.authority;
                reply.additionals = answer.additionals;
                Answered::Here {
                    reply,
                    zone: ZoneLabel::Cluster,
                    plugin: PluginLabel::Kubernetes,
                    keep: Keep::UntilZoneChanges,
                }
            }
            None if !self.may_recurse(client) => {
                debug!(%client, %name, "recursion refused to a client outside recursion networks");
                // Not kept: another client asking the same may recurse.
                Answered::Here {
                    reply: Message::error_msg(query.metadata.id, op_code, ResponseCode::Refused),
                    zone: ZoneLabel::Root,
                    plugin: PluginLabel::Server,
                    keep: Keep::No,
                }
            }
            None => Answered::Forward,
        }
    }

    fn may_recurse(&self, client: SocketAddr) -> bool {
        let ip = client.ip().to_canonical();
        self.recursion_networks.iter().any(|net| net.contains(&ip))
    }

    /// Answers datagrams on `socket` until this future is dropped, a batch at a time, on an OS
    /// thread of its own: one blocking system call takes every waiting query (up to
    /// `udp_batch::BATCH`), they are answered inline and the replies sent with one more, as
    /// Knot's UDP workers do; no task wakes per batch. Only a question that waits for an
    /// upstream gets a task of its own, on the runtime this is awaited on. One loop per socket:
    /// the kernel spreads clients over sockets bound together ([`bind_udp`]). Measured with
    /// `benches/dnsperf.rs` on a loaded 2-core machine: about a fifth less CPU per query than one
    /// datagram per `recv_from` in a tokio task, while a tokio task driving the same batches was
    /// no cheaper than that (a readiness wake-up and a failed `recvmmsg` per batch).
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) {
        let socket = match blocking(socket) {
            Ok(socket) => Arc::new(socket),
            Err(error) => {
                warn!(%error, "udp socket cannot be served");
                return;
            }
        };
        let runtime = tokio::runtime::Handle::current();
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let (stopped, ended) = tokio::sync::oneshot::channel::<()>();
        let (dns, stopping) = (Arc::clone(&self), Arc::clone(&stop.0));
        let spawned = std::thread::Builder::new()
            .name("dns-udp".into())
            .spawn(move || {
                // The runtime's clock and its spawner for queries that wait for an upstream.
                let _runtime = runtime.enter();
                dns.serve_udp_blocking(&socket, &stopping);
                drop(stopped);
            });
        if let Err(error) = spawned {
            warn!(%error, "udp thread cannot start");
            return;
        }
        // Ends when the thread does (never but by `stop`); dropping this future stops it.
        let _ = ended.await;
    }

    /// The loop of [`Dns::serve_udp`]'s thread, until `stop` is set.
    fn serve_udp_blocking(self: &Arc<Self>, socket: &Arc<std::net::UdpSocket>, stop: &AtomicBool) {
        let permits = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
        let mut batch = UdpBatch::default();
        let fd = socket.as_raw_fd();
        while !stop.load(Ordering::Relaxed) {
            match batch.receive(fd, MsgFlags::MSG_WAITFORONE) {
                Ok(_) => {}
                // The read timeout: time to look at `stop`.
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Linux reports ICMP errors of earlier sends here; they are not fatal. A
                    // lasting error must not spin the thread.
                    debug!(%error, "udp receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            batch.answer(|query, client, reply| {
                match self.handle_now(query, client, true, reply) {
                    Step::Reply => true,
                    Step::Silent => false,
                    Step::Forward(pending) => {
                        self.forward_udp(socket, &permits, pending, query, client);
                        false
                    }
                }
            });
            while batch.has_unsent() {
                if let Err(error) = batch.send(fd, MsgFlags::empty()) {
                    debug!(%error, "udp send failed");
                }
            }
        }
    }

    /// Answers `query` from the forwarder in a task of its own, sending the reply on `socket`
    /// without blocking (a reply that does not fit the socket's buffer is dropped; the client
    /// retries); drops the query when too many wait already.
    fn forward_udp(
        self: &Arc<Self>,
        socket: &Arc<std::net::UdpSocket>,
        permits: &Arc<Semaphore>,
        pending: Box<Pending>,
        query: &[u8],
        client: SocketAddr,
    ) {
        let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
            debug!(%client, "udp query dropped: too many waiting for an upstream");
            return;
        };
        let query = query.to_vec();
        let (dns, socket) = (Arc::clone(self), Arc::clone(socket));
        tokio::spawn(async move {
            if let Some(reply) = dns.forward(*pending, &query).await {
                let sent = nix::sys::socket::sendto(
                    socket.as_raw_fd(),
                    &reply,
                    &SockaddrStorage::from(client),
                    MsgFlags::MSG_DONTWAIT,
                );
                if let Err(error) = sent {
                    debug!(%client, %error, "udp send failed");
                }
            }
            drop(permit);
        });
    }

    /// Serves connections from `listener`: 2-byte length framed queries, several per connection
    /// (answered in order), closed after the idle timeout ([`TCP_IDLE_TIMEOUT`] by default)
    /// without a query.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let permits = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before accept: wait, retry.
                    warn!(%error, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                debug!(%client, "tcp connection closed: too many connections");
                continue;
            };
            let dns = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(error) = dns.serve_connection(stream, client).await {
                    debug!(%client, %error, "tcp connection ended");
                }
                drop(permit);
            });
        }
    }

    async fn serve_connection(
        &self,
        mut stream: TcpStream,
        client: SocketAddr,
    ) -> std::io::Result<()> {
        loop {
            let mut len = [0; 2];
            match tokio::time::timeout(self.tcp_idle_timeout, stream.read_exact(&mut len)).await {
                Err(_idle) => return Ok(()),
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(())
                }
                Ok(result) => result?,
            };
            let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
            tokio::time::timeout(self.tcp_idle_timeout, stream.read_exact(&mut query))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let Some(reply) = self.handle(&query, client, false).await else {
                return Ok(());
            };
            let len = u16::try_from(reply.len()).expect("encode caps replies at 65535 bytes");
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&reply);
            stream.write_all(&framed).await?;
        }
    }
}

/// Sets the flag when dropped: [`Dns::serve_udp`]'s future tells its thread to end.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `socket` out of the runtime, blocking, with a read timeout of [`UDP_STOP_CHECK`] so that its
/// thread sees a stop without traffic.
fn blocking(socket: UdpSocket) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(UDP_STOP_CHECK))?;
    Ok(socket)
}

/// [`Step::Reply`] with `reply` in `out`, or [`Step::Silent`] when there is none.
fn written(reply: Option<Vec<u8>>, out: &mut Vec<u8>) -> Step {
    match reply {
        Some(reply) => {
            *out = reply;
            Step::Reply
        }
        None => Step::Silent,
    }
}

/// Makes `reply` the response to `query`: its id, opcode, RD bit and question, RA set, and an
/// EDNS(0) OPT only if the query had one (RFC 6891 section 7), advertising the payload we accept,
/// 1232 (the DNS flag day 2020 value), with the query's DO bit.
fn address_reply(reply: &mut Message, query: &Message) {
    reply.metadata.id = query.metadata.id;
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.op_code = query.metadata.op_code;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = query.queries.clone();
    reply.signature = None;
    reply.edns = query.edns.as_ref().map(|theirs| {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_UDP_PAYLOAD)
            .set_dnssec_ok(theirs.flags().dnssec_ok);
        ours
    });
}

/// `count` (at least one) UDP sockets bound to the same `addr` with SO_REUSEPORT, for one
/// [`Dns::serve_udp`] each: the kernel spreads clients over them by a hash of their address, so
/// the receive loops run on several cores without waking each other (as Knot's `udp-workers`
/// do). With port 0 the first socket picks the port and the others join it.
pub fn bind_udp(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    reuse_port_sockets(addr, count)?
        .into_iter()
        .map(UdpSocket::from_std)
        .collect()
}

/// The sockets of [`bind_udp`] before they join a runtime: callable on a thread inside another
/// network namespace (`NetNs::run`).
pub fn reuse_port_sockets(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let socket: std::net::UdpSocket = socket.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Whether `name` is under `in-addr.arpa.` or `ip6.arpa.` (RFC 1035 3.5, RFC 3596 2.5).
fn is_reverse_name(name: &Name) -> bool {
    ["in-addr.arpa.", "ip6.arpa."].iter().any(|apex| {
        Name::from_ascii(apex)
            .expect("reverse apexes are valid names")
            .zone_of(name)
    })
}

/// The largest reply `query`'s sender accepts: over UDP 512 bytes without EDNS(0), else its
/// advertised payload (at least 512, RFC 6891 6.2.3) capped at ours; over TCP what the length
/// prefix can say.
fn reply_limit(query: &Message, udp: bool) -> usize {
    if !udp {
        return TCP_MAX_MESSAGE;
    }
    let payload = match &query.edns {
        None => CLASSIC_UDP_PAYLOAD,
        Some(edns) => edns
            .max_payload()
            .clamp(CLASSIC_UDP_PAYLOAD, EDNS_UDP_PAYLOAD),
    };
    usize::from(payload)
}

/// `reply` encoded in at most `limit` bytes: whole if it fits, else with TC set, the authority
/// and additional sections dropped and as many answers as fit (RFC 2181 section 9).
fn encode(mut reply: Message, limit: usize) -> Option<Vec<u8>> {
    let encode_one = |message: &Message| match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            warn!(%error, "reply could not be encoded");
            None
        }
    };
    let whole = encode_one(&reply)?;
    if whole.len() <= limit {
        return Some(whole);
    }
    reply.metadata.truncation = true;
    reply.authorities.clear();
    reply.additionals.clear();
    let answers = std::mem::take(&mut reply.answers);
    // Binary search for the most answers that fit: a few encodes, not one per record.
    let (mut fits, mut too_many) = (0, answers.len() + 1);
    let mut best = encode_one(&reply)?;
    while fits + 1 < too_many {
        let middle = (fits + too_many) / 2;
        reply.answers = answers[..middle].to_vec();
        let bytes = encode_one(&reply)?;
        if bytes.len() <= limit {
            fits = middle;
            best = bytes;
        } else {
            too_many = middle;
        }
    }
    Some(best)
}
