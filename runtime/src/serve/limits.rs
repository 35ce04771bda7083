//! What one client may hold of the server: time per phase of a connection,
//! requests in flight, bytes of an answer. Pure settings and their checks; the
//! transport (`transport.rs`) and the infer handler enforce them.

use std::time::Duration;

/// Defaults, chosen for one small pod behind a Service or an ingress.
pub mod defaults {
    /// Go's `ReadHeaderTimeout` advice; a real client sends its headers in one packet.
    pub const HEADER_TIMEOUT_SECONDS: f64 = 10.0;
    /// Longer than the 60 s that ingress-nginx and cloud load balancers keep an idle
    /// upstream connection, so they close it first and never send onto one we are closing.
    pub const IDLE_TIMEOUT_SECONDS: f64 = 75.0;
    /// An inference here takes microseconds; this is for a slow upload or a stuck request.
    pub const REQUEST_TIMEOUT_SECONDS: f64 = 30.0;
    /// Far above what the CPU keeps busy (Little's law: 100k req/s at 2.5 ms each), low
    /// enough that bodies in flight stay bounded (256 × the 4 MiB body limit).
    pub const MAX_CONCURRENT_REQUESTS: usize = 256;
    /// Twice the default request body limit: about 55,000 rows of three class
    /// probabilities at the worst-case number width.
    pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
}

/// Bounds of the settings: a timeout above an hour or a limit above these is a typo, and
/// zero would refuse everything.
pub const MAX_TIMEOUT_SECONDS: f64 = 3600.0;
pub const MAX_CONCURRENT_REQUESTS: usize = 1_000_000;
pub const MIN_RESPONSE_BYTES: usize = 1024;
pub const MAX_RESPONSE_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// From a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// A keep-alive connection with nothing to do: waiting for the next request, or for the
    /// client to read an answer.
    pub idle_timeout: Duration,
    /// From the end of the headers to the answer (body upload, queueing, inference).
    pub request_timeout: Duration,
    /// Requests in flight, probes and scrapes not counted.
    pub max_concurrent_requests: usize,
    /// Upper bound of an inference answer, checked from the request's shape.
    pub max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs_f64(defaults::HEADER_TIMEOUT_SECONDS),
            idle_timeout: Duration::from_secs_f64(defaults::IDLE_TIMEOUT_SECONDS),
            request_timeout: Duration::from_secs_f64(defaults::REQUEST_TIMEOUT_SECONDS),
            max_concurrent_requests: defaults::MAX_CONCURRENT_REQUESTS,
            max_response_bytes: defaults::MAX_RESPONSE_BYTES,
        }
    }
}

/// A timeout setting in seconds (`name` is its environment variable): finite, above 0
/// and at most `MAX_TIMEOUT_SECONDS`, else a one-line error naming it.
pub fn timeout_setting(name: &str, seconds: f64) -> Result<Duration, String> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= MAX_TIMEOUT_SECONDS {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!(
            "{name} must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS}, got {seconds}"
        ))
    }
}

/// A count setting within `min..=max`, else a one-line error naming it.
pub fn count_setting(name: &str, value: usize, min: usize, max: usize) -> Result<usize, String> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{name} must be from {min} to {max}, got {value}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_must_be_positive_finite_and_at_most_an_hour() {
        let t = |v| timeout_setting("MLOPS_X_SECONDS", v);
        assert_eq!(t(0.5), Ok(Duration::from_millis(500)));
        assert_eq!(t(3600.0), Ok(Duration::from_secs(3600)));
        for bad in [0.0, -0.0, -1.0, 3600.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            let e = t(bad).unwrap_err();
            assert!(
                e.starts_with("MLOPS_X_SECONDS must be a number of seconds above 0 and at most 3600, got "),
                "{e}"
            );
        }
    }

    #[test]
    fn counts_must_be_in_range() {
        assert_eq!(count_setting("MLOPS_N", 1, 1, 10), Ok(1));
        assert_eq!(count_setting("MLOPS_N", 10, 1, 10), Ok(10));
        assert_eq!(count_setting("MLOPS_N", 0, 1, 10), Err("MLOPS_N must be from 1 to 10, got 0".into()));
        assert!(count_setting("MLOPS_N", 11, 1, 10).is_err());
    }

    #[test]
    fn defaults_are_within_their_own_bounds() {
        let d = Limits::default();
        for (name, t) in
            [("header", d.header_timeout), ("idle", d.idle_timeout), ("request", d.request_timeout)]
        {
            assert!(timeout_setting(name, t.as_secs_f64()).is_ok(), "{name}");
        }
        assert!(d.header_timeout < d.idle_timeout);
        assert!(count_setting("c", d.max_concurrent_requests, 1, MAX_CONCURRENT_REQUESTS).is_ok());
        assert!(count_setting("r", d.max_response_bytes, MIN_RESPONSE_BYTES, MAX_RESPONSE_BYTES).is_ok());
    }
}
