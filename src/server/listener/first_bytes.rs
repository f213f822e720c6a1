//! The first bytes of a plain-text connection, read under a deadline before HTTP is served:
//! hyper's HTTP/1-or-HTTP/2 detection waits for them without a timer, so a client that
//! connects and sends nothing would otherwise hold its connection forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface; HTTP/1 is told apart from it by its first bytes.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream with bytes already read from it put back in front.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

/// Reads until the protocol can be told (the whole HTTP/2 preface, or bytes that are not
/// it), within `deadline`. None when the peer closed or was too slow.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    mut stream: S,
    deadline: Duration,
) -> Option<Prefixed<S>> {
    let mut prefix = Vec::with_capacity(H2_PREFACE.len());
    let decided = async {
        while prefix.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&prefix) {
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len() - prefix.len();
            match stream.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => prefix.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    match tokio::time::timeout(deadline, decided).await {
        Ok(true) => Some(Prefixed {
            prefix,
            read: 0,
            inner: stream,
        }),
        _ => None,
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn what_was_read_is_read_again_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"POST /v1/traces HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut prefixed = read(server, Duration::from_secs(1)).await.expect("decided");
        assert!(prefixed.prefix.starts_with(b"PO"), "{:?}", prefixed.prefix);
        drop(client);
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"POST /v1/traces HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn the_whole_h2_preface_is_waited_for() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(H2_PREFACE).await.unwrap();
        let prefixed = read(server, Duration::from_secs(1)).await.expect("decided");
        assert_eq!(prefixed.prefix, H2_PREFACE);
    }

    #[tokio::test]
    async fn silence_and_a_slow_preface_are_cut_off() {
        let (_client, server) = tokio::io::duplex(64);
        assert!(read(server, Duration::from_millis(50)).await.is_none());
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP").await.unwrap();
        assert!(read(server, Duration::from_millis(50)).await.is_none());
    }
}
