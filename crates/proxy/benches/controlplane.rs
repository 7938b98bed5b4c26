//! Control-plane benchmark (issue 5): what it costs to program the kernel, at 1,000 / 10,000 /
//! 30,000 ClusterIP services × 10 endpoints, each size in a fresh `sy-…` namespace (deleted by
//! an [`NsGuard`] also on failure or panic):
//!
//! - the full sync (`nft -f`, the whole table replaced atomically), timed once;
//! - the one-service incremental sync (one endpoint of one service removed) two ways, side by
//!   side: through the data plane as the proxy does it (one nf_tables netlink batch,
//!   `NftDataPlane::sync_services`) and with the same transaction text given to `nft -f` (the
//!   way it was done before, and what kube-proxy's nftables mode does). Each is timed over
//!   `CONTROLPLANE_ROUNDS` rounds, each round on a service not touched before; median and p99;
//! - the kernel's share, with netlink: adding one `service-ips` element whose verdict is `drop`
//!   against one that jumps to a chain. A new jump (element or rule), like a new `dnat` rule,
//!   makes the kernel validate the whole table when it commits (every chain reachable from
//!   the base chains), so that figure is the floor of any sync that adds one;
//! - the size of the applied state: chains and map elements of the services, the full
//!   transaction's text, and the one-service batch.
//!
//! ```text
//! cargo bench -p switchyard-proxy --bench controlplane --no-run   # then run the printed binary:
//! CONTROLPLANE_SERVICES=1000,10000 target/release/deps/controlplane-…
//! ```
//!
//! Knobs (environment): `CONTROLPLANE_SERVICES` (default `1000,10000,30000`),
//! `CONTROLPLANE_ENDPOINTS` (10), `CONTROLPLANE_ROUNDS` (20). Needs root. Progress goes to
//! stderr, the markdown table to stdout.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use switchyard_netns::{can_create_namespaces, run_checked, unique_name, NsGuard};
use switchyard_proxy::model::{
    Endpoint, Protocol, ServiceKey, ServicePort, ServicePortInfo, ServicePortName, Snapshot,
};
use switchyard_proxy::nftables::{
    self, netlink, Family, NodeConfig, Scheduler, SERVICE_IPS, TABLE,
};
use switchyard_proxy::proxier::{NftApplier, NftDataPlane, SyncKind};

const NODE_NAME: &str = "bench-node";
const NAMESPACE: &str = "bench";

struct Settings {
    services: Vec<usize>,
    endpoints: usize,
    rounds: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let number = |name: &str, default: usize| -> anyhow::Result<usize> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(v) => v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{name}={v:?}: expected a positive number")),
            }
        };
        let services = match std::env::var("CONTROLPLANE_SERVICES") {
            Err(_) => vec![1_000, 10_000, 30_000],
            Ok(v) => v
                .split(',')
                .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n > 0))
                .collect::<Option<Vec<_>>>()
                .with_context(|| {
                    format!("CONTROLPLANE_SERVICES={v:?}: expected numbers like 1000,10000")
                })?,
        };
        let settings = Settings {
            services,
            endpoints: number("CONTROLPLANE_ENDPOINTS", 10)?,
            rounds: number("CONTROLPLANE_ROUNDS", 20)?,
        };
        if settings.endpoints < 2 || settings.endpoints > 127 {
            bail!("CONTROLPLANE_ENDPOINTS must be 2..=127 (one endpoint is removed per round)");
        }
        if let Some(n) = settings
            .services
            .iter()
            .find(|n| **n < 4 * settings.rounds || **n > 65_536)
        {
            bail!(
                "{n} services: expected {}..=65536 for {} rounds",
                4 * settings.rounds,
                settings.rounds
            );
        }
        Ok(settings)
    }
}

fn main() {
    // Bad knobs: one line and exit 64 before anything is created.
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("controlplane: {e:#}");
            std::process::exit(64);
        }
    };
    if !can_create_namespaces() {
        eprintln!("controlplane: SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(settings)) {
        eprintln!("controlplane: {e:#}");
        std::process::exit(1);
    }
}

/// The figures of one size.
struct Row {
    services: usize,
    full: Duration,
    netlink: Vec<Duration>,
    nft: Vec<Duration>,
    element_drop: Vec<Duration>,
    element_goto: Vec<Duration>,
    chains: usize,
    elements: usize,
    full_bytes: usize,
    batch_messages: usize,
    batch_bytes: usize,
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &services in &settings.services {
        eprintln!("== {services} services × {} endpoints", settings.endpoints);
        rows.push(measure(services, &settings).await?);
    }
    print!("{}", report(&settings, &rows, &machine_note().await));
    Ok(())
}

fn node_config() -> NodeConfig {
    NodeConfig {
        node_name: NODE_NAME.into(),
        node_port_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 67, 1))],
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("a CIDR")],
        masquerade_all: false,
        scheduler: Scheduler::Random,
    }
}

/// `services` ClusterIP services `10.96.c.d:80` (i = 256·c + d), each with its own
/// `endpoints` pods `10.(128+e).c.d:8080` (distinct for up to 65,536 services).
fn snapshot(services: usize, endpoints: usize) -> Snapshot {
    (0..services)
        .map(|i| {
            let (c, d) = ((i >> 8) as u8, i as u8);
            let cluster_ip = IpAddr::V4(Ipv4Addr::new(10, 96, c, d));
            let port = ServicePort {
                info: ServicePortInfo::cluster_ip(cluster_ip, 80, Protocol::Tcp),
                endpoints: (0..endpoints)
                    .map(|e| {
                        let ip = IpAddr::V4(Ipv4Addr::new(10, 128 + e as u8, c, d));
                        Endpoint::ready(ip, 8080, Some(NODE_NAME))
                    })
                    .collect(),
            };
            (service_port_name(i), port)
        })
        .collect()
}

fn service_port_name(index: usize) -> ServicePortName {
    ServicePortName {
        namespace: NAMESPACE.into(),
        name: format!("svc-{index}"),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
    }
}

/// The rules of service `index` with its last endpoint removed (in `snapshot` too).
fn drop_endpoint(
    snapshot: &mut Snapshot,
    index: usize,
    node: &NodeConfig,
) -> anyhow::Result<(ServiceKey, Option<nftables::ServiceRules>)> {
    let name = service_port_name(index);
    let port = snapshot
        .get_mut(&name)
        .with_context(|| format!("no service {index}"))?;
    port.endpoints.pop();
    let rules = nftables::build_service(
        snapshot.iter().filter(|(n, _)| **n == name),
        node,
        Family::V4,
    );
    Ok((name.service(), rules))
}

async fn measure(services: usize, settings: &Settings) -> anyhow::Result<Row> {
    let mut guard = NsGuard::new();
    let ns = guard.create(&unique_name("cp")).await?;
    let node = node_config();
    let mut snapshot = snapshot(services, settings.endpoints);
    let ruleset = nftables::build(&snapshot, &node, Family::V4);
    let (chains, elements) = ruleset.counts();
    let full_bytes = nftables::full_transaction(&ruleset).len();

    let mut plane = NftDataPlane::new(ns.clone(), node.clone());
    let started = Instant::now();
    let kind = plane.sync_full(ruleset).await.map(|()| SyncKind::Full)?;
    let full = started.elapsed();
    eprintln!("   full sync ({kind:?}): {full:?}");

    // Netlink: services from the middle on, one per round, through the data plane.
    let mut netlink = Vec::with_capacity(settings.rounds);
    let mut batch = (0, 0);
    for round in 0..settings.rounds {
        let (key, rules) = drop_endpoint(&mut snapshot, services / 2 + round, &node)?;
        if round == 0 {
            let applied = plane.applied(Family::V4).context("applied state")?;
            let text = nftables::partial_transaction(
                Family::V4,
                [(applied.services.get(&key), rules.as_ref())],
            )
            .context("incremental")?;
            let encoded = netlink::encode(&text, 1)?;
            batch = (encoded.messages(), encoded.len());
        }
        let started = Instant::now();
        let kind = plane
            .sync_services(Family::V4, [(key, rules)].into_iter().collect())
            .await?;
        netlink.push(started.elapsed());
        if kind != SyncKind::Partial {
            bail!("round {round}: a {kind:?} sync, expected a partial one");
        }
    }
    eprintln!("   netlink: median {:?}", percentile(&netlink, 50));

    // nft -f: services from the first quarter on, the same change as text.
    let applier = NftApplier::new(ns.clone());
    let mut nft = Vec::with_capacity(settings.rounds);
    for round in 0..settings.rounds {
        let index = services / 4 + round;
        let name = service_port_name(index);
        let old = nftables::build_service(
            snapshot.iter().filter(|(n, _)| **n == name),
            &node,
            Family::V4,
        );
        let (_, new) = drop_endpoint(&mut snapshot, index, &node)?;
        let started = Instant::now();
        let text = nftables::partial_transaction(Family::V4, [(old.as_ref(), new.as_ref())])
            .context("incremental")?;
        applier.apply(&text).await?;
        nft.push(started.elapsed());
    }
    eprintln!("   nft -f: median {:?}", percentile(&nft, 50));

    // The kernel's share: one map element whose verdict is `drop` against one that jumps to
    // an existing chain. Only the second makes the kernel validate the table (walk every
    // chain reachable from the base chains) when it commits.
    let mut socket = netlink::Socket::open(&ns)?;
    let mut element_drop = Vec::with_capacity(settings.rounds);
    let mut element_goto = Vec::with_capacity(settings.rounds);
    let target = nftables::service_chain_name("service", &service_port_name(0), 80);
    for round in 0..settings.rounds {
        for (verdict, samples) in [
            ("drop".to_string(), &mut element_drop),
            (format!("goto {target}"), &mut element_goto),
        ] {
            let key = format!("10.255.0.{round} . tcp . 80");
            let add = format!("add element ip {TABLE} {SERVICE_IPS} {{ {key} : {verdict} }}\n");
            let started = Instant::now();
            socket.apply(&add)?;
            samples.push(started.elapsed());
            socket.apply(&format!(
                "delete element ip {TABLE} {SERVICE_IPS} {{ {key} }}\n"
            ))?;
        }
    }
    eprintln!(
        "   one element: drop {:?}, goto {:?}",
        percentile(&element_drop, 50),
        percentile(&element_goto, 50)
    );
    Ok(Row {
        services,
        full,
        netlink,
        nft,
        element_drop,
        element_goto,
        chains,
        elements,
        full_bytes,
        batch_messages: batch.0,
        batch_bytes: batch.1,
    })
}

/// The `p`th percentile (nearest rank) of `samples`.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (p * sorted.len())
        .div_ceil(100)
        .clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn report(settings: &Settings, rows: &[Row], note: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Control plane: {} endpoints per service, {} rounds per incremental figure\n",
        settings.endpoints, settings.rounds
    );
    let _ = writeln!(out, "{note}\n");
    let _ = writeln!(
        out,
        "| services | full sync (nft -f) | one service, netlink p50 / p99 | one service, nft -f p50 / p99 | one element `: drop` / `: goto` (netlink p50) | chains | map elements | full transaction | one-service batch |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} / {} | {} / {} | {} / {} | {} | {} | {:.1} MB | {} messages, {} bytes |",
            r.services,
            ms(r.full),
            ms(percentile(&r.netlink, 50)),
            ms(percentile(&r.netlink, 99)),
            ms(percentile(&r.nft, 50)),
            ms(percentile(&r.nft, 99)),
            ms(percentile(&r.element_drop, 50)),
            ms(percentile(&r.element_goto, 50)),
            r.chains,
            r.elements,
            r.full_bytes as f64 / 1e6,
            r.batch_messages,
            r.batch_bytes,
        );
    }
    out
}

async fn machine_note() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nft = run_checked(tokio::process::Command::new("nft").arg("--version"))
        .await
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let profile = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    format!(
        "kernel {}, {}, {cores} cores shared with other builds, {profile}",
        kernel.trim(),
        nft.trim()
    )
}
