//! `switchyard proxy`: the service proxy (kube-proxy role, issue 5) against any API server.
//! Flags are named as kube-proxy's where one exists. Bad values exit 64 with one line before
//! anything connects; the API connection stays in this process's namespace, only the rules go
//! to `--netns`. `switchyard node` runs the same proxy with the same flags ([`ProxyFlags`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
}

/// The data-plane flags of the proxy, shared by `switchyard proxy` and `switchyard node`.
#[derive(clap::Args, Clone, Debug)]
pub struct ProxyFlags {
    /// The pod network; traffic to ClusterIPs from outside it is masqueraded.
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
    /// Period of full resyncs.
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
        let cluster_cidr = match self.cluster_cidr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) => match c.parse::<ipnet::IpNet>() {
                Ok(net) => Some(net.trunc()),
                Err(_) => return Err(usage(format!("--cluster-cidr: {c:?} is not a CIDR"))),
            },
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
            cluster_cidr,
            node_port_addresses,
            masquerade_all: self.masquerade_all,
            sync_period: self.sync_period.max(Duration::from_secs(1)),
            min_sync_period: self.min_sync_period,
            scheduler,
            mode,
        })
    }
}

pub async fn run(args: ProxyArgs) -> ExitCode {
    let node_name = args
        .hostname_override
        .clone()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(host_name);
    if node_name.is_empty() {
        return usage("cannot tell this node's name; pass --hostname-override");
    }
    let netns = match &args.netns {
        None => switchyard_netns::NetNs::current(),
        Some(name) => match switchyard_netns::NetNs::open(name) {
            Ok(ns) => ns,
            Err(e) => return usage(format!("--netns: {e}")),
        },
    };
    let config = match args.proxy.config(node_name.clone(), netns.clone()).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let client = match &args.kubeconfig {
        Some(path) => switchyard_controllers::client_from_kubeconfig(path).await,
        None => kube::Client::try_default()
            .await
            .map_err(anyhow::Error::from),
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => return usage(format!("{e:#}")),
    };
    let mode = mode_name(config.mode);
    let proxy = switchyard_proxy::Proxy::start(client, config);
    eprintln!(
        "switchyard: proxy ({mode}) for node {node_name} in namespace {}",
        netns.display_name()
    );
    wait_for_signal().await;
    drop(proxy);
    ExitCode::SUCCESS
}
