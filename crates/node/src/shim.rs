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
//! It runs on a current-thread tokio runtime: signal handlers installed before the container
//! is spawned (so none is lost, and exec resets them to the default in the container), no
//! blocked signal mask (which the container would inherit), no worker threads.
//!
//! Must never: outlive its container, write anything to the container's output but its own
//! fatal errors, or start the container with a signal blocked or ignored.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report(&format!("error cannot start the shim's runtime: {e}"));
            return ExitCode::from(70);
        }
    };
    let info = match runtime.block_on(supervise(dir, argv)) {
        Ok(info) => info,
        Err(code) => return code,
    };
    if let Err(e) = serde_json::to_vec(&info)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::ipam::write_atomically(&exit_file(dir), &bytes))
    {
        eprintln!("container-shim: cannot record the exit status: {e}");
    }
    ExitCode::from(u8::try_from(info.exit_code).unwrap_or(255))
}

/// Start the container, forward signals to its process group until it ends, and return how it
/// ended (or the shim's exit code when it could not start it).
async fn supervise(dir: &Path, argv: &[OsString]) -> Result<ExitInfo, ExitCode> {
    let Some((program, args)) = argv.split_first() else {
        report("error empty command");
        return Err(ExitCode::from(64));
    };
    // Handlers first: a signal that arrives while the container starts is still forwarded.
    let mut receivers = Vec::new();
    for s in FORWARDED {
        match signal(SignalKind::from_raw(s as i32)) {
            Ok(r) => receivers.push((s, r)),
            Err(e) => {
                report(&format!("error cannot handle {s}: {e}"));
                return Err(ExitCode::from(70));
            }
        }
    }
    let stdout = std::fs::OpenOptions::new()
        .read(true) // read-write: a write never fails for want of a reader
        .write(true)
        .open(dir.join("stdout"))
        .map_err(|e| {
            report(&format!("error cannot open the container's stdout: {e}"));
            ExitCode::from(70)
        })?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .spawn()
        .map_err(|e| {
            report(&format!(
                "error exec {:?}: {e}",
                program.to_string_lossy().into_owned()
            ));
            ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            })
        })?;
    let pid = child.id().ok_or_else(|| {
        report("error the container ended before it got a pid");
        ExitCode::from(70)
    })?;
    report(&format!("started {pid}"));
    let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    for (s, mut receiver) in receivers {
        tokio::spawn(async move {
            while receiver.recv().await.is_some() {
                let _ = nix::sys::signal::killpg(group, s);
            }
        });
    }
    let status = child.wait().await.map_err(|e| {
        eprintln!("container-shim: cannot wait for the container: {e}");
        ExitCode::from(70)
    })?;
    Ok(ExitInfo {
        exit_code: status
            .code()
            .or(status.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        signal: status.signal(),
        finished_at: jiff::Timestamp::now(),
    })
}

/// One line to the agent that started the shim (nobody listens after an agent restart).
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Run the shim if this process was started as one (its first argument is [`SUBCOMMAND`]):
/// `Some(exit code)`, or `None` for any other command line. A bad shim command line ends with a
/// one-line message and exit code 64. Called first thing in `main`, before any flag parser,
/// logging or runtime: a shim stays for its container's whole life, so it stays small.
pub fn run_if_invoked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek()? != SUBCOMMAND {
        return None;
    }
    Some(match parse_args(args) {
        Ok((dir, argv)) => run(&dir, &argv),
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(64)
        }
    })
}

/// Parse what follows the executable: `container-shim DIR -- COMMAND [ARG...]`.
fn parse_args(
    args: impl IntoIterator<Item = OsString>,
) -> Result<(PathBuf, Vec<OsString>), String> {
    const USAGE: &str = "usage: container-shim DIR -- COMMAND [ARG...]";
    let mut args = args.into_iter();
    if args.next().as_deref() != Some(SUBCOMMAND.as_ref()) {
        return Err(USAGE.into());
    }
    let dir = PathBuf::from(args.next().ok_or(USAGE)?);
    if args.next().as_deref() != Some("--".as_ref()) {
        return Err(USAGE.into());
    }
    let argv: Vec<OsString> = args.collect();
    if argv.is_empty() {
        return Err(USAGE.into());
    }
    Ok((dir, argv))
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
        let bad: [&[&str]; 4] = [
            &["container-shim", "/d"],
            &["container-shim", "/d", "--"],
            &["container-shim", "/d", "sh"],
            &["other", "/d", "--", "sh"],
        ];
        for args in bad {
            assert!(
                parse_args(args.iter().map(OsString::from)).is_err(),
                "{args:?}"
            );
        }
    }
}
