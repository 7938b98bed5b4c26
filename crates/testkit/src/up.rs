//! A whole `switchyard up` cluster as a test fixture: started with a namespace prefix and a data
//! dir of its own (so several run side by side), stopped by its PID when dropped, and then
//! cleaned with `switchyard down` and by deleting every namespace carrying its prefix.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{kubectl_path, Kubectl};

/// A running `switchyard up`.
pub struct UpCluster {
    binary: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The namespace prefix, e.g. `sy-e1a2b0-`: the nodes are `<prefix>node-1`.., the client
    /// `<prefix>client`.
    pub prefix: String,
    pub nodes: u8,
}

impl UpCluster {
    /// Start `binary up --nodes N EXTRA...` and wait (up to 4 minutes) until it reports the
    /// cluster up. Fails with the tail of its output if it exits first.
    pub fn start(binary: &Path, nodes: u8, extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let prefix = {
            let mut p = switchyard_netns::unique_name("e");
            p.truncate(10);
            format!("{p}-")
        };
        let mut cluster = UpCluster {
            binary: binary.to_path_buf(),
            child: None,
            dir,
            prefix,
            nodes,
        };
        cluster.launch(extra)?;
        Ok(cluster)
    }

    fn output_path(&self) -> PathBuf {
        self.dir.path().join("up.out")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    /// kubectl against the cluster (`None`, with a loud message, when kubectl is missing).
    pub fn kubectl(&self) -> Option<Kubectl> {
        kubectl_path().map(|k| Kubectl::new(k, &self.kubeconfig()))
    }

    /// Everything `up` printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.output_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `<prefix><name>`: `ns("node-1")`, `ns("client")`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Run `args` inside the cluster namespace `name` (`node-1`, `client`, ...).
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {}: {e}", self.ns(name)))
    }

    /// (Re)start `up` on this cluster's data dir.
    pub fn launch(&mut self, extra: &[&str]) -> Result<()> {
        let out = std::fs::File::create(self.output_path())?;
        let child = Command::new(&self.binary)
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--nodes", &self.nodes.to_string()])
            .args(["--secure-port", "0", "--name-prefix", &self.prefix])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting switchyard up")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if self.output().contains("Switchyard is up") {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("switchyard up exited ({status}):\n{}", tail(&self.output()));
            }
            if Instant::now() > deadline {
                bail!(
                    "switchyard up not ready after 240s:\n{}",
                    tail(&self.output())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop `up` as Ctrl-C does (SIGINT) and wait for it to finish its cleanup.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("not running");
        };
        signal(child.id(), nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "switchyard up did not stop within 90s:\n{}",
                    tail(&self.output())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL `up` itself (a crash): its components keep running until `switchyard down`.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The PID of a component `up` runs, as its record names it ("the API server",
    /// "node node-1", "the DNS").
    pub fn pid_of(&self, what: &str) -> Option<u32> {
        let bytes = std::fs::read(self.data_dir().join("up.json")).ok()?;
        let record: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        record["processes"]
            .as_array()?
            .iter()
            .find(|p| p[1] == what)
            .and_then(|p| p[0].as_u64())
            .map(|p| p as u32)
    }

    /// The log of a component (`server`, `node-1`, `dns`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data_dir().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// The namespaces on this machine that carry this cluster's prefix.
    pub fn namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for UpCluster {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.stop() {
                eprintln!("{e:#}");
            }
        }
        // After a crash or a failed stop: `down` stops what the record names.
        let _ = Command::new(&self.binary)
            .arg("down")
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for name in self.namespaces() {
            switchyard_netns::kill_processes_in(&name);
            switchyard_netns::NetNs::delete_blocking(&name);
        }
    }
}
