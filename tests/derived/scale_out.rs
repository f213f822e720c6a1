//! Scaling out (issue 23, parts 2 and 3): many spanlens instances, one truth, checked through
//! the real Prometheus (`support::chain`) scraping every instance under one job.
//!
//! * Sidecars: three spanlens, each the sidecar of one worker service (Rust, Ruby, Python),
//!   and a fourth fed all the traffic; every series of every stage, derived, comparison and
//!   span-metrics histogram and counter, summed by Prometheus over the sidecars
//!   (`sum without (instance)`, so by service, handler_language, le ...), equals the fourth's
//!   exactly. Then the Ruby sidecar restarts on the same addresses, more traffic follows: its
//!   counters start again from zero, Prometheus records exactly one reset for it (not a drop),
//!   and the counters' reset-corrected totals over the sidecars still equal the fourth's.
//! * Gateways: two orchestration replicas, so that each task is created by one and finalized
//!   by the other, and three workers export through a key-affine gateway
//!   (`support::gateway`, what the Collector's load-balancing exporter in
//!   deploy/kubernetes/spanlens-gateway.yaml does) to three spanlens replicas: the sums over
//!   the replicas equal one instance fed everything, every derived histogram included. Through
//!   a gateway that routes at random, stage metrics still add up but joins are lost: each
//!   derived histogram counts fewer, every bucket at most what the one instance has (nothing
//!   wrong is emitted), and spanlens_join_evicted_total shows at least the loss.
//!
//! The workflows mix the design note's span names and tasker-core's real ones, and each
//! worker.step_execution carries a correlation id of its own (as tasker-core's sometimes do),
//! so only routing by step_uuid before correlation_id, as the manifest's Collector does
//! (the gateway reads the keys from the manifest), keeps every join whole: with the keys the
//! other way round the FFI overhead joins split and the sums differ.
//!
//! Spans come from the OpenTelemetry SDK (one provider per pod, explicit times) and go out
//! through the real `opentelemetry-otlp` exporter. Every duration is a whole number of 1/512 s
//! (1,953,125 ns), so the seconds spanlens computes, their sums and the derived sums and
//! differences are exact binary fractions: `_sum` series compare exactly too, whatever order
//! an instance added them in.

use crate::support;

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use serde_json::Value;
use spanlens::config::{Config, PromDuration};
use spanlens::server::Server;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};
use support::chain::Chain;
use support::deploy::gateway_routing;
use support::fleet::{
    compare_sums, instance, instances, pinned_config, summed_metrics, wait_scraped,
};
use support::gateway::{Gateway, Routing};
use support::process::TempDir;
use support::sdk::{Transport, attr, exporter_at, recording, start_span};
use support::tasker::{Vocab, stage_of};
use support::{Rng, scrape, start, test_config};

const JOB: &str = "spanlens";
const ORCHESTRATION: &str = "tasker-orchestration";
const WORKERS: [&str; 3] = [
    "tasker-rust-worker",
    "tasker-ruby-worker",
    "tasker-python-worker",
];
/// The Ruby worker's index in WORKERS: the sidecar that restarts.
const RUBY: usize = 1;
const ORCHESTRATION_REPLICAS: usize = 2;
const STEPS: usize = 3;
/// One time unit of the fixtures: 1/512 s.
const UNIT_NS: u64 = 1_953_125;

const SCRAPED: Duration = Duration::from_secs(20);

// ----------------------------------------------------------------------------------------------
// Fixture
// ----------------------------------------------------------------------------------------------

/// Where a span is emitted: an orchestration replica, or a worker service (WORKERS index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pod {
    Orchestration(usize),
    Worker(usize),
}

impl Pod {
    fn service(self) -> &'static str {
        match self {
            Pod::Orchestration(_) => ORCHESTRATION,
            Pod::Worker(w) => WORKERS[w],
        }
    }
}

struct Row {
    pod: Pod,
    name: &'static str,
    start: u64,
    units: u64,
    attrs: Vec<KeyValue>,
}

/// The vocabulary of task `task`: two nominal tasks, then two of tasker-core's real spans.
fn vocab(task: usize) -> Vocab {
    if (task / 2).is_multiple_of(2) {
        Vocab::Nominal
    } else {
        Vocab::Real
    }
}

/// Tasks `tasks` (see [`vocab`]): task i is created by orchestration replica i % 2 and
/// finalized by the other one, runs its steps on worker i % 3, and has each step result
/// processed by replica (i + step) % 2. In both vocabularies worker.step_execution carries a
/// correlation id of its own, as tasker-core's workers sometimes do: only its step_uuid ties
/// it to the step. Nominal steps also trace execute_handler inside it (ffi_overhead joins)
/// and claim with step_claim (worker_overhead joins); real steps claim with read_messages,
/// which has no step_uuid, so those two never complete for them, alike everywhere.
fn fixture(tasks: std::ops::Range<usize>) -> Vec<Row> {
    let mut rng = Rng::new(23);
    let mut rows = Vec::new();
    for task in tasks {
        let worker = Pod::Worker(task % WORKERS.len());
        let vocab = vocab(task);
        let correlation = format!("corr-{task:04}");
        let task_uuid = format!("task-{task:04}");
        let namespace = "rust_e2e_linear";
        let task_name = ["mathematical_sequence", "diamond_pattern"][task % 2];
        let mut at = task as u64 * 1024;
        let mut add = |pod, name, units: u64, attrs: Vec<KeyValue>, at: &mut u64| {
            rows.push(Row {
                pod,
                name,
                start: *at,
                units,
                attrs,
            });
            *at += units + 1;
        };
        let by_correlation = || KeyValue::new("correlation_id", correlation.clone());
        let by_task = || KeyValue::new("task_uuid", task_uuid.clone());
        let creator = task % ORCHESTRATION_REPLICAS;
        let (create, enqueue) = match vocab {
            Vocab::Nominal => (("create_task", vec![by_correlation()]), "enqueue_steps"),
            Vocab::Real => (
                ("create_task_from_request", vec![by_correlation()]),
                "enqueue_ready_steps",
            ),
        };
        let mut created = create.1;
        created.push(KeyValue::new("task_name", task_name));
        let o = Pod::Orchestration(creator);
        add(o, create.0, 4 + rng.next() % 12, created, &mut at);
        let enqueued = match vocab {
            Vocab::Nominal => by_correlation(),
            Vocab::Real => by_task(),
        };
        add(o, enqueue, 2 + rng.next() % 8, vec![enqueued], &mut at);
        for step in 0..STEPS {
            let step_uuid = format!("step-{task:04}-{step}");
            let by_step = || KeyValue::new("step_uuid", step_uuid.clone());
            let claim = 2 + rng.next() % 20;
            match vocab {
                Vocab::Nominal => {
                    let attrs = vec![by_step(), by_correlation()];
                    add(worker, "step_claim", claim, attrs, &mut at);
                }
                Vocab::Real => {
                    let queue = KeyValue::new("queue", format!("worker_{namespace}_queue"));
                    add(worker, "read_messages", claim, vec![queue], &mut at);
                    let callable = KeyValue::new(
                        "callable",
                        "tasker_example_rs::step_handlers::linear_workflow::LinearStep1Handler",
                    );
                    add(
                        worker,
                        "resolve",
                        1 + rng.next() % 4,
                        vec![callable],
                        &mut at,
                    );
                }
            }
            let handler = 3 + rng.next() % 60;
            let execution = vec![
                by_step(),
                KeyValue::new("correlation_id", format!("worker-{task:04}-{step}")),
                by_task(),
                KeyValue::new("step_name", format!("linear_step_{}", step + 1)),
                KeyValue::new("namespace", namespace),
            ];
            let exec_at = at;
            let exec = handler + 1 + rng.next() % 8;
            add(worker, "worker.step_execution", exec, execution, &mut at);
            let submit = 2 + rng.next() % 20;
            match vocab {
                Vocab::Nominal => {
                    let mut inner = exec_at + 1;
                    let attrs = vec![by_step(), by_correlation()];
                    add(worker, "execute_handler", handler, attrs, &mut inner);
                    let attrs = vec![by_step(), by_correlation()];
                    add(worker, "submit_result", submit, attrs, &mut at);
                }
                Vocab::Real => {
                    let attrs = vec![
                        by_task(),
                        by_step(),
                        KeyValue::new("success", true),
                        KeyValue::new("trace_id", correlation.clone()),
                        KeyValue::new("span_id", format!("span-{step_uuid}")),
                    ];
                    add(
                        worker,
                        "worker.step_completion_received",
                        submit,
                        attrs,
                        &mut at,
                    );
                }
            }
            at += rng.next() % 10;
            let (name, attrs) = match vocab {
                Vocab::Nominal => ("process_result", vec![by_step(), by_correlation()]),
                Vocab::Real => ("handle_step_execution_result", vec![by_step()]),
            };
            let processor = Pod::Orchestration((task + step) % ORCHESTRATION_REPLICAS);
            add(processor, name, 1 + rng.next() % 8, attrs, &mut at);
        }
        let finalizer = Pod::Orchestration((creator + 1) % ORCHESTRATION_REPLICAS);
        let attrs = vec![by_task(), by_correlation()];
        add(
            finalizer,
            "finalize_task",
            2 + rng.next() % 10,
            attrs,
            &mut at,
        );
    }
    rows
}

/// Each pod's spans as its SDK made them (explicit start and end times), with its resource.
struct Emitted {
    pods: BTreeMap<Pod, (Resource, Vec<SpanData>)>,
}

fn emit(rows: &[Row]) -> Emitted {
    let base = SystemTime::now() - Duration::from_secs(120);
    let at = |units: u64| base + Duration::from_nanos(units * UNIT_NS);
    let mut pods = BTreeMap::new();
    let mut all: Vec<Pod> = rows.iter().map(|r| r.pod).collect();
    all.sort();
    all.dedup();
    for pod in all {
        let (builder, recorder) = recording(pod.service());
        let provider = builder.build();
        let tracer = provider.tracer("tasker-core");
        for row in rows.iter().filter(|r| r.pod == pod) {
            start_span(
                &tracer,
                row.name,
                SpanKind::Internal,
                at(row.start),
                row.attrs.clone(),
                None,
            )
            .span()
            .end_with_timestamp(at(row.start + row.units));
        }
        let spans = std::mem::take(&mut *recorder.spans.lock().unwrap());
        let resource = recorder.resource.lock().unwrap().clone().expect("resource");
        provider.shutdown().expect("provider shutdown");
        pods.insert(pod, (resource, spans));
    }
    Emitted { pods }
}

/// Exports every pod's spans (those `which` picks) through the real OTLP exporter that
/// `exporter` makes for the pod, in requests of at most 64 spans.
async fn export(
    emitted: &Emitted,
    which: impl Fn(Pod) -> bool,
    exporter: impl Fn(Pod, &Resource) -> opentelemetry_otlp::SpanExporter,
) -> usize {
    let mut sent = 0;
    for (pod, (resource, spans)) in emitted.pods.iter().filter(|(p, _)| which(**p)) {
        let exporter = exporter(*pod, resource);
        for batch in spans.chunks(64) {
            exporter
                .export(batch.to_vec())
                .await
                .unwrap_or_else(|e| panic!("export of {pod:?}: {e}"));
            sent += batch.len();
        }
    }
    sent
}

fn grpc_to(server: &Server, resource: &Resource) -> opentelemetry_otlp::SpanExporter {
    exporter_at(Transport::Grpc(None), server.grpc_addr(), None, resource)
}

/// How many rows of `service` (all services when None) the fixture has named one of `names`.
fn count(rows: &[Row], service: Option<&str>, names: &[&str]) -> f64 {
    rows.iter()
        .filter(|r| names.contains(&r.name) && service.is_none_or(|s| r.pod.service() == s))
        .count() as f64
}

/// Spans of `service` by the stage the default profile's rules give them.
fn stage_calls(rows: &[Row], service: &str) -> BTreeMap<&'static str, f64> {
    let mut calls = BTreeMap::new();
    for row in rows.iter().filter(|r| r.pod.service() == service) {
        if let Some(stage) = stage_of(row.name, attr(&row.attrs, "queue").as_deref()) {
            *calls.entry(stage).or_insert(0.0) += 1.0;
        }
    }
    calls
}

/// One of these spans per step (submission, in either vocabulary); one per step whose
/// worker_overhead and ffi_overhead join (the nominal claim).
const STEP_SUBMISSIONS: [&str; 2] = ["submit_result", "worker.step_completion_received"];
const NOMINAL_CLAIMS: [&str; 1] = ["step_claim"];

// ----------------------------------------------------------------------------------------------
// Prometheus
// ----------------------------------------------------------------------------------------------

async fn prometheus(scratch: &TempDir, targets: &[&Server]) -> Chain {
    let targets = targets.iter().map(|s| instance(s)).collect();
    Chain::scraping(scratch, JOB, targets, &[]).await
}

/// Fails with every differing series unless the sums over `group` equal `one` series by
/// series, and at least `at_least` series were compared.
async fn assert_sums_equal(
    chain: &Chain,
    names: &[String],
    group: &[&Server],
    one: &Server,
    at_least: usize,
    what: &str,
) -> usize {
    let sums = compare_sums(chain, names, &instances(group), &instance(one)).await;
    chain
        .check(
            sums.differing.is_empty() && sums.equal >= at_least,
            &format!(
                "{what}: every series summed over the group equals the one instance's ({} equal, \
                 at least {at_least} expected; {} differ)",
                sums.equal,
                sums.differing.len()
            ),
            &serde_json::json!(sums.differing),
        )
        .await;
    sums.equal
}

/// The value of `metric` with these labels on the instance of `server`, as scraped directly.
async fn direct(server: &Server, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(server).await.sum(metric, labels)
}

// ----------------------------------------------------------------------------------------------
// Sidecars
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_summed_by_prometheus_equal_one_instance_and_a_restart_is_a_reset() {
    let began = Instant::now();
    let scratch = TempDir::new("sidecars");
    let configs: Vec<Config> = (0..WORKERS.len()).map(|_| pinned_config(|_| {})).collect();
    let mut sidecars = Vec::new();
    for config in &configs {
        sidecars.push(start(config.clone()).await);
    }
    let single = start(test_config(|_| {})).await;
    fn everyone<'s>(sidecars: &'s [Server], single: &'s Server) -> Vec<&'s Server> {
        sidecars.iter().chain([single]).collect()
    }
    let chain = prometheus(&scratch, &everyone(&sidecars, &single)).await;
    let names = summed_metrics(&configs[0]);

    // Before the restart: 24 tasks, 8 per worker. Each worker exports to its own sidecar;
    // the single instance gets the same spans from every worker.
    let before = fixture(0..24);
    let emitted = emit(&before);
    let is_worker = |pod| matches!(pod, Pod::Worker(_));
    let to_sidecars = export(&emitted, is_worker, |pod, resource| match pod {
        Pod::Worker(w) => grpc_to(&sidecars[w], resource),
        Pod::Orchestration(_) => unreachable!(),
    })
    .await;
    let to_single = export(&emitted, is_worker, |_, r| grpc_to(&single, r)).await;
    assert_eq!(to_sidecars, to_single);
    wait_scraped(&chain, &everyone(&sidecars, &single), SCRAPED).await;
    let series = assert_sums_equal(
        &chain,
        &names,
        &sidecars.iter().collect::<Vec<_>>(),
        &single,
        // Per worker: 5 stages' buckets, counts, sums and calls...: far more than 100.
        100,
        "three sidecars before the restart",
    )
    .await;
    // The one instance holds the fixture, span for span and join for join.
    let config = &configs[0];
    for service in WORKERS {
        let labels = [("service", service)];
        let stages = stage_calls(&before, service);
        assert_eq!(stages.len(), 4, "{service}: {stages:?}");
        for (stage, want) in stages {
            let calls = &config.stages[stage].calls;
            let got = direct(&single, calls, &labels).await;
            assert_eq!(got, want, "{calls} {labels:?}");
        }
        let joined = count(&before, Some(service), &NOMINAL_CLAIMS);
        assert!(joined > 0.0, "{service} has nominal steps");
        for derived in ["worker_overhead", "ffi_overhead"] {
            let metric = format!("{}_count", config.derived[derived].histogram);
            let got = direct(&single, &metric, &labels).await;
            assert_eq!(got, joined, "{metric} {labels:?}");
        }
    }

    // The Ruby sidecar restarts on the same addresses (the same Prometheus target).
    let ruby = sidecars.remove(RUBY);
    let ruby_instance = instance(&ruby);
    let ruby_before = scrape(&ruby).await;
    ruby.shutdown().await;
    sidecars.insert(RUBY, start(configs[RUBY].clone()).await);
    assert_eq!(instance(&sidecars[RUBY]), ruby_instance);

    // After it: 6 more tasks, 2 per worker (the Ruby worker's both nominal), fewer than
    // before the restart in every series, so that each restarted counter comes back below
    // its last value.
    let after = fixture(24..30);
    let emitted = emit(&after);
    export(&emitted, is_worker, |pod, resource| match pod {
        Pod::Worker(w) => grpc_to(&sidecars[w], resource),
        Pod::Orchestration(_) => unreachable!(),
    })
    .await;
    export(&emitted, is_worker, |_, r| grpc_to(&single, r)).await;
    wait_scraped(&chain, &everyone(&sidecars, &single), SCRAPED).await;

    // The restarted sidecar counts from zero: only what came after the restart.
    let ruby_labels = [("service", WORKERS[RUBY])];
    let ruby_after = scrape(&sidecars[RUBY]).await;
    let claims_after = stage_calls(&after, WORKERS[RUBY])["step_claim"];
    assert_eq!(
        ruby_after.sum("tasker_step_claim_calls_total", &ruby_labels),
        claims_after
    );

    // Prometheus saw one reset of each restarted counter, none elsewhere, and the counters'
    // reset-corrected totals (what rate() and increase() add up) summed over the sidecars
    // equal the single instance's counters.
    let lookback = format!("{}s", began.elapsed().as_secs() + 30);
    let counters: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("_total") || n.ends_with("_count"))
        .collect();
    let (mut checked, mut reset_series) = (0, 0);
    for name in counters {
        let resets = chain
            .query(&format!(
                "resets({name}{{job=\"{JOB}\", instance!=\"{}\"}}[{lookback}])",
                instance(&single)
            ))
            .await
            .expect("Prometheus answers");
        for series in &resets {
            let n: f64 = series["value"][1].as_str().unwrap().parse().unwrap();
            // A series of the restarted sidecar that counted something before the restart
            // and is back after it (a counter still at 0, or not seen again, shows no reset).
            let labels = own_labels(&series["metric"]);
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let restarted = series["metric"]["instance"] == ruby_instance.as_str()
                && ruby_before.value(name, &labels).is_some_and(|v| v > 0.0)
                && ruby_after.value(name, &labels).is_some();
            let want = if restarted { 1.0 } else { 0.0 };
            reset_series += usize::from(restarted);
            chain
                .check(
                    n == want,
                    &format!("{name}: {want} resets of the series seen by Prometheus"),
                    series,
                )
                .await;
        }
        let corrected = reset_corrected(&chain, name, &lookback).await;
        let (mut summed, mut single_totals) = (BTreeMap::new(), BTreeMap::new());
        for ((instance_label, labels), total) in corrected {
            let side = if instance_label == instance(&single) {
                &mut single_totals
            } else {
                &mut summed
            };
            *side.entry(labels).or_insert(0.0) += total;
        }
        chain
            .check(
                summed == single_totals,
                &format!(
                    "{name}: reset-corrected totals summed over the sidecars equal the single \
                     instance's"
                ),
                &serde_json::json!({"sidecars": summed, "single": single_totals}),
            )
            .await;
        checked += single_totals.len();
    }
    assert!(checked > 20, "{checked} counter series checked");
    assert!(
        reset_series > 10,
        "{reset_series} series of the restarted sidecar reset"
    );
    // The single instance counted both phases.
    let claims = stage_calls(&before, WORKERS[RUBY])["step_claim"] + claims_after;
    assert_eq!(
        direct(&single, "tasker_step_claim_calls_total", &ruby_labels).await,
        claims
    );

    println!(
        "sidecars: {series} series equal before the restart, {checked} counter series \
         reset-corrected after it ({reset_series} reset once); {:.1}s",
        began.elapsed().as_secs_f64()
    );
    drop(chain);
    for server in sidecars {
        server.shutdown().await;
    }
    single.shutdown().await;
}

/// The labels of a Prometheus series but its name, job and instance: those spanlens serves.
fn own_labels(metric: &Value) -> Vec<(String, String)> {
    metric
        .as_object()
        .expect("labels")
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "job" | "instance"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// For every series of `name` in the job: its (instance, other labels) and its total with
/// resets corrected, from the raw samples of the last `lookback`: the last value plus every
/// value that a lower one followed (what rate() does, without extrapolation).
async fn reset_corrected(
    chain: &Chain,
    name: &str,
    lookback: &str,
) -> Vec<((String, String), f64)> {
    let matrix = chain
        .query(&format!("{name}{{job=\"{JOB}\"}}[{lookback}]"))
        .await
        .expect("Prometheus answers");
    matrix
        .iter()
        .map(|series| {
            let mut labels = series["metric"].clone();
            let labels_map = labels.as_object_mut().unwrap();
            let instance = labels_map
                .remove("instance")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            labels_map.remove("__name__");
            let values: Vec<f64> = series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v[1].as_str().unwrap().parse().unwrap())
                .collect();
            let mut total = 0.0;
            for pair in values.windows(2) {
                if pair[1] < pair[0] {
                    total += pair[0];
                }
            }
            total += values.last().copied().unwrap_or(0.0);
            ((instance, labels.to_string()), total)
        })
        .collect()
}

// ----------------------------------------------------------------------------------------------
// Gateways
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_affine_gateway_completes_every_join_across_replicas_and_random_routing_loses_joins()
{
    let began = Instant::now();
    let scratch = TempDir::new("gateways");
    let config = test_config(|_| {});
    let mut keyed = Vec::new();
    let mut random = Vec::new();
    for _ in 0..3 {
        keyed.push(start(config.clone()).await);
        // Keys that miss a part leave the window after 3 s instead of 5 min.
        random.push(
            start(test_config(|c| {
                c.join.max_wait = PromDuration::parse("3s").expect("a duration")
            }))
            .await,
        );
    }
    let single = start(config.clone()).await;
    let grpc = |servers: &[Server]| -> Vec<_> {
        servers
            .iter()
            .map(|s| s.grpc_addr().expect("gRPC on"))
            .collect()
    };
    // Routed as the gateway manifest's Collector routes: by step_uuid, else correlation_id,
    // else the trace id.
    let deployed = gateway_routing();
    let routing = Routing::Keys {
        keys: deployed.keys,
        trace_id_fallback: deployed.trace_id_fallback,
    };
    let key_affine = Gateway::start(&grpc(&keyed), routing).await;
    let key_blind = Gateway::start(&grpc(&random), Routing::Random(23)).await;
    let all: Vec<&Server> = keyed.iter().chain(&random).chain([&single]).collect();
    let chain = prometheus(&scratch, &all).await;

    // 30 tasks in both vocabularies, each created on one orchestration replica and
    // finalized on the other.
    let rows = fixture(0..30);
    for task in 0..30 {
        let correlation = format!("corr-{task:04}");
        let pod_of = |name| {
            rows.iter()
                .find(|r| {
                    r.name == name
                        && r.attrs.iter().any(|kv| {
                            kv.key.as_str() == "correlation_id"
                                && kv.value.as_str() == correlation.as_str()
                        })
                })
                .map(|r| r.pod)
                .expect("a row")
        };
        let created = match vocab(task) {
            Vocab::Nominal => pod_of("create_task"),
            Vocab::Real => pod_of("create_task_from_request"),
        };
        assert_ne!(created, pod_of("finalize_task"), "{correlation}");
    }
    let emitted = emit(&rows);
    let through = |gateway: &Gateway| {
        let addr = gateway.addr;
        move |_: Pod, resource: &Resource| {
            exporter_at(Transport::HttpProtobuf, None, Some(addr), resource)
        }
    };
    let sent = export(&emitted, |_| true, through(&key_affine)).await;
    assert_eq!(export(&emitted, |_| true, through(&key_blind)).await, sent);
    assert_eq!(
        export(&emitted, |_| true, |_, r| grpc_to(&single, r)).await,
        sent
    );
    for gateway in [&key_affine, &key_blind] {
        let routed = gateway.routed();
        assert_eq!(routed.iter().sum::<usize>(), sent, "{routed:?}");
        assert!(
            routed.iter().all(|n| *n > 0),
            "every replica gets spans: {routed:?}"
        );
    }

    // Prometheus has every span; then the random replicas evict what cannot complete (after
    // 3 s, checked at each scrape: the scrape that shows no key pending counts them).
    wait_scraped(&chain, &all, SCRAPED).await;
    let random_instances = instances(&random.iter().collect::<Vec<_>>());
    chain
        .until(
            "the random replicas to evict every incomplete key",
            Duration::from_secs(30),
            async || {
                let pending = chain
                    .scalar(&format!(
                        "sum(spanlens_join_pending{{instance=~\"{random_instances}\"}})"
                    ))
                    .await?;
                (pending == 0.0).then_some(())
            },
        )
        .await;

    // The one instance completed every join of the fixture.
    let tasks = count(&rows, None, &["finalize_task"]);
    let steps = count(&rows, None, &STEP_SUBMISSIONS);
    let nominal = count(&rows, None, &NOMINAL_CLAIMS);
    assert!(nominal > 0.0 && nominal < steps, "both vocabularies");
    let derived: BTreeMap<&str, f64> = [
        ("tasker_task_e2e_duration_seconds", tasks),
        ("tasker_result_propagation_seconds", steps),
        ("tasker_worker_overhead_seconds", nominal),
        ("tasker_ffi_overhead_seconds", nominal),
    ]
    .into();
    assert_eq!(derived.len(), config.derived.len());
    for (histogram, want) in &derived {
        let got = direct(&single, &format!("{histogram}_count"), &[]).await;
        assert_eq!(got, *want, "{histogram}_count of the single instance");
    }

    // Key-affine: everything, derived histograms included, adds up exactly; nothing evicted.
    let names = summed_metrics(&config);
    let keyed_refs: Vec<&Server> = keyed.iter().collect();
    let series = assert_sums_equal(&chain, &names, &keyed_refs, &single, 100, "key-affine").await;
    for server in &keyed {
        assert_eq!(
            direct(server, "spanlens_join_evicted_total", &[]).await,
            0.0,
            "a key-affine replica evicted a key"
        );
    }

    // Random: every span still counted once (stage and span metrics add up) ...
    let random_refs: Vec<&Server> = random.iter().collect();
    let per_span: Vec<String> = names
        .iter()
        .filter(|n| !derived.keys().any(|d| n.starts_with(d)))
        .cloned()
        .collect();
    assert_sums_equal(
        &chain,
        &per_span,
        &random_refs,
        &single,
        50,
        "random, per span",
    )
    .await;
    // ... but joins are lost, shown by the eviction counters, and no derived value is wrong:
    // each bucket holds at most what the one instance has in it.
    let mut losses = BTreeMap::new();
    for (histogram, want) in &derived {
        let summed_count = chain
            .scalar(&format!(
                "sum({histogram}_count{{instance=~\"{random_instances}\"}})"
            ))
            .await
            .unwrap_or(0.0);
        let name = histogram_derived_name(&config, histogram);
        let evicted = chain
            .scalar(&format!(
                "sum(spanlens_join_evicted_total{{instance=~\"{random_instances}\", \
                 derived=\"{name}\", reason=\"timeout\"}})"
            ))
            .await
            .unwrap_or(0.0);
        let lost = want - summed_count;
        chain
            .check(
                lost > 0.0 && evicted >= lost,
                &format!(
                    "{histogram}: random routing completes fewer joins ({summed_count} of \
                     {want}) and evicts at least the {lost} lost ({evicted} evicted)"
                ),
                &Value::Null,
            )
            .await;
        let over = buckets_over(&chain, histogram, &random_instances, &instance(&single)).await;
        chain
            .check(
                over.is_empty(),
                &format!("{histogram}: no bucket of the random replicas holds more than the one instance's"),
                &serde_json::json!(over),
            )
            .await;
        losses.insert(*histogram, (summed_count, *want, evicted));
    }
    let late = chain
        .scalar(&format!(
            "sum(spanlens_join_late_spans_total{{instance=~\"{random_instances}\"}}) or vector(0)"
        ))
        .await
        .unwrap_or(0.0);
    assert_eq!(late, 0.0, "no span came after its key was evicted");

    println!(
        "gateways: {series} series equal through the key-affine gateway (routed {:?}); random \
         routing (routed {:?}) completed/expected/evicted {losses:?}; {:.1}s",
        key_affine.routed(),
        key_blind.routed(),
        began.elapsed().as_secs_f64()
    );
    drop(chain);
    for server in keyed.into_iter().chain(random) {
        server.shutdown().await;
    }
    single.shutdown().await;
}

/// The config name of the derived metric whose histogram is `histogram`.
fn histogram_derived_name<'c>(config: &'c Config, histogram: &str) -> &'c str {
    config
        .derived
        .iter()
        .find(|(_, d)| d.histogram == histogram)
        .map(|(name, _)| name.as_str())
        .unwrap_or_else(|| panic!("no derived metric has the histogram {histogram}"))
}

/// The buckets (labels with `le`) in which the sum over `group` holds more observations than
/// `one` (bucket by bucket, not cumulative): observations one instance never made.
async fn buckets_over(chain: &Chain, histogram: &str, group: &str, one: &str) -> Vec<String> {
    let per_bucket = async |selector: String| -> BTreeMap<String, Vec<(f64, f64)>> {
        let result = chain
            .query(&format!(
                "sum without (instance) ({histogram}_bucket{{{selector}}})"
            ))
            .await
            .expect("Prometheus answers");
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for r in result {
            let mut labels = r["metric"].clone();
            let le = labels
                .as_object_mut()
                .unwrap()
                .remove("le")
                .and_then(|v| v.as_str().map(support::parse_le))
                .expect("le");
            let value: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            by_series
                .entry(labels.to_string())
                .or_default()
                .push((le, value));
        }
        for buckets in by_series.values_mut() {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let cumulative: Vec<f64> = buckets.iter().map(|b| b.1).collect();
            for (i, bucket) in buckets.iter_mut().enumerate() {
                bucket.1 = cumulative[i] - if i == 0 { 0.0 } else { cumulative[i - 1] };
            }
        }
        by_series
    };
    let summed = per_bucket(format!("instance=~\"{group}\"")).await;
    let single = per_bucket(format!("instance=\"{one}\"")).await;
    let mut over = Vec::new();
    for (labels, buckets) in &summed {
        let theirs = single.get(labels);
        for (le, n) in buckets {
            let limit = theirs
                .and_then(|b| b.iter().find(|(l, _)| l == le))
                .map_or(0.0, |b| b.1);
            if *n > limit {
                over.push(format!("{labels} le={le}: {n} > {limit}"));
            }
        }
    }
    over
}
