//! Objects read through the schema, the way structured-merge-diff's `typed` package reads them:
//! the set of fields an object sets, the fields that differ between two objects, the merge of an
//! applied configuration into a live object, and the removal of fields nobody owns any more.
//! These are the building blocks of server-side apply and of `managedFields` bookkeeping.
//!
//! Values are walked with `Option<&Value>`: `None` is an absent field, `Some(Null)` a field present
//! with a null value. The distinction matters: Kubernetes' Go types serialize some empty fields as
//! `null` (`spec.containers` of an empty PodSpec), and a field that was `null` before is
//! "modified", not "added", when it gets a value.

use serde_json::{Map, Value};

use super::fieldpath::{json_eq, FieldSet, PathElement};
use super::schema::{ListKind, ListTy, Ty};

/// How a node is walked.
enum Node<'a> {
    /// Compared and owned as one value.
    Leaf,
    /// An object walked key by key (struct or map).
    Object(&'a Ty),
    /// An associative list (set or map) walked item by item.
    List(&'a ListTy),
}

fn node_kind(ty: &'static Ty, values: &[Option<&Value>]) -> Node<'static> {
    let all = |f: fn(&Value) -> bool| values.iter().all(|v| v.is_none_or(|v| v.is_null() || f(v)));
    match ty {
        Ty::Struct(_) | Ty::Map(_) if all(Value::is_object) => Node::Object(ty),
        Ty::List(l) if !matches!(l.kind, ListKind::Atomic) && all(Value::is_array) => Node::List(l),
        _ => Node::Leaf,
    }
}

fn empty_object(v: Option<&Value>) -> bool {
    v.and_then(Value::as_object).is_none_or(Map::is_empty)
}

fn empty_array(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array).is_none_or(Vec::is_empty)
}

/// The path element of a list item: its key fields (with their defaults) for a map list, its
/// value for a set, its position when it has no key at all.
pub(crate) fn item_element(l: &ListTy, index: usize, item: &Value) -> PathElement {
    match l.kind {
        ListKind::Set => PathElement::Value(item.clone()),
        ListKind::Map(keys) => {
            let mut fields: Vec<(String, Value)> = keys
                .iter()
                .filter_map(|k| {
                    let v = item
                        .get(k.name)
                        .filter(|v| !v.is_null())
                        .cloned()
                        .or_else(|| k.default.map(|d| Value::String(d.to_string())))?;
                    Some((k.name.to_string(), v))
                })
                .collect();
            if fields.is_empty() {
                return PathElement::Index(index as i64);
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            PathElement::Key(fields)
        }
        ListKind::Atomic => PathElement::Index(index as i64),
    }
}

/// The items of a list with their path elements; later duplicates of an element are dropped, as
/// structured-merge-diff's `indexListPathElements` does.
fn index_items<'v>(l: &ListTy, v: Option<&'v Value>) -> Vec<(PathElement, &'v Value)> {
    let mut out: Vec<(PathElement, &'v Value)> = Vec::new();
    for (i, item) in v
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let pe = item_element(l, i, item);
        if !out.iter().any(|(p, _)| *p == pe) {
            out.push((pe, item));
        }
    }
    out
}

fn find<'v>(items: &[(PathElement, &'v Value)], pe: &PathElement) -> Option<&'v Value> {
    items.iter().find(|(p, _)| p == pe).map(|(_, v)| *v)
}

/// Every field an object sets (`TypedValue.ToFieldSet`): leaves, list items, map entries, and
/// struct fields whose value is null or an empty object. Fails on duplicate list keys, which an
/// applied configuration may not contain.
pub(crate) fn to_field_set(v: &Value, ty: &'static Ty) -> Result<FieldSet, String> {
    let mut set = FieldSet::new();
    walk_field_set(v, ty, &mut Vec::new(), &mut set)?;
    Ok(set)
}

fn walk_field_set(
    v: &Value,
    ty: &'static Ty,
    path: &mut Vec<PathElement>,
    set: &mut FieldSet,
) -> Result<(), String> {
    match node_kind(ty, &[Some(v)]) {
        Node::Leaf => set.insert(path),
        Node::Object(ty) => {
            for (k, child) in v.as_object().into_iter().flatten() {
                path.push(PathElement::Field(k.clone()));
                walk_field_set(child, ty.child(k).0, path, set)?;
                // structured-merge-diff owns a struct field through its leaves, but owns it itself
                // when it is null or empty (kubernetes-sigs/structured-merge-diff#184), and owns
                // every entry of a map.
                if child.is_null()
                    || (child.is_object() && empty_object(Some(child)))
                    || !ty.is_struct()
                {
                    set.insert(path);
                }
                path.pop();
            }
        }
        Node::List(l) => {
            let mut seen: Vec<PathElement> = Vec::new();
            for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                let pe = item_element(l, i, item);
                if seen.contains(&pe) {
                    return Err(format!(
                        "{}: duplicate entries for key {}",
                        super::fieldpath::path_string(path),
                        pe.display()
                    ));
                }
                seen.push(pe.clone());
                path.push(pe);
                walk_field_set(item, l.elem, path, set)?;
                set.insert(path);
                path.pop();
            }
        }
    }
    Ok(())
}

/// What changed between two objects (`TypedValue.Compare`). A node that appears is added along
/// with everything below it, a node that disappears is removed likewise, and a leaf whose value
/// changes is modified.
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    /// Drops every path at or below one of `reset` (structured-merge-diff's ignore filter).
    pub fn filter(&mut self, reset: &FieldSet) {
        self.added = self.added.recursive_difference(reset);
        self.modified = self.modified.recursive_difference(reset);
        self.removed = self.removed.recursive_difference(reset);
    }

    pub fn changed(&self) -> FieldSet {
        self.added.union(&self.modified)
    }
}

pub(crate) fn compare(lhs: &Value, rhs: &Value, ty: &'static Ty) -> Comparison {
    let mut out = Comparison::default();
    walk_compare(Some(lhs), Some(rhs), ty, &mut Vec::new(), &mut out);
    out
}

fn walk_compare(
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    ty: &'static Ty,
    path: &mut Vec<PathElement>,
    out: &mut Comparison,
) {
    let leaf = |path: &[PathElement], out: &mut Comparison| match (lhs, rhs) {
        (None, _) => out.added.insert(path),
        (_, None) => out.removed.insert(path),
        (Some(l), Some(r)) if !json_eq(l, r) => out.modified.insert(path),
        _ => {}
    };
    match node_kind(ty, &[lhs, rhs]) {
        Node::Leaf => leaf(path, out),
        // Both sides empty: compared as a leaf, which keeps the empty/null distinction.
        Node::Object(_) if empty_object(lhs) && empty_object(rhs) => leaf(path, out),
        Node::List(_) if empty_array(lhs) && empty_array(rhs) => leaf(path, out),
        Node::Object(ty) => {
            let lm = lhs.and_then(Value::as_object);
            let rm = rhs.and_then(Value::as_object);
            let mut keys: Vec<&String> = lm.into_iter().flat_map(|m| m.keys()).collect();
            keys.extend(
                rm.into_iter()
                    .flat_map(|m| m.keys())
                    .filter(|k| !lm.is_some_and(|m| m.contains_key(*k))),
            );
            for k in keys {
                path.push(PathElement::Field(k.clone()));
                walk_compare(
                    lm.and_then(|m| m.get(k)),
                    rm.and_then(|m| m.get(k)),
                    ty.child(k).0,
                    path,
                    out,
                );
                path.pop();
            }
            post_item(lhs, rhs, path, out);
        }
        Node::List(l) => {
            let litems = index_items(l, lhs);
            let ritems = index_items(l, rhs);
            let mut pes: Vec<&PathElement> = litems.iter().map(|(p, _)| p).collect();
            pes.extend(
                ritems
                    .iter()
                    .map(|(p, _)| p)
                    .filter(|p| find(&litems, p).is_none()),
            );
            for pe in pes {
                path.push(pe.clone());
                walk_compare(find(&litems, pe), find(&ritems, pe), l.elem, path, out);
                path.pop();
            }
            post_item(lhs, rhs, path, out);
        }
    }
}

/// structured-merge-diff's post-item hook: a container node that appears or disappears is itself
/// added or removed, which is where the `.` entries of an updater's `fieldsV1` come from.
fn post_item(lhs: Option<&Value>, rhs: Option<&Value>, path: &[PathElement], out: &mut Comparison) {
    match (lhs, rhs) {
        (None, _) => out.added.insert(path),
        (_, None) => out.removed.insert(path),
        _ => {}
    }
}

/// Merges an applied configuration into a live object (`TypedValue.Merge`): objects merge key by
/// key, associative lists item by item, everything else takes the configuration's value.
pub(crate) fn merge(lhs: Option<&Value>, rhs: Option<&Value>, ty: &'static Ty) -> Option<Value> {
    let leaf = || rhs.or(lhs).cloned();
    match node_kind(ty, &[lhs, rhs]) {
        Node::Leaf => leaf(),
        Node::Object(_) if empty_object(lhs) && empty_object(rhs) => leaf(),
        Node::List(_) if empty_array(lhs) && empty_array(rhs) => leaf(),
        Node::Object(ty) => {
            let lm = lhs.and_then(Value::as_object);
            let rm = rhs.and_then(Value::as_object);
            let mut out = Map::new();
            for (k, lv) in lm.into_iter().flatten() {
                if let Some(v) = merge(Some(lv), rm.and_then(|m| m.get(k)), ty.child(k).0) {
                    out.insert(k.clone(), v);
                }
            }
            for (k, rv) in rm.into_iter().flatten() {
                if lm.is_some_and(|m| m.contains_key(k)) {
                    continue;
                }
                if let Some(v) = merge(None, Some(rv), ty.child(k).0) {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        Node::List(l) => Some(Value::Array(merge_list(l, lhs, rhs))),
    }
}

/// The item order of structured-merge-diff's merging walker: items of the configuration keep the
/// configuration's order, live-only items keep their place relative to the items around them.
fn merge_list(l: &ListTy, lhs: Option<&Value>, rhs: Option<&Value>) -> Vec<Value> {
    let lhs_all: Vec<(PathElement, &Value)> = lhs
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, item)| (item_element(l, i, item), item))
        .collect();
    let litems = index_items(l, lhs);
    let ritems = index_items(l, rhs);
    let mut shared = ritems
        .iter()
        .map(|(p, _)| p)
        .filter(|p| find(&litems, p).is_some());
    let mut next_shared = shared.next();
    let mut merged_rhs: Vec<&PathElement> = Vec::new();
    let mut out = Vec::new();
    let (mut li, mut ri) = (0, 0);
    while li < lhs_all.len() || ri < ritems.len() {
        if li < lhs_all.len() && ri < ritems.len() {
            let pe = &lhs_all[li].0;
            if *pe == ritems[ri].0 {
                merged_rhs.push(pe);
                out.extend(merge(find(&litems, pe), find(&ritems, pe), l.elem));
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if find(&ritems, pe).is_some() && next_shared.is_some_and(|n| n != pe) {
                // A shared item, but not the one due in this round: it is emitted in
                // configuration order.
                li += 1;
                continue;
            }
        }
        if li < lhs_all.len() {
            let (pe, item) = &lhs_all[li];
            if find(&ritems, pe).is_none() {
                out.extend(merge(Some(item), None, l.elem));
                li += 1;
                continue;
            } else if merged_rhs.contains(&pe) {
                li += 1;
                continue;
            }
        }
        if ri < ritems.len() {
            let (pe, item) = &ritems[ri];
            merged_rhs.push(pe);
            out.extend(merge(find(&litems, pe), Some(item), l.elem));
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.next();
            }
        }
    }
    out
}

/// Adds, as members, the struct fields that lead to members of the set
/// (`Set.EnsureNamedFieldsAreMembers`), so that owning `.spec.replicas` also counts as owning the
/// field `.spec` when deciding what to remove.
pub(crate) fn ensure_named_fields(set: &FieldSet, ty: &'static Ty) -> FieldSet {
    let mut out = FieldSet::new();
    out.members = set.members.clone();
    for (pe, child) in &set.children {
        let child_ty = match (pe, ty) {
            (PathElement::Field(name), _) => ty.child(name).0,
            (_, Ty::List(l)) => l.elem,
            _ => &super::schema::OPEN,
        };
        if matches!(pe, PathElement::Field(_)) && ty.is_struct() {
            out.members.insert(pe.clone());
        }
        out.children
            .insert(pe.clone(), ensure_named_fields(child, child_ty));
    }
    out
}

/// Removes what an applier stopped applying: every node in `last` (the applier's previous set)
/// that nobody owns any more (`owned`), with everything below it. Objects and lists emptied by
/// the removal disappear too, as structured-merge-diff's removing walker turns them into null.
pub(crate) fn prune(v: &mut Value, last: &FieldSet, owned: Option<&FieldSet>, ty: &'static Ty) {
    match node_kind(ty, &[Some(&*v)]) {
        Node::Leaf => {}
        Node::Object(ty) => {
            let Some(m) = v.as_object_mut() else { return };
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let pe = PathElement::Field(k.clone());
                let child_owned = owned.and_then(|o| o.child(&pe));
                if last.members.contains(&pe) && !owned.is_some_and(|o| o.members.contains(&pe)) {
                    m.shift_remove(&k);
                } else if let (Some(sub), Some(child)) = (last.child(&pe), m.get_mut(&k)) {
                    let was_empty = is_empty_container(child);
                    prune(child, sub, child_owned, ty.child(&k).0);
                    if !was_empty && is_empty_container(child) {
                        m.shift_remove(&k);
                    }
                }
            }
        }
        Node::List(l) => {
            let Some(items) = v.as_array_mut() else {
                return;
            };
            let old = std::mem::take(items);
            for (i, mut item) in old.into_iter().enumerate() {
                let pe = item_element(l, i, &item);
                if last.members.contains(&pe) && !owned.is_some_and(|o| o.members.contains(&pe)) {
                    continue;
                }
                if let Some(sub) = last.child(&pe) {
                    prune(&mut item, sub, owned.and_then(|o| o.child(&pe)), l.elem);
                }
                items.push(item);
            }
        }
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Removes every null from an object, recursively: an applied configuration's nulls mean "not
/// set" to Switchyard (kube-apiserver's typed conversion turns them into absent fields).
pub(crate) fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Fills in what `zero` has and `v` lacks, recursively through objects present in both: the
/// object as Kubernetes' Go types would see it, with their always-present empty structs.
pub(crate) fn with_zero_shape(v: &Value, zero: &Value) -> Value {
    match (v, zero) {
        (Value::Object(m), Value::Object(z)) => {
            let mut out = m.clone();
            for (k, zv) in z {
                match out.get_mut(k) {
                    Some(existing) => *existing = with_zero_shape(existing, zv),
                    None => {
                        out.insert(k.clone(), zv.clone());
                    }
                }
            }
            Value::Object(out)
        }
        _ => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema;
    use super::*;
    use serde_json::json;

    #[test]
    fn merging_a_list_keeps_the_configuration_order_for_shared_items() {
        let live = json!({"spec": {"ports": [
            {"port": 1, "protocol": "TCP"}, {"port": 2, "protocol": "TCP"}, {"port": 3, "protocol": "TCP"}
        ]}});
        let config = json!({"spec": {"ports": [{"port": 3}, {"port": 1, "name": "a"}]}});
        let merged = merge(Some(&live), Some(&config), schema::of("Service")).expect("merged");
        let ports: Vec<i64> = merged["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| p["port"].as_i64().unwrap_or(0))
            .collect();
        assert_eq!(ports, vec![2, 3, 1]);
        assert_eq!(merged["spec"]["ports"][2]["name"], "a");
    }

    #[test]
    fn a_null_field_that_gets_a_value_is_modified_not_added() {
        let before = json!({"spec": {"containers": null}});
        let after = json!({"spec": {"containers": [{"name": "c", "image": "i"}]}});
        let c = compare(&before, &after, schema::of("Pod"));
        let fv1 = c.added.to_fields_v1();
        assert_eq!(
            fv1,
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
    }
}
