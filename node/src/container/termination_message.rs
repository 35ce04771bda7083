//! A container's termination message: what it wrote to its message file, or with
//! `FallbackToLogsOnError` after a failed run, the tail of that run's log.

use std::{
    io::{Read, Seek, SeekFrom},
    path::Path,
    time::SystemTime,
};

use k8s_openapi::api::core::v1::Container;

/// Kubernetes caps termination messages at 4 KiB; log fallback takes at most 80 lines / 2 KiB.
const MAX_MESSAGE: usize = 4096;
const DEFAULT_MESSAGE_PATH: &str = "/dev/termination-log";
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;

/// The termination message: the file's first 4 KiB, or with `FallbackToLogsOnError` and
/// a failed exit and an empty file, the tail of this run's log.
pub(super) fn termination_message(
    c: &Container,
    msg_path: &Path,
    log_path: &Path,
    log_offset: u64,
    exit_code: i32,
    custom_before: Option<SystemTime>,
) -> Option<String> {
    let msg = read_message(msg_path);
    if !msg.is_empty() {
        return Some(msg);
    }
    // A custom terminationMessagePath is a host path here: use it when this run wrote it
    // (it changed since the container started).
    if let Some(custom) = custom_message_path(c)
        && let Some(t) = modified(custom)
        && custom_before != Some(t)
    {
        let msg = read_message(custom);
        if !msg.is_empty() {
            return Some(msg);
        }
    }
    if exit_code != 0 && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError") {
        return log_tail(log_path, log_offset).filter(|s| !s.is_empty());
    }
    None
}

/// The container's own `terminationMessagePath`, when it is not the default.
pub(super) fn custom_message_path(c: &Container) -> Option<&Path> {
    c.termination_message_path
        .as_deref()
        .filter(|p| *p != DEFAULT_MESSAGE_PATH && Path::new(p).is_absolute())
        .map(Path::new)
}

pub(super) fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The first 4 KiB of a message file (empty when there is none).
fn read_message(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_MESSAGE as u64).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_tail(path: &Path, from: u64) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = from.max(len.saturating_sub(64 * 1024));
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(tail_text(&String::from_utf8_lossy(&buf)))
}

/// The last 80 lines, at most the last 2 KiB of them.
pub fn tail_text(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(FALLBACK_LINES)..].join("\n");
    if tail.len() <= FALLBACK_BYTES {
        return tail;
    }
    let mut cut = tail.len() - FALLBACK_BYTES;
    while !tail.is_char_boundary(cut) {
        cut += 1;
    }
    tail[cut..].to_owned()
}
