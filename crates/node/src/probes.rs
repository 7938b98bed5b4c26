//! Readiness, liveness and startup probes (kubelet's `pkg/kubelet/prober`).
//!
//! - [`probe_once`]: one attempt of a probe's handler against a pod: `httpGet` (a GET from the
//!   node's namespace to `podIP:port` with the probe's headers and `User-Agent: kube-probe/1.33`;
//!   success on 200-399), `tcpSocket` (a connect from the node's namespace), `exec` (a command in
//!   the pod's sandbox; success on exit 0), each bounded by timeoutSeconds. Named ports resolve
//!   through the container's ports.
//! - [`Thresholds`]: the consecutive success/failure counting (successThreshold,
//!   failureThreshold) that turns attempts into a result.
//! - [`run_prober`]: the loop of one probe of one container (initialDelaySeconds,
//!   periodSeconds), sending each change of result. The agent starts liveness and readiness
//!   probers only once the startup probe (if any) succeeded, as kubelet does.
//!
//! Probes never change the container; the agent acts on the results.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchyard_netns::NetNs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sandbox::Sandbox;

/// The three probe kinds; they differ in their initial result and in what the agent does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Gates the container's `ready`.
    Readiness,
    /// Restarts the container on failure.
    Liveness,
    /// Gates liveness/readiness; restarts the container on failure.
    Startup,
}

/// The outcome of one probe attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The handler succeeded.
    Success,
    /// The handler failed, with why (kubelet puts this into the `Unhealthy` event).
    Failure(String),
}

/// Where a probe is sent.
#[derive(Clone)]
pub struct ProbeTarget {
    /// The node's network namespace (httpGet/tcpSocket connect from there, as kubelet does from
    /// the host).
    pub node_ns: NetNs,
    /// The pod's sandbox (its IP; exec runs inside it).
    pub sandbox: Sandbox,
    /// The container's declared ports (for named probe ports).
    pub ports: Vec<ContainerPort>,
    /// The container's environment (exec probes run with it).
    pub env: Vec<(String, String)>,
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("couldn't find port {s:?} in the container's ports"))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

fn timeout_of(probe: &Probe) -> Duration {
    Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64)
}

/// One attempt of `probe` against `target`.
pub async fn probe_once(probe: &Probe, target: &ProbeTarget) -> ProbeOutcome {
    let timeout = timeout_of(probe);
    let result = if let Some(http) = &probe.http_get {
        match resolve_port(&http.port, &target.ports) {
            Err(e) => Err(e),
            Ok(port) => {
                let host = http
                    .host
                    .as_deref()
                    .and_then(|h| h.parse::<IpAddr>().ok())
                    .unwrap_or(target.sandbox.ip);
                let path = http.path.as_deref().unwrap_or("/");
                let headers: Vec<(String, String)> = http
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect();
                if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                    Err("only HTTP probes are supported".to_string())
                } else {
                    tokio::time::timeout(
                        timeout,
                        http_get(&target.node_ns, SocketAddr::new(host, port), path, &headers),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("timeout after {timeout:?}")))
                }
            }
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        match resolve_port(&tcp.port, &target.ports) {
            Err(e) => Err(e),
            Ok(port) => {
                let host = tcp
                    .host
                    .as_deref()
                    .and_then(|h| h.parse::<IpAddr>().ok())
                    .unwrap_or(target.sandbox.ip);
                let addr = SocketAddr::new(host, port);
                target
                    .node_ns
                    .connect_tcp(addr, timeout)
                    .await
                    .map(drop)
                    .map_err(|e| format!("dial tcp {addr}: {e}"))
            }
        }
    } else if let Some(exec) = &probe.exec {
        let argv = exec.command.clone().unwrap_or_default();
        match target.sandbox.exec(&argv, &target.env, timeout).await {
            Ok(out) if out.timed_out => Err(format!("command timed out after {timeout:?}")),
            Ok(out) if out.exit_code == 0 => Ok(()),
            Ok(out) => Err(format!(
                "command {argv:?} exited with {}: {}",
                out.exit_code,
                String::from_utf8_lossy(&out.stdout).trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Err("probe has no handler (grpc probes are not supported)".to_string())
    };
    match result {
        Ok(()) => ProbeOutcome::Success,
        Err(e) => ProbeOutcome::Failure(e),
    }
}

/// A minimal HTTP/1.1 GET; Ok for a status in 200..400 (kubelet follows redirects to the same
/// host; a 3xx counts as success either way).
async fn http_get(
    node_ns: &NetNs,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut stream = node_ns
        .connect_tcp(addr, Duration::from_secs(3600))
        .await
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("user-agent") {
        request.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if !has("accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    // Only the status line matters.
    while !buf.contains(&b'\n') {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response: {:?}", line.lines().next()))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

/// Consecutive-result counting: the result flips to success after `success_threshold`
/// successes in a row and to failure after `failure_threshold` failures in a row.
#[derive(Clone, Debug)]
pub struct Thresholds {
    success_threshold: u32,
    failure_threshold: u32,
    result: Option<bool>,
    last: Option<bool>,
    run: u32,
}

impl Thresholds {
    /// Thresholds of `probe` (defaults 1 and 3, as the API defaults them), starting from
    /// `initial` (kubelet: readiness starts failed, liveness succeeded, startup unknown).
    pub fn new(probe: &Probe, initial: Option<bool>) -> Thresholds {
        Thresholds {
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
            result: initial,
            last: None,
            run: 0,
        }
    }

    /// The current result (`None`: not known yet).
    pub fn result(&self) -> Option<bool> {
        self.result
    }

    /// Record one attempt; returns the new result when it changed.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run >= threshold && self.result != Some(success) {
            self.result = Some(success);
            return Some(success);
        }
        None
    }
}

/// Run `probe` against `target` until the receiver of `results` is dropped: after
/// initialDelaySeconds, one attempt every periodSeconds (default 10); each change of the result
/// is sent as `(kind, success, message)`.
pub async fn run_prober(
    kind: ProbeKind,
    probe: Probe,
    target: ProbeTarget,
    results: tokio::sync::mpsc::Sender<(ProbeKind, bool, String)>,
) {
    let initial = match kind {
        ProbeKind::Readiness => Some(false),
        ProbeKind::Liveness => Some(true),
        ProbeKind::Startup => None,
    };
    let mut counter = Thresholds::new(&probe, initial);
    let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    tokio::time::sleep(delay).await;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if results.is_closed() {
            return;
        }
        let outcome = probe_once(&probe, &target).await;
        let (success, message) = match outcome {
            ProbeOutcome::Success => (true, String::new()),
            ProbeOutcome::Failure(m) => (false, m),
        };
        if !success {
            tracing::debug!(?kind, pod = %target.sandbox.name, %message, "probe failed");
        }
        if let Some(result) = counter.record(success) {
            if results.send((kind, result, message)).await.is_err() {
                return;
            }
        }
        if kind == ProbeKind::Startup && counter.result() == Some(true) {
            // A startup probe stops once it succeeded.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).expect("probe")
    }

    #[test]
    fn thresholds_flip_after_consecutive_results() {
        let p = probe(json!({"successThreshold": 2, "failureThreshold": 3}));
        let mut t = Thresholds::new(&p, Some(false));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.result(), Some(false));
        // Defaults: 1 and 3; startup starts unknown.
        let mut t = Thresholds::new(&probe(json!({})), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some(true));
    }

    #[test]
    fn named_ports_resolve_through_the_container() {
        let ports: Vec<ContainerPort> =
            serde_json::from_value(json!([{"name": "http", "containerPort": 8080}]))
                .expect("ports");
        assert_eq!(resolve_port(&IntOrString::Int(80), &ports), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &ports),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("8081".into()), &ports),
            Ok(8081)
        );
        assert!(resolve_port(&IntOrString::String("nope".into()), &ports).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &ports).is_err());
    }
}
