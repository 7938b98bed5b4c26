//! Network namespaces, the way every Switchyard data plane uses them.
//!
//! A node, a pod sandbox, a test's client: each lives in a named network namespace
//! (`/run/netns/NAME`, as `ip netns` makes them). A Switchyard process keeps its API connections in
//! the namespace it started in and reaches into others only where it must:
//!
//! - sockets are created on a short-lived thread that has entered the namespace ([`NetNs::run`]);
//!   a socket stays in the namespace it was created in, so the returned listener, UDP socket or
//!   stream is then used from the async runtime like any other;
//! - commands (`ip`, `nft`, `conntrack`, a container's process) run through `ip netns exec`
//!   ([`NetNs::command`], [`NetNs::ip`], [`NetNs::nft`]).
//!
//! [`NetNs::current`] stands for "the namespace this process runs in" (a real machine's node):
//! the same calls then act directly, without entering anything.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network namespace {name:?}: {source}")]
    Open { name: String, source: io::Error },
    #[error("cannot enter network namespace {name:?}: {source}")]
    Enter { name: String, source: nix::Error },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A network namespace: a named one, or the one this process runs in.
#[derive(Clone, Debug)]
pub struct NetNs {
    inner: Option<Arc<Named>>,
}

#[derive(Debug)]
struct Named {
    name: String,
    file: File,
}

impl NetNs {
    /// The namespace this process runs in.
    pub fn current() -> Self {
        NetNs { inner: None }
    }

    /// An existing named namespace.
    pub fn open(name: &str) -> Result<Self> {
        let file = File::open(Self::path_of(name)).map_err(|source| Error::Open {
            name: name.to_string(),
            source,
        })?;
        Ok(NetNs {
            inner: Some(Arc::new(Named {
                name: name.to_string(),
                file,
            })),
        })
    }

    /// Create the named namespace (with its loopback up), or open it if it exists.
    pub async fn create(name: &str) -> Result<Self> {
        if !Self::exists(name) {
            run_checked(tokio::process::Command::new("ip").args(["netns", "add", name])).await?;
        }
        let ns = Self::open(name)?;
        ns.ip(&["link", "set", "lo", "up"]).await?;
        Ok(ns)
    }

    /// Delete the named namespace; deleting one that does not exist is not an error.
    pub async fn delete(name: &str) -> Result<()> {
        if !Self::exists(name) {
            return Ok(());
        }
        run_checked(tokio::process::Command::new("ip").args(["netns", "delete", name])).await?;
        Ok(())
    }

    /// Delete the named namespace from synchronous code (`Drop` guards).
    pub fn delete_blocking(name: &str) {
        if Self::exists(name) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    pub fn exists(name: &str) -> bool {
        Self::path_of(name).exists()
    }

    pub fn path_of(name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(name)
    }

    /// The namespace's name; `None` for the current namespace.
    pub fn name(&self) -> Option<&str> {
        self.inner.as_ref().map(|n| n.name.as_str())
    }

    /// For log lines: the name, or "current".
    pub fn display_name(&self) -> &str {
        self.name().unwrap_or("current")
    }

    /// Run `f` on a fresh thread inside the namespace and return what it returns. Sockets it
    /// creates stay in the namespace. For the current namespace `f` runs on the calling thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let Some(named) = &self.inner else {
            return Ok(f());
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&named.file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |source| Error::Enter {
                            name: named.name.clone(),
                            source,
                        },
                    )?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(Error::Io(io::Error::other(
                        "a thread entering a namespace panicked",
                    )))
                })
        })
    }

    /// A long-lived OS thread inside the namespace running `f` (packet sockets, blocking
    /// loops). Returns once the thread has entered the namespace.
    pub fn spawn_thread(
        &self,
        name: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>> {
        let named = self.inner.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if let Some(named) = named {
                    let entered =
                        nix::sched::setns(&named.file, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|source| Error::Enter {
                                name: named.name.clone(),
                                source,
                            });
                    let failed = entered.is_err();
                    let _ = tx.send(entered);
                    if failed {
                        return;
                    }
                } else {
                    let _ = tx.send(Ok(()));
                }
                f();
            })?;
        rx.recv()
            .map_err(|_| Error::Io(io::Error::other("a thread entering a namespace died")))??;
        Ok(handle)
    }

    /// A multi-threaded tokio runtime whose worker threads live inside the namespace: every
    /// socket its tasks create is the namespace's, with no per-socket cost. (Threads inherit the
    /// namespace of the thread that starts them; the runtime is built on a thread that entered.)
    /// Drop it with `shutdown_background` from async code.
    pub fn runtime(&self, name: &str, worker_threads: usize) -> Result<tokio::runtime::Runtime> {
        let name = name.to_string();
        Ok(self.run(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(worker_threads.max(1))
                .thread_name(name)
                .enable_all()
                .build()
        })??)
    }

    /// A TCP listener inside the namespace.
    pub fn bind_tcp(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
        let std = self.run(|| -> io::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })??;
        Ok(tokio::net::TcpListener::from_std(std)?)
    }

    /// A UDP socket inside the namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<tokio::net::UdpSocket> {
        let std = self.run(|| -> io::Result<std::net::UdpSocket> {
            let s = std::net::UdpSocket::bind(addr)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })??;
        Ok(tokio::net::UdpSocket::from_std(std)?)
    }

    /// A TCP connection made from inside the namespace, within `timeout`.
    pub async fn connect_tcp(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream> {
        let socket = self.run(|| match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        })??;
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(stream) => Ok(stream?),
            Err(_) => Err(Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            ))),
        }
    }

    /// `program` to be run inside the namespace (through `ip netns exec`, which also binds
    /// `/etc/netns/NAME/*` over `/etc/*` for it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        match self.name() {
            None => tokio::process::Command::new(program),
            Some(name) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", name]).arg(program);
                c
            }
        }
    }

    /// `ip ARGS` against the namespace; returns stdout, or the command's stderr as the error.
    pub async fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = tokio::process::Command::new("ip");
        if let Some(name) = self.name() {
            c.args(["-n", name]);
        }
        c.args(args);
        run_checked(&mut c).await
    }

    /// `nft ARGS` inside the namespace with `stdin` fed to it (for `nft -f -`).
    pub async fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut c = self.command("nft");
        c.args(args);
        match stdin {
            None => run_checked(&mut c).await,
            Some(input) => run_with_input(&mut c, input).await,
        }
    }
}

/// Run a command to completion; its stdout on success, its stderr (trimmed) as the error.
pub async fn run_checked(command: &mut tokio::process::Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| command_error(command, e.to_string()))?;
    finish(command, output)
}

/// Run a command with `input` on its stdin.
pub async fn run_with_input(command: &mut tokio::process::Command, input: &str) -> Result<String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| command_error(command, e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await?;
        stdin.shutdown().await?;
    }
    let output = child.wait_with_output().await?;
    finish(command, output)
}

fn finish(command: &tokio::process::Command, output: std::process::Output) -> Result<String> {
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = if stderr.trim().is_empty() {
        format!("exited with {}", output.status)
    } else {
        stderr.trim().to_string()
    };
    Err(command_error(command, message))
}

fn command_error(command: &tokio::process::Command, message: String) -> Error {
    let std = command.as_std();
    let mut text = std.get_program().to_string_lossy().into_owned();
    for a in std.get_args() {
        text.push(' ');
        text.push_str(&a.to_string_lossy());
    }
    Error::Command {
        command: text,
        message,
    }
}

/// An L2 segment: a bridge in a namespace of its own, to which other namespaces are attached
/// by veth pairs (the "LAN" of a test or of `switchyard up`).
#[derive(Clone, Debug)]
pub struct Segment {
    ns: NetNs,
    bridge: String,
}

impl Segment {
    /// The segment's bridge `br0` in the (created or existing) namespace `name`.
    pub async fn create(name: &str) -> Result<Segment> {
        let ns = NetNs::create(name).await?;
        let bridge = "br0".to_string();
        if ns.ip(&["link", "show", &bridge]).await.is_err() {
            ns.ip(&["link", "add", &bridge, "type", "bridge"]).await?;
        }
        ns.ip(&["link", "set", &bridge, "up"]).await?;
        Ok(Segment { ns, bridge })
    }

    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// Attach `host` as interface `iface` with address `cidr` (e.g. `192.168.67.11/24`); the
    /// bridge side is named `port` (≤15 characters). Idempotent: an existing `iface` is kept.
    pub async fn attach(&self, host: &NetNs, port: &str, iface: &str, cidr: &str) -> Result<()> {
        let Some(host_name) = host.name() else {
            return Err(Error::Io(io::Error::other(
                "a segment attaches named namespaces only",
            )));
        };
        if host.ip(&["link", "show", iface]).await.is_err() {
            // A port left over from an earlier attempt would block the name.
            let _ = self.ns.ip(&["link", "del", port]).await;
            self.ns
                .ip(&[
                    "link", "add", port, "type", "veth", "peer", "name", iface, "netns", host_name,
                ])
                .await?;
        }
        self.ns
            .ip(&["link", "set", port, "master", &self.bridge, "up"])
            .await?;
        let present = host.ip(&["-o", "addr", "show", "dev", iface]).await?;
        if !present.contains(&format!(" {cidr} ")) {
            host.ip(&["addr", "add", cidr, "dev", iface]).await?;
        }
        host.ip(&["link", "set", iface, "up"]).await?;
        Ok(())
    }
}

/// Deletes the named namespaces when dropped (tests and demos: cleanup also on failure).
#[derive(Debug, Default)]
pub struct NsGuard {
    names: Vec<String>,
}

impl NsGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Create `name` and delete it when the guard is dropped.
    pub async fn create(&mut self, name: &str) -> Result<NetNs> {
        self.names.push(name.to_string());
        NetNs::create(name).await
    }

    /// Delete `name` too when the guard is dropped.
    pub fn adopt(&mut self, name: &str) {
        self.names.push(name.to_string());
    }
}

impl Drop for NsGuard {
    /// Kills what still runs in each namespace (processes the test started there: pods,
    /// servers), then deletes it.
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            kill_processes_in(name);
            NetNs::delete_blocking(name);
        }
    }
}

/// SIGKILL every process whose network namespace is `name` (`ip netns pids`): for namespaces
/// this program made, whose processes are its own.
pub fn kill_processes_in(name: &str) {
    if !NetNs::exists(name) {
        return;
    }
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A namespace name unique to this process and call, within the 15-character limit of interface
/// names derived from it: `sy-<prefix><pid-and-counter>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{:x}{:x}", std::process::id() & 0xfffff, n);
    let mut name = format!("sy-{prefix}{tag}");
    name.truncate(15);
    name
}

/// Whether this process may create network namespaces (root with `ip` available); tests that
/// need namespaces skip with a loud message where it cannot.
pub fn can_create_namespaces() -> bool {
    nix::unistd::geteuid().is_root()
        && std::process::Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_and_commands_live_in_the_namespace() {
        if !can_create_namespaces() {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return;
        }
        let mut guard = NsGuard::new();
        let name = unique_name("t");
        let ns = guard.create(&name).await.expect("create");
        let listener = ns
            .bind_tcp("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Reachable from inside the namespace...
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        ns.connect_tcp(addr, Duration::from_secs(2))
            .await
            .expect("connect inside");
        accept.await.expect("join").expect("accept");
        // ...and not from this process's own namespace, whose loopback is another one.
        let outside = NetNs::current()
            .connect_tcp(addr, Duration::from_secs(2))
            .await;
        assert!(outside.is_err(), "the listener leaked out of the namespace");
        // Commands see the namespace's own interfaces: only lo.
        let links = ns.ip(&["-o", "link", "show"]).await.expect("ip link");
        assert_eq!(links.lines().count(), 1, "{links}");
        let hostns = ns
            .command("cat")
            .arg("/proc/net/dev")
            .output()
            .await
            .expect("run");
        let text = String::from_utf8_lossy(&hostns.stdout);
        assert!(text.contains("lo:") && text.lines().count() == 3, "{text}");
        // Errors carry the command and its message.
        let err = ns
            .ip(&["link", "set", "nope0", "up"])
            .await
            .expect_err("no such device");
        assert!(err.to_string().contains("nope0"), "{err}");
        drop(guard);
        assert!(!NetNs::exists(&name));
    }

    #[tokio::test]
    async fn a_runtime_inside_the_namespace() {
        if !can_create_namespaces() {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return;
        }
        let mut guard = NsGuard::new();
        let ns = guard.create(&unique_name("t")).await.expect("create");
        let inside = ns
            .bind_tcp("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = inside.local_addr().expect("addr");
        let rt = ns.runtime("sy-test", 1).expect("runtime");
        // A task on the namespace's runtime reaches the namespace's loopback directly.
        let connected = rt
            .spawn(async move { tokio::net::TcpStream::connect(addr).await.map(|_| ()) })
            .await
            .expect("join");
        assert!(connected.is_ok(), "{connected:?}");
        inside.accept().await.expect("accept");
        rt.shutdown_background();
    }

    #[test]
    fn unique_names_fit_interface_names() {
        let a = unique_name("pod-");
        let b = unique_name("pod-");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && a.starts_with("sy-pod-"), "{a}");
    }
}
