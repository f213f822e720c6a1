//! Serving one listener: accept connections, optionally TLS, HTTP/1.1 and HTTP/2 with the
//! limits that keep slow or abusive clients from holding the server (how many connections,
//! request head timeout, HTTP/2 stream limit and keepalive), and a graceful stop that
//! finishes in-flight requests.

pub(crate) mod connections;
mod first_bytes;

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
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Clients send DATA frames up to this size (HTTP/2's default is 16 KiB): a 512-span
        // request (~210 KB) then arrives in one frame, read into one buffer and handed on
        // without being copied together from a dozen pieces.
        .max_frame_size(FRAME_BYTES)
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
        let Some(slot) = open.open(which) else {
            tracing::debug!(
                "connection closed as it arrived: receivers.max_connections reached, or the file limit with no idle connection"
            );
            continue;
        };
        // gRPC answers in several small frames (headers, data, trailers): with Nagle on, the
        // last one waits for the client's delayed ACK (~40 ms).
        let _ = tcp.set_nodelay(true);
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
