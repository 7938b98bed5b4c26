//! Switchyard's controllers, one module each. Every reconcile step is a pure function from the
//! observed objects (and an explicit `now`) to the writes that should happen, so it is tested on
//! its own; the loops that feed them from shared informers and apply their writes through the
//! API are thin ([`runtime`]). [`manager`] runs them all under leader election, inside
//! `switchyard server` or against any API server.

use std::time::Duration;

pub mod controller_ref;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod lbipam;
pub mod leaderelection;
pub mod manager;
pub mod nodelifecycle;
pub mod podcidr;
pub mod pods;
pub mod replicaset;
pub mod runtime;
pub mod scheduler;

pub use manager::ControllerManager;

/// The controller manager's settings; `Default` gives Kubernetes' defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// This instance's name in the leader Lease and in Events.
    pub identity: String,
    /// Run the controllers only while holding the leader Lease (`--leader-elect`).
    pub leader_elect: bool,
    /// `--leader-elect-lease-duration`.
    pub lease_duration: Duration,
    /// `--leader-elect-renew-deadline`.
    pub renew_deadline: Duration,
    /// `--leader-elect-retry-period`.
    pub retry_period: Duration,
    /// `--node-monitor-grace-period`: a node whose heartbeat is older is not ready.
    pub node_monitor_grace_period: Duration,
    /// `--node-monitor-period`: how often node health is checked.
    pub node_monitor_period: Duration,
    /// `--pod-eviction-timeout`: pods of a node not ready this long are deleted.
    pub pod_eviction_timeout: Duration,
    /// `--cluster-cidr`: the range node pod CIDRs come from.
    pub cluster_cidr: String,
    /// `--node-cidr-mask-size`: the prefix length of each node's pod CIDR.
    pub node_cidr_mask_size: u8,
    /// How often every key is reconciled again even without a change.
    pub resync_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            identity: default_identity(),
            leader_elect: true,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            pod_eviction_timeout: Duration::from_secs(300),
            cluster_cidr: "10.244.0.0/16".to_string(),
            node_cidr_mask_size: 24,
            resync_period: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// Refuses settings the controllers cannot run with, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.leader_elect {
            leaderelection::LeaderElector::with_timings(
                self.identity.clone(),
                signed(self.lease_duration),
                signed(self.renew_deadline),
                signed(self.retry_period),
            )
            .map_err(|e| format!("invalid leader election settings: {e}"))?;
            if self.lease_duration < Duration::from_secs(1) {
                return Err("--leader-elect-lease-duration must be at least 1s".to_string());
            }
        }
        let cidr: ipnet::IpNet = self
            .cluster_cidr
            .parse()
            .map_err(|_| format!("--cluster-cidr {:?} is not a CIDR", self.cluster_cidr))?;
        if self.node_cidr_mask_size < cidr.prefix_len()
            || self.node_cidr_mask_size > cidr.max_prefix_len()
        {
            return Err(format!(
                "--node-cidr-mask-size {} must be between the cluster CIDR's prefix length {} and {}",
                self.node_cidr_mask_size,
                cidr.prefix_len(),
                cidr.max_prefix_len()
            ));
        }
        for (flag, d) in [
            (
                "--node-monitor-grace-period",
                self.node_monitor_grace_period,
            ),
            ("--node-monitor-period", self.node_monitor_period),
            ("--resync-period", self.resync_period),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// A `std` duration as a `jiff` one (saturating).
pub(crate) fn signed(d: Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
}

/// A client for the API server a kubeconfig file points at (its current context), as every
/// Switchyard component outside the API server connects.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("invalid kubeconfig {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// `<hostname>_<random>`, as client-go's leader election identities are unique per process.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "switchyard".to_string()
    } else {
        host
    };
    format!("{host}_{}", uuid::Uuid::new_v4())
}
