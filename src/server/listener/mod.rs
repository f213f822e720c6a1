//! Serving one listener: accept connections, optionally TLS, HTTP/1.1 and HTTP/2 with the
//! limits that keep slow or abusive clients from holding the server (how many connections,
//! request head timeout, HTTP/2 stream limit and keepalive), and a graceful stop that
//! finishes in-flight requests.

pub(crate) mod connections;
mod first_bytes;
mod socket;

use connections::{Connections, Listener, Tracked};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Connection limits of a listener.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// For an HTTP/1 request head, and for a TLS handshake.
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_concurrent_streams: u32,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
}

/// How long a stop waits for open connections to finish their requests.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Largest HTTP/2 frame a client may send.
const FRAME_BYTES: u32 = 256 * 1024;

/// HTTP/2 flow control: request bytes a connection may have received and not yet read
/// (over all its streams), and a stream alone (hyper's defaults, set here so that the
/// memory estimate reads them).
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;

/// HTTP/2: the largest header list of a request, held while its stream is open (hyper's
/// default).
const HEADER_LIST_BYTES: u32 = 16 * 1024;

/// HTTP/1: the largest read buffer (request head and body bytes not yet read; hyper's
/// default, 8 KiB + 100 × 4 KiB).
const H1_BUFFER_BYTES: usize = 8192 + 4096 * 100;

/// A connection's own state, buffers aside (task, hyper's connection, socket, the slot in
/// the open connections): 23 KiB measured with an HTTP/1 head pending, 16 KiB after an
/// HTTP/2 preface, 6 KiB before any byte, release and debug alike (1,000 idle connections,
/// RSS before and after, 2026-12-07); rounded up.
const CONNECTION_STATE_BYTES: usize = 32 * 1024;

/// TLS (rustls): a record being read and one being written, 16 KiB + 2 KiB each, and the
/// plaintext rustls buffers before writing (its default limit, 64 KiB).
const TLS_BYTES: usize = 2 * (18 * 1024) + 64 * 1024;

/// The most one receiver connection holds: its state, then the larger of HTTP/2's (request
/// bytes received not read yet, a frame being read, the header lists of its open streams)
/// and HTTP/1's (the read buffer), and TLS's buffers.
pub(crate) fn connection_bytes_bound(max_concurrent_streams: u32, tls: bool) -> usize {
    let h2 = CONNECTION_WINDOW_BYTES as usize
        + FRAME_BYTES as usize
        + 9
        + max_concurrent_streams as usize * HEADER_LIST_BYTES as usize;
    CONNECTION_STATE_BYTES + h2.max(H1_BUFFER_BYTES) + if tls { TLS_BYTES } else { 0 }
}

/// The largest HTTP/2 read buffer: a body that arrives in one DATA frame is kept as that
/// frame's bytes, which share (and keep) the buffer it was read into.
pub(crate) const READ_BUFFER_BYTES: usize = FRAME_BYTES as usize + 9;

/// accept(2) errors for want of a file descriptor (Linux): EMFILE, ENFILE.
const OUT_OF_FILES: [i32; 2] = [24, 23];

/// Serves `router` on `listener` (the `which` of `open`'s connections) until `stop`, then
/// lets in-flight requests finish.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    (open, which): (Arc<Connections>, Listener),
    stop: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(H1_BUFFER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Clients send DATA frames up to this size (HTTP/2's default is 16 KiB): a 512-span
        // request (~210 KB) then arrives in one frame, read into one buffer and handed on
        // without being copied together from a dozen pieces.
        .max_frame_size(FRAME_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .max_header_list_size(HEADER_LIST_BYTES)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Forget connections that have ended.
        while connections.try_join_next().is_some() {}
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors (something besides connections took them):
                    // close the connection idle the longest and accept at once; with none
                    // idle, or another error, wait rather than spin.
                    if e.raw_os_error().is_some_and(|code| OUT_OF_FILES.contains(&code))
                        && open.close_idle()
                    {
                        continue;
                    }
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // gRPC answers in several small frames (headers, data, trailers): with Nagle on, the
        // last one waits for the client's delayed ACK (~40 ms).
        let _ = tcp.set_nodelay(true);
        let tcp = socket::Socket::new(tcp);
        let Some(slot) = open.open(which, tcp.watch()) else {
            tracing::debug!(
                "connection closed as it arrived: receivers.max_connections reached, or the file limit with no idle connection"
            );
            continue;
        };
        let builder = builder.clone();
        let service = Tracked {
            inner: TowerToHyperService::new(router.clone()),
            slot: slot.clone(),
        };
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake = limits.header_read_timeout;
        let task = connections.spawn(async move {
            let served = match tls {
                None => {
                    let Some(tcp) = first_bytes::read(tcp, handshake).await else {
                        tracing::debug!("no request within header_read_timeout; connection closed");
                        return;
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => {
                    let stream = match tokio::time::timeout(handshake, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    // ALPN said which protocol: no detection read (it has no timer).
                    let mut builder = builder;
                    match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => builder = builder.http2_only(),
                        _ => builder = builder.http1_only(),
                    }
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
        slot.attach(task);
    }
    drop(listener);
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open {STOP_GRACE:?} after the stop; closing them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}
