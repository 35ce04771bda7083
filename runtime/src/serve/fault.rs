//! Fault injection — for tests only, off by default. It lets end-to-end tests
//! make a version misbehave on purpose, so rollbacks can be proven:
//!
//! - `MLOPS_FAULT_ERROR_RATE` (0..1): that fraction of inference requests is
//!   answered `500 {"error": "injected fault"}`;
//! - `MLOPS_FAULT_LATENCY_MS`: added before every inference answer;
//! - `MLOPS_FAULT_CRASH_ON_LOAD` (`true`/`1`): the server exits non-zero
//!   instead of loading the model.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Faults {
    pub error_rate: f64,
    pub latency: Duration,
    pub crash_on_load: bool,
    counter: AtomicU64,
}

impl Faults {
    pub fn new(error_rate: f64, latency: Duration, crash_on_load: bool) -> Faults {
        Faults { error_rate: error_rate.clamp(0.0, 1.0), latency, crash_on_load, counter: AtomicU64::new(0) }
    }

    pub fn any(&self) -> bool {
        self.error_rate > 0.0 || !self.latency.is_zero() || self.crash_on_load
    }

    /// Whether this request should fail: a SplitMix64 hash of a shared counter,
    /// uniform and lock-free, reproducible across runs.
    pub fn inject_error(&self) -> bool {
        if self.error_rate <= 0.0 {
            return false;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < self.error_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        let f = Faults::default();
        assert!(!f.any());
        assert!((0..1000).all(|_| !f.inject_error()));
    }

    #[test]
    fn error_rate_is_honoured_roughly() {
        let f = Faults::new(0.3, Duration::ZERO, false);
        let errors = (0..10_000).filter(|_| f.inject_error()).count();
        assert!((2700..3300).contains(&errors), "{errors}");
        let all = Faults::new(1.0, Duration::ZERO, false);
        assert!((0..100).all(|_| all.inject_error()));
    }
}
