//! The OpenTelemetry SDK side of the end-to-end tests: the real `opentelemetry-otlp` exporter
//! for each transport spanlens receives, the resource every emulated service carries, and a
//! span processor that records finished spans so that a test hands exactly the spans it
//! chooses to the exporter, in the order it chooses.

use super::tasker::Svc;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Compression, Protocol, WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, SpanData, SpanProcessor, TracerProviderBuilder,
};
use spanlens::server::Server;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How an exporter sends to spanlens.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Grpc(Option<Compression>),
    HttpProtobuf,
    HttpJson,
}

impl Transport {
    /// The `protocol` label of spanlens_spans_{received,accepted}_total.
    pub fn protocol(self) -> &'static str {
        match self {
            Transport::Grpc(_) => "grpc",
            Transport::HttpProtobuf => "http_protobuf",
            Transport::HttpJson => "http_json",
        }
    }
}

/// The real OTLP exporter for `transport`, to spanlens's gRPC or HTTP receiver.
pub fn exporter(
    transport: Transport,
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    timeout: Duration,
) -> opentelemetry_otlp::SpanExporter {
    match transport {
        Transport::Grpc(compression) => {
            let addr = grpc.expect("gRPC receiver enabled");
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("http://{addr}"))
                .with_timeout(timeout);
            if let Some(compression) = compression {
                builder = builder.with_compression(compression);
            }
            builder.build().expect("gRPC exporter")
        }
        Transport::HttpProtobuf | Transport::HttpJson => {
            let addr = http.expect("HTTP receiver enabled");
            let protocol = match transport {
                Transport::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_endpoint(format!("http://{addr}/v1/traces"))
                .with_timeout(timeout)
                .build()
                .expect("HTTP exporter")
        }
    }
}

/// A provider for `service` (its [`resource`]) whose spans the real exporter batches to
/// spanlens's gRPC receiver at `grpc` (10 s per export). Flush it at least every 2,048
/// spans (the batch processor's queue), or it drops some.
pub fn batching_provider(grpc: SocketAddr, service: &'static str) -> SdkTracerProvider {
    let exporter = exporter(
        Transport::Grpc(None),
        Some(grpc),
        None,
        Duration::from_secs(10),
    );
    SdkTracerProvider::builder()
        .with_resource(resource(service))
        .with_batch_exporter(exporter)
        .build()
}

/// Span `name` of `tracer` that ended now and lasted `duration`, with `attributes`.
pub fn ended_now(
    tracer: &SdkTracer,
    name: &'static str,
    duration: Duration,
    attributes: Vec<KeyValue>,
) {
    let end = SystemTime::now();
    tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(end - duration)
        .with_attributes(attributes)
        .start(tracer)
        .end_with_timestamp(end);
}

/// The real exporter for `transport` to `server`, sending `resource` (5 s per export).
pub fn exporter_to(
    server: &Server,
    transport: Transport,
    resource: &Resource,
) -> opentelemetry_otlp::SpanExporter {
    exporter_at(transport, server.grpc_addr(), server.http_addr(), resource)
}

/// The real exporter for `transport` to the gRPC or HTTP address given (spanlens's own, or
/// anything else that speaks OTLP), sending `resource` (5 s per export).
pub fn exporter_at(
    transport: Transport,
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    resource: &Resource,
) -> opentelemetry_otlp::SpanExporter {
    let mut exporter = exporter(transport, grpc, http, Duration::from_secs(5));
    exporter.set_resource(resource);
    exporter
}

/// The resource attributes of every emulated service besides service.name.
pub fn service_attributes() -> Vec<KeyValue> {
    vec![
        KeyValue::new("service.version", "0.1.0"),
        KeyValue::new("deployment.environment", "test"),
    ]
}

/// `service`'s resource: its name and [`service_attributes`].
pub fn resource(service: &'static str) -> Resource {
    Resource::builder()
        .with_service_name(service)
        .with_attributes(service_attributes())
        .build()
}

/// The string value of attribute `key`, if any.
pub fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// A provider builder for `service` (its [`resource`]) whose finished spans the returned
/// [`Recorder`] keeps.
pub fn recording(service: &'static str) -> (TracerProviderBuilder, Recorder) {
    let recorder = Recorder::default();
    let builder = SdkTracerProvider::builder()
        .with_resource(resource(service))
        .with_span_processor(recorder.clone());
    (builder, recorder)
}

/// Starts span `name` of `kind` at `start` with `attributes`, a child of `parent` (a root when
/// None); the context that holds it.
pub fn start_span(
    tracer: &SdkTracer,
    name: &'static str,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    parent: Option<&Context>,
) -> Context {
    let parent = parent.cloned().unwrap_or_else(Context::new);
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}

/// A fixture's rows as the SDK made them, and each service's resource: what a test hands to
/// the exporters.
pub struct Recorded {
    /// Every row as the SDK made it (same index).
    pub spans: Vec<SpanData>,
    pub resources: BTreeMap<Svc, Resource>,
}

/// A span processor that keeps every finished span and the provider's resource.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub spans: Arc<Mutex<Vec<SpanData>>>,
    pub resource: Arc<Mutex<Option<Resource>>>,
}

impl SpanProcessor for Recorder {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.spans.lock().unwrap().push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self.resource.lock().unwrap() = Some(resource.clone());
    }
}
