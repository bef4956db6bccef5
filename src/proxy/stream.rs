//! The one stream type the front door and the relay drive, for both sides of a tunnel: plain
//! TCP, or TLS over TCP ([`TlsConn`], from the TLS listener). The relay needs readiness and non-blocking
//! reads and writes into buffers it borrows only while data flows; hyper's plain-HTTP path
//! needs `AsyncRead`/`AsyncWrite`. Both are offered here, once.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::TlsConn;

/// A connection to a client or a backend.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: the session state is large and most streams are plain.
    Tls(Box<TlsConn>),
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Self::Plain(s)
    }
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.tcp(),
        }
    }

    /// Whether this is the TLS listener's stream (`X-Forwarded-Proto: https`).
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Bytes (or a close_notify and FIN) accepted by a write but not yet on the socket: the
    /// owner keeps polling [`poll_write_ready`](Self::poll_write_ready) until this is false.
    /// Always false for plain TCP.
    pub fn has_pending_write(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(t) => t.has_pending_write(),
        }
    }

    /// Flush what [`has_pending_write`](Self::has_pending_write) reports, giving up when the
    /// peer takes nothing for `stall`.
    pub async fn flush_pending(&mut self, stall: Duration) -> io::Result<()> {
        while self.has_pending_write() {
            let ready = std::future::poll_fn(|cx| self.poll_write_ready(cx));
            tokio::time::timeout(stall, ready).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        }
        Ok(())
    }

    /// Ready when a read may return data (or EOF/error).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => s.poll_read_ready(cx),
            Self::Tls(t) => t.poll_read_ready(cx),
        }
    }

    /// One non-blocking read into `buf`: `Ok(0)` is EOF, `WouldBlock` when nothing is there.
    /// A short read means the socket was drained at that moment, so its readiness is cleared
    /// too (tokio keeps it if an event arrived meanwhile): the next wait goes straight to epoll
    /// instead of costing a `recv` that would only say EAGAIN.
    pub fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => read_drained(s, buf),
            Self::Tls(t) => t.read_some(buf),
        }
    }

    /// Ready when a write may make progress.
    pub fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => s.poll_write_ready(cx),
            Self::Tls(t) => t.poll_write_ready(cx),
        }
    }

    /// One non-blocking write; `WouldBlock` when the socket takes nothing now.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.try_write(buf),
            Self::Tls(t) => t.try_write(buf),
        }
    }

    /// Close the write side once nothing more will be sent: FIN, or for TLS a close_notify
    /// then FIN (which may wait in [`has_pending_write`](Self::has_pending_write)).
    pub fn shutdown_write(&mut self) {
        match self {
            // ENOTCONN after the peer left is expected and harmless.
            Self::Plain(s) => {
                let _ = SockRef::from(&*s).shutdown(Shutdown::Write);
            }
            Self::Tls(t) => t.shutdown_write(),
        }
    }

    /// Stop both directions now (the peer sees EOF; our pending reads end).
    pub fn shutdown_both(&mut self) {
        let _ = SockRef::from(self.tcp()).shutdown(Shutdown::Both);
    }

    /// Wait for readiness and read once into `buf`'s spare capacity (growing it to at least
    /// `want` bytes of room). Returns the bytes read; 0 is EOF.
    pub async fn read_more(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        let len = buf.len();
        buf.resize(len + want, 0);
        let r = std::future::poll_fn(|cx| {
            loop {
                match self.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                match self.read_some(&mut buf[len..]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return Poll::Ready(other),
                }
            }
        })
        .await;
        buf.truncate(len + *r.as_ref().unwrap_or(&0));
        r
    }

    /// Write all of `data`, failing with `TimedOut` when the peer takes nothing for `stall`
    /// (a client that never reads cannot pin the connection).
    pub async fn write_all_within(&mut self, mut data: &[u8], stall: Duration) -> io::Result<()> {
        while !data.is_empty() {
            match self.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = std::future::poll_fn(|cx| self.poll_write_ready(cx));
                    tokio::time::timeout(stall, ready)
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // TLS may hold the last record until the socket takes it.
        self.flush_pending(stall).await
    }
}

fn read_drained(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = None;
    let r = s.try_io(tokio::io::Interest::READABLE, || {
        let n = loop {
            match std::io::Read::read(&mut &*SockRef::from(s), buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        got = Some(n);
        if n > 0 && n < buf.len() { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }
    });
    match (r, got) {
        (Ok(n), _) => Ok(n),
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        (Err(e), _) => Err(e),
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(t) => Pin::new(&mut **t).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(t) => t.is_write_vectored(),
        }
    }
}
