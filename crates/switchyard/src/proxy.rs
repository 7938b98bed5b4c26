//! `switchyard proxy`: the service proxy (kube-proxy role, issue 5) against any API server.
//! Flags are named as kube-proxy's where one exists. Bad values exit 64 with one line before
//! anything connects; the API connection stays in this process's namespace, only the rules go
//! to `--netns`, and the health and metrics listeners are bound inside `--netns` too.
//! `switchyard node` runs the same proxy with the same flags ([`ProxyFlags`]); the
//! configuration sources and listeners ([`ProxySourceFlags`]) are ready for it to flatten too.
//!
//! Precedence, as kube-proxy's options.go: with `--config` (or `--config-map`) the file decides
//! every setting and the data-plane and listener flags are ignored; `--hostname-override` still
//! wins over the file's `hostnameOverride`, and `--kubeconfig` over its
//! `clientConnection.kubeconfig`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use switchyard_proxy::config::{
    parse_bind_address, ConfigError, KubeProxyConfiguration, NodeIdentity, ProxySettings,
    HEALTHZ_PORT, METRICS_PORT,
};
use switchyard_proxy::supervisor::{read_config_map, ConfigMapSource};

use crate::{flags, wait_for_signal};

#[derive(clap::Args)]
pub struct ProxyArgs {
    /// Kubeconfig of the API server to watch (default: in-cluster or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    hostname_override: Option<String>,
    /// Program the nftables of this named network namespace (default: this process's).
    #[arg(long)]
    netns: Option<String>,
    #[command(flatten)]
    proxy: ProxyFlags,
    #[command(flatten)]
    sources: ProxySourceFlags,
}

/// Where the proxy's configuration comes from, and where it serves health and metrics.
#[derive(clap::Args, Clone, Debug)]
pub struct ProxySourceFlags {
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1, YAML or JSON). As
    /// kube-proxy: the file decides every setting and the data-plane and listener flags are
    /// ignored; --hostname-override wins over its hostnameOverride, --kubeconfig over its
    /// clientConnection.kubeconfig. Unknown fields are errors.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Follow ConfigMap NAMESPACE/NAME (key config.conf, as kubeadm's kube-system/kube-proxy):
    /// read at start like --config; on each change a valid configuration replaces the running
    /// proxy (rules swapped atomically, connections keep flowing), an invalid one is logged and
    /// the running one kept.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    config_map: Option<String>,
    /// IP:PORT of the health server (/healthz, /livez) inside the proxy's namespace; an IP alone
    /// gets port 10256; empty disables. Ignored with --config/--config-map.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: String,
    /// IP:PORT of the metrics server (/metrics, /proxyMode) inside the proxy's namespace; an IP
    /// alone gets port 10249; empty disables. Ignored with --config/--config-map.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: String,
}

/// The data-plane flags of the proxy, shared by `switchyard proxy` and `switchyard node`.
#[derive(clap::Args, Clone, Debug)]
pub struct ProxyFlags {
    /// The pod network, one CIDR or a dual-stack pair ("10.244.0.0/16,fd00:10:244::/56");
    /// traffic to ClusterIPs from outside it is masqueraded.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// NodePorts answer on this node's addresses inside these CIDRs (comma separated; default:
    /// the Node's InternalIP addresses).
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// Masquerade all traffic sent to service addresses.
    #[arg(long)]
    masquerade_all: bool,
    /// Data plane: nftables or userspace (default: nftables when `nft` is available).
    #[arg(long, default_value = "")]
    proxy_mode: String,
    /// Endpoint choice: random (kube-proxy's), rr (round robin), sh (source hash), or lc (least
    /// connections, userspace only).
    #[arg(long, default_value = "random")]
    ipvs_scheduler: String,
    /// Longest interval between syncs (kube-proxy's --sync-period); the table is rebuilt whole hourly.
    #[arg(long, default_value = "30s", value_parser = flags::duration)]
    sync_period: Duration,
    /// Minimum time between syncs (a burst of changes within it is one sync).
    #[arg(long, default_value = "1s", value_parser = flags::duration)]
    min_sync_period: Duration,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("switchyard: {message}");
    ExitCode::from(64)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default()
}

/// The name of a proxy mode, for log lines.
pub fn mode_name(mode: switchyard_proxy::ProxyMode) -> &'static str {
    match mode {
        switchyard_proxy::ProxyMode::Nftables => "nftables",
        switchyard_proxy::ProxyMode::Userspace(_) => "userspace",
    }
}

impl ProxyFlags {
    /// Check the flags and build the proxy's configuration for `node_name`, programming
    /// `netns`. Picks the nftables data plane when `nft` runs (unless told otherwise). On bad
    /// input: the exit code, after a one-line message.
    pub async fn config(
        &self,
        node_name: String,
        netns: switchyard_netns::NetNs,
    ) -> Result<switchyard_proxy::ProxyConfig, ExitCode> {
        let explicit_mode = match self.proxy_mode.trim() {
            "" => None,
            m @ ("nftables" | "userspace") => Some(m.to_string()),
            other => {
                return Err(usage(format!(
                    "--proxy-mode {other:?}: must be nftables or userspace"
                )))
            }
        };
        let least_connections = self.ipvs_scheduler.trim() == "lc";
        let scheduler: switchyard_proxy::Scheduler = if least_connections {
            switchyard_proxy::Scheduler::default()
        } else {
            match self.ipvs_scheduler.parse() {
                Ok(s) => s,
                Err(e) => return Err(usage(format!("--ipvs-scheduler: {e}"))),
            }
        };
        let cluster_cidrs = match self.cluster_cidr.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(c) => switchyard_proxy::config::parse_cluster_cidrs(c)
                .map_err(|e| usage(format!("--cluster-cidr: {e}")))?,
        };
        let mut node_port_addresses = Vec::new();
        for a in self
            .nodeport_addresses
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
        {
            match a.parse::<ipnet::IpNet>() {
                Ok(net) => node_port_addresses.push(net.trunc()),
                Err(_) => return Err(usage(format!("--nodeport-addresses: {a:?} is not a CIDR"))),
            }
        }
        let have_nft = netns.nft(&["--version"], None).await;
        let userspace = match (explicit_mode.as_deref(), &have_nft) {
            (Some("userspace"), _) => true,
            (Some(_), Err(e)) => {
                eprintln!("switchyard: nft is needed for --proxy-mode nftables: {e}");
                return Err(ExitCode::from(69));
            }
            (_, Ok(_)) => false,
            (None, Err(e)) => {
                eprintln!("switchyard: nft is not available ({e}); using the userspace proxy");
                true
            }
        };
        let mode = if userspace {
            use switchyard_proxy::userspace::Balance;
            switchyard_proxy::ProxyMode::Userspace(match self.ipvs_scheduler.trim() {
                "lc" => Balance::LeastConnections,
                "rr" => Balance::RoundRobin,
                "sh" => Balance::SourceHash,
                _ => Balance::Random,
            })
        } else if least_connections {
            return Err(usage(
                "--ipvs-scheduler lc: least connections needs --proxy-mode userspace",
            ));
        } else {
            switchyard_proxy::ProxyMode::Nftables
        };
        Ok(switchyard_proxy::ProxyConfig {
            node_name,
            netns,
            cluster_cidrs,
            node_port_addresses,
            masquerade_all: self.masquerade_all,
            sync_period: self.sync_period.max(Duration::from_secs(1)),
            min_sync_period: self.min_sync_period,
            scheduler,
            mode,
        })
    }
}

/// A configuration error as one line: 64 for bad input, 69 when the data plane is missing.
fn config_error(source: &str, e: &ConfigError) -> ExitCode {
    eprintln!("switchyard: {source}: {e}");
    match e {
        ConfigError::Unavailable(_) => ExitCode::from(69),
        ConfigError::Parse(_) | ConfigError::Invalid { .. } => ExitCode::from(64),
    }
}

impl ProxySourceFlags {
    /// Settings from `--config`, or from `flags` and the listener flags; `None` with
    /// `--config-map`, which is read once a client exists
    /// ([`ProxySourceFlags::config_map_settings`]).
    pub async fn settings(
        &self,
        flags: &ProxyFlags,
        identity: &NodeIdentity,
    ) -> Result<Option<ProxySettings>, ExitCode> {
        if self.config.is_some() && self.config_map.is_some() {
            return Err(usage(
                "--config and --config-map: give one configuration source",
            ));
        }
        if self.config_map.is_some() {
            // Checked before connecting.
            self.config_map_reference()?;
            return Ok(None);
        }
        if let Some(path) = &self.config {
            let source = format!("--config {}", path.display());
            let text =
                std::fs::read_to_string(path).map_err(|e| usage(format!("{source}: {e}")))?;
            let parsed =
                KubeProxyConfiguration::parse(&text).map_err(|e| config_error(&source, &e))?;
            return parsed
                .resolve(identity)
                .await
                .map(Some)
                .map_err(|e| config_error(&source, &e));
        }
        let healthz = parse_bind_address(&self.healthz_bind_address, HEALTHZ_PORT)
            .map_err(|e| usage(format!("--healthz-bind-address: {e}")))?;
        let metrics = parse_bind_address(&self.metrics_bind_address, METRICS_PORT)
            .map_err(|e| usage(format!("--metrics-bind-address: {e}")))?;
        let node_name = identity
            .hostname_override
            .clone()
            .map(|h| h.trim().to_lowercase())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| identity.host_name.clone());
        if node_name.is_empty() {
            return Err(usage(
                "cannot tell this node's name; pass --hostname-override",
            ));
        }
        let proxy = flags.config(node_name, identity.netns.clone()).await?;
        Ok(Some(ProxySettings {
            healthz_bind_address: healthz,
            metrics_bind_address: metrics,
            ..ProxySettings::new(proxy)
        }))
    }

    /// Start the proxy with `client`: with `settings` from [`Self::settings`], or (when that
    /// gave none) from the ConfigMap, which it then follows. `extra` metric families join its
    /// `/metrics`.
    pub async fn start(
        &self,
        settings: Option<ProxySettings>,
        client: kube::Client,
        identity: &NodeIdentity,
        extra: Vec<switchyard_proxy::status::Renderer>,
    ) -> Result<switchyard_proxy::ProxySupervisor, ExitCode> {
        let (settings, config_map) = match settings {
            Some(s) => (s, None),
            None => {
                let (s, source) = self.config_map_settings(&client, identity).await?;
                (s, Some(source))
            }
        };
        let (mode, node_name) = (
            mode_name(settings.proxy.mode),
            settings.proxy.node_name.clone(),
        );
        let netns = settings.proxy.netns.display_name().to_string();
        let supervisor =
            switchyard_proxy::ProxySupervisor::start(client, settings, config_map, extra)
                .await
                .map_err(|e| {
                    eprintln!("switchyard: {e}");
                    ExitCode::FAILURE
                })?;
        eprintln!("switchyard: proxy ({mode}) for node {node_name} in namespace {netns}");
        Ok(supervisor)
    }

    fn config_map_reference(&self) -> Result<Option<(String, String)>, ExitCode> {
        self.config_map
            .as_deref()
            .map(|r| {
                ConfigMapSource::parse_reference(r).map_err(|e| usage(format!("--config-map: {e}")))
            })
            .transpose()
    }

    /// The settings in `--config-map`'s ConfigMap and the source to follow (after
    /// [`ProxySourceFlags::settings`] answered `None`).
    pub async fn config_map_settings(
        &self,
        client: &kube::Client,
        identity: &NodeIdentity,
    ) -> Result<(ProxySettings, ConfigMapSource), ExitCode> {
        let Some((namespace, name)) = self.config_map_reference()? else {
            return Err(usage("--config-map: not given"));
        };
        let source = format!("--config-map {namespace}/{name}");
        let text = read_config_map(client.clone(), &namespace, &name)
            .await
            .map_err(|e| config_error(&source, &e))?;
        let settings = KubeProxyConfiguration::parse(&text)
            .map_err(|e| config_error(&source, &e))?
            .resolve(identity)
            .await
            .map_err(|e| config_error(&source, &e))?;
        Ok((
            settings,
            ConfigMapSource {
                namespace,
                name,
                identity: identity.clone(),
                applied_text: text,
            },
        ))
    }
}

pub async fn run(args: ProxyArgs) -> ExitCode {
    let netns = match &args.netns {
        None => switchyard_netns::NetNs::current(),
        Some(name) => match switchyard_netns::NetNs::open(name) {
            Ok(ns) => ns,
            Err(e) => return usage(format!("--netns: {e}")),
        },
    };
    let identity = NodeIdentity {
        hostname_override: args.hostname_override.clone(),
        host_name: host_name(),
        netns: netns.clone(),
    };
    let settings = match args.sources.settings(&args.proxy, &identity).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let kubeconfig = args
        .kubeconfig
        .clone()
        .or_else(|| settings.as_ref().and_then(|s| s.kubeconfig.clone()));
    let client = match &kubeconfig {
        Some(path) => switchyard_controllers::client_from_kubeconfig(path).await,
        None => kube::Client::try_default()
            .await
            .map_err(anyhow::Error::from),
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => return usage(format!("{e:#}")),
    };
    let supervisor = match args
        .sources
        .start(settings, client, &identity, Vec::new())
        .await
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    wait_for_signal().await;
    drop(supervisor);
    ExitCode::SUCCESS
}
