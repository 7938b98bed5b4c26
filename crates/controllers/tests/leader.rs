//! Leader election between controller managers of several API servers over one store: exactly
//! one acts; killing the leading server hands the controllers to another within the lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use switchyard_controllers::leaderelection::{LeaderElection, LeaderElector};
use switchyard_store::memory::MemoryStore;
use switchyard_store::SharedStore;
use switchyard_testkit::{wait_for, InProcessServer};

async fn server(store: SharedStore, identity: &str) -> Result<InProcessServer> {
    let identity = identity.to_string();
    InProcessServer::start_with_controllers(
        store,
        |_| {},
        move |c| {
            c.identity = identity;
            c.lease_duration = Duration::from_secs(2);
            c.renew_deadline = Duration::from_millis(1500);
            c.retry_period = Duration::from_millis(300);
        },
    )
    .await
}

fn leading(s: &InProcessServer) -> bool {
    s.controllers.as_ref().is_some_and(|c| c.is_leading())
}

async fn holder(client: &kube::Client) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    api.get_opt("switchyard-controller-manager")
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn has_slice(client: &kube::Client, service: &str) -> bool {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .is_ok_and(|l| !l.items.is_empty())
}

async fn create_service(client: &kube::Client, name: &str) -> Result<()> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
    api.create(&PostParams::default(), &serde_json::from_value(svc)?)
        .await?;
    Ok(())
}

#[tokio::test]
async fn killing_the_leading_server_hands_the_controllers_to_another() -> Result<()> {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let mut servers = [
        Some(server(store.clone(), "server-a").await?),
        Some(server(store.clone(), "server-b").await?),
        Some(server(store.clone(), "server-c").await?),
    ];
    let client = servers[2]
        .as_ref()
        .map(|s| s.client())
        .expect("server")
        .await?;

    let first = wait_for(Duration::from_secs(10), "a leader", || async {
        let leaders: Vec<usize> = (0..3)
            .filter(|&i| servers[i].as_ref().is_some_and(leading))
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await?;
    let names = ["server-a", "server-b", "server-c"];
    assert_eq!(holder(&client).await.as_deref(), Some(names[first]));
    create_service(&client, "before").await?;
    wait_for(
        Duration::from_secs(10),
        "slice from the first leader",
        || async { has_slice(&client, "before").await.then_some(()) },
    )
    .await?;

    // Kill the leader (its API server and controllers stop at once, without releasing the Lease).
    let killed_at = Instant::now();
    servers[first] = None;
    let survivor_client = match servers.iter().flatten().next() {
        Some(s) => s.client().await?,
        None => unreachable!(),
    };
    let second = wait_for(Duration::from_secs(10), "a new leader", || async {
        let leaders: Vec<usize> = (0..3)
            .filter(|&i| servers[i].as_ref().is_some_and(leading))
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await?;
    let takeover = killed_at.elapsed();
    assert_ne!(second, first);
    assert_eq!(
        holder(&survivor_client).await.as_deref(),
        Some(names[second])
    );
    // The lease (2 s) must run out first; the takeover follows within a few retry periods.
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );

    create_service(&survivor_client, "after").await?;
    wait_for(
        Duration::from_secs(10),
        "slice from the new leader",
        || async { has_slice(&survivor_client, "after").await.then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_application_elects_one_replica_and_a_release_hands_over_at_once() -> Result<()> {
    let server = InProcessServer::start().await?;
    let client = server.client().await?;
    let elector = |id: &str| {
        LeaderElector::with_timings(
            id,
            jiff::SignedDuration::from_secs(30),
            jiff::SignedDuration::from_secs(20),
            jiff::SignedDuration::from_millis(200),
        )
    };
    let mut a = LeaderElection::new(client.clone(), "default", "my-app", elector("a")?).spawn();
    a.wait_leading().await;
    let mut b = LeaderElection::new(client.clone(), "default", "my-app", elector("b")?).spawn();
    // b cannot lead while a holds a 30 s lease...
    let waited = tokio::time::timeout(Duration::from_secs(1), b.wait_leading()).await;
    assert!(waited.is_err(), "b led while a held the lease");
    assert!(a.is_leading());
    // ...but a's release hands over within a retry period or two.
    let released = Instant::now();
    a.release().await?;
    tokio::time::timeout(Duration::from_secs(5), b.wait_leading()).await?;
    assert!(released.elapsed() < Duration::from_secs(2));
    assert_eq!(holder_of(&client, "my-app").await.as_deref(), Some("b"));
    Ok(())
}

async fn holder_of(client: &kube::Client, name: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    api.get_opt(name).await.ok()??.spec?.holder_identity
}
