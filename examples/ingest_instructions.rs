//! `Pipeline::ingest` of fixture requests in one thread, for instruction counts (callgrind)
//! and thread CPU time, as BENCHMARKS.md quotes them: 16 fixture requests of 512 spans,
//! their ids renewed for every pass (a join key completes only within one pass, as in the
//! load generator), the first `warm-up` of them ingested before the timed ones.
//!
//! ```sh
//! cargo build --release --example ingest_instructions
//! valgrind --tool=callgrind --cache-sim=yes --LL=33554432,16,64 \
//!   --toggle-collect='ingest_instructions::main::{{closure}}' target/release/examples/ingest_instructions 1536 512
//! ```
//!
//! It runs on the system allocator (callgrind reads its instructions too); the binary uses
//! jemalloc. Arguments: requests (default 1,536), warm-up requests among them (default 512),
//! then optionally features of the default profile to turn off, comma-separated (`none` for
//! none; `stages_only` for all of them; `decode_classify_aggregate` for derived, dedupe and
//! breakdown), to measure what each costs:
//!
//! ```sh
//! target/release/examples/ingest_instructions 3072 1024 derived
//! target/release/examples/ingest_instructions 3072 1024 span_metrics,breakdown
//! ```
//!
//! The features are those of `benches/support/profiles.rs`: span_metrics, derived,
//! comparisons, dedupe, breakdown, native_histograms.

#[path = "../benches/support/cpu_time.rs"]
mod cpu_time;
#[path = "../benches/support/profiles.rs"]
mod profiles;

use spanlens::otlp::Protocol;
use spanlens::pipeline::Pipeline;
use spanlens_loadgen::fixtures::{Fixtures, Renewable};

const SPANS: usize = 512;

fn argument(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map_or(default, |a| a.parse().expect("a count"))
}

fn main() {
    let requests = argument(1, 1536);
    let warm = argument(2, 512).min(requests);
    let templates: Vec<Renewable> = Fixtures::new(1)
        .encoded_requests(16, SPANS)
        .into_iter()
        .map(Renewable::protobuf)
        .collect();
    let bodies: Vec<Vec<u8>> = (0..requests)
        .map(|i| {
            let mut body = Vec::new();
            let pass = u32::try_from(i / templates.len() + 1).expect("fewer passes than 2^32");
            templates[i % templates.len()].renew_into(pass, &mut body);
            body
        })
        .collect();
    let without = std::env::args().nth(3).unwrap_or_else(|| "none".into());
    let features: Vec<&str> = match without.as_str() {
        "none" => Vec::new(),
        "stages_only" => profiles::STAGES_ONLY.to_vec(),
        "decode_classify_aggregate" => profiles::DECODE_CLASSIFY_AGGREGATE.to_vec(),
        list => list.split(',').collect(),
    };
    let config = profiles::default_profile_without(&features);
    let pipeline = Pipeline::new(&config).expect("a valid profile");
    let ingest = |body: &Vec<u8>| {
        let outcome = pipeline.ingest(Protocol::Grpc, body).expect("accepted");
        assert_eq!(outcome.accepted, SPANS);
    };
    bodies[..warm].iter().for_each(ingest);
    let mut timed = bodies[warm..].iter();
    let cpu = cpu_time::cpu_time(
        (requests - warm) as u64,
        || timed.next().expect("a body per request"),
        ingest,
    )
    .as_secs_f64();
    let spans = (requests - warm) * SPANS;
    println!(
        "{} requests after {warm} of warm-up, features off: {without}: {cpu:.3} s of thread CPU, \
         {:.0} spans per CPU-second",
        requests - warm,
        spans as f64 / cpu
    );
}
