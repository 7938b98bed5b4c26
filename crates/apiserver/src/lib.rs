//! Switchyard's API server: the Kubernetes REST API over a [`switchyard_store::Store`].
//!
//! It owns HTTPS and authentication ([`server`], [`auth`], [`pki`]), the mapping of REST verbs to
//! store transactions with Kubernetes semantics ([`registry`], [`handlers`], [`watch`]), Service
//! IP and port allocation ([`alloc`]) and the objects every cluster starts with ([`bootstrap`]).
//! What objects mean (defaults, validation, patches, tables) lives in `switchyard_api`; this crate
//! must not grow its own copy of those rules.
//!
//! [`start`] runs a whole server from a [`Config`] and a store, so tests and `switchyard up` can
//! embed one.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_api::allocator::{IpRange, PortRange};
use switchyard_store::SharedStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod alloc;
pub mod auth;
pub mod bootstrap;
pub mod codec;
pub mod handlers;
pub mod kubelet;
pub mod namespaces;
pub mod pki;
pub mod registry;
pub mod request;
pub mod server;
pub mod watch;

/// Server configuration; flag names follow kube-apiserver's.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where certificates, tokens, the kubeconfig and (for the embedded store) the database live.
    pub data_dir: PathBuf,
    /// `--bind-address`: default 127.0.0.1, so a first start exposes nothing beyond the machine.
    pub bind_address: IpAddr,
    /// `--secure-port`: default 6443, as kube-apiserver. 0 picks a free port (tests).
    pub secure_port: u16,
    /// `--advertise-address`: the address written into the `kubernetes` endpoints; defaults to
    /// the bind address (or 127.0.0.1 when binding to all addresses).
    pub advertise_address: Option<IpAddr>,
    /// `--service-cluster-ip-range`: default 10.96.0.0/12, as kubeadm.
    pub service_cluster_ip_range: String,
    /// `--service-node-port-range`: default 30000-32767, as kube-apiserver.
    pub service_node_port_range: String,
    /// `--cluster-cidr`: the pod network, default 10.244.0.0/16 (kubeadm with flannel's default).
    pub cluster_cidr: String,
    /// How often history is compacted; kube-apiserver's `--etcd-compaction-interval` (5 min).
    pub compaction_interval: Duration,
    /// How often watches that asked for bookmarks get one (kube-apiserver: about a minute).
    pub bookmark_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./switchyard-data"),
            bind_address: IpAddr::from([127, 0, 0, 1]),
            secure_port: 6443,
            advertise_address: None,
            service_cluster_ip_range: "10.96.0.0/12".into(),
            service_node_port_range: "30000-32767".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            compaction_interval: Duration::from_secs(300),
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

/// A running server. Dropping it stops accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    /// The controller manager's kubeconfig (user `system:kube-controller-manager`).
    pub controller_manager_kubeconfig: PathBuf,
    pub admin_token: String,
    pub ca_cert_pem: String,
    pub store: SharedStore,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// `https://host:port` clients use.
    pub fn url(&self) -> String {
        match self.addr.ip() {
            IpAddr::V6(ip) => format!("https://[{ip}]:{}", self.addr.port()),
            IpAddr::V4(ip) => format!("https://{ip}:{}", self.addr.port()),
        }
    }

    /// Stop serving.
    pub fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Claim `data_dir` for this process: one server per data directory, since a second one would
/// overwrite the kubeconfig and race the first for the store. The lock lasts as long as the
/// returned file is open and is released by the OS when the process ends, even by `kill -9`.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let lock = std::fs::File::create(data_dir.join("lock"))
        .with_context(|| format!("creating the lock file in {}", data_dir.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "another switchyard server is using --data-dir {}; stop it or choose another directory",
            data_dir.display()
        );
    }
    Ok(lock)
}

/// Validate the configuration, prepare the data directory, bootstrap the store and start serving.
pub async fn start(config: Config, store: SharedStore) -> Result<RunningServer> {
    let ip_range = IpRange::parse(&config.service_cluster_ip_range).map_err(|e| {
        anyhow::anyhow!(
            "--service-cluster-ip-range {:?}: {e}",
            config.service_cluster_ip_range
        )
    })?;
    let port_range = PortRange::parse(&config.service_node_port_range).map_err(|e| {
        anyhow::anyhow!(
            "--service-node-port-range {:?}: {e}",
            config.service_node_port_range
        )
    })?;
    config
        .cluster_cidr
        .parse::<ipnet::IpNet>()
        .map_err(|e| anyhow::anyhow!("--cluster-cidr {:?}: {e}", config.cluster_cidr))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;

    let listener = TcpListener::bind(SocketAddr::new(config.bind_address, config.secure_port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.secure_port))?;
    let addr = listener.local_addr()?;
    let client_host = if config.bind_address.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        config.bind_address
    };
    let advertise = config.advertise_address.unwrap_or(client_host);

    let first_service_ip = ip_range.first().ok_or_else(|| {
        anyhow::anyhow!(
            "--service-cluster-ip-range {:?} has no usable address",
            config.service_cluster_ip_range
        )
    })?;
    let mut names = vec![
        client_host.to_string(),
        advertise.to_string(),
        first_service_ip.to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        if !h.trim().is_empty() {
            names.push(h.trim().to_string());
        }
    }
    let pki = pki::load_or_create(&config.data_dir.join("pki"), &names)?;
    let (tokens, admin_token) =
        auth::TokenFile::load_or_create(&config.data_dir.join("tokens.csv"))?;
    let url_host = match client_host {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let server_url = format!("https://{url_host}:{}", addr.port());
    let kubeconfig = pki::write_kubeconfig(
        &config.data_dir.join("admin.kubeconfig"),
        &server_url,
        &pki.ca_cert_pem,
        "admin",
        &pki.admin_cert_pem,
        &pki.admin_key_pem,
    )?;
    let controller_manager_kubeconfig = pki::write_kubeconfig(
        &config.data_dir.join("controller-manager.kubeconfig"),
        &server_url,
        &pki.ca_cert_pem,
        pki::CONTROLLER_MANAGER_USER,
        &pki.controller_manager_cert_pem,
        &pki.controller_manager_key_pem,
    )?;

    let services = Arc::new(alloc::ServiceAllocator::new(ip_range, port_range));
    let svc_prefix = switchyard_api::resources::find("", "v1", "services")
        .expect("services are served")
        .key_prefix();
    services
        .repair(&store, &svc_prefix)
        .await
        .context("repairing service allocations")?;
    let registry = Arc::new(registry::Registry::new(store.clone(), services));
    bootstrap::run(&registry, advertise, addr.port())
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?;

    let front = Arc::new(server::Front {
        registry: registry.clone(),
        tokens,
        server_address: format!("{advertise}:{}", addr.port()),
        bookmark_interval: config.bookmark_interval,
        kubelet: kubelet::KubeletClient::new(
            &pki.kubelet_client_cert_pem,
            &pki.kubelet_client_key_pem,
        )?,
    });
    let acceptor = server::tls_acceptor(&pki)?;
    let mut tasks = vec![tokio::spawn(server::accept_loop(listener, acceptor, front))];
    tasks.push(tokio::spawn(compactor(
        store.clone(),
        config.compaction_interval,
    )));
    tasks.push(tokio::spawn(namespaces::run(registry)));
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "API server listening");
    Ok(RunningServer {
        addr,
        kubeconfig,
        controller_manager_kubeconfig,
        admin_token,
        ca_cert_pem: pki.ca_cert_pem,
        store,
        tasks,
    })
}

/// Every interval, compact history to the revision seen one interval ago, so watchers that are
/// at most one interval behind can always resume (kube-apiserver's compaction does the same).
async fn compactor(store: SharedStore, interval: Duration) {
    let mut previous = None;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        if let Some(rev) = previous {
            if let Err(e) = store.compact(rev).await {
                tracing::warn!(error = %e, revision = rev, "compaction failed");
            } else {
                tracing::debug!(revision = rev, "compacted");
            }
        }
        previous = store.current_revision().await.ok();
    }
}
