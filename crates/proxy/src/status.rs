//! The proxy's two HTTP listeners, as kube-proxy's: the health server
//! (`--healthz-bind-address`, default `0.0.0.0:10256`) answers `/healthz` and `/livez` from
//! [`ProxierHealth`]; the metrics server (`--metrics-bind-address`, default `127.0.0.1:10249`)
//! answers `/metrics` (the proxy's [`Metrics`] and any extra renderers, e.g. the node agent's
//! families), `/healthz` (`ok` while serving) and `/proxyMode`.
//!
//! The listeners are bound by the caller (inside the node's network namespace, with
//! `NetNs::bind_tcp`), so several nodes on one machine never collide. This module never
//! decides health or counts anything; it only answers.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::healthcheck::ProxierHealth;
use crate::metrics::{Metrics, Probe};

/// Appends more Prometheus families to a `/metrics` answer.
pub type Renderer = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the servers answer from. Cheap to clone.
#[derive(Clone)]
pub struct StatusSources {
    pub metrics: Arc<Metrics>,
    pub health: Arc<ProxierHealth>,
    /// Extra `/metrics` families, rendered after the proxy's own.
    pub renderers: Vec<Renderer>,
    /// The data plane's name for `/proxyMode` (changes when a new configuration is applied).
    pub mode: Arc<Mutex<&'static str>>,
}

impl StatusSources {
    /// The running data plane: `nftables` or `userspace`.
    pub fn mode_name(&self) -> &'static str {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole `/metrics` text.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.metrics.render(&mut out);
        for render in &self.renderers {
            render(&mut out);
        }
        out
    }
}

/// Which of the two servers a listener runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Health,
    Metrics,
}

struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

fn answer(server: Server, sources: &StatusSources, path: &str) -> Answer {
    let json = |probe: Probe, a: crate::healthcheck::ProbeAnswer| {
        sources.metrics.probed(probe, a.code == 200);
        Answer {
            status: StatusCode::from_u16(a.code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            content_type: "application/json",
            body: a.body,
        }
    };
    let text = |status, body: String, content_type| Answer {
        status,
        content_type,
        body,
    };
    match (server, path) {
        (Server::Health, "/healthz") => json(Probe::Healthz, sources.health.healthz()),
        (Server::Health, "/livez") => json(Probe::Livez, sources.health.livez()),
        (Server::Metrics, "/metrics") => text(
            StatusCode::OK,
            sources.render_metrics(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (Server::Metrics, "/healthz") => {
            text(StatusCode::OK, "ok".into(), "text/plain; charset=utf-8")
        }
        (Server::Metrics, "/proxyMode") => text(
            StatusCode::OK,
            (*sources.mode.lock().unwrap_or_else(|e| e.into_inner())).to_string(),
            "text/plain; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "404 page not found\n".into(),
            "text/plain; charset=utf-8",
        ),
    }
}

/// Serves `server` on `listener` until dropped.
pub struct StatusServer {
    task: JoinHandle<()>,
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StatusServer {
    pub fn start(server: Server, listener: TcpListener, sources: StatusSources) -> Self {
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, ?server, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let sources = sources.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<_>| {
                        let a = answer(server, &sources, request.uri().path());
                        let mut response = Response::new(Full::new(Bytes::from(a.body)));
                        *response.status_mut() = a.status;
                        let headers = response.headers_mut();
                        headers.insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(a.content_type),
                        );
                        headers.insert(
                            "x-content-type-options",
                            hyper::header::HeaderValue::from_static("nosniff"),
                        );
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(error) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!(%error, ?server, "status connection ended");
                    }
                });
            }
        });
        StatusServer { task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sources() -> StatusSources {
        StatusSources {
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(ProxierHealth::new(Duration::from_secs(60))),
            renderers: vec![Arc::new(|out: &mut String| {
                out.push_str("node_agent_pods 3\n");
            })],
            mode: Arc::new(Mutex::new("nftables")),
        }
    }

    #[test]
    fn each_server_answers_its_own_paths() {
        let s = sources();
        let m = answer(Server::Metrics, &s, "/metrics");
        assert_eq!(m.status, StatusCode::OK);
        assert!(m
            .body
            .contains("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram"));
        assert!(m.body.ends_with("node_agent_pods 3\n"), "{}", m.body);
        assert_eq!(answer(Server::Metrics, &s, "/proxyMode").body, "nftables");
        assert_eq!(answer(Server::Metrics, &s, "/healthz").body, "ok");
        assert_eq!(
            answer(Server::Metrics, &s, "/livez").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            answer(Server::Health, &s, "/metrics").status,
            StatusCode::NOT_FOUND
        );
        // Not synced yet: healthz 503, livez 200; both probes counted.
        let h = answer(Server::Health, &s, "/healthz");
        assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.content_type, "application/json");
        assert_eq!(answer(Server::Health, &s, "/livez").status, StatusCode::OK);
        s.health.updated();
        assert_eq!(
            answer(Server::Health, &s, "/healthz").status,
            StatusCode::OK
        );
        let text = s.render_metrics();
        assert!(
            text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1\n"),
            "{text}"
        );
    }
}
