//! The `switchyard` binary: parses flags, sets up logging, wires the components and runs them.
//! Bad configuration exits with code 64 (EX_USAGE) and a one-line message before anything binds.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod dns;
mod echo;
mod flags;
mod node;
mod proxy;
mod shim;
mod up;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Kubernetes-style Service networking in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (the kube-apiserver role) over the embedded store, with the
    /// controllers (the kube-controller-manager role) under leader election.
    Server(ServerArgs),
    /// Run only the controllers, against any API server (several may run; one leads).
    ControllerManager(ControllerManagerArgs),
    /// Run the cluster DNS against any API server.
    Dns(dns::DnsArgs),
    /// Run a node agent (the kubelet role): register the node and run the pods bound to it.
    Node(node::NodeArgs),
    /// Run the service proxy (the kube-proxy role) against any API server.
    Proxy(proxy::ProxyArgs),
    /// Bring up a whole cluster on this machine: the API server, N nodes each in its own
    /// network namespace on one L2 segment, the DNS, a client namespace and the example workload.
    Up(up::UpArgs),
    /// Stop a cluster `up` started and remove its network namespaces (after a crash).
    Down(up::DownArgs),
    /// The built-in echo server run by the catalog's echo images inside pods.
    #[command(hide = true)]
    EchoServer(echo::EchoArgs),
}

#[derive(clap::Args)]
struct ControllerManagerArgs {
    /// Kubeconfig of the API server to run against.
    #[arg(long)]
    kubeconfig: PathBuf,
    #[command(flatten)]
    controllers: ControllerArgs,
    /// The pod network node pod CIDRs are carved from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
}

/// The controller manager's flags, named as kube-controller-manager's.
#[derive(clap::Args)]
struct ControllerArgs {
    /// Run the controllers only while holding the leader Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's Lease stays valid without renewal.
    #[arg(long, default_value = "15s", value_parser = flags::duration)]
    leader_elect_lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal.
    #[arg(long, default_value = "10s", value_parser = flags::duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to acquire or renew the Lease.
    #[arg(long, default_value = "2s", value_parser = flags::duration)]
    leader_elect_retry_period: Duration,
    /// A node whose heartbeat is older than this is marked not ready.
    #[arg(long, default_value = "40s", value_parser = flags::duration)]
    node_monitor_grace_period: Duration,
    /// How often node heartbeats are checked.
    #[arg(long, default_value = "5s", value_parser = flags::duration)]
    node_monitor_period: Duration,
    /// Pods of a node not ready for this long are deleted (and replaced elsewhere).
    #[arg(long, default_value = "5m", value_parser = flags::duration)]
    pod_eviction_timeout: Duration,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Run no controllers (API server only).
    #[arg(long)]
    no_controllers: bool,
}

impl ControllerArgs {
    fn config(&self, cluster_cidr: &str) -> switchyard_controllers::Config {
        switchyard_controllers::Config {
            leader_elect: self.leader_elect,
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
            node_monitor_grace_period: self.node_monitor_grace_period,
            node_monitor_period: self.node_monitor_period,
            pod_eviction_timeout: self.pod_eviction_timeout,
            cluster_cidr: cluster_cidr.to_string(),
            node_cidr_mask_size: self.node_cidr_mask_size,
            ..switchyard_controllers::Config::default()
        }
    }
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, certificates, tokens and admin.kubeconfig live.
    #[arg(long, default_value = "./switchyard-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// HTTPS port.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Address published in the `kubernetes` service endpoints (default: the bind address).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// CIDR ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Port range NodePorts are allocated from (`30000-32767`).
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// The pod network.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Seconds between compactions of the store's history.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
    #[command(flatten)]
    controllers: ControllerArgs,
}

fn main() -> ExitCode {
    // `switchyard container-shim ...`: single-threaded and silent, before everything else.
    if let Some(code) = shim::run_if_invoked() {
        return code;
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match cli.command {
        Command::Server(args) => runtime.block_on(server(args)),
        Command::ControllerManager(args) => runtime.block_on(controller_manager(args)),
        Command::Dns(args) => runtime.block_on(dns::run(args)),
        Command::Node(args) => runtime.block_on(node::run(args)),
        Command::Proxy(args) => runtime.block_on(proxy::run(args)),
        Command::Up(args) => runtime.block_on(up::up(args)),
        Command::Down(args) => runtime.block_on(up::down(args)),
        Command::EchoServer(args) => runtime.block_on(echo::run(args)),
    }
}

async fn server(args: ServerArgs) -> ExitCode {
    let controllers = args.controllers.config(&args.cluster_cidr);
    if let Err(e) = controllers.validate() {
        eprintln!("switchyard: {e}");
        return ExitCode::from(64);
    }
    let config = switchyard_apiserver::Config {
        data_dir: args.data_dir.clone(),
        bind_address: args.bind_address,
        secure_port: args.secure_port,
        advertise_address: args.advertise_address,
        service_cluster_ip_range: args.service_cluster_ip_range,
        service_node_port_range: args.service_node_port_range,
        cluster_cidr: args.cluster_cidr,
        compaction_interval: Duration::from_secs(args.compaction_interval_seconds.max(1)),
        ..Default::default()
    };
    let _lock = match switchyard_apiserver::lock_data_dir(&args.data_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(64);
        }
    };
    let store = match switchyard_store::sqlite::SqliteStore::open(&args.data_dir.join("store.db")) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!(
                "switchyard: cannot open the store in {}: {e}",
                args.data_dir.display()
            );
            return ExitCode::from(64);
        }
    };
    let running = match switchyard_apiserver::start(config, store).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(64);
        }
    };
    let manager = if args.controllers.no_controllers {
        None
    } else {
        let started = match switchyard_controllers::client_from_kubeconfig(
            &running.controller_manager_kubeconfig,
        )
        .await
        {
            Ok(client) => switchyard_controllers::ControllerManager::start(client, controllers),
            Err(e) => Err(e),
        };
        match started {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("switchyard: cannot start the controllers: {e:#}");
                return ExitCode::from(70);
            }
        }
    };
    eprintln!(
        "switchyard: API server at {}; try: kubectl --kubeconfig {} get svc",
        running.url(),
        running.kubeconfig.display()
    );
    wait_for_signal().await;
    drop(manager);
    drop(running);
    ExitCode::SUCCESS
}

async fn controller_manager(args: ControllerManagerArgs) -> ExitCode {
    let config = args.controllers.config(&args.cluster_cidr);
    if let Err(e) = config.validate() {
        eprintln!("switchyard: {e}");
        return ExitCode::from(64);
    }
    let client = match switchyard_controllers::client_from_kubeconfig(&args.kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(64);
        }
    };
    let manager = match switchyard_controllers::ControllerManager::start(client, config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(64);
        }
    };
    eprintln!(
        "switchyard: controller manager running against {}",
        args.kubeconfig.display()
    );
    wait_for_signal().await;
    drop(manager);
    ExitCode::SUCCESS
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
