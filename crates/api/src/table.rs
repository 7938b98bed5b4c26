//! `kubectl get` tables: the `meta.k8s.io/v1` `Table` that Switchyard's API server returns when a
//! client asks for `application/json;as=Table;v=v1;g=meta.k8s.io`, which is what `kubectl get`
//! does. The server, not kubectl, decides the columns and renders every cell, so this module
//! reproduces kube-apiserver's printers (pkg/printers/internalversion/printers.go) for each built-in
//! resource Switchyard serves, the additionalPrinterColumns of the MetalLB CRDs as the
//! apiextensions table convertor renders them, and kube-apiserver's default convertor
//! (`Name`, `Created At`) for anything else. Like the printer storage in kube-apiserver, every
//! column is always rendered, including the priority-1 columns that kubectl only shows with
//! `-o wide`. Time is never read here: callers pass `now`.

use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Map, Value};

use crate::resources::ResourceInfo;
use crate::status::{FieldError, StatusError};

/// What each row carries besides its cells: the `includeObject` table option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object: `"object": null`.
    None,
    /// A `PartialObjectMetadata` holding the object's metadata (the default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// The `includeObject` query parameter, leniently: anything unrecognised means the default,
    /// [`IncludeObject::Metadata`]. Use [`IncludeObject::try_parse`] to reject bad values as
    /// kube-apiserver does.
    pub fn parse(s: Option<&str>) -> IncludeObject {
        Self::try_parse(s).unwrap_or_default()
    }

    /// The `includeObject` query parameter, rejecting unknown values with the 400 kube-apiserver
    /// returns (`ValidateTableOptions` in apimachinery, wrapped by `optionsForTransform` in
    /// apiserver/pkg/endpoints/handlers/response.go).
    pub fn try_parse(s: Option<&str>) -> Result<IncludeObject, StatusError> {
        match s.unwrap_or("") {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "None" => Ok(IncludeObject::None),
            "Object" => Ok(IncludeObject::Object),
            other => {
                let err = FieldError::invalid(
                    "includeObject",
                    other,
                    "must be 'Metadata', 'Object', 'None', or empty",
                );
                Err(StatusError::bad_request(format!(
                    "Unable to convert to Table as requested: {}",
                    err.message()
                )))
            }
        }
    }
}

/// The column definitions of `resource`'s table, as JSON `TableColumnDefinition`s
/// (`{name, type, format, description, priority}`, every field always present).
pub fn column_definitions(resource: &ResourceInfo) -> Vec<Value> {
    printer(resource)
        .columns()
        .iter()
        .map(|c| c.to_json())
        .collect()
}

/// One table row for `obj`: `{"cells": [...], "conditions": [...], "object": ...}`. `conditions`
/// appears only for finished pods (as kube-apiserver marks them `Completed`); `object` follows
/// `include` and is `null` for [`IncludeObject::None`], as kube-apiserver encodes an empty
/// `runtime.RawExtension`.
pub fn row(resource: &ResourceInfo, obj: &Value, include: IncludeObject, now: Timestamp) -> Value {
    let printer = printer(resource);
    let mut row = Map::new();
    row.insert("cells".into(), Value::Array(printer.cells(obj, now)));
    if let Some(conditions) = printer.conditions(obj) {
        row.insert("conditions".into(), conditions);
    }
    row.insert("object".into(), row_object(resource, obj, include));
    Value::Object(row)
}

/// A whole `Table` for `objects`. `list_metadata` is the list's (or, for a single object or a
/// watch event, the object's) metadata; only `resourceVersion`, `continue` and
/// `remainingItemCount` are kept, as kube-apiserver copies them. With `with_columns` false the
/// table carries `"columnDefinitions": null`, as kube-apiserver sends for every watch event after
/// the first (the `NoHeaders` table option, set by `watchEmbeddedEncoder` in
/// apiserver/pkg/endpoints/handlers/watch.go).
pub fn table(
    resource: &ResourceInfo,
    objects: &[Value],
    list_metadata: Value,
    include: IncludeObject,
    now: Timestamp,
    with_columns: bool,
) -> Value {
    let printer = printer(resource);
    let columns = if with_columns {
        Value::Array(printer.columns().iter().map(|c| c.to_json()).collect())
    } else {
        Value::Null
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| row(resource, o, include, now))
        .collect();
    // The default convertor appends rows to a nil slice, so an empty table has `"rows": null`;
    // the printers and the CRD convertor allocate the slice up front.
    let rows = if rows.is_empty() && matches!(printer, Printer::Default) {
        Value::Null
    } else {
        Value::Array(rows)
    };
    let mut table = Map::new();
    table.insert("kind".into(), json!("Table"));
    table.insert("apiVersion".into(), json!("meta.k8s.io/v1"));
    table.insert("metadata".into(), table_list_meta(&list_metadata));
    table.insert("columnDefinitions".into(), columns);
    table.insert("rows".into(), rows);
    Value::Object(table)
}

/// A duration as Kubernetes prints ages: `HumanDuration` in apimachinery/pkg/util/duration, about
/// two significant figures (`45s`, `119s`, `5m30s`, `10m`, `3h5m`, `47h`, `3d4h`, `30d`, `2y3d`).
pub fn human_duration(d: std::time::Duration) -> String {
    human_seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------------------------
// Wire shapes

fn row_object(resource: &ResourceInfo, obj: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => {
            // meta.AsPartialObjectMetadata, with the Table's own group version
            // (asTable in apiserver/pkg/endpoints/handlers/response.go).
            let metadata = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata})
        }
        IncludeObject::Object => {
            let mut full = obj.clone();
            if let Value::Object(map) = &mut full {
                if !map.contains_key("kind") {
                    map.insert("kind".into(), json!(resource.kind));
                }
                if !map.contains_key("apiVersion") {
                    map.insert("apiVersion".into(), json!(resource.api_version()));
                }
            }
            full
        }
    }
}

fn table_list_meta(meta: &Value) -> Value {
    let mut out = Map::new();
    for key in ["resourceVersion", "continue"] {
        if let Some(s) = meta
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            out.insert(key.into(), json!(s));
        }
    }
    if let Some(n) = meta.get("remainingItemCount").filter(|v| v.is_number()) {
        out.insert("remainingItemCount".into(), n.clone());
    }
    Value::Object(out)
}

/// One `TableColumnDefinition`.
#[derive(Clone, Copy, Debug)]
struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    description: &'static str,
    priority: i32,
}

impl Column {
    const fn new(name: &'static str, ty: &'static str, description: &'static str) -> Self {
        Column {
            name,
            ty,
            format: "",
            description,
            priority: 0,
        }
    }
    /// A column kubectl shows only with `-o wide`.
    const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Self {
        Column {
            name,
            ty,
            format: "",
            description,
            priority: 1,
        }
    }
    const fn name() -> Self {
        Column {
            name: "Name",
            ty: "string",
            format: "name",
            description: DOC_NAME,
            priority: 0,
        }
    }
    const fn age() -> Self {
        Column::new("Age", "string", DOC_CREATION_TIMESTAMP)
    }
    fn to_json(self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Column tables. Names, types, priorities and descriptions follow AddHandlers in
// pkg/printers/internalversion/printers.go; descriptions are the SwaggerDoc of the field named
// there (some come from extensions/v1beta1, which the printers still reference).

const DOC_NAME: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const DOC_CREATION_TIMESTAMP: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const DOC_CONTAINERS: &str = "Names of each container in the template.";
const DOC_IMAGES: &str = "Images referenced by each container in the template.";
const DOC_NODE_ADDRESSES: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";

const POD_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    Column::new("Status", "string", "The aggregate status of the containers in this pod."),
    Column::new(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    Column::age(),
    Column::wide("IP", "string", "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
    Column::wide("Node", "string", "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename"),
    Column::wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled."),
    Column::wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates"),
];

const SERVICE_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Type", "string", "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer. \"ClusterIP\" allocates a cluster-internal IP address for load-balancing to endpoints. Endpoints are determined by the selector or if that is not specified, by manual construction of an Endpoints object or EndpointSlice objects. If clusterIP is \"None\", no virtual IP is allocated and the endpoints are published as a set of endpoints rather than a virtual IP. \"NodePort\" builds on ClusterIP and allocates a port on every node which routes to the same endpoints as the clusterIP. \"LoadBalancer\" builds on NodePort and creates an external load-balancer (if supported in the current cloud) which routes to the same endpoints as the clusterIP. \"ExternalName\" aliases this service to the specified externalName. Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/docs/concepts/services-networking/service/#publishing-services-service-types"),
    Column::new("Cluster-IP", "string", "clusterIP is the IP address of the service and is usually assigned randomly. If an address is specified manually, is in-range (as per system configuration), and is not in use, it will be allocated to the service; otherwise creation of the service will fail. This field may not be changed through updates unless the type field is also being changed to ExternalName (which requires this field to be blank) or the type field is being changed from ExternalName (in which case this field may optionally be specified, as describe above).  Valid values are \"None\", empty string (\"\"), or a valid IP address. Setting this to \"None\" makes a \"headless service\" (no virtual IP), which is useful when direct endpoint connections are preferred and proxying is not required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is specified when creating a Service of type ExternalName, creation will fail. This field will be wiped when updating a Service to type ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies"),
    Column::new("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.  These IPs are not managed by Kubernetes.  The user is responsible for ensuring that traffic arrives at a node with this IP.  A common example is external load-balancers that are not part of the Kubernetes system."),
    Column::new("Port(s)", "string", "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies"),
    Column::age(),
    Column::wide("Selector", "string", "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored if type is ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/"),
];

const ENDPOINTS_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Endpoints", "string", "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service."),
    Column::age(),
];

const ENDPOINT_SLICE_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("AddressType", "string", "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation. The following address types are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 Address. * FQDN: Represents a Fully Qualified Domain Name. (Deprecated) The EndpointSlice controller only generates, and kube-proxy only processes, slices of addressType \"IPv4\" and \"IPv6\". No semantics are defined for the \"FQDN\" type."),
    Column::new("Ports", "string", "ports specifies the list of network ports exposed by each endpoint in this slice. Each port must have a unique name. Each slice may include a maximum of 100 ports. Services always have at least 1 port, so EndpointSlices generated by the EndpointSlice controller will likewise always have at least 1 port. EndpointSlices used for other purposes may have an empty ports list."),
    Column::new("Endpoints", "string", "endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints."),
    Column::age(),
];

// The Up-to-date and Available columns are declared `string` but kube-apiserver fills them with
// integers; both are reproduced as is.
const DEPLOYMENT_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Ready", "string", "Number of the pod with ready state"),
    Column::new("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    Column::new("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    Column::age(),
    Column::wide("Containers", "string", DOC_CONTAINERS),
    Column::wide("Images", "string", DOC_IMAGES),
    Column::wide("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
];

const REPLICA_SET_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Desired", "integer", "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller"),
    Column::new("Current", "integer", "Replicas is the most recently oberved number of replicas. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller"),
    Column::new("Ready", "integer", "The number of ready replicas for this replica set."),
    Column::age(),
    Column::wide("Containers", "string", DOC_CONTAINERS),
    Column::wide("Images", "string", DOC_IMAGES),
    Column::wide("Selector", "string", "Selector is a label query over pods that should match the replica count. If the selector is empty, it is defaulted to the labels present on the pod template. Label keys and values that must match in order to be controlled by this replica set. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"),
];

const NODE_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Status", "string", "The status of the node"),
    Column::new("Roles", "string", "The roles of the node"),
    Column::age(),
    Column::new("Version", "string", "Kubelet Version reported by the node."),
    Column::wide("Internal-IP", "string", DOC_NODE_ADDRESSES),
    Column::wide("External-IP", "string", DOC_NODE_ADDRESSES),
    Column::wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
    Column::wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    Column::wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
];

// `Count` is declared `string` but filled with an integer, as in kube-apiserver.
const EVENT_COLUMNS: &[Column] = &[
    Column::new("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    Column::new("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
    Column::new("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    Column::new("Object", "string", "The object that this event is about."),
    Column::wide("Subobject", "string", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object."),
    Column::wide("Source", "string", "The component reporting this event. Should be a short machine understandable string."),
    Column::new("Message", "string", "A human-readable description of the status of this operation."),
    Column::wide("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
    Column::wide("Count", "string", "The number of times this event has occurred."),
    Column { name: "Name", ty: "string", format: "name", description: DOC_NAME, priority: 1 },
];

const NAMESPACE_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Status", "string", "The status of the namespace"),
    Column::age(),
];

// `Data` is declared `string` but filled with an integer, as in kube-apiserver.
const CONFIG_MAP_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Data", "string", "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process."),
    Column::age(),
];

const LEASE_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Holder", "string", "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field."),
    Column::age(),
];

/// A CRD additionalPrinterColumn: its table column and the JSONPath that fills it.
struct CrdColumn {
    column: Column,
    json_path: &'static str,
}

/// The columns the apiextensions table convertor builds for a CRD version: `Name`, then the
/// additionalPrinterColumns in order, each described by its JSONPath when the CRD gives no
/// description (tableconvertor.New in apiextensions-apiserver/pkg/registry/customresource). No
/// `Age` column is added when a version declares its own columns (serveDefaultColumnsIfEmpty).
const fn crd_column(
    name: &'static str,
    ty: &'static str,
    json_path: &'static str,
    description: &'static str,
    priority: i32,
) -> CrdColumn {
    CrdColumn {
        column: Column {
            name,
            ty,
            format: "",
            description,
            priority,
        },
        json_path,
    }
}

/// metallb.io/v1beta1 IPAddressPool (config/crd/bases/metallb.io_ipaddresspools.yaml).
const IP_ADDRESS_POOL_CRD: &[CrdColumn] = &[
    crd_column(
        "Auto Assign",
        "boolean",
        ".spec.autoAssign",
        "Custom resource definition column (in JSONPath format): .spec.autoAssign",
        0,
    ),
    crd_column(
        "Avoid Buggy IPs",
        "boolean",
        ".spec.avoidBuggyIPs",
        "Custom resource definition column (in JSONPath format): .spec.avoidBuggyIPs",
        0,
    ),
    crd_column(
        "Addresses",
        "string",
        ".spec.addresses",
        "Custom resource definition column (in JSONPath format): .spec.addresses",
        0,
    ),
];
const IP_ADDRESS_POOL_COLUMNS: &[Column] = &[
    Column::name(),
    IP_ADDRESS_POOL_CRD[0].column,
    IP_ADDRESS_POOL_CRD[1].column,
    IP_ADDRESS_POOL_CRD[2].column,
];

/// metallb.io/v1beta1 L2Advertisement (config/crd/bases/metallb.io_l2advertisements.yaml).
const L2_ADVERTISEMENT_CRD: &[CrdColumn] = &[
    crd_column(
        "IPAddressPools",
        "string",
        ".spec.ipAddressPools",
        "Custom resource definition column (in JSONPath format): .spec.ipAddressPools",
        0,
    ),
    crd_column(
        "IPAddressPool Selectors",
        "string",
        ".spec.ipAddressPoolSelectors",
        "Custom resource definition column (in JSONPath format): .spec.ipAddressPoolSelectors",
        0,
    ),
    crd_column(
        "Interfaces",
        "string",
        ".spec.interfaces",
        "Custom resource definition column (in JSONPath format): .spec.interfaces",
        0,
    ),
    crd_column(
        "Node Selectors",
        "string",
        ".spec.nodeSelectors",
        "Custom resource definition column (in JSONPath format): .spec.nodeSelectors",
        10,
    ),
];
const L2_ADVERTISEMENT_COLUMNS: &[Column] = &[
    Column::name(),
    L2_ADVERTISEMENT_CRD[0].column,
    L2_ADVERTISEMENT_CRD[1].column,
    L2_ADVERTISEMENT_CRD[2].column,
    L2_ADVERTISEMENT_CRD[3].column,
];

/// rest.NewDefaultTableConvertor in apiserver/pkg/registry/rest/table.go.
const DEFAULT_COLUMNS: &[Column] = &[
    Column::name(),
    Column::new("Created At", "date", DOC_CREATION_TIMESTAMP),
];

// ---------------------------------------------------------------------------------------------
// Printers

#[derive(Clone, Copy)]
enum Printer {
    Pod,
    Service,
    Endpoints,
    EndpointSlice,
    Deployment,
    ReplicaSet,
    Node,
    Namespace,
    Event,
    ConfigMap,
    Lease,
    Crd(&'static [Column], &'static [CrdColumn]),
    Default,
}

fn printer(resource: &ResourceInfo) -> Printer {
    match (resource.group, resource.kind) {
        ("", "Pod") => Printer::Pod,
        ("", "Service") => Printer::Service,
        ("", "Endpoints") => Printer::Endpoints,
        ("discovery.k8s.io", "EndpointSlice") => Printer::EndpointSlice,
        ("apps", "Deployment") => Printer::Deployment,
        ("apps", "ReplicaSet") => Printer::ReplicaSet,
        ("", "Node") => Printer::Node,
        ("", "Namespace") => Printer::Namespace,
        ("", "Event") => Printer::Event,
        ("", "ConfigMap") => Printer::ConfigMap,
        ("coordination.k8s.io", "Lease") => Printer::Lease,
        ("metallb.io", "IPAddressPool") => {
            Printer::Crd(IP_ADDRESS_POOL_COLUMNS, IP_ADDRESS_POOL_CRD)
        }
        ("metallb.io", "L2Advertisement") => {
            Printer::Crd(L2_ADVERTISEMENT_COLUMNS, L2_ADVERTISEMENT_CRD)
        }
        _ => Printer::Default,
    }
}

impl Printer {
    fn columns(self) -> &'static [Column] {
        match self {
            Printer::Pod => POD_COLUMNS,
            Printer::Service => SERVICE_COLUMNS,
            Printer::Endpoints => ENDPOINTS_COLUMNS,
            Printer::EndpointSlice => ENDPOINT_SLICE_COLUMNS,
            Printer::Deployment => DEPLOYMENT_COLUMNS,
            Printer::ReplicaSet => REPLICA_SET_COLUMNS,
            Printer::Node => NODE_COLUMNS,
            Printer::Namespace => NAMESPACE_COLUMNS,
            Printer::Event => EVENT_COLUMNS,
            Printer::ConfigMap => CONFIG_MAP_COLUMNS,
            Printer::Lease => LEASE_COLUMNS,
            Printer::Crd(columns, _) => columns,
            Printer::Default => DEFAULT_COLUMNS,
        }
    }

    fn cells(self, obj: &Value, now: Timestamp) -> Vec<Value> {
        match self {
            Printer::Pod => pod_cells(obj, now),
            Printer::Service => service_cells(obj, now),
            Printer::Endpoints => vec![
                json!(name(obj)),
                json!(format_endpoints(obj)),
                json!(age(obj, now)),
            ],
            Printer::EndpointSlice => endpoint_slice_cells(obj, now),
            Printer::Deployment => deployment_cells(obj, now),
            Printer::ReplicaSet => replica_set_cells(obj, now),
            Printer::Node => node_cells(obj, now),
            Printer::Namespace => {
                // Namespace status defaults to Active when kube-apiserver decodes it.
                let phase = non_empty(text(obj, "/status/phase")).unwrap_or("Active");
                vec![json!(name(obj)), json!(phase), json!(age(obj, now))]
            }
            Printer::Event => event_cells(obj, now),
            Printer::ConfigMap => {
                let count = map_len(obj, "/data") + map_len(obj, "/binaryData");
                vec![json!(name(obj)), json!(count), json!(age(obj, now))]
            }
            Printer::Lease => vec![
                json!(name(obj)),
                json!(text(obj, "/spec/holderIdentity")),
                json!(age(obj, now)),
            ],
            Printer::Crd(_, columns) => crd_cells(obj, columns, now),
            Printer::Default => {
                // The default convertor prints the creation time itself, in UTC RFC3339.
                let created = timestamp(obj, "/metadata/creationTimestamp")
                    .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
                vec![json!(name(obj)), json!(created)]
            }
        }
    }

    /// Row conditions: only pods have them (podSuccessConditions / podFailedConditions).
    fn conditions(self, obj: &Value) -> Option<Value> {
        if !matches!(self, Printer::Pod) {
            return None;
        }
        let (reason, message) = match text(obj, "/status/phase") {
            "Succeeded" => ("Succeeded", "The pod has completed successfully."),
            "Failed" => ("Failed", "The pod failed."),
            _ => return None,
        };
        Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
    }
}

// ---------------------------------------------------------------------------------------------
// JSON access

fn get<'a>(obj: &'a Value, pointer: &str) -> Option<&'a Value> {
    obj.pointer(pointer).filter(|v| !v.is_null())
}

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    get(obj, pointer).and_then(Value::as_str).unwrap_or("")
}

fn int(obj: &Value, pointer: &str) -> i64 {
    get(obj, pointer).and_then(json_int).unwrap_or(0)
}

fn json_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

fn array<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    get(obj, pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn map_len(obj: &Value, pointer: &str) -> usize {
    get(obj, pointer)
        .and_then(Value::as_object)
        .map_or(0, Map::len)
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn name(obj: &Value) -> &str {
    text(obj, "/metadata/name")
}

/// A `metav1.Time` / `metav1.MicroTime`; `None` for the zero time, as Go's `IsZero` sees it.
fn timestamp(obj: &Value, pointer: &str) -> Option<Timestamp> {
    parse_time(get(obj, pointer)?)
}

fn parse_time(v: &Value) -> Option<Timestamp> {
    let t: Timestamp = v.as_str()?.parse().ok()?;
    (t.as_second() != GO_ZERO_TIME).then_some(t)
}

/// 0001-01-01T00:00:00Z, Go's zero `time.Time`, in Unix seconds.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// translateTimestampSince: the age of a timestamp, `<unknown>` when unset.
fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => human_signed(now.duration_since(t)),
        None => "<unknown>".to_string(),
    }
}

fn age(obj: &Value, now: Timestamp) -> String {
    since(timestamp(obj, "/metadata/creationTimestamp"), now)
}

fn human_signed(d: SignedDuration) -> String {
    // Go truncates toward zero (`int(d.Seconds())`), as `as_secs` does.
    human_seconds(d.as_secs())
}

/// HumanDuration on whole seconds. Ages up to a second in the future print as `0s` (clock skew
/// between machines); further in the future they are `<invalid>`.
fn human_seconds(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    } else if seconds < 0 {
        return "0s".to_string();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

// ---------------------------------------------------------------------------------------------
// Pods

/// printPod: READY, STATUS (the famous reason logic), RESTARTS, AGE, then the wide columns.
fn pod_cells(pod: &Value, now: Timestamp) -> Vec<Value> {
    let containers = array(pod, "/spec/containers");
    let init_containers = array(pod, "/spec/initContainers");
    let conditions = array(pod, "/status/conditions");

    let mut restarts: i64 = 0;
    let mut restartable_init_restarts: i64 = 0;
    let mut total = containers.len();
    let mut ready = 0usize;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_restartable_init_restart: Option<Timestamp> = None;

    let phase = text(pod, "/status/phase");
    let mut reason = non_empty(text(pod, "/status/reason"))
        .unwrap_or(phase)
        .to_string();

    // A pod held back by scheduling gates shows SchedulingGated.
    if conditions
        .iter()
        .any(|c| text(c, "/type") == "PodScheduled" && text(c, "/reason") == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }

    // Sidecars (init containers with restartPolicy Always) count as regular containers.
    let is_restartable = |container_name: &str| {
        init_containers
            .iter()
            .find(|c| text(c, "/name") == container_name)
            .is_some_and(|c| text(c, "/restartPolicy") == "Always")
    };
    total += init_containers
        .iter()
        .filter(|c| text(c, "/restartPolicy") == "Always")
        .count();

    let mut initializing = false;
    for (i, status) in array(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        let count = int(status, "/restartCount");
        let finished = timestamp(status, "/lastState/terminated/finishedAt");
        restarts += count;
        later(&mut last_restart, finished);
        let restartable = is_restartable(text(status, "/name"));
        if restartable {
            restartable_init_restarts += count;
            later(&mut last_restartable_init_restart, finished);
        }
        let terminated = get(status, "/state/terminated");
        let waiting_reason = text(status, "/state/waiting/reason");
        if terminated.is_some_and(|t| int(t, "/exitCode") == 0) {
            continue;
        } else if restartable && get(status, "/started").and_then(Value::as_bool) == Some(true) {
            if get(status, "/ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        } else if let Some(t) = terminated {
            // Initialization failed.
            reason = match non_empty(text(t, "/reason")) {
                Some(r) => format!("Init:{r}"),
                None if int(t, "/signal") != 0 => format!("Init:Signal:{}", int(t, "/signal")),
                None => format!("Init:ExitCode:{}", int(t, "/exitCode")),
            };
        } else if get(status, "/state/waiting").is_some()
            && !waiting_reason.is_empty()
            && waiting_reason != "PodInitializing"
        {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_containers.len());
        }
        initializing = true;
        break;
    }

    let initialized = conditions
        .iter()
        .find(|c| text(c, "/type") == "Initialized")
        .is_some_and(|c| text(c, "/status") == "True");
    if !initializing || initialized {
        restarts = restartable_init_restarts;
        last_restart = last_restartable_init_restart;
        let mut has_running = false;
        for status in array(pod, "/status/containerStatuses").iter().rev() {
            restarts += int(status, "/restartCount");
            later(
                &mut last_restart,
                timestamp(status, "/lastState/terminated/finishedAt"),
            );
            let waiting_reason = text(status, "/state/waiting/reason");
            let terminated = get(status, "/state/terminated");
            if get(status, "/state/waiting").is_some() && !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                reason = match non_empty(text(t, "/reason")) {
                    Some(r) => r.to_string(),
                    None if int(t, "/signal") != 0 => format!("Signal:{}", int(t, "/signal")),
                    None => format!("ExitCode:{}", int(t, "/exitCode")),
                };
            } else if get(status, "/ready").and_then(Value::as_bool) == Some(true)
                && get(status, "/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        // A pod whose last container completed while another still runs is not Completed.
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }

    if get(pod, "/metadata/deletionTimestamp").is_some() {
        // node.NodeUnreachablePodReason: the node controller marks pods of lost nodes.
        if text(pod, "/status/reason") == "NodeLost" {
            reason = "Unknown".to_string();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".to_string();
        }
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    };

    // Only podIPs is read, not the legacy podIP.
    let ip = array(pod, "/status/podIPs")
        .first()
        .map(|p| text(p, "/ip"))
        .and_then(non_empty)
        .unwrap_or("<none>");
    let node = non_empty(text(pod, "/spec/nodeName")).unwrap_or("<none>");
    let nominated = non_empty(text(pod, "/status/nominatedNodeName")).unwrap_or("<none>");
    let gates = array(pod, "/spec/readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_conditions = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .find(|c| text(c, "/type") == text(g, "/conditionType"))
                    .is_some_and(|c| text(c, "/status") == "True")
            })
            .count();
        format!("{true_conditions}/{}", gates.len())
    };

    vec![
        json!(name(pod)),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_cell),
        json!(age(pod, now)),
        json!(ip),
        json!(node),
        json!(nominated),
        json!(readiness_gates),
    ]
}

/// Keeps the later of two termination times (`lastRestartDate.Before(&terminatedDate)`).
fn later(latest: &mut Option<Timestamp>, candidate: Option<Timestamp>) {
    if let Some(c) = candidate {
        if latest.is_none_or(|l| l < c) {
            *latest = Some(c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Services

fn service_cells(svc: &Value, now: Timestamp) -> Vec<Value> {
    // Type and port protocols are defaulted when kube-apiserver decodes a Service.
    let ty = non_empty(text(svc, "/spec/type")).unwrap_or("ClusterIP");
    let cluster_ip = array(svc, "/spec/clusterIPs")
        .first()
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let ports: Vec<String> = array(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = non_empty(text(p, "/protocol")).unwrap_or("TCP");
            let node_port = int(p, "/nodePort");
            if node_port > 0 {
                format!("{}:{node_port}/{protocol}", int(p, "/port"))
            } else {
                format!("{}/{protocol}", int(p, "/port"))
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        json!(name(svc)),
        json!(ty),
        json!(cluster_ip),
        json!(service_external_ip(svc, ty)),
        json!(ports),
        json!(age(svc, now)),
        json!(format_labels(get(svc, "/spec/selector"))),
    ]
}

/// getServiceExternalIP, in its wide form (kube-apiserver renders tables wide, so load-balancer
/// addresses are never clipped).
fn service_external_ip(svc: &Value, ty: &str) -> String {
    let external_ips: Vec<&str> = array(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match ty {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            // Ingress IPs (or hostnames), deduplicated and sorted, then the external IPs.
            let mut ingress: Vec<&str> = array(svc, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    non_empty(text(i, "/ip")).or_else(|| non_empty(text(i, "/hostname")))
                })
                .collect();
            ingress.sort_unstable();
            ingress.dedup();
            if !external_ips.is_empty() {
                ingress.extend(external_ips);
                ingress.join(",")
            } else if !ingress.is_empty() {
                ingress.join(",")
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => text(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// labels.FormatLabels: `k=v` pairs sorted as strings and joined by commas, `<none>` if empty.
fn format_labels(labels: Option<&Value>) -> String {
    let mut pairs: Vec<String> = labels
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        return "<none>".to_string();
    }
    pairs.sort_unstable();
    pairs.join(",")
}

// ---------------------------------------------------------------------------------------------
// Endpoints and EndpointSlices

const LIST_MAX: usize = 3;

/// formatEndpoints: the first three `ip:port` pairs of ready addresses, then ` + N more...`.
fn format_endpoints(ep: &Value) -> String {
    let subsets = array(ep, "/subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for subset in subsets {
        let addresses = array(subset, "/addresses");
        let ports = array(subset, "/ports");
        if ports.is_empty() {
            // Headless services may have no ports.
            count += addresses.len();
            for address in addresses {
                if list.len() == LIST_MAX {
                    more = true;
                    break;
                }
                list.push(text(address, "/ip").to_string());
            }
            continue;
        }
        for port in ports {
            count += addresses.len();
            for address in addresses {
                if list.len() == LIST_MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(text(address, "/ip"), int(port, "/port")));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - LIST_MAX)
    } else {
        joined
    }
}

/// net.JoinHostPort: IPv6 addresses are bracketed.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn endpoint_slice_cells(slice: &Value, now: Timestamp) -> Vec<Value> {
    // formatDiscoveryPorts: the port number, else its name, else `*` (all ports).
    let ports = list_with_more(array(slice, "/ports").iter().map(|p| {
        match get(p, "/port") {
            Some(n) => json_int(n).unwrap_or(0).to_string(),
            None => get(p, "/name")
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_string(),
        }
    }));
    // formatDiscoveryEndpoints: every address of every endpoint, ready or not.
    let endpoints = list_with_more(array(slice, "/endpoints").iter().flat_map(|e| {
        array(e, "/addresses")
            .iter()
            .map(|a| a.as_str().unwrap_or("").to_string())
    }));
    vec![
        json!(name(slice)),
        json!(text(slice, "/addressType")),
        json!(ports),
        json!(endpoints),
        json!(age(slice, now)),
    ]
}

/// listWithMoreString: the first three items, ` + N more...`, or `<unset>` when empty.
fn list_with_more(items: impl Iterator<Item = String>) -> String {
    let mut list = Vec::new();
    let mut count = 0usize;
    for item in items {
        if list.len() < LIST_MAX {
            list.push(item);
        }
        count += 1;
    }
    let joined = list.join(",");
    if count > LIST_MAX {
        format!("{joined} + {} more...", count - LIST_MAX)
    } else if joined.is_empty() {
        "<unset>".to_string()
    } else {
        joined
    }
}

// ---------------------------------------------------------------------------------------------
// Deployments and ReplicaSets

fn deployment_cells(d: &Value, now: Timestamp) -> Vec<Value> {
    // spec.replicas defaults to 1 when kube-apiserver decodes a Deployment.
    let desired = get(d, "/spec/replicas").and_then(json_int).unwrap_or(1);
    let (containers, images) = container_cells(d);
    let selector = label_selector_string(get(d, "/spec/selector"))
        .unwrap_or_else(|()| "<invalid>".to_string());
    vec![
        json!(name(d)),
        json!(format!("{}/{desired}", int(d, "/status/readyReplicas"))),
        json!(int(d, "/status/updatedReplicas")),
        json!(int(d, "/status/availableReplicas")),
        json!(age(d, now)),
        json!(containers),
        json!(images),
        json!(selector),
    ]
}

fn replica_set_cells(rs: &Value, now: Timestamp) -> Vec<Value> {
    let desired = get(rs, "/spec/replicas").and_then(json_int).unwrap_or(1);
    let (containers, images) = container_cells(rs);
    // metav1.FormatLabelSelector: `<none>` for an empty selector, `<error>` for a bad one.
    let selector = match label_selector_string(get(rs, "/spec/selector")) {
        Ok(s) if s.is_empty() => "<none>".to_string(),
        Ok(s) => s,
        Err(()) => "<error>".to_string(),
    };
    vec![
        json!(name(rs)),
        json!(desired),
        json!(int(rs, "/status/replicas")),
        json!(int(rs, "/status/readyReplicas")),
        json!(age(rs, now)),
        json!(containers),
        json!(images),
        json!(selector),
    ]
}

/// layoutContainerCells: the pod template's container names and images, comma-separated.
fn container_cells(obj: &Value) -> (String, String) {
    let containers = array(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// metav1.LabelSelectorAsSelector(...).String(): requirements sorted by key, values sorted,
/// `key=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`. A missing or empty selector
/// prints as the empty string. Errors are the cases NewRequirement rejects.
fn label_selector_string(selector: Option<&Value>) -> Result<String, ()> {
    let Some(selector) = selector else {
        return Ok(String::new());
    };
    let mut requirements: Vec<(String, String)> = Vec::new();
    if let Some(labels) = get(selector, "/matchLabels").and_then(Value::as_object) {
        for (key, value) in labels {
            let value = value.as_str().unwrap_or("");
            if !valid_label_key(key) || !valid_label_value(value) {
                return Err(());
            }
            requirements.push((key.clone(), format!("{key}={value}")));
        }
    }
    for expr in array(selector, "/matchExpressions") {
        let key = text(expr, "/key");
        let mut values: Vec<&str> = array(expr, "/values")
            .iter()
            .map(|v| v.as_str().unwrap_or(""))
            .collect();
        if !valid_label_key(key) || !values.iter().all(|v| valid_label_value(v)) {
            return Err(());
        }
        values.sort_unstable();
        let rendered = match text(expr, "/operator") {
            "In" | "NotIn" if values.is_empty() => return Err(()),
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" | "DoesNotExist" if !values.is_empty() => return Err(()),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return Err(()),
        };
        requirements.push((key.to_string(), rendered));
    }
    requirements.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(requirements
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

/// A qualified name: an optional DNS-subdomain prefix and `/`, then a 1-63 character name.
fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && valid_label_value(name)
}

/// A label value: empty, or up to 63 alphanumerics, `-`, `_` and `.`, starting and ending with an
/// alphanumeric.
fn valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && value
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && value
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric()))
}

// ---------------------------------------------------------------------------------------------
// Nodes

fn node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    // Only the Ready condition counts; the last one wins if it is listed twice.
    let mut status: Vec<String> = Vec::new();
    if let Some(ready) = array(node, "/status/conditions")
        .iter()
        .rev()
        .find(|c| text(c, "/type") == "Ready")
    {
        status.push(
            if text(ready, "/status") == "True" {
                "Ready"
            } else {
                "NotReady"
            }
            .to_string(),
        );
    } else {
        status.push("Unknown".to_string());
    }
    if get(node, "/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".to_string());
    }

    // findNodeRoles: `node-role.kubernetes.io/<role>` keys and `kubernetes.io/role` values.
    let mut roles: Vec<&str> = Vec::new();
    if let Some(labels) = get(node, "/metadata/labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role);
                }
            } else if key == "kubernetes.io/role" {
                if let Some(role) = value.as_str().and_then(non_empty) {
                    roles.push(role);
                }
            }
        }
    }
    roles.sort_unstable();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };

    let address = |ty: &str| {
        array(node, "/status/addresses")
            .iter()
            .find(|a| text(a, "/type") == ty)
            .map_or("<none>", |a| text(a, "/address"))
    };
    let info = |field: &str| {
        non_empty(text(node, &format!("/status/nodeInfo/{field}"))).unwrap_or("<unknown>")
    };
    vec![
        json!(name(node)),
        json!(status.join(",")),
        json!(roles),
        json!(age(node, now)),
        json!(text(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

// ---------------------------------------------------------------------------------------------
// Events

fn event_cells(ev: &Value, now: Timestamp) -> Vec<Value> {
    // Events written through events.k8s.io only carry eventTime and series.
    let first_seen = match timestamp(ev, "/firstTimestamp") {
        Some(t) => since(Some(t), now),
        None => since(timestamp(ev, "/eventTime"), now),
    };
    let mut last_seen = match timestamp(ev, "/lastTimestamp") {
        Some(t) => since(Some(t), now),
        None => first_seen.clone(),
    };
    let mut count = int(ev, "/count");
    if let Some(series) = get(ev, "/series") {
        last_seen = since(timestamp(series, "/lastObservedTime"), now);
        count = int(series, "/count");
    } else if count == 0 {
        // Singleton events have no count in the new API.
        count = 1;
    }

    let kind = text(ev, "/involvedObject/kind").to_lowercase();
    let object = match non_empty(text(ev, "/involvedObject/name")) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    // formatEventSource: component (or reportingComponent), then host (or reportingInstance).
    let component =
        non_empty(text(ev, "/source/component")).unwrap_or(text(ev, "/reportingComponent"));
    let instance = non_empty(text(ev, "/source/host")).unwrap_or(text(ev, "/reportingInstance"));
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };

    vec![
        json!(last_seen),
        json!(text(ev, "/type")),
        json!(text(ev, "/reason")),
        json!(object),
        json!(text(ev, "/involvedObject/fieldPath")),
        json!(source),
        json!(text(ev, "/message").trim()),
        json!(first_seen),
        json!(count),
        json!(name(ev)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Custom resources

/// The apiextensions table convertor's cells: the name, then each column's JSONPath value, `null`
/// where the path finds nothing.
fn crd_cells(obj: &Value, columns: &[CrdColumn], now: Timestamp) -> Vec<Value> {
    let mut cells = vec![json!(name(obj))];
    for c in columns {
        let cell = match simple_json_path(obj, c.json_path) {
            None | Some(Value::Null) => Value::Null,
            Some(value) => crd_cell(c.column.ty, value, now),
        };
        cells.push(cell);
    }
    cells
}

/// cellForJSONValue, plus the `string` case that prints through client-go's jsonpath: scalars as
/// Go's `fmt.Fprint` would, lists and maps as compact Go JSON.
fn crd_cell(ty: &str, value: &Value, now: Timestamp) -> Value {
    match (ty, value) {
        ("string", Value::String(s)) => json!(s),
        ("string", Value::Bool(b)) => json!(b.to_string()),
        ("string", Value::Number(n)) => json!(go_print_number(n)),
        ("string", Value::Array(_) | Value::Object(_)) => json!(go_json(value)),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(s)) => match s.parse::<Timestamp>() {
            Ok(t) => json!(since((t.as_second() != GO_ZERO_TIME).then_some(t), now)),
            Err(_) => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

/// A dotted JSONPath such as `.spec.addresses` or `.spec.ports[0].port`.
fn simple_json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = obj;
    for segment in path.trim_start_matches('.').split('.') {
        let (field, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !field.is_empty() {
            current = current.get(field)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().ok()?;
            current = current.get(i)?;
        }
    }
    Some(current)
}

/// A number as Go's `fmt.Fprint` prints what encoding/json decoded: integers as is, floats in
/// `%v` (shortest `%g`) form.
fn go_print_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    let (negative, digits, exp) = shortest_digits(f);
    if digits == "0" {
        return "0".to_string();
    }
    let sign = if negative { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        format!("{sign}{}e{}", mantissa(&digits), exponent(exp, 2))
    } else {
        format!("{sign}{}", fixed(&digits, exp))
    }
}

/// JSON as Go's encoding/json writes it: compact, object keys sorted, `<`, `>`, `&`, U+2028 and
/// U+2029 escaped.
fn go_json(value: &Value) -> String {
    let mut out = String::new();
    write_go_json(&mut out, value);
    out
}

fn write_go_json(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_json_number(n)),
        Value::String(s) => write_go_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(out, key);
                out.push(':');
                write_go_json(out, &map[key.as_str()]);
            }
            out.push('}');
        }
    }
}

fn write_go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as encoding/json writes a float64: fixed notation unless tiny or huge.
fn go_json_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    let (negative, digits, exp) = shortest_digits(f);
    if digits == "0" {
        return "0".to_string();
    }
    let sign = if negative { "-" } else { "" };
    let abs = f.abs();
    if !(1e-6..1e21).contains(&abs) {
        format!("{sign}{}e{}", mantissa(&digits), exponent(exp, 1))
    } else {
        format!("{sign}{}", fixed(&digits, exp))
    }
}

/// The shortest round-trip decimal digits of `f` and its decimal exponent (`d.ddd × 10^exp`).
fn shortest_digits(f: f64) -> (bool, String, i32) {
    let formatted = format!("{:e}", f.abs());
    let (mantissa, exp) = formatted.split_once('e').unwrap_or((&formatted, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    (
        f.is_sign_negative() && f != 0.0,
        digits,
        exp.parse().unwrap_or(0),
    )
}

fn mantissa(digits: &str) -> String {
    match digits.split_at_checked(1) {
        Some((first, rest)) if !rest.is_empty() => format!("{first}.{rest}"),
        _ => digits.to_string(),
    }
}

/// Go's exponent: a sign and at least `min_digits` digits.
fn exponent(exp: i32, min_digits: usize) -> String {
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{:0min_digits$}", exp.unsigned_abs())
}

fn fixed(digits: &str, exp: i32) -> String {
    let point = exp + 1;
    if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point as usize;
        if digits.len() <= point {
            format!("{digits}{}", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{find, RESOURCES};
    use std::time::Duration;

    fn res(group: &str, version: &str, plural: &str) -> &'static ResourceInfo {
        find(group, version, plural).expect("resource is served")
    }

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().expect("valid timestamp")
    }

    /// `now` minus a duration, as the RFC3339 string a metav1.Time holds.
    fn ago(secs: i64) -> String {
        (now() - SignedDuration::from_secs(secs)).to_string()
    }

    fn cells(resource: &ResourceInfo, obj: &Value) -> Vec<Value> {
        match row(resource, obj, IncludeObject::None, now()) {
            Value::Object(mut m) => match m.remove("cells") {
                Some(Value::Array(cells)) => cells,
                other => panic!("no cells: {other:?}"),
            },
            other => panic!("not a row: {other:?}"),
        }
    }

    fn column_names(resource: &ResourceInfo) -> Vec<String> {
        column_definitions(resource)
            .iter()
            .map(|c| c["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    fn wide_names(resource: &ResourceInfo) -> Vec<String> {
        column_definitions(resource)
            .iter()
            .filter(|c| c["priority"].as_i64() != Some(0))
            .map(|c| c["name"].as_str().unwrap_or("").to_string())
            .collect()
    }

    // --- human_duration -------------------------------------------------------------------------

    #[test]
    fn human_duration_matches_kubernetes_for_every_range() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (9 * 60 + 30, "9m30s"),
            (10 * 60 + 30, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (7 * 3600 + 59 * 60, "7h59m"),
            (8 * 3600 + 30 * 60, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (2 * 86400 + 5 * 3600, "2d5h"),
            (7 * 86400 + 23 * 3600, "7d23h"),
            (8 * 86400 + 5 * 3600, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (740 * 86400, "2y10d"),
            (8 * 365 * 86400, "8y"),
            (8 * 365 * 86400 + 100 * 86400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(*secs)), *want, "{secs}s");
        }
    }

    #[test]
    fn ages_slightly_in_the_future_are_zero_and_further_ones_invalid() {
        let pod = |ts: String| json!({"metadata": {"name": "p", "creationTimestamp": ts}});
        let ns = res("", "v1", "namespaces");
        assert_eq!(
            cells(
                ns,
                &pod((now() + SignedDuration::from_millis(1500)).to_string())
            )[2],
            "0s"
        );
        assert_eq!(
            cells(ns, &pod((now() + SignedDuration::from_secs(5)).to_string()))[2],
            "<invalid>"
        );
        assert_eq!(
            cells(ns, &json!({"metadata": {"name": "p"}}))[2],
            "<unknown>"
        );
    }

    // --- IncludeObject and the Table wire shape -------------------------------------------------

    #[test]
    fn include_object_defaults_to_metadata_and_rejects_unknown_values() {
        assert_eq!(IncludeObject::parse(None), IncludeObject::Metadata);
        assert_eq!(IncludeObject::parse(Some("")), IncludeObject::Metadata);
        assert_eq!(IncludeObject::parse(Some("None")), IncludeObject::None);
        assert_eq!(IncludeObject::parse(Some("Object")), IncludeObject::Object);
        assert_eq!(IncludeObject::parse(Some("bogus")), IncludeObject::Metadata);
        let err = IncludeObject::try_parse(Some("bogus")).expect_err("bogus is rejected");
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "Unable to convert to Table as requested: includeObject: Invalid value: \"bogus\": must be 'Metadata', 'Object', 'None', or empty"
        );
    }

    #[test]
    fn rows_carry_partial_metadata_by_default_the_object_on_request_and_null_otherwise() {
        let cm = res("", "v1", "configmaps");
        let obj = json!({"metadata": {"name": "c", "namespace": "default", "resourceVersion": "7"}, "data": {"a": "1"}});
        let r = row(cm, &obj, IncludeObject::Metadata, now());
        assert_eq!(
            r["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"name": "c", "namespace": "default", "resourceVersion": "7"}})
        );
        let r = row(cm, &obj, IncludeObject::Object, now());
        assert_eq!(r["object"]["kind"], "ConfigMap");
        assert_eq!(r["object"]["apiVersion"], "v1");
        assert_eq!(r["object"]["data"], json!({"a": "1"}));
        let r = row(cm, &obj, IncludeObject::None, now());
        assert!(r["object"].is_null());
        assert!(r.get("conditions").is_none());
    }

    #[test]
    fn a_table_has_kind_list_metadata_columns_and_rows() {
        let ns = res("", "v1", "namespaces");
        let objects = [
            json!({"metadata": {"name": "default", "creationTimestamp": ago(3600)}, "status": {"phase": "Active"}}),
        ];
        let meta = json!({"resourceVersion": "42", "continue": "", "remainingItemCount": 3, "selfLink": "x"});
        let t = table(ns, &objects, meta, IncludeObject::None, now(), true);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "42", "remainingItemCount": 3})
        );
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(
            t["columnDefinitions"][1],
            json!({"name": "Status", "type": "string", "format": "",
            "description": "The status of the namespace", "priority": 0})
        );
        assert_eq!(t["rows"][0]["cells"], json!(["default", "Active", "60m"]));
        let keys: Vec<&String> = t
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "kind",
                "apiVersion",
                "metadata",
                "columnDefinitions",
                "rows"
            ]
        );
    }

    #[test]
    fn watch_tables_after_the_first_carry_null_column_definitions() {
        let ns = res("", "v1", "namespaces");
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "9"}});
        let t = table(
            ns,
            std::slice::from_ref(&obj),
            obj["metadata"].clone(),
            IncludeObject::Metadata,
            now(),
            false,
        );
        assert!(t["columnDefinitions"].is_null());
        assert_eq!(t["metadata"], json!({"resourceVersion": "9"}));
        assert_eq!(t["rows"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn an_empty_list_gives_an_empty_rows_array() {
        let t = table(
            res("", "v1", "pods"),
            &[],
            json!({"resourceVersion": "1"}),
            IncludeObject::Metadata,
            now(),
            true,
        );
        assert_eq!(t["rows"], json!([]));
    }

    #[test]
    fn every_served_resource_renders_as_many_cells_as_it_has_columns() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": ago(10)}});
        for r in RESOURCES {
            let columns = column_definitions(r);
            assert_eq!(cells(r, &obj).len(), columns.len(), "{}", r.plural);
            assert_eq!(
                columns.iter().filter(|c| c["format"] == "name").count(),
                1,
                "{}",
                r.plural
            );
        }
    }

    // --- Services -------------------------------------------------------------------------------

    fn service(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default", "creationTimestamp": ago(300)},
               "spec": spec, "status": status})
    }

    #[test]
    fn services_have_kubectls_columns() {
        let svc = res("", "v1", "services");
        assert_eq!(
            column_names(svc),
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector"
            ]
        );
        assert_eq!(wide_names(svc), ["Selector"]);
    }

    #[test]
    fn a_cluster_ip_service_shows_its_ip_ports_and_selector() {
        let s = service(
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                   "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                   "selector": {"k8s-app": "kube-dns", "app": "dns"}}),
            json!({"loadBalancer": {}}),
        );
        assert_eq!(
            cells(res("", "v1", "services"), &s),
            json!([
                "web",
                "ClusterIP",
                "10.96.0.10",
                "<none>",
                "53/UDP,53/TCP",
                "5m",
                "app=dns,k8s-app=kube-dns"
            ])
            .as_array()
            .cloned()
            .unwrap_or_default()
        );
    }

    #[test]
    fn a_node_port_service_shows_port_colon_node_port_and_its_external_ips() {
        let s = service(
            json!({"type": "NodePort", "clusterIPs": ["10.96.1.2"], "externalIPs": ["192.0.2.1", "192.0.2.2"],
                   "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "nodePort": 30443}]}),
            json!({}),
        );
        let c = cells(res("", "v1", "services"), &s);
        assert_eq!(c[3], "192.0.2.1,192.0.2.2");
        assert_eq!(c[4], "80:30080/TCP,443:30443/TCP");
        assert_eq!(c[6], "<none>");
    }

    #[test]
    fn a_load_balancer_without_ingress_is_pending() {
        let s = service(
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.1.3"], "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]}),
            json!({"loadBalancer": {}}),
        );
        let c = cells(res("", "v1", "services"), &s);
        assert_eq!(c[3], "<pending>");
        assert_eq!(c[4], "80:31000/TCP");
    }

    #[test]
    fn a_load_balancer_lists_sorted_unique_ingress_then_external_ips_unclipped() {
        let s = service(
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.1.3"], "externalIPs": ["198.51.100.7"],
                   "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]}),
            json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}, {"hostname": "lb.example.com"},
                                                {"ip": "203.0.113.10"}, {"ip": "203.0.113.20"}]}}),
        );
        assert_eq!(
            cells(res("", "v1", "services"), &s)[3],
            "203.0.113.10,203.0.113.20,lb.example.com,198.51.100.7"
        );
        let s = service(
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.1.3"], "ports": []}),
            json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}),
        );
        let c = cells(res("", "v1", "services"), &s);
        assert_eq!(c[3], "203.0.113.10");
        assert_eq!(c[4], "<none>");
    }

    #[test]
    fn an_external_name_service_shows_the_name_as_external_ip_and_no_cluster_ip() {
        let s = service(
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
            json!({}),
        );
        let c = cells(res("", "v1", "services"), &s);
        assert_eq!(c[1], "ExternalName");
        assert_eq!(c[2], "<none>");
        assert_eq!(c[3], "db.example.com");
        assert_eq!(c[4], "<none>");
    }

    #[test]
    fn a_headless_service_shows_none_as_cluster_ip() {
        let s = service(
            json!({"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432, "protocol": "TCP"}],
                   "selector": {"app": "db"}}),
            json!({}),
        );
        let c = cells(res("", "v1", "services"), &s);
        assert_eq!(c[2], "None");
        assert_eq!(c[3], "<none>");
    }

    #[test]
    fn a_dual_stack_service_shows_its_primary_cluster_ip() {
        let s = service(
            json!({"type": "ClusterIP", "clusterIPs": ["fd00::10", "10.96.0.20"], "ports": [{"port": 80}]}),
            json!({}),
        );
        let c = cells(res("", "v1", "services"), &s);
        assert_eq!(c[2], "fd00::10");
        assert_eq!(c[4], "80/TCP");
    }

    // --- Pods -----------------------------------------------------------------------------------

    fn pod(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": ago(2 * 86400 + 3600)},
               "spec": spec, "status": status})
    }

    fn two_containers() -> Value {
        json!({"nodeName": "node-a", "containers": [{"name": "app", "image": "nginx"}, {"name": "log", "image": "busybox"}]})
    }

    fn running(name: &str, ready: bool, restarts: i64) -> Value {
        json!({"name": name, "ready": ready, "restartCount": restarts, "started": true,
               "state": {"running": {"startedAt": ago(3600)}}})
    }

    #[test]
    fn pods_have_kubectls_columns() {
        let p = res("", "v1", "pods");
        assert_eq!(
            column_names(p),
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        assert_eq!(
            wide_names(p),
            ["IP", "Node", "Nominated Node", "Readiness Gates"]
        );
    }

    #[test]
    fn a_running_pod_shows_ready_count_ip_and_node() {
        let p = pod(
            two_containers(),
            json!({"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [running("app", true, 0), running("log", true, 0)]}),
        );
        assert_eq!(
            cells(res("", "v1", "pods"), &p),
            [
                "web-1",
                "2/2",
                "Running",
                "0",
                "2d1h",
                "10.244.1.5",
                "node-a",
                "<none>",
                "<none>"
            ]
        );
    }

    #[test]
    fn a_pod_pulling_its_image_shows_the_waiting_reason() {
        let p = pod(
            two_containers(),
            json!({"phase": "Pending", "containerStatuses": [
                running("app", true, 0),
                {"name": "log", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        let c = cells(res("", "v1", "pods"), &p);
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "ContainerCreating");
        assert_eq!(c[5], "<none>");
    }

    #[test]
    fn a_crash_looping_pod_shows_restarts_with_the_time_of_the_last_one() {
        let p = pod(
            json!({"containers": [{"name": "app"}]}),
            json!({"phase": "Running", "containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(300)}}}]}),
        );
        let c = cells(res("", "v1", "pods"), &p);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "5 (5m ago)");
    }

    #[test]
    fn a_finished_pod_shows_completed_and_a_completed_row_condition() {
        let p = pod(
            json!({"containers": [{"name": "job"}]}),
            json!({"phase": "Succeeded", "containerStatuses": [{
                "name": "job", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
        );
        let r = row(res("", "v1", "pods"), &p, IncludeObject::None, now());
        assert_eq!(r["cells"][2], "Completed");
        assert_eq!(
            r["conditions"],
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}])
        );
        let keys: Vec<&String> = r
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["cells", "conditions", "object"]);
    }

    #[test]
    fn a_container_that_exited_without_a_reason_shows_its_exit_code_or_signal() {
        let status = |terminated: Value| {
            pod(
                json!({"containers": [{"name": "app"}]}),
                json!({"phase": "Failed", "containerStatuses": [{"name": "app", "restartCount": 0, "state": {"terminated": terminated}}]}),
            )
        };
        let pods = res("", "v1", "pods");
        assert_eq!(
            cells(pods, &status(json!({"exitCode": 2})))[2],
            "ExitCode:2"
        );
        assert_eq!(
            cells(pods, &status(json!({"exitCode": 137, "signal": 9})))[2],
            "Signal:9"
        );
    }

    #[test]
    fn a_completed_container_beside_a_running_one_is_running_or_not_ready() {
        let status = |ready_condition: &str| {
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": ready_condition}], "containerStatuses": [
                running("app", true, 0),
                {"name": "log", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]})
        };
        let pods = res("", "v1", "pods");
        assert_eq!(
            cells(pods, &pod(two_containers(), status("True")))[2],
            "Running"
        );
        assert_eq!(
            cells(pods, &pod(two_containers(), status("False")))[2],
            "NotReady"
        );
    }

    #[test]
    fn init_containers_show_progress_and_failures() {
        let spec = json!({"initContainers": [{"name": "migrate"}, {"name": "seed"}], "containers": [{"name": "app"}]});
        let with = |inits: Value| {
            pod(
                spec.clone(),
                json!({"phase": "Pending", "initContainerStatuses": inits,
                "containerStatuses": [{"name": "app", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}),
            )
        };
        let pods = res("", "v1", "pods");
        let done = json!({"name": "migrate", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let running = json!({"name": "seed", "restartCount": 0, "state": {"running": {}}});
        assert_eq!(cells(pods, &with(json!([done, running])))[2], "Init:1/2");
        let pulling = json!({"name": "migrate", "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull"}}});
        assert_eq!(cells(pods, &with(json!([pulling])))[2], "Init:ErrImagePull");
        let failed = json!({"name": "migrate", "restartCount": 3, "state": {"terminated": {"exitCode": 1, "reason": "Error"}},
                            "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(90)}}});
        let c = cells(pods, &with(json!([failed])));
        assert_eq!(c[2], "Init:Error");
        assert_eq!(c[3], "3 (90s ago)");
        let killed = json!({"name": "migrate", "restartCount": 0, "state": {"terminated": {"exitCode": 137, "signal": 9}}});
        assert_eq!(cells(pods, &with(json!([killed])))[2], "Init:Signal:9");
    }

    #[test]
    fn a_running_sidecar_counts_as_a_container() {
        let p = pod(
            json!({"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "app"}]}),
            json!({"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                   "initContainerStatuses": [{"name": "proxy", "ready": true, "started": true, "restartCount": 2,
                                              "state": {"running": {}},
                                              "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(600)}}}],
                   "containerStatuses": [running("app", true, 1)]}),
        );
        let c = cells(res("", "v1", "pods"), &p);
        assert_eq!(c[1], "2/2");
        assert_eq!(c[2], "Running");
        assert_eq!(c[3], "3 (10m ago)");
    }

    #[test]
    fn a_deleted_pod_is_terminating_unless_finished_or_its_node_is_lost() {
        let mut p = pod(
            two_containers(),
            json!({"phase": "Running", "containerStatuses": [running("app", true, 0), running("log", true, 0)]}),
        );
        p["metadata"]["deletionTimestamp"] = json!(ago(5));
        let pods = res("", "v1", "pods");
        assert_eq!(cells(pods, &p)[2], "Terminating");
        p["status"]["reason"] = json!("NodeLost");
        assert_eq!(cells(pods, &p)[2], "Unknown");
        p["status"] = json!({"phase": "Succeeded"});
        assert_eq!(cells(pods, &p)[2], "Succeeded");
    }

    #[test]
    fn a_gated_pod_shows_scheduling_gated() {
        let p = pod(
            json!({"containers": [{"name": "app"}]}),
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}),
        );
        let c = cells(res("", "v1", "pods"), &p);
        assert_eq!(c[2], "SchedulingGated");
        assert_eq!(c[6], "<none>");
    }

    #[test]
    fn an_evicted_pod_shows_the_status_reason() {
        let p = pod(
            json!({"containers": [{"name": "app"}]}),
            json!({"phase": "Failed", "reason": "Evicted"}),
        );
        assert_eq!(cells(res("", "v1", "pods"), &p)[2], "Evicted");
    }

    #[test]
    fn readiness_gates_count_the_true_conditions_and_nominated_node_shows() {
        let p = pod(
            json!({"containers": [{"name": "app"}], "readinessGates": [{"conditionType": "lb/ready"}, {"conditionType": "x/ok"}]}),
            json!({"phase": "Pending", "nominatedNodeName": "node-b",
                   "conditions": [{"type": "lb/ready", "status": "True"}, {"type": "x/ok", "status": "False"}]}),
        );
        let c = cells(res("", "v1", "pods"), &p);
        assert_eq!(c[7], "node-b");
        assert_eq!(c[8], "1/2");
    }

    // --- Endpoints and EndpointSlices -----------------------------------------------------------

    fn endpoints(subsets: Value) -> Value {
        json!({"metadata": {"name": "web", "creationTimestamp": ago(45)}, "subsets": subsets})
    }

    #[test]
    fn endpoints_list_ip_port_pairs() {
        let ep = res("", "v1", "endpoints");
        assert_eq!(column_names(ep), ["Name", "Endpoints", "Age"]);
        let e = endpoints(
            json!([{"addresses": [{"ip": "10.244.1.5"}, {"ip": "10.244.2.7"}],
                                  "notReadyAddresses": [{"ip": "10.244.3.1"}],
                                  "ports": [{"port": 8080, "protocol": "TCP"}]}]),
        );
        assert_eq!(
            cells(ep, &e),
            ["web", "10.244.1.5:8080,10.244.2.7:8080", "45s"]
        );
    }

    #[test]
    fn endpoints_beyond_three_are_counted() {
        let e = endpoints(json!([
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]},
            {"addresses": [{"ip": "10.0.0.3"}], "ports": [{"port": 80}]}]));
        assert_eq!(
            cells(res("", "v1", "endpoints"), &e)[1],
            "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 2 more..."
        );
    }

    #[test]
    fn endpoints_without_subsets_are_none_and_headless_ones_are_bare_ips() {
        let ep = res("", "v1", "endpoints");
        assert_eq!(cells(ep, &endpoints(json!([])))[1], "<none>");
        assert_eq!(
            cells(ep, &json!({"metadata": {"name": "web"}}))[1],
            "<none>"
        );
        assert_eq!(
            cells(ep, &endpoints(json!([{"addresses": [{"ip": "10.0.0.9"}]}])))[1],
            "10.0.0.9"
        );
        assert_eq!(
            cells(
                ep,
                &endpoints(json!([{"addresses": [{"ip": "fd00::9"}], "ports": [{"port": 53}]}]))
            )[1],
            "[fd00::9]:53"
        );
        // Only not-ready addresses: an empty cell, not <none>.
        assert_eq!(
            cells(
                ep,
                &endpoints(
                    json!([{"notReadyAddresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 53}]}])
                )
            )[1],
            ""
        );
    }

    #[test]
    fn endpoint_slices_show_address_type_ports_and_addresses() {
        let es = res("discovery.k8s.io", "v1", "endpointslices");
        assert_eq!(
            column_names(es),
            ["Name", "AddressType", "Ports", "Endpoints", "Age"]
        );
        let s = json!({"metadata": {"name": "web-abc12", "creationTimestamp": ago(7200)}, "addressType": "IPv4",
                       "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "https", "port": 443}],
                       "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                                     {"addresses": ["10.244.2.7"], "conditions": {"ready": false}}]});
        assert_eq!(
            cells(es, &s),
            [
                "web-abc12",
                "IPv4",
                "80,443",
                "10.244.1.5,10.244.2.7",
                "120m"
            ]
        );
    }

    #[test]
    fn endpoint_slices_show_unset_wildcards_and_overflow() {
        let es = res("discovery.k8s.io", "v1", "endpointslices");
        let s = json!({"metadata": {"name": "s"}, "addressType": "IPv6", "ports": [{}, {"name": "dns"}],
                       "endpoints": [{"addresses": ["fd00::1"]}, {"addresses": ["fd00::2"]}, {"addresses": ["fd00::3"]},
                                     {"addresses": ["fd00::4"]}, {"addresses": ["fd00::5"]}]});
        let c = cells(es, &s);
        assert_eq!(c[2], "*,dns");
        assert_eq!(c[3], "fd00::1,fd00::2,fd00::3 + 2 more...");
        let c = cells(
            es,
            &json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": []}),
        );
        assert_eq!(c[2], "<unset>");
        assert_eq!(c[3], "<unset>");
    }

    // --- Deployments and ReplicaSets ------------------------------------------------------------

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}},
               "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "sidecar", "image": "envoy:v1.30"}]}})
    }

    #[test]
    fn deployments_show_ready_over_desired_and_their_template() {
        let d = res("apps", "v1", "deployments");
        assert_eq!(
            column_names(d),
            [
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(wide_names(d), ["Containers", "Images", "Selector"]);
        let obj = json!({"metadata": {"name": "web", "creationTimestamp": ago(600)},
                         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template()},
                         "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        assert_eq!(
            cells(d, &obj),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("10m"),
                json!("nginx,sidecar"),
                json!("nginx:1.27,envoy:v1.30"),
                json!("app=web")
            ]
        );
    }

    #[test]
    fn a_new_deployment_defaults_to_one_replica_and_zero_counts() {
        let obj = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template()}});
        let c = cells(res("apps", "v1", "deployments"), &obj);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], 0);
        assert_eq!(c[3], 0);
    }

    #[test]
    fn replica_sets_show_desired_current_ready_and_a_formatted_selector() {
        let rs = res("apps", "v1", "replicasets");
        assert_eq!(
            column_names(rs),
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let obj = json!({"metadata": {"name": "web-5d9c7b", "creationTimestamp": ago(600)},
                         "spec": {"replicas": 3, "template": template(), "selector": {
                             "matchLabels": {"pod-template-hash": "5d9c7b", "app": "web"},
                             "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]},
                                                  {"key": "canary", "operator": "DoesNotExist"},
                                                  {"key": "env", "operator": "NotIn", "values": ["dev"]},
                                                  {"key": "zone", "operator": "Exists"}]}},
                         "status": {"replicas": 3, "readyReplicas": 1}});
        assert_eq!(
            cells(rs, &obj),
            vec![json!("web-5d9c7b"), json!(3), json!(3), json!(1), json!("10m"), json!("nginx,sidecar"),
                 json!("nginx:1.27,envoy:v1.30"),
                 json!("app=web,!canary,env notin (dev),pod-template-hash=5d9c7b,tier in (edge,front),zone")]
        );
    }

    #[test]
    fn empty_and_invalid_selectors_print_as_kubernetes_does() {
        let rs = res("apps", "v1", "replicasets");
        let d = res("apps", "v1", "deployments");
        let with =
            |selector: Value| json!({"metadata": {"name": "x"}, "spec": {"selector": selector}});
        assert_eq!(cells(rs, &with(json!({})))[7], "<none>");
        assert_eq!(cells(d, &with(json!({})))[7], "");
        let bad =
            json!({"matchExpressions": [{"key": "a", "operator": "Within", "values": ["b"]}]});
        assert_eq!(cells(rs, &with(bad.clone()))[7], "<error>");
        assert_eq!(cells(d, &with(bad))[7], "<invalid>");
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "In"}]});
        assert_eq!(cells(rs, &with(bad))[7], "<error>");
        let bad = json!({"matchLabels": {"a": "not valid!"}});
        assert_eq!(cells(rs, &with(bad))[7], "<error>");
        let ok = json!({"matchLabels": {"example.com/tier": "front"}});
        assert_eq!(cells(rs, &with(ok))[7], "example.com/tier=front");
    }

    // --- Nodes ----------------------------------------------------------------------------------

    fn node(ready: Option<&str>, unschedulable: bool, labels: Value) -> Value {
        let conditions = match ready {
            Some(s) => {
                json!([{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": s}])
            }
            None => json!([]),
        };
        json!({"metadata": {"name": "node-a", "creationTimestamp": ago(30 * 86400), "labels": labels},
               "spec": {"unschedulable": unschedulable},
               "status": {"conditions": conditions,
                          "addresses": [{"type": "Hostname", "address": "node-a"}, {"type": "InternalIP", "address": "192.168.1.10"}],
                          "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                       "kernelVersion": "6.1.0-21-amd64", "containerRuntimeVersion": "containerd://1.7.13"}}})
    }

    #[test]
    fn nodes_show_status_roles_version_and_system_info() {
        let n = res("", "v1", "nodes");
        assert_eq!(
            column_names(n),
            [
                "Name",
                "Status",
                "Roles",
                "Age",
                "Version",
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
        let obj = node(
            Some("True"),
            false,
            json!({"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "master",
                                                   "node-role.kubernetes.io/": "x", "kubernetes.io/hostname": "node-a"}),
        );
        assert_eq!(
            cells(n, &obj),
            [
                "node-a",
                "Ready",
                "control-plane,master",
                "30d",
                "v1.33.1",
                "192.168.1.10",
                "<none>",
                "Debian GNU/Linux 12 (bookworm)",
                "6.1.0-21-amd64",
                "containerd://1.7.13"
            ]
        );
    }

    #[test]
    fn node_status_is_not_ready_unknown_and_scheduling_disabled() {
        let n = res("", "v1", "nodes");
        assert_eq!(
            cells(n, &node(Some("False"), false, json!({})))[1],
            "NotReady"
        );
        assert_eq!(
            cells(n, &node(Some("Unknown"), true, json!({})))[1],
            "NotReady,SchedulingDisabled"
        );
        let c = cells(n, &node(None, true, json!({})));
        assert_eq!(c[1], "Unknown,SchedulingDisabled");
        assert_eq!(c[2], "<none>");
        let bare = json!({"metadata": {"name": "n"}});
        assert_eq!(
            cells(n, &bare)[7..],
            ["<unknown>", "<unknown>", "<unknown>"]
        );
    }

    // --- Namespaces, ConfigMaps, Leases ---------------------------------------------------------

    #[test]
    fn namespaces_show_their_phase() {
        let ns = res("", "v1", "namespaces");
        assert_eq!(column_names(ns), ["Name", "Status", "Age"]);
        let obj = json!({"metadata": {"name": "old", "creationTimestamp": ago(400 * 86400), "deletionTimestamp": ago(1)},
                         "status": {"phase": "Terminating"}});
        assert_eq!(cells(ns, &obj), ["old", "Terminating", "400d"]);
        assert_eq!(
            cells(ns, &json!({"metadata": {"name": "new"}}))[1],
            "Active"
        );
    }

    #[test]
    fn config_maps_count_data_and_binary_data() {
        let cm = res("", "v1", "configmaps");
        assert_eq!(column_names(cm), ["Name", "Data", "Age"]);
        let obj = json!({"metadata": {"name": "kube-root-ca.crt", "creationTimestamp": ago(86400)},
                         "data": {"ca.crt": "..."}, "binaryData": {"blob": "AAAA", "other": "AQID"}});
        assert_eq!(
            cells(cm, &obj),
            vec![json!("kube-root-ca.crt"), json!(3), json!("24h")]
        );
    }

    #[test]
    fn leases_show_their_holder() {
        let l = res("coordination.k8s.io", "v1", "leases");
        assert_eq!(column_names(l), ["Name", "Holder", "Age"]);
        let obj = json!({"metadata": {"name": "node-a", "creationTimestamp": ago(3 * 86400)},
                         "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 40}});
        assert_eq!(cells(l, &obj), ["node-a", "node-a", "3d"]);
        assert_eq!(
            cells(l, &json!({"metadata": {"name": "free"}, "spec": {}}))[1],
            ""
        );
    }

    // --- Events ---------------------------------------------------------------------------------

    #[test]
    fn events_have_kubectls_columns() {
        let ev = res("", "v1", "events");
        assert_eq!(
            column_names(ev),
            [
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name"
            ]
        );
        assert_eq!(
            wide_names(ev),
            ["Subobject", "Source", "First Seen", "Count", "Name"]
        );
    }

    #[test]
    fn a_core_event_shows_times_object_source_and_count() {
        let obj = json!({"metadata": {"name": "web-1.17c3f0a1b2c3d4e5", "namespace": "default"},
                         "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{app}"},
                         "reason": "Pulled", "type": "Normal", "message": "  Container image \"nginx\" already present on machine\n",
                         "source": {"component": "kubelet", "host": "node-a"},
                         "firstTimestamp": ago(3600), "lastTimestamp": ago(120), "count": 4});
        assert_eq!(
            cells(res("", "v1", "events"), &obj),
            vec![
                json!("2m"),
                json!("Normal"),
                json!("Pulled"),
                json!("pod/web-1"),
                json!("spec.containers{app}"),
                json!("kubelet, node-a"),
                json!("Container image \"nginx\" already present on machine"),
                json!("60m"),
                json!(4),
                json!("web-1.17c3f0a1b2c3d4e5")
            ]
        );
    }

    #[test]
    fn a_new_style_event_uses_event_time_series_and_reporting_fields() {
        let ev = res("", "v1", "events");
        let single = json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Service"},
                            "reason": "IPAllocated", "type": "Normal", "message": "ok",
                            "eventTime": "2024-05-01T11:59:30.123456Z", "reportingComponent": "switchyard-controller",
                            "reportingInstance": "", "source": {}});
        let c = cells(ev, &single);
        assert_eq!(c[0], "29s");
        assert_eq!(c[3], "service");
        assert_eq!(c[5], "switchyard-controller");
        assert_eq!(c[7], "29s");
        assert_eq!(c[8], 1);
        let series = json!({"metadata": {"name": "e2"}, "involvedObject": {"kind": "Node", "name": "node-a"},
                            "eventTime": ago(7200), "series": {"count": 12, "lastObservedTime": ago(30)},
                            "reportingComponent": "kubelet", "reportingInstance": "node-a"});
        let c = cells(ev, &series);
        assert_eq!(c[0], "30s");
        assert_eq!(c[5], "kubelet, node-a");
        assert_eq!(c[7], "120m");
        assert_eq!(c[8], 12);
        let c = cells(ev, &json!({"metadata": {"name": "e3"}}));
        assert_eq!(c[0], "<unknown>");
        assert_eq!(c[7], "<unknown>");
    }

    // --- MetalLB custom resources ---------------------------------------------------------------

    #[test]
    fn ip_address_pools_show_metallbs_printer_columns() {
        let p = res("metallb.io", "v1beta1", "ipaddresspools");
        let columns = column_definitions(p);
        assert_eq!(
            column_names(p),
            ["Name", "Auto Assign", "Avoid Buggy IPs", "Addresses"]
        );
        assert_eq!(columns[1]["type"], "boolean");
        assert_eq!(
            columns[3]["description"],
            "Custom resource definition column (in JSONPath format): .spec.addresses"
        );
        let obj = json!({"metadata": {"name": "first-pool", "namespace": "metallb-system", "creationTimestamp": ago(60)},
                         "spec": {"addresses": ["192.168.1.240-192.168.1.250", "fd00:10::/120"], "autoAssign": true, "avoidBuggyIPs": false}});
        assert_eq!(
            cells(p, &obj),
            vec![
                json!("first-pool"),
                json!(true),
                json!(false),
                json!("[\"192.168.1.240-192.168.1.250\",\"fd00:10::/120\"]")
            ]
        );
        assert_eq!(
            cells(p, &json!({"metadata": {"name": "bare"}, "spec": {}}))[1..],
            [Value::Null, Value::Null, Value::Null]
        );
    }

    #[test]
    fn l2_advertisements_show_metallbs_printer_columns_with_node_selectors_wide() {
        let l2 = res("metallb.io", "v1beta1", "l2advertisements");
        assert_eq!(
            column_names(l2),
            [
                "Name",
                "IPAddressPools",
                "IPAddressPool Selectors",
                "Interfaces",
                "Node Selectors"
            ]
        );
        assert_eq!(column_definitions(l2)[4]["priority"], 10);
        let obj = json!({"metadata": {"name": "l2"},
                         "spec": {"ipAddressPools": ["first-pool"],
                                  "nodeSelectors": [{"matchLabels": {"zone": "a&b", "kubernetes.io/hostname": "node-a"}}]}});
        assert_eq!(
            cells(l2, &obj),
            vec![json!("l2"), json!("[\"first-pool\"]"), Value::Null, Value::Null,
                 json!("[{\"matchLabels\":{\"kubernetes.io/hostname\":\"node-a\",\"zone\":\"a\\u0026b\"}}]")]
        );
    }

    #[test]
    fn crd_string_columns_print_scalars_as_go_does() {
        let now = now();
        assert_eq!(crd_cell("string", &json!(7), now), "7");
        assert_eq!(crd_cell("string", &json!(1.5), now), "1.5");
        assert_eq!(crd_cell("string", &json!(1_000_000.0), now), "1e+06");
        assert_eq!(crd_cell("string", &json!(0.00001), now), "1e-05");
        assert_eq!(crd_cell("string", &json!(true), now), "true");
        assert_eq!(
            crd_cell("string", &json!([1.0, 2.5, 1e21, "<x>"]), now),
            "[1,2.5,1e+21,\"\\u003cx\\u003e\"]"
        );
        assert_eq!(crd_cell("integer", &json!(3.9), now), 3);
        assert_eq!(crd_cell("boolean", &json!("yes"), now), Value::Null);
        assert_eq!(crd_cell("date", &json!(ago(90)), now), "90s");
        assert_eq!(crd_cell("date", &json!("yesterday"), now), "<invalid>");
    }

    // --- Anything else --------------------------------------------------------------------------

    #[test]
    fn other_resources_get_the_default_name_and_created_at_table() {
        let other = ResourceInfo {
            group: "example.com",
            version: "v1",
            kind: "Widget",
            plural: "widgets",
            singular: "widget",
            namespaced: true,
            short_names: &[],
            categories: &[],
            subresources: &[],
            storage_prefix: "example.com/widgets",
        };
        assert_eq!(column_names(&other), ["Name", "Created At"]);
        assert_eq!(column_definitions(&other)[1]["type"], "date");
        let obj = json!({"metadata": {"name": "w", "creationTimestamp": "2024-04-30T10:20:30Z"}});
        assert_eq!(cells(&other, &obj), ["w", "2024-04-30T10:20:30Z"]);
        assert_eq!(
            cells(&other, &json!({"metadata": {"name": "w"}}))[1],
            "0001-01-01T00:00:00Z"
        );
        let t = table(&other, &[], json!({}), IncludeObject::Metadata, now(), true);
        assert!(t["rows"].is_null());
        assert_eq!(t["metadata"], json!({}));
    }
}
