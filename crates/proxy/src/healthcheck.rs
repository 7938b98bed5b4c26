//! `healthCheckNodePort` servers for `externalTrafficPolicy: Local` services: load balancers
//! probe every node and send traffic only to nodes answering 200, i.e. with local endpoints.
//! Body and status codes as kube-proxy's (pkg/proxy/healthcheck/service_health.go):
//! `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":true}`, 200
//! when N > 0, else 503.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::model::ServiceKey;

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
