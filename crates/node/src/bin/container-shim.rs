//! The container shim ([`switchyard_node::shim`]) as an executable of this crate, so the node
//! agent's own tests have a `self_exe` to supervise containers with. It takes the command line
//! the `switchyard` binary's hidden `container-shim` subcommand takes.

use std::process::ExitCode;

fn main() -> ExitCode {
    switchyard_node::shim::run_if_invoked().unwrap_or_else(|| {
        eprintln!("usage: container-shim container-shim DIR -- COMMAND [ARG...]");
        ExitCode::from(64)
    })
}
