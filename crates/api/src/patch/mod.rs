//! The patch formats Switchyard's API server accepts and the field ownership bookkeeping that
//! comes with them, behaving as kube-apiserver's so that kubectl and client libraries see the
//! same results:
//!
//! * [`json_patch`] — `application/json-patch+json` (RFC 6902);
//! * [`merge_patch`] — `application/merge-patch+json` (RFC 7386);
//! * [`strategic_merge_patch`] — `application/strategic-merge-patch+json`, merge patch plus the
//!   list strategies and `$`-directives of Kubernetes' types;
//! * [`apply`] — `application/apply-patch+yaml` (server-side apply), with conflicts between field
//!   managers;
//! * [`update_managed_fields`] — the `metadata.managedFields` entry every other write records.
//!
//! Objects are plain `serde_json::Value`s; the schema facts the strategic formats need (merge
//! keys, atomic maps) live in a small table per kind. Errors carry the HTTP status kube-apiserver
//! answers with ([`PatchError::code`], [`PatchError::to_status_error`]).

mod apply;
mod fieldpath;
mod json;
mod managed_fields;
mod merge;
mod schema;
mod strategic;
mod typed;

use serde_json::json;

use crate::status::StatusError;

pub use apply::{apply, apply_subresource, LAST_APPLIED_ANNOTATION};
pub use json::{json_patch, MAX_JSON_PATCH_OPERATIONS};
pub use managed_fields::{fields_v1_of, update_managed_fields, update_managed_fields_subresource};
pub use merge::{check_merge_patch, merge_patch};
pub use strategic::strategic_merge_patch;

/// One field an apply would take from another manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldConflict {
    /// The owning manager as kube-apiserver prints it: `"kubectl"` for an applier,
    /// `"kube-controller-manager" using apps/v1` for an updater.
    pub manager: String,
    /// The field, as structured-merge-diff prints paths: `.spec.replicas`,
    /// `.spec.ports[port=80,protocol="TCP"].targetPort`.
    pub field: String,
}

/// Why a patch or apply could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed for its type: a JSON patch that is not a list of operation
    /// objects, a merge or strategic patch that is not an object, an unknown or malformed `$`
    /// directive, a merged list item without its merge key, an apply body of the wrong kind or
    /// version or with `metadata.managedFields`. The message says what and where.
    ///
    /// HTTP 400 BadRequest. (kube-apiserver answers a few malformed strategic directives with 500;
    /// they are the client's fault, so Switchyard says 400.)
    #[error("{message}")]
    InvalidPatch { message: String },

    /// A JSON patch `test` operation found a different value. HTTP 422 Invalid, as every JSON
    /// patch operation that fails to apply.
    #[error("json patch operation {index}: testing value {path} failed: test failed")]
    TestFailed { index: usize, path: String },

    /// A JSON patch operation addresses a location that does not exist (`remove`, `replace`,
    /// `move`, `copy` or `test` of a missing member, `add` below a missing parent). HTTP 422.
    #[error("json patch operation {index}: {op} {path}: path not found")]
    PathNotFound {
        index: usize,
        op: String,
        path: String,
    },

    /// A patch is well-formed but cannot be applied: a JSON patch operation with a bad index,
    /// a missing member or an unknown `op`; a strategic patch with lists of lists or keys outside
    /// its `$retainKeys`. HTTP 422 Invalid.
    #[error("{message}")]
    Unprocessable { message: String },

    /// A JSON patch with more operations than kube-apiserver accepts. HTTP 413.
    #[error("The allowed maximum operations in a JSON patch is {limit}, got {count}")]
    TooManyOperations { count: usize, limit: usize },

    /// A server-side apply without `force` would change fields other managers own. HTTP 409
    /// Conflict, with one `FieldManagerConflict` cause per field.
    #[error("{}", conflict_message(conflicts))]
    Conflict { conflicts: Vec<FieldConflict> },
}

/// kube-apiserver's apply conflict message (`getConflictMessage`).
fn conflict_message(conflicts: &[FieldConflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager, c.field
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort_unstable();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        lines.extend(
            conflicts
                .iter()
                .filter(|c| c.manager == m)
                .map(|c| format!("- {}", c.field)),
        );
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

impl PatchError {
    /// The HTTP status code kube-apiserver answers with.
    pub fn code(&self) -> u16 {
        match self {
            PatchError::InvalidPatch { .. } => 400,
            PatchError::TestFailed { .. }
            | PatchError::PathNotFound { .. }
            | PatchError::Unprocessable { .. } => 422,
            PatchError::TooManyOperations { .. } => 413,
            PatchError::Conflict { .. } => 409,
        }
    }

    /// The `metav1.Status` error kube-apiserver sends. Failed JSON patch operations get its
    /// generic 422 message (`NewGenericServerResponse`), which kubectl prints as "The request is
    /// invalid: the server rejected our request due to an error in our request"; the precise
    /// reason is in this error's `Display` for logs.
    pub fn to_status_error(&self) -> StatusError {
        match self {
            PatchError::InvalidPatch { message } => StatusError::bad_request(message.clone()),
            PatchError::TestFailed { .. }
            | PatchError::PathNotFound { .. }
            | PatchError::Unprocessable { .. } => StatusError {
                code: 422,
                reason: "Invalid",
                message: "the server rejected our request due to an error in our request"
                    .to_string(),
                details: Some(json!({})),
            },
            PatchError::TooManyOperations { .. } => StatusError {
                code: 413,
                reason: "RequestEntityTooLarge",
                message: format!("Request entity too large: {self}"),
                details: None,
            },
            PatchError::Conflict { conflicts } => StatusError {
                code: 409,
                reason: "Conflict",
                message: self.to_string(),
                details: Some(json!({
                    "causes": conflicts
                        .iter()
                        .map(|c| json!({
                            "reason": "FieldManagerConflict",
                            "message": format!("conflict with {}", c.manager),
                            "field": c.field,
                        }))
                        .collect::<Vec<_>>(),
                })),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn failed_json_patch_operations_answer_with_kube_apiservers_generic_422() {
        let e = json_patch(
            &json!({"a": 1}),
            &json!([{"op": "test", "path": "/a", "value": 2}]),
        )
        .expect_err("test fails");
        assert_eq!(
            e.to_string(),
            "json patch operation 0: testing value /a failed: test failed"
        );
        let status = e.to_status_error().to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(
            status["message"],
            "the server rejected our request due to an error in our request"
        );
    }

    #[test]
    fn malformed_patches_are_bad_requests_with_their_message() {
        let e =
            strategic_merge_patch(&json!({}), &json!([1]), "Service").expect_err("not an object");
        let status = e.to_status_error().to_status();
        assert_eq!(status["code"], 400);
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(
            status["message"],
            "strategic merge patch must be a JSON object"
        );
    }

    #[test]
    fn too_many_json_patch_operations_are_refused_as_too_large() {
        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "", "value": {}}))
            .collect();
        let e = json_patch(&json!({}), &Value::Array(ops)).expect_err("too many");
        let status = e.to_status_error().to_status();
        assert_eq!(status["code"], 413);
        assert_eq!(
            status["message"],
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
    }

    #[test]
    fn a_status_apply_owns_status_under_the_status_subresource() {
        let live = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer"}
        });
        let applied = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "ClusterIP"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
        });
        let out = apply_subresource(
            Some(&live),
            &applied,
            "switchyard-lb",
            true,
            "Service",
            "2024-05-01T10:00:00Z",
            "status",
        )
        .expect("applied");
        let entry = out["metadata"]["managedFields"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["manager"] == "switchyard-lb"))
            .cloned()
            .expect("entry");
        assert_eq!(entry["subresource"], "status");
        assert_eq!(
            entry["fieldsV1"],
            json!({"f:status": {"f:loadBalancer": {"f:ingress": {}}}})
        );
    }
}
