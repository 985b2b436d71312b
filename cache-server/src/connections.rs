//! Client connections: how many are served at once (`CACHE_MAX_CONNECTIONS`), when an idle one is closed
//! (`CACHE_IDLE_TIMEOUT`), and what happens when the process runs out of descriptors.
//!
//! - [`incoming`] accepts only while fewer than `max_connections` are open: the others wait in the kernel's
//!   listen backlog, not in this process. Accept errors that mean "out of descriptors or memory" (`EMFILE`,
//!   `ENFILE`, `ENOBUFS`, `ENOMEM`) back off for [`ACCEPT_BACKOFF`], logged at most every 10 s: tonic's own
//!   accept loop retries at once, which spun a full core while 1,100 idle sockets held 1,024 descriptors.
//! - A connection with no call in flight for `idle_timeout` is closed ([`Conn`] ends its read side). What
//!   counts is calls, tracked by [`Calls`] around the service: HTTP/2 PINGs and other frames do not keep a
//!   connection alive, so a client that connects and never calls gives its descriptor back.
//! - [`raise_descriptor_limit`] raises the soft `RLIMIT_NOFILE` to the hard limit at start.
//! - With TLS ([`crate::tls`]), each handshake runs in a task of its own, at most [`HANDSHAKE_TIMEOUT`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long accepting pauses after an accept error that means the process is out of descriptors or memory.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connection limits (the settings of the same names).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Connections with no call for this long are closed; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// Raises the soft limit on open descriptors to the hard limit; returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Figures the Metrics RPC and the Prometheus endpoint report.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections closed for being idle.
    pub closed_idle: AtomicU64,
    /// Accept errors (each followed by a pause when they mean "out of descriptors").
    pub accept_errors: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
}

/// How long a closing connection keeps reading what the client still sends (see [`Conn`]'s `poll_shutdown`).
pub const LINGER: Duration = Duration::from_secs(2);

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The accepted connections, as tonic serves them: accepted (and, with `tls`, through their handshake, each
/// in a task of its own so a slow client holds nobody else) by a task that ends when the stream is dropped.
/// Never yields an error.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    tls: Option<Arc<crate::tls::Tls>>,
) -> impl Stream<Item = io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(64);
    let accept = tokio::spawn(accept_loop(listener, limits, stats, tls, tx));
    // The accept loop ends with the stream: tonic drops it when it stops accepting.
    let stop = AbortOnDrop(accept);
    futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        move |conn| {
            let _ = &stop;
            Ok(conn)
        },
    )
}

/// Aborts the accept loop when the stream of connections is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    tls: Option<Arc<crate::tls::Tls>>,
    tx: tokio::sync::mpsc::Sender<Conn>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let Some(tls) = &tls else {
                    let conn = Conn::new(
                        Io::Plain(stream),
                        (remote, None),
                        permit,
                        limits.idle_timeout,
                        &stats,
                    );
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let (tx, stats) = (tx.clone(), stats.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let subject = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| crate::tls::subject_of(cert));
                            let io = Io::Tls(Box::new(stream));
                            let peer = (remote, subject);
                            let conn = Conn::new(io, peer, permit, limits.idle_timeout, &stats);
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) => {
                            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                });
            }
            Err(e) => {
                drop(permit);
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if out_of_resources(&e) {
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        warned = Some(Instant::now());
                        tracing::warn!(error = %e, backoff = ?ACCEPT_BACKOFF, "cannot accept connections (out of descriptors or memory): pausing; raise the descriptor limit or lower CACHE_MAX_CONNECTIONS / CACHE_IDLE_TIMEOUT");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                } else {
                    // A connection reset before it was accepted, and the like: only that one is lost.
                    tracing::debug!(error = %e, "accept failed");
                }
            }
        }
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

fn out_of_resources(e: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 (Linux).
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12)) || e.kind() == io::ErrorKind::OutOfMemory
}

/// Calls in flight on one connection and when the last one ended: what "idle" means. The connection's
/// watchdog ([`watch_idle`]) reads it, and marks it expired for the connection's read side to end.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicU64,
    /// Milliseconds since `epoch` when the last call ended.
    last_ms: AtomicU64,
    epoch: tokio::time::Instant,
    /// Set by the watchdog: the connection has been idle for the timeout.
    expired: AtomicBool,
    /// Set when the connection is dropped: the watchdog stops.
    closed: AtomicBool,
    /// The task reading the connection, woken when it expires.
    reader: AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            expired: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been without a call (zero while one is in flight; since it was accepted
    /// before its first).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// What a request's extensions carry about its connection (tonic's `ConnectInfo`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The subject of the client's certificate (mutual TLS), normalised as the tokens file's
    /// `client_cert_subject`.
    pub peer_subject: Option<Arc<str>>,
    /// The connection's calls.
    pub activity: Arc<Activity>,
}

/// Ends a connection once it has had no call for `timeout`: one timer per connection, off the request path
/// (the connection's reads only check a flag). Stops when the connection closes.
async fn watch_idle(activity: Arc<Activity>, timeout: Duration) {
    let mut wait = timeout;
    loop {
        tokio::time::sleep(wait).await;
        if activity.closed.load(Ordering::Relaxed) {
            return;
        }
        let idle_for = activity.idle_for();
        if idle_for >= timeout {
            activity.expired.store(true, Ordering::Relaxed);
            activity.reader.wake();
            return;
        }
        wait = timeout - idle_for;
    }
}

/// One accepted connection: its socket, its place among `max_connections`, and its calls.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Whether an idle timeout applies (a watchdog runs).
    watched: bool,
    /// While shutting down: how long the client's last bytes are still read (see `poll_shutdown`).
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<ConnectionStats>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        io: Io,
        (remote, peer_subject): (SocketAddr, Option<Arc<str>>),
        permit: OwnedSemaphorePermit,
        idle_timeout: Option<Duration>,
        stats: &Arc<ConnectionStats>,
    ) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        if let Some(timeout) = idle_timeout {
            tokio::spawn(watch_idle(activity.clone(), timeout));
        }
        Self {
            io,
            info: ConnInfo {
                remote,
                peer_subject,
                activity,
            },
            watched: idle_timeout.is_some(),
            linger: None,
            stats: stats.clone(),
            _permit: permit,
        }
    }

    /// Whether the watchdog found the connection idle (registers this reader to be woken when it does).
    fn idle_expired(&self, cx: &mut Context<'_>) -> bool {
        if !self.watched {
            return false;
        }
        let activity = &self.info.activity;
        activity.reader.register(cx.waker());
        activity.expired.load(Ordering::Relaxed)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.info.activity.closed.store(true, Ordering::Relaxed);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Pending if self.idle_expired(cx) => {
                // End of stream: the HTTP/2 connection ends and the socket is closed.
                self.watched = false;
                self.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(remote = %self.info.remote, "closing an idle connection");
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Sends FIN, then reads and discards what the client still sends (its window updates, its GOAWAY)
    /// until it closes too, for at most [`LINGER`]: a socket closed with unread input is reset by the kernel,
    /// and the reset discards the reply bytes still on their way (a drained download cut short).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            let sent = match &mut this.io {
                Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            };
            match sent {
                Poll::Ready(Ok(())) => this.linger = Some(Box::pin(tokio::time::sleep(LINGER))),
                other => return other,
            }
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            let read = match &mut this.io {
                Io::Plain(s) => Pin::new(s).poll_read(cx, &mut buf),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, &mut buf),
            };
            match read {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // End of stream or an error: the client is done.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let expired = this
                        .linger
                        .as_mut()
                        .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                    return if expired {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }
}

/// The layer around every service: counts each call as activity on its connection while it runs, and holds
/// a reply's in-flight permit until the reply has been sent ([`crate::inflight::hold_until_sent`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallsLayer;

impl<S> tower_layer::Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls { inner }
    }
}

/// See [`CallsLayer`].
#[derive(Debug, Clone)]
pub struct Calls<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for Calls<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let active = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| InFlight::start(info.activity.clone()));
        CallFuture {
            inner: self.inner.call(request),
            _active: active,
        }
    }
}

/// A call counted as in flight on its connection until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Calls`].
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        _active: Option<InFlight>,
    }
}

impl<F, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = Result<http::Response<tonic::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(result) => {
                this._active.take();
                Poll::Ready(result.map(|r| crate::inflight::hold_until_sent(size_limit_code(r))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// tonic answers a request over the message size limit with `OUT_OF_RANGE`; gRPC's code table says
/// `RESOURCE_EXHAUSTED` ("sent or received message was larger than configured limit"), which is what other
/// gRPC servers answer. Rewritten here, where the trailers-only answer passes (`grpc-status` in the headers).
fn size_limit_code(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    // Only an answer without a body (trailers-only: an error) can carry it; one hash lookup for those only.
    if !http_body::Body::is_end_stream(response.body()) {
        return response;
    }
    let headers = response.headers();
    let over_limit = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.starts_with(b"Error, decoded message length too large")
                || m.starts_with(b"Error,%20decoded%20message%20length%20too%20large")
        });
    if over_limit {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_errors_pause_accepting_and_others_do_not() {
        assert!(out_of_resources(&io::Error::from_raw_os_error(24)));
        assert!(out_of_resources(&io::Error::from_raw_os_error(23)));
        assert!(!out_of_resources(&io::Error::from_raw_os_error(103)));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_is_idle_only_without_calls() {
        let activity = Arc::new(Activity::new());
        let call = InFlight::start(activity.clone());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(activity.idle_for(), Duration::ZERO);
        drop(call);
        assert!(activity.idle_for() < Duration::from_millis(50));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(activity.idle_for() >= Duration::from_secs(3));
    }
}
