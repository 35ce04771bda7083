//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas never
//! reconcile at once. Writes use the Lease's resourceVersion: two candidates racing for an
//! expired lease cannot both win, because the loser's update fails with a conflict.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a holder's claim is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and a candidate retries.
    pub retry_period: Duration,
}

/// What a candidate should do with the lease it observed: a pure decision, so that the
/// rules are unit-tested without a cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Free, expired or already ours: write ourselves in as holder.
    Take { transitions: i32 },
    /// Someone else holds a live lease.
    Wait { holder: String },
}

pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Claim {
    let Some(spec) = spec else { return Claim::Take { transitions: 0 } };
    let transitions = spec.lease_transitions.unwrap_or(0);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Claim::Take { transitions: transitions + 1 };
    }
    if holder == me {
        return Claim::Take { transitions };
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    match renewed {
        Some(t) if t.as_second() + duration > now.as_second() => Claim::Wait { holder },
        _ => Claim::Take { transitions: transitions + 1 },
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    acquired_at: Option<Timestamp>,
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        LeaderElector { api: Api::namespaced(client, &cfg.namespace), cfg, acquired_at: None }
    }

    /// Blocks until this replica holds the lease.
    pub async fn acquire(&mut self) {
        let mut last_holder = String::new();
        loop {
            match self.try_claim().await {
                Ok(None) => {
                    info!(lease = %self.cfg.name, identity = %self.cfg.identity, "acquired leadership");
                    return;
                }
                Ok(Some(holder)) => {
                    if holder != last_holder {
                        info!(lease = %self.cfg.name, %holder, "waiting for leadership held by another replica");
                        last_holder = holder;
                    }
                }
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Keeps the lease renewed. Returns when leadership is lost: renewal kept failing for a
    /// whole lease duration, or another replica took the lease.
    pub async fn hold(&mut self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.try_claim().await {
                Ok(None) => last_ok = tokio::time::Instant::now(),
                Ok(Some(holder)) => {
                    warn!(%holder, "leadership lost to another replica");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "renewing the leader lease failed");
                    // Stop before the lease can expire under us: another replica may then
                    // take it, and two leaders must never overlap.
                    if last_ok.elapsed() + self.cfg.retry_period >= self.cfg.lease_duration {
                        warn!("could not renew the leader lease in time; stepping down");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up on shutdown so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => info!("released leadership"),
            Err(e) => warn!(error = %e, "releasing the leader lease failed"),
        }
    }

    /// One attempt: `Ok(None)` when we hold the lease afterwards, `Ok(Some(holder))` when
    /// another replica does.
    async fn try_claim(&mut self) -> Result<Option<String>, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.cfg.name).await?;
        let transitions =
            match decide(existing.as_ref().and_then(|l| l.spec.as_ref()), &self.cfg.identity, now) {
                Claim::Wait { holder } => return Ok(Some(holder)),
                Claim::Take { transitions } => transitions,
            };
        let ours = existing.as_ref().and_then(|l| l.spec.as_ref()).and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if !ours || self.acquired_at.is_none() {
            self.acquired_at = Some(now);
        }
        let spec = LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs() as i32),
            acquire_time: Some(MicroTime(self.acquired_at.unwrap_or(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let result = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.cfg.name.clone()), ..ObjectMeta::default() },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // replace() carries the resourceVersion we read: a concurrent writer makes
                // this fail with 409 instead of both believing they lead.
                lease.spec = Some(spec);
                self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some("<a concurrent candidate>".into())),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::from_second(1_000_000).unwrap();
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(now - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    #[test]
    fn no_lease_is_taken() {
        assert_eq!(decide(None, "a", now()), Claim::Take { transitions: 0 });
    }

    #[test]
    fn a_live_lease_of_another_replica_is_respected() {
        assert_eq!(decide(Some(&spec(Some("b"), 5, 15)), "a", now()), Claim::Wait { holder: "b".into() });
    }

    #[test]
    fn an_expired_lease_is_taken_and_counts_a_transition() {
        assert_eq!(decide(Some(&spec(Some("b"), 16, 15)), "a", now()), Claim::Take { transitions: 4 });
    }

    #[test]
    fn our_own_lease_is_renewed_without_a_transition() {
        assert_eq!(decide(Some(&spec(Some("a"), 5, 15)), "a", now()), Claim::Take { transitions: 3 });
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        assert_eq!(decide(Some(&spec(None, 0, 1)), "a", now()), Claim::Take { transitions: 4 });
    }
}
