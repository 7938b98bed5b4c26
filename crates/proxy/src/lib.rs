//! Switchyard's service proxy (the kube-proxy role, issue 5): Services and EndpointSlices from
//! the API → nftables rules in the node's network namespace.
//!
//! Three stages, as in kube-proxy's nftables mode: [`model`] folds watch events into one change
//! per service and computes what each service port needs; [`nftables`] is the pure builder from
//! that snapshot to a ruleset per IP family and to `nft -f` transactions (full or partial);
//! [`proxier`] owns the watches, the sync loop and the IO (`nft` inside the node's namespace).
//! It never programs from a half-listed cache and never flushes its tables except by replacing
//! them atomically.
//!
//! [`userspace`] is the backend for machines without nftables (`--proxy-mode userspace`): an L4
//! proxy listening on the service addresses, driven by the same watches.
//!
//! Around the proxy, as kube-proxy: [`metrics`] (Prometheus families under kube-proxy's names),
//! [`healthcheck`] (`/healthz`, `/livez` and the `healthCheckNodePort` servers), [`status`] (the
//! two HTTP listeners), [`config`] (`KubeProxyConfiguration` files) and [`supervisor`] (listeners,
//! conntrack sysctls and a ConfigMap-driven swap of the running proxy).

pub mod config;
pub mod healthcheck;
pub mod metrics;
pub mod model;
pub mod nftables;
pub mod proxier;
pub mod splice;
pub mod status;
pub mod supervisor;
pub mod userspace;

pub use model::{
    ChangeTracker, Endpoint, Protocol, ServiceKey, ServicePort, ServicePortInfo, ServicePortName,
    Snapshot,
};
pub use nftables::{Family, NodeConfig, Ruleset, Scheduler};
pub use proxier::{NftApplier, Observer, Proxy, ProxyConfig, ProxyMetrics, ProxyMode};
pub use supervisor::ProxySupervisor;
