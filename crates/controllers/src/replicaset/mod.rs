//! The pure core of the ReplicaSet controller (`pkg/controller/replicaset/replica_set.go` in
//! Kubernetes). From one ReplicaSet and the Pods of its namespace, [`plan`] decides which orphans
//! to adopt and which owned Pods to release, how many Pods to create from the template and which
//! ones to delete (in Kubernetes' order, see [`pods_to_delete`]), and the status to write.
//! [`Expectations`] remembers the creates and deletes in flight so that a controller never acts
//! twice on a cache that has not yet seen its own writes. Nothing here does IO; the time is passed
//! in.
//!
//! The loop that runs it over the informers and writes through the API is [`controller`].

pub mod controller;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use switchyard_api::k8s::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use switchyard_api::k8s::api::core::v1::Pod;
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use switchyard_api::selector::{LabelSelector, SelectorError};

use crate::controller_ref::{claim, controller_ref};

/// Most Pods one sync creates or deletes (`BurstReplicas` in replica_set.go).
pub const BURST_REPLICAS: usize = 500;
/// After this long unfulfilled expectations are given up on, so a lost watch event cannot wedge
/// a ReplicaSet forever (`ExpectationsTimeout` in controller_utils.go).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// `controller.kubernetes.io/pod-deletion-cost`: Pods with a lower cost are deleted first
/// (<https://kubernetes.io/docs/concepts/workloads/controllers/replicaset/#pod-deletion-cost>).
pub const ANNOTATION_POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The condition type set while creating or deleting Pods fails.
pub const CONDITION_REPLICA_FAILURE: &str = "ReplicaFailure";

/// A Pod chosen for deletion; the uid is meant as a delete precondition, so that a Pod recreated
/// under the same name is not deleted by mistake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodToDelete {
    pub name: String,
    pub uid: String,
}

/// The writes one sync of a ReplicaSet asks for, to be made in this order: adoptions and
/// releases (patches of `ownerReferences`), creates, deletes, then the status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaSetPlan {
    /// Orphan Pods to adopt.
    pub adopt: Vec<String>,
    /// Owned Pods that no longer match the selector, to release.
    pub release: Vec<String>,
    /// Pods to create (no name; `generateName` is `<rs-name>-`).
    pub create: Vec<Pod>,
    /// Pods to delete, most deletable first.
    pub delete: Vec<PodToDelete>,
    /// The status computed from the Pods managed now. If creates or deletes fail, pass it through
    /// [`with_replica_failure`] before writing it.
    pub status: ReplicaSetStatus,
    /// When a ready Pod becomes available (minReadySeconds), the ReplicaSet must be synced again.
    pub requeue_after: Option<Duration>,
}

/// Why creating or deleting Pods failed, for the `ReplicaFailure` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFailure {
    /// `FailedCreate` or `FailedDelete`.
    pub reason: String,
    /// The API error.
    pub message: String,
}

/// Errors of [`plan`]. None is retryable without a change of the ReplicaSet.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetError {
    /// The ReplicaSet's selector cannot be converted to a label selector.
    #[error("invalid selector: {0}")]
    InvalidSelector(#[source] SelectorError),
}

// ---------------------------------------------------------------------------------------------
// Pod predicates (pkg/api/v1/pod/util.go, pkg/controller/controller_utils.go)
// ---------------------------------------------------------------------------------------------

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// A Pod that still counts towards replicas: not terminating and not finished
/// (`controller.IsPodActive`).
pub fn is_pod_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), "Succeeded" | "Failed")
}

fn ready_condition(pod: &Pod) -> Option<&switchyard_api::k8s::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The Pod's Ready condition is True (`podutil.IsPodReady`).
pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn ready_since(pod: &Pod) -> Option<Timestamp> {
    ready_condition(pod)
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Ready for at least `min_ready_seconds` (`podutil.IsPodAvailable`). A Ready condition without
/// a transition time counts as available only when no wait is required.
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !is_pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod).is_some_and(|t| {
        t.checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
            .is_ok_and(|at| at <= now)
    })
}

/// How long until a ready Pod becomes available; `None` if it is not ready or already is.
fn until_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> Option<Duration> {
    if min_ready_seconds <= 0 || !is_pod_ready(pod) || is_pod_available(pod, min_ready_seconds, now)
    {
        return None;
    }
    let since = ready_since(pod)?;
    let at = since
        .checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
        .ok()?;
    Duration::try_from(at.duration_since(now)).ok()
}

// ---------------------------------------------------------------------------------------------
// Deletion order (controller_utils.go ActivePodsWithRanks)
// ---------------------------------------------------------------------------------------------

fn phase_ordinal(pod: &Pod) -> u8 {
    match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        // Pending, and anything without a phase yet.
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_POD_DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// `afterOrZero`: an unset time sorts first, then the later time.
fn later_or_unset_first(a: Option<Timestamp>, b: Option<Timestamp>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

/// Kubernetes' order of deletion, most deletable first: unassigned before assigned; Pending
/// before Unknown before Running; not ready before ready; lower deletion cost first; Pods doubled
/// up on a node (higher `rank`) first; more recently ready first; more container restarts first;
/// newer first. (Kubernetes' LogarithmicScaleDown compares the last two in powers of two; we
/// compare them exactly, which only differs between Pods of nearly the same age.)
fn deletion_order(a: (&Pod, usize), b: (&Pod, usize)) -> Ordering {
    let (pa, rank_a) = a;
    let (pb, rank_b) = b;
    let (na, nb) = (node_name(pa), node_name(pb));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    phase_ordinal(pa)
        .cmp(&phase_ordinal(pb))
        .then_with(|| is_pod_ready(pa).cmp(&is_pod_ready(pb)))
        .then_with(|| deletion_cost(pa).cmp(&deletion_cost(pb)))
        .then_with(|| rank_b.cmp(&rank_a))
        .then_with(|| {
            if is_pod_ready(pa) && is_pod_ready(pb) {
                later_or_unset_first(ready_since(pa), ready_since(pb))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| max_restarts(pb).cmp(&max_restarts(pa)))
        .then_with(|| {
            later_or_unset_first(
                pa.metadata.creation_timestamp.as_ref().map(|t| t.0),
                pb.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        })
}

/// The `n` Pods to delete first among `pods` (`getPodsToDelete`). A Pod's rank is the number of
/// the given Pods on its node, so a node running several of them gives one up first.
pub fn pods_to_delete<'a>(pods: &[&'a Pod], n: usize) -> Vec<&'a Pod> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for pod in pods {
        let node = node_name(pod);
        if !node.is_empty() {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let rank = |p: &Pod| per_node.get(node_name(p)).copied().unwrap_or(0);
    let mut ranked: Vec<(&'a Pod, usize)> = pods.iter().map(|p| (*p, rank(p))).collect();
    ranked.sort_by(|a, b| deletion_order(*a, *b));
    ranked.into_iter().take(n).map(|(p, _)| p).collect()
}

// ---------------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------------

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn min_ready_seconds(rs: &ReplicaSet) -> i32 {
    rs.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

/// The ReplicaSet's selector as a label selector.
pub fn selector_of(rs: &ReplicaSet) -> Result<LabelSelector, ReplicaSetError> {
    let selector = rs
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    LabelSelector::from_metav1(&selector).map_err(ReplicaSetError::InvalidSelector)
}

/// A Pod to create from the ReplicaSet's template (`GetPodFromTemplate`): the template's labels,
/// annotations, finalizers and spec, `generateName` `<rs-name>-` and the ReplicaSet as
/// controller.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            namespace: rs.metadata.namespace.clone(),
            generate_name: Some(format!("{name}-")),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// What to do for one ReplicaSet. `namespace_pods` are all Pods of its namespace (claiming
/// decides which are its own); `expectations_satisfied` is false while earlier creates or
/// deletes are not yet visible in `namespace_pods`, in which case no Pods are created or deleted
/// (the status is still computed). A ReplicaSet being deleted creates and deletes nothing.
pub fn plan(
    rs: &ReplicaSet,
    namespace_pods: &[&Pod],
    expectations_satisfied: bool,
    now: Timestamp,
) -> Result<ReplicaSetPlan, ReplicaSetError> {
    let selector = selector_of(rs)?;
    let active: Vec<&Pod> = namespace_pods
        .iter()
        .copied()
        .filter(|p| is_pod_active(p))
        .collect();
    let claimed = claim(&rs.metadata, &selector, active.iter().map(|p| &p.metadata));
    let owned: Vec<&Pod> = claimed.claimed.iter().map(|&i| active[i]).collect();

    let mut out = ReplicaSetPlan {
        adopt: claimed.adopt,
        release: claimed.release,
        ..ReplicaSetPlan::default()
    };
    if expectations_satisfied && rs.metadata.deletion_timestamp.is_none() {
        let want = usize::try_from(replicas_of(rs)).unwrap_or(0);
        if owned.len() < want {
            let n = (want - owned.len()).min(BURST_REPLICAS);
            out.create = (0..n).map(|_| pod_from_template(rs)).collect();
        } else if owned.len() > want {
            let n = (owned.len() - want).min(BURST_REPLICAS);
            out.delete = pods_to_delete(&owned, n)
                .into_iter()
                .map(|p| PodToDelete {
                    name: p.metadata.name.clone().unwrap_or_default(),
                    uid: p.metadata.uid.clone().unwrap_or_default(),
                })
                .collect();
        }
    }
    out.status = status_of(rs, &owned, now);
    let min_ready = min_ready_seconds(rs);
    out.requeue_after = owned
        .iter()
        .filter_map(|p| until_available(p, min_ready, now))
        .min();
    Ok(out)
}

/// The status of a ReplicaSet managing `owned` (active) Pods (`calculateStatus`): replicas, how
/// many carry all template labels, are ready and are available; the observed generation; the
/// ReplicaFailure condition is dropped (a sync without failures clears it).
pub fn status_of(rs: &ReplicaSet, owned: &[&Pod], now: Timestamp) -> ReplicaSetStatus {
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let template_selector = LabelSelector::from_map(&template_labels);
    let min_ready = min_ready_seconds(rs);
    let empty = BTreeMap::new();
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
        i32::try_from(owned.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let previous = rs.status.clone().unwrap_or_default();
    let conditions: Vec<ReplicaSetCondition> = previous
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != CONDITION_REPLICA_FAILURE)
        .collect();
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            template_selector.matches(p.metadata.labels.as_ref().unwrap_or(&empty))
        })),
        ready_replicas: Some(count(&is_pod_ready)),
        available_replicas: Some(count(&|p| is_pod_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation.or(previous.observed_generation),
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

/// `status` with a ReplicaFailure condition (True, with the failure's reason and message). An
/// existing ReplicaFailure condition is kept as it is, as Kubernetes sets it only once.
pub fn with_replica_failure(
    rs: &ReplicaSet,
    mut status: ReplicaSetStatus,
    failure: &ReplicaFailure,
    now: Timestamp,
) -> ReplicaSetStatus {
    let existing = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == CONDITION_REPLICA_FAILURE))
        .cloned();
    let condition = existing.unwrap_or_else(|| ReplicaSetCondition {
        type_: CONDITION_REPLICA_FAILURE.to_string(),
        status: "True".to_string(),
        reason: Some(failure.reason.clone()),
        message: Some(failure.message.clone()),
        last_transition_time: Some(Time(now)),
    });
    let mut conditions = status.conditions.take().unwrap_or_default();
    conditions.retain(|c| c.type_ != CONDITION_REPLICA_FAILURE);
    conditions.push(condition);
    status.conditions = Some(conditions);
    status
}

fn normalized(s: &ReplicaSetStatus) -> ReplicaSetStatus {
    let mut s = s.clone();
    for f in [
        &mut s.fully_labeled_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
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

/// Whether `status` differs from what the ReplicaSet has (absent counts equal zero).
pub fn status_needs_update(rs: &ReplicaSet, status: &ReplicaSetStatus) -> bool {
    let current = rs.status.clone().unwrap_or_default();
    normalized(&current) != normalized(status)
}

// ---------------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Pending {
    creates: usize,
    deletes: BTreeSet<String>,
    since: Timestamp,
}

/// Creates and deletes a controller has asked for but not yet seen in its informer, per owner
/// (Kubernetes' `UIDTrackingControllerExpectations`). An owner with pending expectations must
/// not create or delete again: its cache would still show the old Pods and it would overshoot.
/// Expectations older than [`EXPECTATIONS_TIMEOUT`] count as met.
#[derive(Clone, Debug)]
pub struct Expectations<K> {
    pending: HashMap<K, Pending>,
    timeout: Duration,
}

impl<K: Clone + Eq + Hash> Default for Expectations<K> {
    fn default() -> Self {
        Self::new(EXPECTATIONS_TIMEOUT)
    }
}

impl<K: Clone + Eq + Hash> Expectations<K> {
    /// Expectations that expire after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            pending: HashMap::new(),
            timeout,
        }
    }

    /// Records that `creates` Pods are being created and the named Pods deleted for `key`,
    /// replacing what was expected before.
    pub fn expect(
        &mut self,
        key: K,
        creates: usize,
        deletes: impl IntoIterator<Item = String>,
        now: Timestamp,
    ) {
        self.pending.insert(
            key,
            Pending {
                creates,
                deletes: deletes.into_iter().collect(),
                since: now,
            },
        );
    }

    /// A Pod of `key` appeared in the informer, or its create failed and will not appear.
    pub fn creation_observed(&mut self, key: &K) {
        if let Some(p) = self.pending.get_mut(key) {
            p.creates = p.creates.saturating_sub(1);
        }
    }

    /// The named Pod of `key` is gone or terminating, or its delete failed.
    pub fn deletion_observed(&mut self, key: &K, pod_name: &str) {
        if let Some(p) = self.pending.get_mut(key) {
            p.deletes.remove(pod_name);
        }
    }

    /// Whether `key` may act on its cache: nothing pending, or everything observed, or the
    /// expectations expired.
    pub fn satisfied(&self, key: &K, now: Timestamp) -> bool {
        let Some(p) = self.pending.get(key) else {
            return true;
        };
        if p.creates == 0 && p.deletes.is_empty() {
            return true;
        }
        let timeout = SignedDuration::try_from(self.timeout).unwrap_or(SignedDuration::MAX);
        now.duration_since(p.since) >= timeout
    }

    /// Drops what is known about `key` (its owner was deleted).
    pub fn forget(&mut self, key: &K) {
        self.pending.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn now() -> Timestamp {
        "2026-11-22T03:00:00Z".parse().expect("valid timestamp")
    }

    fn rs(replicas: i32, extra: Value) -> ReplicaSet {
        let mut v = json!({
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid", "generation": 3},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web", "tier": "fe"}, "annotations": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}
                }
            }
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("valid ReplicaSet")
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

    /// A Pod owned by the test ReplicaSet, created `age` seconds before now, Running and Ready
    /// (ready `age` seconds) on node-1; `extra` is merged over it.
    fn pod(name: &str, age: i64, extra: Value) -> Pod {
        let created = now() - SignedDuration::from_secs(age);
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "creationTimestamp": created.to_string(),
                         "labels": {"app": "web", "tier": "fe"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-abc", "uid": "rs-uid", "controller": true}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastTransitionTime": created.to_string()}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).expect("valid Pod")
    }

    fn names(pods: &[&Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    fn deleted(plan: &ReplicaSetPlan) -> Vec<String> {
        plan.delete.iter().map(|d| d.name.clone()).collect()
    }

    #[test]
    fn scaling_up_creates_pods_from_the_template_owned_by_the_replica_set() {
        let rs = rs(3, json!({}));
        let p = pod("a", 10, json!({}));
        let plan = plan(&rs, &[&p], true, now()).expect("plan");
        assert_eq!(plan.create.len(), 2);
        assert!(plan.delete.is_empty());
        let created = &plan.create[0];
        assert_eq!(created.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(created.metadata.name, None);
        assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            created.metadata.labels.as_ref().map(|l| l.len()),
            Some(2),
            "template labels"
        );
        assert_eq!(
            created
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("a")),
            Some(&"b".to_string())
        );
        let owner = &created.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str()
            ),
            ("apps/v1", "ReplicaSet", "web-abc", "rs-uid")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(
            created.spec.as_ref().map(|s| s.containers[0].image.clone()),
            Some(Some("nginx".to_string()))
        );
    }

    #[test]
    fn creates_are_capped_at_the_burst_size() {
        let plan = plan(&rs(1200, json!({})), &[], true, now()).expect("plan");
        assert_eq!(plan.create.len(), BURST_REPLICAS);
    }

    #[test]
    fn scaling_down_deletes_pods_in_kubernetes_order() {
        let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        // (pod, why it sorts where it does); listed most deletable first.
        let ordered = [
            pod("unassigned", 100, json!({"spec": {"nodeName": null}})),
            pod("pending", 100, json!({"status": {"phase": "Pending"}})),
            pod("unknown", 100, json!({"status": {"phase": "Unknown"}})),
            pod("not-ready", 100, not_ready),
            pod(
                "cheap",
                100,
                json!({"metadata": {"annotations": {ANNOTATION_POD_DELETION_COST: "-5"}}}),
            ),
            pod("doubled-up-1", 100, json!({"spec": {"nodeName": "node-2"}})),
            pod(
                "ready-recently",
                50,
                json!({"spec": {"nodeName": "node-3"},
                "metadata": {"creationTimestamp": "2026-11-22T00:00:00Z"}}),
            ),
            pod(
                "restarted",
                100,
                json!({"spec": {"nodeName": "node-4"},
                "status": {"containerStatuses": [{"name": "c", "image": "nginx", "imageID": "",
                    "ready": true, "restartCount": 4}]}}),
            ),
            pod(
                "newer",
                90,
                json!({"spec": {"nodeName": "node-5"},
                "status": {"conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-11-22T02:58:20Z"}]}}),
            ),
            pod(
                "older",
                200,
                json!({"spec": {"nodeName": "node-6"},
                "status": {"conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-11-22T02:58:20Z"}]}}),
            ),
        ];
        // A second Pod on node-2 makes doubled-up-1 rank higher than the lone Pods.
        let partner = pod(
            "doubled-up-2",
            1000,
            json!({"spec": {"nodeName": "node-2"},
                   "metadata": {"annotations": {ANNOTATION_POD_DELETION_COST: "10"}}}),
        );
        let mut all: Vec<&Pod> = ordered.iter().rev().collect();
        all.push(&partner);
        let got = pods_to_delete(&all, ordered.len());
        let want: Vec<String> = ordered
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names(&got), want);

        let rs = rs(1, json!({}));
        let plan = plan(&rs, &all, true, now()).expect("plan");
        assert_eq!(deleted(&plan), want);
        assert_eq!(plan.delete[0].uid, "uid-unassigned");
    }

    #[test]
    fn terminating_and_finished_pods_do_not_count() {
        let rs = rs(2, json!({}));
        let pods = [
            pod("live", 10, json!({})),
            pod(
                "terminating",
                10,
                json!({"metadata": {"deletionTimestamp": "2026-11-22T02:59:00Z"}}),
            ),
            pod("failed", 10, json!({"status": {"phase": "Failed"}})),
            pod("succeeded", 10, json!({"status": {"phase": "Succeeded"}})),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan(&rs, &refs, true, now()).expect("plan");
        assert_eq!(plan.create.len(), 1);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.replicas, 1);
    }

    #[test]
    fn matching_orphans_are_adopted_and_count_towards_replicas() {
        let rs = rs(2, json!({}));
        let owned = pod("owned", 10, json!({}));
        let orphan = pod("orphan", 10, json!({"metadata": {"ownerReferences": null}}));
        let foreign = pod(
            "foreign",
            10,
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "x", "uid": "other", "controller": true}]}}),
        );
        let stray = pod("stray", 10, json!({"metadata": {"labels": {"app": "db"}}}));
        let plan = plan(&rs, &[&owned, &orphan, &foreign, &stray], true, now()).expect("plan");
        assert_eq!(plan.adopt, vec!["orphan".to_string()]);
        assert_eq!(plan.release, vec!["stray".to_string()]);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.status.replicas, 2);
    }

    #[test]
    fn unmet_expectations_or_deletion_block_creates_and_deletes_but_not_status() {
        let p = pod("a", 10, json!({}));
        let waiting = plan(&rs(3, json!({})), &[&p], false, now()).expect("plan");
        assert!(waiting.create.is_empty());
        assert_eq!(waiting.status.replicas, 1);
        let dying = rs(
            0,
            json!({"metadata": {"deletionTimestamp": "2026-11-22T02:00:00Z"}}),
        );
        let plan = plan(&dying, &[&p], true, now()).expect("plan");
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn status_counts_labelled_ready_and_available_replicas() {
        // minReadySeconds 30: ready for 100 s is available, ready for 10 s is not yet.
        let rs = rs(
            4,
            json!({"spec": {"minReadySeconds": 30}, "status": {"replicas": 0,
            "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}]}}),
        );
        let pods = [
            pod("available", 100, json!({})),
            pod("just-ready", 10, json!({})),
            pod(
                "not-ready",
                100,
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
            // Matches the selector but lacks the template's `tier` label.
            pod(
                "partly-labelled",
                100,
                json!({"metadata": {"labels": {"tier": null}}}),
            ),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let plan = plan(&rs, &refs, true, now()).expect("plan");
        let s = &plan.status;
        assert_eq!(
            (
                s.replicas,
                s.fully_labeled_replicas,
                s.ready_replicas,
                s.available_replicas,
                s.observed_generation
            ),
            (4, Some(3), Some(3), Some(2), Some(3))
        );
        assert_eq!(s.conditions, None, "a clean sync clears ReplicaFailure");
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(20)));
        assert!(status_needs_update(&rs, s));
    }

    #[test]
    fn failures_set_the_replica_failure_condition_once() {
        let rs0 = rs(1, json!({}));
        let failure = ReplicaFailure {
            reason: "FailedCreate".to_string(),
            message: "quota exceeded".to_string(),
        };
        let status = with_replica_failure(&rs0, ReplicaSetStatus::default(), &failure, now());
        let c = &status.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()),
            ("ReplicaFailure", "True", Some("FailedCreate"))
        );
        let rs1 = rs(
            1,
            json!({"status": {"replicas": 0, "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": "first", "lastTransitionTime": "2026-11-22T01:00:00Z"}]}}),
        );
        let again = with_replica_failure(&rs1, ReplicaSetStatus::default(), &failure, now());
        assert_eq!(
            again.conditions.expect("conditions")[0].message.as_deref(),
            Some("first")
        );
    }

    #[test]
    fn a_converged_replica_set_needs_no_writes() {
        let rs = rs(
            1,
            json!({"status": {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1,
                    "availableReplicas": 1, "observedGeneration": 3}}),
        );
        let p = pod("a", 10, json!({}));
        let plan = plan(&rs, &[&p], true, now()).expect("plan");
        assert!(plan.create.is_empty() && plan.delete.is_empty() && plan.adopt.is_empty());
        assert!(!status_needs_update(&rs, &plan.status));
    }

    #[test]
    fn expectations_block_until_observed_or_expired() {
        let mut e: Expectations<&str> = Expectations::default();
        assert!(e.satisfied(&"rs", now()));
        e.expect("rs", 2, ["old".to_string()], now());
        assert!(!e.satisfied(&"rs", now()));
        e.creation_observed(&"rs");
        e.creation_observed(&"rs");
        assert!(!e.satisfied(&"rs", now()), "the delete is still pending");
        e.deletion_observed(&"rs", "old");
        assert!(e.satisfied(&"rs", now()));

        e.expect("rs", 1, [], now());
        let later = now() + SignedDuration::from_secs(5 * 60);
        assert!(!e.satisfied(&"rs", now()));
        assert!(e.satisfied(&"rs", later), "expired");
        e.forget(&"rs");
        assert!(e.satisfied(&"rs", now()));
    }
}
