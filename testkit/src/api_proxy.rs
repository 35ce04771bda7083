//! A TCP proxy between one operator and the API server that a test can stall: a network
//! partition between a replica and the control plane, with nothing closed or refused.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
};

use crate::{kubeconfig_path, node_ip, repo_root};

/// Forwards TCP to the API server until [`ApiProxy::stall`]; stops when dropped.
pub struct ApiProxy {
    kubeconfig: PathBuf,
    stalled: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl ApiProxy {
    /// Listens on the node address (the API server's certificate names it, so TLS checks
    /// pass through the proxy) and writes `target/e2e-logs/<name>.kubeconfig`.
    pub async fn start(name: &str) -> ApiProxy {
        let text = std::fs::read_to_string(kubeconfig_path()).expect("the kubeconfig");
        let server =
            text.lines().find_map(|l| l.trim().strip_prefix("server: https://")).expect("a server line");
        let upstream: SocketAddr =
            server.parse().unwrap_or_else(|e| panic!("the API server address {server}: {e}"));
        let listener = TcpListener::bind((node_ip(), 0)).await.expect("a port on the node address");
        let addr = listener.local_addr().expect("the proxy's address");
        let kubeconfig = repo_root().join(format!("target/e2e-logs/{name}.kubeconfig"));
        std::fs::create_dir_all(kubeconfig.parent().unwrap()).expect("log dir");
        std::fs::write(&kubeconfig, text.replace(&format!("https://{upstream}"), &format!("https://{addr}")))
            .expect("writing the proxy's kubeconfig");
        let (stalled, flow) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, flow.clone()));
            }
        });
        ApiProxy { kubeconfig, stalled, accept }
    }

    /// A copy of the test kubeconfig whose server is this proxy.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Stops forwarding in both directions without closing anything: requests and
    /// responses on their way are held, new connections are accepted and wait.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again, the held bytes first.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut flow: watch::Receiver<bool>) {
    if flow.wait_for(|stalled| !*stalled).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let ((client_read, client_write), (server_read, server_write)) =
        (client.into_split(), server.into_split());
    tokio::join!(pump(client_read, server_write, flow.clone()), pump(server_read, client_write, flow));
}

/// Copies `from` to `to`; whatever arrives while stalled (bytes or the end of the stream)
/// is passed on only after the resume.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flow: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = from.read(&mut buf).await;
        if flow.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        match read {
            Ok(n) if n > 0 => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => {
                let _ = to.shutdown().await;
                return;
            }
        }
    }
}
