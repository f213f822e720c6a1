//! Tasker workflows as tasker-core emits them (its real span names and attributes; each
//! service's spans in traces of their own), made with the OpenTelemetry SDK at chosen times
//! and handed to the real `opentelemetry-otlp` exporter, one per service.

use crate::support;

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanExporter as _};
use spanlens::server::Server;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use support::sdk::{Recorder, Transport, exporter_to, recording, start_span};

pub const ORCHESTRATION: &str = "tasker-orchestration";

/// One span as sent: what, when (microseconds from the scenario's base) and its ids.
#[derive(Debug, Clone)]
pub struct Sent {
    pub name: &'static str,
    pub start_us: u64,
    pub dur_us: u64,
    pub trace_id: String,
    pub span_id: String,
}

/// Makes spans per service and sends them.
pub struct Emitter {
    base: SystemTime,
    services: BTreeMap<&'static str, (SdkTracerProvider, SdkTracer, Recorder)>,
    pub sent: Vec<Sent>,
}

impl Emitter {
    /// Spans placed from `base`.
    pub fn new(base: SystemTime) -> Emitter {
        Emitter {
            base,
            services: BTreeMap::new(),
            sent: Vec::new(),
        }
    }

    /// A root span of `service` (a trace of its own), ended; returns its index in `sent`.
    pub fn span(
        &mut self,
        service: &'static str,
        name: &'static str,
        start_us: u64,
        dur_us: u64,
        attributes: Vec<KeyValue>,
    ) -> usize {
        let (_, tracer, _) = self.services.entry(service).or_insert_with(|| {
            let (builder, recorder) = recording(service);
            let provider = builder.build();
            let tracer = provider.tracer("tasker-core");
            (provider, tracer, recorder)
        });
        let start = self.base + Duration::from_micros(start_us);
        let context = start_span(tracer, name, SpanKind::Internal, start, attributes, None);
        let span = context.span();
        let ids = span.span_context().clone();
        span.end_with_timestamp(start + Duration::from_micros(dur_us));
        self.sent.push(Sent {
            name,
            start_us,
            dur_us,
            trace_id: ids.trace_id().to_string(),
            span_id: ids.span_id().to_string(),
        });
        self.sent.len() - 1
    }

    /// Exports every service's spans to `server` over OTLP/gRPC.
    pub async fn send(&self, server: &Server) {
        for (service, (_, _, recorder)) in &self.services {
            let spans: Vec<_> = recorder.spans.lock().unwrap().drain(..).collect();
            let resource = recorder.resource.lock().unwrap().clone().expect("resource");
            let exporter = exporter_to(server, Transport::Grpc(None), &resource);
            for batch in spans.chunks(500) {
                exporter
                    .export(batch.to_vec())
                    .await
                    .unwrap_or_else(|e| panic!("export {service}: {e}"));
            }
        }
    }
}

/// A canonical UUID from two numbers.
pub fn uuid(kind: u32, n: u64) -> String {
    format!("{kind:08x}-{:04x}-4000-8000-{n:012x}", n & 0xffff)
}

/// One task of a workflow, run step after step by one worker.
pub struct Task {
    pub correlation_id: String,
    pub task_uuid: String,
    pub task_name: &'static str,
    pub namespace: &'static str,
    pub worker: &'static str,
    /// Step names and their handler's time, microseconds.
    pub steps: Vec<(&'static str, u64)>,
}

/// Microseconds of one step around its handler: queue wait before the claim, result
/// submission, propagation to orchestration, result processing.
#[derive(Clone, Copy)]
pub struct Around {
    pub wait: u64,
    pub submit: u64,
    pub propagation: u64,
    pub process: u64,
}

/// Emits `task` from `start_us`: creation, enqueueing, each step (execution, completion,
/// result processing), finalization. Returns the indexes of its spans in `sent`.
pub fn emit(
    e: &mut Emitter,
    task: &Task,
    start_us: u64,
    around: impl Fn(usize) -> Around,
) -> Vec<usize> {
    let mut spans = Vec::new();
    let correlation = || KeyValue::new("correlation_id", task.correlation_id.clone());
    let task_uuid = || KeyValue::new("task_uuid", task.task_uuid.clone());
    spans.push(e.span(
        ORCHESTRATION,
        "create_task_from_request",
        start_us,
        17_000,
        vec![correlation(), KeyValue::new("task_name", task.task_name)],
    ));
    spans.push(e.span(
        ORCHESTRATION,
        "enqueue_ready_steps",
        start_us + 17_000,
        5_000,
        vec![task_uuid()],
    ));
    let mut at = start_us + 22_000;
    for (i, (step_name, handler_us)) in task.steps.iter().enumerate() {
        let a = around(i);
        at += a.wait;
        let step_uuid = KeyValue::new("step_uuid", uuid(0x57e9, (at << 8) + i as u64));
        spans.push(e.span(
            task.worker,
            "worker.step_execution",
            at,
            *handler_us,
            vec![
                KeyValue::new("correlation_id", uuid(0xf4e5, at)),
                task_uuid(),
                step_uuid.clone(),
                KeyValue::new("step_name", *step_name),
                KeyValue::new("namespace", task.namespace),
            ],
        ));
        at += handler_us;
        spans.push(e.span(
            task.worker,
            "worker.step_completion_received",
            at,
            a.submit,
            vec![
                task_uuid(),
                step_uuid.clone(),
                KeyValue::new("success", true),
            ],
        ));
        at += a.submit + a.propagation;
        spans.push(e.span(
            ORCHESTRATION,
            "handle_step_execution_result",
            at,
            a.process,
            vec![step_uuid],
        ));
        at += a.process;
    }
    spans.push(e.span(
        ORCHESTRATION,
        "finalize_task",
        at + 2_000,
        5_000,
        vec![task_uuid(), correlation()],
    ));
    spans
}
