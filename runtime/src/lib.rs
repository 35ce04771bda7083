//! `mlops-runtime`: the reference trainer and model server of mlops-operator.
//!
//! The crate implements the pod contracts (the `contract` crate). `train` turns a CSV
//! dataset into a versioned JSON artifact and a small result JSON; `serve` loads
//! such an artifact and answers Open Inference Protocol v2 requests.
//!
//! Module map (follow the names from `main.rs` downward):
//! - [`storage`]: read and write bytes at `file://`, local, `pvc://` or `s3://` URIs.
//! - [`dataset`], [`validate`], [`split`]: CSV in, clean numeric table out, deterministic split.
//! - [`train`]: fit a model with linfa and export it to the artifact's [`model`] form.
//! - [`trainer`]: the `train` command, sequencing the steps above.
//! - [`evaluate`]: statistical and computational metrics on the test split.
//! - [`drift`]: training-distribution histograms and the population stability index.
//! - [`artifact`], [`result`]: the two documented outputs of a training run.
//! - [`serve`]: the HTTP server, its protocol types, metrics and fault injection.

pub mod artifact;
pub mod dataset;
pub mod drift;
pub mod evaluate;
pub mod model;
pub mod result;
pub mod serve;
pub mod split;
pub mod storage;
pub mod train;
pub mod trainer;
pub mod validate;

/// `sha256:<hex>` of some bytes: the digest form used by every contract here.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Compares a pinned digest with the actual one; accepts a bare hex pin too.
pub fn digest_matches(pinned: &str, actual: &str) -> bool {
    let pinned = pinned.trim().to_ascii_lowercase();
    let pinned = pinned.strip_prefix("sha256:").unwrap_or(&pinned);
    actual.strip_prefix("sha256:").unwrap_or(actual) == pinned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn pins_match_with_or_without_prefix_and_case() {
        let d = sha256_digest(b"x");
        let hex = d.trim_start_matches("sha256:").to_string();
        assert!(digest_matches(&d, &d));
        assert!(digest_matches(&hex, &d));
        assert!(digest_matches(&hex.to_uppercase(), &d));
        assert!(!digest_matches("sha256:00", &d));
    }
}
