//! Where datasets come from and artifacts go: `file://`, plain paths, `pvc://` and `s3://`.
//!
//! Everything is read into memory: tabular datasets and JSON artifacts of the
//! reference runtime are small, and one code path keeps digesting simple.

mod s3;

pub use s3::{S3Config, SigningInput, sign_v4};

use std::path::PathBuf;

/// Largest object the runtime reads (datasets and artifacts), so a wrong URI
/// cannot exhaust memory.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported URI {0:?}: expected file://, pvc://, s3:// or a local path")]
    Unsupported(String),
    #[error("invalid URI {uri:?}: {reason}")]
    Invalid { uri: String, reason: &'static str },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: std::io::Error },
    #[error("{op} {uri}: {reason}")]
    Remote { op: &'static str, uri: String, reason: String },
}

/// A parsed storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    S3 { bucket: String, key: String },
}

/// Root under which `pvc://claim/path` is looked up: the trainer pod is expected
/// to mount each claim at `<root>/<claim>`.
fn pvc_root() -> PathBuf {
    std::env::var_os("MLOPS_PVC_MOUNT_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/mnt/pvc"))
}

impl Location {
    pub fn parse(uri: &str) -> Result<Self, StorageError> {
        if let Some(rest) = uri.strip_prefix("file://") {
            // file:///abs/path and file://relative/path both map to a path.
            if rest.is_empty() {
                return Err(StorageError::Invalid { uri: uri.into(), reason: "empty path" });
            }
            return Ok(Location::File(PathBuf::from(rest)));
        }
        if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
            if claim.is_empty() || path.is_empty() {
                return Err(StorageError::Invalid {
                    uri: uri.into(),
                    reason: "expected pvc://<claim>/<path>",
                });
            }
            return Ok(Location::File(pvc_root().join(claim).join(path)));
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() {
                return Err(StorageError::Invalid {
                    uri: uri.into(),
                    reason: "expected s3://<bucket>/<key>",
                });
            }
            return Ok(Location::S3 { bucket: bucket.into(), key: key.into() });
        }
        if uri.contains("://") || uri.is_empty() {
            return Err(StorageError::Unsupported(uri.into()));
        }
        Ok(Location::File(PathBuf::from(uri)))
    }

    /// The location of `name` inside this one taken as a directory or prefix.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::File(p) => Location::File(p.join(name)),
            Location::S3 { bucket, key } => {
                Location::S3 { bucket: bucket.clone(), key: format!("{}/{name}", key.trim_end_matches('/')) }
            }
        }
    }

    pub fn uri(&self) -> String {
        match self {
            Location::File(p) => format!("file://{}", p.display()),
            Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }
}

/// Reads the whole object at `uri`.
pub fn read(uri: &str) -> Result<Vec<u8>, StorageError> {
    match Location::parse(uri)? {
        Location::File(path) => {
            let io = |source| StorageError::Io { op: "read", path: path.display().to_string(), source };
            let len = std::fs::metadata(&path).map_err(io)?.len();
            if len > MAX_OBJECT_BYTES {
                return Err(StorageError::Remote {
                    op: "read",
                    uri: uri.into(),
                    reason: format!("object is {len} bytes, limit is {MAX_OBJECT_BYTES}"),
                });
            }
            std::fs::read(&path).map_err(io)
        }
        Location::S3 { bucket, key } => s3::get(&S3Config::from_env(), &bucket, &key),
    }
}

/// Writes `bytes` to `location`, creating parent directories for files.
pub fn write(location: &Location, bytes: &[u8], content_type: &str) -> Result<(), StorageError> {
    match location {
        Location::File(path) => {
            let io = |op, source| StorageError::Io { op, path: path.display().to_string(), source };
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| io("create directory for", e))?;
            }
            // Write then rename, so a reader never sees half an artifact.
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, bytes).map_err(|e| io("write", e))?;
            std::fs::rename(&tmp, path).map_err(|e| io("rename", e))
        }
        Location::S3 { bucket, key } => s3::put(&S3Config::from_env(), bucket, key, bytes, content_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_scheme() {
        assert_eq!(
            Location::parse("file:///data/iris.csv").unwrap(),
            Location::File("/data/iris.csv".into())
        );
        assert_eq!(Location::parse("data/iris.csv").unwrap(), Location::File("data/iris.csv".into()));
        assert_eq!(
            Location::parse("s3://bucket/a/b.csv").unwrap(),
            Location::S3 { bucket: "bucket".into(), key: "a/b.csv".into() }
        );
        assert!(matches!(
            Location::parse("pvc://claim/x.csv").unwrap(),
            Location::File(p) if p.ends_with("claim/x.csv")
        ));
    }

    #[test]
    fn rejects_unknown_and_incomplete_uris() {
        for bad in ["http://x/y", "s3://bucket", "s3:///key", "pvc://claim", "", "file://"] {
            assert!(Location::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn join_treats_the_location_as_a_prefix() {
        let s3 = Location::parse("s3://b/runs/1/").unwrap();
        assert_eq!(s3.join("model.json").uri(), "s3://b/runs/1/model.json");
        let f = Location::parse("/tmp/out").unwrap();
        assert_eq!(f.join("model.json").uri(), "file:///tmp/out/model.json");
    }

    #[test]
    fn file_round_trip_creates_directories() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::File(dir.path().join("a/b/model.json"));
        write(&loc, b"{}", "application/json").unwrap();
        assert_eq!(read(&loc.uri()).unwrap(), b"{}");
    }
}
