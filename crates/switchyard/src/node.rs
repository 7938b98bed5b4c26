//! `switchyard node`: the node agent (kubelet role) against any API server. Parses and checks
//! its flags (one-line message, exit 64 on a bad value), then runs
//! [`switchyard_node::agent::Agent`] until SIGINT/SIGTERM. Stopping the agent leaves the pods
//! running; a new agent adopts them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::wait_for_signal;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// Kubeconfig of the API server.
    #[arg(long, required_unless_present = "cleanup")]
    kubeconfig: Option<PathBuf>,
    /// The Node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address (InternalIP); default: the first global IPv4 address in the node's
    /// network namespace.
    #[arg(long)]
    node_ip: Option<String>,
    /// Run the node's whole data plane inside this (existing) network namespace.
    #[arg(long)]
    netns: Option<String>,
    /// Nameservers for pods with dnsPolicy ClusterFirst (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.10")]
    cluster_dns: Vec<String>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// State: IP allocations, sandboxes, container records, logs.
    #[arg(long, default_value = "/var/lib/switchyard-node")]
    root_dir: PathBuf,
    /// An image catalog file (YAML) added to the built-in images.
    #[arg(long)]
    image_catalog: Option<PathBuf>,
    /// Where the kubelet endpoint (logs, exec) listens, in this process's namespace (default:
    /// NODE_IP:10250; with --netns, 127.0.0.1 on a free port).
    #[arg(long)]
    kubelet_listen: Option<std::net::SocketAddr>,
    /// Remove everything this node created (pod sandboxes and their processes, routes, the pod
    /// bridge, state in --root-dir) and exit; needs only --root-dir (and --netns).
    #[arg(long)]
    cleanup: bool,
    /// Run the service proxy (kube-proxy's role) for this node, programming the node's namespace.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    proxy: bool,
    /// Answer ARP for the LoadBalancer IPs this node announces (MetalLB's L2 mode), with
    /// heartbeats to the other nodes for sub-second failover.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    l2_announcer: bool,
    #[command(flatten)]
    proxy_flags: crate::proxy::ProxyFlags,
}

/// `--cleanup`: tear down the pod network recorded in the root dir.
async fn cleanup(args: &NodeArgs) -> ExitCode {
    let netns = match &args.netns {
        Some(name) => match switchyard_netns::NetNs::open(name) {
            Ok(ns) => ns,
            Err(e) => return bad(format!("--netns {name}: {e}")),
        },
        None => switchyard_netns::NetNs::current(),
    };
    match switchyard_node::sandbox::PodNetwork::open_existing(netns, &args.root_dir).await {
        Ok(None) => {
            eprintln!(
                "switchyard: nothing to clean up in {}",
                args.root_dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Some(network)) => match network.teardown().await {
            Ok(()) => {
                eprintln!(
                    "switchyard: removed the pods and the pod network of {}",
                    args.root_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard: cleanup: {e}");
                ExitCode::from(70)
            }
        },
        Err(e) => {
            eprintln!("switchyard: cleanup: {e}");
            ExitCode::from(70)
        }
    }
}

/// The cluster CA of the kubeconfig's current cluster (inline or as a file), PEM.
fn kubeconfig_ca(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let context_name = kc.current_context.clone().unwrap_or_default();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .context("the current context names no cluster")?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .with_context(|| format!("cluster {cluster_name} not found"))?;
    if let Some(data) = &cluster.certificate_authority_data {
        use base64::Engine;
        return Ok(base64::engine::general_purpose::STANDARD.decode(data.trim())?);
    }
    let file = cluster
        .certificate_authority
        .as_ref()
        .context("the cluster has no certificate authority")?;
    std::fs::read(file).with_context(|| format!("reading {file}"))
}

/// The host name, as kubelet's default node name (lower-cased).
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// The first global-scope IPv4 address (else IPv6) of the node's namespace.
async fn detect_node_ip(netns: &switchyard_netns::NetNs) -> Option<IpAddr> {
    for family in ["-4", "-6"] {
        let out = netns
            .ip(&[family, "-o", "addr", "show", "scope", "global"])
            .await
            .ok()?;
        let found = out.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            fields.find(|f| *f == "inet" || *f == "inet6")?;
            fields.next()?.split('/').next()?.parse().ok()
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

fn bad(message: String) -> ExitCode {
    eprintln!("switchyard: {message}");
    ExitCode::from(64)
}

/// A DNS-1123 subdomain (what a Node name must be).
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub async fn run(args: NodeArgs) -> ExitCode {
    if args.cleanup {
        return cleanup(&args).await;
    }
    let Some(kubeconfig) = args.kubeconfig.clone() else {
        return bad("--kubeconfig is required".into());
    };
    let Some(node_name) = args.node_name.clone().or_else(host_name) else {
        return bad("--node-name: cannot determine the host name; pass --node-name".into());
    };
    if !valid_node_name(&node_name) {
        return bad(format!(
            "--node-name {node_name:?}: must be a DNS subdomain (lower case letters, digits, '-', '.')"
        ));
    }
    let mut cluster_dns = Vec::new();
    for s in &args.cluster_dns {
        match s.trim().parse::<IpAddr>() {
            Ok(ip) => cluster_dns.push(ip),
            Err(_) => return bad(format!("--cluster-dns: {s:?} is not an IP address")),
        }
    }
    let domain = args.cluster_domain.trim_end_matches('.').to_string();
    if domain.is_empty() || !valid_node_name(&domain) {
        return bad(format!(
            "--cluster-domain {:?}: not a DNS domain",
            args.cluster_domain
        ));
    }
    let netns = match &args.netns {
        Some(name) => match switchyard_netns::NetNs::open(name) {
            Ok(ns) => ns,
            Err(e) => return bad(format!("--netns {name}: {e}")),
        },
        None => switchyard_netns::NetNs::current(),
    };
    let node_ip =
        match &args.node_ip {
            Some(s) => match s.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return bad(format!("--node-ip: {s:?} is not an IP address")),
            },
            None => match detect_node_ip(&netns).await {
                Some(ip) => ip,
                None => return bad(
                    "--node-ip: no global address found in the node's namespace; pass --node-ip"
                        .into(),
                ),
            },
        };
    if let Some(file) = &args.image_catalog {
        if !file.is_file() {
            return bad(format!("--image-catalog {}: no such file", file.display()));
        }
    }
    let self_exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return bad(format!("cannot find the switchyard executable: {e}")),
    };
    let client = match switchyard_controllers::client_from_kubeconfig(&kubeconfig).await {
        Ok(c) => c,
        Err(e) => return bad(format!("--kubeconfig {}: {e:#}", kubeconfig.display())),
    };
    let client_ca_pem = match kubeconfig_ca(&kubeconfig) {
        Ok(pem) => pem,
        Err(e) => return bad(format!("--kubeconfig {}: {e:#}", kubeconfig.display())),
    };
    let listen = args.kubelet_listen.unwrap_or_else(|| {
        if args.netns.is_some() {
            std::net::SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            std::net::SocketAddr::new(node_ip, switchyard_api::node::DEFAULT_KUBELET_PORT)
        }
    });
    let config = switchyard_node::Config {
        node_name: node_name.clone(),
        node_ip,
        netns: args.netns.clone(),
        cluster_dns,
        cluster_domain: domain,
        root_dir: args.root_dir.clone(),
        image_catalog: args.image_catalog.clone(),
        self_exe,
        kubelet: Some(switchyard_node::KubeletEndpoint {
            listen,
            client_ca_pem,
        }),
    };
    let proxy_config = if args.proxy {
        match args
            .proxy_flags
            .config(node_name.clone(), netns.clone())
            .await
        {
            Ok(c) => Some(c),
            Err(code) => return code,
        }
    } else {
        None
    };
    let agent = match switchyard_node::agent::Agent::start(client.clone(), config).await {
        Ok(a) => a,
        Err(e) => return bad(format!("{e:#}")),
    };
    let proxy = match proxy_config {
        Some(config) => {
            if matches!(config.mode, switchyard_proxy::ProxyMode::Userspace(_)) {
                // The userspace proxy puts service IPs on the loopback: only the announcing
                // node may answer ARP for a LoadBalancer IP (strict ARP).
                let mut sysctl = netns.command("sysctl");
                sysctl.args(["-qw", "net.ipv4.conf.all.arp_ignore=1"]);
                if let Err(e) = switchyard_netns::run_checked(&mut sysctl).await {
                    return bad(format!("cannot set arp_ignore for the userspace proxy: {e}"));
                }
            }
            eprintln!(
                "switchyard: proxy ({}) for node {node_name}",
                crate::proxy::mode_name(config.mode)
            );
            Some(switchyard_proxy::Proxy::start(client.clone(), config))
        }
        None => None,
    };
    let announcer = if args.l2_announcer {
        let config = switchyard_node::announcer::AnnouncerConfig::new(&node_name, node_ip);
        match switchyard_node::announcer::Announcer::start(client.clone(), &netns, config) {
            Ok(a) => Some(a),
            Err(e) => return bad(format!("cannot start the L2 announcer: {e:#}")),
        }
    } else {
        None
    };
    eprintln!(
        "switchyard: node {node_name} ({node_ip}) starting{}",
        args.netns
            .as_deref()
            .map(|n| format!(" in network namespace {n}"))
            .unwrap_or_default()
    );
    tokio::select! {
        ready = agent.wait_ready() => match ready {
            Ok(()) => eprintln!("switchyard: node {node_name} ready"),
            Err(e) => {
                eprintln!("switchyard: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ = wait_for_signal() => return ExitCode::SUCCESS,
    }
    wait_for_signal().await;
    drop(announcer);
    drop(proxy);
    drop(agent);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_subdomains() {
        for ok in ["node-a", "n1.example.com", "a"] {
            assert!(valid_node_name(ok), "{ok}");
        }
        for bad in ["", "Node", "-a", "a-", "a..b", "a_b"] {
            assert!(!valid_node_name(bad), "{bad}");
        }
    }
}
