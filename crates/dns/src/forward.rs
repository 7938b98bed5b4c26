//! Forwarding of names outside the cluster zone (issue 6): a [`Forwarder`] that answers from a
//! bounded, TTL-honouring cache and otherwise asks the node's upstream nameservers over UDP (TCP
//! when the reply is truncated), sharing one upstream exchange between every concurrent asker of
//! the same question.
//!
//! It owns the upstream sockets and the answer cache; it never answers for the cluster zone (the
//! server asks [`crate::zone`] first) and never trusts a reply it did not ask for: each exchange
//! uses a fresh socket on a random source port, a random transaction id, and a reply whose id or
//! question does not match is dropped while waiting goes on until the timeout
//! ([RFC 5452](https://www.rfc-editor.org/rfc/rfc5452) §9.1-9.2). Truncating a reply to the
//! client's UDP size is the server's job: only it knows the transport the question came in on.
//!
//! The cache itself ([`Cache`]) is a deterministic core fed an explicit `now`; the tokio driver
//! around it stays small.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The EDNS(0) UDP payload size advertised upstream and to clients: 1232 bytes avoids IP
/// fragmentation on every common path ([DNS Flag Day 2020](https://www.dnsflagday.net/2020/)).
pub const EDNS_UDP_PAYLOAD: u16 = 1232;

/// The port of a `nameserver` line in resolv.conf, which has no syntax for another one.
const DNS_PORT: u16 = 53;

/// How the forwarder reaches upstream nameservers and how long it keeps their answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// The upstream nameservers, tried in order (see [`ForwarderConfig::attempts`]); usually
    /// [`upstreams_from_resolv_conf`] of the node's `/etc/resolv.conf`.
    pub upstreams: Vec<SocketAddr>,
    /// How long one attempt waits for a matching reply (UDP, and again for the TCP retry of a
    /// truncated reply).
    pub timeout: Duration,
    /// How many exchanges one question may cost in all, each to the next upstream in turn,
    /// starting with the one that last answered.
    pub attempts: usize,
    /// The most answers kept; when full, the entry closest to expiry is evicted first.
    pub cache_capacity: usize,
    /// The longest a positive answer is kept, whatever its records' TTLs say.
    pub success_max_ttl: Duration,
    /// The shortest a positive answer is kept, even when its records' TTLs are smaller.
    pub success_min_ttl: Duration,
    /// The longest an NXDOMAIN or NODATA answer is kept.
    pub denial_max_ttl: Duration,
    /// The shortest an NXDOMAIN or NODATA answer is kept (also the time kept without an SOA).
    pub denial_min_ttl: Duration,
    /// How long a SERVFAIL, REFUSED or other failure reply is kept.
    pub failure_ttl: Duration,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            // CoreDNS `forward`: 2 s read timeout per upstream exchange.
            timeout: Duration::from_secs(2),
            // glibc reads at most 3 `nameserver` lines (MAXNS): one attempt for each.
            attempts: 3,
            // CoreDNS `cache`: 9984 entries per kind; we keep one shared bound.
            cache_capacity: 10_000,
            // CoreDNS `cache`: `success CAPACITY 3600 5`, `denial CAPACITY 1800 5`.
            success_max_ttl: Duration::from_secs(3600),
            success_min_ttl: Duration::from_secs(5),
            denial_max_ttl: Duration::from_secs(1800),
            denial_min_ttl: Duration::from_secs(5),
            // CoreDNS `cache`: `servfail 5s` by default (at most 5 minutes).
            failure_ttl: Duration::from_secs(5),
        }
    }
}

/// The upstream nameservers named by the `nameserver` lines of a resolv.conf, in order, on port
/// 53. Every address is kept, loopback stubs such as systemd-resolved's 127.0.0.53 too: whether
/// one is reachable from where the forwarder runs is the caller's decision. Lines that do not
/// parse (an IPv6 address with a named zone such as `fe80::1%eth0`) are skipped.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            // resolv.conf(5): `#` or `;` start a comment.
            let line = line.split(['#', ';']).next()?;
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

/// Why a question could not be forwarded. The server answers SERVFAIL for every variant but
/// [`ForwardError::Unsupported`] (FORMERR or NOTIMP).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ForwardError {
    /// The query is not a standard query (opcode QUERY) with exactly one question. Not retryable.
    #[error("unsupported query: {0}")]
    Unsupported(&'static str),
    /// No upstream nameserver is configured. Not retryable until the configuration changes.
    #[error("no upstream nameserver is configured")]
    NoUpstreams,
    /// Every attempt failed; the last failure is kept. Retryable: upstreams come back.
    #[error("all {attempts} upstream attempts failed, the last to {upstream}")]
    Exhausted {
        /// How many exchanges were tried.
        attempts: usize,
        /// The upstream of the last attempt.
        upstream: SocketAddr,
        /// Why the last attempt failed.
        #[source]
        last: Arc<AttemptError>,
    },
    /// The shared upstream exchange ended without a result: its task panicked or the runtime is
    /// shutting down. Retryable.
    #[error("the shared upstream exchange was abandoned")]
    Abandoned,
}

/// Why one exchange with one upstream failed; the forwarder moves on to the next upstream.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No reply with the right id and question arrived in time.
    #[error("no matching reply within {0:?}")]
    Timeout(Duration),
    /// The socket failed (over UDP, usually ICMP port unreachable: nothing listens there).
    #[error("I/O with the upstream")]
    Io(#[source] std::io::Error),
    /// The question could not be encoded (a name hickory cannot write).
    #[error("encoding the question")]
    Encode(#[source] ProtoError),
    /// The TCP reply did not decode or did not answer our question; a TCP stream is ours alone,
    /// so there is nothing to wait for.
    #[error("the TCP reply is malformed or answers another question")]
    BadTcpReply,
}

/// Counters for the server to export, read with [`Forwarder::metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwarderMetrics {
    /// Questions answered from the cache.
    pub cache_hits: u64,
    /// Questions not in the cache (answered by an upstream exchange, their own or a shared one).
    pub cache_misses: u64,
    /// Misses that joined an exchange already in flight instead of starting one.
    pub deduplicated: u64,
    /// Exchanges started with an upstream (a TCP retry counts again).
    pub upstream_requests: u64,
    /// Exchanges that failed (timeout, I/O, malformed TCP reply) or got SERVFAIL/REFUSED.
    pub upstream_errors: u64,
    /// Replies dropped because their id or question did not match (spoofing attempts, late
    /// replies) or because they did not decode.
    pub mismatched_replies: u64,
}

#[derive(Default)]
struct Counters {
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    deduplicated: AtomicU64,
    upstream_requests: AtomicU64,
    upstream_errors: AtomicU64,
    mismatched_replies: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What an answer is cached under: the question, case-folded, and the two bits that change what
/// an upstream answers. CD (checking disabled) is in the key as in CoreDNS: a validating upstream
/// answers SERVFAIL for a bogus name without it and the data with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    name: Name,
    record_type: RecordType,
    class: DNSClass,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl CacheKey {
    fn of(query: &Message, question: &Query) -> Self {
        Self {
            name: question.name().to_lowercase(),
            record_type: question.query_type(),
            class: question.query_class(),
            dnssec_ok: query.edns.as_ref().is_some_and(|edns| edns.flags().dnssec_ok),
            checking_disabled: query.checking_disabled,
        }
    }
}

/// A bounded answer cache with explicit time: entries expire, and when full the entry closest to
/// expiry is evicted (it is worth the least). Lookups count TTLs down by the time spent inside.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    entries: HashMap<CacheKey, CacheEntry>,
    /// Every entry by (expiry, insertion number): eviction pops the first.
    by_expiry: BTreeMap<(Instant, u64), CacheKey>,
    next_seq: u64,
}

#[derive(Debug)]
struct CacheEntry {
    reply: Message,
    stored_at: Instant,
    expires_at: Instant,
    seq: u64,
}

impl Cache {
    /// An empty cache holding at most `capacity` answers (0: caches nothing).
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: HashMap::new(), by_expiry: BTreeMap::new(), next_seq: 0 }
    }

    /// How many answers are held, expired ones not yet evicted included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The answer for `key` at `now` with its TTLs counted down, unless absent or expired (an
    /// expired entry is dropped).
    pub fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Message> {
        let entry = self.entries.get(key)?;
        if entry.expires_at <= now {
            self.remove(key);
            return None;
        }
        let elapsed = whole_secs(now - entry.stored_at);
        let remaining = whole_secs(entry.expires_at - now);
        Some(count_down(&entry.reply, elapsed, remaining))
    }

    /// Keeps `reply` for `key` for `lifetime` from `now`, replacing an older answer and evicting
    /// the entry closest to expiry when full.
    pub fn insert(&mut self, key: CacheKey, reply: Message, lifetime: Duration, now: Instant) {
        if self.capacity == 0 || lifetime.is_zero() {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, evicted)) = self.by_expiry.pop_first() else { break };
            self.entries.remove(&evicted);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let expires_at = now + lifetime;
        self.by_expiry.insert((expires_at, seq), key.clone());
        self.entries.insert(key, CacheEntry { reply, stored_at: now, expires_at, seq });
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_expiry.remove(&(entry.expires_at, entry.seq));
        }
    }
}

fn whole_secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// `reply` as served `elapsed` seconds after it was stored with `remaining` seconds left in the
/// cache: every TTL lowered by the time spent and never above what is left, so a client never
/// keeps an answer longer than we would
/// ([RFC 1035](https://www.rfc-editor.org/rfc/rfc1035) §7.4, [RFC 2308](https://www.rfc-editor.org/rfc/rfc2308) §5).
fn count_down(reply: &Message, elapsed: u32, remaining: u32) -> Message {
    let mut served = reply.clone();
    for record in served
        .answers
        .iter_mut()
        .chain(served.authorities.iter_mut())
        .chain(served.additionals.iter_mut())
    {
        record.ttl = record.ttl.saturating_sub(elapsed).min(remaining);
    }
    served
}

/// How long `reply` may be cached, after CoreDNS's `cache` plugin: a positive answer for its
/// smallest TTL, a denial for its SOA's negative TTL (the smaller of the SOA record's TTL and its
/// MINIMUM field, [RFC 2308](https://www.rfc-editor.org/rfc/rfc2308) §5), each within its bounds;
/// a failure briefly.
pub fn cache_lifetime(reply: &Message, config: &ForwarderConfig) -> Duration {
    let bounded = |secs: u32, min: Duration, max: Duration| {
        Duration::from_secs(u64::from(secs)).max(min).min(max)
    };
    let is_answer = !reply.answers.is_empty();
    match reply.response_code {
        ResponseCode::NoError if is_answer => {
            let smallest = reply
                .answers
                .iter()
                .chain(&reply.authorities)
                .chain(&reply.additionals)
                .map(|record| record.ttl)
                .min()
                .unwrap_or(0);
            bounded(smallest, config.success_min_ttl, config.success_max_ttl)
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let negative = reply
                .authorities
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SOA(soa) => Some(record.ttl.min(soa.minimum)),
                    _ => None,
                })
                .min()
                .unwrap_or(0);
            bounded(negative, config.denial_min_ttl, config.denial_max_ttl)
        }
        _ => config.failure_ttl,
    }
}

type SharedResult = Option<Result<Message, ForwardError>>;

/// Forwards questions outside the cluster zone to upstream nameservers, through a cache. Cheap to
/// clone: clones share the cache, the exchanges in flight and the counters.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    config: ForwarderConfig,
    cache: Mutex<Cache>,
    /// One receiver per question being asked upstream; askers of the same key clone it.
    in_flight: Mutex<HashMap<CacheKey, watch::Receiver<SharedResult>>>,
    /// Index into `config.upstreams` of the upstream that last answered: asked first.
    preferred_upstream: AtomicUsize,
    counters: Counters,
}

/// A poisoned lock only means a panic elsewhere mid-operation; the cache and the in-flight map
/// stay usable (at worst an entry is missing), so carry on rather than fail every query.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Lookup {
    Cached(Message),
    Pending(watch::Receiver<SharedResult>),
}

/// Removes the in-flight entry when the exchange task ends, however it ends (also on panic or
/// runtime shutdown), so a later asker starts a fresh exchange rather than wait on a dead one.
struct InFlightGuard {
    inner: Arc<Inner>,
    key: CacheKey,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.inner.in_flight).remove(&self.key);
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("config", &self.inner.config)
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder with an empty cache.
    pub fn new(config: ForwarderConfig) -> Self {
        let cache = Mutex::new(Cache::new(config.cache_capacity));
        Self {
            inner: Arc::new(Inner {
                config,
                cache,
                in_flight: Mutex::new(HashMap::new()),
                preferred_upstream: AtomicUsize::new(0),
                counters: Counters::default(),
            }),
        }
    }

    /// The configuration this forwarder was built with.
    pub fn config(&self) -> &ForwarderConfig {
        &self.inner.config
    }

    /// The counters so far.
    pub fn metrics(&self) -> ForwarderMetrics {
        let c = &self.inner.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ForwarderMetrics {
            cache_hits: read(&c.cache_hits),
            cache_misses: read(&c.cache_misses),
            deduplicated: read(&c.deduplicated),
            upstream_requests: read(&c.upstream_requests),
            upstream_errors: read(&c.upstream_errors),
            mismatched_replies: read(&c.mismatched_replies),
        }
    }

    /// How many answers the cache holds.
    pub fn cache_len(&self) -> usize {
        lock(&self.inner.cache).len()
    }

    /// The answer to `query`, from the cache or from an upstream, addressed to the asker: it
    /// carries the query's id, question (spelling included) and RD bit, and EDNS(0) only if the
    /// query had it. Upstream SERVFAIL and REFUSED replies are returned as answers (after trying
    /// the other upstreams), not as errors.
    pub async fn resolve(&self, query: &Message) -> Result<Message, ForwardError> {
        if query.message_type != MessageType::Query || query.op_code != OpCode::Query {
            return Err(ForwardError::Unsupported("only standard queries are forwarded"));
        }
        let [question] = query.queries.as_slice() else {
            return Err(ForwardError::Unsupported("a query must hold exactly one question"));
        };
        let key = CacheKey::of(query, question);
        let counters = &self.inner.counters;
        if let Some(reply) = lock(&self.inner.cache).get(&key, Instant::now()) {
            bump(&counters.cache_hits);
            return Ok(reply_for_caller(query, question, &key, reply));
        }
        bump(&counters.cache_misses);
        let mut pending = match self.lookup_or_start(key.clone()) {
            Lookup::Cached(reply) => return Ok(reply_for_caller(query, question, &key, reply)),
            Lookup::Pending(pending) => pending,
        };
        let result = match pending.wait_for(Option::is_some).await {
            Ok(shared) => shared.clone(),
            Err(_closed) => None,
        };
        match result {
            Some(Ok(reply)) => Ok(reply_for_caller(query, question, &key, reply)),
            Some(Err(error)) => Err(error),
            None => Err(ForwardError::Abandoned),
        }
    }

    /// Joins the exchange in flight for `key`, or starts one. The exchange runs in its own task
    /// so that a caller giving up (its client went away) does not cancel it for the others.
    fn lookup_or_start(&self, key: CacheKey) -> Lookup {
        let mut in_flight = lock(&self.inner.in_flight);
        if let Some(pending) = in_flight.get(&key) {
            bump(&self.inner.counters.deduplicated);
            return Lookup::Pending(pending.clone());
        }
        // An exchange may have finished between our cache miss and taking this lock; the task
        // fills the cache before it leaves `in_flight`, so looking again closes that gap.
        if let Some(reply) = lock(&self.inner.cache).get(&key, Instant::now()) {
            return Lookup::Cached(reply);
        }
        let (sender, receiver) = watch::channel(None);
        in_flight.insert(key.clone(), receiver.clone());
        drop(in_flight);

        let guard = InFlightGuard { inner: Arc::clone(&self.inner), key };
        tokio::spawn(async move {
            let inner = &guard.inner;
            let result = inner.exchange(&guard.key).await.map(|reply| {
                let lifetime = cache_lifetime(&reply, &inner.config);
                let served = count_down(&reply, 0, whole_secs(lifetime));
                lock(&inner.cache).insert(guard.key.clone(), reply, lifetime, Instant::now());
                served
            });
            // Fails only when every asker has gone away; the cache still has the answer.
            let _ = sender.send(Some(result));
            drop(guard);
        });
        Lookup::Pending(receiver)
    }
}

impl Inner {
    /// Asks the upstreams in turn, starting with the one that last answered, until one answers
    /// with something other than SERVFAIL/REFUSED or the attempts run out.
    async fn exchange(&self, key: &CacheKey) -> Result<Message, ForwardError> {
        let upstreams = &self.config.upstreams;
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let attempts = self.config.attempts.max(1);
        let first = self.preferred_upstream.load(Ordering::Relaxed) % upstreams.len();
        let mut failure_reply = None;
        let mut last_error = None;
        for attempt in 0..attempts {
            let index = (first + attempt) % upstreams.len();
            let upstream = upstreams[index];
            match self.exchange_with(upstream, key).await {
                Ok(reply)
                    if matches!(
                        reply.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    // glibc's stub resolver also moves on: another upstream may do better.
                    bump(&self.counters.upstream_errors);
                    debug!(%upstream, name = %key.name, rcode = ?reply.response_code, "upstream failed to answer");
                    failure_reply = Some(reply);
                }
                Ok(reply) => {
                    self.preferred_upstream.store(index, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(error) => {
                    bump(&self.counters.upstream_errors);
                    debug!(%upstream, name = %key.name, %error, "upstream attempt failed");
                    last_error = Some((upstream, error));
                }
            }
        }
        if let Some(reply) = failure_reply {
            return Ok(reply);
        }
        let (upstream, last) = last_error.expect("at least one attempt ran and failed");
        Err(ForwardError::Exhausted { attempts, upstream, last: Arc::new(last) })
    }

    /// One exchange over UDP from a fresh socket, retried over TCP when the reply is truncated.
    async fn exchange_with(
        &self,
        upstream: SocketAddr,
        key: &CacheKey,
    ) -> Result<Message, AttemptError> {
        let id: u16 = rand::random();
        let request = upstream_query(key, id).to_vec().map_err(AttemptError::Encode)?;
        // A fresh socket per exchange: the kernel picks a random ephemeral source port, which
        // with the random id makes a blind spoof guess 2^32 hard (RFC 5452 §9.2). Connecting it
        // makes the kernel drop datagrams from any other address.
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await.map_err(AttemptError::Io)?;
        socket.connect(upstream).await.map_err(AttemptError::Io)?;
        bump(&self.counters.upstream_requests);
        socket.send(&request).await.map_err(AttemptError::Io)?;

        let deadline = Instant::now() + self.config.timeout;
        // Upstreams should keep to the 1232 bytes we advertise, but a larger datagram must not
        // be cut short into a reply that fails to decode.
        let mut buffer = vec![0; usize::from(u16::MAX)];
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await;
            let len = match received {
                Err(_elapsed) => return Err(AttemptError::Timeout(self.config.timeout)),
                Ok(Err(error)) => return Err(AttemptError::Io(error)),
                Ok(Ok(len)) => len,
            };
            let Some(reply) = Message::from_vec(&buffer[..len]).ok().filter(|r| answers(r, id, key))
            else {
                bump(&self.counters.mismatched_replies);
                warn!(%upstream, name = %key.name, "dropped a reply that does not match the question");
                continue;
            };
            if reply.truncation {
                debug!(%upstream, name = %key.name, "truncated reply, retrying over TCP");
                return self.exchange_over_tcp(upstream, key).await;
            }
            return Ok(reply);
        }
    }

    /// One exchange over TCP, with its own timeout and a new id
    /// ([RFC 7766](https://www.rfc-editor.org/rfc/rfc7766) §8: two-byte length prefix).
    async fn exchange_over_tcp(
        &self,
        upstream: SocketAddr,
        key: &CacheKey,
    ) -> Result<Message, AttemptError> {
        let id: u16 = rand::random();
        let request = upstream_query(key, id).to_vec().map_err(AttemptError::Encode)?;
        let len = u16::try_from(request.len()).map_err(|_| {
            AttemptError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "query longer than 65535 bytes",
            ))
        })?;
        bump(&self.counters.upstream_requests);
        let exchange = async {
            let mut stream = TcpStream::connect(upstream).await?;
            let mut framed = Vec::with_capacity(request.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&request);
            stream.write_all(&framed).await?;
            let mut reply_len = [0; 2];
            stream.read_exact(&mut reply_len).await?;
            let mut reply = vec![0; usize::from(u16::from_be_bytes(reply_len))];
            stream.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        let bytes = match tokio::time::timeout(self.config.timeout, exchange).await {
            Err(_elapsed) => return Err(AttemptError::Timeout(self.config.timeout)),
            Ok(Err(error)) => return Err(AttemptError::Io(error)),
            Ok(Ok(bytes)) => bytes,
        };
        match Message::from_vec(&bytes) {
            Ok(reply) if answers(&reply, id, key) => Ok(reply),
            _ => {
                bump(&self.counters.mismatched_replies);
                Err(AttemptError::BadTcpReply)
            }
        }
    }
}

/// The question sent upstream for `key`: recursion desired, EDNS(0) advertising
/// [`EDNS_UDP_PAYLOAD`], with the asker's DO and CD bits. The asker's other EDNS options (cookies,
/// client subnet) are per hop and stay behind.
fn upstream_query(key: &CacheKey, id: u16) -> Message {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.metadata.checking_disabled = key.checking_disabled;
    let mut question = Query::query(key.name.clone(), key.record_type);
    question.set_query_class(key.class);
    query.add_query(question);
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_UDP_PAYLOAD).set_dnssec_ok(key.dnssec_ok);
    query.set_edns(edns);
    query
}

/// Whether `reply` is the answer to our query `id` for `key` (names compare case-insensitively).
fn answers(reply: &Message, id: u16, key: &CacheKey) -> bool {
    reply.id == id
        && reply.message_type == MessageType::Response
        && matches!(reply.queries.as_slice(), [q]
            if q.name() == &key.name && q.query_type() == key.record_type && q.query_class() == key.class)
}

/// `reply` addressed to the asker of `query`: its id, its question as spelled (clients that
/// randomise case, "0x20", compare it) also on records owned by that name, its RD bit, and
/// EDNS(0) only if it used EDNS. We are not the authority, so AA is cleared.
fn reply_for_caller(query: &Message, question: &Query, key: &CacheKey, reply: Message) -> Message {
    let mut reply = reply.maybe_strip_dnssec_records(key.dnssec_ok);
    reply.metadata.id = query.id;
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.op_code = OpCode::Query;
    reply.metadata.recursion_desired = query.recursion_desired;
    reply.metadata.authoritative = false;
    reply.queries = vec![question.clone()];
    let respell = |record: &mut Record| {
        if record.name == *question.name() {
            record.name = question.name().clone();
        }
    };
    reply.answers.iter_mut().for_each(respell);
    reply.authorities.iter_mut().for_each(respell);
    reply.signature = None;
    reply.edns = query.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_PAYLOAD).set_dnssec_ok(key.dnssec_ok);
        edns
    });
    reply
}
