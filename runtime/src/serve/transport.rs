//! The HTTP/1.1 transport: the accept loop, and what bounds a client's hold on
//! the server (the numbers are in `limits.rs`):
//!
//! - A connection waiting for its next request may stay idle `idle_timeout`;
//!   once a request's first byte arrives, its headers must be complete within
//!   `header_timeout` (so a client dribbling headers is cut off); past either
//!   the connection is closed. `Watched`, the connection's socket, keeps both
//!   clocks: one timer per connection, moved only when a deadline comes nearer,
//!   so a request costs one clock read, not a timer.
//! - A request whose headers are complete is admitted unless
//!   `max_concurrent_requests` are already in flight: then it is answered 503
//!   with `Retry-After` at once, its body unread. Probes and scrapes are not
//!   counted (see `exempt`).
//! - An admitted request has `request_timeout` from the end of its headers to
//!   its answer (body upload, queueing, inference), else 503; the timer starts
//!   only if the answer is not ready at once. Inference itself runs on the
//!   worker thread without yielding: its time is bounded by the body and answer
//!   size limits, not by this timer.

use super::AppState;
use super::metrics::Reason;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Serves `router` on `listener` until `stop` resolves; then closes the
/// listener, lets each connection finish its request in flight, and returns
/// when all are closed.
pub async fn serve(
    state: Arc<AppState>,
    router: Router,
    listener: TcpListener,
    stop: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared { state, router, epoch: Instant::now() });
    let mut http = http1::Builder::new();
    // hyper's own header timer also runs while a keep-alive connection is idle,
    // which would make the idle limit the header limit; `Watched` keeps them apart.
    http.header_read_timeout(None);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        spawn_connection(&shared, &http, &graceful, tcp);
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection in its own task: its socket watched for the idle and
/// header limits, each request answered by `Shared::answer`.
fn spawn_connection(
    shared: &Arc<Shared>,
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    tcp: TcpStream,
) {
    let phase = Arc::new(Phase::idle_since(shared.nanos()));
    let io = TokioIo::new(Watched::new(tcp, phase.clone(), shared.clone()));
    let shared = shared.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        phase.state.store(BUSY, Relaxed);
        let (shared, phase) = (shared.clone(), phase.clone());
        async move {
            let response = shared.answer(request).await;
            phase.since.store(shared.nanos(), Relaxed);
            phase.state.store(IDLE, Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = graceful.watch(http.serve_connection(io, service));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
}

/// As `axum::serve` (after hyper 0.14): a failed handshake is the client's
/// business; anything else (e.g. out of file descriptors) is logged and the
/// loop pauses, so that it does not spin while connections close.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What every connection shares.
struct Shared {
    state: Arc<AppState>,
    router: Router,
    /// Origin of the connections' clocks (`Phase::since`).
    epoch: Instant,
}

/// A place among the admitted requests, given back when dropped.
struct Pass<'a>(&'a AtomicUsize);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Shared {
    fn nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// A place among the requests in flight, if one is free.
    fn admit(&self) -> Option<Pass<'_>> {
        let in_flight = &self.state.in_flight;
        let before = in_flight.fetch_add(1, Relaxed);
        let pass = Pass(in_flight);
        (before < self.state.config.limits.max_concurrent_requests).then_some(pass)
    }

    async fn answer(&self, request: Request<Incoming>) -> Response {
        let limits = &self.state.config.limits;
        let exempt = exempt(&request);
        let inference = request.method() == Method::POST && request.uri().path().ends_with("/infer");
        let _pass = if exempt {
            None
        } else {
            let Some(pass) = self.admit() else {
                let mut refused = super::http::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "overloaded: {} requests in flight (MLOPS_MAX_CONCURRENT_REQUESTS); retry later",
                        limits.max_concurrent_requests
                    ),
                );
                refused.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return self.refused(Reason::Overloaded, inference, 0.0, refused);
            };
            Some(pass)
        };
        let call = self.router.clone().oneshot(request.map(Body::new));
        match within(limits.request_timeout, call).await {
            Some(Ok(response)) => response,
            Some(Err(never)) => match never {},
            None => {
                let seconds = limits.request_timeout.as_secs_f64();
                let refused = super::http::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("no answer within {seconds} s (MLOPS_REQUEST_TIMEOUT_SECONDS)"),
                );
                self.refused(Reason::RequestTimeout, inference, seconds, refused)
            }
        }
    }

    /// Counts a refusal; an inference request also in `mlops_requests_total`,
    /// since its client got this answer.
    fn refused(&self, reason: Reason, inference: bool, seconds: f64, response: Response) -> Response {
        self.state.limit_metrics.reject(reason);
        if inference && let Some(served) = self.state.served.get() {
            served.metrics.observe_request(response.status().as_u16(), seconds);
        }
        response
    }
}

/// `answer`, unless it takes longer than `limit` once it has to wait. An answer
/// ready at its first poll (a small inference, whose body came with its
/// headers) never touches the timer.
async fn within<T>(limit: Duration, answer: impl Future<Output = T>) -> Option<T> {
    let mut answer = pin!(answer);
    match poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await {
        Poll::Ready(value) => Some(value),
        Poll::Pending => tokio::time::timeout(limit, answer).await.ok(),
    }
}

/// Liveness, readiness and `/metrics` are always admitted: they cost next to
/// nothing, and refusing them under load would do harm. A failed liveness
/// probe restarts a pod that is only busy; failed readiness takes every
/// busy pod out of the Service at once and sends its load to the rest; a
/// failed scrape hides the overload from dashboards and from the rollout's
/// analysis.
fn exempt(request: &Request<Incoming>) -> bool {
    let path = request.uri().path();
    request.method() == Method::GET
        && (matches!(path, "/metrics" | "/v2/health/live" | "/v2/health/ready")
            || (path.starts_with("/v2/models/") && path.ends_with("/ready")))
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// Where a connection is in its request cycle, and since when: `IDLE` until a
/// request's first byte, `HEAD` until its headers are complete, `BUSY` until
/// it is answered. Shared by the socket (which sees bytes arrive) and the
/// service (which sees requests start and end), both in the connection's task.
struct Phase {
    state: AtomicU8,
    /// Nanoseconds since `Shared::epoch`; `UNTIMED` in `HEAD` until the headers
    /// first have to wait for more bytes (most arrive whole, and need no clock).
    since: AtomicU64,
}

const UNTIMED: u64 = u64::MAX;

impl Phase {
    fn idle_since(nanos: u64) -> Phase {
        Phase { state: AtomicU8::new(IDLE), since: AtomicU64::new(nanos) }
    }
}

/// A connection's socket that fails with `TimedOut` (closing the connection)
/// when the client keeps it waiting too long: `idle_timeout` while idle (no
/// next request, or an answer not read), `header_timeout` from a request's
/// first byte. A busy connection is the request timeout's business.
struct Watched {
    io: TcpStream,
    phase: Arc<Phase>,
    shared: Arc<Shared>,
    timer: Pin<Box<Sleep>>,
    /// The timer's deadline: never after the current deadline, so it wakes in time.
    armed: Instant,
}

impl Watched {
    fn new(io: TcpStream, phase: Arc<Phase>, shared: Arc<Shared>) -> Watched {
        let armed = shared.instant(phase.since.load(Relaxed)) + shared.state.config.limits.idle_timeout;
        Watched { io, phase, shared, timer: Box::pin(tokio::time::sleep_until(armed)), armed }
    }

    /// When the client's time is up, unless the connection is busy.
    fn deadline(&self) -> Option<Instant> {
        let limits = &self.shared.state.config.limits;
        let allowed = match self.phase.state.load(Relaxed) {
            IDLE => limits.idle_timeout,
            HEAD => limits.header_timeout,
            _ => return None,
        };
        let mut since = self.phase.since.load(Relaxed);
        if since == UNTIMED {
            since = self.shared.nanos();
            self.phase.since.store(since, Relaxed);
        }
        Some(self.shared.instant(since) + allowed)
    }

    fn bytes_arrived(&self) {
        if self.phase.state.load(Relaxed) == IDLE {
            self.phase.since.store(UNTIMED, Relaxed);
            self.phase.state.store(HEAD, Relaxed);
        }
    }

    /// For a read or write that must wait: pending until the deadline, then the
    /// error that ends the connection. The timer is moved only when the
    /// deadline came nearer or when it fired early.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let Some(deadline) = self.deadline() else { return Poll::Pending };
            if deadline < self.armed {
                self.rearm(deadline);
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.armed >= deadline {
                let waited = if self.phase.state.load(Relaxed) == HEAD {
                    self.shared.state.limit_metrics.reject(Reason::HeaderTimeout);
                    "headers not complete in time (MLOPS_HEADER_TIMEOUT_SECONDS)"
                } else {
                    "idle too long (MLOPS_IDLE_TIMEOUT_SECONDS)"
                };
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, waited));
            }
            self.rearm(deadline);
        }
    }

    fn rearm(&mut self, deadline: Instant) {
        self.timer.as_mut().reset(deadline);
        self.armed = deadline;
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_deadline(cx).map(Err),
            failed => failed,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            done => done,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            done => done,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
