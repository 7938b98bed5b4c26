//! The controller manager: every controller over one set of shared informers, acting only while
//! this instance holds the leader Lease `kube-system/switchyard-controller-manager`.
//!
//! Informers run from the start on every instance (a standby keeps warm caches, so a takeover
//! needs no relist); workers start when this instance becomes leader and its caches are synced,
//! and are stopped (their tasks aborted) as soon as it stops leading, which the election decides
//! before the Lease can expire.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::deployment::controller::DeploymentController;
use crate::endpointslice::controller::EndpointsController;
use crate::gc::controller::GarbageCollector;
use crate::leaderelection::{ElectionHandle, LeaderElection, LeaderElector};
use crate::replicaset::controller::ReplicaSetController;
use crate::runtime::{run_controller, Context, Controller};
use crate::{signed, Config};

/// Namespace and name of the controller manager's leader Lease.
pub const LEADER_LEASE_NAMESPACE: &str = "kube-system";
pub const LEADER_LEASE_NAME: &str = "switchyard-controller-manager";

type Spawner = Box<dyn Fn(&mut JoinSet<()>) + Send + Sync>;

fn spawner<C: Controller>(controller: Arc<C>, resync: Duration) -> Spawner {
    Box::new(move |tasks| run_controller(controller.clone(), resync, tasks))
}

/// Every controller, created over `ctx` (registering their informer handlers).
fn controllers(ctx: &Context) -> Vec<Spawner> {
    let resync = ctx.config.resync_period;
    vec![
        spawner(EndpointsController::new(ctx), resync),
        spawner(ReplicaSetController::new(ctx), resync),
        spawner(DeploymentController::new(ctx), resync),
        spawner(GarbageCollector::new(ctx), resync),
    ]
}

/// A running controller manager; dropping it stops everything it runs.
pub struct ControllerManager {
    ctx: Context,
    leading: watch::Receiver<bool>,
    _election: Option<ElectionHandle>,
    _tasks: JoinSet<()>,
}

impl ControllerManager {
    /// Starts the informers, the leader election (unless disabled) and, while leading, the
    /// controllers. Fails only on an invalid configuration.
    pub fn start(client: kube::Client, config: Config) -> Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let elector = if config.leader_elect {
            Some(LeaderElector::with_timings(
                config.identity.clone(),
                signed(config.lease_duration),
                signed(config.renew_deadline),
                signed(config.retry_period),
            )?)
        } else {
            None
        };
        let ctx = Context::new(client.clone(), config);
        let spawners = controllers(&ctx);

        let mut tasks = JoinSet::new();
        ctx.informers.spawn(&mut tasks);
        ctx.events.spawn(&mut tasks);

        let (election, leading) = match elector {
            Some(elector) => {
                let handle =
                    LeaderElection::new(client, LEADER_LEASE_NAMESPACE, LEADER_LEASE_NAME, elector)
                        .spawn();
                let rx = handle.subscribe();
                (Some(handle), rx)
            }
            None => {
                let (tx, rx) = watch::channel(true);
                // Keep the sender alive for as long as the manager runs.
                tasks.spawn(async move {
                    tx.closed().await;
                });
                (None, rx)
            }
        };
        tasks.spawn(supervise(ctx.clone(), leading.clone(), spawners));
        Ok(ControllerManager {
            ctx,
            leading,
            _election: election,
            _tasks: tasks,
        })
    }

    /// Whether this instance leads (runs its controllers) now.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver of leadership changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// The shared context (informers, client).
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

/// Runs the controllers' workers while leading and the caches are synced.
async fn supervise(ctx: Context, mut leading: watch::Receiver<bool>, spawners: Vec<Spawner>) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        tokio::select! {
            _ = ctx.informers.wait_synced() => {}
            r = leading.wait_for(|l| !*l) => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        }
        let mut workers = JoinSet::new();
        for spawn in &spawners {
            spawn(&mut workers);
        }
        tracing::info!(identity = %ctx.config.identity, "controllers started");
        let closed = leading.wait_for(|l| !*l).await.is_err();
        workers.abort_all();
        while workers.join_next().await.is_some() {}
        tracing::info!(identity = %ctx.config.identity, "controllers stopped");
        if closed {
            return;
        }
    }
}
