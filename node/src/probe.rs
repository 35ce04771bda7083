//! Readiness, liveness and startup probes: httpGet, tcpSocket and exec (gRPC probes are
//! approximated by a TCP connect).

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
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
            http_get(&host, port, &path, &headers).await
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

async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<(), String> {
    let mut s = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
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
        assert_eq!(http_get("127.0.0.1", port, "/", &[]).await, Ok(()));
        assert!(http_get("127.0.0.1", port, "/", &[]).await.unwrap_err().contains("503"));
    }
}
