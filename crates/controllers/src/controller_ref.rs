//! Controller references: which owner controls an object, and the adopt/release decisions a
//! controller makes over the objects its selector matches (Kubernetes'
//! `pkg/controller/controller_ref_manager.go`). A controller manages exactly the objects whose
//! `ownerReferences` entry with `controller: true` names its uid; matching orphans are adopted,
//! owned objects that stop matching are released, objects controlled by someone else are never
//! touched. Pure: the caller turns the decisions into patches.

use std::collections::BTreeMap;

use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use switchyard_api::selector::LabelSelector;

/// The `ownerReferences` entry a controller writes on what it creates or adopts: `controller`
/// and `blockOwnerDeletion` both true, as `metav1.NewControllerRef` does.
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The owner reference marked `controller: true`, if any (`metav1.GetControllerOf`).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the owner with this uid.
pub fn is_controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == owner_uid)
}

/// What a controller decides about the objects of its namespace: the ones it manages now
/// (already owned and still matching, plus the adopted), the orphans to adopt and the owned
/// objects to release. Names index into the candidates given to [`claim`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// Indexes of the candidates the controller manages after the adoptions succeed.
    pub claimed: Vec<usize>,
    /// Names of matching orphans: add the controller reference.
    pub adopt: Vec<String>,
    /// Names of owned objects that no longer match: remove the controller reference.
    pub release: Vec<String>,
}

/// Sorts candidates into claimed, adopted and released, as `ClaimObject` does:
/// - owned (controller reference with `owner_uid`): kept while the selector matches, released
///   when it does not (unless the owner is being deleted — then it is left alone);
/// - orphans (no controller reference) that match and are not being deleted are adopted, but
///   only while the owner itself is not being deleted;
/// - objects controlled by another owner are ignored.
///
/// An empty selector matches nothing here, as in Kubernetes: a controller with an empty
/// selector must not adopt the whole namespace.
pub fn claim<'a>(
    owner: &ObjectMeta,
    selector: &LabelSelector,
    candidates: impl IntoIterator<Item = &'a ObjectMeta>,
) -> Claim {
    let owner_uid = owner.uid.as_deref().unwrap_or_default();
    let owner_deleting = owner.deletion_timestamp.is_some();
    let empty = BTreeMap::new();
    let mut out = Claim::default();
    for (i, meta) in candidates.into_iter().enumerate() {
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let matches = !selector.is_everything() && selector.matches(labels);
        let name = meta.name.clone().unwrap_or_default();
        match controller_of(meta) {
            Some(r) if r.uid == owner_uid => {
                if matches || owner_deleting {
                    out.claimed.push(i);
                } else {
                    out.release.push(name);
                }
            }
            Some(_) => {}
            None => {
                if matches && !owner_deleting && meta.deletion_timestamp.is_none() {
                    out.claimed.push(i);
                    out.adopt.push(name);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(v).expect("valid ObjectMeta")
    }

    #[test]
    fn orphans_are_adopted_owned_kept_or_released_and_others_ignored() {
        let owner = meta(json!({"name": "rs", "uid": "u1"}));
        let sel = LabelSelector::parse("app=web").expect("valid");
        let ours = |name: &str, app: &str| {
            meta(json!({"name": name, "labels": {"app": app},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                     "uid": "u1", "controller": true}]}))
        };
        let candidates = [
            ours("kept", "web"),
            ours("released", "db"),
            meta(json!({"name": "orphan", "labels": {"app": "web"}})),
            meta(json!({"name": "orphan-db", "labels": {"app": "db"}})),
            meta(json!({"name": "orphan-dying", "labels": {"app": "web"},
                        "deletionTimestamp": "2026-11-22T00:00:00Z"})),
            meta(json!({"name": "theirs", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x",
                                     "uid": "u2", "controller": true}]})),
        ];
        let got = claim(&owner, &sel, &candidates);
        assert_eq!(got.claimed, vec![0, 2]);
        assert_eq!(got.adopt, vec!["orphan".to_string()]);
        assert_eq!(got.release, vec!["released".to_string()]);
    }

    #[test]
    fn an_owner_being_deleted_adopts_nothing_and_releases_nothing() {
        let owner = meta(json!({"name": "rs", "uid": "u1",
                                "deletionTimestamp": "2026-11-22T00:00:00Z"}));
        let sel = LabelSelector::parse("app=web").expect("valid");
        let candidates = [
            meta(json!({"name": "orphan", "labels": {"app": "web"}})),
            meta(json!({"name": "owned", "labels": {"app": "db"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                     "uid": "u1", "controller": true}]})),
        ];
        let got = claim(&owner, &sel, &candidates);
        assert_eq!(got.claimed, vec![1]);
        assert!(got.adopt.is_empty() && got.release.is_empty());
    }

    #[test]
    fn an_empty_selector_adopts_nothing() {
        let owner = meta(json!({"name": "rs", "uid": "u1"}));
        let candidates = [meta(json!({"name": "orphan", "labels": {"app": "web"}}))];
        let got = claim(&owner, &LabelSelector::everything(), &candidates);
        assert_eq!(got, Claim::default());
    }
}
