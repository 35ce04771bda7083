//! The node's HTTPS endpoint, enough for `kubectl logs [-f] [--tail N] [--previous]`: the
//! API server calls `GET /containerLogs/{namespace}/{pod}/{container}` on the port the Node
//! advertises, and this answers with the current (or previous) run's part of the
//! container's log file.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::watch,
};
use tracing::{info, warn};

use crate::runlog;

pub struct Server {
    pub state_dir: PathBuf,
    pub address: String,
    pub port: u16,
}

/// A log request, parsed from the request target.
#[derive(Debug, PartialEq)]
pub struct LogRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub previous: bool,
}

pub fn parse_target(target: &str) -> Option<LogRequest> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut parts = path.strip_prefix("/containerLogs/")?.split('/');
    let (namespace, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    let mut req = LogRequest {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        follow: false,
        tail_lines: None,
        previous: false,
    };
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("follow", v)) => req.follow = v == "true" || v == "1",
            Some(("tailLines", v)) => req.tail_lines = v.parse().ok(),
            Some(("previous", v)) => req.previous = v == "true" || v == "1",
            _ => {}
        }
    }
    Some(req)
}

/// The log file of the newest pod directory named after the pod.
fn log_path(state_dir: &Path, req: &LogRequest) -> Option<PathBuf> {
    let prefix = format!("{}_{}_", req.namespace, req.pod);
    std::fs::read_dir(state_dir.join("pods"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join("logs").join(format!("{}.log", req.container)))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &[u8], n: usize) -> &[u8] {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    if n == 0 { &text[text.len()..] } else { text }
}

impl Server {
    pub async fn run(
        self,
        cert: &Path,
        key: &Path,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((self.address.as_str(), self.port)).await?;
        info!(address = %listener.local_addr()?, "kubelet endpoint (logs) listening");
        let state_dir = Arc::new(self.state_dir);
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => r?,
                _ = shutdown.changed() => return Ok(()),
            };
            let acceptor = acceptor.clone();
            let state_dir = state_dir.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        if let Err(e) = handle(tls, &state_dir).await {
                            warn!("kubelet endpoint request: {e}");
                        }
                    }
                    Err(e) => warn!("kubelet endpoint TLS: {e}"),
                }
            });
        }
    }
}

async fn handle<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let mut stream = reader.into_inner();
    let Some(req) = parse_target(&target) else {
        return respond_error(&mut stream, "404 Not Found", "not found").await;
    };
    let Some(path) = log_path(state_dir, &req) else {
        let body = format!(
            "no log for container {} of pod {}/{} on this node",
            req.container, req.namespace, req.pod
        );
        return respond_error(&mut stream, "404 Not Found", &body).await;
    };
    let runs = runlog::read(&path);
    let mut f = tokio::fs::File::open(&path).await?;
    let len = f.metadata().await?.len();
    let Some(range) = runlog::range(&runs, len, req.previous) else {
        // The kubelet's answer (the API server passes it on as BadRequest).
        let body =
            format!("previous terminated container \"{}\" in pod \"{}\" not found", req.container, req.pod);
        return respond_error(&mut stream, "400 Bad Request", &body).await;
    };
    f.seek(std::io::SeekFrom::Start(range.start)).await?;
    let mut content = Vec::new();
    (&mut f).take(range.end - range.start).read_to_end(&mut content).await?;
    let shown = match req.tail_lines {
        Some(n) => last_lines(&content, n),
        None => &content[..],
    };
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n").await?;
    stream.write_all(shown).await?;
    stream.flush().await?;
    if req.follow && !req.previous {
        follow_run(&mut stream, &mut f, &path, range).await?;
    }
    stream.shutdown().await?;
    Ok(())
}

/// Streams what the run that started at `sent.start` writes after `sent.end`, until it has
/// exited (or the next run has started) and its output is drained.
async fn follow_run<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    f: &mut tokio::fs::File,
    path: &Path,
    sent: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    let exited = path.with_extension("exited");
    let mut pos = sent.end;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Checked before reading, so everything the run wrote before it ended is sent.
        let next_start = runlog::read(path).current;
        let end = if next_start != sent.start {
            Some(next_start)
        } else if exited.exists() {
            Some(u64::MAX)
        } else {
            None
        };
        loop {
            let want = end.unwrap_or(u64::MAX).saturating_sub(pos).min(buf.len() as u64) as usize;
            let n = if want == 0 { 0 } else { f.read(&mut buf[..want]).await? };
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).await?;
            stream.flush().await?;
            pos += n as u64;
        }
        if end.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn respond_error<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    message: &str,
) -> anyhow::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        message.len() + 1
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(message.as_bytes()).await?;
    stream.write_all(b"\n").await?;
    stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_requests() {
        let r = parse_target("/containerLogs/ns/p/c?follow=true&tailLines=5").unwrap();
        assert_eq!(
            r,
            LogRequest {
                namespace: "ns".into(),
                pod: "p".into(),
                container: "c".into(),
                follow: true,
                tail_lines: Some(5),
                previous: false,
            }
        );
        assert!(parse_target("/containerLogs/ns/p/c?previous=true").unwrap().previous);
        assert!(parse_target("/pods").is_none());
    }

    #[test]
    fn tails_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
    }

    /// One request through `handle`, as the API server would send it: (status line, body).
    async fn get(state_dir: &Path, target: &str) -> (String, String) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let state_dir = state_dir.to_path_buf();
        let served = tokio::spawn(async move { handle(server, &state_dir).await.unwrap() });
        client.write_all(format!("GET {target} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        served.await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_the_current_run_and_the_previous_one() {
        let state = std::env::temp_dir().join(format!("mlops-node-kubelet-{}", std::process::id()));
        let logs = state.join("pods/ns_crash_0123abcd/logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join("main.log");
        std::fs::write(&log, "run 1\n").unwrap();
        runlog::write(&log, &runlog::Runs { current: 0, previous: None }).unwrap();
        let (status, body) = get(&state, "/containerLogs/ns/crash/main").await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "run 1\n"));
        // No restart yet: the kubelet's 400.
        let (status, body) = get(&state, "/containerLogs/ns/crash/main?previous=true").await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        assert_eq!(body, "previous terminated container \"main\" in pod \"crash\" not found\n");

        // Restarted: the file holds both runs, each request gets one.
        std::fs::write(&log, "run 1\nrun 2a\nrun 2b\n").unwrap();
        runlog::write(&log, &runlog::Runs { current: 6, previous: Some((0, 6)) }).unwrap();
        let (_, body) = get(&state, "/containerLogs/ns/crash/main").await;
        assert_eq!(body, "run 2a\nrun 2b\n");
        let (_, body) = get(&state, "/containerLogs/ns/crash/main?tailLines=1").await;
        assert_eq!(body, "run 2b\n");
        let (_, body) = get(&state, "/containerLogs/ns/crash/main?previous=true&follow=true").await;
        assert_eq!(body, "run 1\n");
        // Following the current run ends once it has exited.
        std::fs::write(logs.join("main.exited"), "").unwrap();
        let (_, body) = get(&state, "/containerLogs/ns/crash/main?follow=true").await;
        assert_eq!(body, "run 2a\nrun 2b\n");
        std::fs::remove_dir_all(&state).unwrap();
    }
}
