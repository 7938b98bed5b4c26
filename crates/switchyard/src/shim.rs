//! `switchyard container-shim DIR -- COMMAND [ARG...]` (hidden, not in `--help`): the supervisor
//! the node agent starts every container under ([`switchyard_node::shim`]). It is dispatched
//! before the flag parser, logging and the async runtime: it must stay single-threaded (its
//! signal handlers must be the only ones), write nothing into the container's output, and
//! stay small, since one runs per container for its whole life.

use std::process::ExitCode;

/// The shim's exit code when this process was started as one; `None` otherwise.
pub fn run_if_invoked() -> Option<ExitCode> {
    switchyard_node::shim::run_if_invoked()
}
