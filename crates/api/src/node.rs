//! What the API server and the node agents agree on about reaching a node's kubelet endpoint
//! (the node agent's HTTPS server for `pods/log` and friends).

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Node;

/// The user of the client certificate the API server presents to kubelet endpoints (kubeadm's
/// name for it); node agents accept it.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// Set by a node agent whose kubelet endpoint is not at the node's address: a node whose data
/// plane lives in a network namespace serves its endpoint in the agent's own namespace (for
/// example `127.0.0.1:41523`). Without it the endpoint is InternalIP (else ExternalIP) and
/// `status.daemonEndpoints.kubeletEndpoint.Port`, as kube-apiserver does.
pub const KUBELET_ENDPOINT_ANNOTATION: &str = "switchyard.dev/kubelet-endpoint";

/// The kubelet port Kubernetes uses when a node does not say.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Where the API server reaches `node`'s kubelet endpoint.
pub fn kubelet_endpoint(node: &Node) -> Option<SocketAddr> {
    if let Some(v) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KUBELET_ENDPOINT_ANNOTATION))
    {
        return v.parse().ok();
    }
    let status = node.status.as_ref()?;
    let port = status
        .daemon_endpoints
        .as_ref()
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|e| e.port)
        .filter(|p| *p > 0 && *p <= i32::from(u16::MAX))
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(DEFAULT_KUBELET_PORT);
    let addresses = status.addresses.as_deref().unwrap_or_default();
    ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
        addresses
            .iter()
            .filter(|a| a.type_ == *kind)
            .find_map(|a| a.address.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).expect("node")
    }

    #[test]
    fn endpoint_from_annotation_then_addresses() {
        let n = node(serde_json::json!({
            "metadata": {"name": "a", "annotations": {KUBELET_ENDPOINT_ANNOTATION: "127.0.0.1:41523"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.67.11"}]}
        }));
        assert_eq!(
            kubelet_endpoint(&n),
            Some("127.0.0.1:41523".parse().expect("addr"))
        );
        let n = node(serde_json::json!({
            "metadata": {"name": "a"},
            "status": {"addresses": [{"type": "Hostname", "address": "a"},
                                     {"type": "ExternalIP", "address": "203.0.113.9"},
                                     {"type": "InternalIP", "address": "192.168.67.11"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10255}}}
        }));
        assert_eq!(
            kubelet_endpoint(&n),
            Some("192.168.67.11:10255".parse().expect("addr"))
        );
        let n = node(serde_json::json!({
            "metadata": {"name": "a"},
            "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.9"}]}
        }));
        assert_eq!(
            kubelet_endpoint(&n),
            Some("203.0.113.9:10250".parse().expect("addr"))
        );
        assert_eq!(
            kubelet_endpoint(&node(serde_json::json!({"metadata": {"name": "a"}}))),
            None
        );
    }
}
