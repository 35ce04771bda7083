//! The data trigger's check of a dataset (`s3://`, `pvc://`; the operator process never
//! reads a user-named file or URL itself), as pure functions: a short Job hashes the dataset with `mlops-runtime digest`
//! and leaves `{"digest": …}` in its termination message.
//!
//! The Job runs with the TrainingJob's own dataset access: the same credentials Secret, the
//! same claim mounted read-only, the trainer template's ServiceAccount (so workload identity
//! such as IRSA works as it does for training). The operator never holds data credentials.
//! At most one check runs per TrainingJob; once its reading is taken it is no longer kept
//! and the applier's prune deletes it.

use std::collections::BTreeMap;

use contract::trainer_env;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements},
    },
    apimachinery::pkg::api::resource::Quantity,
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;

use super::{
    desired,
    inputs::{Inputs, PodOutcome},
    triggers::Reading,
};
use crate::{
    api::{self, TrainingJob},
    controllers::pod_security,
};

/// Name of the container that hashes the dataset.
pub const CONTAINER: &str = "digest";
/// Annotation on a check's Job: the dataset URI it hashes, so a reading taken for a URI
/// the spec no longer names is discarded.
pub const ANNOTATION_DATASET_URI: &str = "mlops.dev/dataset-uri";
/// A check that has not finished by then fails (and the next interval tries again).
pub const DEADLINE_SECONDS: i64 = 600;
/// Fallback clean-up when the operator is down at the end of a check.
const TTL_SECONDS: i32 = 600;

/// Whether the dataset is checked by a Job rather than hashed by the operator.
pub fn needs_job(uri: &str) -> bool {
    uri.starts_with("s3://") || uri.starts_with("pvc://")
}

pub fn is_data_check(job: &Job) -> bool {
    job.labels().get(api::LABEL_APP_COMPONENT).map(String::as_str) == Some(api::COMPONENT_DATA_CHECK)
}

/// `<trainingjob>-dc-<unix seconds>`: unique per check and short enough for a pod label
/// (TrainingJob names are at most 44 characters, see [`desired::MAX_RUN_NAME`]).
pub fn job_name(tj_name: &str, now_seconds: i64) -> String {
    format!("{tj_name}-dc-{now_seconds}")
}

/// The Job that hashes the dataset with `image` (the reference runtime image).
pub fn desired_job(tj: &TrainingJob, image: &str, name: &str) -> Job {
    let mut labels = desired::run_labels(tj, name);
    labels.remove(api::LABEL_RUN);
    labels.insert(api::LABEL_APP_COMPONENT.into(), api::COMPONENT_DATA_CHECK.into());
    let template = tj.spec.trainer.template.as_ref().and_then(|t| t.spec.as_ref());
    let (uri, volume) = desired::local_uri(&tj.spec.dataset.uri, "dataset", true);

    let mut env = vec![EnvVar { name: trainer_env::DATASET_URI.into(), value: Some(uri), value_from: None }];
    // The S3 settings the trainer would see: its Secret by reference, and any AWS_*
    // variables the TrainingJob sets for the trainer (an endpoint, a region).
    if let Some(secret) = &tj.spec.dataset.credentials_secret_ref {
        env.extend(crate::controllers::s3_credentials_env("", &secret.name));
    }
    env.extend(tj.spec.trainer.env.iter().filter(|e| e.name.starts_with("AWS_")).cloned());
    let mut seen = std::collections::BTreeSet::new();
    env.retain(|e| seen.insert(e.name.clone()));

    let mut container = Container {
        name: CONTAINER.into(),
        image: Some(image.into()),
        // The image's entrypoint is `mlops-runtime` (runtime/Containerfile).
        args: Some(vec!["digest".into()]),
        env: Some(env),
        // Its reading is what it writes, never its logs.
        termination_message_policy: Some("File".into()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            ..ResourceRequirements::default()
        }),
        volume_mounts: volume.as_ref().map(|(_, m)| vec![m.clone()]),
        ..Container::default()
    };
    let message_path = desired::termination_message_env(&container);
    container.env.get_or_insert_with(Vec::new).push(message_path);
    let mut pod = PodSpec {
        restart_policy: Some("Never".into()),
        containers: vec![container],
        volumes: volume.map(|(v, _)| vec![v]),
        service_account_name: template.and_then(|t| t.service_account_name.clone()),
        // The trainer's token choice: mounted only when its template asks for it.
        automount_service_account_token: template.and_then(|t| t.automount_service_account_token),
        image_pull_secrets: template.and_then(|t| t.image_pull_secrets.clone()),
        node_selector: template.and_then(|t| t.node_selector.clone()),
        tolerations: template.and_then(|t| t.tolerations.clone()),
        ..PodSpec::default()
    };
    // The reference runtime's image user; it writes only its termination message.
    pod_security::secure_pod(&mut pod, pod_security::NONROOT, &[CONTAINER]);
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: tj.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(ANNOTATION_DATASET_URI.into(), tj.spec.dataset.uri.clone())])),
            owner_references: Some(vec![desired::owner(tj)]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The dataset check of one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckPlan {
    /// The data trigger's reading this pass; `None` when no check was due or finished.
    pub reading: Option<Reading<String>>,
    /// A check Job to start.
    pub start: Option<Job>,
    /// Check Jobs still running, kept; finished ones (read now) and leftovers are pruned.
    pub running: Vec<String>,
}

/// The data trigger's reading and check Jobs: a check Job hashes the dataset, and its
/// reading arrives on a later pass. `due` says a check is due now.
pub fn plan(tj: &TrainingJob, inputs: &Inputs, due: bool, now: Timestamp) -> CheckPlan {
    let uri = &tj.spec.dataset.uri;
    let wanted = tj.spec.retrain.as_ref().is_some_and(|r| r.data.is_some());
    let mut out = CheckPlan::default();
    if !wanted || !needs_job(uri) {
        // Leftovers of a removed trigger are not kept. Admission refuses a data trigger on
        // any other dataset; one stored before that rule gets this error, never a read by
        // the operator itself.
        if wanted && due {
            out.reading = Some(Reading::Error(format!(
                "the data trigger cannot check {uri:?}: it watches s3:// and pvc:// datasets"
            )));
        }
        return out;
    }
    let mut checks: Vec<&Job> = inputs.checks.iter().collect();
    checks.sort_by_key(|j| j.metadata.creation_timestamp.clone());
    for job in checks {
        if !is_finished(job) {
            out.running.push(job.name_any());
            continue;
        }
        // Oldest first, so the newest finished check's reading is the one kept.
        let outcome = inputs.pods.get(&job.name_any()).cloned().unwrap_or_default();
        out.reading = reading(job, &outcome, uri).or(out.reading);
    }
    if out.reading.is_none() && due {
        if out.running.is_empty() {
            let name = job_name(&tj.name_any(), now.as_second());
            out.start = Some(desired_job(tj, &inputs.runtime_image, &name));
            out.running.push(name);
        }
        // Started now or still running: either way the check is under way.
        out.reading = Some(Reading::Pending);
    }
    out
}

/// The Job's `Complete` or `Failed` condition, with its reason and message.
fn finished(job: &Job) -> Option<(bool, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let c =
        conditions.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let why =
        [c.reason.as_deref(), c.message.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(": ");
    Some((c.type_ == "Complete", why))
}

pub fn is_finished(job: &Job) -> bool {
    finished(job).is_some()
}

/// What a finished check measured; `None` while it runs. `spec_uri` is the dataset the
/// TrainingJob names now: a check of another URI measured nothing useful.
pub fn reading(job: &Job, pod: &PodOutcome, spec_uri: &str) -> Option<Reading<String>> {
    let (complete, why) = finished(job)?;
    if job.annotations().get(ANNOTATION_DATASET_URI).map(String::as_str) != Some(spec_uri) {
        return Some(Reading::NoData("the dataset URI changed during the check".into()));
    }
    let message = pod.message.as_deref().map(str::trim).unwrap_or_default();
    if !complete {
        // Only what the check wrote, else how it ended: its logs are never read.
        let detail = match (message.is_empty(), pod.exit()) {
            (false, _) => message.to_string(),
            (true, Some(exit)) => format!("{why} (its container {exit})"),
            (true, None) => why,
        };
        return Some(Reading::Error(format!("the check Job {} failed: {detail}", job.name_any())));
    }
    let parsed: Option<String> = serde_json::from_str::<serde_json::Value>(message)
        .ok()
        .and_then(|v| v.get("digest")?.as_str().map(str::to_owned))
        .filter(|d| d.starts_with("sha256:") && d.len() == 71);
    Some(match parsed {
        Some(digest) => Reading::Value(digest),
        None => Reading::Error(format!(
            "the check Job {} left no digest in its termination message: {:?}",
            job.name_any(),
            message.chars().take(200).collect::<String>()
        )),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use serde_json::json;

    use super::*;
    use crate::controllers::pod_security::policy::restricted_violations;

    fn tj(dataset: serde_json::Value, trainer: serde_json::Value) -> TrainingJob {
        serde_json::from_value(json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u-1"},
            "spec": {"model": "iris", "dataset": dataset, "trainer": trainer, "output": {"uri": "s3://models/iris"}}
        }))
        .unwrap()
    }

    fn finished_job(complete: bool, uri: &str, reason: &str) -> Job {
        let mut job = Job::default();
        job.metadata.name = Some("iris-dc-1".into());
        job.metadata.annotations = Some(BTreeMap::from([(ANNOTATION_DATASET_URI.into(), uri.into())]));
        job.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: if complete { "Complete" } else { "Failed" }.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        job
    }

    fn outcome(message: &str) -> PodOutcome {
        PodOutcome { message: Some(message.into()), ..PodOutcome::default() }
    }

    #[test]
    fn only_s3_and_pvc_need_a_job() {
        assert!(needs_job("s3://data/iris.csv"));
        assert!(needs_job("pvc://datasets/iris.csv"));
        assert!(!needs_job("file:///data/iris.csv"));
    }

    #[test]
    fn an_s3_check_runs_with_the_trainers_credentials_and_identity() {
        let tj = tj(
            json!({"uri": "s3://data/iris.csv", "credentialsSecretRef": {"name": "s3-creds"}}),
            json!({"image": "me/trainer:1",
                   "env": [{"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"}, {"name": "LR", "value": "0.1"}],
                   "template": {"spec": {"serviceAccountName": "trainer", "automountServiceAccountToken": true,
                                         "containers": []}}}),
        );
        let job = desired_job(&tj, "ghcr.io/mlops-dev/mlops-runtime:0.1.0", "iris-dc-100");
        assert!(is_data_check(&job));
        assert_eq!(job.labels()[api::LABEL_TRAINING_JOB], "iris");
        assert!(!job.labels().contains_key(api::LABEL_RUN), "a check is not a run");
        assert_eq!(job.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("trainer"));
        assert_eq!(pod.automount_service_account_token, Some(true), "as the trainer's template asks");
        let c = &pod.containers[0];
        assert_eq!(
            (c.command.as_ref(), c.args.as_ref().unwrap().as_slice()),
            (None, ["digest".to_string()].as_slice())
        );
        assert_eq!(restricted_violations(pod), Vec::<String>::new());
        assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
        let env = c.env.as_ref().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "MLOPS_DATASET_URI",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_REGION",
                "AWS_ENDPOINT_URL",
                "MLOPS_TERMINATION_MESSAGE_PATH",
                "HOME",
            ]
        );
        // `mlops-runtime digest` writes its reading where the kubelet reads it.
        assert_eq!(env[6].value.as_deref(), Some("/dev/termination-log"));
        assert_eq!(env[0].value.as_deref(), Some("s3://data/iris.csv"));
        // The Secret's optional endpoint comes first; the trainer's literal one is not doubled.
        assert!(env[4].value_from.is_some());
    }

    #[test]
    fn a_pvc_check_mounts_the_claim_read_only() {
        let tj = tj(json!({"uri": "pvc://datasets/iris/latest.csv"}), json!({"image": "me/trainer:1"}));
        let job = desired_job(&tj, "img", "iris-dc-100");
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.containers[0].termination_message_policy.as_deref(), Some("File"));
        let volume = &pod.volumes.as_ref().unwrap()[0];
        let claim = volume.persistent_volume_claim.as_ref().unwrap();
        assert_eq!((claim.claim_name.as_str(), claim.read_only), ("datasets", Some(true)));
        let c = &pod.containers[0];
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.read_only, Some(true));
        let uri = c.env.as_ref().unwrap()[0].value.clone().unwrap();
        assert_eq!(uri, format!("file://{}/iris/latest.csv", mount.mount_path));
    }

    #[test]
    fn readings_of_a_check() {
        let uri = "s3://data/iris.csv";
        let digest = format!("sha256:{}", "ab".repeat(32));
        let running = Job { status: Some(JobStatus::default()), ..finished_job(true, uri, "") };
        assert_eq!(reading(&running, &PodOutcome::default(), uri), None);

        let ok = finished_job(true, uri, "Completed");
        let msg = format!(r#"{{"version":1,"digest":"{digest}","bytes":10}}"#);
        assert_eq!(reading(&ok, &outcome(&msg), uri), Some(Reading::Value(digest.clone())));
        // A URI changed meanwhile: nothing measured.
        assert!(matches!(reading(&ok, &outcome(&msg), "s3://data/other.csv"), Some(Reading::NoData(_))));
        // Garbage instead of a digest.
        let Some(Reading::Error(e)) = reading(&ok, &outcome("hello"), uri) else { panic!() };
        assert!(e.contains("left no digest"), "{e}");

        let failed = finished_job(false, uri, "BackoffLimitExceeded");
        let Some(Reading::Error(e)) =
            reading(&failed, &outcome("GET s3://data/iris.csv: 403 Forbidden"), uri)
        else {
            panic!()
        };
        assert!(e.contains("403 Forbidden"), "{e}");
        let deadline = finished_job(false, uri, "DeadlineExceeded");
        let Some(Reading::Error(e)) = reading(&deadline, &PodOutcome::default(), uri) else { panic!() };
        assert!(e.contains("DeadlineExceeded"), "{e}");
        let oom =
            PodOutcome { exit_code: Some(137), reason: Some("OOMKilled".into()), ..PodOutcome::default() };
        let Some(Reading::Error(e)) = reading(&failed, &oom, uri) else { panic!() };
        assert!(
            e.ends_with("BackoffLimitExceeded (its container exited 137 (OOMKilled, signal 9, SIGKILL))"),
            "{e}"
        );
    }
}
