//! The `switchyard` binary: parses flags, sets up logging, wires the components and runs them.
//! Bad configuration exits with code 64 (EX_USAGE) and a one-line message before anything binds.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
    /// Run the API server (the kube-apiserver role) over the embedded store.
    Server(ServerArgs),
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
}

fn main() -> ExitCode {
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
    }
}

async fn server(args: ServerArgs) -> ExitCode {
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
    eprintln!(
        "switchyard: API server at {}; try: kubectl --kubeconfig {} get svc",
        running.url(),
        running.kubeconfig.display()
    );
    wait_for_signal().await;
    drop(running);
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
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
