//! `switchyard echo-server` (hidden): the built-in echo server the image catalog's `myapp`,
//! `nginx` and `switchyard/echo` images run inside pods (see `switchyard_node::echo`).
//!
//! On SIGTERM it keeps serving for `--shutdown-delay` before exiting 0, as a well-behaved
//! server behind a Service does: the pod turns terminating at once, but the proxies of every
//! node need a moment to stop sending new connections here, so a rolling update or a pod
//! deletion loses no request.

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
    /// How long to keep serving after SIGTERM.
    #[arg(long, default_value = "3s", value_parser = crate::flags::duration)]
    shutdown_delay: std::time::Duration,
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
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchyard echo-server: {e}");
            return ExitCode::from(1);
        }
    };
    let serve = switchyard_node::echo::run(config);
    tokio::pin!(serve);
    let result = tokio::select! {
        result = &mut serve => result,
        _ = term.recv() => {
            eprintln!(
                "echo-server: SIGTERM; serving {:?} more, then exiting",
                args.shutdown_delay
            );
            match tokio::time::timeout(args.shutdown_delay, &mut serve).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard echo-server: {e}");
            ExitCode::from(1)
        }
    }
}
