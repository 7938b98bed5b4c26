//! Encoded replies kept for the query bytes that asked for them (issue 6's throughput): a query
//! whose bytes after the 2-byte id equal an earlier query's, over the same transport, gets that
//! query's reply bytes with its own id written in, without being decoded, answered or encoded
//! again.
//!
//! The key is the whole query but its id, so everything a reply takes from its query is in the
//! key by construction: the question as spelled (a client randomising case, "0x20", just makes
//! another entry), the RD and CD bits, EDNS(0) or not with its payload size, DO bit and options.
//! What a reply depends on outside its query is checked on every hit: the zone generation it
//! was answered at (a map filled at an older generation is never read, and the first store at a
//! newer one empties it), for forwarded names the instant the forwarder's TTL count-down would
//! change the bytes, and, by the server, whether the client may recurse.
//!
//! It never decides an answer and never holds one it could not serve again byte for byte: the
//! server stores only replies that are a function of the query bytes, the zone and the clock
//! (never SERVFAIL before the sync, an upstream exchange's result, or a refusal to one client).
//! It is bounded in entries and bytes; a full cache starts over empty, as a zone update does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::time::Instant;

use crate::metrics::{PluginLabel, ZoneLabel};

/// Queries longer than this are answered but not kept (one question with EDNS(0) options fits).
const MAX_QUERY: usize = 512;
/// Replies longer than this are answered but not kept (a UDP reply is at most 1232 bytes; only
/// large TCP answers are left out).
const MAX_REPLY: usize = 4096;
/// The most entries kept per transport.
const MAX_ENTRIES: usize = 65_536;
/// The most bytes of keys and replies kept in all: 32 MiB, the same order as the zone of 10,000
/// Services itself.
const MAX_BYTES: usize = 32 << 20;

/// What a stored reply was, for the metrics and the checks a hit needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyFacts {
    pub zone: ZoneLabel,
    pub plugin: PluginLabel,
    pub qtype: Option<RecordType>,
    pub rcode: ResponseCode,
    /// Whether the forwarder answered it: served only to clients that may recurse, and counted
    /// as a forwarder cache hit.
    pub forwarded: bool,
    /// Whether it is a positive answer (CoreDNS's `success` cache type, else `denial`).
    pub positive: bool,
}

/// When a stored reply stops being the one the server would give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Until the zone changes.
    Zone,
    /// Until the zone changes or this instant, whichever comes first: a forwarded answer whose
    /// TTLs count down by whole seconds.
    Until(Instant),
}

#[derive(Debug)]
struct Entry {
    reply: Box<[u8]>,
    freshness: Freshness,
    facts: ReplyFacts,
}

#[derive(Debug, Default)]
struct Maps {
    /// The zone generation every entry was answered at.
    generation: u64,
    /// `[udp, tcp]`: query bytes after the id → reply.
    by_transport: [HashMap<Box<[u8]>, Entry>; 2],
    /// Bytes of keys and replies held.
    bytes: usize,
}

/// The cache; see the module documentation.
#[derive(Debug, Default)]
pub struct ReplyCache {
    maps: Mutex<Maps>,
}

/// The key of `query`: its bytes after the id, if it is short enough to keep.
fn key(query: &[u8]) -> Option<&[u8]> {
    query.get(2..).filter(|rest| rest.len() <= MAX_QUERY - 2)
}

fn transport(udp: bool) -> usize {
    usize::from(!udp)
}

impl ReplyCache {
    /// A poisoned lock only means a panic elsewhere mid-operation; at worst an entry is missing.
    fn lock(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reply to `query` (over UDP if `udp`) written to `out` with the query's id, if one was
    /// stored at zone `generation` and is still fresh at `now`.
    pub fn get(
        &self,
        query: &[u8],
        udp: bool,
        generation: u64,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<ReplyFacts> {
        let key = key(query)?;
        let maps = self.lock();
        if maps.generation != generation {
            return None;
        }
        let entry = maps.by_transport[transport(udp)].get(key)?;
        if matches!(entry.freshness, Freshness::Until(until) if now >= until) {
            return None;
        }
        out.clear();
        out.extend_from_slice(&entry.reply);
        // A stored reply is at least a header long, and its id is the query's first two bytes.
        out[..2].copy_from_slice(&query[..2]);
        Some(entry.facts)
    }

    /// Keeps `reply` for `query` (over UDP if `udp`) as answered at zone `generation`. A reply
    /// of an older generation than the one stored last is dropped: the zone has moved on.
    pub fn insert(
        &self,
        query: &[u8],
        udp: bool,
        generation: u64,
        reply: &[u8],
        freshness: Freshness,
        facts: ReplyFacts,
    ) {
        let Some(key) = key(query) else {
            return;
        };
        if reply.len() > MAX_REPLY || reply.len() < 2 {
            return;
        }
        let mut maps = self.lock();
        if generation < maps.generation {
            return;
        }
        let size = key.len() + reply.len();
        let full =
            maps.by_transport[transport(udp)].len() >= MAX_ENTRIES || maps.bytes + size > MAX_BYTES;
        if generation > maps.generation || full {
            maps.by_transport.iter_mut().for_each(HashMap::clear);
            maps.bytes = 0;
            maps.generation = generation;
        }
        let entry = Entry {
            reply: reply.into(),
            freshness,
            facts,
        };
        if let Some(old) = maps.by_transport[transport(udp)].insert(key.into(), entry) {
            maps.bytes -= key.len() + old.reply.len();
        }
        maps.bytes += size;
    }

    /// How many replies are kept, over both transports.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_transport.iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn facts() -> ReplyFacts {
        ReplyFacts {
            zone: ZoneLabel::Cluster,
            plugin: PluginLabel::Kubernetes,
            qtype: Some(RecordType::A),
            rcode: ResponseCode::NoError,
            forwarded: false,
            positive: true,
        }
    }

    const QUERY: &[u8] = &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
    const REPLY: &[u8] = &[
        0x12, 0x34, 0x85, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1,
    ];

    fn with_id(bytes: &[u8], id: [u8; 2]) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        bytes[..2].copy_from_slice(&id);
        bytes
    }

    #[test]
    fn a_query_differing_only_in_its_id_gets_the_reply_with_its_own_id() {
        let cache = ReplyCache::default();
        let now = Instant::now();
        cache.insert(QUERY, true, 0, REPLY, Freshness::Zone, facts());
        let mut out = Vec::new();
        let hit = cache.get(&with_id(QUERY, [0xab, 0xcd]), true, 0, now, &mut out);
        assert_eq!(hit, Some(facts()));
        assert_eq!(out, with_id(REPLY, [0xab, 0xcd]));
    }

    #[test]
    fn other_bytes_or_the_other_transport_miss() {
        let cache = ReplyCache::default();
        let now = Instant::now();
        cache.insert(QUERY, true, 0, REPLY, Freshness::Zone, facts());
        let mut out = Vec::new();
        let mut recursion_cleared = QUERY.to_vec();
        recursion_cleared[2] = 0;
        assert_eq!(cache.get(&recursion_cleared, true, 0, now, &mut out), None);
        assert_eq!(cache.get(QUERY, false, 0, now, &mut out), None);
    }

    #[test]
    fn a_newer_zone_generation_hides_and_then_drops_older_replies() {
        let cache = ReplyCache::default();
        let now = Instant::now();
        cache.insert(QUERY, true, 3, REPLY, Freshness::Zone, facts());
        let mut out = Vec::new();
        assert_eq!(cache.get(QUERY, true, 4, now, &mut out), None);
        // A reply answered before the update arrives late: not kept.
        let mut other = QUERY.to_vec();
        other[3] = 0x10;
        cache.insert(&other, true, 2, REPLY, Freshness::Zone, facts());
        assert_eq!(cache.get(&other, true, 3, now, &mut out), None);
        cache.insert(&other, true, 4, REPLY, Freshness::Zone, facts());
        assert_eq!(
            cache.len(),
            1,
            "the first store at generation 4 emptied the cache"
        );
        assert!(cache.get(&other, true, 4, now, &mut out).is_some());
    }

    #[test]
    fn a_forwarded_reply_is_served_only_until_its_ttls_would_change() {
        let cache = ReplyCache::default();
        let now = Instant::now();
        let until = now + Duration::from_millis(300);
        cache.insert(QUERY, true, 0, REPLY, Freshness::Until(until), facts());
        let mut out = Vec::new();
        assert!(cache.get(QUERY, true, 0, now, &mut out).is_some());
        assert_eq!(cache.get(QUERY, true, 0, until, &mut out), None);
    }

    #[test]
    fn long_queries_and_replies_are_not_kept() {
        let cache = ReplyCache::default();
        let long_query = vec![0; MAX_QUERY + 1];
        cache.insert(&long_query, true, 0, REPLY, Freshness::Zone, facts());
        cache.insert(
            QUERY,
            true,
            0,
            &[0; MAX_REPLY + 1],
            Freshness::Zone,
            facts(),
        );
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = ReplyCache::default();
        for n in 0..=MAX_ENTRIES as u32 {
            let mut query = QUERY.to_vec();
            query.extend_from_slice(&n.to_be_bytes());
            cache.insert(&query, true, 0, REPLY, Freshness::Zone, facts());
        }
        assert_eq!(cache.len(), 1);
    }
}
