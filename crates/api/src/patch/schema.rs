//! The little schema that strategic merge patch and server-side apply need: for every kind
//! Switchyard serves, which lists merge by which key, which maps are atomic, and which objects are
//! structs rather than string-keyed maps. Kubernetes derives the same facts from its Go struct tags
//! (`patchStrategy:"merge" patchMergeKey:"name"`) and from the OpenAPI extensions generated from
//! the `+listType`, `+listMapKey`, `+mapType` and `+structType` markers in
//! `staging/src/k8s.io/api/*/types.go`; this module writes down the subset that our kinds use.
//!
//! A field that is not listed is treated as a plain struct field: objects under it merge key by
//! key, lists under it are replaced whole (strategic merge patch's default and server-side apply's
//! `atomic`), which is what Kubernetes does for every list that carries no marker.

use serde_json::{json, Value};

use crate::resources::{self, Subresource};

/// The shape of one field's value.
#[derive(Debug)]
pub(crate) enum Ty {
    /// A string, number, boolean or anything else owned and replaced as one value.
    Scalar,
    /// A Go struct: the keys are field names. Fields missing from the slice are unlisted structs
    /// ([`OPEN`]) whose own lists are atomic.
    Struct(&'static [Field]),
    /// An object owned and replaced as one value (`+structType=atomic`, `+mapType=atomic`), such
    /// as a label selector.
    Atomic,
    /// A `map[string]T`: the keys are data (label names, resource names), each tracked on its own.
    Map(&'static Ty),
    /// A list.
    List(ListTy),
}

/// A list and how its items are told apart.
#[derive(Debug)]
pub(crate) struct ListTy {
    pub elem: &'static Ty,
    pub kind: ListKind,
}

/// `x-kubernetes-list-type` of a list.
#[derive(Debug)]
pub(crate) enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars (`finalizers`).
    Set,
    /// A map of objects keyed by these fields (`+listMapKey`).
    Map(&'static [Key]),
}

/// One key field of an associative list, with the default the API applies when it is omitted
/// (service and container ports default `protocol` to `TCP`, and structured-merge-diff uses that
/// default to key an item whose applied configuration leaves it out).
#[derive(Debug)]
pub(crate) struct Key {
    pub name: &'static str,
    pub default: Option<&'static str>,
}

/// How strategic merge patch treats a field (its `patchStrategy` tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// No tag: objects merge recursively, lists are replaced.
    Default,
    /// `patchStrategy:"merge"` on a list of scalars: the lists are merged as sets.
    MergeSet,
    /// `patchStrategy:"merge" patchMergeKey:"..."`: items with equal keys are merged.
    MergeKey(&'static str),
}

/// One named field of a struct.
#[derive(Debug)]
pub(crate) struct Field {
    pub name: &'static str,
    pub ty: &'static Ty,
    pub strategy: Strategy,
}

impl Ty {
    /// The type of the value under `key` and its strategic-merge-patch strategy.
    pub fn child(&self, key: &str) -> (&'static Ty, Strategy) {
        match self {
            Ty::Struct(fields) => fields
                .iter()
                .find(|f| f.name == key)
                .map_or((&OPEN, Strategy::Default), |f| (f.ty, f.strategy)),
            Ty::Map(elem) => (elem, Strategy::Default),
            _ => (&OPEN, Strategy::Default),
        }
    }

    /// Whether the keys of this object are field names (struct) rather than data (map). Structured
    /// merge diff owns a struct field only through its leaves, but owns every map entry itself.
    pub fn is_struct(&self) -> bool {
        matches!(self, Ty::Struct(_))
    }
}

const fn field(name: &'static str, ty: &'static Ty) -> Field {
    Field {
        name,
        ty,
        strategy: Strategy::Default,
    }
}

const fn merge_by(name: &'static str, ty: &'static Ty, key: &'static str) -> Field {
    Field {
        name,
        ty,
        strategy: Strategy::MergeKey(key),
    }
}

const fn merge_set(name: &'static str, ty: &'static Ty) -> Field {
    Field {
        name,
        ty,
        strategy: Strategy::MergeSet,
    }
}

const fn key(name: &'static str) -> Key {
    Key {
        name,
        default: None,
    }
}

pub(crate) static SCALAR: Ty = Ty::Scalar;
pub(crate) static ATOMIC: Ty = Ty::Atomic;
/// An unlisted struct: every key is a field of type `OPEN`, every list under it is atomic.
pub(crate) static OPEN: Ty = Ty::Struct(&[]);
static STRING_MAP: Ty = Ty::Map(&SCALAR);
static STRING_SET: Ty = Ty::List(ListTy {
    elem: &SCALAR,
    kind: ListKind::Set,
});
static ATOMIC_LIST: Ty = Ty::List(ListTy {
    elem: &OPEN,
    kind: ListKind::Atomic,
});

static BY_NAME: &[Key] = &[key("name")];
static BY_TYPE: &[Key] = &[key("type")];
static BY_IP: &[Key] = &[key("ip")];
static NAMED_LIST: Ty = Ty::List(ListTy {
    elem: &OPEN,
    kind: ListKind::Map(BY_NAME),
});
static TYPED_LIST: Ty = Ty::List(ListTy {
    elem: &OPEN,
    kind: ListKind::Map(BY_TYPE),
});
static IP_LIST: Ty = Ty::List(ListTy {
    elem: &OPEN,
    kind: ListKind::Map(BY_IP),
});

// metav1.ObjectMeta: finalizers is `+listType=set` with patchStrategy merge, ownerReferences is
// keyed by uid, managedFields is atomic.
static OBJECT_META: Ty = Ty::Struct(&[
    field("labels", &STRING_MAP),
    field("annotations", &STRING_MAP),
    merge_set("finalizers", &STRING_SET),
    merge_by(
        "ownerReferences",
        &Ty::List(ListTy {
            elem: &OPEN,
            kind: ListKind::Map(&[key("uid")]),
        }),
        "uid",
    ),
    field("managedFields", &ATOMIC_LIST),
]);

// core/v1 Container (and EphemeralContainer, whose list fields are the same). Container ports are
// `+listMapKey=containerPort +listMapKey=protocol` for apply but merge by containerPort alone in
// strategic merge patch.
static CONTAINER: Ty = Ty::Struct(&[
    merge_by(
        "ports",
        &Ty::List(ListTy {
            elem: &OPEN,
            kind: ListKind::Map(&[
                key("containerPort"),
                Key {
                    name: "protocol",
                    default: Some("TCP"),
                },
            ]),
        }),
        "containerPort",
    ),
    merge_by("env", &NAMED_LIST, "name"),
    merge_by(
        "volumeMounts",
        &Ty::List(ListTy {
            elem: &OPEN,
            kind: ListKind::Map(&[key("mountPath")]),
        }),
        "mountPath",
    ),
    merge_by(
        "volumeDevices",
        &Ty::List(ListTy {
            elem: &OPEN,
            kind: ListKind::Map(&[key("devicePath")]),
        }),
        "devicePath",
    ),
    field(
        "resources",
        &Ty::Struct(&[
            field("limits", &STRING_MAP),
            field("requests", &STRING_MAP),
            field("claims", &NAMED_LIST),
        ]),
    ),
]);
static CONTAINERS: Ty = Ty::List(ListTy {
    elem: &CONTAINER,
    kind: ListKind::Map(BY_NAME),
});

// core/v1 PodSpec. tolerations, readinessGates and the affinity term lists carry no strategy and
// stay atomic; nodeSelector is `+mapType=atomic` (strategic merge patch still merges it key by key,
// it ignores map types).
static POD_SPEC: Ty = Ty::Struct(&[
    merge_by("volumes", &NAMED_LIST, "name"),
    merge_by("initContainers", &CONTAINERS, "name"),
    merge_by("containers", &CONTAINERS, "name"),
    merge_by("ephemeralContainers", &CONTAINERS, "name"),
    merge_by("imagePullSecrets", &NAMED_LIST, "name"),
    merge_by("hostAliases", &IP_LIST, "ip"),
    merge_by(
        "topologySpreadConstraints",
        &Ty::List(ListTy {
            elem: &OPEN,
            kind: ListKind::Map(&[key("topologyKey"), key("whenUnsatisfiable")]),
        }),
        "topologyKey",
    ),
    merge_by("schedulingGates", &NAMED_LIST, "name"),
    merge_by("resourceClaims", &NAMED_LIST, "name"),
    field("nodeSelector", &ATOMIC),
    field("overhead", &STRING_MAP),
    field(
        "affinity",
        &Ty::Struct(&[field(
            "nodeAffinity",
            &Ty::Struct(&[field(
                "requiredDuringSchedulingIgnoredDuringExecution",
                &ATOMIC,
            )]),
        )]),
    ),
]);

static POD_STATUS: Ty = Ty::Struct(&[
    merge_by("conditions", &TYPED_LIST, "type"),
    merge_by("podIPs", &IP_LIST, "ip"),
    merge_by("hostIPs", &IP_LIST, "ip"),
    merge_by("resourceClaimStatuses", &NAMED_LIST, "name"),
]);

static POD_TEMPLATE_SPEC: Ty =
    Ty::Struct(&[field("metadata", &OBJECT_META), field("spec", &POD_SPEC)]);

// apps/v1 DeploymentSpec and ReplicaSetSpec: the selector is a LabelSelector, `+structType=atomic`.
static WORKLOAD_SPEC: Ty = Ty::Struct(&[
    field("selector", &ATOMIC),
    field("template", &POD_TEMPLATE_SPEC),
]);
static CONDITIONS_STATUS: Ty = Ty::Struct(&[merge_by("conditions", &TYPED_LIST, "type")]);

// core/v1 ServiceSpec: ports are `+listMapKey=port +listMapKey=protocol` for apply but merge by port
// in strategic merge patch; the selector is `+mapType=atomic`.
static SERVICE_SPEC: Ty = Ty::Struct(&[
    merge_by(
        "ports",
        &Ty::List(ListTy {
            elem: &OPEN,
            kind: ListKind::Map(&[
                key("port"),
                Key {
                    name: "protocol",
                    default: Some("TCP"),
                },
            ]),
        }),
        "port",
    ),
    field("selector", &ATOMIC),
]);

// core/v1 NodeSpec and NodeStatus: podCIDRs is a merged set, taints are atomic, addresses and
// conditions merge by type.
static NODE_SPEC: Ty = Ty::Struct(&[merge_set("podCIDRs", &STRING_SET)]);
static NODE_STATUS: Ty = Ty::Struct(&[
    merge_by("addresses", &TYPED_LIST, "type"),
    merge_by("conditions", &TYPED_LIST, "type"),
    field("capacity", &STRING_MAP),
    field("allocatable", &STRING_MAP),
]);

static SERVICE: Ty = Ty::Struct(&[
    field("metadata", &OBJECT_META),
    field("spec", &SERVICE_SPEC),
    field("status", &CONDITIONS_STATUS),
]);
static POD: Ty = Ty::Struct(&[
    field("metadata", &OBJECT_META),
    field("spec", &POD_SPEC),
    field("status", &POD_STATUS),
]);
static WORKLOAD: Ty = Ty::Struct(&[
    field("metadata", &OBJECT_META),
    field("spec", &WORKLOAD_SPEC),
    field("status", &CONDITIONS_STATUS),
]);
static NODE: Ty = Ty::Struct(&[
    field("metadata", &OBJECT_META),
    field("spec", &NODE_SPEC),
    field("status", &NODE_STATUS),
]);
static NAMESPACE: Ty = Ty::Struct(&[
    field("metadata", &OBJECT_META),
    field("status", &CONDITIONS_STATUS),
]);
static CONFIG_MAP: Ty = Ty::Struct(&[
    field("metadata", &OBJECT_META),
    field("data", &STRING_MAP),
    field("binaryData", &STRING_MAP),
]);
/// Endpoints, EndpointSlice, Event, Lease: every list in them is atomic, so only the metadata
/// needs describing. Also the schema of kinds Switchyard has no table for (metallb resources).
static METADATA_ONLY: Ty = Ty::Struct(&[field("metadata", &OBJECT_META)]);

/// The schema of a kind with strategy information, `None` for kinds without it (custom resources
/// such as metallb's), for which strategic merge patch degrades to JSON merge patch.
pub(crate) fn known(kind: &str) -> Option<&'static Ty> {
    Some(match kind {
        "Service" => &SERVICE,
        "Pod" => &POD,
        "Deployment" | "ReplicaSet" => &WORKLOAD,
        "Node" => &NODE,
        "Namespace" => &NAMESPACE,
        "ConfigMap" => &CONFIG_MAP,
        "Endpoints" | "EndpointSlice" | "Event" | "Lease" => &METADATA_ONLY,
        _ => return None,
    })
}

/// The schema server-side apply uses for a kind: its table, or metadata-only for the rest (the
/// API server's OpenAPI models know ObjectMeta for custom resources too).
pub(crate) fn of(kind: &str) -> &'static Ty {
    known(kind).unwrap_or(&METADATA_ONLY)
}

/// The empty object of a kind as Kubernetes' Go types serialize it (`runtime.New(kind)` converted
/// to unstructured): non-pointer structs are present as `{}`, slices without `omitempty` as
/// `null`. The field manager compares a create against this object, so what it holds decides
/// which nodes count as "added" and get a `.` entry in `managedFields`. Only container nodes are
/// listed; scalars do not affect ownership shapes. Custom resources start from nothing at all.
pub(crate) fn zero_object(kind: &str) -> Value {
    let meta = json!({"creationTimestamp": null});
    let template = json!({"metadata": {"creationTimestamp": null}, "spec": {"containers": null}});
    match kind {
        "Service" => json!({"metadata": meta, "spec": {}, "status": {"loadBalancer": {}}}),
        "Pod" => json!({"metadata": meta, "spec": {"containers": null}, "status": {}}),
        "Deployment" => json!({
            "metadata": meta,
            "spec": {"selector": null, "template": template, "strategy": {}},
            "status": {},
        }),
        "ReplicaSet" => {
            json!({"metadata": meta, "spec": {"selector": null, "template": template}, "status": {}})
        }
        "Node" => json!({
            "metadata": meta,
            "spec": {},
            "status": {"daemonEndpoints": {"kubeletEndpoint": {}}, "nodeInfo": {}},
        }),
        "Namespace" => json!({"metadata": meta, "spec": {}, "status": {}}),
        "EndpointSlice" => json!({"metadata": meta, "endpoints": null}),
        "Event" => json!({
            "metadata": meta,
            "involvedObject": {},
            "source": {},
            "firstTimestamp": null,
            "lastTimestamp": null,
            "eventTime": null,
        }),
        "Lease" => json!({"metadata": meta, "spec": {}}),
        "Endpoints" | "ConfigMap" => json!({"metadata": meta}),
        _ => json!({}),
    }
}

/// The top-level paths whose changes a write through `subresource` does not own, as the
/// registries' `GetResetFields` declare them: a main-resource write of a kind with a status
/// subresource resets `.status`; a status write resets `.spec` (and, for pods, the deletion
/// timestamp and owner references; for deployments and replica sets, the labels).
pub(crate) fn reset_paths(kind: &str, subresource: Option<&str>) -> Vec<Vec<&'static str>> {
    let has_status = resources::RESOURCES
        .iter()
        .any(|r| r.kind == kind && r.has_subresource(Subresource::Status));
    match subresource {
        None if has_status => vec![vec!["status"]],
        None => Vec::new(),
        Some("status") => {
            let mut paths = vec![vec!["spec"]];
            match kind {
                "Pod" => {
                    paths.push(vec!["metadata", "deletionTimestamp"]);
                    paths.push(vec!["metadata", "ownerReferences"]);
                }
                "Deployment" | "ReplicaSet" => paths.push(vec!["metadata", "labels"]),
                _ => {}
            }
            paths
        }
        Some(_) => Vec::new(),
    }
}

/// The `apiVersion` Switchyard serves a kind at, if it serves it.
pub(crate) fn api_version_of(kind: &str) -> Option<String> {
    resources::RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .map(|r| r.api_version())
}
