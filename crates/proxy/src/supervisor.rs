//! [`ProxySupervisor`]: a [`Proxy`] with kube-proxy's serving around it, reusable by
//! `switchyard proxy` and `switchyard node`: the health and metrics listeners (bound inside the
//! proxy's network namespace), the conntrack sysctls of that namespace, and optionally a
//! ConfigMap (kubeadm's kube-system/kube-proxy, key `config.conf`) as the configuration source.
//!
//! On a ConfigMap change the new text is parsed and resolved; if valid, the running proxy is
//! replaced by one with the new configuration. The old one stops without touching the rules,
//! and the new one's first sync replaces the whole table in one atomic transaction, so
//! established connections (conntrack entries) keep flowing and pods are untouched. If invalid,
//! one line is logged, `switchyard_proxy_config_reloads_total{result="rejected"}` counts it and
//! the running configuration stays. Listener addresses are bound once: a changed
//! `healthzBindAddress`/`metricsBindAddress` applies at the next start (logged).

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use switchyard_controllers::runtime::{Change, Informer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{
    ConfigError, KubeProxyConfiguration, NodeIdentity, ProxySettings, CONFIG_MAP_KEY,
};
use crate::proxier::{Observer, Proxy, ProxyMode};
use crate::status::{Renderer, Server, StatusServer, StatusSources};

/// Errors of starting the supervisor. Not retryable without a change of configuration.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A listener could not be bound in the proxy's namespace.
    #[error("cannot listen on {addr} ({server}): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        server: &'static str,
        #[source]
        source: switchyard_netns::Error,
    },
}

/// The ConfigMap a supervisor follows.
#[derive(Clone, Debug)]
pub struct ConfigMapSource {
    pub namespace: String,
    pub name: String,
    /// Who the proxy is (the flags that win over the file).
    pub identity: NodeIdentity,
    /// The `config.conf` text the running settings came from (a relist delivering the same
    /// text changes nothing).
    pub applied_text: String,
}

impl ConfigMapSource {
    /// Parses `NAMESPACE/NAME`.
    pub fn parse_reference(text: &str) -> Result<(String, String), String> {
        match text.trim().split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((ns.to_string(), name.to_string()))
            }
            _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
        }
    }
}

/// Reads the `config.conf` key of ConfigMap `namespace/name`.
pub async fn read_config_map(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String, ConfigError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let cm = api
        .get(name)
        .await
        .map_err(|e| ConfigError::Unavailable(format!("configmap {namespace}/{name}: {e}")))?;
    config_text(&cm).ok_or_else(|| {
        ConfigError::Parse(format!(
            "configmap {namespace}/{name} has no key {CONFIG_MAP_KEY}"
        ))
    })
}

fn config_text(cm: &ConfigMap) -> Option<String> {
    cm.data.as_ref()?.get(CONFIG_MAP_KEY).cloned()
}

fn mode_name(mode: ProxyMode) -> &'static str {
    match mode {
        ProxyMode::Nftables => "nftables",
        ProxyMode::Userspace(_) => "userspace",
    }
}

/// A running proxy with its listeners and, optionally, its ConfigMap watch. Dropping it stops
/// everything; the rules stay.
pub struct ProxySupervisor {
    sources: StatusSources,
    current: Arc<Mutex<Proxy>>,
    _servers: Vec<StatusServer>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ProxySupervisor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ProxySupervisor {
    /// Binds the listeners of `settings` inside the proxy's namespace, applies its conntrack
    /// sysctls there, and starts the proxy; with `config_map`, follows that ConfigMap.
    /// `renderers` add families to `/metrics` (e.g. the node agent's).
    pub async fn start(
        client: kube::Client,
        settings: ProxySettings,
        config_map: Option<ConfigMapSource>,
        renderers: Vec<Renderer>,
    ) -> Result<ProxySupervisor, SupervisorError> {
        let observer = Observer::new(settings.proxy.sync_period);
        let sources = StatusSources {
            metrics: observer.metrics.clone(),
            health: observer.health.clone(),
            renderers,
            mode: Arc::new(Mutex::new(mode_name(settings.proxy.mode))),
        };
        let netns = settings.proxy.netns.clone();
        let mut servers = Vec::new();
        for (addr, server, name) in [
            (settings.healthz_bind_address, Server::Health, "healthz"),
            (settings.metrics_bind_address, Server::Metrics, "metrics"),
        ] {
            let Some(addr) = addr else { continue };
            let listener = netns
                .bind_tcp(addr)
                .map_err(|source| SupervisorError::Bind {
                    addr,
                    server: name,
                    source,
                })?;
            servers.push(StatusServer::start(server, listener, sources.clone()));
        }
        apply_conntrack(&settings).await;
        for w in &settings.warnings {
            tracing::warn!("{w}");
        }
        let current = Arc::new(Mutex::new(Proxy::start_observed(
            client.clone(),
            settings.proxy.clone(),
            observer.clone(),
        )));
        let mut tasks = Vec::new();
        if let Some(source) = config_map {
            tasks.extend(watch_config_map(
                client,
                source,
                settings,
                observer,
                current.clone(),
                sources.mode.clone(),
            ));
        }
        Ok(ProxySupervisor {
            sources,
            current,
            _servers: servers,
            tasks,
        })
    }

    /// Whether the running proxy has applied its first full sync.
    pub fn is_synced(&self) -> bool {
        lock(&self.current).is_synced()
    }

    /// The metrics and health shared by every proxy this supervisor runs.
    pub fn sources(&self) -> &StatusSources {
        &self.sources
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn apply_conntrack(settings: &ProxySettings) {
    for failure in settings.conntrack.apply(&settings.proxy.netns).await {
        tracing::warn!(%failure, "cannot set conntrack sysctl; leaving it as it is");
    }
}

/// Watches the ConfigMap and swaps in a new proxy for each valid new text.
fn watch_config_map(
    client: kube::Client,
    source: ConfigMapSource,
    mut running: ProxySettings,
    observer: Observer,
    current: Arc<Mutex<Proxy>>,
    mode: Arc<Mutex<&'static str>>,
) -> Vec<JoinHandle<()>> {
    let informer: Informer<ConfigMap> =
        Informer::new(Api::namespaced(client.clone(), &source.namespace), false);
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<String>>();
    let name = source.name.clone();
    informer.on_change(move |change: Change<'_, ConfigMap>| {
        if change.object().metadata.name.as_deref() != Some(name.as_str()) {
            return;
        }
        let text = match change {
            Change::Deleted(_) => None,
            _ => Some(config_text(change.object()).unwrap_or_default()),
        };
        let _ = tx.send(text);
    });
    let watch = tokio::spawn(informer.run());
    let apply = tokio::spawn(async move {
        let mut applied_text = source.applied_text.clone();
        while let Some(text) = rx.recv().await {
            let reference = format!("{}/{}", source.namespace, source.name);
            let Some(text) = text else {
                tracing::warn!(configmap = %reference, "deleted; keeping the running configuration");
                continue;
            };
            if text == applied_text {
                continue;
            }
            let resolved = match KubeProxyConfiguration::parse(&text) {
                Ok(config) => config.resolve(&source.identity).await,
                Err(e) => Err(e),
            };
            let next = match resolved {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(configmap = %reference, "invalid configuration, keeping the running one: {e}");
                    observer.metrics.config_reloaded(false);
                    // The same text delivered again (a relist) is not counted twice.
                    applied_text = text;
                    continue;
                }
            };
            if next.healthz_bind_address != running.healthz_bind_address
                || next.metrics_bind_address != running.metrics_bind_address
            {
                tracing::warn!(configmap = %reference, "listener addresses change at the next start");
            }
            if next.conntrack != running.conntrack {
                apply_conntrack(&next).await;
            }
            for w in &next.warnings {
                tracing::warn!(configmap = %reference, "{w}");
            }
            observer.health.set_timeout(next.proxy.sync_period * 2);
            observer.health.queued();
            *lock(&mode) = mode_name(next.proxy.mode);
            // The old proxy stops (rules stay); the new one replaces the table atomically.
            let proxy = Proxy::start_observed(client.clone(), next.proxy.clone(), observer.clone());
            drop(std::mem::replace(&mut *lock(&current), proxy));
            tracing::info!(configmap = %reference, mode = mode_name(next.proxy.mode), "applied a new configuration");
            observer.metrics.config_reloaded(true);
            running = next;
            applied_text = text;
        }
    });
    vec![watch, apply]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_map_references_are_namespace_slash_name() {
        assert_eq!(
            ConfigMapSource::parse_reference("kube-system/kube-proxy"),
            Ok(("kube-system".into(), "kube-proxy".into()))
        );
        for bad in ["kube-proxy", "/x", "x/", "a/b/c", ""] {
            assert!(ConfigMapSource::parse_reference(bad).is_err(), "{bad}");
        }
    }
}
