//! The stable-toolchain companion of the cargo-fuzz target `crates/dns/fuzz` (`handle_query`):
//! a few thousand real queries mutated by a seeded RNG, and random byte strings, each fed to
//! `Dns::handle` over UDP and TCP. The server must not panic, and a reply, when it sends one, must
//! decode and carry the query's id and (when the query decodes) its question. Reproducible: the
//! seed is fixed, and a failure prints the input.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_dns::forward::{Forwarder, ForwarderConfig};
use switchyard_dns::server::Dns;
use switchyard_dns::zone::{Zone, ZoneConfig};

/// A synced zone with a ClusterIP service, a headless one with endpoints (one with a hostname)
/// and an ExternalName; nobody may recurse, so nothing leaves the process.
fn dns() -> Dns {
    let mut zone = Zone::new(ZoneConfig::default());
    for service in [
        serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
        serde_json::json!({"metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                     "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
        serde_json::json!({"metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
    ] {
        zone.upsert_service(&serde_json::from_value(service).expect("service"));
    }
    let slice = serde_json::json!({
        "metadata": {"name": "db-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.5"], "hostname": "db-0",
                       "conditions": {"ready": true}},
                      {"addresses": ["10.244.0.6"], "conditions": {"ready": true}}],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    });
    zone.upsert_slice(&serde_json::from_value(slice).expect("slice"));
    let dns = Dns::new(zone, Forwarder::new(ForwarderConfig::default()), Vec::new());
    dns.mark_synced();
    dns
}

/// Well-formed queries covering every record shape of the zone, and names outside it.
fn seeds() -> Vec<Vec<u8>> {
    let names = [
        "web.default.svc.cluster.local.",
        "WeB.DeFault.SVC.cluster.local.",
        "db.default.svc.cluster.local.",
        "db-0.db.default.svc.cluster.local.",
        "_pg._tcp.db.default.svc.cluster.local.",
        "_http._tcp.web.default.svc.cluster.local.",
        "ext.default.svc.cluster.local.",
        "10-244-0-5.default.pod.cluster.local.",
        "dns-version.cluster.local.",
        "20.0.96.10.in-addr.arpa.",
        "5.0.244.10.in-addr.arpa.",
        "cluster.local.",
        "nope.default.svc.cluster.local.",
        "example.com.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::PTR,
        RecordType::TXT,
        RecordType::CNAME,
        RecordType::SOA,
        RecordType::NS,
        RecordType::ANY,
        RecordType::AXFR,
    ];
    let mut seeds = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for (j, record_type) in types.iter().enumerate() {
            let mut query = Message::new((i * 31 + j) as u16, MessageType::Query, OpCode::Query);
            query.metadata.recursion_desired = j % 2 == 0;
            query.add_query(Query::query(
                Name::from_ascii(name).expect("name"),
                *record_type,
            ));
            if (i + j) % 3 == 0 {
                let mut edns = Edns::new();
                edns.set_max_payload(512 + (j as u16) * 200);
                query.set_edns(edns);
            }
            seeds.push(query.to_vec().expect("encodes"));
        }
    }
    seeds
}

/// One random change to `bytes`: flip bits, overwrite, insert, delete, truncate, duplicate a
/// span, or rewrite one of the header's section counts.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    match rng.random_range(0..7) {
        0 if !bytes.is_empty() => {
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
        }
        1 if !bytes.is_empty() => {
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random();
        }
        2 => {
            let at = rng.random_range(0..=bytes.len());
            bytes.insert(at, rng.random());
        }
        3 if !bytes.is_empty() => {
            let at = rng.random_range(0..bytes.len());
            bytes.remove(at);
        }
        4 => {
            let len = rng.random_range(0..=bytes.len());
            bytes.truncate(len);
        }
        5 if !bytes.is_empty() => {
            let from = rng.random_range(0..bytes.len());
            let to = rng.random_range(from..=bytes.len());
            let span = bytes[from..to].to_vec();
            let at = rng.random_range(0..=bytes.len());
            bytes.splice(at..at, span);
        }
        _ if bytes.len() >= 12 => {
            // QDCOUNT, ANCOUNT, NSCOUNT or ARCOUNT.
            let at = 4 + 2 * rng.random_range(0..4);
            let count: u16 = rng.random_range(0..4);
            bytes[at..at + 2].copy_from_slice(&count.to_be_bytes());
        }
        _ => bytes.push(rng.random()),
    }
}

/// The property: no panic (the caller would see it), and a reply decodes with the query's id
/// and question; over UDP a one-question reply fits the largest payload we accept. The same
/// bytes under another id (then maybe answered from the replies the server keeps) get the same
/// reply but the id.
async fn check(dns: &Dns, input: &[u8]) {
    let client: SocketAddr = "192.0.2.1:5353".parse().expect("addr");
    for udp in [true, false] {
        let Some(reply) = dns.handle(input, client, udp).await else {
            continue;
        };
        let mut again = input.to_vec();
        again[0] ^= 0xff;
        let mut expected = reply.clone();
        expected[0] ^= 0xff;
        assert_eq!(
            dns.handle(&again, client, udp).await,
            Some(expected),
            "reply to {again:02x?} after {input:02x?}"
        );
        let header =
            Header::read(&mut BinDecoder::new(input)).expect("a reply only to a readable header");
        let decoded = Message::from_vec(&reply)
            .unwrap_or_else(|e| panic!("reply to {input:02x?} does not decode: {e}"));
        assert_eq!(
            decoded.metadata.id, header.metadata.id,
            "reply id for {input:02x?}"
        );
        if let Ok(query) = Message::from_vec(input) {
            assert_eq!(
                decoded.queries, query.queries,
                "reply question for {input:02x?}"
            );
            if udp && query.queries.len() == 1 {
                assert!(reply.len() <= 1232, "UDP reply size for {input:02x?}");
            }
        }
    }
}

#[tokio::test]
async fn mutated_real_queries_never_panic_and_replies_match_the_query() {
    let dns = Arc::new(dns());
    let mut rng = StdRng::seed_from_u64(0x5eed_d115);
    let seeds = seeds();
    for seed in &seeds {
        check(&dns, seed).await;
    }
    for _ in 0..4000 {
        let mut input = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..6) {
            mutate(&mut rng, &mut input);
        }
        check(&dns, &input).await;
    }
}

#[tokio::test]
async fn random_bytes_never_panic_and_replies_match_the_query() {
    let dns = Arc::new(dns());
    let mut rng = StdRng::seed_from_u64(0xb17e5);
    for _ in 0..4000 {
        let len = rng.random_range(0..600);
        let mut input: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half of them with a plausible header (a query, one question) to get past the first
        // checks.
        if rng.random_bool(0.5) && input.len() >= 12 {
            input[2] &= 0x07;
            input[3] = 0;
            input[4..6].copy_from_slice(&1u16.to_be_bytes());
        }
        check(&dns, &input).await;
    }
}
