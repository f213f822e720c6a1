//! A connection's TCP stream, shared with the open connections' registry (which holds it
//! weakly): before closing an idle connection for room, the registry peeks at it, and a
//! connection whose client has sent bytes not read yet is a request arriving, not idle.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a peek found on a connection's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Nothing to read: the client is silent.
    Nothing,
    /// Bytes the server has not read yet.
    Bytes,
    /// The client closed its side, or the socket failed.
    Closed,
}

/// The stream a connection is served over.
pub(crate) struct Socket(Arc<TcpStream>);

impl Socket {
    pub(crate) fn new(tcp: TcpStream) -> Socket {
        Socket(Arc::new(tcp))
    }

    /// A handle that peeks at the socket while the connection holds it.
    pub(crate) fn watch(&self) -> Weak<TcpStream> {
        Arc::downgrade(&self.0)
    }
}

/// Peeks at a socket without reading from it or waiting (the socket is non-blocking); None
/// once the connection has let go of it.
pub(crate) fn peek(socket: &Weak<TcpStream>) -> Option<Pending> {
    let tcp = socket.upgrade()?;
    let mut byte = [MaybeUninit::uninit()];
    Some(match socket2::SockRef::from(&*tcp).peek(&mut byte) {
        Ok(0) => Pending::Closed,
        Ok(_) => Pending::Bytes,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Pending::Nothing,
        Err(_) => Pending::Closed,
    })
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; try_read cleared it, and the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Socket {
    /// Writes with `write` once the socket is writable (readiness can be stale: a write that
    /// would block clears it, and the socket is waited for again).
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |tcp| tcp.try_write(data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Writes are not buffered here.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, Socket) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Socket::new(server))
    }

    /// Waits until a peek finds `want` (bytes cross loopback a moment after the write).
    async fn peeked(watch: &Weak<TcpStream>, want: Pending) {
        for _ in 0..200 {
            if peek(watch) == Some(want) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("never peeked {want:?}: {:?}", peek(watch));
    }

    #[tokio::test]
    async fn a_peek_tells_silence_from_bytes_and_reads_nothing() {
        let (mut client, mut socket) = pair().await;
        let watch = socket.watch();
        assert_eq!(peek(&watch), Some(Pending::Nothing));
        client.write_all(b"POST").await.unwrap();
        peeked(&watch, Pending::Bytes).await;
        let mut read = [0u8; 4];
        socket.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"POST", "the peek left the bytes in place");
        assert_eq!(peek(&watch), Some(Pending::Nothing));
        socket.write_all(b"200").await.unwrap();
        socket.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"200");
        drop(client);
        peeked(&watch, Pending::Closed).await;
        drop(socket);
        assert_eq!(peek(&watch), None, "the connection let go of it");
    }
}
