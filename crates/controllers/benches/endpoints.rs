//! EndpointSlice controller at scale: the latency from a pod readiness change to the updated
//! EndpointSlice (as a watching client sees it), the CPU time of the initial sync and of a full
//! resync, and memory — at a small baseline size and at the target size, side by side.
//!
//! `cargo bench -p switchyard-controllers --bench endpoints -- [--services N] [--pods P]
//! [--samples S] [--baseline-services B]` (defaults 10000 × 10, 200 samples, baseline 100).
//!
//! One process runs an API server over a SQLite store in a temporary directory and the
//! controller manager; services go through the API (so they get cluster IPs), pods are written
//! straight into the store in batches (Running, Ready, with an IP) to keep the setup short. CPU
//! and RSS are the whole process's: server and controllers together. "p50/p99" is readiness
//! write → slice seen by a watching client; "write" is the pod status write alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use switchyard_controllers::ControllerManager;
use switchyard_store::{Op, SharedStore, Txn};
use switchyard_testkit::{wait_for, InProcessServer};

struct Args {
    services: usize,
    pods: usize,
    samples: usize,
    baseline: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        services: 10_000,
        pods: 10,
        samples: 200,
        baseline: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--services" => a.services = value("--services")?,
            "--pods" => a.pods = value("--pods")?,
            "--samples" => a.samples = value("--samples")?,
            "--baseline-services" => a.baseline = value("--baseline-services")?,
            "--bench" => {}
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Figures {
    services: usize,
    pods: usize,
    sync: Duration,
    sync_cpu: Duration,
    resync: Duration,
    resync_cpu: Duration,
    rss_before: f64,
    rss_after: f64,
    p50: Duration,
    p99: Duration,
    write_p50: Duration,
    write_p99: Duration,
}

fn pod_json(svc: usize, i: usize, n: usize) -> serde_json::Value {
    let ip_index = svc * n + i;
    let ip = format!(
        "10.{}.{}.{}",
        64 + ip_index / 65536,
        (ip_index / 256) % 256,
        ip_index % 256
    );
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("svc-{svc}-{i}"), "namespace": "default",
            "uid": format!("00000000-0000-4000-8000-{ip_index:012}"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": format!("svc-{svc}")},
        },
        "spec": {
            "nodeName": format!("node-{}", i % 10),
            "containers": [{"name": "app", "image": "echo", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

async fn populate(server: &InProcessServer, services: usize, pods: usize) -> Result<()> {
    let client = server.client().await?;
    let api: Api<Service> = Api::namespaced(client, "default");
    futures::stream::iter(0..services)
        .map(|s| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{s}")},
                    "spec": {"selector": {"app": format!("svc-{s}")},
                             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
                }))?;
                api.create(&PostParams::default(), &svc).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;

    let store: &SharedStore = &server.server.store;
    let pod_resource = switchyard_api::resources::find("", "v1", "pods").context("pods")?;
    let mut batch = Txn::new();
    for s in 0..services {
        for i in 0..pods {
            let mut pod = pod_json(s, i, pods);
            // As the API would store it: defaulted.
            switchyard_api::defaults::apply_defaults(pod_resource, &mut pod);
            let key = pod_resource.key(Some("default"), &format!("svc-{s}-{i}"));
            batch
                .ops
                .push(Op::Put(key, serde_json::to_vec(&pod)?.into()));
            if batch.ops.len() == 1000 {
                store.txn(std::mem::take(&mut batch)).await?;
            }
        }
    }
    if !batch.ops.is_empty() {
        store.txn(batch).await?;
    }
    Ok(())
}

/// Waits until the controllers have been idle for half a second: no key waiting or being
/// synced, and no watch event of their own writes still arriving to wake them.
async fn wait_idle(manager: &ControllerManager, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut quiet_since: Option<Instant> = None;
    loop {
        if manager.is_idle() {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(500) {
                return Ok(());
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(services: usize, pods: usize, samples: usize) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let store: SharedStore = Arc::new(switchyard_store::sqlite::SqliteStore::open(
        &dir.path().join("store.db"),
    )?);
    let server = InProcessServer::start_with(store, |_| {}).await?;
    eprintln!("[{services}x{pods}] populating");
    populate(&server, services, pods).await?;
    let rss_before = rss_mib();

    let client = server.client().await?;
    let controller_client = server.controller_manager_client().await?;
    let config = switchyard_controllers::Config {
        leader_elect: false,
        resync_period: Duration::from_secs(3600),
        ..Default::default()
    };
    let cpu0 = cpu_time();
    let started = Instant::now();
    let manager = ControllerManager::start(controller_client, config)?;
    let slices = manager.context().informers.endpoint_slices.clone();
    wait_for(Duration::from_secs(900), "initial sync", || async {
        // One slice per service, plus default/kubernetes.
        (slices.len() > services).then_some(())
    })
    .await?;
    wait_idle(&manager, "controllers idle after the initial sync").await?;
    let sync = started.elapsed().saturating_sub(Duration::from_millis(500));
    let sync_cpu = cpu_time().saturating_sub(cpu0);
    let rss_after = rss_mib();
    eprintln!("[{services}x{pods}] synced in {sync:?}");

    let cpu0 = cpu_time();
    let started = Instant::now();
    manager.resync();
    wait_idle(&manager, "controllers idle after a full resync").await?;
    // Less the quiet half second that proves the end.
    let resync = started.elapsed().saturating_sub(Duration::from_millis(500));
    let resync_cpu = cpu_time().saturating_sub(cpu0);

    // Readiness flips, observed by a client watching EndpointSlices.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, EndpointSlice)>();
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let watch = tokio::spawn(async move {
        let stream = watcher(slice_api, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(s)) = ev {
                if tx.send((Instant::now(), s)).is_err() {
                    return;
                }
            }
        }
    });
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut latencies = Vec::with_capacity(samples);
    // How long the pod status write itself took (API server and store), for comparison.
    let mut writes = Vec::with_capacity(samples);
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    for n in 0..samples {
        let s = (n * 7919) % services;
        let i = (n * 31) % pods;
        let name = format!("svc-{s}-{i}");
        let now_ready = !*ready.get(&name).unwrap_or(&true);
        ready.insert(name.clone(), now_ready);
        let ip = pod_json(s, i, pods)["status"]["podIP"].clone();
        while rx.try_recv().is_ok() {}
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": if now_ready { "True" } else { "False" }}]}});
        let t0 = Instant::now();
        pod_api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        writes.push(t0.elapsed());
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let (at, slice) = tokio::time::timeout_at(deadline.into(), rx.recv())
                .await
                .with_context(|| format!("no slice update for {name}"))?
                .context("watch ended")?;
            let shows = slice.endpoints.iter().any(|ep| {
                ep.addresses.first().map(String::as_str) == ip.as_str()
                    && ep.conditions.as_ref().and_then(|c| c.ready) == Some(now_ready)
            });
            if shows {
                latencies.push(at.duration_since(t0));
                break;
            }
        }
    }
    watch.abort();
    latencies.sort();
    writes.sort();
    drop(manager);
    Ok(Figures {
        services,
        pods,
        sync,
        sync_cpu,
        resync,
        resync_cpu,
        rss_before,
        rss_after,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        write_p50: percentile(&writes, 0.5),
        write_p99: percentile(&writes, 0.99),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let baseline = run(a.baseline, a.pods, a.samples).await?;
    let target = run(a.services, a.pods, a.samples).await?;
    println!(
        "{:>9} {:>7} | {:>9} {:>9} | {:>9} {:>10} | {:>8} {:>8} | {:>9} {:>9}",
        "services",
        "pods",
        "sync",
        "sync CPU",
        "resync",
        "resync CPU",
        "RSS pre",
        "RSS post",
        "p50",
        "p99"
    );
    for f in [&baseline, &target] {
        println!(
            "{:>9} {:>7} | {:>8.2}s {:>8.2}s | {:>7.0}ms {:>8.0}ms | {:>6.1}Mi {:>6.1}Mi | {:>7.1}ms {:>7.1}ms | {:>7.1}ms {:>7.1}ms",
            f.services,
            f.services * f.pods,
            f.sync.as_secs_f64(),
            f.sync_cpu.as_secs_f64(),
            f.resync.as_secs_f64() * 1e3,
            f.resync_cpu.as_secs_f64() * 1e3,
            f.rss_before,
            f.rss_after,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.write_p50.as_secs_f64() * 1e3,
            f.write_p99.as_secs_f64() * 1e3,
        );
    }
    println!(
        "readiness → slice p50 ratio target/baseline: {:.2}",
        target.p50.as_secs_f64() / baseline.p50.as_secs_f64().max(1e-9)
    );
    Ok(())
}
