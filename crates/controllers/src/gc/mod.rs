//! The pure core of the garbage collector (`pkg/controller/garbagecollector` in Kubernetes). An
//! object whose `ownerReferences` all name owners that no longer exist (no object of that kind,
//! namespace and uid) is deleted; one that still has an owner but also names vanished ones has
//! the dangling references removed; anything else is kept. Owners of kinds we do not track count
//! as present, so we never delete on a guess. Owners being deleted with the `orphan` or
//! `foregroundDeletion` finalizer are recognised by [`owner_finalizing`] (see
//! <https://kubernetes.io/docs/concepts/architecture/garbage-collection/#cascading-deletion>).
//!
//! Our caches are per kind and not ordered with each other, so an owner missing from its cache
//! may simply not have arrived yet: the caller must confirm absence with a live read (as
//! Kubernetes' `attemptToDeleteItem` does) before acting on [`decide`]'s answer.
//!
//! The loop that runs it over the informers and writes through the API is [`controller`].

pub mod controller;

use std::collections::HashSet;

use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The owner kinds we track, as `(API group, kind)`: Deployment→ReplicaSet, ReplicaSet→Pod,
/// Service→EndpointSlice, Endpoints→EndpointSlice (mirrored).
pub const TRACKED_OWNER_KINDS: [(&str, &str); 4] = [
    ("apps", "Deployment"),
    ("apps", "ReplicaSet"),
    ("", "Service"),
    ("", "Endpoints"),
];

/// `orphan`: the owner's dependents are to be kept, without their reference to it, before the
/// owner goes (`kubectl delete --cascade=orphan`).
pub const FINALIZER_ORPHAN: &str = "orphan";
/// `foregroundDeletion`: the owner's dependents are to be deleted before the owner goes
/// (`kubectl delete --cascade=foreground`).
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// What an owner being deleted waits for from the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerFinalizing {
    /// Nothing (not being deleted, or no collector finalizer).
    Nothing,
    /// Remove the owner's reference from its dependents, then the `orphan` finalizer.
    Orphan,
    /// Delete the dependents, then (once they are gone) the `foregroundDeletion` finalizer.
    Foreground,
}

/// What the collector owes an owner (`orphan` wins if both finalizers are set; the API forbids
/// setting both).
pub fn owner_finalizing(owner: &ObjectMeta) -> OwnerFinalizing {
    if owner.deletion_timestamp.is_none() {
        return OwnerFinalizing::Nothing;
    }
    let has = |f: &str| owner.finalizers.iter().flatten().any(|x| x == f);
    if has(FINALIZER_ORPHAN) {
        OwnerFinalizing::Orphan
    } else if has(FINALIZER_FOREGROUND) {
        OwnerFinalizing::Foreground
    } else {
        OwnerFinalizing::Nothing
    }
}

/// The owner's finalizers without `finalizer`.
pub fn finalizers_without(owner: &ObjectMeta, finalizer: &str) -> Vec<String> {
    owner
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect()
}

/// Whether an owner exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// An object of the owner's kind, namespace and uid exists.
    Present,
    /// No such object: the reference dangles.
    Absent,
    /// A kind we do not track; treated as present.
    Unknown,
}

/// What to do with one dependent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcDecision {
    /// Owners remain (or the object has none, or is already being deleted).
    Keep,
    /// Every owner is gone: delete the object (background propagation).
    Delete,
    /// Some owners are gone but others remain: remove the references with these uids.
    RemoveDanglingOwners(Vec<String>),
}

/// The API group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn api_group(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map(|(group, _)| group)
        .unwrap_or("")
}

/// The owners that exist, by kind, namespace and uid.
#[derive(Clone, Debug, Default)]
pub struct OwnerSet {
    present: HashSet<(String, String, String, String)>,
}

impl OwnerSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an existing owner of kind `(group, kind)`.
    pub fn insert(&mut self, group: &str, kind: &str, meta: &ObjectMeta) {
        let (Some(uid), namespace) = (meta.uid.clone(), meta.namespace.clone().unwrap_or_default())
        else {
            return;
        };
        self.present
            .insert((group.to_string(), kind.to_string(), namespace, uid));
    }

    /// Whether the owner named by `reference` exists. Owner references of a namespaced object
    /// name owners in its own namespace.
    pub fn state(&self, namespace: &str, reference: &OwnerReference) -> OwnerState {
        let group = api_group(&reference.api_version);
        if !TRACKED_OWNER_KINDS.contains(&(group, reference.kind.as_str())) {
            return OwnerState::Unknown;
        }
        let key = (
            group.to_string(),
            reference.kind.clone(),
            namespace.to_string(),
            reference.uid.clone(),
        );
        if self.present.contains(&key) {
            OwnerState::Present
        } else {
            OwnerState::Absent
        }
    }
}

/// What to do with `dependent`, given each owner's state (`classifyReferences` and
/// `attemptToDeleteItem` with background propagation): no solid owner left → delete; some
/// dangling next to solid ones → remove the dangling; otherwise keep. Objects already being
/// deleted and objects without owners are kept.
pub fn decide(
    dependent: &ObjectMeta,
    owner_state: impl Fn(&OwnerReference) -> OwnerState,
) -> GcDecision {
    let refs = dependent.owner_references.as_deref().unwrap_or_default();
    if refs.is_empty() || dependent.deletion_timestamp.is_some() {
        return GcDecision::Keep;
    }
    let mut dangling = Vec::new();
    let mut solid = 0;
    for r in refs {
        match owner_state(r) {
            OwnerState::Absent => dangling.push(r.uid.clone()),
            OwnerState::Present | OwnerState::Unknown => solid += 1,
        }
    }
    match (solid, dangling.is_empty()) {
        (0, _) => GcDecision::Delete,
        (_, true) => GcDecision::Keep,
        (_, false) => GcDecision::RemoveDanglingOwners(dangling),
    }
}

/// [`decide`] against an [`OwnerSet`].
pub fn decide_with(dependent: &ObjectMeta, owners: &OwnerSet) -> GcDecision {
    let namespace = dependent.namespace.as_deref().unwrap_or_default();
    decide(dependent, |r| owners.state(namespace, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(v).expect("valid ObjectMeta")
    }

    fn owner_ref(api_version: &str, kind: &str, uid: &str) -> serde_json::Value {
        json!({"apiVersion": api_version, "kind": kind, "name": format!("n-{uid}"), "uid": uid})
    }

    fn owners() -> OwnerSet {
        let mut set = OwnerSet::new();
        set.insert(
            "apps",
            "Deployment",
            &meta(json!({"name": "web", "namespace": "default", "uid": "deploy"})),
        );
        set.insert(
            "",
            "Service",
            &meta(json!({"name": "web", "namespace": "default", "uid": "svc"})),
        );
        set.insert(
            "",
            "Endpoints",
            &meta(json!({"name": "web", "namespace": "default", "uid": "eps"})),
        );
        set
    }

    #[test]
    fn dependents_are_deleted_only_when_no_owner_remains() {
        let rs = |o: serde_json::Value| {
            owner_ref("apps/v1", "ReplicaSet", o.as_str().unwrap_or_default())
        };
        // (owner references, namespace, expected decision)
        let cases = [
            (json!([]), "default", GcDecision::Keep),
            (
                json!([owner_ref("apps/v1", "Deployment", "deploy")]),
                "default",
                GcDecision::Keep,
            ),
            (
                json!([owner_ref("apps/v1", "Deployment", "gone")]),
                "default",
                GcDecision::Delete,
            ),
            (json!([rs(json!("gone-rs"))]), "default", GcDecision::Delete),
            // Same uid, other namespace: not this dependent's owner.
            (
                json!([owner_ref("apps/v1", "Deployment", "deploy")]),
                "other",
                GcDecision::Delete,
            ),
            // A uid that exists, but for another kind.
            (
                json!([owner_ref("apps/v1", "ReplicaSet", "deploy")]),
                "default",
                GcDecision::Delete,
            ),
            (
                json!([owner_ref("v1", "Service", "svc")]),
                "default",
                GcDecision::Keep,
            ),
            (
                json!([owner_ref("v1", "Service", "old-svc")]),
                "default",
                GcDecision::Delete,
            ),
            (
                json!([owner_ref("v1", "Endpoints", "eps")]),
                "default",
                GcDecision::Keep,
            ),
            // Several owners: deleted only when none exists; dangling ones are removed.
            (
                json!([
                    owner_ref("v1", "Service", "svc"),
                    owner_ref("v1", "Endpoints", "gone")
                ]),
                "default",
                GcDecision::RemoveDanglingOwners(vec!["gone".to_string()]),
            ),
            (
                json!([
                    owner_ref("v1", "Service", "gone-1"),
                    owner_ref("v1", "Endpoints", "gone-2")
                ]),
                "default",
                GcDecision::Delete,
            ),
            // Kinds we do not track count as present.
            (
                json!([owner_ref("batch/v1", "Job", "job")]),
                "default",
                GcDecision::Keep,
            ),
            (
                json!([
                    owner_ref("batch/v1", "Job", "job"),
                    owner_ref("v1", "Service", "gone")
                ]),
                "default",
                GcDecision::RemoveDanglingOwners(vec!["gone".to_string()]),
            ),
        ];
        let set = owners();
        for (refs, namespace, want) in cases {
            let dependent =
                meta(json!({"name": "d", "namespace": namespace, "ownerReferences": refs}));
            assert_eq!(decide_with(&dependent, &set), want, "{refs} in {namespace}");
        }
    }

    #[test]
    fn dependents_already_being_deleted_are_left_alone() {
        let dependent = meta(json!({"name": "d", "namespace": "default",
            "deletionTimestamp": "2026-11-22T00:00:00Z",
            "ownerReferences": [owner_ref("apps/v1", "Deployment", "gone")]}));
        assert_eq!(decide_with(&dependent, &owners()), GcDecision::Keep);
    }

    #[test]
    fn owners_being_deleted_with_collector_finalizers_are_recognised() {
        let cases = [
            (json!({"name": "d"}), OwnerFinalizing::Nothing),
            (
                json!({"name": "d", "finalizers": ["orphan"]}),
                OwnerFinalizing::Nothing,
            ),
            (
                json!({"name": "d", "deletionTimestamp": "2026-11-22T00:00:00Z"}),
                OwnerFinalizing::Nothing,
            ),
            (
                json!({"name": "d", "deletionTimestamp": "2026-11-22T00:00:00Z",
                       "finalizers": ["example.com/x", "orphan"]}),
                OwnerFinalizing::Orphan,
            ),
            (
                json!({"name": "d", "deletionTimestamp": "2026-11-22T00:00:00Z",
                       "finalizers": ["foregroundDeletion"]}),
                OwnerFinalizing::Foreground,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(owner_finalizing(&meta(m.clone())), want, "{m}");
        }
        let m = meta(json!({"name": "d", "finalizers": ["example.com/x", "orphan"]}));
        assert_eq!(
            finalizers_without(&m, FINALIZER_ORPHAN),
            vec!["example.com/x".to_string()]
        );
    }

    #[test]
    fn api_groups_are_read_from_api_versions() {
        assert_eq!(api_group("apps/v1"), "apps");
        assert_eq!(api_group("v1"), "");
        assert_eq!(api_group("discovery.k8s.io/v1"), "discovery.k8s.io");
    }
}
