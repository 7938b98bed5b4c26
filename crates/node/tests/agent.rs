//! The node agent against an in-process API server with its controllers (scheduler, podcidr,
//! endpointslice), in a fresh node network namespace: registration, Lease, a pod's whole life
//! (IP from the podCIDR, service env vars, readiness via an HTTP probe, EndpointSlice,
//! liveness restart, agent restart keeping the pod, graceful deletion with SIGTERM).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use switchyard_netns::{NetNs, NsGuard};
use switchyard_node::agent::{Agent, Timings};
use switchyard_node::Config;
use switchyard_testkit::{wait_for, InProcessServer};

const WAIT: Duration = Duration::from_secs(40);

fn timings() -> Timings {
    Timings {
        lease_renew_interval: Duration::from_millis(500),
        lease_duration_seconds: 5,
        status_update_interval: Duration::from_secs(1),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(4),
    }
}

/// A node namespace with `node_ip` on one end of a veth pair (the node's "LAN"; the machine
/// may lack the dummy module).
async fn node_namespace(guard: &mut NsGuard, node_ip: &str) -> Result<NetNs> {
    let ns = guard.create(&switchyard_netns::unique_name("na")).await?;
    ns.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ])
    .await?;
    ns.ip(&["link", "set", "lan1", "up"]).await?;
    ns.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", "lan0"])
        .await?;
    ns.ip(&["link", "set", "lan0", "up"]).await?;
    Ok(ns)
}

fn config(ns: &NetNs, node_ip: &str, root: &Path) -> Config {
    Config {
        node_name: "node-a".into(),
        node_ip: node_ip.parse().expect("node ip"),
        netns: ns.name().map(str::to_string),
        cluster_dns: vec!["10.96.0.10".parse().expect("dns ip")],
        cluster_domain: "cluster.local".into(),
        root_dir: root.to_path_buf(),
        image_catalog: None,
        // Containers run under this crate's shim (the switchyard binary has the same).
        self_exe: env!("CARGO_BIN_EXE_container-shim").into(),
        kubelet: None,
    }
}

async fn get_pod(client: &Client, name: &str) -> Option<Pod> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

fn condition(pod: &Pod, kind: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

async fn slow_poll() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_lives_its_whole_life_on_a_real_node() -> Result<()> {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: cannot create network namespaces (not root?)");
        return Ok(());
    }
    let server = InProcessServer::start_with_controllers(
        Arc::new(switchyard_store::memory::MemoryStore::new()),
        |_| {},
        |_| {},
    )
    .await?;
    let client = server.client().await?;
    let mut guard = NsGuard::new();
    let node_ip = "192.168.77.2";
    let ns = node_namespace(&mut guard, node_ip).await?;
    let root = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let agent =
        Agent::start_with(client.clone(), config(&ns, node_ip, root.path()), timings()).await?;
    tokio::time::timeout(WAIT, agent.wait_ready())
        .await
        .context("agent ready")??;

    // The Node: Ready, addresses, labels, a podCIDR.
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get("node-a").await?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some("node-a")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    let status = node.status.clone().expect("node status");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("True", Some("KubeletReady"))
    );
    let addresses = status.addresses.clone().unwrap_or_default();
    assert!(addresses
        .iter()
        .any(|a| a.type_ == "InternalIP" && a.address == node_ip));
    assert_eq!(
        status
            .capacity
            .as_ref()
            .and_then(|c| c.get("pods"))
            .map(|q| q.0.as_str()),
        Some("110")
    );
    let pod_cidr: ipnet::IpNet = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .expect("podCIDR")
        .parse()?;

    // The Lease is renewed.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first = wait_for(WAIT, "the node's lease", || async {
        leases.get_opt("node-a").await.ok().flatten()
    })
    .await?;
    let renew = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    assert_eq!(
        first.spec.as_ref().and_then(|s| s.lease_duration_seconds),
        Some(5)
    );
    wait_for(WAIT, "a lease renewal", || async {
        slow_poll().await;
        let l = leases.get("node-a").await.ok()?;
        (renew(&l) != renew(&first)).then_some(())
    })
    .await?;

    // A Service created before the pod.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "backend"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))?;
    let svc = services.create(&PostParams::default(), &svc).await?;
    let cluster_ip = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("clusterIP");

    // The pod: prints its env, serves HTTP on 8080, traps SIGTERM into a file.
    let alive = work.path().join("alive");
    let got_term = work.path().join("got-term");
    std::fs::write(&alive, "yes")?;
    let script = format!(
        "trap 'echo term > {term}; exit 0' TERM; env; cat /etc/hosts /etc/resolv.conf; echo hostname=$(hostname); /usr/bin/python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 & wait",
        term = got_term.display()
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "app",
                "image": "busybox",
                "command": ["sh", "-c", script],
                "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": ["test", "-f", alive.display().to_string()]},
                                  "periodSeconds": 1, "failureThreshold": 1},
            }]
        }
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = pods.create(&PostParams::default(), &pod).await?;
    let uid = pod.metadata.uid.clone().expect("uid");

    // Running, an IP from the podCIDR, Ready once the HTTP probe passes.
    let running = wait_for(WAIT, "pod web Ready", || async {
        slow_poll().await;
        let p = get_pod(&client, "web").await?;
        (condition(&p, "Ready").as_deref() == Some("True")).then_some(p)
    })
    .await?;
    let status = running.status.clone().expect("status");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.host_ip.as_deref(), Some(node_ip));
    let pod_ip: IpAddr = status.pod_ip.clone().expect("podIP").parse()?;
    assert!(pod_cidr.contains(&pod_ip), "{pod_ip} in {pod_cidr}");
    assert_eq!(condition(&running, "PodScheduled").as_deref(), Some("True"));
    assert_eq!(condition(&running, "Initialized").as_deref(), Some("True"));
    assert_eq!(
        condition(&running, "ContainersReady").as_deref(),
        Some("True")
    );
    let cs = &status
        .container_statuses
        .clone()
        .expect("container statuses")[0];
    assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    assert!(cs
        .container_id
        .as_deref()
        .is_some_and(|id| id.starts_with("switchyard://")));
    assert_eq!(cs.started, Some(true));

    // The Service's EndpointSlice lists the pod as ready.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    wait_for(WAIT, "the EndpointSlice to list the pod", || async {
        slow_poll().await;
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=backend"))
            .await
            .ok()?;
        list.items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .any(|e| {
                e.addresses.contains(&pod_ip.to_string())
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
            })
            .then_some(())
    })
    .await?;

    // The service env vars (kubelet's names) and the pod's own env are in the log.
    let log_path =
        switchyard_node::logs::container_log_path(root.path(), "default", "web", &uid, "app", 0);
    let log = wait_for(WAIT, "the env in the container log", || async {
        slow_poll().await;
        let text = std::fs::read_to_string(&log_path).ok()?;
        text.contains("hostname=").then_some(text)
    })
    .await?;
    for want in [
        format!("BACKEND_SERVICE_HOST={cluster_ip}"),
        "BACKEND_SERVICE_PORT=80".to_string(),
        "BACKEND_SERVICE_PORT_HTTP=80".to_string(),
        format!("BACKEND_PORT=tcp://{cluster_ip}:80"),
        format!("BACKEND_PORT_80_TCP=tcp://{cluster_ip}:80"),
        "BACKEND_PORT_80_TCP_PROTO=tcp".to_string(),
        "BACKEND_PORT_80_TCP_PORT=80".to_string(),
        format!("BACKEND_PORT_80_TCP_ADDR={cluster_ip}"),
        "KUBERNETES_SERVICE_HOST=".to_string(),
        "KUBERNETES_PORT_443_TCP_PROTO=tcp".to_string(),
        "MY_POD=web".to_string(),
        "hostname=web".to_string(),
        format!("{pod_ip}\tweb\n"),
        "search default.svc.cluster.local svc.cluster.local cluster.local".to_string(),
        "nameserver 10.96.0.10".to_string(),
        "options ndots:5".to_string(),
    ] {
        assert!(log.contains(&want), "{want:?} missing from the log:\n{log}");
    }

    // A failing liveness probe restarts the container.
    std::fs::remove_file(&alive)?;
    wait_for(WAIT, "a liveness restart", || async {
        slow_poll().await;
        let p = get_pod(&client, "web").await?;
        (restart_count(&p) >= 1).then_some(())
    })
    .await?;
    std::fs::write(&alive, "yes")?;
    let _ = std::fs::remove_file(&got_term);
    let restarted = wait_for(WAIT, "pod web Ready again after the restart", || async {
        slow_poll().await;
        let p = get_pod(&client, "web").await?;
        (condition(&p, "Ready").as_deref() == Some("True")).then_some(p)
    })
    .await?;
    let restarts = restart_count(&restarted);
    let last = restarted
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.last_state.clone());
    assert!(
        last.and_then(|l| l.terminated).is_some(),
        "lastState.terminated after a restart"
    );

    // An agent restart keeps the pod (same IP, no extra restart).
    drop(agent);
    let agent =
        Agent::start_with(client.clone(), config(&ns, node_ip, root.path()), timings()).await?;
    tokio::time::timeout(WAIT, agent.wait_ready())
        .await
        .context("agent ready again")??;
    // Let the new agent's worker post its status.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = get_pod(&client, "web").await.expect("pod still there");
    assert_eq!(
        after.status.as_ref().and_then(|s| s.pod_ip.clone()),
        Some(pod_ip.to_string())
    );
    assert_eq!(
        restart_count(&after),
        restarts,
        "the adopted container was not restarted"
    );
    assert_eq!(condition(&after, "Ready").as_deref(), Some("True"));

    // Deletion: SIGTERM within the grace period, sandbox removed, pod gone.
    let sandbox_ns = switchyard_node::sandbox::netns_name(&uid);
    assert!(NetNs::exists(&sandbox_ns));
    pods.delete("web", &DeleteParams::default()).await?;
    wait_for(WAIT, "pod web to disappear", || async {
        slow_poll().await;
        get_pod(&client, "web").await.is_none().then_some(())
    })
    .await?;
    assert!(got_term.exists(), "the container got SIGTERM");
    assert!(
        !NetNs::exists(&sandbox_ns),
        "the sandbox's namespace is gone"
    );
    drop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_errors_completed_pods_and_startup_probes() -> Result<()> {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: cannot create network namespaces (not root?)");
        return Ok(());
    }
    let server = InProcessServer::start_with_controllers(
        Arc::new(switchyard_store::memory::MemoryStore::new()),
        |_| {},
        |_| {},
    )
    .await?;
    let client = server.client().await?;
    let mut guard = NsGuard::new();
    let node_ip = "192.168.78.2";
    let ns = node_namespace(&mut guard, node_ip).await?;
    let root = tempfile::tempdir()?;
    let agent =
        Agent::start_with(client.clone(), config(&ns, node_ip, root.path()), timings()).await?;
    tokio::time::timeout(WAIT, agent.wait_ready())
        .await
        .context("agent ready")??;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // An unknown image without a command: ErrImagePull / ImagePullBackOff, never Running.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "c", "image": "example.com/nope:1"}]}
    }))?;
    pods.create(&PostParams::default(), &bad).await?;
    let (reason, message) = wait_for(WAIT, "an image pull error", || async {
        slow_poll().await;
        let p = get_pod(&client, "bad").await?;
        let waiting = p
            .status?
            .container_statuses?
            .first()?
            .state
            .clone()?
            .waiting?;
        let reason = waiting.reason?;
        (reason == "ErrImagePull" || reason == "ImagePullBackOff")
            .then_some((reason, waiting.message.unwrap_or_default()))
    })
    .await?;
    assert!(message.contains("nope"), "{reason}: {message}");
    let p = get_pod(&client, "bad").await.expect("bad pod");
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));

    // A pod that exits 0 with restartPolicy Never succeeds; a service created after it is
    // absent from its env.
    let done: Pod = serde_json::from_value(json!({
        "metadata": {"name": "done"},
        "spec": {"restartPolicy": "Never", "enableServiceLinks": false, "containers": [{
            "name": "c", "image": "busybox", "command": ["sh", "-c", "env; echo finished"]}]}
    }))?;
    let done = pods.create(&PostParams::default(), &done).await?;
    let finished = wait_for(WAIT, "pod done Succeeded", || async {
        slow_poll().await;
        let p = get_pod(&client, "done").await?;
        (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(p)
    })
    .await?;
    let term = finished
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (0, Some("Completed"))
    );
    let uid = done.metadata.uid.clone().expect("uid");
    let log = std::fs::read_to_string(switchyard_node::logs::container_log_path(
        root.path(),
        "default",
        "done",
        &uid,
        "c",
        0,
    ))?;
    assert!(
        log.contains("KUBERNETES_SERVICE_HOST="),
        "master service vars even without service links"
    );
    assert!(!log.contains("BACKEND"), "{log}");

    // A startup probe gates started/ready until it passes.
    let work = tempfile::tempdir()?;
    let flag = work.path().join("started");
    let slow: Pod = serde_json::from_value(json!({
        "metadata": {"name": "slow"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "busybox", "command": ["sh", "-c", "exec sleep 600"],
            "startupProbe": {"exec": {"command": ["test", "-f", flag.display().to_string()]},
                             "periodSeconds": 1, "failureThreshold": 600}}]}
    }))?;
    pods.create(&PostParams::default(), &slow).await?;
    let started = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.started)
    };
    wait_for(WAIT, "pod slow running but not started", || async {
        slow_poll().await;
        let p = get_pod(&client, "slow").await?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running") && started(&p) == Some(false))
            .then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = get_pod(&client, "slow").await.expect("slow pod");
    assert_eq!(
        condition(&p, "Ready").as_deref(),
        Some("False"),
        "not ready before startup"
    );
    std::fs::write(&flag, "ok")?;
    wait_for(WAIT, "pod slow started and Ready", || async {
        slow_poll().await;
        let p = get_pod(&client, "slow").await?;
        (started(&p) == Some(true) && condition(&p, "Ready").as_deref() == Some("True"))
            .then_some(())
    })
    .await?;
    pods.delete("slow", &DeleteParams::default()).await?;

    // Deleting both completes (the failed-image pod has a sandbox, the finished one too).
    pods.delete("bad", &DeleteParams::default()).await?;
    pods.delete("done", &DeleteParams::default()).await?;
    wait_for(WAIT, "both pods gone", || async {
        slow_poll().await;
        (get_pod(&client, "bad").await.is_none() && get_pod(&client, "done").await.is_none())
            .then_some(())
    })
    .await?;
    // A Succeeded pod leaves the API at once (no grace period); its sandbox goes too.
    let sandbox = switchyard_node::sandbox::netns_name(&uid);
    wait_for(WAIT, "the finished pod's sandbox removed", || async {
        slow_poll().await;
        (!NetNs::exists(&sandbox)).then_some(())
    })
    .await?;
    drop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_two_nodes_reach_each_other_and_containers_share_localhost() -> Result<()> {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: cannot create network namespaces (not root?)");
        return Ok(());
    }
    let server = InProcessServer::start_with_controllers(
        Arc::new(switchyard_store::memory::MemoryStore::new()),
        |_| {},
        |_| {},
    )
    .await?;
    let client = server.client().await?;
    let mut guard = NsGuard::new();
    // Two node namespaces on one "LAN" (a veth pair between them).
    let ns_a = guard.create(&switchyard_netns::unique_name("nx")).await?;
    let ns_b = guard.create(&switchyard_netns::unique_name("ny")).await?;
    let b_name = ns_b.name().expect("named").to_string();
    ns_a.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lanb",
    ])
    .await?;
    ns_a.ip(&["link", "set", "lanb", "netns", &b_name]).await?;
    ns_b.ip(&["link", "set", "lanb", "name", "lan0"]).await?;
    for (ns, ip) in [(&ns_a, "192.168.80.2/24"), (&ns_b, "192.168.80.3/24")] {
        ns.ip(&["addr", "add", ip, "dev", "lan0"]).await?;
        ns.ip(&["link", "set", "lan0", "up"]).await?;
    }
    let root_a = tempfile::tempdir()?;
    let root_b = tempfile::tempdir()?;
    let mut config_a = config(&ns_a, "192.168.80.2", root_a.path());
    config_a.node_name = "node-x".into();
    let mut config_b = config(&ns_b, "192.168.80.3", root_b.path());
    config_b.node_name = "node-y".into();
    let agent_a = Agent::start_with(client.clone(), config_a, timings()).await?;
    let agent_b = Agent::start_with(client.clone(), config_b, timings()).await?;
    tokio::time::timeout(WAIT, agent_a.wait_ready())
        .await
        .context("agent a")??;
    tokio::time::timeout(WAIT, agent_b.wait_ready())
        .await
        .context("agent b")??;

    let server_script = "exec /usr/bin/python3 -m http.server 8080 --bind 0.0.0.0";
    let client_script = "while true; do /usr/bin/python3 -c \"import urllib.request; print('status', urllib.request.urlopen('http://127.0.0.1:8080/').status)\" 2>&1; sleep 0.5; done";
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node) in [("pa", "node-x"), ("pb", "node-y")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "server", "image": "busybox", "command": ["sh", "-c", server_script],
                     "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
                    {"name": "client", "image": "busybox", "command": ["sh", "-c", client_script]},
                ]
            }
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let mut found = Vec::new();
    for name in ["pa", "pb"] {
        let pod = wait_for(WAIT, "both pods Ready", || async {
            slow_poll().await;
            let p = get_pod(&client, name).await?;
            (condition(&p, "Ready").as_deref() == Some("True")).then_some(p)
        })
        .await?;
        found.push(pod);
    }
    let ip_of = |p: &Pod| -> IpAddr {
        p.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .expect("pod ip")
    };
    let (pa, pb) = (&found[0], &found[1]);
    let (ip_a, ip_b) = (ip_of(pa), ip_of(pb));
    assert_eq!(
        pb.status.as_ref().and_then(|s| s.host_ip.as_deref()),
        Some("192.168.80.3")
    );

    // Containers of one pod share localhost.
    let uid_a = pa.metadata.uid.clone().expect("uid");
    let log = switchyard_node::logs::container_log_path(
        root_a.path(),
        "default",
        "pa",
        &uid_a,
        "client",
        0,
    );
    wait_for(
        WAIT,
        "the client container to reach its sibling on localhost",
        || async {
            slow_poll().await;
            std::fs::read_to_string(&log)
                .ok()?
                .contains("status 200")
                .then_some(())
        },
    )
    .await?;

    // Pod on node x → pod on node y, and back, by pod IP (routes via the node IPs).
    let sandbox_a = NetNs::open(&switchyard_node::sandbox::netns_name(&uid_a))?;
    let uid_b = pb.metadata.uid.clone().expect("uid");
    let sandbox_b = NetNs::open(&switchyard_node::sandbox::netns_name(&uid_b))?;
    for (from, to) in [(&sandbox_a, ip_b), (&sandbox_b, ip_a)] {
        wait_for(WAIT, "a cross-node connection", || async {
            slow_poll().await;
            from.connect_tcp(std::net::SocketAddr::new(to, 8080), Duration::from_secs(1))
                .await
                .ok()
                .map(drop)
        })
        .await?;
    }

    for name in ["pa", "pb"] {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    wait_for(WAIT, "both pods gone", || async {
        slow_poll().await;
        (get_pod(&client, "pa").await.is_none() && get_pod(&client, "pb").await.is_none())
            .then_some(())
    })
    .await?;
    drop((agent_a, agent_b));
    Ok(())
}

/// Benchmark (run with `--ignored --nocapture`): 100 pods on one node, created → Ready
/// latency p50/p99, deletion → gone, and the test process's RSS (API server + agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_hundred_pods_on_one_node() -> Result<()> {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: cannot create network namespaces (not root?)");
        return Ok(());
    }
    let server = InProcessServer::start_with_controllers(
        Arc::new(switchyard_store::memory::MemoryStore::new()),
        |_| {},
        |_| {},
    )
    .await?;
    let client = server.client().await?;
    let mut guard = NsGuard::new();
    let node_ip = "192.168.81.2";
    let ns = node_namespace(&mut guard, node_ip).await?;
    let root = tempfile::tempdir()?;
    let agent =
        Agent::start_with(client.clone(), config(&ns, node_ip, root.path()), timings()).await?;
    tokio::time::timeout(WAIT, agent.wait_ready())
        .await
        .context("agent ready")??;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    const N: usize = 100;
    let start = tokio::time::Instant::now();
    let mut created = std::collections::HashMap::new();
    for i in 0..N {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("b{i}")},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": "registry.k8s.io/pause:3.10"}]}
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        created.insert(format!("b{i}"), tokio::time::Instant::now());
    }
    let mut ready_at = std::collections::HashMap::new();
    let deadline = start + Duration::from_secs(300);
    while ready_at.len() < N && tokio::time::Instant::now() < deadline {
        for p in pods.list(&ListParams::default()).await?.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            if !ready_at.contains_key(&name) && condition(&p, "Ready").as_deref() == Some("True") {
                ready_at.insert(name, tokio::time::Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Report and tear down even when some pods never got Ready (never leak sandboxes).
    let ready = ready_at.len();
    let mut latencies: Vec<Duration> = ready_at
        .iter()
        .map(|(name, at)| at.duration_since(created[name]))
        .collect();
    latencies.sort();
    let pct = |q: usize| latencies.get((ready * q / 100).saturating_sub(1)).copied();
    let rss = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "BENCH {ready}/{N} pods Ready: created→Ready p50 {:?} p99 {:?} max {:?}; after {:?}; {rss} (API server + controllers + agent)",
        pct(50),
        pct(99),
        latencies.last(),
        start.elapsed()
    );
    let teardown = tokio::time::Instant::now();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for(Duration::from_secs(300), "all pods gone", || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pods.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await?;
    eprintln!("BENCH teardown of {N} pods: {:?}", teardown.elapsed());
    drop(agent);
    assert_eq!(ready, N, "all pods Ready");
    Ok(())
}
