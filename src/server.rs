//! Starts the receivers and the scrape endpoint on their configured addresses and stops them
//! gracefully: stop accepting, finish in-flight requests, then return.

use crate::admin;
use crate::config::Config;
use crate::forward::{Drained, Forwarder};
use crate::pipeline::Pipeline;
use crate::receiver::{Ingest, grpc, http};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start forwarding: {0}")]
    Forward(String),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

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
    /// Binds every listener, then serves. Fails before serving anything if one cannot bind.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let pipeline = Arc::new(Pipeline::new(&config).map_err(StartError::Config)?);
        let forward = Forwarder::start(&config.forward).map_err(StartError::Forward)?;
        let ingest = Ingest {
            pipeline: pipeline.clone(),
            max_request_bytes: config.receivers.max_request_bytes,
            forward: forward.clone(),
        };
        let stop = CancellationToken::new();
        let mut listeners = Vec::new();
        let mut bind = async |what: &'static str, addr: SocketAddr, router: Router| {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })?;
            let local =
                listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { what, addr, source })?;
            tracing::info!(%local, "{what} listening");
            listeners.push((listener, router));
            Ok::<_, StartError>(local)
        };
        let r = &config.receivers;
        let grpc_addr = match r.grpc.enabled {
            true => Some(
                bind(
                    "OTLP/gRPC receiver",
                    r.grpc.endpoint,
                    grpc::router(ingest.clone()),
                )
                .await?,
            ),
            false => None,
        };
        let http_addr = match r.http.enabled {
            true => Some(
                bind(
                    "OTLP/HTTP receiver",
                    r.http.endpoint,
                    http::router(ingest.clone()),
                )
                .await?,
            ),
            false => None,
        };
        let metrics_addr = bind(
            "metrics endpoint",
            config.metrics.endpoint,
            admin::router(pipeline.clone(), forward.clone()),
        )
        .await?;
        let tasks = listeners
            .into_iter()
            .map(|(listener, router)| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    // gRPC answers in several small frames (headers, data, trailers): with
                    // Nagle on, the last one waits for the client's delayed ACK (~40 ms).
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    let served = axum::serve(listener, router)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "listener failed");
                    }
                })
            })
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
