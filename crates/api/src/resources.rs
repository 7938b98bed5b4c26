//! The resources Switchyard serves: one static table that routing, discovery, OpenAPI, storage
//! keys and `kubectl` short names all read, so that a resource is declared in exactly one place.

/// The subresources a resource may offer besides its main endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes only `.status`; writes to the main resource ignore `.status`.
    Status,
    /// `/scale`: an `autoscaling/v1` Scale view of `.spec.replicas`.
    Scale,
}

/// One served resource, as discovery describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; empty for the legacy core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Plural resource name, as it appears in URLs (`services`).
    pub plural: &'static str,
    /// Singular name (`service`).
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Where objects of this resource live in the store, below `/registry/`, mirroring
    /// kube-apiserver's etcd layout (`services/specs`, `deployments`, ...).
    pub storage_prefix: &'static str,
}

impl ResourceInfo {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn has_subresource(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// The store key prefix of every object of this resource (all namespaces), ending in `/`.
    pub fn key_prefix(&self) -> String {
        format!("/registry/{}/", self.storage_prefix)
    }

    /// The store key prefix of one namespace's objects, ending in `/`. For cluster-scoped
    /// resources this is [`Self::key_prefix`].
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{}/", self.storage_prefix, ns),
            _ => self.key_prefix(),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.namespace_prefix(namespace), name)
    }

    /// The verbs discovery lists for the main resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

const STATUS: &[Subresource] = &[Subresource::Status];
const STATUS_SCALE: &[Subresource] = &[Subresource::Status, Subresource::Scale];
const ALL: &[&str] = &["all"];

/// Every resource Switchyard serves.
pub static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: STATUS,
        storage_prefix: "namespaces",
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: ALL,
        subresources: STATUS,
        storage_prefix: "services/specs",
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
        storage_prefix: "services/endpoints",
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: ALL,
        subresources: STATUS,
        storage_prefix: "pods",
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: STATUS,
        storage_prefix: "minions",
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        storage_prefix: "events",
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
        storage_prefix: "configmaps",
    },
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage_prefix: "endpointslices",
    },
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage_prefix: "leases",
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: ALL,
        subresources: STATUS_SCALE,
        storage_prefix: "deployments",
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        categories: ALL,
        subresources: STATUS_SCALE,
        storage_prefix: "replicasets",
    },
    ResourceInfo {
        group: "metallb.io",
        version: "v1beta1",
        kind: "IPAddressPool",
        plural: "ipaddresspools",
        singular: "ipaddresspool",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage_prefix: "metallb.io/ipaddresspools",
    },
    ResourceInfo {
        group: "metallb.io",
        version: "v1beta1",
        kind: "L2Advertisement",
        plural: "l2advertisements",
        singular: "l2advertisement",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage_prefix: "metallb.io/l2advertisements",
    },
];

/// The resource served at `group`/`version` under the plural name `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of an `apiVersion` + `kind` pair, as found in an object body.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The distinct (group, version) pairs served, core first, in a stable order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_keys_follow_the_kube_apiserver_layout() {
        let svc = find("", "v1", "services").expect("services are served");
        assert_eq!(
            svc.key(Some("default"), "web"),
            "/registry/services/specs/default/web"
        );
        let node = find("", "v1", "nodes").expect("nodes are served");
        assert_eq!(node.key(None, "n1"), "/registry/minions/n1");
    }

    #[test]
    fn no_two_resources_share_a_storage_prefix_or_a_route() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(
                    !a.key_prefix().starts_with(&b.key_prefix()),
                    "{} vs {}",
                    a.plural,
                    b.plural
                );
                assert!(
                    !b.key_prefix().starts_with(&a.key_prefix()),
                    "{} vs {}",
                    a.plural,
                    b.plural
                );
                assert!(
                    (a.group, a.version, a.plural) != (b.group, b.version, b.plural),
                    "{} served twice",
                    a.plural
                );
            }
        }
    }

    #[test]
    fn kinds_resolve_from_api_version() {
        assert_eq!(
            find_kind("apps/v1", "Deployment").map(|r| r.plural),
            Some("deployments")
        );
        assert_eq!(find_kind("v1", "Deployment"), None);
    }
}
