//! The model as the artifact stores it, and a compiled form for fast prediction.
//!
//! Parameters are plain numbers in JSON, independent of the crate that fitted
//! them, so that serving needs no ML library and any tool can read an artifact.
//! Trees follow linfa's convention: a row goes left when `x[feature] < threshold`.

use serde::{Deserialize, Serialize};

/// Standardisation applied before linear models: `(x - mean) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Node {
    Split { feature: usize, threshold: f64, left: usize, right: usize },
    Leaf { class: usize },
}

/// A decision tree as a node list; `nodes[0]` is the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Model {
    /// Multinomial: class scores `coefficients[c] · z + intercepts[c]` on the
    /// standardised row `z`, softmax for probabilities.
    LogisticRegression { scaler: Scaler, coefficients: Vec<Vec<f64>>, intercepts: Vec<f64> },
    /// Majority vote of the trees; leaves hold class indices.
    RandomForest { trees: Vec<Tree> },
    /// `coefficients · z + intercept` on the standardised row `z`.
    LinearRegression { scaler: Scaler, coefficients: Vec<f64>, intercept: f64 },
}

/// One row's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prediction {
    Class(usize),
    Value(f64),
}

impl Model {
    pub fn algorithm(&self) -> &'static str {
        match self {
            Model::LogisticRegression { .. } => "logistic_regression",
            Model::RandomForest { .. } => "random_forest",
            Model::LinearRegression { .. } => "linear_regression",
        }
    }

    /// Checks every index and length against the model card, so a damaged or
    /// hand-edited artifact is refused at load instead of panicking at predict.
    pub fn check(&self, n_features: usize, n_classes: usize) -> Result<(), String> {
        let scaler_ok = |s: &Scaler| {
            s.mean.len() == n_features
                && s.scale.len() == n_features
                && s.scale.iter().all(|v| *v != 0.0 && v.is_finite())
        };
        match self {
            Model::LogisticRegression { scaler, coefficients, intercepts } => {
                if !scaler_ok(scaler) {
                    return Err("scaler does not match the features".into());
                }
                if n_classes < 2
                    || coefficients.len() != n_classes
                    || intercepts.len() != n_classes
                    || coefficients.iter().any(|c| c.len() != n_features)
                {
                    return Err("coefficients do not match features × classes".into());
                }
            }
            Model::RandomForest { trees } => {
                if trees.is_empty() || n_classes == 0 {
                    return Err("a forest needs trees and classes".into());
                }
                for (t, tree) in trees.iter().enumerate() {
                    let n = tree.nodes.len();
                    if n == 0 {
                        return Err(format!("tree {t} is empty"));
                    }
                    for (i, node) in tree.nodes.iter().enumerate() {
                        let ok = match node {
                            // Children after their parent: no cycles possible.
                            Node::Split { feature, left, right, threshold } => {
                                *feature < n_features
                                    && *left > i
                                    && *right > i
                                    && *left < n
                                    && *right < n
                                    && !threshold.is_nan()
                            }
                            Node::Leaf { class } => *class < n_classes,
                        };
                        if !ok {
                            return Err(format!("tree {t} node {i} is out of range"));
                        }
                    }
                }
            }
            Model::LinearRegression { scaler, coefficients, .. } => {
                if !scaler_ok(scaler) || coefficients.len() != n_features {
                    return Err("coefficients do not match the features".into());
                }
            }
        }
        Ok(())
    }
}

/// A model compiled for prediction: scalers folded into the weights, trees
/// flattened, no allocation per row.
#[derive(Debug, Clone)]
pub enum Predictor {
    Linear {
        /// `[class][feature]` row-major; one "class" for regression.
        weights: Vec<f64>,
        bias: Vec<f64>,
        regression: bool,
    },
    Forest {
        trees: Vec<Vec<Node>>,
        n_classes: usize,
    },
}

/// Folds standardisation into weights: w·(x-m)/s + b = (w/s)·x + (b - Σ w m / s).
fn fold(scaler: &Scaler, w: &[f64], b: f64) -> (Vec<f64>, f64) {
    let folded: Vec<f64> = w.iter().zip(&scaler.scale).map(|(w, s)| w / s).collect();
    let shift: f64 = folded.iter().zip(&scaler.mean).map(|(w, m)| w * m).sum();
    (folded, b - shift)
}

impl Predictor {
    /// Compiles a model that passed [`Model::check`].
    pub fn new(model: &Model, n_classes: usize) -> Predictor {
        match model {
            Model::LogisticRegression { scaler, coefficients, intercepts } => {
                let mut weights = Vec::new();
                let mut bias = Vec::new();
                for (w, b) in coefficients.iter().zip(intercepts) {
                    let (w, b) = fold(scaler, w, *b);
                    weights.extend(w);
                    bias.push(b);
                }
                Predictor::Linear { weights, bias, regression: false }
            }
            Model::LinearRegression { scaler, coefficients, intercept } => {
                let (weights, b) = fold(scaler, coefficients, *intercept);
                Predictor::Linear { weights, bias: vec![b], regression: true }
            }
            Model::RandomForest { trees } => {
                Predictor::Forest { trees: trees.iter().map(|t| t.nodes.clone()).collect(), n_classes }
            }
        }
    }

    /// Number of probability columns (`0` for regression).
    pub fn n_outputs(&self) -> usize {
        match self {
            Predictor::Linear { regression: true, .. } => 0,
            Predictor::Linear { bias, .. } => bias.len(),
            Predictor::Forest { n_classes, .. } => *n_classes,
        }
    }

    /// Predicts one row; `row` has exactly the model's feature count. `None`
    /// when the row cannot be scored: its values are so large that a weighted
    /// sum overflows to infinity or NaN (a forest only compares, so never).
    #[inline]
    pub fn predict(&self, row: &[f64]) -> Option<Prediction> {
        match self {
            Predictor::Linear { weights, bias, regression } => {
                let f = row.len();
                let score = |c: usize| -> f64 {
                    let w = &weights[c * f..(c + 1) * f];
                    w.iter().zip(row).map(|(w, x)| w * x).sum::<f64>() + bias[c]
                };
                if *regression {
                    let v = score(0);
                    return v.is_finite().then_some(Prediction::Value(v));
                }
                let mut best = (0, f64::NEG_INFINITY);
                for c in 0..bias.len() {
                    let s = score(c);
                    if !s.is_finite() {
                        return None;
                    }
                    if s > best.1 {
                        best = (c, s);
                    }
                }
                Some(Prediction::Class(best.0))
            }
            Predictor::Forest { trees, n_classes } => {
                // Small fixed buffer: forests here have few classes.
                let mut votes = [0u32; 64];
                let mut heap;
                let votes: &mut [u32] = if *n_classes <= 64 {
                    &mut votes[..*n_classes]
                } else {
                    heap = vec![0u32; *n_classes];
                    &mut heap
                };
                for tree in trees {
                    votes[leaf_class(tree, row)] += 1;
                }
                let mut best = 0;
                for c in 1..votes.len() {
                    if votes[c] > votes[best] {
                        best = c;
                    }
                }
                Some(Prediction::Class(best))
            }
        }
    }

    /// Class probabilities into `out` (length [`Self::n_outputs`]). Finite for
    /// every row that [`Self::predict`] scores: the softmax subtracts the
    /// highest score first, so no exponent overflows.
    pub fn probabilities(&self, row: &[f64], out: &mut [f64]) {
        match self {
            Predictor::Linear { weights, bias, .. } => {
                let f = row.len();
                for (c, o) in out.iter_mut().enumerate() {
                    let w = &weights[c * f..(c + 1) * f];
                    *o = w.iter().zip(row).map(|(w, x)| w * x).sum::<f64>() + bias[c];
                }
                let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for o in out.iter_mut() {
                    *o = (*o - max).exp();
                    sum += *o;
                }
                out.iter_mut().for_each(|o| *o /= sum);
            }
            Predictor::Forest { trees, .. } => {
                out.iter_mut().for_each(|o| *o = 0.0);
                for tree in trees {
                    out[leaf_class(tree, row)] += 1.0;
                }
                let n = trees.len() as f64;
                out.iter_mut().for_each(|o| *o /= n);
            }
        }
    }
}

#[inline]
fn leaf_class(nodes: &[Node], row: &[f64]) -> usize {
    let mut i = 0;
    loop {
        match &nodes[i] {
            Node::Leaf { class } => return *class,
            Node::Split { feature, threshold, left, right } => {
                i = if row[*feature] < *threshold { *left } else { *right }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: usize) -> Scaler {
        Scaler { mean: vec![0.0; n], scale: vec![1.0; n] }
    }

    #[test]
    fn folding_the_scaler_preserves_scores() {
        let scaler = Scaler { mean: vec![1.0, -2.0], scale: vec![2.0, 0.5] };
        let model =
            Model::LinearRegression { scaler: scaler.clone(), coefficients: vec![3.0, -1.0], intercept: 0.5 };
        let x = [4.0, 1.0];
        let expected = 3.0 * (4.0 - 1.0) / 2.0 - (1.0 + 2.0) / 0.5 + 0.5;
        match Predictor::new(&model, 0).predict(&x) {
            Some(Prediction::Value(v)) => assert!((v - expected).abs() < 1e-12),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn logistic_picks_the_highest_score_and_probabilities_sum_to_one() {
        let model = Model::LogisticRegression {
            scaler: identity(2),
            coefficients: vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, -1.0]],
            intercepts: vec![0.0, 0.0, 0.0],
        };
        model.check(2, 3).unwrap();
        let p = Predictor::new(&model, 3);
        assert_eq!(p.predict(&[2.0, 1.0]), Some(Prediction::Class(0)));
        assert_eq!(p.predict(&[0.0, 1.0]), Some(Prediction::Class(1)));
        assert_eq!(p.predict(&[-3.0, -3.0]), Some(Prediction::Class(2)));
        let mut probs = [0.0; 3];
        p.probabilities(&[2.0, 1.0], &mut probs);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(probs[0] > probs[1] && probs[1] > probs[2]);
    }

    #[test]
    fn rows_too_large_to_score_are_refused_not_guessed() {
        let logistic = Model::LogisticRegression {
            scaler: identity(2),
            coefficients: vec![vec![2.0, -3.0], vec![-1.0, 4.0]],
            intercepts: vec![0.0, 0.0],
        };
        let p = Predictor::new(&logistic, 2);
        for x in [1e308, -1e308] {
            assert_eq!(p.predict(&[x, x]), None, "{x}");
        }
        // Large but finite scores: the softmax stays finite and sums to one.
        assert_eq!(p.predict(&[1e300, 0.0]), Some(Prediction::Class(0)));
        let mut probs = [0.0; 2];
        p.probabilities(&[1e300, 0.0], &mut probs);
        assert_eq!(probs, [1.0, 0.0]);
        let linear =
            Model::LinearRegression { scaler: identity(1), coefficients: vec![10.0], intercept: 0.0 };
        assert_eq!(Predictor::new(&linear, 0).predict(&[1e308]), None);
        let forest = Model::RandomForest { trees: vec![stump(0, 1)] };
        assert_eq!(Predictor::new(&forest, 2).predict(&[1e308]), Some(Prediction::Class(1)));
    }

    fn stump(class_left: usize, class_right: usize) -> Tree {
        Tree {
            nodes: vec![
                Node::Split { feature: 0, threshold: 0.5, left: 1, right: 2 },
                Node::Leaf { class: class_left },
                Node::Leaf { class: class_right },
            ],
        }
    }

    #[test]
    fn forest_votes_by_majority() {
        let model = Model::RandomForest { trees: vec![stump(0, 1), stump(0, 1), stump(1, 1)] };
        model.check(1, 2).unwrap();
        let p = Predictor::new(&model, 2);
        assert_eq!(p.predict(&[0.0]), Some(Prediction::Class(0)));
        assert_eq!(p.predict(&[0.5]), Some(Prediction::Class(1)));
        let mut probs = [0.0; 2];
        p.probabilities(&[0.0], &mut probs);
        assert!((probs[0] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn check_refuses_out_of_range_and_cyclic_trees() {
        let bad_class = Model::RandomForest { trees: vec![stump(0, 5)] };
        assert!(bad_class.check(1, 2).is_err());
        let cyclic = Model::RandomForest {
            trees: vec![Tree { nodes: vec![Node::Split { feature: 0, threshold: 0.0, left: 0, right: 0 }] }],
        };
        assert!(cyclic.check(1, 2).is_err());
        let wrong_width =
            Model::LinearRegression { scaler: identity(2), coefficients: vec![1.0], intercept: 0.0 };
        assert!(wrong_width.check(2, 0).is_err());
    }

    #[test]
    fn serialises_with_a_type_tag() {
        let json = serde_json::to_value(Model::RandomForest { trees: vec![stump(0, 1)] }).unwrap();
        assert_eq!(json["type"], "randomForest");
        assert_eq!(json["trees"][0]["nodes"][1]["class"], 0);
        let back: Model = serde_json::from_value(json).unwrap();
        assert_eq!(back.algorithm(), "random_forest");
    }
}
