//! Canary analysis inputs: pod health (pure, from the pods a watch delivered) and
//! Prometheus measurements (one instant query per metric check, the only I/O here).

pub mod health;
pub mod prometheus;
pub mod scope;

/// Fills a metric check's placeholders.
pub fn render_query(template: &str, namespace: &str, name: &str, version: &str, role: &str) -> String {
    template
        .replace("{{namespace}}", namespace)
        .replace("{{name}}", name)
        .replace("{{modelVersion}}", version)
        .replace("{{role}}", role)
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_filled() {
        let q = super::render_query(
            r#"sum(rate(mlops_requests_total{namespace="{{namespace}}",model_version="{{modelVersion}}",code=~"5.."}[1m])) / {{name}}_{{role}}"#,
            "ml",
            "iris",
            "iris-r2",
            "canary",
        );
        assert_eq!(
            q,
            r#"sum(rate(mlops_requests_total{namespace="ml",model_version="iris-r2",code=~"5.."}[1m])) / iris_canary"#
        );
    }
}
