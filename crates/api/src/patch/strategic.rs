//! Strategic merge patch (`application/strategic-merge-patch+json`), the patch kubectl sends for
//! `kubectl patch`, `kubectl apply` (client-side), `kubectl edit`, `kubectl label` and friends.
//!
//! It is JSON merge patch plus knowledge of the schema: lists whose field carries
//! `patchStrategy:"merge"` are merged item by item (by `patchMergeKey`, or as sets of scalars)
//! instead of being replaced, and the patch may carry directives:
//!
//! * `"$patch": "replace"` in an object replaces the object, `"$patch": "delete"` removes it; in a
//!   merged list, an item `{"$patch": "replace"}` replaces the list and an item
//!   `{"name": "x", "$patch": "delete"}` deletes the item with that key;
//! * `"$deleteFromPrimitiveList/<field>": [...]` removes scalars from a merged set;
//! * `"$setElementOrder/<field>": [...]` gives the order of a merged list after the patch;
//! * `"$retainKeys": [...]` drops every key of the object not listed.
//!
//! The algorithm follows `k8s.io/apimachinery/pkg/util/strategicpatch/patch.go`
//! (`StrategicMergeMapPatch` with `MergeParallelList` and `IgnoreUnmatchedNulls`), including its
//! ordering rules: merged lists list the patch's items in patch (or `$setElementOrder`) order,
//! interleaved with the live object's other items where the live order allows.

use serde_json::{Map, Value};

use super::fieldpath::json_eq;
use super::merge::merge_patch;
use super::schema::{self, Strategy, Ty, OPEN};
use super::PatchError;

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies a strategic merge patch to an object of the given kind. Kinds without strategy
/// information (custom resources such as metallb's `IPAddressPool`) get a JSON merge patch,
/// which is what a strategic patch without list strategies amounts to.
///
/// Errors are [`PatchError::InvalidPatch`] (400) for malformed directives and
/// [`PatchError::Unprocessable`] (422) for the two failures kube-apiserver answers 422 to (lists
/// of lists, patch keys outside `$retainKeys`).
pub fn strategic_merge_patch(doc: &Value, patch: &Value, kind: &str) -> Result<Value, PatchError> {
    let Some(patch_map) = patch.as_object() else {
        return Err(PatchError::InvalidPatch {
            message: "strategic merge patch must be a JSON object".to_string(),
        });
    };
    let Some(ty) = schema::known(kind) else {
        return Ok(merge_patch(doc, patch));
    };
    let original = doc.as_object().cloned().unwrap_or_default();
    merge_map(original, patch_map.clone(), ty).map(Value::Object)
}

fn bad(message: impl Into<String>) -> PatchError {
    PatchError::InvalidPatch {
        message: message.into(),
    }
}

fn no_merge_key(item: &Value, key: &str) -> PatchError {
    bad(format!(
        "map: {item} does not contain declared merge key: {key}"
    ))
}

/// `mergeMap`: merges `patch` into `original`.
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ty: &'static Ty,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.get(DIRECTIVE).cloned() {
        return match directive.as_str() {
            Some("replace") => {
                patch.shift_remove(DIRECTIVE);
                // Kubernetes keeps the patch as is and lets decoding drop leftover directives;
                // merging it into nothing does the same cleaning here.
                merge_map(Map::new(), patch, ty)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(bad(format!(
                "unknown patch type: {directive} in map: {}",
                Value::Object(patch.clone())
            ))),
        };
    }

    apply_retain_keys(&mut original, &mut patch)?;
    merge_set_element_order(&mut original, &mut patch, ty)?;

    for (key, patch_value) in patch {
        let (key, is_delete_list) = match key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            Some(field) => (field.to_string(), true),
            None if key.starts_with('$') => {
                if key.starts_with("$deleteFromPrimitiveList") {
                    return Err(bad("invalid patch format of primitive list"));
                }
                // Any other directive-looking key is dropped, as decoding into the Go types
                // drops unknown fields.
                continue;
            }
            None => (key, false),
        };

        // A null deletes the key; a null for a key the object lacks is ignored
        // (IgnoreUnmatchedNulls).
        if patch_value.is_null() {
            original.shift_remove(&key);
            continue;
        }

        let (child_ty, strategy) = ty.child(&key);
        let Some(original_value) = original.get_mut(&key) else {
            // Not in the object: the patch value is taken, cleaned (`removeDirectives`).
            if !is_delete_list {
                if let Some(v) = clean_new_value(patch_value) {
                    original.insert(key, v);
                }
            }
            continue;
        };

        match (original_value, patch_value) {
            (Value::Object(o), Value::Object(p)) => {
                let merged = merge_map(std::mem::take(o), p, child_ty)?;
                *o = merged;
            }
            (Value::Array(o), Value::Array(p)) => {
                let merged =
                    merge_list_field(std::mem::take(o), p, child_ty, strategy, is_delete_list)?;
                *o = merged;
            }
            (slot, patch_value) => {
                // Types differ, or both are scalars: the patch value wins.
                if !is_delete_list {
                    match clean_new_value(patch_value) {
                        Some(v) => *slot = v,
                        None => {
                            original.shift_remove(&key);
                        }
                    }
                }
            }
        }
    }
    Ok(original)
}

/// A patch value that replaces what the object has (or lacks): nulls are discarded
/// (`discardNullValuesFromPatch`), and an object carrying `$patch` is dropped, from lists too
/// (`removeDirectives`). Other `$` keys are dropped as decoding into the Go types drops unknown
/// fields. `None` means the key is not kept at all.
fn clean_new_value(mut v: Value) -> Option<Value> {
    discard_nulls(&mut v);
    remove_directives(v)
}

fn remove_directives(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.contains_key(DIRECTIVE) {
                return None;
            }
            Some(Value::Object(
                m.into_iter()
                    .filter(|(k, _)| !k.starts_with('$'))
                    .filter_map(|(k, v)| remove_directives(v).map(|v| (k, v)))
                    .collect(),
            ))
        }
        Value::Array(items) => Some(Value::Array(
            items.into_iter().filter_map(remove_directives).collect(),
        )),
        other => Some(other),
    }
}

/// What decoding into the Go types keeps of a replaced list's item: no nulls, no `$` keys.
fn decode_like(mut v: Value) -> Value {
    discard_nulls(&mut v);
    strip_dollar_keys(&mut v);
    v
}

fn strip_dollar_keys(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_dollar_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_dollar_keys),
        _ => {}
    }
}

fn elem_of(ty: &'static Ty) -> &'static Ty {
    match ty {
        Ty::List(l) => l.elem,
        _ => &OPEN,
    }
}

/// `mergeSliceHandler`: lists with a merge strategy are merged, others replaced by the patch.
fn merge_list_field(
    original: Vec<Value>,
    patch: Vec<Value>,
    ty: &'static Ty,
    strategy: Strategy,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    match strategy {
        Strategy::MergeKey(key) => {
            merge_list(original, patch, elem_of(ty), Some(key), is_delete_list)
        }
        Strategy::MergeSet => merge_list(original, patch, elem_of(ty), None, is_delete_list),
        Strategy::Default if is_delete_list => Err(bad("invalid patch format of primitive list")),
        Strategy::Default => Ok(patch.into_iter().map(decode_like).collect()),
    }
}

fn discard_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(discard_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(discard_nulls),
        _ => {}
    }
}

/// The JSON type of every item, which must be the same across both lists and not a list
/// (`sliceElementType`). `None` when both lists are empty.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ElemKind {
    Object,
    Scalar,
}

fn element_kind(lists: &[&[Value]]) -> Result<Option<ElemKind>, PatchError> {
    let mut kind: Option<u8> = None;
    for v in lists.iter().flat_map(|l| l.iter()) {
        let k = match v {
            Value::Array(_) => {
                return Err(PatchError::Unprocessable {
                    message: "lists of lists are not supported".to_string(),
                })
            }
            Value::Object(_) => 0,
            Value::String(_) => 1,
            Value::Number(_) => 2,
            Value::Bool(_) => 3,
            Value::Null => 4,
        };
        match kind {
            None => kind = Some(k),
            Some(prev) if prev != k => {
                return Err(bad(format!(
                    "list element types are not identical: {}",
                    lists
                        .iter()
                        .map(|l| Value::Array(l.to_vec()).to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )))
            }
            _ => {}
        }
    }
    Ok(kind.map(|k| {
        if k == 0 {
            ElemKind::Object
        } else {
            ElemKind::Scalar
        }
    }))
}

/// `mergeSlice`: merges a patch list into a list with merge strategy.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    elem: &'static Ty,
    merge_key: Option<&'static str>,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let Some(kind) = element_kind(&[&original, &patch])? else {
        return Ok(original);
    };
    let (original, patch, merged) = match kind {
        ElemKind::Scalar => {
            if is_delete_list {
                return Ok(original
                    .into_iter()
                    .filter(|v| !patch.iter().any(|p| json_eq(p, v)))
                    .collect());
            }
            let mut merged: Vec<Value> = Vec::new();
            for v in original.iter().chain(patch.iter()) {
                if !merged.iter().any(|m| json_eq(m, v)) {
                    merged.push(v.clone());
                }
            }
            (original, patch, merged)
        }
        ElemKind::Object => {
            let Some(key) = merge_key else {
                return Err(bad("cannot merge lists without merge key"));
            };
            let (original, patch) = apply_list_directives(original, patch, key, elem)?;
            let merged = merge_items(original.clone(), &patch, key, elem)?;
            (original, patch, merged)
        }
    };
    let key = if kind == ElemKind::Object {
        merge_key
    } else {
        None
    };
    let (patch_items, server_only) = partition(merged, &patch, key)?;
    normalize_element_order(patch_items, server_only, &patch, &original, key)
}

/// `mergeSliceWithSpecialElements`: applies the `$patch` items of a patch list and returns the
/// remaining original and patch items.
fn apply_list_directives(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
    elem: &'static Ty,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut plain = Vec::new();
    let mut replace = false;
    for item in patch {
        match item.get(DIRECTIVE) {
            None => plain.push(item),
            Some(d) => match d.as_str() {
                Some("delete") => {
                    let Some(value) = item.get(key) else {
                        return Err(no_merge_key(&item, key));
                    };
                    original.retain(|o| !o.get(key).is_some_and(|v| json_eq(v, value)));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(bad("merging lists cannot yet be specified in the patch"))
                }
                _ => return Err(bad(format!("unknown patch type: {d} in map: {item}"))),
            },
        }
    }
    if replace {
        // The patch's items become the list, cleaned of nulls and directives.
        let items = plain
            .into_iter()
            .map(|item| match item {
                Value::Object(m) => merge_map(Map::new(), m, elem).map(Value::Object),
                other => Ok(other),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((items, Vec::new()));
    }
    Ok((original, plain))
}

/// `mergeSliceWithoutSpecialElements`: items with a key already present are merged into it,
/// others appended.
fn merge_items(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &str,
    elem: &'static Ty,
) -> Result<Vec<Value>, PatchError> {
    for item in patch {
        let Some(value) = item.get(key) else {
            return Err(no_merge_key(item, key));
        };
        let Value::Object(p) = item.clone() else {
            continue;
        };
        match original
            .iter_mut()
            .find(|o| o.get(key).is_some_and(|v| json_eq(v, value)))
        {
            Some(Value::Object(o)) => {
                let merged = merge_map(std::mem::take(o), p, elem)?;
                *o = merged;
            }
            Some(_) => return Err(bad(format!("value for key {key} is not a map"))),
            None => original.push(Value::Object(merge_map(Map::new(), p, elem)?)),
        }
    }
    Ok(original)
}

/// The identity of an item for ordering purposes: its merge key, or itself for scalars.
fn identity<'v>(item: &'v Value, key: Option<&str>) -> Option<&'v Value> {
    match key {
        Some(k) => item.get(k),
        None => Some(item),
    }
}

fn position(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    let id = identity(item, key)?;
    list.iter()
        .position(|v| identity(v, key).is_some_and(|w| json_eq(w, id)))
}

/// Splits `merged` into the items present in `by` and the others (`partitionMapsByPresentInList`).
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut present = Vec::new();
    let mut others = Vec::new();
    for item in merged {
        if let Some(k) = key {
            if item.get(k).is_none() {
                return Err(no_merge_key(&item, k));
            }
        }
        if position(by, &item, key).is_some() {
            present.push(item);
        } else {
            others.push(item);
        }
    }
    Ok((present, others))
}

/// `normalizeElementOrder`: sorts the patch items by `patch_order` and the server-only items by
/// `server_order`, then interleaves them (`mergeSortedSlice`): a server-only item goes before a
/// patch item when the live list had it before that item.
fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let patch_items = sort_by_order(patch_items, patch_order, key)?;
    let server_only = sort_by_order(server_only, server_order, key)?;
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let (mut left, mut right) = (
        server_only.into_iter().peekable(),
        patch_items.into_iter().peekable(),
    );
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (Some(l), Some(r)) => {
                let before = match (
                    position(server_order, l, key),
                    position(server_order, r, key),
                ) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                };
                if before {
                    out.extend(left.next());
                } else {
                    out.extend(right.next());
                }
            }
        }
    }
    Ok(out)
}

/// `normalizeSliceOrder`: a stable sort by position in `order`; `$patch: delete` items go last.
fn sort_by_order(
    items: Vec<Value>,
    order: &[Value],
    key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    if let Some(k) = key {
        for v in items.iter().chain(order) {
            if v.get(k).is_none() {
                return Err(no_merge_key(v, k));
            }
        }
    }
    let (mut keep, delete): (Vec<Value>, Vec<Value>) = items
        .into_iter()
        .partition(|v| key.is_none() || v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"));
    keep.sort_by_key(|v| position(order, v, key).unwrap_or(usize::MAX));
    keep.extend(delete);
    Ok(keep)
}

/// `applyRetainKeysDirective`: with `$retainKeys`, keys of the object not listed are cleared, and
/// the patch may only set listed keys.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.shift_remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Some(list) = retain.as_array() else {
        return Err(bad("invalid patch format of retainKeys"));
    };
    let listed = |k: &str| list.iter().any(|v| v.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with("$deleteFromPrimitiveList")
            || k.starts_with("$setElementOrder")
        {
            continue;
        }
        if !listed(k) {
            return Err(PatchError::Unprocessable {
                message: "patch content doesn't match retainKeys list".to_string(),
            });
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}

/// `mergePatchIntoOriginal`: merges every list that has a `$setElementOrder/<field>` directive
/// and orders it by the directive (the directive's order, then the patch's, then the live
/// object's). The merged lists are removed from the patch.
fn merge_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    ty: &'static Ty,
) -> Result<(), PatchError> {
    let directives: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with("$setElementOrder"))
        .cloned()
        .collect();
    for directive in directives {
        let Some(order) = patch.shift_remove(&directive) else {
            continue;
        };
        let Some(field) = directive.strip_prefix(SET_ELEMENT_ORDER) else {
            return Err(bad("invalid patch format of setElementOrder list"));
        };
        let Value::Array(order) = order else {
            return Err(bad("invalid patch format of setElementOrder list"));
        };
        let original_list = match original.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(items.clone()),
            Some(_) => {
                return Err(bad(format!(
                    "invalid patch format of setElementOrder list: {field} is not a list"
                )))
            }
        };
        let patch_list = match patch.get(field) {
            None => None,
            Some(Value::Array(items)) => Some(items.clone()),
            Some(_) => {
                return Err(bad(format!(
                    "invalid patch format of setElementOrder list: {field} is not a list"
                )))
            }
        };
        let (child_ty, strategy) = ty.child(field);
        let merge_key = match strategy {
            Strategy::MergeKey(k) => Some(k),
            _ => None,
        };
        validate_set_element_order(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;

        let merged = match (original_list.clone(), patch_list) {
            (Some(o), None) => o,
            (None, Some(p)) => merge_list_field(Vec::new(), p, child_ty, strategy, false)?,
            (Some(o), Some(p)) => merge_list_field(o, p, child_ty, strategy, false)?,
            (None, None) => continue,
        };
        let key = match element_kind(&[&merged])? {
            Some(ElemKind::Object) => merge_key,
            _ => None,
        };
        let (in_order, server_only) = partition(merged, &order, key)?;
        let both = normalize_element_order(
            in_order,
            server_only,
            &order,
            original_list.as_deref().unwrap_or(&[]),
            key,
        )?;
        original.insert(field.to_string(), Value::Array(both));
        patch.shift_remove(field);
    }
    Ok(())
}

/// `validatePatchWithSetOrderList`: the patch list's items (deletions aside) must appear in the
/// `$setElementOrder` list, in the same relative order.
fn validate_set_element_order(
    patch_list: &[Value],
    order: &[Value],
    key: Option<&str>,
) -> Result<(), PatchError> {
    if patch_list.is_empty() || order.is_empty() {
        return Ok(());
    }
    let items: Vec<&Value> = patch_list
        .iter()
        .filter(|v| key.is_none() || v.get(DIRECTIVE).is_none())
        .collect();
    let (mut pi, mut oi) = (0, 0);
    while pi < items.len() && oi < order.len() {
        let same = match key {
            Some(k) => match (items[pi].get(k), order[oi].get(k)) {
                (Some(a), Some(b)) => json_eq(a, b),
                (None, _) => return Err(no_merge_key(items[pi], k)),
                (_, None) => return Err(no_merge_key(&order[oi], k)),
            },
            None => json_eq(items[pi], &order[oi]),
        };
        if same {
            pi += 1;
        }
        oi += 1;
    }
    if pi < items.len() {
        return Err(bad(format!(
            "The order in patch list:\n{}\n doesn't match $setElementOrder list:\n{}\n",
            Value::Array(patch_list.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value, kind: &str) -> Value {
        match strategic_merge_patch(&doc, &patch, kind) {
            Ok(v) => v,
            Err(e) => panic!("patch {patch} failed: {e}"),
        }
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "front"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "web", "image": "nginx:1.25", "env": [{"name": "A", "value": "1"}]},
                            {"name": "sidecar", "image": "envoy:1.30"}
                        ],
                        "tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]
                    }
                }
            }
        })
    }

    fn containers(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
    }

    #[test]
    fn containers_merge_by_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.26"}]}}}});
        let out = smp(deployment(), patch, "Deployment");
        let c = containers(&out);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["image"], "nginx:1.26");
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}]),
            "fields the patch omits are kept"
        );
        assert_eq!(c[1]["name"], "sidecar");
    }

    #[test]
    fn a_new_container_comes_first_as_in_the_kubernetes_patch_docs() {
        // kubernetes.io "Update API Objects in Place Using kubectl patch": patching in a second
        // container lists it before the existing one.
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "debug", "image": "busybox"}]}}}});
        let out = smp(deployment(), patch, "Deployment");
        let names: Vec<&str> = containers(&out)
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["debug", "web", "sidecar"]);
    }

    #[test]
    fn tolerations_have_no_strategy_and_are_replaced() {
        let patch = json!({"spec": {"template": {"spec": {"tolerations": [{"key": "c", "operator": "Exists"}]}}}});
        let out = smp(deployment(), patch, "Deployment");
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "c", "operator": "Exists"}])
        );
    }

    #[test]
    fn a_patch_delete_item_removes_the_container_with_that_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}});
        let out = smp(deployment(), patch, "Deployment");
        let names: Vec<&str> = containers(&out)
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["web"]);
    }

    #[test]
    fn a_patch_replace_item_replaces_the_whole_list() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"},
            {"name": "only", "image": "busybox"}
        ]}}}});
        let out = smp(deployment(), patch, "Deployment");
        assert_eq!(
            containers(&out),
            &vec![json!({"name": "only", "image": "busybox"})]
        );
    }

    #[test]
    fn patch_replace_and_delete_directives_act_on_maps() {
        let out = smp(
            deployment(),
            json!({"metadata": {"labels": {"$patch": "replace", "new": "x"}}}),
            "Deployment",
        );
        assert_eq!(out["metadata"]["labels"], json!({"new": "x"}));
        let out = smp(
            deployment(),
            json!({"spec": {"selector": {"$patch": "delete"}}}),
            "Deployment",
        );
        assert_eq!(out["spec"]["selector"], json!({}));
    }

    #[test]
    fn an_unknown_patch_directive_is_a_bad_request() {
        let e = strategic_merge_patch(
            &deployment(),
            &json!({"metadata": {"$patch": "frobnicate"}}),
            "Deployment",
        );
        assert_eq!(e.map_err(|e| e.code()), Err(400));
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "$patch": "merge"}]}}}});
        assert_eq!(
            strategic_merge_patch(&deployment(), &patch, "Deployment").map_err(|e| e.code()),
            Err(400)
        );
    }

    #[test]
    fn set_element_order_reorders_the_merged_list() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
            "containers": [{"name": "web", "image": "nginx:1.26"}]
        }}}});
        let out = smp(deployment(), patch, "Deployment");
        let names: Vec<&str> = containers(&out)
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["sidecar", "web"]);
        assert_eq!(containers(&out)[1]["image"], "nginx:1.26");
    }

    #[test]
    fn set_element_order_alone_only_reorders() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}]
        }}}});
        let out = smp(deployment(), patch, "Deployment");
        let names: Vec<&str> = containers(&out)
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["sidecar", "web"]);
    }

    #[test]
    fn a_patch_list_out_of_set_element_order_is_rejected() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
            "containers": [{"name": "sidecar", "image": "x"}, {"name": "web", "image": "y"}]
        }}}});
        assert_eq!(
            strategic_merge_patch(&deployment(), &patch, "Deployment").map_err(|e| e.code()),
            Err(400)
        );
    }

    #[test]
    fn finalizers_merge_as_a_set_and_delete_from_primitive_list_removes_them() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p", "finalizers": ["a.example/x", "b.example/y"]}});
        let out = smp(
            pod.clone(),
            json!({"metadata": {"finalizers": ["c.example/z", "a.example/x"]}}),
            "Pod",
        );
        // Patch items in patch order, live-only items where the live order puts them.
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["c.example/z", "a.example/x", "b.example/y"])
        );
        let out = smp(
            pod,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example/x"]}}),
            "Pod",
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b.example/y"]));
    }

    #[test]
    fn delete_from_primitive_list_on_a_missing_list_does_nothing() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p"}});
        let out = smp(
            pod.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            "Pod",
        );
        assert_eq!(out, pod);
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = json!({"kind": "Service", "spec": {"ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}
        ]}});
        let out = smp(
            svc,
            json!({"spec": {"ports": [{"port": 443, "targetPort": 9443}, {"port": 53, "protocol": "UDP"}]}}),
            "Service",
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 9443},
                {"port": 53, "protocol": "UDP"}
            ])
        );
    }

    #[test]
    fn a_null_deletes_a_label_and_a_null_for_a_missing_key_is_ignored() {
        let out = smp(
            deployment(),
            json!({"metadata": {"labels": {"tier": null, "nope": null}}}),
            "Deployment",
        );
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    }

    #[test]
    fn directives_inside_a_new_value_are_dropped_as_kubernetes_drops_them() {
        let doc = json!({"spec": {"template": {"spec": {}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "$patch": "delete"}],
            "nodeSelector": {"$patch": "replace", "disk": "ssd"},
            "tolerations": [{"key": "t", "value": null, "$retainKeys": ["key"]}]
        }}}});
        let out = smp(doc, patch, "Deployment");
        assert_eq!(
            out["spec"]["template"]["spec"],
            json!({"containers": [{"name": "a", "image": "x"}], "tolerations": [{"key": "t"}]})
        );
    }

    #[test]
    fn nulls_inside_a_new_value_are_dropped() {
        let out = smp(
            json!({"metadata": {}}),
            json!({"metadata": {"annotations": {"a": "1", "b": null}}}),
            "ConfigMap",
        );
        assert_eq!(out["metadata"]["annotations"], json!({"a": "1"}));
    }

    #[test]
    fn retain_keys_clears_the_keys_it_does_not_list() {
        let d = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = smp(d.clone(), patch, "Deployment");
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 2}}}});
        assert_eq!(
            strategic_merge_patch(&d, &patch, "Deployment").map_err(|e| e.code()),
            Err(422)
        );
    }

    #[test]
    fn node_conditions_merge_by_type_and_taints_are_replaced() {
        let node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}, "status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}
        ]}});
        let patch = json!({
            "spec": {"taints": [{"key": "b", "effect": "NoExecute"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let out = smp(node, patch, "Node");
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "b", "effect": "NoExecute"}])
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}])
        );
    }

    #[test]
    fn lists_of_lists_are_unprocessable() {
        let e = strategic_merge_patch(
            &json!({"metadata": {"finalizers": ["a"]}}),
            &json!({"metadata": {"finalizers": [["b"]]}}),
            "Pod",
        );
        assert_eq!(e.map_err(|e| e.code()), Err(422));
    }

    #[test]
    fn a_kind_without_strategy_information_gets_a_json_merge_patch() {
        let pool = json!({"kind": "IPAddressPool", "spec": {"addresses": ["10.0.0.0/24"], "autoAssign": true}});
        let out = smp(
            pool,
            json!({"spec": {"addresses": ["10.1.0.0/24"], "autoAssign": null}}),
            "IPAddressPool",
        );
        assert_eq!(
            out,
            json!({"kind": "IPAddressPool", "spec": {"addresses": ["10.1.0.0/24"]}})
        );
    }

    #[test]
    fn a_kubectl_client_side_apply_patch_changes_replicas_and_an_env_var() {
        // What kubectl 1.32 sends for `kubectl apply` after replicas went 2 -> 3 and FOO went
        // bar -> baz in the manifest: a three-way patch with the new last-applied annotation and
        // $setElementOrder lists for the merged lists it touches.
        let last_applied_v1 = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"annotations":{},"name":"web","namespace":"default"},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"env":[{"name":"FOO","value":"bar"}],"image":"nginx:1.25","name":"web"}]}}}}
"#;
        let last_applied_v2 = last_applied_v1
            .replace("\"replicas\":2", "\"replicas\":3")
            .replace("\"bar\"", "\"baz\"");
        let live = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "annotations": {
                    "deployment.kubernetes.io/revision": "1",
                    LAST_APPLIED: last_applied_v1
                },
                "generation": 1
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "web",
                            "image": "nginx:1.25",
                            "env": [{"name": "FOO", "value": "bar"}, {"name": "EXTRA", "value": "set-by-kubectl-set-env"}],
                            "imagePullPolicy": "IfNotPresent",
                            "terminationMessagePath": "/dev/termination-log"
                        }],
                        "restartPolicy": "Always"
                    }
                }
            },
            "status": {"replicas": 2}
        });
        let patch = json!({
            "metadata": {"annotations": {LAST_APPLIED: last_applied_v2}},
            "spec": {
                "replicas": 3,
                "template": {"spec": {
                    "$setElementOrder/containers": [{"name": "web"}],
                    "containers": [{
                        "$setElementOrder/env": [{"name": "FOO"}],
                        "env": [{"name": "FOO", "value": "baz"}],
                        "name": "web"
                    }]
                }}
            }
        });
        let out = smp(live.clone(), patch, "Deployment");
        assert_eq!(out["spec"]["replicas"], 3);
        let c = &containers(&out)[0];
        assert_eq!(
            c["env"],
            json!([{"name": "FOO", "value": "baz"}, {"name": "EXTRA", "value": "set-by-kubectl-set-env"}])
        );
        assert_eq!(c["image"], "nginx:1.25");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            out["metadata"]["annotations"][LAST_APPLIED],
            json!(last_applied_v2)
        );
        assert_eq!(
            out["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "1"
        );
        assert_eq!(out["spec"]["strategy"], live["spec"]["strategy"]);
        assert_eq!(out["status"], live["status"]);
        assert!(
            out.to_string().find('$').is_none(),
            "no directive survives: {out}"
        );
    }

    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
}
