//! The MetalLB kinds Switchyard serves under `metallb.io/v1beta1`: `IPAddressPool` (which
//! addresses a `LoadBalancer` Service may get) and `L2Advertisement` (which pools are announced
//! over ARP/NDP, from which nodes and interfaces). Field names, JSON shapes and descriptions follow
//! MetalLB's own Go types (`api/v1beta1/ipaddresspool_types.go`, `l2advertisement_types.go`) and
//! its CRD schemas, so manifests written for MetalLB apply unchanged.
//!
//! The API server decodes request bodies into these structs to check their shape: every field is
//! optional on the wire (`#[serde(default)]`) so that a missing field is reported by validation
//! rather than as a decode error, and absent optional fields stay absent when encoded again
//! (`skip_serializing_if`), so comparing a decode→encode round trip with the input finds exactly
//! the fields these types do not know.
//!
//! Each kind also implements `k8s_openapi`'s `Resource`, `ListableResource` and `Metadata`, so
//! generic code (and `k8s_openapi::List<IPAddressPool>`) treats it like a built-in kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the MetalLB kinds.
pub const GROUP: &str = "metallb.io";
/// The served version of the MetalLB kinds.
pub const VERSION: &str = "v1beta1";
/// `apiVersion` of every MetalLB object Switchyard serves.
pub const API_VERSION: &str = "metallb.io/v1beta1";

/// IPAddressPool represents a pool of IP addresses that can be allocated to LoadBalancer
/// services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.metallb.v1beta1.IPAddressPool")]
#[schemars(extend("required" = ["spec"]))]
pub struct IPAddressPool {
    /// APIVersion defines the versioned schema of this representation of an object. Servers
    /// should convert recognized schemas to the latest internal value, and may reject
    /// unrecognized values. More info:
    /// https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Kind is a string value representing the REST resource this object represents. Servers
    /// may infer this from the endpoint the client submits requests to. Cannot be updated. In
    /// CamelCase. More info:
    /// https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Standard object's metadata. More info:
    /// https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// IPAddressPoolSpec defines the desired state of IPAddressPool.
    #[serde(default)]
    pub spec: IPAddressPoolSpec,
    /// IPAddressPoolStatus defines the observed state of IPAddressPool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<IPAddressPoolStatus>,
}

/// IPAddressPoolSpec defines the desired state of IPAddressPool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.metallb.v1beta1.IPAddressPoolSpec")]
#[schemars(extend("required" = ["addresses"]))]
pub struct IPAddressPoolSpec {
    /// A list of IP address ranges over which MetalLB has authority. You can list multiple
    /// ranges in a single pool, they will all share the same settings. Each range can be either
    /// a CIDR prefix, or an explicit start-end range of IPs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// AutoAssign flag used to prevent MetallB from automatic allocation for a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub auto_assign: Option<bool>,
    /// AvoidBuggyIPs prevents addresses ending with .0 and .255 to be used by a pool.
    #[serde(
        default,
        rename = "avoidBuggyIPs",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("default" = false))]
    pub avoid_buggy_ips: Option<bool>,
    /// AllocateTo makes ip pool allocation to specific namespace and/or service. The controller
    /// will use the pool with lowest value of priority in case of multiple matches. A pool with
    /// no priority set will be used only if the pools with priority can't be used. If multiple
    /// matching IPAddressPools are available it will check for the availability of IPs sorting
    /// the matching IPAddressPools by priority, starting from the highest to the lowest. If
    /// multiple IPAddressPools have the same priority, choice will be random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

/// ServiceAllocation defines ip pool allocation to namespace and/or service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.metallb.v1beta1.ServiceAllocation")]
pub struct ServiceAllocation {
    /// Priority priority given for ip pool while ip allocation on a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Namespaces list of namespace(s) on which ip pool can be attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// NamespaceSelectors list of label selectors to select namespace(s) for ip pool, an
    /// alternative to using namespace list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selectors: Option<Vec<LabelSelector>>,
    /// ServiceSelectors list of label selector to select service(s) for which ip pool can be
    /// used for ip allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selectors: Option<Vec<LabelSelector>>,
}

/// IPAddressPoolStatus defines the observed state of IPAddressPool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.metallb.v1beta1.IPAddressPoolStatus")]
pub struct IPAddressPoolStatus {
    /// AssignedIPv4 is the number of assigned IPv4 addresses.
    #[serde(
        default,
        rename = "assignedIPv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub assigned_ipv4: Option<i64>,
    /// AssignedIPv6 is the number of assigned IPv6 addresses.
    #[serde(
        default,
        rename = "assignedIPv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub assigned_ipv6: Option<i64>,
    /// AvailableIPv4 is the number of available IPv4 addresses.
    #[serde(
        default,
        rename = "availableIPv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub available_ipv4: Option<i64>,
    /// AvailableIPv6 is the number of available IPv6 addresses.
    #[serde(
        default,
        rename = "availableIPv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub available_ipv6: Option<i64>,
}

/// L2Advertisement allows to advertise the LoadBalancer IPs provided by the selected pools via
/// L2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.metallb.v1beta1.L2Advertisement")]
pub struct L2Advertisement {
    /// APIVersion defines the versioned schema of this representation of an object. Servers
    /// should convert recognized schemas to the latest internal value, and may reject
    /// unrecognized values. More info:
    /// https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Kind is a string value representing the REST resource this object represents. Servers
    /// may infer this from the endpoint the client submits requests to. Cannot be updated. In
    /// CamelCase. More info:
    /// https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Standard object's metadata. More info:
    /// https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// L2AdvertisementSpec defines the desired state of L2Advertisement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<L2AdvertisementSpec>,
    /// L2AdvertisementStatus defines the observed state of L2Advertisement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<L2AdvertisementStatus>,
}

/// L2AdvertisementSpec defines the desired state of L2Advertisement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.metallb.v1beta1.L2AdvertisementSpec")]
pub struct L2AdvertisementSpec {
    /// The list of IPAddressPools to advertise via this advertisement, selected by name.
    #[serde(
        default,
        rename = "ipAddressPools",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip_address_pools: Option<Vec<String>>,
    /// A selector for the IPAddressPools which would get advertised via this advertisement. If
    /// no IPAddressPool is selected by this or by the list, the advertisement is applied to all
    /// the IPAddressPools.
    #[serde(
        default,
        rename = "ipAddressPoolSelectors",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip_address_pool_selectors: Option<Vec<LabelSelector>>,
    /// NodeSelectors allows to limit the nodes to announce as next hops for the LoadBalancer IP.
    /// When empty, all the nodes having  are announced as next hops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selectors: Option<Vec<LabelSelector>>,
    /// A list of interfaces to announce from. The LB IP will be announced only from these
    /// interfaces. If the field is not set, we advertise from all the interfaces on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
}

/// L2AdvertisementStatus defines the observed state of L2Advertisement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "io.metallb.v1beta1.L2AdvertisementStatus")]
pub struct L2AdvertisementStatus {}

impl Default for IPAddressPool {
    fn default() -> Self {
        IPAddressPool {
            api_version: API_VERSION.to_string(),
            kind: "IPAddressPool".to_string(),
            metadata: ObjectMeta::default(),
            spec: IPAddressPoolSpec::default(),
            status: None,
        }
    }
}

impl Default for L2Advertisement {
    fn default() -> Self {
        L2Advertisement {
            api_version: API_VERSION.to_string(),
            kind: "L2Advertisement".to_string(),
            metadata: ObjectMeta::default(),
            spec: None,
            status: None,
        }
    }
}

impl k8s_openapi::Resource for IPAddressPool {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "IPAddressPool";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "ipaddresspools";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for IPAddressPool {
    const LIST_KIND: &'static str = "IPAddressPoolList";
}

impl k8s_openapi::Metadata for IPAddressPool {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl k8s_openapi::Resource for L2Advertisement {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "L2Advertisement";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "l2advertisements";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for L2Advertisement {
    const LIST_KIND: &'static str = "L2AdvertisementList";
}

impl k8s_openapi::Metadata for L2Advertisement {
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
    use serde_json::json;

    #[test]
    fn a_metallb_pool_manifest_survives_a_decode_encode_round_trip_unchanged() {
        let input = json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": "pool", "namespace": "metallb-system"},
            "spec": {
                "addresses": ["192.168.10.0/24", "fc00:f853:ccd:e799::/124"],
                "autoAssign": false,
                "avoidBuggyIPs": true,
                "serviceAllocation": {
                    "priority": 50,
                    "namespaces": ["web"],
                    "namespaceSelectors": [{"matchLabels": {"team": "a"}}],
                    "serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]}]
                }
            },
            "status": {"assignedIPv4": 1, "assignedIPv6": 0, "availableIPv4": 253, "availableIPv6": 16}
        });
        let pool: IPAddressPool = serde_json::from_value(input.clone()).expect("decodes");
        assert_eq!(pool.spec.avoid_buggy_ips, Some(true));
        assert_eq!(serde_json::to_value(&pool).expect("encodes"), input);
    }

    #[test]
    fn an_l2_advertisement_manifest_survives_a_decode_encode_round_trip_unchanged() {
        let input = json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "L2Advertisement",
            "metadata": {"name": "l2", "namespace": "metallb-system"},
            "spec": {
                "ipAddressPools": ["pool"],
                "ipAddressPoolSelectors": [{"matchLabels": {"a": "b"}}],
                "nodeSelectors": [{"matchLabels": {"kubernetes.io/hostname": "n1"}}],
                "interfaces": ["eth0"]
            }
        });
        let l2: L2Advertisement = serde_json::from_value(input.clone()).expect("decodes");
        assert_eq!(serde_json::to_value(&l2).expect("encodes"), input);
    }

    #[test]
    fn unknown_fields_are_what_a_round_trip_drops() {
        let input = json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": "l2"}, "spec": {"interfaces": ["eth0"], "bogus": 1}});
        let l2: L2Advertisement = serde_json::from_value(input).expect("decodes leniently");
        let out = serde_json::to_value(&l2).expect("encodes");
        assert_eq!(out["spec"], json!({"interfaces": ["eth0"]}));
    }

    #[test]
    fn defaults_carry_api_version_and_kind() {
        let pool = IPAddressPool::default();
        assert_eq!(pool.api_version, "metallb.io/v1beta1");
        assert_eq!(pool.kind, "IPAddressPool");
        assert_eq!(L2Advertisement::default().kind, "L2Advertisement");
    }
}
