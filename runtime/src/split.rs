//! Deterministic train / validation / test split.
//!
//! The same ratios, seed and row count always give the same partition, on any
//! platform: the shuffle is a Fisher–Yates driven by SplitMix64, defined here
//! rather than borrowed from a crate whose stream might change between versions.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub train: f64,
    #[serde(default)]
    pub validation: f64,
    pub test: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_seed() -> u64 {
    42
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec { train: 0.7, validation: 0.15, test: 0.15, seed: 42 }
    }
}

impl SplitSpec {
    /// Parses `MLOPS_SPLIT`; an empty string means 0.7 / 0.15 / 0.15, seed 42.
    pub fn parse(json: &str) -> Result<SplitSpec, String> {
        if json.trim().is_empty() {
            return Ok(SplitSpec::default());
        }
        let spec: SplitSpec = serde_json::from_str(json).map_err(|e| format!("MLOPS_SPLIT: {e}"))?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        let parts = [self.train, self.validation, self.test];
        if parts.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err("MLOPS_SPLIT: ratios must be non-negative numbers".into());
        }
        if self.train <= 0.0 || self.test <= 0.0 {
            return Err("MLOPS_SPLIT: train and test ratios must be positive".into());
        }
        let sum: f64 = parts.iter().sum();
        if (sum - 1.0).abs() > 0.01 {
            return Err(format!("MLOPS_SPLIT: ratios sum to {sum}, expected 1"));
        }
        Ok(())
    }
}

/// Row indices of each part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
}

/// SplitMix64: tiny, well-mixed, and stable forever.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), by rejection so there is no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// Splits `n` rows; test and validation sizes are rounded, train takes the
/// rest. Fails when train or test would be empty.
pub fn split(n: usize, spec: &SplitSpec) -> Result<Split, String> {
    let sum = spec.train + spec.validation + spec.test;
    let test = ((n as f64) * spec.test / sum).round() as usize;
    let validation = ((n as f64) * spec.validation / sum).round() as usize;
    let test = test.max(1);
    if test + validation >= n {
        return Err(format!("{n} rows are too few for the split: train or test would be empty"));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(spec.seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        idx.swap(i, j);
    }
    let test_part = idx[..test].to_vec();
    let validation_part = idx[test..test + validation].to_vec();
    let train_part = idx[test + validation..].to_vec();
    Ok(Split { train: train_part, validation: validation_part, test: test_part })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_ratios() {
        let s = split(150, &SplitSpec::default()).unwrap();
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (104, 23, 23));
    }

    #[test]
    fn parts_are_disjoint_and_cover_every_row() {
        let s = split(97, &SplitSpec::default()).unwrap();
        let mut all: Vec<usize> = [s.train, s.validation, s.test].concat();
        all.sort();
        assert_eq!(all, (0..97).collect::<Vec<_>>());
    }

    #[test]
    fn same_seed_same_split_other_seed_other_split() {
        let spec = SplitSpec::default();
        assert_eq!(split(50, &spec).unwrap(), split(50, &spec).unwrap());
        let other = SplitSpec { seed: 7, ..spec };
        assert_ne!(split(50, &spec).unwrap(), split(50, &other).unwrap());
    }

    #[test]
    fn the_stream_is_pinned() {
        // Changing the generator would silently change every recorded split.
        let s = split(10, &SplitSpec::default()).unwrap();
        let again = split(10, &SplitSpec::default()).unwrap();
        assert_eq!(s, again);
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn too_few_rows_are_refused() {
        assert!(split(1, &SplitSpec::default()).is_err());
        assert!(split(3, &SplitSpec::default()).is_ok());
    }

    #[test]
    fn parse_validates_ratios() {
        let s = SplitSpec::parse(r#"{"train":0.8,"test":0.2,"seed":1}"#).unwrap();
        assert_eq!((s.validation, s.seed), (0.0, 1));
        for bad in [
            r#"{"train":0.8,"test":0.3}"#,
            r#"{"train":-0.1,"validation":0.6,"test":0.5}"#,
            r#"{"train":1.0,"test":0.0}"#,
            r#"{"train":0.5,"test":0.5,"shuffle":true}"#,
            "not json",
        ] {
            assert!(SplitSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
