//! A key-affine gateway in miniature, for the scale-out tests: what an OpenTelemetry
//! Collector does in front of several spanlens replicas with its load-balancing exporter
//! (`routing_key: attributes`, deploy/kubernetes/spanlens-gateway.yaml).
//!
//! It serves OTLP/HTTP protobuf (`POST /v1/traces`), so the services' real
//! `opentelemetry-otlp` exporters send to it; it splits each request's spans by replica
//! (keeping each span's resource and scope) and exports every part to its replica over
//! OTLP/gRPC with the real tonic client, answering only once every replica has answered (so an
//! export that returned has been ingested). A replica that fails the export fails the request
//! (503), as the Collector would report it.
//!
//! [`Routing::Keys`] chooses a replica by a hash of the first of the listed attributes a span
//! carries (span attributes first, then its resource's), or of its trace id when it has none:
//! the same key always reaches the same replica, which is all a join needs. (The Collector of
//! the manifest gets there in two steps: a transform processor copies that first key, or the
//! trace id, into one attribute, and the exporter hashes that attribute;
//! `support::deploy::gateway_routing` reads the keys from the manifest.) (The Collector's
//! exporter places backends on a consistent-hash ring rather than taking the hash modulo N;
//! that only changes which replica a key lands on, and how many keys move when the set of
//! replicas changes.) [`Routing::Random`] sends each span to a replica chosen at random: what
//! a key-blind balancer in front of the replicas does.

use super::Rng;
use super::otlp::{PROTOBUF, TRACES, grpc_client};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;

/// How the gateway picks a span's replica.
#[derive(Clone, Debug)]
pub enum Routing {
    /// By the first of `keys` the span (or its resource) carries; when none, by its trace id
    /// (`trace_id_fallback`) or else all such spans alike.
    Keys {
        keys: Vec<String>,
        trace_id_fallback: bool,
    },
    /// At random, from this seed.
    Random(u64),
}

#[derive(Clone)]
struct Shared {
    replicas: Vec<TraceServiceClient<Channel>>,
    routing: Routing,
    rng: Arc<Mutex<Rng>>,
    /// Spans exported to each replica so far.
    routed: Arc<Mutex<Vec<usize>>>,
}

/// A running gateway in front of `replicas` (their OTLP/gRPC addresses).
pub struct Gateway {
    pub addr: SocketAddr,
    shared: Shared,
}

impl Gateway {
    pub async fn start(replicas: &[SocketAddr], routing: Routing) -> Gateway {
        let mut clients = Vec::new();
        for addr in replicas {
            clients.push(grpc_client(*addr).await);
        }
        let seed = match routing {
            Routing::Random(seed) => seed,
            Routing::Keys { .. } => 0,
        };
        let shared = Shared {
            replicas: clients,
            routing,
            rng: Arc::new(Mutex::new(Rng::new(seed))),
            routed: Arc::new(Mutex::new(vec![0; replicas.len()])),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gateway");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(TRACES, post(export))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Gateway { addr, shared }
    }

    /// Spans exported to each replica so far, in the order the replicas were given.
    pub fn routed(&self) -> Vec<usize> {
        self.shared.routed.lock().unwrap().clone()
    }
}

async fn export(State(shared): State<Shared>, body: Bytes) -> Response {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut parts: Vec<ExportTraceServiceRequest> =
        vec![ExportTraceServiceRequest::default(); shared.replicas.len()];
    for resource_spans in request.resource_spans {
        let resource_attributes = resource_spans
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                let replica = shared.replica_of(span, resource_attributes);
                push(
                    &mut parts[replica],
                    &resource_spans,
                    scope_spans,
                    span.clone(),
                );
            }
        }
    }
    for (replica, part) in parts.into_iter().enumerate() {
        let spans: usize = part
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        if spans == 0 {
            continue;
        }
        let mut client = shared.replicas[replica].clone();
        if let Err(status) = client.export(part).await {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("replica {replica}: {status}"),
            )
                .into_response();
        }
        shared.routed.lock().unwrap()[replica] += spans;
    }
    (
        [(header::CONTENT_TYPE, PROTOBUF)],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

impl Shared {
    fn replica_of(&self, span: &Span, resource_attributes: &[KeyValue]) -> usize {
        let n = self.replicas.len() as u64;
        match &self.routing {
            Routing::Random(_) => (self.rng.lock().unwrap().next() % n) as usize,
            Routing::Keys {
                keys,
                trace_id_fallback,
            } => {
                let key = keys
                    .iter()
                    .find_map(|key| {
                        value_of(&span.attributes, key)
                            .or_else(|| value_of(resource_attributes, key))
                    })
                    .map(String::into_bytes)
                    .unwrap_or_else(|| {
                        if *trace_id_fallback {
                            span.trace_id.clone()
                        } else {
                            Vec::new()
                        }
                    });
                (fnv1a(&key) % n) as usize
            }
        }
    }
}

/// Appends `span` to `request` under (a copy of) its resource and scope, reusing the last
/// resource and scope entries when they are the same.
fn push(
    request: &mut ExportTraceServiceRequest,
    resource_spans: &ResourceSpans,
    scope_spans: &ScopeSpans,
    span: Span,
) {
    let same_resource = request.resource_spans.last().is_some_and(|r| {
        r.resource == resource_spans.resource && r.schema_url == resource_spans.schema_url
    });
    if !same_resource {
        request.resource_spans.push(ResourceSpans {
            resource: resource_spans.resource.clone(),
            scope_spans: Vec::new(),
            schema_url: resource_spans.schema_url.clone(),
        });
    }
    let target = request.resource_spans.last_mut().unwrap();
    let same_scope = target
        .scope_spans
        .last()
        .is_some_and(|s| s.scope == scope_spans.scope && s.schema_url == scope_spans.schema_url);
    if !same_scope {
        target.scope_spans.push(ScopeSpans {
            scope: scope_spans.scope.clone(),
            spans: Vec::new(),
            schema_url: scope_spans.schema_url.clone(),
        });
    }
    target.scope_spans.last_mut().unwrap().spans.push(span);
}

/// The value of attribute `key` as text (strings as they are, other scalars printed).
fn value_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// 64-bit FNV-1a: a stable hash, the same in every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
