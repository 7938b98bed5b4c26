//! Leader election over a `coordination.k8s.io/v1` Lease, as a pure state machine with an
//! explicit clock. It follows client-go's `tools/leaderelection/leaderelection.go`
//! (`tryAcquireOrRenew`, `renew`): a candidate takes the Lease when there is none, when its
//! holder let it expire, or when it already holds it; a leader renews every retry period and
//! stops acting as leader once it has gone `renew_deadline` without a successful renewal, which is
//! before its Lease can expire and another candidate can take over.
//!
//! The loop around it reads the Lease, calls [`LeaderElector::step`], writes the proposed
//! `LeaseSpec` (create or update with the observed `resourceVersion`, so that two candidates cannot
//! both win) and reports a successful write with [`LeaderElector::written`]; a failed write is
//! reported by doing nothing. Only [`LeaderElector::is_leader`] decides whether to act.
//!
//! One deliberate difference: client-go judges expiry by when *it* last saw the record change
//! (its local `observedTime`), which tolerates clock skew but makes a fresh candidate wait a full
//! lease duration even for a long-dead Lease. Here expiry is `renewTime + leaseDurationSeconds`,
//! which is exact when all candidates share a clock (one host, or well-synchronised nodes).

use jiff::{SignedDuration, Timestamp};
use switchyard_api::k8s::api::coordination::v1::{Lease, LeaseSpec};
use switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

/// Kubernetes' default lease duration (`--leader-elect-lease-duration`).
pub const DEFAULT_LEASE_DURATION: SignedDuration = SignedDuration::from_secs(15);
/// Kubernetes' default renew deadline (`--leader-elect-renew-deadline`).
pub const DEFAULT_RENEW_DEADLINE: SignedDuration = SignedDuration::from_secs(10);
/// Kubernetes' default retry period (`--leader-elect-retry-period`).
pub const DEFAULT_RETRY_PERIOD: SignedDuration = SignedDuration::from_secs(2);

/// client-go's `JitterFactor`: the renew deadline must exceed this many retry periods.
const JITTER_FACTOR: f64 = 1.2;

/// A configuration client-go's `NewLeaderElector` would refuse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Empty identity.
    #[error("leader election identity must not be empty")]
    EmptyIdentity,
    /// A duration that is zero or negative.
    #[error("{0} must be greater than zero")]
    NotPositive(&'static str),
    /// `lease_duration <= renew_deadline`.
    #[error("leaseDuration must be greater than renewDeadline")]
    LeaseNotLongerThanRenew,
    /// `renew_deadline <= 1.2 * retry_period`.
    #[error("renewDeadline must be greater than retryPeriod*JitterFactor")]
    RenewTooShortForRetry,
}

/// What the caller should do after a [`LeaderElector::step`].
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Write this Lease (create it, or update the observed one) to become leader; we lead once
    /// the write succeeds.
    Acquire(LeaseSpec),
    /// Write this Lease to stay leader; we keep leading meanwhile (until the renew deadline).
    Renew(LeaseSpec),
    /// Nothing to write now.
    Wait {
        /// Whether we are leading.
        leading: bool,
    },
    /// We were leading and no longer are: stop acting (client-go's `OnStoppedLeading`).
    StepDown,
}

impl Decision {
    /// Whether we are leader after this decision (an `Acquire` is not leadership yet).
    pub fn leading(&self) -> bool {
        match self {
            Decision::Renew(_) => true,
            Decision::Wait { leading } => *leading,
            Decision::Acquire(_) | Decision::StepDown => false,
        }
    }
}

/// One candidate's view of the election.
#[derive(Clone, Debug)]
pub struct LeaderElector {
    identity: String,
    lease_duration: SignedDuration,
    renew_deadline: SignedDuration,
    retry_period: SignedDuration,
    /// Whether we consider ourselves leader (subject to the renew deadline).
    leading: bool,
    /// The `renewTime` of our last write known to have succeeded.
    last_success: Option<Timestamp>,
}

impl LeaderElector {
    /// A candidate with Kubernetes' default timings (15 s / 10 s / 2 s).
    pub fn new(identity: impl Into<String>) -> Result<Self, ConfigError> {
        Self::with_timings(
            identity,
            DEFAULT_LEASE_DURATION,
            DEFAULT_RENEW_DEADLINE,
            DEFAULT_RETRY_PERIOD,
        )
    }

    /// A candidate with explicit timings, validated as client-go's `NewLeaderElector` does.
    pub fn with_timings(
        identity: impl Into<String>,
        lease_duration: SignedDuration,
        renew_deadline: SignedDuration,
        retry_period: SignedDuration,
    ) -> Result<Self, ConfigError> {
        let identity = identity.into();
        if identity.is_empty() {
            return Err(ConfigError::EmptyIdentity);
        }
        for (name, d) in [
            ("leaseDuration", lease_duration),
            ("renewDeadline", renew_deadline),
            ("retryPeriod", retry_period),
        ] {
            if d <= SignedDuration::ZERO {
                return Err(ConfigError::NotPositive(name));
            }
        }
        if lease_duration <= renew_deadline {
            return Err(ConfigError::LeaseNotLongerThanRenew);
        }
        if renew_deadline.as_secs_f64() <= JITTER_FACTOR * retry_period.as_secs_f64() {
            return Err(ConfigError::RenewTooShortForRetry);
        }
        Ok(LeaderElector {
            identity,
            lease_duration,
            renew_deadline,
            retry_period,
            leading: false,
            last_success: None,
        })
    }

    /// Our identity (`holderIdentity` when we lead).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How long a Lease we write stays valid without renewal.
    pub fn lease_duration(&self) -> SignedDuration {
        self.lease_duration
    }

    /// How long we keep leading without a successful renewal.
    pub fn renew_deadline(&self) -> SignedDuration {
        self.renew_deadline
    }

    /// How often [`LeaderElector::step`] should be called.
    pub fn retry_period(&self) -> SignedDuration {
        self.retry_period
    }

    /// Whether we may act as leader at `now`: we acquired the Lease and renewed it successfully
    /// less than `renew_deadline` ago. client-go's `renew` gives up (and the elector stops
    /// leading) when no `tryAcquireOrRenew` succeeds within `RenewDeadline`.
    pub fn is_leader(&self, now: Timestamp) -> bool {
        self.leading
            && self
                .last_success
                .is_some_and(|t| now < plus(t, self.renew_deadline))
    }

    /// Records that the Lease from our last `Acquire`/`Renew` was written successfully.
    pub fn written(&mut self, spec: &LeaseSpec) {
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        if let Some(MicroTime(t)) = spec.renew_time {
            self.leading = true;
            if self.last_success.is_none_or(|old| t > old) {
                self.last_success = Some(t);
            }
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`, given the Lease as read now (`None` when it
    /// does not exist).
    pub fn step(&mut self, now: Timestamp, observed: Option<&LeaseSpec>) -> Decision {
        let now = micro(now);
        let ours = observed.is_some_and(|l| self.holds(l));

        // A newer renewTime of ours in the store confirms a write we were not told about.
        if let Some(l) = observed.filter(|_| ours) {
            if let Some(MicroTime(t)) = l.renew_time {
                if self.leading && self.last_success.is_some_and(|old| t > old) {
                    self.last_success = Some(t);
                }
            }
        }

        // The renew deadline passed without a successful renewal: stop before the Lease
        // expires (client-go `renew`: `wait.PollImmediateUntil(..., timeoutCtx)` times out).
        if self.leading && !self.is_leader(now) {
            self.leading = false;
            return Decision::StepDown;
        }

        if let Some(l) = observed {
            let held_by_other =
                !ours && l.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
            if held_by_other && !self.expired(l, now) {
                // client-go: "lock is held by %v and has not yet expired".
                if self.leading {
                    self.leading = false;
                    return Decision::StepDown;
                }
                return Decision::Wait { leading: false };
            }
        }

        // Leading and renewed recently: nothing to do until the next retry period.
        if self.is_leader(now)
            && ours
            && self
                .last_success
                .is_some_and(|t| now < plus(t, self.retry_period))
        {
            return Decision::Wait { leading: true };
        }

        let duration_secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let old_transitions = observed.and_then(|l| l.lease_transitions).unwrap_or(0);
        let mut spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(old_transitions),
            ..LeaseSpec::default()
        };
        match observed {
            Some(l) if ours => {
                // Same holder: keep acquireTime and the transition count (client-go copies
                // them from the old record when the holder does not change).
                spec.acquire_time = l.acquire_time.clone().or(spec.acquire_time);
                if self.is_leader(now) {
                    return Decision::Renew(spec);
                }
                Decision::Acquire(spec)
            }
            Some(l) => {
                // Holder changes (from another identity or from a released, empty holder):
                // client-go increments `LeaderTransitions`.
                let had_holder = l.holder_identity.as_deref().is_some_and(|h| !h.is_empty())
                    || l.lease_transitions.is_some();
                if had_holder {
                    spec.lease_transitions = Some(old_transitions.saturating_add(1));
                }
                Decision::Acquire(spec)
            }
            // A new Lease starts at zero transitions.
            None => Decision::Acquire(spec),
        }
    }

    fn holds(&self, lease: &LeaseSpec) -> bool {
        lease.holder_identity.as_deref() == Some(self.identity.as_str())
    }

    /// `renewTime + leaseDurationSeconds < now`; a Lease without a renewTime is expired, one
    /// without a duration uses ours.
    fn expired(&self, lease: &LeaseSpec, now: Timestamp) -> bool {
        let Some(MicroTime(renewed)) = lease.renew_time else {
            return true;
        };
        let duration = lease
            .lease_duration_seconds
            .map_or(self.lease_duration, |s| {
                SignedDuration::from_secs(i64::from(s))
            });
        plus(renewed, duration) < now
    }
}

/// `t + d`, saturating at the end of time.
fn plus(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// `now` truncated to microseconds, the precision a `MicroTime` keeps on the wire, so that a
/// renewTime read back compares equal to the one written.
fn micro(now: Timestamp) -> Timestamp {
    Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

// ---------------------------------------------------------------------------------------------
// The loop over the API: the library API for controllers and applications
// ---------------------------------------------------------------------------------------------

/// Leader election over the Lease `namespace/name` through the API: runs a [`LeaderElector`]
/// every retry period, and tells whether this candidate leads now through a watch channel.
///
/// Applications use it to have one replica serve at a time:
///
/// ```no_run
/// # async fn example(client: kube::Client) -> anyhow::Result<()> {
/// use switchyard_controllers::leaderelection::{LeaderElection, LeaderElector};
/// let elector = LeaderElector::new("replica-a")?;
/// let mut election = LeaderElection::new(client, "default", "my-app", elector).spawn();
/// loop {
///     election.wait_leading().await;
///     // ... serve; stop as soon as `election.is_leading()` turns false.
///     election.wait_not_leading().await;
/// }
/// # }
/// ```
pub struct LeaderElection {
    api: kube::Api<Lease>,
    name: String,
    elector: LeaderElector,
}

/// A running election; dropping it stops campaigning (the Lease then expires, or is released
/// early with [`ElectionHandle::release`]).
pub struct ElectionHandle {
    leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    api: kube::Api<Lease>,
    name: String,
    identity: String,
}

impl LeaderElection {
    pub fn new(client: kube::Client, namespace: &str, name: &str, elector: LeaderElector) -> Self {
        LeaderElection {
            api: kube::Api::namespaced(client, namespace),
            name: name.to_string(),
            elector,
        }
    }

    /// Starts campaigning on a background task.
    pub fn spawn(self) -> ElectionHandle {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let api = self.api.clone();
        let name = self.name.clone();
        let identity = self.elector.identity().to_string();
        let task = tokio::spawn(self.run(tx));
        ElectionHandle {
            leading: rx,
            task,
            api,
            name,
            identity,
        }
    }

    async fn run(mut self, leading: tokio::sync::watch::Sender<bool>) {
        let retry = self.elector.retry_period().unsigned_abs();
        let mut tick = tokio::time::interval(retry);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A round that hangs (an unreachable server) must not keep us leading: it is cut
            // at one retry period, and leadership is re-judged on the clock after every round.
            if tokio::time::timeout(retry, self.round()).await.is_err() {
                tracing::debug!(lease = %self.name, "leader election round timed out");
            }
            let now = Timestamp::now();
            let is_leader = self.elector.is_leader(now);
            leading.send_if_modified(|l| {
                if *l != is_leader {
                    tracing::info!(
                        lease = %self.name,
                        identity = %self.elector.identity(),
                        leading = is_leader,
                        "{}",
                        if is_leader { "became leader" } else { "stopped leading" }
                    );
                    *l = is_leader;
                    true
                } else {
                    false
                }
            });
        }
    }

    async fn round(&mut self) {
        let observed = match self.api.get_opt(&self.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(lease = %self.name, error = %e, "reading the leader lease failed");
                return;
            }
        };
        let decision = self.elector.step(
            Timestamp::now(),
            observed.as_ref().and_then(|l| l.spec.as_ref()),
        );
        let spec = match decision {
            Decision::Acquire(spec) | Decision::Renew(spec) => spec,
            Decision::Wait { .. } | Decision::StepDown => return,
        };
        let result = match observed {
            Some(mut lease) => {
                lease.spec = Some(spec.clone());
                lease.metadata.managed_fields = None;
                self.api
                    .replace(&self.name, &Default::default(), &lease)
                    .await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec.clone()),
                };
                self.api.create(&Default::default(), &lease).await
            }
        };
        match result {
            Ok(_) => self.elector.written(&spec),
            Err(e) => {
                tracing::debug!(lease = %self.name, error = %e, "writing the leader lease failed")
            }
        }
    }
}

impl ElectionHandle {
    /// Whether this candidate leads now.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver of leadership changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Waits until this candidate leads.
    pub async fn wait_leading(&mut self) {
        let _ = self.leading.wait_for(|l| *l).await;
    }

    /// Waits until this candidate stops leading.
    pub async fn wait_not_leading(&mut self) {
        let _ = self.leading.wait_for(|l| !*l).await;
    }

    /// Stops campaigning and, if we hold the Lease, empties its holder so that another candidate
    /// takes over at once instead of after the lease duration (client-go's ReleaseOnCancel).
    pub async fn release(self) -> Result<(), kube::Error> {
        self.task.abort();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        lease.metadata.managed_fields = None;
        self.api
            .replace(&self.name, &Default::default(), &lease)
            .await
            .map(|_| ())
    }
}

impl Drop for ElectionHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn at(secs: f64) -> Timestamp {
        plus(t0(), SignedDuration::from_secs_f64(secs))
    }

    /// A fake API server: one Lease, written only when the step proposes it and `up` is true.
    struct Store {
        lease: Option<LeaseSpec>,
    }

    impl Store {
        /// Runs one step of `el` at `now`; `write_ok` says whether the write reaches the server.
        fn step(&mut self, el: &mut LeaderElector, now: Timestamp, write_ok: bool) -> Decision {
            let d = el.step(now, self.lease.as_ref());
            if let Decision::Acquire(spec) | Decision::Renew(spec) = &d {
                if write_ok {
                    self.lease = Some(spec.clone());
                    el.written(spec);
                }
            }
            d
        }
    }

    fn holder(store: &Store) -> Option<&str> {
        store.lease.as_ref()?.holder_identity.as_deref()
    }

    fn transitions(store: &Store) -> i32 {
        store
            .lease
            .as_ref()
            .and_then(|l| l.lease_transitions)
            .unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let el = LeaderElector::new("a").unwrap();
        assert_eq!(el.lease_duration(), SignedDuration::from_secs(15));
        assert_eq!(el.renew_deadline(), SignedDuration::from_secs(10));
        assert_eq!(el.retry_period(), SignedDuration::from_secs(2));
        assert!(!el.is_leader(t0()));
        let s = SignedDuration::from_secs;
        assert_eq!(
            LeaderElector::with_timings("a", s(10), s(10), s(2)).err(),
            Some(ConfigError::LeaseNotLongerThanRenew)
        );
        assert_eq!(
            LeaderElector::with_timings("a", s(15), s(2), s(2)).err(),
            Some(ConfigError::RenewTooShortForRetry)
        );
        assert_eq!(
            LeaderElector::with_timings("", s(15), s(10), s(2)).err(),
            Some(ConfigError::EmptyIdentity)
        );
        assert_eq!(
            LeaderElector::with_timings("a", s(15), s(10), s(0)).err(),
            Some(ConfigError::NotPositive("retryPeriod"))
        );
    }

    #[test]
    fn two_candidates_only_one_leads_and_the_leader_renews() {
        let mut store = Store { lease: None };
        let mut a = LeaderElector::new("a").unwrap();
        let mut b = LeaderElector::new("b").unwrap();

        assert!(matches!(
            store.step(&mut a, t0(), true),
            Decision::Acquire(_)
        ));
        assert_eq!(
            store.step(&mut b, t0(), true),
            Decision::Wait { leading: false }
        );
        assert!(a.is_leader(t0()));
        assert!(!b.is_leader(t0()));
        assert_eq!(transitions(&store), 0);
        let acquired = store.lease.as_ref().unwrap().acquire_time.clone();

        for i in 1..=30 {
            let now = at(f64::from(i));
            let da = store.step(&mut a, now, true);
            let db = store.step(&mut b, now, true);
            // Renew every retry period, wait in between.
            if i % 2 == 0 {
                assert!(matches!(da, Decision::Renew(_)), "{i}: {da:?}");
            } else {
                assert_eq!(da, Decision::Wait { leading: true }, "{i}");
            }
            assert_eq!(db, Decision::Wait { leading: false });
            assert!(a.is_leader(now) && !b.is_leader(now));
        }
        let lease = store.lease.as_ref().unwrap();
        assert_eq!(lease.holder_identity.as_deref(), Some("a"));
        assert_eq!(lease.renew_time, Some(MicroTime(at(30.0))));
        assert_eq!(lease.acquire_time, acquired);
        assert_eq!(lease.lease_duration_seconds, Some(15));
        assert_eq!(transitions(&store), 0);
    }

    #[test]
    fn takeover_only_after_the_lease_expires() {
        let mut store = Store { lease: None };
        let mut a = LeaderElector::new("a").unwrap();
        let mut b = LeaderElector::new("b").unwrap();
        store.step(&mut a, t0(), true);
        store.step(&mut a, at(2.0), true);
        // `a` stops (crashes) after renewing at t=2: the Lease runs until 2 + 15 = 17.
        for i in 3..=17 {
            assert_eq!(
                store.step(&mut b, at(f64::from(i)), true),
                Decision::Wait { leading: false },
                "{i}"
            );
        }
        assert!(matches!(
            store.step(&mut b, at(17.5), true),
            Decision::Acquire(_)
        ));
        assert!(b.is_leader(at(17.5)));
        assert_eq!(holder(&store), Some("b"));
        assert_eq!(transitions(&store), 1);
        let lease = store.lease.as_ref().unwrap();
        assert_eq!(lease.acquire_time, Some(MicroTime(at(17.5))));

        // `a` comes back: it sees `b`'s valid Lease and does not lead.
        assert_eq!(store.step(&mut a, at(18.0), true), Decision::StepDown);
        assert!(!a.is_leader(at(18.0)));
        assert_eq!(
            store.step(&mut a, at(20.0), true),
            Decision::Wait { leading: false }
        );
    }

    #[test]
    fn failed_renewals_stop_the_leader_before_the_lease_expires() {
        let mut store = Store { lease: None };
        let mut a = LeaderElector::new("a").unwrap();
        let mut b = LeaderElector::new("b").unwrap();
        store.step(&mut a, t0(), true);
        store.step(&mut a, at(2.0), true);
        // From t=4 on, `a`'s writes fail (partitioned from the API server).
        let mut stepped_down_at = None;
        for i in (4..=16).step_by(2) {
            let now = at(f64::from(i));
            let d = store.step(&mut a, now, false);
            if d == Decision::StepDown {
                stepped_down_at = Some(i);
                break;
            }
            assert!(matches!(d, Decision::Renew(_)), "{i}: {d:?}");
            assert!(a.is_leader(now));
        }
        // Last success at 2, renew deadline 10: leadership ends at 12, the Lease only at 17.
        assert_eq!(stepped_down_at, Some(12));
        assert!(!a.is_leader(at(12.0)));
        assert_eq!(
            store.step(&mut b, at(12.0), true),
            Decision::Wait { leading: false }
        );
        assert!(matches!(
            store.step(&mut b, at(17.1), true),
            Decision::Acquire(_)
        ));
        // Never two leaders at once.
        assert!(!a.is_leader(at(17.1)) && b.is_leader(at(17.1)));
    }

    #[test]
    fn transitions_counted_on_each_holder_change() {
        let mut store = Store { lease: None };
        let mut a = LeaderElector::new("a").unwrap();
        let mut b = LeaderElector::new("b").unwrap();
        store.step(&mut a, t0(), true);
        assert_eq!(transitions(&store), 0);
        // a dies; b takes over after expiry.
        store.step(&mut b, at(16.0), true);
        assert_eq!((holder(&store), transitions(&store)), (Some("b"), 1));
        // b renews: no transition.
        store.step(&mut b, at(18.0), true);
        assert_eq!(transitions(&store), 1);
        // b dies; a (which never stepped since it lost the Lease) notices first that it is no
        // longer leading, then takes over once b's Lease expires.
        assert_eq!(store.step(&mut a, at(30.0), true), Decision::StepDown);
        assert_eq!(
            store.step(&mut a, at(32.0), true),
            Decision::Wait { leading: false }
        );
        assert!(matches!(
            store.step(&mut a, at(33.1), true),
            Decision::Acquire(_)
        ));
        assert_eq!((holder(&store), transitions(&store)), (Some("a"), 2));
        // A restarted holder re-acquires its own Lease without a transition.
        let mut a2 = LeaderElector::new("a").unwrap();
        assert!(matches!(
            store.step(&mut a2, at(34.0), true),
            Decision::Acquire(_)
        ));
        assert_eq!(transitions(&store), 2);
        assert!(a2.is_leader(at(34.0)));
    }

    #[test]
    fn released_lease_is_taken_at_once() {
        // client-go's ReleaseOnCancel leaves an empty holderIdentity.
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(t0())),
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        };
        let mut store = Store {
            lease: Some(released),
        };
        let mut b = LeaderElector::new("b").unwrap();
        assert!(matches!(
            store.step(&mut b, t0(), true),
            Decision::Acquire(_)
        ));
        assert_eq!((holder(&store), transitions(&store)), (Some("b"), 5));
    }
}
