//! A real S3 server for the `s3://` tests.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{tools_bin, unique_name};

/// A real S3 server on the local node's address (pods and the host both reach it) for
/// `s3://` tests: the Versity S3 Gateway
/// (`hack/build-tools.sh` builds it) over a temporary folder, one bucket per folder in it,
/// with its own root credentials; stopped and removed when dropped. Objects are written
/// straight into the folder (a data pipeline dropping a new snapshot) and read through the
/// S3 API, signed, by whoever is given the credentials.
pub struct S3Server {
    child: std::process::Child,
    pub root: PathBuf,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server {
    /// Starts the server; panics when `versitygw` is not built (`make tools`).
    pub fn start(name: &str) -> S3Server {
        let bin = tools_bin().join("versitygw");
        assert!(bin.exists(), "{} is missing: run `make tools` (hack/build-tools.sh)", bin.display());
        let root = PathBuf::from(format!("/tmp/mlops-e2e/s3-{}", unique_name(name)));
        std::fs::create_dir_all(&root).expect("S3 root");
        let ip = crate::node_ip();
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port on the node address")
            .port();
        let (access_key, secret_key) = (format!("AK{}", unique_name("s3")), unique_name("secret"));
        let child = Command::new(&bin)
            .args(["--access", &access_key, "--secret", &secret_key, "--port", &format!("{ip}:{port}")])
            .args(["--quiet", "posix"])
            .arg(&root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting versitygw");
        let server =
            S3Server { child, root, endpoint: format!("http://{ip}:{port}"), access_key, secret_key };
        let start = Instant::now();
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "versitygw did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Creates an empty bucket.
    pub fn bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.join(name)).expect("bucket folder");
    }

    /// Writes an object (creating its bucket).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let path = self.root.join(bucket).join(key);
        std::fs::create_dir_all(path.parent().expect("object path")).expect("bucket folder");
        // Write then rename, so a reader never sees half an object.
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, bytes).expect("object");
        std::fs::rename(&tmp, &path).expect("object");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
