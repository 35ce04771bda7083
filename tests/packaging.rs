//! Packaging: the Helm chart lints strictly, its values schema refuses unknown keys, it
//! carries exactly the generated CRDs and the RBAC and pod security it promises, the
//! committed `manifests/install.yaml` is its current render, and the API server accepts
//! the render, `install.yaml` and the examples in `examples/` on a server-side dry run.
//!
//! helm comes from PATH (hack/test.sh puts the tools cache there), else from the tools
//! cache. The tests that need helm or the cluster are ignored by a plain `cargo test` and
//! run by `make test`; they fail, never pass, when helm or the cluster is missing.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Command, Output},
};

use serde::Deserialize;
use serde_json::Value;
use testkit::{TestEnv, install_crds, kubectl_in, output_text, repo_root};

const CHART: &str = "charts/mlops-operator";
const RELEASE: &str = "mlops-operator";
const INSTALL_NAMESPACE: &str = "mlops-system";

/// The helm binary (PATH or the tools cache); panics when it is missing.
fn helm() -> PathBuf {
    testkit::tool("helm", "run `make tools` (or `make test`)")
}

/// Runs helm in the repository root.
fn run_helm(helm: &PathBuf, args: &[&str]) -> Output {
    Command::new(helm).args(args).current_dir(repo_root()).output().expect("helm runs")
}

/// `helm template` of the chart into `namespace` with extra `--set` values; panics on error.
fn render(helm: &PathBuf, namespace: &str, sets: &[&str]) -> String {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", namespace];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = run_helm(helm, &args);
    assert!(out.status.success(), "helm template {sets:?}: {}", output_text(&out));
    String::from_utf8(out.stdout).expect("utf-8 render")
}

/// The non-empty documents of a multi-document YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the render has no {kind} {name}"))
}

/// Numbers as f64: Helm's YAML round trip writes `1.0` as `1`, which means the same.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), normalized(v))).collect()),
        other => other.clone(),
    }
}

/// `(apiGroup, resource, verb)` triples granted by an RBAC role's rules.
fn grants(role: &Value) -> BTreeSet<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(
            rule.get("resourceNames").is_none() || role["kind"] == "Role",
            "resourceNames only on the Lease"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    assert!(group != "*" && resource != "*" && verb != "*", "no wildcards in RBAC");
                    out.insert(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    out
}

fn expand(spec: &[(&str, &[&str])]) -> BTreeSet<String> {
    spec.iter().flat_map(|(res, verbs)| verbs.iter().map(move |v| format!("{res}:{v}"))).collect()
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn chart_lints_strictly() {
    let helm = helm();
    let out = run_helm(&helm, &["lint", "--strict", CHART]);
    assert!(out.status.success(), "helm lint --strict: {}", output_text(&out));
    let out = run_helm(
        &helm,
        &[
            "lint",
            "--strict",
            CHART,
            "--set",
            "watchNamespace=team-a,crds.install=false,replicaCount=1,metrics.serviceMonitor.enabled=true",
        ],
    );
    assert!(out.status.success(), "helm lint --strict with other values: {}", output_text(&out));
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn values_schema_refuses_unknown_and_invalid_values() {
    let helm = helm();
    for (set, expect) in [
        ("replicas=3", "additional properties 'replicas' not allowed"),
        ("crds.upgrade=true", "additional properties 'upgrade' not allowed"),
        ("logFormat=yaml", "logFormat"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("leaderElection.retryPeriodSeconds=0", "retryPeriodSeconds"),
        (
            "leaderElection.renewDeadlineSeconds=15",
            "renewDeadlineSeconds must be less than leaseDurationSeconds",
        ),
        ("podPolicy.defaultLevel=root", "defaultLevel"),
        ("podPolicy.namespaces.research=root", "research"),
    ] {
        let out = run_helm(&helm, &["template", RELEASE, CHART, "--set", set]);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(output_text(&out).contains(expect), "--set {set}: {}", output_text(&out));
    }
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn chart_installs_and_keeps_the_generated_crds() {
    let helm = helm();
    let root = repo_root();
    let generated = std::fs::read_to_string(root.join("crds/mlops.dev.yaml")).expect("crds/");
    let copy =
        std::fs::read_to_string(root.join(CHART).join("files/crds/mlops.dev.yaml")).expect("chart copy");
    assert!(generated == copy, "the chart's CRD copy drifted from crds/: run `make generate`");

    let docs = documents(&render(&helm, INSTALL_NAMESPACE, &[]));
    let rendered: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "CustomResourceDefinition").collect();
    let expected = documents(&generated);
    assert_eq!(rendered.len(), expected.len(), "one rendered CRD per generated CRD");
    for want in &expected {
        let name = want["metadata"]["name"].as_str().expect("CRD name");
        let got = find(&docs, "CustomResourceDefinition", name);
        assert!(normalized(&got["spec"]) == normalized(&want["spec"]), "{name}: the rendered spec differs");
        assert_eq!(got["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "{name}");
        assert!(got["metadata"].get("namespace").is_none(), "{name} is cluster-scoped");
    }

    let docs = documents(&render(&helm, INSTALL_NAMESPACE, &["crds.keep=false"]));
    let crd = find(&docs, "CustomResourceDefinition", "trainingjobs.mlops.dev");
    assert!(crd["metadata"]["annotations"].get("helm.sh/resource-policy").is_none());
    let docs = documents(&render(&helm, INSTALL_NAMESPACE, &["crds.install=false"]));
    assert!(docs.iter().all(|d| d["kind"] != "CustomResourceDefinition"), "crds.install=false renders none");
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn operator_rbac_lists_exactly_the_verbs_used() {
    let helm = helm();
    let docs = documents(&render(&helm, INSTALL_NAMESPACE, &[]));
    let role = find(&docs, "ClusterRole", RELEASE);
    // The chart includes the rules generated from src/rbac.rs (each with the calls that need
    // it); the render must grant exactly those, cluster-wide and namespace-scoped.
    let want: BTreeSet<String> = mlops_operator::rbac::OPERATOR
        .iter()
        .flat_map(|r| {
            r.api_groups.iter().flat_map(move |g| {
                r.resources.iter().flat_map(move |res| r.verbs.iter().map(move |v| format!("{g}/{res}:{v}")))
            })
        })
        .collect();
    assert_eq!(grants(role), want, "operator ClusterRole");
    let binding = find(&docs, "ClusterRoleBinding", RELEASE);
    assert_eq!(binding["subjects"][0]["namespace"], INSTALL_NAMESPACE);

    let lease = find(&docs, "Role", "mlops-operator-leader-election");
    assert_eq!(lease["metadata"]["namespace"], INSTALL_NAMESPACE);
    assert_eq!(grants(lease), expand(&[("coordination.k8s.io/leases", &["create", "get", "update"])]));
    let named = lease["rules"].as_array().unwrap().iter().find(|r| r.get("resourceNames").is_some());
    assert_eq!(named.expect("get/update limited to the Lease")["resourceNames"][0], "mlops-operator-leader");

    for (name, label) in [
        ("mlops-admin", "aggregate-to-admin"),
        ("mlops-editor", "aggregate-to-edit"),
        ("mlops-viewer", "aggregate-to-view"),
    ] {
        let role = find(&docs, "ClusterRole", name);
        assert_eq!(
            role["metadata"]["labels"][format!("rbac.authorization.k8s.io/{label}")],
            "true",
            "{name}"
        );
        assert!(grants(role).iter().all(|g| g.starts_with("mlops.dev/")), "{name} grants only mlops.dev");
    }
    let viewer = grants(find(&docs, "ClusterRole", "mlops-viewer"));
    assert!(viewer.iter().all(|g| g.ends_with(":get") || g.ends_with(":list") || g.ends_with(":watch")));

    // Namespace-scoped install: the same rules as a Role in the watched namespace.
    let docs = documents(&render(&helm, INSTALL_NAMESPACE, &["watchNamespace=team-a"]));
    assert!(docs.iter().all(|d| !(d["kind"] == "ClusterRole" && d["metadata"]["name"] == RELEASE)));
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == RELEASE)
        .expect("a Role in the watched namespace");
    assert_eq!(role["metadata"]["namespace"], "team-a");
    assert_eq!(grants(role), want);
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn operator_deployment_is_restricted_probed_and_highly_available() {
    let helm = helm();
    let docs = documents(&render(&helm, INSTALL_NAMESPACE, &[]));
    let deploy = find(&docs, "Deployment", RELEASE);
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/mlops-dev/mlops-operator:0.1.0");
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--metrics-addr=0.0.0.0:8080") && args.contains(&"--log-format=json"), "{args:?}");
    for (var, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let env = c["env"].as_array().unwrap().iter().find(|e| e["name"] == var).expect(var);
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    let pdb = find(&docs, "PodDisruptionBudget", RELEASE);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], deploy["spec"]["selector"]["matchLabels"]);
    let svc = find(&docs, "Service", "mlops-operator-metrics");
    assert_eq!(svc["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"]);
    assert!(docs.iter().all(|d| d["kind"] != "ServiceMonitor"), "ServiceMonitor is opt-in");

    let docs = documents(&render(&helm, INSTALL_NAMESPACE, &["replicaCount=1"]));
    assert!(docs.iter().all(|d| d["kind"] != "PodDisruptionBudget"), "no PDB for a single replica");

    // The renew deadline is the operator's default (two thirds of the lease) unless set.
    assert!(!args.iter().any(|a| a.starts_with("--lease-renew-deadline-seconds")), "{args:?}");
    let docs = documents(&render(&helm, INSTALL_NAMESPACE, &["leaderElection.renewDeadlineSeconds=8"]));
    let args =
        find(&docs, "Deployment", RELEASE)["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(args.as_array().unwrap().contains(&"--lease-renew-deadline-seconds=8".into()), "{args}");
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn the_pod_policy_values_become_the_operators_flags() {
    let helm = helm();
    let args = |sets: &[&str]| -> Vec<String> {
        let docs = documents(&render(&helm, INSTALL_NAMESPACE, sets));
        let c = &find(&docs, "Deployment", RELEASE)["spec"]["template"]["spec"]["containers"][0];
        let all = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string());
        all.filter(|a| a.contains("pod-security-level")).collect()
    };
    assert_eq!(args(&[]), ["--default-pod-security-level=restricted"]);
    assert_eq!(
        args(&[
            "podPolicy.defaultLevel=baseline,podPolicy.namespaces.research=privileged,podPolicy.namespaces.lab=restricted"
        ]),
        [
            "--default-pod-security-level=baseline",
            "--pod-security-level=lab=restricted",
            "--pod-security-level=research=privileged"
        ]
    );
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn install_yaml_is_the_current_render() {
    let helm = helm();
    let committed =
        std::fs::read_to_string(repo_root().join("manifests/install.yaml")).expect("install.yaml");
    let docs = documents(&committed);
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], INSTALL_NAMESPACE);
    assert_eq!(docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    // The plain install has no Helm hooks (`helm template --no-hooks`); the uninstall hook
    // is the chart's only one.
    let fresh = render(&helm, INSTALL_NAMESPACE, &["uninstall.releaseFinalizers=false"]);
    assert!(
        committed.ends_with(&fresh),
        "manifests/install.yaml is not the chart's current render: run `make generate`"
    );
}

/// Server-side dry-run apply of `yaml` in `namespace`; fails on refusal and on any
/// PodSecurity warning (the namespace enforces and warns on "restricted").
fn dry_run(env: &TestEnv, what: &str, yaml: &str) {
    let out = env
        .kubectl(&["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-"], Some(yaml));
    let shown = output_text(&out);
    assert!(out.status.success(), "{what} was refused on a server-side dry run:\n{shown}");
    assert!(!shown.contains("would violate PodSecurity"), "{what} breaks the restricted profile:\n{shown}");
}

fn restricted(env: &TestEnv) {
    let out = kubectl_in(
        None,
        &[
            "label",
            "namespace",
            &env.namespace,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted",
        ],
        None,
    );
    assert!(out.status.success(), "labelling the namespace: {}", output_text(&out));
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn chart_render_passes_a_server_side_dry_run() {
    let helm = helm();
    let env = TestEnv::start("packaging-chart").await;
    restricted(&env);
    // Rendered into the test's namespace: a dry run cannot create mlops-system for the
    // objects inside it.
    dry_run(&env, "the chart render", &render(&helm, &env.namespace, &[]));
    dry_run(
        &env,
        "the chart render (namespace-scoped)",
        &render(&helm, &env.namespace, &[&format!("watchNamespace={}", env.namespace)]),
    );
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn install_yaml_passes_a_server_side_dry_run() {
    let env = TestEnv::start("packaging-install").await;
    restricted(&env);
    let committed =
        std::fs::read_to_string(repo_root().join("manifests/install.yaml")).expect("install.yaml");
    // Every occurrence of the namespace (the Namespace, metadata.namespace, subjects) moves
    // to the test's; install_yaml_is_the_current_render checks the rest is the chart.
    let moved = committed.replace(INSTALL_NAMESPACE, &env.namespace);
    assert!(!moved.contains(INSTALL_NAMESPACE));
    dry_run(&env, "manifests/install.yaml", &moved);
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn examples_pass_a_server_side_dry_run() {
    let env = TestEnv::start("packaging-examples").await;
    install_crds();
    let dir = repo_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let kinds: BTreeSet<String> = files
        .iter()
        .flat_map(|f| documents(&std::fs::read_to_string(f).expect("example")))
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: BTreeSet<String> =
        ["InferenceService", "ModelVersion", "TrainingJob"].into_iter().map(String::from).collect();
    assert_eq!(kinds, want, "one example per kind");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("example");
        dry_run(&env, &file.display().to_string(), &text);
    }
}
