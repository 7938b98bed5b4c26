//! The LoadBalancer IP allocation controller through a real API server, with the MetalLB
//! configuration of the seeds (an `IPAddressPool` `first-pool` of 192.168.67.120-200 and an
//! `L2Advertisement` in `metallb-system`): Services get addresses in status and the
//! `metallb.io/ip-allocated-from-pool` annotation, with MetalLB's Events, and keep them across
//! controller restarts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Event, Namespace, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_api::metallb::{IPAddressPool, L2Advertisement};
use switchyard_store::memory::MemoryStore;
use switchyard_testkit::{wait_for, InProcessServer};

const WAIT: Duration = Duration::from_secs(20);
const POOL_ANNOTATION: &str = "metallb.io/ip-allocated-from-pool";

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

/// The seeds' MetalLB configuration, with `addresses` for the pool `name`.
async fn apply_pool(client: &kube::Client, name: &str, addresses: &[&str]) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt("metallb-system").await?.is_none() {
        let ns = json!({"metadata": {"name": "metallb-system"}});
        namespaces
            .create(&PostParams::default(), &serde_json::from_value(ns)?)
            .await?;
    }
    let pools: Api<IPAddressPool> = Api::namespaced(client.clone(), "metallb-system");
    let pool = json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": name, "namespace": "metallb-system"},
        "spec": {"addresses": addresses},
    });
    pools
        .create(&PostParams::default(), &serde_json::from_value(pool)?)
        .await?;
    let ads: Api<L2Advertisement> = Api::namespaced(client.clone(), "metallb-system");
    let ad = json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
        "metadata": {"name": format!("{name}-l2"), "namespace": "metallb-system"},
        "spec": {"ipAddressPools": [name]},
    });
    ads.create(&PostParams::default(), &serde_json::from_value(ad)?)
        .await?;
    Ok(())
}

async fn seeds_pool(client: &kube::Client) -> Result<()> {
    apply_pool(client, "first-pool", &["192.168.67.120-192.168.67.200"]).await
}

/// A `type: LoadBalancer` Service in `default` with TCP `ports` and `annotations`, plus any
/// further `spec` fields.
async fn create_lb(
    client: &kube::Client,
    name: &str,
    ports: &[i32],
    annotations: serde_json::Value,
    spec: serde_json::Value,
) -> Result<()> {
    let ports: Vec<_> = ports
        .iter()
        .map(|p| json!({"name": format!("p{p}"), "port": p, "protocol": "TCP"}))
        .collect();
    let mut svc = json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": ports},
    });
    if let (Some(s), Some(extra)) = (svc["spec"].as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &serde_json::from_value(svc)?)
        .await?;
    Ok(())
}

/// The Service's ingress IPs (with their ipMode) and its pool annotation.
async fn lb_state(
    client: &kube::Client,
    name: &str,
) -> Result<(Vec<(String, String)>, Option<String>)> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = api.get(name).await?;
    let ingress = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.ip.unwrap_or_default(), i.ip_mode.unwrap_or_default()))
        .collect();
    let pool = svc
        .metadata
        .annotations
        .and_then(|a| a.get(POOL_ANNOTATION).cloned());
    Ok((ingress, pool))
}

/// Waits until the Service shows exactly `ip` from `pool`.
async fn expect_ip(client: &kube::Client, name: &str, ip: &str, pool: &str) -> Result<()> {
    let want = (
        vec![(ip.to_string(), "VIP".to_string())],
        Some(pool.to_string()),
    );
    wait_for(WAIT, &format!("{name} to get {ip} from {pool}"), || async {
        (lb_state(client, name).await.ok()? == want).then_some(())
    })
    .await
}

/// The Events about Service `name` with `reason`, as (message, count).
async fn events(client: &kube::Client, name: &str, reason: &str) -> Result<Vec<(String, i32)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name)
                && e.involved_object.kind.as_deref() == Some("Service")
                && e.reason.as_deref() == Some(reason)
        })
        .map(|e| (e.message.unwrap_or_default(), e.count.unwrap_or(1)))
        .collect())
}

async fn expect_event(client: &kube::Client, name: &str, reason: &str) -> Result<String> {
    wait_for(WAIT, &format!("a {reason} Event for {name}"), || async {
        events(client, name, reason)
            .await
            .ok()?
            .into_iter()
            .next()
            .map(|(m, _)| m)
    })
    .await
}

#[tokio::test]
async fn load_balancer_service_gets_the_first_address_of_the_seeds_pool() -> Result<()> {
    let (_server, client) = cluster().await?;
    seeds_pool(&client).await?;
    create_lb(&client, "nginx-svc", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "nginx-svc", "192.168.67.120", "first-pool").await?;
    let message = expect_event(&client, "nginx-svc", "IPAllocated").await?;
    assert_eq!(message, r#"Assigned IP ["192.168.67.120"]"#);
    // Nothing fails, and the second Service gets the next address.
    create_lb(&client, "second", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "second", "192.168.67.121", "first-pool").await?;
    assert!(events(&client, "nginx-svc", "AllocationFailed")
        .await?
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn requested_addresses_are_honoured_from_spec_and_annotation() -> Result<()> {
    let (_server, client) = cluster().await?;
    seeds_pool(&client).await?;
    create_lb(
        &client,
        "by-spec",
        &[80],
        json!({}),
        json!({"loadBalancerIP": "192.168.67.150"}),
    )
    .await?;
    create_lb(
        &client,
        "by-annotation",
        &[80],
        json!({"metallb.io/loadBalancerIPs": "192.168.67.151"}),
        json!({}),
    )
    .await?;
    expect_ip(&client, "by-spec", "192.168.67.150", "first-pool").await?;
    expect_ip(&client, "by-annotation", "192.168.67.151", "first-pool").await?;

    // An address outside every pool is refused and the Service stays pending.
    create_lb(
        &client,
        "outside",
        &[80],
        json!({"metallb.io/loadBalancerIPs": "10.9.9.9"}),
        json!({}),
    )
    .await?;
    let message = expect_event(&client, "outside", "AllocationFailed").await?;
    assert!(message.contains("10.9.9.9"), "{message}");
    assert_eq!(lb_state(&client, "outside").await?, (vec![], None));
    Ok(())
}

#[tokio::test]
async fn services_with_one_sharing_key_and_disjoint_ports_share_an_address() -> Result<()> {
    let (_server, client) = cluster().await?;
    seeds_pool(&client).await?;
    let shared = json!({"metallb.io/allow-shared-ip": "web"});
    create_lb(&client, "http", &[80], shared.clone(), json!({})).await?;
    expect_ip(&client, "http", "192.168.67.120", "first-pool").await?;
    create_lb(&client, "https", &[443], shared, json!({})).await?;
    expect_ip(&client, "https", "192.168.67.120", "first-pool").await?;

    // Port 80 on the shared address is taken.
    create_lb(
        &client,
        "clash",
        &[80],
        json!({"metallb.io/allow-shared-ip": "web", "metallb.io/loadBalancerIPs": "192.168.67.120"}),
        json!({}),
    )
    .await?;
    let message = expect_event(&client, "clash", "AllocationFailed").await?;
    assert!(message.contains("TCP/80"), "{message}");
    assert_eq!(lb_state(&client, "clash").await?, (vec![], None));
    Ok(())
}

#[tokio::test]
async fn exhausted_pool_leaves_a_service_pending_until_an_address_is_freed() -> Result<()> {
    let (_server, client) = cluster().await?;
    apply_pool(&client, "two", &["192.168.70.1-192.168.70.2"]).await?;
    create_lb(&client, "a", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "a", "192.168.70.1", "two").await?;
    create_lb(&client, "b", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "b", "192.168.70.2", "two").await?;
    create_lb(&client, "c", &[80], json!({}), json!({})).await?;
    let message = expect_event(&client, "c", "AllocationFailed").await?;
    assert_eq!(
        message,
        r#"Failed to allocate IP for "default/c": no available IPs"#
    );
    assert_eq!(lb_state(&client, "c").await?, (vec![], None));

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services.delete("a", &DeleteParams::default()).await?;
    expect_ip(&client, "c", "192.168.70.1", "two").await?;
    expect_ip(&client, "b", "192.168.70.2", "two").await?;
    Ok(())
}

#[tokio::test]
async fn changing_type_to_cluster_ip_releases_the_address_and_clears_status() -> Result<()> {
    let (_server, client) = cluster().await?;
    seeds_pool(&client).await?;
    create_lb(&client, "web", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "web", "192.168.67.120", "first-pool").await?;

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let patch = json!({"spec": {"type": "ClusterIP"}});
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for(WAIT, "web's status and annotation cleared", || async {
        (lb_state(&client, "web").await.ok()? == (vec![], None)).then_some(())
    })
    .await?;
    // The address is free again.
    create_lb(&client, "next", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "next", "192.168.67.120", "first-pool").await?;
    Ok(())
}

#[tokio::test]
async fn service_of_another_load_balancer_class_is_ignored() -> Result<()> {
    let (_server, client) = cluster().await?;
    seeds_pool(&client).await?;
    create_lb(
        &client,
        "other",
        &[80],
        json!({}),
        json!({"loadBalancerClass": "example.com/other"}),
    )
    .await?;
    // Synced after `other` (one worker, keys in watch order): once it has an address, `other`
    // has been looked at.
    create_lb(&client, "ours", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "ours", "192.168.67.120", "first-pool").await?;
    assert_eq!(lb_state(&client, "other").await?, (vec![], None));
    assert!(events(&client, "other", "IPAllocated").await?.is_empty());
    assert!(events(&client, "other", "AllocationFailed")
        .await?
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn restarting_the_controller_manager_keeps_every_assigned_address() -> Result<()> {
    let (mut server, client) = cluster().await?;
    seeds_pool(&client).await?;
    for (name, ip) in [
        ("a", "192.168.67.120"),
        ("b", "192.168.67.121"),
        ("c", "192.168.67.122"),
    ] {
        create_lb(&client, name, &[80], json!({}), json!({})).await?;
        expect_ip(&client, name, ip, "first-pool").await?;
    }
    expect_event(&client, "b", "IPAllocated").await?;

    // Stop the controllers; free the lowest address while they are down.
    server.controllers = None;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services.delete("a", &DeleteParams::default()).await?;

    let config = switchyard_controllers::Config {
        leader_elect: false,
        ..switchyard_controllers::Config::default()
    };
    let _restarted = switchyard_controllers::ControllerManager::start(
        server.controller_manager_client().await?,
        config,
    )?;
    // A new Service gets the freed address, not one the others hold, though the restarted
    // controller syncs them all.
    create_lb(&client, "d", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "d", "192.168.67.120", "first-pool").await?;
    expect_ip(&client, "b", "192.168.67.121", "first-pool").await?;
    expect_ip(&client, "c", "192.168.67.122", "first-pool").await?;
    for name in ["b", "c"] {
        assert_eq!(
            events(&client, name, "IPAllocated").await?,
            vec![(
                format!(
                    r#"Assigned IP ["192.168.67.12{}"]"#,
                    if name == "b" { 1 } else { 2 }
                ),
                1
            )],
            "{name} was not allocated again"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_new_pool_gives_pending_services_an_address() -> Result<()> {
    let (_server, client) = cluster().await?;
    apply_pool(&client, "one", &["192.168.70.1/32"]).await?;
    create_lb(&client, "a", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "a", "192.168.70.1", "one").await?;
    create_lb(&client, "b", &[80], json!({}), json!({})).await?;
    expect_event(&client, "b", "AllocationFailed").await?;

    apply_pool(&client, "more", &["192.168.71.0/30"]).await?;
    expect_ip(&client, "b", "192.168.71.0", "more").await?;
    expect_ip(&client, "a", "192.168.70.1", "one").await?;
    Ok(())
}

#[tokio::test]
async fn an_overlapping_pool_is_reported_and_left_out() -> Result<()> {
    let (_server, client) = cluster().await?;
    seeds_pool(&client).await?;
    // Sorted after `first-pool`, so this is the one left out.
    apply_pool(&client, "overlap", &["192.168.67.100-192.168.67.130"]).await?;
    let message = wait_for(
        WAIT,
        "an InvalidConfiguration Event on the pool",
        || async {
            let api: Api<Event> = Api::namespaced(client.clone(), "metallb-system");
            api.list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.involved_object.kind.as_deref() == Some("IPAddressPool")
                        && e.involved_object.name.as_deref() == Some("overlap")
                        && e.reason.as_deref() == Some("InvalidConfiguration")
                        && e.type_.as_deref() == Some("Warning")
                })
                .and_then(|e| e.message)
        },
    )
    .await?;
    assert!(message.contains("overlaps"), "{message}");
    // The valid pool still serves; the overlapping one hands out nothing.
    create_lb(
        &client,
        "low",
        &[80],
        json!({"metallb.io/loadBalancerIPs": "192.168.67.100"}),
        json!({}),
    )
    .await?;
    create_lb(&client, "web", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "web", "192.168.67.120", "first-pool").await?;
    expect_event(&client, "low", "AllocationFailed").await?;
    Ok(())
}

#[tokio::test]
async fn only_the_controller_manager_may_write_load_balancer_status() -> Result<()> {
    // CVE-2020-8554: whoever may write a Service's status could claim any address.
    let (_server, client) = cluster().await?;
    seeds_pool(&client).await?;
    create_lb(&client, "web", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "web", "192.168.67.120", "first-pool").await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let hijack = json!({"status": {"loadBalancer": {"ingress": [{"ip": "8.8.8.8"}]}}});
    let err = services
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&hijack))
        .await
        .expect_err("the admin set a load-balancer address");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403 && s.message.contains("status.loadBalancer")),
        "{err:?}"
    );
    // Other status fields stay writable.
    let conditions = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Test", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    services
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&conditions))
        .await?;
    expect_ip(&client, "web", "192.168.67.120", "first-pool").await?;
    Ok(())
}

#[tokio::test]
async fn status_outside_every_pool_is_replaced_after_a_restart() -> Result<()> {
    let (mut server, client) = cluster().await?;
    seeds_pool(&client).await?;
    create_lb(&client, "web", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "web", "192.168.67.120", "first-pool").await?;

    server.controllers = None;
    // A stale or broken instance of the controller manager (the only writer the API accepts)
    // left an address outside every pool.
    let services: Api<Service> =
        Api::namespaced(server.controller_manager_client().await?, "default");
    let hijack = json!({"status": {"loadBalancer": {"ingress": [{"ip": "8.8.8.8"}]}}});
    services
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&hijack))
        .await?;
    let config = switchyard_controllers::Config {
        leader_elect: false,
        ..switchyard_controllers::Config::default()
    };
    let _restarted = switchyard_controllers::ControllerManager::start(
        server.controller_manager_client().await?,
        config,
    )?;
    expect_ip(&client, "web", "192.168.67.120", "first-pool").await?;
    let message = expect_event(&client, "web", "ClearAssignment").await?;
    assert!(message.contains("8.8.8.8"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_converged_service_is_not_written_again() -> Result<()> {
    // (A no-op patch does not change the resourceVersion either; the unit test
    // `assigns_writes_status_and_annotation_once_then_writes_nothing` checks that none is sent.)
    let (_server, client) = cluster().await?;
    seeds_pool(&client).await?;
    create_lb(&client, "web", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "web", "192.168.67.120", "first-pool").await?;
    // Any change makes the controller sync `web` again.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let touched = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await?;
    // Synced after `web` (one worker, keys in watch order).
    create_lb(&client, "later", &[80], json!({}), json!({})).await?;
    expect_ip(&client, "later", "192.168.67.121", "first-pool").await?;
    let web = services.get("web").await?;
    assert_eq!(
        web.metadata.resource_version, touched.metadata.resource_version,
        "nothing written"
    );
    assert_eq!(events(&client, "web", "IPAllocated").await?.len(), 1);
    Ok(())
}
