//! The service shapes the golden tests, the packet tracer's tables and the userspace backend's
//! socket tests share: one node (`node-a`) and the `default/web` Service port.
//!
//! Compiled twice: into the library's tests, and into `tests/userspace.rs` (through `#[path]`),
//! which brings `model` and `nftables` into its crate root so the `crate::` paths below resolve
//! in both.

use std::net::IpAddr;

use crate::model::{Endpoint, Protocol, ServicePort, ServicePortInfo, ServicePortName};
use crate::nftables::{NodeConfig, Scheduler};

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub(crate) fn spn(name: &str, port_name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol,
    }
}

/// `node-a`: NodePorts on 192.168.67.1, 10.244.1.1 and fd00:67::1 (127.0.0.1 and ::1 are
/// listed and must be ignored), pods in 10.244.0.0/16 and fd00:10:244::/56.
pub(crate) fn node() -> NodeConfig {
    NodeConfig {
        node_name: "node-a".into(),
        node_port_ips: vec![
            ip("192.168.67.1"),
            ip("127.0.0.1"),
            ip("10.244.1.1"),
            ip("fd00:67::1"),
            ip("::1"),
        ],
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "fd00:10:244::/56".parse().expect("cidr"),
        ],
        masquerade_all: false,
        scheduler: Scheduler::Random,
    }
}

/// `default/web` port `http`: ClusterIP 10.96.0.10:80/TCP, endpoints `(ip, node)` on port 8080.
pub(crate) fn web(endpoints: &[(&str, &str)]) -> (ServicePortName, ServicePort) {
    (
        spn("web", "http", Protocol::Tcp),
        ServicePort {
            info: ServicePortInfo::cluster_ip(ip("10.96.0.10"), 80, Protocol::Tcp),
            endpoints: endpoints
                .iter()
                .map(|(e, node)| Endpoint::ready(ip(e), 8080, Some(node)))
                .collect(),
        },
    )
}

/// `web` over IPv6: ClusterIP fd00:96::a, endpoints `(ip, node)` on port 8080.
pub(crate) fn web6(endpoints: &[(&str, &str)]) -> (ServicePortName, ServicePort) {
    let (name, mut port) = web(endpoints);
    port.info.cluster_ips = vec![ip("fd00:96::a")];
    (name, port)
}
