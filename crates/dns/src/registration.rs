//! Each DNS instance as an endpoint of `kube-system/kube-dns` (issue 6). The Service has no
//! selector: `switchyard dns` runs as a process, not as pods, so every instance writes its own
//! EndpointSlice `kube-dns-<instance>` (one endpoint, its advertised address, ready once its
//! zone is synced) and the service proxy sends `10.96.0.10:53` to live instances only.
//!
//! An instance deletes its slice when it stops. One that crashes cannot, so every instance also
//! renews a Lease `switchyard-dns-<instance>` and deletes the slices (managed by
//! `switchyard-dns`) of instances whose Lease expired, as kube-apiserver's lease-based endpoint
//! reconciler does for the `kubernetes` Service. This module never touches slices it does not
//! manage.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::server::Dns;

/// The Service the instances register under.
pub const SERVICE_NAME: &str = "kube-dns";
/// The namespace of the Service, the slices and the Leases.
pub const NAMESPACE: &str = "kube-system";
/// `endpointslice.kubernetes.io/managed-by` of our slices; the EndpointSlice controller leaves
/// slices managed by others alone, and we delete only these.
pub const MANAGED_BY: &str = "switchyard-dns";
/// The prefix of the slices' names, followed by the instance id.
pub const SLICE_PREFIX: &str = "kube-dns-";
/// The prefix of the Leases' names, followed by the instance id.
pub const LEASE_PREFIX: &str = "switchyard-dns-";

/// What an instance registers and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// The instance id, part of the slice's and the Lease's names: a DNS label.
    pub instance: String,
    /// The address other nodes reach this instance at.
    pub address: IpAddr,
    /// The port DNS is served on (UDP and TCP).
    pub dns_port: u16,
    /// The port of `/metrics`.
    pub metrics_port: u16,
    /// How long the Lease holds without renewal, after which another instance removes this
    /// one's slice: 15 s, kube-apiserver's lease endpoint reconciler's TTL for the masters of
    /// the `kubernetes` Service.
    pub lease_duration: Duration,
    /// How often the Lease is renewed, the slice rewritten if it changed, and expired instances
    /// cleaned up: a third of the lease duration, as Kubernetes node leases (40 s / 10 s).
    pub renew_interval: Duration,
}

impl RegistrationConfig {
    /// A configuration for `address` with the instance id derived from it (`10-0-0-5`): a
    /// restarted instance at the same address takes its slice back instead of leaving one to
    /// expire.
    pub fn for_address(address: IpAddr, dns_port: u16, metrics_port: u16) -> Self {
        Self {
            instance: instance_id_of(address),
            address,
            dns_port,
            metrics_port,
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
        }
    }

    /// The slice's name, `kube-dns-<instance>`.
    pub fn slice_name(&self) -> String {
        format!("{SLICE_PREFIX}{}", self.instance)
    }

    /// The Lease's name, `switchyard-dns-<instance>`.
    pub fn lease_name(&self) -> String {
        format!("{LEASE_PREFIX}{}", self.instance)
    }
}

/// `10.0.0.5` → `10-0-0-5`, `fd00::5` → `fd00--5`: a DNS label naming the instance.
pub fn instance_id_of(address: IpAddr) -> String {
    address.to_string().replace(['.', ':'], "-")
}

/// The EndpointSlice of one instance: one endpoint, ready as given, the Service's port names.
pub fn endpoint_slice(config: &RegistrationConfig, ready: bool) -> EndpointSlice {
    let family = if config.address.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": config.slice_name(), "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": SERVICE_NAME,
                       "endpointslice.kubernetes.io/managed-by": MANAGED_BY}
        },
        "addressType": family,
        "endpoints": [{
            "addresses": [config.address.to_string()],
            // Serving and terminating as kube-proxy reads them (KEP-1672): a synced instance
            // serves; not-ready is not terminating, it is starting.
            "conditions": {"ready": ready, "serving": ready, "terminating": false}
        }],
        "ports": [
            {"name": "dns", "port": config.dns_port, "protocol": "UDP"},
            {"name": "dns-tcp", "port": config.dns_port, "protocol": "TCP"},
            {"name": "metrics", "port": config.metrics_port, "protocol": "TCP"}
        ]
    }))
    .expect("the slice literal matches the EndpointSlice schema")
}

/// Whether the Lease is past `renewTime + leaseDurationSeconds` at `now`. A Lease without a
/// renew time is expired too: nobody holds it.
pub fn lease_expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return true;
    };
    let (Some(MicroTime(renewed)), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds)
    else {
        return true;
    };
    *renewed + SignedDuration::from_secs(i64::from(seconds)) < now
}

/// One instance's registration: its slice and its Lease, renewed by [`Registration::maintain`]
/// and removed by [`Registration::deregister`].
pub struct Registration {
    config: RegistrationConfig,
    slices: Api<EndpointSlice>,
    leases: Api<Lease>,
}

impl Registration {
    pub fn new(client: kube::Client, config: RegistrationConfig) -> Self {
        Self {
            config,
            slices: Api::namespaced(client.clone(), NAMESPACE),
            leases: Api::namespaced(client, NAMESPACE),
        }
    }

    pub fn config(&self) -> &RegistrationConfig {
        &self.config
    }

    /// Keeps the registration current until the task is dropped: renews the Lease, writes the
    /// slice (ready = `dns` synced) and removes expired instances every renew interval, and
    /// rewrites the slice as soon as the zone becomes synced. API errors are logged and retried
    /// at the next round.
    pub async fn maintain(&self, dns: Arc<Dns>) {
        /// After a failed round, wait this long before the next attempt (not every tick).
        const RETRY_AFTER: Duration = Duration::from_secs(1);
        let mut written_ready = None;
        let mut next_renewal = tokio::time::Instant::now();
        let mut retry_at = next_renewal;
        loop {
            let now = tokio::time::Instant::now();
            let ready = dns.is_synced();
            let renew = now >= next_renewal;
            if now >= retry_at && (renew || written_ready != Some(ready)) {
                match self.round(ready, renew).await {
                    Ok(()) => {
                        written_ready = Some(ready);
                        if renew {
                            next_renewal = now + self.config.renew_interval;
                        }
                    }
                    Err(error) => {
                        warn!(%error, "kube-dns registration failed; retrying");
                        retry_at = tokio::time::Instant::now() + RETRY_AFTER;
                    }
                }
            }
            // Readiness changes once (at the first sync); checking it often costs an atomic load.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn round(&self, ready: bool, renew: bool) -> Result<(), kube::Error> {
        if renew {
            self.renew_lease().await?;
        }
        self.write_slice(ready).await?;
        if renew {
            self.remove_expired().await?;
        }
        Ok(())
    }

    async fn renew_lease(&self) -> Result<(), kube::Error> {
        let name = self.config.lease_name();
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let mut lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "spec": {"holderIdentity": self.config.instance, "leaseDurationSeconds": seconds}
        }))
        .expect("the lease literal matches the Lease schema");
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        upsert(&self.leases, &name, lease).await
    }

    async fn write_slice(&self, ready: bool) -> Result<(), kube::Error> {
        let name = self.config.slice_name();
        upsert(&self.slices, &name, endpoint_slice(&self.config, ready)).await?;
        debug!(slice = %name, ready, "kube-dns endpoint written");
        Ok(())
    }

    /// Deletes the slices (and Leases) of instances whose Lease expired or is missing.
    pub async fn remove_expired(&self) -> Result<(), kube::Error> {
        let managed = ListParams::default().labels(&format!(
            "endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
        ));
        let now = Timestamp::now();
        for slice in self.slices.list(&managed).await?.items {
            let Some(name) = slice.metadata.name else {
                continue;
            };
            let Some(instance) = name.strip_prefix(SLICE_PREFIX) else {
                continue;
            };
            if instance == self.config.instance {
                continue;
            }
            let lease_name = format!("{LEASE_PREFIX}{instance}");
            let expired = match self.leases.get_opt(&lease_name).await? {
                Some(lease) => lease_expired(&lease, now),
                None => true,
            };
            if expired {
                info!(slice = %name, "removing the endpoint of a DNS instance whose lease expired");
                ignore_not_found(self.slices.delete(&name, &DeleteParams::default()).await)?;
                ignore_not_found(
                    self.leases
                        .delete(&lease_name, &DeleteParams::default())
                        .await,
                )?;
            }
        }
        Ok(())
    }

    /// Removes this instance's slice and Lease (on shutdown).
    pub async fn deregister(&self) -> Result<(), kube::Error> {
        ignore_not_found(
            self.slices
                .delete(&self.config.slice_name(), &DeleteParams::default())
                .await,
        )?;
        ignore_not_found(
            self.leases
                .delete(&self.config.lease_name(), &DeleteParams::default())
                .await,
        )?;
        info!(slice = %self.config.slice_name(), "kube-dns endpoint removed");
        Ok(())
    }
}

fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Creates `object` as `name`, or replaces what is there (keeping its resourceVersion: a
/// concurrent writer makes this round fail with 409 and the next one retry).
async fn upsert<K>(api: &Api<K>, name: &str, mut object: K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        Some(existing) => {
            object.meta_mut().resource_version = existing.meta().resource_version.clone();
            api.replace(name, &PostParams::default(), &object).await?;
        }
        None => {
            api.create(&PostParams::default(), &object).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_dns_labels_derived_from_the_address() {
        assert_eq!(instance_id_of("10.0.0.5".parse().expect("ip")), "10-0-0-5");
        assert_eq!(instance_id_of("fd00::5".parse().expect("ip")), "fd00--5");
    }

    #[test]
    fn a_lease_expires_after_its_duration_from_the_last_renewal() {
        let renewed: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "x"},
            "spec": {"leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z"}
        }))
        .expect("lease");
        assert!(!lease_expired(
            &lease,
            renewed + SignedDuration::from_secs(15)
        ));
        assert!(lease_expired(
            &lease,
            renewed + SignedDuration::from_secs(16)
        ));
        let unheld: Lease =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {}})).expect("lease");
        assert!(lease_expired(&unheld, renewed));
    }

    #[test]
    fn the_slice_has_one_endpoint_and_the_service_port_names() {
        let config = RegistrationConfig::for_address("10.0.0.5".parse().expect("ip"), 53, 9153);
        let slice = endpoint_slice(&config, true);
        assert_eq!(slice.metadata.name.as_deref(), Some("kube-dns-10-0-0-5"));
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints.len(), 1);
        assert_eq!(slice.endpoints[0].addresses, ["10.0.0.5"]);
        let names: Vec<_> = slice
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.port.unwrap_or_default()))
            .collect();
        assert_eq!(
            names,
            [
                ("dns".to_string(), 53),
                ("dns-tcp".to_string(), 53),
                ("metrics".to_string(), 9153)
            ]
        );
    }
}
