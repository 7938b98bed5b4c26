//! The EndpointSlice, Endpoints and mirroring controllers through a real API server, following
//! Kubernetes' e2e checks (test/e2e/network/service.go, endpointslice.go): the endpoints a
//! Service shows follow its Pods as they come, go and change readiness.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_store::memory::MemoryStore;
use switchyard_testkit::{wait_for, InProcessServer};

const WAIT: Duration = Duration::from_secs(20);

async fn cluster() -> Result<(InProcessServer, kube::Client)> {
    let server = InProcessServer::start_with_controllers(
        Arc::new(MemoryStore::new()),
        |_| {},
        |c| c.leader_elect = false,
    )
    .await?;
    let client = server.client().await?;
    Ok((server, client))
}

async fn create_service(client: &kube::Client, ns: &str, svc: serde_json::Value) -> Result<()> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &serde_json::from_value(svc)?)
        .await?;
    Ok(())
}

/// A Pod on `node` with the given container ports (name, port), marked Running with `ip` and
/// the given readiness, as a node agent would report it.
async fn create_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    ports: &[(&str, i32)],
    ip: &str,
    ready: bool,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ports: Vec<_> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "containerPort": p}))
        .collect();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "echo", "ports": ports}]},
    });
    api.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    set_ready(client, ns, name, ip, ready).await
}

async fn set_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    ip: &str,
    ready: bool,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// The addresses of a Service's EndpointSlices, split into (ready, not ready).
async fn slice_addresses(
    client: &kube::Client,
    ns: &str,
    service: &str,
) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let slices = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    let (mut ready, mut not_ready) = (BTreeSet::new(), BTreeSet::new());
    for s in slices.items {
        for ep in s.endpoints {
            let is_ready = ep.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            for a in ep.addresses {
                if is_ready {
                    ready.insert(a);
                } else {
                    not_ready.insert(a);
                }
            }
        }
    }
    Ok((ready, not_ready))
}

/// The addresses of a Service's Endpoints object, split into (ready, not ready).
async fn endpoints_addresses(
    client: &kube::Client,
    ns: &str,
    service: &str,
) -> Result<Option<(BTreeSet<String>, BTreeSet<String>)>> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let Some(ep) = api.get_opt(service).await? else {
        return Ok(None);
    };
    let (mut ready, mut not_ready) = (BTreeSet::new(), BTreeSet::new());
    for subset in ep.subsets.into_iter().flatten() {
        ready.extend(subset.addresses.into_iter().flatten().map(|a| a.ip));
        not_ready.extend(
            subset
                .not_ready_addresses
                .into_iter()
                .flatten()
                .map(|a| a.ip),
        );
    }
    Ok(Some((ready, not_ready)))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until both the slices and the Endpoints object show exactly `ready` ready addresses
/// and `not_ready` others.
async fn expect_endpoints(
    client: &kube::Client,
    ns: &str,
    service: &str,
    ready: &[&str],
    not_ready: &[&str],
) -> Result<()> {
    let want = (set(ready), set(not_ready));
    wait_for(WAIT, &format!("{service} endpoints {want:?}"), || async {
        let slices = slice_addresses(client, ns, service).await.ok()?;
        let endpoints = endpoints_addresses(client, ns, service).await.ok()??;
        (slices == want && endpoints == want).then_some(())
    })
    .await
}

#[tokio::test]
async fn serves_a_basic_endpoint_from_pods() -> Result<()> {
    let (_server, client) = cluster().await?;
    create_service(
        &client,
        "default",
        json!({"metadata": {"name": "endpoint-test2"},
               "spec": {"selector": {"name": "endpoint-test2"}, "ports": [{"port": 80, "targetPort": 80}]}}),
    )
    .await?;
    // No pods: the Endpoints object exists and is empty; one placeholder slice.
    expect_endpoints(&client, "default", "endpoint-test2", &[], &[]).await?;

    let labels = json!({"name": "endpoint-test2"});
    create_pod(
        &client,
        "default",
        "pod1",
        labels.clone(),
        &[("http", 80)],
        "10.244.1.11",
        true,
    )
    .await?;
    expect_endpoints(&client, "default", "endpoint-test2", &["10.244.1.11"], &[]).await?;
    create_pod(
        &client,
        "default",
        "pod2",
        labels,
        &[("http", 80)],
        "10.244.1.12",
        true,
    )
    .await?;
    expect_endpoints(
        &client,
        "default",
        "endpoint-test2",
        &["10.244.1.11", "10.244.1.12"],
        &[],
    )
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let now = DeleteParams::default().grace_period(0);
    pods.delete("pod1", &now).await?;
    expect_endpoints(&client, "default", "endpoint-test2", &["10.244.1.12"], &[]).await?;
    pods.delete("pod2", &now).await?;
    expect_endpoints(&client, "default", "endpoint-test2", &[], &[]).await?;

    // The slices carry the labels, the owner and the trigger time the proxy reads.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=endpoint-test2"))
        .await?;
    assert_eq!(list.items.len(), 1, "one placeholder slice once empty");
    let slice = &list.items[0];
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("switchyard-endpointslice-controller")
    );
    let owner = &slice.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "endpoint-test2")
    );
    let annotations = slice.metadata.annotations.clone().unwrap_or_default();
    assert!(annotations.contains_key("endpoints.kubernetes.io/last-change-trigger-time"));
    Ok(())
}

#[tokio::test]
async fn serves_multiport_endpoints_resolving_named_ports_per_pod() -> Result<()> {
    let (_server, client) = cluster().await?;
    create_service(
        &client,
        "default",
        json!({"metadata": {"name": "multi"},
               "spec": {"selector": {"app": "multi"}, "ports": [
                   {"name": "portname1", "port": 80, "targetPort": "svc1"},
                   {"name": "portname2", "port": 81, "targetPort": "svc2"}]}}),
    )
    .await?;
    let labels = json!({"app": "multi"});
    create_pod(
        &client,
        "default",
        "pod1",
        labels.clone(),
        &[("svc1", 100)],
        "10.244.1.21",
        true,
    )
    .await?;
    create_pod(
        &client,
        "default",
        "pod2",
        labels,
        &[("svc2", 101)],
        "10.244.1.22",
        true,
    )
    .await?;
    expect_endpoints(
        &client,
        "default",
        "multi",
        &["10.244.1.21", "10.244.1.22"],
        &[],
    )
    .await?;

    // Each pod is served only on the port it names, with its own container port.
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slices = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=multi"))
        .await?;
    let mut seen = BTreeSet::new();
    for s in &slices.items {
        for ep in &s.endpoints {
            for port in s.ports.iter().flatten() {
                for a in &ep.addresses {
                    seen.insert((
                        a.clone(),
                        port.name.clone().unwrap_or_default(),
                        port.port.unwrap_or(0),
                    ));
                }
            }
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            ("10.244.1.21".to_string(), "portname1".to_string(), 100),
            ("10.244.1.22".to_string(), "portname2".to_string(), 101),
        ])
    );
    Ok(())
}

#[tokio::test]
async fn readiness_moves_endpoints_and_publish_not_ready_keeps_them() -> Result<()> {
    let (_server, client) = cluster().await?;
    create_service(
        &client,
        "default",
        json!({"metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await?;
    create_service(
        &client,
        "default",
        json!({"metadata": {"name": "web-all"},
               "spec": {"selector": {"app": "web"}, "publishNotReadyAddresses": true, "ports": [{"port": 80}]}}),
    )
    .await?;
    let labels = json!({"app": "web"});
    create_pod(
        &client,
        "default",
        "a",
        labels.clone(),
        &[],
        "10.244.1.31",
        true,
    )
    .await?;
    create_pod(&client, "default", "b", labels, &[], "10.244.1.32", false).await?;
    expect_endpoints(
        &client,
        "default",
        "web",
        &["10.244.1.31"],
        &["10.244.1.32"],
    )
    .await?;
    expect_endpoints(
        &client,
        "default",
        "web-all",
        &["10.244.1.31", "10.244.1.32"],
        &[],
    )
    .await?;

    set_ready(&client, "default", "a", "10.244.1.31", false).await?;
    set_ready(&client, "default", "b", "10.244.1.32", true).await?;
    expect_endpoints(
        &client,
        "default",
        "web",
        &["10.244.1.32"],
        &["10.244.1.31"],
    )
    .await?;
    expect_endpoints(
        &client,
        "default",
        "web-all",
        &["10.244.1.31", "10.244.1.32"],
        &[],
    )
    .await?;

    // Relabelling a pod out of the selector removes it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await?;
    expect_endpoints(&client, "default", "web", &[], &["10.244.1.31"]).await?;
    Ok(())
}

#[tokio::test]
async fn the_kubernetes_service_has_slices_and_user_endpoints_are_mirrored() -> Result<()> {
    let (_server, client) = cluster().await?;
    let (ready, _) = slice_addresses(&client, "default", "kubernetes").await?;
    assert_eq!(
        ready.len(),
        1,
        "default/kubernetes has one endpoint: {ready:?}"
    );

    // The seeds' external database: a selector-less Service plus user-written Endpoints.
    create_service(
        &client,
        "default",
        json!({"metadata": {"name": "mysql"}, "spec": {"ports": [{"port": 3306}]}}),
    )
    .await?;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    endpoints
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "mysql"},
                "subsets": [{"addresses": [{"ip": "192.168.67.50"}], "ports": [{"port": 3306}]}],
            }))?,
        )
        .await?;
    wait_for(WAIT, "mirrored slice", || async {
        let (ready, _) = slice_addresses(&client, "default", "mysql").await.ok()?;
        (ready == set(&["192.168.67.50"])).then_some(())
    })
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=mysql"))
        .await?;
    let managed_by: Vec<_> = list
        .items
        .iter()
        .filter_map(|s| {
            s.metadata
                .labels
                .as_ref()?
                .get("endpointslice.kubernetes.io/managed-by")
                .cloned()
        })
        .collect();
    assert_eq!(managed_by, ["switchyard-endpointslicemirroring-controller"]);

    // Editing the Endpoints updates the mirror; deleting them removes it.
    endpoints
        .patch(
            "mysql",
            &PatchParams::default(),
            &Patch::Merge(json!({"subsets": [{"addresses": [{"ip": "192.168.67.51"}], "ports": [{"port": 3306}]}]})),
        )
        .await?;
    wait_for(WAIT, "updated mirror", || async {
        let (ready, _) = slice_addresses(&client, "default", "mysql").await.ok()?;
        (ready == set(&["192.168.67.51"])).then_some(())
    })
    .await?;
    endpoints.delete("mysql", &DeleteParams::default()).await?;
    wait_for(WAIT, "mirror removed", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=mysql"))
            .await
            .ok()?;
        list.items.is_empty().then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn more_than_a_hundred_pods_fill_several_slices() -> Result<()> {
    let (_server, client) = cluster().await?;
    create_service(
        &client,
        "default",
        json!({"metadata": {"name": "big"}, "spec": {"selector": {"app": "big"}, "ports": [{"port": 80}]}}),
    )
    .await?;
    let mut want = Vec::new();
    for i in 0..130 {
        let ip = format!("10.244.{}.{}", 2 + i / 200, 1 + i % 200);
        create_pod(
            &client,
            "default",
            &format!("p{i}"),
            json!({"app": "big"}),
            &[],
            &ip,
            true,
        )
        .await?;
        want.push(ip);
    }
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    expect_endpoints(&client, "default", "big", &want, &[]).await?;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slices = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=big"))
        .await?;
    assert!(slices.items.len() >= 2);
    assert!(slices.items.iter().all(|s| s.endpoints.len() <= 100));
    Ok(())
}

#[tokio::test]
async fn deleting_a_service_removes_its_slices_and_endpoints() -> Result<()> {
    let (_server, client) = cluster().await?;
    create_service(
        &client,
        "default",
        json!({"metadata": {"name": "gone"}, "spec": {"selector": {"app": "gone"}, "ports": [{"port": 80}]}}),
    )
    .await?;
    create_pod(
        &client,
        "default",
        "g1",
        json!({"app": "gone"}),
        &[],
        "10.244.1.41",
        true,
    )
    .await?;
    expect_endpoints(&client, "default", "gone", &["10.244.1.41"], &[]).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services.delete("gone", &DeleteParams::default()).await?;
    wait_for(WAIT, "slices and endpoints removed", || async {
        let (r, n) = slice_addresses(&client, "default", "gone").await.ok()?;
        let ep = endpoints_addresses(&client, "default", "gone").await.ok()?;
        (r.is_empty() && n.is_empty() && ep.is_none()).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_resync_without_changes_writes_nothing() -> Result<()> {
    let (server, client) = cluster().await?;
    create_service(
        &client,
        "default",
        json!({"metadata": {"name": "still"},
               "spec": {"selector": {"app": "still"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    create_pod(
        &client,
        "default",
        "s1",
        json!({"app": "still"}),
        &[("http", 8080)],
        "10.244.1.51",
        true,
    )
    .await?;
    create_pod(
        &client,
        "default",
        "s2",
        json!({"app": "still"}),
        &[("http", 8080)],
        "10.244.1.52",
        false,
    )
    .await?;
    expect_endpoints(
        &client,
        "default",
        "still",
        &["10.244.1.51"],
        &["10.244.1.52"],
    )
    .await?;
    let manager = server.controllers.as_ref().expect("controllers");
    wait_for(WAIT, "controllers idle", || async {
        manager.is_idle().then_some(())
    })
    .await?;

    let versions = || async {
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
        let mut rvs: Vec<String> = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=still"))
            .await?
            .items
            .into_iter()
            .filter_map(|s| s.metadata.resource_version)
            .collect();
        rvs.extend(endpoints.get("still").await?.metadata.resource_version);
        anyhow::Ok(rvs)
    };
    let before = versions().await?;
    manager.resync();
    wait_for(WAIT, "controllers idle after resync", || async {
        manager.is_idle().then_some(())
    })
    .await?;
    assert_eq!(versions().await?, before, "a resync rewrote objects");
    Ok(())
}
