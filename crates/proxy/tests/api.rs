//! The proxy end to end against the in-process API server: watches → change tracking → rules
//! in a namespace's nftables, with full and partial syncs counted.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use switchyard_netns::{can_create_namespaces, unique_name, NetNs, NsGuard};
use switchyard_proxy::{Proxy, ProxyConfig};
use switchyard_testkit::{wait_for, InProcessServer};

macro_rules! require_namespaces {
    () => {
        if !can_create_namespaces() {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return;
        }
    };
}

fn config(ns: &NetNs) -> ProxyConfig {
    ProxyConfig {
        node_name: "node-a".into(),
        netns: ns.clone(),
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
        min_sync_period: Duration::from_millis(50),
        sync_period: Duration::from_secs(3600),
        ..ProxyConfig::default()
    }
}

fn service(name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice(service: &str, ip: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-manual")),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                service.to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some("node-a".into()),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            port: Some(8080),
            protocol: Some("TCP".into()),
            name: None,
            app_protocol: None,
        }]),
    }
}

async fn table(ns: &NetNs) -> String {
    ns.nft(&["list", "table", "ip", "switchyard"], None)
        .await
        .unwrap_or_default()
}

async fn wait_table(ns: &NetNs, what: &str, check: impl Fn(&str) -> bool) {
    wait_for(Duration::from_secs(60), what, || async {
        let t = table(ns).await;
        check(&t).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; table:\n{}", futures::executor::block_on(table(ns))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_follow_services_and_slices_with_one_full_sync_then_partial_ones() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("a")).await.expect("ns");
    let server = InProcessServer::start().await.expect("server");
    let client = server.client().await.expect("client");
    let proxy = Proxy::start(client.clone(), config(&ns));
    wait_for(Duration::from_secs(60), "first sync", || async {
        proxy.is_synced().then_some(())
    })
    .await
    .expect("synced");
    // The `kubernetes` service exists from the start (if the server publishes endpoints).
    assert_eq!(proxy.metrics().full_syncs, 1);

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let web = services
        .create(&PostParams::default(), &service("web", &[]))
        .await
        .expect("create web");
    let cluster_ip = web
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("allocated ClusterIP");
    let no_endpoints = format!("{cluster_ip} . tcp . 80 : goto reject-chain");
    wait_table(&ns, "web rejected without endpoints", |t| {
        t.contains(&no_endpoints)
    })
    .await;

    slices
        .create(&PostParams::default(), &slice("web", "10.244.1.5"))
        .await
        .expect("create slice");
    wait_table(&ns, "web in service-ips", |t| {
        t.contains(&format!("{cluster_ip} . tcp . 80 : goto service-"))
            && t.contains("dnat to 10.244.1.5:8080")
            && !t.contains(&no_endpoints)
    })
    .await;
    // The counters are updated just after the rules are applied.
    let m = wait_for(
        Duration::from_secs(10),
        "two partial syncs counted",
        || async {
            let m = proxy.metrics();
            (m.partial_syncs >= 2).then_some(m)
        },
    )
    .await
    .expect("partial syncs");
    assert_eq!(m.full_syncs, 1, "{m:?}");
    assert_eq!(m.sync_errors, 0, "{m:?}");

    // Services of another proxy get nothing; a later ordinary one proves a sync happened.
    let other = services
        .create(
            &PostParams::default(),
            &service(
                "other",
                &[("service.kubernetes.io/service-proxy-name", "someone-else")],
            ),
        )
        .await
        .expect("create other");
    let other_ip = other.spec.and_then(|s| s.cluster_ip).expect("ip");
    let later = services
        .create(&PostParams::default(), &service("later", &[]))
        .await
        .expect("create later");
    let later_ip = later.spec.and_then(|s| s.cluster_ip).expect("ip");
    wait_table(&ns, "later service", |t| t.contains(&later_ip)).await;
    assert!(!table(&ns).await.contains(&other_ip));

    // Deleting a service removes its elements and chains.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    wait_table(&ns, "web gone", |t| {
        !t.contains(&cluster_ip) && !t.contains("default/web/")
    })
    .await;
    assert_eq!(proxy.metrics().full_syncs, 1);
    drop(proxy);
    // Stopping the proxy leaves the rules in place.
    assert!(table(&ns).await.contains(&later_ip));
}

#[tokio::test]
async fn nothing_is_programmed_before_the_first_complete_list() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("a")).await.expect("ns");
    // An API server that never answers: the informers never sync.
    let unreachable = kube::Config::new("https://127.0.0.1:9".parse().expect("url"));
    let client = kube::Client::try_from(unreachable).expect("client");
    let proxy = Proxy::start(client, config(&ns));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!proxy.is_synced());
    assert_eq!(proxy.metrics().full_syncs, 0);
    assert!(
        ns.nft(&["list", "table", "ip", "switchyard"], None)
            .await
            .is_err(),
        "no table may be written before the informers synced"
    );
}
