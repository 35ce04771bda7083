//! Fitting a model with linfa and exporting it to the artifact's [`Model`] form.
//!
//! Why linfa rather than smartcore: linfa's fitted models expose their
//! parameters (logistic coefficients and intercepts, every tree node, the
//! bagged forest's feature subsets) through public accessors, so the runtime
//! can write them into its own documented JSON format and serve them without
//! any ML library. smartcore keeps tree nodes private, which would tie the
//! artifact to its serde layout. linfa is a rust-ml project, dual MIT/Apache-2.0,
//! pure Rust (no BLAS needed for the parts used here).
//!
//! Hyper-parameters (`MLOPS_HYPERPARAMETERS`, all strings):
//! `algorithm` = `logistic_regression` | `random_forest` | `linear_regression`
//! (default: logistic regression, or linear regression when the label is
//! numeric with more than 20 distinct values); `alpha` (L2 penalty, default 0.1)
//! and `maxIterations` (default 200) for logistic regression; `nTrees`
//! (default 50), `maxDepth` (default 10) and `featureFraction` (default 0.7)
//! for the forest. The split seed also seeds the forest.

use crate::model::{Model, Node, Scaler, Tree};
use crate::validate::CleanTable;
use linfa::prelude::*;
use ndarray::{Array1, Array2};
use rand::SeedableRng;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    LogisticRegression,
    RandomForest,
    LinearRegression,
}

impl Algorithm {
    fn parse(s: &str) -> Result<Algorithm, String> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "logistic_regression" | "logistic" | "logreg" => Ok(Algorithm::LogisticRegression),
            "random_forest" | "randomforest" | "rf" => Ok(Algorithm::RandomForest),
            "linear_regression" | "linear" | "ols" => Ok(Algorithm::LinearRegression),
            other => Err(format!(
                "unknown algorithm {other:?} (logistic_regression, random_forest, linear_regression)"
            )),
        }
    }

    pub fn is_regression(self) -> bool {
        self == Algorithm::LinearRegression
    }
}

/// Parsed hyper-parameters; the raw map is kept for the model card.
#[derive(Debug, Clone, PartialEq)]
pub struct Hyperparameters {
    pub raw: BTreeMap<String, String>,
    pub algorithm: Option<Algorithm>,
    pub alpha: f64,
    pub max_iterations: u64,
    pub n_trees: usize,
    pub max_depth: usize,
    pub feature_fraction: f64,
}

impl Hyperparameters {
    /// Parses `MLOPS_HYPERPARAMETERS` (a JSON object of strings; numbers and
    /// booleans are accepted and kept as their text).
    pub fn parse(json: &str) -> Result<Hyperparameters, String> {
        let mut raw = BTreeMap::new();
        if !json.trim().is_empty() {
            let value: serde_json::Value =
                serde_json::from_str(json).map_err(|e| format!("MLOPS_HYPERPARAMETERS: {e}"))?;
            let obj = value.as_object().ok_or("MLOPS_HYPERPARAMETERS: expected a JSON object")?;
            for (k, v) in obj {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => v.to_string(),
                    _ => return Err(format!("MLOPS_HYPERPARAMETERS.{k}: expected a string")),
                };
                raw.insert(k.clone(), text);
            }
        }
        fn num<T: std::str::FromStr>(
            raw: &BTreeMap<String, String>,
            key: &str,
            default: T,
            ok: impl Fn(&T) -> bool,
        ) -> Result<T, String> {
            match raw.get(key) {
                None => Ok(default),
                Some(v) => v
                    .parse::<T>()
                    .ok()
                    .filter(ok)
                    .ok_or_else(|| format!("MLOPS_HYPERPARAMETERS.{key}: invalid value {v:?}")),
            }
        }
        Ok(Hyperparameters {
            algorithm: raw
                .get("algorithm")
                .map(|a| Algorithm::parse(a))
                .transpose()
                .map_err(|e| format!("MLOPS_HYPERPARAMETERS.algorithm: {e}"))?,
            alpha: num(&raw, "alpha", 0.1, |v: &f64| v.is_finite() && *v >= 0.0)?,
            max_iterations: num(&raw, "maxIterations", 200, |v| *v > 0)?,
            n_trees: num(&raw, "nTrees", 50, |v| (1..=1000).contains(v))?,
            max_depth: num(&raw, "maxDepth", 10, |v| (1..=64).contains(v))?,
            feature_fraction: num(&raw, "featureFraction", 0.7, |v: &f64| *v > 0.0 && *v <= 1.0)?,
            raw,
        })
    }
}

/// Picks the algorithm: explicit, else by the label's nature.
pub fn choose_algorithm(hp: &Hyperparameters, labels: &[String]) -> Algorithm {
    if let Some(a) = hp.algorithm {
        return a;
    }
    let numeric = labels.iter().all(|l| l.parse::<f64>().is_ok());
    let distinct: std::collections::HashSet<&String> = labels.iter().collect();
    if numeric && distinct.len() > 20 { Algorithm::LinearRegression } else { Algorithm::LogisticRegression }
}

/// Sorted distinct class names (numerically when all are numbers) and each
/// row's class index.
pub fn encode_classes(labels: &[String]) -> (Vec<String>, Vec<usize>) {
    let mut classes: Vec<String> = labels.to_vec();
    classes.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    });
    classes.dedup();
    let index: std::collections::HashMap<&str, usize> =
        classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let y = labels.iter().map(|l| index[l.as_str()]).collect();
    (classes, y)
}

/// Numeric regression targets, or the first value that is not a number.
pub fn regression_targets(labels: &[String]) -> Result<Vec<f64>, String> {
    labels
        .iter()
        .map(|l| {
            l.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("label value {l:?} is not a number; regression needs numbers"))
        })
        .collect()
}

/// Mean and standard deviation of each feature over `rows` (scale 1 for a constant).
pub fn fit_scaler(table: &CleanTable, rows: &[usize]) -> Scaler {
    let f = table.features.len();
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0; f];
    for &i in rows {
        for (m, v) in mean.iter_mut().zip(table.row(i)) {
            *m += v / n;
        }
    }
    let mut scale = vec![0.0; f];
    for &i in rows {
        for ((s, v), m) in scale.iter_mut().zip(table.row(i)).zip(&mean) {
            *s += (v - m).powi(2) / n;
        }
    }
    let scale = scale.into_iter().map(|v| if v > 1e-24 { v.sqrt() } else { 1.0 }).collect();
    Scaler { mean, scale }
}

fn matrix(table: &CleanTable, rows: &[usize], scaler: Option<&Scaler>) -> Array2<f64> {
    let f = table.features.len();
    let mut data = Vec::with_capacity(rows.len() * f);
    for &i in rows {
        match scaler {
            Some(s) => {
                data.extend(table.row(i).iter().enumerate().map(|(j, v)| (v - s.mean[j]) / s.scale[j]))
            }
            None => data.extend_from_slice(table.row(i)),
        }
    }
    Array2::from_shape_vec((rows.len(), f), data).expect("shape matches the data")
}

/// What the trainer learns from: the training rows and their targets.
pub enum Targets<'a> {
    Classes { y: &'a [usize], n_classes: usize },
    Values(&'a [f64]),
}

/// Fits `algorithm` on the `rows` of `table`.
pub fn fit(
    algorithm: Algorithm,
    table: &CleanTable,
    rows: &[usize],
    targets: Targets<'_>,
    hp: &Hyperparameters,
    seed: u64,
) -> Result<Model, String> {
    match (algorithm, targets) {
        (Algorithm::LogisticRegression, Targets::Classes { y, n_classes }) => {
            let scaler = fit_scaler(table, rows);
            let x = matrix(table, rows, Some(&scaler));
            let y: Array1<usize> = rows.iter().map(|&i| y[i]).collect();
            let fitted = linfa_logistic::MultiLogisticRegression::default()
                .alpha(hp.alpha)
                .max_iterations(hp.max_iterations)
                .fit(&Dataset::new(x, y))
                .map_err(|e| format!("logistic regression: {e}"))?;
            // linfa orders columns by the classes it saw; a class absent from the
            // training rows gets a score it can never win with.
            let f = table.features.len();
            let mut coefficients = vec![vec![0.0; f]; n_classes];
            let mut intercepts = vec![-1e6; n_classes];
            for (col, class) in fitted.classes().iter().enumerate() {
                coefficients[*class] = fitted.params().column(col).to_vec();
                intercepts[*class] = fitted.intercept()[col];
            }
            Ok(Model::LogisticRegression { scaler, coefficients, intercepts })
        }
        (Algorithm::RandomForest, Targets::Classes { y, .. }) => {
            let x = matrix(table, rows, None);
            let y: Array1<usize> = rows.iter().map(|&i| y[i]).collect();
            let tree = linfa_trees::DecisionTree::params().max_depth(Some(hp.max_depth));
            let rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let forest = linfa_ensemble::EnsembleLearnerParams::new_fixed_rng(tree, rng)
                .ensemble_size(hp.n_trees)
                .bootstrap_proportion(1.0)
                .feature_proportion(hp.feature_fraction)
                .fit(&Dataset::new(x, y))
                .map_err(|e| format!("random forest: {e}"))?;
            let trees = forest
                .models
                .iter()
                .zip(&forest.model_features)
                .map(|(t, features)| export_tree(t.root_node(), features))
                .collect();
            Ok(Model::RandomForest { trees })
        }
        (Algorithm::LinearRegression, Targets::Values(values)) => {
            let scaler = fit_scaler(table, rows);
            let x = matrix(table, rows, Some(&scaler));
            let y: Array1<f64> = rows.iter().map(|&i| values[i]).collect();
            let fitted = linfa_linear::LinearRegression::new()
                .fit(&Dataset::new(x, y))
                .map_err(|e| format!("linear regression: {e}"))?;
            Ok(Model::LinearRegression {
                scaler,
                coefficients: fitted.params().to_vec(),
                intercept: fitted.intercept(),
            })
        }
        _ => Err("algorithm and label type do not match".into()),
    }
}

/// Flattens a linfa tree, parents before children, mapping the bagged
/// feature subset back to the original feature indices.
fn export_tree(root: &linfa_trees::TreeNode<f64, usize>, features: &[usize]) -> Tree {
    let mut nodes = Vec::new();
    fn walk(node: &linfa_trees::TreeNode<f64, usize>, features: &[usize], nodes: &mut Vec<Node>) -> usize {
        let at = nodes.len();
        if let Some(class) = node.prediction() {
            nodes.push(Node::Leaf { class });
            return at;
        }
        let (feature, threshold, _) = node.split();
        nodes.push(Node::Leaf { class: 0 }); // placeholder until children exist
        let children = node.children();
        let mut child = |c: &Option<Box<linfa_trees::TreeNode<f64, usize>>>| {
            let c = c.as_deref().expect("internal nodes have two children");
            walk(c, features, nodes)
        };
        let left = child(children[0]);
        let right = child(children[1]);
        nodes[at] = Node::Split { feature: features[feature], threshold, left, right };
        at
    }
    walk(root, features, &mut nodes);
    Tree { nodes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperparameters_parse_with_defaults_and_errors_named() {
        let hp = Hyperparameters::parse(r#"{"algorithm":"random-forest","nTrees":"10"}"#).unwrap();
        assert_eq!(hp.algorithm, Some(Algorithm::RandomForest));
        assert_eq!((hp.n_trees, hp.max_depth), (10, 10));
        let err = Hyperparameters::parse(r#"{"nTrees":"0"}"#).unwrap_err();
        assert!(err.contains("nTrees"), "{err}");
        let err = Hyperparameters::parse(r#"{"algorithm":"svm"}"#).unwrap_err();
        assert!(err.contains("algorithm"), "{err}");
        assert!(Hyperparameters::parse("").unwrap().raw.is_empty());
    }

    #[test]
    fn algorithm_defaults_follow_the_label() {
        let hp = Hyperparameters::parse("").unwrap();
        let names: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(choose_algorithm(&hp, &names), Algorithm::LogisticRegression);
        let values: Vec<String> = (0..50).map(|i| format!("{}.5", i)).collect();
        assert_eq!(choose_algorithm(&hp, &values), Algorithm::LinearRegression);
    }

    #[test]
    fn classes_sort_numerically_when_numeric() {
        let labels: Vec<String> = ["10", "9", "10", "1"].iter().map(|s| s.to_string()).collect();
        let (classes, y) = encode_classes(&labels);
        assert_eq!(classes, ["1", "9", "10"]);
        assert_eq!(y, [2, 1, 2, 0]);
    }

    fn linear_table(n: usize) -> (CleanTable, Vec<f64>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let (a, b) = (i as f64, ((i * 7) % 11) as f64);
            x.extend([a, b]);
            y.push(3.0 * a - 2.0 * b + 5.0);
        }
        let table = CleanTable {
            features: vec!["a".into(), "b".into()],
            label: "y".into(),
            x,
            labels: y.iter().map(|v| v.to_string()).collect(),
        };
        (table, y)
    }

    #[test]
    fn linear_regression_recovers_exact_coefficients() {
        let (table, y) = linear_table(40);
        let rows: Vec<usize> = (0..40).collect();
        let hp = Hyperparameters::parse("").unwrap();
        let model = fit(Algorithm::LinearRegression, &table, &rows, Targets::Values(&y), &hp, 1).unwrap();
        let p = crate::model::Predictor::new(&model, 0);
        match p.predict(&[100.0, 3.0]) {
            Some(crate::model::Prediction::Value(v)) => assert!((v - 299.0).abs() < 1e-6, "{v}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forest_trees_are_exported_with_original_feature_indices() {
        // Class is decided by feature 1 only.
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for i in 0..60 {
            x.extend([(i % 5) as f64, i as f64]);
            labels.push(if i < 30 { "low" } else { "high" }.to_string());
        }
        let table =
            CleanTable { features: vec!["noise".into(), "signal".into()], label: "y".into(), x, labels };
        let (classes, y) = encode_classes(&table.labels);
        let hp = Hyperparameters::parse(r#"{"nTrees":"5","featureFraction":"1.0"}"#).unwrap();
        let rows: Vec<usize> = (0..60).collect();
        let model = fit(
            Algorithm::RandomForest,
            &table,
            &rows,
            Targets::Classes { y: &y, n_classes: classes.len() },
            &hp,
            7,
        )
        .unwrap();
        model.check(2, 2).unwrap();
        let p = crate::model::Predictor::new(&model, 2);
        let low = classes.iter().position(|c| c == "low").unwrap();
        let high = classes.iter().position(|c| c == "high").unwrap();
        assert_eq!(p.predict(&[0.0, 3.0]), Some(crate::model::Prediction::Class(low)));
        assert_eq!(p.predict(&[0.0, 55.0]), Some(crate::model::Prediction::Class(high)));
    }
}
