//! The pure core of the scheduler: which Node an unbound Pod goes to. It implements the subset of
//! kube-scheduler's default profile that matters for Service networking
//! (`pkg/scheduler/framework/plugins`): the `NodeUnschedulable`, `TaintToleration` and
//! `NodeAffinity` filters (nodeSelector and required node affinity), plus a readiness filter
//! (Kubernetes expresses readiness through the `node.kubernetes.io/not-ready` and `unreachable`
//! taints; we also require `Ready=True` so that a freshly registered node that has not been
//! tainted yet gets nothing). Among the fitting nodes the one with the fewest non-terminated Pods
//! wins, ties broken by name, so the same cluster state always gives the same binding.
//!
//! A Pod that fits nowhere gets kube-scheduler's `FitError` message
//! (`pkg/scheduler/framework/types.go`): "0/3 nodes are available: 1 node(s) didn't match Pod's
//! node affinity/selector, 2 node(s) had untolerated taint {node.kubernetes.io/not-ready: }.".
//! Each node reports only its first failing filter, in the default profile's filter order.
//!
//! Nothing here does IO; the loop ([`controller`]) binds through `pods/binding` and writes the
//! `PodScheduled` condition through `pods/status`.

pub mod controller;

use crate::pods::CachedPod;
use std::collections::BTreeMap;

use jiff::Timestamp;
use switchyard_api::k8s::api::core::v1::{
    Binding, Node, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, Pod, PodCondition,
    PodStatus, Taint, Toleration,
};
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

/// The scheduler name Pods get by default (`v1.DefaultSchedulerName`); we serve it and Pods that
/// leave `spec.schedulerName` empty.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";
/// Taint put on nodes whose `Ready` condition is `False`.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint put on nodes whose `Ready` condition is `Unknown`.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint put on nodes with `spec.unschedulable` (cordoned).
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// `NoSchedule` taint effect.
pub const EFFECT_NO_SCHEDULE: &str = "NoSchedule";
/// `NoExecute` taint effect.
pub const EFFECT_NO_EXECUTE: &str = "NoExecute";
/// Reason of the `PodScheduled=False` condition (`v1.PodReasonUnschedulable`).
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";
/// Reason of the Warning Event for a Pod that fits nowhere.
pub const EVENT_FAILED_SCHEDULING: &str = "FailedScheduling";
/// Reason of the Normal Event for a bound Pod.
pub const EVENT_SCHEDULED: &str = "Scheduled";

/// Why one node cannot take the Pod; [`NodeMismatch::reason`] is kube-scheduler's wording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeMismatch {
    /// `spec.unschedulable` (cordoned) and the Pod does not tolerate
    /// `node.kubernetes.io/unschedulable:NoSchedule` (`NodeUnschedulable` plugin).
    Unschedulable,
    /// A `NoSchedule`/`NoExecute` taint the Pod does not tolerate (`TaintToleration` plugin).
    UntoleratedTaint {
        /// The taint's key.
        key: String,
        /// The taint's value (empty when unset).
        value: String,
    },
    /// `spec.nodeSelector` or required node affinity does not match (`NodeAffinity` plugin).
    NodeAffinity,
    /// The node's `Ready` condition is not `True` (the pre-taint `CheckNodeCondition` predicate).
    NotReady,
}

impl NodeMismatch {
    /// The reason as it appears in the `FitError` message.
    pub fn reason(&self) -> String {
        match self {
            NodeMismatch::Unschedulable => "node(s) were unschedulable".to_string(),
            NodeMismatch::UntoleratedTaint { key, value } => {
                format!("node(s) had untolerated taint {{{key}: {value}}}")
            }
            NodeMismatch::NodeAffinity => {
                "node(s) didn't match Pod's node affinity/selector".to_string()
            }
            NodeMismatch::NotReady => "node(s) were not ready".to_string(),
        }
    }
}

/// No node can take the Pod.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unschedulable {
    /// kube-scheduler's `FitError` message, e.g. "0/3 nodes are available: 3 node(s) were
    /// unschedulable.".
    pub message: String,
}

/// Whether this scheduler should bind the Pod: not bound yet, ours (`default-scheduler` or no
/// scheduler name), not being deleted and not finished.
pub fn responsible_for(pod: &CachedPod) -> bool {
    let spec = pod.spec.as_ref();
    let unbound = spec
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty);
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n.is_empty() || n == DEFAULT_SCHEDULER_NAME);
    unbound && ours && pod.metadata.deletion_timestamp.is_none() && !is_terminated(pod)
}

/// A Pod in phase `Succeeded` or `Failed`: it no longer occupies its node.
pub fn is_terminated(pod: &CachedPod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The number of non-terminated Pods bound to each node: the load the spread compares.
pub fn pod_counts<'a>(pods: impl IntoIterator<Item = &'a CachedPod>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for pod in pods {
        if is_terminated(pod) {
            continue;
        }
        if let Some(node) = pod.node_name() {
            *counts.entry(node.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Whether `toleration` tolerates `taint` (`Toleration.ToleratesTaint` in
/// k8s.io/api/core/v1/toleration.go): an empty effect matches every effect, an empty key with
/// `Exists` matches every key, `Equal` (the default operator) compares values.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty()) {
        if key != taint.key {
            return false;
        }
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The Pod's tolerations.
pub fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

fn pod_tolerates(pod: &Pod, taint: &Taint) -> bool {
    tolerations(pod).iter().any(|t| tolerates(t, taint))
}

fn synthetic_taint(key: &str) -> Taint {
    Taint {
        key: key.to_string(),
        effect: EFFECT_NO_SCHEDULE.to_string(),
        ..Taint::default()
    }
}

/// The status of the node's `Ready` condition (`None` when the node has none).
pub fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn labels(node: &Node) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// One `matchExpressions`/`matchFields` requirement (`nodeaffinity.nodeSelectorRequirementsAsSelector`).
/// Unknown operators and malformed `Gt`/`Lt` values match nothing, as the API server would have
/// rejected them.
fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), [want]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(want) = want.parse::<i64>() else {
                return false;
            };
            if req.operator == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

/// A term matches when all its requirements do; a term with no requirements matches nothing
/// (k8s.io/component-helpers/scheduling/corev1/nodeaffinity).
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = labels(node);
    expressions
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            // Only `metadata.name` is a supported node field.
            r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_deref())
        })
}

/// Whether the node matches the Pod's `spec.nodeSelector` and required node affinity (terms
/// ORed; an empty term list matches nothing).
pub fn matches_node_affinity(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let labels = labels(node);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|required| {
            required
                .node_selector_terms
                .iter()
                .any(|t| term_matches(t, node))
        });
    selector_ok && affinity_ok
}

/// Whether the Pod may run on the node, or the first reason it may not, in the order of the
/// default profile's filters: NodeUnschedulable, TaintToleration, NodeAffinity, then readiness.
pub fn fits(pod: &Pod, node: &Node) -> Result<(), NodeMismatch> {
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false)
        && !pod_tolerates(pod, &synthetic_taint(TAINT_UNSCHEDULABLE))
    {
        return Err(NodeMismatch::Unschedulable);
    }
    let untolerated = spec
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.effect == EFFECT_NO_SCHEDULE || t.effect == EFFECT_NO_EXECUTE)
        .find(|t| !pod_tolerates(pod, t));
    if let Some(taint) = untolerated {
        return Err(NodeMismatch::UntoleratedTaint {
            key: taint.key.clone(),
            value: taint.value.clone().unwrap_or_default(),
        });
    }
    if !matches_node_affinity(pod, node) {
        return Err(NodeMismatch::NodeAffinity);
    }
    // A Pod that tolerates the taint the node lifecycle controller will put on this node (as
    // DaemonSet Pods do) may go there before the taint exists.
    let readiness_taint = match ready_status(node) {
        Some("True") => None,
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => Some(TAINT_NOT_READY),
    };
    if let Some(key) = readiness_taint {
        if !pod_tolerates(pod, &synthetic_taint(key)) {
            return Err(NodeMismatch::NotReady);
        }
    }
    Ok(())
}

/// The node to bind the Pod to: among the nodes it fits, the one with the fewest Pods in
/// `pod_counts` (ties by name). The loop counts Pods it has bound but not yet seen in its cache.
pub fn schedule(
    pod: &Pod,
    nodes: &[&Node],
    pod_counts: &BTreeMap<String, usize>,
) -> Result<String, Unschedulable> {
    let mut best: Option<(usize, &str)> = None;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for node in nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        match fits(pod, node) {
            Ok(()) => {
                let load = pod_counts.get(name).copied().unwrap_or(0);
                if best.is_none_or(|b| (load, name) < b) {
                    best = Some((load, name));
                }
            }
            Err(mismatch) => *reasons.entry(mismatch.reason()).or_insert(0) += 1,
        }
    }
    if let Some((_, name)) = best {
        return Ok(name.to_string());
    }
    Err(Unschedulable {
        message: fit_error_message(nodes.len(), &reasons),
    })
}

/// `FitError.Error()`: the reasons histogram as "count reason", sorted as strings.
/// Without any node it is `ErrNoNodesAvailable`.
fn fit_error_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut message = format!("0/{total} nodes are available:");
    if !parts.is_empty() {
        message.push(' ');
        message.push_str(&parts.join(", "));
    }
    message.push('.');
    message
}

/// The `core/v1` Binding posted to `pods/binding` to bind the Pod to `node`.
pub fn binding(pod: &Pod, node: &str) -> Binding {
    Binding {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Node".to_string()),
            name: Some(node.to_string()),
            ..ObjectReference::default()
        },
    }
}

/// The Pod's conditions with `condition` set (`podutil.UpdatePodCondition`): `None` when nothing
/// changes; the transition time is kept when the status does not change.
pub fn with_pod_condition(
    status: Option<&PodStatus>,
    mut condition: PodCondition,
) -> Option<Vec<PodCondition>> {
    let mut conditions = status
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status
                && existing.reason == condition.reason
                && existing.message == condition.message
            {
                return None;
            }
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
        }
        None => conditions.push(condition),
    }
    Some(conditions)
}

/// The Pod's conditions after a failed scheduling attempt: `PodScheduled=False`, reason
/// `Unschedulable`, the fit error as message. `None` when already so.
pub fn unschedulable_conditions(
    pod: &Pod,
    error: &Unschedulable,
    now: Timestamp,
) -> Option<Vec<PodCondition>> {
    with_pod_condition(
        pod.status.as_ref(),
        PodCondition {
            type_: "PodScheduled".to_string(),
            status: "False".to_string(),
            reason: Some(REASON_UNSCHEDULABLE.to_string()),
            message: Some(error.message.clone()),
            last_transition_time: Some(Time(now)),
            ..PodCondition::default()
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Test fixtures are built by hand; a panic is a failed test.
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node(name: &str, extra: Value) -> Node {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn pod(extra: Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn not_ready_taint() -> Value {
        json!({"spec": {"taints": [{"key": TAINT_NOT_READY, "effect": "NoSchedule"}]}})
    }

    fn run(pod: &Pod, nodes: &[Node], counts: &[(&str, usize)]) -> Result<String, String> {
        let refs: Vec<&Node> = nodes.iter().collect();
        let counts = counts.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        schedule(pod, &refs, &counts).map_err(|e| e.message)
    }

    #[test]
    fn each_filter_rejects_or_admits_a_node() {
        let cases: Vec<(&str, Value, Value, Result<(), NodeMismatch>)> = vec![
            ("ready node takes a plain pod", json!({}), json!({}), Ok(())),
            (
                "cordoned node is unschedulable",
                json!({"spec": {"unschedulable": true}}),
                json!({}),
                Err(NodeMismatch::Unschedulable),
            ),
            (
                "cordoned node takes a pod tolerating the unschedulable taint",
                json!({"spec": {"unschedulable": true}}),
                json!({"spec": {"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}]}}),
                Ok(()),
            ),
            (
                "NoSchedule taint not tolerated",
                not_ready_taint(),
                json!({}),
                Err(NodeMismatch::UntoleratedTaint {
                    key: TAINT_NOT_READY.into(),
                    value: String::new(),
                }),
            ),
            (
                "NoExecute taint with value not tolerated",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]}}),
                json!({"spec": {"tolerations": [{"key": "dedicated", "value": "cpu"}]}}),
                Err(NodeMismatch::UntoleratedTaint {
                    key: "dedicated".into(),
                    value: "gpu".into(),
                }),
            ),
            (
                "Equal toleration with the same value",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]}}),
                json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]}}),
                Ok(()),
            ),
            (
                "toleration for another effect does not count",
                json!({"spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}}),
                json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]}}),
                Err(NodeMismatch::UntoleratedTaint {
                    key: "dedicated".into(),
                    value: String::new(),
                }),
            ),
            (
                "empty key with Exists tolerates everything",
                json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoExecute"}]}}),
                json!({"spec": {"tolerations": [{"operator": "Exists"}]}}),
                Ok(()),
            ),
            (
                "PreferNoSchedule taint is ignored",
                json!({"spec": {"taints": [{"key": "a", "effect": "PreferNoSchedule"}]}}),
                json!({}),
                Ok(()),
            ),
            (
                "nodeSelector mismatch",
                json!({}),
                json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
                Err(NodeMismatch::NodeAffinity),
            ),
            (
                "nodeSelector match",
                json!({"metadata": {"labels": {"disk": "ssd"}}}),
                json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
                Ok(()),
            ),
            (
                "required affinity In matches",
                json!({"metadata": {"labels": {"zone": "b"}}}),
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b", "c"]}]}
                ]}}}}}),
                Ok(()),
            ),
            (
                "required affinity NotIn and Gt",
                json!({"metadata": {"labels": {"zone": "b", "cores": "8"}}}),
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]},
                    {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["16"]}]}
                ]}}}}}),
                Err(NodeMismatch::NodeAffinity),
            ),
            (
                "required affinity DoesNotExist and Lt and matchFields on the name",
                json!({"metadata": {"labels": {"cores": "8"}}}),
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}, {"key": "cores", "operator": "Lt", "values": ["16"]}],
                     "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
                ]}}}}}),
                Ok(()),
            ),
            (
                "an empty term matches nothing",
                json!({}),
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}}}),
                Err(NodeMismatch::NodeAffinity),
            ),
            (
                "Ready=False node without taint yet",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
                json!({}),
                Err(NodeMismatch::NotReady),
            ),
            (
                "node without conditions is not ready",
                json!({"status": {"conditions": []}}),
                json!({}),
                Err(NodeMismatch::NotReady),
            ),
            (
                "Ready=Unknown node takes a pod tolerating unreachable",
                json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
                json!({"spec": {"tolerations": [{"key": TAINT_UNREACHABLE, "operator": "Exists"}]}}),
                Ok(()),
            ),
            (
                "unschedulable is reported before taints",
                json!({"spec": {"unschedulable": true, "taints": [{"key": "a", "effect": "NoSchedule"}]}}),
                json!({}),
                Err(NodeMismatch::Unschedulable),
            ),
        ];
        for (name, node_extra, pod_extra, want) in cases {
            let got = fits(&pod(pod_extra), &node("n1", node_extra));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn spreads_to_the_node_with_fewest_pods_ties_by_name() {
        let nodes = vec![
            node("c", json!({})),
            node("a", json!({})),
            node("b", json!({})),
        ];
        let p = pod(json!({}));
        assert_eq!(run(&p, &nodes, &[]), Ok("a".to_string()));
        assert_eq!(run(&p, &nodes, &[("a", 1)]), Ok("b".to_string()));
        assert_eq!(run(&p, &nodes, &[("a", 1), ("b", 1)]), Ok("c".to_string()));
        assert_eq!(
            run(&p, &nodes, &[("a", 2), ("b", 1), ("c", 1)]),
            Ok("b".to_string())
        );
    }

    #[test]
    fn spread_skips_nodes_that_do_not_fit_even_when_emptier() {
        let nodes = vec![
            node("a", json!({"spec": {"unschedulable": true}})),
            node("b", not_ready_taint()),
            node("c", json!({})),
        ];
        assert_eq!(
            run(&pod(json!({})), &nodes, &[("c", 10)]),
            Ok("c".to_string())
        );
    }

    #[test]
    fn unschedulable_message_is_kube_schedulers_histogram() {
        let nodes = vec![
            node("a", json!({})),
            node("b", not_ready_taint()),
            node("c", not_ready_taint()),
        ];
        let p = pod(json!({"spec": {"nodeSelector": {"disk": "ssd"}}}));
        assert_eq!(
            run(&p, &nodes, &[]),
            Err(
                "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
                 2 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
                    .to_string()
            )
        );
        let cordoned = vec![
            node("a", json!({"spec": {"unschedulable": true}})),
            node(
                "b",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        ];
        assert_eq!(
            run(&pod(json!({})), &cordoned, &[]),
            Err(
                "0/2 nodes are available: 1 node(s) were not ready, 1 node(s) were unschedulable."
                    .to_string()
            )
        );
        assert_eq!(
            run(&pod(json!({})), &[], &[]),
            Err("no nodes available to schedule pods".to_string())
        );
    }

    #[test]
    fn only_unbound_live_pods_of_the_default_scheduler_are_ours() {
        let cases = [
            ("plain", json!({}), true),
            (
                "explicit default scheduler",
                json!({"spec": {"schedulerName": "default-scheduler"}}),
                true,
            ),
            (
                "other scheduler",
                json!({"spec": {"schedulerName": "volcano"}}),
                false,
            ),
            ("already bound", json!({"spec": {"nodeName": "a"}}), false),
            (
                "being deleted",
                json!({"metadata": {"deletionTimestamp": "2026-11-22T03:00:00Z"}}),
                false,
            ),
            ("finished", json!({"status": {"phase": "Succeeded"}}), false),
        ];
        for (name, extra, want) in cases {
            assert_eq!(
                responsible_for(&CachedPod::from(&pod(extra))),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn pod_counts_skip_terminated_and_unbound_pods() {
        let pods = [
            pod(json!({"spec": {"nodeName": "a"}})),
            pod(json!({"spec": {"nodeName": "a"}, "status": {"phase": "Running"}})),
            pod(json!({"spec": {"nodeName": "a"}, "status": {"phase": "Failed"}})),
            pod(json!({"spec": {"nodeName": "b"}})),
            pod(json!({})),
        ];
        let cached: Vec<CachedPod> = pods.iter().map(CachedPod::from).collect();
        let counts = pod_counts(&cached);
        assert_eq!(
            counts,
            BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)])
        );
    }

    #[test]
    fn binding_targets_the_node() {
        let b = binding(&pod(json!({})), "n2");
        assert_eq!(b.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(b.target.kind.as_deref(), Some("Node"));
        assert_eq!(b.target.name.as_deref(), Some("n2"));
    }

    #[test]
    fn unschedulable_condition_is_written_once_and_keeps_its_transition_time() {
        let t0: Timestamp = "2026-11-22T03:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-11-22T03:01:00Z".parse().unwrap();
        let err = Unschedulable {
            message: "0/1 nodes are available: 1 node(s) were unschedulable.".into(),
        };
        let mut p = pod(json!({}));
        let conditions = unschedulable_conditions(&p, &err, t0).unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "PodScheduled");
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].reason.as_deref(), Some("Unschedulable"));
        p.status = Some(PodStatus {
            conditions: Some(conditions),
            ..PodStatus::default()
        });
        assert_eq!(unschedulable_conditions(&p, &err, t1), None);
        let other = Unschedulable {
            message: "0/2 nodes are available: 2 node(s) were unschedulable.".into(),
        };
        let changed = unschedulable_conditions(&p, &other, t1).unwrap();
        assert_eq!(changed[0].last_transition_time, Some(Time(t0)));
        assert_eq!(changed[0].message, other.message.clone().into());
    }
}
