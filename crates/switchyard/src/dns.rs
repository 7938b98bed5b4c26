//! `switchyard dns`: the cluster DNS against any API server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::wait_for_signal;

#[derive(clap::Args)]
pub struct DnsArgs {
    /// Kubeconfig of the API server to watch.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Address to answer on (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:53")]
    listen: std::net::SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// TTL of cluster records, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Pod records: disabled, insecure or verified.
    #[arg(long, default_value = "insecure")]
    pods: String,
    /// Upstream resolvers for other names (repeatable; default: the host's resolv.conf).
    #[arg(long = "upstream")]
    upstreams: Vec<std::net::SocketAddr>,
    /// Clients that may ask for names outside the cluster (comma-separated CIDRs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128,10.96.0.0/12,10.244.0.0/16"
    )]
    recursion_networks: Vec<String>,
}

pub async fn run(args: DnsArgs) -> ExitCode {
    use switchyard_dns::{forward, server, sources, zone};
    let domain = match format!("{}.", args.cluster_domain.trim_end_matches('.'))
        .parse::<hickory_proto::rr::Name>()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "switchyard: --cluster-domain {:?}: {e}",
                args.cluster_domain
            );
            return ExitCode::from(64);
        }
    };
    let pod_mode = match args.pods.as_str() {
        "disabled" => zone::PodMode::Disabled,
        "insecure" => zone::PodMode::Insecure,
        "verified" => zone::PodMode::Verified,
        other => {
            eprintln!("switchyard: --pods {other:?}: must be disabled, insecure or verified");
            return ExitCode::from(64);
        }
    };
    let mut networks = Vec::new();
    for n in &args.recursion_networks {
        match n.trim().parse::<ipnet::IpNet>() {
            Ok(net) => networks.push(net),
            Err(_) => {
                eprintln!("switchyard: --recursion-networks: {n:?} is not a CIDR");
                return ExitCode::from(64);
            }
        }
    }
    let upstreams = if args.upstreams.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        forward::upstreams_from_resolv_conf(&text)
    } else {
        args.upstreams.clone()
    };
    let client = match switchyard_controllers::client_from_kubeconfig(&args.kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(64);
        }
    };
    let udp = tokio::net::UdpSocket::bind(args.listen).await;
    let tcp = tokio::net::TcpListener::bind(args.listen).await;
    let (udp, tcp) = match (udp, tcp) {
        (Ok(u), Ok(t)) => (u, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("switchyard: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(64);
        }
    };
    let zone = zone::Zone::new(zone::ZoneConfig {
        domain,
        ttl: args.ttl,
        pod_mode,
    });
    let forwarder = forward::Forwarder::new(forward::ForwarderConfig {
        upstreams,
        ..Default::default()
    });
    let dns = Arc::new(server::Dns::new(zone, forwarder, networks));
    let tasks = [
        tokio::spawn(dns.clone().serve_udp(udp)),
        tokio::spawn(dns.clone().serve_tcp(tcp)),
        tokio::spawn(sources::run_watches(client, dns)),
    ];
    eprintln!(
        "switchyard: DNS on {} (UDP and TCP) for {}",
        args.listen, args.cluster_domain
    );
    wait_for_signal().await;
    for t in tasks {
        t.abort();
    }
    ExitCode::SUCCESS
}
