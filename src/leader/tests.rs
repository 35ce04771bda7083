use std::sync::Mutex;

use http::{Request, Response};
use k8s_openapi::jiff::SignedDuration;
use kube::client::Body;
use serde_json::{Value, json};

use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// client-go's defaults, which are ours too.
fn timing() -> Timing {
    Timing::new(secs(15), secs(10), secs(2)).unwrap()
}

/// Our wall clock; the rules must not care what it says.
fn wall() -> Timestamp {
    Timestamp::from_second(1_700_000_000).unwrap()
}

fn lease(holder: Option<&str>, renew_time: Timestamp, resource_version: &str) -> Lease {
    Lease {
        metadata: ObjectMeta { resource_version: Some(resource_version.into()), ..ObjectMeta::default() },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renew_time)),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }),
    }
}

fn seen(lease: &Lease, previous: Option<&Observed>, at: Instant) -> Observed {
    Observed::new(lease, previous, timing().lease_duration, at)
}

fn candidate(observed: &Observed, now: Instant) -> Action {
    decide(Role::Candidate, Some(observed), "a", now, &timing())
}

fn waits_for_b() -> Action {
    Action::Wait { holder: "b".into() }
}

#[test]
fn the_renew_deadline_must_be_shorter_than_the_lease_duration() {
    assert_eq!(
        Timing::new(secs(15), secs(15), secs(2)),
        Err(TimingError::DeadlineNotBeforeExpiry { renew_deadline: secs(15), lease_duration: secs(15) })
    );
    assert!(Timing::new(secs(10), secs(12), secs(2)).is_err());
}

#[test]
fn the_renew_deadline_must_leave_room_for_a_retry() {
    assert_eq!(
        Timing::new(secs(15), secs(2), secs(2)),
        Err(TimingError::DeadlineNotAfterRetry { renew_deadline: secs(2), retry_period: secs(2) })
    );
}

#[test]
fn every_period_must_be_positive() {
    assert_eq!(Timing::new(secs(15), secs(10), Duration::ZERO), Err(TimingError::NotPositive));
    assert_eq!(Timing::new(Duration::ZERO, Duration::ZERO, secs(2)), Err(TimingError::NotPositive));
}

#[test]
fn the_default_renew_deadline_is_two_thirds_of_the_lease() {
    assert_eq!(Timing::default_renew_deadline(secs(15)), secs(10));
    // testkit's operators: 6 s leases renewed every second.
    assert!(Timing::new(secs(6), Timing::default_renew_deadline(secs(6)), secs(1)).is_ok());
}

#[test]
fn a_hung_request_leaves_time_for_another_before_the_deadline() {
    let t = timing();
    assert!(t.request_timeout() * 2 <= t.renew_deadline);
}

#[test]
fn no_lease_is_created() {
    assert_eq!(
        decide(Role::Candidate, None, "a", Instant::now(), &timing()),
        Action::Acquire { transitions: 0 }
    );
}

#[test]
fn a_live_claim_is_respected_for_a_lease_duration_from_our_observation() {
    let t0 = Instant::now();
    let b = seen(&lease(Some("b"), wall(), "7"), None, t0);
    assert_eq!(candidate(&b, t0 + secs(14)), waits_for_b());
    assert_eq!(candidate(&b, t0 + secs(15)), Action::Acquire { transitions: 4 });
}

#[test]
fn a_renew_time_far_in_the_past_by_our_clock_still_gets_a_whole_lease_duration() {
    // The holder's clock runs an hour behind ours (or ours an hour ahead): by wall clocks
    // its lease expired long ago, yet it renewed just now.
    let t0 = Instant::now();
    let b = seen(&lease(Some("b"), wall() - SignedDuration::from_hours(1), "7"), None, t0);
    assert_eq!(candidate(&b, t0), waits_for_b());
    assert_eq!(candidate(&b, t0 + secs(14)), waits_for_b());
}

#[test]
fn a_renew_time_in_the_future_does_not_stretch_the_claim() {
    // A holder whose clock runs an hour ahead, and that has stopped renewing.
    let t0 = Instant::now();
    let b = seen(&lease(Some("b"), wall() + SignedDuration::from_hours(1), "7"), None, t0);
    let again = seen(&lease(Some("b"), wall() + SignedDuration::from_hours(1), "7"), Some(&b), t0 + secs(10));
    assert_eq!(candidate(&again, t0 + secs(15)), Action::Acquire { transitions: 4 });
}

#[test]
fn reading_an_unchanged_record_again_does_not_make_it_fresh() {
    let t0 = Instant::now();
    let first = seen(&lease(Some("b"), wall(), "7"), None, t0);
    let again = seen(&lease(Some("b"), wall(), "7"), Some(&first), t0 + secs(10));
    assert_eq!(again.changed_at, t0);
    assert_eq!(candidate(&again, t0 + secs(15)), Action::Acquire { transitions: 4 });
}

#[test]
fn every_renewal_starts_the_count_again() {
    let t0 = Instant::now();
    let first = seen(&lease(Some("b"), wall(), "7"), None, t0);
    let renewed =
        seen(&lease(Some("b"), wall() + SignedDuration::from_secs(10), "8"), Some(&first), t0 + secs(10));
    assert_eq!(candidate(&renewed, t0 + secs(20)), waits_for_b());
    assert_eq!(candidate(&renewed, t0 + secs(25)), Action::Acquire { transitions: 4 });
}

#[test]
fn a_new_resource_version_is_a_renewal_even_with_the_same_renew_time() {
    // A holder whose clock stands still writes the same renewTime every time.
    let t0 = Instant::now();
    let first = seen(&lease(Some("b"), wall(), "7"), None, t0);
    let renewed = seen(&lease(Some("b"), wall(), "8"), Some(&first), t0 + secs(10));
    assert_eq!(candidate(&renewed, t0 + secs(20)), waits_for_b());
}

#[test]
fn a_new_holder_is_a_fresh_claim() {
    let t0 = Instant::now();
    let first = seen(&lease(Some("b"), wall(), "7"), None, t0);
    let taken = seen(&lease(Some("c"), wall(), "7"), Some(&first), t0 + secs(10));
    assert_eq!(candidate(&taken, t0 + secs(20)), Action::Wait { holder: "c".into() });
}

#[test]
fn the_holders_lease_duration_counts_not_ours() {
    let t0 = Instant::now();
    let mut long = lease(Some("b"), wall(), "7");
    long.spec.as_mut().unwrap().lease_duration_seconds = Some(30);
    let b = seen(&long, None, t0);
    assert_eq!(candidate(&b, t0 + secs(20)), waits_for_b());
    assert_eq!(candidate(&b, t0 + secs(30)), Action::Acquire { transitions: 4 });
}

#[test]
fn our_own_claim_is_taken_back_without_a_transition() {
    let t0 = Instant::now();
    let ours = seen(&lease(Some("a"), wall(), "7"), None, t0);
    assert_eq!(candidate(&ours, t0), Action::Acquire { transitions: 3 });
}

#[test]
fn a_released_lease_is_taken_at_once() {
    let t0 = Instant::now();
    let released = seen(&lease(None, wall(), "7"), None, t0);
    assert_eq!(candidate(&released, t0), Action::Acquire { transitions: 4 });
    let emptied = seen(&lease(Some(""), wall(), "7"), None, t0);
    assert_eq!(candidate(&emptied, t0), Action::Acquire { transitions: 4 });
}

#[test]
fn the_leader_renews_within_the_deadline() {
    let t0 = Instant::now();
    let ours = seen(&lease(Some("a"), wall(), "7"), None, t0);
    let leader = Role::Leader { renewed_at: t0 };
    assert_eq!(decide(leader, Some(&ours), "a", t0 + secs(9), &timing()), Action::Renew);
}

#[test]
fn a_leader_whose_renewals_hang_steps_down_at_the_deadline() {
    // The Lease still names us (nothing was written since), but no renewal got through.
    let t0 = Instant::now();
    let ours = seen(&lease(Some("a"), wall(), "7"), None, t0);
    let leader = Role::Leader { renewed_at: t0 };
    assert_eq!(
        decide(leader, Some(&ours), "a", t0 + secs(10), &timing()),
        Action::StepDown(StepDown::DeadlinePassed)
    );
}

#[test]
fn a_leader_steps_down_when_the_lease_names_another_or_is_gone() {
    let t0 = Instant::now();
    let leader = Role::Leader { renewed_at: t0 };
    let b = seen(&lease(Some("b"), wall(), "8"), None, t0);
    assert_eq!(decide(leader, Some(&b), "a", t0, &timing()), Action::StepDown(StepDown::TakenBy("b".into())));
    assert_eq!(decide(leader, None, "a", t0, &timing()), Action::StepDown(StepDown::LeaseGone));
    let released = seen(&lease(None, wall(), "8"), None, t0);
    assert_eq!(decide(leader, Some(&released), "a", t0, &timing()), Action::StepDown(StepDown::LeaseGone));
}

#[test]
fn the_leader_stops_before_any_candidate_may_take_over() {
    for (lease_s, renew_s, retry_s) in [(15, 10, 2), (6, 4, 1), (3, 2, 1)] {
        let t = Timing::new(secs(lease_s), secs(renew_s), secs(retry_s)).unwrap();
        // The last renewal is sent at t0; a candidate cannot see it before it was sent,
        // whatever the holder wrote as its renewTime.
        let t0 = Instant::now();
        for seen_after in [Duration::ZERO, Duration::from_millis(300), secs(1)] {
            let mut written = lease(Some("b"), wall() - SignedDuration::from_hours(5), "9");
            written.spec.as_mut().unwrap().lease_duration_seconds = Some(lease_s as i32);
            let observed = Observed::new(&written, None, t.lease_duration, t0 + seen_after);
            let ours = Observed::new(&written, None, t.lease_duration, t0);
            let deadline = t.renewal_deadline(t0);
            assert_eq!(
                decide(Role::Leader { renewed_at: t0 }, Some(&ours), "b", deadline, &t),
                Action::StepDown(StepDown::DeadlinePassed)
            );
            assert_eq!(decide(Role::Candidate, Some(&observed), "a", deadline, &t), waits_for_b());
            assert_eq!(
                decide(Role::Candidate, Some(&observed), "a", t0 + seen_after + t.lease_duration, &t),
                Action::Acquire { transitions: 4 }
            );
        }
    }
}

/// An API server that keeps one Lease: creates and reads are answered, every update hangs
/// for good (the request is never answered and never fails), as behind a stalled network.
fn api_whose_updates_hang() -> (Client, Arc<Mutex<Vec<String>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let calls = log.clone();
    tokio::spawn(async move {
        let mut stored: Option<Value> = None;
        let mut hung = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            calls.lock().unwrap().push(parts.method.to_string());
            let bytes =
                http_body_util::BodyExt::collect(body).await.map(|b| b.to_bytes()).unwrap_or_default();
            let (status, reply) = match (parts.method.as_str(), &stored) {
                ("GET", Some(lease)) => (200, lease.clone()),
                ("GET", None) => (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "not found", "reason": "NotFound", "code": 404}),
                ),
                ("POST", _) => {
                    let mut lease: Value = serde_json::from_slice(&bytes).unwrap();
                    lease["metadata"]["resourceVersion"] = json!("1");
                    stored = Some(lease.clone());
                    (201, lease)
                }
                _ => {
                    hung.push(send);
                    continue;
                }
            };
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), log)
}

/// Reports when the term it lives in is dropped (cancelled).
struct TermEnd(Option<tokio::sync::oneshot::Sender<Instant>>);

impl Drop for TermEnd {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Instant::now());
        }
    }
}

#[tokio::test]
async fn a_hung_renewal_cancels_the_term_before_the_lease_can_expire() {
    let timing =
        Timing::new(Duration::from_millis(3000), Duration::from_millis(1000), Duration::from_millis(200))
            .unwrap();
    let (client, calls) = api_whose_updates_hang();
    let signals = Signals { leader: IntGauge::new("leader", "test").unwrap(), ready: Arc::default() };
    let cfg = LeaseConfig { namespace: "default".into(), name: "lease".into(), identity: "a".into(), timing };
    let elector = LeaderElector::new(client, cfg, signals.clone());

    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Instant>();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<Instant>();
    let mut terms = Some((started_tx, ended_tx));
    let (stop_tx, stop_rx) = watch::channel(false);
    let election = tokio::spawn(elector.run(stop_rx, move || {
        let term = terms.take();
        async move {
            let Some((started, ended)) = term else { return std::future::pending().await };
            let _end = TermEnd(Some(ended));
            let _ = started.send(Instant::now());
            std::future::pending::<()>().await
        }
    }));

    let bound = Duration::from_secs(10);
    let started = tokio::time::timeout(bound, started_rx).await.expect("the lease is acquired").unwrap();
    let ended = tokio::time::timeout(bound, ended_rx).await.expect("the term is cancelled").unwrap();
    let led = ended - started;
    assert!(led >= timing.renew_deadline - timing.retry_period, "stepped down after {led:?}: too early");
    assert!(
        led < timing.lease_duration,
        "led {led:?}: the lease could have expired for the others meanwhile"
    );
    assert_eq!(signals.leader.get(), 0);
    assert!(!signals.ready.load(Ordering::Relaxed), "not ready while the API server does not answer");
    assert!(calls.lock().unwrap().iter().any(|m| m == "PUT"), "a renewal was attempted: {calls:?}");

    let _ = stop_tx.send(true);
    tokio::time::timeout(bound, election).await.expect("a standby stops at once").unwrap();
}
