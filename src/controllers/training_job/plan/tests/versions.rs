//! The ModelVersion a successful run produces, and the versions the run cannot have.

use super::*;

#[test]
fn the_model_version_records_the_whole_lineage_of_what_ran() {
    let mut tj = plain();
    tj.spec.hyperparameters = BTreeMap::from([("algorithm".into(), "linear".into())]);
    tj.spec.source = Some(api::training_job::Source {
        repository: "https://git.example/iris".into(),
        revision: Some("abc123".into()),
        commit_time: Some(at(-100)),
    });
    tj.spec.model_version = Some(api::training_job::ModelVersionTemplate {
        labels: BTreeMap::from([("team".into(), "a".into())]),
        gates: vec![api::Gate::absolute("accuracy", api::model_version::GateOp::Ge, 0.8)],
        ..Default::default()
    });
    let (run, mut jobs) = first_run(&mut tj);
    let recipe = desired::recipe(&tj, &run);
    jobs.insert(run.name.clone(), finished(&tj, &run, None));
    // The spec changes while the run trains: the version records what ran (the recipe
    // on the Job).
    tj.spec.hyperparameters.insert("algorithm".into(), "tree".into());
    tj.spec.trainer.image = Some("trainer:next".into());
    tj.spec.model_version.as_mut().unwrap().gates.clear();
    let result = r#"{"version":1,"metrics":{"accuracy":0.96,"f1":0.95},
        "artifact":{"uri":"file:///out/iris-r1/model.json","format":"mlops-linear-v1",
                    "digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
        "dataset":{"digest":"sha256:bbbb","total":150,"train":105,"validation":22,"test":23},
        "validation":{"missing":{"found":2,"action":"drop","removed":2}}}"#;
    let pod = PodOutcome {
        message: Some(result.into()),
        exit_code: Some(0),
        reason: Some("Completed".into()),
        image_id: Some("docker.io/library/trainer@sha256:cccc".into()),
        ..PodOutcome::default()
    };
    let p = plan_at(&tj, &observed(jobs, vec![("iris-r1", pod)], at(60)));
    assert_eq!(p.creates.len(), 1);
    let mv = &p.creates[0];
    assert_eq!(
        (mv.metadata.name.as_deref(), mv.metadata.namespace.as_deref()),
        (Some("iris-r1"), Some("ml"))
    );
    let made_by = mv.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_TRAINING_JOB_UID));
    assert_eq!(made_by, tj.metadata.uid.as_ref(), "which TrainingJob of that name made it");
    let labels = mv.metadata.labels.clone().unwrap();
    for (k, v) in [
        ("team", "a"),
        (api::LABEL_MODEL, "iris"),
        (api::LABEL_TRAINING_JOB, "iris"),
        (api::LABEL_RUN, "iris-r1"),
        (api::LABEL_APP_MANAGED_BY, api::MANAGED_BY),
        (api::LABEL_APP_PART_OF, api::PART_OF),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    let parsed = result::parse(Some(result)).unwrap();
    let expected = ModelVersionSpec {
        model: "iris".into(),
        artifact: parsed.artifact.clone(),
        metrics: parsed.metrics.clone(),
        gates: recipe.gates.clone(),
        lineage: Some(Lineage {
            training_job: Some("iris".into()),
            run: Some("iris-r1".into()),
            image: Some("mlops-runtime:dev".into()),
            image_digest: Some("docker.io/library/trainer@sha256:cccc".into()),
            dataset: Some(DatasetLineage {
                uri: "pvc://data/d.csv".into(),
                digest: Some("sha256:bbbb".into()),
                rows: parsed.rows.clone(),
                validation_report: parsed.validation.clone(),
            }),
            hyperparameters: BTreeMap::from([("algorithm".into(), "linear".into())]),
            source: tj.spec.source.clone(),
            trigger: Some(run.trigger.clone()),
            start_time: Some(at(1)),
            completion_time: Some(at(50)),
        }),
    };
    assert_eq!(mv.spec, expected);
    assert_eq!(mv.spec.lineage.as_ref().unwrap().trigger.as_ref().unwrap().type_, TriggerType::Spec);
    let r = &p.status.runs[0];
    assert_eq!((r.outcome, r.model_version.as_deref()), (RunOutcome::Succeeded, Some("iris-r1")));
    assert_eq!(p.status.latest_model_version.as_deref(), Some("iris-r1"));
    assert!(p.events.iter().any(|e| e.reason == "ModelVersionCreated" && !e.warning));
    assert!(p.events.iter().any(|e| e.reason == "RunSucceeded" && !e.warning));
}

#[test]
fn a_version_the_api_server_refuses_fails_its_run_instead_of_retrying() {
    let mut tj = plain();
    let (run, mut jobs) = first_run(&mut tj);
    jobs.insert(run.name.clone(), finished(&tj, &run, None));
    let pods = vec![("iris-r1", PodOutcome { message: Some(RESULT.into()), ..PodOutcome::default() })];
    let seen = observed(jobs, pods, at(60));
    let mut p = plan_at(&tj, &seen);
    assert_eq!(p.creates.len(), 1);
    assert_eq!(p.status.latest_model_version.as_deref(), Some("iris-r1"));

    // The create is refused (422): folded into the outcome, no second plan.
    let api_message = format!("ModelVersion.mlops.dev \"iris-r1\" is invalid: {}", "x".repeat(2000));
    version_refused(&mut p, &tj, "iris-r1", &api_message, at(60).0);
    assert!(p.creates.is_empty() && p.started.is_none());
    let r = &p.status.runs[0];
    assert_eq!((r.outcome, r.reason.as_deref()), (RunOutcome::Failed, Some(REASON_VERSION_REJECTED)));
    assert!(
        r.message
            .as_deref()
            .unwrap()
            .starts_with("the API server refused ModelVersion iris-r1: ModelVersion.mlops.dev")
    );
    let message = r.message.as_deref().unwrap();
    assert!(message.ends_with('…') && message.len() <= 512 + '…'.len_utf8(), "cut short");
    assert_eq!((r.model_version.clone(), p.status.latest_model_version.clone()), (None, None));
    assert_eq!(p.finished_runs[0].outcome, RunOutcome::Failed);
    let reasons: Vec<_> = p.events.iter().map(|e| (e.reason, e.warning)).collect();
    assert_eq!(reasons, vec![("RunFailed", true)]);
    assert!(p.events[0].note.contains(REASON_VERSION_REJECTED));
    assert_eq!(condition(&p, cond::STALLED).reason, REASON_VERSION_REJECTED);
}

#[test]
fn a_version_name_taken_by_an_import_fails_the_run_and_names_the_clash() {
    let mut tj = plain();
    let (run, mut jobs) = first_run(&mut tj);
    jobs.insert(run.name.clone(), finished(&tj, &run, None));
    let pods = vec![("iris-r1", PodOutcome { message: Some(RESULT.into()), ..PodOutcome::default() })];
    let job = jobs["iris-r1"].clone();
    let mut seen = observed(jobs, pods, at(60));
    let mut ours = plan_at(&tj, &seen).creates[0].clone();
    ours.metadata.creation_timestamp = Some(at(60));
    assert!(made_by(&ours, &tj, "iris-r1", &job), "what this run makes is its own");

    let imported: ModelVersion = serde_json::from_value(serde_json::json!({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": "iris-r1", "namespace": "ml"},
        "spec": {"model": "iris", "artifact": {"uri": "s3://elsewhere/m"}},
    }))
    .unwrap();
    assert!(!made_by(&imported, &tj, "iris-r1", &job));
    seen.0.versions.insert("iris-r1".into(), imported);
    let p = plan_at(&tj, &seen);
    let r = &p.status.runs[0];
    assert_eq!((r.outcome, r.reason.as_deref()), (RunOutcome::Failed, Some(REASON_VERSION_NAME_TAKEN)));
    let ev = p.events.iter().find(|e| e.warning && e.reason == "RunFailed").unwrap();
    for words in [
        "ModelVersion iris-r1 already exists",
        "not made by run iris-r1 of TrainingJob iris",
        "imported",
        api::ANNOTATION_RETRY,
    ] {
        assert!(ev.note.contains(words), "{words}: {}", ev.note);
    }
    assert!(p.creates.is_empty());
    assert_eq!(p.status.latest_model_version, None);
}

#[test]
fn a_version_is_ours_by_its_labels_owner_or_lineage_and_made_since_the_runs_job() {
    let mut tj = plain();
    let (run, _) = first_run(&mut tj);
    let job = finished(&tj, &run, None);
    let mv = |labels: serde_json::Value,
              owners: serde_json::Value,
              lineage: serde_json::Value,
              created: i64|
     -> ModelVersion {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "iris-r1", "labels": labels, "ownerReferences": owners,
                         "creationTimestamp": at(created)},
            "spec": {"model": "iris", "artifact": {"uri": "s3://b/k"}, "lineage": lineage},
        }))
        .unwrap()
    };
    let none = serde_json::json!({});
    let owner = |uid: &str| serde_json::json!([{"apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob", "name": "iris", "uid": uid}]);
    let labels = |tj: &str, run: &str| serde_json::json!({api::LABEL_TRAINING_JOB: tj, api::LABEL_RUN: run});
    let lineage = |tj: &str, run: &str| serde_json::json!({"trainingJob": tj, "run": run});
    assert!(made_by(&mv(labels("iris", "iris-r1"), owner("other"), none.clone(), 60), &tj, "iris-r1", &job));
    assert!(made_by(&mv(none.clone(), owner("u1"), none.clone(), 60), &tj, "iris-r1", &job));
    assert!(made_by(
        &mv(none.clone(), serde_json::json!([]), lineage("iris", "iris-r1"), 60),
        &tj,
        "iris-r1",
        &job
    ));
    for (l, o, g) in [
        (labels("iris", "iris-r2"), owner("other"), lineage("iris", "iris-r2")),
        (labels("other", "iris-r1"), serde_json::json!([]), lineage("other", "iris-r1")),
        (serde_json::json!({api::LABEL_RUN: "iris-r1"}), serde_json::json!([]), none.clone()),
        (none.clone(), serde_json::json!([]), none.clone()),
    ] {
        assert!(!made_by(&mv(l.clone(), o, g.clone(), 60), &tj, "iris-r1", &job), "{l} {g}");
    }
    // Everything names the run, but the version is older than the run's Job: an earlier
    // TrainingJob of the same name made it (or someone made it to pass for this run's).
    let earlier = mv(labels("iris", "iris-r1"), serde_json::json!([]), lineage("iris", "iris-r1"), -3600);
    assert!(!made_by(&earlier, &tj, "iris-r1", &job));
}
