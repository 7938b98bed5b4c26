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

/// The manager that owns what an object held before its first server-side apply.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

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
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    kind: &str,
    now: &str,
) -> Result<Value, PatchError> {
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
    apply_inner(
        live,
        applied,
        manager,
        force,
        kind,
        now,
        Some(subresource).filter(|s| !s.is_empty()),
    )
}

fn bad(message: impl Into<String>) -> PatchError {
    PatchError::InvalidPatch {
        message: message.into(),
    }
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
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
        return Err(bad(format!(
            "invalid object type: {}",
            gvk(version, str_at(applied, "/kind"))
        )));
    }
    if applied
        .pointer("/metadata/managedFields")
        .is_some_and(|v| !v.is_null())
    {
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
    let mut managed = live
        .map(|l| Managed::decode(l).unwrap_or_default())
        .unwrap_or_default();
    let mut live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    managed_fields::remove_managed_fields(&mut live_obj);

    // skipNonAppliedManager: the first apply to an object nobody owns anything of credits its
    // existing fields to "before-first-apply", so that changing them is a conflict.
    if let Some(live) = live.filter(|_| managed.entries.is_empty()) {
        let before = ManagerId::new(BEFORE_FIRST_APPLY, Operation::Update, &api_version, None);
        managed.record_update(None, live, kind, &before, now);
    }

    let id = ManagerId::new(manager, Operation::Apply, &api_version, subresource);
    let last_set = managed
        .get(&id)
        .map(|e| e.set.clone())
        .filter(|s| !s.is_empty());
    let mut merged = typed::merge(Some(&live_obj), Some(&config), ty)
        .unwrap_or_else(|| Value::Object(Map::new()));
    managed.set(&id, &api_version, config_set);

    if let Some(last) = last_set {
        let owned = typed::ensure_named_fields(&managed.all_owned(), ty);
        typed::prune(
            &mut merged,
            &typed::ensure_named_fields(&last, ty),
            Some(&owned),
            ty,
        );
    }

    let before = match live {
        Some(_) => typed::with_zero_shape(&live_obj, &zero),
        None => zero.clone(),
    };
    let mut cmp = typed::compare(&before, &typed::with_zero_shape(&merged, &zero), ty);
    cmp.filter(&reset);
    let mut attempt = managed.clone();
    if let Err(conflicts) = attempt.take_changed_fields(Some(&id), &cmp, force) {
        let allowed = if manager == "kubectl" {
            allowed_by_last_applied(&live_obj, ty, &api_version, &zero)
        } else {
            None
        };
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
    let stripped = managed
        .get(&id)
        .map(|e| e.set.difference(&managed_fields::strip_set()))
        .unwrap_or_default();
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
fn allowed_by_last_applied(
    live: &Value,
    ty: &'static Ty,
    api_version: &str,
    zero: &Value,
) -> Option<FieldSet> {
    let text = live
        .pointer("/metadata/annotations")?
        .get(LAST_APPLIED_ANNOTATION)?
        .as_str()?;
    let mut last: Value = serde_json::from_str(text).ok()?;
    if !last.is_object() || str_at(&last, "/apiVersion") != api_version {
        return None;
    }
    typed::strip_nulls(&mut last);
    let set = typed::to_field_set(&last, ty).ok()?;
    let cmp = typed::compare(&last, &typed::with_zero_shape(live, zero), ty);
    Some(
        set.difference(&cmp.modified)
            .difference(&cmp.added)
            .difference(&cmp.removed),
    )
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
    if let Some(annotations) = config
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.shift_remove(LAST_APPLIED_ANNOTATION);
    }
    let text = go_json(&config) + "\n";
    if let Some(annotations) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
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
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k.as_str()])))
                        .collect(),
                )
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

#[cfg(test)]
mod tests {
    use super::super::{update_managed_fields, FieldConflict};
    use super::*;
    use serde_json::json;

    const T1: &str = "2024-05-01T10:00:00Z";
    const T2: &str = "2024-05-01T11:00:00Z";
    const T3: &str = "2024-05-01T12:00:00Z";

    fn entries(obj: &Value) -> Vec<Value> {
        obj["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn entry<'a>(list: &'a [Value], manager: &str, operation: &str) -> &'a Value {
        list.iter()
            .find(|e| e["manager"] == manager && e["operation"] == operation)
            .unwrap_or_else(|| panic!("no {operation} entry for {manager}: {list:?}"))
    }

    fn ok(
        live: Option<&Value>,
        applied: &Value,
        manager: &str,
        force: bool,
        kind: &str,
        now: &str,
    ) -> Value {
        match apply(live, applied, manager, force, kind, now) {
            Ok(v) => v,
            Err(e) => panic!("apply failed: {e}"),
        }
    }

    fn deployment(replicas: i64, labels: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}
                }
            }
        })
    }

    #[test]
    fn applying_to_nothing_creates_the_object_with_an_apply_entry() {
        let created = ok(
            None,
            &deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T1,
        );
        assert_eq!(created["spec"]["replicas"], 2);
        assert_eq!(created["metadata"]["name"], "web");
        // The shape kube-apiserver records for `kubectl apply --server-side` of this manifest:
        // no "." on struct fields or on labels, "." on every list item, identity fields stripped.
        assert_eq!(
            created["metadata"]["managedFields"],
            json!([{
                "manager": "kubectl",
                "operation": "Apply",
                "apiVersion": "apps/v1",
                "time": T1,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {
                        "f:replicas": {},
                        "f:selector": {},
                        "f:template": {
                            "f:metadata": {"f:labels": {"f:app": {}}},
                            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                                ".": {},
                                "f:image": {},
                                "f:name": {},
                                "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                            }}}
                        }
                    }
                }
            }])
        );
    }

    #[test]
    fn the_server_side_apply_docs_config_map_example_has_the_documented_fields() {
        // kubernetes.io "Server-Side Apply", section "Field management".
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "test-cm", "namespace": "default", "labels": {"test-label": "test"}},
            "data": {"key": "some value"}
        });
        let out = ok(None, &cm, "kubectl", false, "ConfigMap", T1);
        assert_eq!(
            entries(&out)[0]["fieldsV1"],
            json!({"f:data": {"f:key": {}}, "f:metadata": {"f:labels": {"f:test-label": {}}}})
        );
    }

    #[test]
    fn reapplying_a_changed_value_updates_it_and_keeps_one_entry() {
        let v1 = ok(
            None,
            &deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T1,
        );
        let v2 = ok(
            Some(&v1),
            &deployment(3, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T2,
        );
        assert_eq!(v2["spec"]["replicas"], 3);
        let list = entries(&v2);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["time"], T2);
    }

    #[test]
    fn reapplying_the_same_configuration_is_a_no_op_that_keeps_the_timestamp() {
        let v1 = ok(
            None,
            &deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T1,
        );
        let v2 = ok(
            Some(&v1),
            &deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T2,
        );
        assert_eq!(v2, v1);
    }

    #[test]
    fn a_field_dropped_from_the_configuration_is_removed() {
        let v1 = ok(
            None,
            &deployment(2, json!({"app": "web", "tier": "front"})),
            "kubectl",
            false,
            "Deployment",
            T1,
        );
        let v2 = ok(
            Some(&v1),
            &deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T2,
        );
        assert_eq!(v2["metadata"]["labels"], json!({"app": "web"}));
        assert!(entries(&v2)[0]["fieldsV1"]["f:metadata"]["f:labels"]
            .get("f:tier")
            .is_none());
    }

    #[test]
    fn a_dropped_field_another_manager_also_owns_is_kept() {
        let v1 = ok(
            None,
            &deployment(2, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T1,
        );
        // An autoscaler sets the same replica count with its own apply: both own the field.
        let hpa = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let v2 = ok(Some(&v1), &hpa, "autoscaler", false, "Deployment", T2);
        let mut without_replicas = deployment(2, json!({"app": "web"}));
        if let Some(spec) = without_replicas["spec"].as_object_mut() {
            spec.shift_remove("replicas");
        }
        let v3 = ok(
            Some(&v2),
            &without_replicas,
            "kubectl",
            false,
            "Deployment",
            T3,
        );
        assert_eq!(v3["spec"]["replicas"], 2);
        let list = entries(&v3);
        assert!(entry(&list, "kubectl", "Apply")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none());
        assert!(entry(&list, "autoscaler", "Apply")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_some());
    }

    #[test]
    fn a_dropped_container_is_removed_from_the_list() {
        let mut two = deployment(1, json!({"app": "web"}));
        two["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "sidecar", "image": "envoy"}));
        let v1 = ok(None, &two, "kubectl", false, "Deployment", T1);
        let v2 = ok(
            Some(&v1),
            &deployment(1, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T2,
        );
        let names: Vec<&str> = v2["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["web"]);
    }

    /// A Deployment created by `kubectl apply` (client-side), as kube-apiserver stores it.
    fn client_side_applied() -> Value {
        let mut d = deployment(2, json!({"app": "web"}));
        let mut last = d.clone();
        if let Some(meta) = last["metadata"].as_object_mut() {
            meta.insert("annotations".into(), json!({}));
        }
        d["metadata"]["annotations"] =
            json!({LAST_APPLIED_ANNOTATION: format!("{}\n", go_json(&last))});
        update_managed_fields(None, &mut d, "kubectl-client-side-apply", T1).expect("recorded");
        d
    }

    #[test]
    fn changing_a_field_another_manager_owns_is_a_conflict_without_force() {
        let live = client_side_applied();
        let e = apply(
            Some(&live),
            &deployment(3, json!({"app": "web"})),
            "deploy-tool",
            false,
            "Deployment",
            T2,
        );
        let Err(e) = e else {
            panic!("expected a conflict")
        };
        assert_eq!(
            e,
            PatchError::Conflict {
                conflicts: vec![FieldConflict {
                    manager: "\"kubectl-client-side-apply\" using apps/v1".into(),
                    field: ".spec.replicas".into()
                }]
            }
        );
        assert_eq!(
            e.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        let status = e.to_status_error().to_status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(
            status["details"]["causes"],
            json!([{
                "reason": "FieldManagerConflict",
                "message": "conflict with \"kubectl-client-side-apply\" using apps/v1",
                "field": ".spec.replicas"
            }])
        );
    }

    #[test]
    fn a_forced_apply_takes_the_field_over() {
        let live = client_side_applied();
        let out = ok(
            Some(&live),
            &deployment(3, json!({"app": "web"})),
            "deploy-tool",
            true,
            "Deployment",
            T2,
        );
        assert_eq!(out["spec"]["replicas"], 3);
        let list = entries(&out);
        assert!(entry(&list, "deploy-tool", "Apply")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_some());
        let csa = entry(&list, "kubectl-client-side-apply", "Update");
        assert!(csa["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        assert!(
            csa["fieldsV1"]["f:spec"].get("f:selector").is_some(),
            "unchanged fields stay shared"
        );
        assert_eq!(list[0]["operation"], "Apply", "appliers are listed first");
    }

    #[test]
    fn applying_the_live_value_shares_ownership_without_conflict() {
        let live = client_side_applied();
        let out = ok(
            Some(&live),
            &deployment(2, json!({"app": "web"})),
            "deploy-tool",
            false,
            "Deployment",
            T2,
        );
        let list = entries(&out);
        assert!(entry(&list, "deploy-tool", "Apply")["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_some());
        assert!(
            entry(&list, "kubectl-client-side-apply", "Update")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_some()
        );
    }

    #[test]
    fn kubectl_upgrading_from_client_side_apply_does_not_conflict_and_updates_the_annotation() {
        let live = client_side_applied();
        let out = ok(
            Some(&live),
            &deployment(3, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T2,
        );
        assert_eq!(out["spec"]["replicas"], 3);
        let annotation = out["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
            .as_str()
            .expect("annotation");
        assert!(
            annotation.contains("\"replicas\":3") && annotation.ends_with('\n'),
            "{annotation}"
        );
        let list = entries(&out);
        assert!(
            entry(&list, "kubectl-client-side-apply", "Update")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none()
        );
    }

    #[test]
    fn kubectl_still_conflicts_on_fields_the_annotation_does_not_vouch_for() {
        let mut live = client_side_applied();
        let old = live.clone();
        live["spec"]["replicas"] = json!(5);
        update_managed_fields(Some(&old), &mut live, "autoscaler", T2).expect("recorded");
        let e = apply(
            Some(&live),
            &deployment(3, json!({"app": "web"})),
            "kubectl",
            false,
            "Deployment",
            T3,
        );
        assert_eq!(e.map_err(|e| e.code()), Err(409));
    }

    #[test]
    fn list_items_keyed_by_name_merge_across_managers() {
        let v1 = ok(
            None,
            &deployment(1, json!({"app": "web"})),
            "team-a",
            false,
            "Deployment",
            T1,
        );
        let sidecar = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy:1.30"}]}}}
        });
        let v2 = ok(Some(&v1), &sidecar, "team-b", false, "Deployment", T2);
        let containers = v2["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        let names: Vec<&str> = containers
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["web", "sidecar"]);
        let list = entries(&v2);
        assert_eq!(
            entry(&list, "team-b", "Apply")["fieldsV1"],
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"sidecar\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
        // team-b changing team-a's container image conflicts, naming the item by its key.
        let steal = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.26"}]}}}
        });
        let e = apply(Some(&v2), &steal, "team-b", false, "Deployment", T3);
        let Err(PatchError::Conflict { conflicts }) = e else {
            panic!("expected a conflict: {e:?}")
        };
        assert_eq!(
            conflicts[0].field,
            ".spec.template.spec.containers[name=\"web\"].image"
        );
        assert_eq!(conflicts[0].manager, "\"team-a\"");
    }

    #[test]
    fn service_ports_are_keyed_by_port_and_defaulted_protocol() {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}], "selector": {"app": "web"}}
        });
        update_managed_fields(None, &mut svc, "kubectl-create", T1).expect("recorded");
        let applied = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
        });
        let e = apply(Some(&svc), &applied, "tool", false, "Service", T2);
        let Err(e) = e else {
            panic!("expected a conflict")
        };
        assert_eq!(
            e.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-create\" using v1: .spec.ports[port=80,protocol=\"TCP\"].targetPort"
        );
        let out = ok(Some(&svc), &applied, "tool", true, "Service", T2);
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}])
        );
    }

    #[test]
    fn conflicts_with_several_managers_are_grouped_by_manager() {
        let e = PatchError::Conflict {
            conflicts: vec![
                FieldConflict {
                    manager: "\"b\"".into(),
                    field: ".spec.replicas".into(),
                },
                FieldConflict {
                    manager: "\"a\" using v1".into(),
                    field: ".metadata.labels.x".into(),
                },
                FieldConflict {
                    manager: "\"b\"".into(),
                    field: ".spec.paused".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "Apply failed with 3 conflicts: conflicts with \"a\" using v1:\n- .metadata.labels.x\nconflicts with \"b\":\n- .spec.replicas\n- .spec.paused"
        );
    }

    #[test]
    fn the_first_apply_to_an_untracked_object_conflicts_with_before_first_apply() {
        let live = deployment(2, json!({"app": "web"}));
        let e = apply(
            Some(&live),
            &deployment(3, json!({"app": "web"})),
            "tool",
            false,
            "Deployment",
            T1,
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: .spec.replicas".into())
        );
        let out = ok(
            Some(&live),
            &deployment(2, json!({"app": "web"})),
            "tool",
            false,
            "Deployment",
            T1,
        );
        let list = entries(&out);
        assert_eq!(list.len(), 2);
        assert_eq!(entry(&list, "before-first-apply", "Update")["time"], T1);
    }

    #[test]
    fn status_in_a_main_resource_apply_is_not_owned() {
        let mut d = deployment(1, json!({"app": "web"}));
        d["status"] = json!({"replicas": 7});
        let out = ok(None, &d, "kubectl", false, "Deployment", T1);
        assert!(entries(&out)[0]["fieldsV1"].get("f:status").is_none());
    }

    #[test]
    fn an_apply_of_the_wrong_version_or_kind_or_with_managed_fields_is_a_bad_request() {
        let mut wrong_version = deployment(1, json!({}));
        wrong_version["apiVersion"] = json!("apps/v1beta1");
        let e = apply(None, &wrong_version, "kubectl", false, "Deployment", T1);
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("Incorrect version specified in apply patch. Specified patch version: apps/v1beta1, expected: apps/v1".into())
        );
        let e = apply(
            None,
            &deployment(1, json!({})),
            "kubectl",
            false,
            "ReplicaSet",
            T1,
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("invalid object type: apps/v1, Kind=Deployment".into())
        );
        let mut with_fields = deployment(1, json!({}));
        with_fields["metadata"]["managedFields"] = json!([]);
        let e = apply(None, &with_fields, "kubectl", false, "Deployment", T1);
        assert_eq!(
            e.map_err(|e| (e.code(), e.to_string())),
            Err((400, "metadata.managedFields must be nil".into()))
        );
    }

    #[test]
    fn duplicate_keys_in_the_configuration_are_refused() {
        let mut d = deployment(1, json!({}));
        d["spec"]["template"]["spec"]["containers"] = json!([{"name": "a"}, {"name": "a"}]);
        assert_eq!(
            apply(None, &d, "kubectl", false, "Deployment", T1).map_err(|e| e.code()),
            Err(400)
        );
    }

    #[test]
    fn custom_resources_apply_with_metadata_known_and_everything_else_atomic_lists() {
        let pool = json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "pool", "namespace": "metallb-system"},
            "spec": {"addresses": ["192.0.2.0/28"]}
        });
        let out = ok(None, &pool, "kubectl", false, "IPAddressPool", T1);
        assert_eq!(
            entries(&out)[0]["fieldsV1"],
            json!({"f:spec": {"f:addresses": {}}})
        );
    }

    #[test]
    fn go_json_sorts_keys_and_escapes_html_like_go() {
        assert_eq!(
            go_json(&json!({"b": "<&>", "a": 1})),
            r#"{"a":1,"b":"\u003c\u0026\u003e"}"#
        );
    }
}
