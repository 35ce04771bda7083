//! CrashLoopBackOff timing, as the kubelet does it: the first restart is immediate, then
//! the delay starts at `base` and doubles up to `max`; a container that ran for longer
//! than `2 × max` starts over.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before restart number `restarts + 1`, given how long the last run lasted;
    /// `streak` counts consecutive quick failures and is updated.
    pub fn next_delay(&self, streak: &mut u32, ran_for: Duration) -> Duration {
        if ran_for > self.max * 2 {
            *streak = 0;
        }
        let delay = if *streak == 0 {
            Duration::ZERO
        } else {
            let factor = 1u32.checked_shl(streak.saturating_sub(1).min(30)).unwrap_or(u32::MAX);
            self.base.saturating_mul(factor).min(self.max)
        };
        *streak = streak.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_and_caps() {
        let b = Backoff { base: Duration::from_secs(10), max: Duration::from_secs(300) };
        let mut streak = 0;
        let quick = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(&mut streak, quick).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn long_run_resets() {
        let b = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(5) };
        let mut streak = 0;
        for _ in 0..4 {
            b.next_delay(&mut streak, Duration::ZERO);
        }
        assert_eq!(b.next_delay(&mut streak, Duration::from_secs(11)), Duration::ZERO);
        assert_eq!(b.next_delay(&mut streak, Duration::ZERO), Duration::from_secs(1));
    }
}
