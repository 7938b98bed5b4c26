//! The node agent against an in-process API server with its controllers (scheduler, podcidr,
//! endpointslice), in a fresh node network namespace: registration, Lease, a pod's whole life
//! (IP from the podCIDR, service env vars, readiness via an HTTP probe, EndpointSlice,
//! liveness restart, agent restart keeping the pod, graceful deletion with SIGTERM); readiness
//! gating Ready and the endpoint both ways; service env vars fixed at container start;
//! deletion's SIGTERM, sandbox removal and freed IP;
//! the exit code of a container adopted by a restarted agent (read from its shim's exit file).
//! The 100-pod benchmark is `crates/switchyard/benches/pods.rs`.

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

/// An in-process API server with its controllers, a node namespace and an agent running there.
/// Dropping it stops the agent and removes the namespaces: the node's and those of the pods
/// given to [`TestNode::watch_pod`] (with what still runs in them, also when a test fails).
struct TestNode {
    agent: Option<Agent>,
    client: Client,
    ns: NetNs,
    node_ip: &'static str,
    root: tempfile::TempDir,
    guard: NsGuard,
    _server: InProcessServer,
}

impl TestNode {
    /// `None` (and a loud skip) where namespaces cannot be created.
    async fn start(node_ip: &'static str) -> Result<Option<TestNode>> {
        if !switchyard_netns::can_create_namespaces() {
            eprintln!("SKIPPED: cannot create network namespaces (not root?)");
            return Ok(None);
        }
        let server = InProcessServer::start_with_controllers(
            Arc::new(switchyard_store::memory::MemoryStore::new()),
            |_| {},
            |_| {},
        )
        .await?;
        let client = server.client().await?;
        let mut guard = NsGuard::new();
        let ns = node_namespace(&mut guard, node_ip).await?;
        let root = tempfile::tempdir()?;
        let agent =
            Agent::start_with(client.clone(), config(&ns, node_ip, root.path()), timings()).await?;
        tokio::time::timeout(WAIT, agent.wait_ready())
            .await
            .context("agent ready")??;
        Ok(Some(TestNode {
            agent: Some(agent),
            client,
            ns,
            node_ip,
            root,
            guard,
            _server: server,
        }))
    }

    /// Stop the agent without stopping its pods, and start a new one on the same state.
    async fn restart_agent(&mut self) -> Result<()> {
        self.agent = None;
        let agent = Agent::start_with(
            self.client.clone(),
            config(&self.ns, self.node_ip, self.root.path()),
            timings(),
        )
        .await?;
        tokio::time::timeout(WAIT, agent.wait_ready())
            .await
            .context("agent ready again")??;
        self.agent = Some(agent);
        Ok(())
    }

    /// Remove this pod's sandbox namespace too when the test ends.
    fn watch_pod(&mut self, pod: &Pod) {
        let uid = pod
            .metadata
            .uid
            .as_deref()
            .expect("created pods have a uid");
        self.guard.adopt(&switchyard_node::sandbox::netns_name(uid));
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Create a pod from JSON; its sandbox is cleaned up with the node.
    async fn create_pod(&mut self, pod: serde_json::Value) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(pod)?;
        let pod = self.pods().create(&PostParams::default(), &pod).await?;
        self.watch_pod(&pod);
        Ok(pod)
    }

    /// Delete a pod and wait until the agent has removed it from the API.
    async fn delete_pod_and_wait(&self, name: &str) -> Result<()> {
        self.pods().delete(name, &DeleteParams::default()).await?;
        wait_for(WAIT, &format!("pod {name} to disappear"), || async {
            slow_poll().await;
            get_pod(&self.client, name).await.is_none().then_some(())
        })
        .await
    }
}

fn container_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

/// Whether the Service's EndpointSlices list `ip`, and with which `ready` condition.
async fn endpoint_ready(client: &Client, service: &str, ip: &str) -> Option<bool> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .ok()?;
    list.items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .find(|e| e.addresses.iter().any(|a| a == ip))
        .map(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_lives_its_whole_life_on_a_real_node() -> Result<()> {
    let Some(mut test_node) = TestNode::start("192.168.77.2").await? else {
        return Ok(());
    };
    let (client, node_ip) = (test_node.client.clone(), test_node.node_ip);
    let root = test_node.root.path().to_path_buf();
    let work = tempfile::tempdir()?;

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
    test_node.watch_pod(&pod);
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
        switchyard_node::logs::container_log_path(&root, "default", "web", &uid, "app", 0);
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
    test_node.restart_agent().await?;
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
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_errors_completed_pods_and_startup_probes() -> Result<()> {
    let Some(mut node) = TestNode::start("192.168.78.2").await? else {
        return Ok(());
    };
    let client = node.client.clone();
    let pods = node.pods();

    // An unknown image without a command: ErrImagePull / ImagePullBackOff, never Running.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "c", "image": "example.com/nope:1"}]}
    }))?;
    let bad = pods.create(&PostParams::default(), &bad).await?;
    node.watch_pod(&bad);
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

    // A pod that exits 0 with restartPolicy Never succeeds; without service links its env has
    // the master service's variables only.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let backend: Service = serde_json::from_value(json!({
        "metadata": {"name": "backend"},
        "spec": {"ports": [{"port": 80}]}
    }))?;
    services.create(&PostParams::default(), &backend).await?;
    let done: Pod = serde_json::from_value(json!({
        "metadata": {"name": "done"},
        "spec": {"restartPolicy": "Never", "enableServiceLinks": false, "containers": [{
            "name": "c", "image": "busybox", "command": ["sh", "-c", "env; echo finished"]}]}
    }))?;
    let done = pods.create(&PostParams::default(), &done).await?;
    node.watch_pod(&done);
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
        node.root.path(),
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
    let slow = pods.create(&PostParams::default(), &slow).await?;
    node.watch_pod(&slow);
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
        let pod = pods.create(&PostParams::default(), &pod).await?;
        guard.adopt(&switchyard_node::sandbox::netns_name(
            pod.metadata.uid.as_deref().expect("uid"),
        ));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_readiness_probe_keeps_the_pod_and_its_endpoint_unready_until_it_passes(
) -> Result<()> {
    let Some(mut node) = TestNode::start("192.168.82.2").await? else {
        return Ok(());
    };
    let services: Api<Service> = Api::namespaced(node.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "gated"},
        "spec": {"selector": {"app": "gated"}, "ports": [{"port": 80}]}
    }))?;
    services.create(&PostParams::default(), &svc).await?;
    let work = tempfile::tempdir()?;
    let ok = work.path().join("ok");
    let probes = work.path().join("probes");
    // The probe notes each run, then passes only while the file exists.
    let probe = format!(
        "echo run >> {probes}; test -f {ok}",
        probes = probes.display(),
        ok = ok.display()
    );
    node.create_pod(json!({
        "metadata": {"name": "gated", "labels": {"app": "gated"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "busybox", "command": ["sh", "-c", "exec sleep 600"],
            "readinessProbe": {"exec": {"command": ["sh", "-c", probe]},
                               "periodSeconds": 1, "failureThreshold": 1}}]}
    }))
    .await?;

    // Running, probed three times and failed each time: unready, and so is its endpoint.
    let ip = wait_for(WAIT, "pod gated running with an IP", || async {
        slow_poll().await;
        let p = get_pod(&node.client, "gated").await?;
        let running = container_status(&p)?.state?.running.is_some();
        running.then(|| p.status?.pod_ip).flatten()
    })
    .await?;
    wait_for(WAIT, "three failed readiness probes", || async {
        slow_poll().await;
        let runs = std::fs::read_to_string(&probes).ok()?.lines().count();
        (runs >= 3).then_some(())
    })
    .await?;
    let p = get_pod(&node.client, "gated").await.expect("pod gated");
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
    assert_eq!(condition(&p, "ContainersReady").as_deref(), Some("False"));
    let cs = container_status(&p).expect("container status");
    assert_eq!((cs.ready, cs.started), (false, Some(true)));
    assert_eq!(cs.restart_count, 0, "readiness never restarts");
    wait_for(WAIT, "the endpoint listed as not ready", || async {
        slow_poll().await;
        (!endpoint_ready(&node.client, "gated", &ip).await?).then_some(())
    })
    .await?;

    // The probe passes: Ready, and a ready endpoint.
    std::fs::write(&ok, "")?;
    wait_for(WAIT, "pod gated Ready", || async {
        slow_poll().await;
        let p = get_pod(&node.client, "gated").await?;
        (condition(&p, "Ready").as_deref() == Some("True")
            && condition(&p, "ContainersReady").as_deref() == Some("True"))
        .then_some(())
    })
    .await?;
    wait_for(WAIT, "the endpoint ready", || async {
        slow_poll().await;
        endpoint_ready(&node.client, "gated", &ip)
            .await?
            .then_some(())
    })
    .await?;

    // It fails again: unready again, the container keeps running.
    std::fs::remove_file(&ok)?;
    wait_for(WAIT, "pod gated unready again", || async {
        slow_poll().await;
        let p = get_pod(&node.client, "gated").await?;
        (condition(&p, "Ready").as_deref() == Some("False")).then_some(p)
    })
    .await?;
    wait_for(WAIT, "the endpoint not ready again", || async {
        slow_poll().await;
        (!endpoint_ready(&node.client, "gated", &ip).await?).then_some(())
    })
    .await?;
    let p = get_pod(&node.client, "gated").await.expect("pod gated");
    assert_eq!(container_status(&p).map(|c| c.restart_count), Some(0));
    node.delete_pod_and_wait("gated").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_env_vars_are_those_of_services_that_existed_when_the_container_started(
) -> Result<()> {
    let Some(mut node) = TestNode::start("192.168.85.2").await? else {
        return Ok(());
    };
    let services: Api<Service> = Api::namespaced(node.client.clone(), "default");
    let service = |name: &str| -> Result<Service> {
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}),
        )?)
    };
    services
        .create(&PostParams::default(), &service("early")?)
        .await?;
    let work = tempfile::tempdir()?;
    let go = work.path().join("go");
    // The container's own environment, printed only once the test says so.
    let script = format!(
        "until [ -f {go} ]; do sleep 0.1; done; env; echo END; exec sleep 600",
        go = go.display()
    );
    let pod = node
        .create_pod(json!({
            "metadata": {"name": "envs"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": "busybox", "command": ["sh", "-c", script]}]}
        }))
        .await?;
    wait_for(WAIT, "pod envs running", || async {
        slow_poll().await;
        let p = get_pod(&node.client, "envs").await?;
        (container_status(&p)?.state?.running.is_some()).then_some(())
    })
    .await?;
    let late = services
        .create(&PostParams::default(), &service("late")?)
        .await?;
    assert!(
        late.spec.and_then(|s| s.cluster_ip).is_some(),
        "late has a clusterIP"
    );
    std::fs::write(&go, "")?;
    let log = switchyard_node::logs::container_log_path(
        node.root.path(),
        "default",
        "envs",
        pod.metadata.uid.as_deref().expect("uid"),
        "c",
        0,
    );
    let env = wait_for(WAIT, "the container's env in its log", || async {
        slow_poll().await;
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("END").then_some(text)
    })
    .await?;
    assert!(env.contains("EARLY_SERVICE_HOST="), "{env}");
    assert!(env.contains("EARLY_PORT_80_TCP_PORT=80"), "{env}");
    assert!(
        !env.contains("LATE_"),
        "a service created after the start: {env}"
    );
    node.delete_pod_and_wait("envs").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_delivers_sigterm_removes_its_sandbox_and_frees_its_ip() -> Result<()> {
    let Some(mut node) = TestNode::start("192.168.83.2").await? else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let marker = work.path().join("got-term");
    // A grace period far longer than the test waits: only SIGTERM can end it in time.
    let script = format!(
        "trap 'echo \"$HOSTNAME got SIGTERM\" > {marker}; exit 0' TERM; echo trapping; while true; do sleep 0.1; done",
        marker = marker.display()
    );
    let pod = node
        .create_pod(json!({
            "metadata": {"name": "graceful"},
            "spec": {"terminationGracePeriodSeconds": 600, "containers": [{
                "name": "c", "image": "busybox", "command": ["sh", "-c", script]}]}
        }))
        .await?;
    let uid = pod.metadata.uid.clone().expect("uid");
    let log = switchyard_node::logs::container_log_path(
        node.root.path(),
        "default",
        "graceful",
        &uid,
        "c",
        0,
    );
    wait_for(WAIT, "the container to set its trap", || async {
        slow_poll().await;
        std::fs::read_to_string(&log)
            .ok()?
            .contains("trapping")
            .then_some(())
    })
    .await?;
    let ipam = node.root.path().join("ipam.json");
    assert!(
        std::fs::read_to_string(&ipam)?.contains(&uid),
        "IP allocated"
    );

    node.delete_pod_and_wait("graceful").await?;
    assert_eq!(
        std::fs::read_to_string(&marker).context("the trap's marker")?,
        "graceful got SIGTERM\n"
    );
    assert!(!NetNs::exists(&switchyard_node::sandbox::netns_name(&uid)));
    assert!(
        !std::fs::read_to_string(&ipam)?.contains(&uid),
        "the pod's IP is free again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_adopted_by_a_restarted_agent_reports_its_exit_code_and_restarts() -> Result<()>
{
    let Some(mut node) = TestNode::start("192.168.84.2").await? else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let (go, ran) = (work.path().join("go"), work.path().join("ran"));
    // The first run waits for `go`, then exits 3; the next one stays up.
    let script = format!(
        "if [ -f {ran} ]; then exec sleep 600; fi; until [ -f {go} ]; do sleep 0.1; done; touch {ran}; exit 3",
        ran = ran.display(),
        go = go.display()
    );
    node.create_pod(json!({
        "metadata": {"name": "quitter"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "busybox", "command": ["sh", "-c", script]}]}
    }))
    .await?;
    wait_for(WAIT, "pod quitter running", || async {
        slow_poll().await;
        let p = get_pod(&node.client, "quitter").await?;
        (container_status(&p)?.state?.running.is_some()).then_some(())
    })
    .await?;

    // The agent goes away (its pods stay) and a new one adopts the container.
    node.restart_agent().await?;
    std::fs::write(&go, "")?;
    let p = wait_for(WAIT, "the adopted container's exit and restart", || async {
        slow_poll().await;
        let p = get_pod(&node.client, "quitter").await?;
        let cs = container_status(&p)?;
        (cs.restart_count >= 1 && cs.state.as_ref()?.running.is_some()).then_some(p)
    })
    .await?;
    let cs = container_status(&p).expect("container status");
    assert_eq!(cs.restart_count, 1);
    let last = cs
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (3, Some("Error")),
        "the exit code of a container this agent did not start"
    );
    node.delete_pod_and_wait("quitter").await?;
    Ok(())
}
