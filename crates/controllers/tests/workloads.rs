//! The ReplicaSet and Deployment controllers and the garbage collector through a real API server
//! (in process, memory store), following Kubernetes' e2e checks (test/e2e/apps/deployment.go,
//! replica_set.go, garbage_collector.go). There is no node agent: Pods are created bound to a
//! node by their template, and a background task plays the kubelet, marking every new Pod
//! Running and Ready with an IP.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use switchyard_store::memory::MemoryStore;
use switchyard_testkit::{wait_for, InProcessServer, Kubectl};

const WAIT: Duration = Duration::from_secs(30);
const NS: &str = "default";

async fn cluster() -> Result<(InProcessServer, kube::Client)> {
    // RUST_LOG=switchyard_controllers=debug shows the controllers' logs of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let server = InProcessServer::start_with_controllers(
        Arc::new(MemoryStore::new()),
        |_| {},
        |c| c.leader_elect = false,
    )
    .await?;
    let client = server.client().await?;
    Ok((server, client))
}

/// Plays the kubelet: every Pod that appears not Ready and not terminating is marked Running and
/// Ready with a fresh IP; terminating Pods are removed at once. Stops when dropped.
struct FakeKubelet(tokio::task::JoinHandle<()>);

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn kubelet(client: &kube::Client) -> FakeKubelet {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let next_ip = Arc::new(AtomicU32::new(1));
    FakeKubelet(tokio::spawn(async move {
        let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let pod = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                _ => continue,
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                // Stops the containers at once and lets the Pod go.
                let _ = api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            if is_ready(&pod) {
                continue;
            }
            let n = next_ip.fetch_add(1, Ordering::Relaxed);
            let ip = format!("10.244.{}.{}", n / 250, n % 250 + 1);
            let now = jiff::Timestamp::now().to_string();
            let status = json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }});
            // A Pod deleted meanwhile is fine to miss.
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        }
    }))
}

fn deployment(name: &str, replicas: i32, image: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"nodeName": "node-1",
                         "containers": [{"name": "app", "image": image}]}
            }
        }
    }))?)
}

async fn create_deployment(
    client: &kube::Client,
    name: &str,
    replicas: i32,
    image: &str,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    api.create(&PostParams::default(), &deployment(name, replicas, image)?)
        .await?;
    Ok(())
}

/// Pods of the Deployment's app that are not terminating.
async fn active_pods(client: &kube::Client, app: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pods = api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

fn image_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Waits until the Deployment is rolled out as `kubectl rollout status` judges it, with
/// `replicas` Pods, all ready and available; returns it.
async fn wait_rolled_out(client: &kube::Client, name: &str, replicas: i32) -> Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_for(
        WAIT,
        &format!("deployment {name} rolled out with {replicas} available replicas"),
        || async {
            let d = api.get(name).await.ok()?;
            let s = d.status.clone()?;
            let want = Some(replicas);
            let done = s.observed_generation >= d.metadata.generation
                && d.spec.as_ref()?.replicas == want
                && s.replicas == want
                && s.updated_replicas == want
                && s.ready_replicas == want
                && s.available_replicas == want;
            done.then_some(d)
        },
    )
    .await
}

fn condition(d: &Deployment, type_: &str) -> Option<(String, String)> {
    let c = d
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}

async fn replica_sets(client: &kube::Client, app: &str) -> Result<Vec<ReplicaSet>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    Ok(api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items)
}

#[tokio::test]
async fn a_deployment_of_six_replicas_runs_six_available_pods() -> Result<()> {
    let (_server, client) = cluster().await?;
    create_deployment(&client, "web", 6, "nginx:1").await?;
    // Without a kubelet the Pods exist but nothing is ready.
    let pods = wait_for(WAIT, "six pods", || async {
        active_pods(&client, "web")
            .await
            .ok()
            .filter(|p| p.len() == 6)
    })
    .await?;
    let rss = replica_sets(&client, "web").await?;
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let rs_name = rs.metadata.name.clone().unwrap_or_default();
    let hash = rs
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .cloned()
        .expect("pod-template-hash label");
    assert_eq!(rs_name, format!("web-{hash}"));
    assert_eq!(
        rs.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("1")
    );
    for pod in &pods {
        let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ReplicaSet", rs_name.as_str(), Some(true))
        );
        assert!(pod
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with(&format!("{rs_name}-"))));
        assert_eq!(
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash")),
            Some(&hash)
        );
    }

    let _kubelet = kubelet(&client);
    let d = wait_rolled_out(&client, "web", 6).await?;
    // Expectations kept the ReplicaSet from acting on a cache without its own creates: no Pod
    // was ever created beyond the six (an extra one would still be listed, terminating).
    let all: Api<Pod> = Api::namespaced(client.clone(), NS);
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 6);
    let s = d.status.clone().unwrap_or_default();
    assert_eq!(s.unavailable_replicas.unwrap_or(0), 0);
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    let progressing = wait_for(WAIT, "Progressing NewReplicaSetAvailable", || async {
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let d = api.get("web").await.ok()?;
        condition(&d, "Progressing").filter(|c| c.1 == "NewReplicaSetAvailable")
    })
    .await?;
    assert_eq!(progressing.0, "True");
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("1")
    );
    Ok(())
}

#[tokio::test]
async fn scaling_through_the_scale_subresource_goes_to_two_and_back_to_five() -> Result<()> {
    let (_server, client) = cluster().await?;
    let _kubelet = kubelet(&client);
    create_deployment(&client, "web", 6, "nginx:1").await?;
    wait_rolled_out(&client, "web", 6).await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    for replicas in [2, 5] {
        api.patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
        )
        .await?;
        wait_rolled_out(&client, "web", replicas).await?;
        let n = wait_for(WAIT, &format!("{replicas} active pods"), || async {
            let n = active_pods(&client, "web").await.ok()?.len();
            (n == usize::try_from(replicas).ok()?).then_some(n)
        })
        .await?;
        assert_eq!(n, usize::try_from(replicas)?);
        let scale = api.get_scale("web").await?;
        assert_eq!(scale.status.map(|s| s.replicas), Some(replicas));
    }
    assert_eq!(replica_sets(&client, "web").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_rolling_update_replaces_every_pod_with_the_new_template() -> Result<()> {
    let (_server, client) = cluster().await?;
    let _kubelet = kubelet(&client);
    create_deployment(&client, "web", 6, "nginx:1").await?;
    wait_rolled_out(&client, "web", 6).await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let d = wait_for(WAIT, "every pod on nginx:2", || async {
        let pods = active_pods(&client, "web").await.ok()?;
        let images: BTreeSet<String> = pods.iter().map(image_of).collect();
        (pods.len() == 6 && images == BTreeSet::from(["nginx:2".to_string()])).then_some(())
    })
    .await;
    d?;
    let d = wait_rolled_out(&client, "web", 6).await?;
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("2")
    );
    let rss = replica_sets(&client, "web").await?;
    assert_eq!(rss.len(), 2, "the old ReplicaSet stays, scaled to zero");
    let sizes: BTreeSet<(String, i32)> = rss
        .iter()
        .map(|rs| {
            (
                rs.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                    .cloned()
                    .unwrap_or_default(),
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        BTreeSet::from([("1".to_string(), 0), ("2".to_string(), 6)])
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_deployment_collects_its_replica_sets_and_pods() -> Result<()> {
    let (_server, client) = cluster().await?;
    let _kubelet = kubelet(&client);
    create_deployment(&client, "web", 3, "nginx:1").await?;
    wait_rolled_out(&client, "web", 3).await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    api.delete("web", &DeleteParams::default()).await?;
    wait_for(WAIT, "replica sets collected", || async {
        replica_sets(&client, "web")
            .await
            .ok()
            .filter(|r| r.is_empty())
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for(WAIT, "pods collected", || async {
        pods.list(&ListParams::default())
            .await
            .ok()
            .filter(|p| p.items.is_empty())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_set_replaces_deleted_pods_and_adopts_matching_orphans() -> Result<()> {
    let (_server, client) = cluster().await?;
    // An orphan that matches the selector is adopted and counts as one of the three.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "orphan", "labels": {"app": "db"}},
            "spec": {"containers": [{"name": "app", "image": "db"}]}
        }))?,
    )
    .await?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    rs_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "db"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "db"}},
                         "template": {"metadata": {"labels": {"app": "db"}},
                                      "spec": {"containers": [{"name": "app", "image": "db"}]}}}
            }))?,
        )
        .await?;
    let owned = wait_for(WAIT, "three pods owned by the ReplicaSet", || async {
        let p = active_pods(&client, "db").await.ok()?;
        let owned = p
            .iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.name == "db" && r.controller == Some(true))
            })
            .count();
        (p.len() == 3 && owned == 3).then_some(p)
    })
    .await?;
    let adopted = owned
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("orphan"))
        .expect("the orphan is one of the three");
    // Adoption patches the owner references only: the Pod keeps everything else.
    assert_eq!(image_of(adopted), "db");
    // Unscheduled Pods are deleted at once; the ReplicaSet makes a new one.
    pods.delete("orphan", &DeleteParams::default()).await?;
    wait_for(WAIT, "a replacement pod", || async {
        let p = active_pods(&client, "db").await.ok()?;
        (p.len() == 3
            && p.iter()
                .all(|p| p.metadata.name.as_deref() != Some("orphan")))
        .then_some(())
    })
    .await?;
    let rs = wait_for(WAIT, "status replicas 3", || async {
        let rs = rs_api.get("db").await.ok()?;
        let s = rs.status.clone()?;
        (s.replicas == 3 && s.fully_labeled_replicas == Some(3) && s.observed_generation == Some(1))
            .then_some(rs)
    })
    .await?;
    assert_eq!(rs.status.and_then(|s| s.ready_replicas).unwrap_or(0), 0);
    Ok(())
}

#[tokio::test]
async fn kubectl_scale_and_rollout_status_work() -> Result<()> {
    let Some(binary) = switchyard_testkit::kubectl_path() else {
        return Ok(());
    };
    let (server, client) = cluster().await?;
    let _kubelet = kubelet(&client);
    create_deployment(&client, "web", 3, "nginx:1").await?;
    let kubectl = Kubectl::new(binary, server.kubeconfig());
    let run = |args: Vec<&'static str>| {
        let kubectl = kubectl.clone();
        tokio::task::spawn_blocking(move || kubectl.ok(&args))
    };
    let out = run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await??;
    assert!(out.contains("successfully rolled out"), "{out}");
    run(vec!["scale", "deployment/web", "--replicas=5"]).await??;
    let out = run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await??;
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_rolled_out(&client, "web", 5).await?;
    run(vec!["set", "image", "deployment/web", "app=nginx:2"]).await??;
    let out = run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await??;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = active_pods(&client, "web").await?;
    assert!(pods.iter().all(|p| image_of(p) == "nginx:2"));

    // Undo goes back to revision 2's template: its ReplicaSet is reused as revision 4.
    let history = run(vec!["rollout", "history", "deployment/web"]).await??;
    assert!(history.contains('1') && history.contains('2'), "{history}");
    run(vec!["rollout", "undo", "deployment/web"]).await??;
    let out = run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await??;
    assert!(out.contains("successfully rolled out"), "{out}");
    let rss = replica_sets(&client, "web").await?;
    assert_eq!(rss.len(), 2, "no third ReplicaSet for a known template");
    let d: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let d = d.get("web").await?;
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("3")
    );
    let pods = active_pods(&client, "web").await?;
    assert!(pods.iter().all(|p| image_of(p) == "nginx:1"));

    // A paused Deployment keeps its Pods through a template change until resumed.
    run(vec!["rollout", "pause", "deployment/web"]).await??;
    run(vec!["set", "image", "deployment/web", "app=nginx:3"]).await??;
    let d: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_for(WAIT, "the paused condition", || async {
        let d = d.get("web").await.ok()?;
        (condition(&d, "Progressing")? == ("Unknown".to_string(), "DeploymentPaused".to_string())
            && d.status.as_ref()?.observed_generation >= d.metadata.generation)
            .then_some(())
    })
    .await?;
    assert_eq!(replica_sets(&client, "web").await?.len(), 2);
    run(vec!["rollout", "resume", "deployment/web"]).await??;
    let out = run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await??;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = active_pods(&client, "web").await?;
    assert!(pods.iter().all(|p| image_of(p) == "nginx:3"));
    Ok(())
}

#[tokio::test]
async fn recreate_replaces_all_pods_without_overlap() -> Result<()> {
    let (_server, client) = cluster().await?;
    let _kubelet = kubelet(&client);
    let mut d = deployment("batch", 3, "worker:1")?;
    d.spec.as_mut().expect("spec").strategy =
        Some(serde_json::from_value(json!({"type": "Recreate"}))?);
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    api.create(&PostParams::default(), &d).await?;
    wait_rolled_out(&client, "batch", 3).await?;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "worker:2"}]}}}});
    api.patch("batch", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    // Record every Pod image seen alive together until the rollout completes.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    wait_for(WAIT, "every pod on worker:2", || {
        let pods = pods.clone();
        let seen_mixed = mixed.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=batch"))
                .await
                .ok()?;
            let images: BTreeSet<String> = list.items.iter().map(image_of).collect();
            if images.len() > 1 {
                seen_mixed.store(true, Ordering::Relaxed);
            }
            (list.items.len() == 3 && images == BTreeSet::from(["worker:2".to_string()]))
                .then_some(())
        }
    })
    .await?;
    assert!(
        !mixed.load(Ordering::Relaxed),
        "Recreate never runs old and new Pods together"
    );
    wait_rolled_out(&client, "batch", 3).await?;
    Ok(())
}

#[tokio::test]
async fn slices_lose_vanished_owners_and_go_when_none_is_left() -> Result<()> {
    let (_server, client) = cluster().await?;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "owner"},
                "spec": {"ports": [{"port": 80}]}
            }))?,
        )
        .await?;
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let owner = |kind: &str, name: &str, uid: &str| json!({"apiVersion": "v1", "kind": kind, "name": name, "uid": uid});
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    for (name, owners) in [
        ("orphaned", json!([owner("Service", "gone", "uid-gone")])),
        (
            "shared",
            json!([
                owner("Service", "owner", &uid),
                owner("Endpoints", "gone", "uid-gone-2")
            ]),
        ),
    ] {
        slices
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "ownerReferences": owners},
                    "addressType": "IPv4", "endpoints": []
                }))?,
            )
            .await?;
    }
    wait_for(WAIT, "the slice without owners deleted", || async {
        slices
            .get_opt("orphaned")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    let shared = wait_for(WAIT, "the dangling owner removed", || async {
        let s = slices.get_opt("shared").await.ok()??;
        (s.metadata.owner_references.as_ref()?.len() == 1).then_some(s)
    })
    .await?;
    assert_eq!(
        shared
            .metadata
            .owner_references
            .as_ref()
            .map(|r| r[0].uid.clone()),
        Some(uid)
    );
    services.delete("owner", &DeleteParams::default()).await?;
    wait_for(WAIT, "the slice deleted with its last owner", || async {
        slices.get_opt("shared").await.ok()?.is_none().then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_converged_deployment_is_not_written_again_by_a_resync() -> Result<()> {
    let (server, client) = cluster().await?;
    let _kubelet = kubelet(&client);
    create_deployment(&client, "web", 3, "nginx:1").await?;
    wait_rolled_out(&client, "web", 3).await?;
    wait_for(WAIT, "Progressing NewReplicaSetAvailable", || async {
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let d = api.get("web").await.ok()?;
        condition(&d, "Progressing").filter(|c| c.1 == "NewReplicaSetAvailable")
    })
    .await?;
    let manager = server.controllers.as_ref().expect("controllers");
    wait_for(WAIT, "controllers idle", || async {
        manager.is_idle().then_some(())
    })
    .await?;
    let versions = || async {
        let d: Api<Deployment> = Api::namespaced(client.clone(), NS);
        let mut rvs = vec![d.get("web").await?.metadata.resource_version];
        rvs.extend(
            replica_sets(&client, "web")
                .await?
                .into_iter()
                .map(|r| r.metadata.resource_version),
        );
        rvs.extend(
            active_pods(&client, "web")
                .await?
                .into_iter()
                .map(|p| p.metadata.resource_version),
        );
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

#[tokio::test]
async fn a_large_replica_set_creates_exactly_its_replicas() -> Result<()> {
    let (server, client) = cluster().await?;
    // No kubelet: a surplus Pod, once deleted, would stay listed as terminating.
    create_deployment(&client, "big", 120, "nginx:1").await?;
    wait_for(WAIT, "120 pods", || async {
        active_pods(&client, "big")
            .await
            .ok()
            .filter(|p| p.len() == 120)
    })
    .await?;
    let manager = server.controllers.as_ref().expect("controllers");
    wait_for(WAIT, "controllers idle", || async {
        manager.is_idle().then_some(())
    })
    .await?;
    let all: Api<Pod> = Api::namespaced(client.clone(), NS);
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 120);
    let rs = replica_sets(&client, "big").await?;
    assert_eq!(rs[0].status.as_ref().map(|s| s.replicas), Some(120));
    Ok(())
}

/// Deletes the Deployment after giving it the finalizer `kubectl delete --cascade=...` asks
/// kube-apiserver to add.
/// Deletes the Deployment with a propagation policy; the API server turns it into the
/// `orphan` or `foregroundDeletion` finalizer the garbage collector acts on.
async fn delete_with(client: &kube::Client, name: &str, params: DeleteParams) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    api.delete(name, &params).await?;
    Ok(())
}

#[tokio::test]
async fn orphan_deletion_keeps_the_replica_set_and_pods_without_the_owner() -> Result<()> {
    let (_server, client) = cluster().await?;
    let _kubelet = kubelet(&client);
    create_deployment(&client, "web", 2, "nginx:1").await?;
    wait_rolled_out(&client, "web", 2).await?;
    delete_with(&client, "web", DeleteParams::orphan()).await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_for(WAIT, "the deployment gone", || async {
        api.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await?;
    let rss = replica_sets(&client, "web").await?;
    assert_eq!(rss.len(), 1);
    assert!(rss[0]
        .metadata
        .owner_references
        .as_ref()
        .is_none_or(|r| r.is_empty()));
    // Nothing collects the orphan afterwards.
    let manager = _server.controllers.as_ref().expect("controllers");
    manager.resync();
    wait_for(WAIT, "controllers idle", || async {
        manager.is_idle().then_some(())
    })
    .await?;
    assert_eq!(replica_sets(&client, "web").await?.len(), 1);
    assert_eq!(active_pods(&client, "web").await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn foreground_deletion_removes_the_replica_sets_before_the_deployment() -> Result<()> {
    let (_server, client) = cluster().await?;
    let _kubelet = kubelet(&client);
    create_deployment(&client, "web", 2, "nginx:1").await?;
    wait_rolled_out(&client, "web", 2).await?;
    delete_with(&client, "web", DeleteParams::foreground()).await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    wait_for(WAIT, "the deployment gone", || async {
        api.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await?;
    assert!(
        replica_sets(&client, "web").await?.is_empty(),
        "the owner went only after its dependents"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for(WAIT, "pods collected", || async {
        pods.list(&ListParams::default())
            .await
            .ok()
            .filter(|p| p.items.is_empty())
    })
    .await?;
    Ok(())
}
