//! Connections that cannot hold the service hostage. [`GuardedAcceptor`]
//! wraps the listener:
//!
//! - **A cap on open connections** (`MAX_CONNECTIONS`): past it, the
//!   acceptor waits for a connection to close before it accepts the next,
//!   so new clients wait in the kernel's listen backlog instead of taking
//!   the process's last file descriptors (HAProxy's `maxconn` works the
//!   same way).
//! - **A header-read timeout** (`HEADER_READ_TIMEOUT_SECS`): a request's
//!   header must be complete (`\r\n\r\n`) within this time from its first
//!   byte (from the accept, for a connection's first request). Trickling a
//!   byte now and then does not extend it: this is what stops slowloris.
//! - **An idle timeout** (`IDLE_TIMEOUT_SECS`): a keep-alive connection
//!   between requests, or a request whose body or response stalls, is
//!   closed once nothing was read or written for this long.
//!
//! A timeout fails the connection's next read with `TimedOut`, and the
//! HTTP server drops the connection at once. poem's own
//! `Server::idle_timeout` cannot do this for a half-sent request (it asks
//! hyper for a graceful shutdown, which waits for the request in progress
//! forever), and hyper's `header_read_timeout` is not reachable through
//! poem.
//!
//! The phases are told apart by watching bytes, not by parsing HTTP: bytes
//! after a response was written start a new header; `\r\n\r\n` ends it
//! (the HTTP/2 preface contains one, so an h2c connection leaves the header
//! phase with its preface). Two consequences, both rare: a client that
//! pipelines its next request into the same read as a body is held to the
//! header timeout while it then waits; and a body sent after a
//! `100 Continue` must arrive within the header timeout.
//!
//! `/metrics`: `chat_http_connections_open` (gauge) and
//! `chat_http_connections_timed_out_total{reason}` (`header`, `idle`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::telemetry::metrics;

/// The limits every accepted connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time allowed for a request's header, from its first byte.
    pub header_read_timeout: Duration,
    /// Silence allowed between requests, or within a body or response.
    pub idle_timeout: Duration,
    /// Connections open at once; the next waits to be accepted.
    pub max_connections: usize,
}

/// Where a connection is in its request/response cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request header: the header deadline runs.
    Header,
    /// The header is in; body and response: the idle deadline runs.
    Request,
    /// A response was written; waiting for the next request.
    Idle,
}

/// An accepted connection held to [`ConnectionLimits`]; it holds one of
/// the acceptor's permits until dropped.
pub struct GuardedIo<T> {
    inner: T,
    limits: ConnectionLimits,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    /// The last bytes of the header read so far (a `\r\n\r\n` can be split
    /// across reads).
    tail: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl<T> GuardedIo<T> {
    fn new(inner: T, limits: ConnectionLimits, permit: OwnedSemaphorePermit) -> Self {
        metrics::connection_opened();
        Self {
            inner,
            limits,
            phase: Phase::Header,
            deadline: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
            tail: Vec::with_capacity(3),
            _permit: permit,
        }
    }

    fn extend_deadline(&mut self, by: Duration) {
        self.deadline.as_mut().reset(Instant::now() + by);
    }

    /// Accounts for `bytes` just read.
    fn on_read(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Header;
            self.tail.clear();
            self.extend_deadline(self.limits.header_read_timeout);
        }
        match self.phase {
            Phase::Header => {
                let mut window = std::mem::take(&mut self.tail);
                window.extend_from_slice(bytes);
                if window.windows(4).any(|w| w == b"\r\n\r\n") {
                    self.phase = Phase::Request;
                    self.extend_deadline(self.limits.idle_timeout);
                } else {
                    let keep = window.len().saturating_sub(3);
                    self.tail = window.split_off(keep);
                }
            }
            Phase::Request => self.extend_deadline(self.limits.idle_timeout),
            Phase::Idle => unreachable!("left above"),
        }
    }
}

impl<T> Drop for GuardedIo<T> {
    fn drop(&mut self) {
        metrics::connection_closed();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.on_read(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let (reason, what) = match this.phase {
                        Phase::Header => (
                            "header",
                            "request header not complete within HEADER_READ_TIMEOUT_SECS",
                        ),
                        _ => ("idle", "connection silent for IDLE_TIMEOUT_SECS"),
                    };
                    metrics::connection_timed_out(reason);
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.phase = Phase::Idle;
            this.extend_deadline(this.limits.idle_timeout);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An acceptor whose connections are [`GuardedIo`]s, at most
/// [`ConnectionLimits::max_connections`] at once.
pub struct GuardedAcceptor<A> {
    inner: A,
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
}

impl<A> GuardedAcceptor<A> {
    /// Wraps `inner`'s connections in `limits`.
    pub fn new(inner: A, limits: ConnectionLimits) -> Self {
        Self {
            inner,
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        // Waits, without accepting, while every permit is held.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("the connection semaphore is closed"))?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((
            GuardedIo::new(io, self.limits, permit),
            local,
            remote,
            scheme,
        ))
    }
}
