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
    // What this watch has put in the zone, to know what a relist no longer has.
    let mut known: HashSet<(String, String)> = HashSet::new();
    let mut listing: Vec<K> = Vec::new();
    let mut listed_once = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(object)) => listing.push(object),
            Ok(watcher::Event::InitDone) => {
                let listed: HashSet<_> = listing.iter().map(key_of).collect();
                dns.update_zone(|zone| {
                    for (namespace, name) in known.difference(&listed) {
                        (kind.remove)(zone, namespace, name);
                    }
                    for object in &listing {
                        (kind.upsert)(zone, object);
                    }
                });
                info!(kind = kind.name, objects = listed.len(), "list applied");
                known = listed;
                listing.clear();
                if !listed_once {
                    listed_once = true;
                    first_sync.done(kind.name);
                }
            }
            Ok(watcher::Event::Apply(object)) => {
                dns.update_zone(|zone| (kind.upsert)(zone, &object));
                known.insert(key_of(&object));
            }
            Ok(watcher::Event::Delete(object)) => {
                let (namespace, name) = key_of(&object);
                dns.update_zone(|zone| (kind.remove)(zone, &namespace, &name));
                known.remove(&(namespace, name));
            }
            Err(error) => warn!(kind = kind.name, %error, "watch failed; retrying"),
        }
    }
}
