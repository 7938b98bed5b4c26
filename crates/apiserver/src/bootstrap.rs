//! What every cluster has from its first start: the system namespaces and the `default/kubernetes`
//! Service with Endpoints and an EndpointSlice pointing at the API servers. Idempotent: run on
//! every start, by every server; existing objects are kept, and this server's address is added
//! to the `kubernetes` endpoints if missing.

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
