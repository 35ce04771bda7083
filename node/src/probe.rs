//! Readiness, liveness and startup probes: httpGet (HTTP or HTTPS), tcpSocket and exec
//! (gRPC probes are approximated by a TCP connect).

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// Where a probe runs: the pod's address, the container and its environment.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod_ip: String,
    pub container: Container,
    pub env: Vec<(String, String)>,
    pub cwd: std::path::PathBuf,
}

/// Thresholds and timing of a probe, with the Kubernetes defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(p: &Probe) -> Timing {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Timing {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// Counts consecutive results and reports a flip once a threshold is reached.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    successes: u32,
    failures: u32,
    pub state: Option<bool>,
}

impl Tracker {
    /// Records one result; returns the new state when it changed.
    pub fn record(&mut self, ok: bool, t: &Timing) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let next = if self.successes >= t.success_threshold {
            Some(true)
        } else if self.failures >= t.failure_threshold {
            Some(false)
        } else {
            self.state
        };
        if next != self.state {
            self.state = next;
            next
        } else {
            None
        }
    }
}

fn port_of(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("unknown named port {name}")),
    }
}

/// Runs the probe once; `Err` carries the failure message.
pub async fn run_once(p: &Probe, target: &Target) -> Result<(), String> {
    let t = timing(p);
    let fut = async {
        if let Some(h) = &p.http_get {
            let host = h.host.clone().unwrap_or_else(|| target.pod_ip.clone());
            let port = port_of(&target.container, &h.port)?;
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let headers: Vec<(String, String)> =
                h.http_headers.iter().flatten().map(|hd| (hd.name.clone(), hd.value.clone())).collect();
            let https = h.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
            http_get(https, &host, port, &path, &headers).await
        } else if let Some(tcp) = &p.tcp_socket {
            let host = tcp.host.clone().unwrap_or_else(|| target.pod_ip.clone());
            let port = port_of(&target.container, &tcp.port)?;
            TcpStream::connect((host.as_str(), port))
                .await
                .map(|_| ())
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        } else if let Some(g) = &p.grpc {
            let port = u16::try_from(g.port).map_err(|_| "invalid port".to_string())?;
            TcpStream::connect((target.pod_ip.as_str(), port)).await.map(|_| ()).map_err(|e| e.to_string())
        } else if let Some(e) = &p.exec {
            let cmd = e.command.clone().unwrap_or_default();
            let Some((prog, args)) = cmd.split_first() else {
                return Err("exec probe without command".into());
            };
            let out = tokio::process::Command::new(prog)
                .args(args)
                .envs(target.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&target.cwd)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("exec {prog}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
                msg.push_str(&String::from_utf8_lossy(&out.stderr));
                Err(format!("command {prog} exited with {}: {}", out.status, msg.trim()))
            }
        } else {
            Err("probe has no handler".into())
        }
    };
    match tokio::time::timeout(t.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {:?}", t.timeout)),
    }
}

/// One GET, as the kubelet sends it: success is a status from 200 to 399. Over HTTPS the
/// server's certificate is not verified (the kubelet does not verify it either).
async fn http_get(
    https: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let url = format!("{}://{host}:{port}{path}", if https { "https" } else { "http" });
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
    if !https {
        return exchange(tcp, host, port, path, headers).await;
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("Get \"{url}\": {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    exchange(tls, host, port, path, headers).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 8192 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response from {host}:{port}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts whatever certificate the server shows (probes do not verify certificates), but
/// still checks the handshake signatures against it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_thresholds() {
        let p: Probe = serde_json::from_value(serde_json::json!({"httpGet": {"port": 80}})).unwrap();
        let t = timing(&p);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.failure_threshold, 3);
        let mut tr = Tracker::default();
        assert_eq!(tr.record(true, &t), Some(true));
        assert_eq!(tr.record(false, &t), None);
        assert_eq!(tr.record(false, &t), None);
        assert_eq!(tr.record(false, &t), Some(false));
        assert_eq!(tr.record(false, &t), None);
    }

    #[test]
    fn named_ports() {
        let c: Container = serde_json::from_value(
            serde_json::json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}),
        )
        .unwrap();
        assert_eq!(port_of(&c, &IntOrString::String("http".into())), Ok(8080));
        assert_eq!(port_of(&c, &IntOrString::Int(9)), Ok(9));
        assert!(port_of(&c, &IntOrString::String("nope".into())).is_err());
    }

    #[tokio::test]
    async fn http_probe_against_a_local_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ =
                    s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        assert_eq!(http_get(false, "127.0.0.1", port, "/", &[]).await, Ok(()));
        assert!(http_get(false, "127.0.0.1", port, "/", &[]).await.unwrap_err().contains("503"));
    }

    #[tokio::test]
    async fn https_probe_accepts_a_self_signed_certificate() {
        use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
        // A throwaway self-signed certificate, made here so no key lives in the repository.
        let dir = std::env::temp_dir().join(format!("mlops-node-https-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "1", "-subj", "/CN=probe-test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl (hack/ensure-deps.sh installs it)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let certs = CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in [204, 500] {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut s = acceptor.accept(tcp).await.unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ =
                    s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        assert_eq!(http_get(true, "127.0.0.1", port, "/healthz", &[]).await, Ok(()));
        assert!(http_get(true, "127.0.0.1", port, "/healthz", &[]).await.unwrap_err().contains("500"));
    }
}
