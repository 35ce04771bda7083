//! A deliberately small S3 client: GET and PUT of whole objects over HTTP(S),
//! signed with AWS Signature Version 4 when credentials are in the environment.
//!
//! A full SDK would triple the runtime's size and build time for two calls.
//! Endpoint and credentials follow the AWS CLI's variables: `AWS_ENDPOINT_URL_S3`
//! or `AWS_ENDPOINT_URL` (path-style addressing, e.g. MinIO), otherwise
//! `https://<bucket>.s3.<region>.amazonaws.com`; `AWS_REGION` /
//! `AWS_DEFAULT_REGION` (default `us-east-1`); `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`. Without credentials
//! requests go unsigned (public buckets). Writes of the training artifact look
//! for the same names prefixed `MLOPS_OUTPUT_` first (see [`Role::Output`]).

use super::{MAX_OBJECT_BYTES, StorageError};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Prefix of the variables the operator sets when a TrainingJob's output Secret
/// differs from its dataset's.
pub const OUTPUT_PREFIX: &str = contract::trainer_env::OUTPUT_CREDENTIALS_PREFIX;

/// Whose credentials a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Datasets and served artifacts: the plain `AWS_*` variables.
    Input,
    /// The training artifact: `MLOPS_OUTPUT_AWS_*` first, else `AWS_*`. The key
    /// pair and session token are taken as one set (a token belongs to its key),
    /// region and endpoint each fall back on their own.
    Output,
}

#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    /// `scheme://host[:port]` for path-style access; `None` means AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
}

/// Secrets never reach a log line through `{:?}`.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &redacted(&self.secret_key))
            .field("session_token", &redacted(&self.session_token))
            .finish()
    }
}

impl S3Config {
    /// The configuration for `role`, reading variables through `var` (empty
    /// values count as unset). Errors name variables, never their values.
    pub fn for_role(role: Role, var: &dyn Fn(&str) -> Option<String>) -> Result<Self, StorageError> {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let output = |k: &str| var(&format!("{OUTPUT_PREFIX}{k}"));
        // The first name set, the output-specific names before the plain ones.
        let first = |names: &[&str]| -> Option<String> {
            let specific = if role == Role::Output { names.iter().find_map(|k| output(k)) } else { None };
            specific.or_else(|| names.iter().find_map(|k| var(k)))
        };
        let (access_key, secret_key, session_token) =
            match (role, output("AWS_ACCESS_KEY_ID"), output("AWS_SECRET_ACCESS_KEY")) {
                (Role::Output, Some(id), Some(secret)) => {
                    (Some(id), Some(secret), output("AWS_SESSION_TOKEN"))
                }
                (Role::Output, Some(_), None) | (Role::Output, None, Some(_)) => {
                    return Err(StorageError::Config(format!(
                        "{OUTPUT_PREFIX}AWS_ACCESS_KEY_ID and {OUTPUT_PREFIX}AWS_SECRET_ACCESS_KEY \
                         must be set together"
                    )));
                }
                _ => (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"), var("AWS_SESSION_TOKEN")),
            };
        Ok(S3Config {
            endpoint: first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]),
            region: first(&["AWS_REGION", "AWS_DEFAULT_REGION"]).unwrap_or_else(|| "us-east-1".into()),
            access_key,
            secret_key,
            session_token,
        })
    }
}

/// Everything Signature Version 4 covers for one request.
pub struct SigningInput<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// Already URI-encoded path.
    pub canonical_uri: &'a str,
    /// Lower-case name and value of each header to sign besides `host`; must
    /// include `x-amz-date` and `x-amz-content-sha256`.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a str,
}

/// The `Authorization` header value for a request without query string.
pub fn sign_v4(input: &SigningInput<'_>) -> String {
    let mut headers: Vec<(&str, &str)> = vec![("host", input.host)];
    headers.extend(input.headers.iter().copied());
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
    let signed_headers = headers.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(";");
    let canonical_request = format!(
        "{}\n{}\n\n{}\n{}\n{}",
        input.method, input.canonical_uri, canonical_headers, signed_headers, input.payload_sha256
    );
    let date = &input.amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", input.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{}", input.secret_key).as_bytes(), date.as_bytes());
    for part in [input.region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        input.access_key
    )
}

/// HMAC (RFC 2104) over SHA-256; small enough not to need another crate.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// URI-encodes an object key the way S3 canonicalises it (every byte but
/// the unreserved set and `/`).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// URL, `Host` header and canonical path of an object.
fn object_address(cfg: &S3Config, bucket: &str, key: &str) -> (String, String, String) {
    let key = encode_key(key);
    match &cfg.endpoint {
        Some(endpoint) => {
            let endpoint = endpoint.trim_end_matches('/');
            let host = endpoint.split_once("://").map_or(endpoint, |(_, h)| h).to_string();
            let path = format!("/{bucket}/{key}");
            (format!("{endpoint}{path}"), host, path)
        }
        None => {
            let host = format!("{bucket}.s3.{}.amazonaws.com", cfg.region);
            let path = format!("/{key}");
            (format!("https://{host}{path}"), host, path)
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// Headers (name, value) to send, including `authorization` when signing.
fn signed_headers(
    cfg: &S3Config,
    method: &str,
    host: &str,
    path: &str,
    payload: &[u8],
) -> Vec<(String, String)> {
    let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let payload_sha256 = hex::encode(Sha256::digest(payload));
    let mut headers = vec![
        ("x-amz-content-sha256".to_string(), payload_sha256.clone()),
        ("x-amz-date".to_string(), amz_date.clone()),
    ];
    if let Some(token) = &cfg.session_token {
        headers.push(("x-amz-security-token".into(), token.clone()));
    }
    if let (Some(access_key), Some(secret_key)) = (&cfg.access_key, &cfg.secret_key) {
        let borrowed: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let authorization = sign_v4(&SigningInput {
            method,
            host,
            canonical_uri: path,
            headers: &borrowed,
            payload_sha256: &payload_sha256,
            amz_date: &amz_date,
            region: &cfg.region,
            access_key,
            secret_key,
        });
        headers.push(("authorization".into(), authorization));
    }
    headers
}

pub fn get(cfg: &S3Config, bucket: &str, key: &str) -> Result<Vec<u8>, StorageError> {
    let uri = format!("s3://{bucket}/{key}");
    let remote = |reason: String| StorageError::Remote { op: "GET", uri: uri.clone(), reason };
    let (url, host, path) = object_address(cfg, bucket, key);
    let mut request = agent().get(&url);
    for (k, v) in signed_headers(cfg, "GET", &host, &path, b"") {
        request = request.header(k, v);
    }
    let mut response = request.call().map_err(|e| remote(e.to_string()))?;
    if !response.status().is_success() {
        return Err(remote(format!("HTTP {}", response.status())));
    }
    response.body_mut().with_config().limit(MAX_OBJECT_BYTES).read_to_vec().map_err(|e| remote(e.to_string()))
}

pub fn put(
    cfg: &S3Config,
    bucket: &str,
    key: &str,
    bytes: &[u8],
    content_type: &str,
) -> Result<(), StorageError> {
    let uri = format!("s3://{bucket}/{key}");
    let remote = |reason: String| StorageError::Remote { op: "PUT", uri: uri.clone(), reason };
    let (url, host, path) = object_address(cfg, bucket, key);
    let mut request = agent().put(&url).header("content-type", content_type);
    for (k, v) in signed_headers(cfg, "PUT", &host, &path, bytes) {
        request = request.header(k, v);
    }
    let response = request.send(bytes).map_err(|e| remote(e.to_string()))?;
    if !response.status().is_success() {
        return Err(remote(format!("HTTP {}", response.status())));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A dataset Secret in `AWS_*` and a different output Secret in `MLOPS_OUTPUT_AWS_*`,
    /// as the operator sets them, plus `extra`.
    pub(in crate::storage) fn two_secrets(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("AWS_ACCESS_KEY_ID", "AKIDDATASET"),
            ("AWS_SECRET_ACCESS_KEY", "dataset-secret"),
            ("AWS_SESSION_TOKEN", "dataset-token"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://datasets.example:9000"),
            ("MLOPS_OUTPUT_AWS_ACCESS_KEY_ID", "AKIDOUTPUT"),
            ("MLOPS_OUTPUT_AWS_SECRET_ACCESS_KEY", "output-secret"),
            ("MLOPS_OUTPUT_AWS_REGION", "us-west-2"),
            ("MLOPS_OUTPUT_AWS_ENDPOINT_URL", "http://models.example:9000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn select(role: Role, env: &HashMap<String, String>) -> Result<S3Config, StorageError> {
        S3Config::for_role(role, &|k| env.get(k).cloned())
    }

    #[test]
    fn reads_use_the_plain_aws_variables_only() {
        let cfg = select(Role::Input, &two_secrets(&[])).unwrap();
        assert_eq!(
            cfg,
            S3Config {
                endpoint: Some("http://datasets.example:9000".into()),
                region: "eu-west-1".into(),
                access_key: Some("AKIDDATASET".into()),
                secret_key: Some("dataset-secret".into()),
                session_token: Some("dataset-token".into()),
            }
        );
    }

    #[test]
    fn writes_use_the_output_set_without_borrowing_the_dataset_token() {
        let cfg = select(Role::Output, &two_secrets(&[])).unwrap();
        assert_eq!(
            cfg,
            S3Config {
                endpoint: Some("http://models.example:9000".into()),
                region: "us-west-2".into(),
                access_key: Some("AKIDOUTPUT".into()),
                secret_key: Some("output-secret".into()),
                session_token: None,
            }
        );
        let with_token = two_secrets(&[("MLOPS_OUTPUT_AWS_SESSION_TOKEN", "output-token")]);
        assert_eq!(select(Role::Output, &with_token).unwrap().session_token.as_deref(), Some("output-token"));
    }

    #[test]
    fn writes_fall_back_to_the_plain_variables() {
        // One Secret for both: the operator sets no MLOPS_OUTPUT_* then.
        let mut env = two_secrets(&[]);
        env.retain(|k, _| !k.starts_with(OUTPUT_PREFIX));
        assert_eq!(select(Role::Output, &env).unwrap(), select(Role::Input, &env).unwrap());
        // Empty values count as unset.
        env.insert("MLOPS_OUTPUT_AWS_ACCESS_KEY_ID".into(), String::new());
        env.insert("MLOPS_OUTPUT_AWS_SECRET_ACCESS_KEY".into(), String::new());
        assert_eq!(select(Role::Output, &env).unwrap(), select(Role::Input, &env).unwrap());

        // Output keys without their own region or endpoint: those come from AWS_* each.
        let mut env = two_secrets(&[]);
        env.remove("MLOPS_OUTPUT_AWS_REGION");
        env.remove("MLOPS_OUTPUT_AWS_ENDPOINT_URL");
        let cfg = select(Role::Output, &env).unwrap();
        assert_eq!(cfg.access_key.as_deref(), Some("AKIDOUTPUT"));
        assert_eq!(cfg.region, "eu-west-1");
        assert_eq!(cfg.endpoint.as_deref(), Some("http://datasets.example:9000"));

        let cfg = select(Role::Output, &HashMap::new()).unwrap();
        assert_eq!((cfg.region.as_str(), cfg.access_key, cfg.endpoint), ("us-east-1", None, None));
    }

    #[test]
    fn output_specific_names_win_over_every_plain_one() {
        let env = two_secrets(&[
            ("AWS_ENDPOINT_URL_S3", "http://s3-specific.example"),
            ("MLOPS_OUTPUT_AWS_ENDPOINT_URL_S3", "http://models-s3.example"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
        ]);
        assert_eq!(
            select(Role::Input, &env).unwrap().endpoint.as_deref(),
            Some("http://s3-specific.example")
        );
        let out = select(Role::Output, &env).unwrap();
        assert_eq!(out.endpoint.as_deref(), Some("http://models-s3.example"));
        assert_eq!(out.region, "us-west-2");
        let mut env = env;
        env.remove("MLOPS_OUTPUT_AWS_ENDPOINT_URL_S3");
        assert_eq!(
            select(Role::Output, &env).unwrap().endpoint.as_deref(),
            Some("http://models.example:9000")
        );
    }

    #[test]
    fn a_half_set_output_pair_is_refused_without_echoing_values() {
        for missing in ["MLOPS_OUTPUT_AWS_ACCESS_KEY_ID", "MLOPS_OUTPUT_AWS_SECRET_ACCESS_KEY"] {
            let mut env = two_secrets(&[]);
            env.remove(missing);
            let msg = select(Role::Output, &env).unwrap_err().to_string();
            assert!(msg.contains("MLOPS_OUTPUT_AWS_SECRET_ACCESS_KEY"), "{msg}");
            assert!(!msg.contains("AKIDOUTPUT") && !msg.contains("output-secret"), "{msg}");
            // Reads do not care.
            assert!(select(Role::Input, &env).is_ok());
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let shown = format!("{:?}", select(Role::Input, &two_secrets(&[])).unwrap());
        assert!(!shown.contains("dataset-secret") && !shown.contains("dataset-token"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The "GET Object" example of the S3 SigV4 documentation.
    #[test]
    fn signature_matches_the_documented_get_object_example() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let auth = sign_v4(&SigningInput {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            canonical_uri: "/test.txt",
            headers: &[
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", empty),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: empty,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        });
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn keys_are_encoded_per_byte() {
        assert_eq!(encode_key("a b/ü+c.csv"), "a%20b/%C3%BC%2Bc.csv");
    }

    /// Serves one request on loopback and hands back its head and body.
    pub(in crate::storage) fn one_shot_server(
        status: &'static str,
        body: &'static [u8],
    ) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let mut request_body = vec![0; len];
            reader.read_exact(&mut request_body).unwrap();
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            stream.write_all(body).unwrap();
            (head, request_body)
        });
        (endpoint, handle)
    }

    fn test_config(endpoint: String) -> S3Config {
        S3Config {
            endpoint: Some(endpoint),
            region: "eu-west-1".into(),
            access_key: Some("AKIDTEST".into()),
            secret_key: Some("secret".into()),
            session_token: None,
        }
    }

    #[test]
    fn get_sends_a_signed_path_style_request() {
        let (endpoint, server) = one_shot_server("200 OK", b"a,b\n1,2\n");
        let body = get(&test_config(endpoint), "data", "iris/v1.csv").unwrap();
        assert_eq!(body, b"a,b\n1,2\n");
        let (head, _) = server.join().unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("GET /data/iris/v1.csv HTTP/1.1"), "{head}");
        assert!(lower.contains("authorization: aws4-hmac-sha256 credential=akidtest/"));
        assert!(lower.contains("/eu-west-1/s3/aws4_request"));
        assert!(lower.contains("x-amz-content-sha256: e3b0c442"));
    }

    #[test]
    fn put_sends_the_body_and_its_hash() {
        let (endpoint, server) = one_shot_server("200 OK", b"");
        put(&test_config(endpoint), "out", "m/model.json", b"{}", "application/json").unwrap();
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("PUT /out/m/model.json HTTP/1.1"), "{head}");
        assert_eq!(body, b"{}");
        let expected = hex::encode(Sha256::digest(b"{}"));
        assert!(head.to_ascii_lowercase().contains(&expected));
    }

    #[test]
    fn http_errors_name_the_object_and_status() {
        let (endpoint, server) = one_shot_server("403 Forbidden", b"denied");
        let err = get(&test_config(endpoint), "data", "x.csv").unwrap_err();
        server.join().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("s3://data/x.csv") && msg.contains("403"), "{msg}");
    }
}
