//! The `train` command: dataset → validation → split → fit → evaluate →
//! artifact → result. Each step is a pure function from its own module; this
//! file only sequences them and does the I/O at both ends.

use crate::artifact::{Artifact, DatasetCard, FORMAT, FORMAT_VERSION, ModelCard};
use crate::dataset::parse_csv;
use crate::drift::{DEFAULT_BINS, Histogram};
use crate::evaluate::{self, Metrics};
use crate::model::{Prediction, Predictor};
use crate::result::{ArtifactRef, CheckReport, DatasetRef, RowCounts, TrainerResult};
use crate::split::{SplitSpec, split};
use crate::storage::{self, Location};
use crate::train::{self, Algorithm, Hyperparameters, Targets};
use crate::validate::{Policy, validate};
use std::time::Instant;

/// Everything a run needs, already parsed from the environment or flags.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub model_name: String,
    pub run_id: Option<String>,
    pub dataset_uri: String,
    pub dataset_digest: Option<String>,
    pub label_column: String,
    pub validation: Policy,
    pub split: SplitSpec,
    pub hyperparameters: Hyperparameters,
    /// A `.json` object name, or a prefix under which `model.json` is written.
    pub output_uri: String,
}

/// Bad input the user must fix (exit 2) versus an environment failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Io(String),
}

impl TrainError {
    pub fn exit_code(&self) -> i32 {
        match self {
            TrainError::Data(_) => 2,
            TrainError::Io(_) => 1,
        }
    }
}

/// Single-row predictions timed for the latency metrics.
const LATENCY_SAMPLES: usize = 2000;

/// Where the artifact of a run goes.
pub fn artifact_location(output_uri: &str) -> Result<Location, TrainError> {
    let loc = Location::parse(output_uri).map_err(|e| TrainError::Data(format!("MLOPS_OUTPUT_URI: {e}")))?;
    Ok(if output_uri.ends_with(".json") { loc } else { loc.join("model.json") })
}

pub fn run(cfg: &TrainConfig) -> Result<TrainerResult, TrainError> {
    let data = TrainError::Data;
    let target = artifact_location(&cfg.output_uri)?;
    storage::check_write_config(&target).map_err(|e| TrainError::Io(e.to_string()))?;

    let bytes = storage::read(&cfg.dataset_uri).map_err(|e| TrainError::Io(e.to_string()))?;
    let digest = crate::sha256_digest(&bytes);
    if let Some(pin) = cfg.dataset_digest.as_deref().filter(|p| !p.is_empty())
        && !crate::digest_matches(pin, &digest)
    {
        return Err(data(format!("dataset digest {digest} does not match the pinned {pin}")));
    }
    let raw = parse_csv(&bytes).map_err(|e| data(e.to_string()))?;
    drop(bytes);
    let (table, report) =
        validate(&raw, &cfg.label_column, &cfg.validation).map_err(|e| data(format!("validation: {e}")))?;
    drop(raw);
    let parts = split(table.rows(), &cfg.split).map_err(data)?;

    let algorithm = train::choose_algorithm(&cfg.hyperparameters, &table.labels);
    let (classes, class_y) = if algorithm.is_regression() {
        (Vec::new(), Vec::new())
    } else {
        train::encode_classes(&table.labels)
    };
    if !algorithm.is_regression() && classes.len() < 2 {
        return Err(data(format!(
            "label column {:?} has a single class; classification needs two or more",
            cfg.label_column
        )));
    }
    let values = if algorithm.is_regression() {
        train::regression_targets(&table.labels).map_err(data)?
    } else {
        Vec::new()
    };
    let targets = if algorithm.is_regression() {
        Targets::Values(&values)
    } else {
        Targets::Classes { y: &class_y, n_classes: classes.len() }
    };

    let started = Instant::now();
    let model = train::fit(algorithm, &table, &parts.train, targets, &cfg.hyperparameters, cfg.split.seed)
        .map_err(data)?;
    let training_seconds = started.elapsed().as_secs_f64();

    let predictor = Predictor::new(&model, classes.len());
    let test_rows: Vec<&[f64]> = parts.test.iter().map(|&i| table.row(i)).collect();
    let predictions = evaluate::predict_all(&predictor, &test_rows);
    let mut metrics: Metrics = if algorithm.is_regression() {
        let truth: Vec<f64> = parts.test.iter().map(|&i| values[i]).collect();
        let predicted: Vec<f64> = predictions
            .iter()
            .map(|p| match p {
                Some(Prediction::Value(v)) => *v,
                Some(Prediction::Class(c)) => *c as f64,
                None => f64::NAN,
            })
            .collect();
        evaluate::regression_metrics(&truth, &predicted)
    } else {
        let truth: Vec<usize> = parts.test.iter().map(|&i| class_y[i]).collect();
        let predicted: Vec<usize> = predictions
            .iter()
            // A row that cannot be scored counts as wrong.
            .map(|p| match p {
                Some(Prediction::Class(c)) => *c,
                _ => usize::MAX,
            })
            .collect();
        evaluate::classification_metrics(&truth, &predicted, classes.len())
    };
    let (p50, p99) = evaluate::prediction_latency_ms(&predictor, &test_rows, LATENCY_SAMPLES);
    metrics.insert("trainingSeconds".into(), training_seconds);
    metrics.insert("latencyP50Ms".into(), p50);
    metrics.insert("latencyP99Ms".into(), p99);

    let training_distribution = table
        .features
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let column: Vec<f64> = parts.train.iter().map(|&i| table.row(i)[j]).collect();
            (name.clone(), Histogram::from_values(&column, DEFAULT_BINS))
        })
        .collect();
    let dataset = DatasetCard {
        uri: cfg.dataset_uri.clone(),
        digest: digest.clone(),
        total: table.rows(),
        train: parts.train.len(),
        validation: parts.validation.len(),
        test: parts.test.len(),
    };
    let artifact = Artifact {
        format_version: FORMAT_VERSION,
        model_card: ModelCard {
            name: cfg.model_name.clone(),
            run_id: cfg.run_id.clone(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            algorithm: model.algorithm().into(),
            task: if algorithm == Algorithm::LinearRegression { "regression" } else { "classification" }
                .into(),
            features: table.features.clone(),
            label: table.label.clone(),
            classes,
            training_distribution,
            metrics: metrics.clone(),
            dataset: dataset.clone(),
            hyperparameters: cfg.hyperparameters.raw.clone(),
            trainer: concat!("mlops-runtime ", env!("CARGO_PKG_VERSION")).into(),
        },
        model,
    };
    let artifact_bytes = artifact.to_bytes();
    let artifact_digest = crate::sha256_digest(&artifact_bytes);
    storage::write(&target, &artifact_bytes, "application/json")
        .map_err(|e| TrainError::Io(e.to_string()))?;
    metrics.insert("artifactSizeBytes".into(), artifact_bytes.len() as f64);

    Ok(TrainerResult {
        version: contract::result::VERSION,
        metrics,
        artifact: ArtifactRef {
            uri: target.uri(),
            digest: Some(artifact_digest),
            format: Some(FORMAT.into()),
        },
        dataset: Some(DatasetRef::new(
            Some(dataset.uri),
            digest,
            RowCounts {
                total: count(dataset.total),
                train: count(dataset.train),
                validation: count(dataset.validation),
                test: count(dataset.test),
            },
        )),
        validation: report
            .iter()
            .map(|(&check, c)| {
                (check.to_string(), CheckReport::new(count(c.found), c.action, count(c.removed)))
            })
            .collect(),
    })
}

/// A row count as the result's int64.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
