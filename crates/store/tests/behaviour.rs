//! The behaviour every store backend must show, written once and stamped out per backend by
//! `store_behaviour_suite!`. A new backend adds one line at the bottom of the macro calls.
//!
//! Tests never sleep to pass: timeouts only guard against hangs.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use switchyard_store::memory::MemoryStore;
use switchyard_store::sqlite::SqliteStore;
use switchyard_store::{
    Compare, Event, KeyValue, ListOptions, Revision, Store, StoreError, StoreOptions, Txn,
    TxnOutcome, WatchStream,
};

/// A store under test, with whatever must live as long as it.
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Deref for Fixture {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

type Open = fn(StoreOptions) -> BoxFuture<'static, Fixture>;

fn open_memory(options: StoreOptions) -> BoxFuture<'static, Fixture> {
    Box::pin(async move {
        Fixture {
            store: Arc::new(MemoryStore::with_options(options)),
            _dir: None,
        }
    })
}

fn open_sqlite(options: StoreOptions) -> BoxFuture<'static, Fixture> {
    Box::pin(async move {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open_with(&dir.path().join("store.db"), options)
            .expect("open a fresh SQLite store");
        Fixture {
            store: Arc::new(store),
            _dir: Some(dir),
        }
    })
}

macro_rules! store_behaviour_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            store_behaviour_suite!(@cases $open;
                empty_store_starts_at_revision_one,
                revision_increments_by_one_per_write_txn,
                get_returns_value_with_create_and_mod_revisions,
                values_are_opaque_bytes,
                txn_with_failed_compare_writes_nothing,
                create_if_absent_fails_when_key_exists,
                update_if_unchanged_fails_on_stale_mod_revision,
                update_if_unchanged_fails_on_absent_key,
                multi_op_txn_shares_one_revision,
                txn_writing_one_key_twice_keeps_the_last_value,
                txn_without_ops_does_not_bump_revision,
                deleting_absent_key_is_a_noop,
                delete_then_recreate_resets_create_revision,
                concurrent_create_if_absent_has_exactly_one_winner,
                list_returns_live_keys_under_prefix_in_byte_order,
                list_paginates_with_limit_and_start_after,
                list_at_past_revision_sees_old_snapshot,
                list_at_future_revision_fails,
                count_counts_live_keys_under_prefix,
                watch_from_past_revision_replays_then_streams_live,
                watch_from_current_revision_streams_only_new_events,
                watch_from_future_revision_waits_for_it,
                watch_delivers_every_event_exactly_once_in_order_under_concurrent_writes,
                watch_filters_by_prefix,
                watch_orders_events_of_one_txn_by_op_order,
                watch_replays_history_older_than_the_event_ring,
                put_event_carries_prev_value,
                delete_event_carries_prev_value,
                watch_at_compacted_revision_fails,
                list_at_compacted_revision_fails,
                compaction_keeps_the_snapshot_at_the_compacted_revision,
                slow_watcher_is_disconnected_without_blocking_writers,
                watch_ends_with_closed_when_the_store_is_dropped,
            );
        }
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::cases::$case($open).await;
            }
        )*
    };
}

store_behaviour_suite!(memory, crate::open_memory);
store_behaviour_suite!(sqlite, crate::open_sqlite);

/// How long any single await may take before the test is declared hung.
const GUARD: Duration = Duration::from_secs(20);

fn val(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn put(store: &dyn Store, key: &str, value: &str) -> Revision {
    match store.txn(Txn::new().put(key, val(value))).await {
        Ok(TxnOutcome::Applied(revision)) => revision,
        other => panic!("put {key}: {other:?}"),
    }
}

async fn delete(store: &dyn Store, key: &str) -> Revision {
    match store.txn(Txn::new().delete(key)).await {
        Ok(TxnOutcome::Applied(revision)) => revision,
        other => panic!("delete {key}: {other:?}"),
    }
}

async fn next(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(GUARD, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(other) => panic!("expected an event, got {other:?}"),
        Err(_) => panic!("no event within {GUARD:?}"),
    }
}

async fn watch(store: &dyn Store, prefix: &str, after: Revision) -> WatchStream {
    store.watch(prefix, after).await.expect("watch")
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

fn at(revision: Revision) -> ListOptions {
    ListOptions {
        revision: Some(revision),
        ..ListOptions::default()
    }
}

fn kv(key: &str, value: &str, create_revision: Revision, mod_revision: Revision) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: val(value),
        create_revision,
        mod_revision,
    }
}

mod cases {
    use super::*;

    pub async fn empty_store_starts_at_revision_one(open: Open) {
        let store = open(StoreOptions::default()).await;
        assert_eq!(store.current_revision().await.expect("revision"), 1);
        assert_eq!(store.compacted_revision().await.expect("compacted"), 0);
        assert_eq!(store.get("/a").await.expect("get"), None);
        assert_eq!(store.count("").await.expect("count"), 0);
        let list = store.list("", ListOptions::default()).await.expect("list");
        assert!(list.kvs.is_empty());
        assert_eq!((list.revision, list.remaining), (1, 0));
    }

    pub async fn revision_increments_by_one_per_write_txn(open: Open) {
        let store = open(StoreOptions::default()).await;
        for i in 0..5 {
            assert_eq!(put(&*store, &format!("/k{i}"), "v").await, 2 + i);
        }
        assert_eq!(delete(&*store, "/k0").await, 7);
        assert_eq!(store.current_revision().await.expect("revision"), 7);
    }

    pub async fn get_returns_value_with_create_and_mod_revisions(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/a", "1").await;
        put(&*store, "/b", "1").await;
        put(&*store, "/a", "2").await;
        assert_eq!(
            store.get("/a").await.expect("get"),
            Some(kv("/a", "2", 2, 4))
        );
        assert_eq!(
            store.get("/b").await.expect("get"),
            Some(kv("/b", "1", 3, 3))
        );
        assert_eq!(store.get("/c").await.expect("get"), None);
    }

    pub async fn values_are_opaque_bytes(open: Open) {
        let store = open(StoreOptions::default()).await;
        let binary = Bytes::from_static(&[0, 159, 146, 150, 255, 0]);
        store
            .txn(
                Txn::new()
                    .put("/bin", binary.clone())
                    .put("/empty", Bytes::new()),
            )
            .await
            .expect("txn");
        let got = store.get("/bin").await.expect("get").expect("present");
        assert_eq!(got.value, binary);
        let empty = store.get("/empty").await.expect("get").expect("present");
        assert!(empty.value.is_empty());
        let mut w = watch(&*store, "/", 1).await;
        assert_eq!(next(&mut w).await.key(), "/bin");
        match next(&mut w).await {
            Event::Put { kv, .. } => assert!(kv.value.is_empty()),
            other => panic!("expected a put, got {other:?}"),
        }
    }

    pub async fn txn_with_failed_compare_writes_nothing(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/x", "1").await;
        let outcome = store
            .txn(
                Txn::new()
                    .when(Compare::Absent("/y".into()))
                    .when(Compare::ModRevision("/x".into(), 99))
                    .put("/y", val("1"))
                    .delete("/x"),
            )
            .await
            .expect("txn");
        assert_eq!(
            outcome,
            TxnOutcome::Failed {
                index: 1,
                revision: 2
            }
        );
        assert_eq!(store.get("/y").await.expect("get"), None);
        assert_eq!(
            store.get("/x").await.expect("get"),
            Some(kv("/x", "1", 2, 2))
        );
        assert_eq!(store.current_revision().await.expect("revision"), 2);
    }

    pub async fn create_if_absent_fails_when_key_exists(open: Open) {
        let store = open(StoreOptions::default()).await;
        let create = |v: &str| {
            Txn::new()
                .when(Compare::Absent("/k".into()))
                .put("/k", val(v))
        };
        assert_eq!(
            store.txn(create("first")).await.expect("txn"),
            TxnOutcome::Applied(2)
        );
        assert_eq!(
            store.txn(create("second")).await.expect("txn"),
            TxnOutcome::Failed {
                index: 0,
                revision: 2
            }
        );
        assert_eq!(
            store.get("/k").await.expect("get"),
            Some(kv("/k", "first", 2, 2))
        );
    }

    pub async fn update_if_unchanged_fails_on_stale_mod_revision(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/k", "1").await;
        let update = |v: &str| {
            Txn::new()
                .when(Compare::ModRevision("/k".into(), 2))
                .put("/k", val(v))
        };
        assert_eq!(
            store.txn(update("2")).await.expect("txn"),
            TxnOutcome::Applied(3)
        );
        assert_eq!(
            store.txn(update("3")).await.expect("txn"),
            TxnOutcome::Failed {
                index: 0,
                revision: 3
            }
        );
        assert_eq!(
            store.get("/k").await.expect("get"),
            Some(kv("/k", "2", 2, 3))
        );
    }

    pub async fn update_if_unchanged_fails_on_absent_key(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/k", "1").await;
        delete(&*store, "/k").await;
        let outcome = store
            .txn(
                Txn::new()
                    .when(Compare::ModRevision("/k".into(), 2))
                    .put("/k", val("2")),
            )
            .await
            .expect("txn");
        assert!(matches!(outcome, TxnOutcome::Failed { index: 0, .. }));
        assert_eq!(store.get("/k").await.expect("get"), None);
    }

    pub async fn multi_op_txn_shares_one_revision(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/c", "old").await;
        let outcome = store
            .txn(
                Txn::new()
                    .put("/a", val("1"))
                    .put("/b", val("1"))
                    .delete("/c"),
            )
            .await
            .expect("txn");
        assert_eq!(outcome, TxnOutcome::Applied(3));
        assert_eq!(
            store.get("/a").await.expect("get"),
            Some(kv("/a", "1", 3, 3))
        );
        assert_eq!(
            store.get("/b").await.expect("get"),
            Some(kv("/b", "1", 3, 3))
        );
        assert_eq!(store.get("/c").await.expect("get"), None);
        assert_eq!(store.current_revision().await.expect("revision"), 3);
    }

    pub async fn txn_writing_one_key_twice_keeps_the_last_value(open: Open) {
        let store = open(StoreOptions::default()).await;
        let outcome = store
            .txn(Txn::new().put("/k", val("1")).put("/k", val("2")))
            .await
            .expect("txn");
        assert_eq!(outcome, TxnOutcome::Applied(2));
        assert_eq!(
            store.get("/k").await.expect("get"),
            Some(kv("/k", "2", 2, 2))
        );
        put(&*store, "/k", "3").await;
        let past = store.list("/", at(2)).await.expect("list at 2");
        assert_eq!(past.kvs, vec![kv("/k", "2", 2, 2)]);
        let mut w = watch(&*store, "/", 1).await;
        assert_eq!(
            next(&mut w).await,
            Event::Put {
                kv: kv("/k", "1", 2, 2),
                prev: None
            }
        );
        assert_eq!(
            next(&mut w).await,
            Event::Put {
                kv: kv("/k", "2", 2, 2),
                prev: Some(kv("/k", "1", 2, 2))
            }
        );
        assert_eq!(next(&mut w).await.revision(), 3);
    }

    pub async fn txn_without_ops_does_not_bump_revision(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/k", "1").await;
        assert_eq!(
            store.txn(Txn::new()).await.expect("txn"),
            TxnOutcome::Applied(2)
        );
        assert_eq!(
            store
                .txn(Txn::new().when(Compare::ModRevision("/k".into(), 2)))
                .await
                .expect("txn"),
            TxnOutcome::Applied(2)
        );
        assert_eq!(store.current_revision().await.expect("revision"), 2);
    }

    pub async fn deleting_absent_key_is_a_noop(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/a", "1").await;
        let mut w = watch(&*store, "/", 2).await;
        assert_eq!(delete(&*store, "/missing").await, 2);
        assert_eq!(store.current_revision().await.expect("revision"), 2);
        // The next event the watcher sees is the next real write.
        assert_eq!(put(&*store, "/b", "1").await, 3);
        let event = next(&mut w).await;
        assert_eq!((event.key(), event.revision()), ("/b", 3));
    }

    pub async fn delete_then_recreate_resets_create_revision(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/k", "1").await;
        put(&*store, "/k", "2").await;
        delete(&*store, "/k").await;
        put(&*store, "/k", "3").await;
        assert_eq!(
            store.get("/k").await.expect("get"),
            Some(kv("/k", "3", 5, 5))
        );
    }

    pub async fn concurrent_create_if_absent_has_exactly_one_winner(open: Open) {
        let store = open(StoreOptions::default()).await;
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.store.clone();
                tokio::spawn(async move {
                    store
                        .txn(
                            Txn::new()
                                .when(Compare::Absent("/k".into()))
                                .put("/k", val(&i.to_string())),
                        )
                        .await
                        .expect("txn")
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            if let TxnOutcome::Applied(revision) = task.await.expect("task") {
                assert_eq!(revision, 2);
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
        assert_eq!(store.current_revision().await.expect("revision"), 2);
    }

    pub async fn list_returns_live_keys_under_prefix_in_byte_order(open: Open) {
        let store = open(StoreOptions::default()).await;
        for key in [
            "/a/b", "/a/é", "/a/a", "/a/Z", "/ab", "/a", "/a/gone", "/b/x",
        ] {
            put(&*store, key, "v").await;
        }
        delete(&*store, "/a/gone").await;
        let list = store
            .list("/a/", ListOptions::default())
            .await
            .expect("list");
        assert_eq!(keys(&list.kvs), vec!["/a/Z", "/a/a", "/a/b", "/a/é"]);
        assert_eq!((list.revision, list.remaining), (10, 0));
        let all = store.list("", ListOptions::default()).await.expect("list");
        assert_eq!(
            keys(&all.kvs),
            vec!["/a", "/a/Z", "/a/a", "/a/b", "/a/é", "/ab", "/b/x"]
        );
    }

    pub async fn list_paginates_with_limit_and_start_after(open: Open) {
        let store = open(StoreOptions::default()).await;
        for i in 0..5 {
            put(&*store, &format!("/p/k{i}"), "v").await;
        }
        let page = |revision: Option<Revision>, start_after: Option<&str>| ListOptions {
            revision,
            limit: Some(2),
            start_after: start_after.map(str::to_owned),
        };
        let first = store.list("/p/", page(None, None)).await.expect("page 1");
        assert_eq!(keys(&first.kvs), vec!["/p/k0", "/p/k1"]);
        assert_eq!((first.revision, first.remaining), (6, 3));
        // A write between pages is invisible to a list pinned at the first page's revision.
        put(&*store, "/p/k10", "v").await;
        let second = store
            .list("/p/", page(Some(first.revision), Some("/p/k1")))
            .await
            .expect("page 2");
        assert_eq!(keys(&second.kvs), vec!["/p/k2", "/p/k3"]);
        assert_eq!((second.revision, second.remaining), (6, 1));
        let third = store
            .list("/p/", page(Some(first.revision), Some("/p/k3")))
            .await
            .expect("page 3");
        assert_eq!(keys(&third.kvs), vec!["/p/k4"]);
        assert_eq!(third.remaining, 0);
        // Unpinned, the next page sees the new key.
        let fresh = store
            .list("/p/", page(None, Some("/p/k1")))
            .await
            .expect("fresh page");
        assert_eq!(keys(&fresh.kvs), vec!["/p/k10", "/p/k2"]);
        assert_eq!((fresh.revision, fresh.remaining), (7, 2));
        // A limit of 0 means no limit.
        let unlimited = ListOptions {
            limit: Some(0),
            ..ListOptions::default()
        };
        let all = store.list("/p/", unlimited).await.expect("all");
        assert_eq!((all.kvs.len(), all.remaining), (6, 0));
    }

    pub async fn list_at_past_revision_sees_old_snapshot(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/a", "1").await; // 2
        put(&*store, "/b", "1").await; // 3
        put(&*store, "/a", "2").await; // 4
        delete(&*store, "/b").await; // 5
        put(&*store, "/c", "1").await; // 6
        let fixture = &store;
        let snapshot = |revision| async move {
            let list = fixture.list("/", at(revision)).await.expect("list");
            assert_eq!(list.revision, revision);
            list.kvs
        };
        assert_eq!(snapshot(1).await, vec![]);
        assert_eq!(
            snapshot(3).await,
            vec![kv("/a", "1", 2, 2), kv("/b", "1", 3, 3)]
        );
        assert_eq!(
            snapshot(4).await,
            vec![kv("/a", "2", 2, 4), kv("/b", "1", 3, 3)]
        );
        assert_eq!(snapshot(5).await, vec![kv("/a", "2", 2, 4)]);
        assert_eq!(
            snapshot(6).await,
            vec![kv("/a", "2", 2, 4), kv("/c", "1", 6, 6)]
        );
        let paged = store
            .list(
                "/",
                ListOptions {
                    revision: Some(4),
                    limit: Some(1),
                    start_after: None,
                },
            )
            .await
            .expect("paged past list");
        assert_eq!((keys(&paged.kvs), paged.remaining), (vec!["/a"], 1));
    }

    pub async fn list_at_future_revision_fails(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/a", "1").await;
        match store.list("/", at(3)).await {
            Err(StoreError::FutureRevision {
                requested: 3,
                current: 2,
            }) => {}
            other => panic!("expected FutureRevision, got {other:?}"),
        }
    }

    pub async fn count_counts_live_keys_under_prefix(open: Open) {
        let store = open(StoreOptions::default()).await;
        for key in ["/a/1", "/a/2", "/a/3", "/b/1", "/a"] {
            put(&*store, key, "v").await;
        }
        delete(&*store, "/a/2").await;
        assert_eq!(store.count("/a/").await.expect("count"), 2);
        assert_eq!(store.count("/a").await.expect("count"), 3);
        assert_eq!(store.count("").await.expect("count"), 4);
        assert_eq!(store.count("/c/").await.expect("count"), 0);
    }

    pub async fn watch_from_past_revision_replays_then_streams_live(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/a", "1").await; // 2
        put(&*store, "/b", "1").await; // 3
        put(&*store, "/c", "1").await; // 4
        let mut w = watch(&*store, "/", 2).await;
        assert_eq!(next(&mut w).await.revision(), 3);
        assert_eq!(next(&mut w).await.revision(), 4);
        put(&*store, "/d", "1").await; // 5
        let live = next(&mut w).await;
        assert_eq!((live.key(), live.revision()), ("/d", 5));
    }

    pub async fn watch_from_current_revision_streams_only_new_events(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/a", "1").await;
        let current = store.current_revision().await.expect("revision");
        let mut w = watch(&*store, "/", current).await;
        put(&*store, "/b", "1").await;
        let event = next(&mut w).await;
        assert_eq!((event.key(), event.revision()), ("/b", current + 1));
    }

    pub async fn watch_from_future_revision_waits_for_it(open: Open) {
        let store = open(StoreOptions::default()).await;
        let mut w = watch(&*store, "/", 3).await;
        for key in ["/a", "/b", "/c"] {
            put(&*store, key, "v").await; // 2, 3, 4
        }
        let event = next(&mut w).await;
        assert_eq!((event.key(), event.revision()), ("/c", 4));
    }

    pub async fn watch_delivers_every_event_exactly_once_in_order_under_concurrent_writes(
        open: Open,
    ) {
        // With the default ring the backlog comes from memory; with a one-event ring it comes
        // from the backend's log while live events pile up.
        for ring in [StoreOptions::default().event_ring_capacity, 1] {
            let options = StoreOptions {
                event_ring_capacity: ring,
                ..StoreOptions::default()
            };
            every_event_exactly_once_under_concurrent_writes(open(options).await).await;
        }
    }

    async fn every_event_exactly_once_under_concurrent_writes(store: Fixture) {
        const WRITERS: usize = 6;
        const WRITES: usize = 40;
        let start = store.current_revision().await.expect("revision");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let mut started_tx = Some(started_tx);
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let store = store.store.clone();
            let signal = if w == 0 { started_tx.take() } else { None };
            writers.push(tokio::spawn(async move {
                let mut signal = signal;
                let mut mine = Vec::new();
                for i in 0..WRITES {
                    // Interleave writes outside the watched prefix.
                    let key = if i % 4 == 3 {
                        format!("/other/w{w}/{i}")
                    } else {
                        format!("/watched/w{w}/{i}")
                    };
                    let revision = put(&*store, &key, "v").await;
                    if key.starts_with("/watched/") {
                        mine.push(revision);
                    }
                    if i == 5 {
                        if let Some(signal) = signal.take() {
                            let _ = signal.send(());
                        }
                    }
                }
                mine
            }));
        }
        // Register mid-burst, from the revision before the burst: part replay, part live.
        started_rx.await.expect("first writer started");
        let mut w = watch(&*store, "/watched/", start).await;
        let mut expected = BTreeSet::new();
        for writer in writers {
            expected.extend(writer.await.expect("writer"));
        }
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let event = next(&mut w).await;
            assert!(event.key().starts_with("/watched/"), "{event:?}");
            seen.push(event.revision());
        }
        assert!(
            seen.windows(2).all(|p| p[0] < p[1]),
            "revisions not strictly increasing: {seen:?}"
        );
        assert_eq!(seen, expected.into_iter().collect::<Vec<_>>());
        // Nothing more is pending.
        put(&*store, "/watched/last", "v").await;
        assert_eq!(next(&mut w).await.key(), "/watched/last");
    }

    pub async fn watch_filters_by_prefix(open: Open) {
        let store = open(StoreOptions::default()).await;
        let mut w = watch(&*store, "/a/", 1).await;
        put(&*store, "/b/x", "v").await;
        put(&*store, "/ab", "v").await;
        put(&*store, "/a", "v").await;
        put(&*store, "/a/x", "v").await;
        delete(&*store, "/b/x").await;
        delete(&*store, "/a/x").await;
        let first = next(&mut w).await;
        assert_eq!((first.key(), first.revision()), ("/a/x", 5));
        let second = next(&mut w).await;
        assert_eq!((second.key(), second.revision()), ("/a/x", 7));
        assert!(second.is_delete());
    }

    pub async fn watch_orders_events_of_one_txn_by_op_order(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/m", "old").await; // 2
        let mut live = watch(&*store, "/", 2).await;
        store
            .txn(
                Txn::new()
                    .put("/z", val("1"))
                    .delete("/m")
                    .put("/a", val("1")),
            )
            .await
            .expect("txn"); // 3
        let mut replayed = watch(&*store, "/", 2).await;
        for w in [&mut live, &mut replayed] {
            let events = [next(w).await, next(w).await, next(w).await];
            let got: Vec<_> = events
                .iter()
                .map(|e| (e.key(), e.revision(), e.is_delete()))
                .collect();
            assert_eq!(
                got,
                vec![("/z", 3, false), ("/m", 3, true), ("/a", 3, false)]
            );
        }
    }

    pub async fn watch_replays_history_older_than_the_event_ring(open: Open) {
        let options = StoreOptions {
            event_ring_capacity: 4,
            ..StoreOptions::default()
        };
        let store = open(options).await;
        let mut live = watch(&*store, "/", 1).await;
        for i in 0..20 {
            let key = format!("/k{}", i % 7);
            if i % 5 == 4 {
                store
                    .txn(Txn::new().delete(&key).put(format!("/m{i}"), val("m")))
                    .await
                    .expect("txn");
            } else {
                put(&*store, &key, &i.to_string()).await;
            }
        }
        let current = store.current_revision().await.expect("revision");
        let mut expected = Vec::new();
        while expected.last().map(Event::revision) != Some(current) {
            expected.push(next(&mut live).await);
        }
        for after in [1, 3, current - 2] {
            let mut replay = watch(&*store, "/", after).await;
            let want: Vec<_> = expected
                .iter()
                .filter(|e| e.revision() > after)
                .cloned()
                .collect();
            let mut got = Vec::new();
            while got.len() < want.len() {
                got.push(next(&mut replay).await);
            }
            assert_eq!(got, want, "replay after {after}");
        }
        let mut narrow = watch(&*store, "/m", 1).await;
        let first = next(&mut narrow).await;
        assert_eq!(first.key(), "/m4");
    }

    pub async fn put_event_carries_prev_value(open: Open) {
        let store = open(StoreOptions::default()).await;
        let mut w = watch(&*store, "/", 1).await;
        put(&*store, "/k", "1").await;
        put(&*store, "/k", "2").await;
        assert_eq!(
            next(&mut w).await,
            Event::Put {
                kv: kv("/k", "1", 2, 2),
                prev: None
            }
        );
        assert_eq!(
            next(&mut w).await,
            Event::Put {
                kv: kv("/k", "2", 2, 3),
                prev: Some(kv("/k", "1", 2, 2))
            }
        );
    }

    pub async fn delete_event_carries_prev_value(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/k", "1").await; // 2
        put(&*store, "/k", "2").await; // 3
        let mut w = watch(&*store, "/", 3).await;
        delete(&*store, "/k").await; // 4
        let expected = Event::Delete {
            prev: kv("/k", "2", 2, 3),
            revision: 4,
        };
        assert_eq!(next(&mut w).await, expected);
        assert_eq!(expected.prev(), Some(&kv("/k", "2", 2, 3)));
        // The same from history.
        let mut replay = watch(&*store, "/", 3).await;
        assert_eq!(next(&mut replay).await, expected);
    }

    pub async fn watch_at_compacted_revision_fails(open: Open) {
        let store = open(StoreOptions::default()).await;
        for i in 0..4 {
            put(&*store, "/k", &i.to_string()).await; // 2..=5
        }
        store.compact(4).await.expect("compact");
        match store.watch("/", 3).await {
            Err(StoreError::Compacted {
                requested: 3,
                compacted: 4,
            }) => {}
            Err(other) => panic!("expected Compacted, got {other:?}"),
            Ok(_) => panic!("expected Compacted, got a stream"),
        }
        let mut w = watch(&*store, "/", 4).await;
        assert_eq!(
            next(&mut w).await,
            Event::Put {
                kv: kv("/k", "3", 2, 5),
                prev: Some(kv("/k", "2", 2, 4))
            }
        );
    }

    pub async fn list_at_compacted_revision_fails(open: Open) {
        let store = open(StoreOptions::default()).await;
        for i in 0..4 {
            put(&*store, &format!("/k{i}"), "v").await; // 2..=5
        }
        store.compact(4).await.expect("compact");
        assert_eq!(store.compacted_revision().await.expect("compacted"), 4);
        match store.list("/", at(3)).await {
            Err(StoreError::Compacted {
                requested: 3,
                compacted: 4,
            }) => {}
            other => panic!("expected Compacted, got {other:?}"),
        }
        let at_compacted = store.list("/", at(4)).await.expect("list at 4");
        assert_eq!(keys(&at_compacted.kvs), vec!["/k0", "/k1", "/k2"]);
        // Compacting again below or at the compacted revision is a no-op; beyond current fails.
        store.compact(3).await.expect("compact below");
        assert_eq!(store.compacted_revision().await.expect("compacted"), 4);
        assert!(matches!(
            store.compact(99).await,
            Err(StoreError::FutureRevision { .. })
        ));
    }

    pub async fn compaction_keeps_the_snapshot_at_the_compacted_revision(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/a", "1").await; // 2
        put(&*store, "/a", "2").await; // 3
        put(&*store, "/b", "1").await; // 4
        delete(&*store, "/b").await; // 5
        put(&*store, "/c", "1").await; // 6
        put(&*store, "/a", "3").await; // 7
        delete(&*store, "/c").await; // 8
        put(&*store, "/b", "2").await; // 9
        let before: Vec<_> = {
            let mut lists = Vec::new();
            for revision in 6..=9 {
                lists.push(store.list("/", at(revision)).await.expect("list").kvs);
            }
            lists
        };
        store.compact(6).await.expect("compact");
        for (revision, want) in (6..=9).zip(before) {
            let got = store.list("/", at(revision)).await.expect("list").kvs;
            assert_eq!(got, want, "snapshot at {revision}");
        }
        let mut w = watch(&*store, "/", 6).await;
        assert_eq!(
            next(&mut w).await,
            Event::Put {
                kv: kv("/a", "3", 2, 7),
                prev: Some(kv("/a", "2", 2, 3))
            }
        );
        assert_eq!(
            next(&mut w).await,
            Event::Delete {
                prev: kv("/c", "1", 6, 6),
                revision: 8
            }
        );
        assert_eq!(
            next(&mut w).await,
            Event::Put {
                kv: kv("/b", "2", 9, 9),
                prev: None
            }
        );
    }

    pub async fn slow_watcher_is_disconnected_without_blocking_writers(open: Open) {
        const CAPACITY: usize = 8;
        const WRITES: usize = 64;
        let options = StoreOptions {
            watch_channel_capacity: CAPACITY,
            ..StoreOptions::default()
        };
        let store = open(options).await;
        let mut slow = watch(&*store, "/", 1).await;
        // The watcher never polls while the writers go on, far past its capacity.
        let writes = async {
            let tasks: Vec<_> = (0..4)
                .map(|t| {
                    let store = store.store.clone();
                    tokio::spawn(async move {
                        for i in 0..WRITES / 4 {
                            put(&*store, &format!("/t{t}/{i}"), "v").await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("writer");
            }
        };
        tokio::time::timeout(GUARD, writes)
            .await
            .expect("writers were blocked by a slow watcher");
        let mut delivered = Vec::new();
        let err = loop {
            match tokio::time::timeout(GUARD, slow.next()).await {
                Ok(Some(Ok(event))) => delivered.push(event.revision()),
                Ok(Some(Err(err))) => break err,
                Ok(None) => panic!("stream ended without an error"),
                Err(_) => panic!("slow watcher was never disconnected"),
            }
        };
        assert!(
            matches!(err, StoreError::WatcherTooSlow(CAPACITY)),
            "got {err:?}"
        );
        assert!(delivered.len() <= CAPACITY, "{delivered:?}");
        assert!(
            tokio::time::timeout(GUARD, slow.next())
                .await
                .expect("stream ends")
                .is_none(),
            "the stream must end after the error"
        );
        // Watching again from the last revision received resumes without loss.
        let resume = delivered.last().copied().unwrap_or(1);
        let mut again = watch(&*store, "/", resume).await;
        let mut revision = resume;
        for _ in 0..(WRITES as Revision + 1 - resume) {
            let event = next(&mut again).await;
            assert_eq!(event.revision(), revision + 1);
            revision = event.revision();
        }
        assert_eq!(revision, WRITES as Revision + 1);
    }

    pub async fn watch_ends_with_closed_when_the_store_is_dropped(open: Open) {
        let store = open(StoreOptions::default()).await;
        put(&*store, "/a", "1").await;
        let mut w = watch(&*store, "/", 1).await;
        drop(store);
        assert_eq!(next(&mut w).await.key(), "/a");
        match tokio::time::timeout(GUARD, w.next()).await {
            Ok(Some(Err(StoreError::Closed))) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
    }
}
