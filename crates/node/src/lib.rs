//! Switchyard's node agent (the kubelet's role, issue 4): registers its Node, keeps its Lease,
//! and runs the pods bound to it as real network sandboxes.
//!
//! - [`sandbox`]: the node's pod network (a bridge in the node's namespace, routes to the other
//!   nodes' pod CIDRs) and one network namespace per pod, attached by a veth, with an IP from
//!   [`ipam`] (persisted: a restart never hands an IP out twice), its own hostname, resolv.conf
//!   and hosts file.
//! - [`runtime`]: containers as processes inside a sandbox's namespaces, each under a
//!   [`shim`] that keeps its exit status, their logs on disk ([`logs`]); images resolve through
//!   [`catalog`] (built-in entries run [`echo`]).
//! - [`envvars`], [`dnsconfig`]: what kubelet puts into a container's environment and a pod's
//!   resolv.conf/hosts (pure functions).
//! - [`probes`]: readiness, liveness and startup probes.
//! - [`agent`]: the loop: node registration and status, the Lease, the pods of this node, their
//!   status, graceful termination.
//! - [`announcer`]: LoadBalancer IPs announced on the node's segment, MetalLB's L2 mode: who
//!   announces ([`announce`], pure), who is alive ([`heartbeat`]), and the [`l2`] speaker that
//!   answers ARP and Neighbor Solicitations ([`ndp`]).

pub mod agent;
pub mod announce;
pub mod announcer;
pub mod catalog;
pub mod dnsconfig;
pub mod echo;
pub mod envvars;
pub mod exec;
pub mod heartbeat;
pub mod ipam;
pub mod l2;
pub mod logs;
pub mod ndp;
pub mod probes;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod shim;

use std::net::IpAddr;
use std::path::PathBuf;

/// Everything `switchyard node` is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Node's name.
    pub node_name: String,
    /// The node's address (InternalIP); the node's namespace must have it on an interface.
    pub node_ip: IpAddr,
    /// The network namespace the node's data plane lives in (`None`: this process's own).
    pub netns: Option<String>,
    /// Nameservers written into pods' resolv.conf (dnsPolicy ClusterFirst).
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// State: IP allocations, sandboxes, container records, logs.
    pub root_dir: PathBuf,
    /// An image catalog file added to the built-in entries.
    pub image_catalog: Option<PathBuf>,
    /// The `switchyard` executable the built-in images run (`switchyard echo-server ...`) and
    /// every container is supervised by (`switchyard container-shim ...`, [`shim`]).
    pub self_exe: PathBuf,
    /// The kubelet endpoint (`kubectl logs`, `kubectl exec` through the API server); `None`
    /// serves none.
    pub kubelet: Option<KubeletEndpoint>,
}

/// Where the node's kubelet endpoint listens and whom it trusts.
#[derive(Clone, Debug)]
pub struct KubeletEndpoint {
    /// Address in the agent's own namespace. When it is not the node's address (a node whose
    /// data plane lives in a namespace listens on loopback), the Node says where it is with
    /// the `switchyard.dev/kubelet-endpoint` annotation.
    pub listen: std::net::SocketAddr,
    /// The cluster CA (PEM) that certifies the API server's kubelet client.
    pub client_ca_pem: Vec<u8>,
}
