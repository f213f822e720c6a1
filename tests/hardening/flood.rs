//! Hardening item 2 — A flood of 10,000 malformed requests (random bytes; valid requests with
//! bits flipped, cut short, with wrong lengths inside the protobuf, the JSON or the gRPC frame)
//! over gRPC, OTLP/HTTP protobuf and OTLP/HTTP JSON, while valid traffic runs alongside. The
//! process stays up, every valid span is counted exactly once, and each bad request gets what
//! the library's own decoding path says it deserves: 400 / INVALID_ARGUMENT, or, for a mutant
//! that is still a valid request, 200 with its invalid spans in partial_success (its accepted
//! spans are then added to what must be counted).

use crate::otlp::*;
use crate::support::Rng;
use crate::support::process::Setup;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::task::JoinSet;

const BAD_REQUESTS: usize = 10_000;
const BAD_TASKS: usize = 6;
const VALID_TASKS: usize = 3;
const LIMIT: usize = 4 * 1024 * 1024;

/// What spanlens must answer to a body, by the library's own decoding path (the receivers
/// run exactly this): None when it must be refused as malformed, `Some(Err(()))` when as too
/// large (a damaged zstd frame header may declare more than the limit), else the spans and
/// invalid spans.
fn expected(
    proto: Proto,
    encoding: Option<&str>,
    body: &[u8],
) -> Option<Result<(usize, usize), ()>> {
    let encoding = spanlens::otlp::body::Encoding::parse(encoding).ok()?;
    let decoded = match spanlens::otlp::body::decode(encoding, body, LIMIT) {
        Ok(decoded) => decoded,
        Err(spanlens::otlp::body::BodyError::TooLarge { .. }) => return Some(Err(())),
        Err(_) => return None,
    };
    let protobuf = match proto {
        Proto::HttpJson => spanlens::otlp::json::to_protobuf(&decoded).ok()?,
        _ => decoded.to_vec(),
    };
    let batch = default_pipeline().decode(&protobuf).ok()?;
    let invalid = batch.spans.iter().filter(|s| s.problem().is_some()).count();
    let spans = batch.spans.len();
    if spans > 0 && invalid == spans {
        return None;
    }
    Some(Ok((spans, invalid)))
}

/// The request mutants start from: fresh ids, a service and stage valid traffic never uses.
fn base_request() -> ExportTraceServiceRequest {
    request(
        "tasker-python-worker",
        vec![
            span(
                "submit_result",
                &[("step_uuid", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")],
            ),
            span("submit_result", &[("namespace", "linear_workflow_py")]),
            span(
                "send_json_message",
                &[("queue", "orchestration_step_results")],
            ),
        ],
    )
}

/// One bad request: (description, encoding, body as sent; for gRPC the whole framed body).
fn mutant(rng: &mut Rng, proto: Proto) -> (String, Option<&'static str>, Vec<u8>) {
    let valid = proto.body(&base_request());
    let kind = rng.below(5);
    let (what, mut body) = match kind {
        0 => {
            let n = 1 + rng.below(1500);
            (format!("{n} random bytes"), rng.bytes(n))
        }
        1 => {
            let mut body = valid.clone();
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let i = rng.below(body.len());
                body[i] ^= 1 << rng.below(8);
            }
            (format!("{flips} bits flipped"), body)
        }
        2 => {
            let cut = rng.below(valid.len());
            (
                format!("cut to {cut} of {} bytes", valid.len()),
                valid[..cut].to_vec(),
            )
        }
        3 => wrong_length(rng, proto, valid),
        _ => {
            // Random bytes spliced into the middle.
            let at = rng.below(valid.len());
            let n = 1 + rng.below(64);
            let mut body = valid[..at].to_vec();
            body.extend(rng.bytes(n));
            body.extend_from_slice(&valid[at..]);
            (format!("{n} random bytes spliced in at {at}"), body)
        }
    };
    let mut encoding = None;
    if rng.below(8) == 0 {
        // Some mutants compressed (a valid stream of invalid content), some compressed then
        // damaged.
        let name = if rng.below(2) == 0 { "gzip" } else { "zstd" };
        body = if name == "gzip" {
            gzip(&body)
        } else {
            zstd(&body)
        };
        if rng.below(2) == 0 {
            let i = rng.below(body.len());
            body[i] ^= 1 << rng.below(8);
        }
        encoding = Some(name);
    }
    let what = format!("{proto:?} {encoding:?}: {what}");
    if proto != Proto::Grpc {
        return (what, encoding, body);
    }
    let mut frame = vec![u8::from(encoding.is_some())];
    let mut declared = body.len() as u32;
    let mut what = what;
    if rng.below(6) == 0 {
        // The gRPC frame's own length is wrong.
        let delta = 1 + rng.below(40) as u32;
        declared = if rng.below(2) == 0 {
            declared.saturating_sub(delta)
        } else {
            declared + delta
        };
        if declared == body.len() as u32 {
            declared += 1;
        }
        what.push_str(&format!(", frame says {declared} bytes for {}", body.len()));
    }
    frame.extend_from_slice(&declared.to_be_bytes());
    frame.extend_from_slice(&body);
    (what, encoding, frame)
}

/// Changes one length inside the request: a protobuf length prefix, or in JSON the length of
/// an id or a string.
fn wrong_length(rng: &mut Rng, proto: Proto, valid: Vec<u8>) -> (String, Vec<u8>) {
    let mut body = valid;
    if proto == Proto::HttpJson {
        let text = String::from_utf8(body).unwrap();
        let (needle, what) = match rng.below(3) {
            0 => ("\"traceId\":\"", "trace id"),
            1 => ("\"spanId\":\"", "span id"),
            _ => ("\"stringValue\":\"", "string"),
        };
        let Some(at) = text.find(needle).map(|i| i + needle.len()) else {
            return ("no such field".into(), text.into_bytes());
        };
        let mut text = text;
        if rng.below(2) == 0 {
            text.replace_range(at..at + 2, "");
            return (format!("{what} two characters short"), text.into_bytes());
        }
        text.insert_str(at, "ab");
        return (format!("{what} two characters long"), text.into_bytes());
    }
    // Protobuf: find the length-delimited fields (wire type 2) of the top levels by walking
    // the message, then change one length.
    let mut lengths = Vec::new();
    collect_lengths(&body, 0, 0, &mut lengths);
    if lengths.is_empty() {
        return ("no length found".into(), body);
    }
    let at = lengths[rng.below(lengths.len())];
    let old = body[at];
    let new = match rng.below(3) {
        0 => old.wrapping_add(1 + rng.below(5) as u8),
        1 => old.wrapping_sub(1 + rng.below(5) as u8),
        _ => rng.next() as u8,
    };
    body[at] = if new == old { old ^ 1 } else { new };
    (
        format!("length byte at {at} changed from {old} to {}", body[at]),
        body,
    )
}

/// Offsets of the first byte of each length prefix in a protobuf message, recursing into
/// nested messages (best effort: stops at anything it cannot read).
fn collect_lengths(buf: &[u8], offset: usize, depth: usize, out: &mut Vec<usize>) {
    let mut i = 0;
    let varint = |i: &mut usize| -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*i)?;
            *i += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    };
    while i < buf.len() {
        let Some(key) = varint(&mut i) else { return };
        match key & 7 {
            0 => {
                if varint(&mut i).is_none() {
                    return;
                }
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let at = i;
                let Some(len) = varint(&mut i) else { return };
                let len = len as usize;
                if i + len > buf.len() {
                    return;
                }
                out.push(offset + at);
                if depth < 4 {
                    collect_lengths(&buf[i..i + len], offset + i, depth + 1, out);
                }
                i += len;
            }
            _ => return,
        }
    }
}

#[derive(Default)]
struct Tally {
    refused: usize,
    still_valid: usize,
    /// Spans accepted from still-valid mutants, by protocol (grpc, http_protobuf, http_json).
    accepted: [u64; 3],
    wrong: Vec<String>,
}

fn index(proto: Proto) -> usize {
    match proto {
        Proto::Grpc => 0,
        Proto::HttpProtobuf => 1,
        Proto::HttpJson => 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flood_leaves_exactly_the_valid_spans() {
    let mut app = Setup::new()
        .set("receivers.max_request_bytes", &LIMIT.to_string())
        .start();
    let client = Otlp::new(&app);
    let started = Instant::now();

    // Valid traffic until the flood is over.
    let done = Arc::new(AtomicBool::new(false));
    let mut valid = JoinSet::new();
    for t in 0..VALID_TASKS {
        let client = client.clone();
        let done = done.clone();
        valid.spawn(async move {
            let mut sent = [0u64; 3];
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) || i < 20 {
                let proto = Proto::ALL[(t + i) % 3];
                let request = request(SERVICE, claims(1 + i % 4));
                let body = proto.body(&request);
                let (encoding, body) = match i % 3 {
                    0 => (None, body),
                    1 => (Some("gzip"), gzip(&body)),
                    _ => (Some("zstd"), zstd(&body)),
                };
                let reply = client
                    .send(proto, encoding, body)
                    .await
                    .unwrap_or_else(|e| panic!("valid {proto:?} request: {e}"));
                assert!(
                    reply.accepted() && reply.rejected == 0,
                    "valid {proto:?} {encoding:?} request: {reply:?}"
                );
                sent[index(proto)] += span_count(&request);
                i += 1;
            }
            sent
        });
    }

    let mut flood = JoinSet::new();
    for t in 0..BAD_TASKS {
        let client = client.clone();
        flood.spawn(async move {
            let mut rng = Rng::new(0x5eed_0000 + t as u64);
            let mut tally = Tally::default();
            let n = BAD_REQUESTS / BAD_TASKS + usize::from(t < BAD_REQUESTS % BAD_TASKS);
            for i in 0..n {
                let proto = Proto::ALL[(i + t) % 3];
                let (what, encoding, body) = mutant(&mut rng, proto);
                let expect = match proto {
                    Proto::Grpc => {
                        let declared = u32::from_be_bytes(body[1..5].try_into().unwrap());
                        if declared as usize == body.len() - 5 {
                            expected(proto, encoding, &body[5..])
                        } else {
                            None
                        }
                    }
                    _ => expected(proto, encoding, &body),
                };
                let reply = match proto {
                    Proto::Grpc => client.send_grpc_raw(encoding, body).await,
                    _ => client.send(proto, encoding, body).await,
                };
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(e) => {
                        tally.wrong.push(format!("{what}: no answer: {e}"));
                        continue;
                    }
                };
                match expect {
                    None => {
                        let bad = match reply.grpc {
                            Some(code) => code == INVALID_ARGUMENT,
                            None => reply.http == 400,
                        };
                        if bad {
                            tally.refused += 1;
                        } else {
                            tally
                                .wrong
                                .push(format!("{what}: expected 400 / INVALID_ARGUMENT, got {}: {}", reply.code(), reply.message));
                        }
                    }
                    Some(Err(())) => {
                        let too_large = match reply.grpc {
                            Some(code) => code == RESOURCE_EXHAUSTED,
                            None => reply.http == 413,
                        };
                        if too_large {
                            tally.refused += 1;
                        } else {
                            tally.wrong.push(format!(
                                "{what}: expected 413 / RESOURCE_EXHAUSTED, got {}: {}",
                                reply.code(),
                                reply.message
                            ));
                        }
                    }
                    Some(Ok((spans, invalid))) => {
                        if reply.accepted() && reply.rejected == invalid as i64 {
                            tally.still_valid += 1;
                            tally.accepted[index(proto)] += (spans - invalid) as u64;
                        } else {
                            tally.wrong.push(format!(
                                "{what}: still a valid request of {spans} spans ({invalid} invalid), got {} with {} rejected: {}",
                                reply.code(),
                                reply.rejected,
                                reply.message
                            ));
                        }
                    }
                }
            }
            tally
        });
    }

    let mut tally = Tally::default();
    while let Some(done) = flood.join_next().await {
        let done = done.expect("a flood task");
        tally.refused += done.refused;
        tally.still_valid += done.still_valid;
        for i in 0..3 {
            tally.accepted[i] += done.accepted[i];
        }
        tally.wrong.extend(done.wrong);
    }
    done.store(true, Ordering::Relaxed);
    let mut sent = [0u64; 3];
    while let Some(task) = valid.join_next().await {
        let task = task.expect("a valid-traffic task");
        for i in 0..3 {
            sent[i] += task[i];
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "flood: {} refused, {} still valid ({:?} spans accepted), {} wrong; valid spans {:?}; {elapsed:?}",
        tally.refused,
        tally.still_valid,
        tally.accepted,
        tally.wrong.len(),
        sent
    );
    assert!(app.alive(), "spanlens died during the flood");
    assert!(
        tally.wrong.is_empty(),
        "{} of {BAD_REQUESTS} bad requests got the wrong answer, e.g.:\n{}",
        tally.wrong.len(),
        tally
            .wrong
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(tally.refused + tally.still_valid, BAD_REQUESTS);
    assert!(
        tally.refused > BAD_REQUESTS / 2,
        "most mutants must be malformed: {} refused",
        tally.refused
    );

    let scraped = app.scrape().await;
    for proto in Proto::ALL {
        let i = index(proto);
        assert_eq!(
            scraped.sum(ACCEPTED, &[("protocol", proto.label())]),
            (sent[i] + tally.accepted[i]) as f64,
            "{ACCEPTED}{{protocol={}}}: {} valid + {} from still-valid mutants",
            proto.label(),
            sent[i],
            tally.accepted[i]
        );
    }
    assert_eq!(
        scraped.sum(CLAIM_COUNT, CLAIM_LABELS),
        sent.iter().sum::<u64>() as f64,
        "every valid step_claim span observed exactly once"
    );
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}
