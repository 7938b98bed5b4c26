//! The API server's benchmark: what a Kubernetes client sees (kube-rs over HTTPS) against the
//! raw store underneath, side by side in one run, so the cost of the API layer shows as a ratio.
//!
//! Measured, each with its baseline:
//! - Service creates/s with 1 client and with 32 concurrent clients, against the store's own
//!   create-if-absent transaction rate for the same keys, values and concurrency;
//! - watch delivery latency, from a create being sent (and being acknowledged) to its ADDED event
//!   reaching each of 100 concurrent kube-rs watch streams, against the same with 1 watcher;
//! - listing all services of a namespace of 10,000 (median of 5) through kube-rs and as raw
//!   response text, against the store's list of the same keys;
//! - the resident memory of a real `switchyard server` process holding 10,000 services, against
//!   the same process freshly started and empty.
//!
//! Run: `cargo build --release -p switchyard && cargo bench -p switchyard-apiserver --bench
//! apiserver`. The RSS part runs `target/release/switchyard` (it is skipped, with a message,
//! when that binary is missing). Everything writes only to temporary directories. Sizes come from
//! the environment: `SY_BENCH_SERVICES` (10000: list and RSS), `SY_BENCH_CREATES_ONE` (1000: the
//! 1-client create run), `SY_BENCH_WATCHERS` (100), `SY_BENCH_WATCH_WRITES` (200).
//!
//! The in-process server shares the machine's cores with the clients driving it, so absolute
//! numbers are lower than a server alone would reach; the ratios are the point.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::json;
use switchyard_store::sqlite::SqliteStore;
use switchyard_store::{Compare, ListOptions, SharedStore, Txn, TxnOutcome};
use switchyard_testkit::{client_from_kubeconfig, InProcessServer, ServerProcess};

fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Percentile `q` (0..=1) of sorted durations.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name, "tier": "bench"}},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("a valid Service")
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Rate and per-request latencies of one create run.
struct Run {
    rate: f64,
    latencies: Vec<Duration>,
}

/// Create `total` services named `{prefix}-{i}` in `ns`, spread over `clients` (each its own
/// kube-rs client and connections), each client creating its share one after another.
async fn api_creates(clients: &[Client], ns: &str, prefix: &str, total: usize) -> Result<Run> {
    let per = total.div_ceil(clients.len());
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, client)| {
            let api: Api<Service> = Api::namespaced(client.clone(), ns);
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in (c * per)..((c + 1) * per).min(total) {
                    let t = Instant::now();
                    api.create(&PostParams::default(), &service(&format!("{prefix}-{i}")))
                        .await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    Ok(Run { rate, latencies })
}

/// The store's create-if-absent rate for the same keys and values with `tasks` writers.
async fn store_creates(
    store: SharedStore,
    prefix: &str,
    value: Bytes,
    tasks: usize,
    total: usize,
) -> Result<Run> {
    let per = total.div_ceil(tasks);
    let start = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|w| {
            let (store, value, prefix) = (store.clone(), value.clone(), prefix.to_string());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in (w * per)..((w + 1) * per).min(total) {
                    let key = format!("{prefix}{i}");
                    let t = Instant::now();
                    match store
                        .txn(
                            Txn::new()
                                .when(Compare::Absent(key.clone()))
                                .put(key, value.clone()),
                        )
                        .await?
                    {
                        TxnOutcome::Applied(_) => lat.push(t.elapsed()),
                        other => bail!("store create failed: {other:?}"),
                    }
                }
                Ok(lat)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for w in workers {
        latencies.extend(w.await??);
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    Ok(Run { rate, latencies })
}

/// Delivery latencies (from the create being sent, and from it being acknowledged) of `writes`
/// sequential creates to each of `watchers` watch streams on namespace `ns`.
async fn watch_latency(
    client: &Client,
    ns: &str,
    watchers: usize,
    writes: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    create_namespace(client, ns).await?;
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut streams = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        // Every watcher starts at the same revision, so none can miss an event however late
        // its stream is set up.
        streams.push(
            api.watch(&WatchParams::default().timeout(290), &rv)
                .await?
                .boxed(),
        );
    }
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut got: Vec<(usize, Instant)> = Vec::with_capacity(writes);
                while got.len() < writes {
                    match stream.next().await {
                        Some(Ok(WatchEvent::Added(s))) => {
                            let at = Instant::now();
                            let n = s
                                .metadata
                                .name
                                .as_deref()
                                .and_then(|n| n.strip_prefix("w-"))
                                .and_then(|i| i.parse().ok());
                            got.push((n.context("a bench service name")?, at));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => bail!("watch failed: {e}"),
                        None => bail!("watch ended after {} events", got.len()),
                    }
                }
                Ok(got)
            })
        })
        .collect();
    let mut sent = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        api.create(&PostParams::default(), &service(&format!("w-{i}")))
            .await?;
        sent.push((t, Instant::now()));
    }
    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    for r in receivers {
        for (i, at) in tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .context("watchers stalled")???
        {
            let (send, ack) = sent[i];
            from_send.push(at.duration_since(send));
            // An event may arrive before the client has read the 201: that counts as 0.
            from_ack.push(at.saturating_duration_since(ack));
        }
    }
    from_send.sort();
    from_ack.sort();
    Ok((from_send, from_ack))
}

/// Median of `rounds` timings of `f`, and the last result.
async fn median_of<T, F, Fut>(rounds: usize, mut f: F) -> Result<(Duration, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut times = Vec::with_capacity(rounds);
    let mut last = None;
    for _ in 0..rounds {
        let t = Instant::now();
        last = Some(f().await?);
        times.push(t.elapsed());
    }
    times.sort();
    Ok((pct(&times, 0.5), last.context("at least one round")?))
}

/// VmRSS and VmHWM of a process, in MiB.
fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Ok((
        field("VmRSS:").context("VmRSS")?,
        field("VmHWM:").context("VmHWM")?,
    ))
}

/// `target/release/switchyard`, next to this bench's `target/release/deps/` directory.
fn release_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("switchyard");
    bin.exists().then_some(bin)
}

fn print_rate_row(what: &str, one: &Run, many: &Run) {
    println!(
        "  {what:<28} {:>9.0}/s {:>9} {:>9}   {:>9.0}/s {:>9} {:>9}",
        one.rate,
        ms(pct(&one.latencies, 0.5)),
        ms(pct(&one.latencies, 0.99)),
        many.rate,
        ms(pct(&many.latencies, 0.5)),
        ms(pct(&many.latencies, 0.99)),
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let services = env_size("SY_BENCH_SERVICES", 10_000);
    let creates_one = env_size("SY_BENCH_CREATES_ONE", 1_000);
    let watchers = env_size("SY_BENCH_WATCHERS", 100);
    let watch_writes = env_size("SY_BENCH_WATCH_WRITES", 200);
    let began = Instant::now();

    let dir = tempfile::tempdir()?;
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("store.db"))?);
    let server = InProcessServer::start_with(store.clone(), |_| {}).await?;
    let client = server.client().await?;
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(server.client().await?);
    }
    println!(
        "Switchyard API server bench: in-process server over SQLite (tempdir), kube-rs over HTTPS, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();

    // Creates. The 32-client run creates the namespace of `services` the list and RSS parts use.
    create_namespace(&client, "one").await?;
    create_namespace(&client, "bench").await?;
    let api_one = api_creates(&clients[..1], "one", "s", creates_one).await?;
    let api_many = api_creates(&clients, "bench", "s", services).await?;
    let svc_r =
        switchyard_api::resources::find("", "v1", "services").context("services are served")?;
    let sample = store
        .get(&svc_r.key(Some("bench"), "s-0"))
        .await?
        .context("a stored service")?
        .value;
    let baseline_store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("baseline.db"))?);
    let store_one = store_creates(
        baseline_store.clone(),
        "/registry/services/specs/one/s-",
        sample.clone(),
        1,
        creates_one,
    )
    .await?;
    let store_many = store_creates(
        baseline_store.clone(),
        "/registry/services/specs/bench/s-",
        sample.clone(),
        32,
        services,
    )
    .await?;
    println!(
        "Service creates ({creates_one} with 1 client, {services} with 32; stored value {} bytes)",
        sample.len()
    );
    println!(
        "  {:<28} {:>11} {:>9} {:>9}   {:>11} {:>9} {:>9}",
        "", "1 client", "p50", "p99", "32 clients", "p50", "p99"
    );
    print_rate_row("API create (kube-rs)", &api_one, &api_many);
    print_rate_row("store txn (baseline)", &store_one, &store_many);
    println!(
        "  {:<28} {:>10.1}%  {:>19}   {:>10.1}%",
        "API / store",
        100.0 * api_one.rate / store_one.rate,
        "",
        100.0 * api_many.rate / store_many.rate
    );
    println!();

    // Watch delivery.
    let (one_send, one_ack) = watch_latency(&client, "watch-one", 1, watch_writes).await?;
    let (many_send, many_ack) =
        watch_latency(&client, "watch-many", watchers, watch_writes).await?;
    println!("Watch delivery latency ({watch_writes} sequential creates, every ADDED event at every watcher)");
    println!(
        "  {:<28} {:>8} {:>10} {:>10} {:>10}   {:>10} {:>10}",
        "", "events", "sent p50", "sent p99", "sent max", "ack p50", "ack p99"
    );
    for (what, send, ack) in [
        (format!("{watchers} watchers"), &many_send, &many_ack),
        ("1 watcher (baseline)".to_string(), &one_send, &one_ack),
    ] {
        println!(
            "  {what:<28} {:>8} {:>10} {:>10} {:>10}   {:>10} {:>10}",
            send.len(),
            ms(pct(send, 0.5)),
            ms(pct(send, 0.99)),
            ms(pct(send, 1.0)),
            ms(pct(ack, 0.5)),
            ms(pct(ack, 0.99))
        );
    }
    println!("  (sent: from the create request being sent; ack: from its 201 being read, 0 if the event came first)");
    println!();

    // Listing.
    let api: Api<Service> = Api::namespaced(client.clone(), "bench");
    let (kube_time, n) = median_of(5, || async {
        Ok(api.list(&ListParams::default()).await?.items.len())
    })
    .await?;
    if n != services {
        bail!("listed {n} services, expected {services}");
    }
    let (raw_time, bytes) = median_of(5, || async {
        let req = http::Request::get("/api/v1/namespaces/bench/services").body(Vec::new())?;
        Ok(client.request_text(req).await?.len())
    })
    .await?;
    let prefix = svc_r.namespace_prefix(Some("bench"));
    let (store_time, store_bytes) = median_of(5, || async {
        let res = store.list(&prefix, ListOptions::default()).await?;
        Ok(res.kvs.iter().map(|kv| kv.value.len()).sum::<usize>())
    })
    .await?;
    println!("List {services} services of one namespace (median of 5)");
    println!(
        "  {:<28} {:>10} {:>14} {:>10}",
        "", "time", "bytes", "vs store"
    );
    let ratio = |d: Duration| d.as_secs_f64() / store_time.as_secs_f64();
    println!(
        "  {:<28} {:>10} {:>14} {:>9.1}x",
        "kube-rs list (decoded)",
        ms(kube_time),
        bytes,
        ratio(kube_time)
    );
    println!(
        "  {:<28} {:>10} {:>14} {:>9.1}x",
        "raw GET (request_text)",
        ms(raw_time),
        bytes,
        ratio(raw_time)
    );
    println!(
        "  {:<28} {:>10} {:>14} {:>9.1}x",
        "store list (baseline)",
        ms(store_time),
        store_bytes,
        1.0
    );
    println!();
    drop(clients);
    drop(server);

    // Memory of a real server process.
    println!("Server RSS (target/release/switchyard as a child process)");
    match release_binary() {
        None => println!("  SKIPPED: target/release/switchyard is missing; run `cargo build --release -p switchyard` first"),
        Some(bin) => {
            let data = tempfile::tempdir()?;
            let child = ServerProcess::start(&bin, data.path(), &[])?;
            let pid = child.child.id();
            let (empty, _) = rss_mib(pid)?;
            let client = client_from_kubeconfig(&child.kubeconfig()).await?;
            create_namespace(&client, "bench").await?;
            let mut clients = Vec::new();
            for _ in 0..32 {
                clients.push(client_from_kubeconfig(&child.kubeconfig()).await?);
            }
            let run = api_creates(&clients, "bench", "s", services).await?;
            let (full, _) = rss_mib(pid)?;
            let api: Api<Service> = Api::namespaced(client.clone(), "bench");
            api.list(&ListParams::default()).await?;
            let (listed, peak) = rss_mib(pid)?;
            println!("  {:<28} {:>10}", "", "VmRSS");
            println!("  {:<28} {:>7.1} MiB", "empty (baseline)", empty);
            println!("  {:<28} {:>7.1} MiB   (+{:.1} KiB per service; created at {:.0}/s)", format!("with {services} services"), full, (full - empty) * 1024.0 / services as f64, run.rate);
            println!("  {:<28} {:>7.1} MiB   (peak VmHWM {:.1} MiB)", "after one full list", listed, peak);
        }
    }
    println!();
    println!("total bench time {:.1}s", began.elapsed().as_secs_f64());
    Ok(())
}
