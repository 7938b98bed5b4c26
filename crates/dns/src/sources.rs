//! The watches that feed the zone (issue 6): Services, EndpointSlices and Pods of all namespaces,
//! each through a `kube::runtime::watcher`, applied to the [`Dns`]'s zone one object at a time.
//!
//! A (re)list — `Init`, `InitApply`..., `InitDone` — is buffered and applied at `InitDone` under
//! one write lock: the objects listed are upserted and those not listed again are removed, so a
//! query never sees a half-listed zone. The server is marked synced once all three kinds have
//! finished their first list; until then names of the zone answer SERVFAIL.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use switchyard_api::k8s::api::core::v1::{Pod, Service};
use switchyard_api::k8s::api::discovery::v1::EndpointSlice;
use tracing::{info, warn};

use crate::server::Dns;
use crate::zone::Zone;

/// Page size of the initial lists; client-go's reflector pages by 500.
const LIST_PAGE_SIZE: u32 = 500;

/// How one kind enters and leaves the zone.
struct Kind<K> {
    name: &'static str,
    upsert: fn(&mut Zone, &K),
    remove: fn(&mut Zone, &str, &str),
}

/// Counts down the kinds still to finish their first list; the last one marks the server synced.
struct FirstSync {
    remaining: AtomicUsize,
    dns: Arc<Dns>,
}

impl FirstSync {
    fn done(&self, kind: &str) {
        info!(kind, "first list applied to the zone");
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            info!("all kinds listed: the zone is synced");
            self.dns.mark_synced();
        }
    }
}

/// Watches Services, EndpointSlices and Pods in all namespaces and keeps `dns`'s zone up to date,
/// marking it synced after the first full list of all three. Runs until the task is dropped;
/// watch errors are retried with the watcher's default backoff.
pub async fn run_watches(client: kube::Client, dns: Arc<Dns>) {
    let first_sync = Arc::new(FirstSync {
        remaining: AtomicUsize::new(3),
        dns: Arc::clone(&dns),
    });
    let services = watch(
        Api::<Service>::all(client.clone()),
        Kind {
            name: "Service",
            upsert: Zone::upsert_service,
            remove: Zone::remove_service,
        },
        Arc::clone(&dns),
        Arc::clone(&first_sync),
    );
    let slices = watch(
        Api::<EndpointSlice>::all(client.clone()),
        Kind {
            name: "EndpointSlice",
            upsert: Zone::upsert_slice,
            remove: Zone::remove_slice,
        },
        Arc::clone(&dns),
        Arc::clone(&first_sync),
    );
    let pods = watch(
        Api::<Pod>::all(client),
        Kind {
            name: "Pod",
            upsert: |zone, pod| {
                zone.upsert_pod(pod);
            },
            remove: |zone, namespace, name| {
                zone.remove_pod(namespace, name);
            },
        },
        dns,
        first_sync,
    );
    tokio::join!(services, slices, pods);
}

fn key_of<K: Resource>(object: &K) -> (String, String) {
    let meta = object.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

async fn watch<K>(api: Api<K>, kind: Kind<K>, dns: Arc<Dns>, first_sync: Arc<FirstSync>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let mut events = watcher(api, config).default_backoff().boxed();
    let name = kind.name;
    let mut state = KindState::new(kind);
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if state.apply(event, &dns) {
                    first_sync.done(name);
                }
            }
            Err(error) => warn!(kind = name, %error, "watch failed; retrying"),
        }
    }
}

/// One kind's side of the zone: what it has put there, and the list being received.
struct KindState<K> {
    kind: Kind<K>,
    /// What this watch has put in the zone, to know what a relist no longer has.
    known: HashSet<(String, String)>,
    /// The objects of the (re)list in progress, applied together at `InitDone`.
    listing: Vec<K>,
    listed_once: bool,
}

impl<K: Resource> KindState<K> {
    fn new(kind: Kind<K>) -> Self {
        Self {
            kind,
            known: HashSet::new(),
            listing: Vec::new(),
            listed_once: false,
        }
    }

    /// Applies one watch event to `dns`'s zone; true when it completed this kind's first list.
    fn apply(&mut self, event: watcher::Event<K>, dns: &Dns) -> bool {
        let kind = &self.kind;
        match event {
            watcher::Event::Init => self.listing.clear(),
            watcher::Event::InitApply(object) => self.listing.push(object),
            watcher::Event::InitDone => {
                let listing = std::mem::take(&mut self.listing);
                let listed: HashSet<_> = listing.iter().map(key_of).collect();
                dns.update_zone(|zone| {
                    for (namespace, name) in self.known.difference(&listed) {
                        (kind.remove)(zone, namespace, name);
                    }
                    for object in &listing {
                        (kind.upsert)(zone, object);
                    }
                });
                info!(kind = kind.name, objects = listed.len(), "list applied");
                self.known = listed;
                let first = !self.listed_once;
                self.listed_once = true;
                return first;
            }
            watcher::Event::Apply(object) => {
                dns.update_zone(|zone| (kind.upsert)(zone, &object));
                self.known.insert(key_of(&object));
            }
            watcher::Event::Delete(object) => {
                let (namespace, name) = key_of(&object);
                dns.update_zone(|zone| (kind.remove)(zone, &namespace, &name));
                self.known.remove(&(namespace, name));
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{Name, RecordType};
    use serde_json::json;

    use super::*;
    use crate::forward::{Forwarder, ForwarderConfig};
    use crate::zone::ZoneConfig;

    fn dns() -> Arc<Dns> {
        Arc::new(Dns::new(
            Zone::new(ZoneConfig::default()),
            Forwarder::new(ForwarderConfig::default()),
            Vec::new(),
        ))
    }

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]},
        }))
        .expect("test Service is valid")
    }

    fn services() -> KindState<Service> {
        KindState::new(Kind {
            name: "Service",
            upsert: Zone::upsert_service,
            remove: Zone::remove_service,
        })
    }

    fn rcode(dns: &Dns, service: &str) -> ResponseCode {
        let name =
            Name::from_ascii(format!("{service}.default.svc.cluster.local.")).expect("valid name");
        dns.update_zone(|zone| zone.answer(&name, RecordType::A).rcode)
    }

    #[test]
    fn a_list_reaches_the_zone_only_when_it_is_complete() {
        let dns = dns();
        let mut state = services();
        assert!(!state.apply(watcher::Event::Init, &dns));
        assert!(!state.apply(watcher::Event::InitApply(service("a", "10.96.0.10")), &dns));
        assert_eq!(rcode(&dns, "a"), ResponseCode::NXDomain);
        assert!(state.apply(watcher::Event::InitDone, &dns));
        assert_eq!(rcode(&dns, "a"), ResponseCode::NoError);
    }

    #[test]
    fn a_relist_removes_what_was_not_listed_again_and_is_not_a_first_sync() {
        let dns = dns();
        let mut state = services();
        state.apply(watcher::Event::Init, &dns);
        state.apply(watcher::Event::InitApply(service("a", "10.96.0.10")), &dns);
        state.apply(watcher::Event::InitDone, &dns);
        state.apply(watcher::Event::Apply(service("b", "10.96.0.11")), &dns);
        assert_eq!(rcode(&dns, "b"), ResponseCode::NoError);

        // The watch expired while `a` was deleted: the relist no longer has it.
        state.apply(watcher::Event::Init, &dns);
        state.apply(watcher::Event::InitApply(service("b", "10.96.0.11")), &dns);
        assert_eq!(
            rcode(&dns, "a"),
            ResponseCode::NoError,
            "not before InitDone"
        );
        assert!(!state.apply(watcher::Event::InitDone, &dns));
        assert_eq!(rcode(&dns, "a"), ResponseCode::NXDomain);
        assert_eq!(rcode(&dns, "b"), ResponseCode::NoError);

        state.apply(watcher::Event::Delete(service("b", "10.96.0.11")), &dns);
        assert_eq!(rcode(&dns, "b"), ResponseCode::NXDomain);
    }

    #[test]
    fn the_server_is_synced_only_after_every_kind_has_listed_once() {
        let dns = dns();
        let first_sync = FirstSync {
            remaining: AtomicUsize::new(3),
            dns: Arc::clone(&dns),
        };
        first_sync.done("Service");
        first_sync.done("EndpointSlice");
        assert!(!dns.is_synced());
        first_sync.done("Pod");
        assert!(dns.is_synced());
    }
}
