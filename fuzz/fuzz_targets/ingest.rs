//! Any bytes into the default profile's pipeline: never a panic; a request that decodes has
//! each of its spans accepted or rejected exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanlens::config::Config;
use spanlens::otlp::decode::Batch;
use spanlens::otlp::Protocol;
use spanlens::otlp::refusal::Refusal;
use spanlens::pipeline::Pipeline;
use std::sync::OnceLock;

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| Pipeline::new(&Config::default_profile()).expect("default profile"))
}

fuzz_target!(|data: &[u8]| {
    let spans = Batch::decode(data).ok().map(|b| b.spans.len());
    match (pipeline().ingest(Protocol::HttpProtobuf, data), spans) {
        (Ok(outcome), Some(spans)) => assert_eq!(outcome.accepted + outcome.rejected, spans),
        (Err(Refusal::AllSpansInvalid(_)), Some(spans)) => assert!(spans > 0),
        (Err(Refusal::Malformed(_)), None) => {}
        (got, spans) => panic!("ingest said {got:?}, the decoder found {spans:?} spans"),
    }
});
