//! The pure core of the Deployment controller (`pkg/controller/deployment` in Kubernetes). From
//! one Deployment, the ReplicaSets of its namespace and its Pods, [`plan`] decides the writes of
//! one sync: adopt or release ReplicaSets, create the ReplicaSet of the current template (named
//! `<deployment>-<pod-template-hash>`, see [`pod_template_hash`]), scale ReplicaSets for a
//! RollingUpdate (bounded by maxSurge and maxUnavailable) or a Recreate, scale proportionally
//! when the Deployment is resized mid-rollout, keep the revision annotations, delete ReplicaSets
//! beyond `revisionHistoryLimit`, and compute the status and its Available and Progressing
//! conditions, which `kubectl rollout status` reads. Nothing here does IO; the time is passed in.
//!
//! Like Kubernetes, one sync takes one step (scale the new ReplicaSet up, or the old ones down)
//! and computes the status from the ReplicaSets as they will be after its writes; the next step
//! happens when the ReplicaSets' statuses change.
//!
//! The loop that runs it over the informers and writes through the API is [`controller`].

pub mod controller;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use switchyard_api::k8s::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use switchyard_api::k8s::api::core::v1::{Pod, PodTemplateSpec};
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as MetaLabelSelector, ObjectMeta, Time,
};
use switchyard_api::k8s::apimachinery::pkg::util::intstr::IntOrString;
use switchyard_api::selector::{LabelSelector, SelectorError};

use crate::controller_ref::{claim, controller_of, controller_ref};

/// `pod-template-hash`: added to a ReplicaSet's selector, template and labels so that the Pods
/// of two ReplicaSets of one Deployment never overlap.
pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// `deployment.kubernetes.io/revision`, on ReplicaSets and the Deployment.
pub const ANNOTATION_REVISION: &str = "deployment.kubernetes.io/revision";
/// `deployment.kubernetes.io/revision-history`: the earlier revisions of a ReplicaSet that was
/// rolled back to.
pub const ANNOTATION_REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `deployment.kubernetes.io/desired-replicas`: the Deployment's replicas when the ReplicaSet was
/// last scaled.
pub const ANNOTATION_DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `deployment.kubernetes.io/max-replicas`: replicas plus maxSurge at the same moment.
pub const ANNOTATION_MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const ANNOTATION_ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Longest revision-history annotation (`--deployment-controller-...`, default in Kubernetes).
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// The alphabet of `rand.SafeEncodeString`: no vowels (no words) and no look-alikes.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Condition types and reasons (`pkg/controller/deployment/util/deployment_util.go`).
pub const CONDITION_AVAILABLE: &str = "Available";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_REPLICA_FAILURE: &str = "ReplicaFailure";
pub const REASON_MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const REASON_MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
pub const REASON_NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const REASON_RS_UPDATED: &str = "ReplicaSetUpdated";
pub const REASON_NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const REASON_FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const REASON_TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const REASON_PAUSED: &str = "DeploymentPaused";
pub const REASON_RESUMED: &str = "DeploymentResumed";

/// The writes one sync of a Deployment asks for, to be made in this order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeploymentPlan {
    /// Orphan ReplicaSets to adopt (add the controller reference).
    pub adopt: Vec<String>,
    /// Owned ReplicaSets that no longer match the selector (remove the controller reference).
    pub release: Vec<String>,
    /// The ReplicaSet of the current template, named; create it.
    pub create: Option<ReplicaSet>,
    /// Owned ReplicaSets rewritten in full (replicas, annotations, minReadySeconds); replace
    /// them, with their resourceVersion as precondition.
    pub update: Vec<ReplicaSet>,
    /// Old ReplicaSets beyond the revision history limit; delete them.
    pub delete: Vec<String>,
    /// The new value of the Deployment's revision annotation, when it changes.
    pub revision: Option<String>,
    /// The new status, when it changes.
    pub status: Option<DeploymentStatus>,
    /// Sync again after this long (to notice the progress deadline passing).
    pub requeue_after: Option<Duration>,
}

/// Errors of [`plan`]; none is retryable without a change of the Deployment.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The selector cannot be converted to a label selector.
    #[error("invalid selector: {0}")]
    InvalidSelector(#[source] SelectorError),
    /// maxSurge or maxUnavailable is a string that is not a percentage.
    #[error("invalid value for IntOrString: invalid type: string is not a percentage: {0:?}")]
    InvalidIntOrPercent(String),
}

// ---------------------------------------------------------------------------------------------
// Pod template hash
// ---------------------------------------------------------------------------------------------

/// FNV-1a, 32 bits, as Go's `hash/fnv.New32a`.
fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `pod-template-hash` of a template, as Kubernetes' `controller.ComputeHash`: FNV-32a of
/// the template (with the collision count appended as 8 little-endian bytes when set), printed
/// in decimal and mapped character by character onto the safe alphabet. Kubernetes hashes Go's
/// printed form of the struct, which we cannot reproduce; we hash the template's JSON, which is
/// as stable (k8s-openapi serialises fields in a fixed order, maps sorted), so values differ from
/// a real cluster's but are stable across restarts and versions of Switchyard.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).expect("a PodTemplateSpec serialises to JSON");
    if let Some(count) = collision_count {
        let mut extra = [0u8; 8];
        extra[..4].copy_from_slice(&u32::from_ne_bytes(count.to_ne_bytes()).to_le_bytes());
        bytes.extend_from_slice(&extra);
    }
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

fn without_hash_label(template: Option<&PodTemplateSpec>) -> PodTemplateSpec {
    let mut t = template.cloned().unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(LABEL_POD_TEMPLATE_HASH);
    }
    if let Some(m) = t.metadata.as_mut() {
        if m.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            m.labels = None;
        }
    }
    t
}

/// Whether two templates are equal once `pod-template-hash` is ignored (`EqualIgnoreHash`).
pub fn equal_ignore_hash(a: Option<&PodTemplateSpec>, b: Option<&PodTemplateSpec>) -> bool {
    without_hash_label(a) == without_hash_label(b)
}

// ---------------------------------------------------------------------------------------------
// Small accessors
// ---------------------------------------------------------------------------------------------

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn set_rs_replicas(rs: &mut ReplicaSet, n: i32) {
    rs.spec.get_or_insert_with(ReplicaSetSpec::default).replicas = Some(n);
}

fn rs_status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn annotation_int(meta: &ObjectMeta, key: &str) -> Option<i64> {
    annotation(meta, key).and_then(|v| v.parse().ok())
}

/// The revision of a ReplicaSet; 0 when absent or unparsable (`deploymentutil.Revision`).
pub fn revision_of(rs: &ReplicaSet) -> i64 {
    annotation_int(&rs.metadata, ANNOTATION_REVISION).unwrap_or(0)
}

fn created(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.creation_timestamp.as_ref().map(|t| t.0)
}

fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn deployment_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub(crate) fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

/// `intstr.GetScaledValueFromIntOrPercent`: an int as is; `N%` of `total`, rounded up or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, DeploymentError> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| DeploymentError::InvalidIntOrPercent(s.clone()))?;
            let scaled = percent * i64::from(total);
            let value = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            Ok(i32::try_from(value).unwrap_or(i32::MAX))
        }
    }
}

/// `(maxSurge, maxUnavailable)` for a RollingUpdate Deployment, both resolved against its
/// replicas (`ResolveFenceposts`): surge rounds up, unavailable rounds down, and if both come out
/// zero unavailable becomes one so a rollout can progress. Defaults are 25% each, as the API's.
/// Recreate Deployments get `(0, 0)`. Unavailable is capped at the replicas.
pub fn fenceposts(d: &Deployment) -> Result<(i32, i32), DeploymentError> {
    if is_recreate(d) {
        return Ok((0, 0));
    }
    let replicas = deployment_replicas(d);
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let default = IntOrString::String("25%".to_string());
    let surge_spec = rolling
        .and_then(|r| r.max_surge.as_ref())
        .unwrap_or(&default);
    let unavailable_spec = rolling
        .and_then(|r| r.max_unavailable.as_ref())
        .unwrap_or(&default);
    let surge = scaled_value(surge_spec, replicas, true)?;
    let mut unavailable = scaled_value(unavailable_spec, replicas, false)?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    // `MaxUnavailable`: zero replicas allow zero unavailable, and never more than replicas.
    if replicas == 0 {
        unavailable = 0;
    }
    Ok((surge, unavailable.min(replicas)))
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn get_condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
    }
}

/// `SetDeploymentCondition`: a condition with the same status and reason is left alone; one with
/// the same status keeps its transition time.
fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = get_condition(status, &condition.type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &condition.type_);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition);
}

// ---------------------------------------------------------------------------------------------
// The sync
// ---------------------------------------------------------------------------------------------

/// One sync's working state: the owned ReplicaSets as they will be after the planned writes.
struct Sync<'a> {
    d: &'a Deployment,
    replicas: i32,
    max_surge: i32,
    max_unavailable: i32,
    rss: Vec<ReplicaSet>,
    changed: BTreeSet<usize>,
    created: Option<usize>,
    new: Option<usize>,
    status: DeploymentStatus,
    revision: Option<String>,
    delete: Vec<String>,
    /// Names of every ReplicaSet of the namespace, to detect hash collisions.
    all_in_namespace: Vec<String>,
    now: Timestamp,
}

impl Sync<'_> {
    fn old(&self) -> Vec<usize> {
        (0..self.rss.len())
            .filter(|i| Some(*i) != self.new)
            .collect()
    }

    fn all_with_new(&self) -> Vec<usize> {
        (0..self.rss.len()).collect()
    }

    fn active(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|&i| rs_replicas(&self.rss[i]) > 0)
            .collect()
    }

    fn spec_sum(&self, idx: &[usize]) -> i32 {
        idx.iter().map(|&i| rs_replicas(&self.rss[i])).sum()
    }

    fn sort_by_creation(&self, idx: &mut [usize]) {
        idx.sort_by(|&a, &b| {
            let (ma, mb) = (&self.rss[a].metadata, &self.rss[b].metadata);
            created(ma)
                .cmp(&created(mb))
                .then_with(|| ma.name.cmp(&mb.name))
        });
    }

    fn desired_annotations(&self) -> [(&'static str, String); 2] {
        [
            (ANNOTATION_DESIRED_REPLICAS, self.replicas.to_string()),
            (
                ANNOTATION_MAX_REPLICAS,
                (self.replicas + self.max_surge).to_string(),
            ),
        ]
    }

    /// `SetReplicasAnnotations`; true if anything changed.
    fn set_replicas_annotations(&self, rs: &mut ReplicaSet) -> bool {
        let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        let mut changed = false;
        for (k, v) in self.desired_annotations() {
            if annotations.get(k) != Some(&v) {
                annotations.insert(k.to_string(), v);
                changed = true;
            }
        }
        changed
    }

    /// `scaleReplicaSet`: set the size and the replicas annotations; returns whether the size
    /// changed.
    fn scale(&mut self, i: usize, size: i32) -> bool {
        let mut rs = self.rss[i].clone();
        let resized = rs_replicas(&rs) != size;
        let annotated = self.set_replicas_annotations(&mut rs);
        if resized || annotated {
            set_rs_replicas(&mut rs, size);
            self.rss[i] = rs;
            if Some(i) != self.created {
                self.changed.insert(i);
            }
        }
        resized
    }

    /// `scaleReplicaSetAndRecordEvent`: nothing when the size is right already.
    fn scale_if_needed(&mut self, i: usize, size: i32) -> bool {
        if rs_replicas(&self.rss[i]) == size {
            return false;
        }
        self.scale(i, size)
    }

    /// `NewRSNewReplicas`: how big the new ReplicaSet may be now.
    fn new_rs_new_replicas(&self, new_size: i32) -> i32 {
        if is_recreate(self.d) {
            return self.replicas;
        }
        let current: i32 = self.spec_sum(&self.all_with_new());
        let max_total = self.replicas + self.max_surge;
        if current >= max_total {
            return new_size;
        }
        let up = (max_total - current).min(self.replicas - new_size).max(0);
        new_size + up
    }

    /// `copyDeploymentAnnotationsToReplicaSet` and the revision part of
    /// `SetNewReplicaSetAnnotations`; true if anything changed.
    fn set_new_rs_annotations(&self, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
        let mut changed = false;
        let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            let skip = matches!(
                k.as_str(),
                LAST_APPLIED
                    | ANNOTATION_REVISION
                    | ANNOTATION_REVISION_HISTORY
                    | ANNOTATION_DESIRED_REPLICAS
                    | ANNOTATION_MAX_REPLICAS
                    | ANNOTATION_ROLLBACK_TO
            );
            if skip || annotations.get(k) == Some(v) {
                continue;
            }
            annotations.insert(k.clone(), v.clone());
            changed = true;
        }
        let old = annotations.get(ANNOTATION_REVISION).cloned();
        let old_int = match old.as_deref() {
            None | Some("") => 0,
            Some(s) => match s.parse::<i64>() {
                Ok(v) => v,
                Err(_) => return changed,
            },
        };
        if old_int < new_revision {
            annotations.insert(ANNOTATION_REVISION.to_string(), new_revision.to_string());
            changed = true;
            // Rolled back to this ReplicaSet: keep its earlier revisions.
            if let Some(old) = old.filter(|o| !o.is_empty()) {
                let history = annotations
                    .get(ANNOTATION_REVISION_HISTORY)
                    .cloned()
                    .unwrap_or_default();
                let mut revisions: Vec<&str> =
                    history.split(',').filter(|s| !s.is_empty()).collect();
                revisions.push(&old);
                while revisions.join(",").len() > MAX_REVISION_HISTORY_CHARS && revisions.len() > 1
                {
                    revisions.remove(0);
                }
                let joined = revisions.join(",");
                annotations.insert(ANNOTATION_REVISION_HISTORY.to_string(), joined);
            }
        }
        if !exists && self.set_replicas_annotations(rs) {
            changed = true;
        }
        changed
    }

    /// `getAllReplicaSetsAndSyncRevision` for an existing new ReplicaSet, or the creation of one
    /// when `create` is set. Returns false when a name collision stops this sync.
    fn sync_revision(&mut self, create: bool) -> bool {
        let max_old = self
            .old()
            .iter()
            .map(|&i| revision_of(&self.rss[i]))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if let Some(i) = self.new {
            let mut rs = self.rss[i].clone();
            let mut changed = self.set_new_rs_annotations(&mut rs, new_revision, true);
            let spec = rs.spec.get_or_insert_with(ReplicaSetSpec::default);
            if spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0) {
                spec.min_ready_seconds = min_ready;
                changed = true;
            }
            if changed {
                self.rss[i] = rs;
                if Some(i) != self.created {
                    self.changed.insert(i);
                }
            }
            let revision = annotation(&self.rss[i].metadata, ANNOTATION_REVISION)
                .unwrap_or_default()
                .to_string();
            self.set_deployment_revision(revision);
            if progress_deadline(self.d).is_some()
                && get_condition(&self.status, CONDITION_PROGRESSING).is_none()
            {
                let msg = format!("Found new replica set {:?}", name(&self.rss[i].metadata));
                let c = new_condition(
                    CONDITION_PROGRESSING,
                    "True",
                    REASON_FOUND_NEW_RS,
                    msg,
                    self.now,
                );
                set_condition(&mut self.status, c);
            }
            return true;
        }
        if !create {
            return true;
        }
        let d = self.d;
        let spec = d.spec.clone().unwrap_or_default();
        let hash = pod_template_hash(&spec.template, self.status.collision_count);
        let rs_name = format!("{}-{}", name(&d.metadata), hash);
        if self.collides(&rs_name) {
            // `getNewReplicaSet` on AlreadyExists with another template: bump the collision
            // count so the next sync hashes to another name.
            self.status.collision_count = Some(self.status.collision_count.unwrap_or(0) + 1);
            return false;
        }
        let mut template = spec.template.clone();
        let tmeta = template.metadata.get_or_insert_with(ObjectMeta::default);
        let mut labels = tmeta.labels.clone().unwrap_or_default();
        labels.insert(LABEL_POD_TEMPLATE_HASH.to_string(), hash.clone());
        tmeta.labels = Some(labels.clone());
        let mut selector: MetaLabelSelector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(LABEL_POD_TEMPLATE_HASH.to_string(), hash);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: d.metadata.namespace.clone(),
                labels: Some(labels),
                owner_references: Some(vec![controller_ref("apps/v1", "Deployment", &d.metadata)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        self.rss.push(rs.clone());
        let i = self.rss.len() - 1;
        self.new = Some(i);
        self.created = Some(i);
        set_rs_replicas(&mut rs, self.new_rs_new_replicas(0));
        self.set_new_rs_annotations(&mut rs, new_revision, false);
        self.rss[i] = rs;
        self.set_deployment_revision(new_revision.to_string());
        if progress_deadline(d).is_some() {
            let msg = format!("Created new replica set {rs_name:?}");
            let c = new_condition(
                CONDITION_PROGRESSING,
                "True",
                REASON_NEW_RS_CREATED,
                msg,
                self.now,
            );
            set_condition(&mut self.status, c);
        }
        true
    }

    fn collides(&self, rs_name: &str) -> bool {
        self.all_in_namespace.iter().any(|n| n == rs_name)
    }

    fn set_deployment_revision(&mut self, revision: String) {
        if annotation(&self.d.metadata, ANNOTATION_REVISION) != Some(revision.as_str()) {
            self.revision = Some(revision);
        }
    }

    // -----------------------------------------------------------------------------------------
    // RollingUpdate (rolling.go)
    // -----------------------------------------------------------------------------------------

    fn rollout_rolling(&mut self) -> bool {
        if !self.sync_revision(true) {
            return false;
        }
        if self.reconcile_new_replica_set() {
            return true;
        }
        if self.reconcile_old_replica_sets() {
            return true;
        }
        if self.complete_with(&self.calculate_status()) {
            self.cleanup();
        }
        true
    }

    fn reconcile_new_replica_set(&mut self) -> bool {
        let Some(new) = self.new else {
            return false;
        };
        let size = rs_replicas(&self.rss[new]);
        if size == self.replicas {
            return false;
        }
        if size > self.replicas {
            return self.scale_if_needed(new, self.replicas);
        }
        let target = self.new_rs_new_replicas(size);
        self.scale_if_needed(new, target)
    }

    fn reconcile_old_replica_sets(&mut self) -> bool {
        let old = self.old();
        if self.spec_sum(&old) == 0 {
            return false;
        }
        let all_pods = self.spec_sum(&self.all_with_new());
        let min_available = self.replicas - self.max_unavailable;
        let new_unavailable = self
            .new
            .map(|i| rs_replicas(&self.rss[i]) - rs_available(&self.rss[i]))
            .unwrap_or(0);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let cleaned = self.cleanup_unhealthy_replicas(max_scaled_down);
        let scaled = self.scale_down_old_for_rolling_update();
        cleaned + scaled > 0
    }

    /// Old ReplicaSets' unavailable replicas go first, oldest ReplicaSet first.
    fn cleanup_unhealthy_replicas(&mut self, max_cleanup: i32) -> i32 {
        let mut old = self.old();
        self.sort_by_creation(&mut old);
        let mut total = 0;
        for i in old {
            if total >= max_cleanup {
                break;
            }
            let size = rs_replicas(&self.rss[i]);
            let available = rs_available(&self.rss[i]);
            if size == 0 || size <= available {
                continue;
            }
            let down = (max_cleanup - total).min(size - available);
            self.scale(i, size - down);
            total += down;
        }
        total
    }

    /// Then available old replicas, as far as maxUnavailable allows, oldest ReplicaSet first.
    fn scale_down_old_for_rolling_update(&mut self) -> i32 {
        let min_available = self.replicas - self.max_unavailable;
        let available: i32 = self
            .all_with_new()
            .iter()
            .map(|&i| rs_available(&self.rss[i]))
            .sum();
        if available <= min_available {
            return 0;
        }
        let wanted = available - min_available;
        let mut old = self.old();
        self.sort_by_creation(&mut old);
        let mut total = 0;
        for i in old {
            if total >= wanted {
                break;
            }
            let size = rs_replicas(&self.rss[i]);
            if size == 0 {
                continue;
            }
            let down = size.min(wanted - total);
            self.scale(i, size - down);
            total += down;
        }
        total
    }

    // -----------------------------------------------------------------------------------------
    // Recreate (recreate.go)
    // -----------------------------------------------------------------------------------------

    fn rollout_recreate(&mut self, pods: &[&Pod]) -> bool {
        if !self.sync_revision(false) {
            return false;
        }
        let active_old = self.active(&self.old());
        let mut scaled_down = false;
        for i in active_old {
            scaled_down |= self.scale_if_needed(i, 0);
        }
        if scaled_down || self.old_pods_running(pods) {
            return true;
        }
        if self.new.is_none() && !self.sync_revision(true) {
            return false;
        }
        if let Some(new) = self.new {
            if self.scale_if_needed(new, self.replicas) {
                return true;
            }
        }
        if self.complete_with(&self.calculate_status()) {
            self.cleanup();
        }
        true
    }

    /// Whether Pods of old ReplicaSets still exist (`oldPodsRunning`): their status still counts
    /// replicas, or Pods they control are not finished (terminating Pods count: a Recreate
    /// must not overlap old and new Pods).
    fn old_pods_running(&self, pods: &[&Pod]) -> bool {
        let old = self.old();
        if old
            .iter()
            .map(|&i| rs_status_replicas(&self.rss[i]))
            .sum::<i32>()
            > 0
        {
            return true;
        }
        let old_uids: BTreeSet<&str> = old
            .iter()
            .filter_map(|&i| self.rss[i].metadata.uid.as_deref())
            .collect();
        pods.iter().any(|p| {
            controller_of(&p.metadata).is_some_and(|r| old_uids.contains(r.uid.as_str()))
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Failed" | "Succeeded")
                )
        })
    }

    // -----------------------------------------------------------------------------------------
    // Scaling and paused Deployments (sync.go)
    // -----------------------------------------------------------------------------------------

    /// `isScalingEvent`: an active ReplicaSet was last scaled for other replicas than now.
    fn is_scaling_event(&self) -> bool {
        self.active(&self.all_with_new()).iter().any(|&i| {
            annotation_int(&self.rss[i].metadata, ANNOTATION_DESIRED_REPLICAS)
                .is_some_and(|desired| desired != i64::from(self.replicas))
        })
    }

    /// `FindActiveOrLatest`: the one active ReplicaSet, or the newest if none is active.
    fn active_or_latest(&self) -> Option<usize> {
        let mut old = self.old();
        if self.new.is_none() && old.is_empty() {
            return None;
        }
        self.sort_by_creation(&mut old);
        old.reverse();
        let mut all = old.clone();
        all.extend(self.new);
        let active = self.active(&all);
        match active.len() {
            0 => self.new.or(old.first().copied()),
            1 => Some(active[0]),
            _ => None,
        }
    }

    /// `IsSaturated`: the new ReplicaSet runs all replicas, all available.
    fn is_saturated(&self, i: usize) -> bool {
        let rs = &self.rss[i];
        rs_replicas(rs) == self.replicas
            && annotation_int(&rs.metadata, ANNOTATION_DESIRED_REPLICAS)
                == Some(i64::from(self.replicas))
            && rs_available(rs) == self.replicas
    }

    /// `scale`: resize the one active ReplicaSet; or finish scaling down old ones if the new
    /// one is saturated; or share the change among active ReplicaSets in proportion to their
    /// size (larger first; the rounding remainder goes to the largest).
    fn scale_deployment(&mut self) {
        if let Some(i) = self.active_or_latest() {
            if rs_replicas(&self.rss[i]) != self.replicas {
                self.scale(i, self.replicas);
            }
            return;
        }
        if self.new.is_some_and(|n| self.is_saturated(n)) {
            for i in self.active(&self.old()) {
                self.scale_if_needed(i, 0);
            }
            return;
        }
        if is_recreate(self.d) {
            return;
        }
        let mut all = self.active(&self.all_with_new());
        let current = self.spec_sum(&all);
        let allowed = if self.replicas > 0 {
            self.replicas + self.max_surge
        } else {
            0
        };
        let to_add = allowed - current;
        // ReplicaSetsBySizeNewer when growing, BySizeOlder when shrinking: larger first.
        all.sort_by(|&a, &b| {
            let (ra, rb) = (&self.rss[a], &self.rss[b]);
            let by_size = rs_replicas(rb).cmp(&rs_replicas(ra));
            let by_age = created(&ra.metadata).cmp(&created(&rb.metadata));
            if to_add > 0 {
                by_size.then(by_age.reverse())
            } else {
                by_size.then(by_age)
            }
        });
        let mut sizes: Vec<(usize, i32)> = Vec::new();
        let mut added = 0;
        if to_add != 0 {
            for &i in &all {
                let proportion = self.proportion(i, to_add, added);
                sizes.push((i, rs_replicas(&self.rss[i]) + proportion));
                added += proportion;
            }
        } else {
            sizes = all
                .iter()
                .map(|&i| (i, rs_replicas(&self.rss[i])))
                .collect();
        }
        if added != to_add {
            if let Some(first) = sizes.first_mut() {
                first.1 = (first.1 + to_add - added).max(0);
            }
        }
        for (i, size) in sizes {
            self.scale(i, size);
        }
    }

    /// `GetReplicaSetProportion`.
    fn proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        let rs = &self.rss[i];
        let size = rs_replicas(rs);
        if size == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = if self.replicas == 0 {
            -size
        } else {
            let deployment_replicas = self.replicas + self.max_surge;
            let annotated = annotation_int(&rs.metadata, ANNOTATION_MAX_REPLICAS)
                .and_then(|v| i32::try_from(v).ok())
                .unwrap_or_else(|| self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
            if annotated == 0 {
                0
            } else {
                let new_size =
                    f64::from(size) * f64::from(deployment_replicas) / f64::from(annotated);
                // Go's math.Round: half away from zero, as f64::round.
                new_size.round() as i32 - size
            }
        };
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// `checkPausedConditions`: Progressing becomes Unknown/DeploymentPaused while paused and
    /// Unknown/DeploymentResumed on resume, unless the rollout already timed out.
    fn check_paused_conditions(&mut self) {
        if progress_deadline(self.d).is_none() {
            return;
        }
        let current = get_condition(&self.status, CONDITION_PROGRESSING);
        let reason = current.and_then(|c| c.reason.as_deref());
        if reason == Some(REASON_TIMED_OUT) {
            return;
        }
        let paused_recorded = reason == Some(REASON_PAUSED);
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let (reason, message) = match (paused, paused_recorded) {
            (true, false) => (REASON_PAUSED, "Deployment is paused"),
            (false, true) => (REASON_RESUMED, "Deployment is resumed"),
            _ => return,
        };
        let c = new_condition(
            CONDITION_PROGRESSING,
            "Unknown",
            reason,
            message.to_string(),
            self.now,
        );
        set_condition(&mut self.status, c);
    }

    /// `sync`: for paused Deployments and scaling events.
    fn sync_scale(&mut self) {
        self.sync_revision(false);
        self.scale_deployment();
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused {
            self.cleanup();
        }
    }

    /// `cleanupDeployment`: delete the oldest old ReplicaSets beyond revisionHistoryLimit, if
    /// they have no replicas (in spec and status) and their status is current.
    fn cleanup(&mut self) {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return;
        };
        let mut cleanable: Vec<usize> = self
            .old()
            .into_iter()
            .filter(|&i| self.rss[i].metadata.deletion_timestamp.is_none())
            .collect();
        let excess = cleanable.len() as i64 - i64::from(limit);
        if excess <= 0 {
            return;
        }
        cleanable.sort_by(|&a, &b| {
            let (ra, rb) = (&self.rss[a], &self.rss[b]);
            revision_of(ra)
                .cmp(&revision_of(rb))
                .then_with(|| created(&ra.metadata).cmp(&created(&rb.metadata)))
        });
        for &i in cleanable.iter().take(usize::try_from(excess).unwrap_or(0)) {
            let rs = &self.rss[i];
            let observed = rs.status.as_ref().and_then(|s| s.observed_generation);
            let stale = rs.metadata.generation.unwrap_or(0) > observed.unwrap_or(0);
            if rs_status_replicas(rs) != 0 || rs_replicas(rs) != 0 || stale {
                continue;
            }
            self.delete.push(name(&rs.metadata));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Status (sync.go calculateStatus, progress.go syncRolloutStatus)
    // -----------------------------------------------------------------------------------------

    fn calculate_status(&self) -> DeploymentStatus {
        let all = self.all_with_new();
        let sum = |f: fn(&ReplicaSet) -> i32| -> i32 { all.iter().map(|&i| f(&self.rss[i])).sum() };
        let available = sum(rs_available);
        let total = self.spec_sum(&all);
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(sum(rs_status_replicas)),
            updated_replicas: Some(
                self.new
                    .map(|i| rs_status_replicas(&self.rss[i]))
                    .unwrap_or(0),
            ),
            ready_replicas: Some(sum(rs_ready)),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: self.status.collision_count,
            conditions: self.status.conditions.clone(),
            terminating_replicas: None,
        };
        let condition = if available >= self.replicas - self.max_unavailable {
            new_condition(
                CONDITION_AVAILABLE,
                "True",
                REASON_MINIMUM_REPLICAS_AVAILABLE,
                "Deployment has minimum availability.".to_string(),
                self.now,
            )
        } else {
            new_condition(
                CONDITION_AVAILABLE,
                "False",
                REASON_MINIMUM_REPLICAS_UNAVAILABLE,
                "Deployment does not have minimum availability.".to_string(),
                self.now,
            )
        };
        set_condition(&mut status, condition);
        status
    }

    /// `DeploymentComplete`.
    fn complete_with(&self, s: &DeploymentStatus) -> bool {
        s.updated_replicas == Some(self.replicas)
            && s.replicas == Some(self.replicas)
            && s.available_replicas == Some(self.replicas)
            && s.observed_generation >= self.d.metadata.generation
    }

    /// `syncRolloutStatus`: the status with the Progressing condition brought up to date.
    fn rollout_status(&self) -> (DeploymentStatus, Option<Duration>) {
        let mut status = self.calculate_status();
        let Some(deadline) = progress_deadline(self.d) else {
            remove_condition(&mut status, CONDITION_PROGRESSING);
            return (status, None);
        };
        let current = get_condition(&self.status, CONDITION_PROGRESSING).cloned();
        let is_complete = status.replicas == status.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(REASON_NEW_RS_AVAILABLE);
        let new_name = self.new.map(|i| name(&self.rss[i].metadata));
        let mut requeue = None;
        if !is_complete {
            if self.complete_with(&status) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} has successfully progressed."),
                    None => format!(
                        "Deployment {:?} has successfully progressed.",
                        name(&self.d.metadata)
                    ),
                };
                let c = new_condition(
                    CONDITION_PROGRESSING,
                    "True",
                    REASON_NEW_RS_AVAILABLE,
                    msg,
                    self.now,
                );
                set_condition(&mut status, c);
            } else if self.progressing(&status) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} is progressing."),
                    None => format!("Deployment {:?} is progressing.", name(&self.d.metadata)),
                };
                let mut c = new_condition(
                    CONDITION_PROGRESSING,
                    "True",
                    REASON_RS_UPDATED,
                    msg,
                    self.now,
                );
                if let Some(cur) = &current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_condition(&mut status, CONDITION_PROGRESSING);
                }
                set_condition(&mut status, c);
                requeue = Some(Duration::from_secs(u64::try_from(deadline).unwrap_or(0)));
            } else if self.timed_out(&status, deadline) {
                let msg = format!(
                    "Deployment {:?} has timed out progressing.",
                    name(&self.d.metadata)
                );
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} has timed out progressing."),
                    None => msg,
                };
                let c = new_condition(
                    CONDITION_PROGRESSING,
                    "False",
                    REASON_TIMED_OUT,
                    msg,
                    self.now,
                );
                set_condition(&mut status, c);
            } else {
                // `requeueStuckDeployment`: check again when the deadline passes.
                requeue = get_condition(&status, CONDITION_PROGRESSING)
                    .and_then(|c| c.last_update_time.as_ref())
                    .and_then(|t| {
                        t.0.checked_add(SignedDuration::from_secs(i64::from(deadline)))
                            .ok()
                    })
                    .map(|at| {
                        Duration::try_from(at.duration_since(self.now)).unwrap_or(Duration::ZERO)
                            + Duration::from_secs(1)
                    });
            }
        }
        self.copy_replica_failure(&mut status);
        (status, requeue)
    }

    /// `DeploymentProgressing`: more updated, ready or available replicas, or fewer old ones.
    fn progressing(&self, new: &DeploymentStatus) -> bool {
        let old = self.d.status.clone().unwrap_or_default();
        let n = |v: Option<i32>| v.unwrap_or(0);
        let old_old = n(old.replicas) - n(old.updated_replicas);
        let new_old = n(new.replicas) - n(new.updated_replicas);
        n(new.updated_replicas) > n(old.updated_replicas)
            || n(new.ready_replicas) > n(old.ready_replicas)
            || n(new.available_replicas) > n(old.available_replicas)
            || new_old < old_old
    }

    /// `DeploymentTimedOut`.
    fn timed_out(&self, status: &DeploymentStatus, deadline: i32) -> bool {
        let Some(c) = get_condition(status, CONDITION_PROGRESSING) else {
            return false;
        };
        match c.reason.as_deref() {
            Some(REASON_NEW_RS_AVAILABLE) => false,
            Some(REASON_TIMED_OUT) => true,
            _ => c
                .last_update_time
                .as_ref()
                .and_then(|t| {
                    t.0.checked_add(SignedDuration::from_secs(i64::from(deadline)))
                        .ok()
                })
                .is_some_and(|at| at < self.now),
        }
    }

    /// `getReplicaFailures`: the new ReplicaSet's ReplicaFailure condition (else an old one's)
    /// becomes the Deployment's.
    fn copy_replica_failure(&self, status: &mut DeploymentStatus) {
        let mut order: Vec<usize> = self.new.into_iter().collect();
        order.extend(self.old());
        let failure = order.iter().find_map(|&i| {
            self.rss[i]
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == CONDITION_REPLICA_FAILURE))
        });
        match failure {
            Some(f) => set_condition(
                status,
                DeploymentCondition {
                    type_: CONDITION_REPLICA_FAILURE.to_string(),
                    status: f.status.clone(),
                    reason: f.reason.clone(),
                    message: f.message.clone(),
                    last_update_time: f.last_transition_time.clone(),
                    last_transition_time: f.last_transition_time.clone(),
                },
            ),
            None => remove_condition(status, CONDITION_REPLICA_FAILURE),
        }
    }
}

fn normalized(s: &DeploymentStatus) -> DeploymentStatus {
    let mut s = s.clone();
    for f in [
        &mut s.replicas,
        &mut s.updated_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
        &mut s.unavailable_replicas,
    ] {
        if *f == Some(0) {
            *f = None;
        }
    }
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    s
}

/// What to do for one Deployment. `namespace_replica_sets` are all ReplicaSets of its namespace
/// (claiming decides which are its own); `pods` are the Pods of the namespace, consulted only by
/// Recreate to wait until old Pods are gone.
pub fn plan(
    d: &Deployment,
    namespace_replica_sets: &[&ReplicaSet],
    pods: &[&Pod],
    now: Timestamp,
) -> Result<DeploymentPlan, DeploymentError> {
    let spec = d.spec.clone().unwrap_or_default();
    let current_status = d.status.clone().unwrap_or_default();
    // An empty selector would select every Pod of the namespace: Kubernetes refuses to act and
    // only records that it saw the generation.
    if spec.selector == MetaLabelSelector::default() {
        let status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            ..current_status.clone()
        };
        return Ok(DeploymentPlan {
            status: (normalized(&status) != normalized(&current_status)).then_some(status),
            ..DeploymentPlan::default()
        });
    }
    let selector =
        LabelSelector::from_metav1(&spec.selector).map_err(DeploymentError::InvalidSelector)?;
    let (max_surge, max_unavailable) = fenceposts(d)?;
    let claimed = claim(
        &d.metadata,
        &selector,
        namespace_replica_sets.iter().map(|rs| &rs.metadata),
    );
    let rss: Vec<ReplicaSet> = claimed
        .claimed
        .iter()
        .map(|&i| namespace_replica_sets[i].clone())
        .collect();
    // `FindNewReplicaSet`: the oldest ReplicaSet whose template is the Deployment's.
    let mut matching: Vec<usize> = (0..rss.len())
        .filter(|&i| {
            equal_ignore_hash(
                rss[i].spec.as_ref().and_then(|s| s.template.as_ref()),
                Some(&spec.template),
            )
        })
        .collect();
    matching.sort_by(|&a, &b| {
        created(&rss[a].metadata)
            .cmp(&created(&rss[b].metadata))
            .then_with(|| rss[a].metadata.name.cmp(&rss[b].metadata.name))
    });
    let mut sync = Sync {
        d,
        replicas: deployment_replicas(d),
        max_surge,
        max_unavailable,
        new: matching.first().copied(),
        rss,
        changed: BTreeSet::new(),
        created: None,
        status: current_status.clone(),
        revision: None,
        delete: Vec::new(),
        all_in_namespace: namespace_replica_sets
            .iter()
            .map(|rs| name(&rs.metadata))
            .collect(),
        now,
    };

    let mut requeue = None;
    if d.metadata.deletion_timestamp.is_none() {
        sync.check_paused_conditions();
    }
    let status = if d.metadata.deletion_timestamp.is_some() {
        // `syncStatusOnly`.
        sync.sync_revision(false);
        sync.calculate_status()
    } else if spec.paused.unwrap_or(false) || sync.is_scaling_event() {
        sync.sync_scale();
        sync.calculate_status()
    } else {
        let proceed = if is_recreate(d) {
            sync.rollout_recreate(pods)
        } else {
            sync.rollout_rolling()
        };
        if proceed {
            let (status, after) = sync.rollout_status();
            requeue = after;
            status
        } else {
            // A name collision: record the bumped collision count and try again.
            sync.status.clone()
        }
    };

    let created = sync.created;
    Ok(DeploymentPlan {
        adopt: claimed.adopt,
        release: claimed.release,
        create: created.map(|i| sync.rss[i].clone()),
        update: sync.changed.iter().map(|&i| sync.rss[i].clone()).collect(),
        delete: sync.delete,
        revision: sync.revision,
        status: (normalized(&status) != normalized(&current_status)).then_some(status),
        requeue_after: requeue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn start() -> Timestamp {
        "2026-11-22T03:00:00Z".parse().expect("valid timestamp")
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    if v.is_null() {
                        b.remove(&k);
                    } else {
                        merge(b.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (b, e) => *b = e,
        }
    }

    fn deployment(replicas: i32, extra: Value) -> Deployment {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1,
                         "annotations": {"team": "a"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600
            }
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("valid Deployment")
    }

    /// A fake cluster: applies plans as the API server would and, when asked, lets the
    /// ReplicaSets settle as their controller would (all Pods present, available or not).
    struct Cluster {
        d: Deployment,
        rss: Vec<ReplicaSet>,
        pods: Vec<Pod>,
        now: Timestamp,
        uids: usize,
    }

    impl Cluster {
        fn new(d: Deployment) -> Self {
            Self {
                d,
                rss: Vec::new(),
                pods: Vec::new(),
                now: start(),
                uids: 0,
            }
        }

        fn step(&mut self) -> DeploymentPlan {
            self.now += SignedDuration::from_secs(1);
            let refs: Vec<&ReplicaSet> = self.rss.iter().collect();
            let pods: Vec<&Pod> = self.pods.iter().collect();
            let plan = plan(&self.d, &refs, &pods, self.now).expect("plan");
            if let Some(mut rs) = plan.create.clone() {
                self.uids += 1;
                rs.metadata.uid = Some(format!("rs-uid-{}", self.uids));
                rs.metadata.creation_timestamp = Some(Time(self.now));
                rs.metadata.generation = Some(1);
                self.rss.push(rs);
            }
            for u in &plan.update {
                let i = self
                    .rss
                    .iter()
                    .position(|r| r.metadata.name == u.metadata.name)
                    .expect("updated ReplicaSet exists");
                let mut u = u.clone();
                if u.spec != self.rss[i].spec {
                    u.metadata.generation = Some(u.metadata.generation.unwrap_or(0) + 1);
                }
                self.rss[i] = u;
            }
            self.rss.retain(|r| {
                !plan
                    .delete
                    .contains(r.metadata.name.as_ref().expect("named"))
            });
            if let Some(rev) = &plan.revision {
                self.d
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ANNOTATION_REVISION.to_string(), rev.clone());
            }
            if let Some(s) = &plan.status {
                self.d.status = Some(s.clone());
            }
            plan
        }

        /// Every ReplicaSet runs its replicas; `available` says whether they are available.
        fn settle(&mut self, available: bool) {
            for rs in &mut self.rss {
                let n = rs_replicas(rs);
                let a = if available { n } else { 0 };
                rs.status = Some(
                    serde_json::from_value(json!({
                    "replicas": n, "readyReplicas": a, "availableReplicas": a,
                    "observedGeneration": rs.metadata.generation}))
                    .expect("status"),
                );
            }
        }

        /// Steps (settling as told) until a step makes no ReplicaSet writes; returns the
        /// (old replicas, new replicas) after each step that scaled something.
        fn run(&mut self, available: bool) -> Vec<(i32, i32)> {
            let mut seen = Vec::new();
            for _ in 0..50 {
                let plan = self.step();
                self.settle(available);
                if plan.create.is_none() && plan.update.is_empty() && plan.delete.is_empty() {
                    // One more step lets the status catch up with the settled ReplicaSets.
                    self.step();
                    return seen;
                }
                seen.push(self.sizes());
            }
            panic!("no convergence: {seen:?}");
        }

        fn new_rs(&self) -> &ReplicaSet {
            let t = self.d.spec.as_ref().map(|s| &s.template);
            self.rss
                .iter()
                .find(|r| equal_ignore_hash(r.spec.as_ref().and_then(|s| s.template.as_ref()), t))
                .expect("a new ReplicaSet")
        }

        fn sizes(&self) -> (i32, i32) {
            let new = self.new_rs().metadata.name.clone();
            let old = self
                .rss
                .iter()
                .filter(|r| r.metadata.name != new)
                .map(rs_replicas)
                .sum();
            (old, rs_replicas(self.new_rs()))
        }

        fn set_image(&mut self, image: &str) {
            let spec = self.d.spec.as_mut().expect("spec");
            spec.template.spec.as_mut().expect("pod spec").containers[0].image =
                Some(image.to_string());
            self.d.metadata.generation = Some(self.d.metadata.generation.unwrap_or(0) + 1);
        }

        fn set_replicas(&mut self, n: i32) {
            self.d.spec.as_mut().expect("spec").replicas = Some(n);
            self.d.metadata.generation = Some(self.d.metadata.generation.unwrap_or(0) + 1);
        }

        fn status(&self) -> DeploymentStatus {
            self.d.status.clone().unwrap_or_default()
        }

        fn condition(&self, type_: &str) -> (String, String) {
            let s = self.status();
            let c = get_condition(&s, type_).expect("condition");
            (c.status.clone(), c.reason.clone().unwrap_or_default())
        }

        /// What `kubectl rollout status` checks for a Deployment.
        fn rolled_out(&self) -> bool {
            let s = self.status();
            let n = |v: Option<i32>| v.unwrap_or(0);
            s.observed_generation >= self.d.metadata.generation
                && n(s.updated_replicas) >= deployment_replicas(&self.d)
                && n(s.replicas) <= n(s.updated_replicas)
                && n(s.available_replicas) >= n(s.updated_replicas)
        }
    }

    fn ann<'a>(rs: &'a ReplicaSet, key: &str) -> Option<&'a str> {
        annotation(&rs.metadata, key)
    }

    #[test]
    fn pod_template_hash_is_stable_and_uses_the_safe_alphabet() {
        let d = deployment(1, json!({}));
        let template = d.spec.as_ref().expect("spec").template.clone();
        let hash = pod_template_hash(&template, None);
        assert_eq!(hash, pod_template_hash(&template.clone(), None));
        // Pinned: a change here renames every ReplicaSet of every Deployment on upgrade.
        assert_eq!(hash, "79bfd649dc");
        assert!(hash.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{hash}");
        assert_ne!(hash, pod_template_hash(&template, Some(1)));
        assert_ne!(
            pod_template_hash(&template, Some(1)),
            pod_template_hash(&template, Some(2))
        );
        let mut other = template.clone();
        other
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .expect("labels")
            .insert("tier".to_string(), "fe".to_string());
        assert_ne!(hash, pod_template_hash(&other, None));

        let mut hashed = template.clone();
        hashed
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .expect("labels")
            .insert(LABEL_POD_TEMPLATE_HASH.to_string(), hash.clone());
        assert!(equal_ignore_hash(Some(&hashed), Some(&template)));
        assert!(!equal_ignore_hash(Some(&other), Some(&template)));
    }

    #[test]
    fn max_surge_rounds_up_and_max_unavailable_rounds_down() {
        // (replicas, maxSurge, maxUnavailable, strategy) -> (surge, unavailable)
        let cases = [
            (6, json!("25%"), json!("25%"), "RollingUpdate", (2, 1)),
            (10, json!("25%"), json!("25%"), "RollingUpdate", (3, 2)),
            (1, json!("25%"), json!("25%"), "RollingUpdate", (1, 0)),
            (3, json!(0), json!("0%"), "RollingUpdate", (0, 1)),
            (4, json!("50%"), json!(1), "RollingUpdate", (2, 1)),
            (2, json!(1), json!(5), "RollingUpdate", (1, 2)),
            (0, json!(1), json!(1), "RollingUpdate", (1, 0)),
            (5, json!(1), json!(1), "Recreate", (0, 0)),
        ];
        for (replicas, surge, unavailable, strategy, want) in cases {
            let rolling = if strategy == "Recreate" {
                Value::Null
            } else {
                json!({"maxSurge": surge, "maxUnavailable": unavailable})
            };
            let d = deployment(
                replicas,
                json!({"spec": {"strategy": {"type": strategy, "rollingUpdate": rolling}}}),
            );
            assert_eq!(
                fenceposts(&d).expect("valid"),
                want,
                "{replicas} {surge} {unavailable} {strategy}"
            );
        }
        let bad = deployment(
            1,
            json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": "ten"}}}}),
        );
        assert!(matches!(
            fenceposts(&bad),
            Err(DeploymentError::InvalidIntOrPercent(_))
        ));
    }

    #[test]
    fn a_new_deployment_creates_its_replica_set_with_hash_labels_and_revision_one() {
        let mut c = Cluster::new(deployment(6, json!({})));
        let plan = c.step();
        let rs = plan.create.expect("a ReplicaSet to create");
        let hash = pod_template_hash(&c.d.spec.as_ref().expect("spec").template, None);
        assert_eq!(rs.metadata.name, Some(format!("web-{hash}")));
        let spec = rs.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(6));
        assert_eq!(
            spec.selector
                .match_labels
                .as_ref()
                .and_then(|l| l.get(LABEL_POD_TEMPLATE_HASH)),
            Some(&hash)
        );
        let tlabels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone());
        assert_eq!(
            tlabels
                .as_ref()
                .and_then(|l| l.get(LABEL_POD_TEMPLATE_HASH)),
            Some(&hash)
        );
        assert_eq!(rs.metadata.labels, tlabels);
        assert_eq!(ann(&rs, ANNOTATION_REVISION), Some("1"));
        assert_eq!(ann(&rs, ANNOTATION_DESIRED_REPLICAS), Some("6"));
        assert_eq!(ann(&rs, ANNOTATION_MAX_REPLICAS), Some("8"));
        assert_eq!(
            ann(&rs, "team"),
            Some("a"),
            "Deployment annotations are copied"
        );
        let owner = &rs.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Deployment", "d-uid", Some(true))
        );
        assert_eq!(plan.revision.as_deref(), Some("1"));
        assert_eq!(
            c.condition(CONDITION_PROGRESSING),
            ("True".into(), REASON_NEW_RS_CREATED.into())
        );
        assert_eq!(
            c.condition(CONDITION_AVAILABLE),
            ("False".into(), REASON_MINIMUM_REPLICAS_UNAVAILABLE.into())
        );
        assert!(!c.rolled_out());

        c.settle(true);
        c.step();
        assert!(c.rolled_out());
        let s = c.status();
        assert_eq!(
            (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
                s.unavailable_replicas,
                s.observed_generation
            ),
            (Some(6), Some(6), Some(6), Some(6), Some(0), Some(1))
        );
        assert_eq!(
            c.condition(CONDITION_AVAILABLE),
            ("True".into(), REASON_MINIMUM_REPLICAS_AVAILABLE.into())
        );
        assert_eq!(
            c.condition(CONDITION_PROGRESSING),
            ("True".into(), REASON_NEW_RS_AVAILABLE.into())
        );
        // Converged: nothing more to write.
        let plan = c.step();
        assert_eq!(plan, DeploymentPlan::default());
    }

    #[test]
    fn a_rolling_update_of_six_replicas_keeps_within_surge_and_unavailability() {
        let mut c = Cluster::new(deployment(6, json!({})));
        c.run(true);
        c.set_image("nginx:2");
        let steps = c.run(true);
        // 25%/25% of 6: at most 8 Pods, at least 5 available at every step. As in Kubernetes,
        // the sync that creates the new ReplicaSet also scales the old one down by one.
        assert_eq!(steps, vec![(5, 2), (5, 3), (2, 3), (2, 6), (0, 6)]);
        for (old, new) in &steps {
            assert!(old + new <= 8, "{steps:?}");
        }
        assert!(c.rolled_out());
        assert_eq!(
            c.rss.len(),
            2,
            "the old ReplicaSet is kept at zero for rollback"
        );
        assert_eq!(
            c.condition(CONDITION_PROGRESSING),
            ("True".into(), REASON_NEW_RS_AVAILABLE.into())
        );
        assert_eq!(ann(c.new_rs(), ANNOTATION_REVISION), Some("2"));
        assert_eq!(annotation(&c.d.metadata, ANNOTATION_REVISION), Some("2"));
    }

    #[test]
    fn a_rolling_update_whose_pods_never_become_available_stops_at_max_unavailable() {
        let mut c = Cluster::new(deployment(6, json!({})));
        c.run(true);
        c.set_image("broken");
        for _ in 0..10 {
            c.step();
            // Old Pods stay available, new ones never become so.
            for rs in &mut c.rss {
                let n = rs_replicas(rs);
                let a = if ann(rs, ANNOTATION_REVISION) == Some("1") {
                    n
                } else {
                    0
                };
                rs.status = Some(
                    serde_json::from_value(json!({"replicas": n, "readyReplicas": a,
                    "availableReplicas": a, "observedGeneration": rs.metadata.generation}))
                    .expect("status"),
                );
            }
        }
        // At most 8 Pods (surge 2), at least 5 available (maxUnavailable 1).
        assert_eq!(c.sizes(), (5, 3));
        let s = c.status();
        assert_eq!(c.condition(CONDITION_PROGRESSING).1, REASON_RS_UPDATED);
        assert_eq!(s.unavailable_replicas, Some(3));
        assert!(!c.rolled_out());
    }

    #[test]
    fn recreate_scales_old_pods_to_zero_and_waits_for_them_before_creating_new_ones() {
        let mut c = Cluster::new(deployment(
            3,
            json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}}),
        ));
        c.run(true);
        let old_uid = c.rss[0].metadata.uid.clone().expect("uid");
        c.set_image("nginx:2");
        let plan = c.step();
        assert!(plan.create.is_none());
        assert_eq!(plan.update.len(), 1);
        assert_eq!(rs_replicas(&plan.update[0]), 0);
        // The old ReplicaSet's status still counts Pods: wait.
        let plan = c.step();
        assert!(plan.create.is_none() && plan.update.is_empty());
        // Status says zero, but a terminating Pod of the old ReplicaSet is still there: wait.
        c.settle(true);
        c.pods.push(
            serde_json::from_value(json!({
            "metadata": {"name": "old-pod", "namespace": "default",
                         "deletionTimestamp": "2026-11-22T03:00:00Z",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "x", "uid": old_uid, "controller": true}]},
            "status": {"phase": "Running"}}))
            .expect("pod"),
        );
        let plan = c.step();
        assert!(plan.create.is_none());
        c.pods.clear();
        let plan = c.step();
        let new = plan
            .create
            .expect("the new ReplicaSet, once old Pods are gone");
        assert_eq!(rs_replicas(&new), 3);
        c.settle(true);
        c.run(true);
        assert!(c.rolled_out());
        assert_eq!(c.sizes(), (0, 3));
    }

    #[test]
    fn rolling_back_to_an_old_template_reuses_its_replica_set_and_bumps_its_revision() {
        let mut c = Cluster::new(deployment(2, json!({})));
        c.run(true);
        let first = c.new_rs().metadata.name.clone();
        c.set_image("nginx:2");
        c.run(true);
        assert_eq!(annotation(&c.d.metadata, ANNOTATION_REVISION), Some("2"));
        c.set_image("nginx:1");
        let plan = c.step();
        assert!(
            plan.create.is_none(),
            "no new ReplicaSet for a known template"
        );
        c.settle(true);
        c.run(true);
        assert_eq!(c.rss.len(), 2);
        let rs = c.new_rs();
        assert_eq!(rs.metadata.name, first);
        assert_eq!(ann(rs, ANNOTATION_REVISION), Some("3"));
        assert_eq!(ann(rs, ANNOTATION_REVISION_HISTORY), Some("1"));
        assert_eq!(annotation(&c.d.metadata, ANNOTATION_REVISION), Some("3"));
        assert_eq!(c.sizes(), (0, 2));
        assert!(c.rolled_out());
    }

    #[test]
    fn scaling_a_rolled_out_deployment_resizes_its_replica_set() {
        let mut c = Cluster::new(deployment(6, json!({})));
        c.run(true);
        for (replicas, max) in [(2, "3"), (5, "7")] {
            c.set_replicas(replicas);
            let plan = c.step();
            assert_eq!(plan.update.len(), 1);
            let rs = &plan.update[0];
            assert_eq!(rs_replicas(rs), replicas);
            assert_eq!(
                ann(rs, ANNOTATION_DESIRED_REPLICAS),
                Some(replicas.to_string().as_str())
            );
            assert_eq!(ann(rs, ANNOTATION_MAX_REPLICAS), Some(max));
            c.settle(true);
            c.run(true);
            assert!(c.rolled_out(), "{replicas}");
            assert_eq!(c.status().replicas, Some(replicas));
        }
    }

    #[test]
    fn scaling_mid_rollout_shares_the_change_in_proportion() {
        let mut c = Cluster::new(deployment(10, json!({})));
        c.run(true);
        c.set_image("nginx:2");
        c.step(); // new ReplicaSet of 3 (surge 3 of 10), old down to 8 (maxUnavailable 2)
        c.settle(false);
        c.step(); // nothing new is available: the new one grows to the limit of 13 Pods
        assert_eq!(c.sizes(), (8, 5));
        c.set_replicas(20);
        let plan = c.step();
        assert_eq!(plan.update.len(), 2);
        // 20 + 5 surge = 25 allowed, 13 running: 12 to add, shared 8:5 → 15 and 10.
        assert_eq!(c.sizes(), (15, 10));
    }

    #[test]
    fn a_paused_deployment_does_not_roll_out_but_scales() {
        let mut c = Cluster::new(deployment(3, json!({})));
        c.run(true);
        c.d.spec.as_mut().expect("spec").paused = Some(true);
        c.set_image("nginx:2");
        let plan = c.step();
        assert!(plan.create.is_none() && plan.update.is_empty());
        assert_eq!(
            c.condition(CONDITION_PROGRESSING),
            ("Unknown".into(), REASON_PAUSED.into())
        );
        c.set_replicas(4);
        let plan = c.step();
        assert!(plan.create.is_none());
        assert_eq!(
            plan.update.iter().map(rs_replicas).collect::<Vec<_>>(),
            vec![4]
        );
        c.d.spec.as_mut().expect("spec").paused = Some(false);
        assert!(c.step().create.is_some(), "resuming rolls out");
        assert_eq!(
            c.condition(CONDITION_PROGRESSING),
            ("True".into(), REASON_NEW_RS_CREATED.into())
        );
    }

    #[test]
    fn a_rollout_without_progress_times_out_after_the_deadline() {
        let mut c = Cluster::new(deployment(
            2,
            json!({"spec": {"progressDeadlineSeconds": 60}}),
        ));
        c.run(true);
        c.set_image("broken");
        c.step();
        c.settle(false);
        let plan = c.step();
        assert_eq!(c.condition(CONDITION_PROGRESSING).1, REASON_RS_UPDATED);
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(60)));
        // Nothing changes; the next sync before the deadline asks to come back after it.
        let plan = c.step();
        assert_eq!(plan.status, None);
        assert!(plan
            .requeue_after
            .is_some_and(|d| d > Duration::from_secs(50) && d <= Duration::from_secs(61)));
        c.now += SignedDuration::from_secs(120);
        c.step();
        assert_eq!(
            c.condition(CONDITION_PROGRESSING),
            ("False".into(), REASON_TIMED_OUT.into())
        );
        // A timed-out rollout is not complete for `kubectl rollout status`.
        assert!(!c.rolled_out());
    }

    #[test]
    fn a_replica_failure_of_the_new_replica_set_becomes_the_deployments() {
        let mut c = Cluster::new(deployment(2, json!({})));
        c.step();
        let status = c.rss[0].status.get_or_insert_with(Default::default);
        status.conditions = Some(vec![serde_json::from_value(json!({
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"web-x\" is forbidden: exceeded quota"}))
        .expect("condition")]);
        c.step();
        assert_eq!(
            c.condition(CONDITION_REPLICA_FAILURE),
            ("True".into(), "FailedCreate".into())
        );
        c.settle(true);
        c.step();
        let s = c.status();
        assert!(get_condition(&s, CONDITION_REPLICA_FAILURE).is_none());
    }

    #[test]
    fn a_deployment_being_deleted_only_updates_its_status() {
        let mut c = Cluster::new(deployment(2, json!({})));
        c.run(true);
        c.set_image("nginx:2");
        c.d.metadata.deletion_timestamp = Some(Time(start()));
        let plan = c.step();
        assert!(plan.create.is_none() && plan.update.is_empty() && plan.delete.is_empty());
    }

    #[test]
    fn revision_history_limit_deletes_the_oldest_empty_replica_sets() {
        let mut c = Cluster::new(deployment(1, json!({"spec": {"revisionHistoryLimit": 1}})));
        c.run(true);
        for image in ["nginx:2", "nginx:3", "nginx:4"] {
            c.set_image(image);
            c.run(true);
        }
        let mut revisions: Vec<&str> = c
            .rss
            .iter()
            .filter_map(|r| ann(r, ANNOTATION_REVISION))
            .collect();
        revisions.sort();
        assert_eq!(revisions, vec!["3", "4"]);
    }

    #[test]
    fn orphan_replica_sets_are_adopted_and_name_collisions_bump_the_collision_count() {
        let d = deployment(1, json!({}));
        let hash = pod_template_hash(&d.spec.as_ref().expect("spec").template, None);
        // A foreign ReplicaSet squats the name with another template.
        let squatter: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{hash}"), "namespace": "default", "uid": "x",
                         "labels": {"app": "other"}},
            "spec": {"selector": {"matchLabels": {"app": "other"}},
                     "template": {"metadata": {"labels": {"app": "other"}}}}}))
        .expect("rs");
        let plan = plan(&d, &[&squatter], &[], start()).expect("plan");
        assert!(plan.create.is_none());
        assert_eq!(
            plan.status.as_ref().and_then(|s| s.collision_count),
            Some(1)
        );
        let mut d1 = d.clone();
        d1.status = plan.status;
        let next = super::plan(&d1, &[&squatter], &[], start()).expect("plan");
        let created = next.create.expect("created under another name");
        assert_eq!(
            created.metadata.name,
            Some(format!(
                "web-{}",
                pod_template_hash(&d.spec.as_ref().expect("spec").template, Some(1))
            ))
        );

        let mut orphan = squatter.clone();
        orphan.metadata.name = Some("web-orphan".to_string());
        orphan.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let plan = super::plan(&d, &[&orphan], &[], start()).expect("plan");
        assert_eq!(plan.adopt, vec!["web-orphan".to_string()]);
    }
}
