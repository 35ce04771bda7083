//! The model artifact: one JSON document, `formatVersion` 1, format name
//! [`FORMAT`]. Layout (see runtime/README.md for the full description):
//!
//! ```json
//! {"formatVersion": 1,
//!  "modelCard": {"name", "runId", "createdAt", "algorithm", "task",
//!                "features": [..], "label", "classes": [..],
//!                "trainingDistribution": {"<feature>": {"edges": [..], "proportions": [..]}},
//!                "metrics": {..}, "dataset": {..}, "hyperparameters": {..}, "trainer"},
//!  "model": {"type": "logisticRegression" | "randomForest" | "linearRegression", ..}}
//! ```
//!
//! A reader must refuse a `formatVersion` it does not know; new optional
//! fields may appear within version 1.

use crate::drift::Histogram;
use crate::evaluate::Metrics;
use crate::model::{Model, Predictor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const FORMAT_VERSION: u32 = 1;
/// The value of `artifact.format` in the result and the ModelVersion.
pub const FORMAT: &str = "mlops-runtime-json/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetCard {
    pub uri: String,
    pub digest: String,
    pub total: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelCard {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub created_at: String,
    pub algorithm: String,
    /// `classification` or `regression`.
    pub task: String,
    pub features: Vec<String>,
    pub label: String,
    /// Class names by index; empty for regression.
    #[serde(default)]
    pub classes: Vec<String>,
    pub training_distribution: BTreeMap<String, Histogram>,
    /// Test-split metrics, without `artifactSizeBytes` (which depends on them).
    #[serde(default)]
    pub metrics: Metrics,
    pub dataset: DatasetCard,
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, String>,
    pub trainer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub format_version: u32,
    pub model_card: ModelCard,
    pub model: Model,
}

/// A loaded artifact, checked and compiled for serving.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub card: ModelCard,
    pub predictor: Predictor,
    /// Training histograms in feature order.
    pub histograms: Vec<Histogram>,
}

impl Artifact {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("artifact serialises")
    }

    /// Parses and checks an artifact; every inconsistency is an error here so
    /// that prediction can index without checks.
    pub fn load(bytes: &[u8]) -> Result<LoadedModel, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Version {
            format_version: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| format!("artifact is not a {FORMAT} document: {e}"))?;
        if version.format_version != FORMAT_VERSION {
            return Err(format!(
                "artifact formatVersion {} is not supported (this runtime reads {FORMAT_VERSION})",
                version.format_version
            ));
        }
        let artifact: Artifact = serde_json::from_slice(bytes).map_err(|e| format!("artifact: {e}"))?;
        let card = artifact.model_card;
        let n_classes = card.classes.len();
        let regression = matches!(artifact.model, Model::LinearRegression { .. });
        if regression != (card.task == "regression") || card.features.is_empty() {
            return Err("artifact: task, classes and features are inconsistent".into());
        }
        artifact.model.check(card.features.len(), n_classes).map_err(|e| format!("artifact model: {e}"))?;
        let histograms = card
            .features
            .iter()
            .map(|f| {
                let h = card
                    .training_distribution
                    .get(f)
                    .ok_or_else(|| format!("artifact: no training distribution for {f:?}"))?;
                h.check().map_err(|e| format!("artifact: feature {f:?}: {e}"))?;
                Ok(h.clone())
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(LoadedModel { predictor: Predictor::new(&artifact.model, n_classes), card, histograms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scaler;

    pub(crate) fn sample() -> Artifact {
        Artifact {
            format_version: 1,
            model_card: ModelCard {
                name: "m".into(),
                run_id: None,
                created_at: "2026-01-01T00:00:00Z".into(),
                algorithm: "logistic_regression".into(),
                task: "classification".into(),
                features: vec!["a".into()],
                label: "y".into(),
                classes: vec!["n".into(), "p".into()],
                training_distribution: BTreeMap::from([(
                    "a".into(),
                    Histogram { edges: vec![0.0], proportions: vec![0.5, 0.5] },
                )]),
                metrics: Metrics::new(),
                dataset: DatasetCard {
                    uri: "file:///d.csv".into(),
                    digest: "sha256:00".into(),
                    total: 2,
                    train: 1,
                    validation: 0,
                    test: 1,
                },
                hyperparameters: BTreeMap::new(),
                trainer: "test".into(),
            },
            model: Model::LogisticRegression {
                scaler: Scaler { mean: vec![0.0], scale: vec![1.0] },
                coefficients: vec![vec![-1.0], vec![1.0]],
                intercepts: vec![0.0, 0.0],
            },
        }
    }

    #[test]
    fn round_trips_and_loads() {
        let bytes = sample().to_bytes();
        let back: Artifact = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, sample());
        let loaded = Artifact::load(&bytes).unwrap();
        assert_eq!(loaded.histograms.len(), 1);
    }

    #[test]
    fn refuses_unknown_versions_and_inconsistent_cards() {
        let mut a = sample();
        a.format_version = 2;
        let err = Artifact::load(&a.to_bytes()).unwrap_err();
        assert!(err.contains("formatVersion 2"), "{err}");

        let mut a = sample();
        a.model_card.classes.push("extra".into());
        assert!(Artifact::load(&a.to_bytes()).is_err());

        let mut a = sample();
        a.model_card.training_distribution.clear();
        assert!(Artifact::load(&a.to_bytes()).unwrap_err().contains("\"a\""));

        assert!(Artifact::load(b"not json").is_err());
    }
}
