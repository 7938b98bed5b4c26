//! A short benchmark of the store backends: create-if-absent throughput with 1 and 32
//! concurrent tasks, and watch delivery latency (from the start of a write to its event reaching
//! a watcher), for SQLite (group commit, `synchronous=FULL`) and memory side by side.
//!
//! Run: `cargo run --release -p switchyard-store --example store_bench`. It takes a few seconds
//! and writes only to a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use switchyard_store::memory::MemoryStore;
use switchyard_store::sqlite::SqliteStore;
use switchyard_store::{Compare, Store, Txn, TxnOutcome};

/// How long each throughput run lasts.
const RUN: Duration = Duration::from_millis(1500);
/// How many writes the latency run measures.
const LATENCY_WRITES: usize = 1000;
/// A value about the size of a small Kubernetes object.
const VALUE_SIZE: usize = 1024;

async fn throughput(store: Arc<dyn Store>, tasks: usize, run: &str) -> f64 {
    let value = Bytes::from(vec![b'x'; VALUE_SIZE]);
    let start = Instant::now();
    let deadline = start + RUN;
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let store = store.clone();
            let value = value.clone();
            let run = run.to_owned();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let key = format!("/bench/{run}/{task}/{done}");
                    let txn = Txn::new()
                        .when(Compare::Absent(key.clone()))
                        .put(key, value.clone());
                    match store.txn(txn).await.expect("txn") {
                        TxnOutcome::Applied(_) => done += 1,
                        other => panic!("create failed: {other:?}"),
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("worker");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Latency percentiles (p50, p99, max) from the start of a write to its watch event.
async fn watch_latency(store: Arc<dyn Store>) -> (Duration, Duration, Duration) {
    let after = store.current_revision().await.expect("revision");
    let mut events = store.watch("/latency/", after).await.expect("watch");
    let watcher = tokio::spawn(async move {
        let mut received = Vec::with_capacity(LATENCY_WRITES);
        while received.len() < LATENCY_WRITES {
            match events.next().await {
                Some(Ok(event)) => received.push((event.revision(), Instant::now())),
                other => panic!("watch ended: {other:?}"),
            }
        }
        received
    });
    let mut started = Vec::with_capacity(LATENCY_WRITES);
    let value = Bytes::from(vec![b'y'; VALUE_SIZE]);
    for i in 0..LATENCY_WRITES {
        let begin = Instant::now();
        match store
            .txn(Txn::new().put(format!("/latency/{i}"), value.clone()))
            .await
            .expect("txn")
        {
            TxnOutcome::Applied(revision) => started.push((revision, begin)),
            other => panic!("put failed: {other:?}"),
        }
    }
    let received = watcher.await.expect("watcher");
    let mut latencies: Vec<Duration> = started
        .iter()
        .zip(&received)
        .map(|((sent_rev, begin), (got_rev, at))| {
            assert_eq!(sent_rev, got_rev, "events out of order");
            at.duration_since(*begin)
        })
        .collect();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (pick(0.5), pick(0.99), pick(1.0))
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("bench.db")).expect("open SQLite store"));
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());

    println!("create-if-absent, {VALUE_SIZE}-byte values, {RUN:?} per run");
    println!("{:<10} {:>14} {:>14}", "backend", "1 task", "32 tasks");
    for (name, store) in [("sqlite", &sqlite), ("memory", &memory)] {
        let one = throughput(store.clone(), 1, "one").await;
        let many = throughput(store.clone(), 32, "many").await;
        println!("{name:<10} {one:>10.0} tx/s {many:>10.0} tx/s");
    }

    println!();
    println!("watch delivery latency (write start to event), {LATENCY_WRITES} sequential writes");
    println!(
        "{:<10} {:>12} {:>12} {:>12}",
        "backend", "p50", "p99", "max"
    );
    for (name, store) in [("sqlite", &sqlite), ("memory", &memory)] {
        let (p50, p99, max) = watch_latency(store.clone()).await;
        println!("{name:<10} {p50:>12.1?} {p99:>12.1?} {max:>12.1?}");
    }
}
