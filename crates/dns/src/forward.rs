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
//! The cache itself (`Cache`) is a deterministic core fed an explicit `now`; the tokio driver
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
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tracing::debug;

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
    /// The most upstream exchanges in flight at once (each holds a socket for up to
    /// `timeout`); a question that would start one more fails with
    /// [`ForwardError::Overloaded`]. At least 1 is used.
    pub max_concurrent_exchanges: usize,
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
            // CoreDNS `forward` has `max_concurrent` (unlimited unless set; its docs suggest
            // sizing it as upstream rate x latency). A bound keeps a random-subdomain flood from
            // using up file descriptors: 1000 exchanges of at most 2 s is 500 questions/s of
            // distinct uncached names.
            max_concurrent_exchanges: 1000,
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
    /// Too many upstream exchanges are in flight ([`ForwarderConfig::max_concurrent_exchanges`]).
    /// Retryable; the server answers REFUSED, as CoreDNS does.
    #[error("too many upstream exchanges in flight")]
    Overloaded,
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
    /// Of `cache_hits`, those answered with a denial (NXDOMAIN, or NOERROR without answers) or
    /// a failure; the rest were positive answers (CoreDNS's `type="denial"`/`"success"`).
    pub cache_denial_hits: u64,
    /// Questions not in the cache (answered by an upstream exchange, their own or a shared one).
    pub cache_misses: u64,
    /// Misses that joined an exchange already in flight instead of starting one.
    pub deduplicated: u64,
    /// Misses refused because too many exchanges were in flight.
    pub overloaded: u64,
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
    cache_denial_hits: AtomicU64,
    cache_misses: AtomicU64,
    deduplicated: AtomicU64,
    overloaded: AtomicU64,
    upstream_requests: AtomicU64,
    upstream_errors: AtomicU64,
    mismatched_replies: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Response codes counted one by one per upstream: 0-15 (the header's 4 bits) and BADVERS (16,
/// the one extended code an upstream may send us); everything else lands in one slot.
pub const RCODE_SLOTS: usize = 18;

/// The slot of `rcode` among [`RCODE_SLOTS`]: its value up to 16, the last slot for the rest.
pub fn rcode_slot(rcode: ResponseCode) -> usize {
    usize::from(u16::from(rcode)).min(RCODE_SLOTS - 1)
}

/// The exchanges with one upstream (CoreDNS `forward`'s `requests_total{to}` and
/// `responses_total{to,rcode}`).
#[derive(Default)]
struct UpstreamCounters {
    requests: AtomicU64,
    responses: [AtomicU64; RCODE_SLOTS],
}

/// Counters of one upstream, read with [`Forwarder::upstream_metrics`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamMetrics {
    pub upstream: SocketAddr,
    /// Exchanges started (UDP, and the TCP retry of a truncated reply).
    pub requests: u64,
    /// Matching replies received, by [`rcode_slot`].
    pub responses: [u64; RCODE_SLOTS],
}

/// Whether `reply` is a positive answer (NOERROR with records in the answer section): CoreDNS's
/// cache calls those `success` and everything else `denial`.
fn is_positive(reply: &Message) -> bool {
    reply.response_code == ResponseCode::NoError && !reply.answers.is_empty()
}

/// What an answer is cached under: the question, case-folded, and the two bits that change what
/// an upstream answers. CD (checking disabled) is in the key as in CoreDNS: a validating upstream
/// answers SERVFAIL for a bogus name without it and the data with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
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
            dnssec_ok: query
                .edns
                .as_ref()
                .is_some_and(|edns| edns.flags().dnssec_ok),
            checking_disabled: query.checking_disabled,
        }
    }
}

/// A bounded answer cache with explicit time: entries expire, and when full the entry closest to
/// expiry is evicted (it is worth the least). Lookups count TTLs down by the time spent inside.
#[derive(Debug)]
struct Cache {
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
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// How many answers are held, expired ones not yet evicted included.
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// How many of the answers held are positive (see [`is_positive`]); the rest are denials.
    fn positive_len(&self) -> usize {
        self.entries
            .values()
            .filter(|entry| is_positive(&entry.reply))
            .count()
    }

    /// The answer for `key` at `now` with its TTLs counted down, unless absent or expired (an
    /// expired entry is dropped), and the instant until which that count-down stays the same.
    fn get(&mut self, key: &CacheKey, now: Instant) -> Option<(Message, Instant)> {
        let entry = self.entries.get(key)?;
        if entry.expires_at <= now {
            self.remove(key);
            return None;
        }
        // Whole seconds spent, but what is left rounded up: an answer with 0.4 s left is served
        // with TTL 1, not 0 (clients would not cache it while we do).
        let elapsed = whole_secs(now - entry.stored_at);
        let remaining = whole_secs((entry.expires_at - now).saturating_add(SUBSECOND));
        // `elapsed` grows at the next whole second after storing; `remaining` drops once less
        // than `remaining - 1` seconds are left.
        let same_until = (entry.stored_at + secs(elapsed.saturating_add(1)))
            .min(entry.expires_at - secs(remaining.saturating_sub(1)));
        Some((count_down(&entry.reply, elapsed, remaining), same_until))
    }

    /// Keeps `reply` for `key` for `lifetime` from `now`, replacing an older answer and evicting
    /// the entry closest to expiry when full.
    fn insert(&mut self, key: CacheKey, reply: Message, lifetime: Duration, now: Instant) {
        if self.capacity == 0 || lifetime.is_zero() {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, evicted)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&evicted);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let expires_at = now + lifetime;
        self.by_expiry.insert((expires_at, seq), key.clone());
        self.entries.insert(
            key,
            CacheEntry {
                reply,
                stored_at: now,
                expires_at,
                seq,
            },
        );
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_expiry.remove(&(entry.expires_at, entry.seq));
        }
    }
}

const SUBSECOND: Duration = Duration::from_nanos(999_999_999);

fn whole_secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

fn secs(whole: u32) -> Duration {
    Duration::from_secs(u64::from(whole))
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

/// A forwarded answer, and whether it came from the cache.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The reply, addressed to the asker (see [`Forwarder::resolve`]).
    pub reply: Message,
    /// Set for an answer from the cache; `None` for one an upstream exchange just gave.
    pub from_cache: Option<FromCache>,
}

/// What a cache hit tells about the answer it served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FromCache {
    /// Until when the same query gets the same reply: the next change of its counted-down TTLs,
    /// or its expiry.
    pub same_until: Instant,
    /// Whether it was counted as a positive answer (CoreDNS's `success`), else as a denial.
    pub positive: bool,
}

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
    /// One permit per upstream exchange in flight.
    exchange_permits: Arc<Semaphore>,
    counters: Counters,
    /// One set of counters per entry of `config.upstreams`, same index.
    upstream_counters: Vec<UpstreamCounters>,
}

/// A poisoned lock only means a panic elsewhere mid-operation; the cache and the in-flight map
/// stay usable (at worst an entry is missing), so carry on rather than fail every query.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Lookup {
    Cached(Message),
    Pending(watch::Receiver<SharedResult>),
    Overloaded,
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
        let upstreams = config.upstreams.len();
        let cache = Mutex::new(Cache::new(config.cache_capacity));
        let permits = config
            .max_concurrent_exchanges
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                config,
                cache,
                in_flight: Mutex::new(HashMap::new()),
                preferred_upstream: AtomicUsize::new(0),
                exchange_permits: Arc::new(Semaphore::new(permits)),
                counters: Counters::default(),
                upstream_counters: config_upstreams_counters(upstreams),
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
            cache_denial_hits: read(&c.cache_denial_hits),
            cache_misses: read(&c.cache_misses),
            deduplicated: read(&c.deduplicated),
            overloaded: read(&c.overloaded),
            upstream_requests: read(&c.upstream_requests),
            upstream_errors: read(&c.upstream_errors),
            mismatched_replies: read(&c.mismatched_replies),
        }
    }

    /// How many answers the cache holds.
    pub fn cache_len(&self) -> usize {
        lock(&self.inner.cache).len()
    }

    /// How many answers the cache holds, as (positive, denial). Walks the cache under its lock:
    /// for a metrics scrape, not for the query path.
    pub fn cache_len_by_kind(&self) -> (usize, usize) {
        let cache = lock(&self.inner.cache);
        let positive = cache.positive_len();
        (positive, cache.len() - positive)
    }

    /// The counters of every upstream, in the configured order.
    pub fn upstream_metrics(&self) -> Vec<UpstreamMetrics> {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.inner
            .config
            .upstreams
            .iter()
            .zip(&self.inner.upstream_counters)
            .map(|(upstream, counters)| UpstreamMetrics {
                upstream: *upstream,
                requests: read(&counters.requests),
                responses: std::array::from_fn(|slot| read(&counters.responses[slot])),
            })
            .collect()
    }

    /// The answer to `query`, from the cache or from an upstream, addressed to the asker: it
    /// carries the query's id, question (spelling included) and RD bit, and EDNS(0) only if the
    /// query had it. Upstream SERVFAIL and REFUSED replies are returned as answers (after trying
    /// the other upstreams), not as errors.
    pub async fn resolve(&self, query: &Message) -> Result<Message, ForwardError> {
        self.resolve_with_freshness(query)
            .await
            .map(|resolved| resolved.reply)
    }

    /// Counts a question answered from the server's encoded copy of one of our cached answers
    /// (see [`FromCache`]) as the cache hit it stands for.
    pub fn count_cache_hit(&self, positive: bool) {
        let counters = &self.inner.counters;
        bump(&counters.cache_hits);
        if !positive {
            bump(&counters.cache_denial_hits);
        }
    }

    /// [`Forwarder::resolve`], saying how long the same query would get the same reply.
    pub async fn resolve_with_freshness(&self, query: &Message) -> Result<Resolved, ForwardError> {
        if query.message_type != MessageType::Query || query.op_code != OpCode::Query {
            return Err(ForwardError::Unsupported(
                "only standard queries are forwarded",
            ));
        }
        let [question] = query.queries.as_slice() else {
            return Err(ForwardError::Unsupported(
                "a query must hold exactly one question",
            ));
        };
        let key = CacheKey::of(query, question);
        let counters = &self.inner.counters;
        let cached = lock(&self.inner.cache).get(&key, Instant::now());
        if let Some((reply, same_until)) = cached {
            let positive = is_positive(&reply);
            self.count_cache_hit(positive);
            return Ok(Resolved {
                reply: reply_for_caller(query, question, &key, reply),
                from_cache: Some(FromCache {
                    same_until,
                    positive,
                }),
            });
        }
        bump(&counters.cache_misses);
        let exchanged = |reply| Resolved {
            reply: reply_for_caller(query, question, &key, reply),
            from_cache: None,
        };
        let mut pending = match self.lookup_or_start(key.clone()) {
            Lookup::Cached(reply) => return Ok(exchanged(reply)),
            Lookup::Pending(pending) => pending,
            Lookup::Overloaded => return Err(ForwardError::Overloaded),
        };
        let result = match pending.wait_for(Option::is_some).await {
            Ok(shared) => shared.clone(),
            Err(_closed) => None,
        };
        match result {
            Some(Ok(reply)) => Ok(exchanged(reply)),
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
        if let Some((reply, _)) = lock(&self.inner.cache).get(&key, Instant::now()) {
            return Lookup::Cached(reply);
        }
        let Ok(permit) = Arc::clone(&self.inner.exchange_permits).try_acquire_owned() else {
            bump(&self.inner.counters.overloaded);
            return Lookup::Overloaded;
        };
        let (sender, receiver) = watch::channel(None);
        in_flight.insert(key.clone(), receiver.clone());
        drop(in_flight);

        let guard = InFlightGuard {
            inner: Arc::clone(&self.inner),
            key,
        };
        tokio::spawn(async move {
            let inner = &guard.inner;
            let result = inner.exchange(&guard.key).await.map(|reply| {
                let lifetime = cache_lifetime(&reply, &inner.config);
                let served = count_down(&reply, 0, whole_secs(lifetime));
                lock(&inner.cache).insert(guard.key.clone(), reply, lifetime, Instant::now());
                served
            });
            // The exchange is over: its permit goes back before anyone hears the result.
            drop(permit);
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
            let result = self.exchange_with(index, upstream, key).await;
            if let Ok(reply) = &result {
                bump(&self.upstream_counters[index].responses[rcode_slot(reply.response_code)]);
            }
            match result {
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
        Err(ForwardError::Exhausted {
            attempts,
            upstream,
            last: Arc::new(last),
        })
    }

    /// One exchange over UDP from a fresh socket, retried over TCP when the reply is truncated.
    async fn exchange_with(
        &self,
        index: usize,
        upstream: SocketAddr,
        key: &CacheKey,
    ) -> Result<Message, AttemptError> {
        let id: u16 = rand::random();
        let request = upstream_query(key, id)
            .to_vec()
            .map_err(AttemptError::Encode)?;
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
        bump(&self.upstream_counters[index].requests);
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
            let Some(reply) = Message::from_vec(&buffer[..len])
                .ok()
                .filter(|r| answers(r, id, key))
            else {
                bump(&self.counters.mismatched_replies);
                // Not a warning: a spoofing flood must not flood the logs too; the counter shows it.
                debug!(%upstream, name = %key.name, "dropped a reply that does not match the question");
                continue;
            };
            if reply.truncation {
                debug!(%upstream, name = %key.name, "truncated reply, retrying over TCP");
                return self.exchange_over_tcp(index, upstream, key).await;
            }
            return Ok(reply);
        }
    }

    /// One exchange over TCP, with its own timeout and a new id
    /// ([RFC 7766](https://www.rfc-editor.org/rfc/rfc7766) §8: two-byte length prefix).
    async fn exchange_over_tcp(
        &self,
        index: usize,
        upstream: SocketAddr,
        key: &CacheKey,
    ) -> Result<Message, AttemptError> {
        let id: u16 = rand::random();
        let request = upstream_query(key, id)
            .to_vec()
            .map_err(AttemptError::Encode)?;
        let len = u16::try_from(request.len()).map_err(|_| {
            AttemptError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "query longer than 65535 bytes",
            ))
        })?;
        bump(&self.counters.upstream_requests);
        bump(&self.upstream_counters[index].requests);
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

fn config_upstreams_counters(upstreams: usize) -> Vec<UpstreamCounters> {
    (0..upstreams)
        .map(|_| UpstreamCounters::default())
        .collect()
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
    edns.set_max_payload(EDNS_UDP_PAYLOAD)
        .set_dnssec_ok(key.dnssec_ok);
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
        edns.set_max_payload(EDNS_UDP_PAYLOAD)
            .set_dnssec_ok(key.dnssec_ok);
        edns
    });
    reply
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, SOA};
    use tokio::net::TcpListener;

    use super::*;

    /// What the fake upstream does with every question.
    #[derive(Clone, Copy, Debug)]
    enum Behaviour {
        /// Answers A 192.0.2.1 with this TTL.
        Answer { ttl: u32 },
        /// NXDOMAIN with an SOA in the authority section.
        NxDomain { soa_ttl: u32, minimum: u32 },
        /// Never answers.
        Silent,
        /// Answers SERVFAIL.
        ServFail,
        /// Over UDP an empty reply with TC set; over TCP three A records.
        TruncateUdp,
        /// First a reply with the wrong id, then one with the wrong question, both carrying
        /// 203.0.113.66, then the real answer.
        SpoofFirst,
    }

    const REAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const SPOOFED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);

    /// What the fake upstream saw of one request.
    #[derive(Clone, Debug)]
    struct Seen {
        id: u16,
        source: SocketAddr,
        edns_payload: Option<u16>,
    }

    #[derive(Debug)]
    struct FakeState {
        behaviour: Behaviour,
        delay: Duration,
        udp_requests: AtomicUsize,
        tcp_requests: AtomicUsize,
        seen: Mutex<Vec<Seen>>,
    }

    /// A scripted upstream nameserver on 127.0.0.1, UDP and TCP on the same port.
    struct FakeUpstream {
        addr: SocketAddr,
        state: Arc<FakeState>,
    }

    impl FakeUpstream {
        async fn start(behaviour: Behaviour) -> Self {
            Self::start_with_delay(behaviour, Duration::ZERO).await
        }

        async fn start_with_delay(behaviour: Behaviour, delay: Duration) -> Self {
            let state = Arc::new(FakeState {
                behaviour,
                delay,
                udp_requests: AtomicUsize::new(0),
                tcp_requests: AtomicUsize::new(0),
                seen: Mutex::new(Vec::new()),
            });
            let (udp, tcp) = bind_same_port().await;
            let addr = udp.local_addr().expect("bound");
            tokio::spawn(serve_udp(Arc::new(udp), Arc::clone(&state)));
            tokio::spawn(serve_tcp(tcp, Arc::clone(&state)));
            Self { addr, state }
        }

        fn udp_requests(&self) -> usize {
            self.state.udp_requests.load(Ordering::SeqCst)
        }

        fn tcp_requests(&self) -> usize {
            self.state.tcp_requests.load(Ordering::SeqCst)
        }

        fn seen(&self) -> Vec<Seen> {
            lock(&self.state.seen).clone()
        }
    }

    async fn bind_same_port() -> (UdpSocket, TcpListener) {
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
            let addr = udp.local_addr().expect("bound");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                return (udp, tcp);
            }
        }
        panic!("no port free for both UDP and TCP on 127.0.0.1");
    }

    async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<FakeState>) {
        let mut buffer = vec![0; 65_535];
        loop {
            let Ok((len, source)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let request = Message::from_vec(&buffer[..len]).expect("the forwarder sends valid DNS");
            state.udp_requests.fetch_add(1, Ordering::SeqCst);
            lock(&state.seen).push(Seen {
                id: request.id,
                source,
                edns_payload: request.edns.as_ref().map(Edns::max_payload),
            });
            let (socket, state) = (Arc::clone(&socket), Arc::clone(&state));
            tokio::spawn(async move {
                if !state.delay.is_zero() {
                    tokio::time::sleep(state.delay).await;
                }
                for reply in replies(&request, state.behaviour, false) {
                    let bytes = reply.to_vec().expect("encodable");
                    socket.send_to(&bytes, source).await.expect("send");
                }
            });
        }
    }

    async fn serve_tcp(listener: TcpListener, state: Arc<FakeState>) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut len = [0; 2];
                stream.read_exact(&mut len).await.expect("length");
                let mut bytes = vec![0; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut bytes).await.expect("query");
                let request = Message::from_vec(&bytes).expect("valid DNS");
                state.tcp_requests.fetch_add(1, Ordering::SeqCst);
                for reply in replies(&request, state.behaviour, true) {
                    let bytes = reply.to_vec().expect("encodable");
                    let len = u16::try_from(bytes.len()).expect("small");
                    stream.write_all(&len.to_be_bytes()).await.expect("write");
                    stream.write_all(&bytes).await.expect("write");
                }
            });
        }
    }

    fn reply_to(request: &Message) -> Message {
        let mut reply = Message::response(request.id, OpCode::Query);
        reply.metadata.recursion_desired = request.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_queries(request.queries.iter().cloned());
        if let Some(edns) = &request.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(EDNS_UDP_PAYLOAD)
                .set_dnssec_ok(edns.flags().dnssec_ok);
            reply.set_edns(ours);
        }
        reply
    }

    fn a_record(name: &Name, ttl: u32, ip: Ipv4Addr) -> Record {
        Record::from_rdata(name.clone(), ttl, RData::A(A(ip)))
    }

    fn replies(request: &Message, behaviour: Behaviour, over_tcp: bool) -> Vec<Message> {
        let name = request.queries[0].name().clone();
        let mut reply = reply_to(request);
        match behaviour {
            Behaviour::Answer { ttl } => {
                reply.add_answer(a_record(&name, ttl, REAL));
            }
            Behaviour::NxDomain { soa_ttl, minimum } => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                let zone = Name::from_ascii("example.").expect("valid");
                let soa = SOA::new(zone.clone(), zone.clone(), 1, 7200, 900, 1_209_600, minimum);
                reply.add_authority(Record::from_rdata(zone, soa_ttl, RData::SOA(soa)));
            }
            Behaviour::Silent => return Vec::new(),
            Behaviour::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
            Behaviour::TruncateUdp if !over_tcp => reply.metadata.truncation = true,
            Behaviour::TruncateUdp => {
                for last in 1..=3 {
                    reply.add_answer(a_record(&name, 300, Ipv4Addr::new(192, 0, 2, last)));
                }
            }
            Behaviour::SpoofFirst => {
                let mut wrong_id = reply.clone();
                wrong_id.metadata.id = request.id.wrapping_add(1);
                wrong_id.add_answer(a_record(&name, 300, SPOOFED));
                let evil = Name::from_ascii("evil.example.").expect("valid");
                let mut wrong_question = Message::response(request.id, OpCode::Query);
                wrong_question.add_query(Query::query(evil.clone(), RecordType::A));
                wrong_question.add_answer(a_record(&evil, 300, SPOOFED));
                reply.add_answer(a_record(&name, 300, REAL));
                return vec![wrong_id, wrong_question, reply];
            }
        }
        vec![reply]
    }

    fn forwarder(upstreams: &[&FakeUpstream]) -> Forwarder {
        Forwarder::new(ForwarderConfig {
            upstreams: upstreams.iter().map(|upstream| upstream.addr).collect(),
            ..ForwarderConfig::default()
        })
    }

    fn query(id: u16, name: &str, record_type: RecordType) -> Message {
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(
            Name::from_ascii(name).expect("valid name"),
            record_type,
        ));
        query
    }

    fn with_edns(mut query: Message) -> Message {
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        query.set_edns(edns);
        query
    }

    fn addresses(reply: &Message) -> Vec<Ipv4Addr> {
        reply
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(A(ip)) => Some(*ip),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn answer_is_forwarded_then_served_from_cache_with_ttl_counted_down() {
        let upstream = FakeUpstream::start(Behaviour::Answer { ttl: 300 }).await;
        let forwarder = forwarder(&[&upstream]);

        let first = forwarder
            .resolve(&query(1, "www.example.", RecordType::A))
            .await
            .expect("answer");
        assert_eq!(addresses(&first), [REAL]);
        assert_eq!(first.answers[0].ttl, 300);
        assert_eq!(upstream.udp_requests(), 1);

        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(10)).await;
        let second = forwarder
            .resolve(&query(2, "www.example.", RecordType::A))
            .await
            .expect("answer");
        assert_eq!(addresses(&second), [REAL]);
        assert_eq!(second.answers[0].ttl, 290);
        assert_eq!(
            upstream.udp_requests(),
            1,
            "the second answer comes from the cache"
        );

        let metrics = forwarder.metrics();
        assert_eq!(
            (
                metrics.cache_hits,
                metrics.cache_misses,
                metrics.upstream_requests
            ),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn cached_answer_expires_after_its_ttl() {
        let upstream = FakeUpstream::start(Behaviour::Answer { ttl: 60 }).await;
        let forwarder = forwarder(&[&upstream]);
        forwarder
            .resolve(&query(1, "www.example.", RecordType::A))
            .await
            .expect("answer");

        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(59)).await;
        let cached = forwarder
            .resolve(&query(2, "www.example.", RecordType::A))
            .await
            .expect("answer");
        assert_eq!(cached.answers[0].ttl, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::time::resume();

        let fresh = forwarder
            .resolve(&query(3, "www.example.", RecordType::A))
            .await
            .expect("answer");
        assert_eq!(fresh.answers[0].ttl, 60);
        assert_eq!(
            upstream.udp_requests(),
            2,
            "an expired answer is asked again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_identical_queries_share_one_upstream_exchange() {
        let upstream = FakeUpstream::start_with_delay(
            Behaviour::Answer { ttl: 300 },
            Duration::from_millis(300),
        )
        .await;
        let forwarder = forwarder(&[&upstream]);
        let askers: Vec<_> = (0..100u16)
            .map(|id| {
                let forwarder = forwarder.clone();
                tokio::spawn(async move {
                    forwarder
                        .resolve(&query(id, "www.example.", RecordType::A))
                        .await
                })
            })
            .collect();
        for (id, asker) in (0..100u16).zip(askers) {
            let reply = asker.await.expect("no panic").expect("answer");
            assert_eq!(reply.id, id);
            assert_eq!(addresses(&reply), [REAL]);
        }
        assert_eq!(upstream.udp_requests(), 1);
        assert_eq!(forwarder.metrics().upstream_requests, 1);
    }

    #[tokio::test]
    async fn ids_and_source_ports_vary_across_queries() {
        let upstream = FakeUpstream::start(Behaviour::Answer { ttl: 300 }).await;
        let forwarder = forwarder(&[&upstream]);
        for n in 0..20 {
            let name = format!("host{n}.example.");
            forwarder
                .resolve(&query(7, &name, RecordType::A))
                .await
                .expect("answer");
        }
        let seen = upstream.seen();
        assert_eq!(seen.len(), 20);
        let ids: HashSet<u16> = seen.iter().map(|s| s.id).collect();
        let ports: HashSet<u16> = seen.iter().map(|s| s.source.port()).collect();
        // 20 draws from 2^16 ids and from the ephemeral range: collisions are rare, not
        // impossible, hence bounds rather than exact counts.
        assert!(ids.len() >= 15, "ids barely vary: {ids:?}");
        assert!(ports.len() >= 10, "source ports barely vary: {ports:?}");
        assert!(seen
            .iter()
            .all(|s| s.edns_payload == Some(EDNS_UDP_PAYLOAD)));
    }

    #[tokio::test]
    async fn spoofed_replies_are_ignored_until_the_real_one() {
        let upstream = FakeUpstream::start(Behaviour::SpoofFirst).await;
        let forwarder = forwarder(&[&upstream]);
        let reply = forwarder
            .resolve(&query(1, "www.example.", RecordType::A))
            .await
            .expect("answer");
        assert_eq!(addresses(&reply), [REAL]);
        assert_eq!(forwarder.metrics().mismatched_replies, 2);
        assert_eq!(upstream.udp_requests(), 1);
    }

    #[tokio::test]
    async fn truncated_reply_is_retried_over_tcp_for_the_full_answer() {
        let upstream = FakeUpstream::start(Behaviour::TruncateUdp).await;
        let forwarder = forwarder(&[&upstream]);
        let reply = forwarder
            .resolve(&query(1, "big.example.", RecordType::A))
            .await
            .expect("answer");
        assert!(!reply.truncation);
        assert_eq!(addresses(&reply).len(), 3);
        assert_eq!((upstream.udp_requests(), upstream.tcp_requests()), (1, 1));
        assert_eq!(forwarder.metrics().upstream_requests, 2);
    }

    #[tokio::test]
    async fn dead_first_upstream_times_out_and_the_second_answers_from_then_on() {
        let dead = FakeUpstream::start(Behaviour::Silent).await;
        let alive = FakeUpstream::start(Behaviour::Answer { ttl: 300 }).await;
        let forwarder = Forwarder::new(ForwarderConfig {
            upstreams: vec![dead.addr, alive.addr],
            timeout: Duration::from_millis(200),
            ..ForwarderConfig::default()
        });
        let started = Instant::now();
        let reply = forwarder
            .resolve(&query(1, "a.example.", RecordType::A))
            .await
            .expect("answer");
        assert_eq!(addresses(&reply), [REAL]);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "waited for the timeout"
        );
        assert_eq!((dead.udp_requests(), alive.udp_requests()), (1, 1));

        forwarder
            .resolve(&query(2, "b.example.", RecordType::A))
            .await
            .expect("answer");
        assert_eq!(
            (dead.udp_requests(), alive.udp_requests()),
            (1, 2),
            "the live one is asked first"
        );
        assert_eq!(forwarder.metrics().upstream_errors, 1);
    }

    #[tokio::test]
    async fn servfail_moves_on_to_the_next_upstream() {
        let failing = FakeUpstream::start(Behaviour::ServFail).await;
        let alive = FakeUpstream::start(Behaviour::Answer { ttl: 300 }).await;
        let forwarder = forwarder(&[&failing, &alive]);
        let reply = forwarder
            .resolve(&query(1, "a.example.", RecordType::A))
            .await
            .expect("answer");
        assert_eq!(reply.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&reply), [REAL]);
        assert_eq!((failing.udp_requests(), alive.udp_requests()), (1, 1));
    }

    #[tokio::test]
    async fn servfail_from_every_upstream_is_returned_and_cached_only_briefly() {
        let failing = FakeUpstream::start(Behaviour::ServFail).await;
        let forwarder = forwarder(&[&failing]);
        let reply = forwarder
            .resolve(&query(1, "a.example.", RecordType::A))
            .await
            .expect("a SERVFAIL reply, not an error");
        assert_eq!(reply.response_code, ResponseCode::ServFail);
        assert_eq!(
            failing.udp_requests(),
            3,
            "one attempt per configured attempt"
        );

        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(4)).await;
        let cached = forwarder
            .resolve(&query(2, "a.example.", RecordType::A))
            .await
            .expect("reply");
        assert_eq!(cached.response_code, ResponseCode::ServFail);
        assert_eq!(failing.udp_requests(), 3);
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::time::resume();
        forwarder
            .resolve(&query(3, "a.example.", RecordType::A))
            .await
            .expect("reply");
        assert_eq!(failing.udp_requests(), 6, "asked again after 5 s");
    }

    #[tokio::test]
    async fn an_asker_giving_up_does_not_cancel_the_shared_exchange() {
        let upstream = FakeUpstream::start_with_delay(
            Behaviour::Answer { ttl: 300 },
            Duration::from_millis(200),
        )
        .await;
        let forwarder = forwarder(&[&upstream]);
        let impatient = {
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                forwarder
                    .resolve(&query(1, "www.example.", RecordType::A))
                    .await
            })
        };
        while forwarder.metrics().cache_misses == 0 {
            tokio::task::yield_now().await;
        }
        let asked = query(2, "www.example.", RecordType::A);
        let patient = forwarder.resolve(&asked);
        impatient.abort();
        let reply = patient.await.expect("answer");
        assert_eq!(
            forwarder.metrics().deduplicated,
            1,
            "joined the first exchange"
        );
        assert_eq!(reply.id, 2);
        assert_eq!(addresses(&reply), [REAL]);
        assert_eq!(upstream.udp_requests(), 1);
    }

    #[tokio::test]
    async fn exchanges_beyond_the_bound_are_refused_but_identical_questions_still_join() {
        let upstream = FakeUpstream::start_with_delay(
            Behaviour::Answer { ttl: 300 },
            Duration::from_millis(200),
        )
        .await;
        let forwarder = Forwarder::new(ForwarderConfig {
            upstreams: vec![upstream.addr],
            max_concurrent_exchanges: 1,
            ..ForwarderConfig::default()
        });
        let first = {
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                forwarder
                    .resolve(&query(1, "a.example.", RecordType::A))
                    .await
            })
        };
        while forwarder.metrics().cache_misses == 0 {
            tokio::task::yield_now().await;
        }
        let other = forwarder
            .resolve(&query(2, "b.example.", RecordType::A))
            .await;
        assert!(matches!(other, Err(ForwardError::Overloaded)), "{other:?}");
        let same = forwarder
            .resolve(&query(3, "a.example.", RecordType::A))
            .await;
        assert_eq!(addresses(&same.expect("joined")), [REAL]);
        first.await.expect("no panic").expect("answer");

        forwarder
            .resolve(&query(4, "b.example.", RecordType::A))
            .await
            .expect("the permit came back");
        assert_eq!(forwarder.metrics().overloaded, 1);
        assert_eq!(upstream.udp_requests(), 2);
    }

    #[tokio::test]
    async fn every_upstream_silent_is_an_error_after_all_attempts() {
        let dead = FakeUpstream::start(Behaviour::Silent).await;
        let forwarder = Forwarder::new(ForwarderConfig {
            upstreams: vec![dead.addr],
            timeout: Duration::from_millis(50),
            attempts: 2,
            ..ForwarderConfig::default()
        });
        let error = forwarder
            .resolve(&query(1, "a.example.", RecordType::A))
            .await
            .expect_err("nothing answers");
        assert!(
            matches!(error, ForwardError::Exhausted { attempts: 2, .. }),
            "{error:?}"
        );
        assert_eq!(dead.udp_requests(), 2);
        assert_eq!(forwarder.cache_len(), 0, "errors are not cached");
    }

    #[tokio::test]
    async fn nxdomain_is_cached_for_the_soa_minimum() {
        let upstream = FakeUpstream::start(Behaviour::NxDomain {
            soa_ttl: 3600,
            minimum: 30,
        })
        .await;
        let forwarder = forwarder(&[&upstream]);
        let first = forwarder
            .resolve(&query(1, "nope.example.", RecordType::A))
            .await
            .expect("reply");
        assert_eq!(first.response_code, ResponseCode::NXDomain);
        assert_eq!(
            first.authorities[0].ttl, 30,
            "the SOA carries the negative TTL"
        );

        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(10)).await;
        let cached = forwarder
            .resolve(&query(2, "nope.example.", RecordType::A))
            .await
            .expect("reply");
        assert_eq!(cached.response_code, ResponseCode::NXDomain);
        assert_eq!(cached.authorities[0].ttl, 20);
        assert_eq!(upstream.udp_requests(), 1);

        tokio::time::advance(Duration::from_secs(20)).await;
        tokio::time::resume();
        forwarder
            .resolve(&query(3, "nope.example.", RecordType::A))
            .await
            .expect("reply");
        assert_eq!(
            upstream.udp_requests(),
            2,
            "the denial expired with the SOA minimum"
        );
    }

    #[tokio::test]
    async fn reply_carries_the_callers_id_question_spelling_and_edns_choice() {
        let upstream = FakeUpstream::start(Behaviour::Answer { ttl: 300 }).await;
        let forwarder = forwarder(&[&upstream]);
        let asked = query(0xBEEF, "WwW.ExAmple.", RecordType::A);
        let reply = forwarder.resolve(&asked).await.expect("answer");
        assert_eq!(reply.id, 0xBEEF);
        assert_eq!(reply.message_type, MessageType::Response);
        assert!(reply.queries[0].name().eq_case(asked.queries[0].name()));
        assert!(reply.answers[0].name.eq_case(asked.queries[0].name()));
        assert!(
            reply.edns.is_none(),
            "no EDNS in the reply to a query without it"
        );

        let asked = with_edns(query(0xF00D, "www.example.", RecordType::A));
        let reply = forwarder.resolve(&asked).await.expect("answer");
        assert_eq!(reply.id, 0xF00D);
        assert!(reply.queries[0].name().eq_case(asked.queries[0].name()));
        assert_eq!(
            reply.edns.as_ref().map(Edns::max_payload),
            Some(EDNS_UDP_PAYLOAD)
        );
        assert_eq!(upstream.udp_requests(), 1, "case does not split the cache");
    }

    #[tokio::test]
    async fn dnssec_ok_queries_are_cached_apart() {
        let upstream = FakeUpstream::start(Behaviour::Answer { ttl: 300 }).await;
        let forwarder = forwarder(&[&upstream]);
        forwarder
            .resolve(&query(1, "www.example.", RecordType::A))
            .await
            .expect("answer");
        let mut with_do = with_edns(query(2, "www.example.", RecordType::A));
        with_do.edns.as_mut().expect("set").set_dnssec_ok(true);
        forwarder.resolve(&with_do).await.expect("answer");
        assert_eq!(upstream.udp_requests(), 2);
    }

    #[tokio::test]
    async fn queries_without_exactly_one_question_are_refused() {
        let forwarder = Forwarder::new(ForwarderConfig::default());
        let empty = Message::new(1, MessageType::Query, OpCode::Query);
        assert!(matches!(
            forwarder.resolve(&empty).await,
            Err(ForwardError::Unsupported(_))
        ));
        let no_upstream = forwarder
            .resolve(&query(1, "a.example.", RecordType::A))
            .await;
        assert!(matches!(no_upstream, Err(ForwardError::NoUpstreams)));
    }

    fn key(name: &str) -> CacheKey {
        let asked = query(1, name, RecordType::A);
        CacheKey::of(&asked, &asked.queries[0])
    }

    fn answer_with_ttl(name: &str, ttl: u32) -> Message {
        let asked = query(1, name, RecordType::A);
        let mut reply = reply_to(&asked);
        reply.add_answer(a_record(asked.queries[0].name(), ttl, REAL));
        reply
    }

    #[test]
    fn full_cache_evicts_the_entry_closest_to_expiry() {
        let now = Instant::now();
        let mut cache = Cache::new(2);
        cache.insert(
            key("long."),
            answer_with_ttl("long.", 300),
            Duration::from_secs(300),
            now,
        );
        cache.insert(
            key("short."),
            answer_with_ttl("short.", 10),
            Duration::from_secs(10),
            now,
        );
        cache.insert(
            key("new."),
            answer_with_ttl("new.", 60),
            Duration::from_secs(60),
            now,
        );
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&key("short."), now).is_none());
        assert!(cache.get(&key("long."), now).is_some());
        assert!(cache.get(&key("new."), now).is_some());
    }

    #[test]
    fn a_cached_answer_is_served_the_same_until_the_instant_it_reports() {
        let stored = Instant::now();
        let mut cache = Cache::new(10);
        // 60 s records kept 5.5 s: served with min(60 - elapsed, seconds left rounded up).
        cache.insert(
            key("a."),
            answer_with_ttl("a.", 60),
            Duration::from_millis(5500),
            stored,
        );
        let ttl_at = |cache: &mut Cache, after: Duration| {
            let (reply, same_until) = cache.get(&key("a."), stored + after).expect("cached");
            (reply.answers[0].ttl, same_until - stored)
        };
        // 5.3 s left: TTL 6 until 5 s are left, at 0.5 s.
        let (ttl, same_for) = ttl_at(&mut cache, Duration::from_millis(200));
        assert_eq!((ttl, same_for), (6, Duration::from_millis(500)));
        let just_before = same_for - Duration::from_nanos(1);
        assert_eq!(ttl_at(&mut cache, just_before).0, 6);
        assert_eq!(ttl_at(&mut cache, same_for).0, 5);
        // 4.3 s left at 1.2 s: TTL 5 until 4 s are left (1.5 s); the elapsed second at 2 s is later.
        let (ttl, same_for) = ttl_at(&mut cache, Duration::from_millis(1200));
        assert_eq!((ttl, same_for), (5, Duration::from_millis(1500)));
    }

    #[test]
    fn replacing_an_entry_does_not_leak_its_expiry_slot() {
        let now = Instant::now();
        let mut cache = Cache::new(10);
        for ttl in 1..=5 {
            cache.insert(
                key("a."),
                answer_with_ttl("a.", ttl),
                Duration::from_secs(ttl.into()),
                now,
            );
        }
        assert_eq!((cache.len(), cache.by_expiry.len()), (1, 1));
    }

    #[test]
    fn cache_lifetime_is_bounded_like_coredns() {
        let config = ForwarderConfig::default();
        let lifetime = |reply: &Message| cache_lifetime(reply, &config).as_secs();
        assert_eq!(
            lifetime(&answer_with_ttl("a.", 86_400)),
            3600,
            "success max"
        );
        assert_eq!(lifetime(&answer_with_ttl("a.", 0)), 5, "success min");
        assert_eq!(lifetime(&answer_with_ttl("a.", 120)), 120);

        let mut servfail = reply_to(&query(1, "a.", RecordType::A));
        servfail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(lifetime(&servfail), 5, "failures are kept briefly");

        let nodata_without_soa = reply_to(&query(1, "a.", RecordType::A));
        assert_eq!(
            lifetime(&nodata_without_soa),
            5,
            "denial min without an SOA"
        );
        let asked = query(1, "a.", RecordType::A);
        let denial = &replies(
            &asked,
            Behaviour::NxDomain {
                soa_ttl: 86_400,
                minimum: 86_400,
            },
            false,
        )[0];
        assert_eq!(lifetime(denial), 1800, "denial max");
    }

    #[test]
    fn resolv_conf_nameservers_are_read_in_order_on_port_53() {
        let text = "# generated\nsearch default.svc.cluster.local svc.cluster.local\n\
                    nameserver 10.0.0.10\n; nameserver 10.9.9.9\nnameserver 127.0.0.53 # stub\n\
                    nameserver 2001:db8::1\nnameserver fe80::1%eth0\noptions ndots:5\n";
        let expected: Vec<SocketAddr> = ["10.0.0.10:53", "127.0.0.53:53", "[2001:db8::1]:53"]
            .iter()
            .map(|addr| addr.parse().expect("valid"))
            .collect();
        assert_eq!(upstreams_from_resolv_conf(text), expected);
    }
}
