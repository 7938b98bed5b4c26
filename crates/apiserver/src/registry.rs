//! The generic REST storage: create, get, list, update, patch and delete of any served resource
//! over the store, with Kubernetes semantics (resourceVersion = store revision, optimistic
//! concurrency, generation, status subresources, finalizers, graceful pod deletion, dry run,
//! managed fields). Resource-specific behaviour is a small set of hooks keyed by kind: defaulting
//! and validation from `switchyard_api`, Service allocation from [`crate::alloc`].
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; it is filled in from the key's
//! mod_revision on every read, so it can never disagree with the store.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use switchyard_api::object;
use switchyard_api::resources::{ResourceInfo, Subresource};
use switchyard_api::selector::{FieldSelector, LabelSelector};
use switchyard_api::status::{FieldError, FieldErrorType, StatusError};
use switchyard_api::{defaults, patch, validation};
use switchyard_store::{
    Compare, KeyValue, ListOptions, Op, Revision, SharedStore, StoreError, Txn, TxnOutcome,
};

use crate::alloc::{Held, ServiceAllocator};

/// How many times a write retries when it loses a race it can recover from (an automatically
/// picked IP or port taken meanwhile, a patch whose base changed).
const MAX_ATTEMPTS: usize = 16;

/// What to do with fields the schema does not know (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// Per-request context of a write.
#[derive(Clone, Debug)]
pub struct WriteCtx {
    pub now: jiff::Timestamp,
    pub dry_run: bool,
    pub field_manager: String,
    pub field_validation: FieldValidation,
    /// Who writes: the authenticated user, or [`SYSTEM_USER`] for the server's own writes.
    pub user: String,
}

/// The user of the API server's own writes (bootstrap, namespace finalization).
pub const SYSTEM_USER: &str = "system:apiserver";

/// The result of a write: the object as stored, whether it was created, and warnings for the
/// client (`Warning` headers).
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

/// Options of a delete (`DeleteOptions`, from the body or the query).
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    /// `propagationPolicy` (or the legacy `orphanDependents`); `None` keeps the object's
    /// garbage-collection finalizers as they are (Background by default).
    pub propagation: Option<Propagation>,
}

/// What happens to an object's dependents when it is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// The owner goes at once; the garbage collector deletes the dependents after.
    Background,
    /// The owner waits (finalizer `foregroundDeletion`) until the collector has deleted them.
    Foreground,
    /// The owner waits (finalizer `orphan`) until the collector has removed its owner references.
    Orphan,
}

const FINALIZER_ORPHAN: &str = "orphan";
const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// The finalizers after applying `propagation` (updateForGracefulDeletionAndFinalizers in
/// k8s.io/apiserver/pkg/registry/generic/registry/store.go).
fn gc_finalizers(mut finalizers: Vec<String>, propagation: Option<Propagation>) -> Vec<String> {
    let (add, remove): (&[&str], &[&str]) = match propagation {
        None => return finalizers,
        Some(Propagation::Background) => (&[], &[FINALIZER_ORPHAN, FINALIZER_FOREGROUND]),
        Some(Propagation::Foreground) => (&[FINALIZER_FOREGROUND], &[FINALIZER_ORPHAN]),
        Some(Propagation::Orphan) => (&[FINALIZER_ORPHAN], &[FINALIZER_FOREGROUND]),
    };
    finalizers.retain(|f| !remove.contains(&f.as_str()));
    for f in add {
        if !finalizers.iter().any(|x| x == f) {
            finalizers.push(f.to_string());
        }
    }
    finalizers
}

/// The patch formats kube-apiserver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// List parameters.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: Option<LabelSelector>,
    pub field_selector: Option<FieldSelector>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// `resourceVersion` with `resourceVersionMatch=Exact` (or a continue token): read at it.
    pub exact_revision: Option<Revision>,
}

pub struct Registry {
    pub store: SharedStore,
    pub services: Arc<ServiceAllocator>,
}

pub fn store_error(e: StoreError) -> StatusError {
    match e {
        StoreError::Compacted {
            requested,
            compacted,
        } => StatusError::expired(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        StoreError::FutureRevision { requested, current } => StatusError::timeout(format!(
            "Too large resource version: {requested}, current: {current}"
        )),
        other => StatusError::internal(other.to_string()),
    }
}

/// Decode a stored value and stamp its resourceVersion.
pub fn from_kv(kv: &KeyValue) -> Result<Value, StatusError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| StatusError::internal(format!("decoding stored object {}: {e}", kv.key)))?;
    object::metadata_mut(&mut obj).insert(
        "resourceVersion".into(),
        Value::String(kv.mod_revision.to_string()),
    );
    Ok(obj)
}

/// A stored value as JSON with its resourceVersion, without decoding it (see
/// [`object::splice_resource_version`]); `None` if the bytes do not have the expected shape.
pub fn raw_with_rv(kv: &KeyValue) -> Option<Vec<u8>> {
    object::splice_resource_version(&kv.value, kv.mod_revision)
}

fn to_bytes(obj: &Value) -> Bytes {
    let mut obj = obj.clone();
    object::metadata_mut(&mut obj).remove("resourceVersion");
    Bytes::from(serde_json::to_vec(&obj).expect("a serde_json::Value always serializes"))
}

/// A continue token: where the next page starts and the revision the list is read at, as
/// kube-apiserver encodes it (base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"key"}`).
fn encode_continue(rv: Revision, start: &str) -> String {
    use base64::Engine;
    let j = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64::engine::general_purpose::URL_SAFE.encode(j.to_string())
}

fn decode_continue(token: &str) -> Result<(Revision, String), StatusError> {
    use base64::Engine;
    let bad = || StatusError::bad_request(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token))
        .map_err(|_| bad())?;
    let j: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = j.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = j
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_string();
    Ok((rv, start))
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Whether `obj` passes the label and field selectors.
pub fn selected(r: &ResourceInfo, obj: &Value, params: &ListParams) -> bool {
    if let Some(ls) = &params.label_selector {
        if !ls.matches(&switchyard_api::selector::labels_of(obj)) {
            return false;
        }
    }
    if let Some(fs) = &params.field_selector {
        if !fs.matches(obj, r) {
            return false;
        }
    }
    true
}

/// Everything in `obj` except metadata and status (what `generation` counts changes of).
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

impl Registry {
    pub fn new(store: SharedStore, services: Arc<ServiceAllocator>) -> Self {
        Self { store, services }
    }

    async fn read(&self, key: &str) -> Result<Option<(Value, Revision)>, StatusError> {
        match self.store.get(key).await.map_err(store_error)? {
            Some(kv) => Ok(Some((from_kv(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub async fn get(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, StatusError> {
        match self.read(&r.key(ns, name)).await? {
            Some((obj, _)) => Ok(obj),
            None => Err(StatusError::not_found(r.group, r.plural, name)),
        }
    }

    /// List objects; returns (items, resourceVersion, continue token, remaining count).
    pub async fn list(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        params: &ListParams,
    ) -> Result<(Vec<Value>, Revision, Option<String>, Option<usize>), StatusError> {
        self.list_items(r, ns, params, |kv| {
            let obj = from_kv(kv)?;
            Ok(selected(r, &obj, params).then_some(obj))
        })
        .await
    }

    /// List objects as JSON bytes, without decoding them when no selector needs to look inside
    /// (the resourceVersion is spliced into the stored bytes). What clients that list whole
    /// collections (informers, controllers) get served fastest.
    pub async fn list_raw(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        params: &ListParams,
    ) -> Result<(Vec<Vec<u8>>, Revision, Option<String>, Option<usize>), StatusError> {
        self.list_items(r, ns, params, |kv| {
            if params.label_selector.is_none() && params.field_selector.is_none() {
                if let Some(raw) = raw_with_rv(kv) {
                    return Ok(Some(raw));
                }
            }
            let obj = from_kv(kv)?;
            Ok(selected(r, &obj, params).then(|| serde_json::to_vec(&obj).unwrap_or_default()))
        })
        .await
    }

    /// The paging loop shared by [`Self::list`] and [`Self::list_raw`]: `item` turns a stored
    /// key into an item, or `None` when the selectors leave it out.
    async fn list_items<T>(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        params: &ListParams,
        item: impl Fn(&KeyValue) -> Result<Option<T>, StatusError>,
    ) -> Result<(Vec<T>, Revision, Option<String>, Option<usize>), StatusError> {
        let prefix = r.namespace_prefix(ns);
        let (mut revision, mut start_after) = match &params.continue_token {
            Some(t) => {
                let (rv, start) = decode_continue(t)?;
                (Some(rv), Some(format!("{prefix}{start}")))
            }
            None => (params.exact_revision, None),
        };
        let limit = params.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        loop {
            let chunk = limit.map(|l| (l - items.len()).max(64));
            let res = self
                .store
                .list(&prefix, ListOptions { revision, limit: chunk, start_after: start_after.clone() })
                .await
                .map_err(|e| match (e, &params.continue_token) {
                    (StoreError::Compacted { .. }, Some(_)) => StatusError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                    ),
                    (e, _) => store_error(e),
                })?;
            revision = Some(res.revision);
            let n = res.kvs.len();
            let mut last_key = None;
            for kv in &res.kvs {
                last_key = Some(kv.key.clone());
                if let Some(obj) = item(kv)? {
                    items.push(obj);
                    if limit.is_some_and(|l| items.len() >= l) {
                        break;
                    }
                }
            }
            let consumed_all_of_chunk = last_key.as_ref() == res.kvs.last().map(|kv| &kv.key);
            let more = res.remaining > 0 || !consumed_all_of_chunk;
            if let Some(l) = limit {
                if items.len() >= l && more {
                    let last = last_key.unwrap_or_default();
                    let token =
                        encode_continue(res.revision, last.strip_prefix(&prefix).unwrap_or(&last));
                    let remaining =
                        if params.label_selector.is_none() && params.field_selector.is_none() {
                            let after_in_chunk = n - res
                                .kvs
                                .iter()
                                .position(|kv| Some(&kv.key) == Some(&last))
                                .map_or(n, |p| p + 1);
                            Some(res.remaining + after_in_chunk)
                        } else {
                            None
                        };
                    return Ok((items, res.revision, Some(token), remaining));
                }
            }
            if res.remaining == 0 || n == 0 {
                return Ok((items, res.revision, None, None));
            }
            start_after = last_key;
        }
    }

    /// Admission shared by create and update: decode strictly, default, validate, allocate.
    fn decode_body(
        &self,
        r: &ResourceInfo,
        body: Value,
        ctx: &WriteCtx,
        warnings: &mut Vec<String>,
    ) -> Result<Value, StatusError> {
        let decoded = object::decode(r.kind, body).map_err(|e| {
            StatusError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                r.kind, r.version, r.kind
            ))
        })?;
        if !decoded.unknown_fields.is_empty() {
            match ctx.field_validation {
                FieldValidation::Strict => {
                    let list: Vec<String> = decoded
                        .unknown_fields
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect();
                    return Err(StatusError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                        r.kind,
                        r.version,
                        r.kind,
                        list.join(", ")
                    )));
                }
                FieldValidation::Warn => {
                    warnings.extend(
                        decoded
                            .unknown_fields
                            .iter()
                            .map(|f| format!("unknown field \"{f}\"")),
                    );
                }
                FieldValidation::Ignore => {}
            }
        }
        Ok(decoded.object)
    }

    fn check_identity(
        r: &ResourceInfo,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), StatusError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version.is_empty() && kind.is_empty() {
            obj["apiVersion"] = Value::String(r.api_version());
            obj["kind"] = Value::String(r.kind.to_string());
        } else if kind != r.kind {
            return Err(StatusError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                r.kind
            )));
        } else if api_version != r.api_version() {
            return Err(StatusError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                r.api_version()
            )));
        }
        if r.namespaced {
            let ns = ns.unwrap_or("default");
            match object::namespace(obj) {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(StatusError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    object::metadata_mut(obj).insert("namespace".into(), Value::String(ns.to_string()));
                }
            }
        } else {
            object::metadata_mut(obj).remove("namespace");
        }
        Ok(())
    }

    async fn check_namespace(&self, r: &ResourceInfo, ns: Option<&str>) -> Result<(), StatusError> {
        if !r.namespaced {
            return Ok(());
        }
        let ns = ns.unwrap_or("default");
        let nsr =
            switchyard_api::resources::find("", "v1", "namespaces").expect("namespaces are served");
        match self.read(&nsr.key(None, ns)).await? {
            None => Err(StatusError::not_found("", "namespaces", ns)),
            Some((n, _)) if object::is_deleting(&n) => Err(StatusError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                r.plural,
                object::name(&n)
            ))),
            _ => Ok(()),
        }
    }

    /// Create an object.
    pub async fn create(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<Written, StatusError> {
        let mut warnings = Vec::new();
        let mut body = body;
        Self::check_identity(r, ns, &mut body)?;
        // generateName, as kube-apiserver: prefix + 5 random characters.
        if object::name(&body).is_empty() {
            if let Some(prefix) = body
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .map(str::to_string)
            {
                const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                let suffix: String = (0..5)
                    .map(|_| ALPHABET[(rand::random::<u32>() as usize) % ALPHABET.len()] as char)
                    .collect();
                object::metadata_mut(&mut body)
                    .insert("name".into(), Value::String(format!("{prefix}{suffix}")));
            }
        }
        let mut obj = self.decode_body(r, body, ctx, &mut warnings)?;
        self.check_namespace(r, ns).await?;
        let meta = object::metadata_mut(&mut obj);
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(k);
        }
        meta.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        meta.insert("creationTimestamp".into(), Value::String(rfc3339(ctx.now)));
        if r.has_subresource(Subresource::Status) || obj.get("spec").is_some() {
            object::metadata_mut(&mut obj).insert("generation".into(), Value::from(1));
        }
        prepare_for_create(r, &mut obj);
        defaults::apply_defaults(r, &mut obj);
        let errs: Vec<FieldError> =
            without_pending_allocations(r, &obj, validation::validate_create(r, &obj));
        if !errs.is_empty() {
            return Err(StatusError::invalid(
                r.group,
                r.kind,
                object::name(&obj),
                &errs,
            ));
        }
        // "-": the caller (apply creating the object) has recorded the managed fields already.
        if ctx.field_manager != "-" {
            if let Err(e) =
                patch::update_managed_fields(None, &mut obj, &ctx.field_manager, &rfc3339(ctx.now))
            {
                tracing::debug!(error = %e, "managed fields not tracked");
            }
        }
        let key = r.key(
            ns.filter(|_| r.namespaced)
                .or(r.namespaced.then_some("default")),
            object::name(&obj),
        );
        let written = self.commit(r, &key, obj, None, ctx).await?;
        Ok(Written {
            object: written,
            created: true,
            warnings,
        })
    }

    /// Write `obj` at `key` guarded by `prev` (None = must not exist), with the allocations a
    /// Service needs, retrying automatically picked allocations that lose a race.
    async fn commit(
        &self,
        r: &ResourceInfo,
        key: &str,
        obj: Value,
        prev: Option<(&Value, Revision)>,
        ctx: &WriteCtx,
    ) -> Result<Value, StatusError> {
        let name = object::name(&obj).to_string();
        for _ in 0..MAX_ATTEMPTS {
            let mut obj = obj.clone();
            let plan = if r.kind == "Service" && r.group.is_empty() {
                Some(self.services.plan(&mut obj, prev.map(|(o, _)| o))?)
            } else {
                None
            };
            if ctx.dry_run {
                return Ok(obj);
            }
            let mut txn = Txn::new();
            txn.compares.push(match prev {
                Some((_, rev)) => Compare::ModRevision(key.to_string(), rev),
                None => Compare::Absent(key.to_string()),
            });
            txn.ops.push(Op::Put(key.to_string(), to_bytes(&obj)));
            if let Some(plan) = &plan {
                txn.compares.extend(plan.compares.iter().cloned());
                txn.ops.extend(plan.ops.iter().cloned());
            }
            match self.store.txn(txn).await.map_err(store_error)? {
                TxnOutcome::Applied(rev) => {
                    if plan.is_some() {
                        self.services.committed(
                            &prev.map(|(o, _)| Held::of(o)).unwrap_or_default(),
                            &Held::of(&obj),
                        );
                    }
                    object::metadata_mut(&mut obj)
                        .insert("resourceVersion".into(), Value::String(rev.to_string()));
                    return Ok(obj);
                }
                TxnOutcome::Failed { index: 0, .. } => {
                    return Err(match prev {
                        None => StatusError::already_exists(r.group, r.plural, &name),
                        Some(_) => modified(r, &name),
                    })
                }
                TxnOutcome::Failed { index, .. } => {
                    let plan = plan.expect("only allocation compares follow the object's own");
                    let Compare::Absent(taken) = &plan.compares[index - 1] else {
                        return Err(StatusError::internal("unexpected allocation compare"));
                    };
                    if plan.requested[index - 1] {
                        return Err(self.services.already_allocated(&obj, taken));
                    }
                    self.services.mark_taken(taken);
                }
            }
        }
        Err(StatusError::internal(format!(
            "could not allocate for {name} after {MAX_ATTEMPTS} attempts"
        )))
    }

    /// Replace an object (PUT), or its status (`sub` = Status).
    pub async fn update(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        body: Value,
        sub: Option<Subresource>,
        ctx: &WriteCtx,
    ) -> Result<Written, StatusError> {
        let mut body = body;
        Self::check_identity(r, ns, &mut body)?;
        if !object::name(&body).is_empty() && object::name(&body) != name {
            return Err(StatusError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object::name(&body)
            )));
        }
        let key = r.key(ns, name);
        let current = self.read(&key).await?;
        let Some((old, rev)) = current else {
            if allow_create_on_update(r) && sub.is_none() {
                object::metadata_mut(&mut body)
                    .insert("name".into(), Value::String(name.to_string()));
                return self.create(r, ns, body, ctx).await;
            }
            return Err(StatusError::not_found(r.group, r.plural, name));
        };
        if let Some(want) = object::resource_version(&body) {
            if want != rev.to_string() {
                return Err(modified(r, name));
            }
        }
        let mut warnings = Vec::new();
        let new = self.decode_body(r, body, ctx, &mut warnings)?;
        let object = self
            .finish_update(r, name, &key, new, (&old, rev), sub, ctx)
            .await?;
        Ok(Written {
            object,
            created: false,
            warnings,
        })
    }

    /// `POST pods/NAME/binding`: assigns a pending Pod to a node, the one way `spec.nodeName`
    /// changes after creation (BindingREST in pkg/registry/core/pod/storage). The Pod gets the
    /// node, the Binding's annotations and condition PodScheduled=True.
    pub async fn bind(
        &self,
        ns: &str,
        name: &str,
        binding: &Value,
        ctx: &WriteCtx,
    ) -> Result<(), StatusError> {
        let r = switchyard_api::resources::find("", "v1", "pods")
            .ok_or_else(|| StatusError::internal("pods"))?;
        if let Some(n) = binding.pointer("/metadata/name").and_then(Value::as_str) {
            if !n.is_empty() && n != name {
                return Err(StatusError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let target_kind = binding
            .pointer("/target/kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut errs = Vec::new();
        if node.is_empty() {
            errs.push(FieldError::required("target.name", ""));
        }
        if !target_kind.is_empty() && target_kind != "Node" {
            errs.push(FieldError::not_supported(
                "target.kind",
                target_kind,
                &["Node", "<empty>"],
            ));
        }
        if !errs.is_empty() {
            return Err(StatusError::invalid("", "Binding", name, &errs));
        }
        let key = r.key(Some(ns), name);
        let Some((old, rev)) = self.read(&key).await? else {
            return Err(StatusError::not_found(r.group, r.plural, name));
        };
        if let Some(uid) = binding.pointer("/metadata/uid").and_then(Value::as_str) {
            let current = old.pointer("/metadata/uid").and_then(Value::as_str);
            if !uid.is_empty() && Some(uid) != current {
                return Err(StatusError::conflict(
                    r.group,
                    r.plural,
                    name,
                    "the UID in the precondition does not match the UID in the object",
                ));
            }
        }
        if object::is_deleting(&old) {
            return Err(StatusError::conflict(
                r.group,
                r.plural,
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        let assigned = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !assigned.is_empty() {
            return Err(StatusError::conflict(
                r.group,
                r.plural,
                name,
                &format!("pod {name} is already assigned to node \"{assigned}\""),
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = Value::String(node.to_string());
        if let Some(annotations) = binding
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
        {
            let meta = object::metadata_mut(&mut new);
            let target = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(target) = target.as_object_mut() {
                for (k, v) in annotations {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        let condition = serde_json::json!({
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": null,
            "lastTransitionTime": rfc3339(ctx.now),
        });
        let status = new
            .as_object_mut()
            .ok_or_else(|| StatusError::internal("pod is not an object"))?
            .entry("status")
            .or_insert_with(|| serde_json::json!({}));
        if !status.is_object() {
            *status = serde_json::json!({});
        }
        let conditions = status.as_object_mut().map(|s| {
            s.entry("conditions")
                .or_insert_with(|| serde_json::json!([]))
        });
        if let Some(Value::Array(list)) = conditions {
            list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            list.push(condition);
        }
        self.commit(r, &key, new, Some((&old, rev)), ctx).await?;
        Ok(())
    }

    /// The common tail of update and patch: merge what the client may not change from the stored
    /// object, default, validate, and commit guarded by `rev`.
    #[allow(clippy::too_many_arguments)]
    async fn finish_update(
        &self,
        r: &ResourceInfo,
        name: &str,
        key: &str,
        mut new: Value,
        (old, rev): (&Value, Revision),
        sub: Option<Subresource>,
        ctx: &WriteCtx,
    ) -> Result<Value, StatusError> {
        match sub {
            Some(Subresource::Status) => {
                // Only status changes through /status.
                let status = new.get("status").cloned();
                let mut merged = old.clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                new = merged;
            }
            _ if r.has_subresource(Subresource::Status) => {
                // The main resource ignores status changes.
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            _ => {}
        }
        // System metadata the client cannot change.
        {
            let old_meta = old.get("metadata").cloned().unwrap_or_default();
            let meta = object::metadata_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        meta.insert(k.into(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
            meta.insert("name".into(), Value::String(name.to_string()));
            if meta.get("managedFields").is_none() {
                if let Some(mf) = old_meta.get("managedFields") {
                    meta.insert("managedFields".into(), mf.clone());
                }
            }
        }
        if r.kind == "Service" && r.group.is_empty() {
            // Carries over what was allocated and the client omitted.
            switchyard_api::service::default_service(&mut new, Some(old));
        } else {
            defaults::apply_defaults(r, &mut new);
        }
        if spec_part(&new) != spec_part(old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            object::metadata_mut(&mut new).insert("generation".into(), Value::from(g));
        }
        if r.kind == "Service"
            && r.group.is_empty()
            && new.pointer("/status/loadBalancer") != old.pointer("/status/loadBalancer")
            && ctx.user != crate::pki::CONTROLLER_MANAGER_USER
        {
            // CVE-2020-8554: whoever writes a Service's load-balancer ingress can have the
            // cluster's nodes send that address's traffic to the Service. Only the controller
            // manager, which allocates these addresses from the IPAddressPools, may set it.
            return Err(StatusError::forbidden(format!(
                "services \"{name}\" is forbidden: User \"{}\" cannot set status.loadBalancer: only the load-balancer IP controller ({}) writes it",
                ctx.user,
                crate::pki::CONTROLLER_MANAGER_USER
            )));
        }
        let errs = without_pending_allocations(r, &new, validation::validate_update(r, &new, old));
        if !errs.is_empty() {
            return Err(StatusError::invalid(r.group, r.kind, name, &errs));
        }
        if ctx.field_manager != "-" {
            let tracked = match sub {
                Some(Subresource::Status) => patch::update_managed_fields_subresource(
                    Some(old),
                    &mut new,
                    &ctx.field_manager,
                    &rfc3339(ctx.now),
                    "status",
                ),
                _ => patch::update_managed_fields(
                    Some(old),
                    &mut new,
                    &ctx.field_manager,
                    &rfc3339(ctx.now),
                ),
            };
            if let Err(e) = tracked {
                tracing::debug!(error = %e, "managed fields not tracked");
            }
        }
        // A deleting object whose last finalizer is gone is deleted now.
        if object::is_deleting(&new)
            && object::finalizers(&new).is_empty()
            && !has_spec_finalizers(&new)
            && !is_pending_graceful(r, &new)
        {
            if ctx.dry_run {
                return Ok(new);
            }
            return self.remove(r, key, &new, old, rev).await;
        }
        // A write that changes nothing is not written and keeps the resourceVersion, as
        // kube-apiserver's GuaranteedUpdate skips an update whose bytes equal the stored ones.
        let mut unchanged = new.clone();
        object::metadata_mut(&mut unchanged)
            .insert("resourceVersion".into(), Value::String(rev.to_string()));
        if unchanged == *old {
            return Ok(unchanged);
        }
        self.commit(r, key, new, Some((old, rev)), ctx).await
    }

    /// Patch an object or its status/scale.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        body: &[u8],
        sub: Option<Subresource>,
        force: bool,
        ctx: &WriteCtx,
    ) -> Result<Written, StatusError> {
        let patch_doc: Value = match patch_type {
            PatchType::Apply => crate::codec::decode_yaml_or_json(body)?,
            _ => serde_json::from_slice(body)
                .map_err(|e| StatusError::bad_request(format!("error decoding patch: {e}")))?,
        };
        let key = r.key(ns, name);
        for _ in 0..MAX_ATTEMPTS {
            let current = self.read(&key).await?;
            let (old, rev) = match current {
                Some(c) => c,
                None if patch_type == PatchType::Apply && sub.is_none() => {
                    let mut applied = patch_doc.clone();
                    Self::check_identity(r, ns, &mut applied)?;
                    let mut obj = patch::apply(
                        None,
                        &applied,
                        &ctx.field_manager,
                        force,
                        r.kind,
                        &rfc3339(ctx.now),
                    )
                    .map_err(patch_error)?;
                    object::metadata_mut(&mut obj)
                        .insert("name".into(), Value::String(name.to_string()));
                    let ctx2 = WriteCtx {
                        field_manager: "-".into(),
                        ..ctx.clone()
                    };
                    let mut w = self.create(r, ns, obj, &ctx2).await?;
                    w.created = true;
                    return Ok(w);
                }
                None => return Err(StatusError::not_found(r.group, r.plural, name)),
            };
            let patched = match patch_type {
                PatchType::Json => patch::json_patch(&old, &patch_doc).map_err(patch_error)?,
                PatchType::Merge => {
                    patch::check_merge_patch(&patch_doc).map_err(patch_error)?;
                    patch::merge_patch(&old, &patch_doc)
                }
                PatchType::Strategic => {
                    patch::strategic_merge_patch(&old, &patch_doc, r.kind).map_err(patch_error)?
                }
                PatchType::Apply => {
                    let mut applied = patch_doc.clone();
                    Self::check_identity(r, ns, &mut applied)?;
                    patch::apply(
                        Some(&old),
                        &applied,
                        &ctx.field_manager,
                        force,
                        r.kind,
                        &rfc3339(ctx.now),
                    )
                    .map_err(patch_error)?
                }
            };
            // A patch that names a resourceVersion is a precondition (a JSON patch names it
            // through its operations: the patched object's resourceVersion then differs).
            let explicit_rv = match patch_type {
                PatchType::Json => patched
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .filter(|v| {
                        old.pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                            != Some(*v)
                    })
                    .map(str::to_string),
                _ => patch_doc
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            if let Some(want) = explicit_rv.as_deref().filter(|s| !s.is_empty()) {
                if want != rev.to_string() {
                    return Err(modified(r, name));
                }
            }
            let mut warnings = Vec::new();
            let mut new = self.decode_body(r, patched, ctx, &mut warnings)?;
            let ctx2 = if patch_type == PatchType::Apply {
                WriteCtx {
                    field_manager: "-".into(),
                    ..ctx.clone()
                }
            } else {
                ctx.clone()
            };
            object::metadata_mut(&mut new).remove("resourceVersion");
            match self
                .finish_update(r, name, &key, new, (&old, rev), sub, &ctx2)
                .await
            {
                Err(e) if e.reason == "Conflict" && explicit_rv.is_none() => continue,
                Err(e) => return Err(e),
                Ok(object) => {
                    return Ok(Written {
                        object,
                        created: false,
                        warnings,
                    })
                }
            }
        }
        Err(StatusError::conflict(
            r.group,
            r.plural,
            name,
            "too many concurrent writes, try again",
        ))
    }

    /// Physically remove an object and release what `stored` (the version at `rev`) holds;
    /// `obj` is what the client gets back. Only the stored version's allocation keys are its
    /// own: an update that empties the finalizers may name ports it never got (kube-apiserver
    /// likewise releases what storage returned from the delete).
    async fn remove(
        &self,
        r: &ResourceInfo,
        key: &str,
        obj: &Value,
        stored: &Value,
        rev: Revision,
    ) -> Result<Value, StatusError> {
        let mut txn = Txn::new()
            .when(Compare::ModRevision(key.to_string(), rev))
            .delete(key.to_string());
        let held = if r.kind == "Service" && r.group.is_empty() {
            Held::of(stored)
        } else {
            Held::default()
        };
        for k in held.keys() {
            txn = txn.delete(k);
        }
        match self.store.txn(txn).await.map_err(store_error)? {
            TxnOutcome::Applied(_) => {
                self.services.committed(&held, &Held::default());
                Ok(obj.clone())
            }
            TxnOutcome::Failed { .. } => Err(modified(r, object::name(obj))),
        }
    }

    /// Delete an object: at once, or by marking it (finalizers, graceful pod deletion).
    /// Returns the object and whether it is gone.
    pub async fn delete(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
        ctx: &WriteCtx,
    ) -> Result<(Value, bool), StatusError> {
        let key = r.key(ns, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some((obj, rev)) = self.read(&key).await? else {
                return Err(StatusError::not_found(r.group, r.plural, name));
            };
            if let Some(uid) = &opts.precondition_uid {
                if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                    return Err(StatusError::conflict(
                        r.group,
                        r.plural,
                        name,
                        &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")),
                    ));
                }
            }
            if let Some(want) = &opts.precondition_resource_version {
                if *want != rev.to_string() {
                    return Err(StatusError::conflict(
                        r.group,
                        r.plural,
                        name,
                        &format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"),
                    ));
                }
            }
            let grace = graceful_period(r, &obj, opts);
            let current_finalizers = object::finalizers(&obj);
            let finalizers = gc_finalizers(current_finalizers.clone(), opts.propagation);
            let has_finalizers = !finalizers.is_empty();
            if grace.is_none() && !has_finalizers {
                if ctx.dry_run {
                    return Ok((obj, true));
                }
                match self.remove(r, &key, &obj, &obj, rev).await {
                    Ok(o) => return Ok((o, true)),
                    Err(e) if e.reason == "Conflict" => continue,
                    Err(e) => return Err(e),
                }
            }
            // Mark for deletion: deletionTimestamp = now + grace.
            let mut marked = obj.clone();
            let secs = grace.unwrap_or(0);
            let already = object::is_deleting(&obj);
            let current_grace = obj
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            let shortens = !already || current_grace.is_none_or(|g| secs < g);
            if !shortens && finalizers == current_finalizers {
                return Ok((obj, false));
            }
            let meta = object::metadata_mut(&mut marked);
            if shortens {
                let at = ctx.now + jiff::SignedDuration::from_secs(secs);
                meta.insert("deletionTimestamp".into(), Value::String(rfc3339(at)));
                meta.insert("deletionGracePeriodSeconds".into(), Value::from(secs));
            }
            if finalizers != current_finalizers {
                meta.insert("finalizers".into(), json!(finalizers));
            }
            if r.kind == "Namespace" && r.group.is_empty() {
                marked["status"]["phase"] = Value::String("Terminating".into());
            }
            if ctx.dry_run {
                return Ok((marked, false));
            }
            let mut txn = Txn::new().when(Compare::ModRevision(key.clone(), rev));
            txn.ops.push(Op::Put(key.clone(), to_bytes(&marked)));
            match self.store.txn(txn).await.map_err(store_error)? {
                TxnOutcome::Applied(rev) => {
                    object::metadata_mut(&mut marked)
                        .insert("resourceVersion".into(), Value::String(rev.to_string()));
                    return Ok((marked, false));
                }
                TxnOutcome::Failed { .. } => continue,
            }
        }
        Err(StatusError::conflict(
            r.group,
            r.plural,
            name,
            "too many concurrent writes, try again",
        ))
    }
}

/// The grace period a delete waits for, or None to delete at once. Pods bound to a node and not
/// yet finished wait for their node to stop them (the pod's terminationGracePeriodSeconds unless
/// the request says otherwise; 0 means at once: `--grace-period=0 --force`).
fn graceful_period(r: &ResourceInfo, obj: &Value, opts: &DeleteOpts) -> Option<i64> {
    if r.kind == "Namespace" && r.group.is_empty() {
        // The namespace finalizer empties it first.
        return Some(0).filter(|_| !object::finalizers(obj).is_empty() || has_spec_finalizers(obj));
    }
    if !(r.kind == "Pod" && r.group.is_empty()) {
        return None;
    }
    let scheduled = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = obj
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !scheduled || phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let grace = opts
        .grace_period_seconds
        .or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    if grace <= 0 {
        None
    } else {
        Some(grace)
    }
}

fn has_spec_finalizers(obj: &Value) -> bool {
    obj.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// A pod marked for graceful deletion stays until its node (or a zero-grace delete) removes it.
fn is_pending_graceful(r: &ResourceInfo, obj: &Value) -> bool {
    r.kind == "Pod"
        && r.group.is_empty()
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

/// kube-apiserver allocates a Service's healthCheckNodePort (in BeginCreate/BeginUpdate) before it
/// validates the Service; here the allocator fills it in at commit, after validation, so one that
/// is missing (0 is Go's "unset") is not an error yet.
fn without_pending_allocations(
    r: &ResourceInfo,
    obj: &Value,
    errs: Vec<FieldError>,
) -> Vec<FieldError> {
    if !(r.kind == "Service" && r.group.is_empty())
        || obj
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            != 0
    {
        return errs;
    }
    errs.into_iter()
        .filter(|e| !(e.kind == FieldErrorType::Required && e.field == "spec.healthCheckNodePort"))
        .collect()
}

/// Resources where PUT of a missing object creates it, as in Kubernetes.
fn allow_create_on_update(r: &ResourceInfo) -> bool {
    matches!(
        (r.group, r.kind),
        ("", "Endpoints") | ("", "Event") | ("coordination.k8s.io", "Lease")
    )
}

/// Status a client cannot set on create, as the Kubernetes strategies' PrepareForCreate.
fn prepare_for_create(r: &ResourceInfo, obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else { return };
    match (r.group, r.kind) {
        ("", "Service") => {
            m.insert("status".into(), json!({"loadBalancer": {}}));
        }
        ("apps", "Deployment") | ("apps", "ReplicaSet") => {
            m.insert("status".into(), json!({}));
        }
        ("", "Pod") => {
            m.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": "BestEffort"}),
            );
        }
        ("", "Namespace") => {
            m.insert("status".into(), json!({"phase": "Active"}));
        }
        _ => {}
    }
}

/// The 409 for a write based on a stale version of the object.
fn modified(r: &ResourceInfo, name: &str) -> StatusError {
    StatusError::conflict(
        r.group,
        r.plural,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

fn patch_error(e: patch::PatchError) -> StatusError {
    tracing::debug!(error = %e, "patch rejected");
    e.to_status_error()
}
