//! What a fresh API server creates by itself, seen through a kube-rs client: the
//! `kube-system/kube-dns` Service at the tenth address of the service range, kept as is across
//! restarts, and moved to a dynamic address when a user's Service already holds the tenth.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_store::SharedStore;
use switchyard_testkit::InProcessServer;

fn memory_store() -> SharedStore {
    Arc::new(switchyard_store::memory::MemoryStore::new())
}

async fn kube_dns(server: &InProcessServer) -> Service {
    let client = server.client().await.expect("client");
    Api::<Service>::namespaced(client, "kube-system")
        .get("kube-dns")
        .await
        .expect("kube-system/kube-dns exists")
}

#[tokio::test]
async fn a_fresh_server_has_kube_dns_at_the_tenth_address_without_a_selector() {
    let server = InProcessServer::start().await.expect("server starts");
    let svc = kube_dns(&server).await;
    let spec = svc.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(spec.cluster_ips, Some(vec!["10.96.0.10".to_string()]));
    assert_eq!(
        spec.selector, None,
        "instances register themselves as endpoints"
    );
    let ports: Vec<(String, i32, String)> = spec
        .ports
        .expect("ports")
        .into_iter()
        .map(|p| {
            (
                p.name.unwrap_or_default(),
                p.port,
                p.protocol.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".to_string(), 53, "UDP".to_string()),
            ("dns-tcp".to_string(), 53, "TCP".to_string()),
            ("metrics".to_string(), 9153, "TCP".to_string()),
        ]
    );
    let labels = svc.metadata.labels.expect("labels");
    let expected: BTreeMap<String, String> = [
        ("k8s-app", "kube-dns"),
        ("kubernetes.io/cluster-service", "true"),
        ("kubernetes.io/name", "CoreDNS"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(labels, expected);
}

#[tokio::test]
async fn the_tenth_address_follows_the_configured_service_range() {
    let server = InProcessServer::start_with(memory_store(), |config| {
        config.service_cluster_ip_range = "172.30.0.0/16".into();
    })
    .await
    .expect("server starts");
    let spec = kube_dns(&server).await.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("172.30.0.10"));
}

#[tokio::test]
async fn the_allocator_records_the_kube_dns_address() {
    let server = InProcessServer::start().await.expect("server starts");
    let client = server.client().await.expect("client");
    let taker: Service = serde_json::from_value(json!({
        "metadata": {"name": "taker"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
    }))
    .expect("service");
    let err = Api::<Service>::namespaced(client, "default")
        .create(&PostParams::default(), &taker)
        .await
        .expect_err("the address belongs to kube-dns");
    assert!(
        err.to_string().contains("already allocated"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn a_restart_keeps_kube_dns_as_it_is_with_a_users_change() {
    let store = memory_store();
    let first = InProcessServer::start_with(store.clone(), |_| {})
        .await
        .expect("first server starts");
    let before = kube_dns(&first).await;
    let client = first.client().await.expect("client");
    let patch = json!({"metadata": {"labels": {"changed-by": "user"}}});
    Api::<Service>::namespaced(client, "kube-system")
        .patch("kube-dns", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    drop(first);

    let second = InProcessServer::start_with(store, |_| {})
        .await
        .expect("second server starts");
    let after = kube_dns(&second).await;
    assert_eq!(after.metadata.uid, before.metadata.uid, "not recreated");
    assert_eq!(
        after
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("changed-by"))
            .map(String::as_str),
        Some("user"),
        "the user's change survives"
    );
    assert_eq!(
        after.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.96.0.10")
    );
    let client = second.client().await.expect("client");
    let dns_services = Api::<Service>::namespaced(client, "kube-system")
        .list(&ListParams::default().labels("k8s-app=kube-dns"))
        .await
        .expect("list");
    assert_eq!(dns_services.items.len(), 1, "no duplicate");
}

#[tokio::test]
async fn kube_dns_gets_a_dynamic_address_when_a_users_service_holds_the_tenth() {
    let store = memory_store();
    let first = InProcessServer::start_with(store.clone(), |_| {})
        .await
        .expect("first server starts");
    let client = first.client().await.expect("client");
    let system = Api::<Service>::namespaced(client.clone(), "kube-system");
    system
        .delete("kube-dns", &Default::default())
        .await
        .expect("delete kube-dns");
    let taker: Service = serde_json::from_value(json!({
        "metadata": {"name": "taker"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
    }))
    .expect("service");
    let create = || async {
        Api::<Service>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &taker)
            .await
    };
    // The address is released when the delete commits; the allocator may take a moment.
    switchyard_testkit::wait_for(
        std::time::Duration::from_secs(10),
        "10.96.0.10 free",
        || async { create().await.ok() },
    )
    .await
    .expect("a user's service takes 10.96.0.10");
    drop(first);

    let second = InProcessServer::start_with(store, |_| {})
        .await
        .expect("second server starts despite the conflict");
    let ip = kube_dns(&second)
        .await
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("kube-dns has an address");
    assert_ne!(ip, "10.96.0.10");
    let range: ipnet::IpNet = "10.96.0.0/12".parse().expect("cidr");
    assert!(
        range.contains(&ip.parse::<std::net::IpAddr>().expect("an IP")),
        "{ip} is in the service range"
    );
}
