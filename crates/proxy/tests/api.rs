//! The proxy end to end against the in-process API server: watches → change tracking → rules
//! in a namespace's nftables, with full and partial syncs counted; the supervisor's `/metrics`,
//! `/healthz` and `/livez` answering inside the namespace, and its ConfigMap source applying
//! valid changes and rejecting invalid ones.

use std::collections::BTreeMap;
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use switchyard_netns::{can_create_namespaces, unique_name, NetNs, NsGuard};
use switchyard_proxy::config::{KubeProxyConfiguration, NodeIdentity, ProxySettings};
use switchyard_proxy::supervisor::{read_config_map, ConfigMapSource};
use switchyard_proxy::{Proxy, ProxyConfig, ProxySupervisor};
use switchyard_testkit::{wait_for, InProcessServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
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
    slice_of(service, &[ip])
}

fn slice_of(service: &str, ips: &[&str]) -> EndpointSlice {
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
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some("node-a".into()),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            port: Some(8080),
            protocol: Some("TCP".into()),
            name: None,
            app_protocol: None,
        }]),
    }
}

async fn table(ns: &NetNs) -> String {
    table_of(ns, "ip").await
}

/// Our table of nft `family` (`ip`, `ip6`) in `ns`, empty when there is none.
async fn table_of(ns: &NetNs, family: &str) -> String {
    ns.nft(&["list", "table", family, "switchyard"], None)
        .await
        .unwrap_or_default()
}

async fn wait_table(ns: &NetNs, what: &str, check: impl Fn(&str) -> bool) {
    wait_table_of(ns, "ip", what, check).await;
}

async fn wait_table_of(ns: &NetNs, family: &str, what: &str, check: impl Fn(&str) -> bool) {
    wait_for(Duration::from_secs(60), what, || async {
        let t = table_of(ns, family).await;
        check(&t).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; table:\n{}",
            futures::executor::block_on(table_of(ns, family))
        )
    });
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_and_its_ipv6_slice_go_to_the_ip6_table_in_partial_syncs() {
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
    // Both tables exist from the first (full) sync.
    assert!(table_of(&ns, "ip6").await.contains("chain services"));

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let mut dual = service("dual", &[]);
    if let Some(spec) = dual.spec.as_mut() {
        spec.cluster_ip = Some("10.96.200.20".into());
        spec.cluster_ips = Some(vec!["10.96.200.20".into(), "fd00:96::20".into()]);
        spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        spec.ip_family_policy = Some("PreferDualStack".into());
        spec.external_ips = Some(vec!["2001:db8:2::10".into()]);
    }
    services
        .create(&PostParams::default(), &dual)
        .await
        .expect("create dual");
    let mut ipv6_slice = slice_of("dual", &["fd00:10:244:1::5"]);
    ipv6_slice.address_type = "IPv6".into();
    slices
        .create(&PostParams::default(), &ipv6_slice)
        .await
        .expect("create slice");
    wait_table_of(
        &ns,
        "ip6",
        "the IPv6 ClusterIP, external IP and endpoint",
        |t| {
            t.contains("fd00:96::20 . tcp . 80 : goto service-")
                && t.contains("2001:db8:2::10 . tcp . 80 : goto external-")
                && t.contains("dnat to [fd00:10:244:1::5]:8080")
        },
    )
    .await;
    // The IPv4 ClusterIP has no IPv4 endpoint: it refuses, and nothing IPv6 is in the `ip`
    // table.
    let v4 = table(&ns).await;
    assert!(
        v4.contains("10.96.200.20 . tcp . 80 : goto reject-chain"),
        "{v4}"
    );
    assert!(!v4.contains("fd00"), "{v4}");
    let m = proxy.metrics();
    assert_eq!(m.full_syncs, 1, "{m:?}");
    assert_eq!(m.sync_errors, 0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_node_port_answers_over_both_families() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("a")).await.expect("ns");
    let server = InProcessServer::start().await.expect("server");
    let client = server.client().await.expect("client");
    let _proxy = Proxy::start(client.clone(), config(&ns));
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut lb = service("lb-local", &[]);
    if let Some(spec) = lb.spec.as_mut() {
        spec.type_ = Some("LoadBalancer".into());
        spec.external_traffic_policy = Some("Local".into());
    }
    let created = services
        .create(&PostParams::default(), &lb)
        .await
        .expect("create");
    let port = created
        .spec
        .and_then(|s| s.health_check_node_port)
        .and_then(|p| u16::try_from(p).ok())
        .expect("a healthCheckNodePort");
    for ip in ["::1", "127.0.0.1"] {
        let addr = SocketAddr::new(ip.parse().expect("ip"), port);
        // No local endpoint: kube-proxy's 503.
        let (status, _) = wait_for(Duration::from_secs(60), "health check server", || {
            get(&ns, addr, "/")
        })
        .await
        .unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert_eq!(status, 503, "{addr}");
    }
}

/// A client of an API server that never answers: the informers never sync.
fn unreachable_client() -> kube::Client {
    let unreachable = kube::Config::new("https://127.0.0.1:9".parse().expect("url"));
    kube::Client::try_from(unreachable).expect("client")
}

#[tokio::test]
async fn nothing_is_programmed_before_the_first_complete_list() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("a")).await.expect("ns");
    let client = unreachable_client();
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

/// `GET path` from inside `ns`: the status code and the body.
async fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = ns.connect_tcp(addr, Duration::from_secs(5)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of the sample `series` (name with labels) in a Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_answer_inside_the_namespace_after_a_sync() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("a")).await.expect("ns");
    let server = InProcessServer::start().await.expect("server");
    let client = server.client().await.expect("client");
    // kube-proxy's default listeners, inside the node's namespace: no collision with the host
    // or with another node's proxy.
    let settings = ProxySettings::new(config(&ns));
    let node_agent: switchyard_proxy::status::Renderer = Arc::new(|out: &mut String| {
        out.push_str("# TYPE node_agent_up gauge\nnode_agent_up 1\n");
    });
    let supervisor = ProxySupervisor::start(client.clone(), settings, None, vec![node_agent])
        .await
        .expect("supervisor");
    let (_, healthz) = wait_for(Duration::from_secs(60), "healthz 200", || async {
        get(&ns, addr(HEALTHZ), "/healthz")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await
    .expect("healthy");
    let fields: serde_json::Value = serde_json::from_str(&healthz).expect("json body");
    assert_eq!(fields["nodeEligible"], true, "{healthz}");
    assert!(fields["lastUpdated"]
        .as_str()
        .is_some_and(|t| t.ends_with(" +0000 UTC")));
    assert!(fields["currentTime"].is_string(), "{healthz}");
    let (code, livez) = get(&ns, addr(HEALTHZ), "/livez").await.expect("livez");
    assert_eq!(code, 200, "{livez}");
    assert!(supervisor.is_synced());

    // A change carrying the EndpointSlice controller's trigger time is programmed and its
    // latency observed.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("web", &[]))
        .await
        .expect("create web");
    let mut web_slice = slice("web", "10.244.1.5");
    web_slice.metadata.annotations = Some(BTreeMap::from([(
        "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
        jiff::Timestamp::now().to_string(),
    )]));
    slices
        .create(&PostParams::default(), &web_slice)
        .await
        .expect("create slice");
    let family = "{ip_family=\"IPv4\"}";
    let text = wait_for(Duration::from_secs(60), "programming latency", || async {
        let (_, text) = get(&ns, addr(METRICS), "/metrics").await?;
        let count = sample(
            &text,
            &format!("kubeproxy_network_programming_duration_seconds_count{family}"),
        )?;
        (count >= 1.0).then_some(text)
    })
    .await
    .expect("observed");
    assert!(text.contains("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram"));
    let syncs = sample(
        &text,
        &format!("kubeproxy_sync_proxy_rules_duration_seconds_count{family}"),
    )
    .expect("sync count");
    let full = sample(
        &text,
        &format!("kubeproxy_sync_full_proxy_rules_duration_seconds_count{family}"),
    )
    .expect("full count");
    let partial = sample(
        &text,
        &format!("kubeproxy_sync_partial_proxy_rules_duration_seconds_count{family}"),
    )
    .expect("partial count");
    assert!(full >= 1.0 && partial >= 1.0, "{text}");
    assert_eq!(syncs, full + partial, "{text}");
    assert!(sample(&text, "kubeproxy_sync_proxy_rules_service_changes_total").expect("svc") >= 1.0);
    assert!(
        sample(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total").expect("eps") >= 1.0
    );
    assert!(
        sample(
            &text,
            &format!("kubeproxy_sync_proxy_rules_last_timestamp_seconds{family}")
        )
        .expect("last sync")
            > 1.0e9
    );
    assert!(sample(&text, "switchyard_proxy_nftables_chains").expect("chains") >= 1.0);
    assert_eq!(
        sample(
            &text,
            &format!("kubeproxy_sync_proxy_rules_nftables_sync_failures_total{family}")
        ),
        Some(0.0)
    );
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1\n"),
        "{text}"
    );
    assert!(text.ends_with("node_agent_up 1\n"), "{text}");
    assert_eq!(
        get(&ns, addr(METRICS), "/proxyMode").await,
        Some((200, "nftables".to_string()))
    );
}

#[tokio::test]
async fn healthz_is_503_and_livez_200_while_the_first_sync_has_not_happened() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("a")).await.expect("ns");
    let client = unreachable_client();
    let supervisor = ProxySupervisor::start(client, ProxySettings::new(config(&ns)), None, vec![])
        .await
        .expect("supervisor");
    let (code, body) = wait_for(Duration::from_secs(30), "health server", || async {
        get(&ns, addr(HEALTHZ), "/healthz").await
    })
    .await
    .expect("answers");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(r#"{"lastUpdated": "0001-01-01 00:00:00 +0000 UTC","currentTime": ""#),
        "{body}"
    );
    // Not late yet: the health timeout is 2 × the sync period (an hour here).
    assert_eq!(
        get(&ns, addr(HEALTHZ), "/livez").await.map(|a| a.0),
        Some(200)
    );
    assert!(!supervisor.is_synced());
}

const CONFIG_HEAD: &str =
    "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

fn kube_proxy_config_map(text: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("kube-proxy".into()),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "config.conf".to_string(),
            text.to_string(),
        )])),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_change_is_applied_and_an_invalid_one_keeps_the_running_rules() {
    require_namespaces!();
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("a")).await.expect("ns");
    let server = InProcessServer::start().await.expect("server");
    let client = server.client().await.expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let first = format!(
        "{CONFIG_HEAD}mode: nftables\nclusterCIDR: 10.244.0.0/16\n\
         nftables:\n  syncPeriod: 1h0m0s\n  minSyncPeriod: 50ms\n\
         conntrack:\n  tcpEstablishedTimeout: 2h0m0s\n"
    );
    maps.create(&PostParams::default(), &kube_proxy_config_map(&first))
        .await
        .expect("create configmap");
    let identity = NodeIdentity {
        hostname_override: Some("node-a".into()),
        host_name: String::new(),
        netns: ns.clone(),
    };
    let text = read_config_map(client.clone(), "kube-system", "kube-proxy")
        .await
        .expect("read");
    let settings = KubeProxyConfiguration::parse(&text)
        .expect("valid")
        .resolve(&identity)
        .await
        .expect("resolves");
    let source = ConfigMapSource {
        namespace: "kube-system".into(),
        name: "kube-proxy".into(),
        identity,
        applied_text: text,
    };
    let _supervisor = ProxySupervisor::start(client.clone(), settings, Some(source), vec![])
        .await
        .expect("supervisor");
    // conntrack settings are sysctls of the proxy's namespace only.
    let mut sysctl = ns.command("sysctl");
    sysctl.args(["-n", "net.netfilter.nf_conntrack_tcp_timeout_established"]);
    assert_eq!(
        switchyard_netns::run_checked(&mut sysctl)
            .await
            .expect("sysctl")
            .trim(),
        "7200"
    );

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let web = services
        .create(&PostParams::default(), &service("web", &[]))
        .await
        .expect("create web");
    let ip = web.spec.and_then(|s| s.cluster_ip).expect("ClusterIP");
    slices
        .create(
            &PostParams::default(),
            &slice_of("web", &["10.244.1.5", "10.244.2.5"]),
        )
        .await
        .expect("create slice");
    let from_outside =
        format!("ip daddr {ip} tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade");
    let all = format!("ip daddr {ip} tcp dport 80 jump mark-for-masquerade");
    wait_table(&ns, "web with random choice", |t| {
        t.contains(&from_outside) && t.contains("numgen random mod 2") && !t.contains(&all)
    })
    .await;

    // masqueradeAll and round robin: a new proxy replaces the table.
    let second = format!(
        "{CONFIG_HEAD}mode: nftables\nclusterCIDR: 10.244.0.0/16\n\
         nftables:\n  syncPeriod: 1h0m0s\n  minSyncPeriod: 50ms\n  masqueradeAll: true\n\
         ipvs:\n  scheduler: rr\n"
    );
    maps.replace("kube-proxy", &PostParams::default(), &{
        let mut cm = maps.get("kube-proxy").await.expect("get");
        cm.data = kube_proxy_config_map(&second).data;
        cm
    })
    .await
    .expect("replace");
    wait_table(&ns, "masquerade all, round robin", |t| {
        t.contains(&all) && t.contains("numgen inc mod 2") && !t.contains(&from_outside)
    })
    .await;
    let applied = wait_for(Duration::from_secs(10), "reload counted", || async {
        let (_, text) = get(&ns, addr(METRICS), "/metrics").await?;
        sample(
            &text,
            "switchyard_proxy_config_reloads_total{result=\"applied\"}",
        )
        .filter(|n| *n >= 1.0)
    })
    .await
    .expect("applied");
    assert_eq!(applied, 1.0);

    // An unknown field: rejected, counted, and the running rules stay.
    let invalid = format!("{CONFIG_HEAD}mode: nftables\nnftables:\n  masqueradeEverything: true\n");
    maps.replace("kube-proxy", &PostParams::default(), &{
        let mut cm = maps.get("kube-proxy").await.expect("get");
        cm.data = kube_proxy_config_map(&invalid).data;
        cm
    })
    .await
    .expect("replace");
    let text = wait_for(Duration::from_secs(30), "rejection counted", || async {
        let (_, text) = get(&ns, addr(METRICS), "/metrics").await?;
        sample(
            &text,
            "switchyard_proxy_config_reloads_total{result=\"rejected\"}",
        )
        .filter(|n| *n >= 1.0)
        .map(|_| text)
    })
    .await
    .expect("rejected");
    assert_eq!(
        sample(
            &text,
            "switchyard_proxy_config_reloads_total{result=\"applied\"}"
        ),
        Some(1.0)
    );
    let t = table(&ns).await;
    assert!(t.contains(&all) && t.contains("numgen inc mod 2"), "{t}");
    // The running proxy still follows the API.
    let later = services
        .create(&PostParams::default(), &service("later", &[]))
        .await
        .expect("create later");
    let later_ip = later.spec.and_then(|s| s.cluster_ip).expect("ClusterIP");
    wait_table(&ns, "later programmed", |t| t.contains(&later_ip)).await;
    let (code, body) = get(&ns, addr(HEALTHZ), "/healthz").await.expect("healthz");
    assert_eq!(code, 200, "{body}");
}
