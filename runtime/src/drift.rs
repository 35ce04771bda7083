//! Feature drift: the training distribution of each feature as histogram bins,
//! and the population stability index (PSI) of recent inputs against it.
//!
//! Bins are cut at the training split's deciles (fewer when values repeat), so each
//! training bin holds about 10 % of rows and PSI is sensitive across the whole
//! range. PSI = Σ (a − e) · ln(a / e) over bins, with proportions floored at
//! 1e-4 so an empty bin gives a large but finite score. Rules of thumb:
//! below 0.1 stable, 0.1–0.25 moderate shift, above 0.25 significant shift.

use serde::{Deserialize, Serialize};

/// Bins per feature; at most 255 so a bin index fits a byte in the window.
pub const DEFAULT_BINS: usize = 10;
const FLOOR: f64 = 1e-4;

/// A feature's training histogram: `edges` are the interior cut points
/// (bin `i` holds `edges[i-1] <= x < edges[i]`), `proportions` one per bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub proportions: Vec<f64>,
}

impl Histogram {
    /// Quantile bins of `values` and the share of values in each.
    pub fn from_values(values: &[f64], bins: usize) -> Histogram {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        // Edges are data values (the upper neighbour of each quantile), so
        // discrete features get one bin per value instead of empty gaps.
        let last = sorted.len().saturating_sub(1);
        let mut edges: Vec<f64> = (1..bins.max(1))
            .filter(|_| !sorted.is_empty())
            .map(|i| sorted[((i as f64 / bins as f64) * last as f64).ceil() as usize])
            .collect();
        edges.dedup();
        // An edge equal to the minimum would leave the first bin empty.
        if let Some(min) = sorted.first() {
            edges.retain(|e| e > min);
        }
        let mut hist = Histogram { proportions: vec![0.0; edges.len() + 1], edges };
        for v in values {
            let b = hist.bin(*v);
            hist.proportions[b] += 1.0;
        }
        let n = values.len().max(1) as f64;
        hist.proportions.iter_mut().for_each(|p| *p /= n);
        hist
    }

    #[inline]
    pub fn bin(&self, x: f64) -> usize {
        self.edges.partition_point(|e| *e <= x)
    }

    pub fn bins(&self) -> usize {
        self.proportions.len()
    }

    /// Sanity check for histograms read from an artifact.
    pub fn check(&self) -> Result<(), String> {
        let sorted = self.edges.windows(2).all(|w| w[0] < w[1]);
        if !sorted || self.proportions.len() != self.edges.len() + 1 || self.bins() > 255 {
            return Err("histogram edges must increase and match the proportions".into());
        }
        Ok(())
    }
}

/// PSI of observed bin `counts` against `expected` proportions.
pub fn psi(expected: &[f64], counts: &[u32]) -> f64 {
    let total: u32 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    expected
        .iter()
        .zip(counts)
        .map(|(e, c)| {
            let a = (*c as f64 / total as f64).max(FLOOR);
            let e = e.max(FLOOR);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// A sliding window of the most recent input rows, kept as bin indices with
/// running counts per feature and bin, so PSI costs O(features × bins).
#[derive(Debug, Clone)]
pub struct Window {
    histograms: Vec<Histogram>,
    capacity: usize,
    /// Ring of `capacity` rows × features bin indices.
    ring: Vec<u8>,
    next: usize,
    len: usize,
    /// `counts[f][b]`: rows in the window whose feature `f` fell in bin `b`.
    counts: Vec<Vec<u32>>,
}

impl Window {
    pub fn new(histograms: Vec<Histogram>, capacity: usize) -> Window {
        let capacity = capacity.max(1);
        let f = histograms.len();
        Window {
            counts: histograms.iter().map(|h| vec![0; h.bins()]).collect(),
            histograms,
            capacity,
            ring: vec![0; capacity * f],
            next: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds one row (one value per feature), evicting the oldest when full.
    pub fn push(&mut self, row: &[f64]) {
        let f = self.histograms.len();
        let slot = &mut self.ring[self.next * f..(self.next + 1) * f];
        for (j, (h, x)) in self.histograms.iter().zip(row).enumerate() {
            if self.len == self.capacity {
                self.counts[j][slot[j] as usize] -= 1;
            }
            let b = h.bin(*x);
            slot[j] = b as u8;
            self.counts[j][b] += 1;
        }
        self.next = (self.next + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    /// PSI of each feature over the window.
    pub fn psi(&self) -> Vec<f64> {
        self.histograms.iter().zip(&self.counts).map(|(h, c)| psi(&h.proportions, c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::SplitMix64;

    /// Roughly normal values from a seeded generator (sum of uniforms).
    fn normal(rng: &mut SplitMix64, mean: f64, sd: f64) -> f64 {
        let s: f64 = (0..12).map(|_| rng.next_u64() as f64 / u64::MAX as f64).sum();
        mean + sd * (s - 6.0)
    }

    #[test]
    fn quantile_bins_hold_equal_shares() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let h = Histogram::from_values(&values, 10);
        assert_eq!(h.bins(), 10);
        assert!(h.proportions.iter().all(|p| (p - 0.1).abs() < 0.002), "{h:?}");
        h.check().unwrap();
    }

    #[test]
    fn repeated_values_collapse_bins() {
        let h = Histogram::from_values(&[1.0, 1.0, 1.0, 2.0, 2.0, 3.0], 10);
        assert!(h.bins() <= 3, "{h:?}");
        assert!((h.proportions.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(h.bin(1.0), 0);
    }

    #[test]
    fn psi_is_zero_for_identical_and_grows_with_shift() {
        let e = [0.25, 0.25, 0.25, 0.25];
        assert!(psi(&e, &[25, 25, 25, 25]).abs() < 1e-12);
        let small = psi(&e, &[20, 30, 25, 25]);
        let large = psi(&e, &[0, 0, 10, 90]);
        assert!(small > 0.0 && small < 0.1 && large > 1.0, "{small} {large}");
        assert_eq!(psi(&e, &[0, 0, 0, 0]), 0.0);
    }

    #[test]
    fn window_psi_stays_low_in_distribution_and_rises_under_shift() {
        let mut rng = SplitMix64::new(3);
        let training: Vec<f64> = (0..5000).map(|_| normal(&mut rng, 5.0, 1.0)).collect();
        let hist = Histogram::from_values(&training, DEFAULT_BINS);
        let mut w = Window::new(vec![hist], 1000);
        for _ in 0..3000 {
            w.push(&[normal(&mut rng, 5.0, 1.0)]);
        }
        assert_eq!(w.len(), 1000);
        let stable = w.psi()[0];
        assert!(stable < 0.05, "stable PSI {stable}");
        // Shift by one standard deviation: the old rows age out of the window.
        for _ in 0..1000 {
            w.push(&[normal(&mut rng, 6.0, 1.0)]);
        }
        let shifted = w.psi()[0];
        assert!(shifted > 0.25, "shifted PSI {shifted}");
    }

    #[test]
    fn counts_stay_consistent_through_eviction() {
        let hist = Histogram::from_values(&[0.0, 1.0, 2.0, 3.0], 4);
        let mut w = Window::new(vec![hist], 3);
        for x in [0.0, 3.0, 3.0, 3.0, 0.0] {
            w.push(&[x]);
        }
        assert_eq!(w.counts[0].iter().sum::<u32>(), 3);
        assert_eq!(w.counts[0][0], 1);
    }
}
