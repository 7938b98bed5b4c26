//! Test support shared by Switchyard's integration tests and benchmarks: an API server started
//! in-process (memory or SQLite store) or as a child `switchyard server` process, clients built
//! from its kubeconfig, and a `kubectl` runner.
//!
//! Every server a test starts is stopped when its handle drops, also when the test fails: child
//! processes are killed by their own PID, never by name.

pub mod up;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use switchyard_apiserver::{Config, RunningServer};
use switchyard_store::SharedStore;

/// An API server running inside the test process, with the controller manager when started
/// by [`InProcessServer::start_with_controllers`]. Dropping it stops both.
pub struct InProcessServer {
    pub controllers: Option<switchyard_controllers::ControllerManager>,
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
}

impl InProcessServer {
    /// Start a server on a free loopback port over `store`, with `config` adjusted by `tweak`.
    pub async fn start_with(store: SharedStore, tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            secure_port: 0,
            ..Config::default()
        };
        tweak(&mut config);
        let server = switchyard_apiserver::start(config, store).await?;
        Ok(Self {
            controllers: None,
            server,
            dir,
        })
    }

    /// Start a server over `store` (adjusted by `tweak`) and a controller manager against it
    /// (adjusted by `tweak_controllers`; leader election on, as in `switchyard server`).
    pub async fn start_with_controllers(
        store: SharedStore,
        tweak: impl FnOnce(&mut Config),
        tweak_controllers: impl FnOnce(&mut switchyard_controllers::Config),
    ) -> Result<Self> {
        let mut this = Self::start_with(store, tweak).await?;
        let mut config = switchyard_controllers::Config::default();
        tweak_controllers(&mut config);
        let client = this.controller_manager_client().await?;
        this.controllers = Some(switchyard_controllers::ControllerManager::start(
            client, config,
        )?);
        Ok(this)
    }

    /// Start a server over a fresh memory store with the default configuration.
    pub async fn start() -> Result<Self> {
        Self::start_with(
            Arc::new(switchyard_store::memory::MemoryStore::new()),
            |_| {},
        )
        .await
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.server.kubeconfig
    }

    /// A kube-rs client authenticated as the controller manager (`system:kube-controller-manager`).
    pub async fn controller_manager_client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.server.controller_manager_kubeconfig).await
    }

    /// A kube-rs client authenticated as the admin (client certificate).
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(self.kubeconfig()).await
    }
}

pub use switchyard_controllers::client_from_kubeconfig;

/// A `switchyard server` child process. Killed (SIGKILL, by PID) when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl ServerProcess {
    /// Start `binary server --data-dir DATA_DIR --secure-port 0 EXTRA...` and wait until it
    /// serves. Fails with the server's own message if it exits first.
    pub fn start(binary: &Path, data_dir: &Path, extra: &[&str]) -> Result<Self> {
        let mut child = Command::new(binary)
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--secure-port", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("switchyard: API server at ") {
                        break rest.split(';').next().unwrap_or("").to_string();
                    }
                    seen.push(line);
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "switchyard server exited before serving:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    /// Kill the server with SIGKILL and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The kubectl to test with: `$KUBECTL`, else `kubectl` on PATH. `None` (with a loud message on
/// stderr) when there is none, so tests can skip; CI installs it, see scripts/test.
pub fn kubectl_path() -> Option<PathBuf> {
    let candidate = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"));
    match Command::new(&candidate)
        .args(["version", "--client"])
        .output()
    {
        Ok(o) if o.status.success() => Some(candidate),
        _ => {
            eprintln!("!!!!!! SKIPPING: kubectl not found ({}); install kubectl v1.32 to run this test !!!!!!", candidate.display());
            None
        }
    }
}

/// The result of one kubectl run.
#[derive(Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for KubectlOutput {
    fn from(o: Output) -> Self {
        Self {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs kubectl against one cluster.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(binary: PathBuf, kubeconfig: &Path) -> Self {
        Self {
            binary,
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s")
            .args(args);
        // A private cache directory: discovery and OpenAPI caches never leak between tests.
        c.env(
            "KUBECACHEDIR",
            self.kubeconfig.with_file_name("kubectl-cache"),
        );
        c
    }

    /// Run kubectl with `args`; blocking (use from `spawn_blocking` in async tests).
    pub fn run(&self, args: &[&str]) -> KubectlOutput {
        match self.command(args).output() {
            Ok(o) => o.into(),
            Err(e) => KubectlOutput {
                success: false,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }

    /// Run kubectl with `stdin` fed to it (for `apply -f -`).
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> KubectlOutput {
        use std::io::Write;
        let mut child = match self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return KubectlOutput {
                    success: false,
                    stdout: String::new(),
                    stderr: e.to_string(),
                }
            }
        };
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(stdin.as_bytes());
        }
        match child.wait_with_output() {
            Ok(o) => o.into(),
            Err(e) => KubectlOutput {
                success: false,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args);
        if !out.success {
            bail!(
                "kubectl {} failed:\n{}{}",
                args.join(" "),
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// Start a long-running kubectl (e.g. `get -w`), stdout piped. Killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Result<ChildGuard> {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(ChildGuard(child))
    }
}

/// A child process killed (by PID) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `check` until it returns `Some` or `timeout` passes. For waiting on asynchronous effects
/// (a watch event arriving), never as a substitute for an assertion.
/// Polls `check` every 20 ms until it returns `Some`, failing with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
