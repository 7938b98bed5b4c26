//! The container shim: a tiny supervisor that is every container's parent (the role of
//! containerd's `containerd-shim`), so the container's exit status outlives the agent.
//!
//! The agent starts `<switchyard> container-shim DIR -- ARGV...` inside the pod's namespaces
//! ([`crate::runtime`]). The shim
//! - starts ARGV in its own process group, its stdout the FIFO `DIR/stdout` and its stderr the
//!   shim's own (the FIFO `DIR/stderr`, given by the agent);
//! - reports `started <pid>` (or `error <message>`) as one line on its stdout, a pipe to the
//!   agent that started it;
//! - forwards the signals it receives (TERM, INT, HUP, QUIT, USR1, USR2, WINCH) to the
//!   container's process group, so a signal to the shim reaches the container as it would have;
//! - when the container ends, writes its [`ExitInfo`] to `DIR/exit.json` (atomically) and exits
//!   with the same code. An agent that adopted the container after a restart reads that file:
//!   the exit code of a process that is not its child is known after all.
//!
//! Single-threaded on purpose: the signals are blocked and taken with `sigwait`, with no
//! handler and no other thread that could receive them.
//!
//! Must never: outlive its container, write anything to the container's output but its own
//! fatal errors, or leave the container's signals blocked (std resets the mask in the child).

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use crate::runtime::ExitInfo;

/// The subcommand of the `switchyard` binary that runs [`run`].
pub const SUBCOMMAND: &str = "container-shim";

/// Signals passed on to the container (what a terminal, an operator or the agent may send).
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Where the shim of a container whose state directory is `dir` writes the exit status.
pub fn exit_file(dir: &Path) -> PathBuf {
    dir.join("exit.json")
}

/// The exit status a shim wrote, if the container ended.
pub fn read_exit_file(dir: &Path) -> Option<ExitInfo> {
    let bytes = std::fs::read(exit_file(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The arguments the agent starts a shim with (after the executable).
pub fn shim_args(dir: &Path, argv: &[String]) -> Vec<String> {
    let mut args = vec![
        SUBCOMMAND.to_string(),
        dir.to_string_lossy().into_owned(),
        "--".to_string(),
    ];
    args.extend(argv.iter().cloned());
    args
}

/// Supervise `argv` with state directory `dir` until it ends; the process exit code is the
/// container's (`128 + signal` when killed by one).
pub fn run(dir: &Path, argv: &[OsString]) -> ExitCode {
    let Some((program, args)) = argv.split_first() else {
        report("error empty command");
        return ExitCode::from(64);
    };
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    for s in FORWARDED {
        signals.add(s);
    }
    // Blocked before the child exists, so neither its end nor a signal can be missed.
    if let Err(e) = signals.thread_block() {
        report(&format!("error cannot block signals: {e}"));
        return ExitCode::from(70);
    }
    let stdout = match std::fs::OpenOptions::new()
        .read(true) // read-write: a write never fails for want of a reader
        .write(true)
        .open(dir.join("stdout"))
    {
        Ok(f) => f,
        Err(e) => {
            report(&format!("error cannot open the container's stdout: {e}"));
            return ExitCode::from(70);
        }
    };
    let spawned = std::process::Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            report(&format!(
                "error exec {:?}: {e}",
                program.to_string_lossy().into_owned()
            ));
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let pid = child.id();
    report(&format!("started {pid}"));
    let status = loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => {}
                Err(e) => break Err(e),
            },
            Ok(signal) => {
                let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
                let _ = nix::sys::signal::killpg(group, signal);
            }
            Err(e) => break Err(std::io::Error::from(e)),
        }
    };
    let info = match status {
        Ok(status) => ExitInfo {
            exit_code: status
                .code()
                .or(status.signal().map(|s| 128 + s))
                .unwrap_or(-1),
            signal: status.signal(),
            finished_at: jiff::Timestamp::now(),
        },
        Err(e) => {
            eprintln!("container-shim: cannot wait for the container: {e}");
            return ExitCode::from(70);
        }
    };
    if let Err(e) = serde_json::to_vec(&info)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::ipam::write_atomically(&exit_file(dir), &bytes))
    {
        eprintln!("container-shim: cannot record the exit status: {e}");
    }
    ExitCode::from(u8::try_from(info.exit_code).unwrap_or(255))
}

/// One line to the agent that started the shim (nobody listens after an agent restart).
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Parse what follows the executable (`container-shim DIR -- ARGV...`) for binaries without a
/// flag parser of their own.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Option<(PathBuf, Vec<OsString>)> {
    let mut args = args.into_iter();
    if args.next()? != SUBCOMMAND {
        return None;
    }
    let dir = PathBuf::from(args.next()?);
    if args.next()? != "--" {
        return None;
    }
    Some((dir, args.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_arguments_parse_back() {
        let args = shim_args(
            Path::new("/state/c"),
            &["sh".into(), "-c".into(), "--".into()],
        );
        let (dir, argv) = parse_args(args.into_iter().map(OsString::from)).expect("parses");
        assert_eq!(dir, Path::new("/state/c"));
        assert_eq!(argv, ["sh", "-c", "--"]);
        assert!(parse_args(["container-shim".into(), "/d".into()]).is_none());
        assert!(parse_args(["other".into(), "/d".into(), "--".into()]).is_none());
    }
}
