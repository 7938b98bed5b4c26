//! Health as load balancers and the kubelet see it, as kube-proxy's pkg/proxy/healthcheck.
//!
//! - `healthCheckNodePort` servers for `externalTrafficPolicy: Local` services: load balancers
//!   probe every node and send traffic only to nodes answering 200, i.e. with local endpoints.
//!   Body and status codes as kube-proxy's (service_health.go):
//!   `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":true}`, 200
//!   when N > 0, else 503.
//! - [`ProxierHealth`], the state behind the proxy's own `/healthz` and `/livez` (proxy_health.go):
//!   unhealthy once a change has waited longer than the health timeout (2 × the sync period, as
//!   kube-proxy's server.go) without being programmed. Unlike kube-proxy, `/healthz` also answers
//!   503 until the first sync: a node whose rules are not yet programmed must not receive load
//!   balancer traffic. `/livez` follows kube-proxy (the start counts as a pending change, so a
//!   proxy that never syncs within the timeout is not live) and ignores node eligibility.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::model::ServiceKey;

/// Taint the cluster autoscaler puts on a node it is about to delete (kube-proxy's
/// `ToBeDeletedTaint`): such a node is not eligible for load balancer traffic.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// What the proxier's health depends on. Times are monotonic (`tokio::time::Instant`) for the
/// decision and wall clock for the body.
#[derive(Clone, Copy, Debug)]
pub struct HealthState {
    /// The last successful sync.
    pub last_updated: Option<(tokio::time::Instant, SystemTime)>,
    /// The oldest change not yet programmed (the start counts as one).
    pub oldest_pending: Option<tokio::time::Instant>,
    /// The node is neither being deleted nor tainted for deletion.
    pub node_eligible: bool,
}

/// A probe's answer: the status code and the JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub code: u16,
    pub body: String,
}

impl HealthState {
    /// kube-proxy's `isHealthy`: no change has waited `timeout` or longer.
    pub fn is_healthy(&self, now: tokio::time::Instant, timeout: Duration) -> bool {
        self.oldest_pending
            .is_none_or(|since| now.saturating_duration_since(since) < timeout)
    }

    /// `/healthz`: healthy, synced at least once, and the node eligible. As kube-proxy, a
    /// healthy answer reports `lastUpdated` as the current time.
    pub fn healthz(
        &self,
        now: tokio::time::Instant,
        wall: SystemTime,
        timeout: Duration,
    ) -> ProbeAnswer {
        let healthy =
            self.is_healthy(now, timeout) && self.last_updated.is_some() && self.node_eligible;
        let last = self.shown_last_updated(healthy, wall);
        ProbeAnswer {
            code: if healthy { 200 } else { 503 },
            body: format!(
                r#"{{"lastUpdated": "{}","currentTime": "{}", "nodeEligible": {}}}"#,
                go_time(last),
                go_time(Some(wall)),
                self.node_eligible
            ),
        }
    }

    /// The `lastUpdated` a probe reports: now when healthy (as kube-proxy), else the last
    /// successful update.
    fn shown_last_updated(&self, healthy: bool, wall: SystemTime) -> Option<SystemTime> {
        if healthy {
            Some(wall)
        } else {
            self.last_updated.map(|(_, w)| w)
        }
    }

    /// `/livez`: only whether changes get programmed in time.
    pub fn livez(
        &self,
        now: tokio::time::Instant,
        wall: SystemTime,
        timeout: Duration,
    ) -> ProbeAnswer {
        let healthy = self.is_healthy(now, timeout);
        let last = self.shown_last_updated(healthy, wall);
        ProbeAnswer {
            code: if healthy { 200 } else { 503 },
            body: format!(
                r#"{{"lastUpdated": "{}","currentTime": "{}"}}"#,
                go_time(last),
                go_time(Some(wall))
            ),
        }
    }
}

/// A time as Go's `time.Time.String()` prints a UTC time (kube-proxy's body format):
/// `2006-01-02 15:04:05.999999999 +0000 UTC`; `None` is Go's zero time.
pub fn go_time(at: Option<SystemTime>) -> String {
    let Some(at) = at else {
        return "0001-01-01 00:00:00 +0000 UTC".to_string();
    };
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = jiff::Timestamp::from_second(i64::try_from(since.as_secs()).unwrap_or(0))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let mut text = stamp.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = since.subsec_nanos();
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push_str(" +0000 UTC");
    text
}

/// The proxier's health, shared by the sync loop, the watch handlers and the health server.
/// It outlives a [`crate::Proxy`] replaced after a configuration change.
#[derive(Debug)]
pub struct ProxierHealth {
    state: Mutex<HealthState>,
    timeout: Mutex<Duration>,
}

impl ProxierHealth {
    /// Starting now: nothing synced yet, and the start pending (so a proxy that never syncs
    /// becomes unhealthy after `timeout`).
    pub fn new(timeout: Duration) -> Self {
        ProxierHealth {
            state: Mutex::new(HealthState {
                last_updated: None,
                oldest_pending: Some(tokio::time::Instant::now()),
                node_eligible: true,
            }),
            timeout: Mutex::new(timeout),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change arrived that needs a sync (kube-proxy's `QueuedUpdate`).
    pub fn queued(&self) {
        let mut s = self.lock();
        if s.oldest_pending.is_none() {
            s.oldest_pending = Some(tokio::time::Instant::now());
        }
    }

    /// The rules now reflect every change taken before the sync started (kube-proxy's
    /// `Updated`).
    pub fn updated(&self) {
        let mut s = self.lock();
        s.oldest_pending = None;
        s.last_updated = Some((tokio::time::Instant::now(), SystemTime::now()));
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    /// Sets the health timeout (2 × the sync period).
    pub fn set_timeout(&self, timeout: Duration) {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
    }

    pub fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> HealthState {
        *self.lock()
    }

    /// The answers of `/healthz` and `/livez` now.
    pub fn healthz(&self) -> ProbeAnswer {
        self.state().healthz(
            tokio::time::Instant::now(),
            SystemTime::now(),
            self.timeout(),
        )
    }

    pub fn livez(&self) -> ProbeAnswer {
        self.state().livez(
            tokio::time::Instant::now(),
            SystemTime::now(),
            self.timeout(),
        )
    }
}

/// Whether `node` may receive load balancer traffic: not being deleted, not tainted
/// [`TO_BE_DELETED_TAINT`] (kube-proxy's `SyncNode`).
pub fn node_eligible(node: &switchyard_api::k8s::api::core::v1::Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// The status code and JSON body kube-proxy answers for a service with `local_endpoints`.
pub fn response(service: &ServiceKey, local_endpoints: usize) -> (u16, String) {
    let body = serde_json::json!({
        "service": {"namespace": service.namespace, "name": service.name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string();
    (if local_endpoints > 0 { 200 } else { 503 }, body)
}

/// One health check server: answers every request with the service's current state.
pub struct HealthServer {
    state: Arc<Mutex<(ServiceKey, usize)>>,
    task: JoinHandle<()>,
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthServer {
    pub fn start(listener: tokio::net::TcpListener, service: ServiceKey, local: usize) -> Self {
        let state = Arc::new(Mutex::new((service, local)));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    // Read the request head (any path answers, as kube-proxy's does).
                    let mut buf = vec![0u8; 4096];
                    let mut len = 0;
                    while len < buf.len() {
                        match stream.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => len += n,
                        }
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let (code, body) = {
                        let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                        response(&s.0, s.1)
                    };
                    let reason = if code == 200 {
                        "OK"
                    } else {
                        "Service Unavailable"
                    };
                    let reply = format!(
                        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        HealthServer { state, task }
    }

    pub fn set_local_endpoints(&self, local: usize) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = local;
    }
}

/// The servers of all services with a `healthCheckNodePort`, by port.
#[derive(Default)]
pub struct HealthServers {
    servers: BTreeMap<u16, (ServiceKey, HealthServer)>,
}

impl HealthServers {
    /// Makes the running servers match `wanted` (port → service and local endpoint count),
    /// binding new ones with `bind`. Returns the ports that could not be bound.
    pub fn sync(
        &mut self,
        wanted: &BTreeMap<u16, (ServiceKey, usize)>,
        bind: impl Fn(u16) -> std::io::Result<tokio::net::TcpListener>,
    ) -> Vec<u16> {
        self.servers
            .retain(|port, (key, _)| wanted.get(port).is_some_and(|(k, _)| k == key));
        let mut failed = Vec::new();
        for (port, (key, local)) in wanted {
            if let Some((_, server)) = self.servers.get(port) {
                server.set_local_endpoints(*local);
                continue;
            }
            match bind(*port) {
                Ok(listener) => {
                    let server = HealthServer::start(listener, key.clone(), *local);
                    self.servers.insert(*port, (key.clone(), server));
                }
                Err(e) => {
                    tracing::warn!(port, service = %key, error = %e, "cannot serve healthCheckNodePort");
                    failed.push(*port);
                }
            }
        }
        failed
    }

    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn wall(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn go_time_prints_as_go_does() {
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            go_time(Some(wall(1_700_000_000))),
            "2023-11-14 22:13:20 +0000 UTC"
        );
        assert_eq!(
            go_time(Some(wall(1_700_000_000) + Duration::from_millis(250))),
            "2023-11-14 22:13:20.25 +0000 UTC"
        );
    }

    #[test]
    fn healthz_is_503_before_the_first_sync_and_200_after() {
        let start = tokio::time::Instant::now();
        let mut s = HealthState {
            last_updated: None,
            oldest_pending: Some(start),
            node_eligible: true,
        };
        let before = s.healthz(start + Duration::from_secs(1), wall(10), TIMEOUT);
        assert_eq!(before.code, 503);
        assert_eq!(
            before.body,
            r#"{"lastUpdated": "0001-01-01 00:00:00 +0000 UTC","currentTime": "1970-01-01 00:00:10 +0000 UTC", "nodeEligible": true}"#
        );
        // Still live while the start is younger than the timeout.
        assert_eq!(
            s.livez(start + Duration::from_secs(1), wall(10), TIMEOUT)
                .code,
            200
        );
        assert_eq!(s.livez(start + TIMEOUT, wall(70), TIMEOUT).code, 503);

        s.last_updated = Some((start + Duration::from_secs(2), wall(11)));
        s.oldest_pending = None;
        let after = s.healthz(start + Duration::from_secs(500), wall(510), TIMEOUT);
        assert_eq!(after.code, 200);
        // As kube-proxy: healthy means "updated now".
        assert!(after
            .body
            .starts_with(r#"{"lastUpdated": "1970-01-01 00:08:30 +0000 UTC""#));
    }

    #[test]
    fn a_change_waiting_for_the_timeout_makes_both_probes_fail() {
        let start = tokio::time::Instant::now();
        let s = HealthState {
            last_updated: Some((start, wall(0))),
            oldest_pending: Some(start + Duration::from_secs(5)),
            node_eligible: true,
        };
        let waited = |secs: u64| start + Duration::from_secs(5 + secs);
        assert_eq!(s.healthz(waited(59), wall(64), TIMEOUT).code, 200);
        let late = s.healthz(waited(60), wall(65), TIMEOUT);
        assert_eq!(late.code, 503);
        // The body then reports the last sync.
        assert!(late
            .body
            .starts_with(r#"{"lastUpdated": "1970-01-01 00:00:00 +0000 UTC""#));
        assert_eq!(s.livez(waited(60), wall(65), TIMEOUT).code, 503);
    }

    #[test]
    fn a_node_marked_for_deletion_fails_healthz_but_stays_live() {
        let now = tokio::time::Instant::now();
        let s = HealthState {
            last_updated: Some((now, wall(0))),
            oldest_pending: None,
            node_eligible: false,
        };
        let h = s.healthz(now, wall(1), TIMEOUT);
        assert_eq!(h.code, 503);
        assert!(h.body.ends_with(r#""nodeEligible": false}"#), "{}", h.body);
        assert_eq!(s.livez(now, wall(1), TIMEOUT).code, 200);

        let mut node = switchyard_api::k8s::api::core::v1::Node::default();
        assert!(node_eligible(&node));
        node.spec = Some(switchyard_api::k8s::api::core::v1::NodeSpec {
            taints: Some(vec![switchyard_api::k8s::api::core::v1::Taint {
                key: TO_BE_DELETED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(!node_eligible(&node));
    }

    async fn get(port: u16) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn answers_200_with_local_endpoints_and_503_without() {
        let key = ServiceKey::new("default", "web");
        let mut servers = HealthServers::default();
        let listener = std::sync::Mutex::new(Some(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        ));
        let port = listener
            .lock()
            .expect("lock")
            .as_ref()
            .expect("listener")
            .local_addr()
            .expect("addr")
            .port();
        let wanted = BTreeMap::from([(port, (key.clone(), 2))]);
        let failed = servers.sync(&wanted, |_| {
            listener
                .lock()
                .expect("lock")
                .take()
                .ok_or_else(|| std::io::Error::other("bound once"))
        });
        assert!(failed.is_empty());
        let reply = get(port).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with(
            r#"{"service":{"namespace":"default","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        ), "{reply}");
        // Same service, no local endpoints any more: the running server answers 503.
        let wanted = BTreeMap::from([(port, (key.clone(), 0))]);
        servers.sync(&wanted, |_| {
            Err(std::io::Error::other("no rebind expected"))
        });
        let reply = get(port).await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(reply.contains(r#""localEndpoints":0"#), "{reply}");
        // Gone from the wanted set: stopped.
        servers.sync(&BTreeMap::new(), |_| Err(std::io::Error::other("unused")));
        assert!(servers.ports().is_empty());
    }
}
