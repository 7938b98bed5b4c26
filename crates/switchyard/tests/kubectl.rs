//! Acceptance tests with the real kubectl (v1.32): each test starts its own `switchyard server`
//! in a temporary directory and drives it the way a user would — `apply`, `get` in every output
//! format, `describe`, `patch`, `replace`, `scale`, `delete`, `get -w`, `explain`,
//! `api-resources`, server-side apply and dry runs — asserting what kubectl reports and what the
//! server stored (read back with `-o json`). Without kubectl on PATH (or `$KUBECTL`) every test
//! skips loudly.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_testkit::{kubectl_path, Kubectl, KubectlOutput, ServerProcess};

/// One server, its data directory and a kubectl pointed at it.
struct Cluster {
    kubectl: Kubectl,
    _server: ServerProcess,
    dir: tempfile::TempDir,
}

/// Start a server with `extra` flags; `None` (the test skips) when there is no kubectl.
fn cluster(extra: &[&str]) -> Option<Cluster> {
    let binary = kubectl_path()?;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = ServerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_switchyard")),
        &dir.path().join("data"),
        extra,
    )
    .expect("switchyard server starts");
    let kubectl = Kubectl::new(binary, &server.kubeconfig());
    Some(Cluster {
        kubectl,
        _server: server,
        dir,
    })
}

impl Cluster {
    /// Run kubectl and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.kubectl.ok(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Run kubectl and require failure; returns the output (stderr carries the error).
    fn fails(&self, args: &[&str]) -> KubectlOutput {
        let out = self.kubectl.run(args);
        assert!(
            !out.success,
            "kubectl {} should fail but printed:\n{}",
            args.join(" "),
            out.stdout
        );
        out
    }

    /// `kubectl ARGS -o json`, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl {} printed no JSON ({e}):\n{out}", all.join(" ")))
    }

    /// Whether `kubectl get KIND NAME` reports NotFound.
    fn gone(&self, kind: &str, name: &str) -> bool {
        let out = self.kubectl.run(&["get", kind, name]);
        !out.success && out.stderr.contains("NotFound")
    }

    /// Write `yaml` to `name` in the test's directory and return its path.
    fn file(&self, name: &str, yaml: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).expect("writing a manifest");
        path.to_str().expect("a UTF-8 path").to_string()
    }

    /// `kubectl apply -f -` of `yaml`, required to succeed; returns stdout.
    fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl.run_with_stdin(&["apply", "-f", "-"], yaml);
        assert!(
            out.success,
            "kubectl apply failed:\n{}{}\nof:\n{yaml}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// `kubectl apply -f -` of `yaml`, required to fail; returns stderr.
    fn apply_fails(&self, yaml: &str) -> String {
        let out = self.kubectl.run_with_stdin(&["apply", "-f", "-"], yaml);
        assert!(
            !out.success,
            "kubectl apply should fail but printed:\n{}\nof:\n{yaml}",
            out.stdout
        );
        out.stderr
    }
}

/// A Namespace manifest (`kubectl create namespace` sends protobuf; apply sends JSON).
fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

fn myapp_yaml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/myapp.yaml")
}

fn apply_myapp(c: &Cluster) -> String {
    let path = myapp_yaml();
    c.ok(&["apply", "-f", path.to_str().expect("a UTF-8 path")])
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v:#}"))
}

fn i64_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in {v:#}"))
}

/// The whitespace-separated cells of the table row whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
}

fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

/// The value of the first `NAME:` line of `kubectl describe` output, whitespace collapsed.
fn field(text: &str, name: &str) -> String {
    let prefix = format!("{name}:");
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name}: in\n{text}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn in_service_cidr(ip: &str) -> bool {
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|e| panic!("{ip} is not an IPv4 address: {e}"));
    let o = ip.octets();
    o[0] == 10 && (96..=111).contains(&o[1])
}

const SERVICE_TYPES: &[&str] = &[
    "myapp",
    "myapp-headless",
    "myapp-nodeport",
    "myapp-lb",
    "my-service",
];

#[test]
fn apply_of_a_multi_document_file_creates_every_object() {
    let Some(c) = cluster(&[]) else { return };
    let out = apply_myapp(&c);
    assert!(out.contains("deployment.apps/myapp created"), "{out}");
    for name in SERVICE_TYPES {
        assert!(out.contains(&format!("service/{name} created")), "{out}");
    }

    let deploy = c.json(&["get", "deployment", "myapp"]);
    assert_eq!(i64_at(&deploy, "/spec/replicas"), 3);

    let svc = |name: &str| c.json(&["get", "svc", name]);
    let cluster_ip = svc("myapp");
    let nodeport = svc("myapp-nodeport");
    let lb = svc("myapp-lb");
    let ips: Vec<String> = [&cluster_ip, &nodeport, &lb]
        .iter()
        .map(|s| str_at(s, "/spec/clusterIP").to_string())
        .collect();
    for ip in &ips {
        assert!(in_service_cidr(ip), "{ip} is outside 10.96.0.0/12");
    }
    assert!(
        ips[0] != ips[1] && ips[1] != ips[2] && ips[0] != ips[2],
        "ClusterIPs repeat: {ips:?}"
    );
    assert!(
        !ips.contains(&"10.96.0.1".to_string()),
        "the kubernetes service's IP handed out again: {ips:?}"
    );
    assert_eq!(str_at(&cluster_ip, "/spec/type"), "ClusterIP");
    assert_eq!(cluster_ip.pointer("/spec/ports/0/nodePort"), None);

    let headless = svc("myapp-headless");
    assert_eq!(str_at(&headless, "/spec/clusterIP"), "None");
    assert_eq!(headless["spec"]["clusterIPs"], serde_json::json!(["None"]));

    for s in [&nodeport, &lb] {
        let port = i64_at(s, "/spec/ports/0/nodePort");
        assert!(
            (30000..=32767).contains(&port),
            "nodePort {port} outside 30000-32767"
        );
    }
    assert_ne!(
        i64_at(&nodeport, "/spec/ports/0/nodePort"),
        i64_at(&lb, "/spec/ports/0/nodePort")
    );
    assert_eq!(str_at(&lb, "/spec/type"), "LoadBalancer");

    let external = svc("my-service");
    assert_eq!(str_at(&external, "/spec/type"), "ExternalName");
    assert_eq!(
        str_at(&external, "/spec/externalName"),
        "my.database.example.com"
    );
    assert_eq!(external.pointer("/spec/clusterIP"), None, "{external:#}");
    assert_eq!(external.pointer("/spec/clusterIPs"), None, "{external:#}");
}

#[test]
fn get_prints_services_as_a_table_with_kubectls_columns() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    let table = c.ok(&["get", "svc"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );

    let ip = |name: &str| str_at(&c.json(&["get", "svc", name]), "/spec/clusterIP").to_string();
    let node_port = |name: &str| i64_at(&c.json(&["get", "svc", name]), "/spec/ports/0/nodePort");

    assert_eq!(
        row(&table, "kubernetes")[..5],
        ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]
    );
    assert_eq!(
        row(&table, "myapp")[..5],
        [
            "myapp",
            "ClusterIP",
            ip("myapp").as_str(),
            "<none>",
            "80/TCP"
        ]
    );
    assert_eq!(
        row(&table, "myapp-headless")[..5],
        ["myapp-headless", "ClusterIP", "None", "<none>", "80/TCP"]
    );
    let np = format!("80:{}/TCP", node_port("myapp-nodeport"));
    assert_eq!(
        row(&table, "myapp-nodeport")[..5],
        [
            "myapp-nodeport",
            "NodePort",
            ip("myapp-nodeport").as_str(),
            "<none>",
            np.as_str()
        ]
    );
    let lb = format!("80:{}/TCP", node_port("myapp-lb"));
    assert_eq!(
        row(&table, "myapp-lb")[..5],
        [
            "myapp-lb",
            "LoadBalancer",
            ip("myapp-lb").as_str(),
            "<pending>",
            lb.as_str()
        ]
    );
    assert_eq!(
        row(&table, "my-service")[..5],
        [
            "my-service",
            "ExternalName",
            "<none>",
            "my.database.example.com",
            "<none>"
        ]
    );
}

#[test]
fn get_wide_adds_the_selector_column() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    let table = c.ok(&["get", "svc", "-o", "wide"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    assert_eq!(row(&table, "myapp").last(), Some(&"app=myapp"));
    assert_eq!(row(&table, "myapp-lb").last(), Some(&"app=myapp"));
    assert_eq!(row(&table, "my-service").last(), Some(&"<none>"));
}

#[test]
fn get_as_yaml_and_json_carries_the_metadata_the_server_sets() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    let json = c.json(&["get", "svc", "myapp"]);
    let yaml_text = c.ok(&["get", "svc", "myapp", "-o", "yaml"]);
    let yaml: Value = serde_yaml::from_str(&yaml_text).expect("kubectl prints YAML");
    for obj in [&json, &yaml] {
        assert_eq!(str_at(obj, "/apiVersion"), "v1");
        assert_eq!(str_at(obj, "/kind"), "Service");
        assert_eq!(str_at(obj, "/metadata/name"), "myapp");
        assert_eq!(str_at(obj, "/metadata/namespace"), "default");
        assert!(
            str_at(obj, "/metadata/resourceVersion")
                .parse::<u64>()
                .is_ok(),
            "{obj:#}"
        );
        assert_eq!(str_at(obj, "/metadata/uid").len(), 36, "{obj:#}");
        assert!(
            str_at(obj, "/metadata/creationTimestamp").ends_with('Z'),
            "{obj:#}"
        );
        assert_eq!(str_at(obj, "/spec/ports/0/protocol"), "TCP");
        assert_eq!(str_at(obj, "/spec/ports/0/targetPort"), "http");
    }
    assert_eq!(json, yaml, "-o json and -o yaml show the same object");

    let list = c.json(&["get", "svc"]);
    assert_eq!(str_at(&list, "/kind"), "List");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| str_at(i, "/metadata/name"))
        .collect();
    for name in SERVICE_TYPES.iter().chain(&["kubernetes"]) {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
}

#[test]
fn get_lists_deployments_endpoints_endpointslices_namespaces_and_all_namespaces() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);

    // The server's deployment controller creates the pods (none runs: there is no node yet).
    c.ok(&[
        "wait",
        "deploy/myapp",
        "--for=jsonpath={.status.updatedReplicas}=3",
        "--timeout=60s",
    ]);
    let deploy = c.ok(&["get", "deploy"]);
    assert_eq!(
        header(&deploy),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(row(&deploy, "myapp")[..4], ["myapp", "0/3", "3", "0"]);

    let endpoints = c.ok(&["get", "endpoints"]);
    assert_eq!(header(&endpoints), ["NAME", "ENDPOINTS", "AGE"]);
    let server_port = c.json(&["get", "endpoints", "kubernetes"]);
    let port = i64_at(&server_port, "/subsets/0/ports/0/port");
    assert_eq!(
        row(&endpoints, "kubernetes")[1],
        format!("127.0.0.1:{port}")
    );

    let slices = c.ok(&["get", "endpointslices"]);
    assert_eq!(
        header(&slices),
        ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    );
    assert_eq!(
        row(&slices, "kubernetes")[..4],
        ["kubernetes", "IPv4", port.to_string().as_str(), "127.0.0.1"]
    );

    let ns = c.ok(&["get", "ns"]);
    assert_eq!(header(&ns), ["NAME", "STATUS", "AGE"]);
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert_eq!(row(&ns, name)[1], "Active");
    }

    c.apply(&namespace("other"));
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: elsewhere, namespace: other}\nspec: {ports: [{port: 81}]}\n",
    );
    let all = c.ok(&["get", "svc", "-A"]);
    assert_eq!(
        header(&all),
        [
            "NAMESPACE",
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let rows: Vec<Vec<&str>> = all
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.iter().any(|r| r[..2] == ["default", "kubernetes"]),
        "{all}"
    );
    assert!(rows.iter().any(|r| r[..2] == ["default", "myapp"]), "{all}");
    assert!(
        rows.iter()
            .any(|r| r[..2] == ["other", "elsewhere"] && r[5] == "81/TCP"),
        "{all}"
    );
    assert!(
        !c.ok(&["get", "svc"]).contains("elsewhere"),
        "get without -A lists only the default namespace"
    );
}

#[test]
fn describe_shows_a_services_and_a_deployments_fields() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    let svc = c.json(&["get", "svc", "myapp-nodeport"]);
    let text = c.ok(&["describe", "svc", "myapp-nodeport"]);
    assert_eq!(field(&text, "Name"), "myapp-nodeport");
    assert_eq!(field(&text, "Namespace"), "default");
    assert_eq!(field(&text, "Selector"), "app=myapp");
    assert_eq!(field(&text, "Type"), "NodePort");
    assert_eq!(field(&text, "IP"), str_at(&svc, "/spec/clusterIP"));
    assert_eq!(field(&text, "Port"), "http 80/TCP");
    assert_eq!(field(&text, "TargetPort"), "http/TCP");
    assert_eq!(
        field(&text, "NodePort"),
        format!("http {}/TCP", i64_at(&svc, "/spec/ports/0/nodePort"))
    );
    assert_eq!(field(&text, "External Traffic Policy"), "Cluster");
    assert_eq!(field(&text, "Session Affinity"), "None");

    let external = c.ok(&["describe", "svc", "my-service"]);
    assert_eq!(field(&external, "Type"), "ExternalName");
    assert_eq!(field(&external, "External Name"), "my.database.example.com");

    let text = c.ok(&["describe", "deployment", "myapp"]);
    assert_eq!(field(&text, "Name"), "myapp");
    assert_eq!(field(&text, "Selector"), "app=myapp");
    assert_eq!(field(&text, "Labels"), "app=myapp");
    assert!(field(&text, "Replicas").starts_with("3 desired"), "{text}");
    assert_eq!(field(&text, "StrategyType"), "RollingUpdate");
    assert_eq!(
        field(&text, "RollingUpdateStrategy"),
        "25% max unavailable, 25% max surge"
    );
    assert_eq!(field(&text, "Image"), "myapp:v1");
    assert_eq!(field(&text, "Port"), "80/TCP");
}

#[test]
fn patch_changes_labels_as_strategic_merge_and_json_patches() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    let before = c.json(&["get", "svc", "myapp"]);

    assert!(c
        .ok(&[
            "patch",
            "svc",
            "myapp",
            "-p",
            r#"{"metadata":{"labels":{"tier":"web"}}}"#
        ])
        .contains("patched"));
    c.ok(&[
        "patch",
        "svc",
        "myapp",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"env":"prod"}}}"#,
    ]);
    c.ok(&[
        "patch",
        "svc",
        "myapp",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/team","value":"net"}]"#,
    ]);
    let after = c.json(&["get", "svc", "myapp"]);
    assert_eq!(
        after["metadata"]["labels"],
        serde_json::json!({"tier": "web", "env": "prod", "team": "net"})
    );

    // A strategic patch deletes with null; a JSON patch removes by path.
    c.ok(&[
        "patch",
        "svc",
        "myapp",
        "-p",
        r#"{"metadata":{"labels":{"tier":null}}}"#,
    ]);
    c.ok(&[
        "patch",
        "svc",
        "myapp",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/labels/env"}]"#,
    ]);
    let after = c.json(&["get", "svc", "myapp"]);
    assert_eq!(
        after["metadata"]["labels"],
        serde_json::json!({"team": "net"})
    );

    // The rest of the object is untouched; the resourceVersion moved on.
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_ne!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );

    // A strategic patch of the ports list merges by port.
    c.ok(&[
        "patch",
        "svc",
        "myapp",
        "-p",
        r#"{"spec":{"ports":[{"port":80,"name":"web"}]}}"#,
    ]);
    let after = c.json(&["get", "svc", "myapp"]);
    assert_eq!(after["spec"]["ports"].as_array().map(Vec::len), Some(1));
    assert_eq!(str_at(&after, "/spec/ports/0/name"), "web");
    assert_eq!(str_at(&after, "/spec/ports/0/targetPort"), "http");
}

#[test]
fn writes_based_on_a_stale_resource_version_conflict() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    let saved = c.ok(&["get", "svc", "myapp", "-o", "yaml"]);
    let stale: Value = serde_yaml::from_str(&saved).expect("YAML");
    let stale_rv = str_at(&stale, "/metadata/resourceVersion").to_string();
    let saved = c.file("saved.yaml", &saved);
    c.ok(&["label", "svc", "myapp", "changed=yes"]);

    let out = c.fails(&["replace", "-f", &saved]);
    assert!(
        out.stderr.contains("Error from server (Conflict)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            r#"Operation cannot be fulfilled on services "myapp": the object has been modified; please apply your changes to the latest version and try again"#
        ),
        "{}",
        out.stderr
    );

    let merge = format!(
        r#"{{"metadata":{{"resourceVersion":"{stale_rv}","labels":{{"merge":"stale"}}}}}}"#
    );
    let out = c.fails(&["patch", "svc", "myapp", "--type=merge", "-p", &merge]);
    assert!(
        out.stderr.contains("Error from server (Conflict)"),
        "{}",
        out.stderr
    );

    let json = format!(
        r#"[{{"op":"replace","path":"/metadata/resourceVersion","value":"{stale_rv}"}},{{"op":"add","path":"/metadata/labels/json","value":"stale"}}]"#
    );
    let out = c.fails(&["patch", "svc", "myapp", "--type=json", "-p", &json]);
    assert!(
        out.stderr.contains("Error from server (Conflict)"),
        "{}",
        out.stderr
    );

    // A failed JSON patch `test` operation is 422, as in kube-apiserver.
    let test = format!(
        r#"[{{"op":"test","path":"/metadata/resourceVersion","value":"{stale_rv}"}},{{"op":"add","path":"/metadata/labels/test","value":"stale"}}]"#
    );
    let out = c.fails(&["patch", "svc", "myapp", "--type=json", "-p", &test]);
    assert!(
        out.stderr.contains("The request is invalid"),
        "{}",
        out.stderr
    );

    let now = c.json(&["get", "svc", "myapp"]);
    assert_eq!(
        now["metadata"]["labels"],
        serde_json::json!({"changed": "yes"}),
        "no stale write landed"
    );

    // With the current resourceVersion the same writes succeed.
    let current = str_at(&now, "/metadata/resourceVersion");
    let merge =
        format!(r#"{{"metadata":{{"resourceVersion":"{current}","labels":{{"merge":"fresh"}}}}}}"#);
    c.ok(&["patch", "svc", "myapp", "--type=merge", "-p", &merge]);
    assert_eq!(
        str_at(&c.json(&["get", "svc", "myapp"]), "/metadata/labels/merge"),
        "fresh"
    );
}

const WEB_V1: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web, tier: frontend}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web, tier: frontend}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
"#;

const WEB_V2: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 5
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}, {name: https, port: 443}]
"#;

#[test]
fn apply_of_a_changed_file_updates_the_objects_and_drops_removed_fields() {
    let Some(c) = cluster(&[]) else { return };
    let v1 = c.file("web.yaml", WEB_V1);
    let out = c.ok(&["apply", "-f", &v1]);
    assert!(
        out.contains("deployment.apps/web created") && out.contains("service/web created"),
        "{out}"
    );
    let ip = str_at(&c.json(&["get", "svc", "web"]), "/spec/clusterIP").to_string();
    // A label someone else added is not in the file: apply keeps it.
    c.ok(&["label", "svc", "web", "extra=kept"]);

    let out = c.ok(&["apply", "-f", &v1]);
    assert!(
        out.contains("deployment.apps/web unchanged") && out.contains("service/web unchanged"),
        "{out}"
    );

    let v2 = c.file("web.yaml", WEB_V2);
    let out = c.ok(&["apply", "-f", &v2]);
    assert!(
        out.contains("deployment.apps/web configured") && out.contains("service/web configured"),
        "{out}"
    );

    let deploy = c.json(&["get", "deploy", "web"]);
    assert_eq!(i64_at(&deploy, "/spec/replicas"), 5);
    assert_eq!(
        deploy["metadata"]["labels"],
        serde_json::json!({"app": "web"})
    );
    assert_eq!(i64_at(&deploy, "/metadata/generation"), 2);

    let svc = c.json(&["get", "svc", "web"]);
    assert_eq!(
        svc["metadata"]["labels"],
        serde_json::json!({"app": "web", "extra": "kept"})
    );
    let ports: Vec<(i64, &str)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (i64_at(p, "/port"), str_at(p, "/name")))
        .collect();
    assert_eq!(ports, [(80, "http"), (443, "https")]);
    assert_eq!(
        str_at(&svc, "/spec/clusterIP"),
        ip,
        "the ClusterIP survives the apply"
    );
    let last_applied: Value = serde_json::from_str(str_at(
        &svc,
        "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
    ))
    .expect("last-applied-configuration is JSON");
    assert_eq!(
        last_applied["metadata"]["labels"],
        serde_json::json!({"app": "web"})
    );
}

const SSA: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: ssa
  labels: {owner: alice}
spec:
  selector: {app: ssa}
  ports: [{name: http, port: 80}]
"#;

#[test]
fn server_side_apply_creates_updates_and_reports_conflicts_with_other_managers() {
    let Some(c) = cluster(&[]) else { return };
    let file = c.file("ssa.yaml", SSA);
    assert!(c
        .ok(&["apply", "--server-side", "-f", &file])
        .contains("service/ssa serverside-applied"));
    let svc = c.json(&["get", "svc", "ssa", "--show-managed-fields"]);
    assert!(in_service_cidr(str_at(&svc, "/spec/clusterIP")));
    let managers = svc["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    assert_eq!(managers.len(), 1, "{managers:#?}");
    assert_eq!(str_at(&managers[0], "/manager"), "kubectl");
    assert_eq!(str_at(&managers[0], "/operation"), "Apply");
    assert!(
        managers[0]
            .pointer("/fieldsV1/f:metadata/f:labels/f:owner")
            .is_some(),
        "{managers:#?}"
    );

    // Update by the same manager.
    let changed = c.file(
        "ssa.yaml",
        &SSA.replace("port: 80}", "port: 80}, {name: alt, port: 8080}"),
    );
    c.ok(&["apply", "--server-side", "-f", &changed]);
    let svc = c.json(&["get", "svc", "ssa"]);
    assert_eq!(svc["spec"]["ports"].as_array().map(Vec::len), Some(2));

    // Another manager changing an owned field conflicts...
    let bob = c.file("bob.yaml", &SSA.replace("alice", "bob"));
    let out = c.fails(&["apply", "--server-side", "--field-manager=bob", "-f", &bob]);
    assert!(
        out.stderr.contains("Apply failed with 1 conflict"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(r#"conflict with "kubectl": .metadata.labels.owner"#),
        "{}",
        out.stderr
    );
    assert_eq!(
        str_at(&c.json(&["get", "svc", "ssa"]), "/metadata/labels/owner"),
        "alice"
    );

    // ...and wins with --force-conflicts, taking the field over.
    c.ok(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "-f",
        &bob,
    ]);
    let svc = c.json(&["get", "svc", "ssa", "--show-managed-fields"]);
    assert_eq!(str_at(&svc, "/metadata/labels/owner"), "bob");
    let owners: Vec<&str> = svc["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|m| m.pointer("/fieldsV1/f:metadata/f:labels/f:owner").is_some())
        .map(|m| str_at(m, "/manager"))
        .collect();
    assert_eq!(owners, ["bob"]);
}

#[test]
fn scale_sets_the_deployments_replicas() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    assert!(c
        .ok(&["scale", "deployment", "myapp", "--replicas=6"])
        .contains("deployment.apps/myapp scaled"));
    assert_eq!(
        c.ok(&["get", "deploy", "myapp", "-o", "jsonpath={.spec.replicas}"]),
        "6"
    );
    assert_eq!(
        i64_at(&c.json(&["get", "deploy", "myapp"]), "/spec/replicas"),
        6
    );
    let scale = c.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/myapp/scale",
    ]);
    let scale: Value = serde_json::from_str(&scale).expect("a Scale");
    assert_eq!(str_at(&scale, "/kind"), "Scale");
    assert_eq!(i64_at(&scale, "/spec/replicas"), 6);
}

#[test]
fn delete_removes_services_deployments_and_the_objects_of_a_file() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    assert!(c
        .ok(&["delete", "svc", "myapp"])
        .contains(r#"service "myapp" deleted"#));
    assert!(c
        .ok(&["delete", "deployment", "myapp"])
        .contains(r#"deployment.apps "myapp" deleted"#));
    assert!(c.gone("svc", "myapp"));
    assert!(c.gone("deployment", "myapp"));

    let file = c.file("web.yaml", WEB_V1);
    c.ok(&["apply", "-f", &file]);
    let out = c.ok(&["delete", "-f", &file]);
    assert!(
        out.contains(r#"deployment.apps "web" deleted"#)
            && out.contains(r#"service "web" deleted"#),
        "{out}"
    );
    assert!(c.gone("svc", "web"));
    assert!(c.gone("deploy", "web"));

    let out = c.fails(&["delete", "svc", "myapp"]);
    assert!(
        out.stderr.contains(r#"services "myapp" not found"#),
        "{}",
        out.stderr
    );
    let left: Vec<String> = c.json(&["get", "svc"])["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| str_at(i, "/metadata/name").to_string())
        .collect();
    assert_eq!(
        left,
        [
            "kubernetes",
            "my-service",
            "myapp-headless",
            "myapp-lb",
            "myapp-nodeport"
        ]
    );
}

#[test]
fn a_deleted_services_cluster_ip_and_node_port_can_be_requested_again() {
    let Some(c) = cluster(&[]) else { return };
    apply_myapp(&c);
    let ip = str_at(&c.json(&["get", "svc", "myapp"]), "/spec/clusterIP").to_string();
    let np = c.json(&["get", "svc", "myapp-nodeport"]);
    let (np_ip, port) = (
        str_at(&np, "/spec/clusterIP").to_string(),
        i64_at(&np, "/spec/ports/0/nodePort"),
    );

    let reuse = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reuse}}\nspec:\n  type: NodePort\n  clusterIP: {ip}\n  ports: [{{port: 80, nodePort: {port}}}]\n"
    );
    let err = c.apply_fails(&reuse);
    assert!(err.contains("provided IP is already allocated"), "{err}");
    c.ok(&["delete", "svc", "myapp"]);
    let err = c.apply_fails(&reuse);
    assert!(err.contains("provided port is already allocated"), "{err}");
    c.ok(&["delete", "svc", "myapp-nodeport"]);

    c.apply(&reuse);
    let svc = c.json(&["get", "svc", "reuse"]);
    assert_eq!(str_at(&svc, "/spec/clusterIP"), ip);
    assert_eq!(i64_at(&svc, "/spec/ports/0/nodePort"), port);
    // The other released IP is free too.
    c.apply(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: reuse2}}\nspec:\n  clusterIP: {np_ip}\n  ports: [{{port: 80}}]\n"));
    assert_eq!(
        str_at(&c.json(&["get", "svc", "reuse2"]), "/spec/clusterIP"),
        np_ip
    );
}

/// Reads a spawned kubectl's stdout lines into a channel.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collect lines from `rx` until one satisfies `done`; panics after `timeout`.
fn read_until(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = done(&line);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(e) => panic!("waiting for a watch line ({e}); saw:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn watch_with_output_watch_events_shows_added_modified_and_deleted() {
    let Some(c) = cluster(&[]) else { return };
    let mut watch = c
        .kubectl
        .spawn(&["get", "svc", "-w", "--output-watch-events"])
        .expect("kubectl get -w starts");
    let rx = lines_of(&mut watch.0);
    let mut seen = Vec::new();
    let timeout = Duration::from_secs(30);
    // The initial list arrives first: the watch is established.
    read_until(&rx, &mut seen, timeout, |l| {
        l.starts_with("ADDED") && l.contains("kubernetes")
    });
    assert_eq!(
        header(&seen[0]),
        [
            "EVENT",
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );

    let file = c.file(
        "watched.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: watched}\nspec: {ports: [{port: 80}]}\n",
    );
    c.ok(&["create", "-f", &file]);
    let ip = str_at(&c.json(&["get", "svc", "watched"]), "/spec/clusterIP").to_string();
    c.ok(&["label", "svc", "watched", "seen=yes"]);
    c.ok(&["delete", "svc", "watched"]);
    read_until(&rx, &mut seen, timeout, |l| {
        l.starts_with("DELETED") && l.contains("watched")
    });

    let events: Vec<Vec<&str>> = seen
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.get(1) == Some(&"watched"))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e[0]).collect();
    assert_eq!(
        kinds,
        ["ADDED", "MODIFIED", "DELETED"],
        "saw:\n{}",
        seen.join("\n")
    );
    for e in &events {
        assert_eq!(
            e[2..6],
            ["ClusterIP", ip.as_str(), "<none>", "80/TCP"],
            "saw:\n{}",
            seen.join("\n")
        );
    }
}

const NP33: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: np33}\nspec:\n  type: NodePort\n  ports: [{port: 80, targetPort: 8080, nodePort: 33333}]\n";

#[test]
fn a_node_port_outside_the_default_range_is_rejected() {
    let Some(c) = cluster(&[]) else { return };
    let err = c.apply_fails(NP33);
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Invalid value: 33333: provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{err}"
    );
    assert!(err.contains(r#"The Service "np33" is invalid"#), "{err}");
    assert!(c.gone("svc", "np33"));
}

#[test]
fn a_node_port_in_a_widened_range_is_accepted_once() {
    let Some(c) = cluster(&["--service-node-port-range", "30000-50000"]) else {
        return;
    };
    c.apply(NP33);
    let svc = c.json(&["get", "svc", "np33"]);
    assert_eq!(i64_at(&svc, "/spec/ports/0/nodePort"), 33333);
    assert_eq!(
        row(&c.ok(&["get", "svc", "np33"]), "np33")[4],
        "80:33333/TCP"
    );

    let err = c.apply_fails(&NP33.replace("np33", "np33-again"));
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Invalid value: 33333: provided port is already allocated"
        ),
        "{err}"
    );
    let err = c.apply_fails(&NP33.replace("np33", "np51").replace("33333", "50001"));
    assert!(
        err.contains("The range of valid ports is 30000-50000"),
        "{err}"
    );
}

#[test]
fn create_service_nodeport_generator_takes_an_explicit_node_port() {
    let Some(c) = cluster(&["--service-node-port-range", "30000-50000"]) else {
        return;
    };
    c.ok(&[
        "create",
        "service",
        "nodeport",
        "np33",
        "--tcp=80:8080",
        "--node-port=33333",
    ]);
    let svc = c.json(&["get", "svc", "np33"]);
    assert_eq!(str_at(&svc, "/spec/type"), "NodePort");
    assert_eq!(i64_at(&svc, "/spec/ports/0/port"), 80);
    assert_eq!(i64_at(&svc, "/spec/ports/0/targetPort"), 8080);
    assert_eq!(i64_at(&svc, "/spec/ports/0/nodePort"), 33333);
    assert_eq!(svc["spec"]["selector"], serde_json::json!({"app": "np33"}));
}

#[test]
fn a_requested_cluster_ip_outside_the_range_or_taken_is_rejected() {
    let Some(c) = cluster(&[]) else { return };
    let svc = |name: &str, ip: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n")
    };
    let err = c.apply_fails(&svc("outside", "10.200.0.5"));
    assert!(
        err.contains(r#"The Service "outside" is invalid: spec.clusterIPs: Invalid value: []string{"10.200.0.5"}"#),
        "{err}"
    );
    assert!(
        err.contains("the provided IP (10.200.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
        "{err}"
    );
    assert!(c.gone("svc", "outside"));

    c.apply(&svc("first", "10.100.0.5"));
    assert_eq!(
        str_at(&c.json(&["get", "svc", "first"]), "/spec/clusterIP"),
        "10.100.0.5"
    );
    let err = c.apply_fails(&svc("second", "10.100.0.5"));
    assert!(
        err.contains(r#"The Service "second" is invalid: spec.clusterIPs: Invalid value: []string{"10.100.0.5"}"#),
        "{err}"
    );
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let err = c.apply_fails(&svc("apiserver", "10.96.0.1"));
    assert!(
        err.contains("provided IP is already allocated"),
        "the kubernetes service holds 10.96.0.1: {err}"
    );
    assert!(c.gone("svc", "second"));
}

#[test]
fn explain_and_api_resources_describe_the_served_types() {
    let Some(c) = cluster(&[]) else { return };
    let explain = c.ok(&["explain", "service.spec.ports"]);
    assert!(explain.contains("KIND:       Service"), "{explain}");
    assert!(explain.contains("VERSION:    v1"), "{explain}");
    assert!(
        explain.contains("FIELD: ports <[]ServicePort>"),
        "{explain}"
    );
    for field in [
        "nodePort\t<integer>",
        "port\t<integer> -required-",
        "protocol\t<string>",
        "targetPort\t<IntOrString>",
    ] {
        assert!(explain.contains(field), "no {field:?} in:\n{explain}");
    }

    let resources = c.ok(&["api-resources"]);
    assert_eq!(
        header(&resources),
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    let expect = [
        ("services", "v1", "Service"),
        ("endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
        ("deployments", "apps/v1", "Deployment"),
        ("leases", "coordination.k8s.io/v1", "Lease"),
        ("ipaddresspools", "metallb.io/v1beta1", "IPAddressPool"),
        ("l2advertisements", "metallb.io/v1beta1", "L2Advertisement"),
    ];
    for (name, version, kind) in expect {
        let r = row(&resources, name);
        assert!(
            r.contains(&version) && r.last() == Some(&kind) && r.contains(&"true"),
            "{r:?}"
        );
    }
    assert_eq!(row(&resources, "services")[1], "svc");
    assert_eq!(row(&resources, "deployments")[1], "deploy");
    let names = c.ok(&["api-resources", "-o", "name"]);
    for name in [
        "services",
        "endpointslices.discovery.k8s.io",
        "leases.coordination.k8s.io",
        "ipaddresspools.metallb.io",
    ] {
        assert!(names.lines().any(|l| l == name), "{name} not in:\n{names}");
    }
}

const METALLB: &str = r#"apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: first-pool
  namespace: metallb-system
spec:
  addresses:
  - 192.168.67.120-192.168.67.200
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: example
  namespace: metallb-system
"#;

#[test]
fn metallb_manifests_apply_unchanged() {
    let Some(c) = cluster(&[]) else { return };
    c.apply(&namespace("metallb-system"));
    let out = c.apply(METALLB);
    assert!(
        out.contains("ipaddresspool.metallb.io/first-pool created"),
        "{out}"
    );
    assert!(
        out.contains("l2advertisement.metallb.io/example created"),
        "{out}"
    );

    let pools = c.ok(&["get", "ipaddresspools", "-n", "metallb-system"]);
    assert_eq!(header(&pools)[0], "NAME");
    assert!(
        row(&pools, "first-pool").contains(&r#"["192.168.67.120-192.168.67.200"]"#),
        "{pools}"
    );
    let pool = c.json(&["get", "ipaddresspool", "first-pool", "-n", "metallb-system"]);
    assert_eq!(
        pool["spec"]["addresses"],
        serde_json::json!(["192.168.67.120-192.168.67.200"])
    );
    assert_eq!(str_at(&pool, "/apiVersion"), "metallb.io/v1beta1");

    let ads = c.ok(&["get", "l2advertisements", "-n", "metallb-system"]);
    row(&ads, "example");
    // Applying the same file again changes nothing.
    let out = c.apply(METALLB);
    assert!(
        out.contains("ipaddresspool.metallb.io/first-pool unchanged"),
        "{out}"
    );
    assert!(
        out.contains("l2advertisement.metallb.io/example unchanged"),
        "{out}"
    );
    assert!(
        c.ok(&["get", "ipaddresspools"]).is_empty(),
        "nothing in the default namespace"
    );
}

const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: bound}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: unbound}
spec:
  containers: [{name: c, image: busybox}]
"#;

#[test]
fn deleting_a_bound_pod_is_graceful_and_forcing_removes_it_at_once() {
    let Some(c) = cluster(&[]) else { return };
    c.apply(PODS);
    let out = c.ok(&["delete", "pod", "bound", "--wait=false"]);
    assert!(out.contains(r#"pod "bound" deleted"#), "{out}");
    let pod = c.json(&["get", "pod", "bound"]);
    assert!(
        str_at(&pod, "/metadata/deletionTimestamp").ends_with('Z'),
        "{pod:#}"
    );
    assert_eq!(i64_at(&pod, "/metadata/deletionGracePeriodSeconds"), 30);

    let out = c
        .kubectl
        .run(&["delete", "pod", "bound", "--grace-period=0", "--force"]);
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(r#"pod "bound" force deleted"#),
        "{}",
        out.stdout
    );
    assert!(c.gone("pod", "bound"));
}

#[test]
fn an_unscheduled_pod_is_deleted_at_once() {
    let Some(c) = cluster(&[]) else { return };
    c.apply(PODS);
    c.ok(&["delete", "pod", "unbound", "--wait=false"]);
    assert!(c.gone("pod", "unbound"));
    assert!(!c.gone("pod", "bound"));
}

#[test]
fn a_server_dry_run_apply_creates_nothing() {
    let Some(c) = cluster(&[]) else { return };
    let path = myapp_yaml();
    let out = c.ok(&[
        "apply",
        "--dry-run=server",
        "-f",
        path.to_str().expect("UTF-8"),
    ]);
    assert!(
        out.contains("deployment.apps/myapp created (server dry run)"),
        "{out}"
    );
    assert!(
        out.contains("service/myapp-nodeport created (server dry run)"),
        "{out}"
    );
    assert!(c.gone("deployment", "myapp"));
    for name in SERVICE_TYPES {
        assert!(c.gone("svc", name), "{name} was created");
    }

    // Dry-running a change of an existing object leaves it as it was.
    apply_myapp(&c);
    let before = c.json(&["get", "deploy", "myapp"]);
    let scaled = std::fs::read_to_string(&path)
        .expect("myapp.yaml")
        .replace("replicas: 3", "replicas: 9");
    let scaled = c.file("scaled.yaml", &scaled);
    let out = c.ok(&["apply", "--dry-run=server", "-f", &scaled]);
    assert!(
        out.contains("deployment.apps/myapp configured (server dry run)"),
        "{out}"
    );
    assert_eq!(c.json(&["get", "deploy", "myapp"]), before);
    let out = c.ok(&["apply", "--server-side", "--dry-run=server", "-f", &scaled]);
    assert!(
        out.contains("deployment.apps/myapp serverside-applied (server dry run)"),
        "{out}"
    );
    assert_eq!(
        i64_at(&c.json(&["get", "deploy", "myapp"]), "/spec/replicas"),
        3
    );
}

#[test]
fn strict_validation_rejects_an_unknown_field_by_name() {
    let Some(c) = cluster(&[]) else { return };
    let bogus = "apiVersion: v1\nkind: Service\nmetadata: {name: bogus}\nspec:\n  bogus: 1\n  ports: [{port: 80}]\n";
    let err = c.apply_fails(bogus);
    assert!(err.contains("Error from server (BadRequest)"), "{err}");
    assert!(err.contains(r#"unknown field "spec.bogus""#), "{err}");
    let file = c.file("bogus.yaml", bogus);
    let out = c.fails(&["create", "-f", &file, "--validate=strict"]);
    assert!(
        out.stderr.contains(r#"unknown field "spec.bogus""#),
        "{}",
        out.stderr
    );
    assert!(c.gone("svc", "bogus"));

    // Without validation the field is dropped and the object created.
    c.ok(&["create", "-f", &file, "--validate=false"]);
    let svc = c.json(&["get", "svc", "bogus"]);
    assert_eq!(svc.pointer("/spec/bogus"), None);
    assert_eq!(i64_at(&svc, "/spec/ports/0/port"), 80);
}
