//! `switchyard proxy`: the service proxy (kube-proxy role). Being built (issue 5).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ProxyArgs {}

pub async fn run(_args: ProxyArgs) -> ExitCode {
    eprintln!("switchyard: `proxy` is not built yet");
    ExitCode::from(64)
}
