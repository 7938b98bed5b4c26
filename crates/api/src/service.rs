//! Service admission: defaulting and validation of `v1.Service` as kube-apiserver performs them,
//! the heart of Switchyard's API. This module owns `SetDefaults_Service`, the update-time
//! reconciliation the Service REST storage does before validating (`patchAllocatedValues`,
//! `NormalizeClusterIPs`, `dropTypeDependentFields`, the IP family defaulting of
//! `initIPFamilyFields`), `ValidateService`/`ValidateServiceUpdate`, and the predicates the
//! allocators use to decide what a Service needs (a ClusterIP, NodePorts, a health-check port).
//!
//! References (kubernetes/kubernetes):
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/core/v1/defaults.go> (`SetDefaults_Service`)
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/registry/core/service/strategy.go> (`dropTypeDependentFields`)
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/registry/core/service/storage/storage.go> (`patchAllocatedValues`,
//!   `normalizeClusterIPs`) and `.../storage/alloc.go` (`initIPFamilyFields`)
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/core/validation/validation.go> (`ValidateService` and friends)
//! - <https://github.com/kubernetes/kubernetes/blob/master/pkg/api/service/util.go> (`ExternallyAccessible`, `NeedsHealthCheck`)
//!
//! Switchyard is a single-stack cluster; IP families default to the family of the Service's own
//! addresses, else IPv4.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::status::FieldError;
use crate::validation::{
    array, child, get, go_string_slice, inclusive_range_error, index, is_dns1123_subdomain,
    is_ipv6, is_valid_port_name, parse_ip_sloppy, str_of, string_list, string_map, validate_cidr,
    validate_dns1123_label, validate_ip, validate_ip_address_for_endpoint, validate_labels,
    validate_meta, validate_object_meta_update, validate_protocol, validate_qualified_name, GoRepr,
    NameRule,
};

/// Kubernetes' default ClientIP affinity timeout (3 hours).
const DEFAULT_CLIENT_IP_TIMEOUT: i64 = 10800;
/// `core.MaxClientIPServiceAffinitySeconds` (1 day).
const MAX_CLIENT_IP_TIMEOUT: i64 = 86400;

const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const AFFINITIES: &[&str] = &["ClientIP", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const FAMILIES: &[&str] = &["IPv4", "IPv6"];
const FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];

const TOPOLOGY_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";
const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
const LB_SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

// ---------------------------------------------------------------------------------------------
// Accessors.

fn spec(svc: &Value) -> &Value {
    static EMPTY: Value = Value::Null;
    svc.get("spec").unwrap_or(&EMPTY)
}

fn svc_type(svc: &Value) -> &str {
    str_of(spec(svc), "type")
}

fn cluster_ip(svc: &Value) -> &str {
    str_of(spec(svc), "clusterIP")
}

fn cluster_ips(svc: &Value) -> Vec<String> {
    string_list(get(spec(svc), "clusterIPs"))
}

fn ip_families(svc: &Value) -> Vec<String> {
    string_list(get(spec(svc), "ipFamilies"))
}

fn ip_family_policy(svc: &Value) -> Option<&str> {
    spec(svc).get("ipFamilyPolicy").and_then(Value::as_str)
}

fn external_traffic_policy(svc: &Value) -> &str {
    str_of(spec(svc), "externalTrafficPolicy")
}

fn health_check_node_port(svc: &Value) -> i64 {
    spec(svc)
        .get("healthCheckNodePort")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn ports(svc: &Value) -> &[Value] {
    array(spec(svc), "ports")
}

fn node_port_of(port: &Value) -> i64 {
    port.get("nodePort").and_then(Value::as_i64).unwrap_or(0)
}

/// The `spec` object, created when missing (defaulting always produces one).
fn spec_mut(svc: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = svc.as_object_mut()?;
    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    spec.as_object_mut()
}

fn unset(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Predicates.

/// Whether the Service gets a cluster IP allocated: not ExternalName and not headless.
pub fn needs_cluster_ip(svc: &Value) -> bool {
    svc_type(svc) != "ExternalName" && !is_headless(svc)
}

/// Whether the Service is headless (`clusterIP: None`).
pub fn is_headless(svc: &Value) -> bool {
    cluster_ip(svc) == "None" || cluster_ips(svc).first().is_some_and(|ip| ip == "None")
}

/// Whether NodePorts are allocated for the Service's ports: NodePort services, and LoadBalancer
/// services unless `allocateLoadBalancerNodePorts` is false (`shouldAllocateNodePorts`).
/// Explicitly requested NodePorts are honoured for any LoadBalancer regardless.
pub fn needs_node_ports(svc: &Value) -> bool {
    match svc_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => {
            spec(svc)
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false)
        }
        _ => false,
    }
}

/// Whether the Service needs a health-check NodePort: LoadBalancer with
/// `externalTrafficPolicy: Local` (`apiservice.NeedsHealthCheck`).
pub fn needs_health_check_node_port(svc: &Value) -> bool {
    svc_type(svc) == "LoadBalancer" && external_traffic_policy(svc) == "Local"
}

/// `ExternallyAccessible`: reachable from outside the cluster network, so an external traffic
/// policy applies.
fn externally_accessible(svc: &Value) -> bool {
    match svc_type(svc) {
        "LoadBalancer" | "NodePort" => true,
        "ClusterIP" => !array(spec(svc), "externalIPs").is_empty(),
        _ => false,
    }
}

/// Kube's internal `needsClusterIP`: every type but ExternalName holds a clusterIP value, "None"
/// included.
fn holds_cluster_ip(svc: &Value) -> bool {
    svc_type(svc) != "ExternalName"
}

/// Kube's internal `needsNodePort`: the types that may carry NodePorts at all.
fn may_hold_node_ports(svc: &Value) -> bool {
    matches!(svc_type(svc), "NodePort" | "LoadBalancer")
}

/// Kube's `isHeadlessService` in validation: exactly one clusterIPs entry, "None".
fn headless_by_cluster_ips(svc: &Value) -> bool {
    let ips = cluster_ips(svc);
    ips.len() == 1 && ips[0] == "None"
}

fn family_of(ip: &str) -> Option<&'static str> {
    parse_ip_sloppy(ip).map(|a| if is_ipv6(&a) { "IPv6" } else { "IPv4" })
}

fn other_family(f: &str) -> &'static str {
    if f == "IPv6" {
        "IPv4"
    } else {
        "IPv6"
    }
}

// ---------------------------------------------------------------------------------------------
// Defaulting.

/// Defaults a Service for create (`old` = None) or update, as kube-apiserver does between
/// decoding a request and validating it:
///
/// - `SetDefaults_Service`: type ClusterIP, sessionAffinity None (ClientIP gets a 10800 s
///   timeout), port protocol TCP, targetPort = port, externalTrafficPolicy Cluster for
///   externally-accessible services, internalTrafficPolicy Cluster (not ExternalName),
///   allocateLoadBalancerNodePorts true for LoadBalancer;
/// - on update, values the client omitted but the server allocated are carried over from `old`
///   while the type still uses them, and values the new type no longer uses are cleared when the
///   client left them unchanged;
/// - `clusterIPs` is kept in step with `clusterIP`, and `ipFamilyPolicy`/`ipFamilies` are filled
///   (SingleStack; headless without selector gets RequireDualStack with both families, as
///   kube-apiserver does).
pub fn default_service(svc: &mut Value, old: Option<&Value>) {
    if spec_mut(svc).is_none() {
        return;
    }
    drop_zero_ports(svc);
    set_defaults_service(svc);
    match old {
        None => normalize_cluster_ips(svc, None),
        Some(old) => {
            patch_allocated_values(svc, old);
            normalize_cluster_ips(svc, Some(old));
            drop_type_dependent_fields(svc, old);
            trim_fields_for_dual_stack_downgrade(svc, old);
        }
    }
    init_ip_family_fields(svc, old);
    if svc_type(svc) == "ExternalName" {
        // kube-apiserver once defaulted this for ExternalName too and now drops it on read.
        if let Some(s) = spec_mut(svc) {
            s.remove("internalTrafficPolicy");
        }
    }
}

/// A zero nodePort or healthCheckNodePort means "unset": Kubernetes' wire format omits zero
/// values of these fields (`omitempty`), so a client that sends 0 gets them allocated or absent,
/// never a stored 0.
fn drop_zero_ports(svc: &mut Value) {
    let Some(s) = spec_mut(svc) else { return };
    if s.get("healthCheckNodePort").and_then(Value::as_i64) == Some(0) {
        s.remove("healthCheckNodePort");
    }
    if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if p.get("nodePort").and_then(Value::as_i64) == Some(0) {
                p.remove("nodePort");
            }
        }
    }
}

/// `SetDefaults_Service`.
fn set_defaults_service(svc: &mut Value) {
    let Some(s) = spec_mut(svc) else { return };
    if unset(s.get("sessionAffinity")) {
        s.insert("sessionAffinity".into(), json!("None"));
    }
    match s.get("sessionAffinity").and_then(Value::as_str) {
        Some("None") => {
            s.remove("sessionAffinityConfig");
        }
        Some("ClientIP") => {
            let has_timeout = s
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"))
                .is_some_and(|t| !t.is_null());
            if !has_timeout {
                s.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": DEFAULT_CLIENT_IP_TIMEOUT}}),
                );
            }
        }
        _ => {}
    }
    if unset(s.get("type")) {
        s.insert("type".into(), json!("ClusterIP"));
    }
    if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if unset(p.get("protocol")) {
                p.insert("protocol".into(), json!("TCP"));
            }
            let target_unset = match p.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::String(t)) => t.is_empty(),
                Some(v) => v.as_i64() == Some(0),
            };
            if target_unset {
                if let Some(port) = p.get("port").filter(|v| v.is_number()).cloned() {
                    p.insert("targetPort".into(), port);
                }
            }
        }
    }
    let ty = s
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let accessible = match ty.as_str() {
        "LoadBalancer" | "NodePort" => true,
        "ClusterIP" => s
            .get("externalIPs")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty()),
        _ => false,
    };
    if accessible && unset(s.get("externalTrafficPolicy")) {
        s.insert("externalTrafficPolicy".into(), json!("Cluster"));
    }
    if unset(s.get("internalTrafficPolicy"))
        && matches!(ty.as_str(), "NodePort" | "LoadBalancer" | "ClusterIP")
    {
        s.insert("internalTrafficPolicy".into(), json!("Cluster"));
    }
    if ty == "LoadBalancer" && unset(s.get("allocateLoadBalancerNodePorts")) {
        s.insert("allocateLoadBalancerNodePorts".into(), json!(true));
    }
    if ty == "LoadBalancer" {
        if let Some(ingress) = svc
            .pointer_mut("/status/loadBalancer/ingress")
            .and_then(Value::as_array_mut)
        {
            for ing in ingress.iter_mut().filter_map(Value::as_object_mut) {
                if !unset(ing.get("ip")) && unset(ing.get("ipMode")) {
                    ing.insert("ipMode".into(), json!("VIP"));
                }
            }
        }
    }
}

/// `patchAllocatedValues`: a client that resubmits the YAML it created the Service from (without
/// the allocated clusterIP, nodePorts or healthCheckNodePort) keeps the allocated values.
/// NodePorts are matched by port name, as kube-apiserver does.
fn patch_allocated_values(new: &mut Value, old: &Value) {
    let copy_cluster_ip = holds_cluster_ip(old) && holds_cluster_ip(new);
    let copy_node_ports = may_hold_node_ports(old) && may_hold_node_ports(new);
    let copy_hc = needs_health_check_node_port(old) && needs_health_check_node_port(new);
    let used: BTreeSet<i64> = {
        let old_used: BTreeSet<i64> = ports(old)
            .iter()
            .map(node_port_of)
            .filter(|&n| n != 0)
            .collect();
        ports(new)
            .iter()
            .map(node_port_of)
            .filter(|n| old_used.contains(n))
            .collect()
    };
    let by_name: BTreeMap<String, i64> = ports(old)
        .iter()
        .map(|p| (str_of(p, "name").to_string(), node_port_of(p)))
        .collect();
    let old_hc = health_check_node_port(old);
    let old_ip = cluster_ip(old).to_string();
    let old_ips = spec(old).get("clusterIPs").cloned();

    let Some(s) = spec_mut(new) else { return };
    if copy_cluster_ip {
        if unset(s.get("clusterIP")) && !old_ip.is_empty() {
            s.insert("clusterIP".into(), json!(old_ip));
        }
        let new_ips_empty = s
            .get("clusterIPs")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if new_ips_empty
            && old_ips
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        {
            s.insert("clusterIPs".into(), old_ips.unwrap_or(Value::Null));
        }
    }
    if copy_node_ports {
        if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                    continue;
                }
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                if let Some(&np) = by_name.get(name) {
                    if np != 0 && !used.contains(&np) {
                        p.insert("nodePort".into(), json!(np));
                    }
                }
            }
        }
    }
    if copy_hc
        && s.get("healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
        && old_hc != 0
    {
        s.insert("healthCheckNodePort".into(), json!(old_hc));
    }
}

/// `NormalizeClusterIPs`: old clients send only `clusterIP`, new ones both fields; infer what the
/// client meant so `clusterIPs[0] == clusterIP` holds before validation.
fn normalize_cluster_ips(new: &mut Value, old: Option<&Value>) {
    let new_ip = cluster_ip(new).to_string();
    let new_ips = cluster_ips(new);
    let Some(old) = old else {
        if !new_ip.is_empty() && new_ips.is_empty() {
            if let Some(s) = spec_mut(new) {
                s.insert("clusterIPs".into(), json!([new_ip]));
            }
        }
        return;
    };
    let old_ip = cluster_ip(old).to_string();
    let old_ips = cluster_ips(old);
    let Some(s) = spec_mut(new) else { return };
    let mut new_ips = new_ips;
    if !old_ips.is_empty() && new_ips.is_empty() && old_ip == new_ip {
        s.insert("clusterIPs".into(), json!(old_ips));
        new_ips.clone_from(&old_ips);
    }
    if old_ip != new_ip && old_ips == new_ips {
        if !old_ip.is_empty() && new_ip.is_empty() {
            s.remove("clusterIPs");
        } else {
            s.insert("clusterIPs".into(), json!([new_ip]));
        }
    }
}

fn same_node_ports(old: &Value, new: &Value) -> bool {
    let old_ports: BTreeSet<i64> = ports(old)
        .iter()
        .map(node_port_of)
        .filter(|&n| n != 0)
        .collect();
    ports(new)
        .iter()
        .map(node_port_of)
        .filter(|&n| n != 0)
        .all(|n| old_ports.contains(&n))
}

/// `dropTypeDependentFields`: a Service is a union discriminated by `type`; when the type no
/// longer uses a value the server may have filled in, and the client did not change it, clear it
/// so validation passes and the allocators release it.
fn drop_type_dependent_fields(new: &mut Value, old: &Value) {
    let new_snapshot = new.clone();
    let ns = spec(&new_snapshot);
    let os = spec(old);
    let same =
        |key: &str| ns.get(key).filter(|v| !v.is_null()) == os.get(key).filter(|v| !v.is_null());
    let clear_cluster_ip = holds_cluster_ip(old) && !holds_cluster_ip(&new_snapshot);
    let same_ips = cluster_ip(&new_snapshot) == cluster_ip(old)
        && cluster_ips(&new_snapshot) == cluster_ips(old);
    let clear_node_ports = may_hold_node_ports(old)
        && !may_hold_node_ports(&new_snapshot)
        && same_node_ports(old, &new_snapshot);
    let clear_hc = needs_health_check_node_port(old)
        && !needs_health_check_node_port(&new_snapshot)
        && health_check_node_port(old) == health_check_node_port(&new_snapshot);
    let leaving_lb = svc_type(old) == "LoadBalancer" && svc_type(&new_snapshot) != "LoadBalancer";
    let clear_alloc_lb = leaving_lb
        && ns
            .get("allocateLoadBalancerNodePorts")
            .is_some_and(Value::is_boolean)
        && same("allocateLoadBalancerNodePorts");
    let clear_lb_class = leaving_lb && same("loadBalancerClass");
    let clear_etp = externally_accessible(old)
        && !externally_accessible(&new_snapshot)
        && external_traffic_policy(old) == external_traffic_policy(&new_snapshot);

    let Some(s) = spec_mut(new) else { return };
    if clear_cluster_ip {
        if same_ips {
            s.remove("clusterIP");
            s.remove("clusterIPs");
        }
        if same("ipFamilies") {
            s.remove("ipFamilies");
        }
        if same("ipFamilyPolicy") {
            s.remove("ipFamilyPolicy");
        }
    }
    if clear_node_ports {
        if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
        }
    }
    if clear_hc {
        s.remove("healthCheckNodePort");
    }
    if clear_alloc_lb {
        s.remove("allocateLoadBalancerNodePorts");
    }
    if clear_lb_class {
        s.remove("loadBalancerClass");
    }
    if clear_etp {
        s.remove("externalTrafficPolicy");
    }
}

/// `trimFieldsForDualStackDowngrade`: switching a dual-stack Service to SingleStack drops its
/// secondary IP and family.
fn trim_fields_for_dual_stack_downgrade(new: &mut Value, old: &Value) {
    let old_dual = matches!(
        ip_family_policy(old),
        Some("RequireDualStack" | "PreferDualStack")
    );
    if !(old_dual && ip_family_policy(new) == Some("SingleStack")) {
        return;
    }
    let Some(s) = spec_mut(new) else { return };
    for key in ["clusterIPs", "ipFamilies"] {
        if let Some(a) = s.get_mut(key).and_then(Value::as_array_mut) {
            a.truncate(1);
        }
    }
}

/// The defaulting part of `initIPFamilyFields` for a single-stack cluster.
fn init_ip_family_fields(svc: &mut Value, old: Option<&Value>) {
    if svc_type(svc) == "ExternalName" {
        return;
    }
    let headless_selectorless =
        cluster_ip(svc) == "None" && string_map(get(spec(svc), "selector")).is_empty();
    let policy = match ip_family_policy(svc) {
        Some(p) => p.to_string(),
        None => match old.and_then(ip_family_policy) {
            Some(p) => p.to_string(),
            None if headless_selectorless => "RequireDualStack".to_string(),
            None => "SingleStack".to_string(),
        },
    };
    let mut ips = cluster_ips(svc);
    let mut families = ip_families(svc);
    if let (Some(old), "SingleStack") = (old, policy.as_str()) {
        // Setting SingleStack on a dual-stack Service is clear intent to drop the secondary.
        if cluster_ip(svc) == cluster_ip(old) && ips == cluster_ips(old) && ips.len() > 1 {
            ips.truncate(1);
        }
        if families == ip_families(old) && families.len() > 1 {
            families.truncate(1);
        }
    }
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            break;
        }
        let Some(fam) = family_of(ip) else { break };
        if i >= families.len() {
            families.push(fam.to_string());
        }
    }
    if families.is_empty() {
        families.push("IPv4".to_string());
    }
    if headless_selectorless && families.len() < 2 && policy != "SingleStack" {
        let other = other_family(&families[0]);
        families.push(other.to_string());
    }
    let had_ips = spec(svc).get("clusterIPs").is_some();
    let Some(s) = spec_mut(svc) else { return };
    s.insert("ipFamilyPolicy".into(), json!(policy));
    s.insert("ipFamilies".into(), json!(families));
    if had_ips {
        s.insert("clusterIPs".into(), json!(ips));
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// Validates a Service for create (`old` = None) or update, as `ValidateService` and
/// `ValidateServiceUpdate` do, after [`default_service`].
pub fn validate_service(svc: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(old) = old {
        errs.extend(validate_object_meta_update(svc, old));
        errs.extend(validate_upgrade_downgrade_cluster_ips(old, svc));
        errs.extend(validate_upgrade_downgrade_ip_families(old, svc));
        if svc_type(old) == "LoadBalancer"
            && svc_type(svc) == "LoadBalancer"
            && spec(old).get("loadBalancerClass") != spec(svc).get("loadBalancerClass")
        {
            errs.push(FieldError::invalid(
                "spec.loadBalancerClass",
                go_optional_str(spec(svc).get("loadBalancerClass")),
                "may not change once set",
            ));
        }
        if needs_health_check_node_port(old)
            && needs_health_check_node_port(svc)
            && health_check_node_port(old) != health_check_node_port(svc)
        {
            errs.push(FieldError::forbidden(
                "spec.healthCheckNodePort",
                "field is immutable",
            ));
        }
    }
    errs.extend(validate_service_create(svc));
    errs
}

/// A `*string` bad value: `null` or the quoted string.
fn go_optional_str(v: Option<&Value>) -> GoRepr {
    match v.and_then(Value::as_str) {
        Some(s) => GoRepr(format!("{s:?}")),
        None => GoRepr("null".into()),
    }
}

/// Go's `%#v` of the (protocol, port) key kube-apiserver reports for duplicate ports.
fn go_service_port_key(protocol: &str, port: i64) -> GoRepr {
    GoRepr(format!(
        "core.ServicePort{{Name:\"\", Protocol:{protocol:?}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}"
    ))
}

fn validate_service_create(svc: &Value) -> Vec<FieldError> {
    let s = spec(svc);
    let ty = svc_type(svc);
    let headless = headless_by_cluster_ips(svc);
    let mut errs = validate_meta(svc, NameRule::Dns1035Label, true, true);

    let annotations = string_map(svc.pointer("/metadata/annotations"));
    if let (Some(hints), Some(mode)) = (
        annotations.get(TOPOLOGY_HINTS_ANNOTATION),
        annotations.get(TOPOLOGY_MODE_ANNOTATION),
    ) {
        if hints != mode {
            errs.push(FieldError::invalid(
                format!("metadata.annotations[{TOPOLOGY_MODE_ANNOTATION}]"),
                mode.as_str(),
                format!(
                    "must match annotations[{TOPOLOGY_HINTS_ANNOTATION}] when both are specified"
                ),
            ));
        }
    }

    if ports(svc).is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let ips = cluster_ips(svc);
    match ty {
        "LoadBalancer" | "NodePort" if headless => errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            ips[0].as_str(),
            format!("may not be set to 'None' for {ty} services"),
        )),
        "ExternalName" => {
            if !ips.is_empty() {
                errs.push(FieldError::forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
            if !ip_families(svc).is_empty() {
                errs.push(FieldError::forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                ));
            }
            if get(s, "ipFamilyPolicy").is_some() {
                errs.push(FieldError::forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                ));
            }
            // The CNAME target may be written fully qualified, with a trailing dot.
            let external_name = str_of(s, "externalName");
            let cname = external_name.strip_suffix('.').unwrap_or(external_name);
            if cname.is_empty() {
                errs.push(FieldError::required("spec.externalName", ""));
            } else {
                errs.extend(
                    is_dns1123_subdomain(cname)
                        .into_iter()
                        .map(|m| FieldError::invalid("spec.externalName", cname, m)),
                );
            }
        }
        _ => {}
    }

    let mut names = BTreeSet::new();
    let all_ports = ports(svc);
    for (i, p) in all_ports.iter().enumerate() {
        errs.extend(validate_service_port(
            p,
            all_ports.len() > 1,
            &mut names,
            &index("spec.ports", i),
        ));
    }

    if let Some(sel) = get(s, "selector") {
        errs.extend(validate_labels(&string_map(Some(sel)), "spec.selector"));
    }

    let affinity = str_of(s, "sessionAffinity");
    if affinity.is_empty() {
        errs.push(FieldError::required("spec.sessionAffinity", ""));
    } else if !AFFINITIES.contains(&affinity) {
        errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            affinity,
            AFFINITIES,
        ));
    }
    if affinity == "ClientIP" {
        errs.extend(validate_client_ip_affinity(get(s, "sessionAffinityConfig")));
    } else if affinity == "None" && get(s, "sessionAffinityConfig").is_some() {
        errs.push(FieldError::forbidden(
            "spec.sessionAffinityConfig",
            "must not be set when session affinity is None",
        ));
    }

    errs.extend(validate_cluster_ips_related_fields(svc));

    for (i, ip) in array(s, "externalIPs").iter().enumerate() {
        let ip = ip.as_str().unwrap_or("");
        let path = index("spec.externalIPs", i);
        let invalid = validate_ip(&path, ip);
        if invalid.is_empty() {
            errs.extend(validate_ip_address_for_endpoint(ip, &path));
        } else {
            errs.extend(invalid);
        }
    }

    if ty.is_empty() {
        errs.push(FieldError::required("spec.type", ""));
    } else if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", ty, TYPES));
    }

    if ty == "ClusterIP" {
        for (i, p) in all_ports.iter().enumerate() {
            if node_port_of(p) != 0 {
                errs.push(FieldError::forbidden(
                    child(&index("spec.ports", i), "nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }

    // NodePorts are unique per protocol; service ports per (protocol, port).
    let mut node_ports = BTreeSet::new();
    for (i, p) in all_ports.iter().enumerate() {
        let np = node_port_of(p);
        if np != 0 && !node_ports.insert((str_of(p, "protocol").to_string(), np)) {
            errs.push(FieldError::duplicate(
                child(&index("spec.ports", i), "nodePort"),
                np,
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, p) in all_ports.iter().enumerate() {
        let proto = str_of(p, "protocol");
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !seen.insert((proto.to_string(), port)) {
            errs.push(FieldError::duplicate(
                index("spec.ports", i),
                go_service_port_key(proto, port),
            ));
        }
    }

    let ranges = array(s, "loadBalancerSourceRanges");
    if !ranges.is_empty() {
        // kube-apiserver names this path with a capital L.
        let path = "spec.LoadBalancerSourceRanges";
        if ty != "LoadBalancer" {
            errs.push(FieldError::forbidden(
                path,
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        for (i, r) in ranges.iter().enumerate() {
            errs.extend(validate_cidr(
                &index(path, i),
                r.as_str().unwrap_or("").trim(),
            ));
        }
    } else if let Some(val) = annotations.get(LB_SOURCE_RANGES_ANNOTATION) {
        let path = format!("metadata.annotations[{LB_SOURCE_RANGES_ANNOTATION}]");
        if ty != "LoadBalancer" {
            errs.push(FieldError::forbidden(
                path.as_str(),
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        let val = val.trim();
        if !val.is_empty() {
            for cidr in val.split(',') {
                errs.extend(validate_cidr(&path, cidr.trim()));
            }
        }
    }

    if get(s, "allocateLoadBalancerNodePorts").is_some() && ty != "LoadBalancer" {
        errs.push(FieldError::forbidden(
            "spec.allocateLoadBalancerNodePorts",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    if ty == "LoadBalancer" && get(s, "allocateLoadBalancerNodePorts").is_none() {
        // kube-apiserver reports this path without `spec.`.
        errs.push(FieldError::required("allocateLoadBalancerNodePorts", ""));
    }

    if let Some(class) = get(s, "loadBalancerClass") {
        if ty == "LoadBalancer" {
            errs.extend(validate_qualified_name(
                class.as_str().unwrap_or(""),
                "spec.loadBalancerClass",
            ));
        } else {
            errs.push(FieldError::forbidden(
                "spec.loadBalancerClass",
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
    }

    errs.extend(validate_external_traffic_policy(svc));

    match get(s, "internalTrafficPolicy") {
        None => {
            if matches!(ty, "NodePort" | "LoadBalancer" | "ClusterIP") {
                errs.push(FieldError::required("spec.internalTrafficPolicy", ""));
            }
        }
        Some(v) => {
            let v = v.as_str().unwrap_or("");
            if !TRAFFIC_POLICIES.contains(&v) {
                errs.push(FieldError::not_supported(
                    "spec.internalTrafficPolicy",
                    v,
                    TRAFFIC_POLICIES,
                ));
            }
        }
    }

    if let Some(td) = get(s, "trafficDistribution") {
        let td = td.as_str().unwrap_or("");
        if td != "PreferClose" {
            errs.push(FieldError::not_supported(
                "spec.trafficDistribution",
                td,
                &["PreferClose"],
            ));
        }
    }
    errs
}

/// `validateServicePort`.
fn validate_service_port<'a>(
    p: &'a Value,
    require_name: bool,
    names: &mut BTreeSet<&'a str>,
    path: &str,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = str_of(p, "name");
    if require_name && name.is_empty() {
        errs.push(FieldError::required(child(path, "name"), ""));
    } else if !name.is_empty() {
        errs.extend(validate_dns1123_label(name, &child(path, "name")));
        if !names.insert(name) {
            errs.push(FieldError::duplicate(child(path, "name"), name));
        }
    }
    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid(
            child(path, "port"),
            port,
            inclusive_range_error(1, 65535),
        ));
    }
    errs.extend(validate_protocol(p, path));
    // ValidatePortNumOrName: a number in range or an IANA service name.
    let tp_path = child(path, "targetPort");
    match p.get("targetPort") {
        Some(Value::String(name)) => errs.extend(
            is_valid_port_name(name)
                .into_iter()
                .map(|m| FieldError::invalid(tp_path.as_str(), name.as_str(), m)),
        ),
        Some(v) => {
            let n = v.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                errs.push(FieldError::invalid(
                    tp_path.as_str(),
                    n,
                    inclusive_range_error(1, 65535),
                ));
            }
        }
        None => errs.push(FieldError::invalid(
            tp_path.as_str(),
            0,
            inclusive_range_error(1, 65535),
        )),
    }
    if let Some(ap) = p.get("appProtocol").and_then(Value::as_str) {
        errs.extend(validate_qualified_name(ap, &child(path, "appProtocol")));
    }
    errs
}

/// `validateClientIPAffinityConfig`.
fn validate_client_ip_affinity(config: Option<&Value>) -> Vec<FieldError> {
    let path = "spec.sessionAffinityConfig";
    let why = "when session affinity type is ClientIP";
    let Some(config) = config else {
        return vec![FieldError::required(path, why)];
    };
    let Some(client_ip) = get(config, "clientIP") else {
        return vec![FieldError::required(child(path, "clientIP"), why)];
    };
    let timeout_path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
    let Some(timeout) = get(client_ip, "timeoutSeconds").and_then(Value::as_i64) else {
        return vec![FieldError::required(timeout_path, why)];
    };
    if timeout <= 0 || timeout > MAX_CLIENT_IP_TIMEOUT {
        return vec![FieldError::invalid(
            timeout_path,
            timeout,
            format!("must be greater than 0 and less than {MAX_CLIENT_IP_TIMEOUT}"),
        )];
    }
    Vec::new()
}

/// `validateServiceExternalTrafficPolicy`.
fn validate_external_traffic_policy(svc: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let etp = external_traffic_policy(svc);
    if !externally_accessible(svc) {
        if !etp.is_empty() {
            errs.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                etp,
                "may only be set for externally-accessible services",
            ));
        }
    } else if etp.is_empty() {
        errs.push(FieldError::required("spec.externalTrafficPolicy", ""));
    } else if !TRAFFIC_POLICIES.contains(&etp) {
        errs.push(FieldError::not_supported(
            "spec.externalTrafficPolicy",
            etp,
            TRAFFIC_POLICIES,
        ));
    }
    let hc = health_check_node_port(svc);
    if !needs_health_check_node_port(svc) {
        if hc != 0 {
            errs.push(FieldError::invalid(
                "spec.healthCheckNodePort",
                hc,
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
    } else if hc == 0 {
        errs.push(FieldError::required("spec.healthCheckNodePort", ""));
    } else if !(1..=65535).contains(&hc) {
        errs.push(FieldError::invalid(
            "spec.healthCheckNodePort",
            hc,
            inclusive_range_error(1, 65535),
        ));
    }
    errs
}

/// `ValidateServiceClusterIPsRelatedFields`: clusterIP/clusterIPs agree, IPs are valid and one per
/// family, families and policy are known values and match the IPs.
fn validate_cluster_ips_related_fields(svc: &Value) -> Vec<FieldError> {
    if svc_type(svc) == "ExternalName" {
        return Vec::new();
    }
    let mut errs = Vec::new();
    let path = "spec.clusterIPs";
    let ip = cluster_ip(svc);
    let ips = cluster_ips(svc);
    if !ip.is_empty() {
        if ips.is_empty() {
            errs.push(FieldError::required(path, ""));
        } else if ips[0] != ip {
            errs.push(FieldError::invalid(
                path,
                go_string_slice(&ips),
                "first value must match `clusterIP`",
            ));
        }
    } else if !ips.is_empty() {
        errs.push(FieldError::invalid(
            path,
            go_string_slice(&ips),
            "must be empty when `clusterIP` is not specified",
        ));
    }

    let families = ip_families(svc);
    let mut seen = BTreeSet::new();
    for (i, f) in families.iter().enumerate() {
        let fp = index("spec.ipFamilies", i);
        if !FAMILIES.contains(&f.as_str()) {
            errs.push(FieldError::not_supported(fp.as_str(), f.as_str(), FAMILIES));
        }
        if !seen.insert(f.as_str()) {
            errs.push(FieldError::duplicate(fp, f.as_str()));
        }
    }
    if let Some(policy) = get(spec(svc), "ipFamilyPolicy") {
        let policy = policy.as_str().unwrap_or("");
        if !FAMILY_POLICIES.contains(&policy) {
            errs.push(FieldError::not_supported(
                "spec.ipFamilyPolicy",
                policy,
                FAMILY_POLICIES,
            ));
        }
    }

    let mut has_invalid = false;
    for (i, cip) in ips.iter().enumerate() {
        if i == 0 && cip == "None" {
            if ips.len() > 1 {
                has_invalid = true;
                errs.push(FieldError::invalid(
                    path,
                    go_string_slice(&ips),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        let e = validate_ip(&index(path, i), cip);
        has_invalid |= !e.is_empty();
        errs.extend(e);
    }
    if ips.len() > 2 {
        errs.push(FieldError::invalid(
            path,
            go_string_slice(&ips),
            "may only hold up to 2 values",
        ));
    }
    if has_invalid {
        return errs;
    }
    if ips.len() > 1 {
        let fams: Vec<Option<&str>> = ips.iter().map(|i| family_of(i)).collect();
        let dual = ips.len() == 2 && fams[0].is_some() && fams[1].is_some() && fams[0] != fams[1];
        if !dual {
            errs.push(FieldError::invalid(
                path,
                go_string_slice(&ips),
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    if !headless_by_cluster_ips(svc) && !ips.is_empty() && !families.is_empty() {
        for (i, cip) in ips.iter().enumerate().take(families.len()) {
            let v6 = family_of(cip) == Some("IPv6");
            if families[i] == "IPv4" && v6 {
                errs.push(FieldError::invalid(
                    index(path, i),
                    cip.as_str(),
                    format!("expected an IPv4 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
            if families[i] == "IPv6" && !v6 {
                errs.push(FieldError::invalid(
                    index(path, i),
                    cip.as_str(),
                    format!("expected an IPv6 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }
    errs
}

/// `validateUpgradeDowngradeClusterIPs`: the primary cluster IP never changes once set, except
/// when the Service moves to or from ExternalName or between headless forms.
fn validate_upgrade_downgrade_cluster_ips(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if svc_type(new) == "ExternalName" || svc_type(old) == "ExternalName" {
        return errs;
    }
    if headless_by_cluster_ips(old) && headless_by_cluster_ips(new) {
        return errs;
    }
    let (oi, ni) = (cluster_ips(old), cluster_ips(new));
    let shown = go_string_slice(&ni);
    if oi.len() == ni.len() {
        for (i, ip) in oi.iter().enumerate() {
            if *ip != ni[i] {
                errs.push(FieldError::invalid(
                    index("spec.clusterIPs", i),
                    shown.clone(),
                    "may not change once set",
                ));
            }
        }
    } else if oi.len() > ni.len() {
        if ni.is_empty() {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                shown.clone(),
                "primary clusterIP can not be unset",
            ));
        }
        if !oi.is_empty() && !ni.is_empty() && ni[0] != oi[0] {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                shown.clone(),
                "may not change once set",
            ));
        }
        if ni.len() == 1 && ip_family_policy(new) != Some("SingleStack") {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                go_optional_str(get(spec(new), "ipFamilyPolicy")),
                "must be set to 'SingleStack' when releasing the secondary clusterIP",
            ));
        }
    } else if !oi.is_empty() && ni[0] != oi[0] {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            shown,
            "may not change once set",
        ));
    }
    errs
}

/// `validateUpgradeDowngradeIPFamilies`: the primary family never changes.
fn validate_upgrade_downgrade_ip_families(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if svc_type(new) == "ExternalName" || svc_type(old) == "ExternalName" {
        return errs;
    }
    if headless_by_cluster_ips(old) || headless_by_cluster_ips(new) {
        return errs;
    }
    let (of, nf) = (ip_families(old), ip_families(new));
    let path = "spec.ipFamilies[0]";
    if of.len() == nf.len() {
        if of != nf {
            errs.push(FieldError::invalid(
                path,
                go_ip_families(&nf),
                "may not change once set",
            ));
        }
    } else if of.len() > nf.len() {
        if cluster_ips(new).is_empty() {
            errs.push(FieldError::invalid(
                path,
                go_ip_families(&nf),
                "primary ipFamily can not be unset",
            ));
        }
        if !nf.is_empty() && nf[0] != of[0] {
            errs.push(FieldError::invalid(
                path,
                go_string_slice(&cluster_ips(new)),
                "may not change once set",
            ));
        }
        if nf.len() == 1 && ip_family_policy(new) != Some("SingleStack") {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                go_optional_str(get(spec(new), "ipFamilyPolicy")),
                "must be set to 'SingleStack' when releasing the secondary ipFamily",
            ));
        }
    } else if !of.is_empty() && !nf.is_empty() && nf[0] != of[0] {
        errs.push(FieldError::invalid(
            path,
            go_string_slice(&cluster_ips(new)),
            "may not change once set",
        ));
    }
    errs
}

fn go_ip_families(f: &[String]) -> GoRepr {
    if f.is_empty() {
        return GoRepr("[]core.IPFamily(nil)".into());
    }
    let quoted: Vec<String> = f.iter().map(|x| format!("{x:?}")).collect();
    GoRepr(format!("[]core.IPFamily{{{}}}", quoted.join(", ")))
}

/// The checks of `initIPFamilyFields` that depend on the cluster's configured families (the
/// families of `--service-cluster-ip-range`): requested families must be configured, and
/// RequireDualStack needs two. Headless Services without a selector are exempt, as in
/// Kubernetes. Call after [`default_service`] and before allocating.
pub fn validate_ip_families_for_cluster(svc: &Value, cluster_families: &[&str]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if svc_type(svc) == "ExternalName" {
        return errs;
    }
    let ips = cluster_ips(svc);
    let families = ip_families(svc);
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            break;
        }
        if let Some(fam) = family_of(ip) {
            if !cluster_families.contains(&fam) {
                errs.push(FieldError::invalid(
                    index("spec.clusterIPs", i),
                    go_string_slice(&ips),
                    format!("{fam} is not configured on this cluster"),
                ));
            }
        }
    }
    if !errs.is_empty()
        || (cluster_ip(svc) == "None" && string_map(get(spec(svc), "selector")).is_empty())
    {
        return errs;
    }
    if ip_family_policy(svc) == Some("RequireDualStack") && cluster_families.len() < 2 {
        errs.push(FieldError::invalid(
            "spec.ipFamilyPolicy",
            go_optional_str(get(spec(svc), "ipFamilyPolicy")),
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if !cluster_families.contains(&f.as_str()) {
            errs.push(FieldError::invalid(
                index("spec.ipFamilies", i),
                f.as_str(),
                "not configured on this cluster",
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_node_ports_are_treated_as_unset() {
        let mut svc = serde_json::json!({"metadata": {"name": "a"}, "spec": {
            "type": "ClusterIP", "healthCheckNodePort": 0, "ports": [{"port": 80, "nodePort": 0}]}});
        super::default_service(&mut svc, None);
        assert!(svc.pointer("/spec/ports/0/nodePort").is_none());
        assert!(svc.pointer("/spec/healthCheckNodePort").is_none());
    }

    use super::*;
    use serde_json::json;

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn defaulted(spec: Value) -> Value {
        let mut s = svc(spec);
        default_service(&mut s, None);
        s
    }

    fn updated(new_spec: Value, old: &Value) -> Value {
        let mut s = svc(new_spec);
        default_service(&mut s, Some(old));
        s
    }

    fn messages(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(FieldError::message).collect()
    }

    fn assert_has(errs: &[FieldError], want: &str) {
        let msgs = messages(errs);
        assert!(
            msgs.iter().any(|m| m == want),
            "expected {want:?} in {msgs:#?}"
        );
    }

    #[test]
    fn cluster_ip_services_get_kubernetes_defaults() {
        let s = defaulted(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        assert_eq!(
            s["spec"],
            json!({
                "selector": {"app": "web"},
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                "sessionAffinity": "None",
                "type": "ClusterIP",
                "internalTrafficPolicy": "Cluster",
                "ipFamilyPolicy": "SingleStack",
                "ipFamilies": ["IPv4"]
            })
        );
        assert!(
            validate_service(&s, None).is_empty(),
            "{:#?}",
            messages(&validate_service(&s, None))
        );
    }

    #[test]
    fn load_balancers_default_traffic_policy_and_node_port_allocation() {
        let s = defaulted(
            json!({"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": "https"}]}),
        );
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(s["spec"]["allocateLoadBalancerNodePorts"], true);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], "https");
        assert!(needs_node_ports(&s));
        assert!(!needs_health_check_node_port(&s));
        let nodeport = defaulted(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        assert_eq!(nodeport["spec"]["externalTrafficPolicy"], "Cluster");
        assert!(nodeport["spec"]
            .get("allocateLoadBalancerNodePorts")
            .is_none());
        let external_ips =
            defaulted(json!({"ports": [{"port": 80}], "externalIPs": ["192.0.2.10"]}));
        assert_eq!(external_ips["spec"]["externalTrafficPolicy"], "Cluster");
    }

    #[test]
    fn client_ip_affinity_gets_a_three_hour_timeout() {
        let s = defaulted(json!({"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}));
        assert_eq!(
            s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        let none = defaulted(
            json!({"ports": [{"port": 80}], "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}),
        );
        assert!(none["spec"].get("sessionAffinityConfig").is_none());
    }

    #[test]
    fn headless_services_get_families_as_kubernetes_assigns_them() {
        let with_selector = defaulted(
            json!({"clusterIP": "None", "selector": {"a": "b"}, "ports": [{"port": 80}]}),
        );
        assert_eq!(with_selector["spec"]["clusterIPs"], json!(["None"]));
        assert_eq!(with_selector["spec"]["ipFamilyPolicy"], "SingleStack");
        assert_eq!(with_selector["spec"]["ipFamilies"], json!(["IPv4"]));
        assert!(is_headless(&with_selector) && !needs_cluster_ip(&with_selector));

        let selectorless = defaulted(json!({"clusterIP": "None"}));
        assert_eq!(selectorless["spec"]["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(selectorless["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert!(
            validate_service(&selectorless, None).is_empty(),
            "{:#?}",
            messages(&validate_service(&selectorless, None))
        );
        assert!(validate_ip_families_for_cluster(&selectorless, &["IPv4"]).is_empty());
    }

    #[test]
    fn external_name_services_get_no_ip_fields() {
        let s = defaulted(json!({"type": "ExternalName", "externalName": "db.example.com."}));
        assert!(s["spec"].get("ipFamilies").is_none());
        assert!(s["spec"].get("internalTrafficPolicy").is_none());
        assert!(!needs_cluster_ip(&s));
        assert!(
            validate_service(&s, None).is_empty(),
            "{:#?}",
            messages(&validate_service(&s, None))
        );

        let bad = defaulted(
            json!({"type": "ExternalName", "externalName": "DB.example.com", "clusterIP": "10.96.0.5"}),
        );
        let errs = validate_service(&bad, None);
        assert_has(
            &errs,
            "spec.clusterIPs: Forbidden: may not be set for ExternalName services",
        );
        assert!(messages(&errs).iter().any(|m| m.starts_with(
            "spec.externalName: Invalid value: \"DB.example.com\": a lowercase RFC 1123 subdomain"
        )));
        let missing = defaulted(json!({"type": "ExternalName"}));
        assert_has(
            &validate_service(&missing, None),
            "spec.externalName: Required value",
        );
    }

    #[test]
    fn service_names_are_dns1035_labels() {
        let mut s = defaulted(json!({"ports": [{"port": 80}]}));
        s["metadata"]["name"] = json!("1web");
        let errs = validate_service(&s, None);
        assert!(messages(&errs)[0]
            .starts_with("metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist"));
    }

    #[test]
    fn ports_are_required_except_for_headless_and_external_name() {
        assert_eq!(
            messages(&validate_service(&defaulted(json!({})), None)),
            vec!["spec.ports: Required value"]
        );
        assert!(validate_service(
            &defaulted(json!({"clusterIP": "None", "selector": {"a": "b"}})),
            None
        )
        .is_empty());
    }

    #[test]
    fn port_rules_match_kubernetes_messages() {
        let cases: &[(Value, &str)] = &[
            (json!([{"port": 0}]), "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
            (json!([{"port": 70000}]), "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"),
            (json!([{"port": 80, "name": "a"}, {"port": 81}]), "spec.ports[1].name: Required value"),
            (json!([{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]), "spec.ports[1].name: Duplicate value: \"a\""),
            (
                json!([{"port": 80, "protocol": "ICMP"}]),
                "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ),
            (
                json!([{"port": 80, "targetPort": 70000}]),
                "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            ),
            (
                json!([{"port": 80, "targetPort": "http--x"}]),
                "spec.ports[0].targetPort: Invalid value: \"http--x\": must not contain consecutive hyphens",
            ),
            (
                json!([{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]),
                "spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}",
            ),
            (json!([{"port": 80, "nodePort": 30080}]), "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
        ];
        for (ports, want) in cases {
            let s = defaulted(json!({"ports": ports}));
            assert_has(&validate_service(&s, None), want);
        }
        let ok = defaulted(
            json!({"ports": [{"port": 53, "protocol": "UDP", "name": "dns"}, {"port": 53, "protocol": "TCP", "name": "dns-tcp"}]}),
        );
        assert!(validate_service(&ok, None).is_empty());
    }

    #[test]
    fn node_ports_are_unique_per_protocol() {
        let s = defaulted(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80, "nodePort": 30080},
            {"name": "b", "port": 81, "nodePort": 30080},
            {"name": "c", "port": 82, "nodePort": 30080, "protocol": "UDP"}
        ]}));
        assert_eq!(
            messages(&validate_service(&s, None)),
            vec!["spec.ports[1].nodePort: Duplicate value: 30080"]
        );
    }

    #[test]
    fn headless_is_not_allowed_for_node_port_or_load_balancer() {
        let s =
            defaulted(json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]}));
        assert_has(
            &validate_service(&s, None),
            "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services",
        );
        let lb = defaulted(
            json!({"type": "LoadBalancer", "clusterIP": "None", "ports": [{"port": 80}]}),
        );
        assert_has(
            &validate_service(&lb, None),
            "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for LoadBalancer services",
        );
    }

    #[test]
    fn session_affinity_values_and_timeouts_are_checked() {
        let bad = defaulted(json!({"sessionAffinity": "Sticky", "ports": [{"port": 80}]}));
        assert_has(
            &validate_service(&bad, None),
            "spec.sessionAffinity: Unsupported value: \"Sticky\": supported values: \"ClientIP\", \"None\"",
        );
        let long = defaulted(
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 90000}}, "ports": [{"port": 80}]}),
        );
        assert_eq!(
            messages(&validate_service(&long, None)),
            vec!["spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 90000: must be greater than 0 and less than 86400"]
        );
        let ok = defaulted(
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": [{"port": 80}]}),
        );
        assert!(validate_service(&ok, None).is_empty());
    }

    #[test]
    fn external_ips_must_be_ordinary_addresses() {
        let s = defaulted(
            json!({"ports": [{"port": 80}], "externalIPs": ["192.0.2.1", "127.0.0.1", "bad"]}),
        );
        let errs = validate_service(&s, None);
        assert_eq!(
            messages(&errs),
            vec![
                "spec.externalIPs[1]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "spec.externalIPs[2]: Invalid value: \"bad\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ]
        );
    }

    #[test]
    fn load_balancer_source_ranges_need_a_load_balancer_and_valid_cidrs() {
        let cip =
            defaulted(json!({"ports": [{"port": 80}], "loadBalancerSourceRanges": ["10.0.0.0/8"]}));
        assert_has(&validate_service(&cip, None), "spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'");
        let lb = defaulted(
            json!({"type": "LoadBalancer", "ports": [{"port": 80}], "loadBalancerSourceRanges": [" 10.0.0.0/8 ", "x"]}),
        );
        assert_eq!(
            messages(&validate_service(&lb, None)),
            vec!["spec.LoadBalancerSourceRanges[1]: Invalid value: \"x\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
        );
    }

    #[test]
    fn health_check_node_port_is_only_for_local_load_balancers() {
        let local = defaulted(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        );
        assert!(needs_health_check_node_port(&local));
        assert_eq!(
            messages(&validate_service(&local, None)),
            vec!["spec.healthCheckNodePort: Required value"]
        );
        let mut allocated = local.clone();
        allocated["spec"]["healthCheckNodePort"] = json!(31000);
        assert!(validate_service(&allocated, None).is_empty());

        let cluster = defaulted(
            json!({"type": "NodePort", "healthCheckNodePort": 31000, "ports": [{"port": 80}]}),
        );
        assert_has(
            &validate_service(&cluster, None),
            "spec.healthCheckNodePort: Invalid value: 31000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
        );
    }

    #[test]
    fn traffic_policies_must_be_known_values() {
        let s = defaulted(
            json!({"type": "NodePort", "externalTrafficPolicy": "Global", "internalTrafficPolicy": "Nearby", "ports": [{"port": 80}]}),
        );
        let errs = validate_service(&s, None);
        assert_has(&errs, "spec.externalTrafficPolicy: Unsupported value: \"Global\": supported values: \"Cluster\", \"Local\"");
        assert_has(&errs, "spec.internalTrafficPolicy: Unsupported value: \"Nearby\": supported values: \"Cluster\", \"Local\"");
        let internal =
            defaulted(json!({"externalTrafficPolicy": "Cluster", "ports": [{"port": 80}]}));
        assert_has(
            &validate_service(&internal, None),
            "spec.externalTrafficPolicy: Invalid value: \"Cluster\": may only be set for externally-accessible services",
        );
    }

    #[test]
    fn cluster_ips_must_be_valid_and_agree_with_cluster_ip() {
        let ok = defaulted(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}));
        assert_eq!(ok["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        assert!(validate_service(&ok, None).is_empty());

        let bad = defaulted(json!({"clusterIP": "10.96.0.300", "ports": [{"port": 53}]}));
        assert_eq!(
            messages(&validate_service(&bad, None)),
            vec!["spec.clusterIPs[0]: Invalid value: \"10.96.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"]
        );
        let mismatch = defaulted(
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.11"], "ports": [{"port": 53}]}),
        );
        assert_has(
            &validate_service(&mismatch, None),
            "spec.clusterIPs: Invalid value: []string{\"10.96.0.11\"}: first value must match `clusterIP`",
        );
        let v6 = defaulted(json!({"clusterIP": "fd00::10", "ports": [{"port": 53}]}));
        assert_eq!(v6["spec"]["ipFamilies"], json!(["IPv6"]));
        assert_has(
            &validate_ip_families_for_cluster(&v6, &["IPv4"]),
            "spec.clusterIPs[0]: Invalid value: []string{\"fd00::10\"}: IPv6 is not configured on this cluster",
        );
        let dual =
            defaulted(json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 53}]}));
        assert_has(
            &validate_ip_families_for_cluster(&dual, &["IPv4"]),
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        );
    }

    #[test]
    fn cluster_ip_may_not_change_once_set() {
        let old = defaulted(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}));
        let moved = updated(
            json!({"clusterIP": "10.96.0.11", "ports": [{"port": 53}]}),
            &old,
        );
        assert_eq!(
            messages(&validate_service(&moved, Some(&old))),
            vec!["spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.11\"}: may not change once set"]
        );
        let to_external = updated(
            json!({"type": "ExternalName", "externalName": "x.example.com"}),
            &old,
        );
        assert!(
            validate_service(&to_external, Some(&old)).is_empty(),
            "{:#?}",
            messages(&validate_service(&to_external, Some(&old)))
        );
    }

    #[test]
    fn resubmitted_manifests_keep_allocated_values() {
        let mut old = defaulted(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}),
        );
        old["spec"]["clusterIP"] = json!("10.96.0.20");
        old["spec"]["clusterIPs"] = json!(["10.96.0.20"]);
        old["spec"]["ports"][0]["nodePort"] = json!(30080);
        old["spec"]["healthCheckNodePort"] = json!(31000);
        let new = updated(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}),
            &old,
        );
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.20");
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.96.0.20"]));
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(new["spec"]["healthCheckNodePort"], 31000);
        assert!(
            validate_service(&new, Some(&old)).is_empty(),
            "{:#?}",
            messages(&validate_service(&new, Some(&old)))
        );
    }

    #[test]
    fn changing_type_clears_values_the_new_type_does_not_use() {
        let mut old = defaulted(json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
        old["spec"]["clusterIP"] = json!("10.96.0.20");
        old["spec"]["clusterIPs"] = json!(["10.96.0.20"]);
        old["spec"]["ports"][0]["nodePort"] = json!(30080);

        // A full resubmission (kubectl edit) switching to ClusterIP: nodePorts, the LB-only
        // fields and the external traffic policy go, the cluster IP stays.
        let mut edited = old["spec"].clone();
        edited["type"] = json!("ClusterIP");
        let new = updated(edited, &old);
        assert!(new["spec"]["ports"][0].get("nodePort").is_none());
        assert!(new["spec"].get("allocateLoadBalancerNodePorts").is_none());
        assert!(new["spec"].get("externalTrafficPolicy").is_none());
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.20");
        assert!(
            validate_service(&new, Some(&old)).is_empty(),
            "{:#?}",
            messages(&validate_service(&new, Some(&old)))
        );

        // Switching to ExternalName drops the cluster IPs and families.
        let mut to_name = old["spec"].clone();
        to_name["type"] = json!("ExternalName");
        to_name["externalName"] = json!("db.example.com");
        let new = updated(to_name, &old);
        for key in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
        ] {
            assert!(
                new["spec"].get(key).is_none(),
                "{key} kept: {}",
                new["spec"]
            );
        }
        assert!(
            validate_service(&new, Some(&old)).is_empty(),
            "{:#?}",
            messages(&validate_service(&new, Some(&old)))
        );
    }

    #[test]
    fn node_ports_are_not_copied_when_the_type_no_longer_needs_them() {
        let mut old = defaulted(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        old["spec"]["ports"][0]["nodePort"] = json!(30080);
        let new = updated(json!({"type": "ClusterIP", "ports": [{"port": 80}]}), &old);
        assert!(new["spec"]["ports"][0].get("nodePort").is_none());
    }

    #[test]
    fn health_check_node_port_is_immutable_while_needed() {
        let mut old = defaulted(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        );
        old["spec"]["healthCheckNodePort"] = json!(31000);
        let mut new = old.clone();
        new["spec"]["healthCheckNodePort"] = json!(31001);
        assert_has(
            &validate_service(&new, Some(&old)),
            "spec.healthCheckNodePort: Forbidden: field is immutable",
        );
    }

    #[test]
    fn allocate_load_balancer_node_ports_is_only_for_load_balancers() {
        let s = defaulted(
            json!({"type": "NodePort", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}),
        );
        assert_has(&validate_service(&s, None), "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'");
        let lb = defaulted(
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}),
        );
        assert!(!needs_node_ports(&lb));
        assert!(validate_service(&lb, None).is_empty());
    }

    #[test]
    fn service_types_must_be_known() {
        let s = defaulted(json!({"type": "Magic", "ports": [{"port": 80}]}));
        assert_has(
            &validate_service(&s, None),
            "spec.type: Unsupported value: \"Magic\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        );
    }

    #[test]
    fn selector_labels_are_validated() {
        let s = defaulted(json!({"selector": {"app": "a b"}, "ports": [{"port": 80}]}));
        let errs = validate_service(&s, None);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.selector");
    }
}
