//! Two operator replicas never reconcile at once: exactly one holds the Lease, the standby
//! reconciles nothing while it waits, and when the leader stops the other takes over. A
//! leader cut off from the API server stops before the other can take over, and stays a
//! standby once it is reconnected.

use std::time::{Duration, Instant};

use k8s_openapi::api::{coordination::v1::Lease, events::v1::Event};
use kube::{Api, api::ListParams};
use mlops_operator::api::{ModelVersion, conditions as cond};
use testkit::{ApiProxy, Operator, TestEnv, install_crds};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn one_leader_at_a_time_and_a_standby_takes_over() {
    let env = TestEnv::start("leader").await;
    install_crds();
    let mut a = Operator::start(OPERATOR, &env.namespace, &[]);
    let b = Operator::start(OPERATOR, &env.namespace, &[]);
    let leader = |op: &Operator| op.metric("mlops_operator_leader").unwrap_or(0.0) == 1.0;
    // Reconciliations started by a replica, summed over its controllers.
    let reconciles = |op: &Operator| -> f64 {
        op.metrics()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("mlops_operator_reconciliations_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };

    // Sample both replicas for a while: one leads, never two.
    let start = Instant::now();
    let mut seen_leader = false;
    while start.elapsed() < Duration::from_secs(6) {
        let (la, lb) = (leader(&a), leader(&b));
        assert!(!(la && lb), "both replicas lead at once");
        seen_leader |= la || lb;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_leader, "no replica became leader\nA:\n{}\nB:\n{}", a.log_tail(20), b.log_tail(20));
    // Which one leads (asked until one answers so: a metrics read can fail under load).
    let a_leads = testkit::wait_until(Duration::from_secs(20), "one replica to report leading", || async {
        match (leader(&a), leader(&b)) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    })
    .await;
    let (mut first, second) = if a_leads { (a, b) } else { (b, a) };

    // Work arrives: the leader reconciles it, the standby does not touch it.
    let version = r#"{"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "iris-imported"},
        "spec": {"model": "iris", "artifact": {"uri": "s3://models/iris/imported/model.json"}}}"#;
    let out = env.kubectl(&["apply", "-f", "-"], Some(version));
    assert!(out.status.success(), "{}", testkit::output_text(&out));
    let start = Instant::now();
    while reconciles(&first) == 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the leader never reconciled:\n{}",
            first.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The leader has done the work (the version is validated) and is idle: the standby,
    // had it run its controllers, would have seen the same changes by now.
    let mvs: Api<ModelVersion> = env.api();
    let name = "iris-imported";
    testkit::wait_condition(&mvs, name, cond::VALIDATED, "True", Duration::from_secs(30)).await;
    first.wait_idle("modelversion", Duration::from_secs(1), Duration::from_secs(30)).await;
    assert_eq!(reconciles(&second), 0.0, "the standby reconciled:\n{}", second.log_tail(20));

    // The leader stops (SIGTERM releases the Lease); the standby takes over quickly.
    let status = first.terminate(Duration::from_secs(10)).expect("the leader exits on SIGTERM");
    assert!(status.success(), "graceful shutdown exits 0: {status:?}\n{}", first.log_tail(20));
    let took_over = Instant::now();
    while !leader(&second) {
        assert!(
            took_over.elapsed() < Duration::from_secs(10),
            "the standby never took over:\n{}",
            second.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(first);
    a = second;
    assert!(leader(&a));
}

const LEASE: &str = "mlops-operator-leader";

fn leads(op: &Operator) -> Option<bool> {
    op.metric("mlops_operator_leader").map(|v| v == 1.0)
}

/// Reconciliations a replica started, summed over its controllers (`None` while its
/// metrics do not answer).
fn reconciles(op: &Operator) -> Option<f64> {
    let text = op.metrics()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("mlops_operator_reconciliations_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn model_version(name: &str) -> String {
    format!(
        r#"{{"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {{"name": "{name}"}},
        "spec": {{"model": "iris", "artifact": {{"uri": "s3://models/iris/{name}/model.json"}}}}}}"#
    )
}

/// The leader's network to the API server stalls (nothing is closed or refused: requests
/// hang). It must stop reconciling before its lease can expire for the standby, which then
/// takes over; reconnected, the old leader stays a standby and writes nothing.
#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_takes_over() {
    let env = TestEnv::start("leader-stall").await;
    install_crds();
    let proxy = ApiProxy::start(&env.namespace).await;
    let a = Operator::start_with_kubeconfig(
        OPERATOR,
        &env.namespace,
        &["--identity", "replica-a"],
        proxy.kubeconfig(),
    );
    testkit::wait_until(Duration::from_secs(60), "replica A to lead", || async { leads(&a).filter(|l| *l) })
        .await;
    let b = Operator::start_as(OPERATOR, &env.namespace, &["--identity", "replica-b"]);
    // B is ready once it has read the Lease: it stands by, A's claim seen.
    testkit::wait_until(Duration::from_secs(60), "replica B to stand by", || async {
        b.ready().then_some(())
    })
    .await;
    assert_eq!(leads(&b), Some(false), "B leads while A holds the lease:\n{}", b.log_tail(20));

    // A does the work.
    let out = env.kubectl(&["apply", "-f", "-"], Some(&model_version("iris-before")));
    assert!(out.status.success(), "{}", testkit::output_text(&out));
    let mvs: Api<ModelVersion> = env.api();
    testkit::wait_condition(&mvs, "iris-before", cond::VALIDATED, "True", Duration::from_secs(30)).await;
    a.wait_idle("modelversion", Duration::from_secs(1), Duration::from_secs(30)).await;
    assert_eq!(reconciles(&b), Some(0.0), "the standby reconciled:\n{}", b.log_tail(20));
    let a_work = reconciles(&a).expect("A's metrics");

    // Cut A off. Sample both replicas until B leads: A must have said it stopped leading
    // (its controllers cancelled) and not ready, before B is seen leading.
    proxy.stall();
    let cut = Instant::now();
    let mut a_stopped: Option<Duration> = None;
    loop {
        let a_leads = leads(&a);
        let a_ready = a.ready();
        let b_leads = leads(&b);
        if a_stopped.is_none() && a_leads == Some(false) {
            assert!(!a_ready, "A stopped leading but says it is ready while cut off");
            a_stopped = Some(cut.elapsed());
        }
        if b_leads == Some(true) {
            let stopped = a_stopped.unwrap_or_else(|| {
                panic!(
                    "B took over {:?} after the cut while A still reported leading ({a_leads:?})\nA:\n{}\nB:\n{}",
                    cut.elapsed(),
                    a.log_tail(20),
                    b.log_tail(20)
                )
            });
            eprintln!("A stopped leading {stopped:?} after the cut; B led {:?} after it", cut.elapsed());
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "B never took over (A stopped: {a_stopped:?})\nA:\n{}\nB:\n{}",
            a.log_tail(20),
            b.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leases: Api<Lease> = env.api();
    let lease = leases.get(LEASE).await.expect("the Lease");
    assert_eq!(lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()), Some("replica-b"));

    // B reconciles a change while A is still cut off.
    let b_before = b.reconciles_started("modelversion").expect("B's metrics");
    let out = env.kubectl(&["apply", "-f", "-"], Some(&model_version("iris-after")));
    assert!(out.status.success(), "{}", testkit::output_text(&out));
    b.wait_pass("modelversion", b_before, "creating iris-after", Duration::from_secs(30)).await;
    testkit::wait_condition(&mvs, "iris-after", cond::VALIDATED, "True", Duration::from_secs(30)).await;

    // Reconnect A: whatever it held back reaches the API server now. It answers again (is
    // ready), but stays a standby while B renews: no lease taken, no reconciliation.
    proxy.resume();
    testkit::wait_until(Duration::from_secs(30), "replica A to reach the API server again", || async {
        a.ready().then_some(())
    })
    .await;
    let mut version = lease.metadata.resource_version.clone();
    let mut renewals = 0;
    let start = Instant::now();
    while renewals < 3 {
        let lease = leases.get(LEASE).await.expect("the Lease");
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        assert_eq!(holder.as_deref(), Some("replica-b"), "the lease changed hands:\nA:\n{}", a.log_tail(20));
        if lease.metadata.resource_version != version {
            version = lease.metadata.resource_version;
            renewals += 1;
        }
        assert_ne!(leads(&a), Some(true), "A leads again:\n{}", a.log_tail(20));
        assert_eq!(
            reconciles(&a).unwrap_or(a_work),
            a_work,
            "A reconciled after the cut:\n{}",
            a.log_tail(20)
        );
        assert!(start.elapsed() < Duration::from_secs(30), "B stopped renewing:\n{}", b.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leads(&b), Some(true));

    // Every Event about the version made after the cut names B as its reporter.
    let events: Api<Event> = env.api();
    let events = events.list(&ListParams::default()).await.expect("Events").items;
    let after: Vec<_> = events
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("iris-after"))
        .map(|e| (e.reason.clone(), e.reporting_instance.clone()))
        .collect();
    assert!(!after.is_empty(), "no Event about iris-after");
    assert!(after.iter().all(|(_, by)| by.as_deref() == Some("replica-b")), "{after:?}");
}
