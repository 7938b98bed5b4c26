//! `switchyard node`: the node agent (kubelet role). Being built (issue 4).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct NodeArgs {}

pub async fn run(_args: NodeArgs) -> ExitCode {
    eprintln!("switchyard: `node` is not built yet");
    ExitCode::from(64)
}
