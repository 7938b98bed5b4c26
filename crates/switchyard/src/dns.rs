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
    /// Address of `/metrics`, `/healthz` and `/ready` (CoreDNS's `prometheus :9153`).
    #[arg(long, default_value = "127.0.0.1:9153")]
    metrics_listen: std::net::SocketAddr,
    /// Network namespace (by name, as `ip netns`) to open the DNS and metrics sockets in; the
    /// API connection stays in this process's namespace.
    #[arg(long)]
    netns: Option<String>,
    /// Register this instance as an endpoint of kube-system/kube-dns at this address (an
    /// EndpointSlice `kube-dns-<id>` and a Lease `switchyard-dns-<id>`, removed on shutdown).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
}

pub async fn run(args: DnsArgs) -> ExitCode {
    use switchyard_dns::{forward, metrics, registration, server, sources, zone};
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
    let netns = match &args.netns {
        None => switchyard_netns::NetNs::current(),
        Some(name) => match switchyard_netns::NetNs::open(name) {
            Ok(ns) => ns,
            Err(e) => {
                eprintln!("switchyard: --netns {name:?}: {e:#}");
                return ExitCode::from(64);
            }
        },
    };
    // One UDP socket per core on the same port (SO_REUSEPORT): the kernel spreads queries
    // over them and each is served by its own loop.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listen = args.listen;
    let udp = netns
        .run(move || server::reuse_port_sockets(listen, workers))
        .map_err(std::io::Error::other)
        .and_then(|sockets| sockets)
        .and_then(|sockets| {
            sockets
                .into_iter()
                .map(tokio::net::UdpSocket::from_std)
                .collect::<std::io::Result<Vec<_>>>()
        });
    let (udp, tcp, metrics_listener) = match (
        udp,
        netns.bind_tcp(args.listen).map_err(std::io::Error::other),
        netns.bind_tcp(args.metrics_listen),
    ) {
        (Ok(u), Ok(t), Ok(m)) => (u, t, m),
        (Err(e), _, _) | (_, Err(e), _) => {
            eprintln!("switchyard: cannot listen on {}: {e:#}", args.listen);
            return ExitCode::from(64);
        }
        (_, _, Err(e)) => {
            eprintln!(
                "switchyard: cannot listen on {}: {e:#}",
                args.metrics_listen
            );
            return ExitCode::from(64);
        }
    };
    // Port 0 asks for a free port; the endpoint must name the one we got.
    let dns_port = tcp.local_addr().map_or(args.listen.port(), |a| a.port());
    let metrics_port = metrics_listener
        .local_addr()
        .map_or(args.metrics_listen.port(), |a| a.port());
    let zone = zone::Zone::new(zone::ZoneConfig {
        domain,
        ttl: args.ttl,
        pod_mode,
    });
    let forwarder = forward::Forwarder::new(forward::ForwarderConfig {
        upstreams,
        ..Default::default()
    });
    let dns = Arc::new(
        server::Dns::new(zone, forwarder, networks)
            .with_server_label(switchyard_dns::metrics::server_label(args.listen)),
    );
    let registration = args.advertise_address.map(|address| {
        Arc::new(registration::Registration::new(
            client.clone(),
            registration::RegistrationConfig::for_address(address, dns_port, metrics_port),
        ))
    });
    let mut tasks: Vec<_> = udp
        .into_iter()
        .map(|socket| tokio::spawn(dns.clone().serve_udp(socket)))
        .collect();
    tasks.extend([
        tokio::spawn(dns.clone().serve_tcp(tcp)),
        tokio::spawn(metrics::serve_http(dns.clone(), metrics_listener)),
        tokio::spawn(sources::run_watches(client, dns.clone())),
    ]);
    if let Some(registration) = &registration {
        let registration = Arc::clone(registration);
        tasks.push(tokio::spawn(
            async move { registration.maintain(dns).await },
        ));
    }
    eprintln!(
        "switchyard: DNS on {} (UDP and TCP){} for {}, metrics on {}",
        args.listen,
        args.netns
            .as_deref()
            .map(|n| format!(" in netns {n}"))
            .unwrap_or_default(),
        args.cluster_domain,
        args.metrics_listen
    );
    wait_for_signal().await;
    for t in tasks {
        t.abort();
    }
    if let Some(registration) = registration {
        // Leave the Service's endpoints before exiting, so the proxy stops sending queries here
        // now rather than when the Lease expires.
        match tokio::time::timeout(std::time::Duration::from_secs(5), registration.deregister())
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("switchyard: removing the kube-dns endpoint: {e}"),
            Err(_) => eprintln!("switchyard: removing the kube-dns endpoint timed out"),
        }
    }
    ExitCode::SUCCESS
}
