//! What every cluster has from its first start: the system namespaces, the `default/kubernetes`
//! Service with Endpoints and an EndpointSlice pointing at the API servers, and the
//! `kube-system/kube-dns` Service for the cluster DNS. Idempotent: run on every start, by every
//! server; existing objects are kept (never overwritten, so a user's change survives a restart),
//! and this server's address is added to the `kubernetes` endpoints if missing.

use std::net::IpAddr;

use serde_json::{json, Value};
use switchyard_api::resources;
use switchyard_api::status::StatusError;

use crate::registry::{FieldValidation, Registry, WriteCtx};

fn ctx() -> WriteCtx {
    WriteCtx {
        now: jiff::Timestamp::now(),
        dry_run: false,
        field_manager: "switchyard-apiserver".into(),
        field_validation: FieldValidation::Strict,
        user: crate::registry::SYSTEM_USER.into(),
    }
}

async fn ensure(
    registry: &Registry,
    plural: &str,
    group: &str,
    version: &str,
    ns: Option<&str>,
    obj: Value,
) -> Result<(), StatusError> {
    let r =
        resources::find(group, version, plural).expect("bootstrap objects are of served resources");
    match registry.create(r, ns, obj, &ctx()).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

/// Create the system namespaces and the `kubernetes` service; register `advertise` (this
/// server's address and port) in its endpoints.
pub async fn run(registry: &Registry, advertise: IpAddr, port: u16) -> Result<(), StatusError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(
            registry,
            "namespaces",
            "",
            "v1",
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    let first = registry
        .services
        .ip_range
        .first()
        .ok_or_else(|| StatusError::internal("the service IP range has no usable address"))?
        .to_string();
    ensure(
        registry,
        "services",
        "",
        "v1",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": first, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                     "sessionAffinity": "None", "type": "ClusterIP"}
        }),
    )
    .await?;
    ensure_kube_dns(registry).await?;
    // The endpoints name every API server. They bypass address validation, as kube-apiserver's
    // own endpoint reconciler does, so that a loopback-only server still has a kubernetes service.
    let ip = advertise.to_string();
    let eps_r = resources::find("", "v1", "endpoints").expect("endpoints are served");
    let mut addresses: Vec<Value> = match registry.get(eps_r, Some("default"), "kubernetes").await {
        Ok(e) => e
            .pointer("/subsets/0/addresses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if !addresses
        .iter()
        .any(|a| a.get("ip").and_then(Value::as_str) == Some(ip.as_str()))
    {
        addresses.push(json!({"ip": ip}));
        let ips: Vec<String> = addresses
            .iter()
            .filter_map(|a| a.get("ip").and_then(Value::as_str).map(str::to_string))
            .collect();
        write_raw(registry, &eps_r.key(Some("default"), "kubernetes"), json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
        })).await?;
        let slice_r = resources::find("discovery.k8s.io", "v1", "endpointslices")
            .expect("endpointslices are served");
        let family = if advertise.is_ipv4() { "IPv4" } else { "IPv6" };
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        write_raw(registry, &slice_r.key(Some("default"), "kubernetes"), json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "switchyard-apiserver"}},
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
        })).await?;
    }
    Ok(())
}

/// The offset of the DNS Service's address in the service range: kubeadm gives `kube-dns` the
/// tenth address (`10.96.0.10` of `10.96.0.0/12`, kubeadm's `GetDNSIP`), and kubelets' default
/// `clusterDNS` points there.
pub const KUBE_DNS_IP_INDEX: u64 = 10;

/// The `kube-system/kube-dns` Service as kubeadm creates it for CoreDNS (`dns` 53/UDP, `dns-tcp`
/// 53/TCP, `metrics` 9153/TCP, the same labels), asking for `cluster_ip` if given, but with **no
/// selector**: `switchyard dns` runs as a process, not as pods, and each instance writes its own
/// EndpointSlice for this Service.
pub fn kube_dns_service(cluster_ip: Option<IpAddr>) -> Value {
    let mut spec = json!({
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}
        ],
        "sessionAffinity": "None",
        "type": "ClusterIP"
    });
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = Value::String(ip.to_string());
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns",
                                "kubernetes.io/cluster-service": "true",
                                "kubernetes.io/name": "CoreDNS"}},
        "spec": spec
    })
}

/// Creates `kube-system/kube-dns` if it does not exist, through the normal create path so the
/// ClusterIP allocator records its address. If the tenth address is held by another Service
/// (a user took it before the first start), logs a warning and lets the allocator pick one.
async fn ensure_kube_dns(registry: &Registry) -> Result<(), StatusError> {
    let services =
        resources::find("", "v1", "services").expect("bootstrap objects are of served resources");
    match registry
        .get(services, Some("kube-system"), "kube-dns")
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if e.code == 404 => {}
        Err(e) => return Err(e),
    }
    let create = |ip| {
        ensure(
            registry,
            "services",
            "",
            "v1",
            Some("kube-system"),
            kube_dns_service(ip),
        )
    };
    let Some(wanted) = registry.services.ip_range.nth(KUBE_DNS_IP_INDEX) else {
        tracing::warn!(range = %registry.services.ip_range,
            "the service range has no tenth address; kube-system/kube-dns gets a dynamic one");
        return create(None).await;
    };
    match create(Some(wanted)).await {
        // 422 "provided IP is already allocated": a user's Service holds the address.
        Err(e) if e.code == 422 => {
            tracing::warn!(ip = %wanted, error = %e,
                "the conventional DNS address is not available; kube-system/kube-dns gets a dynamic one");
            create(None).await
        }
        other => other,
    }
}

/// Write an object directly (create or replace), stamping uid and creation time if new.
async fn write_raw(registry: &Registry, key: &str, mut obj: Value) -> Result<(), StatusError> {
    use switchyard_store::{Compare, Txn};
    let existing = registry
        .store
        .get(key)
        .await
        .map_err(crate::registry::store_error)?;
    let (compare, meta_from) = match &existing {
        Some(kv) => (
            Compare::ModRevision(key.to_string(), kv.mod_revision),
            serde_json::from_slice::<Value>(&kv.value).ok(),
        ),
        None => (Compare::Absent(key.to_string()), None),
    };
    let meta = switchyard_api::object::metadata_mut(&mut obj);
    let old_meta = meta_from
        .and_then(|m| m.get("metadata").cloned())
        .unwrap_or_default();
    meta.insert(
        "uid".into(),
        old_meta
            .get("uid")
            .cloned()
            .unwrap_or_else(|| Value::String(uuid::Uuid::new_v4().to_string())),
    );
    meta.insert(
        "creationTimestamp".into(),
        old_meta
            .get("creationTimestamp")
            .cloned()
            .unwrap_or_else(|| {
                Value::String(
                    jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string(),
                )
            }),
    );
    let bytes = serde_json::to_vec(&obj).map_err(|e| StatusError::internal(e.to_string()))?;
    registry
        .store
        .txn(Txn::new().when(compare).put(key.to_string(), bytes))
        .await
        .map_err(crate::registry::store_error)?;
    Ok(())
}
