//! Which part of a container's log file belongs to which run. The file is appended across
//! restarts; beside it (`<container>.runs`) the container runner records where the current
//! run starts and which bytes the previous run wrote, and the kubelet endpoint serves one
//! run at a time from that, as `kubectl logs [--previous]` expects.

use std::{
    io,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Byte offsets into a container's log file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Runs {
    /// Where the newest run's output starts.
    pub current: u64,
    /// The run the container's `lastState` describes (the one before a restart), as
    /// `[start, end)`; none until the container has been restarted.
    pub previous: Option<(u64, u64)>,
}

fn runs_path(log: &Path) -> PathBuf {
    log.with_extension("runs")
}

/// The runs recorded for `log` (a log without a record is one run).
pub fn read(log: &Path) -> Runs {
    std::fs::read(runs_path(log)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Records `runs` for `log`, atomically (a reader never sees half a record).
pub fn write(log: &Path, runs: &Runs) -> io::Result<()> {
    let path = runs_path(log);
    let tmp = path.with_extension("runs.tmp");
    std::fs::write(&tmp, serde_json::to_vec(runs)?)?;
    std::fs::rename(tmp, path)
}

/// The bytes of a log of `len` bytes that `kubectl logs` shows: the newest run, or with
/// `previous` the run before the restart; `None` when there has been no restart.
pub fn range(runs: &Runs, len: u64, previous: bool) -> Option<Range<u64>> {
    if previous {
        let (start, end) = runs.previous?;
        Some(start.min(len)..end.clamp(start.min(len), len))
    } else {
        Some(runs.current.min(len)..len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_and_previous_runs() {
        let first = Runs { current: 0, previous: None };
        assert_eq!(range(&first, 10, false), Some(0..10));
        assert_eq!(range(&first, 10, true), None);
        // Restarted: run 1 wrote [0, 10), run 2 starts at 10.
        let second = Runs { current: 10, previous: Some((0, 10)) };
        assert_eq!(range(&second, 25, false), Some(10..25));
        assert_eq!(range(&second, 25, true), Some(0..10));
        // A log shorter than the record (removed and recreated) never reads past its end.
        assert_eq!(range(&second, 5, false), Some(5..5));
        assert_eq!(range(&second, 5, true), Some(0..5));
    }

    #[test]
    fn record_round_trip() {
        let dir = std::env::temp_dir().join(format!("mlops-node-runlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("main.log");
        assert_eq!(read(&log), Runs::default());
        let runs = Runs { current: 42, previous: Some((7, 42)) };
        write(&log, &runs).unwrap();
        assert_eq!(read(&log), runs);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
