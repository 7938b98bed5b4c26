//! LoadBalancer failover, issue 7's acceptance: `switchyard up --nodes 3` with the example
//! workload (a 3-replica deployment behind `myapp-lb`, IP from the seeds' MetalLB pool). Ten
//! times: find the node announcing the IP (the client's neighbour entry), kill it (SIGKILL to
//! its agent and its link down), and time from the kill to the first request from the client
//! namespace that succeeds (each request started after the kill, 250 ms connect timeout). Then
//! the node comes back (`up` restarts its agent, the link goes up) before the next round.
//!
//! Run: `cargo bench -p switchyard --bench failover` (root; nftables, curl, kubectl).
//! Goal: p50 < 1 s, max < 2 s. For reference, published figures: MetalLB "within a few
//! seconds" (tens of seconds to minutes in its issue tracker), Cilium L2 announcements 10-20 s
//! with default lease settings.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_testkit::up::UpCluster;

const ROUNDS: usize = 10;
const NODES: u8 = 3;
/// Heartbeat warm-up of a returning agent plus a margin.
const SETTLE: Duration = Duration::from_secs(3);

fn main() {
    if !switchyard_netns::can_create_namespaces() {
        eprintln!("SKIPPED: needs root and iproute2");
        return;
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_switchyard"));
    let c = UpCluster::start(binary, NODES, &[]).expect("switchyard up --nodes 3");
    let k = c.kubectl().expect("kubectl");
    let lb_ip = wait(Duration::from_secs(60), "the LoadBalancer IP", || {
        let out = k
            .ok(&[
                "get",
                "svc",
                "myapp-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])
            .ok()?;
        (!out.trim().is_empty()).then(|| out.trim().to_string())
    });
    let url = format!("http://{lb_ip}/");
    let macs: Vec<String> = (1..=NODES).map(|i| mac(&c, &format!("node-{i}"))).collect();
    let mut times = Vec::new();
    for round in 1..=ROUNDS {
        // Steady state: five answers in a row through a freshly resolved neighbour entry (a
        // node that came back may have taken the IP back), then who announces.
        let _ = c.exec("client", &["ip", "neigh", "flush", "to", &lb_ip]);
        wait(Duration::from_secs(120), "steady answers", || {
            (0..5).all(|_| get(&c, &url)).then_some(())
        });
        let owner_mac = neighbour(&c, &lb_ip).expect("the client resolved the IP");
        let owner = macs
            .iter()
            .position(|m| *m == owner_mac)
            .expect("the announcing MAC is a node's")
            + 1;
        let node = format!("node-{owner}");
        let readies = c.log(&node).matches(" ready").count();
        let pid = c.pid_of(&format!("node {node}")).expect("the node's pid");

        let probe = Probe::start(c.ns("client"), url.clone());
        let killed = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        link(&c, &node, "down");
        let recovered = wait(Duration::from_secs(30), "a request after the kill", || {
            probe.first_success_after(killed)
        });
        probe.stop();
        let took = recovered.duration_since(killed);
        eprintln!("round {round:2}: killed {node}; first successful request after {took:?}");
        times.push(took);

        // Bring the node back and wait until its agent is ready again.
        link(&c, &node, "up");
        wait(Duration::from_secs(120), "the node's agent back", || {
            (c.log(&node).matches(" ready").count() > readies).then_some(())
        });
        // Its heartbeat warms up and the election settles (a returning node that ranks first
        // takes the IP back) before the next kill, so each round kills the real owner.
        std::thread::sleep(SETTLE);
    }
    times.sort();
    let p50 = times[(times.len() - 1) / 2];
    let max = times[times.len() - 1];
    println!(
        "\nLoadBalancer failover, {ROUNDS} rounds, {NODES} nodes (kill agent + link -> first successful request from the client)"
    );
    println!("| | p50 | max | goal |");
    println!("|---|---|---|---|");
    println!(
        "| Switchyard (heartbeat 150 ms, silent 600 ms = dead) | {:.2} s | {:.2} s | p50 < 1 s, max < 2 s |",
        p50.as_secs_f64(),
        max.as_secs_f64()
    );
    println!("| MetalLB L2 (published) | \"a few seconds\" | tens of s in its issues | |");
    println!("| Cilium L2 announcements (published, default lease) | 10-20 s | | |");
    println!(
        "goal {}",
        if p50 < Duration::from_secs(1) && max < Duration::from_secs(2) {
            "met"
        } else {
            "NOT met"
        }
    );
}

fn wait<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(c: &UpCluster, url: &str) -> bool {
    c.exec("client", &["curl", "-s", "-o", "/dev/null", "-m", "1", url])
        .status
        .success()
}

fn mac(c: &UpCluster, node: &str) -> String {
    let out = c.exec(node, &["cat", "/sys/class/net/eth0/address"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn neighbour(c: &UpCluster, ip: &str) -> Option<String> {
    let out = c.exec("client", &["ip", "neigh", "show", ip]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

fn link(c: &UpCluster, node: &str, state: &str) {
    let out = c.exec(node, &["ip", "link", "set", "eth0", state]);
    assert!(out.status.success(), "link {state}: {out:?}");
    if state == "up" {
        // The default route left with the link.
        let _ = c.exec(
            node,
            &["ip", "route", "replace", "default", "via", "192.168.67.2"],
        );
    }
}

/// Requests from the client, one after another, each started at a known instant.
struct Probe {
    stop: Arc<AtomicBool>,
    successes: Arc<Mutex<Vec<(Instant, Instant)>>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(ns: String, url: String) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let successes = Arc::new(Mutex::new(Vec::new()));
        let (flag, seen) = (stop.clone(), successes.clone());
        let worker = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let started = Instant::now();
                let ok = Command::new("ip")
                    .args(["netns", "exec", &ns, "curl", "-s", "-o", "/dev/null"])
                    .args(["--connect-timeout", "0.25", "-m", "0.5", &url])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    seen.lock().expect("lock").push((started, Instant::now()));
                }
            }
        });
        Probe {
            stop,
            successes,
            worker: Some(worker),
        }
    }

    /// When the first request started after `t` completed successfully.
    fn first_success_after(&self, t: Instant) -> Option<Instant> {
        self.successes
            .lock()
            .expect("lock")
            .iter()
            .find(|(started, _)| *started >= t)
            .map(|(_, done)| *done)
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
