//! What only the SQLite backend promises: the data outlives the process, including a `kill -9`
//! in the middle of a burst of writes, and one process owns a database file.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use switchyard_store::sqlite::SqliteStore;
use switchyard_store::{Compare, Event, ListOptions, Store, StoreError, Txn, TxnOutcome};

const GUARD: Duration = Duration::from_secs(30);

async fn put(store: &dyn Store, key: &str, value: &str) -> i64 {
    match store
        .txn(Txn::new().put(key, Bytes::copy_from_slice(value.as_bytes())))
        .await
    {
        Ok(TxnOutcome::Applied(revision)) => revision,
        other => panic!("put {key}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path).expect("open");
        put(&store, "/a", "1").await; // 2
        put(&store, "/b", "1").await; // 3
        put(&store, "/a", "2").await; // 4
        store
            .txn(Txn::new().delete("/b").put("/c", Bytes::from_static(b"1")))
            .await
            .expect("txn"); // 5
        put(&store, "/d", "1").await; // 6
        store.compact(3).await.expect("compact");
    }
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.current_revision().await.expect("revision"), 6);
    assert_eq!(store.compacted_revision().await.expect("compacted"), 3);
    let a = store.get("/a").await.expect("get").expect("present");
    assert_eq!(
        (a.value.as_ref(), a.create_revision, a.mod_revision),
        (&b"2"[..], 2, 4)
    );
    let now = store.list("/", ListOptions::default()).await.expect("list");
    let keys: Vec<_> = now.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, vec!["/a", "/c", "/d"]);
    let past = store
        .list(
            "/",
            ListOptions {
                revision: Some(4),
                ..ListOptions::default()
            },
        )
        .await
        .expect("list at 4");
    let keys: Vec<_> = past.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, vec!["/a", "/b"]);
    assert!(matches!(
        store.watch("/", 2).await,
        Err(StoreError::Compacted { .. })
    ));
    // History from before the reopening comes from the log, then live events follow.
    let mut w = store.watch("/", 3).await.expect("watch");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(GUARD, w.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event");
        seen.push((event.key().to_owned(), event.revision(), event.is_delete()));
    }
    assert_eq!(
        seen,
        vec![
            ("/a".to_owned(), 4, false),
            ("/b".to_owned(), 5, true),
            ("/c".to_owned(), 5, false),
            ("/d".to_owned(), 6, false),
        ]
    );
    // Revisions continue where they stopped.
    assert_eq!(put(&store, "/e", "1").await, 7);
    let live = tokio::time::timeout(GUARD, w.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event");
    assert!(matches!(live, Event::Put { ref kv, .. } if kv.key == "/e" && kv.mod_revision == 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_the_same_file_is_detected() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store.db");
    let first = SqliteStore::open(&path).expect("open");
    put(&first, "/a", "1").await;
    let second = SqliteStore::open(&path).expect("open again");
    put(&second, "/b", "1").await;
    match first.txn(Txn::new().put("/c", Bytes::new())).await {
        Err(StoreError::Backend(message)) => assert!(message.contains("another process")),
        other => panic!("expected the first writer to refuse, got {other:?}"),
    }
}

/// Set in the child process: the database the write burst goes to.
const BURST_DB_ENV: &str = "SWITCHYARD_STORE_WRITE_BURST_DB";
const BURST_TEST: &str = "acknowledged_writes_survive_kill_9";

/// In the parent: start this test binary again as a child that writes a burst and prints every
/// acknowledged write, kill it with SIGKILL mid-burst, then check every acknowledged write is in
/// the database.
#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Some(path) = std::env::var_os(BURST_DB_ENV) {
        write_burst(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", BURST_TEST, "--nocapture", "--test-threads=1"])
        .env(BURST_DB_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the write burst");
    let stdout = child.stdout.take().expect("child stdout");
    let (acks_tx, acks) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut fields = line.split_whitespace();
            if fields.next() != Some("ack") {
                continue;
            }
            let key = fields.next().expect("acked key").to_owned();
            let revision: i64 = fields
                .next()
                .and_then(|r| r.parse().ok())
                .expect("acked revision");
            if acks_tx.send((key, revision)).is_err() {
                break;
            }
        }
    });

    let mut acked = Vec::new();
    let deadline = Instant::now() + GUARD;
    while acked.len() < 2000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match acks.recv_timeout(left) {
            Ok(ack) => acked.push(ack),
            Err(err) => {
                let _ = child.kill();
                panic!("the burst stopped after {} acks: {err}", acked.len());
            }
        }
    }
    child.kill().expect("SIGKILL the write burst");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed, not finished");
    reader.join().expect("reader thread");
    // Writes acknowledged between our last read and the kill are on the pipe too.
    acked.extend(acks.try_iter());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(&path).expect("reopen after SIGKILL");
        let current = store.current_revision().await.expect("revision");
        for (key, revision) in &acked {
            let kv = store
                .get(key)
                .await
                .expect("get")
                .unwrap_or_else(|| panic!("acknowledged {key} at {revision} was lost"));
            assert_eq!(kv.mod_revision, *revision, "{key}");
            assert!(*revision <= current);
        }
        // Every revision up to the current one is in the log exactly once, in order.
        let mut w = store.watch("/burst/", 1).await.expect("watch");
        let mut expected = 2;
        while expected <= current {
            let event = tokio::time::timeout(GUARD, w.next())
                .await
                .expect("replay in time")
                .expect("stream open")
                .expect("event");
            assert_eq!(event.revision(), expected);
            expected += 1;
        }
    });
}

/// In the child: create keys from several tasks as fast as the store acknowledges them, printing
/// each acknowledged one, until killed (or a minute passes).
fn write_burst(path: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = std::sync::Arc::new(SqliteStore::open(path).expect("open"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let key = format!("/burst/{task}/{i}");
                        let txn = Txn::new()
                            .when(Compare::Absent(key.clone()))
                            .put(key.clone(), Bytes::from(vec![b'x'; 256]));
                        match store.txn(txn).await.expect("txn") {
                            TxnOutcome::Applied(revision) => {
                                let mut out = std::io::stdout().lock();
                                writeln!(out, "ack {key} {revision}").expect("print ack");
                                out.flush().expect("flush ack");
                            }
                            other => panic!("create {key}: {other:?}"),
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("burst task");
        }
    });
}
