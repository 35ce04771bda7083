//! Two operator replicas never reconcile at once: exactly one holds the Lease, and when it
//! stops the other takes over.

use std::time::{Duration, Instant};

use testkit::{Operator, TestEnv, install_crds};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");

#[tokio::test]
async fn one_leader_at_a_time_and_a_standby_takes_over() {
    let Some(env) = TestEnv::start("leader").await else { return };
    install_crds();
    let mut a = Operator::start(OPERATOR, &env.namespace, &[]);
    let b = Operator::start(OPERATOR, &env.namespace, &[]);
    let leader = |op: &Operator| op.metric("mlops_operator_leader").unwrap_or(0.0) == 1.0;

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
    let (mut first, second) = if leader(&a) { (a, b) } else { (b, a) };

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
