//! Monitoring outputs of the chart: the PrometheusRule passes `promtool check rules`, the
//! Grafana dashboard is valid JSON, and both reference only metrics that the operator
//! (src/metrics.rs) and the reference runtime (runtime/README.md, the contract) export.
//! Both are off by default, so `manifests/install.yaml` stays free of CRDs it cannot assume.
//!
//! helm and promtool come from PATH or the tools cache; the tests that need them are
//! ignored by a plain `cargo test` and run by `make test`, and fail when a tool is missing.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use mlops_operator::{metrics::Metrics, rollout::Delivered};
use serde::Deserialize;
use serde_json::Value;
use testkit::{output_text, repo_root, tool};

fn render(helm: &PathBuf, sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "mlops-operator", "charts/mlops-operator", "--namespace", "mlops-system"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = Command::new(helm).args(&args).current_dir(repo_root()).output().expect("helm runs");
    assert!(out.status.success(), "helm template {sets:?}: {}", output_text(&out));
    serde_yaml::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every metric family the operator registers, with each kind of series recorded once.
fn operator_metrics() -> BTreeSet<String> {
    let m = Metrics::new();
    drop(m.reconcile_started("trainingjob"));
    m.reconcile_failed("trainingjob", "transport");
    m.delivered("ns", "svc", &Delivered::Promoted { lead_time_seconds: Some(1) });
    m.delivered("ns", "svc", &Delivered::RolledBack);
    m.delivered("ns", "svc", &Delivered::Restored { seconds: 1 });
    m.training_run_started("ns", "tj", "drift");
    m.training_run_finished("ns", "tj", "drift", "failed");
    m.training_last_success("ns", "tj", Some(1.0));
    m.retrain_drift("ns", "tj", Some((Some(0.1), 0.2)));
    m.leader.set(1);
    families(&m.render())
}

fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// The server metrics of the runtime contract: the names in runtime/README.md's table.
fn runtime_metrics() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo_root().join("runtime/README.md")).unwrap();
    let names: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `mlops_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("mlops_{n}"))
        .collect();
    assert!(names.contains("mlops_feature_drift_psi") && names.contains("mlops_requests_total"), "{names:?}");
    names
}

/// The `mlops_*` metric names a PromQL expression uses, histogram suffixes folded.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("mlops_") {
        let prev = rest[..i].chars().last();
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        // Skip label names and strings that merely contain the prefix.
        if !prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"') {
            let name = &tail[..end];
            let base =
                ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            out.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn assert_known(what: &str, expr: &str, known: &BTreeSet<String>) {
    let used = metrics_in(expr);
    assert!(!used.is_empty(), "{what}: {expr} uses no mlops metric");
    for m in used {
        assert!(
            known.contains(&m),
            "{what}: {m} (in {expr}) is exported by neither the operator nor the runtime"
        );
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    let used = metrics_in(
        r#"histogram_quantile(0.9, sum by (le) (rate(mlops_lead_time_seconds_bucket{x="mlops_no"}[5m]))) / mlops_a"#,
    );
    assert_eq!(used, BTreeSet::from(["mlops_lead_time_seconds".to_string(), "mlops_a".to_string()]));
    let known = operator_metrics();
    for m in [
        "mlops_training_runs_total",
        "mlops_deployments_total",
        "mlops_lead_time_seconds",
        "mlops_retrain_drift_value",
    ] {
        assert!(known.contains(m), "{m} missing from {known:?}");
    }
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn monitoring_is_off_by_default() {
    let helm = tool("helm", "run `make tools` (or `make test`)");
    let docs = render(&helm, &[]);
    assert!(!docs.iter().any(|d| d["kind"] == "PrometheusRule"));
    assert!(
        !docs.iter().any(|d| d["kind"] == "ConfigMap"
            && d["metadata"]["name"].as_str().unwrap_or("").ends_with("-dashboard"))
    );
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn prometheus_rules_pass_promtool_and_use_exported_metrics() {
    let helm = tool("helm", "run `make tools` (or `make test`)");
    let promtool = tool("promtool", "hack/ensure-deps.sh installs Debian's prometheus package");
    let docs = render(
        &helm,
        &["monitoring.prometheusRule.enabled=true", "monitoring.prometheusRule.noSuccessfulTrainingDays=3"],
    );
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    let groups = &rule["spec"];
    let file = std::env::temp_dir().join(format!("mlops-rules-{}.yaml", std::process::id()));
    std::fs::write(&file, serde_yaml::to_string(groups).unwrap()).unwrap();
    let out = Command::new(&promtool).args(["check", "rules"]).arg(&file).output().expect("promtool runs");
    std::fs::remove_file(&file).ok();
    assert!(out.status.success(), "promtool check rules: {}", output_text(&out));

    let known: BTreeSet<String> = operator_metrics().union(&runtime_metrics()).cloned().collect();
    let mut alerts = BTreeSet::new();
    for group in groups["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            assert_known(&name, r["expr"].as_str().unwrap(), &known);
            assert!(r["annotations"]["summary"].is_string(), "{name} has a summary");
            alerts.insert(name);
        }
    }
    for a in [
        "MLOpsFeatureDriftHigh",
        "MLOpsRetrainDriftAboveThreshold",
        "MLOpsRollbackHappened",
        "MLOpsTrainingRunFailed",
        "MLOpsNoRecentSuccessfulTraining",
    ] {
        assert!(alerts.contains(a), "{a} missing from {alerts:?}");
    }
    let stale = groups["groups"][1]["rules"][1]["expr"].as_str().unwrap();
    assert!(stale.ends_with("> 259200"), "the days value is applied: {stale}");
}

#[test]
#[ignore = "needs the pinned tools (make tools); make test runs it"]
fn grafana_dashboard_is_valid_json_over_exported_metrics() {
    let helm = tool("helm", "run `make tools` (or `make test`)");
    let docs = render(&helm, &["monitoring.grafanaDashboard.enabled=true"]);
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "mlops-operator-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let text = cm["data"]["mlops-operator.json"].as_str().expect("the dashboard JSON");
    let dashboard: Value = serde_json::from_str(text).expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "mlops-operator");

    let known: BTreeSet<String> = operator_metrics().union(&runtime_metrics()).cloned().collect();
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "panel ids are unique");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            assert_known(panel["title"].as_str().unwrap(), expr, &known);
            used.extend(metrics_in(expr));
        }
    }
    // The delivery metrics and model health are all on it.
    for m in [
        "mlops_deployments_total",
        "mlops_lead_time_seconds",
        "mlops_time_to_restore_seconds",
        "mlops_feature_drift_psi",
        "mlops_requests_total",
        "mlops_training_runs_total",
        "mlops_training_last_success_timestamp_seconds",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
}
