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
use crate::lbipam::controller::LoadBalancerController;
use crate::leaderelection::{ElectionHandle, LeaderElection, LeaderElector};
use crate::nodelifecycle::controller::NodeLifecycleController;
use crate::podcidr::controller::NodeIpamController;
use crate::replicaset::controller::ReplicaSetController;
use crate::runtime::{run_controller, Context, Controller};
use crate::scheduler::controller::SchedulerController;
use crate::{signed, Config};

/// Namespace and name of the controller manager's leader Lease.
pub const LEADER_LEASE_NAMESPACE: &str = "kube-system";
pub const LEADER_LEASE_NAME: &str = "switchyard-controller-manager";

/// A controller as the manager drives it.
trait Registered: Send + Sync {
    fn spawn(&self, resync: Duration, tasks: &mut JoinSet<()>);
    fn resync(&self);
    fn is_idle(&self) -> bool;
}

impl<C: Controller> Registered for Arc<C> {
    fn spawn(&self, resync: Duration, tasks: &mut JoinSet<()>) {
        run_controller(self.clone(), resync, tasks);
    }

    fn resync(&self) {
        for key in self.all_keys() {
            self.queue().add(key);
        }
    }

    fn is_idle(&self) -> bool {
        self.queue().is_idle()
    }
}

/// Every controller, created over `ctx` (registering their informer handlers).
fn controllers(ctx: &Context) -> Vec<Box<dyn Registered>> {
    vec![
        Box::new(EndpointsController::new(ctx)),
        Box::new(LoadBalancerController::new(ctx)),
        Box::new(SchedulerController::new(ctx)),
        Box::new(NodeLifecycleController::new(ctx)),
        Box::new(NodeIpamController::new(ctx)),
        Box::new(ReplicaSetController::new(ctx)),
        Box::new(DeploymentController::new(ctx)),
        Box::new(GarbageCollector::new(ctx)),
    ]
}

/// A running controller manager; dropping it stops everything it runs.
pub struct ControllerManager {
    ctx: Context,
    controllers: Arc<[Box<dyn Registered>]>,
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
        let controllers: Arc<[Box<dyn Registered>]> = controllers(&ctx).into();

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
        tasks.spawn(supervise(ctx.clone(), leading.clone(), controllers.clone()));
        Ok(ControllerManager {
            ctx,
            controllers,
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

    /// Queues every key of every controller, as the periodic resync does.
    pub fn resync(&self) {
        for c in self.controllers.iter() {
            c.resync();
        }
    }

    /// Whether every controller's queue is empty with no sync in progress (nothing to do until
    /// the next change).
    pub fn is_idle(&self) -> bool {
        self.controllers.iter().all(|c| c.is_idle())
    }
}

/// Runs the controllers' workers while leading and the caches are synced.
async fn supervise(
    ctx: Context,
    mut leading: watch::Receiver<bool>,
    controllers: Arc<[Box<dyn Registered>]>,
) {
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
        for c in controllers.iter() {
            c.spawn(ctx.config.resync_period, &mut workers);
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
