//! The scrape endpoint: `/metrics` (text 0.0.4, or OpenMetrics 1.0 or Prometheus's protobuf
//! format when the Accept header prefers them), `/healthz`,
//! `/readyz`, `/api/v1/breakdown/{correlation_id or task_uuid}` (JSON), and the operator
//! page (`/`, `/task/{id}`, `/compare`; see [`super::page`]).

use crate::forward::Forwarder;
use crate::ingest::access::BearerToken;
use crate::metrics::exposition::{self, Encoding};
use crate::metrics::store::Snapshot;
use crate::pipeline::Pipeline;
use crate::server::listener::connections::Connections;
use crate::server::page::{self, Page};
use crate::server::scrape_buffers::ScrapeBuffers;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read.
#[derive(Clone)]
struct Sources {
    pipeline: Arc<Pipeline>,
    forward: Option<Arc<Forwarder>>,
    connections: Arc<Connections>,
    buffers: Arc<ScrapeBuffers>,
}

impl Sources {
    /// Every series as a scrape sees them: the pipeline's (taken by `take`), forwarding's
    /// and the listeners'.
    fn gathered(&self, take: fn(&Pipeline) -> Snapshot) -> Snapshot {
        let mut snapshot = take(&self.pipeline);
        if let Some(forward) = &self.forward {
            forward.contribute(&mut snapshot);
        }
        self.connections.contribute(&mut snapshot);
        snapshot
    }
}

/// The admin routes, and the task that samples the operator page's windows until `stop`.
/// With a token, /metrics, the API and the page require it (401 otherwise); the probes
/// /healthz and /readyz stay open, as the kubelet calls them without credentials.
pub(crate) fn router(
    page: Page,
    pipeline: Arc<Pipeline>,
    forward: Option<Arc<Forwarder>>,
    connections: Arc<Connections>,
    token: Option<BearerToken>,
    stop: CancellationToken,
) -> (Router, JoinHandle<()>) {
    let sources = Sources {
        pipeline,
        forward,
        connections,
        buffers: Arc::default(),
    };
    let page = Arc::new(page);
    let sampled = sources.clone();
    let sampler = page::sample_every_interval(
        page.clone(),
        Arc::new(move || sampled.gathered(Pipeline::copy)),
        stop,
    );
    let data = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/breakdown/{id}", get(breakdown))
        .merge(page::router(page));
    let data = match token {
        None => data,
        Some(token) => {
            let token = Arc::new(token);
            data.route_layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let allowed = token.allows(request.headers());
                    async move {
                        match allowed {
                            true => next.run(request).await,
                            false => (
                                StatusCode::UNAUTHORIZED,
                                [(header::WWW_AUTHENTICATE, "Bearer")],
                                "a valid bearer token is required (Authorization: Bearer <token>)\n",
                            )
                                .into_response(),
                        }
                    }
                },
            ))
        }
    };
    let data = data
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /, /metrics, /healthz or /readyz\n",
            )
        });
    (data.with_state(sources), sampler)
}

/// One task's breakdown as JSON, by correlation id or task uuid.
async fn breakdown(State(sources): State<Sources>, Path(id): Path<String>) -> Response {
    match sources.pipeline.breakdown(&id) {
        Some(found) => Json(found).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": format!("no recent span has correlation id or task uuid `{id}` (spans are kept for breakdown.max_age, at most breakdown.max_spans)")
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(sources): State<Sources>, headers: HeaderMap) -> Response {
    let encoding = Encoding::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = tokio::task::spawn_blocking(move || {
        let snapshot = sources.gathered(Pipeline::snapshot);
        let mut out = sources.buffers.take();
        exposition::render_into(&mut out, &snapshot, encoding);
        sources.buffers.body(out)
    })
    .await;
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering failed: {e}\n"),
        )
            .into_response(),
    }
}
