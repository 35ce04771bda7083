//! Retention of the ModelVersions a TrainingJob produced, pure: which to delete so that a
//! frequent schedule cannot grow the registry without bound.
//!
//! A version in use is never a candidate: serving, a rollback target, or named in a
//! rollout's history as failed (its story stays readable), nor one already being deleted.
//! Of the others, the newest `keepLast` stay (the job's latest version always among them). The
//! ModelVersion finalizer still guards a version that became used since its status was
//! written: its deletion then waits until nothing uses it.

use kube::ResourceExt;

use super::model_version::ANNOTATION_TRAINING_JOB_UID;
use crate::api::{self, ModelVersion, TrainingJob, training_job::DEFAULT_RETENTION_KEEP_LAST};

/// Versions kept besides those in use.
pub fn keep_last(tj: &TrainingJob) -> usize {
    let n = tj.spec.model_version.as_ref().and_then(|m| m.retention.as_ref()).and_then(|r| r.keep_last);
    n.unwrap_or(DEFAULT_RETENTION_KEEP_LAST).max(1) as usize
}

/// Whether `mv` is a version `tj` produced: its labels and its lineage both say so, and it
/// carries `tj`'s UID (a version someone imported, or one an earlier TrainingJob of the
/// same name made, is never ours to delete; nor is one made before versions carried the
/// UID).
pub fn produced_by(mv: &ModelVersion, tj: &TrainingJob) -> bool {
    let name = tj.name_any();
    let labels = mv.labels();
    let lineage = mv.spec.lineage.as_ref();
    let made_by = mv.annotations().get(ANNOTATION_TRAINING_JOB_UID);
    tj.uid().is_some_and(|uid| made_by == Some(&uid))
        && labels.get(api::LABEL_TRAINING_JOB) == Some(&name)
        && labels.get(api::LABEL_APP_MANAGED_BY).map(String::as_str) == Some(api::MANAGED_BY)
        && lineage.and_then(|l| l.training_job.as_deref()) == Some(name.as_str())
        && lineage.and_then(|l| l.run.as_deref()) == labels.get(api::LABEL_RUN).map(String::as_str)
}

fn in_use(mv: &ModelVersion) -> bool {
    let status = mv.status.as_ref();
    mv.metadata.deletion_timestamp.is_some()
        || status.is_some_and(|s| {
            !s.serving_in.is_empty() || !s.rollback_target_of.is_empty() || !s.failed_in.is_empty()
        })
}

/// The names of the versions to delete, newest first.
pub fn expired(tj: &TrainingJob, versions: &[ModelVersion]) -> Vec<String> {
    let mut candidates: Vec<&ModelVersion> =
        versions.iter().filter(|mv| produced_by(mv, tj) && !in_use(mv)).collect();
    // Newest first: creation time, then name.
    candidates.sort_by(|a, b| {
        (b.metadata.creation_timestamp.clone(), b.name_any())
            .cmp(&(a.metadata.creation_timestamp.clone(), a.name_any()))
    });
    candidates.into_iter().skip(keep_last(tj)).map(|mv| mv.name_any()).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tj(keep: Option<i32>) -> TrainingJob {
        let mut tj: TrainingJob = serde_json::from_value(json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "tj-uid"},
            "spec": {"model": "iris", "dataset": {"uri": "pvc://d/iris.csv"},
                     "trainer": {"image": "t"}, "output": {"uri": "pvc://d/out"},
                     "modelVersion": {"retention": {"keepLast": keep}}}
        }))
        .unwrap();
        if keep.is_none() {
            tj.spec.model_version = None;
        }
        tj
    }

    fn version(run: u32, status: serde_json::Value) -> ModelVersion {
        let name = format!("iris-r{run}");
        serde_json::from_value(json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": name, "namespace": "ml",
                         "creationTimestamp": format!("2025-01-01T00:{run:02}:00Z"),
                         "annotations": {ANNOTATION_TRAINING_JOB_UID: "tj-uid"},
                         "labels": {"mlops.dev/training-job": "iris", "mlops.dev/run": name,
                                    "app.kubernetes.io/managed-by": "mlops-operator"}},
            "spec": {"model": "iris", "artifact": {"uri": "pvc://d/out/m.json"},
                     "lineage": {"trainingJob": "iris", "run": name}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn the_newest_unused_versions_stay_and_used_ones_are_never_counted() {
        let mut versions: Vec<ModelVersion> = (1..=9).map(|r| version(r, json!({}))).collect();
        versions[0] = version(1, json!({"servingIn": ["iris"]}));
        versions[1] = version(2, json!({"rollbackTargetOf": ["iris"]}));
        versions[2] = version(3, json!({"failedIn": [{"inferenceService": "iris", "check": "errors"}]}));
        // Of r4..r9 the newest two stay.
        assert_eq!(expired(&tj(Some(2)), &versions), vec!["iris-r7", "iris-r6", "iris-r5", "iris-r4"]);
        assert!(expired(&tj(None), &versions).is_empty(), "the default keeps 20");
    }

    #[test]
    fn a_version_someone_else_made_is_never_deleted() {
        let mut imported = version(1, json!({}));
        imported.spec.lineage = None;
        let mut relabelled = version(2, json!({}));
        relabelled.metadata.labels.as_mut().unwrap().insert("mlops.dev/training-job".into(), "other".into());
        let versions = vec![imported, relabelled, version(3, json!({})), version(4, json!({}))];
        assert_eq!(expired(&tj(Some(1)), &versions), vec!["iris-r3"]);
        // Named, labelled and with the lineage of `iris`, but made by an earlier TrainingJob
        // of that name (another UID), or before versions carried the UID: of the four,
        // only r7 is this job's and expired (r8, its newest, stays).
        let mut earlier = version(5, json!({}));
        earlier
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_TRAINING_JOB_UID.into(), "earlier".into());
        let mut unmarked = version(6, json!({}));
        unmarked.metadata.annotations = None;
        let versions = [earlier, unmarked, version(7, json!({})), version(8, json!({}))];
        assert_eq!(expired(&tj(Some(1)), &versions), vec!["iris-r7"]);
        let going = ModelVersion {
            metadata: kube::api::ObjectMeta {
                deletion_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                )),
                ..versions[2].metadata.clone()
            },
            ..versions[2].clone()
        };
        assert!(
            expired(&tj(Some(1)), &[going, versions[3].clone()]).is_empty(),
            "one already going is not counted"
        );
    }
}
