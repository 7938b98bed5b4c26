//! What kubelet puts into a container's environment (pure functions, no IO).
//!
//! - [`service_env`]: the Docker-link style service variables of kubelet's
//!   `pkg/kubelet/envvars/envvars.go` (`FromServices` + `makeLinkVariables`), for the services
//!   selected as `getServiceEnvVarMap` in `kubelet_pods.go` does: the master service
//!   `default/kubernetes` always (even with `enableServiceLinks: false`), the services of the
//!   pod's namespace when service links are enabled, each only when it has a ClusterIP.
//! - [`container_env`]: `makeEnvironmentVariables`: envFrom (ConfigMaps), then env (`value` with
//!   `$(VAR)` expansion, `valueFrom.fieldRef`, `valueFrom.configMapKeyRef`); the container's own
//!   variables win over the service variables.
//! - [`expand`], [`expand_argv`]: Kubernetes' `third_party/forked/golang/expansion`: `$(VAR)` is
//!   replaced when VAR is known and left as written otherwise; `$$` is an escaped `$`.
//!
//! This module never reads the API: the caller lists the Services and fetches the ConfigMaps.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Service};

/// Why a container's environment cannot be built (kubelet reports these as
/// `CreateContainerConfigError`; retryable: the ConfigMap may appear later).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// A non-optional ConfigMap referenced by envFrom or configMapKeyRef does not exist.
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    /// A non-optional configMapKeyRef names a key the ConfigMap lacks.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    KeyNotFound {
        /// The key asked for.
        key: String,
        /// The ConfigMap's namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: String,
    },
    /// A fieldRef path kubelet does not support.
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
}

/// The service names kubelet treats as master services (`masterServices` in kubelet_pods.go).
const MASTER_SERVICES: &[&str] = &["kubernetes"];

/// `makeEnvVariableName`: upper case, `-` → `_`.
fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

/// `IsServiceIPSet`: a ClusterIP that is neither empty nor `None`.
fn cluster_ip(service: &Service) -> Option<&str> {
    let ip = service.spec.as_ref()?.cluster_ip.as_deref()?;
    (!ip.is_empty() && ip != "None").then_some(ip)
}

/// The service variables of a pod in `namespace` (see the module doc for the selection), sorted
/// by service name, each service's variables in kubelet's order. `services` may hold services
/// of any namespace (kubelet passes its whole service lister).
pub fn service_env(
    services: &[Service],
    enable_service_links: bool,
    namespace: &str,
) -> Vec<(String, String)> {
    // As getServiceEnvVarMap: a master service of `default` is taken unless a same-named
    // service of the pod's namespace is; a service of the pod's namespace overwrites.
    let mut selected: BTreeMap<&str, &Service> = BTreeMap::new();
    for service in services {
        if cluster_ip(service).is_none() {
            continue;
        }
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let ns = service.metadata.namespace.as_deref().unwrap_or_default();
        if ns == "default" && MASTER_SERVICES.contains(&name) {
            selected.entry(name).or_insert(service);
        } else if ns == namespace && enable_service_links {
            selected.insert(name, service);
        }
    }
    let mut out = Vec::new();
    for service in selected.values() {
        from_service(service, &mut out);
    }
    out
}

/// `FromServices` for one service: `_SERVICE_HOST`, `_SERVICE_PORT` (first port), one
/// `_SERVICE_PORT_<NAME>` per named port, then the link variables.
fn from_service(service: &Service, out: &mut Vec<(String, String)>) {
    let Some(ip) = cluster_ip(service) else {
        return;
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let prefix = env_name(service.metadata.name.as_deref().unwrap_or_default());
    out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
    let Some(first) = ports.first() else {
        // Validation forbids a ClusterIP service without ports; kubelet would index out of
        // range here. Keep only the host variable.
        return;
    };
    let service_port = format!("{prefix}_SERVICE_PORT");
    out.push((service_port.clone(), first.port.to_string()));
    for port in ports {
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{service_port}_{}", env_name(name)),
                port.port.to_string(),
            ));
        }
    }
    // makeLinkVariables: Docker-compatible variables.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    for (i, port) in ports.iter().enumerate() {
        let protocol = port
            .protocol
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("TCP");
        let lower = protocol.to_lowercase();
        let url = format!("{lower}://{host}:{}", port.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
        out.push((port_prefix.clone(), url));
        out.push((format!("{port_prefix}_PROTO"), lower));
        out.push((format!("{port_prefix}_PORT"), port.port.to_string()));
        out.push((format!("{port_prefix}_ADDR"), ip.to_string()));
    }
}

/// kubelet's `$(VAR)` expansion (`expansion.Expand` with `MappingFuncFor`): `$(NAME)` becomes
/// `lookup(NAME)` or stays `$(NAME)` when unknown; `$$` becomes `$`; an unterminated `$(` and a
/// `$` before anything else are kept as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if after.is_empty() {
            // A trailing `$` is copied as is.
            out.push('$');
            rest = after;
            break;
        }
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    // Incomplete reference: `$(` copied, scanning continues after it.
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            // `$` + one character, copied (the character may be multi-byte).
            let ch = after.chars().next().map_or(0, char::len_utf8);
            out.push('$');
            out.push_str(&after[..ch]);
            rest = &after[ch..];
        }
    }
    out.push_str(rest);
    out
}

/// `ExpandContainerCommandAndArgs`: expand each argument against the container's final
/// environment.
pub fn expand_argv(argv: &[String], env: &[(String, String)]) -> Vec<String> {
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    argv.iter()
        .map(|a| expand(a, |name| map.get(name).map(|v| v.to_string())))
        .collect()
}

/// The value of a `fieldRef` path for this pod (kubelet's `podFieldSelectorRuntimeValue` plus
/// the API's `ExtractFieldPathAsString`).
pub fn field_ref_value(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|ip| ip.ip.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.hostIPs" => status
            .and_then(|s| s.host_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|ip| ip.ip.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        _ => {
            if let Some(key) = subscript("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else {
                return Err(EnvError::UnsupportedFieldPath(path.to_string()));
            }
        }
    };
    Ok(value)
}

/// The final environment of `container` (kubelet's `makeEnvironmentVariables`): the service
/// variables not overridden, then the container's own variables in declaration order (envFrom,
/// then env; a later definition replaces an earlier one in place). `configmaps` holds the
/// ConfigMaps of the pod's namespace by name (those referenced; missing ones are absent).
/// `pod` should carry the status fields fieldRefs may ask for (podIP, hostIP).
pub fn container_env(
    pod: &Pod,
    container: &Container,
    service_env: &[(String, String)],
    configmaps: &BTreeMap<String, ConfigMap>,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut own: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut set = |own: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(&i) = index.get(&name) {
            own[i].1 = value;
        } else {
            index.insert(name.clone(), own.len());
            own.push((name, value));
        }
    };
    for source in container.env_from.as_deref().unwrap_or_default() {
        let Some(cm_ref) = &source.config_map_ref else {
            continue; // Secrets are not part of Switchyard.
        };
        let optional = cm_ref.optional.unwrap_or(false);
        let Some(cm) = configmaps.get(&cm_ref.name) else {
            if optional {
                continue;
            }
            return Err(EnvError::ConfigMapNotFound(cm_ref.name.clone()));
        };
        let prefix = source.prefix.as_deref().unwrap_or_default();
        // ConfigMap data is a map; kubelet iterates it unordered. Sorted here.
        for (key, value) in cm.data.iter().flatten() {
            let name = format!("{prefix}{key}");
            // Invalid names are skipped (kubelet emits an InvalidEnvironmentVariableNames event).
            if name.is_empty() || name.contains('=') {
                continue;
            }
            set(&mut own, name, value.clone());
        }
    }
    for var in container.env.as_deref().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => {
                let lookup = |name: &str| {
                    own.iter()
                        .find(|(k, _)| k == name)
                        .or_else(|| service_env.iter().find(|(k, _)| k == name))
                        .map(|(_, v)| v.clone())
                };
                expand(v, lookup)
            }
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_ref_value(pod, &field.field_path)?
                } else if let Some(key_ref) = &from.config_map_key_ref {
                    let optional = key_ref.optional.unwrap_or(false);
                    match configmaps.get(&key_ref.name) {
                        None if optional => continue,
                        None => return Err(EnvError::ConfigMapNotFound(key_ref.name.clone())),
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(EnvError::KeyNotFound {
                                    key: key_ref.key.clone(),
                                    namespace: namespace.clone(),
                                    name: key_ref.name.clone(),
                                });
                            }
                        },
                    }
                } else {
                    // secretKeyRef/resourceFieldRef: not supported by Switchyard; empty.
                    String::new()
                }
            }
            _ => String::new(),
        };
        set(&mut own, var.name.clone(), value);
    }
    let mut out: Vec<(String, String)> = service_env
        .iter()
        .filter(|(k, _)| !index.contains_key(k))
        .cloned()
        .collect();
    out.extend(own);
    Ok(out)
}

/// The ConfigMap names a pod's containers reference (envFrom and configMapKeyRef), so the
/// caller can fetch exactly those.
pub fn referenced_configmaps(containers: &[Container]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for c in containers {
        for source in c.env_from.as_deref().unwrap_or_default() {
            if let Some(r) = &source.config_map_ref {
                names.push(r.name.clone());
            }
        }
        for var in c.env.as_deref().unwrap_or_default() {
            if let Some(r) = var
                .value_from
                .as_ref()
                .and_then(|f| f.config_map_key_ref.as_ref())
            {
                names.push(r.name.clone());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .expect("service")
    }

    fn kubernetes() -> Service {
        service(
            "default",
            "kubernetes",
            "10.96.0.1",
            json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]),
        )
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// kubelet's output for the master service (as seen in any pod's `env`).
    const KUBERNETES_VARS: &[(&str, &str)] = &[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
    ];

    #[test]
    fn master_service_vars_match_kubelet() {
        assert_eq!(
            service_env(&[kubernetes()], true, "default"),
            pairs(KUBERNETES_VARS)
        );
    }

    #[test]
    fn multi_port_service_with_dashes_and_udp() {
        // Same inputs as envvars_test.go's "super-ipv4" style cases.
        let svc = service(
            "ns",
            "my-db",
            "10.96.3.4",
            json!([
                {"port": 5432},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            ]),
        );
        let mut want = pairs(KUBERNETES_VARS);
        want.extend(pairs(&[
            ("MY_DB_SERVICE_HOST", "10.96.3.4"),
            ("MY_DB_SERVICE_PORT", "5432"),
            ("MY_DB_SERVICE_PORT_DNS_UDP", "53"),
            ("MY_DB_PORT", "tcp://10.96.3.4:5432"),
            ("MY_DB_PORT_5432_TCP", "tcp://10.96.3.4:5432"),
            ("MY_DB_PORT_5432_TCP_PROTO", "tcp"),
            ("MY_DB_PORT_5432_TCP_PORT", "5432"),
            ("MY_DB_PORT_5432_TCP_ADDR", "10.96.3.4"),
            ("MY_DB_PORT_53_UDP", "udp://10.96.3.4:53"),
            ("MY_DB_PORT_53_UDP_PROTO", "udp"),
            ("MY_DB_PORT_53_UDP_PORT", "53"),
            ("MY_DB_PORT_53_UDP_ADDR", "10.96.3.4"),
        ]));
        assert_eq!(service_env(&[kubernetes(), svc], true, "ns"), want);
    }

    #[test]
    fn ipv6_cluster_ip_is_bracketed_in_urls() {
        let svc = service("ns", "v6", "fd00::a", json!([{"port": 80}]));
        let env = service_env(&[svc], true, "ns");
        assert!(env.contains(&("V6_PORT".into(), "tcp://[fd00::a]:80".into())));
        assert!(env.contains(&("V6_PORT_80_TCP_ADDR".into(), "fd00::a".into())));
    }

    #[test]
    fn selection_follows_get_service_env_var_map() {
        let other_ns = service("other", "web", "10.96.0.20", json!([{"port": 80}]));
        let headless = service("ns", "headless", "None", json!([{"port": 80}]));
        let no_ip = service("ns", "noip", "", json!([{"port": 80}]));
        let web = service("ns", "web", "10.96.0.21", json!([{"port": 8080}]));
        let all = [kubernetes(), other_ns, headless, no_ip, web];
        let names = |env: Vec<(String, String)>| {
            env.into_iter()
                .filter(|(k, _)| k.ends_with("_SERVICE_HOST"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(service_env(&all, true, "ns")),
            [
                "KUBERNETES_SERVICE_HOST=10.96.0.1",
                "WEB_SERVICE_HOST=10.96.0.21"
            ]
        );
        // enableServiceLinks: false keeps only the master service.
        assert_eq!(
            names(service_env(&all, false, "ns")),
            ["KUBERNETES_SERVICE_HOST=10.96.0.1"]
        );
        // A `kubernetes` service in the pod's own namespace replaces the master one.
        let own = service("ns", "kubernetes", "10.96.9.9", json!([{"port": 1}]));
        assert_eq!(
            names(service_env(&[own.clone(), kubernetes()], true, "ns")),
            ["KUBERNETES_SERVICE_HOST=10.96.9.9"]
        );
        assert_eq!(
            names(service_env(&[kubernetes(), own], true, "ns")),
            ["KUBERNETES_SERVICE_HOST=10.96.9.9"]
        );
    }

    #[test]
    fn expansion_table_from_kubernetes() {
        let lookup = |name: &str| {
            match name {
                "VAR_A" => Some("A"),
                "VAR_B" => Some("B"),
                "VAR_C" => Some("C"),
                "VAR_EMPTY" => Some(""),
                _ => None,
            }
            .map(str::to_string)
        };
        // Cases from third_party/forked/golang/expansion/expand_test.go.
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_A)", "A-A"),
            ("foo\\$(VAR_C)bar", "foo\\Cbar"),
            ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
            ("$(VAR_A)$(VAR_B)$(VAR_C)", "ABC"),
            ("f000-$$VAR_A", "f000-$VAR_A"),
            ("foo$$(VAR_A)", "foo$(VAR_A)"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$(VAR_EMPTY)", ""),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("$", "$"),
            ("$$", "$"),
            ("$$$$", "$$"),
            ("$()", "$()"),
            ("$(VAR_A)$", "A$"),
            ("é$é$(VAR_B)", "é$éB"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup), want, "input {input:?}");
        }
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": containers},
            "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                       "hostIP": "192.168.0.2", "hostIPs": [{"ip": "192.168.0.2"}]}
        }))
        .expect("pod")
    }

    fn configmaps() -> BTreeMap<String, ConfigMap> {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "cfg"},
            "data": {"MODE": "fast", "LEVEL": "3"}
        }))
        .expect("configmap");
        BTreeMap::from([("cfg".to_string(), cm)])
    }

    #[test]
    fn container_env_order_sources_and_override() {
        let p = pod(json!([{
            "name": "c", "image": "busybox",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                        {"configMapRef": {"name": "missing", "optional": true}}],
            "env": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": "overridden"},
                {"name": "GREETING", "value": "at $(KUBERNETES_PORT) in $(CFG_MODE) $(NOPE) $$(X)"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x", "optional": true}}},
                {"name": "CFG_MODE", "value": "slow"},
                {"name": "EMPTY"},
            ]
        }]));
        let container = &p.spec.as_ref().expect("spec").containers[0];
        let svc = service_env(&[kubernetes()], true, "ns");
        let env = container_env(&p, container, &svc, &configmaps()).expect("env");
        let mut want = pairs(&KUBERNETES_VARS[1..]);
        want.extend(pairs(&[
            ("CFG_LEVEL", "3"),
            ("CFG_MODE", "slow"),
            ("KUBERNETES_SERVICE_HOST", "overridden"),
            ("GREETING", "at tcp://10.96.0.1:443 in fast $(NOPE) $(X)"),
            ("POD", "p"),
            ("NS", "ns"),
            ("UID", "u-1"),
            ("NODE", "n1"),
            ("SA", "sa"),
            ("IP", "10.244.1.5"),
            ("IPS", "10.244.1.5"),
            ("HOST", "192.168.0.2"),
            ("APP", "web"),
            ("LVL", "3"),
            ("EMPTY", ""),
        ]));
        assert_eq!(env, want);
        let argv = expand_argv(
            &[
                "echo".into(),
                "$(POD)".into(),
                "$(MISSING)".into(),
                "$$(POD)".into(),
            ],
            &env,
        );
        assert_eq!(argv, ["echo", "p", "$(MISSING)", "$(POD)"]);
    }

    #[test]
    fn missing_configmaps_fail_like_kubelet() {
        let p = pod(json!([{"name": "c", "envFrom": [{"configMapRef": {"name": "nope"}}]}]));
        let c = &p.spec.as_ref().expect("spec").containers[0];
        assert_eq!(
            container_env(&p, c, &[], &configmaps())
                .expect_err("missing")
                .to_string(),
            "configmap \"nope\" not found"
        );
        let p = pod(json!([{"name": "c", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nokey"}}}]}]));
        let c = &p.spec.as_ref().expect("spec").containers[0];
        assert_eq!(
            container_env(&p, c, &[], &configmaps())
                .expect_err("missing key")
                .to_string(),
            "couldn't find key nokey in ConfigMap ns/cfg"
        );
        assert_eq!(referenced_configmaps(std::slice::from_ref(c)), ["cfg"]);
    }
}
