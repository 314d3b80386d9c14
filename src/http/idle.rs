//! Closing silent connections: [`IdleTimeoutAcceptor`] wraps every accepted
//! connection in [`IdleTimeoutIo`], whose reads fail with `TimedOut` once
//! nothing was read or written for `IDLE_TIMEOUT_SECS`; the HTTP server then
//! drops the connection.
//!
//! poem's own `Server::idle_timeout` cannot do this for a half-sent request:
//! on timeout it asks hyper for a graceful shutdown, which waits for the
//! request in progress, and a request whose header never ends is in
//! progress forever (the slowloris attack: a few thousand such connections
//! exhaust the process's file descriptors). hyper's `header_read_timeout`
//! is not reachable through poem. A failed read ends the connection at once.
//!
//! Only silence counts: a client that keeps sending, or a response being
//! written, resets the clock. A handler that runs longer than the timeout
//! without reading or writing (none does: the longest, `POST
//! /admin/flush`, is bounded at 30 s) could lose its connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An accepted connection whose reads time out after a period of silence.
pub struct IdleTimeoutIo<T> {
    inner: T,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeoutIo<T> {
    /// `inner`, failing its reads once it was silent for `timeout`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn active(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeoutIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.active();
                Poll::Ready(result)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection silent for IDLE_TIMEOUT_SECS",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeoutIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if result.is_ready() {
            this.active();
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

/// An acceptor whose connections are [`IdleTimeoutIo`]s.
pub struct IdleTimeoutAcceptor<A> {
    inner: A,
    timeout: Duration,
}

impl<A> IdleTimeoutAcceptor<A> {
    /// Wraps `inner`'s connections, closing each once silent for `timeout`.
    pub fn new(inner: A, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl<A: Acceptor> Acceptor for IdleTimeoutAcceptor<A> {
    type Io = IdleTimeoutIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((IdleTimeoutIo::new(io, self.timeout), local, remote, scheme))
    }
}
