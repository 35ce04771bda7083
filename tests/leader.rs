//! Two operator replicas never reconcile at once: exactly one holds the Lease, the standby
//! reconciles nothing while it waits, and when the leader stops the other takes over.

use std::time::{Duration, Instant};

use kube::Api;
use mlops_operator::api::{ModelVersion, conditions as cond};
use testkit::{Operator, TestEnv, install_crds};

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
