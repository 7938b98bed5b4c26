//! Containers as processes inside a pod sandbox's namespaces.
//!
//! A container is started through `nsenter --target <infra pid> --net --uts --mount` (see
//! [`crate::sandbox`]), so it shares the pod's network namespace and sees the pod's hostname,
//! `/etc/resolv.conf` and `/etc/hosts`; it runs in its own process group (signals go to the whole
//! group) with exactly the environment it is given. Its parent is a [`crate::shim`] (entered the
//! same way) that outlives the agent and writes the container's exit status to a file, so an
//! agent that adopts the container after a restart still learns how it ended.
//!
//! Output goes through two named pipes (FIFOs) per container in the sandbox's state directory,
//! which the container holds open read-write: while the agent runs, it drains them into the CRI
//! log file ([`crate::logs`]); when the agent dies, the container keeps running (its writes never
//! fail with EPIPE; they only block once the pipe buffer is full) and a restarted agent reopens
//! the FIFOs ([`Container::adopt`]) and carries on. Container records (pid, start time, log
//! path) are persisted next to the FIFOs so a restarted agent can adopt running containers.
//!
//! Must never: signal a PID that is no longer the container (PID reuse is checked against the
//! shim's start time and parenthood), or leak the agent's own environment into a container.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The PATH a container gets when its env has none (the one Docker and containerd default to).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run (everything resolved by the agent).
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    /// Final: catalog + command/args + `$(VAR)` expansion done.
    pub argv: Vec<String>,
    /// Final, in order.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// From [`crate::logs::container_log_path`].
    pub log_path: PathBuf,
    /// The executable with the `container-shim` subcommand ([`crate::Config::self_exe`]).
    pub shim: PathBuf,
}

/// A running (or finished) container process.
#[derive(Debug)]
pub struct Container {
    /// The container's main process, leader of its process group.
    pid: u32,
    /// Its parent, the shim: it lives exactly as long as the container.
    shim_pid: u32,
    /// The shim's start time in clock ticks since boot (`/proc/PID/stat` field 22): tells the
    /// shim from a later process that reuses its PID.
    shim_start_ticks: u64,
    started_at: jiff::Timestamp,
    /// The container's state directory (FIFOs, record, the shim's exit file).
    dir: PathBuf,
    /// The shim, when this agent started it. `None` for an adopted one (not our child).
    child: Option<tokio::process::Child>,
    copier: Option<tokio::task::JoinHandle<()>>,
    exited: Option<ExitInfo>,
}

/// How a container ended (what the shim writes to its exit file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code; `128 + signal` when killed by a signal (as container runtimes report it);
    /// `-1` when unknown (the shim itself was killed, and this agent is not its parent).
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: jiff::Timestamp,
}

/// The result of [`crate::sandbox::Sandbox::exec`].
#[derive(Clone, Debug)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// What is persisted per container: enough to adopt it after an agent restart.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    /// The container's main process.
    pub pid: u32,
    /// Its shim, and the shim's start time (clock ticks since boot).
    pub shim_pid: u32,
    pub shim_start_ticks: u64,
    pub started_at: jiff::Timestamp,
    pub log_path: PathBuf,
}

impl Container {
    /// The container's main process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The shim supervising it.
    pub fn shim_pid(&self) -> u32 {
        self.shim_pid
    }

    pub fn started_at(&self) -> jiff::Timestamp {
        self.started_at
    }

    /// Whether the shim still runs (and is still the shim): the container has not ended.
    fn shim_alive(&self) -> bool {
        proc_start_ticks(self.shim_pid) == Some(self.shim_start_ticks) && !is_zombie(self.shim_pid)
    }

    /// Whether the process still runs (and is still the container).
    pub fn is_running(&self) -> bool {
        self.exited.is_none() && self.shim_alive()
    }

    /// Wait for the process to end (cancel-safe: dropping the future and calling again is fine).
    /// The exit status is the shim's exit file; failing that (the shim was killed), the shim's
    /// own status when it is this agent's child.
    pub async fn wait(&mut self) -> ExitInfo {
        if self.exited.is_none() {
            let shim_status = match &mut self.child {
                Some(child) => child
                    .wait()
                    .await
                    .map_err(|e| {
                        tracing::warn!(pid = self.shim_pid, error = %e, "cannot wait for a container's shim")
                    })
                    .ok(),
                None => {
                    // Not our child: poll until the PID is gone or is another process.
                    while self.shim_alive() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    None
                }
            };
            let info = crate::shim::read_exit_file(&self.dir)
                .or_else(|| shim_status.map(exit_info))
                .unwrap_or_else(unknown_exit);
            self.exited = Some(info);
        }
        // Let the last lines reach the log file before the exit is reported.
        if let Some(copier) = self.copier.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), copier).await;
        }
        self.exited.clone().expect("set above")
    }

    /// Signal the container's process group (SIGTERM, then SIGKILL on termination). A container
    /// that already ended is not an error.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        // The shim outlives the container and reaps it: while the shim runs and the PID is its
        // child, the PID is the container (running, or a zombie not reaped yet).
        if self.exited.is_some()
            || !self.shim_alive()
            || proc_parent(self.pid) != Some(self.shim_pid)
        {
            return Ok(());
        }
        match nix::sys::signal::killpg(pid_of(self.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// The record persisted for this container.
    pub fn record(&self, name: &str, log_path: &Path) -> ContainerRecord {
        ContainerRecord {
            name: name.to_string(),
            pid: self.pid,
            shim_pid: self.shim_pid,
            shim_start_ticks: self.shim_start_ticks,
            started_at: self.started_at,
            log_path: log_path.to_path_buf(),
        }
    }

    /// Take over a container started by an earlier agent: still running, or ended with the exit
    /// status its shim wrote (`None` if neither: nothing is known of it). Its output FIFOs in
    /// `dir` are drained into its log file again (for an ended one: what it wrote last).
    pub fn adopt(record: &ContainerRecord, dir: &Path) -> Option<Container> {
        let running = proc_start_ticks(record.shim_pid) == Some(record.shim_start_ticks)
            && !is_zombie(record.shim_pid);
        let exited = if running {
            None
        } else {
            Some(crate::shim::read_exit_file(dir)?)
        };
        let copier = open_receivers(dir)
            .map(|(out, err)| {
                crate::logs::spawn_log_copier(record.log_path.clone(), Some(out), Some(err))
            })
            .map_err(|e| {
                tracing::warn!(pid = record.pid, error = %e, "cannot reopen a container's output")
            })
            .ok();
        Some(Container {
            pid: record.pid,
            shim_pid: record.shim_pid,
            shim_start_ticks: record.shim_start_ticks,
            started_at: record.started_at,
            dir: dir.to_path_buf(),
            child: None,
            copier,
            exited,
        })
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

fn unknown_exit() -> ExitInfo {
    ExitInfo {
        exit_code: -1,
        signal: None,
        finished_at: jiff::Timestamp::now(),
    }
}

fn exit_info(status: std::process::ExitStatus) -> ExitInfo {
    let signal = status.signal();
    ExitInfo {
        exit_code: status.code().or(signal.map(|s| 128 + s)).unwrap_or(-1),
        signal,
        finished_at: jiff::Timestamp::now(),
    }
}

/// Field 22 of `/proc/PID/stat`: the process start time in clock ticks since boot.
pub(crate) fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Field 4 of `/proc/PID/stat`: the parent's PID.
fn proc_parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

pub(crate) fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// Where `nsenter` is, found once in the agent's own PATH (a container's PATH is its own).
fn nsenter() -> OsString {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("nsenter"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin/nsenter"))
        .into_os_string()
}

/// A command entering the namespaces of `infra_pid`, in its own process group, env cleared and
/// set to `env` plus PATH (if absent) and HOSTNAME (if absent).
pub(crate) fn enter_command(
    infra_pid: u32,
    hostname: &str,
    argv: &[String],
    env: &[(String, String)],
    working_dir: Option<&str>,
) -> io::Result<tokio::process::Command> {
    let Some((program, args)) = argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    };
    let mut c = tokio::process::Command::new(nsenter());
    c.arg(format!("--target={infra_pid}"))
        .args(["--net", "--uts", "--mount"])
        .arg(format!("--wdns={}", working_dir.unwrap_or("/")))
        .arg("--")
        .arg(program)
        .args(args)
        .env_clear()
        .process_group(0)
        .stdin(Stdio::null());
    if !env.iter().any(|(k, _)| k == "PATH") {
        c.env("PATH", DEFAULT_PATH);
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        c.env("HOSTNAME", hostname);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    Ok(c)
}

fn fifo_paths(fifo_dir: &Path) -> (PathBuf, PathBuf) {
    (fifo_dir.join("stdout"), fifo_dir.join("stderr"))
}

fn open_receivers(
    fifo_dir: &Path,
) -> io::Result<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Receiver,
)> {
    let (out, err) = fifo_paths(fifo_dir);
    let open = |p: &Path| tokio::net::unix::pipe::OpenOptions::new().open_receiver(p);
    Ok((open(&out)?, open(&err)?))
}

/// Start a container in the namespaces of `infra_pid`, under its shim; its output FIFOs and
/// exit file live in `dir`.
pub(crate) async fn start(
    infra_pid: u32,
    hostname: &str,
    dir: &Path,
    spec: &ContainerSpec,
) -> io::Result<Container> {
    tokio::fs::create_dir_all(dir).await?;
    // The shim runs with the container's working directory.
    let dir = std::path::absolute(dir)?;
    let (out_path, err_path) = fifo_paths(&dir);
    // Fresh FIFOs: an old one may still hold a dead container's last bytes.
    for p in [&out_path, &err_path] {
        remove_if_present(p)?;
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(io::Error::from)?;
    }
    // A restarted container writing to the same file is not finished, nor is its run.
    remove_if_present(&crate::logs::finished_marker_path(&spec.log_path))?;
    remove_if_present(&crate::shim::exit_file(&dir))?;
    let (out_rx, err_rx) = open_receivers(&dir)?;
    // The shim and the container hold their ends read-write: a write never fails for want of a
    // reader. The shim opens the stdout FIFO itself; its own stdout tells us the container's PID.
    let err_w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&err_path)?;
    let mut argv = vec![spec.shim.to_string_lossy().into_owned()];
    argv.extend(crate::shim::shim_args(&dir, &spec.argv));
    let mut child = {
        let mut c = enter_command(
            infra_pid,
            hostname,
            &argv,
            &spec.env,
            spec.working_dir.as_deref(),
        )?;
        c.stdout(Stdio::piped()).stderr(Stdio::from(err_w));
        c.spawn()?
        // The command (and our copy of the write end) dropped here.
    };
    let shim_pid = child
        .id()
        .ok_or_else(|| io::Error::other("the container's shim exited before it got a pid"))?;
    let shim_start_ticks = proc_start_ticks(shim_pid).unwrap_or(0);
    let pid = match shim_report(&mut child).await {
        Ok(pid) => pid,
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
    };
    let started_at = jiff::Timestamp::now();
    let copier = crate::logs::spawn_log_copier(spec.log_path.clone(), Some(out_rx), Some(err_rx));
    Ok(Container {
        pid,
        shim_pid,
        shim_start_ticks,
        started_at,
        dir,
        child: Some(child),
        copier: Some(copier),
        exited: None,
    })
}

/// The shim's one line: `started <pid>` or `error <message>`.
async fn shim_report(shim: &mut tokio::process::Child) -> io::Result<u32> {
    use tokio::io::AsyncBufReadExt as _;
    let stdout = shim
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("the container's shim has no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| io::Error::other("the container's shim did not report in 10s"))??
        .unwrap_or_default();
    if let Some(pid) = line.strip_prefix("started ") {
        return pid
            .parse()
            .map_err(|_| io::Error::other(format!("the container's shim said {line:?}")));
    }
    match line.strip_prefix("error ") {
        Some(message) => Err(io::Error::other(message.to_string())),
        None => Err(io::Error::other(format!(
            "the container's shim ended without starting it ({})",
            shim.wait().await?
        ))),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Run `argv` in the namespaces of `infra_pid`, collecting its output; the process group is
/// killed after `timeout`.
pub(crate) async fn exec(
    infra_pid: u32,
    hostname: &str,
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> io::Result<ExecOutput> {
    let mut c = enter_command(infra_pid, hostname, argv, env, None)?;
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = c.spawn()?;
    let pid = child.id();
    let output = child.wait_with_output();
    tokio::pin!(output);
    let (output, timed_out) = match tokio::time::timeout(timeout, &mut output).await {
        Ok(result) => (result?, false),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(pid_of(pid), Signal::SIGKILL);
            }
            // Output pipes close once the group is gone (a process that left the group and holds
            // them is not waited for long).
            match tokio::time::timeout(Duration::from_secs(5), &mut output).await {
                Ok(result) => (result?, true),
                Err(_) => {
                    return Ok(ExecOutput {
                        exit_code: 128 + Signal::SIGKILL as i32,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        timed_out: true,
                    })
                }
            }
        }
    };
    Ok(ExecOutput {
        exit_code: exit_info(output.status).exit_code,
        stdout: output.stdout,
        stderr: output.stderr,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_identify_this_process() {
        let me = std::process::id();
        let a = proc_start_ticks(me).expect("own stat");
        assert_eq!(proc_start_ticks(me), Some(a));
        assert!(!is_zombie(me));
        assert_eq!(proc_start_ticks(u32::MAX), None);
        assert_eq!(
            proc_parent(me),
            Some(nix::unistd::getppid().as_raw() as u32)
        );
    }

    #[test]
    fn exit_codes_follow_container_runtime_conventions() {
        let killed = exit_info(std::process::ExitStatus::from_raw(9));
        assert_eq!((killed.exit_code, killed.signal), (137, Some(9)));
        let code = exit_info(std::process::ExitStatus::from_raw(3 << 8));
        assert_eq!((code.exit_code, code.signal), (3, None));
    }
}
