//! `metadata.managedFields`: which manager owns which fields of an object, and how every write
//! moves that ownership. Server-side apply reads it to find conflicts and to remove what an
//! applier stopped applying; every other write ("Update" operations: create, update, patch)
//! records that its manager now owns what it changed.
//!
//! The bookkeeping follows kube-apiserver's field manager
//! (`k8s.io/apimachinery/pkg/util/managedfields/internal`): managers are identified by name,
//! operation, subresource and, for updaters, API version; an update takes every field it adds or
//! changes away from the other managers; the object's identity and bookkeeping fields (name,
//! uid, resourceVersion, managedFields, ...) are never owned; `.status` is not owned through the
//! main resource of a kind with a status subresource, nor `.spec` through `/status`; at most ten
//! update entries are kept, the oldest folded into `ancient-changes`.

use serde_json::{Map, Value};

use super::fieldpath::{field_path, path_string, FieldSet};
use super::schema;
use super::typed::{self, Comparison};
use super::{FieldConflict, PatchError};

/// How many update entries an object keeps (`DefaultMaxUpdateManagers`).
const MAX_UPDATE_MANAGERS: usize = 10;
/// The manager older update entries are folded into.
const ANCIENT_CHANGES: &str = "ancient-changes";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// What identifies a manager (`BuildManagerIdentifier`): appliers are one manager whatever API
/// version they apply with; updaters are one per version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ManagerId {
    pub manager: String,
    pub operation: Operation,
    /// Empty for appliers.
    pub api_version: String,
    pub subresource: String,
}

impl ManagerId {
    pub fn new(
        manager: &str,
        operation: Operation,
        api_version: &str,
        subresource: Option<&str>,
    ) -> Self {
        let manager = if manager.is_empty() {
            "unknown"
        } else {
            manager
        };
        Self {
            manager: manager.to_string(),
            operation,
            api_version: if operation == Operation::Apply {
                String::new()
            } else {
                api_version.to_string()
            },
            subresource: subresource.unwrap_or_default().to_string(),
        }
    }

    /// How kube-apiserver names a manager in conflict messages (`printManager`):
    /// `"kubectl"`, `"kube-controller-manager" using apps/v1`, `"x" with subresource "status"`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub id: ManagerId,
    pub api_version: String,
    pub time: Option<String>,
    pub set: FieldSet,
}

/// The decoded `metadata.managedFields` of an object.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Managed {
    pub entries: Vec<Entry>,
}

impl Managed {
    /// Decodes an object's `metadata.managedFields` (`DecodeManagedFields`). An entry with an
    /// operation other than Apply or Update, without apiVersion, or with a fieldsType other than
    /// FieldsV1 makes the whole list invalid.
    pub fn decode(obj: &Value) -> Result<Managed, String> {
        let list = match obj.pointer("/metadata/managedFields") {
            None | Some(Value::Null) => return Ok(Managed::default()),
            Some(Value::Array(list)) => list,
            Some(_) => return Err("managedFields must be a list".to_string()),
        };
        let mut managed = Managed::default();
        for (i, e) in list.iter().enumerate() {
            let s = |name: &str| e.get(name).and_then(Value::as_str).unwrap_or_default();
            let operation = match s("operation") {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return Err("operation must be `Apply` or `Update`".to_string()),
            };
            if s("apiVersion").is_empty() {
                return Err("apiVersion must not be empty".to_string());
            }
            match s("fieldsType") {
                "FieldsV1" => {}
                "" => return Err(format!("missing fieldsType in managed fields entry {i}")),
                other => {
                    return Err(format!(
                        "invalid fieldsType {other:?} in managed fields entry {i}"
                    ))
                }
            }
            let set = match e.get("fieldsV1") {
                None | Some(Value::Null) => FieldSet::new(),
                Some(v) => FieldSet::from_fields_v1(v)?,
            };
            let id = ManagerId {
                manager: s("manager").to_string(),
                operation,
                api_version: if operation == Operation::Apply {
                    String::new()
                } else {
                    s("apiVersion").to_string()
                },
                subresource: s("subresource").to_string(),
            };
            let entry = Entry {
                id,
                api_version: s("apiVersion").to_string(),
                time: e.get("time").and_then(Value::as_str).map(str::to_string),
                set,
            };
            // A repeated identifier replaces the earlier entry, as decoding into a map does.
            managed.entries.retain(|x| x.id != entry.id);
            managed.entries.push(entry);
        }
        Ok(managed)
    }

    /// The list to store (`encodeManagedFields`), sorted as kube-apiserver sorts it: appliers
    /// before updaters, then by time, manager, apiVersion and subresource.
    pub fn encode(&self) -> Value {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by(|p, q| {
            p.id.operation
                .cmp(&q.id.operation)
                .then_with(|| seconds(p.time.as_deref()).cmp(&seconds(q.time.as_deref())))
                .then_with(|| p.id.manager.cmp(&q.id.manager))
                .then_with(|| p.api_version.cmp(&q.api_version))
                .then_with(|| p.id.subresource.cmp(&q.id.subresource))
        });
        Value::Array(
            entries
                .into_iter()
                .map(|e| {
                    // Field order of metav1.ManagedFieldsEntry.
                    let mut m = Map::new();
                    m.insert("manager".into(), Value::String(e.id.manager.clone()));
                    m.insert(
                        "operation".into(),
                        Value::String(e.id.operation.as_str().into()),
                    );
                    m.insert("apiVersion".into(), Value::String(e.api_version.clone()));
                    if let Some(t) = &e.time {
                        m.insert("time".into(), Value::String(t.clone()));
                    }
                    m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
                    m.insert("fieldsV1".into(), e.set.to_fields_v1());
                    if !e.id.subresource.is_empty() {
                        m.insert(
                            "subresource".into(),
                            Value::String(e.id.subresource.clone()),
                        );
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }

    pub fn get(&self, id: &ManagerId) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == *id)
    }

    fn get_mut(&mut self, id: &ManagerId) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.id == *id)
    }

    pub fn remove(&mut self, id: &ManagerId) {
        self.entries.retain(|e| e.id != *id);
    }

    /// Sets a manager's fields, creating its entry if needed.
    pub fn set(&mut self, id: &ManagerId, api_version: &str, set: FieldSet) {
        match self.get_mut(id) {
            Some(e) => {
                e.set = set;
                e.api_version = api_version.to_string();
            }
            None => self.entries.push(Entry {
                id: id.clone(),
                api_version: api_version.to_string(),
                time: None,
                set,
            }),
        }
    }

    /// Stamps a manager's entry with `now`, written as metav1.Time writes it (UTC, seconds).
    pub fn set_time(&mut self, id: &ManagerId, now: &str) {
        let now = match now.parse::<jiff::Timestamp>() {
            Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            Err(_) => now.to_string(),
        };
        if let Some(e) = self.get_mut(id) {
            e.time = Some(now);
        }
    }

    /// Every field some manager owns.
    pub fn all_owned(&self) -> FieldSet {
        let mut out = FieldSet::new();
        for e in &self.entries {
            out.union_in_place(&e.set);
        }
        out
    }

    /// structured-merge-diff's `Updater.update`: the fields `cmp` adds or modifies move from every
    /// other manager to `workflow`'s operation, and removed fields leave every other manager. Without
    /// `force`, another manager owning a changed field is a conflict and nothing moves.
    pub fn take_changed_fields(
        &mut self,
        workflow: Option<&ManagerId>,
        cmp: &Comparison,
        force: bool,
    ) -> Result<(), Vec<FieldConflict>> {
        let changed = cmp.changed();
        if !force {
            let mut conflicts: Vec<(String, FieldSet)> = self
                .entries
                .iter()
                .filter(|e| Some(&e.id) != workflow)
                .map(|e| (e.id.describe(), e.set.intersection(&changed)))
                .filter(|(_, c)| !c.is_empty())
                .collect();
            if !conflicts.is_empty() {
                conflicts.sort_by(|a, b| a.0.cmp(&b.0));
                return Err(conflicts
                    .into_iter()
                    .flat_map(|(manager, set)| {
                        set.paths().into_iter().map(move |p| FieldConflict {
                            manager: manager.clone(),
                            field: path_string(&p),
                        })
                    })
                    .collect());
            }
        }
        for e in self.entries.iter_mut().filter(|e| Some(&e.id) != workflow) {
            e.set = e.set.difference(&changed).difference(&cmp.removed);
        }
        self.entries.retain(|e| !e.set.is_empty());
        Ok(())
    }

    /// Records an Update operation by `id` that turned `old` (`None`: nothing, a create) into
    /// `new` (`managedFieldsUpdater` around structured-merge-diff's `Updater.Update`).
    pub fn record_update(
        &mut self,
        old: Option<&Value>,
        new: &Value,
        kind: &str,
        id: &ManagerId,
        now: &str,
    ) {
        let ty = schema::of(kind);
        let zero = schema::zero_object(kind);
        let mut before = old.cloned().unwrap_or_else(|| zero.clone());
        let mut after = new.clone();
        remove_managed_fields(&mut before);
        remove_managed_fields(&mut after);
        let mut cmp = typed::compare(
            &typed::with_zero_shape(&before, &zero),
            &typed::with_zero_shape(&after, &zero),
            ty,
        );
        let subresource = Some(id.subresource.as_str()).filter(|s| !s.is_empty());
        cmp.filter(&reset_set(kind, subresource));

        // kube-apiserver runs the comparison as a temporary "current-operation" manager, so that
        // the writer's own earlier entry loses what it removed like everyone else's, then folds
        // the operation's fields into the writer's entry; only a write that owns something new
        // moves the entry's timestamp.
        let _ = self.take_changed_fields(None, &cmp, true);
        let operation_set = cmp.changed().difference(&strip_set());
        if !operation_set.is_empty() {
            let set = self
                .get(id)
                .map_or_else(FieldSet::new, |e| e.set.clone())
                .union(&operation_set);
            let api_version = if id.api_version.is_empty() {
                api_version(new, kind)
            } else {
                id.api_version.clone()
            };
            self.set(id, &api_version, set);
            self.set_time(id, now);
        }
    }

    /// `capManagersManager`: past ten update entries, the oldest are folded, per API version, into
    /// an `ancient-changes` entry.
    pub fn cap_update_managers(&mut self) {
        let mut updaters: Vec<ManagerId> = self
            .entries
            .iter()
            .filter(|e| e.id.operation == Operation::Update)
            .map(|e| e.id.clone())
            .collect();
        if updaters.len() <= MAX_UPDATE_MANAGERS {
            return;
        }
        let time_of =
            |m: &Managed, id: &ManagerId| seconds(m.get(id).and_then(|e| e.time.as_deref()));
        updaters.sort_by(|a, b| {
            time_of(self, a).cmp(&time_of(self, b)).then_with(|| {
                (&a.manager, &a.api_version, &a.subresource).cmp(&(
                    &b.manager,
                    &b.api_version,
                    &b.subresource,
                ))
            })
        });
        let mut first_of_version: Vec<(String, ManagerId)> = Vec::new();
        let mut length = updaters.len();
        for id in updaters {
            if length <= MAX_UPDATE_MANAGERS {
                break;
            }
            let Some(entry) = self.get(&id).cloned() else {
                continue;
            };
            let bucket =
                ManagerId::new(ANCIENT_CHANGES, Operation::Update, &entry.api_version, None);
            match first_of_version
                .iter()
                .find(|(v, _)| *v == entry.api_version)
            {
                Some((_, first)) => {
                    if self.get(&bucket).is_none() {
                        if let Some(f) = self.get_mut(first) {
                            f.id = bucket.clone();
                        }
                    }
                    if let Some(b) = self.get_mut(&bucket) {
                        b.set.union_in_place(&entry.set);
                        // The merged update is the more recent one.
                        b.time = entry.time.clone();
                    }
                    self.remove(&id);
                    length -= 1;
                }
                None => first_of_version.push((entry.api_version.clone(), id)),
            }
        }
    }
}

/// Seconds since the epoch of an RFC 3339 timestamp, 0 when absent or unreadable (as a nil time
/// sorts in Go).
fn seconds(t: Option<&str>) -> i64 {
    t.and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |ts| ts.as_second())
}

/// The fields nobody owns (`stripMetaManager`): an object's identity and server-set metadata.
pub(crate) fn strip_set() -> FieldSet {
    let mut s = FieldSet::new();
    for p in [
        &["apiVersion"][..],
        &["kind"],
        &["metadata"],
        &["metadata", "name"],
        &["metadata", "namespace"],
        &["metadata", "creationTimestamp"],
        &["metadata", "selfLink"],
        &["metadata", "uid"],
        &["metadata", "clusterName"],
        &["metadata", "generation"],
        &["metadata", "managedFields"],
        &["metadata", "resourceVersion"],
    ] {
        s.insert(&field_path(p));
    }
    s
}

/// The fields a write through `subresource` does not own (the strategies' reset fields).
pub(crate) fn reset_set(kind: &str, subresource: Option<&str>) -> FieldSet {
    let mut s = FieldSet::new();
    for p in schema::reset_paths(kind, subresource) {
        s.insert(&field_path(&p));
    }
    s
}

/// The `apiVersion` a write records: the object's, else the one Switchyard serves the kind at.
pub(crate) fn api_version(obj: &Value, kind: &str) -> String {
    obj.get("apiVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or_else(|| schema::api_version_of(kind))
        .unwrap_or_else(|| "v1".to_string())
}

pub(crate) fn remove_managed_fields(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.shift_remove("managedFields");
    }
}

/// Stores `managed` in the object, or removes `managedFields` when nobody owns anything.
pub(crate) fn store(obj: &mut Value, managed: &Managed) {
    if managed.entries.is_empty() {
        remove_managed_fields(obj);
        return;
    }
    if let Some(root) = obj.as_object_mut() {
        let meta = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("managedFields".to_string(), managed.encode());
        }
    }
}

/// kube-apiserver's `IgnoreManagedFieldsTimestampsTransformer`: when a write changes nothing but
/// managedFields timestamps, the old managedFields are kept, so that a no-op apply or update stays
/// a no-op (and does not bump the resourceVersion).
pub(crate) fn keep_timestamps_of_no_op(old: Option<&Value>, new: &mut Value) {
    let Some(old) = old else { return };
    let (Some(old_list), Some(new_list)) = (
        old.pointer("/metadata/managedFields")
            .and_then(Value::as_array),
        new.pointer("/metadata/managedFields")
            .and_then(Value::as_array),
    ) else {
        return;
    };
    let without_time = |e: &Value| {
        let mut e = e.clone();
        if let Some(m) = e.as_object_mut() {
            m.shift_remove("time");
        }
        e
    };
    if old_list.len() != new_list.len()
        || old_list
            .iter()
            .zip(new_list)
            .any(|(a, b)| without_time(a) != without_time(b))
    {
        return;
    }
    let mut old_rest = old.clone();
    let mut new_rest = new.clone();
    remove_managed_fields(&mut old_rest);
    remove_managed_fields(&mut new_rest);
    if old_rest != new_rest {
        return;
    }
    let old_list = old_list.clone();
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".to_string(), Value::Array(old_list));
    }
}

/// Whether `managedFields` asks for a reset (`isResetManagedFields`): an empty list, or a list of
/// one empty entry.
fn is_reset(obj: &Value) -> bool {
    match obj.pointer("/metadata/managedFields") {
        Some(Value::Array(list)) => match list.as_slice() {
            [] => true,
            [only] => only.as_object().is_some_and(Map::is_empty),
            _ => false,
        },
        _ => false,
    }
}

/// Records a non-apply write (create, update, patch) of the main resource: `manager` (operation
/// `Update`) now owns every field it added or changed relative to `old` (every field, on create,
/// when `old` is `None`), and those fields leave the other managers. Call it with the object as
/// it will be stored: after the patch is applied and defaults are set, before server-assigned
/// fields (a ClusterIP, say) are filled in, so that they are not credited to the client.
///
/// `managedFields` sent in `new` replace the stored ones when they decode (an empty list or
/// `[{}]` clears them); otherwise `old`'s are used. If neither decodes, the object is stored
/// without managedFields, which is how kube-apiserver recovers from corrupt bookkeeping. This
/// never fails in practice; the `Result` leaves room for stricter callers.
pub fn update_managed_fields(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    now: &str,
) -> Result<(), PatchError> {
    record_update(old, new, manager, now, None)
}

/// [`update_managed_fields`] for a write through a subresource (`status`): the entry records the
/// subresource, `managedFields` in the request are ignored, and the fields the subresource cannot
/// change (`.spec` for `status`) are not owned.
pub fn update_managed_fields_subresource(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    now: &str,
    subresource: &str,
) -> Result<(), PatchError> {
    record_update(
        old,
        new,
        manager,
        now,
        Some(subresource).filter(|s| !s.is_empty()),
    )
}

fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    now: &str,
    subresource: Option<&str>,
) -> Result<(), PatchError> {
    let kind = new
        .get("kind")
        .and_then(Value::as_str)
        .or_else(|| old.and_then(|o| o.get("kind")).and_then(Value::as_str))
        .unwrap_or_default()
        .to_string();
    let api_version = api_version(new, &kind);
    let from_live = || match old {
        None => Managed::default(),
        Some(o) => Managed::decode(o).unwrap_or_default(),
    };
    let mut managed = if subresource.is_some() {
        from_live()
    } else if is_reset(new) {
        Managed::default()
    } else {
        match Managed::decode(new) {
            Ok(m) if !m.entries.is_empty() => m,
            _ => from_live(),
        }
    };

    let id = ManagerId::new(manager, Operation::Update, &api_version, subresource);
    managed.record_update(old, new, &kind, &id, now);
    managed.cap_update_managers();
    store(new, &managed);
    keep_timestamps_of_no_op(old, new);
    Ok(())
}

/// The `fieldsV1` set of every field an object sets, as server-side apply computes it for an
/// applied configuration (leaves, list items with `.`, map entries; no identity stripping).
pub fn fields_v1_of(obj: &Value, kind: &str) -> Value {
    let mut obj = obj.clone();
    remove_managed_fields(&mut obj);
    typed::to_field_set(&obj, schema::of(kind))
        .unwrap_or_default()
        .to_fields_v1()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T1: &str = "2024-05-01T10:00:00Z";
    const T2: &str = "2024-05-01T11:00:00Z";

    fn entries(obj: &Value) -> Vec<Value> {
        obj["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn entry<'a>(list: &'a [Value], manager: &str) -> &'a Value {
        list.iter()
            .find(|e| e["manager"] == manager)
            .unwrap_or_else(|| panic!("no entry for {manager}: {list:?}"))
    }

    /// A Service as `kubectl create -f` sends it once decoding has set the defaults.
    fn created_service() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
                "selector": {"app": "web"},
                "sessionAffinity": "None",
                "type": "ClusterIP"
            }
        })
    }

    #[test]
    fn a_create_owns_every_field_in_kube_apiserver_shape() {
        let mut svc = created_service();
        update_managed_fields(None, &mut svc, "kubectl-create", T1).expect("recorded");
        // The entry kube-apiserver writes for the same `kubectl create`: labels and ports get a
        // "." because the empty Service has neither; spec and metadata exist in it, so they don't.
        assert_eq!(
            svc["metadata"]["managedFields"],
            json!([{
                "manager": "kubectl-create",
                "operation": "Update",
                "apiVersion": "v1",
                "time": T1,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {
                        "f:ports": {
                            ".": {},
                            "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}
                        },
                        "f:selector": {},
                        "f:sessionAffinity": {},
                        "f:type": {}
                    }
                }
            }])
        );
    }

    #[test]
    fn a_created_deployment_owns_its_containers_without_a_dot_on_the_list() {
        let mut d = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}
                }
            }
        });
        update_managed_fields(None, &mut d, "kubectl-create", T1).expect("recorded");
        let fields = &entries(&d)[0]["fieldsV1"];
        assert_eq!(
            fields["f:spec"],
            json!({
                "f:replicas": {},
                "f:selector": {},
                "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}}, "f:type": {}},
                "f:template": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                        ".": {}, "f:image": {}, "f:name": {}, "f:resources": {}
                    }}}
                }
            })
        );
    }

    #[test]
    fn an_update_takes_the_changed_fields_from_the_previous_owner() {
        let mut svc = created_service();
        update_managed_fields(None, &mut svc, "kubectl-create", T1).expect("recorded");
        let old = svc.clone();
        svc["spec"]["selector"] = json!({"app": "web2"});
        svc["metadata"]["labels"]["team"] = json!("blue");
        update_managed_fields(Some(&old), &mut svc, "kubectl-edit", T2).expect("recorded");
        let list = entries(&svc);
        assert_eq!(list.len(), 2);
        let create = entry(&list, "kubectl-create");
        assert_eq!(create["time"], T1);
        assert!(create["fieldsV1"]["f:spec"].get("f:selector").is_none());
        let edit = entry(&list, "kubectl-edit");
        assert_eq!(edit["time"], T2);
        assert_eq!(
            edit["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:team": {}}}, "f:spec": {"f:selector": {}}})
        );
    }

    #[test]
    fn a_write_that_changes_nothing_leaves_managed_fields_alone() {
        let mut svc = created_service();
        update_managed_fields(None, &mut svc, "kubectl-create", T1).expect("recorded");
        let old = svc.clone();
        update_managed_fields(Some(&old), &mut svc, "kubectl-replace", T2).expect("recorded");
        assert_eq!(svc, old);
    }

    #[test]
    fn status_changes_through_the_main_resource_are_not_owned_but_through_status_they_are() {
        let mut svc = created_service();
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
        update_managed_fields(None, &mut svc, "kubectl-create", T1).expect("recorded");
        assert!(entries(&svc)[0]["fieldsV1"].get("f:status").is_none());

        let old = svc.clone();
        svc["status"]["loadBalancer"]["ingress"] = json!([{"ip": "192.0.2.11", "ipMode": "VIP"}]);
        svc["spec"]["type"] = json!("LoadBalancer");
        update_managed_fields_subresource(Some(&old), &mut svc, "switchyard-lb", T2, "status")
            .expect("recorded");
        let list = entries(&svc);
        let lb = entry(&list, "switchyard-lb");
        assert_eq!(lb["subresource"], "status");
        assert_eq!(
            lb["fieldsV1"],
            json!({"f:status": {"f:loadBalancer": {"f:ingress": {}}}})
        );
    }

    #[test]
    fn unreadable_managed_fields_are_reset() {
        let mut old = created_service();
        old["metadata"]["managedFields"] =
            json!([{"manager": "x", "operation": "Sideways", "apiVersion": "v1"}]);
        let mut new = old.clone();
        new["spec"]["type"] = json!("NodePort");
        update_managed_fields(Some(&old), &mut new, "kubectl-edit", T2).expect("never fails");
        assert_eq!(
            entries(&new),
            vec![json!({
                "manager": "kubectl-edit", "operation": "Update", "apiVersion": "v1", "time": T2,
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:type": {}}}
            })]
        );
    }

    #[test]
    fn an_empty_managed_fields_list_in_the_request_clears_the_history() {
        let mut svc = created_service();
        update_managed_fields(None, &mut svc, "kubectl-create", T1).expect("recorded");
        let old = svc.clone();
        svc["metadata"]["managedFields"] = json!([]);
        update_managed_fields(Some(&old), &mut svc, "kubectl-edit", T2).expect("recorded");
        assert!(svc["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn managed_fields_sent_with_an_update_replace_the_stored_ones() {
        let mut svc = created_service();
        update_managed_fields(None, &mut svc, "kubectl-create", T1).expect("recorded");
        let old = svc.clone();
        svc["metadata"]["managedFields"][0]["manager"] = json!("renamed");
        update_managed_fields(Some(&old), &mut svc, "kubectl-edit", T2).expect("recorded");
        assert_eq!(entries(&svc)[0]["manager"], "renamed");
    }

    #[test]
    fn an_empty_manager_name_is_recorded_as_unknown() {
        let mut svc = created_service();
        update_managed_fields(None, &mut svc, "", T1).expect("recorded");
        assert_eq!(entries(&svc)[0]["manager"], "unknown");
    }

    #[test]
    fn more_than_ten_updaters_fold_the_oldest_into_ancient_changes() {
        let mut cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        for i in 0..12 {
            let old = cm.clone();
            cm["data"][format!("k{i}")] = json!("v");
            update_managed_fields(
                Some(&old),
                &mut cm,
                &format!("writer-{i:02}"),
                &format!("2024-05-01T10:{i:02}:00Z"),
            )
            .expect("recorded");
        }
        let list = entries(&cm);
        assert_eq!(list.len(), 10);
        let ancient = entry(&list, "ancient-changes");
        assert_eq!(
            ancient["fieldsV1"],
            json!({"f:data": {"f:k0": {}, "f:k1": {}, "f:k2": {}}})
        );
        assert_eq!(ancient["time"], "2024-05-01T10:02:00Z");
        assert!(list.iter().all(|e| e["manager"] != "writer-00"));
    }

    #[test]
    fn timestamps_are_written_in_whole_utc_seconds() {
        let mut svc = created_service();
        update_managed_fields(None, &mut svc, "m", "2024-05-01T12:00:00.123456+02:00")
            .expect("recorded");
        assert_eq!(entries(&svc)[0]["time"], "2024-05-01T10:00:00Z");
    }

    #[test]
    fn fields_v1_of_lists_every_field_an_object_sets() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": "v"}});
        assert_eq!(
            fields_v1_of(&cm, "ConfigMap"),
            json!({"f:apiVersion": {}, "f:data": {"f:k": {}}, "f:kind": {}, "f:metadata": {"f:labels": {"f:a": {}}, "f:name": {}}})
        );
    }
}
