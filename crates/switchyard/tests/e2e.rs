//! The seeds' scenarios end to end (MISSION.md 1-9), as a user runs them: `switchyard up --nodes 2`,
//! the manifests of `examples/` applied with real kubectl, and real packets from a pod, a node
//! and the client namespace (a machine outside the cluster on the same L2 network).
//!
//! One cluster per test function (each test is a process under nextest); every namespace
//! carries the cluster's own prefix and is removed when the fixture drops.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_testkit::up::UpCluster;
use switchyard_testkit::Kubectl;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchyard"))
}

fn example(name: &str) -> String {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    path.to_str().expect("a UTF-8 path").to_string()
}

/// Whether this machine can run the cluster (root, iproute2, nft, kubectl), else a loud skip.
fn prerequisites() -> bool {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("!!!!!! SKIPPING: needs root and iproute2 to create network namespaces !!!!!!");
        return false;
    }
    for tool in ["nft", "curl", "dig"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("!!!!!! SKIPPING: {tool} is missing; ./scripts/test installs it !!!!!!");
            return false;
        }
    }
    switchyard_testkit::kubectl_path().is_some()
}

/// Poll `check` every 100 ms until it gives `Some`, or panic with `what` after `timeout`.
fn until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(k: &Kubectl, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&k.ok(&all).expect("kubectl get")).expect("JSON")
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pod name the echo server reports (`pod: default/NAME`), if the request got an answer.
fn answered_by(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix("pod: "))
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
}

/// `curl` inside cluster namespace `ns`; the answering pod.
fn curl(c: &UpCluster, ns: &str, url: &str) -> Option<String> {
    let out = c.exec(ns, &["curl", "-sS", "-m", "3", url]);
    out.status
        .success()
        .then(|| answered_by(&text(&out)))
        .flatten()
}

/// `wget` from inside pod `pod` via kubectl exec; the answering pod.
fn from_pod(k: &Kubectl, pod: &str, url: &str) -> Option<String> {
    let out = k.run(&["exec", pod, "--", "wget", "-qO-", "-T", "3", url]);
    out.success.then(|| answered_by(&out.stdout)).flatten()
}

/// Wait until exactly `n` pods match `selector`, all Ready and none terminating (a draining
/// pod of an earlier version still answers until it is gone); their names and IPs.
fn settled_pods(k: &Kubectl, selector: &str, n: usize) -> Vec<(String, String)> {
    until(
        Duration::from_secs(120),
        &format!("{n} settled {selector} pods"),
        || {
            let all = json(k, &["get", "pods", "-l", selector]);
            let total = all["items"].as_array().map_or(0, Vec::len);
            let ready = running_pods(k, selector);
            (total == n && ready.len() == n).then_some(ready)
        },
    )
}

fn running_pods(k: &Kubectl, selector: &str) -> Vec<(String, String)> {
    let list = json(k, &["get", "pods", "-l", selector]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["status"]["podIP"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Apply scenario 1 (6 replicas) and wait until all six are Ready and in the Service.
fn six_replicas(k: &Kubectl) -> Vec<(String, String)> {
    k.ok(&["apply", "-f", &example("01-clusterip.yaml")])
        .expect("apply 01");
    k.ok(&["rollout", "status", "deployment/myapp", "--timeout=180s"])
        .expect("rollout");
    settled_pods(k, "app=myapp", 6)
}

fn service_field(k: &Kubectl, name: &str, pointer: &str) -> String {
    let svc = json(k, &["get", "svc", name]);
    match svc.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        other => panic!("service {name}: {pointer} is {other:?}"),
    }
}

/// Several pods answer through `url` from namespace `ns` within `tries` requests.
fn spread(c: &UpCluster, ns: &str, url: &str, tries: usize) -> BTreeSet<String> {
    (0..tries).filter_map(|_| curl(c, ns, url)).collect()
}

fn dig(c: &UpCluster, ns: &str, args: &[&str]) -> String {
    let mut all = vec!["dig", "+short", "+time=2", "+tries=2", "@10.96.0.10"];
    all.extend(args);
    text(&c.exec(ns, &all))
}

#[test]
fn the_seed_scenarios_work_end_to_end_on_two_nodes() {
    if !prerequisites() {
        return;
    }
    let c = UpCluster::start(binary(), 2, &[]).expect("switchyard up --nodes 2");
    let k = c.kubectl().expect("kubectl");

    // `up` itself: two Ready nodes, the example workload of every service type.
    let nodes = json(&k, &["get", "nodes"]);
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(2), "{nodes}");
    for name in [
        "myapp",
        "myapp-headless",
        "myapp-nodeport",
        "myapp-lb",
        "my-service",
    ] {
        k.ok(&["get", "svc", name]).expect(name);
    }

    // 1. Six replicas behind a ClusterIP: several pods answer from a node, from a pod and from
    // the client (routed to the ClusterIP range through node 1, masqueraded there).
    let pods = six_replicas(&k);
    let pod_names: BTreeSet<String> = pods.iter().map(|(n, _)| n.clone()).collect();
    let cluster_ip = service_field(&k, "myapp", "/spec/clusterIP");
    let url = format!("http://{cluster_ip}/");
    until(Duration::from_secs(20), "the ClusterIP answers", || {
        curl(&c, "node-1", &url)
    });
    for ns in ["node-1", "node-2"] {
        let seen = spread(&c, ns, &url, 20);
        assert!(seen.len() >= 2, "from {ns} only {seen:?} answered");
        assert!(seen.is_subset(&pod_names), "{seen:?} vs {pod_names:?}");
    }
    let probe_pod = pods[0].0.clone();
    let seen: BTreeSet<String> = (0..20)
        .filter_map(|_| from_pod(&k, &probe_pod, "http://myapp/"))
        .collect();
    assert!(seen.len() >= 2, "from a pod only {seen:?} answered");
    assert!(c
        .exec(
            "client",
            &["ip", "route", "add", "10.96.0.0/12", "via", "192.168.67.11"]
        )
        .status
        .success());
    let seen = spread(&c, "client", &url, 20);
    assert!(seen.len() >= 2, "from the client only {seen:?} answered");
    let answer = dig(&c, "node-2", &["myapp.default.svc.cluster.local"]);
    assert_eq!(answer.trim(), cluster_ip, "dig from a node");
    let out = k.run(&[
        "exec",
        &probe_pod,
        "--",
        "dig",
        "+short",
        "+time=2",
        "myapp.default.svc.cluster.local",
    ]);
    assert_eq!(
        out.stdout.trim(),
        cluster_ip,
        "dig from a pod: {}",
        out.stderr
    );

    // 2. Headless: every pod IP, no virtual IP.
    k.ok(&["apply", "-f", &example("02-headless.yaml")])
        .expect("apply 02");
    assert_eq!(
        service_field(&k, "myapp-headless", "/spec/clusterIP"),
        "None"
    );
    let want: BTreeSet<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
    let got: BTreeSet<String> = until(Duration::from_secs(20), "headless answers", || {
        let got: BTreeSet<String> =
            dig(&c, "node-1", &["myapp-headless.default.svc.cluster.local"])
                .lines()
                .map(str::to_string)
                .collect();
        (got == want).then_some(got)
    });
    assert_eq!(got.len(), 6);

    // 3. NodePort on every node's IP, from outside; 33333 is outside the default range.
    k.ok(&["apply", "-f", &example("03-nodeport.yaml")])
        .expect("apply 03");
    let node_port = service_field(&k, "myapp-nodeport", "/spec/ports/0/nodePort");
    for node_ip in ["192.168.67.11", "192.168.67.12"] {
        // The apply changed the Service's ports: the proxies follow within a sync.
        until(
            Duration::from_secs(20),
            &format!("NodePort on {node_ip}"),
            || curl(&c, "client", &format!("http://{node_ip}:{node_port}/")),
        );
    }
    let out = k.run(&["apply", "-f", &example("03-nodeport-33333.yaml")]);
    assert!(!out.success, "nodePort 33333 was accepted");
    assert!(
        out.stderr.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{}",
        out.stderr
    );

    // 4. LoadBalancer from the seeds' pool, reached from the client; one MAC answers ARP.
    k.ok(&["apply", "-f", &example("04-loadbalancer.yaml")])
        .expect("apply 04");
    let lb_ip = until(Duration::from_secs(20), "a LoadBalancer IP", || {
        let svc = json(&k, &["get", "svc", "myapp-lb"]);
        svc.pointer("/status/loadBalancer/ingress/0/ip")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let last: u8 = lb_ip
        .rsplit('.')
        .next()
        .and_then(|l| l.parse().ok())
        .expect("an IPv4 address");
    assert!(
        lb_ip.starts_with("192.168.67.") && (120..=200).contains(&last),
        "{lb_ip}"
    );
    let seen = until(
        Duration::from_secs(20),
        "the LoadBalancer IP answers",
        || {
            let seen = spread(&c, "client", &format!("http://{lb_ip}/"), 10);
            (!seen.is_empty()).then_some(seen)
        },
    );
    assert!(seen.is_subset(&pod_names), "{seen:?}");
    if Command::new("sh")
        .args(["-c", "command -v arping"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let out = c.exec(
            "client",
            &["arping", "-c", "3", "-w", "4", "-I", "eth0", &lb_ip],
        );
        let macs = reply_macs(&text(&out));
        assert_eq!(macs.len(), 1, "ARP answers from {macs:?}:\n{}", text(&out));
    } else {
        eprintln!("!!!!!! arping missing: the one-MAC check is skipped; ./scripts/test installs it !!!!!!");
    }

    // Each node serves kube-proxy's health and metrics, with the announcer's families: exactly
    // one node announces the IP.
    let mut announcing = 0;
    for node in ["node-1", "node-2"] {
        let health = text(&c.exec(
            node,
            &["curl", "-sS", "-m", "3", "http://127.0.0.1:10256/healthz"],
        ));
        assert!(
            health.contains("\"lastUpdated\""),
            "{node} healthz: {health}"
        );
        let metrics = text(&c.exec(
            node,
            &["curl", "-sS", "-m", "3", "http://127.0.0.1:10249/metrics"],
        ));
        assert!(
            metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket"),
            "{node} metrics:\n{metrics}"
        );
        announcing += metrics
            .lines()
            .filter(|l| {
                l.starts_with("metallb_speaker_announced{")
                    && l.contains(&format!("ip=\"{lb_ip}\""))
            })
            .count();
    }
    assert_eq!(announcing, 1, "nodes announcing {lb_ip}");

    // 5. ExternalName: a CNAME.
    k.ok(&["apply", "-f", &example("05-externalname.yaml")])
        .expect("apply 05");
    let answer = dig(
        &c,
        "node-1",
        &["my-service.default.svc.cluster.local", "CNAME"],
    );
    assert_eq!(answer.trim(), "my.database.example.com.");

    // 6. ClientIP affinity: one pod answers every request from one client.
    k.ok(&["apply", "-f", &example("06-session-affinity.yaml")])
        .expect("apply 06");
    let sticky_ip = service_field(&k, "myapp-sticky", "/spec/clusterIP");
    let sticky = format!("http://{sticky_ip}/");
    until(
        Duration::from_secs(20),
        "the sticky service answers",
        || curl(&c, "node-2", &sticky),
    );
    let seen = spread(&c, "node-2", &sticky, 15);
    assert_eq!(seen.len(), 1, "affinity broke: {seen:?}");

    // 7. A selector-less Service with hand-written Endpoints reaches a server in the client
    // namespace.
    let server = Command::new("ip")
        .args(["netns", "exec", &c.ns("client")])
        .arg(binary())
        .args(["echo-server", "--port", "8080", "--pod", "outside/db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("echo server in the client namespace");
    let _server = switchyard_testkit::ChildGuard(server);
    k.ok(&["apply", "-f", &example("07-selectorless.yaml")])
        .expect("apply 07");
    let answer = until(Duration::from_secs(20), "the selector-less service", || {
        from_pod(&k, &probe_pod, "http://external-db/")
    });
    assert_eq!(answer, "db");

    // 8. A pod created after the services sees their variables.
    k.ok(&["apply", "-f", &example("08-env-vars.yaml")])
        .expect("apply 08");
    let env = until(Duration::from_secs(60), "envcheck's output", || {
        let out = k.run(&["logs", "envcheck"]);
        (out.success && out.stdout.contains("KUBERNETES_SERVICE_HOST")).then_some(out.stdout)
    });
    assert!(
        env.contains(&format!("MYAPP_SERVICE_HOST={cluster_ip}")),
        "{env}"
    );
    assert!(env.contains("MYAPP_SERVICE_PORT=80"), "{env}");
    assert!(
        env.contains(&format!("MYAPP_PORT=tcp://{cluster_ip}:80")),
        "{env}"
    );

    // 9. A rolling update and pod deletions under steady traffic from the client: no request
    // fails, and only live pods answer.
    let load = Load::start(&c, &format!("http://192.168.67.11:{node_port}/"));
    k.ok(&["set", "image", "deployment/myapp", "myapp=myapp:v2"])
        .expect("set image");
    k.ok(&["rollout", "status", "deployment/myapp", "--timeout=180s"])
        .expect("rollout of v2");
    let v2 = settled_pods(&k, "app=myapp", 6);
    for (name, _) in v2.iter().take(2) {
        k.ok(&["delete", "pod", name]).expect("delete pod");
    }
    settled_pods(&k, "app=myapp", 6);
    let (ok, failed) = load.stop();
    assert!(ok > 50, "only {ok} requests ran");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    let v2_answer = curl(&c, "node-1", &url).expect("an answer after the update");
    assert!(
        running_pods(&k, "app=myapp")
            .iter()
            .any(|(n, _)| *n == v2_answer),
        "{v2_answer} is not a live pod"
    );
}

/// The MAC addresses in arping's replies, in either arping's format (`42 bytes from MAC (IP)`
/// or iputils' `Unicast reply from IP [MAC]`).
fn reply_macs(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter(|l| l.contains(" from "))
        .flat_map(|l| l.split_whitespace())
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_lowercase())
        .filter(|w| w.len() == 17 && w.matches(':').count() == 5)
        .collect()
}

#[test]
fn arping_replies_are_read_in_both_formats() {
    let habets = "ARPING 192.168.67.120\n42 bytes from 06:71:63:c9:51:83 (192.168.67.120): index=0 time=8.633 usec\n42 bytes from 06:71:63:c9:51:84 (192.168.67.120): index=1 time=1 usec\n";
    assert_eq!(reply_macs(habets).len(), 2);
    let iputils = "ARPING 192.168.67.120 from 192.168.67.2 eth0\nUnicast reply from 192.168.67.120 [06:71:63:C9:51:83]  0.600ms\n";
    assert_eq!(
        reply_macs(iputils).into_iter().collect::<Vec<_>>(),
        vec!["06:71:63:c9:51:83".to_string()]
    );
}

/// Sequential HTTP requests from the client namespace, until stopped.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    worker: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Load {
    fn start(c: &UpCluster, url: &str) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, ns, url) = (stop.clone(), c.ns("client"), url.to_string());
        let worker = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "curl", "-sS", "-m", "3", &url])
                    .stdin(Stdio::null())
                    .output()
                    .expect("curl");
                if out.status.success()
                    && answered_by(&String::from_utf8_lossy(&out.stdout)).is_some()
                {
                    ok += 1;
                } else {
                    failed.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        });
        Load { stop, worker }
    }

    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.worker.join().expect("load thread")
    }
}

/// `up` lifecycle: the default NodePort range rejects 33333 and a wider one accepts it after a
/// restart on the same data dir (which brings the same cluster back); Ctrl-C removes every
/// namespace; after a crash `switchyard down` does.
#[test]
fn up_restarts_with_the_same_data_and_down_cleans_up_after_a_crash() {
    if !prerequisites() {
        return;
    }
    let mut c = UpCluster::start(binary(), 1, &["--no-example"]).expect("switchyard up");
    let k = c.kubectl().expect("kubectl");
    assert!(
        k.ok(&["get", "svc", "myapp"]).is_err(),
        "--no-example applied the example"
    );
    k.ok(&["apply", "-f", &example("01-clusterip.yaml")])
        .expect("apply 01");
    let out = k.run(&["apply", "-f", &example("03-nodeport-33333.yaml")]);
    assert!(
        !out.success && out.stderr.contains("30000-32767"),
        "{}",
        out.stderr
    );
    let uid = service_field(&k, "myapp", "/metadata/uid");

    let status = c.stop().expect("Ctrl-C stops up");
    assert!(status.success(), "{status}");
    assert_eq!(
        c.namespaces(),
        Vec::<String>::new(),
        "namespaces left after Ctrl-C"
    );

    c.launch(&["--service-node-port-range", "30000-50000"])
        .expect("up again on the same data dir");
    assert_eq!(
        service_field(&k, "myapp", "/metadata/uid"),
        uid,
        "a different cluster came back"
    );
    k.ok(&["apply", "-f", &example("03-nodeport-33333.yaml")])
        .expect("nodePort 33333 under 30000-50000");
    assert_eq!(
        service_field(&k, "myapp-33333", "/spec/ports/0/nodePort"),
        "33333"
    );
    until(
        Duration::from_secs(120),
        "a pod answers on nodePort 33333",
        || curl(&c, "client", "http://192.168.67.11:33333/"),
    );

    // A second `up` on the same data dir refuses while the first runs.
    let out = Command::new(binary())
        .arg("up")
        .arg("--data-dir")
        .arg(c.data_dir())
        .args(["--name-prefix", &c.prefix])
        .output()
        .expect("second up");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is running"));

    c.crash();
    assert!(
        !c.namespaces().is_empty(),
        "the crash removed the namespaces"
    );
    let out = Command::new(binary())
        .arg("down")
        .arg("--data-dir")
        .arg(c.data_dir())
        .output()
        .expect("switchyard down");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        c.namespaces(),
        Vec::<String>::new(),
        "namespaces left after down"
    );
}

/// `dig` inside pod `pod` (its resolv.conf: nameserver 10.96.0.10, the cluster search path).
fn pod_dig(k: &Kubectl, pod: &str, args: &[&str]) -> String {
    let mut all = vec!["exec", pod, "--", "dig", "+time=2", "+tries=2"];
    all.extend(args);
    let out = k.run(&all);
    assert!(out.success, "dig {args:?} in {pod}: {}", out.stderr);
    out.stdout
}

fn short_lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Issue 6's record shapes through the whole path: a pod asks 10.96.0.10 (the kube-dns
/// Service), the node's proxy sends it to the DNS instance on node 1, over UDP and TCP.
#[test]
fn every_dns_record_shape_answers_a_pod_through_the_kube_dns_service() {
    if !prerequisites() {
        return;
    }
    let c = UpCluster::start(binary(), 2, &[]).expect("switchyard up --nodes 2");
    let k = c.kubectl().expect("kubectl");
    // A pod with a hostname in the headless service's subdomain (its DNS name), next to myapp's.
    k.run_with_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, labels: {app: myapp}}\nspec:\n  hostname: web-0\n  subdomain: myapp-headless\n  containers: [{name: web, image: 'myapp:v1', ports: [{name: http, containerPort: 80}]}]\n",
    );
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/web-0",
        "--timeout=120s",
    ])
    .expect("web-0 Ready");
    let pods = settled_pods(&k, "app=myapp", 4);
    let web0_ip = pods
        .iter()
        .find(|(n, _)| n == "web-0")
        .map(|(_, ip)| ip.clone())
        .expect("web-0's IP");
    // Ask from a pod on the node without the DNS instance: the answer crosses the proxy.
    let probe = until(Duration::from_secs(10), "a pod on node-2", || {
        let list = json(
            &k,
            &[
                "get",
                "pods",
                "-l",
                "app=myapp",
                "--field-selector",
                "spec.nodeName=node-2",
            ],
        );
        list["items"][0]["metadata"]["name"]
            .as_str()
            .map(str::to_string)
    });
    let cluster_ip = service_field(&k, "myapp", "/spec/clusterIP");

    for transport in ["+notcp", "+tcp"] {
        let dig = |args: &[&str]| {
            let mut all = vec![transport];
            all.extend(args);
            pod_dig(&k, &probe, &all)
        };
        let short = |args: &[&str]| {
            let mut all = vec!["+short"];
            all.extend(args);
            short_lines(&dig(&all))
        };
        let cases: Vec<(Vec<&str>, BTreeSet<String>)> = vec![
            (
                vec!["dns-version.cluster.local", "TXT"],
                ["\"1.1.0\"".to_string()].into(),
            ),
            (
                vec!["myapp.default.svc.cluster.local"],
                [cluster_ip.clone()].into(),
            ),
            // The search path of the pod's resolv.conf.
            (vec!["+search", "myapp"], [cluster_ip.clone()].into()),
            (
                vec!["MyApp.Default.SVC.cluster.local"],
                [cluster_ip.clone()].into(),
            ),
            (
                vec!["myapp-headless.default.svc.cluster.local"],
                pods.iter().map(|(_, ip)| ip.clone()).collect(),
            ),
            (
                vec!["_http._tcp.myapp.default.svc.cluster.local", "SRV"],
                ["0 100 80 myapp.default.svc.cluster.local.".to_string()].into(),
            ),
            (
                vec!["-x", &cluster_ip],
                ["myapp.default.svc.cluster.local.".to_string()].into(),
            ),
            (
                vec!["my-service.default.svc.cluster.local", "CNAME"],
                ["my.database.example.com.".to_string()].into(),
            ),
            (
                vec!["web-0.myapp-headless.default.svc.cluster.local"],
                [web0_ip.clone()].into(),
            ),
        ];
        for (args, want) in &cases {
            assert_eq!(&short(args), want, "dig {transport} {args:?}");
        }
        let pod_name = format!("{}.default.pod.cluster.local", web0_ip.replace('.', "-"));
        assert_eq!(short(&[&pod_name]), [web0_ip.clone()].into(), "{pod_name}");
        // Every headless endpoint has an SRV record under the service.
        let srv = short(&["_http._tcp.myapp-headless.default.svc.cluster.local", "SRV"]);
        assert_eq!(srv.len(), 4, "{srv:?}");
        assert!(
            srv.contains("0 25 80 web-0.myapp-headless.default.svc.cluster.local."),
            "{srv:?}"
        );
        // NXDOMAIN for a missing name, NODATA (NOERROR, no answer, the SOA) for a missing type.
        let missing = dig(&["nothing-here.default.svc.cluster.local"]);
        assert!(missing.contains("status: NXDOMAIN"), "{missing}");
        assert!(missing.contains("SOA"), "{missing}");
        let nodata = dig(&["myapp.default.svc.cluster.local", "AAAA"]);
        assert!(nodata.contains("status: NOERROR"), "{nodata}");
        assert!(nodata.contains("ANSWER: 0"), "{nodata}");
        assert!(nodata.contains("SOA"), "{nodata}");
    }
}

/// externalTrafficPolicy Local through the whole stack: the LoadBalancer IP is announced only by
/// the node with the endpoint, the client's address reaches the pod unchanged, and each node's
/// healthCheckNodePort answers as kube-proxy's (200 with local endpoints, else 503).
#[test]
fn external_traffic_policy_local_from_announcement_to_health_check() {
    if !prerequisites() {
        return;
    }
    let c = UpCluster::start(binary(), 2, &["--no-example"]).expect("switchyard up --nodes 2");
    let k = c.kubectl().expect("kubectl");
    k.ok(&["apply", "-f", &example("metallb.yaml")])
        .expect("the MetalLB pool");
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: local-0, labels: {app: local}}\nspec:\n  nodeName: node-2\n  containers: [{name: web, image: 'myapp:v1'}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: local-lb}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {app: local}\n  ports: [{port: 80, targetPort: 80}]\n";
    let out = k.run_with_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.success, "{}", out.stderr);
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/local-0",
        "--timeout=120s",
    ])
    .expect("local-0 Ready");
    let lb_ip = until(Duration::from_secs(30), "a LoadBalancer IP", || {
        let svc = json(&k, &["get", "svc", "local-lb"]);
        svc.pointer("/status/loadBalancer/ingress/0/ip")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let health_port = service_field(&k, "local-lb", "/spec/healthCheckNodePort");

    // The client reaches the pod through node-2 only, with its own address.
    let body = until(
        Duration::from_secs(30),
        "the LoadBalancer IP answers",
        || {
            let out = c.exec(
                "client",
                &["curl", "-sS", "-m", "3", &format!("http://{lb_ip}/")],
            );
            out.status.success().then(|| text(&out))
        },
    );
    assert!(body.contains("pod: default/local-0"), "{body}");
    assert!(
        body.contains("client: 192.168.67.2:"),
        "source address lost: {body}"
    );
    let node2_mac = text(&c.exec("node-2", &["cat", "/sys/class/net/eth0/address"]));
    let neighbour = text(&c.exec("client", &["ip", "neigh", "show", &lb_ip]));
    assert!(
        neighbour.contains(node2_mac.trim()),
        "{lb_ip} resolved to {neighbour}, not node-2's {node2_mac}"
    );

    // healthCheckNodePort on each node, from outside.
    let health = |node_ip: &str| {
        let out = c.exec(
            "client",
            &[
                "curl",
                "-sS",
                "-m",
                "3",
                "-w",
                "\n%{http_code}",
                &format!("http://{node_ip}:{health_port}/healthz"),
            ],
        );
        let all = text(&out);
        let (body, code) = all.rsplit_once('\n').expect("a status line");
        (code.to_string(), body.to_string())
    };
    let (code, body) = until(Duration::from_secs(20), "node-2's health check", || {
        let (code, body) = health("192.168.67.12");
        (code == "200").then_some((code, body))
    });
    let fields: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(code, "200");
    assert_eq!(fields["localEndpoints"], 1, "{body}");
    assert_eq!(fields["service"]["name"], "local-lb", "{body}");
    let (code, body) = health("192.168.67.11");
    assert_eq!(code, "503", "node-1 has no endpoint: {body}");
    let fields: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(fields["localEndpoints"], 0, "{body}");

    // Deleting the Service stops every announcement.
    k.ok(&["delete", "svc", "local-lb"]).expect("delete");
    let _ = c.exec("client", &["ip", "neigh", "flush", "to", &lb_ip]);
    until(Duration::from_secs(20), "no node answers ARP", || {
        let out = c.exec(
            "client",
            &["curl", "-sS", "-m", "1", &format!("http://{lb_ip}/")],
        );
        let neighbour = text(&c.exec("client", &["ip", "neigh", "show", &lb_ip]));
        (!out.status.success() && !neighbour.contains("lladdr")).then_some(())
    });
}
