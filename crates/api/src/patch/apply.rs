//! Server-side apply (`application/apply-patch+yaml`, `kubectl apply --server-side`): the
//! applied configuration states the fields its manager wants to own and their values. It is
//! merged into the live object; fields the manager applied before and leaves out now are removed
//! unless someone else owns them; and changing a field another manager owns is a conflict unless
//! the apply is forced, in which case the field changes hands.
//!
//! The algorithm is structured-merge-diff's `Updater.Apply` (merge, `prune`, then `update` for
//! conflicts) wrapped the way kube-apiserver's field manager wraps it: identity fields are never
//! owned, reset fields (`.status` through the main resource) are ignored, and kubectl's upgrade
//! from client-side apply is honoured (`lastAppliedManager`, `lastAppliedUpdater`): when the
//! manager is `kubectl` and the object carries a `kubectl.kubernetes.io/last-applied-configuration`
//! annotation, conflicts on fields that annotation already set to their live values are not
//! conflicts, and the annotation is kept in step with what is applied.

use serde_json::{Map, Value};

use super::fieldpath::FieldSet;
use super::managed_fields::{self, Managed, ManagerId, Operation};
use super::schema::{self, Ty};
use super::typed;
use super::PatchError;

/// The annotation `kubectl apply` (client-side) keeps the last applied configuration in.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Applies `applied` (the decoded apply patch body) for `manager` to `live` (`None` when the
/// object does not exist yet: apply creates it) and returns the new object with its
/// `metadata.managedFields` updated; `now` (RFC 3339) stamps the applier's entry. The caller
/// then defaults, validates and stores the result as for any write.
///
/// Errors: [`PatchError::InvalidPatch`] (400) for a body that is not an object of the endpoint's
/// kind and version or that sets `metadata.managedFields`; [`PatchError::Conflict`] (409) when,
/// without `force`, the configuration changes fields other managers own.
pub fn apply(live: Option<&Value>, applied: &Value, manager: &str, force: bool, kind: &str, now: &str) -> Result<Value, PatchError> {
    apply_inner(live, applied, manager, force, kind, now, None)
}

/// [`apply`] through a subresource (`status`): the applier's entry records the subresource and
/// the fields the subresource cannot change (`.spec` for `status`) are not owned.
pub fn apply_subresource(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    kind: &str,
    now: &str,
    subresource: &str,
) -> Result<Value, PatchError> {
    apply_inner(live, applied, manager, force, kind, now, Some(subresource).filter(|s| !s.is_empty()))
}

fn bad(message: impl Into<String>) -> PatchError {
    PatchError::InvalidPatch { message: message.into() }
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// `group/version, Kind=kind` as Go prints a GroupVersionKind (`/v1, Kind=Service` for core).
fn gvk(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}, Kind={kind}")
}

fn check_request(live: Option<&Value>, applied: &Value, kind: &str) -> Result<String, PatchError> {
    if !applied.is_object() {
        return Err(bad("error decoding YAML: apply patch must be an object"));
    }
    let expected = live
        .map(|l| str_at(l, "/apiVersion"))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or_else(|| schema::api_version_of(kind))
        .unwrap_or_else(|| str_at(applied, "/apiVersion").to_string());
    let version = str_at(applied, "/apiVersion");
    if version != expected {
        return Err(bad(format!(
            "Incorrect version specified in apply patch. Specified patch version: {version}, expected: {expected}"
        )));
    }
    if str_at(applied, "/kind") != kind {
        return Err(bad(format!("invalid object type: {}", gvk(version, str_at(applied, "/kind")))));
    }
    if applied.pointer("/metadata/managedFields").is_some_and(|v| !v.is_null()) {
        return Err(bad("metadata.managedFields must be nil"));
    }
    Ok(expected)
}

fn apply_inner(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    kind: &str,
    now: &str,
    subresource: Option<&str>,
) -> Result<Value, PatchError> {
    let api_version = check_request(live, applied, kind)?;
    let ty = schema::of(kind);
    let zero = schema::zero_object(kind);
    let reset = managed_fields::reset_set(kind, subresource);

    let mut config = applied.clone();
    typed::strip_nulls(&mut config);
    let config_set = typed::to_field_set(&config, ty)
        .map_err(|e| {
            let name = str_at(applied, "/metadata/name");
            let namespace = str_at(applied, "/metadata/namespace");
            bad(format!(
                "failed to create typed patch object ({}; {namespace}/{name}): {e}",
                gvk(&api_version, kind)
            ))
        })?
        .recursive_difference(&reset);

    // Unreadable managedFields on the live object are dropped rather than failing every apply.
    let mut managed = live.map(|l| Managed::decode(l).unwrap_or_default()).unwrap_or_default();
    let mut live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    managed_fields::remove_managed_fields(&mut live_obj);

    let id = ManagerId::new(manager, Operation::Apply, &api_version, subresource);
    let last_set = managed.get(&id).map(|e| e.set.clone()).filter(|s| !s.is_empty());
    let mut merged = typed::merge(Some(&live_obj), Some(&config), ty).unwrap_or_else(|| Value::Object(Map::new()));
    managed.set(&id, &api_version, config_set);

    if let Some(last) = last_set {
        let owned = typed::ensure_named_fields(&managed.all_owned(), ty);
        typed::prune(&mut merged, &typed::ensure_named_fields(&last, ty), Some(&owned), ty);
    }

    let before = match live {
        Some(_) => typed::with_zero_shape(&live_obj, &zero),
        None => zero.clone(),
    };
    let mut cmp = typed::compare(&before, &typed::with_zero_shape(&merged, &zero), ty);
    cmp.filter(&reset);
    let mut attempt = managed.clone();
    if let Err(conflicts) = attempt.take_changed_fields(Some(&id), &cmp, force) {
        let allowed = if manager == "kubectl" { allowed_by_last_applied(&live_obj, ty, &api_version, &zero) } else { None };
        let conflicting = conflict_set(&managed, &id, &cmp);
        match allowed {
            Some(allowed) if conflicting.difference(&allowed).is_empty() => {
                attempt = managed.clone();
                let _ = attempt.take_changed_fields(Some(&id), &cmp, true);
            }
            _ => return Err(PatchError::Conflict { conflicts }),
        }
    }
    let mut managed = attempt;

    // stripMetaManager: identity fields are never owned; an applier left with nothing is dropped.
    let stripped = managed.get(&id).map(|e| e.set.difference(&managed_fields::strip_set())).unwrap_or_default();
    if stripped.is_empty() {
        managed.remove(&id);
    } else {
        managed.set(&id, &api_version, stripped);
        managed.set_time(&id, now);
    }

    if manager == "kubectl" {
        sync_last_applied(&mut merged, applied);
    }
    managed.cap_update_managers();
    managed_fields::store(&mut merged, &managed);
    managed_fields::keep_timestamps_of_no_op(live, &mut merged);
    Ok(merged)
}

/// Every field that the comparison changes and another manager owns.
fn conflict_set(managed: &Managed, id: &ManagerId, cmp: &typed::Comparison) -> FieldSet {
    let changed = cmp.changed();
    let mut out = FieldSet::new();
    for e in managed.entries.iter().filter(|e| e.id != *id) {
        out.union_in_place(&e.set.intersection(&changed));
    }
    out
}

/// `lastAppliedManager.allowedConflictsFromLastApplied`: the fields the last-applied annotation
/// sets to the values the live object still has. kubectl owned them through client-side apply, so
/// taking them over with server-side apply is an upgrade, not a conflict.
fn allowed_by_last_applied(live: &Value, ty: &'static Ty, api_version: &str, zero: &Value) -> Option<FieldSet> {
    let text = live.pointer("/metadata/annotations")?.get(LAST_APPLIED_ANNOTATION)?.as_str()?;
    let mut last: Value = serde_json::from_str(text).ok()?;
    if !last.is_object() || str_at(&last, "/apiVersion") != api_version {
        return None;
    }
    typed::strip_nulls(&mut last);
    let set = typed::to_field_set(&last, ty).ok()?;
    let cmp = typed::compare(&last, &typed::with_zero_shape(live, zero), ty);
    Some(set.difference(&cmp.modified).difference(&cmp.added).difference(&cmp.removed))
}

/// `lastAppliedUpdater`: when `kubectl` applies server-side to an object that has the
/// client-side annotation, the annotation becomes the applied configuration (without the
/// annotation itself), so that a later client-side apply computes its patch from it.
fn sync_last_applied(obj: &mut Value, applied: &Value) {
    let has = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    if !has {
        return;
    }
    let mut config = applied.clone();
    if let Some(annotations) = config.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        annotations.shift_remove(LAST_APPLIED_ANNOTATION);
    }
    let text = go_json(&config) + "\n";
    if let Some(annotations) = obj.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        annotations.insert(LAST_APPLIED_ANNOTATION.to_string(), Value::String(text));
    }
}

/// JSON as Go's encoder writes a decoded object: keys sorted, `<`, `>` and `&` escaped.
fn go_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k.as_str()]))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // These characters only occur inside JSON strings, so replacing them in the text is safe.
    sorted(v)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}
