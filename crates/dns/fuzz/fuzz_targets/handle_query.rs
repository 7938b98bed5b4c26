//! Arbitrary bytes as one query to `Dns::handle`, over UDP and over TCP, against a synced zone
//! with a ClusterIP service, a headless one with endpoints and an ExternalName. The server must
//! not panic, and a reply, when it sends one, must decode and carry the query's id and (when the
//! query decodes) its question. No network: nobody may recurse, so nothing is forwarded.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Header, Message};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use libfuzzer_sys::fuzz_target;
use switchyard_dns::forward::{Forwarder, ForwarderConfig};
use switchyard_dns::server::Dns;
use switchyard_dns::zone::{Zone, ZoneConfig};

struct Harness {
    runtime: tokio::runtime::Runtime,
    dns: Arc<Dns>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
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
        Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            dns: Arc::new(dns),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let client: SocketAddr = "192.0.2.1:5353".parse().expect("addr");
    for udp in [true, false] {
        let reply = harness
            .runtime
            .block_on(harness.dns.handle(data, client, udp));
        let Some(reply) = reply else { continue };
        let header = Header::read(&mut BinDecoder::new(data)).expect("a reply only to a header");
        let decoded = Message::from_vec(&reply).expect("the reply decodes");
        assert_eq!(decoded.metadata.id, header.metadata.id, "reply id");
        if let Ok(query) = Message::from_vec(data) {
            assert_eq!(decoded.queries, query.queries, "reply question");
            // With one question the reply always fits (TC set and answers dropped if need be);
            // a FORMERR echoing many questions is as large as the query that carried them.
            if udp && query.queries.len() == 1 {
                assert!(reply.len() <= 1232, "UDP reply within the largest payload we accept");
            }
        }
    }
});
