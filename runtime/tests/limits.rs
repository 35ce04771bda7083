//! The server's limits against the built binary, over real sockets on
//! 127.0.0.1: slow headers are cut off, idle connections are closed, requests
//! beyond the concurrency limit get 503 at once while probes still answer, a
//! request past its time gets 503, an answer too large to build is refused
//! small, and unusable settings stop the server at start.

mod common;

use common::*;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mlops-runtime");

/// `mlops-runtime serve` of an iris model on 127.0.0.1, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let model = train_iris(dir.path(), "");
        let mut child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("MLOPS_MODEL_URI", format!("file://{}", model.display()))
            .env("MLOPS_MODEL_VERSION", "v1")
            .env("MLOPS_HTTP_PORT", "0")
            .env("POD_IP", "127.0.0.1")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.split("address=").nth(1).map(|a| a.trim().to_string()))
            .expect("the server logs its address");
        // Keep draining the log, so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let server = Server { child, addr, _dir: dir };
        let ready = Instant::now();
        while get(&server.url("/v2/health/ready")).0 != 200 {
            assert!(ready.elapsed() < Duration::from_secs(10), "not ready in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn metric(&self, series: &str) -> Option<f64> {
        metric(&get(&self.url("/metrics")).1, series)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one HTTP/1.1 answer (with a Content-Length) from `s`.
fn read_answer(s: &mut TcpStream) -> std::io::Result<Answer> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        bytes.push(byte[0]);
    }
    let head = String::from_utf8(bytes).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut answer = Answer { status, head, body: String::new() };
    let length: usize = answer.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    answer.body = String::from_utf8(body).unwrap();
    Ok(answer)
}

fn request(method: &str, path: &str, body: &str) -> String {
    partial_request(method, path, body, body.len())
}

/// A request whose headers announce all of `body` but that carries only its first `sent` bytes.
fn partial_request(method: &str, path: &str, body: &str, sent: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..sent]
    )
}

/// One request on a new connection.
fn exchange(server: &Server, method: &str, path: &str, body: &str) -> Answer {
    let mut s = server.connect();
    s.write_all(request(method, path, body).as_bytes()).unwrap();
    read_answer(&mut s).unwrap()
}

fn error_of(answer: &Answer) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&answer.body).unwrap_or_else(|_| panic!("{}", answer.body));
    json["error"].as_str().unwrap_or_else(|| panic!("{}", answer.body)).to_string()
}

/// Whether the server closed `s`: EOF or reset; `false` if it is still open after `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    match s.read(&mut [0u8; 256]) {
        Ok(0) => true,
        Ok(n) => panic!("the server answered {n} bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

#[test]
fn slow_headers_are_cut_off_while_idle_connections_keep_their_longer_limit() {
    let server = Server::start(&[("MLOPS_HEADER_TIMEOUT_SECONDS", "2"), ("MLOPS_IDLE_TIMEOUT_SECONDS", "5")]);
    let mut idle = server.connect();
    // A slow-loris client: one byte of its headers per second.
    let mut slow = server.connect();
    let headers = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-Slow: 0123456789abcdef\r\n\r\n";
    let started = Instant::now();
    let mut sent = 0;
    let cut_after = loop {
        if slow.write_all(&headers[sent..=sent]).is_err() {
            break started.elapsed();
        }
        sent += 1;
        if closed_within(&mut slow, Duration::from_secs(1)) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "still connected after {sent} of {} header bytes in {:?}",
            headers.len(),
            started.elapsed()
        );
    };
    assert!(cut_after >= Duration::from_millis(1900), "cut after {cut_after:?}, before the header timeout");
    assert!(sent < headers.len());
    assert_eq!(server.metric(r#"mlops_server_rejected_total{reason="header_timeout"}"#), Some(1.0));

    // The connection that sent nothing is idle, not slow: still served.
    idle.write_all(request("GET", "/v2/health/ready", "").as_bytes()).unwrap();
    let answer = read_answer(&mut idle).unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, r#"{"ready":true}"#));
    // Then closed once idle for the idle timeout, and not counted as a refusal.
    let answered = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(10)), "idle connection still open");
    let idle_for = answered.elapsed();
    assert!(idle_for >= Duration::from_millis(4900) && idle_for < Duration::from_secs(8), "{idle_for:?}");
    assert_eq!(server.metric(r#"mlops_server_rejected_total{reason="header_timeout"}"#), Some(1.0));
}

#[test]
fn beyond_the_concurrency_limit_requests_get_503_at_once_while_probes_answer() {
    let server = Server::start(&[("MLOPS_MAX_CONCURRENT_REQUESTS", "1")]);
    let infer = "/v2/models/iris/infer";
    let body = rows_request(&[[6.8, 3.1, 5.7, 2.2]]);
    // Held in flight for real: its headers are in, its body is still uploading.
    let mut held = server.connect();
    held.write_all(partial_request("POST", infer, &body, 10).as_bytes()).unwrap();
    // Its headers are read once it counts as in flight (bounded: the 503 below is the check).
    let waiting = Instant::now();
    while server.metric("mlops_server_requests_in_flight") != Some(1.0)
        && waiting.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(10));
    }

    let started = Instant::now();
    let refused = exchange(&server, "POST", infer, &body);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(started.elapsed() < Duration::from_secs(1), "not refused at once: {:?}", started.elapsed());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(error_of(&refused).contains("MLOPS_MAX_CONCURRENT_REQUESTS"), "{}", refused.body);
    // Metadata counts like any request; probes and scrapes do not.
    assert_eq!(exchange(&server, "GET", "/v2/models/iris", "").status, 503);
    for probe in
        ["/v2/health/ready", "/v2/health/live", "/v2/models/iris/ready", "/v2/models/iris/versions/v1/ready"]
    {
        let answer = exchange(&server, "GET", probe, "");
        assert_eq!(answer.status, 200, "{probe}: {}", answer.body);
    }
    assert_eq!(server.metric(r#"mlops_server_rejected_total{reason="overloaded"}"#), Some(2.0));
    assert_eq!(server.metric(r#"mlops_requests_total{code="503""#), Some(1.0));

    // The held request completes normally and gives its place back.
    held.write_all(&body.as_bytes()[10..]).unwrap();
    let answer = read_answer(&mut held).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("virginica"), "{}", answer.body);
    assert_eq!(exchange(&server, "POST", infer, &body).status, 200);
    assert_eq!(server.metric("mlops_server_requests_in_flight"), Some(0.0));
}

#[test]
fn a_request_past_the_request_timeout_gets_503_json() {
    let server = Server::start(&[("MLOPS_REQUEST_TIMEOUT_SECONDS", "1")]);
    let body = rows_request(&[[6.8, 3.1, 5.7, 2.2]]);
    // A body that stops arriving halfway.
    let mut stalled = server.connect();
    let started = Instant::now();
    stalled
        .write_all(partial_request("POST", "/v2/models/iris/infer", &body, body.len() / 2).as_bytes())
        .unwrap();
    let answer = read_answer(&mut stalled).expect("an answer within 10 s");
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(error_of(&answer), "no answer within 1 s (MLOPS_REQUEST_TIMEOUT_SECONDS)");
    assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(server.metric(r#"mlops_server_rejected_total{reason="request_timeout"}"#), Some(1.0));
    assert_eq!(server.metric(r#"mlops_requests_total{code="503""#), Some(1.0));
    // A request on time is answered as usual.
    assert_eq!(exchange(&server, "POST", "/v2/models/iris/infer", &body).status, 200);
}

fn zeros_request(rows: usize) -> String {
    format!(
        r#"{{"inputs":[{{"name":"x","shape":[{rows},4],"datatype":"FP64","data":[{}0]}}],"outputs":[{{"name":"predict_proba"}}]}}"#,
        "0,".repeat(rows * 4 - 1)
    )
}

#[test]
fn an_answer_over_the_response_limit_is_refused_small_before_scoring() {
    let server = Server::start(&[]);
    let infer = "/v2/models/iris/infer";
    // Just under the default 4 MiB body limit; its probabilities would be ~30 MB.
    let huge = zeros_request(500_000);
    assert!(huge.len() < 4 << 20);
    let refused = exchange(&server, "POST", infer, &huge);
    assert_eq!(refused.status, 413, "{}", &refused.body[..refused.body.len().min(300)]);
    assert!(refused.body.len() < 512, "a {}-byte refusal", refused.body.len());
    let error = error_of(&refused);
    assert!(error.contains("over the 8388608-byte limit (MLOPS_MAX_RESPONSE_BYTES)"), "{error}");
    assert_eq!(server.metric("mlops_inference_rows_total"), Some(0.0), "rows were scored");
    assert_eq!(server.metric(r#"mlops_server_rejected_total{reason="response_too_large"}"#), Some(1.0));

    // The refusal says how many rows fit; that many are answered, within the limit.
    let fit: usize = error.split("send at most ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(fit > 10_000, "{error}");
    let answer = exchange(&server, "POST", infer, &zeros_request(fit));
    assert_eq!(answer.status, 200);
    assert!(answer.body.len() <= 8 << 20 && answer.body.len() > 1 << 20, "{} bytes", answer.body.len());
    assert_eq!(exchange(&server, "POST", infer, &zeros_request(fit + 1)).status, 413);
    assert_eq!(server.metric("mlops_inference_rows_total"), Some(fit as f64));
}

#[test]
fn unusable_limits_stop_the_server_at_start_with_one_line() {
    let cases = [
        ("MLOPS_HEADER_TIMEOUT_SECONDS", "0", "must be a number of seconds above 0 and at most 3600, got 0"),
        ("MLOPS_IDLE_TIMEOUT_SECONDS", "-5", "must be a number of seconds above 0 and at most 3600, got -5"),
        (
            "MLOPS_REQUEST_TIMEOUT_SECONDS",
            "NaN",
            "must be a number of seconds above 0 and at most 3600, got NaN",
        ),
        (
            "MLOPS_REQUEST_TIMEOUT_SECONDS",
            "inf",
            "must be a number of seconds above 0 and at most 3600, got inf",
        ),
        ("MLOPS_MAX_CONCURRENT_REQUESTS", "0", "must be from 1 to 1000000, got 0"),
        ("MLOPS_MAX_RESPONSE_BYTES", "100", "must be from 1024 to 1073741824, got 100"),
    ];
    for (name, value, expected) in cases {
        let out = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("MLOPS_MODEL_URI", "/nonexistent/model.json")
            .env("MLOPS_HTTP_HOST", "127.0.0.1")
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        let line = format!("mlops-runtime serve: configuration: {name} {expected}");
        assert!(stderr.lines().any(|l| l == line), "{name}={value}: {stderr}");
    }
    // Not a number at all: clap's refusal, naming the variable.
    let out = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("MLOPS_MODEL_URI", "/nonexistent/model.json")
        .env("MLOPS_MAX_CONCURRENT_REQUESTS", "many")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("MLOPS_MAX_CONCURRENT_REQUESTS"), "{stderr}");
}
