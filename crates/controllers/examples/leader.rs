//! One replica at a time: run this twice against the same cluster and only one "serves"; stop
//! it (Ctrl-C releases the Lease) or kill it (the Lease expires) and the other takes over.
//!
//! ```text
//! cargo run -p switchyard-controllers --example leader -- DATA_DIR/admin.kubeconfig replica-a
//! cargo run -p switchyard-controllers --example leader -- DATA_DIR/admin.kubeconfig replica-b
//! ```
//!
//! The Lease is `default/leader-example`; `kubectl get lease leader-example -o yaml` shows the
//! holder.

use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_controllers::leaderelection::{LeaderElection, LeaderElector};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let kubeconfig = args.next().context("usage: leader KUBECONFIG IDENTITY")?;
    let identity = args.next().context("usage: leader KUBECONFIG IDENTITY")?;

    let client = switchyard_controllers::client_from_kubeconfig(kubeconfig.as_ref()).await?;

    // Kubernetes' defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    let elector = LeaderElector::new(identity.clone())?;
    let mut election = LeaderElection::new(client, "default", "leader-example", elector).spawn();
    println!("{identity}: standing by");
    loop {
        tokio::select! {
            _ = election.wait_leading() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        println!("{identity}: leading, serving");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !election.is_leading() {
                        break;
                    }
                    println!("{identity}: serving");
                }
                _ = tokio::signal::ctrl_c() => {
                    election.release().await?;
                    println!("{identity}: released the lease");
                    return Ok(());
                }
            }
        }
        println!("{identity}: lost the lease, standing by");
    }
}
