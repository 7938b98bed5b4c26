//! The scheduler, node lifecycle and node IPAM controllers through a real API server. The test
//! plays the node agents: it registers Nodes with `Ready=True` and renews their Leases in
//! `kube-node-lease` from a background task, and stops renewing to simulate a node failure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard_store::memory::MemoryStore;
use switchyard_testkit::{wait_for, InProcessServer};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

async fn cluster(
    tweak: impl FnOnce(&mut switchyard_controllers::Config),
) -> Result<(InProcessServer, kube::Client)> {
    let server = InProcessServer::start_with_controllers(
        Arc::new(MemoryStore::new()),
        |_| {},
        |c| {
            c.leader_elect = false;
            c.node_monitor_grace_period = Duration::from_secs(2);
            c.node_monitor_period = Duration::from_millis(200);
            c.pod_eviction_timeout = Duration::from_secs(60);
            tweak(c);
        },
    )
    .await?;
    let client = server.client().await?;
    Ok((server, client))
}

/// A node agent: the Node it registered and the task renewing its Lease (aborted on drop).
struct Agent {
    heartbeat: JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl Agent {
    fn stop(&self) {
        self.heartbeat.abort();
    }
}

/// Posts `Ready=True` with a fresh heartbeat, as the agent does when it starts (or recovers).
async fn post_ready(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady",
         "message": "kubelet is posting ready status",
         "lastHeartbeatTime": now, "lastTransitionTime": now}
    ]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn renew(leases: &Api<Lease>, name: &str) -> Result<()> {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    match leases.get_opt(name).await? {
        None => {
            leases.create(&PostParams::default(), &lease).await?;
        }
        Some(_) => {
            let patch = json!({"spec": lease.spec});
            leases
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(())
}

/// Registers a Ready node with `labels` (cordoned if `unschedulable`) and starts its heartbeat.
async fn start_node(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
    unschedulable: bool,
) -> Result<Agent> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": unschedulable},
    });
    nodes
        .create(&PostParams::default(), &serde_json::from_value(node)?)
        .await?;
    post_ready(client, name).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    renew(&leases, name).await?;
    let name = name.to_string();
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Err(e) = renew(&leases, &name).await {
                eprintln!("renewing lease of {name}: {e}");
            }
        }
    });
    Ok(Agent { heartbeat })
}

async fn create_pod(client: &kube::Client, name: &str, spec: serde_json::Value) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "echo"}]},
    });
    if let (Some(base), Some(extra)) = (pod["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    Ok(())
}

/// Marks a Pod Running and Ready, as its node agent would.
async fn set_running(client: &kube::Client, name: &str, ip: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn node_name_of(client: &kube::Client, pod: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.get_opt(pod)
        .await
        .ok()
        .flatten()?
        .spec?
        .node_name
        .filter(|n| !n.is_empty())
}

fn condition(pod: &Pod, kind: &str) -> Option<(String, Option<String>, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn node_condition(node: &Node, kind: &str) -> Option<(String, Option<String>, Option<String>)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn taints(node: &Node) -> BTreeSet<(String, String)> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect()
}

async fn pod_cidr(client: &kube::Client, node: &str) -> Option<(String, Vec<String>)> {
    let nodes: Api<Node> = Api::all(client.clone());
    let spec = nodes.get_opt(node).await.ok().flatten()?.spec?;
    Some((spec.pod_cidr?, spec.pod_cidrs?))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The ready addresses of a Service's EndpointSlices.
async fn ready_endpoints(client: &kube::Client, service: &str) -> BTreeSet<String> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let Ok(slices) = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
    else {
        return BTreeSet::new();
    };
    slices
        .items
        .into_iter()
        .flat_map(|s| s.endpoints)
        .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|ep| ep.addresses)
        .collect()
}

async fn events(client: &kube::Client, ns: &str, object: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(object) && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

#[tokio::test]
async fn nodes_get_distinct_pod_cidrs_and_a_deleted_nodes_cidr_goes_to_a_waiting_node() -> Result<()>
{
    // Two /24s in the range: the third node has to wait for one to be released.
    let (_server, client) = cluster(|c| c.cluster_cidr = "10.244.0.0/23".to_string()).await?;
    let _a = start_node(&client, "node-a", json!({}), false).await?;
    let _b = start_node(&client, "node-b", json!({}), false).await?;
    let a = wait_for(WAIT, "node-a's pod CIDR", || pod_cidr(&client, "node-a")).await?;
    let b = wait_for(WAIT, "node-b's pod CIDR", || pod_cidr(&client, "node-b")).await?;
    let range: BTreeSet<String> = ["10.244.0.0/24", "10.244.1.0/24"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_ne!(a.0, b.0);
    assert_eq!(a.1, vec![a.0.clone()]);
    assert_eq!(b.1, vec![b.0.clone()]);
    assert_eq!(BTreeSet::from([a.0.clone(), b.0.clone()]), range);

    let _c = start_node(&client, "node-c", json!({}), false).await?;
    wait_for(WAIT, "a CIDRNotAvailable event for node-c", || async {
        (!events(&client, "default", "node-c", "CIDRNotAvailable")
            .await
            .is_empty())
        .then_some(())
    })
    .await?;
    assert_eq!(pod_cidr(&client, "node-c").await, None);

    let nodes: Api<Node> = Api::all(client.clone());
    nodes.delete("node-a", &DeleteParams::default()).await?;
    let c = wait_for(WAIT, "node-c's pod CIDR", || pod_cidr(&client, "node-c")).await?;
    assert_eq!(c.0, a.0, "node-c gets the CIDR node-a released");
    Ok(())
}

#[tokio::test]
async fn restarted_controllers_restore_allocations_and_never_hand_out_a_held_cidr() -> Result<()> {
    let store: switchyard_store::SharedStore = Arc::new(MemoryStore::new());
    let start = |store: switchyard_store::SharedStore| {
        InProcessServer::start_with_controllers(
            store,
            |_| {},
            |c| {
                c.leader_elect = false;
                c.cluster_cidr = "10.244.0.0/23".to_string();
            },
        )
    };
    let first = start(store.clone()).await?;
    let client = first.client().await?;
    let _z = start_node(&client, "node-z", json!({}), false).await?;
    let z = wait_for(WAIT, "node-z's pod CIDR", || pod_cidr(&client, "node-z")).await?;
    assert_eq!(z.0, "10.244.0.0/24");
    drop(first);

    // node-b registers while no controller runs, so the restarted one lists both nodes at once
    // and, in name order, reaches node-b first: a fresh allocator would hand it 10.244.0.0/24.
    let bare = InProcessServer::start_with(store.clone(), |_| {}).await?;
    let _b = start_node(&bare.client().await?, "node-b", json!({}), false).await?;
    drop(bare);
    let second = start(store).await?;
    let client = second.client().await?;
    let b = wait_for(WAIT, "node-b's pod CIDR", || pod_cidr(&client, "node-b")).await?;
    assert_eq!(b.0, "10.244.1.0/24");
    assert_eq!(pod_cidr(&client, "node-z").await, Some(z));
    Ok(())
}

#[tokio::test]
async fn pods_spread_across_ready_nodes_and_a_cordoned_node_receives_none() -> Result<()> {
    let (_server, client) = cluster(|_| {}).await?;
    let mut agents = Vec::new();
    for name in ["node-1", "node-2", "node-3"] {
        agents.push(start_node(&client, name, json!({}), false).await?);
    }
    agents.push(start_node(&client, "cordoned", json!({}), true).await?);
    for i in 0..6 {
        create_pod(&client, &format!("web-{i}"), json!({})).await?;
    }
    let placement = wait_for(WAIT, "all six pods bound", || async {
        let mut placement = BTreeMap::new();
        for i in 0..6 {
            let pod = format!("web-{i}");
            placement.insert(pod.clone(), node_name_of(&client, &pod).await?);
        }
        Some(placement)
    })
    .await?;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in placement.values() {
        *per_node.entry(node.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        per_node,
        BTreeMap::from([("node-1", 2), ("node-2", 2), ("node-3", 2)]),
        "{placement:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = pods.get("web-0").await?;
    assert_eq!(
        condition(&pod, "PodScheduled").map(|c| c.0),
        Some("True".to_string())
    );
    wait_for(WAIT, "a Scheduled event", || async {
        (!events(&client, "default", "web-0", "Scheduled")
            .await
            .is_empty())
        .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn pod_whose_node_selector_matches_no_node_waits_until_a_matching_node_appears() -> Result<()>
{
    let (_server, client) = cluster(|_| {}).await?;
    let _plain = start_node(&client, "plain", json!({"disk": "hdd"}), false).await?;
    create_pod(&client, "db", json!({"nodeSelector": {"disk": "ssd"}})).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let scheduled = wait_for(WAIT, "PodScheduled=False", || async {
        let pod = pods.get_opt("db").await.ok().flatten()?;
        condition(&pod, "PodScheduled").filter(|c| c.0 == "False")
    })
    .await?;
    assert_eq!(scheduled.1.as_deref(), Some("Unschedulable"));
    assert_eq!(
        scheduled.2.as_deref(),
        Some("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")
    );
    wait_for(WAIT, "a FailedScheduling event", || async {
        let found = events(&client, "default", "db", "FailedScheduling").await;
        found
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning"))
            .then_some(())
    })
    .await?;
    assert_eq!(node_name_of(&client, "db").await, None);

    let _fast = start_node(&client, "fast", json!({"disk": "ssd"}), false).await?;
    let node = wait_for(WAIT, "db bound", || node_name_of(&client, "db")).await?;
    assert_eq!(node, "fast");
    Ok(())
}

#[tokio::test]
async fn node_whose_lease_stops_becomes_unknown_and_its_pods_are_evicted() -> Result<()> {
    let (_server, client) = cluster(|c| c.pod_eviction_timeout = Duration::from_secs(3)).await?;
    let dying = start_node(&client, "dying", json!({}), false).await?;
    let _healthy = start_node(&client, "healthy", json!({}), false).await?;
    for (pod, node, ip) in [("a", "dying", "10.244.0.5"), ("b", "healthy", "10.244.1.5")] {
        create_pod(&client, pod, json!({"nodeName": node})).await?;
        set_running(&client, pod, ip).await?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    });
    services
        .create(&PostParams::default(), &serde_json::from_value(service)?)
        .await?;
    wait_for(WAIT, "both pods ready in the EndpointSlices", || async {
        (ready_endpoints(&client, "web").await == set(&["10.244.0.5", "10.244.1.5"])).then_some(())
    })
    .await?;

    dying.stop();
    let stopped = std::time::Instant::now();
    let ready = wait_for(WAIT, "dying to become Ready=Unknown", || async {
        let node = nodes.get_opt("dying").await.ok().flatten()?;
        node_condition(&node, "Ready").filter(|c| c.0 == "Unknown")
    })
    .await?;
    // Within the grace period plus a few monitor periods (and the last renewal's age).
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(ready.1.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.2.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let node = nodes.get("dying").await?;
    for kind in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(
            node_condition(&node, kind).map(|c| c.0),
            Some("Unknown".to_string()),
            "{kind}"
        );
    }
    wait_for(WAIT, "unreachable taints on dying", || async {
        let node = nodes.get_opt("dying").await.ok().flatten()?;
        let t = taints(&node);
        (t.contains(&(
            "node.kubernetes.io/unreachable".to_string(),
            "NoExecute".to_string(),
        )) && t.contains(&(
            "node.kubernetes.io/unreachable".to_string(),
            "NoSchedule".to_string(),
        )))
        .then_some(())
    })
    .await?;
    wait_for(WAIT, "pod a marked not ready", || async {
        let pod = pods.get_opt("a").await.ok().flatten()?;
        condition(&pod, "Ready").filter(|c| c.0 == "False")
    })
    .await?;
    wait_for(WAIT, "pod a's endpoint no longer ready", || async {
        (ready_endpoints(&client, "web").await == set(&["10.244.1.5"])).then_some(())
    })
    .await?;

    wait_for(WAIT, "pod a evicted", || async {
        match pods.get_opt("a").await {
            Ok(None) => Some(()),
            Ok(Some(p)) => p.metadata.deletion_timestamp.map(|_| ()),
            Err(_) => None,
        }
    })
    .await?;
    assert!(
        stopped.elapsed() >= Duration::from_secs(3),
        "evicted before the timeout: {:?}",
        stopped.elapsed()
    );
    let b = pods.get("b").await?;
    assert!(b.metadata.deletion_timestamp.is_none());
    assert_eq!(
        condition(&b, "Ready").map(|c| c.0),
        Some("True".to_string())
    );
    let healthy = nodes.get("healthy").await?;
    assert_eq!(
        node_condition(&healthy, "Ready").map(|c| c.0),
        Some("True".to_string())
    );
    assert!(taints(&healthy).is_empty());
    Ok(())
}

#[tokio::test]
async fn recovered_node_loses_its_taints_and_keeps_its_pods() -> Result<()> {
    let (_server, client) = cluster(|_| {}).await?;
    let flaky = start_node(&client, "flaky", json!({}), false).await?;
    create_pod(&client, "p", json!({"nodeName": "flaky"})).await?;
    set_running(&client, "p", "10.244.0.7").await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    flaky.stop();
    wait_for(WAIT, "flaky tainted unreachable", || async {
        let node = nodes.get_opt("flaky").await.ok().flatten()?;
        taints(&node)
            .contains(&(
                "node.kubernetes.io/unreachable".to_string(),
                "NoExecute".to_string(),
            ))
            .then_some(())
    })
    .await?;
    wait_for(WAIT, "pod p marked not ready", || async {
        let pod = pods.get_opt("p").await.ok().flatten()?;
        condition(&pod, "Ready").filter(|c| c.0 == "False")
    })
    .await?;
    // A new pod is not scheduled onto the unreachable node.
    create_pod(&client, "newcomer", json!({})).await?;

    let _back = start_node_again(&client, "flaky").await?;
    wait_for(WAIT, "flaky's taints removed", || async {
        let node = nodes.get_opt("flaky").await.ok().flatten()?;
        taints(&node).is_empty().then_some(())
    })
    .await?;
    let node = wait_for(WAIT, "newcomer bound once flaky is back", || {
        node_name_of(&client, "newcomer")
    })
    .await?;
    assert_eq!(node, "flaky");
    let p = pods.get("p").await?;
    assert!(p.metadata.deletion_timestamp.is_none());
    Ok(())
}

/// The agent of an existing node coming back: posts Ready and renews its Lease again.
async fn start_node_again(client: &kube::Client, name: &str) -> Result<Agent> {
    post_ready(client, name).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    renew(&leases, name).await?;
    let name = name.to_string();
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let _ = renew(&leases, &name).await;
        }
    });
    Ok(Agent { heartbeat })
}
