//! Load generator: a small blocking HTTP/1.1 client to a Service's ClusterIP, one connection
//! per request (kube-proxy balances connections), bounded in time and in requests.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    /// HTTP status, 0 when the connection failed.
    pub code: u16,
    /// `model_version` from a 200 answer.
    pub version: String,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<Hit>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const INFER_BODY: &str =
    r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}"#;
const LOAD_MAX_DURATION: Duration = Duration::from_secs(900);
const LOAD_MAX_REQUESTS: usize = 200_000;

/// One inference request: the HTTP status (0 when the connection failed) and the
/// `model_version` that answered.
pub fn infer_once(addr: SocketAddr) -> (u16, String) {
    let attempt = || -> Option<(u16, String)> {
        assert!(
            testkit::is_local_cluster_address(addr.ip()),
            "the load generator only talks to this machine"
        );
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(
            s,
            "POST /v2/models/iris/infer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{INFER_BODY}",
            INFER_BODY.len()
        )
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf);
        let code: u16 = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        let version = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("model_version")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        Some((code, version))
    };
    attempt().unwrap_or((0, String::new()))
}

impl Load {
    /// About `per_second` requests a second until stopped (or the bounds are reached).
    pub fn start(addr: SocketAddr, per_second: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let gap = Duration::from_secs(1) / per_second.max(1);
        let thread = {
            let (stop, hits) = (stop.clone(), hits.clone());
            std::thread::spawn(move || {
                let began = Instant::now();
                while !stop.load(Ordering::Relaxed) && began.elapsed() < LOAD_MAX_DURATION {
                    let t = Instant::now();
                    let (code, version) = infer_once(addr);
                    let mut h = hits.lock().unwrap();
                    if h.len() >= LOAD_MAX_REQUESTS {
                        break;
                    }
                    h.push(Hit { at: t, code, version });
                    drop(h);
                    std::thread::sleep(gap.saturating_sub(t.elapsed()));
                }
            })
        };
        Load { stop, hits, thread: Some(thread) }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn since(&self, t: Instant) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.at >= t).collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn summary(hits: &[Hit]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in hits {
        *m.entry(format!("{} {}", h.code, h.version)).or_default() += 1;
    }
    m
}
