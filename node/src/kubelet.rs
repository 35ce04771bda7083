//! The node's HTTPS endpoint, enough for `kubectl logs [-f] [--tail N]`: the API server
//! calls `GET /containerLogs/{namespace}/{pod}/{container}` on the port the Node
//! advertises, and this answers with the container's log file.

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
    };
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("follow", v)) => req.follow = v == "true" || v == "1",
            Some(("tailLines", v)) => req.tail_lines = v.parse().ok(),
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
        stream
            .write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
            )
            .await?;
        return Ok(());
    };
    let Some(path) = log_path(state_dir, &req) else {
        let body = format!(
            "no log for container {} of pod {}/{} on this node\n",
            req.container, req.namespace, req.pod
        );
        stream
            .write_all(
                format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
        return Ok(());
    };
    let content = tokio::fs::read(&path).await?;
    let shown = match req.tail_lines {
        Some(n) => last_lines(&content, n),
        None => &content[..],
    };
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n").await?;
    stream.write_all(shown).await?;
    stream.flush().await?;
    if req.follow {
        // Follow until the container has exited and its log is drained.
        let exited = path.with_extension("exited");
        let mut f = tokio::fs::File::open(&path).await?;
        f.seek(std::io::SeekFrom::Start(content.len() as u64)).await?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = f.read(&mut buf).await?;
            if n > 0 {
                stream.write_all(&buf[..n]).await?;
                stream.flush().await?;
                continue;
            }
            if exited.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
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
                tail_lines: Some(5)
            }
        );
        assert!(parse_target("/pods").is_none());
    }

    #[test]
    fn tails_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
    }
}
