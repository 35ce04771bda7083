use std::collections::BTreeMap;

use k8s_openapi::{
    api::batch::v1::{JobCondition, JobStatus},
    jiff::{SignedDuration, Timestamp},
};

use super::*;
use crate::controllers::pod_security::policy::Level;
use crate::{
    api::{
        ModelVersionSpec,
        common::LocalRef,
        model_version::{DatasetLineage, Lineage},
        training_job::{DataTrigger, DriftTrigger, Retrain},
    },
    controllers::training_job::{
        desired,
        inputs::PodOutcome,
        model_version::{ANNOTATION_TRAINING_JOB_UID, REASON_VERSION_NAME_TAKEN, REASON_VERSION_REJECTED},
        triggers::Reading,
    },
};

mod versions;

fn at(secs: i64) -> Time {
    Time("2025-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(secs))
}

fn tj(retrain: Retrain) -> TrainingJob {
    let mut tj: TrainingJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u1", "generation": 1,
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"model": "iris", "dataset": {"uri": "pvc://data/d.csv"},
                 "trainer": {"image": "mlops-runtime:dev"}, "output": {"uri": "file:///out"}}
    }))
    .unwrap();
    tj.spec.retrain = Some(retrain);
    tj
}

fn job(tj: &TrainingJob, run: &RunRef, condition: Option<&str>) -> Job {
    let mut job = desired::desired_job(tj, run).unwrap();
    job.status = Some(JobStatus {
        active: Some(i32::from(condition.is_none())),
        conditions: condition.map(|c| {
            vec![JobCondition { type_: c.into(), status: "True".into(), ..JobCondition::default() }]
        }),
        ..JobStatus::default()
    });
    job
}

fn reconcile(
    tj: &mut TrainingJob,
    jobs: &mut BTreeMap<String, Job>,
    readings: Readings,
    now: Time,
) -> Outcome {
    let mut inputs = Inputs { jobs: jobs.clone(), drift: readings.drift, ..Inputs::default() };
    // A dataset reading arrives as the real shell sees it: a finished check Job.
    if let Some(Reading::Value(digest)) = readings.dataset {
        let name = data_check::job_name(&tj.name_any(), now.0.as_second());
        let mut check = data_check::desired_job(tj, "mlops-runtime:dev", &name);
        check.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        let message = serde_json::json!({ "digest": digest }).to_string();
        inputs.pods.insert(name, PodOutcome { message: Some(message), ..PodOutcome::default() });
        inputs.checks.push(check);
    }
    let plan = plan(tj, &inputs, now.0);
    if let Some(run) = &plan.started {
        jobs.insert(run.name.clone(), job(tj, run, None));
    }
    tj.status = Some(plan.status.clone());
    plan
}

/// A well-formed digest made of one repeated hex character.
fn sha(c: &str) -> String {
    format!("sha256:{}", c.repeat(64))
}

fn drift(v: f64) -> Readings {
    Readings { drift: Some(Reading::Value(v)), dataset: None }
}

#[test]
fn a_drift_storm_gives_one_triggered_run_that_records_its_trigger() {
    let mut tj = tj(Retrain {
        drift: Some(DriftTrigger {
            inference_service_ref: Some(LocalRef::new("iris")),
            threshold: 0.2,
            for_seconds: Some(20),
            check_interval_seconds: Some(10),
            ..DriftTrigger::default()
        }),
        cooldown_seconds: Some(600),
        ..Retrain::default()
    });
    let mut jobs = BTreeMap::new();
    // Generation 1 starts its Spec run; it finishes.
    let p = reconcile(&mut tj, &mut jobs, drift(0.05), at(0));
    assert_eq!(p.started.as_ref().unwrap().trigger.type_, TriggerType::Spec);
    let r1 = p.started.unwrap();
    jobs.insert(r1.name.clone(), job(&tj, &r1, Some("Failed")));
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(5));
    assert!(p.started.is_none());
    assert_eq!(p.finished_runs.len(), 1);

    // Drift rises and holds; the run starts once the hold is over, and only once.
    let mut started = Vec::new();
    for (sec, value) in [(10, 0.3), (20, 0.4), (30, 0.5), (40, 0.6), (50, 0.7), (60, 0.8)] {
        let p = reconcile(&mut tj, &mut jobs, drift(value), at(sec));
        if let Some(run) = p.started.clone() {
            assert!(p.events.iter().any(|e| e.reason == "RunTriggered" && e.note.contains("Drift trigger")));
            started.push((sec, run));
        }
    }
    assert_eq!(started.len(), 1, "{started:?}");
    let (sec, run) = &started[0];
    assert_eq!(*sec, 30, "armed at 10 s, held for 20 s");
    assert_eq!((run.trigger.type_, run.trigger.drift_value), (TriggerType::Drift, Some(0.5)));
    assert_eq!(run.trigger.time, Some(at(30)));
    let status = tj.status.clone().unwrap();
    assert_eq!(status.runs.last().unwrap().trigger, run.trigger);
    let reconciling = status.conditions.iter().find(|c| c.type_ == cond::RECONCILING).unwrap();
    assert_eq!(reconciling.status, "True");
    assert!(reconciling.message.contains("iris-r2 (Drift trigger)"), "{}", reconciling.message);
    let triggers = status.triggers.unwrap();
    assert_eq!(triggers.last_trigger_time, Some(at(30)));
    assert!(triggers.message.unwrap().contains("cooldown"));

    // The run succeeds: the ModelVersion's lineage names the trigger.
    let mut done = job(&tj, run, Some("Complete"));
    done.status.as_mut().unwrap().active = Some(0);
    let result = result::parse(Some(
        r#"{"version":1,"metrics":{"accuracy":0.9},"artifact":{"uri":"file:///out/iris-r2/model.json"}}"#,
    ))
    .unwrap();
    let record = tj.status.as_ref().unwrap().runs.last().cloned().unwrap();
    let mv = model_version(&tj, &record, &done, &result, None, &at(70));
    assert_eq!(mv.spec.lineage.unwrap().trigger, Some(run.trigger.clone()));
}

#[test]
fn triggers_wait_for_a_free_slot_and_a_suspended_job_starts_nothing() {
    let mut tj = tj(Retrain {
        data: Some(DataTrigger { check_interval_seconds: Some(10) }),
        cooldown_seconds: Some(0),
        ..Retrain::default()
    });
    let mut jobs = BTreeMap::new();
    let digest = |d: &str| Readings { drift: None, dataset: Some(Reading::Value(d.into())) };
    let p = reconcile(&mut tj, &mut jobs, digest(&sha("a")), at(0));
    assert_eq!(p.started.unwrap().trigger.type_, TriggerType::Spec);
    // A new digest while the Spec run is active: waits, says so.
    let p = reconcile(&mut tj, &mut jobs, digest(&sha("b")), at(10));
    assert!(p.started.is_none());
    let ready = p.status.conditions.iter().find(|c| c.type_ == cond::READY).unwrap();
    assert!(ready.message.contains("a new run starts when it finishes"), "{}", ready.message);
    // The Spec run finishes; the pending data change starts exactly one run.
    let r1 = tj.status.as_ref().unwrap().runs[0].name.clone();
    let finished = {
        let mut j = jobs[&r1].clone();
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        j
    };
    jobs.insert(r1, finished);
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(15));
    let run = p.started.unwrap();
    assert_eq!(
        (run.trigger.type_, run.trigger.dataset_digest.as_deref()),
        (TriggerType::Data, Some(sha("b").as_str()))
    );
    let p = reconcile(&mut tj, &mut jobs, digest(&sha("b")), at(25));
    assert!(p.started.is_none(), "the change is covered");

    // Suspended: the trigger stays pending, no run.
    tj.spec.suspend = true;
    let r2 = run.name.clone();
    let mut j = jobs[&r2].clone();
    j.status.as_mut().unwrap().conditions =
        Some(vec![JobCondition { type_: "Failed".into(), status: "True".into(), ..JobCondition::default() }]);
    jobs.insert(r2, j);
    let p = reconcile(&mut tj, &mut jobs, digest(&sha("c")), at(35));
    assert!(p.started.is_none());
    tj.spec.suspend = false;
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(36));
    assert_eq!(p.started.unwrap().trigger.dataset_digest.as_deref(), Some(sha("c").as_str()));
}

#[test]
fn a_rejected_version_is_reported_on_the_training_job() {
    let mut tj = tj(Retrain { data: Some(DataTrigger::default()), ..Retrain::default() });
    let mut jobs = BTreeMap::new();
    let run = reconcile(&mut tj, &mut jobs, Readings::default(), at(0)).started.unwrap();
    let mut done = job(&tj, &run, Some("Complete"));
    done.status.as_mut().unwrap().active = Some(0);
    jobs.insert(run.name.clone(), done);
    let result = r#"{"version":1,"metrics":{"f1":0.3},"artifact":{"uri":"file:///out/iris-r1/model.json"}}"#;
    let inputs = Inputs {
        jobs,
        pods: BTreeMap::from([(
            run.name.clone(),
            PodOutcome { message: Some(result.into()), ..PodOutcome::default() },
        )]),
        latest_version: Some(Verdict {
            model_version: "iris-r1".into(),
            validated: false,
            message: "gate f1 >= serving - 0.05 failed: 0.3 < 0.92".into(),
        }),
        ..Inputs::default()
    };
    let p = plan(&tj, &inputs, at(10).0);
    let ready = p.status.conditions.iter().find(|c| c.type_ == cond::READY).unwrap();
    assert_eq!(ready.status, "True");
    assert!(
        ready.message.contains("produced ModelVersion iris-r1, which failed validation: gate f1"),
        "{}",
        ready.message
    );
}

#[test]
fn a_bad_schedule_stalls_without_starting_runs() {
    let mut tj = tj(Retrain {
        schedule: Some("0 3 * * *".into()),
        time_zone: Some("Mars/Olympus".into()),
        ..Retrain::default()
    });
    let mut jobs = BTreeMap::new();
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(0));
    assert!(p.started.is_none());
    let stalled = p.status.conditions.iter().find(|c| c.type_ == cond::STALLED).unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "InvalidSpec"));
    assert!(stalled.message.contains("unknown time zone"), "{}", stalled.message);
}

#[test]
fn a_schedule_fires_on_time_and_requeues_for_the_next_time() {
    let mut tj = tj(Retrain { schedule: Some("*/10 * * * *".into()), ..Retrain::default() });
    let mut jobs = BTreeMap::new();
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(0));
    let r1 = p.started.unwrap();
    assert_eq!(r1.trigger.type_, TriggerType::Spec);
    assert_eq!(p.requeue, std::time::Duration::from_secs(30), "the safety net while the run is active");
    jobs.insert(r1.name.clone(), job(&tj, &r1, Some("Failed")));
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(601));
    let run = p.started.unwrap();
    assert_eq!(run.trigger.type_, TriggerType::Schedule);
    assert_eq!(run.trigger.schedule_time, Some(at(600)));
    let t = p.status.triggers.unwrap();
    assert_eq!((t.last_schedule_time, t.next_schedule_time), (Some(at(600)), Some(at(1200))));
}

/// A TrainingJob without retrain triggers.
fn plain() -> TrainingJob {
    let mut t = tj(Retrain::default());
    t.spec.retrain = None;
    t
}

fn condition<'a>(p: &'a Outcome, type_: &str) -> &'a api::conditions::Condition {
    p.status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}"))
}

/// A finished Job of `run`: `Complete`, or `Failed` with the Job controller's reason.
fn finished(tj: &TrainingJob, run: &RunRef, failed: Option<(&str, &str)>) -> Job {
    let mut j = job(tj, run, None);
    j.metadata.creation_timestamp = Some(at(0));
    j.status = Some(JobStatus {
        active: Some(0),
        start_time: Some(at(1)),
        completion_time: failed.is_none().then(|| at(50)),
        conditions: Some(vec![JobCondition {
            type_: if failed.is_some() { "Failed" } else { "Complete" }.into(),
            status: "True".into(),
            reason: failed.map(|f| f.0.to_string()),
            message: failed.map(|f| f.1.to_string()),
            ..JobCondition::default()
        }]),
        ..JobStatus::default()
    });
    j
}

/// Starts the first run of `tj` and returns it with the Jobs seen.
fn first_run(tj: &mut TrainingJob) -> (RunRef, BTreeMap<String, Job>) {
    let mut jobs = BTreeMap::new();
    let run = reconcile(tj, &mut jobs, Readings::default(), at(0)).started.unwrap();
    (run, jobs)
}

/// The inputs of a pass and its time.
fn observed(jobs: BTreeMap<String, Job>, pods: Vec<(&str, PodOutcome)>, now: Time) -> (Inputs, Time) {
    let pods = pods.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    (Inputs { jobs, pods, ..Inputs::default() }, now)
}

fn plan_at(tj: &TrainingJob, seen: &(Inputs, Time)) -> Outcome {
    plan(tj, &seen.0, seen.1.0)
}

const RESULT: &str =
    r#"{"version":1,"metrics":{"accuracy":0.9},"artifact":{"uri":"file:///out/iris-r1/m.json"}}"#;

#[test]
fn a_failed_run_records_the_exit_code_and_the_trainers_message() {
    let mut tj = plain();
    let (run, mut jobs) = first_run(&mut tj);
    jobs.insert(
        run.name.clone(),
        finished(&tj, &run, Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))),
    );
    let pod = PodOutcome {
        message: Some("bad data: column x is not numeric\n".into()),
        exit_code: Some(2),
        reason: Some("Error".into()),
        ..PodOutcome::default()
    };
    let p = plan_at(&tj, &observed(jobs.clone(), vec![("iris-r1", pod)], at(10)));
    let r = &p.status.runs[0];
    assert_eq!((r.outcome, r.exit_code), (RunOutcome::Failed, Some(2)));
    assert_eq!(r.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(r.message.as_deref(), Some("trainer exited 2: bad data: column x is not numeric"));
    assert_eq!((r.completion_time.clone(), r.model_version.clone()), (Some(at(10)), None));
    assert!(p.started.is_none() && p.creates.is_empty());
    assert_eq!(p.finished_runs, vec![r.clone()]);
    assert_eq!(p.status.last_run, Some(RunOutcome::Failed));
    assert!(p.status.active_runs.is_empty());
    let ev = p.events.iter().find(|e| e.reason == "RunFailed").unwrap();
    assert!(ev.warning);
    assert_eq!(
        ev.note,
        "run iris-r1 failed (BackoffLimitExceeded): trainer exited 2: bad data: column x is not numeric"
    );
    for (type_, status) in
        [(cond::FAILED, "True"), (cond::SUCCEEDED, "False"), (cond::READY, "False"), (cond::STALLED, "True")]
    {
        let c = condition(&p, type_);
        assert_eq!((c.status.as_str(), c.reason.as_str()), (status, "BackoffLimitExceeded"), "{type_}");
    }
    assert_eq!(condition(&p, cond::RECONCILING).status, "False");

    // Killed without a message (OOM): the exit code, why, and where its output is; never
    // the output itself.
    let pod = PodOutcome { exit_code: Some(137), reason: Some("OOMKilled".into()), ..PodOutcome::default() };
    let p = plan_at(&tj, &observed(jobs.clone(), vec![("iris-r1", pod)], at(10)));
    assert_eq!(
        p.status.runs[0].message.as_deref(),
        Some(
            "trainer exited 137 (OOMKilled, signal 9, SIGKILL) without a termination message; \
             its output: kubectl logs job/iris-r1 -n ml"
        )
    );

    // A long message is one line of status, not a log.
    let pod = PodOutcome { message: Some("x".repeat(4096)), exit_code: Some(1), ..PodOutcome::default() };
    let p = plan_at(&tj, &observed(jobs, vec![("iris-r1", pod)], at(10)));
    let message = p.status.runs[0].message.clone().unwrap();
    assert!(message.len() < 600 && message.starts_with("trainer exited 1: xxx"), "{message}");
}

#[test]
fn a_run_past_its_deadline_fails_with_the_jobs_reason() {
    let mut tj = plain();
    tj.spec.active_deadline_seconds = Some(60);
    let (run, mut jobs) = first_run(&mut tj);
    jobs.insert(
        run.name.clone(),
        finished(&tj, &run, Some(("DeadlineExceeded", "Job was active longer than specified deadline"))),
    );
    // The killed pod left no terminated state.
    let p = plan_at(&tj, &observed(jobs, vec![("iris-r1", PodOutcome::default())], at(70)));
    let r = &p.status.runs[0];
    assert_eq!((r.outcome, r.reason.as_deref()), (RunOutcome::Failed, Some("DeadlineExceeded")));
    assert_eq!(r.message.as_deref(), Some("Job was active longer than specified deadline"));
    assert_eq!(r.exit_code, None);
    assert_eq!(condition(&p, cond::READY).reason, "DeadlineExceeded");
}

#[test]
fn a_finished_runs_job_may_go_and_the_run_is_never_started_again() {
    for failed in [None, Some(("BackoffLimitExceeded", "backoff"))] {
        let mut tj = plain();
        let (run, mut jobs) = first_run(&mut tj);
        jobs.insert(run.name.clone(), finished(&tj, &run, failed));
        let p = reconcile_with_pods(&mut tj, &mut jobs, vec![("iris-r1", RESULT)], at(60));
        let done = p.status.runs[0].clone();
        assert!(done.outcome.is_finished());
        // ttlSecondsAfterFinished removes the Job (and its pods).
        jobs.clear();
        for t in [120, 600, 3600] {
            let p = reconcile_with_pods(&mut tj, &mut jobs, vec![], at(t));
            assert!(p.started.is_none(), "{failed:?} at {t}");
            assert!(p.events.is_empty() && p.finished_runs.is_empty() && p.creates.is_empty());
            assert_eq!(p.status.runs, vec![done.clone()]);
        }
    }
}

/// `reconcile` with trainer messages for finished Jobs.
fn reconcile_with_pods(
    tj: &mut TrainingJob,
    jobs: &mut BTreeMap<String, Job>,
    messages: Vec<(&str, &str)>,
    now: Time,
) -> Outcome {
    let pods = messages
        .into_iter()
        .map(|(job, m)| {
            (job, PodOutcome { message: Some(m.into()), exit_code: Some(0), ..PodOutcome::default() })
        })
        .collect();
    let p = plan_at(tj, &observed(jobs.clone(), pods, now));
    tj.status = Some(p.status.clone());
    p
}

#[test]
fn a_job_deleted_before_it_finished_fails_its_run() {
    let mut tj = plain();
    let (_, mut jobs) = first_run(&mut tj);
    jobs.clear();
    let p = reconcile_with_pods(&mut tj, &mut jobs, vec![], at(5));
    let r = &p.status.runs[0];
    assert_eq!((r.outcome, r.reason.as_deref()), (RunOutcome::Failed, Some("JobDeleted")));
    assert!(p.started.is_none(), "the generation has had its run");
}

#[test]
fn history_keeps_the_newest_finished_runs_and_every_active_one() {
    let mut tj = plain();
    let record = |n: i64, outcome| RunRecord {
        name: run_name("iris", n),
        number: n,
        job_name: run_name("iris", n),
        generation: Some(1),
        outcome,
        ..RunRecord::default()
    };
    let total = RUN_HISTORY_LIMIT as i64 + 4;
    let mut jobs = BTreeMap::new();
    let mut runs = Vec::new();
    for n in 1..=total {
        // The two oldest are still running.
        let active = n <= 2;
        runs.push(record(n, if active { RunOutcome::Running } else { RunOutcome::Failed }));
        if active {
            let r = RunRef {
                name: run_name("iris", n),
                number: n,
                generation: 1,
                trigger: RunTrigger::default(),
            };
            jobs.insert(r.name.clone(), job(&tj, &r, None));
        }
    }
    tj.status =
        Some(TrainingJobStatus { runs, last_run_number: Some(total), ..TrainingJobStatus::default() });
    let p = plan_at(&tj, &observed(jobs, vec![], at(0)));
    let kept: Vec<i64> = p.status.runs.iter().map(|r| r.number).collect();
    let mut expected = vec![1, 2];
    expected.extend(total - RUN_HISTORY_LIMIT as i64 + 3..=total);
    assert_eq!(kept, expected);
    assert_eq!(p.status.runs.len(), RUN_HISTORY_LIMIT);
    assert_eq!(p.status.active_runs, vec!["iris-r1".to_string(), "iris-r2".to_string()]);
}

#[test]
fn conditions_carry_the_generation_and_keep_their_transition_time() {
    let mut tj = plain();
    let mut jobs = BTreeMap::new();
    let fail = |tj: &TrainingJob, jobs: &mut BTreeMap<String, Job>, run: &RunRef| {
        jobs.insert(run.name.clone(), finished(tj, run, Some(("BackoffLimitExceeded", "backoff"))));
    };
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(0));
    let r1 = p.started.clone().unwrap();
    assert_eq!(p.status.observed_generation, Some(1));
    for c in &p.status.conditions {
        assert_eq!(c.observed_generation, Some(1), "{}", c.type_);
    }
    assert_eq!(condition(&p, cond::RECONCILING).status, "True");

    // A new generation waits for the run in flight: every condition says generation 2,
    // and Reconciling, still True, keeps its transition time.
    tj.metadata.generation = Some(2);
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(30));
    assert!(p.started.is_none());
    assert_eq!(p.status.observed_generation, Some(2));
    for c in &p.status.conditions {
        assert_eq!(c.observed_generation, Some(2), "{}", c.type_);
    }
    let reconciling = condition(&p, cond::RECONCILING);
    assert!(reconciling.message.contains("a new run starts when it finishes"), "{}", reconciling.message);
    assert_eq!(reconciling.last_transition_time, at(0), "still True: no transition");

    // The first run fails, the second starts: still reconciling.
    fail(&tj, &mut jobs, &r1);
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(60));
    let r2 = p.started.clone().unwrap();
    assert_eq!(r2.generation, 2);
    assert_eq!(condition(&p, cond::RECONCILING).last_transition_time, at(0));
    // It fails too: Reconciling turns False now, and Failed keeps its time from r1.
    fail(&tj, &mut jobs, &r2);
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(90));
    let reconciling = condition(&p, cond::RECONCILING);
    assert_eq!((reconciling.status.as_str(), reconciling.last_transition_time.clone()), ("False", at(90)));
    assert_eq!(condition(&p, cond::FAILED).last_transition_time, at(60));
    assert!(p.status.conditions.iter().all(|c| c.observed_generation == Some(2)));
}

#[test]
fn an_invalid_spec_is_an_event_on_the_transition_only() {
    let mut tj = tj(Retrain {
        schedule: Some("0 3 * * *".into()),
        time_zone: Some("Mars/Olympus".into()),
        ..Retrain::default()
    });
    let mut jobs = BTreeMap::new();
    let invalid = |p: &Outcome| {
        p.events.iter().filter(|e| e.reason == REASON_INVALID_SPEC).cloned().collect::<Vec<_>>()
    };
    let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(0));
    let events = invalid(&p);
    assert_eq!(events.len(), 1);
    assert!(events[0].warning && events[0].note.contains("Mars/Olympus"), "{events:?}");
    for t in [30, 60, 600] {
        assert!(invalid(&reconcile(&mut tj, &mut jobs, Readings::default(), at(t))).is_empty());
    }
    // Another spec error is another transition.
    tj.spec.retrain.as_mut().unwrap().time_zone = Some("Venus/Maxwell".into());
    let events = invalid(&reconcile(&mut tj, &mut jobs, Readings::default(), at(700)));
    assert_eq!(events.len(), 1);
    assert!(events[0].note.contains("Venus/Maxwell"));

    // A spec the Job builder refuses: once, however often it is seen.
    let mut tj = plain();
    tj.spec.model_version = Some(api::training_job::ModelVersionTemplate {
        labels: BTreeMap::from([("team".into(), "a b".into())]),
        ..Default::default()
    });
    for t in [0, 30, 60] {
        let p = plan_at(&tj, &observed(BTreeMap::new(), vec![], at(t)));
        assert!(p.started.is_none());
        assert_eq!(invalid(&p).len(), usize::from(t == 0), "at {t}");
        tj.status = Some(p.status);
    }
}

#[test]
fn the_keep_set_holds_recorded_runs_active_services_and_running_checks() {
    let record = |n: i64, outcome| RunRecord {
        name: run_name("iris", n),
        number: n,
        job_name: run_name("iris", n),
        outcome,
        ..RunRecord::default()
    };
    let status = TrainingJobStatus {
        runs: vec![record(2, RunOutcome::Succeeded), record(3, RunOutcome::Running)],
        ..TrainingJobStatus::default()
    };
    // iris-r2's Job is still there (its TTL has not passed), iris-r3's is running; both are
    // distributed, iris-r2 from before rendezvous Services were named apart from runs.
    let service = |name: &str| Some(name.to_string());
    let jobs = BTreeMap::from([
        ("iris-r2".to_string(), service("iris-r2")),
        ("iris-r3".to_string(), service(&desired::rendezvous_service_name("iris-r3"))),
    ]);
    let keep = keep_set(&status, &jobs, &["iris-dc-100".to_string()]);
    let k = |kind: &str, name: &str| (kind.to_string(), name.to_string());
    assert_eq!(
        keep,
        BTreeSet::from([
            // A finished run's Job is history until its own TTL, its Service goes with it.
            k("Job", "iris-r2"),
            k("Service", "iris-r2"),
            k("Job", "iris-r3"),
            k("Service", &desired::rendezvous_service_name("iris-r3")),
            k("Job", "iris-dc-100"),
        ])
    );
    // The TTL removed iris-r2's Job: its Service goes too, its record stays.
    let jobs = BTreeMap::from([("iris-r3".to_string(), None)]);
    let keep = keep_set(&status, &jobs, &[]);
    assert!(keep.contains(&k("Job", "iris-r2")) && !keep.contains(&k("Service", "iris-r2")));
    // iris-r1 fell out of the history and a finished check was read: neither is kept.
    assert!(!keep.contains(&k("Job", "iris-r1")));
}

#[test]
fn a_pass_replaces_the_conditions_of_a_failed_pass() {
    let mut tj = plain();
    let failure = crate::controllers::apply::Failure {
        reason: crate::controllers::apply::REASON_CHILD_REJECTED,
        message: "apply Job iris-r1: bad".into(),
        stalled: true,
    };
    let mut status = TrainingJobStatus::default();
    failure.apply_to(&mut status.conditions, Some(1), &at(0));
    tj.status = Some(status);
    let p = plan_at(&tj, &observed(BTreeMap::new(), vec![], at(10)));
    for type_ in [cond::READY, cond::STALLED, cond::RECONCILING] {
        assert_eq!(condition(&p, type_).reason, "RunInProgress", "{type_}");
    }
    assert_eq!(condition(&p, cond::STALLED).status, "False");
    // The check Job of a data trigger and the run's Job are both children.
    let kinds: Vec<_> = p.children.iter().map(|c| c.key()).collect();
    assert_eq!(kinds, vec![("Job".to_string(), "iris-r1".to_string())]);
}

/// Finding 3: a template the namespace's pod policy refuses gets no Job (nor a dataset
/// check, which would run under its ServiceAccount): `Stalled=True` naming the fields, one
/// Event, nothing more until the spec or the policy changes.
#[test]
fn a_template_the_pod_policy_refuses_starts_nothing_and_says_which_fields_once() {
    let mut tj =
        tj(Retrain { data: Some(DataTrigger { check_interval_seconds: Some(60) }), ..Retrain::default() });
    tj.spec.dataset.uri = "s3://data/iris.csv".into();
    tj.spec.trainer.template = Some(
        serde_json::from_value(serde_json::json!({"spec": {"hostPID": true, "containers": [
            {"name": "trainer"},
            {"name": "helper", "securityContext": {"privileged": true}}]}}))
        .unwrap(),
    );
    let pass = |tj: &TrainingJob, level, now| {
        let inputs = Inputs { pod_security_level: level, ..Inputs::default() };
        plan(tj, &inputs, now)
    };
    let p = pass(&tj, Level::Restricted, at(0).0);
    assert!(p.children.is_empty() && p.started.is_none(), "{:?}", p.children);
    let expected = "spec.trainer.template.spec.hostPID: true; \
                    spec.trainer.template.spec.containers[1].securityContext.privileged: true; \
                    spec.trainer.template.spec.containers[1].securityContext.allowPrivilegeEscalation: \
                    unset (must be false) are not allowed by the restricted pod policy of namespace ml";
    for type_ in [cond::STALLED, cond::READY] {
        let c = condition(&p, type_);
        assert_eq!((c.reason.as_str(), c.message.as_str()), (policy::REASON, expected), "{type_}");
    }
    assert_eq!(condition(&p, cond::STALLED).status, "True");
    assert_eq!(condition(&p, cond::RECONCILING).status, "False");
    assert_eq!(p.events, [EventNote { warning: true, reason: policy::REASON, note: expected.into() }]);
    // Seen again (a resync, a restart): no Event, no child.
    tj.status = Some(p.status.clone());
    let again = pass(&tj, Level::Restricted, at(600).0);
    assert!(again.children.is_empty() && again.events.is_empty(), "{:?}", again.events);

    // A namespace the admin allows privileged: the run starts as the template says.
    let p = pass(&tj, Level::Privileged, at(700).0);
    assert_eq!(p.started.as_ref().map(|r| r.name.as_str()), Some("iris-r1"));
    assert_eq!(condition(&p, cond::STALLED).status, "False");
    let names: Vec<String> = p.children.iter().map(|c| c.object.name_any()).collect();
    assert_eq!(names, ["iris-dc-1735690300", "iris-r1"], "the dataset check too");
}
