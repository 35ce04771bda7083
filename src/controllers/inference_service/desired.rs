//! Desired children of an InferenceService, pure: one Deployment per served version (with
//! the runtime's S3 credentials by Secret reference and its ServiceAccount), the Service
//! over all of them, per-version Services and an HTTPRoute for Gateway API
//! routing, and the HorizontalPodAutoscaler.

use std::collections::BTreeMap;

use contract::server_env;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
            MetricTarget, ResourceMetricSource,
        },
        core::v1::{
            Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
            PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, Service, ServicePort,
            ServiceSpec, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{
    Resource, ResourceExt,
    api::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};

use crate::{
    api::{
        self, InferenceService, ModelVersion,
        inference_service::{DEFAULT_MIN_REPLICAS, DEFAULT_TARGET_CPU_UTILIZATION, RuntimePreset},
    },
    controllers::{
        names,
        pod_security::{self, RunAs},
    },
    rollout::Traffic,
};

/// Fault injection for end-to-end tests and demos: a ModelVersion annotation whose JSON
/// object of `MLOPS_FAULT_*` variables is added to that version's server pods, honoured
/// only when the operator runs with `--enable-fault-injection` (off in the chart): in
/// production an annotation, which may change on an immutable version, must not be able to
/// break a serving model without a rollout.
pub const ANNOTATION_FAULT_ENV: &str = "mlops.dev/test-fault-env";
pub const SERVER_CONTAINER: &str = "server";
const PVC_MOUNT: &str = "/mnt/mlops/model";
/// Default image of the reference runtime preset.
pub const MLOPS_RUNTIME_IMAGE: &str = "ghcr.io/mlops-dev/mlops-runtime:0.1.0";

fn owner(isvc: &InferenceService) -> OwnerReference {
    isvc.controller_owner_ref(&()).expect("InferenceService from the API server has metadata")
}

pub fn selector_labels(isvc: &InferenceService) -> BTreeMap<String, String> {
    BTreeMap::from([(api::LABEL_INFERENCE_SERVICE.into(), isvc.name_any())])
}

/// `status.selector`: every serving pod of the service (scale subresource, HPA).
pub fn selector_string(isvc: &InferenceService) -> String {
    format!("{}={}", api::LABEL_INFERENCE_SERVICE, isvc.name_any())
}

pub fn url(isvc: &InferenceService) -> String {
    format!(
        "http://{}.{}.svc:{}",
        isvc.name_any(),
        isvc.namespace().unwrap_or_default(),
        isvc.spec.runtime.port()
    )
}

fn labels(isvc: &InferenceService, version: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (api::LABEL_APP_NAME.into(), "mlops-server".into()),
        (api::LABEL_APP_INSTANCE.into(), isvc.name_any()),
        (api::LABEL_APP_COMPONENT.into(), api::COMPONENT_SERVER.into()),
        (api::LABEL_APP_MANAGED_BY.into(), api::MANAGED_BY.into()),
        (api::LABEL_APP_PART_OF.into(), api::PART_OF.into()),
        (api::LABEL_INFERENCE_SERVICE.into(), isvc.name_any()),
        (api::LABEL_MODEL.into(), isvc.spec.model.clone()),
        (api::LABEL_MODEL_VERSION.into(), version.into()),
    ])
}

/// The Deployment of `version`: `<service>-<version>-<hash>`, at most 52 characters so
/// that its pods' names stay within a DNS label. The hash of both names keeps two services
/// apart whose joined names are equal (`web` + `canary-v1`, `web-canary` + `v1`); see
/// [`names`].
pub fn deployment_name(service: &str, version: &str) -> String {
    names::unique(&format!("{service}-{version}"), &[service, version], 52)
}

/// The Service of one role (stable, canary) for Gateway API routing:
/// `<service>-<role>-<hash>`, a DNS label. Without the hash, `web`'s stable Service would be
/// the Service of an InferenceService named `web-stable`.
pub fn role_service_name(service: &str, role: &str) -> String {
    names::unique(&format!("{service}-{role}"), &[service, role], 63)
}

fn image(isvc: &InferenceService) -> String {
    isvc.spec.runtime.image.clone().unwrap_or_else(|| {
        match isvc.spec.runtime.preset.unwrap_or_default() {
            RuntimePreset::MlopsRuntime => MLOPS_RUNTIME_IMAGE,
            RuntimePreset::MlServer => "docker.io/seldonio/mlserver:1.7.1",
            RuntimePreset::Triton => "nvcr.io/nvidia/tritonserver:24.08-py3",
        }
        .to_string()
    })
}

fn env_literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

/// The Deployment serving `mv` with `replicas` pods.
pub fn deployment(isvc: &InferenceService, mv: &ModelVersion, replicas: i32) -> Deployment {
    let version = mv.name_any();
    let rt = &isvc.spec.runtime;
    let port = rt.port();
    let labels = labels(isvc, &version);
    let mut selector = selector_labels(isvc);
    selector.insert(api::LABEL_MODEL_VERSION.into(), version.clone());

    let (model_uri, volume) = match api::model_version::pvc_parts(&mv.spec.artifact.uri) {
        Some((claim, path)) => {
            let volume = Volume {
                name: "model".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            };
            (format!("file://{PVC_MOUNT}/{path}"), Some(volume))
        }
        None => (mv.spec.artifact.uri.clone(), None),
    };
    let mut env = vec![
        env_literal(server_env::MODEL_NAME, &isvc.spec.model),
        env_literal(server_env::MODEL_VERSION, &version),
        env_literal(server_env::MODEL_URI, model_uri),
        env_literal(server_env::HTTP_PORT, port.to_string()),
        EnvVar {
            name: server_env::POD_IP.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), api_version: None }),
                ..EnvVarSource::default()
            }),
        },
    ];
    if let Some(d) = &mv.spec.artifact.digest {
        env.push(env_literal(server_env::MODEL_DIGEST, d));
    }
    if let Some(secret) = &rt.credentials_secret_ref {
        env.extend(crate::controllers::s3_credentials_env("", &secret.name));
    }
    let ours: Vec<String> = env.iter().map(|e| e.name.clone()).collect();
    env.extend(rt.env.iter().filter(|e| !ours.contains(&e.name)).cloned());
    let preset = rt.preset.unwrap_or_default();
    for &(name, value) in preset_scratch_env(preset) {
        if !env.iter().any(|e| e.name == name) {
            env.push(env_literal(name, value));
        }
    }

    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let args = if !rt.args.is_empty() {
        Some(rt.args.clone())
    } else if preset == RuntimePreset::MlopsRuntime && rt.command.is_empty() {
        Some(vec!["serve".into()])
    } else {
        None
    };
    let container = Container {
        name: SERVER_CONTAINER.into(),
        image: Some(image(isvc)),
        command: (!rt.command.is_empty()).then(|| rt.command.clone()),
        args,
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/v2/health/ready", 2)),
        liveness_probe: Some(probe("/v2/health/live", 10)),
        resources: rt.resources.clone(),
        volume_mounts: volume.as_ref().map(|_| {
            vec![VolumeMount {
                name: "model".into(),
                mount_path: PVC_MOUNT.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    };
    let mut pod = PodSpec {
        containers: vec![container],
        volumes: volume.map(|v| vec![v]),
        readiness_gates: super::readiness_gate::pod_readiness_gates(isvc),
        service_account_name: rt.service_account_name.clone(),
        ..PodSpec::default()
    };
    pod_security::secure_pod(&mut pod, preset_run_as(preset), &[SERVER_CONTAINER]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&isvc.name_any(), &version)),
            namespace: isvc.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner(isvc)]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".into(), "true".into()),
                        ("prometheus.io/port".into(), port.to_string()),
                        ("prometheus.io/path".into(), "/metrics".into()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The user a preset's server runs as: its image's own non-root user. MLServer's image runs
/// as 1000, and no other user may enter its working directory `/opt/mlserver` (owner
/// 1000:0, mode 776); Triton's image is root but ships its server for `triton-server`
/// (1000:1000). The reference runtime's image runs as 65532, and so does any image given
/// with that preset (a root one included).
fn preset_run_as(preset: RuntimePreset) -> RunAs {
    match preset {
        RuntimePreset::MlopsRuntime => pod_security::NONROOT,
        RuntimePreset::MlServer | RuntimePreset::Triton => RunAs { user: 1000, group: 1000 },
    }
}

/// Where a preset's server writes, moved off the read-only root filesystem (a variable of
/// `runtime.env` wins): MLServer creates its metrics folder in its working directory and
/// its image points the Hugging Face and Numba caches there too.
fn preset_scratch_env(preset: RuntimePreset) -> &'static [(&'static str, &'static str)] {
    match preset {
        RuntimePreset::MlServer => &[
            ("MLSERVER_METRICS_DIR", "/tmp/.metrics"),
            ("TRANSFORMERS_CACHE", "/tmp/.cache"),
            ("NUMBA_CACHE_DIR", "/tmp/.cache"),
        ],
        RuntimePreset::MlopsRuntime | RuntimePreset::Triton => &[],
    }
}

/// Adds the fault variables `mv` asks for to the server container of its Deployment.
pub fn inject_faults(deployment: &mut Deployment, mv: &ModelVersion) {
    let containers =
        deployment.spec.as_mut().and_then(|s| s.template.spec.as_mut()).map(|p| &mut p.containers);
    if let Some(server) = containers.into_iter().flatten().find(|c| c.name == SERVER_CONTAINER) {
        server.env.get_or_insert_default().extend(fault_env(mv));
    }
}

/// The fault variables a ModelVersion asks for; anything else is ignored.
fn fault_env(mv: &ModelVersion) -> Vec<EnvVar> {
    let Some(raw) = mv.annotations().get(ANNOTATION_FAULT_ENV) else { return vec![] };
    let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(raw) else { return vec![] };
    map.into_iter().filter(|(k, _)| k.starts_with("MLOPS_FAULT_")).map(|(k, v)| env_literal(&k, v)).collect()
}

fn service(isvc: &InferenceService, name: String, selector: BTreeMap<String, String>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: isvc.namespace(),
            labels: Some(
                labels(isvc, "").into_iter().filter(|(k, _)| k != api::LABEL_MODEL_VERSION).collect(),
            ),
            owner_references: Some(vec![owner(isvc)]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: isvc.spec.runtime.port(),
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service over every version (replica-weighted traffic), plus, for Gateway API
/// routing, one Service per role that the HTTPRoute weights.
pub fn services(isvc: &InferenceService, traffic: &Traffic) -> Vec<Service> {
    let mut main = selector_labels(isvc);
    // With no canary taking traffic, the Service selects the stable version alone: a
    // rollback cuts the canary off in this one write, before its pods even begin to stop.
    if let Some(stable) = &traffic.stable
        && traffic.canary.as_ref().is_none_or(|c| c.weight == 0)
    {
        main.insert(api::LABEL_MODEL_VERSION.into(), stable.version.clone());
    }
    let mut out = vec![service(isvc, isvc.name_any(), main)];
    if traffic.gateway {
        for (role, placement) in [(api::ROLE_STABLE, &traffic.stable), (api::ROLE_CANARY, &traffic.canary)] {
            if let Some(p) = placement {
                let mut sel = selector_labels(isvc);
                sel.insert(api::LABEL_MODEL_VERSION.into(), p.version.clone());
                out.push(service(isvc, role_service_name(&isvc.name_any(), role), sel));
            }
        }
    }
    out
}

/// The Gateway API's HTTPRoute, which this crate has no type for.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"))
}

/// The weighted HTTPRoute for Gateway API routing.
pub fn http_route(isvc: &InferenceService, traffic: &Traffic) -> Option<Value> {
    let gw = isvc.spec.rollout.as_ref()?.traffic_routing.as_ref()?.gateway_api.as_ref()?;
    let port = isvc.spec.runtime.port();
    let backends: Vec<_> = [(api::ROLE_STABLE, &traffic.stable), (api::ROLE_CANARY, &traffic.canary)]
        .into_iter()
        .filter_map(|(role, p)| p.as_ref().map(|p| (role, p.weight)))
        .map(|(role, weight)| json!({"name": role_service_name(&isvc.name_any(), role), "port": port, "weight": weight}))
        .collect();
    let mut parent = json!({"name": gw.gateway_ref.name});
    if let Some(ns) = &gw.gateway_ref.namespace {
        parent["namespace"] = json!(ns);
    }
    if let Some(s) = &gw.gateway_ref.section_name {
        parent["sectionName"] = json!(s);
    }
    let mut spec = json!({"parentRefs": [parent], "rules": [{"backendRefs": backends}]});
    if !gw.hostnames.is_empty() {
        spec["hostnames"] = json!(gw.hostnames);
    }
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": gw.http_route_name.clone().unwrap_or_else(|| isvc.name_any()),
            "namespace": isvc.namespace(),
            "labels": selector_labels(isvc),
            "ownerReferences": [owner(isvc)],
        },
        "spec": spec,
    });
    Some(route)
}

/// The HorizontalPodAutoscaler scaling the InferenceService through its scale subresource.
pub fn autoscaler(isvc: &InferenceService) -> Option<HorizontalPodAutoscaler> {
    let a = isvc.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(isvc.name_any()),
            namespace: isvc.namespace(),
            labels: Some(selector_labels(isvc)),
            owner_references: Some(vec![owner(isvc)]),
            ..ObjectMeta::default()
        },
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(api::API_VERSION.into()),
                kind: "InferenceService".into(),
                name: isvc.name_any(),
            },
            min_replicas: Some(a.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS)),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(
                            a.target_cpu_utilization_percentage.unwrap_or(DEFAULT_TARGET_CPU_UTILIZATION),
                        ),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{controllers::pod_security::policy::restricted_violations, rollout::traffic::Placement};

    #[test]
    fn the_service_selects_the_stable_version_alone_unless_a_canary_takes_traffic() {
        let isvc: InferenceService = serde_json::from_value(serde_json::json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "web", "namespace": "ml", "uid": "u"},
            "spec": {"model": "iris", "track": "LatestValidated"}
        }))
        .unwrap();
        let place = |v: &str, weight| Some(Placement { version: v.into(), replicas: 1, weight });
        let selector = |t: Traffic| services(&isvc, &t)[0].spec.clone().unwrap().selector.unwrap();
        let stable_only = Traffic { stable: place("v1", 100), ..Traffic::default() };
        assert_eq!(selector(stable_only)[api::LABEL_MODEL_VERSION], "v1");
        let canary = Traffic { stable: place("v1", 75), canary: place("v2", 25), ..Traffic::default() };
        assert!(!selector(canary).contains_key(api::LABEL_MODEL_VERSION), "both versions serve");
        let rolling_back = Traffic { stable: place("v1", 100), canary: place("v2", 0), ..Traffic::default() };
        assert_eq!(selector(rolling_back)[api::LABEL_MODEL_VERSION], "v1", "the canary is cut off at once");
    }

    fn isvc(runtime: serde_json::Value) -> InferenceService {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "web", "namespace": "ml", "uid": "u"},
            "spec": {"model": "iris", "version": "iris-r1", "runtime": runtime}
        }))
        .unwrap()
    }

    fn s3_version() -> ModelVersion {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "iris-r1", "namespace": "ml", "uid": "m"},
            "spec": {"model": "iris", "artifact": {"uri": "s3://models/iris/model.json",
                                                   "digest": format!("sha256:{}", "a".repeat(64))}}
        }))
        .unwrap()
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn server_env(d: &Deployment) -> &[EnvVar] {
        pod(d).containers[0].env.as_deref().unwrap()
    }

    #[test]
    fn s3_credentials_reach_the_server_by_secret_reference_never_by_value() {
        let isvc = isvc(serde_json::json!({
            "credentialsSecretRef": {"name": "s3-creds"},
            // A literal of the same name is dropped: the Secret's reference wins.
            "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "AKIA-LITERAL"}, {"name": "LOG", "value": "debug"}],
        }));
        let d = deployment(&isvc, &s3_version(), 2);
        let env = server_env(&d);
        let refs: Vec<(&str, &str, Option<bool>)> = env
            .iter()
            .filter(|e| e.name.starts_with("AWS_"))
            .map(|e| {
                assert_eq!(e.value, None, "{} must not be a literal", e.name);
                let r = e.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
                assert_eq!(r.name, "s3-creds");
                (e.name.as_str(), r.key.as_str(), r.optional)
            })
            .collect();
        assert_eq!(
            refs,
            [
                ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID", Some(false)),
                ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", Some(false)),
                ("AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN", Some(true)),
                ("AWS_REGION", "AWS_REGION", Some(true)),
                ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL", Some(true)),
            ]
        );
        assert!(env.iter().any(|e| e.name == "LOG"), "other user variables stay");
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("AKIA-LITERAL"), "no credential value in the Deployment");
        assert!(env.iter().any(
            |e| e.name == "MLOPS_MODEL_URI" && e.value.as_deref() == Some("s3://models/iris/model.json")
        ));
        assert_eq!(pod(&d).service_account_name, None, "the namespace's default ServiceAccount");
    }

    #[test]
    fn serving_pods_of_every_preset_run_restricted_on_a_read_only_root() {
        for (preset, user, metrics_dir) in
            [("MlopsRuntime", 65532, None), ("MLServer", 1000, Some("/tmp/.metrics")), ("Triton", 1000, None)]
        {
            let mut pvc_version = s3_version();
            pvc_version.spec.artifact.uri = "pvc://models/iris/model.json".into();
            for mv in [s3_version(), pvc_version] {
                let d = deployment(&isvc(serde_json::json!({"preset": preset})), &mv, 1);
                let pod = pod(&d);
                assert_eq!(restricted_violations(pod), Vec::<String>::new(), "{preset}");
                let sc = pod.security_context.as_ref().unwrap();
                assert_eq!((sc.run_as_user, sc.run_as_group), (Some(user), Some(user)), "{preset}");
                // A server has no business with the Kubernetes API.
                assert_eq!(pod.automount_service_account_token, Some(false), "{preset}");
                let c = &pod.containers[0];
                assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
                let paths: Vec<&str> =
                    c.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
                assert!(paths.contains(&"/tmp") && paths.contains(&"/home/mlops"), "{preset}: {paths:?}");
                let env = |name: &str| server_env(&d).iter().find(|e| e.name == name)?.value.as_deref();
                assert_eq!(env("HOME"), Some("/home/mlops"));
                assert_eq!(env("MLSERVER_METRICS_DIR"), metrics_dir, "{preset}");
            }
        }
        // runtime.env wins over the preset's scratch settings and the HOME default.
        let own = isvc(serde_json::json!({"preset": "MLServer", "env": [
            {"name": "MLSERVER_METRICS_DIR", "value": "/m"}, {"name": "HOME", "value": "/tmp"}]}));
        let d = deployment(&own, &s3_version(), 1);
        let values = |name: &str| -> Vec<Option<&str>> {
            server_env(&d).iter().filter(|e| e.name == name).map(|e| e.value.as_deref()).collect()
        };
        assert_eq!((values("MLSERVER_METRICS_DIR"), values("HOME")), (vec![Some("/m")], vec![Some("/tmp")]));
    }

    #[test]
    fn serving_pods_run_as_the_chosen_service_account() {
        let d =
            deployment(&isvc(serde_json::json!({"serviceAccountName": "model-reader"})), &s3_version(), 1);
        assert_eq!(pod(&d).service_account_name.as_deref(), Some("model-reader"));
        // Workload identity alone: no credential variables at all.
        assert!(server_env(&d).iter().all(|e| !e.name.starts_with("AWS_")));
    }
}
