//! The view of a Pod the controllers cache. Pods are the most numerous objects of a cluster and a
//! decoded `k8s_openapi` Pod takes several kilobytes even when nearly empty (its structs inline
//! every optional field), so the pod informer decodes only what a controller reads: metadata,
//! the scheduling fields, container names, images and ports, and the status the endpoints and
//! workload controllers use. Serde skips the rest while decoding, so it is never allocated.
//! [`CachedPod::to_pod`] rebuilds a Pod with those fields for the pure reconcile functions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_api::k8s::api::core::v1::{
    Affinity, Container, ContainerPort, ContainerStatus, Pod, PodCondition, PodIP, PodSpec,
    PodStatus, Toleration,
};
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

/// A Pod as cached by the controllers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CachedPodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CachedPodStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Box<Affinity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ContainerPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PodCondition>>,
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(rename = "podIP", default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs", default, skip_serializing_if = "Option::is_none")]
    pub pod_ips: Option<Vec<PodIP>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i32,
}

impl CachedPod {
    /// A Pod with the cached fields, for the pure reconcile functions.
    pub fn to_pod(&self) -> Pod {
        Pod {
            metadata: self.metadata.clone(),
            spec: self.spec.as_ref().map(|s| PodSpec {
                containers: s
                    .containers
                    .iter()
                    .map(|c| Container {
                        name: c.name.clone(),
                        image: c.image.clone(),
                        ports: c.ports.clone(),
                        ..Container::default()
                    })
                    .collect(),
                node_name: s.node_name.clone(),
                node_selector: s.node_selector.clone(),
                tolerations: s.tolerations.clone(),
                affinity: s.affinity.as_deref().cloned(),
                scheduler_name: s.scheduler_name.clone(),
                hostname: s.hostname.clone(),
                subdomain: s.subdomain.clone(),
                termination_grace_period_seconds: s.termination_grace_period_seconds,
                ..PodSpec::default()
            }),
            status: self.status.as_ref().map(|s| PodStatus {
                phase: s.phase.clone(),
                conditions: s.conditions.clone(),
                host_ip: s.host_ip.clone(),
                pod_ip: s.pod_ip.clone(),
                pod_ips: s.pod_ips.clone(),
                start_time: s.start_time.clone(),
                container_statuses: s.container_statuses.as_ref().map(|cs| {
                    cs.iter()
                        .map(|c| ContainerStatus {
                            name: c.name.clone(),
                            ready: c.ready,
                            restart_count: c.restart_count,
                            ..ContainerStatus::default()
                        })
                        .collect()
                }),
                ..PodStatus::default()
            }),
        }
    }

    /// The value of the Pod's condition `type_` (`"True"`, `"False"`, `"Unknown"`).
    pub fn condition(&self, type_: &str) -> Option<&str> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.as_str())
    }

    /// The node the Pod is bound to, if any.
    pub fn node_name(&self) -> Option<&str> {
        self.spec
            .as_ref()?
            .node_name
            .as_deref()
            .filter(|n| !n.is_empty())
    }
}

/// Sets a Pod's status conditions to `conditions` (the full list) through the status
/// subresource, guarded by the cached resourceVersion so that a stale cache gets a 409 and a
/// retry. A merge patch, not a replace: the cache does not hold the whole status.
pub async fn patch_pod_conditions(
    api: &kube::Api<Pod>,
    pod: &CachedPod,
    conditions: Vec<PodCondition>,
) -> Result<(), kube::Error> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": pod.metadata.resource_version},
        "status": {"conditions": conditions},
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

impl From<&Pod> for CachedPod {
    /// The cached view of a full Pod (tests and callers holding a Pod).
    fn from(pod: &Pod) -> Self {
        serde_json::to_value(pod)
            .and_then(serde_json::from_value)
            .unwrap_or_default()
    }
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for CachedPod {
    const LIST_KIND: &'static str = "PodList";
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_controllers_read_and_drops_the_rest() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "n1", "hostname": "h", "subdomain": "s", "nodeSelector": {"disk": "ssd"},
                     "volumes": [{"name": "v", "emptyDir": {}}],
                     "containers": [{"name": "c", "image": "echo", "command": ["/bin/x"], "env": [{"name": "A", "value": "1"}],
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "c", "ready": true, "restartCount": 3, "image": "echo", "imageID": "x",
                                              "state": {"running": {}}}]},
        }))
        .expect("pod");
        let cached = CachedPod::from(&pod);
        assert_eq!(cached.condition("Ready"), Some("True"));
        assert_eq!(cached.node_name(), Some("n1"));
        let back = cached.to_pod();
        let spec = back.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("h"));
        assert_eq!(
            spec.node_selector,
            pod.spec.as_ref().and_then(|s| s.node_selector.clone())
        );
        assert_eq!(
            spec.containers[0].ports,
            pod.spec
                .as_ref()
                .and_then(|s| s.containers[0].ports.clone())
        );
        assert!(spec.volumes.is_none());
        assert!(spec.containers[0].command.is_none() && spec.containers[0].env.is_none());
        let status = back.status.expect("status");
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(
            status.container_statuses.expect("statuses")[0].restart_count,
            3
        );
        assert_eq!(
            back.metadata.owner_references,
            pod.metadata.owner_references
        );
    }
}
