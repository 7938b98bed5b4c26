//! Defaulting of objects on the way in, as kube-apiserver applies its `SetDefaults_*` functions
//! when decoding a request: the fields a client may omit are filled so that stored objects, and
//! what `kubectl get -o yaml` shows, look like Kubernetes'. Validation runs after defaulting and
//! may rely on these fields being present.
//!
//! References (kubernetes/kubernetes):
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/core/v1/defaults.go>
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/apps/v1/defaults.go>
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/discovery/v1/defaults.go>
//! - the declarative `+default` markers behind `zz_generated.defaults.go` (port protocols)
//! - the `kubernetes` finalizer of Namespaces:
//!   <https://github.com/kubernetes/kubernetes/blob/master/pkg/registry/core/namespace/strategy.go>
//!
//! Admission plugins (ServiceAccount, DefaultTolerationSeconds) and status fields the API server
//! sets on create are not defaults and are not applied here.

use serde_json::{json, Map, Value};

use crate::resources::ResourceInfo;

/// Fills in defaults for an object of `resource`. Services are defaulted for create here; on
/// update call [`crate::service::default_service`] with the stored object instead, which also
/// carries allocated values over.
pub fn apply_defaults(resource: &ResourceInfo, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match (resource.group, resource.kind) {
        ("", "Service") => crate::service::default_service(obj, None),
        ("", "Pod") => default_pod(obj),
        ("apps", "Deployment") => default_deployment(obj),
        ("apps", "ReplicaSet") => default_replica_set(obj),
        ("", "Endpoints") => default_endpoints(obj),
        ("discovery.k8s.io", "EndpointSlice") => default_endpoint_slice(obj),
        ("", "Namespace") => default_namespace(obj),
        ("", "Node") => default_node(obj),
        ("metallb.io", "IPAddressPool") => default_ip_address_pool(obj),
        _ => {}
    }
}

/// A child object of `m`, created (or replaced when not an object) if needed.
fn object_at<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = m.entry(key).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("replaced by an object above")
}

fn unset(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

fn set_if_unset(m: &mut Map<String, Value>, key: &str, value: Value) {
    if unset(m.get(key)) {
        m.insert(key.to_string(), value);
    }
}

/// Sets a numeric field when it is absent or zero (Go cannot tell them apart for plain ints).
fn set_if_zero(m: &mut Map<String, Value>, key: &str, value: i64) {
    if m.get(key).and_then(Value::as_i64).unwrap_or(0) == 0 {
        m.insert(key.to_string(), json!(value));
    }
}

fn objects_mut<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates.

/// The tag `imagePullPolicy` defaulting looks at: `latest` when neither tag nor digest is
/// given; "" when the reference has a digest only or cannot be parsed (upper-case repository).
fn image_tag(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let mut components: Vec<&str> = name.split('/').collect();
    let last = components.pop().unwrap_or_default();
    let (repo_last, tag) = match last.split_once(':') {
        Some((r, t)) => (r, Some(t)),
        None => (last, None),
    };
    // The first component is a registry host (which may carry upper case and a port) when it
    // looks like one; repository path components must be lower case.
    let has_host = components
        .first()
        .is_some_and(|c| c.contains('.') || c.contains(':') || *c == "localhost");
    let path = if has_host {
        &components[1..]
    } else {
        &components[..]
    };
    let upper = |s: &str| s.chars().any(|c| c.is_ascii_uppercase());
    if image.is_empty() || upper(repo_last) || path.iter().any(|c| upper(c)) {
        return String::new();
    }
    match (tag, digest) {
        (Some(t), _) => t.to_string(),
        (None, Some(_)) => String::new(),
        (None, None) => "latest".to_string(),
    }
}

/// `SetDefaults_HTTPGetAction` inside a probe or lifecycle handler.
fn default_handler(h: &mut Map<String, Value>) {
    if let Some(get) = h.get_mut("httpGet").and_then(Value::as_object_mut) {
        set_if_unset(get, "path", json!("/"));
        set_if_unset(get, "scheme", json!("HTTP"));
    }
}

/// `SetDefaults_Probe` and its handler.
fn default_probe(p: &mut Map<String, Value>) {
    set_if_zero(p, "timeoutSeconds", 1);
    set_if_zero(p, "periodSeconds", 10);
    set_if_zero(p, "successThreshold", 1);
    set_if_zero(p, "failureThreshold", 3);
    default_handler(p);
}

/// `SetDefaults_ObjectFieldSelector` for env and downward API field references.
fn default_field_ref(holder: &mut Map<String, Value>) {
    if let Some(fr) = holder.get_mut("fieldRef").and_then(Value::as_object_mut) {
        set_if_unset(fr, "apiVersion", json!("v1"));
    }
}

/// `SetDefaults_Container` plus the declarative defaults of its parts.
fn default_container(c: &mut Map<String, Value>) {
    if unset(c.get("imagePullPolicy")) {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        let policy = if image_tag(image) == "latest" {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    set_if_unset(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_if_unset(c, "terminationMessagePolicy", json!("File"));
    // `resources` is a struct in Go and therefore always serialized.
    object_at(c, "resources");
    for port in objects_mut(c, "ports") {
        set_if_unset(port, "protocol", json!("TCP"));
    }
    for env in objects_mut(c, "env") {
        if let Some(vf) = env.get_mut("valueFrom").and_then(Value::as_object_mut) {
            default_field_ref(vf);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default_probe(p);
        }
    }
    if let Some(lc) = c.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = lc.get_mut(hook).and_then(Value::as_object_mut) {
                default_handler(h);
            }
        }
    }
}

/// File mode 0644, the default of secret, configMap, downwardAPI and projected volumes.
const DEFAULT_VOLUME_MODE: i64 = 0o644;

fn default_volume(v: &mut Map<String, Value>) {
    const SOURCES: &[&str] = &[
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    ];
    if !SOURCES
        .iter()
        .any(|s| v.get(*s).is_some_and(|x| !x.is_null()))
    {
        v.insert("emptyDir".into(), json!({}));
    }
    for src in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
            if unset(s.get("defaultMode")) {
                s.insert("defaultMode".into(), json!(DEFAULT_VOLUME_MODE));
            }
            for item in objects_mut(s, "items") {
                default_field_ref(item);
            }
        }
    }
    if let Some(hp) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        if hp.get("type").is_none_or(Value::is_null) {
            hp.insert("type".into(), json!(""));
        }
    }
}

/// `SetDefaults_PodSpec` and the container, volume and probe defaults beneath it; shared by
/// Pods and workload templates.
fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_if_unset(spec, "dnsPolicy", json!("ClusterFirst"));
    set_if_unset(spec, "restartPolicy", json!("Always"));
    if spec.get("securityContext").is_none_or(Value::is_null) {
        spec.insert("securityContext".into(), json!({}));
    }
    if spec
        .get("terminationGracePeriodSeconds")
        .is_none_or(Value::is_null)
    {
        spec.insert("terminationGracePeriodSeconds".into(), json!(30));
    }
    set_if_unset(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in objects_mut(spec, key) {
            default_container(c);
        }
    }
    for v in objects_mut(spec, "volumes") {
        default_volume(v);
    }
}

/// Requests default to limits for resources that only declare limits (`SetDefaults_Pod`).
fn default_requests_from_limits(c: &mut Map<String, Value>) {
    let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let requests = object_at(res, "requests");
    for (k, v) in limits {
        requests.entry(k).or_insert(v);
    }
}

/// `SetDefaults_Pod` (Pod-only, not templates) on top of the pod spec defaults.
fn default_pod(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    let spec = object_at(o, "spec");
    default_pod_spec(spec);
    for key in ["containers", "initContainers"] {
        for c in objects_mut(spec, key) {
            default_requests_from_limits(c);
        }
    }
    if spec.get("enableServiceLinks").is_none_or(Value::is_null) {
        spec.insert("enableServiceLinks".into(), json!(true));
    }
    // On the host network a container port is a host port.
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        for key in ["containers", "initContainers"] {
            for c in objects_mut(spec, key) {
                for p in objects_mut(c, "ports") {
                    if p.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0 {
                        if let Some(cp) = p.get("containerPort").cloned() {
                            p.insert("hostPort".into(), cp);
                        }
                    }
                }
            }
        }
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    let template = object_at(spec, "template");
    default_pod_spec(object_at(template, "spec"));
}

/// `SetDefaults_Deployment`.
fn default_deployment(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    let spec = object_at(o, "spec");
    if spec.get("replicas").is_none_or(Value::is_null) {
        spec.insert("replicas".into(), json!(1));
    }
    let strategy = object_at(spec, "strategy");
    set_if_unset(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = object_at(strategy, "rollingUpdate");
        for key in ["maxUnavailable", "maxSurge"] {
            if ru.get(key).is_none_or(Value::is_null) {
                ru.insert(key.into(), json!("25%"));
            }
        }
    }
    if spec.get("revisionHistoryLimit").is_none_or(Value::is_null) {
        spec.insert("revisionHistoryLimit".into(), json!(10));
    }
    if spec
        .get("progressDeadlineSeconds")
        .is_none_or(Value::is_null)
    {
        spec.insert("progressDeadlineSeconds".into(), json!(600));
    }
    default_template(spec);
}

/// `SetDefaults_ReplicaSet`.
fn default_replica_set(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    let spec = object_at(o, "spec");
    if spec.get("replicas").is_none_or(Value::is_null) {
        spec.insert("replicas".into(), json!(1));
    }
    default_template(spec);
}

/// `SetDefaults_Endpoints`: port protocol TCP.
fn default_endpoints(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    for subset in objects_mut(o, "subsets") {
        for port in objects_mut(subset, "ports") {
            set_if_unset(port, "protocol", json!("TCP"));
        }
    }
}

/// discovery/v1 `SetDefaults_EndpointPort`: protocol TCP and an explicit empty name.
fn default_endpoint_slice(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    for port in objects_mut(o, "ports") {
        if port.get("name").is_none_or(Value::is_null) {
            port.insert("name".into(), json!(""));
        }
        set_if_unset(port, "protocol", json!("TCP"));
    }
}

/// The `kubernetes` finalizer (Namespace strategy), phase Active, and the immutable
/// `kubernetes.io/metadata.name` label (`SetDefaults_Namespace`).
fn default_namespace(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    let name = o
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !name.is_empty() {
        let labels = object_at(object_at(o, "metadata"), "labels");
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    let spec = object_at(o, "spec");
    if spec.get("finalizers").is_none_or(Value::is_null) {
        spec.insert("finalizers".into(), json!(["kubernetes"]));
    }
    set_if_unset(object_at(o, "status"), "phase", json!("Active"));
}

/// `SetDefaults_NodeStatus`: allocatable defaults to capacity.
fn default_node(obj: &mut Value) {
    let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    if status.get("allocatable").is_none_or(Value::is_null) {
        if let Some(cap) = status.get("capacity").filter(|c| c.is_object()).cloned() {
            status.insert("allocatable".into(), cap);
        }
    }
}

/// MetalLB's CRD defaults: pools auto-assign and do not avoid `.0`/`.255` addresses.
fn default_ip_address_pool(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    let spec = object_at(o, "spec");
    if spec.get("autoAssign").is_none_or(Value::is_null) {
        spec.insert("autoAssign".into(), json!(true));
    }
    if spec.get("avoidBuggyIPs").is_none_or(Value::is_null) {
        spec.insert("avoidBuggyIPs".into(), json!(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::RESOURCES;
    use crate::validation::validate_create;

    fn res(kind: &str) -> &'static ResourceInfo {
        RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .expect("served kind")
    }

    fn defaulted(kind: &str, mut obj: Value) -> Value {
        apply_defaults(res(kind), &mut obj);
        obj
    }

    #[test]
    fn pods_get_kubernetes_spec_and_container_defaults() {
        let pod = defaulted(
            "Pod",
            json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{
                "name": "web", "image": "nginx",
                "ports": [{"containerPort": 80}],
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "readinessProbe": {"httpGet": {"port": 80}}
            }]}}),
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["resources"], json!({}));
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert!(validate_create(res("Pod"), &pod).is_empty());
        assert!(
            pod.get("status").is_none(),
            "status is the API server's to set"
        );
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        let cases = [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("registry.local:5000/team/app", "Always"),
            ("registry.local:5000/team/app:v2", "IfNotPresent"),
            ("nginx@sha256:abcd", "IfNotPresent"),
            ("NGINX", "IfNotPresent"),
            ("Team/app", "IfNotPresent"),
            ("Registry.Example.com/team/app", "Always"),
        ];
        for (image, want) in cases {
            let pod = defaulted(
                "Pod",
                json!({"spec": {"containers": [{"name": "c", "image": image}]}}),
            );
            assert_eq!(
                pod["spec"]["containers"][0]["imagePullPolicy"], want,
                "{image}"
            );
        }
        let explicit = defaulted(
            "Pod",
            json!({"spec": {"containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "Never"}]}}),
        );
        assert_eq!(
            explicit["spec"]["containers"][0]["imagePullPolicy"],
            "Never"
        );
    }

    #[test]
    fn pod_defaults_keep_explicit_values_and_fill_requests_from_limits() {
        let pod = defaulted(
            "Pod",
            json!({"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "enableServiceLinks": false,
                   "hostNetwork": true,
                   "containers": [{"name": "c", "image": "x:1", "ports": [{"containerPort": 8080}],
                                   "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "1Gi"}}}],
                   "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}]}}),
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["terminationGracePeriodSeconds"], 0);
        assert_eq!(spec["enableServiceLinks"], false);
        assert_eq!(
            spec["containers"][0]["resources"]["requests"],
            json!({"memory": "1Gi", "cpu": "1"})
        );
        assert_eq!(spec["containers"][0]["ports"][0]["hostPort"], 8080);
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["secret"]["defaultMode"], 420);
    }

    #[test]
    fn deployments_get_replicas_strategy_history_and_template_defaults() {
        let d = defaulted(
            "Deployment",
            json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}
            }}),
        );
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            spec["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert!(
            spec["template"]["spec"].get("enableServiceLinks").is_none(),
            "Pod-only default"
        );
        assert!(validate_create(res("Deployment"), &d).is_empty());

        let recreate = defaulted(
            "Deployment",
            json!({"spec": {"strategy": {"type": "Recreate"}, "replicas": 0}}),
        );
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(recreate["spec"]["replicas"], 0);
    }

    #[test]
    fn replica_sets_default_one_replica_and_their_template() {
        let rs = defaulted(
            "ReplicaSet",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}),
        );
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(rs["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    }

    #[test]
    fn endpoint_ports_default_to_tcp() {
        let ep = defaulted(
            "Endpoints",
            json!({"subsets": [{"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}]}),
        );
        assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(ep["subsets"][0]["ports"][1]["protocol"], "UDP");
        let slice = defaulted(
            "EndpointSlice",
            json!({"addressType": "IPv4", "ports": [{"port": 80}]}),
        );
        assert_eq!(
            slice["ports"][0],
            json!({"port": 80, "name": "", "protocol": "TCP"})
        );
    }

    #[test]
    fn namespaces_get_the_kubernetes_finalizer_phase_and_name_label() {
        let ns = defaulted("Namespace", json!({"metadata": {"name": "prod"}}));
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "prod"
        );
    }

    #[test]
    fn services_are_defaulted_through_the_service_module() {
        let svc = defaulted(
            "Service",
            json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"ports": [{"port": 80}]}}),
        );
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
    }

    #[test]
    fn ip_address_pools_auto_assign_by_default() {
        let pool = defaulted(
            "IPAddressPool",
            json!({"spec": {"addresses": ["10.0.0.0/24"]}}),
        );
        assert_eq!(pool["spec"]["autoAssign"], true);
        assert_eq!(pool["spec"]["avoidBuggyIPs"], false);
        let manual = defaulted(
            "IPAddressPool",
            json!({"spec": {"addresses": ["10.0.0.0/24"], "autoAssign": false}}),
        );
        assert_eq!(manual["spec"]["autoAssign"], false);
    }

    #[test]
    fn nodes_default_allocatable_to_capacity_and_are_otherwise_untouched() {
        let node = defaulted(
            "Node",
            json!({"metadata": {"name": "n"}, "status": {"capacity": {"cpu": "4"}}}),
        );
        assert_eq!(node["status"]["allocatable"], json!({"cpu": "4"}));
        let bare = defaulted("Node", json!({"metadata": {"name": "n"}}));
        assert_eq!(bare, json!({"metadata": {"name": "n"}}));
        let cm = defaulted("ConfigMap", json!({"metadata": {"name": "c"}}));
        assert_eq!(cm, json!({"metadata": {"name": "c"}}));
    }
}
