//! Where datasets come from and artifacts go: `file://`, plain paths, `pvc://` and `s3://`.
//!
//! Everything is read into memory: tabular datasets and JSON artifacts of the
//! reference runtime are small, and one code path keeps digesting simple.

mod s3;

pub use s3::{OUTPUT_PREFIX, Role, S3Config, SigningInput, sign_v4};

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
    /// A credentials variable set wrong; names variables, never values.
    #[error("S3 configuration: {0}")]
    Config(String),
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

/// Looks up an environment variable; the process environment outside tests.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads the whole object at `uri` (S3: with the plain `AWS_*` credentials).
pub fn read(uri: &str) -> Result<Vec<u8>, StorageError> {
    read_with(uri, &process_env)
}

fn read_with(uri: &str, env: Env<'_>) -> Result<Vec<u8>, StorageError> {
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
        Location::S3 { bucket, key } => s3::get(&S3Config::for_role(Role::Input, env)?, &bucket, &key),
    }
}

/// Writes `bytes` to `location`, creating parent directories for files. S3 writes
/// use the output credentials (`MLOPS_OUTPUT_AWS_*`, else `AWS_*`): the only thing
/// the runtime writes is the training artifact.
pub fn write(location: &Location, bytes: &[u8], content_type: &str) -> Result<(), StorageError> {
    write_with(location, bytes, content_type, &process_env)
}

/// Fails early when the credentials a write to `location` would use are set wrong,
/// so a run stops before its work rather than at the upload.
pub fn check_write_config(location: &Location) -> Result<(), StorageError> {
    match location {
        Location::File(_) => Ok(()),
        Location::S3 { .. } => S3Config::for_role(Role::Output, &process_env).map(drop),
    }
}

fn write_with(
    location: &Location,
    bytes: &[u8],
    content_type: &str,
    env: Env<'_>,
) -> Result<(), StorageError> {
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
        Location::S3 { bucket, key } => {
            s3::put(&S3Config::for_role(Role::Output, env)?, bucket, key, bytes, content_type)
        }
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

    /// The wiring the audit asked for: the artifact PUT is signed with the output
    /// Secret, the dataset GET with the dataset's, and neither secret is sent.
    #[test]
    fn writes_sign_with_the_output_credentials_and_reads_with_the_dataset_ones() {
        let (endpoint, server) = s3::tests::one_shot_server("200 OK", b"");
        let env = s3::tests::two_secrets(&[("MLOPS_OUTPUT_AWS_ENDPOINT_URL", &endpoint)]);
        let target = Location::parse("s3://models/iris/r1/model.json").unwrap();
        write_with(&target, b"{}", "application/json", &|k| env.get(k).cloned()).unwrap();
        let (head, _) = server.join().unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.contains("credential=akidoutput/"), "{head}");
        assert!(head.contains("/us-west-2/s3/aws4_request"), "{head}");
        assert!(!head.contains("akiddataset") && !head.contains("dataset-token"), "{head}");
        assert!(!head.contains("output-secret") && !head.contains("dataset-secret"), "{head}");

        let (endpoint, server) = s3::tests::one_shot_server("200 OK", b"a,b\n");
        let env = s3::tests::two_secrets(&[("AWS_ENDPOINT_URL", &endpoint)]);
        let body = read_with("s3://datasets/iris.csv", &|k| env.get(k).cloned()).unwrap();
        assert_eq!(body, b"a,b\n");
        let (head, _) = server.join().unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.contains("credential=akiddataset/"), "{head}");
        assert!(head.contains("x-amz-security-token: dataset-token"), "{head}");
        assert!(!head.contains("akidoutput"), "{head}");
    }

    #[test]
    fn a_half_set_output_pair_fails_the_write_before_any_request() {
        let mut env = s3::tests::two_secrets(&[]);
        env.remove("MLOPS_OUTPUT_AWS_SECRET_ACCESS_KEY");
        let target = Location::parse("s3://models/m.json").unwrap();
        let err = write_with(&target, b"{}", "application/json", &|k| env.get(k).cloned()).unwrap_err();
        assert!(matches!(err, StorageError::Config(_)), "{err}");
    }

    #[test]
    fn file_round_trip_creates_directories() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::File(dir.path().join("a/b/model.json"));
        write(&loc, b"{}", "application/json").unwrap();
        assert_eq!(read(&loc.uri()).unwrap(), b"{}");
    }
}
