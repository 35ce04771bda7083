//! Golden tests: training on data sets shipped by `linfa-datasets` lands in
//! stated quality bands, and the shipped `testdata/iris.csv` is that data.

mod common;

use common::*;
use mlops_runtime::trainer;

fn train(csv: &str, label: &str, hyperparameters: &str) -> mlops_runtime::result::TrainerResult {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.csv");
    std::fs::write(&data, csv).unwrap();
    trainer::run(&config(&data, label, &dir.path().join("out"), hyperparameters)).unwrap()
}

#[test]
fn shipped_iris_csv_is_the_linfa_iris_data() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/iris.csv")).unwrap();
    let parse = |s: &str| -> Vec<Vec<String>> {
        s.lines()
            .map(|l| {
                l.split(',')
                    .map(|c| match c.parse::<f64>() {
                        Ok(v) => format!("{v}"),
                        Err(_) => c.to_string(),
                    })
                    .collect()
            })
            .collect()
    };
    assert_eq!(parse(&shipped), parse(&iris_csv()));
}

/// Band: logistic regression on iris, 23 test rows, accuracy 0.90–1.00.
#[test]
fn iris_logistic_regression_is_accurate() {
    let r = train(&iris_csv(), "species", r#"{"algorithm":"logistic_regression"}"#);
    let acc = r.metrics["accuracy"];
    assert!((0.90..=1.0).contains(&acc), "accuracy {acc}");
    assert!(r.metrics["f1"] >= 0.88, "{:?}", r.metrics);
    let rows = r.dataset.as_ref().and_then(|d| d.row_counts()).unwrap();
    assert_eq!((rows.total, rows.train, rows.validation, rows.test), (150, 104, 23, 23));
    // What the trainer writes is the contract's document, read back unchanged (metrics to
    // the last bit or two: serde_json's default float parsing is not exact).
    let written = mlops_runtime::result::render(&r).unwrap();
    let mut read: mlops_runtime::result::TrainerResult = serde_json::from_str(&written).unwrap();
    for (name, value) in &read.metrics {
        assert!((value - r.metrics[name]).abs() <= 1e-12 * value.abs().max(1.0), "{name}");
    }
    read.metrics.clone_from(&r.metrics);
    assert_eq!(read, r);
    for key in ["precision", "recall", "trainingSeconds", "latencyP50Ms", "latencyP99Ms", "artifactSizeBytes"]
    {
        assert!(r.metrics.contains_key(key), "missing {key}");
    }
    assert!(r.metrics["latencyP99Ms"] < 1.0);
}

/// Band: random forest on iris, accuracy 0.85–1.00.
#[test]
fn iris_random_forest_is_accurate() {
    let r = train(&iris_csv(), "species", r#"{"algorithm":"random_forest","nTrees":"30"}"#);
    let acc = r.metrics["accuracy"];
    assert!((0.85..=1.0).contains(&acc), "accuracy {acc}");
}

/// Band: linear regression on diabetes (10 features, 442 rows), R² 0.30–0.70
/// (published results for OLS on this data are around 0.45–0.5).
#[test]
fn diabetes_linear_regression_explains_variance() {
    let r = train(&diabetes_csv(), "progression", "");
    let r2 = r.metrics["r2"];
    assert!((0.30..=0.70).contains(&r2), "r2 {r2} {:?}", r.metrics);
    assert!(r.metrics["rmse"] > 0.0 && r.metrics["mae"] > 0.0);
    assert!(!r.metrics.contains_key("accuracy"));
}

#[test]
fn same_seed_gives_the_same_model() {
    let a = train(&iris_csv(), "species", "");
    let b = train(&iris_csv(), "species", "");
    assert_eq!(a.metrics["accuracy"], b.metrics["accuracy"]);
    assert_eq!(a.dataset.unwrap().digest, b.dataset.unwrap().digest);
}

#[test]
fn pinned_digest_mismatch_is_a_data_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("iris.csv");
    std::fs::write(&data, iris_csv()).unwrap();
    let mut cfg = config(&data, "species", &dir.path().join("out"), "");
    cfg.dataset_digest = Some(format!("sha256:{}", "0".repeat(64)));
    let err = trainer::run(&cfg).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("does not match the pinned"), "{err}");
    cfg.dataset_digest = Some(mlops_runtime::sha256_digest(iris_csv().as_bytes()));
    assert!(trainer::run(&cfg).is_ok());
}
