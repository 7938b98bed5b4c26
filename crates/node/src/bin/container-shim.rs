//! The container shim ([`switchyard_node::shim`]) as an executable of this crate, so the node
//! agent's own tests have a `self_exe` to supervise containers with. It takes the arguments the
//! `switchyard` binary's hidden `container-shim` subcommand takes.

use std::process::ExitCode;

fn main() -> ExitCode {
    match switchyard_node::shim::parse_args(std::env::args_os().skip(1)) {
        Some((dir, argv)) => switchyard_node::shim::run(&dir, &argv),
        None => {
            eprintln!("usage: container-shim container-shim DIR -- COMMAND [ARG...]");
            ExitCode::from(64)
        }
    }
}
