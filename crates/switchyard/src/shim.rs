//! `switchyard container-shim DIR -- COMMAND...` (hidden): the supervisor the node agent starts
//! every container under ([`switchyard_node::shim`]). It runs before logging and the async
//! runtime are set up: it must stay single-threaded (its signals are taken with `sigwait`) and
//! write nothing into the container's output.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ShimArgs {
    /// The container's state directory: its output FIFOs, and where its exit status goes.
    dir: PathBuf,
    /// The container's command and arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

pub fn run(args: ShimArgs) -> ExitCode {
    switchyard_node::shim::run(&args.dir, &args.command)
}
