//! `switchyard echo-server` (hidden): the built-in echo server the image catalog's `myapp`,
//! `nginx` and `switchyard/echo` images run inside pods (see `switchyard_node::echo`).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct EchoArgs {
    /// TCP (HTTP) and UDP port to serve on.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// The version reported in every answer (the image tag).
    #[arg(long, default_value = "v1")]
    version: String,
    /// The pod as `namespace/name` (the catalog passes it in SWITCHYARD_POD).
    #[arg(long, env = "SWITCHYARD_POD", default_value = "")]
    pod: String,
}

pub async fn run(args: EchoArgs) -> ExitCode {
    let pod = if args.pod.is_empty() {
        format!("default/{}", switchyard_node::echo::hostname())
    } else {
        args.pod
    };
    let config = switchyard_node::echo::EchoConfig {
        port: args.port,
        version: args.version,
        pod,
    };
    match switchyard_node::echo::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard echo-server: {e}");
            ExitCode::from(1)
        }
    }
}
