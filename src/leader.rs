//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas never
//! reconcile at once. The rules follow client-go's `leaderelection`; each one closes a way
//! to get two leaders:
//!
//! - Expiry is judged from local observation. A candidate notes, on its own monotonic
//!   clock, when it last saw the Lease record change, and takes over only a whole lease
//!   duration after that. The holder's `renewTime` was written by another machine's wall
//!   clock and is never compared with ours, so clock skew cannot cut a live lease short.
//! - The leader stops leading once it has not renewed for the renew deadline, which is
//!   shorter than the lease duration: its work is cancelled before any candidate can see
//!   the lease expire. Every Lease request has a timeout, so a hung request cannot keep it
//!   leading past that deadline.
//! - Writes carry the Lease's resourceVersion: two candidates racing for an expired lease
//!   cannot both win, the loser's update fails with a conflict.
//!
//! [`decide`] holds the rules as a pure function; [`LeaderElector`] is the I/O around it.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use prometheus::IntGauge;
use tokio::{sync::watch, time::Instant};
use tracing::{error, info, warn};

/// The three periods of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a holder's claim lasts, counted by each candidate from when it saw the
    /// claim renewed.
    pub lease_duration: Duration,
    /// How long the leader may go without a successful renewal before it stops leading.
    pub renew_deadline: Duration,
    /// The pause between renewals, and between a candidate's attempts.
    pub retry_period: Duration,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("the lease duration, renew deadline and retry period must all be positive")]
    NotPositive,
    #[error(
        "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration \
         ({lease_duration:?}): a leader that cannot renew must stop before another replica may take over"
    )]
    DeadlineNotBeforeExpiry { renew_deadline: Duration, lease_duration: Duration },
    #[error(
        "the renew deadline ({renew_deadline:?}) must be longer than the retry period \
         ({retry_period:?}): a failed renewal needs a retry before the leader gives up"
    )]
    DeadlineNotAfterRetry { renew_deadline: Duration, retry_period: Duration },
}

impl Timing {
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Timing, TimingError> {
        if lease_duration.is_zero() || renew_deadline.is_zero() || retry_period.is_zero() {
            return Err(TimingError::NotPositive);
        }
        if renew_deadline >= lease_duration {
            return Err(TimingError::DeadlineNotBeforeExpiry { renew_deadline, lease_duration });
        }
        if renew_deadline <= retry_period {
            return Err(TimingError::DeadlineNotAfterRetry { renew_deadline, retry_period });
        }
        Ok(Timing { lease_duration, renew_deadline, retry_period })
    }

    /// The renew deadline when none is configured: two thirds of the lease duration
    /// (client-go's defaults, 10 s of 15 s). The remaining third is the margin in which the
    /// old leader's work winds down, and absorbs clocks that run at different rates.
    pub fn default_renew_deadline(lease_duration: Duration) -> Duration {
        lease_duration * 2 / 3
    }

    /// The longest one Lease request may take: half the renew deadline, so that a request
    /// that hangs still leaves the leader time for another attempt.
    pub fn request_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }

    /// When a leader whose last successful renewal was sent at `renewed_at` must stop.
    pub fn renewal_deadline(&self, renewed_at: Instant) -> Instant {
        renewed_at + self.renew_deadline
    }
}

/// The Lease as this replica last read it, and when its record last changed by this
/// replica's monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `None` when the Lease is free (no holder, or released).
    pub holder: Option<String>,
    /// The holder's claim: its `leaseDurationSeconds`, ours when it states none.
    pub lease_duration: Duration,
    pub transitions: i32,
    /// The first local time this replica saw the record as it is now.
    pub changed_at: Instant,
    version: RecordVersion,
}

/// What tells one write of the Lease from the next: any renewal changes the renewTime and
/// the resourceVersion, a takeover the holder. Compared for equality only, never with a
/// clock.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordVersion {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

impl Observed {
    /// `lease` as read at `now`. The observation time of `previous` is kept while the
    /// record is unchanged: reading a stale lease again must not make it look fresh.
    pub fn new(lease: &Lease, previous: Option<&Observed>, our_duration: Duration, now: Instant) -> Observed {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        let version = RecordVersion {
            holder: holder.clone(),
            renew_time: spec.renew_time.map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let changed_at = match previous {
            Some(p) if p.version == version => p.changed_at,
            _ => now,
        };
        let lease_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|&s| s > 0)
            .map_or(our_duration, Duration::from_secs);
        Observed {
            holder,
            lease_duration,
            transitions: spec.lease_transitions.unwrap_or(0),
            changed_at,
            version,
        }
    }
}

/// This replica's part in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Candidate,
    /// Leading; the last successful renewal (or the acquisition) was sent at `renewed_at`.
    Leader {
        renewed_at: Instant,
    },
}

/// What to do after reading the Lease.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write ourselves in as holder (create the Lease when there is none).
    Acquire { transitions: i32 },
    /// We lead and may go on: write a fresh renewTime.
    Renew,
    /// Another replica holds a claim that has not expired by our observation.
    Wait { holder: String },
    /// Stop leading at once.
    StepDown(StepDown),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepDown {
    /// No renewal succeeded within the renew deadline.
    DeadlinePassed,
    /// The Lease names another holder.
    TakenBy(String),
    /// The Lease was deleted or emptied under us: someone else may be creating it.
    LeaseGone,
}

impl std::fmt::Display for StepDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepDown::DeadlinePassed => f.write_str("the lease was not renewed within the renew deadline"),
            StepDown::TakenBy(holder) => write!(f, "the lease is held by {holder}"),
            StepDown::LeaseGone => f.write_str("the lease was deleted or released by someone else"),
        }
    }
}

/// The election's rules. `observed` is the Lease just read (`None`: there is none), `now`
/// the local monotonic time of that read.
pub fn decide(role: Role, observed: Option<&Observed>, me: &str, now: Instant, timing: &Timing) -> Action {
    if let Role::Leader { renewed_at } = role {
        if now >= timing.renewal_deadline(renewed_at) {
            return Action::StepDown(StepDown::DeadlinePassed);
        }
        return match observed.and_then(|o| o.holder.as_deref()) {
            Some(holder) if holder == me => Action::Renew,
            Some(holder) => Action::StepDown(StepDown::TakenBy(holder.to_owned())),
            None => Action::StepDown(StepDown::LeaseGone),
        };
    }
    let Some(observed) = observed else { return Action::Acquire { transitions: 0 } };
    match observed.holder.as_deref() {
        None => Action::Acquire { transitions: observed.transitions + 1 },
        // Our own claim from an earlier term: no one else leads under our name.
        Some(holder) if holder == me => Action::Acquire { transitions: observed.transitions },
        Some(_) if now >= observed.changed_at + observed.lease_duration => {
            Action::Acquire { transitions: observed.transitions + 1 }
        }
        Some(holder) => Action::Wait { holder: holder.to_owned() },
    }
}

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub timing: Timing,
}

/// What this replica shows of the election: the `mlops_operator_leader` gauge, and the
/// readiness flag behind `/readyz` (its last Lease round reached the API server).
#[derive(Clone)]
pub struct Signals {
    pub leader: IntGauge,
    pub ready: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{request} of the Lease got no answer within {timeout:?}")]
    Timeout { request: &'static str, timeout: Duration },
    #[error("{request} of the Lease failed: {source}")]
    Api {
        request: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl LeaseError {
    fn is_conflict(&self) -> bool {
        matches!(self, LeaseError::Api { source: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// The result of one read-decide-write round.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// We hold the lease now.
    Holding,
    Waiting {
        holder: String,
    },
    StepDown(StepDown),
    /// Another writer changed the Lease between our read and our write.
    Conflict,
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    signals: Signals,
    observed: Option<Observed>,
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaseConfig, signals: Signals) -> Self {
        LeaderElector { api: Api::namespaced(client, &cfg.namespace), cfg, signals, observed: None }
    }

    /// Leads whenever this replica holds the lease, until `stop`. Each term runs `lead()`
    /// (the controllers); when leadership ends the term is cancelled and the replica is a
    /// standby again. On `stop`, the term finishes its work and the lease is released.
    ///
    /// Why a standby again rather than exiting, as client-go's users usually do in
    /// `OnStoppedLeading`: a Go program cannot cancel goroutines from outside, so exiting
    /// is its only sure way to stop a lost leader's work. Here a term is one future (the
    /// controllers spawn no tasks of their own), and dropping it cancels every reconcile in
    /// flight at its next await; the next term builds fresh controllers and caches.
    /// Staying up keeps the replica a standby that can take over and keeps `/metrics`
    /// answering, where an exit would be restarted by the kubelet with a back-off of up to
    /// five minutes while the API server is flaky.
    pub async fn run<F, Fut>(mut self, mut stop: watch::Receiver<bool>, mut lead: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let renewed_at = tokio::select! {
                at = self.acquire() => at,
                _ = stop.wait_for(|s| *s) => return,
            };
            self.signals.leader.set(1);
            // The term lives only inside this select: when hold() returns, the term's
            // future is dropped before anything else happens.
            let ended = tokio::select! {
                () = lead() => None,
                reason = self.hold(renewed_at) => Some(reason),
            };
            self.signals.leader.set(0);
            match ended {
                None => return self.release().await,
                Some(reason) => error!(
                    lease = %self.cfg.name, %reason,
                    "stopped leading: every controller is cancelled; standing by"
                ),
            }
        }
    }

    /// Waits as a standby until this replica holds the lease; returns when the winning
    /// write was sent.
    async fn acquire(&mut self) -> Instant {
        let mut last_holder = String::new();
        loop {
            let started = Instant::now();
            let outcome = self.round(Role::Candidate).await;
            self.signals.ready.store(outcome.is_ok(), Ordering::Relaxed);
            match outcome {
                Ok(Outcome::Holding) => {
                    info!(lease = %self.cfg.name, identity = %self.cfg.identity, "acquired leadership");
                    return started;
                }
                Ok(Outcome::Waiting { holder }) if holder != last_holder => {
                    info!(lease = %self.cfg.name, %holder, "waiting for leadership held by another replica");
                    last_holder = holder;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.cfg.timing.retry_period).await;
        }
    }

    /// Renews the lease until leadership ends, and says why it ended. Returns by the renew
    /// deadline at the latest, however long a request hangs.
    async fn hold(&mut self, mut renewed_at: Instant) -> StepDown {
        let timing = self.cfg.timing;
        loop {
            let deadline = timing.renewal_deadline(renewed_at);
            tokio::time::sleep_until(deadline.min(Instant::now() + timing.retry_period)).await;
            if Instant::now() >= deadline {
                self.signals.ready.store(false, Ordering::Relaxed);
                return StepDown::DeadlinePassed;
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout_at(deadline, self.round(Role::Leader { renewed_at })).await;
            self.signals.ready.store(matches!(outcome, Ok(Ok(_))), Ordering::Relaxed);
            match outcome {
                Ok(Ok(Outcome::Holding)) => renewed_at = started,
                Ok(Ok(Outcome::StepDown(reason))) => return reason,
                Ok(Ok(Outcome::Waiting { holder })) => return StepDown::TakenBy(holder),
                Ok(Ok(Outcome::Conflict)) => warn!("the lease changed while renewing it; reading it again"),
                Ok(Err(e)) => warn!(error = %e, "renewing the leader lease failed"),
                Err(_) => warn!("renewing the leader lease did not finish by the renew deadline"),
            }
        }
    }

    /// One round: read the Lease, decide, and write it if we should hold it.
    async fn round(&mut self, role: Role) -> Result<Outcome, LeaseError> {
        let lease = self.request("get", self.api.get_opt(&self.cfg.name)).await?;
        let now = Instant::now();
        let previous = self.observed.take();
        self.observed =
            lease.as_ref().map(|l| Observed::new(l, previous.as_ref(), self.cfg.timing.lease_duration, now));
        let transitions =
            match decide(role, self.observed.as_ref(), &self.cfg.identity, now, &self.cfg.timing) {
                Action::Wait { holder } => return Ok(Outcome::Waiting { holder }),
                Action::StepDown(reason) => return Ok(Outcome::StepDown(reason)),
                Action::Renew => None,
                Action::Acquire { transitions } => Some(transitions),
            };
        match self.write(lease, transitions).await {
            Ok(()) => Ok(Outcome::Holding),
            Err(e) if e.is_conflict() => Ok(Outcome::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Writes ourselves in as holder: a fresh claim when `acquiring` (with that transition
    /// count), otherwise a renewal that keeps the acquisition time and count.
    async fn write(&mut self, existing: Option<Lease>, acquiring: Option<i32>) -> Result<(), LeaseError> {
        let now = MicroTime(Timestamp::now());
        let old = existing.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
        let spec = LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.cfg.timing.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: match acquiring {
                Some(_) => Some(now.clone()),
                None => old.acquire_time.or(Some(now.clone())),
            },
            renew_time: Some(now),
            lease_transitions: Some(acquiring.unwrap_or(old.lease_transitions.unwrap_or(0))),
            ..LeaseSpec::default()
        };
        let written = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.cfg.name.clone()), ..ObjectMeta::default() },
                    spec: Some(spec),
                };
                self.request("create", self.api.create(&PostParams::default(), &lease)).await?
            }
            Some(mut lease) => {
                // The resourceVersion we read goes with the update: a concurrent writer
                // makes it fail with 409 instead of both believing they lead.
                lease.spec = Some(spec);
                self.request("update", self.api.replace(&self.cfg.name, &PostParams::default(), &lease))
                    .await?
            }
        };
        self.observed = Some(Observed::new(&written, None, self.cfg.timing.lease_duration, Instant::now()));
        Ok(())
    }

    /// Gives the lease up on shutdown, once the term's work has finished, so that a
    /// standby takes over at once.
    async fn release(&mut self) {
        let lease = match self.request("get", self.api.get_opt(&self.cfg.name)).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => return warn!(error = %e, "releasing the leader lease failed"),
        };
        let mut lease = lease;
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.request("update", self.api.replace(&self.cfg.name, &PostParams::default(), &lease)).await {
            Ok(_) => info!("released leadership"),
            Err(e) => warn!(error = %e, "releasing the leader lease failed"),
        }
    }

    /// `call`, bounded by the request timeout: no Lease request can hang.
    async fn request<T>(
        &self,
        request: &'static str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        let timeout = self.cfg.timing.request_timeout();
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result.map_err(|source| LeaseError::Api { request, source }),
            Err(_) => Err(LeaseError::Timeout { request, timeout }),
        }
    }
}

#[cfg(test)]
mod tests;
