//! Starts the receivers and the scrape endpoint on their configured addresses and stops them
//! gracefully: stop accepting, finish in-flight requests, then return.

pub(crate) mod admin;
pub(crate) mod listener;
pub(crate) mod page;
pub mod scrape_buffers;
pub(crate) mod tls;

use crate::ingest::access::BearerToken;

use crate::config::security::{AuthConfig, TlsServerConfig};
use crate::config::{Config, ListenerConfig};
use crate::forward::{Drained, Forwarder};
use crate::ingest::gate::Gate;
use crate::ingest::{Ingest, Onward, grpc, http};
use crate::pipeline::{BuildError, Pipeline};
use listener::Limits;
use listener::connections::{Connections, Listener};

use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] BuildError),
    #[error("cannot start forwarding: {0}")]
    Forward(String),
    #[error("{0}")]
    Access(String),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Connections the kernel may hold for a listener before they are accepted (it caps this at
/// net.core.somaxconn). The usual 128 overflows when the accept loop is off the CPU for a
/// few milliseconds while clients connect fast (a flood of idle connections, exporters
/// reconnecting together): the SYNs past it are dropped and their clients wait a second
/// for the retransmission.
const BACKLOG: u32 = 4096;

/// A listening socket on `addr` (SO_REUSEADDR, as tokio's bind), with [`BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// How a receiver's routes are made from the shared ingest state.
type RouterOf = fn(Ingest) -> Router;

/// A running spanlens. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    metrics_addr: SocketAddr,
    pipeline: Arc<Pipeline>,
    forward: Option<Arc<Forwarder>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every listener, then serves. Fails before serving anything if one cannot bind
    /// or a certificate, key or token cannot be read.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let token = |auth: &Option<AuthConfig>, what: &str| {
            auth.as_ref()
                .map(|a| BearerToken::load(a, &env))
                .transpose()
                .map_err(|e| StartError::Access(format!("{what}: {e}")))
        };
        let tls = |t: &Option<TlsServerConfig>, what: &str| {
            t.as_ref()
                .map(tls::acceptor)
                .transpose()
                .map_err(|e| StartError::Access(format!("{what}: TLS: {e}")))
        };
        let r = &config.receivers;
        let pipeline = Arc::new(Pipeline::new(&config)?);
        let forward = Forwarder::start(&config.forward).map_err(StartError::Forward)?;
        let ingest = Ingest {
            pipeline: pipeline.clone(),
            max_request_bytes: r.max_request_bytes,
            onward: forward.clone().map(|forward| {
                Arc::new(Onward {
                    writes_to_disk: forward.persistent(),
                    admit: Box::new(move |request, arrived, rejected, spans, deadline| {
                        forward.admit(request, arrived, rejected, spans, deadline)
                    }),
                })
            }),
            gate: Arc::new(Gate::new(
                token(&r.auth, "receivers.auth")?,
                r.max_pending_requests,
                r.memory_limit_bytes,
                r.retry_after.get(),
                r.max_request_bytes,
            )),
            body_read_timeout: r.body_read_timeout.get(),
        };
        let header_read_timeout = r.header_read_timeout.get();
        let limits = |l: &ListenerConfig| Limits {
            header_read_timeout,
            max_concurrent_streams: l.max_concurrent_streams,
            keepalive_interval: l.keepalive_interval.get(),
            keepalive_timeout: l.keepalive_timeout.get(),
        };
        let stop = CancellationToken::new();
        // After forwarding opened its files: what the file limit leaves for connections.
        let connections = Arc::new(Connections::new(r.max_connections));
        let mut listeners = Vec::new();
        let mut bind = async |what: &'static str,
                              which: Listener,
                              addr: SocketAddr,
                              router: Router,
                              tls: Option<TlsAcceptor>,
                              limits: Limits| {
            let listener =
                listen(addr).map_err(|source| StartError::Bind { what, addr, source })?;
            let local =
                listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { what, addr, source })?;
            let scheme = if tls.is_some() { "TLS" } else { "plain text" };
            tracing::info!(%local, "{what} listening ({scheme})");
            listeners.push((listener, which, router, tls, limits));
            Ok::<_, StartError>(local)
        };
        let receivers: [(_, _, _, _, RouterOf); 2] = [
            (
                "OTLP/gRPC receiver",
                Listener::Grpc,
                &r.grpc,
                "receivers.grpc",
                grpc::router,
            ),
            (
                "OTLP/HTTP receiver",
                Listener::Http,
                &r.http,
                "receivers.http",
                http::router,
            ),
        ];
        let mut receiver_addrs = [None, None];
        for (slot, (what, which, l, section, router)) in receiver_addrs.iter_mut().zip(receivers) {
            if l.enabled {
                let tls = tls(&l.tls, section)?;
                let router = router(ingest.clone());
                *slot = Some(bind(what, which, l.endpoint, router, tls, limits(l)).await?);
            }
        }
        let [grpc_addr, http_addr] = receiver_addrs;
        let m = &config.metrics;
        let (admin, sampler) = admin::router(
            page::Page::new(&config, pipeline.clone()),
            pipeline.clone(),
            forward.clone(),
            connections.clone(),
            token(&m.auth, "metrics.auth")?,
            stop.clone(),
        );
        let metrics_addr = bind(
            "metrics endpoint",
            Listener::Metrics,
            m.endpoint,
            admin,
            tls(&m.tls, "metrics")?,
            limits(&ListenerConfig::on(m.endpoint.port())),
        )
        .await?;
        let tasks = listeners
            .into_iter()
            .map(|(listener, which, router, tls, limits)| {
                let open = (connections.clone(), which);
                tokio::spawn(listener::serve(
                    listener,
                    router,
                    tls,
                    limits,
                    open,
                    stop.clone(),
                ))
            })
            .chain([sampler])
            .collect();
        Ok(Server {
            grpc_addr,
            http_addr,
            metrics_addr,
            pipeline,
            forward,
            stop,
            tasks,
        })
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Stops accepting, lets in-flight requests finish, waits for every listener, then
    /// drains forwarding (for up to forward.drain_timeout) and logs what became of it.
    pub async fn shutdown(self) -> Vec<Drained> {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let Some(forward) = self.forward else {
            return Vec::new();
        };
        let drained = forward.drain().await;
        for d in &drained {
            tracing::info!(
                endpoint = %d.endpoint,
                sent_spans = d.sent_spans,
                dropped_spans = d.dropped_spans,
                failed_spans = d.failed_spans,
                persisted_spans = d.persisted_spans,
                "forwarding stopped"
            );
        }
        drained
    }
}
