//! The OpenAPI documents Switchyard serves: the v3 root (`/openapi/v3`), one OpenAPI 3.0 document
//! per served group-version (`/openapi/v3/api/v1`, `/openapi/v3/apis/apps/v1`, ...) and the
//! Swagger 2.0 document (`/openapi/v2`), all built once from [`crate::resources::RESOURCES`] and
//! `k8s_openapi`'s schemas (plus [`crate::metallb`]'s).
//!
//! # What kubectl 1.32 requests, and why
//!
//! Checked in client-go / kubectl sources and by running the real binary against a scratch
//! server:
//!
//! - `GET /openapi/v3` (`Accept: application/json, */*`) → `{"paths": {"api/v1":
//!   {"serverRelativeURL": "/openapi/v3/api/v1?hash=..."}}}` (client-go `openapi/client.go`).
//!   Keys are parsed by `openapi3.PathToGroupVersion`; a URL under `/openapi/v3` keeps the client's
//!   own prefix. Then `GET <serverRelativeURL>` with `Accept: application/json` for one
//!   group-version (`openapi3/root.go` `retrieveGVBytes`).
//! - `kubectl apply`/`create`/`replace` with the default `--validate=strict` build a
//!   `ParamVerifyingSchema` (kubectl `cmd/util/factory_client_access.go` `Validator`): it asks
//!   `queryParamVerifierV3` (cli-runtime `resource/query_param_verifier_v3.go`) whether the
//!   group-version's v3 document has, among its paths, a PATCH operation whose
//!   `x-kubernetes-group-version-kind` is the object's kind; the *first* such operation found
//!   (map order, so every one of them must qualify) must list a `fieldValidation` parameter
//!   inline. If so the server validates (`?fieldValidation=Strict`) and kubectl does none. If the
//!   v3 lookup fails with anything but "unsupported", it falls back to the v2 verifier, which
//!   downloads `/openapi/v2`; with v2 failing too, apply aborts with "failed to download
//!   openapi".
//! - Client-side apply computes its patch in `kubectl/pkg/cmd/apply/patcher.go`: unless
//!   `KUBECTL_OPENAPIV3_PATCH=false`, it looks for a v3 PATCH operation of the kind whose
//!   `requestBody.content` has `application/strategic-merge-patch+json`; if found it builds a
//!   strategic merge patch from the component schema carrying the kind in
//!   `x-kubernetes-group-version-kind`, reading `x-kubernetes-patch-strategy` and
//!   `x-kubernetes-patch-merge-key` on properties (apimachinery `strategicpatch`
//!   `PatchMetaFromOpenAPIV3`, which resolves `allOf[0]` then `$ref` and fails on any field the
//!   schema lacks). Otherwise it tries v2 (`OpenAPISchema()`), then compiled-in Go structs, and
//!   for kinds kubectl does not know (metallb) a JSON merge patch. So built-in kinds advertise
//!   strategic merge patch and carry the patch extensions ([`PATCH_METADATA`]); metallb kinds
//!   advertise only JSON/merge/apply patches, as a CRD does.
//! - `kubectl explain` (`explain/v2`, template `plaintext.tmpl`) reads the v3 document: it finds
//!   the kind from the `x-kubernetes-group-version-kind` of an operation on the collection or item
//!   path, then the component schema whose `x-kubernetes-group-version-kind` array contains that
//!   exact `{group, kind, version}` map, and walks `properties`, `items`, `additionalProperties`,
//!   `allOf` and `#/components/schemas/` refs.
//! - `/openapi/v2` is requested only as protobuf (`Accept:
//!   application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, client-go
//!   `DiscoveryClient.OpenAPISchema`), and only on fallback paths. Observed with kubectl 1.32:
//!   with the v3 documents served, applying a built-in kind never fetches v2; applying a metallb
//!   kind fetches it once (the patcher's v2 step, after v3 offered no strategic merge patch) and
//!   tolerates any error there, ending in a JSON merge patch. With `/openapi/v3` missing, the
//!   verifier's v2 fallback is fatal on error: a 404 aborts `kubectl apply` with "failed to
//!   download openapi", and a `Content-Type` containing `@` fails to parse ("mime: unexpected
//!   content after media subtype"). [`v2_protobuf`] is a small valid protobuf document (no paths
//!   or definitions), which every such fallback accepts: the v2 verifier finds no kind and skips
//!   client-side validation, the patcher falls back to compiled-in structs or a merge patch.
//!
//! # What Switchyard serves
//!
//! - `/openapi/v3` → [`v3_root`]; each group-version → [`v3_document`] (or, cheaper,
//!   [`v3_document_bytes`]) as `application/json`, with `ETag: "<hash>"` ([`v3_document_hash`],
//!   the uppercase hex SHA-512 of the bytes, as kube-openapi `handler3` computes it). A request
//!   whose `?hash=` matches may be answered with `Cache-Control: public, immutable`.
//! - `/openapi/v2` → [`v2_negotiate`]: protobuf ([`v2_protobuf`], `Content-Type`
//!   [`OPENAPI_V2_PROTOBUF_CONTENT_TYPE`], the spelling without `@` that kube-openapi answers
//!   with), JSON ([`v2_document`]), or 406 when neither is acceptable, like kube-openapi
//!   `handler.go`.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use k8s_openapi::api::{apps, autoscaling, coordination, core, discovery as discovery_k8s};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512};

use crate::discovery::{subresource_kind, subresource_name};
use crate::metallb;
use crate::resources::{group_versions, ResourceInfo, Subresource, RESOURCES};

/// `Content-Type` of the protobuf `/openapi/v2` answer, as kube-openapi writes it (the variant
/// with `@` that clients ask for is not a valid media type).
pub const OPENAPI_V2_PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The representations `/openapi/v2` can be served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V2Format {
    /// `application/json`: [`v2_document`].
    Json,
    /// `application/com.github.proto-openapi.spec.v2[@.]v1.0+protobuf`: [`v2_protobuf`].
    Protobuf,
}

/// Picks the `/openapi/v2` representation for an `Accept` header the way kube-openapi's
/// `handler.go` does: the first media range (in the client's order, `q=0` skipped) matching JSON
/// or either protobuf spelling, wildcards allowed; an empty header means `*/*`. `None` means
/// answer 406.
pub fn v2_negotiate(accept: &str) -> Option<V2Format> {
    const ACCEPTED: &[(&str, V2Format)] = &[
        ("json", V2Format::Json),
        (
            "com.github.proto-openapi.spec.v2@v1.0+protobuf",
            V2Format::Protobuf,
        ),
        (
            "com.github.proto-openapi.spec.v2.v1.0+protobuf",
            V2Format::Protobuf,
        ),
    ];
    let accept = if accept.trim().is_empty() {
        "*/*"
    } else {
        accept
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim() == "q" && v.trim().parse::<f32>().map(|q| q <= 0.0).unwrap_or(false)
            })
        });
        let Some((ty, sub)) = media.split_once('/') else {
            continue;
        };
        if refused || (ty != "application" && ty != "*") {
            continue;
        }
        if let Some((_, format)) = ACCEPTED.iter().find(|(s, _)| sub == "*" || sub == *s) {
            return Some(*format);
        }
    }
    None
}

/// A valid protobuf `openapi.v2.Document` (gnostic `openapiv2/OpenAPIv2.proto`) with
/// `swagger: "2.0"`, an `info` and empty `paths`, served for protobuf requests to `/openapi/v2`.
pub fn v2_protobuf() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut info = Vec::new();
        proto_string(&mut info, 1, "Switchyard");
        proto_string(&mut info, 2, env!("CARGO_PKG_VERSION"));
        let mut doc = Vec::new();
        proto_string(&mut doc, 1, "2.0");
        proto_bytes(&mut doc, 2, &info);
        proto_bytes(&mut doc, 8, &[]);
        doc
    })
}

fn proto_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    proto_varint(out, u64::from(field << 3 | 2));
    proto_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn proto_string(out: &mut Vec<u8>, field: u32, s: &str) {
    proto_bytes(out, field, s.as_bytes());
}

fn proto_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `/openapi/v3`: every served group-version's document path with its content hash.
pub fn v3_root() -> Value {
    let mut paths = Map::new();
    for doc in &docs().v3 {
        paths.insert(
            doc.path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{}?hash={}", doc.path, doc.hash)}),
        );
    }
    json!({ "paths": paths })
}

/// The OpenAPI 3.0 document of one group-version, `gv_path` being `api/v1` or
/// `apis/<group>/<version>` (a leading `/` or `/openapi/v3/` is tolerated). `None` if that
/// group-version is not served.
pub fn v3_document(gv_path: &str) -> Option<Value> {
    find_v3(gv_path).map(|d| d.value.clone())
}

/// [`v3_document`] already serialized, built once.
pub fn v3_document_bytes(gv_path: &str) -> Option<&'static [u8]> {
    find_v3(gv_path).map(|d| d.bytes.as_slice())
}

/// The hash of [`v3_document_bytes`]: the `?hash=` of [`v3_root`] and the document's `ETag`.
pub fn v3_document_hash(gv_path: &str) -> Option<&'static str> {
    find_v3(gv_path).map(|d| d.hash.as_str())
}

/// The Swagger 2.0 document of everything served, as kube-apiserver serves `/openapi/v2` to
/// `Accept: application/json`: `definitions` named like the v3 components, and every path.
pub fn v2_document() -> Value {
    docs().v2.clone()
}

struct V3Doc {
    path: String,
    value: Value,
    bytes: Vec<u8>,
    hash: String,
}

struct Docs {
    v3: Vec<V3Doc>,
    v2: Value,
}

fn docs() -> &'static Docs {
    static DOCS: OnceLock<Docs> = OnceLock::new();
    DOCS.get_or_init(|| {
        let v3: Vec<V3Doc> = group_versions()
            .into_iter()
            .map(|(group, version)| {
                let value = build_v3(group, version);
                let bytes = serde_json::to_vec(&value).unwrap_or_default();
                let hash = Sha512::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect();
                V3Doc {
                    path: gv_path(group, version),
                    value,
                    bytes,
                    hash,
                }
            })
            .collect();
        let v2 = build_v2(&v3);
        Docs { v3, v2 }
    })
}

fn find_v3(gv_path: &str) -> Option<&'static V3Doc> {
    let p = gv_path.trim_start_matches('/');
    let p = p.strip_prefix("openapi/v3/").unwrap_or(p);
    let p = p.split('?').next().unwrap_or(p).trim_end_matches('/');
    docs().v3.iter().find(|d| d.path == p)
}

/// `api/v1` or `apis/<group>/<version>`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas

const REF_PREFIX: &str = "#/components/schemas/";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

/// Adds the schema of a served kind to `generator` and returns its component name, or `None` for
/// a kind this module has no Rust type for.
fn kind_schema(generator: &mut SchemaGenerator, group: &str, kind: &str) -> Option<String> {
    fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> Option<String> {
        generator.subschema_for::<T>();
        Some(T::schema_name().into_owned())
    }
    match (group, kind) {
        ("", "Namespace") => add::<core::v1::Namespace>(generator),
        ("", "Service") => add::<core::v1::Service>(generator),
        ("", "Endpoints") => add::<core::v1::Endpoints>(generator),
        ("", "Pod") => add::<core::v1::Pod>(generator),
        ("", "Node") => add::<core::v1::Node>(generator),
        ("", "Event") => add::<core::v1::Event>(generator),
        ("", "ConfigMap") => add::<core::v1::ConfigMap>(generator),
        ("discovery.k8s.io", "EndpointSlice") => add::<discovery_k8s::v1::EndpointSlice>(generator),
        ("coordination.k8s.io", "Lease") => add::<coordination::v1::Lease>(generator),
        ("apps", "Deployment") => add::<apps::v1::Deployment>(generator),
        ("apps", "ReplicaSet") => add::<apps::v1::ReplicaSet>(generator),
        ("metallb.io", "IPAddressPool") => add::<metallb::IPAddressPool>(generator),
        ("metallb.io", "L2Advertisement") => add::<metallb::L2Advertisement>(generator),
        _ => None,
    }
}

/// The component name kube-apiserver gives a kind: `io.k8s.api.<group>.<version>.<Kind>` for
/// built-in groups, the reversed group for CRD-style groups (`io.metallb.v1beta1.IPAddressPool`).
fn default_schema_name(r: &ResourceInfo) -> String {
    let group = if r.group.is_empty() {
        "core".to_string()
    } else if let Some(g) = r.group.strip_suffix(".k8s.io") {
        g.to_string()
    } else {
        let reversed: Vec<&str> = r.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), r.version, r.kind);
    };
    format!("io.k8s.api.{group}.{}.{}", r.version, r.kind)
}

/// One strategic-merge-patch / list-type annotation: `(schema, property, patch strategy,
/// merge key, list type, list map keys)`. Taken from the Go struct tags of `k8s.io/api` and
/// `k8s.io/apimachinery` (`patchStrategy`, `patchMergeKey`, `+listType`, `+listMapKey`), which
/// kube-apiserver publishes as `x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`,
/// `x-kubernetes-list-type` and `x-kubernetes-list-map-keys`. kubectl's client-side apply reads the
/// first two; lists without them are replaced whole by a strategic merge patch.
pub type PatchMeta = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    &'static [&'static str],
);

/// Every patch annotation of the kinds Switchyard serves (see [`PatchMeta`]).
pub const PATCH_METADATA: &[PatchMeta] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        Some("merge"),
        None,
        Some("set"),
        &[],
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        Some("merge"),
        Some("uid"),
        Some("map"),
        &["uid"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        Some("merge"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        Some("merge"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        Some("merge"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        Some("merge"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        Some("merge,retainKeys"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        Some("merge"),
        Some("ip"),
        Some("map"),
        &["ip"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        Some("merge"),
        Some("topologyKey"),
        Some("map"),
        &["topologyKey", "whenUnsatisfiable"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        Some("merge"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        Some("merge,retainKeys"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        Some("merge"),
        Some("containerPort"),
        Some("map"),
        &["containerPort", "protocol"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        "env",
        Some("merge"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        Some("merge"),
        Some("mountPath"),
        Some("map"),
        &["mountPath"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        Some("merge"),
        Some("devicePath"),
        Some("map"),
        &["devicePath"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        Some("merge"),
        Some("containerPort"),
        Some("map"),
        &["containerPort", "protocol"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        Some("merge"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        Some("merge"),
        Some("mountPath"),
        Some("map"),
        &["mountPath"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        Some("merge"),
        Some("devicePath"),
        Some("map"),
        &["devicePath"],
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        Some("merge"),
        Some("type"),
        Some("map"),
        &["type"],
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "podIPs",
        Some("merge"),
        Some("ip"),
        None,
        &[],
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "hostIPs",
        Some("merge"),
        Some("ip"),
        None,
        &[],
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        Some("merge,retainKeys"),
        Some("name"),
        Some("map"),
        &["name"],
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        Some("merge"),
        Some("port"),
        Some("map"),
        &["port", "protocol"],
    ),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        Some("merge"),
        Some("type"),
        Some("map"),
        &["type"],
    ),
    (
        "io.k8s.api.core.v1.NodeSpec",
        "podCIDRs",
        Some("merge"),
        None,
        Some("set"),
        &[],
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        Some("merge"),
        Some("type"),
        Some("map"),
        &["type"],
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        Some("merge"),
        Some("type"),
        None,
        &[],
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        Some("merge"),
        Some("type"),
        Some("map"),
        &["type"],
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        Some("retainKeys"),
        None,
        None,
        &[],
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        Some("merge"),
        Some("type"),
        Some("map"),
        &["type"],
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        Some("merge"),
        Some("type"),
        Some("map"),
        &["type"],
    ),
];

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

/// Builds `components.schemas` for one group-version: the served kinds, their lists, `Scale`
/// when a `/scale` subresource exists, and the shared meta types every kube-apiserver document
/// carries.
fn build_schemas(
    served: &[&'static ResourceInfo],
) -> (Map<String, Value>, HashMap<&'static str, String>) {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut kind_names: HashMap<&'static str, String> = HashMap::new();
    for r in served {
        if let Some(name) = kind_schema(&mut generator, r.group, r.kind) {
            kind_names.insert(r.kind, name);
        }
    }
    let wants_scale = served.iter().any(|r| r.has_subresource(Subresource::Scale));
    if wants_scale {
        generator.subschema_for::<autoscaling::v1::Scale>();
    }
    generator.subschema_for::<meta::ObjectMeta>();
    generator.subschema_for::<meta::ListMeta>();
    generator.subschema_for::<meta::Status>();
    generator.subschema_for::<meta::DeleteOptions>();
    generator.subschema_for::<meta::Patch>();
    generator.subschema_for::<meta::WatchEvent<Value>>();
    let mut schemas = generator.take_definitions(true);
    for (name, schema) in schemas.iter_mut() {
        normalize(schema);
        if name.starts_with("io.metallb.") {
            normalize_metallb(schema);
        }
    }

    // Kinds this module has no type for still get a schema, so paths and explain resolve.
    for r in served {
        if !kind_names.contains_key(r.kind) {
            let name = default_schema_name(r);
            schemas.insert(
                name.clone(),
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
            kind_names.insert(r.kind, name);
        }
    }

    for r in served {
        let Some(name) = kind_names.get(r.kind).cloned() else {
            continue;
        };
        if let Some(Value::Object(schema)) = schemas.get_mut(&name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([gvk(r.group, r.version, r.kind)]),
            );
            // k8s-openapi marks `metadata` required because its structs hold a non-optional
            // ObjectMeta; kube-apiserver's schemas do not.
            if let Some(Value::Array(req)) = schema.get_mut("required") {
                req.retain(|f| f != "metadata");
                if req.is_empty() {
                    schema.remove("required");
                }
            }
        }
        schemas.insert(format!("{name}List"), list_schema(r, &name));
    }
    if wants_scale {
        if let Some(Value::Object(scale)) = schemas.get_mut("io.k8s.api.autoscaling.v1.Scale") {
            scale.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([gvk("autoscaling", "v1", "Scale")]),
            );
            if let Some(Value::Array(req)) = scale.get_mut("required") {
                req.retain(|f| f != "metadata");
            }
        }
    }
    let every_gv: Vec<Value> = {
        let mut gvs = vec![("", "v1")];
        for gv in group_versions() {
            if !gvs.contains(&gv) {
                gvs.push(gv);
            }
        }
        gvs.into_iter()
            .map(|(g, v)| json!({"group": g, "version": v}))
            .collect()
    };
    for kind in ["DeleteOptions", "WatchEvent"] {
        if let Some(Value::Object(schema)) = schemas.get_mut(&format!("{META}{kind}")) {
            let list: Vec<Value> = every_gv
                .iter()
                .map(|gv| {
                    gvk(
                        gv["group"].as_str().unwrap_or(""),
                        gv["version"].as_str().unwrap_or(""),
                        kind,
                    )
                })
                .collect();
            schema.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
        }
    }
    if let Some(Value::Object(schema)) = schemas.get_mut(&format!("{META}Status")) {
        schema.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([gvk("", "v1", "Status")]),
        );
    }

    for (schema_name, property, strategy, merge_key, list_type, map_keys) in PATCH_METADATA {
        let Some(prop) = schemas
            .get_mut(*schema_name)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*property))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(s) = strategy {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(s));
        }
        if let Some(k) = merge_key {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(k));
        }
        if let Some(t) = list_type {
            prop.insert("x-kubernetes-list-type".into(), json!(t));
        }
        if !map_keys.is_empty() {
            prop.insert("x-kubernetes-list-map-keys".into(), json!(map_keys));
        }
    }

    let mut sorted: Vec<(String, Value)> = schemas.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    (sorted.into_iter().collect(), kind_names)
}

fn list_schema(r: &ResourceInfo, item_schema: &str) -> Value {
    json!({
        "description": format!("{}List is a list of {} objects.", r.kind, r.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
                "type": "string"
            },
            "items": {
                "description": format!("List of {}.", r.plural),
                "type": "array",
                "items": {"$ref": format!("{REF_PREFIX}{item_schema}")}
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                "type": "string"
            },
            "metadata": {
                "allOf": [{"$ref": format!("{REF_PREFIX}{META}ListMeta")}],
                "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
            }
        },
        "x-kubernetes-group-version-kind": [gvk(r.group, r.version, &r.list_kind())]
    })
}

/// Rewrites what schemars emits for Rust `Option`s into the shape kube-apiserver publishes:
/// optional fields are simply not `required`, never `nullable` or `anyOf` with `null`; a `$ref`
/// with siblings is wrapped in `allOf`.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::Array(any)) = obj.get("anyOf") {
                let non_null: Vec<Value> =
                    any.iter().filter(|s| !is_null_schema(s)).cloned().collect();
                if non_null.len() == 1 && non_null.len() < any.len() {
                    obj.remove("anyOf");
                    let inner = non_null.into_iter().next().unwrap_or(Value::Null);
                    if let Value::Object(inner) = inner {
                        if inner.contains_key("$ref") && !obj.is_empty() {
                            obj.insert("allOf".into(), Value::Array(vec![Value::Object(inner)]));
                        } else {
                            for (k, val) in inner {
                                obj.entry(k).or_insert(val);
                            }
                        }
                    }
                }
            }
            obj.remove("nullable");
            if let Some(Value::Array(types)) = obj.get("type") {
                let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                if rest.len() == 1 {
                    obj.insert(
                        "type".into(),
                        rest.into_iter().next().unwrap_or(Value::Null),
                    );
                }
            }
            if obj.contains_key("$ref") && obj.len() > 1 {
                if let Some(r) = obj.remove("$ref") {
                    obj.insert("allOf".into(), json!([{"$ref": r}]));
                }
            }
            for child in obj.values_mut() {
                normalize(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn is_null_schema(s: &Value) -> bool {
    s.get("type") == Some(&json!("null"))
        || s.get("enum") == Some(&json!([null]))
        || (s.get("const") == Some(&Value::Null) && s.get("type").is_none())
}

/// What schemars adds to the MetalLB schemas beyond the CRD's: the `Default` of every
/// `#[serde(default)]` container field (only the CRD's boolean defaults are kept), and the line
/// breaks of Rust doc comments (kube-apiserver descriptions are single paragraphs of one line).
fn normalize_metallb(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if matches!(obj.get("default"), Some(Value::Object(_) | Value::Array(_))) {
                obj.remove("default");
            }
            if let Some(Value::String(d)) = obj.get_mut("description") {
                *d = d
                    .split("\n\n")
                    .map(|p| p.replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
            }
            obj.values_mut().for_each(normalize_metallb);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_metallb),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// A query parameter as kube-apiserver documents it in v3 (inline, `schema.uniqueItems`).
fn query_param(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn p_pretty() -> Value {
    query_param("pretty", "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).", "string")
}
fn p_dry_run() -> Value {
    query_param("dryRun", "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed", "string")
}
fn p_field_manager(patch: bool) -> Value {
    let d = if patch {
        "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint. This field is required for apply requests (application/apply-patch) but optional for non-apply patch types (JsonPatch, MergePatch, StrategicMergePatch)."
    } else {
        "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint."
    };
    query_param("fieldManager", d, "string")
}
fn p_field_validation() -> Value {
    query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.", "string")
}
fn p_force() -> Value {
    query_param("force", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.", "boolean")
}

fn list_params(watch: bool) -> Vec<Value> {
    let mut out = vec![
        query_param("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion. Clients should not assume bookmarks are returned at any specific interval, nor may they assume the server will send any BOOKMARK event during a session. If this is not a watch, this field is ignored.", "boolean"),
        query_param("continue", "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue) and the server may reject a continue value it does not recognize.", "string"),
        query_param("fieldSelector", "A selector to restrict the list of returned objects by their fields. Defaults to everything.", "string"),
        query_param("labelSelector", "A selector to restrict the list of returned objects by their labels. Defaults to everything.", "string"),
        query_param("limit", "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results.", "integer"),
        query_param("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset", "string"),
        query_param("resourceVersionMatch", "resourceVersionMatch determines how resourceVersion is applied to list calls. It is highly recommended that resourceVersionMatch be set for list calls where resourceVersion is set See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset", "string"),
        query_param("sendInitialEvents", "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream will begin with synthetic events to produce the current state of objects in the collection. Once all such events have been sent, a synthetic \"Bookmark\" event will be sent.", "boolean"),
        query_param("timeoutSeconds", "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.", "integer"),
    ];
    if watch {
        out.push(query_param("watch", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.", "boolean"));
    } else {
        // deletecollection has no allowWatchBookmarks
        out.remove(0);
    }
    out
}

fn delete_params() -> Vec<Value> {
    vec![
        p_dry_run(),
        query_param("gracePeriodSeconds", "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used. Defaults to a per object value if not specified. zero means delete immediately.", "integer"),
        query_param("ignoreStoreReadErrorWithClusterBreakingPotential", "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error. A resource is considered corrupt if it can not be retrieved from the underlying storage successfully because of a) its data can not be transformed e.g. decryption failure, or b) it fails to decode into an object.", "boolean"),
        query_param("orphanDependents", "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned. If true/false, the \"orphan\" finalizer will be added to/removed from the object's finalizers list. Either this field or PropagationPolicy may be set, but not both.", "boolean"),
        query_param("propagationPolicy", "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. The default policy is decided by the existing finalizer set in the metadata.finalizers and the resource-specific default policy. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.", "string"),
    ]
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("{REF_PREFIX}{name}")})
}

fn content(schema: &Value, stream: bool) -> Value {
    let mut c = Map::new();
    c.insert("application/json".into(), json!({"schema": schema}));
    c.insert("application/yaml".into(), json!({"schema": schema}));
    if stream {
        c.insert(
            "application/json;stream=watch".into(),
            json!({"schema": schema}),
        );
    }
    Value::Object(c)
}

fn responses(codes: &[(&str, &str)], schema: &Value, stream: bool) -> Value {
    let mut out = Map::new();
    for (code, description) in codes {
        out.insert(
            (*code).into(),
            json!({"description": description, "content": content(schema, stream)}),
        );
    }
    out.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(out)
}

/// kube-apiserver's operationId prefix for a group-version: `CoreV1`, `AppsV1`,
/// `DiscoveryV1`, `MetallbIoV1beta1`.
fn op_prefix(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.strip_suffix(".k8s.io").unwrap_or(group)
    };
    let mut out = String::new();
    for part in group.split(['.', '-']).chain(std::iter::once(version)) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

fn tag(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.strip_suffix(".k8s.io").unwrap_or(group)
    };
    format!("{}_{}", group.replace(['.', '-'], "_"), version)
}

struct Op<'a> {
    r: &'a ResourceInfo,
    kind: (&'a str, &'a str, &'a str),
    action: &'static str,
    id: String,
    description: String,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Value,
}

fn op(o: Op<'_>) -> Value {
    let mut out = Map::new();
    out.insert("tags".into(), json!([tag(o.r.group, o.r.version)]));
    out.insert("description".into(), json!(o.description));
    out.insert("operationId".into(), json!(o.id));
    if !o.params.is_empty() {
        out.insert("parameters".into(), Value::Array(o.params));
    }
    if let Some(b) = o.body {
        out.insert("requestBody".into(), b);
    }
    out.insert("responses".into(), o.responses);
    out.insert("x-kubernetes-action".into(), json!(o.action));
    out.insert(
        "x-kubernetes-group-version-kind".into(),
        gvk(o.kind.0, o.kind.1, o.kind.2),
    );
    Value::Object(out)
}

fn body(schema: &Value) -> Value {
    json!({"content": {"*/*": {"schema": schema}}, "required": true})
}

fn patch_body(strategic: bool) -> Value {
    let schema = schema_ref(&format!("{META}Patch"));
    let mut c = Map::new();
    c.insert(
        "application/apply-patch+yaml".into(),
        json!({"schema": schema}),
    );
    c.insert(
        "application/json-patch+json".into(),
        json!({"schema": schema}),
    );
    c.insert(
        "application/merge-patch+json".into(),
        json!({"schema": schema}),
    );
    if strategic {
        c.insert(
            "application/strategic-merge-patch+json".into(),
            json!({"schema": schema}),
        );
    }
    json!({"content": c, "required": true})
}

/// Adds every path of one resource: collection, item, all-namespaces list and subresources.
fn resource_paths(paths: &mut Map<String, Value>, r: &'static ResourceInfo, kind_schema: &str) {
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let ns = if r.namespaced { "Namespaced" } else { "" };
    let pre = op_prefix(r.group, r.version);
    let k = (r.group, r.version, r.kind);
    let kind_ref = schema_ref(kind_schema);
    let list_ref = schema_ref(&format!("{kind_schema}List"));
    let status_ref = schema_ref(&format!("{META}Status"));
    // Built-in kinds accept strategic merge patches; CRD-style kinds (metallb) do not, exactly
    // as kube-apiserver answers 415 for them.
    let strategic = r.group != metallb::GROUP;
    let namespace_param = path_param(
        "namespace",
        "object name and auth scope, such as for teams and projects",
    );
    let name_param = path_param("name", &format!("name of the {}", r.kind));

    let collection = if r.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{prefix}/{}", r.plural)
    };
    let mut path_params = Vec::new();
    if r.namespaced {
        path_params.push(namespace_param.clone());
    }
    path_params.push(p_pretty());

    let list = op(Op {
        r,
        kind: k,
        action: "list",
        id: format!("list{pre}{ns}{}", r.kind),
        description: format!("list or watch objects of kind {}", r.kind),
        params: list_params(true),
        body: None,
        responses: responses(&[("200", "OK")], &list_ref, true),
    });
    let create = op(Op {
        r,
        kind: k,
        action: "post",
        id: format!("create{pre}{ns}{}", r.kind),
        description: format!("create a {}", r.kind),
        params: vec![p_dry_run(), p_field_manager(false), p_field_validation()],
        body: Some(body(&kind_ref)),
        responses: responses(
            &[("200", "OK"), ("201", "Created"), ("202", "Accepted")],
            &kind_ref,
            false,
        ),
    });
    let mut collection_delete_params = vec![];
    collection_delete_params.extend(list_params(false));
    collection_delete_params.extend(delete_params());
    collection_delete_params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let delete_collection = op(Op {
        r,
        kind: k,
        action: "deletecollection",
        id: format!("delete{pre}Collection{ns}{}", r.kind),
        description: format!("delete collection of {}", r.kind),
        params: collection_delete_params,
        body: Some(
            json!({"content": {"*/*": {"schema": schema_ref(&format!("{META}DeleteOptions"))}}}),
        ),
        responses: responses(&[("200", "OK")], &status_ref, false),
    });
    paths.insert(
        collection.clone(),
        json!({"get": list, "post": create, "delete": delete_collection, "parameters": path_params}),
    );

    let item = format!("{collection}/{{name}}");
    let mut item_params = vec![name_param.clone()];
    if r.namespaced {
        item_params.push(namespace_param.clone());
    }
    item_params.push(p_pretty());
    let read = op(Op {
        r,
        kind: k,
        action: "get",
        id: format!("read{pre}{ns}{}", r.kind),
        description: format!("read the specified {}", r.kind),
        params: vec![],
        body: None,
        responses: responses(&[("200", "OK")], &kind_ref, false),
    });
    let replace = op(Op {
        r,
        kind: k,
        action: "put",
        id: format!("replace{pre}{ns}{}", r.kind),
        description: format!("replace the specified {}", r.kind),
        params: vec![p_dry_run(), p_field_manager(false), p_field_validation()],
        body: Some(body(&kind_ref)),
        responses: responses(&[("200", "OK"), ("201", "Created")], &kind_ref, false),
    });
    let patch = op(Op {
        r,
        kind: k,
        action: "patch",
        id: format!("patch{pre}{ns}{}", r.kind),
        description: format!("partially update the specified {}", r.kind),
        params: vec![
            p_dry_run(),
            p_field_manager(true),
            p_field_validation(),
            p_force(),
        ],
        body: Some(patch_body(strategic)),
        responses: responses(&[("200", "OK"), ("201", "Created")], &kind_ref, false),
    });
    let delete = op(Op {
        r,
        kind: k,
        action: "delete",
        id: format!("delete{pre}{ns}{}", r.kind),
        description: format!("delete a {}", r.kind),
        params: delete_params(),
        body: Some(
            json!({"content": {"*/*": {"schema": schema_ref(&format!("{META}DeleteOptions"))}}}),
        ),
        responses: responses(&[("200", "OK"), ("202", "Accepted")], &status_ref, false),
    });
    paths.insert(
        item.clone(),
        json!({"get": read, "put": replace, "patch": patch, "delete": delete, "parameters": item_params}),
    );

    if r.namespaced {
        let all = op(Op {
            r,
            kind: k,
            action: "list",
            id: format!("list{pre}{}ForAllNamespaces", r.kind),
            description: format!("list or watch objects of kind {}", r.kind),
            params: list_params(true),
            body: None,
            responses: responses(&[("200", "OK")], &list_ref, true),
        });
        paths.insert(
            format!("{prefix}/{}", r.plural),
            json!({"get": all, "parameters": [p_pretty()]}),
        );
    }

    for sub in r.subresources {
        let (g, v, sk) = subresource_kind(r, *sub);
        let sub_ref = if *sub == Subresource::Scale {
            schema_ref("io.k8s.api.autoscaling.v1.Scale")
        } else {
            kind_ref.clone()
        };
        let suffix = match sub {
            Subresource::Status => "Status",
            Subresource::Scale => "Scale",
        };
        let what = format!("{} of the specified {}", subresource_name(*sub), r.kind);
        let read = op(Op {
            r,
            kind: (g, v, sk),
            action: "get",
            id: format!("read{pre}{ns}{}{suffix}", r.kind),
            description: format!("read {what}"),
            params: vec![],
            body: None,
            responses: responses(&[("200", "OK")], &sub_ref, false),
        });
        let replace = op(Op {
            r,
            kind: (g, v, sk),
            action: "put",
            id: format!("replace{pre}{ns}{}{suffix}", r.kind),
            description: format!("replace {what}"),
            params: vec![p_dry_run(), p_field_manager(false), p_field_validation()],
            body: Some(body(&sub_ref)),
            responses: responses(&[("200", "OK"), ("201", "Created")], &sub_ref, false),
        });
        let patch = op(Op {
            r,
            kind: (g, v, sk),
            action: "patch",
            id: format!("patch{pre}{ns}{}{suffix}", r.kind),
            description: format!("partially update {what}"),
            params: vec![
                p_dry_run(),
                p_field_manager(true),
                p_field_validation(),
                p_force(),
            ],
            body: Some(patch_body(strategic)),
            responses: responses(&[("200", "OK"), ("201", "Created")], &sub_ref, false),
        });
        paths.insert(
            format!("{item}/{}", subresource_name(*sub)),
            json!({"get": read, "put": replace, "patch": patch, "parameters": item_params.clone()}),
        );
    }
}

fn build_v3(group: &str, version: &str) -> Value {
    let served: Vec<&'static ResourceInfo> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let (schemas, kind_names) = build_schemas(&served);
    let mut paths = Map::new();
    for r in &served {
        let name = kind_names
            .get(r.kind)
            .cloned()
            .unwrap_or_else(|| default_schema_name(r));
        resource_paths(&mut paths, r, &name);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Switchyard", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}
            }
        },
        "security": [{"BearerToken": []}]
    })
}

// ---------------------------------------------------------------------------------------------
// Swagger 2.0

/// Converts the v3 documents into one Swagger 2.0 document the way kube-apiserver shapes
/// `/openapi/v2`: `#/definitions/` refs (a lone `allOf` ref with siblings becomes a plain `$ref`
/// with siblings), query parameters with an inline `type`, request bodies as a `body` parameter,
/// `consumes`/`produces` lists and responses with a `schema`.
fn build_v2(v3: &[V3Doc]) -> Value {
    let mut definitions = Map::new();
    let mut paths = Map::new();
    for doc in v3 {
        if let Some(Value::Object(schemas)) = doc.value.pointer("/components/schemas") {
            for (name, schema) in schemas {
                if !definitions.contains_key(name) {
                    let mut s = schema.clone();
                    to_v2_schema(&mut s);
                    definitions.insert(name.clone(), s);
                }
            }
        }
        if let Some(Value::Object(p)) = doc.value.get("paths") {
            for (path, item) in p {
                paths.insert(path.clone(), to_v2_path_item(item));
            }
        }
    }
    let mut sorted: Vec<(String, Value)> = definitions.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let definitions: Map<String, Value> = sorted.into_iter().collect();
    json!({
        "swagger": "2.0",
        "info": {"title": "Switchyard", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {
            "BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}
        },
        "security": [{"BearerToken": []}]
    })
}

fn to_v2_schema(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("$ref") {
                *r = r.replace(REF_PREFIX, "#/definitions/");
            }
            let lone_ref = match obj.get("allOf") {
                Some(Value::Array(all)) if all.len() == 1 => all[0].get("$ref").cloned(),
                _ => None,
            };
            if let Some(Value::String(r)) = lone_ref {
                obj.remove("allOf");
                obj.insert(
                    "$ref".into(),
                    json!(r.replace(REF_PREFIX, "#/definitions/")),
                );
            }
            // Swagger 2.0 has no `default` beside `$ref` and no `x-kubernetes-int-or-string`
            // companions to worry about; everything else carries over.
            for child in obj.values_mut() {
                to_v2_schema(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_v2_schema),
        _ => {}
    }
}

fn to_v2_param(p: &Value) -> Value {
    let mut out = Map::new();
    for key in ["name", "in", "description", "required"] {
        if let Some(v) = p.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(Value::Object(schema)) = p.get("schema") {
        for (k, v) in schema {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn to_v2_path_item(item: &Value) -> Value {
    let mut out = Map::new();
    let Some(item) = item.as_object() else {
        return Value::Object(out);
    };
    for (method, operation) in item {
        if method == "parameters" {
            let params: Vec<Value> = operation
                .as_array()
                .map(|a| a.iter().map(to_v2_param).collect())
                .unwrap_or_default();
            out.insert("parameters".into(), Value::Array(params));
            continue;
        }
        let Some(o) = operation.as_object() else {
            continue;
        };
        let mut op2 = Map::new();
        for key in ["description", "operationId", "tags"] {
            if let Some(v) = o.get(key) {
                op2.insert(key.into(), v.clone());
            }
        }
        let mut params: Vec<Value> = Vec::new();
        let mut consumes: Vec<String> = Vec::new();
        if let Some(Value::Object(rb)) = o.get("requestBody") {
            if let Some(Value::Object(c)) = rb.get("content") {
                consumes = c.keys().cloned().collect();
                if let Some(schema) = c.values().next().and_then(|m| m.get("schema")) {
                    let mut schema = schema.clone();
                    to_v2_schema(&mut schema);
                    params.push(json!({"name": "body", "in": "body", "required": rb.get("required").cloned().unwrap_or(json!(false)), "schema": schema}));
                }
            }
        }
        if let Some(Value::Array(ps)) = o.get("parameters") {
            params.extend(ps.iter().map(to_v2_param));
        }
        if !consumes.is_empty() {
            op2.insert("consumes".into(), json!(consumes));
        }
        let mut produces: BTreeSet<String> = BTreeSet::new();
        let mut responses = Map::new();
        if let Some(Value::Object(rs)) = o.get("responses") {
            for (code, resp) in rs {
                let mut r2 = Map::new();
                r2.insert(
                    "description".into(),
                    resp.get("description").cloned().unwrap_or(json!("")),
                );
                if let Some(Value::Object(c)) = resp.get("content") {
                    produces.extend(c.keys().cloned());
                    if let Some(schema) = c.values().next().and_then(|m| m.get("schema")) {
                        let mut schema = schema.clone();
                        to_v2_schema(&mut schema);
                        r2.insert("schema".into(), schema);
                    }
                }
                responses.insert(code.clone(), Value::Object(r2));
            }
        }
        if !produces.is_empty() {
            op2.insert(
                "produces".into(),
                json!(produces.into_iter().collect::<Vec<_>>()),
            );
        }
        op2.insert("schemes".into(), json!(["https"]));
        if !params.is_empty() {
            op2.insert("parameters".into(), Value::Array(params));
        }
        op2.insert("responses".into(), Value::Object(responses));
        for (k, v) in o {
            if k.starts_with("x-") {
                op2.insert(k.clone(), v.clone());
            }
        }
        out.insert(method.clone(), Value::Object(op2));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(obj) => {
                for (k, child) in obj {
                    if k == "$ref" {
                        if let Some(s) = child.as_str() {
                            out.push(s);
                        }
                    } else {
                        all_refs(child, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|c| all_refs(c, out)),
            _ => {}
        }
    }

    fn root_paths() -> Vec<String> {
        v3_root()["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn the_v3_root_lists_every_served_group_version_with_a_hash() {
        let root = v3_root();
        for (g, v) in group_versions() {
            let p = gv_path(g, v);
            let url = root["paths"][&p]["serverRelativeURL"]
                .as_str()
                .expect("listed");
            let hash = v3_document_hash(&p).expect("document exists");
            assert_eq!(url, format!("/openapi/v3/{p}?hash={hash}"));
            assert_eq!(hash.len(), 128);
        }
        assert_eq!(root_paths().len(), group_versions().len());
        assert_eq!(
            v3_document_bytes("/openapi/v3/api/v1?hash=x"),
            v3_document_bytes("api/v1")
        );
        assert!(v3_document("apis/batch/v1").is_none());
    }

    #[test]
    fn documents_and_their_hashes_are_stable_across_builds() {
        for (g, v) in group_versions() {
            let again = serde_json::to_vec(&build_v3(g, v)).expect("serializes");
            assert_eq!(
                Some(again.as_slice()),
                v3_document_bytes(&gv_path(g, v)),
                "{g}/{v}"
            );
        }
    }

    #[test]
    fn every_v3_document_parses_and_every_ref_resolves_inside_it() {
        for p in root_paths() {
            let bytes = v3_document_bytes(&p).expect("document");
            let doc: Value = serde_json::from_slice(bytes).expect("valid JSON");
            assert_eq!(doc["openapi"], "3.0.0");
            let schemas = doc["components"]["schemas"].as_object().expect("schemas");
            let mut refs = Vec::new();
            all_refs(&doc, &mut refs);
            assert!(!refs.is_empty());
            for r in refs {
                let name = r
                    .strip_prefix(REF_PREFIX)
                    .unwrap_or_else(|| panic!("{p}: foreign ref {r}"));
                assert!(schemas.contains_key(name), "{p}: dangling ref {r}");
            }
        }
    }

    #[test]
    fn no_schema_keeps_schemars_nullable_or_null_types() {
        for p in root_paths() {
            let text =
                String::from_utf8(v3_document_bytes(&p).expect("doc").to_vec()).expect("utf8");
            assert!(!text.contains("\"nullable\""), "{p}");
            assert!(!text.contains("\"null\""), "{p}");
            assert!(!text.contains("[null]"), "{p}");
            assert!(!text.contains("\"anyOf\""), "{p}");
            assert!(!text.contains("$defs"), "{p}");
        }
    }

    #[test]
    fn every_kind_has_a_schema_carrying_its_group_version_kind() {
        for r in RESOURCES {
            let doc = v3_document(&gv_path(r.group, r.version)).expect("doc");
            let schemas = doc["components"]["schemas"].as_object().expect("schemas");
            for kind in [r.kind.to_string(), r.list_kind()] {
                let want = gvk(r.group, r.version, &kind);
                let found = schemas.values().any(|s| {
                    s["x-kubernetes-group-version-kind"]
                        .as_array()
                        .is_some_and(|l| l.contains(&want))
                });
                assert!(found, "no schema for {kind}");
            }
        }
    }

    #[test]
    fn built_in_kinds_use_kube_apiserver_schema_names_and_metallb_uses_the_crd_names() {
        let core = v3_document("api/v1").expect("core");
        assert_eq!(
            core["components"]["schemas"]["io.k8s.api.core.v1.Service"]
                ["x-kubernetes-group-version-kind"],
            json!([{"group": "", "kind": "Service", "version": "v1"}])
        );
        let mlb = v3_document("apis/metallb.io/v1beta1").expect("metallb");
        let pool = &mlb["components"]["schemas"]["io.metallb.v1beta1.IPAddressPool"];
        assert_eq!(pool["required"], json!(["spec"]));
        assert_eq!(
            pool["properties"]["metadata"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        let spec = &mlb["components"]["schemas"]["io.metallb.v1beta1.IPAddressPoolSpec"];
        assert_eq!(spec["properties"]["autoAssign"]["type"], "boolean");
        assert_eq!(spec["properties"]["autoAssign"]["default"], true);
        assert!(spec["properties"]["addresses"].get("default").is_none());
        assert!(pool["properties"]["spec"].get("default").is_none());
        assert_eq!(
            pool["properties"]["status"]["allOf"][0]["$ref"],
            "#/components/schemas/io.metallb.v1beta1.IPAddressPoolStatus"
        );
        assert!(!spec["description"].as_str().unwrap_or("\n").contains('\n'));
        assert!(default_schema_name(
            crate::resources::find("metallb.io", "v1beta1", "ipaddresspools").expect("pool")
        )
        .eq("io.metallb.v1beta1.IPAddressPool"));
    }

    #[test]
    fn every_patch_operation_offers_field_validation_and_names_its_kind() {
        for p in root_paths() {
            let doc = v3_document(&p).expect("doc");
            let mut patches = 0;
            for (path, item) in doc["paths"].as_object().expect("paths") {
                let Some(patch) = item.get("patch") else {
                    continue;
                };
                patches += 1;
                let names: Vec<&str> = patch["parameters"]
                    .as_array()
                    .expect("parameters")
                    .iter()
                    .filter_map(|q| q["name"].as_str())
                    .collect();
                for want in ["dryRun", "fieldManager", "fieldValidation", "force"] {
                    assert!(names.contains(&want), "{path} lacks {want}");
                }
                assert_eq!(patch["x-kubernetes-action"], "patch");
                assert!(
                    patch["x-kubernetes-group-version-kind"]["kind"].is_string(),
                    "{path}"
                );
                assert!(
                    patch["requestBody"]["content"]["application/apply-patch+yaml"].is_object()
                );
            }
            assert!(patches > 0, "{p}");
        }
    }

    #[test]
    fn every_resource_has_its_collection_item_and_subresource_paths() {
        for r in RESOURCES {
            let doc = v3_document(&gv_path(r.group, r.version)).expect("doc");
            let prefix = if r.group.is_empty() {
                "/api/v1".to_string()
            } else {
                format!("/apis/{}/{}", r.group, r.version)
            };
            let collection = if r.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
            } else {
                format!("{prefix}/{}", r.plural)
            };
            let paths = &doc["paths"];
            assert_eq!(paths[&collection]["get"]["x-kubernetes-action"], "list");
            assert_eq!(paths[&collection]["post"]["x-kubernetes-action"], "post");
            assert_eq!(
                paths[&collection]["delete"]["x-kubernetes-action"],
                "deletecollection"
            );
            let list_params: Vec<&str> = paths[&collection]["get"]["parameters"]
                .as_array()
                .expect("list params")
                .iter()
                .filter_map(|q| q["name"].as_str())
                .collect();
            assert!(list_params.contains(&"watch") && list_params.contains(&"labelSelector"));
            let item = format!("{collection}/{{name}}");
            for (method, action) in [
                ("get", "get"),
                ("put", "put"),
                ("patch", "patch"),
                ("delete", "delete"),
            ] {
                assert_eq!(
                    paths[&item][method]["x-kubernetes-action"], action,
                    "{item} {method}"
                );
                assert_eq!(
                    paths[&item][method]["x-kubernetes-group-version-kind"],
                    gvk(r.group, r.version, r.kind)
                );
            }
            for sub in r.subresources {
                let sp = format!("{item}/{}", subresource_name(*sub));
                let (g, v, k) = subresource_kind(r, *sub);
                assert_eq!(
                    paths[&sp]["patch"]["x-kubernetes-group-version-kind"],
                    gvk(g, v, k),
                    "{sp}"
                );
            }
        }
        let apps = v3_document("apis/apps/v1").expect("apps");
        assert!(
            apps["components"]["schemas"]["io.k8s.api.autoscaling.v1.Scale"]
                ["x-kubernetes-group-version-kind"]
                .is_array()
        );
    }

    #[test]
    fn built_in_kinds_advertise_strategic_merge_patch_and_metallb_kinds_do_not() {
        let core = v3_document("api/v1").expect("core");
        let svc = &core["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"];
        assert!(
            svc["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object()
        );
        let mlb = v3_document("apis/metallb.io/v1beta1").expect("metallb");
        let pool = &mlb["paths"]
            ["/apis/metallb.io/v1beta1/namespaces/{namespace}/ipaddresspools/{name}"]["patch"];
        assert!(pool["requestBody"]["content"]["application/merge-patch+json"].is_object());
        assert!(pool["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_none());
    }

    #[test]
    fn strategic_merge_metadata_marks_ports_containers_env_volumes_and_conditions() {
        let core = v3_document("api/v1").expect("core");
        let s = &core["components"]["schemas"];
        let ports = &s["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
        assert_eq!(ports["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(ports["x-kubernetes-list-type"], "map");
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["port", "protocol"])
        );
        assert_eq!(
            s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
                ["x-kubernetes-patch-merge-key"],
            "name"
        );
        assert_eq!(
            s["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"]["x-kubernetes-patch-strategy"],
            "merge,retainKeys"
        );
        assert_eq!(
            s["io.k8s.api.core.v1.Container"]["properties"]["env"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        assert_eq!(
            s["io.k8s.api.core.v1.Container"]["properties"]["ports"]
                ["x-kubernetes-patch-merge-key"],
            "containerPort"
        );
        assert_eq!(
            s["io.k8s.api.core.v1.PodStatus"]["properties"]["conditions"]
                ["x-kubernetes-patch-merge-key"],
            "type"
        );
        let apps = v3_document("apis/apps/v1").expect("apps");
        let a = &apps["components"]["schemas"];
        assert_eq!(
            a["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"]
                ["x-kubernetes-patch-strategy"],
            "retainKeys"
        );
        assert_eq!(
            a["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
                ["x-kubernetes-patch-strategy"],
            "merge"
        );
    }

    #[test]
    fn every_patch_annotation_lands_on_a_real_property_of_some_document() {
        for (schema, property, ..) in PATCH_METADATA {
            let found = root_paths().iter().any(|p| {
                v3_document(p).is_some_and(|d| {
                    d["components"]["schemas"][*schema]["properties"][*property].is_object()
                })
            });
            assert!(found, "{schema}.{property} is in no document");
        }
    }

    #[test]
    fn the_v2_document_has_definitions_paths_and_only_definition_refs() {
        let v2 = v2_document();
        assert_eq!(v2["swagger"], "2.0");
        let defs = v2["definitions"].as_object().expect("definitions");
        assert!(defs.contains_key("io.k8s.api.core.v1.Service"));
        assert!(defs.contains_key("io.metallb.v1beta1.L2Advertisement"));
        let mut refs = Vec::new();
        all_refs(&v2, &mut refs);
        for r in refs {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("foreign ref {r}"));
            assert!(defs.contains_key(name), "dangling {r}");
        }
        let patch = &v2["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"];
        assert!(patch["consumes"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("application/strategic-merge-patch+json"))));
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(names.contains(&"fieldValidation") && names.contains(&"body"));
    }

    #[test]
    fn v2_negotiation_follows_kube_openapi() {
        assert_eq!(
            v2_negotiate("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
            Some(V2Format::Protobuf)
        );
        assert_eq!(
            v2_negotiate("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
            Some(V2Format::Protobuf)
        );
        assert_eq!(v2_negotiate("application/json"), Some(V2Format::Json));
        assert_eq!(v2_negotiate("*/*"), Some(V2Format::Json));
        assert_eq!(v2_negotiate(""), Some(V2Format::Json));
        assert_eq!(v2_negotiate("text/html"), None);
        assert_eq!(v2_negotiate("application/json;q=0"), None);
    }

    #[test]
    fn the_v2_protobuf_is_a_well_formed_document_message() {
        let b = v2_protobuf();
        // field 1 (swagger), length 3, "2.0"
        assert_eq!(&b[..5], &[0x0a, 3, b'2', b'.', b'0']);
        // field 2 (info), then field 8 (paths) empty as the last two bytes
        assert_eq!(b[5], 0x12);
        assert_eq!(&b[b.len() - 2..], &[0x42, 0]);
        let info_len = b[6] as usize;
        assert_eq!(7 + info_len + 2, b.len());
    }

    #[test]
    fn operation_ids_follow_kube_apiserver_naming() {
        assert_eq!(op_prefix("", "v1"), "CoreV1");
        assert_eq!(op_prefix("apps", "v1"), "AppsV1");
        assert_eq!(op_prefix("discovery.k8s.io", "v1"), "DiscoveryV1");
        assert_eq!(op_prefix("metallb.io", "v1beta1"), "MetallbIoV1beta1");
        let core = v3_document("api/v1").expect("core");
        assert_eq!(
            core["paths"]["/api/v1/namespaces/{namespace}/services/{name}/status"]["patch"]
                ["operationId"],
            "patchCoreV1NamespacedServiceStatus"
        );
        assert_eq!(
            core["paths"]["/api/v1/services"]["get"]["operationId"],
            "listCoreV1ServiceForAllNamespaces"
        );
    }
}
