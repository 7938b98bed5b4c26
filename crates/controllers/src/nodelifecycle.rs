//! The pure core of the node lifecycle controller (`pkg/controller/nodelifecycle` in Kubernetes):
//! from a Node, its heartbeat Lease (`kube-node-lease/<node>`) and the time, [`node_health`]
//! decides whether the node agent is still alive, which conditions the controller must overwrite
//! with `Unknown` when it is not, and which controller-owned taints the node must carry; then
//! [`pod_eviction_time`] says when a Pod on a tainted node is deleted, and
//! [`pod_not_ready_conditions`] marks a Pod on a failed node not ready (`MarkPodsNotReady`) so its
//! endpoints leave EndpointSlices at once instead of after the eviction.
//!
//! Differences from Kubernetes, on purpose:
//! - Kubernetes measures the grace period from the time *it observed* a heartbeat change, to be
//!   immune to clock skew between kubelet and controller. Our agents and server share a clock
//!   source closely enough, and a restarted controller then needs no warm-up: the heartbeat is the
//!   newer of the Lease's `renewTime` and the `Ready` condition's `lastHeartbeatTime`.
//! - There is no separate taint manager: eviction for `node.kubernetes.io/not-ready` and
//!   `unreachable` uses the Pod's toleration (its `tolerationSeconds`) or, when it has none,
//!   `pod_eviction_timeout`, which plays the role of the `DefaultTolerationSeconds` admission
//!   plugin's 300 s. Evictions are not rate limited; they stop altogether where Kubernetes would
//!   stop them in a small cluster ([`evictions_allowed`]): in a zone whose nodes are mostly down,
//!   and everywhere when every zone is entirely down (then the fault is more likely the control
//!   plane's view than the nodes).
//!
//! Nothing here does IO; the loop that applies the verdicts is [`controller`].

pub mod controller;

use jiff::{SignedDuration, Timestamp};
use switchyard_api::k8s::api::coordination::v1::Lease;
use switchyard_api::k8s::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint};
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::Time;

use crate::scheduler::{
    tolerates, tolerations, with_pod_condition, EFFECT_NO_EXECUTE, EFFECT_NO_SCHEDULE,
    TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
};

/// Namespace of the node heartbeat Leases, one per node, named after it.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// `--node-monitor-grace-period` default (kube-controller-manager, since 1.32: 40 s).
pub const DEFAULT_NODE_MONITOR_GRACE_PERIOD: SignedDuration = SignedDuration::from_secs(40);
/// `--node-monitor-period` default.
pub const DEFAULT_NODE_MONITOR_PERIOD: SignedDuration = SignedDuration::from_secs(5);
/// `--pod-eviction-timeout` default, equal to `DefaultTolerationSeconds` (300 s).
pub const DEFAULT_POD_EVICTION_TIMEOUT: SignedDuration = SignedDuration::from_secs(300);
/// Reason of a condition the controller set to `Unknown` after heartbeats stopped.
pub const REASON_NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
/// Reason of a condition the controller added because the agent never posted it.
pub const REASON_NODE_STATUS_NEVER_UPDATED: &str = "NodeStatusNeverUpdated";
/// Message of [`REASON_NODE_STATUS_UNKNOWN`].
pub const MESSAGE_STOPPED_POSTING: &str = "Kubelet stopped posting node status.";
/// Message of [`REASON_NODE_STATUS_NEVER_UPDATED`].
pub const MESSAGE_NEVER_POSTED: &str = "Kubelet never posted node status.";
/// Reason set on the `Ready` condition of Pods on a node that is not ready.
pub const REASON_POD_NODE_NOT_READY: &str = "NodeNotReady";

/// The conditions the controller overwrites when the agent stops posting
/// (`nodeConditionTypes` in node_lifecycle_controller.go).
const MONITORED_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Conditions that, when `True`, give the node a `NoSchedule` taint (`TaintNodesByCondition`,
/// `nodeConditionToTaintKeyStatusMap`).
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// The node's `Ready` condition, as the controller leaves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// `Ready=True`.
    Ready,
    /// `Ready=False`: the agent reports the node unhealthy.
    NotReady,
    /// `Ready=Unknown` (heartbeats stopped) or no `Ready` condition yet.
    Unknown,
}

/// What [`node_health`] decided for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeVerdict {
    /// The node's readiness after the update.
    pub readiness: Readiness,
    /// The newest heartbeat seen (or the node's creation time when it never sent one).
    pub last_heartbeat: Timestamp,
    /// When the heartbeat runs out: the next moment the verdict can change by itself.
    pub expires_at: Timestamp,
    /// The new `status.conditions` when they must be written.
    pub conditions: Option<Vec<NodeCondition>>,
    /// The new `spec.taints` when they must be written.
    pub taints: Option<Vec<Taint>>,
    /// Since when the node has not been `Ready` (`None` while it is).
    pub not_ready_since: Option<Timestamp>,
}

impl NodeVerdict {
    /// Whether Pods on the node must be marked not ready: its `Ready` condition exists and is not
    /// `True` (a node that never reported is treated the same once its grace has passed).
    pub fn marks_pods_not_ready(&self) -> bool {
        self.not_ready_since.is_some()
    }
}

fn plus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn conditions(node: &Node) -> &[NodeCondition] {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

/// The newest heartbeat: the Lease's `renewTime` or the `Ready` condition's `lastHeartbeatTime`;
/// failing both, the node's creation time (Kubernetes' probe timestamp for a new node).
pub fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let posted = conditions(node)
        .iter()
        .find(|c| c.type_ == "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    renewed
        .max(posted)
        .or_else(|| node.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Decides one node's health at `now`: when no heartbeat arrived for longer than `grace`
/// (`probeTimestamp + grace < now`, so exactly `grace` is still healthy), the monitored
/// conditions become `Unknown` (`tryUpdateNodeHealth`); the controller's taints then follow the
/// resulting conditions (`doNoExecuteTaintingPass` and `doNoScheduleTaintingPass`).
pub fn node_health(
    node: &Node,
    lease: Option<&Lease>,
    now: Timestamp,
    grace: SignedDuration,
) -> NodeVerdict {
    let heartbeat = last_heartbeat(node, lease).unwrap_or(now);
    let expires_at = plus(heartbeat, grace);
    let mut current: Vec<NodeCondition> = conditions(node).to_vec();
    let mut changed = false;
    if expires_at < now {
        let created = node.metadata.creation_timestamp.clone();
        for kind in MONITORED_CONDITIONS {
            match current.iter_mut().find(|c| c.type_ == kind) {
                None => {
                    current.push(NodeCondition {
                        type_: kind.to_string(),
                        status: "Unknown".to_string(),
                        reason: Some(REASON_NODE_STATUS_NEVER_UPDATED.to_string()),
                        message: Some(MESSAGE_NEVER_POSTED.to_string()),
                        last_heartbeat_time: created.clone(),
                        last_transition_time: Some(Time(now)),
                    });
                    changed = true;
                }
                Some(c) if c.status != "Unknown" => {
                    c.status = "Unknown".to_string();
                    c.reason = Some(REASON_NODE_STATUS_UNKNOWN.to_string());
                    c.message = Some(MESSAGE_STOPPED_POSTING.to_string());
                    c.last_transition_time = Some(Time(now));
                    changed = true;
                }
                Some(_) => {}
            }
        }
    }
    let ready = current.iter().find(|c| c.type_ == "Ready");
    let readiness = match ready.map(|c| c.status.as_str()) {
        Some("True") => Readiness::Ready,
        Some("False") => Readiness::NotReady,
        _ => Readiness::Unknown,
    };
    let not_ready_since = ready
        .filter(|c| c.status != "True")
        .map(|c| c.last_transition_time.as_ref().map_or(now, |t| t.0));
    let taints = desired_taints(node, &current, now);
    NodeVerdict {
        readiness,
        last_heartbeat: heartbeat,
        expires_at,
        conditions: changed.then_some(current),
        taints,
        not_ready_since,
    }
}

/// Whether the controller owns taints with this key and effect.
fn is_managed(taint: &Taint) -> bool {
    match taint.effect.as_str() {
        EFFECT_NO_EXECUTE => taint.key == TAINT_NOT_READY || taint.key == TAINT_UNREACHABLE,
        EFFECT_NO_SCHEDULE => {
            taint.key == TAINT_NOT_READY
                || taint.key == TAINT_UNREACHABLE
                || taint.key == TAINT_UNSCHEDULABLE
                || CONDITION_TAINTS.iter().any(|(_, k)| *k == taint.key)
        }
        _ => false,
    }
}

/// The node's taints with the controller-owned ones matching `conditions` and
/// `spec.unschedulable`; `None` when they already do. Existing taints keep their place and their
/// `timeAdded`; new `NoExecute` taints get `timeAdded = now`.
fn desired_taints(node: &Node, conditions: &[NodeCondition], now: Timestamp) -> Option<Vec<Taint>> {
    let status_of = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.status.as_str())
    };
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    match status_of("Ready") {
        Some("False") => {
            wanted.push((TAINT_NOT_READY, EFFECT_NO_EXECUTE));
            wanted.push((TAINT_NOT_READY, EFFECT_NO_SCHEDULE));
        }
        Some("Unknown") => {
            wanted.push((TAINT_UNREACHABLE, EFFECT_NO_EXECUTE));
            wanted.push((TAINT_UNREACHABLE, EFFECT_NO_SCHEDULE));
        }
        _ => {}
    }
    for (kind, key) in CONDITION_TAINTS {
        if status_of(kind) == Some("True") {
            wanted.push((key, EFFECT_NO_SCHEDULE));
        }
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        wanted.push((TAINT_UNSCHEDULABLE, EFFECT_NO_SCHEDULE));
    }
    let existing = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let mut result: Vec<Taint> = existing
        .iter()
        .filter(|t| !is_managed(t) || wanted.iter().any(|(k, e)| *k == t.key && *e == t.effect))
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !result.iter().any(|t| t.key == key && t.effect == effect) {
            result.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                time_added: (effect == EFFECT_NO_EXECUTE).then_some(Time(now)),
                value: None,
            });
        }
    }
    (result.as_slice() != existing).then_some(result)
}

/// Label holding a node's zone; zones are where disruption is judged.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// Share of not-ready nodes from which a zone counts as partially disrupted
/// (`--unhealthy-zone-threshold`).
const UNHEALTHY_ZONE_THRESHOLD: f64 = 0.55;

/// How much of a zone is down (`ZoneState` in node_lifecycle_controller.go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    /// Mostly healthy.
    Normal,
    /// More than two nodes and at least 55% of them not ready.
    PartialDisruption,
    /// No node ready.
    FullDisruption,
}

/// `ComputeZoneState` from the counts of ready and not-ready nodes of one zone.
pub fn zone_state(ready: usize, not_ready: usize) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2
        && not_ready as f64 / (not_ready + ready) as f64 >= UNHEALTHY_ZONE_THRESHOLD
    {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// The zone a node is judged in (its `topology.kubernetes.io/zone` label, `""` without one).
pub fn zone_of(node: &Node) -> &str {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .map_or("", String::as_str)
}

/// Whether Pods on nodes of `zone` may be evicted, given every node as (zone, `Ready=True`).
/// Kubernetes stops evicting everywhere when all zones are fully disrupted, and in a partially
/// disrupted zone of a cluster of at most 50 nodes (its secondary eviction rate is 0); a fully
/// disrupted zone among healthy ones is evicted normally.
pub fn evictions_allowed<'a>(nodes: impl IntoIterator<Item = (&'a str, bool)>, zone: &str) -> bool {
    let mut counts: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (z, ready) in nodes {
        let entry = counts.entry(z).or_default();
        if ready {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    let states: std::collections::BTreeMap<&str, ZoneState> = counts
        .iter()
        .map(|(z, (r, n))| (*z, zone_state(*r, *n)))
        .collect();
    if !states.is_empty() && states.values().all(|s| *s == ZoneState::FullDisruption) {
        return false;
    }
    states.get(zone) != Some(&ZoneState::PartialDisruption)
}

/// When the Pod is to be deleted because of the node's `NoExecute` taints, or `None` when it
/// tolerates them forever (or there are none). Per taint, counted from its `timeAdded` (else
/// `fallback_start`): a tolerating Pod stays for the least `tolerationSeconds` of the tolerations
/// that match (`getMinTolerationTime`; a matching toleration without seconds means forever unless
/// another one limits it); a Pod that does not tolerate `not-ready`/`unreachable` stays for
/// `default_timeout`; one that does not tolerate any other `NoExecute` taint goes at once.
pub fn pod_eviction_time(
    pod: &Pod,
    node_taints: &[Taint],
    fallback_start: Timestamp,
    default_timeout: SignedDuration,
) -> Option<Timestamp> {
    let mut earliest: Option<Timestamp> = None;
    for taint in node_taints.iter().filter(|t| t.effect == EFFECT_NO_EXECUTE) {
        let start = taint.time_added.as_ref().map_or(fallback_start, |t| t.0);
        let matching: Vec<_> = tolerations(pod)
            .iter()
            .filter(|t| tolerates(t, taint))
            .collect();
        let stay = if matching.is_empty() {
            if taint.key == TAINT_NOT_READY || taint.key == TAINT_UNREACHABLE {
                Some(default_timeout)
            } else {
                Some(SignedDuration::ZERO)
            }
        } else {
            matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .map(|s| SignedDuration::from_secs(s.max(0)))
                .min()
        };
        if let Some(stay) = stay {
            let at = plus(start, stay);
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    }
    earliest
}

/// The Pod's conditions with `Ready=False` (`MarkPodsNotReady`): `None` when the Pod has no
/// `Ready` condition or it is already `False`.
pub fn pod_not_ready_conditions(pod: &Pod, now: Timestamp) -> Option<Vec<PodCondition>> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if ready.status == "False" {
        return None;
    }
    with_pod_condition(
        Some(status),
        PodCondition {
            type_: "Ready".to_string(),
            status: "False".to_string(),
            reason: Some(REASON_POD_NODE_NOT_READY.to_string()),
            message: Some("Node is not ready".to_string()),
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

    const T0: &str = "2026-11-22T03:00:00Z";
    const GRACE: SignedDuration = SignedDuration::from_secs(40);

    fn at(offset_ms: i64) -> Timestamp {
        plus(T0.parse().unwrap(), SignedDuration::from_millis(offset_ms))
    }

    fn rfc(t: Timestamp) -> String {
        t.to_string()
    }

    /// A node created at T0 whose Ready condition was posted at `posted_ms` (None: no conditions).
    fn node(posted_ms: Option<i64>, extra: Value) -> Node {
        let mut v = json!({
            "metadata": {"name": "n1", "creationTimestamp": T0},
            "spec": {},
            "status": {"conditions": []}
        });
        if let Some(ms) = posted_ms {
            v["status"]["conditions"] = json!([
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "lastHeartbeatTime": rfc(at(ms)), "lastTransitionTime": T0},
                {"type": "MemoryPressure", "status": "False",
                 "lastHeartbeatTime": rfc(at(ms)), "lastTransitionTime": T0}
            ]);
        }
        if let (Some(base), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in extra {
                base.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn lease(renew_ms: i64) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "namespace": NODE_LEASE_NAMESPACE},
            "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                     "renewTime": at(renew_ms).strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}
        }))
        .unwrap()
    }

    fn condition<'a>(conditions: &'a [NodeCondition], kind: &str) -> &'a NodeCondition {
        conditions.iter().find(|c| c.type_ == kind).unwrap()
    }

    fn taint_keys(taints: &[Taint]) -> Vec<(String, String)> {
        taints
            .iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect()
    }

    #[test]
    fn grace_period_boundaries_on_the_newer_of_lease_and_condition() {
        /// (case, posted heartbeat ms, lease renewal ms, now ms, expected readiness)
        type Case = (&'static str, Option<i64>, Option<i64>, i64, Readiness);
        let cases: [Case; 7] = [
            ("fresh condition", Some(0), None, 1_000, Readiness::Ready),
            (
                "exactly grace is still healthy",
                Some(0),
                None,
                40_000,
                Readiness::Ready,
            ),
            (
                "a millisecond past grace is unknown",
                Some(0),
                None,
                40_001,
                Readiness::Unknown,
            ),
            (
                "lease renewal keeps it alive",
                Some(0),
                Some(30_000),
                60_000,
                Readiness::Ready,
            ),
            (
                "lease renewal also expires",
                Some(0),
                Some(30_000),
                70_001,
                Readiness::Unknown,
            ),
            (
                "newer condition beats an old lease",
                Some(50_000),
                Some(1_000),
                60_000,
                Readiness::Ready,
            ),
            (
                "never posted, within grace of creation",
                None,
                None,
                40_000,
                Readiness::Unknown,
            ),
        ];
        for (name, posted, renewed, now, want) in cases {
            let n = node(posted, json!({}));
            let l = renewed.map(lease);
            let v = node_health(&n, l.as_ref(), at(now), GRACE);
            assert_eq!(v.readiness, want, "{name}");
            let expired = v.conditions.is_some();
            assert_eq!(expired, at(now) > v.expires_at, "{name}");
        }
    }

    #[test]
    fn stale_node_gets_unknown_conditions_and_unreachable_taints() {
        let n = node(Some(0), json!({}));
        let now = at(41_000);
        let v = node_health(&n, Some(&lease(500)), now, GRACE);
        assert_eq!(v.readiness, Readiness::Unknown);
        assert_eq!(v.last_heartbeat, at(500));
        assert_eq!(v.not_ready_since, Some(now));
        assert!(v.marks_pods_not_ready());
        let conditions = v.conditions.expect("conditions rewritten");
        for kind in ["Ready", "MemoryPressure"] {
            let c = condition(&conditions, kind);
            assert_eq!(c.status, "Unknown", "{kind}");
            assert_eq!(c.reason.as_deref(), Some(REASON_NODE_STATUS_UNKNOWN));
            assert_eq!(c.message.as_deref(), Some(MESSAGE_STOPPED_POSTING));
            assert_eq!(c.last_transition_time, Some(Time(now)));
            // The heartbeat time stays what the agent last posted.
            assert_eq!(c.last_heartbeat_time, Some(Time(at(0))));
        }
        for kind in ["DiskPressure", "PIDPressure"] {
            let c = condition(&conditions, kind);
            assert_eq!(c.status, "Unknown");
            assert_eq!(c.reason.as_deref(), Some(REASON_NODE_STATUS_NEVER_UPDATED));
            assert_eq!(c.message.as_deref(), Some(MESSAGE_NEVER_POSTED));
        }
        let taints = v.taints.expect("taints added");
        assert_eq!(
            taint_keys(&taints),
            vec![
                (TAINT_UNREACHABLE.to_string(), "NoExecute".to_string()),
                (TAINT_UNREACHABLE.to_string(), "NoSchedule".to_string()),
            ]
        );
        assert_eq!(taints[0].time_added, Some(Time(now)));
        assert_eq!(taints[1].time_added, None);
    }

    #[test]
    fn already_unknown_node_is_not_rewritten_and_keeps_its_transition_time() {
        let first = node_health(&node(Some(0), json!({})), None, at(41_000), GRACE);
        let mut n = node(Some(0), json!({}));
        n.status.as_mut().unwrap().conditions = first.conditions.clone();
        n.spec.as_mut().unwrap().taints = first.taints.clone();
        let again = node_health(&n, None, at(90_000), GRACE);
        assert_eq!(again.conditions, None);
        assert_eq!(again.taints, None);
        assert_eq!(again.not_ready_since, Some(at(41_000)));
    }

    #[test]
    fn resumed_ready_node_loses_the_controller_taints_but_keeps_others() {
        let n = node(
            Some(100_000),
            json!({"spec": {"taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": T0},
                {"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}
            ]}}),
        );
        let v = node_health(&n, Some(&lease(100_000)), at(101_000), GRACE);
        assert_eq!(v.readiness, Readiness::Ready);
        assert_eq!(v.conditions, None);
        assert_eq!(v.not_ready_since, None);
        assert!(!v.marks_pods_not_ready());
        assert_eq!(
            taint_keys(&v.taints.unwrap()),
            vec![("dedicated".to_string(), "NoSchedule".to_string())]
        );
    }

    #[test]
    fn taints_follow_conditions_and_cordon() {
        /// (case, node fields, expected taints as (key, effect))
        type Case = (&'static str, Value, Vec<(&'static str, &'static str)>);
        let cases: [Case; 4] = [
            (
                "agent reports NotReady",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False",
                        "lastHeartbeatTime": T0, "lastTransitionTime": T0}]}}),
                vec![
                    (TAINT_NOT_READY, "NoExecute"),
                    (TAINT_NOT_READY, "NoSchedule"),
                ],
            ),
            (
                "memory pressure",
                json!({"status": {"conditions": [
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": T0},
                    {"type": "MemoryPressure", "status": "True", "lastHeartbeatTime": T0}]}}),
                vec![("node.kubernetes.io/memory-pressure", "NoSchedule")],
            ),
            (
                "cordoned",
                json!({"spec": {"unschedulable": true},
                       "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": T0}]}}),
                vec![(TAINT_UNSCHEDULABLE, "NoSchedule")],
            ),
            (
                "healthy",
                json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": T0}]}}),
                vec![],
            ),
        ];
        for (name, extra, want) in cases {
            let v = node_health(&node(None, extra), None, at(1_000), GRACE);
            let got = v.taints.map(|t| taint_keys(&t)).unwrap_or_default();
            let want: Vec<(String, String)> = want
                .into_iter()
                .map(|(k, e)| (k.to_string(), e.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn not_ready_since_is_the_ready_transition_time() {
        let n = node(
            None,
            json!({"status": {"conditions": [{"type": "Ready", "status": "False",
                    "lastHeartbeatTime": rfc(at(5_000)), "lastTransitionTime": rfc(at(2_000))}]}}),
        );
        let v = node_health(&n, None, at(6_000), GRACE);
        assert_eq!(v.readiness, Readiness::NotReady);
        assert_eq!(v.not_ready_since, Some(at(2_000)));
    }

    #[test]
    fn zone_states_follow_kubernetes_thresholds() {
        let cases = [
            (3, 0, ZoneState::Normal),
            (0, 1, ZoneState::FullDisruption),
            (0, 0, ZoneState::Normal),
            (1, 2, ZoneState::Normal),
            (2, 3, ZoneState::PartialDisruption),
            (3, 3, ZoneState::Normal),
        ];
        for (ready, not_ready, want) in cases {
            assert_eq!(
                zone_state(ready, not_ready),
                want,
                "{ready} ready, {not_ready} not"
            );
        }
    }

    #[test]
    fn evictions_stop_when_every_zone_is_down_or_a_zone_is_mostly_down() {
        /// (case, every node as (zone, ready), zone asked about, evictions allowed)
        type Case = (
            &'static str,
            &'static [(&'static str, bool)],
            &'static str,
            bool,
        );
        let cases: [Case; 6] = [
            (
                "one of two nodes down",
                &[("", true), ("", false)],
                "",
                true,
            ),
            ("the only node down", &[("", false)], "", false),
            ("every node down", &[("", false), ("", false)], "", false),
            (
                "a whole zone down among healthy ones",
                &[("a", false), ("a", false), ("b", true)],
                "a",
                true,
            ),
            ("every zone down", &[("a", false), ("b", false)], "a", false),
            (
                "three of four down in a zone",
                &[
                    ("a", false),
                    ("a", false),
                    ("a", false),
                    ("a", true),
                    ("b", true),
                ],
                "a",
                false,
            ),
        ];
        for (name, nodes, zone, want) in cases {
            assert_eq!(
                evictions_allowed(nodes.iter().copied(), zone),
                want,
                "{name}"
            );
        }
    }

    fn pod(tolerations: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}], "tolerations": tolerations},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn taint(key: &str, effect: &str, added_ms: Option<i64>) -> Taint {
        Taint {
            key: key.to_string(),
            effect: effect.to_string(),
            time_added: added_ms.map(|ms| Time(at(ms))),
            value: None,
        }
    }

    #[test]
    fn eviction_timing_follows_tolerations_and_the_default_timeout() {
        let timeout = SignedDuration::from_secs(300);
        let unreachable = [taint(TAINT_UNREACHABLE, "NoExecute", Some(10_000))];
        let cases: [(&str, Value, &[Taint], Option<i64>); 7] = [
            (
                "no toleration: default timeout from timeAdded",
                json!([]),
                &unreachable,
                Some(310_000),
            ),
            (
                "tolerationSeconds wins",
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]),
                &unreachable,
                Some(40_000),
            ),
            (
                "toleration without seconds stays forever",
                json!([{"key": TAINT_UNREACHABLE, "operator": "Exists"}]),
                &unreachable,
                None,
            ),
            (
                "least of several matching tolerations",
                json!([{"operator": "Exists"}, {"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 5}]),
                &unreachable,
                Some(15_000),
            ),
            (
                "NoSchedule taints never evict",
                json!([]),
                &[taint(TAINT_UNREACHABLE, "NoSchedule", Some(0))],
                None,
            ),
            (
                "untolerated foreign NoExecute taint evicts at once",
                json!([]),
                &[taint("dedicated", "NoExecute", Some(20_000))],
                Some(20_000),
            ),
            (
                "no timeAdded: counted from the fallback start",
                json!([]),
                &[taint(TAINT_NOT_READY, "NoExecute", None)],
                Some(301_000),
            ),
        ];
        for (name, tolerations, taints, want) in cases {
            let got = pod_eviction_time(&pod(tolerations), taints, at(1_000), timeout);
            assert_eq!(got, want.map(at), "{name}");
        }
    }

    #[test]
    fn pods_are_marked_not_ready_once() {
        let now = at(1_000);
        let p = pod(json!([]));
        let conditions = pod_not_ready_conditions(&p, now).expect("changed");
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some(REASON_POD_NODE_NOT_READY));
        assert_eq!(ready.last_transition_time, Some(Time(now)));
        let mut marked = p.clone();
        marked.status.as_mut().unwrap().conditions = Some(conditions);
        assert_eq!(pod_not_ready_conditions(&marked, at(2_000)), None);
        let mut no_status = p;
        no_status.status = None;
        assert_eq!(pod_not_ready_conditions(&no_status, now), None);
    }
}
