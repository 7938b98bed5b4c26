//! The discovery documents Switchyard serves, built from [`crate::resources::RESOURCES`]: the
//! legacy ones (`/api` `APIVersions`, `/apis` `APIGroupList`, `/apis/<group>` `APIGroup`,
//! `/api/v1` and `/apis/<group>/<version>` `APIResourceList`) and the aggregated
//! `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList` that clients prefer for `/api` and `/apis`.
//!
//! What kubectl 1.32 sends (client-go `discovery/discovery_client.go`, confirmed against the real
//! binary): `GET /api` and `GET /apis` with
//! `Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json`.
//! It decides which format came back from the response `Content-Type` alone (`ContentTypeIsGVK`:
//! media type `application/json` with parameters `g`, `v`, `as`), so the server must answer
//! aggregated documents with [`AGGREGATED_DISCOVERY_V2_CONTENT_TYPE`] and legacy ones with plain
//! `application/json`. It only trusts aggregated resources when both `/api` and `/apis` come back
//! aggregated; otherwise it falls back to one `GET` per group-version.

use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::resources::{group_versions, ResourceInfo, Subresource, RESOURCES};

/// The `Content-Type` of an aggregated discovery document in `apidiscovery.k8s.io/v2`.
pub const AGGREGATED_DISCOVERY_V2_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The `Content-Type` of an aggregated discovery document in `apidiscovery.k8s.io/v2beta1`
/// (same shape as v2; served to clients older than kubectl 1.30 that ask only for it).
pub const AGGREGATED_DISCOVERY_V2BETA1_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// The verbs of `/status` and `/scale` subresources, as kube-apiserver lists them.
const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

/// `/api`: the core group's `APIVersions`. `server_address` is the `host:port` clients should use
/// (kube-apiserver advertises its own address for the `0.0.0.0/0` CIDR).
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ]
    })
}

/// `/apis`: every non-core group with its versions, the first one served being preferred.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().filter_map(group_body).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: one group's `APIGroup`, or `None` if the group is not served.
pub fn api_group(group: &str) -> Option<Value> {
    if group.is_empty() {
        return None;
    }
    let mut body = group_body(group)?;
    if let Some(obj) = body.as_object_mut() {
        let mut out = Map::new();
        out.insert("kind".into(), json!("APIGroup"));
        out.insert("apiVersion".into(), json!("v1"));
        out.append(obj);
        return Some(Value::Object(out));
    }
    None
}

/// `/api/v1` (group `""`) and `/apis/<group>/<version>`: the `APIResourceList` of one
/// group-version, subresources included, or `None` if it is not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceInfo> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in served {
        let mut main = Map::new();
        main.insert("name".into(), json!(r.plural));
        main.insert("singularName".into(), json!(r.singular));
        main.insert("namespaced".into(), json!(r.namespaced));
        main.insert("kind".into(), json!(r.kind));
        main.insert("verbs".into(), json!(r.verbs()));
        if !r.short_names.is_empty() {
            main.insert("shortNames".into(), json!(r.short_names));
        }
        if !r.categories.is_empty() {
            main.insert("categories".into(), json!(r.categories));
        }
        main.insert("storageVersionHash".into(), json!(storage_version_hash(r)));
        resources.push(Value::Object(main));
        for sub in r.subresources {
            let mut s = Map::new();
            s.insert(
                "name".into(),
                json!(format!("{}/{}", r.plural, subresource_name(*sub))),
            );
            s.insert("singularName".into(), json!(""));
            s.insert("namespaced".into(), json!(r.namespaced));
            let (g, v, k) = subresource_kind(r, *sub);
            if *sub == Subresource::Scale {
                s.insert("group".into(), json!(g));
                s.insert("version".into(), json!(v));
            }
            s.insert("kind".into(), json!(k));
            s.insert("verbs".into(), json!(SUBRESOURCE_VERBS));
            resources.push(Value::Object(s));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources
    }))
}

/// The aggregated discovery document (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) for
/// `/api` (`legacy = true`: the core group only) or `/apis` (every other group).
pub fn aggregated_discovery(legacy: bool) -> Value {
    aggregated_discovery_as(legacy, AGGREGATED_DISCOVERY_V2_CONTENT_TYPE)
}

/// [`aggregated_discovery`] in the version named by `content_type` (one of the two constants
/// [`wants_aggregated`] returns); the v2beta1 document differs only in its `apiVersion`.
pub fn aggregated_discovery_as(legacy: bool, content_type: &str) -> Value {
    let api_version = if content_type == AGGREGATED_DISCOVERY_V2BETA1_CONTENT_TYPE {
        "apidiscovery.k8s.io/v2beta1"
    } else {
        "apidiscovery.k8s.io/v2"
    };
    let group_names: Vec<&'static str> = if legacy { vec![""] } else { groups() };
    let mut items = Vec::new();
    for group in group_names {
        let versions: Vec<Value> = versions_of(group)
            .into_iter()
            .map(|version| {
                let resources: Vec<Value> = RESOURCES
                    .iter()
                    .filter(|r| r.group == group && r.version == version)
                    .map(aggregated_resource)
                    .collect();
                json!({"version": version, "resources": resources, "freshness": "Current"})
            })
            .collect();
        if versions.is_empty() {
            continue;
        }
        // kube-apiserver leaves the core group's name empty; `creationTimestamp: null` is how
        // its ObjectMeta encoder writes an unset timestamp.
        let metadata = if group.is_empty() {
            json!({"creationTimestamp": null})
        } else {
            json!({"name": group, "creationTimestamp": null})
        };
        items.push(json!({"metadata": metadata, "versions": versions}));
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items
    })
}

/// Reads an `Accept` header and returns the aggregated discovery content type to answer with,
/// or `None` if the client did not ask for aggregated discovery (answer legacy JSON then).
///
/// Media ranges are taken in the client's order, skipping any with `q=0`; client-go lists v2
/// before v2beta1 before plain JSON. A `profile=nopeer` parameter (client-go 1.34+) is accepted:
/// a single Switchyard server has no peers, so its document is already the no-peer view.
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        if media != "application/json" {
            continue;
        }
        let (mut g, mut v, mut as_kind, mut q_zero) = (None, None, None, false);
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "g" => g = Some(value),
                "v" => v = Some(value),
                "as" => as_kind = Some(value),
                "q" => q_zero = value.parse::<f32>().map(|q| q <= 0.0).unwrap_or(false),
                _ => {}
            }
        }
        if q_zero || g != Some("apidiscovery.k8s.io") || as_kind != Some("APIGroupDiscoveryList") {
            continue;
        }
        match v {
            Some("v2") => return Some(AGGREGATED_DISCOVERY_V2_CONTENT_TYPE),
            Some("v2beta1") => return Some(AGGREGATED_DISCOVERY_V2BETA1_CONTENT_TYPE),
            _ => {}
        }
    }
    None
}

/// `storageVersionHash` as kube-apiserver computes it (apiserver `endpoints/discovery`
/// `StorageVersionHash`): base64 of the first 8 bytes of SHA-256 over `group/version/kind` of
/// the storage version. Clients only compare it for equality.
pub fn storage_version_hash(r: &ResourceInfo) -> String {
    let digest = Sha256::digest(format!("{}/{}/{}", r.group, r.version, r.kind).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..8])
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let mut out = Map::new();
    out.insert("resource".into(), json!(r.plural));
    out.insert(
        "responseKind".into(),
        json!({"group": r.group, "version": r.version, "kind": r.kind}),
    );
    out.insert(
        "scope".into(),
        json!(if r.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        }),
    );
    out.insert("singularResource".into(), json!(r.singular));
    out.insert("verbs".into(), json!(r.verbs()));
    if !r.short_names.is_empty() {
        out.insert("shortNames".into(), json!(r.short_names));
    }
    if !r.categories.is_empty() {
        out.insert("categories".into(), json!(r.categories));
    }
    if !r.subresources.is_empty() {
        let subs: Vec<Value> = r
            .subresources
            .iter()
            .map(|sub| {
                let (g, v, k) = subresource_kind(r, *sub);
                json!({
                    "subresource": subresource_name(*sub),
                    "responseKind": {"group": g, "version": v, "kind": k},
                    "verbs": SUBRESOURCE_VERBS
                })
            })
            .collect();
        out.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(out)
}

/// The URL segment of a subresource.
pub fn subresource_name(sub: Subresource) -> &'static str {
    match sub {
        Subresource::Status => "status",
        Subresource::Scale => "scale",
    }
}

/// The (group, version, kind) a subresource reads and writes: the parent's kind for `/status`,
/// `autoscaling/v1` `Scale` for `/scale`.
pub fn subresource_kind(
    r: &ResourceInfo,
    sub: Subresource,
) -> (&'static str, &'static str, &'static str) {
    match sub {
        Subresource::Status => (r.group, r.version, r.kind),
        Subresource::Scale => ("autoscaling", "v1", "Scale"),
    }
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Non-core groups in [`group_versions`] order.
fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (g, _) in group_versions() {
        if !g.is_empty() && !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

fn versions_of(group: &str) -> Vec<&'static str> {
    group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(_, v)| v)
        .collect()
}

fn group_body(group: &str) -> Option<Value> {
    let versions: Vec<Value> = versions_of(group)
        .into_iter()
        .map(|v| json!({"groupVersion": group_version(group, v), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": group, "versions": versions, "preferredVersion": preferred}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Accept header kubectl 1.32 sends for `/api` and `/apis`, captured from the binary.
    const KUBECTL_132_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    fn find_resource<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
        list["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == name)
    }

    #[test]
    fn every_served_resource_appears_in_legacy_discovery_with_scope_verbs_and_subresources() {
        for r in RESOURCES {
            let list = api_resource_list(r.group, r.version).expect("group-version served");
            assert_eq!(list["groupVersion"], json!(r.api_version()));
            let main = find_resource(&list, r.plural).expect("resource listed");
            assert_eq!(main["kind"], json!(r.kind));
            assert_eq!(main["namespaced"], json!(r.namespaced));
            assert_eq!(main["singularName"], json!(r.singular));
            assert_eq!(main["verbs"], json!(r.verbs()));
            if !r.short_names.is_empty() {
                assert_eq!(main["shortNames"], json!(r.short_names));
            }
            for sub in r.subresources {
                let name = format!("{}/{}", r.plural, subresource_name(*sub));
                let s = find_resource(&list, &name).expect("subresource listed");
                assert_eq!(s["verbs"], json!(["get", "patch", "update"]));
                assert_eq!(s["namespaced"], json!(r.namespaced));
            }
        }
    }

    #[test]
    fn the_scale_subresource_names_autoscaling_v1_scale() {
        let list = api_resource_list("apps", "v1").expect("apps/v1 served");
        let scale = find_resource(&list, "deployments/scale").expect("scale listed");
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["version"], "v1");
        assert_eq!(scale["kind"], "Scale");
        let status = find_resource(&list, "deployments/status").expect("status listed");
        assert_eq!(status["kind"], "Deployment");
        assert!(status.get("group").is_none());
    }

    #[test]
    fn every_served_resource_appears_in_aggregated_discovery_with_scope_verbs_and_subresources() {
        for r in RESOURCES {
            let doc = aggregated_discovery(r.group.is_empty());
            assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
            let item = doc["items"]
                .as_array()
                .and_then(|items| {
                    items
                        .iter()
                        .find(|i| i["metadata"]["name"].as_str().unwrap_or("") == r.group)
                })
                .expect("group listed");
            let version = item["versions"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["version"] == r.version))
                .expect("version listed");
            assert_eq!(version["freshness"], "Current");
            let res = version["resources"]
                .as_array()
                .and_then(|rs| rs.iter().find(|x| x["resource"] == r.plural))
                .expect("resource listed");
            assert_eq!(
                res["scope"],
                if r.namespaced {
                    "Namespaced"
                } else {
                    "Cluster"
                }
            );
            assert_eq!(res["singularResource"], r.singular);
            assert_eq!(
                res["responseKind"],
                json!({"group": r.group, "version": r.version, "kind": r.kind})
            );
            assert_eq!(res["verbs"], json!(r.verbs()));
            let subs: Vec<&str> = res["subresources"]
                .as_array()
                .map(|s| s.iter().filter_map(|x| x["subresource"].as_str()).collect())
                .unwrap_or_default();
            let want: Vec<&str> = r
                .subresources
                .iter()
                .map(|s| subresource_name(*s))
                .collect();
            assert_eq!(subs, want, "{}", r.plural);
        }
    }

    #[test]
    fn legacy_aggregated_discovery_holds_only_the_core_group_and_apis_never_does() {
        let legacy = aggregated_discovery(true);
        assert_eq!(legacy["items"].as_array().map(Vec::len), Some(1));
        assert!(legacy["items"][0]["metadata"].get("name").is_none());
        let apis = aggregated_discovery(false);
        for item in apis["items"].as_array().expect("items") {
            assert_ne!(item["metadata"]["name"], "");
        }
    }

    #[test]
    fn the_group_list_names_every_non_core_group_with_its_preferred_version() {
        let list = api_group_list();
        let names: Vec<&str> = list["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter_map(|g| g["name"].as_str())
            .collect();
        for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
            assert!(names.contains(&r.group), "{} missing", r.group);
        }
        assert!(!names.contains(&""));
        let apps = api_group("apps").expect("apps served");
        assert_eq!(apps["kind"], "APIGroup");
        assert_eq!(
            apps["preferredVersion"],
            json!({"groupVersion": "apps/v1", "version": "v1"})
        );
        assert!(api_group("batch").is_none());
        assert!(api_group("").is_none());
        assert!(api_resource_list("batch", "v1").is_none());
    }

    #[test]
    fn api_versions_advertises_the_given_server_address() {
        let v = api_versions("10.0.0.1:6443");
        assert_eq!(v["versions"], json!(["v1"]));
        assert_eq!(
            v["serverAddressByClientCIDRs"][0]["serverAddress"],
            "10.0.0.1:6443"
        );
    }

    #[test]
    fn wants_aggregated_picks_v2_from_the_header_kubectl_sends() {
        assert_eq!(
            wants_aggregated(KUBECTL_132_ACCEPT),
            Some(AGGREGATED_DISCOVERY_V2_CONTENT_TYPE)
        );
    }

    #[test]
    fn wants_aggregated_honours_v2beta1_only_clients_nopeer_and_legacy_clients() {
        let beta = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            wants_aggregated(beta),
            Some(AGGREGATED_DISCOVERY_V2BETA1_CONTENT_TYPE)
        );
        let nopeer = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;profile=nopeer,application/json";
        assert_eq!(
            wants_aggregated(nopeer),
            Some(AGGREGATED_DISCOVERY_V2_CONTENT_TYPE)
        );
        assert_eq!(wants_aggregated("application/json"), None);
        assert_eq!(wants_aggregated("application/json, */*"), None);
        assert_eq!(wants_aggregated(""), None);
        let refused = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;q=0,application/json";
        assert_eq!(wants_aggregated(refused), None);
    }

    #[test]
    fn storage_version_hashes_match_kube_apiserver() {
        let svc = crate::resources::find("", "v1", "services").expect("services served");
        assert_eq!(storage_version_hash(svc), "0/CO1lhkEBI=");
        let pod = crate::resources::find("", "v1", "pods").expect("pods served");
        assert_eq!(storage_version_hash(pod), "xPOwRZ+Yhw8=");
    }
}
