//! Data validation: schema and types, missing values, duplicate rows and
//! outliers, each governed by a `fail` / `drop` / `keep` policy and counted
//! in the report that ends up in the ModelVersion's lineage.
//!
//! `MLOPS_VALIDATION` is a JSON object. Each check takes either an action
//! string or an object:
//!
//! ```json
//! {"missing": "drop",
//!  "duplicates": {"action": "drop"},
//!  "outliers": {"action": "keep", "method": "zscore", "threshold": 3.0},
//!  "schema": {"action": "fail", "maxFraction": 0.0}}
//! ```
//!
//! `maxFraction` (default 0) lets `fail` tolerate a share of affected rows.
//! Defaults: schema `fail`, missing `drop`, duplicates `keep`, outliers `keep`
//! with z-score 3 (IQR: 1.5). Unknown keys are reported as warnings, not
//! errors, so a newer operator does not break an older trainer.

use crate::dataset::RawTable;
use std::collections::{BTreeMap, HashSet};

/// What a check does with the rows it flags: the contract's `fail` / `drop` / `keep`.
pub use contract::result::CheckAction as Action;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutlierMethod {
    ZScore,
    Iqr,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckPolicy {
    pub action: Action,
    pub max_fraction: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub schema: CheckPolicy,
    pub missing: CheckPolicy,
    pub duplicates: CheckPolicy,
    pub outliers: CheckPolicy,
    pub outlier_method: OutlierMethod,
    /// |z| above this (z-score) or this many IQRs beyond the quartiles.
    pub outlier_threshold: f64,
    /// Keys that were not understood, for the log.
    pub warnings: Vec<String>,
}

const fn check(action: Action) -> CheckPolicy {
    CheckPolicy { action, max_fraction: 0.0 }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            schema: check(Action::Fail),
            missing: check(Action::Drop),
            duplicates: check(Action::Keep),
            outliers: check(Action::Keep),
            outlier_method: OutlierMethod::ZScore,
            outlier_threshold: 3.0,
            warnings: Vec::new(),
        }
    }
}

fn parse_action(v: &str) -> Result<Action, String> {
    Action::parse(v)
        .ok_or_else(|| format!("unknown action {:?} (fail, drop or keep)", v.to_ascii_lowercase()))
}

fn parse_method(v: &str) -> Result<OutlierMethod, String> {
    match v.to_ascii_lowercase().as_str() {
        "zscore" | "z-score" | "z" => Ok(OutlierMethod::ZScore),
        "iqr" => Ok(OutlierMethod::Iqr),
        other => Err(format!("unknown outlier method {other:?} (zscore or iqr)")),
    }
}

fn number(v: &serde_json::Value, what: &str) -> Result<f64, String> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite() && *x >= 0.0)
    .ok_or_else(|| format!("{what}: expected a non-negative number"))
}

impl Policy {
    /// Parses `MLOPS_VALIDATION`; an empty string means the defaults.
    pub fn parse(json: &str) -> Result<Policy, String> {
        let mut policy = Policy::default();
        if json.trim().is_empty() {
            return Ok(policy);
        }
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("MLOPS_VALIDATION: {e}"))?;
        let obj = value.as_object().ok_or("MLOPS_VALIDATION: expected a JSON object")?;
        let mut threshold_given = false;
        for (key, v) in obj {
            let err = |e: String| format!("MLOPS_VALIDATION.{key}: {e}");
            let target = match key.as_str() {
                "schema" | "types" => &mut policy.schema,
                "missing" | "missingValues" => &mut policy.missing,
                "duplicates" | "duplicateRows" => &mut policy.duplicates,
                "outliers" => &mut policy.outliers,
                "outlierMethod" => {
                    policy.outlier_method = parse_method(v.as_str().unwrap_or("")).map_err(err)?;
                    continue;
                }
                "outlierThreshold" => {
                    policy.outlier_threshold = number(v, "threshold").map_err(err)?;
                    threshold_given = true;
                    continue;
                }
                _ => {
                    policy.warnings.push(format!("MLOPS_VALIDATION: ignored key {key:?}"));
                    continue;
                }
            };
            match v {
                serde_json::Value::String(s) => target.action = parse_action(s).map_err(err)?,
                serde_json::Value::Object(fields) => {
                    for (field, fv) in fields {
                        match field.as_str() {
                            "action" | "policy" => {
                                target.action = parse_action(fv.as_str().unwrap_or("")).map_err(err)?
                            }
                            "maxFraction" => target.max_fraction = number(fv, "maxFraction").map_err(err)?,
                            "threshold" if key == "outliers" => {
                                policy.outlier_threshold = number(fv, "threshold").map_err(err)?;
                                threshold_given = true;
                            }
                            "method" if key == "outliers" => {
                                policy.outlier_method =
                                    parse_method(fv.as_str().unwrap_or("")).map_err(err)?
                            }
                            _ => {
                                policy.warnings.push(format!("MLOPS_VALIDATION.{key}: ignored key {field:?}"))
                            }
                        }
                    }
                }
                _ => return Err(err("expected an action string or an object".into())),
            }
        }
        if policy.outlier_method == OutlierMethod::Iqr && !threshold_given {
            policy.outlier_threshold = 1.5;
        }
        Ok(policy)
    }
}

/// One check's line in the report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckReport {
    pub found: usize,
    pub action: Action,
    pub removed: usize,
}

/// Check name → report; names: `schema`, `missing`, `duplicates`, `outliers`.
pub type Report = BTreeMap<&'static str, CheckReport>;

/// Numeric features and text labels of the rows that survived validation.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanTable {
    pub features: Vec<String>,
    pub label: String,
    /// Row-major, `rows() * features.len()` values.
    pub x: Vec<f64>,
    pub labels: Vec<String>,
}

impl CleanTable {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }
    pub fn row(&self, i: usize) -> &[f64] {
        let f = self.features.len();
        &self.x[i * f..(i + 1) * f]
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidationError {
    #[error("label column {0:?} is not in the dataset header")]
    NoLabelColumn(String),
    #[error("dataset has no feature columns besides the label {0:?}")]
    NoFeatures(String),
    #[error("{check} check failed: {found} of {total} rows affected ({detail}); policy is fail")]
    Failed { check: &'static str, found: usize, total: usize, detail: String },
    #[error("no rows left after validation ({0} rows read)")]
    Empty(usize),
}

fn is_missing(cell: &str) -> bool {
    matches!(cell.to_ascii_lowercase().as_str(), "" | "na" | "nan" | "n/a" | "null" | "none" | "?")
}

/// Applies `policy` to one check: errors on `fail` beyond the tolerated share,
/// otherwise says whether flagged rows are to be removed.
fn decide(
    name: &'static str,
    policy: CheckPolicy,
    found: usize,
    total: usize,
    detail: impl FnOnce() -> String,
) -> Result<bool, ValidationError> {
    let share = if total == 0 { 0.0 } else { found as f64 / total as f64 };
    match policy.action {
        Action::Fail if found > 0 && share > policy.max_fraction => {
            Err(ValidationError::Failed { check: name, found, total, detail: detail() })
        }
        Action::Drop => Ok(true),
        _ => Ok(false),
    }
}

/// Cell as parsed: a number, missing, or text where a number belongs.
#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Num(f64),
    Missing,
    Bad,
}

fn parse_cell(s: &str) -> Cell {
    if is_missing(s) {
        return Cell::Missing;
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Cell::Num(v),
        _ => Cell::Bad,
    }
}

struct Row {
    cells: Vec<Cell>,
    label: Option<String>,
    schema_bad: bool,
}

/// Validates `raw` against `policy`; returns the clean table and the report.
pub fn validate(
    raw: &RawTable,
    label_column: &str,
    policy: &Policy,
) -> Result<(CleanTable, Report), ValidationError> {
    let label_idx = raw
        .columns
        .iter()
        .position(|c| c == label_column)
        .ok_or_else(|| ValidationError::NoLabelColumn(label_column.into()))?;
    let feature_idx: Vec<usize> = (0..raw.columns.len()).filter(|&i| i != label_idx).collect();
    if feature_idx.is_empty() {
        return Err(ValidationError::NoFeatures(label_column.into()));
    }
    let total = raw.rows.len();
    let mut report = Report::new();

    // Schema and types: the row's width and a number in every feature cell.
    let mut rows: Vec<Row> = Vec::with_capacity(total);
    let mut schema_found = 0;
    let mut first_bad = None;
    for (n, record) in raw.rows.iter().enumerate() {
        let cells: Vec<Cell> =
            feature_idx.iter().map(|&i| record.get(i).map_or(Cell::Bad, parse_cell)).collect();
        let schema_bad = record.len() != raw.columns.len() || cells.contains(&Cell::Bad);
        if schema_bad {
            schema_found += 1;
            first_bad.get_or_insert(n + 2); // 1-based, after the header line
        }
        let label = record.get(label_idx).filter(|l| !is_missing(l)).map(str::to_string);
        rows.push(Row { cells, label, schema_bad });
    }
    let drop = decide("schema", policy.schema, schema_found, total, || {
        format!("wrong width or non-numeric feature, first at line {}", first_bad.unwrap_or(0))
    })?;
    let before = rows.len();
    if drop {
        rows.retain(|r| !r.schema_bad);
    } else {
        // Kept malformed cells are treated like missing ones below.
        for r in &mut rows {
            for c in &mut r.cells {
                if *c == Cell::Bad {
                    *c = Cell::Missing;
                }
            }
        }
    }
    report.insert(
        "schema",
        CheckReport { found: schema_found, action: policy.schema.action, removed: before - rows.len() },
    );

    // Missing values: a row without a label can never be used, whatever the policy.
    let missing = rows.iter().filter(|r| r.label.is_none() || r.cells.contains(&Cell::Missing)).count();
    let drop = decide("missing", policy.missing, missing, rows.len(), || "empty, NA or NaN cells".into())?;
    let before = rows.len();
    rows.retain(|r| r.label.is_some() && !(drop && r.cells.contains(&Cell::Missing)));
    // Kept missing features are imputed with the column median.
    let medians: Vec<f64> = (0..feature_idx.len())
        .map(|j| {
            let mut col: Vec<f64> = rows
                .iter()
                .filter_map(|r| match r.cells[j] {
                    Cell::Num(v) => Some(v),
                    _ => None,
                })
                .collect();
            quantile(&mut col, 0.5).unwrap_or(0.0)
        })
        .collect();
    report.insert(
        "missing",
        CheckReport { found: missing, action: policy.missing.action, removed: before - rows.len() },
    );
    let f = feature_idx.len();
    let mut x: Vec<f64> = Vec::with_capacity(rows.len() * f);
    let mut labels: Vec<String> = Vec::with_capacity(rows.len());
    for r in rows {
        x.extend(r.cells.iter().enumerate().map(|(j, c)| match c {
            Cell::Num(v) => *v,
            _ => medians[j],
        }));
        labels.push(r.label.unwrap_or_default());
    }

    // Duplicates: identical features and label; the first occurrence stays.
    let mut seen = HashSet::with_capacity(labels.len());
    let dup_flags: Vec<bool> = (0..labels.len())
        .map(|i| {
            let key: (Vec<u64>, &str) =
                (x[i * f..(i + 1) * f].iter().map(|v| v.to_bits()).collect(), labels[i].as_str());
            !seen.insert(key)
        })
        .collect();
    let dups = dup_flags.iter().filter(|d| **d).count();
    let drop = decide("duplicates", policy.duplicates, dups, labels.len(), || "identical rows".into())?;
    let removed = if drop { retain_rows(&mut x, &mut labels, f, &dup_flags) } else { 0 };
    report.insert("duplicates", CheckReport { found: dups, action: policy.duplicates.action, removed });

    // Outliers: any feature beyond the threshold flags the row.
    let out_flags = outlier_flags(&x, f, policy.outlier_method, policy.outlier_threshold);
    let outliers = out_flags.iter().filter(|o| **o).count();
    let drop = decide("outliers", policy.outliers, outliers, labels.len(), || {
        let method = match policy.outlier_method {
            OutlierMethod::ZScore => "|z| >",
            OutlierMethod::Iqr => "IQR ×",
        };
        format!("{method} {}", policy.outlier_threshold)
    })?;
    let removed = if drop { retain_rows(&mut x, &mut labels, f, &out_flags) } else { 0 };
    report.insert("outliers", CheckReport { found: outliers, action: policy.outliers.action, removed });

    if labels.is_empty() {
        return Err(ValidationError::Empty(total));
    }
    let table = CleanTable {
        features: feature_idx.iter().map(|&i| raw.columns[i].clone()).collect(),
        label: label_column.into(),
        x,
        labels,
    };
    Ok((table, report))
}

/// Removes flagged rows in place; returns how many went.
fn retain_rows(x: &mut Vec<f64>, labels: &mut Vec<String>, f: usize, flags: &[bool]) -> usize {
    let mut kept_x = Vec::with_capacity(x.len());
    let mut kept_labels = Vec::with_capacity(labels.len());
    for (i, label) in labels.drain(..).enumerate() {
        if !flags[i] {
            kept_x.extend_from_slice(&x[i * f..(i + 1) * f]);
            kept_labels.push(label);
        }
    }
    let removed = flags.len() - kept_labels.len();
    *x = kept_x;
    *labels = kept_labels;
    removed
}

/// Linear-interpolated quantile (sorts `values`); `None` when empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(values[lo] + (values[hi] - values[lo]) * (pos - lo as f64))
}

/// Flags rows with at least one feature outside the method's bounds.
pub fn outlier_flags(x: &[f64], f: usize, method: OutlierMethod, threshold: f64) -> Vec<bool> {
    let n = x.len().checked_div(f).unwrap_or(0);
    let mut flags = vec![false; n];
    if n < 3 {
        return flags;
    }
    for j in 0..f {
        let mut col: Vec<f64> = (0..n).map(|i| x[i * f + j]).collect();
        let (lo, hi) = match method {
            OutlierMethod::ZScore => {
                let mean = col.iter().sum::<f64>() / n as f64;
                let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                let sd = var.sqrt();
                if sd == 0.0 {
                    continue;
                }
                (mean - threshold * sd, mean + threshold * sd)
            }
            OutlierMethod::Iqr => {
                let q1 = quantile(&mut col, 0.25).unwrap_or(0.0);
                let q3 = quantile(&mut col, 0.75).unwrap_or(0.0);
                let iqr = q3 - q1;
                (q1 - threshold * iqr, q3 + threshold * iqr)
            }
        };
        for (i, flag) in flags.iter_mut().enumerate() {
            let v = x[i * f + j];
            if v < lo || v > hi {
                *flag = true;
            }
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::parse_csv;

    fn table(csv: &str) -> RawTable {
        parse_csv(csv.as_bytes()).unwrap()
    }

    fn policy(json: &str) -> Policy {
        Policy::parse(json).unwrap()
    }

    #[test]
    fn policy_accepts_strings_objects_and_aliases() {
        let p = policy(
            r#"{"missingValues":"fail","duplicates":{"action":"drop"},
                "outliers":{"action":"drop","method":"iqr"},"extra":1}"#,
        );
        assert_eq!(p.missing.action, Action::Fail);
        assert_eq!(p.duplicates.action, Action::Drop);
        assert_eq!(p.outliers.action, Action::Drop);
        assert_eq!(p.outlier_method, OutlierMethod::Iqr);
        assert_eq!(p.outlier_threshold, 1.5);
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(Policy::parse("").unwrap(), Policy::default());
    }

    #[test]
    fn policy_rejects_bad_actions_with_the_key_named() {
        let err = Policy::parse(r#"{"missing":"ignore"}"#).unwrap_err();
        assert!(err.contains("MLOPS_VALIDATION.missing"), "{err}");
        assert!(Policy::parse("[1]").is_err());
        assert!(Policy::parse(r#"{"outliers":{"threshold":-1}}"#).is_err());
    }

    #[test]
    fn clean_data_passes_untouched() {
        let (t, r) = validate(&table("a,b,y\n1,2,x\n3,4,y\n"), "y", &Policy::default()).unwrap();
        assert_eq!(t.features, ["a", "b"]);
        assert_eq!(t.x, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(t.labels, ["x", "y"]);
        assert!(r.values().all(|c| c.found == 0 && c.removed == 0));
    }

    #[test]
    fn label_column_may_be_anywhere() {
        let (t, _) = validate(&table("y,a\nx,1\nz,2\n"), "y", &Policy::default()).unwrap();
        assert_eq!(t.features, ["a"]);
        assert_eq!(t.x, [1.0, 2.0]);
    }

    #[test]
    fn missing_label_column_is_an_error() {
        let err = validate(&table("a,b\n1,2\n"), "y", &Policy::default()).unwrap_err();
        assert_eq!(err, ValidationError::NoLabelColumn("y".into()));
    }

    #[test]
    fn missing_values_fail_drop_or_keep() {
        let csv = "a,b,y\n1,,x\n3,4,y\nNA,5,x\n7,8,\n2,6,y\n";
        let err = validate(&table(csv), "y", &policy(r#"{"missing":"fail"}"#)).unwrap_err();
        assert!(err.to_string().contains("missing check failed: 3 of 5"), "{err}");

        let (t, r) = validate(&table(csv), "y", &policy(r#"{"missing":"drop"}"#)).unwrap();
        assert_eq!(t.rows(), 2);
        assert_eq!(r["missing"].found, 3);
        assert_eq!(r["missing"].removed, 3);

        // Keep imputes features with the median; the unlabeled row still goes.
        let (t, r) = validate(&table(csv), "y", &policy(r#"{"missing":"keep"}"#)).unwrap();
        assert_eq!(t.rows(), 4);
        assert_eq!(r["missing"].removed, 1);
        assert_eq!(t.row(0), [1.0, 5.0]);
        assert_eq!(t.row(2), [2.0, 5.0]);
    }

    #[test]
    fn max_fraction_tolerates_a_share_of_failures() {
        let csv = "a,y\n1,x\n,x\n3,y\n4,y\n";
        let p = policy(r#"{"missing":{"action":"fail","maxFraction":0.3}}"#);
        let (t, r) = validate(&table(csv), "y", &p).unwrap();
        assert_eq!((t.rows(), r["missing"].found), (4, 1));
    }

    #[test]
    fn schema_problems_fail_by_default_and_can_be_dropped() {
        let csv = "a,b,y\n1,2,x\n1,abc,x\n3,4\n5,6,y\n";
        let err = validate(&table(csv), "y", &Policy::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("schema check failed: 2 of 4") && msg.contains("line 3"), "{msg}");
        let (t, r) = validate(&table(csv), "y", &policy(r#"{"schema":"drop"}"#)).unwrap();
        // The short row is dropped by schema (its missing label counts there too).
        assert_eq!(t.rows(), 2);
        assert_eq!(r["schema"].removed, 2);
    }

    #[test]
    fn duplicates_are_counted_and_dropped_keeping_the_first() {
        let csv = "a,y\n1,x\n1,x\n1,y\n2,x\n1,x\n";
        let (t, r) = validate(&table(csv), "y", &Policy::default()).unwrap();
        assert_eq!((t.rows(), r["duplicates"].found, r["duplicates"].removed), (5, 2, 0));
        let (t, r) = validate(&table(csv), "y", &policy(r#"{"duplicates":"drop"}"#)).unwrap();
        assert_eq!(t.labels, ["x", "y", "x"]);
        assert_eq!(r["duplicates"].removed, 2);
        assert!(validate(&table(csv), "y", &policy(r#"{"duplicates":"fail"}"#)).is_err());
    }

    #[test]
    fn outliers_by_zscore_and_iqr() {
        let mut csv = String::from("a,y\n");
        for i in 0..20 {
            csv.push_str(&format!("{},x\n", 10 + i % 3));
        }
        csv.push_str("100,y\n");
        let (t, r) = validate(&table(&csv), "y", &policy(r#"{"outliers":"drop"}"#)).unwrap();
        assert_eq!((r["outliers"].found, r["outliers"].removed), (1, 1));
        assert!(t.labels.iter().all(|l| l == "x"));
        let p = policy(r#"{"outliers":{"action":"drop","method":"iqr","threshold":1.5}}"#);
        let (_, r) = validate(&table(&csv), "y", &p).unwrap();
        assert_eq!(r["outliers"].found, 1);
        let err = validate(&table(&csv), "y", &policy(r#"{"outliers":"fail"}"#)).unwrap_err();
        assert!(err.to_string().contains("|z| > 3"), "{err}");
    }

    #[test]
    fn nothing_left_is_an_error() {
        let err = validate(&table("a,y\n,x\n"), "y", &Policy::default()).unwrap_err();
        assert_eq!(err, ValidationError::Empty(1));
    }

    #[test]
    fn quantile_interpolates() {
        assert_eq!(quantile(&mut [4.0, 1.0, 3.0, 2.0], 0.5), Some(2.5));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
