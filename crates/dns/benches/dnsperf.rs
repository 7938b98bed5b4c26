//! Queries/s of our DNS server next to Knot DNS serving the same records, with `dnsperf` over
//! loopback, in one run (issue 6's benchmark):
//!
//! - cluster names: a zone of 10,000 Services (1,000 headless with 100 endpoints each, 9,000
//!   ClusterIP) loaded directly into a [`Zone`] and served by our server; the same records as a
//!   static zone file served by `knotd`; the same query file against both;
//! - cached external names: our forwarder with Knot as its upstream, next to Knot directly;
//! - CPU time (user + system) each server spent per query answered during those same runs: on
//!   a machine shared with other work the rate follows the load, the cost per query much less;
//! - our process's RSS with that zone loaded, next to CoreDNS's published formula
//!   MB ≈ (pods + services) × 0.00086 + 49.
//!
//! Needs the Debian packages `dnsperf` and `knot`; skips loudly without them. Knobs (env):
//! `DNSPERF_SECONDS` per run (default 10), `DNSPERF_RUNS` (default 3, medians reported),
//! `DNS_BENCH_SERVICES` (default 10000; a tenth of them headless with 100 endpoints).
//! Run: `cargo bench -p switchyard-dns --bench dnsperf`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_dns::forward::{Forwarder, ForwarderConfig};
use switchyard_dns::server::{bind_udp, Dns};
use switchyard_dns::zone::{Zone, ZoneConfig};

const ENDPOINTS_PER_HEADLESS: usize = 100;
const NAMESPACES: usize = 100;
const EXTERNAL_NAMES: usize = 1000;
/// Our UDP sockets (SO_REUSEPORT), one per worker thread: Knot runs `udp-workers: 2` below.
const UDP_SOCKETS: usize = 2;

/// A child process killed by PID when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> Result<u16> {
    // UDP and TCP both free on the port: bind TCP, then UDP on the same number.
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

/// The process's resident set in MiB (`VmRSS` of /proc/self/status).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU seconds (user + system) process `pid` (or `self`) has used, from `/proc/PID/stat` (fields
/// 14 and 15, in USER_HZ ticks, which Linux fixes at 100 for userspace).
fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after_name = stat
        .rsplit_once(')')
        .map_or(stat.as_str(), |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |n: usize| -> Result<f64> {
        Ok(fields
            .get(n - 3)
            .context("short /proc stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}

fn ip(n: u32, base: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n)
}

/// The generated cluster: one ClusterIP or headless service per index.
struct Cluster {
    services: usize,
    headless: usize,
}

impl Cluster {
    fn is_headless(&self, i: usize) -> bool {
        i < self.headless
    }
    fn namespace(i: usize) -> String {
        format!("ns-{}", i % NAMESPACES)
    }
    fn name(&self, i: usize) -> String {
        if self.is_headless(i) {
            format!("hl-{i}")
        } else {
            format!("svc-{i}")
        }
    }
    fn cluster_ip(i: usize) -> Ipv4Addr {
        ip(100 + i as u32, Ipv4Addr::new(10, 96, 0, 0))
    }
    fn endpoint_ip(i: usize, k: usize) -> Ipv4Addr {
        ip(
            (i * ENDPOINTS_PER_HEADLESS + k) as u32 + 2,
            Ipv4Addr::new(10, 244, 0, 0),
        )
    }

    /// Loads every service (and the headless ones' slices) into `zone`.
    fn load(&self, zone: &mut Zone) -> Result<()> {
        for i in 0..self.services {
            let (ns, name) = (Self::namespace(i), self.name(i));
            let cluster_ip = if self.is_headless(i) {
                "None".to_string()
            } else {
                Self::cluster_ip(i).to_string()
            };
            let service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
            }))?;
            zone.upsert_service(&service);
            if self.is_headless(i) {
                let endpoints: Vec<_> = (0..ENDPOINTS_PER_HEADLESS)
                    .map(|k| {
                        serde_json::json!({
                            "addresses": [Self::endpoint_ip(i, k).to_string()],
                            "hostname": format!("ep-{k}"),
                            "conditions": {"ready": true}
                        })
                    })
                    .collect();
                let slice = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("{name}-1"), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
                }))?;
                zone.upsert_slice(&slice);
            }
        }
        Ok(())
    }

    /// The same records as a zone file for `cluster.local.` (the forward names; the query file
    /// asks no reverse names).
    fn zone_file(&self) -> String {
        let mut z = String::with_capacity(self.services * 200);
        z.push_str("$ORIGIN cluster.local.\n$TTL 5\n");
        z.push_str(
            "@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n",
        );
        z.push_str("@ IN NS ns.dns.cluster.local.\nns.dns IN A 10.96.0.10\n");
        z.push_str("dns-version IN TXT \"1.1.0\"\n");
        for i in 0..self.services {
            let owner = format!("{}.{}.svc", self.name(i), Self::namespace(i));
            if self.is_headless(i) {
                for k in 0..ENDPOINTS_PER_HEADLESS {
                    let ip = Self::endpoint_ip(i, k);
                    let _ = writeln!(z, "{owner} IN A {ip}");
                    let _ = writeln!(z, "ep-{k}.{owner} IN A {ip}");
                    let _ = writeln!(
                        z,
                        "_http._tcp.{owner} IN SRV 0 1 80 ep-{k}.{owner}.cluster.local."
                    );
                }
            } else {
                let _ = writeln!(z, "{owner} IN A {}", Self::cluster_ip(i));
                let _ = writeln!(
                    z,
                    "_http._tcp.{owner} IN SRV 0 100 80 {owner}.cluster.local."
                );
            }
        }
        z
    }

    /// A dnsperf query file: ClusterIP A (70%), their SRV (10%), headless endpoint hostnames
    /// (15%), missing names (5%, NXDOMAIN).
    fn query_file(&self, lines: usize) -> String {
        let mut rng = StdRng::seed_from_u64(7);
        let mut q = String::with_capacity(lines * 48);
        let cluster_ips = self.services - self.headless;
        for _ in 0..lines {
            let roll = rng.random_range(0..100);
            let i = self.headless + rng.random_range(0..cluster_ips.max(1));
            let owner = format!("{}.{}.svc.cluster.local", self.name(i), Self::namespace(i));
            let _ = match roll {
                0..70 => writeln!(q, "{owner} A"),
                70..80 => writeln!(q, "_http._tcp.{owner} SRV"),
                80..95 if self.headless > 0 => {
                    let h = rng.random_range(0..self.headless);
                    let k = rng.random_range(0..ENDPOINTS_PER_HEADLESS);
                    writeln!(
                        q,
                        "ep-{k}.{}.{}.svc.cluster.local A",
                        self.name(h),
                        Self::namespace(h)
                    )
                }
                _ => writeln!(q, "nope-{i}.{}.svc.cluster.local A", Self::namespace(i)),
            };
        }
        q
    }
}

fn external_zone_file() -> String {
    let mut z = String::from(
        "$ORIGIN example.test.\n$TTL 3600\n@ IN SOA ns.example.test. hostmaster.example.test. 1 7200 1800 86400 300\n@ IN NS ns.example.test.\nns IN A 192.0.2.1\n",
    );
    for i in 0..EXTERNAL_NAMES {
        let _ = writeln!(
            z,
            "host-{i} IN A {}",
            ip(i as u32, Ipv4Addr::new(198, 18, 0, 0))
        );
    }
    z
}

fn external_query_file() -> String {
    (0..EXTERNAL_NAMES)
        .map(|i| format!("host-{i}.example.test A\n"))
        .collect()
}

fn start_knot(dir: &Path, port: u16) -> Result<Killed> {
    let d = dir.display();
    let conf = [
        "server:".to_string(),
        format!("    listen: 127.0.0.1@{port}"),
        format!("    rundir: {d}"),
        "    udp-workers: 2".into(),
        "    tcp-workers: 1".into(),
        "    background-workers: 1".into(),
        "database:".into(),
        format!("    storage: {d}"),
        "zone:".into(),
        "  - domain: cluster.local".into(),
        format!("    file: {d}/cluster.local.zone"),
        "    journal-content: none".into(),
        "  - domain: example.test".into(),
        format!("    file: {d}/example.test.zone"),
        "    journal-content: none".into(),
    ]
    .join("\n");
    std::fs::write(dir.join("knot.conf"), conf)?;
    let child = Command::new("knotd")
        .arg("-c")
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("knot.log"))?)
        .spawn()
        .context("starting knotd")?;
    Ok(Killed(child))
}

/// Waits until `port` answers `name` with NOERROR (dig), so a run never measures a start-up.
fn wait_answering(port: u16, name: &str) -> Result<()> {
    for _ in 0..600 {
        let out = Command::new("dig")
            .args([
                "+time=1",
                "+tries=1",
                "-p",
                &port.to_string(),
                "@127.0.0.1",
                name,
            ])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains("status: NOERROR") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing answers {name} on port {port}")
}

/// One dnsperf run's figures.
struct Run {
    qps: f64,
    completed: f64,
    /// The response codes line.
    codes: String,
}

/// One dnsperf run.
fn dnsperf(port: u16, queries: &Path, seconds: u32, extra: &[&str]) -> Result<Run> {
    let out = Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-l",
            &seconds.to_string(),
        ])
        .arg("-d")
        .arg(queries)
        .args(["-c", "4", "-q", "200"])
        .args(extra)
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let qps = text
        .lines()
        .find(|l| l.contains("Queries per second:"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .with_context(|| format!("no rate in dnsperf output:\n{text}"))?;
    let completed = text
        .lines()
        .find(|l| l.contains("Queries completed:"))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .with_context(|| format!("no completed count in dnsperf output:\n{text}"))?;
    let codes = text
        .lines()
        .find(|l| l.contains("Response codes:"))
        .map(|l| {
            l.trim()
                .trim_start_matches("Response codes:")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    Ok(Run {
        qps,
        completed,
        codes,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let missing: Vec<_> = ["dnsperf", "knotd", "dig"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED: the dnsperf benchmark needs {missing:?} (Debian packages dnsperf, knot, bind9-dnsutils)"
        );
        return Ok(());
    }
    let seconds: u32 = env_or("DNSPERF_SECONDS", 10);
    let runs: usize = env_or("DNSPERF_RUNS", 3);
    let services: usize = env_or("DNS_BENCH_SERVICES", 10_000);
    let cluster = Cluster {
        services,
        headless: services / 10,
    };
    let endpoints = cluster.headless * ENDPOINTS_PER_HEADLESS;
    let dir = tempfile::tempdir()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let knot_port = free_port()?;
    let ours_port = free_port()?;

    // Our zone first, measured alone: RSS before and after loading it.
    let rss_before = rss_mib();
    let mut zone = Zone::new(ZoneConfig::default());
    let started = std::time::Instant::now();
    cluster.load(&mut zone)?;
    let load_time = started.elapsed();
    let forwarder = Forwarder::new(ForwarderConfig {
        upstreams: vec![SocketAddr::from(([127, 0, 0, 1], knot_port))],
        ..ForwarderConfig::default()
    });
    let dns = Arc::new(Dns::new(zone, forwarder, vec!["127.0.0.0/8".parse()?]));
    dns.mark_synced();
    let rss_loaded = rss_mib();

    std::fs::write(dir.path().join("cluster.local.zone"), cluster.zone_file())?;
    std::fs::write(dir.path().join("example.test.zone"), external_zone_file())?;
    let cluster_queries = dir.path().join("cluster.txt");
    std::fs::write(&cluster_queries, cluster.query_file(50_000))?;
    let external_queries = dir.path().join("external.txt");
    std::fs::write(&external_queries, external_query_file())?;

    let knot = start_knot(dir.path(), knot_port)?;
    let knot_pid = knot.0.id().to_string();
    let _tasks = runtime.block_on(async {
        // One UDP socket per worker thread, as Knot's `udp-workers: 2`.
        let udp = bind_udp(SocketAddr::from(([127, 0, 0, 1], ours_port)), UDP_SOCKETS)?;
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", ours_port)).await?;
        let mut tasks: Vec<_> = udp
            .into_iter()
            .map(|socket| tokio::spawn(Arc::clone(&dns).serve_udp(socket)))
            .collect();
        tasks.push(tokio::spawn(Arc::clone(&dns).serve_tcp(tcp)));
        anyhow::Ok(tasks)
    })?;
    let probe = format!(
        "{}.{}.svc.cluster.local",
        cluster.name(services - 1),
        Cluster::namespace(services - 1)
    );
    if let Err(error) = wait_answering(knot_port, &probe) {
        let log = std::fs::read_to_string(dir.path().join("knot.log")).unwrap_or_default();
        bail!("{error:#}; knotd's log:\n{log}");
    }
    wait_answering(ours_port, &probe)?;
    // Fill our cache with every external name once (Knot has them in memory already).
    dnsperf(ours_port, &external_queries, 30, &["-n", "1"])?;

    println!(
        "dnsperf over loopback: {services} services ({} headless x {ENDPOINTS_PER_HEADLESS} endpoints = {endpoints} endpoints), {runs} runs of {seconds} s, medians",
        cluster.headless
    );
    let mut rows = Vec::new();
    for (what, file, ours_label) in [
        ("cluster names", &cluster_queries, "switchyard zone"),
        (
            "cached external names",
            &external_queries,
            "switchyard forwarder+cache -> knot",
        ),
    ] {
        let (mut ours, mut knot) = (Vec::new(), Vec::new());
        // Microseconds of CPU per query answered.
        let (mut ours_cpu, mut knot_cpu) = (Vec::new(), Vec::new());
        let (mut ours_codes, mut knot_codes) = (String::new(), String::new());
        for run in 0..runs {
            // Alternate who goes first: the machine's noise drifts.
            let order = if run % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for is_ours in order {
                let (port, pid) = if is_ours {
                    (ours_port, "self".to_string())
                } else {
                    (knot_port, knot_pid.clone())
                };
                let cpu_before = cpu_seconds(&pid)?;
                let run = dnsperf(port, file, seconds, &[])?;
                let cpu_per_query =
                    (cpu_seconds(&pid)? - cpu_before) * 1e6 / run.completed.max(1.0);
                if is_ours {
                    ours.push(run.qps);
                    ours_cpu.push(cpu_per_query);
                    ours_codes = run.codes;
                } else {
                    knot.push(run.qps);
                    knot_cpu.push(cpu_per_query);
                    knot_codes = run.codes;
                }
            }
        }
        let (ours, knot) = (median(ours), median(knot));
        let cpu = (median(ours_cpu), median(knot_cpu));
        rows.push((what, ours_label, ours, ours_codes, knot, knot_codes, cpu));
    }
    println!(
        "{:<24} {:>14} {:>14} {:>8}",
        "queries", "switchyard q/s", "knotd q/s", "ratio"
    );
    for (what, label, ours, ours_codes, knot, knot_codes, (ours_cpu, knot_cpu)) in &rows {
        println!(
            "{what:<24} {ours:>14.0} {knot:>14.0} {:>8.2}",
            ours / knot.max(1.0)
        );
        println!(
            "    CPU per query: switchyard {ours_cpu:.2} us, knotd {knot_cpu:.2} us (knotd/switchyard {:.2})",
            knot_cpu / ours_cpu.max(f64::MIN_POSITIVE)
        );
        println!("    {label}: {ours_codes}");
        println!("    knotd: {knot_codes}");
    }
    let pods_and_services = (endpoints + services) as f64;
    println!(
        "memory: switchyard process RSS {rss_loaded:.1} MiB with the zone loaded ({:.1} MiB for the zone, loaded in {load_time:?}); CoreDNS formula (pods + services) x 0.00086 + 49 = {:.1} MB",
        rss_loaded - rss_before,
        pods_and_services * 0.00086 + 49.0
    );
    if let Ok(out) = Command::new("ps")
        .args(["-o", "rss=", "-p", &knot_pid])
        .output()
    {
        let kib: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0);
        println!(
            "memory: knotd RSS {:.1} MiB with the same records",
            kib / 1024.0
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
