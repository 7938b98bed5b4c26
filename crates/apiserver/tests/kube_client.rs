//! kube-rs against Switchyard: the client library our own node and DNS components use (and most
//! Rust controllers) must work unchanged. Covers list and watch (ordering, resuming from a
//! resourceVersion, bookmarks, selector transitions, 410 after compaction and the runtime
//! watcher's relist), paged lists, optimistic concurrency, every patch type, the status and scale
//! subresources, bearer-token and anonymous access, dry run, finalizers and generateName. Each
//! test runs its own in-process server; waits are bounded by timeouts on events, never sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_testkit::InProcessServer;

/// How long any single expected event may take; generous for a loaded CI machine.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

async fn server() -> (InProcessServer, Client) {
    let srv = InProcessServer::start().await.expect("server starts");
    let client = srv.client().await.expect("client");
    (srv, client)
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn service(name: &str, labels: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": {"app": name}, "ports": [{"name": "a", "port": 80}]},
    }))
    .expect("service")
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .expect("configmap")
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }))
    .expect("deployment")
}

async fn create_services(api: &Api<Service>, names: &[&str]) {
    for n in names {
        api.create(&PostParams::default(), &service(n, json!({})))
            .await
            .expect("create service");
    }
}

/// The API error behind a kube-rs error, or a panic saying what came instead.
fn api_error(e: kube::Error) -> Box<Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The next watch event that is not a bookmark.
async fn next_change<S>(stream: &mut S) -> WatchEvent<Service>
where
    S: Stream<Item = kube::Result<WatchEvent<Service>>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .expect("a watch event in time")
            .expect("the watch stream stays open")
            .expect("no watch error");
        if !matches!(ev, WatchEvent::Bookmark(_)) {
            return ev;
        }
    }
}

fn describe(ev: &WatchEvent<Service>) -> String {
    match ev {
        WatchEvent::Added(s) => format!("ADDED {}", s.name_any()),
        WatchEvent::Modified(s) => format!("MODIFIED {}", s.name_any()),
        WatchEvent::Deleted(s) => format!("DELETED {}", s.name_any()),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(e) => format!("ERROR {} {}", e.code, e.reason),
    }
}

fn names(list: &[Service]) -> BTreeSet<String> {
    list.iter().map(|s| s.name_any()).collect()
}

#[tokio::test]
async fn watching_services_from_a_list_sees_added_modified_and_deleted_in_order() {
    let (_srv, client) = server().await;
    namespace(&client, "w").await;
    let api: Api<Service> = Api::namespaced(client, "w");
    create_services(&api, &["before"]).await;

    let list = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(names(&list.items), BTreeSet::from(["before".to_string()]));
    let rv = list
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();

    api.create(&PostParams::default(), &service("web", json!({})))
        .await
        .expect("create");
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
    )
    .await
    .expect("patch");
    api.delete("web", &DeleteParams::default())
        .await
        .expect("delete");

    let mut seen = Vec::new();
    let mut last_rv = rv.parse::<i64>().expect("numeric resourceVersion");
    for _ in 0..3 {
        let ev = next_change(&mut stream).await;
        let obj_rv = match &ev {
            WatchEvent::Added(s) | WatchEvent::Modified(s) | WatchEvent::Deleted(s) => {
                s.resource_version()
            }
            _ => None,
        };
        let obj_rv: i64 = obj_rv
            .expect("events carry a resourceVersion")
            .parse()
            .expect("numeric");
        assert!(
            obj_rv > last_rv,
            "resourceVersions increase along the stream: {obj_rv} after {last_rv}"
        );
        last_rv = obj_rv;
        seen.push(describe(&ev));
    }
    assert_eq!(seen, ["ADDED web", "MODIFIED web", "DELETED web"]);
}

#[tokio::test]
async fn a_watch_resumed_from_a_resource_version_sees_only_what_came_after() {
    let (_srv, client) = server().await;
    namespace(&client, "w").await;
    let api: Api<Service> = Api::namespaced(client, "w");
    create_services(&api, &["one", "two"]).await;
    let two = api.get("two").await.expect("get");
    let resume_at = two.resource_version().expect("rv");
    create_services(&api, &["three"]).await;
    api.delete("one", &DeleteParams::default())
        .await
        .expect("delete");

    let mut stream = api
        .watch(&WatchParams::default(), &resume_at)
        .await
        .expect("watch")
        .boxed();
    let first = next_change(&mut stream).await;
    let second = next_change(&mut stream).await;
    assert_eq!(
        [describe(&first), describe(&second)],
        ["ADDED three", "DELETED one"]
    );

    // Nothing from before the resume point is replayed: the next event is a new write.
    create_services(&api, &["four"]).await;
    assert_eq!(describe(&next_change(&mut stream).await), "ADDED four");
}

#[tokio::test]
async fn a_watch_from_resource_version_zero_starts_with_the_current_state() {
    let (_srv, client) = server().await;
    namespace(&client, "w").await;
    let api: Api<Service> = Api::namespaced(client, "w");
    create_services(&api, &["a", "b"]).await;
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    let mut added = BTreeSet::new();
    for _ in 0..2 {
        match next_change(&mut stream).await {
            WatchEvent::Added(s) => added.insert(s.name_any()),
            other => panic!("expected ADDED, got {}", describe(&other)),
        };
    }
    assert_eq!(added, BTreeSet::from(["a".to_string(), "b".to_string()]));
}

#[tokio::test]
async fn bookmarks_arrive_on_the_configured_interval_and_carry_the_latest_resource_version() {
    let store = Arc::new(switchyard_store::memory::MemoryStore::new());
    let srv =
        InProcessServer::start_with(store, |c| c.bookmark_interval = Duration::from_millis(100))
            .await
            .expect("server");
    let client = srv.client().await.expect("client");
    namespace(&client, "w").await;
    let api: Api<Service> = Api::namespaced(client, "w");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let created = api
        .create(&PostParams::default(), &service("web", json!({})))
        .await
        .expect("create");
    let created_rv: i64 = created
        .resource_version()
        .expect("rv")
        .parse()
        .expect("numeric");

    let mut saw_added = false;
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("a bookmark in time")
            .expect("stream open")
            .expect("no error");
        match ev {
            WatchEvent::Added(s) => {
                assert_eq!(s.name_any(), "web");
                saw_added = true;
            }
            WatchEvent::Bookmark(b) => {
                let brv: i64 = b
                    .metadata
                    .resource_version
                    .parse()
                    .expect("numeric bookmark rv");
                assert!(
                    brv <= created_rv || saw_added,
                    "a bookmark never runs ahead of delivered events"
                );
                if saw_added && brv >= created_rv {
                    assert_eq!(b.types.kind, "Service");
                    break;
                }
            }
            other => panic!("unexpected {}", describe(&other)),
        }
    }
}

#[tokio::test]
async fn a_label_selector_watch_reports_an_object_that_stops_matching_as_deleted() {
    let (_srv, client) = server().await;
    namespace(&client, "w").await;
    let api: Api<Service> = Api::namespaced(client, "w");
    api.create(
        &PostParams::default(),
        &service("web", json!({"app": "web"})),
    )
    .await
    .expect("create");
    api.create(&PostParams::default(), &service("db", json!({"app": "db"})))
        .await
        .expect("create");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let wp = WatchParams::default().labels("app=web");
    let mut stream = api.watch(&wp, &rv).await.expect("watch").boxed();

    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    api.patch("db", &PatchParams::default(), &relabel("db2"))
        .await
        .expect("unrelated change");
    api.patch("web", &PatchParams::default(), &relabel("other"))
        .await
        .expect("stop matching");
    api.patch("db", &PatchParams::default(), &relabel("web"))
        .await
        .expect("start matching");

    let evs = [
        next_change(&mut stream).await,
        next_change(&mut stream).await,
    ];
    assert_eq!(
        evs.iter().map(describe).collect::<Vec<_>>(),
        ["DELETED web", "ADDED db"]
    );
    if let WatchEvent::Deleted(s) = &evs[0] {
        assert_eq!(
            s.labels().get("app").map(String::as_str),
            Some("other"),
            "DELETED carries the new state"
        );
    }
}

/// Drive a runtime watcher until its next `InitDone`, returning the listed state.
async fn until_init_done<S>(stream: &mut S) -> BTreeMap<String, Service>
where
    S: Stream<Item = Result<watcher::Event<Service>, watcher::Error>> + Unpin,
{
    let mut buffer = BTreeMap::new();
    loop {
        let ev = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .expect("watcher progresses in time")
            .expect("watcher stream never ends");
        match ev.expect("no watcher error during the initial list") {
            watcher::Event::Init => buffer.clear(),
            watcher::Event::InitApply(s) => {
                buffer.insert(s.name_any(), s);
            }
            watcher::Event::InitDone => return buffer,
            other => panic!("unexpected event before InitDone: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_runtime_watcher_lists_the_full_state_then_follows_changes() {
    let (_srv, client) = server().await;
    namespace(&client, "w").await;
    let api: Api<Service> = Api::namespaced(client, "w");
    create_services(&api, &["a", "b", "c"]).await;
    let mut stream = watcher(api.clone(), watcher::Config::default().page_size(2)).boxed();
    let state = until_init_done(&mut stream).await;
    assert_eq!(state.keys().cloned().collect::<Vec<_>>(), ["a", "b", "c"]);

    create_services(&api, &["d"]).await;
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let mut changes = Vec::new();
    while changes.len() < 2 {
        let ev = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .expect("in time")
            .expect("open");
        match ev.expect("no error") {
            watcher::Event::Apply(s) => changes.push(format!("apply {}", s.name_any())),
            watcher::Event::Delete(s) => changes.push(format!("delete {}", s.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(changes, ["apply d", "delete a"]);
}

#[tokio::test]
async fn a_watch_from_a_compacted_resource_version_ends_with_410_expired() {
    let (srv, client) = server().await;
    namespace(&client, "w").await;
    let api: Api<Service> = Api::namespaced(client, "w");
    create_services(&api, &["a", "b"]).await;
    let old_rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    create_services(&api, &["c", "d"]).await;
    let store = &srv.server.store;
    store
        .compact(store.current_revision().await.expect("revision"))
        .await
        .expect("compact");

    let outcome = match api.watch(&WatchParams::default(), &old_rv).await {
        Err(e) => api_error(e),
        Ok(stream) => {
            let mut stream = stream.boxed();
            match tokio::time::timeout(EVENT_TIMEOUT, stream.next())
                .await
                .expect("in time")
                .expect("an event")
            {
                Ok(WatchEvent::Error(s)) => s,
                Err(e) => api_error(e),
                Ok(other) => panic!("expected a 410, got {}", describe(&other)),
            }
        }
    };
    assert_eq!(outcome.code, 410, "{outcome:?}");
    assert_eq!(outcome.reason, "Expired");
    assert!(
        outcome.message.contains("too old resource version"),
        "{}",
        outcome.message
    );
}

#[tokio::test]
async fn the_runtime_watcher_relists_after_a_410_and_ends_with_the_correct_state() {
    let (srv, client) = server().await;
    namespace(&client, "w").await;
    let api: Api<Service> = Api::namespaced(client, "w");
    create_services(&api, &["a", "b"]).await;
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let listed = until_init_done(&mut stream).await;
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), ["a", "b"]);

    // The watcher has listed but not yet started its watch (it does on the next poll). Change
    // things and compact history past its list's resourceVersion: its watch must get a 410.
    create_services(&api, &["c"]).await;
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await
    .expect("patch");
    let store = &srv.server.store;
    store
        .compact(store.current_revision().await.expect("revision"))
        .await
        .expect("compact");

    let first = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("in time")
        .expect("open");
    match first {
        Err(watcher::Error::WatchError(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{s:?}")
        }
        Err(watcher::Error::WatchFailed(kube::Error::Api(s)))
        | Err(watcher::Error::WatchStartFailed(kube::Error::Api(s))) => {
            assert_eq!(s.code, 410, "{s:?}")
        }
        other => panic!("expected the watcher to report a 410, got {other:?}"),
    }
    let relisted = until_init_done(&mut stream).await;
    assert_eq!(relisted.keys().cloned().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(
        relisted["b"].labels().get("v").map(String::as_str),
        Some("2")
    );

    // And it keeps following changes after the relist.
    api.delete("c", &DeleteParams::default())
        .await
        .expect("delete");
    let ev = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("in time")
        .expect("open");
    match ev.expect("no error") {
        watcher::Event::Delete(s) => assert_eq!(s.name_any(), "c"),
        other => panic!("expected delete c, got {other:?}"),
    }
}

#[tokio::test]
async fn paged_lists_cover_every_object_exactly_once_with_a_remaining_count() {
    let (_srv, client) = server().await;
    namespace(&client, "p").await;
    let api: Api<Service> = Api::namespaced(client, "p");
    let all = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"];
    create_services(&api, &all).await;

    let mut seen = Vec::new();
    let mut remaining = Vec::new();
    let mut token: Option<String> = None;
    let mut list_rv = None;
    for _ in 0..10 {
        let mut lp = ListParams::default().limit(3);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.expect("page");
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|s| s.name_any()));
        remaining.push(page.metadata.remaining_item_count);
        // Every page is read at the first page's revision.
        let rv = page.metadata.resource_version.clone().expect("rv");
        assert_eq!(list_rv.get_or_insert(rv.clone()), &rv);
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
        // Writes between pages do not show up in later pages.
        create_services(&api, &[&format!("late{}", seen.len())]).await;
    }
    assert_eq!(seen, all, "every object once, in order");
    assert_eq!(remaining, [Some(4), Some(1), None]);
}

#[tokio::test]
async fn a_continue_token_older_than_the_compacted_revision_is_410_expired() {
    let (srv, client) = server().await;
    namespace(&client, "p").await;
    let api: Api<Service> = Api::namespaced(client, "p");
    create_services(&api, &["s1", "s2", "s3"]).await;
    let page = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("page");
    let token = page.metadata.continue_.expect("a continue token");
    create_services(&api, &["s4"]).await;
    let store = &srv.server.store;
    store
        .compact(store.current_revision().await.expect("revision"))
        .await
        .expect("compact");

    let err = api_error(
        api.list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .expect_err("410"),
    );
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"), "{err:?}");
    assert!(err.message.contains("continue"), "{}", err.message);
}

#[tokio::test]
async fn replacing_with_a_stale_resource_version_is_a_409_conflict() {
    let (_srv, client) = server().await;
    let api: Api<Service> = Api::default_namespaced(client);
    create_services(&api, &["web"]).await;
    let stale = api.get("web").await.expect("get");
    let mut fresh = stale.clone();
    fresh.labels_mut().insert("v".into(), "1".into());
    let replaced = api
        .replace("web", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_ne!(replaced.resource_version(), stale.resource_version());

    let mut late = stale.clone();
    late.labels_mut().insert("v".into(), "2".into());
    let err = api_error(
        api.replace("web", &PostParams::default(), &late)
            .await
            .expect_err("conflict"),
    );
    assert_eq!(
        (err.code, err.reason.as_str()),
        (409, "Conflict"),
        "{err:?}"
    );
    assert!(
        err.message.contains("the object has been modified"),
        "{}",
        err.message
    );
    let now = api.get("web").await.expect("get");
    assert_eq!(now.labels().get("v").map(String::as_str), Some("1"));
    assert_eq!(
        now.resource_version(),
        replaced.resource_version(),
        "the losing write changed nothing"
    );
}

#[tokio::test]
async fn server_side_apply_creates_tracks_managers_and_reports_conflicts() {
    let (_srv, client) = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let doc = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": v}});
    let created = api
        .patch("cfg", &PatchParams::apply("alice"), &Patch::Apply(doc("1")))
        .await
        .expect("apply creates");
    assert_eq!(
        created
            .data
            .as_ref()
            .and_then(|d| d.get("a"))
            .map(String::as_str),
        Some("1")
    );
    let managers: Vec<(String, String)> = created
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(managers, [("alice".to_string(), "Apply".to_string())]);

    // Re-applying the same intent is a no-op that keeps the resourceVersion.
    let again = api
        .patch("cfg", &PatchParams::apply("alice"), &Patch::Apply(doc("1")))
        .await
        .expect("re-apply");
    assert_eq!(again.resource_version(), created.resource_version());

    let err = api_error(
        api.patch("cfg", &PatchParams::apply("bob"), &Patch::Apply(doc("2")))
            .await
            .expect_err("conflict"),
    );
    assert_eq!(
        (err.code, err.reason.as_str()),
        (409, "Conflict"),
        "{err:?}"
    );
    assert!(
        err.message.contains("alice"),
        "the conflict names the other manager: {}",
        err.message
    );

    let forced = api
        .patch(
            "cfg",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(doc("2")),
        )
        .await
        .expect("force");
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("a"))
            .map(String::as_str),
        Some("2")
    );

    // Applying a Service allocates like a create does.
    let svcs: Api<Service> = Api::default_namespaced(client);
    let applied = svcs
        .patch(
            "applied",
            &PatchParams::apply("alice"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "applied"},
                                 "spec": {"ports": [{"port": 80}]}}),
            ),
        )
        .await
        .expect("apply service");
    let ip = applied.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert!(
        ip.starts_with("10."),
        "a cluster IP from the service range: {ip:?}"
    );
}

#[tokio::test]
async fn merge_strategic_and_json_patches_each_apply_their_own_semantics() {
    let (_srv, client) = server().await;
    let api: Api<Service> = Api::default_namespaced(client);
    create_services(&api, &["web"]).await;
    let ports = |s: &Service| -> Vec<(String, i32)> {
        s.spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.port))
            .collect()
    };
    let pp = PatchParams::default();

    // Strategic merge: service ports merge by port number.
    let s = api
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"ports": [{"name": "b", "port": 81}]}})),
        )
        .await
        .expect("strategic");
    assert_eq!(ports(&s), [("b".to_string(), 81), ("a".to_string(), 80)]);

    // JSON merge patch: lists are replaced; null deletes.
    let s = api
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}, "spec": {"ports": [{"name": "c", "port": 82}]}})),
        )
        .await
        .expect("merge");
    assert_eq!(ports(&s), [("c".to_string(), 82)]);
    assert_eq!(s.labels().get("x").map(String::as_str), Some("1"));
    let s = api
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": null}}})),
        )
        .await
        .expect("merge null");
    assert!(!s.labels().contains_key("x"));

    // JSON patch (RFC 6902).
    let ops = json!([
        {"op": "replace", "path": "/spec/ports/0/port", "value": 83},
        {"op": "add", "path": "/metadata/annotations", "value": {"note": "json"}},
    ]);
    let s = api
        .patch(
            "web",
            &pp,
            &Patch::Json::<()>(serde_json::from_value(ops).expect("json patch")),
        )
        .await
        .expect("json patch");
    assert_eq!(ports(&s), [("c".to_string(), 83)]);
    assert_eq!(
        s.annotations().get("note").map(String::as_str),
        Some("json")
    );
}

#[tokio::test]
async fn the_status_subresource_changes_only_status_and_a_replace_never_changes_status() {
    let (_srv, client) = server().await;
    let api: Api<Deployment> = Api::default_namespaced(client);
    let created = api
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create");
    assert_eq!(created.metadata.generation, Some(1));

    let patched = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"labels": {"sneaky": "x"}},
                "spec": {"replicas": 7},
                "status": {"replicas": 1, "observedGeneration": 1},
            })),
        )
        .await
        .expect("patch status");
    let status = patched.status.clone().expect("status");
    assert_eq!(
        (status.replicas, status.observed_generation),
        (Some(1), Some(1))
    );
    assert_eq!(
        patched.spec.as_ref().and_then(|s| s.replicas),
        Some(1),
        "spec unchanged through /status"
    );
    assert!(
        !patched.labels().contains_key("sneaky"),
        "metadata labels unchanged through /status"
    );
    assert_eq!(patched.metadata.generation, Some(1));

    let mut replaced = patched.clone();
    replaced.labels_mut().insert("tier".into(), "front".into());
    replaced.status.as_mut().expect("status").replicas = Some(9);
    let replaced = api
        .replace("web", &PostParams::default(), &replaced)
        .await
        .expect("replace");
    assert_eq!(
        replaced.labels().get("tier").map(String::as_str),
        Some("front")
    );
    assert_eq!(
        replaced.status.and_then(|s| s.replicas),
        Some(1),
        "a replace keeps the stored status"
    );
    let got = api.get_status("web").await.expect("get status");
    assert_eq!(got.status.and_then(|s| s.replicas), Some(1));
}

#[tokio::test]
async fn the_deployment_scale_subresource_reads_and_writes_replicas() {
    let (_srv, client) = server().await;
    let api: Api<Deployment> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create");

    let scale = api.get_scale("web").await.expect("get scale");
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(
        scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .as_deref(),
        Some("app=web")
    );

    let patched = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("patch scale");
    assert_eq!(patched.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(
        api.get("web")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.replicas),
        Some(3)
    );

    let mut desired = api.get_scale("web").await.expect("get scale");
    desired.spec.as_mut().expect("spec").replicas = Some(4);
    let replaced = api
        .replace_scale("web", &PostParams::default(), &desired)
        .await
        .expect("replace scale");
    assert_eq!(replaced.spec.as_ref().and_then(|s| s.replicas), Some(4));
    assert_eq!(
        api.get("web")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.replicas),
        Some(4)
    );

    // The Scale's resourceVersion is a precondition, as for any replace.
    desired.spec.as_mut().expect("spec").replicas = Some(5);
    let err = api_error(
        api.replace_scale("web", &PostParams::default(), &desired)
            .await
            .expect_err("stale"),
    );
    assert_eq!(err.code, 409, "{err:?}");
    assert_eq!(
        api.get("web")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.replicas),
        Some(4)
    );
}

/// A kube-rs client from a kubeconfig that trusts the server's CA and presents `token` (if any)
/// instead of a client certificate.
async fn token_client(srv: &InProcessServer, token: Option<&str>) -> Client {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&srv.server.ca_cert_pem);
    let user = match token {
        Some(t) => json!({"token": t}),
        None => json!({}),
    };
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": srv.server.url(), "certificate-authority-data": ca}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    let kc: kube::config::Kubeconfig = serde_json::from_value(kc).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn a_bearer_token_client_works_and_anonymous_requests_get_401_except_public_endpoints() {
    let (srv, _) = server().await;
    let with_token = token_client(&srv, Some(&srv.server.admin_token)).await;
    let api: Api<Service> = Api::default_namespaced(with_token);
    create_services(&api, &["by-token"]).await;
    assert!(
        names(&api.list(&ListParams::default()).await.expect("list").items).contains("by-token")
    );

    for client in [
        token_client(&srv, None).await,
        token_client(&srv, Some("not-a-token")).await,
    ] {
        let api: Api<Service> = Api::default_namespaced(client.clone());
        let err = api_error(api.list(&ListParams::default()).await.expect_err("401"));
        assert_eq!(
            (err.code, err.reason.as_str()),
            (401, "Unauthorized"),
            "{err:?}"
        );
        let err = api_error(
            api.create(&PostParams::default(), &service("anon", json!({})))
                .await
                .expect_err("401"),
        );
        assert_eq!(err.code, 401);
        for path in ["/healthz", "/livez", "/readyz"] {
            let req = http::Request::get(path).body(Vec::new()).expect("request");
            assert_eq!(client.request_text(req).await.expect(path), "ok");
        }
        let version = client
            .apiserver_version()
            .await
            .expect("/version is public");
        assert_eq!(version.major, "1");
        let req = http::Request::get("/version/")
            .body(Vec::new())
            .expect("request");
        let text = client
            .request_text(req)
            .await
            .expect("/version/ is public too");
        assert!(text.contains("gitVersion"), "{text}");
    }
}

#[tokio::test]
async fn a_dry_run_create_answers_the_object_but_stores_nothing() {
    let (srv, client) = server().await;
    let api: Api<Service> = Api::default_namespaced(client);
    let before = srv.server.store.current_revision().await.expect("revision");
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let answered = api
        .create(&pp, &service("ghost", json!({})))
        .await
        .expect("dry run create");
    assert_eq!(answered.name_any(), "ghost");
    assert!(
        answered
            .spec
            .and_then(|s| s.cluster_ip)
            .is_some_and(|ip| !ip.is_empty()),
        "defaulted and allocated"
    );
    assert!(api.get_opt("ghost").await.expect("get").is_none());
    assert_eq!(
        srv.server.store.current_revision().await.expect("revision"),
        before,
        "no write happened"
    );
    // The name is still free, so is whatever the dry run "allocated".
    api.create(&PostParams::default(), &service("ghost", json!({})))
        .await
        .expect("real create");
}

#[tokio::test]
async fn a_finalizer_holds_a_delete_until_it_is_removed() {
    let (_srv, client) = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let mut cm = config_map("held");
    cm.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create");

    let deleted = api
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = deleted.left().expect("the object comes back, still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let still = api.get("held").await.expect("still there");
    assert!(still.metadata.deletion_timestamp.is_some());
    assert_eq!(still.finalizers(), ["example.com/hold"]);

    // Other changes are still allowed while deleting; removing the last finalizer deletes.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    assert!(
        api.get_opt("held").await.expect("get").is_none(),
        "gone once the finalizer is removed"
    );
}

#[tokio::test]
async fn generate_name_gives_each_object_a_unique_name_with_the_prefix() {
    let (_srv, client) = server().await;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let mut made = BTreeSet::new();
    for _ in 0..5 {
        let mut cm = config_map("");
        cm.metadata.name = None;
        cm.metadata.generate_name = Some("web-".into());
        let c = api
            .create(&PostParams::default(), &cm)
            .await
            .expect("create");
        let name = c.name_any();
        assert!(
            name.starts_with("web-") && name.len() == "web-".len() + 5,
            "{name}"
        );
        assert_eq!(c.metadata.generate_name.as_deref(), Some("web-"));
        made.insert(name);
    }
    assert_eq!(made.len(), 5);
    let listed: BTreeSet<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(made.is_subset(&listed));
}

#[tokio::test]
async fn a_load_balancer_with_local_traffic_policy_is_given_a_health_check_node_port() {
    let (_srv, client) = server().await;
    let api: Api<Service> = Api::default_namespaced(client);
    let hc = |s: &Service| s.spec.as_ref().and_then(|s| s.health_check_node_port);
    let node_port = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref()?.first()?.node_port)
    };

    let mut lb = service("lb", json!({}));
    let spec = lb.spec.as_mut().expect("spec");
    spec.type_ = Some("LoadBalancer".into());
    spec.external_traffic_policy = Some("Local".into());
    let created = api
        .create(&PostParams::default(), &lb)
        .await
        .expect("create LoadBalancer with Local policy");
    let port = hc(&created).expect("a healthCheckNodePort is allocated");
    assert!((30000..=32767).contains(&port), "{port}");
    assert_ne!(Some(port), node_port(&created));

    // Becoming a Local LoadBalancer through an update allocates one too; leaving Local drops it.
    create_services(&api, &["plain"]).await;
    let patch = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}});
    let updated = api
        .patch("plain", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("to Local LB");
    assert!(
        hc(&updated).is_some_and(|p| p != port),
        "{:?}",
        hc(&updated)
    );
    let patch = json!({"spec": {"externalTrafficPolicy": "Cluster"}});
    let back = api
        .patch("plain", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("to Cluster");
    assert_eq!(hc(&back), None);
}

#[tokio::test]
async fn binding_assigns_a_pending_pod_once() {
    use k8s_openapi::api::core::v1::Pod;
    let (_srv, client) = server().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "echo"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let binding = |node: &str| {
        json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": "p"},
            "target": {"kind": "Node", "name": node},
        })
    };
    pods.create_subresource::<_, Status>(
        "binding",
        "p",
        &PostParams::default(),
        &binding("node-1"),
    )
    .await
    .expect("bind");
    let bound = pods.get("p").await.expect("get");
    assert_eq!(
        bound.spec.and_then(|s| s.node_name).as_deref(),
        Some("node-1")
    );
    let scheduled = bound
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| c.status);
    assert_eq!(scheduled.as_deref(), Some("True"));

    // A second binding conflicts; a binding without a target is invalid.
    let err = pods
        .create_subresource::<_, Status>("binding", "p", &PostParams::default(), &binding("node-2"))
        .await
        .expect_err("rebinding");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    let err = pods
        .create_subresource::<_, Status>("binding", "p", &PostParams::default(), &binding(""))
        .await
        .expect_err("empty target");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("target.name")),
        "{err:?}"
    );
    // spec.nodeName stays immutable through ordinary updates.
    let err = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "node-3"}})),
        )
        .await
        .expect_err("nodeName update");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
}

#[tokio::test]
async fn delete_propagation_policies_set_the_collector_finalizers_and_bad_ones_are_refused() {
    let (_srv, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["orphaned", "foreground", "bad"] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("configmap");
        api.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    // Orphan and Foreground keep the object, marked for deletion with the finalizer the
    // garbage collector acts on; it goes once the finalizer is removed.
    for (name, params, finalizer) in [
        ("orphaned", DeleteParams::orphan(), "orphan"),
        (
            "foreground",
            DeleteParams::foreground(),
            "foregroundDeletion",
        ),
    ] {
        api.delete(name, &params).await.expect("delete");
        let kept = api.get(name).await.expect("still there");
        assert!(kept.metadata.deletion_timestamp.is_some(), "{name}");
        assert_eq!(
            kept.metadata.finalizers,
            Some(vec![finalizer.to_string()]),
            "{name}"
        );
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove the finalizer");
        assert!(api.get_opt(name).await.expect("get").is_none(), "{name}");
    }
    // An unknown policy, or both forms at once, is a 422 and deletes nothing.
    for body in [
        json!({"propagationPolicy": "Sideways"}),
        json!({"propagationPolicy": "Orphan", "orphanDependents": true}),
    ] {
        let req = http::Request::delete("/api/v1/namespaces/default/configmaps/bad")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("body"))
            .expect("request");
        let err = client
            .request_text(req)
            .await
            .expect_err("bad propagation accepted");
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("propagationPolicy")),
            "{err:?}"
        );
    }
    assert!(api.get_opt("bad").await.expect("get").is_some());
}
