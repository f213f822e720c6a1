//! Hardening item 1 — Decompression bombs against the real binary: gzip and zstd bodies under 1
//! MiB that inflate to 1 GiB (the zstd ones with a 1 MiB window, or declaring the 128 MiB
//! window a default decoder still accepts), over OTLP/HTTP and OTLP/gRPC, twelve one after the
//! other and eight in concurrent pairs. Each is refused (413 / RESOURCE_EXHAUSTED) and, all
//! twenty together, they cost the process at most twice the request limit above its warmed-up
//! peak. The limit itself holds to the byte at 8 MiB on every encoding and both protocols.

use crate::otlp::*;
use crate::support::process::{MIB, Setup, mib};
use std::time::{Duration, Instant};

const LIMIT: usize = 8 * 1024 * 1024;
const INFLATED: usize = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_refused_and_cost_at_most_twice_the_limit() {
    // Compressing 1 GiB takes a few seconds: do it while the binary starts.
    let gzip_bomb = tokio::task::spawn_blocking(|| gzip_bomb(INFLATED));
    let narrow_bomb = tokio::task::spawn_blocking(|| zstd_bomb(INFLATED, 20));
    let wide_bomb = tokio::task::spawn_blocking(|| zstd_bomb(INFLATED, 27));
    let mut app = Setup::new()
        .set("receivers.max_request_bytes", &LIMIT.to_string())
        .start();
    let client = Otlp::new(&app);

    // Warm-up: valid traffic of every kind, so that the baseline is a working process.
    let mut accepted = 0;
    for _ in 0..40 {
        for proto in Proto::ALL {
            accepted += client.accepted(proto, &request(SERVICE, claims(5))).await;
        }
    }
    for proto in Proto::ALL {
        for (encoding, compress) in [("gzip", gzip as fn(&[u8]) -> Vec<u8>), ("zstd", zstd)] {
            let request = request(SERVICE, claims(3));
            let reply = client
                .send(proto, Some(encoding), compress(&proto.body(&request)))
                .await
                .unwrap();
            assert!(reply.accepted(), "warm-up {proto:?} {encoding}: {reply:?}");
            accepted += 3;
        }
    }
    let baseline = app.vm_hwm();

    let gzip_bomb = gzip_bomb.await.unwrap();
    let zstd_bomb = narrow_bomb.await.unwrap();
    let wide_bomb = wide_bomb.await.unwrap();
    for (name, bomb) in [
        ("gzip", &gzip_bomb),
        ("zstd", &zstd_bomb),
        ("zstd with a 128 MiB window", &wide_bomb),
    ] {
        assert!(
            bomb.len() < MIB as usize,
            "the {name} bomb is {} bytes on the wire",
            bomb.len()
        );
    }
    // (protocol, bomb): gzip, zstd with a 1 MiB window, zstd declaring a 128 MiB window.
    let kinds = [
        (Proto::Grpc, "gzip"),
        (Proto::HttpProtobuf, "zstd"),
        (Proto::Grpc, "zstd-wide"),
        (Proto::HttpProtobuf, "gzip"),
        (Proto::HttpJson, "zstd-wide"),
        (Proto::Grpc, "zstd"),
        (Proto::HttpJson, "gzip"),
        (Proto::HttpProtobuf, "zstd-wide"),
    ];
    let bomb_of = |bomb: &str| match bomb {
        "gzip" => gzip_bomb.clone(),
        "zstd" => zstd_bomb.clone(),
        _ => wide_bomb.clone(),
    };
    let encoding = |bomb: &'static str| bomb.trim_end_matches("-wide");
    let refused = |what: String, reply: Result<Reply, String>| {
        let reply = reply.unwrap_or_else(|e| panic!("{what}: {e}"));
        match reply.grpc {
            Some(code) => assert_eq!(code, RESOURCE_EXHAUSTED, "{what}: {reply:?}"),
            None => assert_eq!(reply.http, 413, "{what}: {reply:?}"),
        }
        reply.elapsed
    };

    // The criterion: 20 bombs, one after the other, keep the peak under twice the
    // limit above the baseline.
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let (proto, bomb) = kinds[i % kinds.len()];
        let reply = client
            .send(proto, Some(encoding(bomb)), bomb_of(bomb))
            .await;
        slowest = slowest.max(refused(format!("bomb {i}: {proto:?} {bomb}"), reply));
    }
    let after_sequential = app.vm_hwm();
    eprintln!(
        "bombs: 20 refused one after the other, slowest answer {slowest:?}; VmHWM baseline {}, after {} (+{}), bound +{}",
        mib(baseline),
        mib(after_sequential),
        mib(after_sequential.saturating_sub(baseline)),
        mib(2 * LIMIT as u64)
    );
    assert!(
        after_sequential < baseline + 2 * LIMIT as u64,
        "20 bombs raised the peak RSS from {} to {} (+{}), more than 2 × max_request_bytes ({})",
        mib(baseline),
        mib(after_sequential),
        mib(after_sequential - baseline),
        mib(2 * LIMIT as u64)
    );

    // Two at a time, each may fill its own limit: the bound is, per bomb, the limit, its
    // compressed body held twice while it is read (its chunks, then their collected copy),
    // and 2 MiB of decoder state and connection buffers.
    let largest = gzip_bomb.len().max(zstd_bomb.len()).max(wide_bomb.len()) as u64;
    for pair in 0..4 {
        let (a, b) = (
            kinds[(2 * pair + 1) % kinds.len()],
            kinds[(2 * pair + 4) % kinds.len()],
        );
        let (ra, rb) = tokio::join!(
            client.send(a.0, Some(encoding(a.1)), bomb_of(a.1)),
            client.send(b.0, Some(encoding(b.1)), bomb_of(b.1)),
        );
        slowest = slowest.max(refused(format!("pair {pair}: {a:?}"), ra));
        slowest = slowest.max(refused(format!("pair {pair}: {b:?}"), rb));
    }
    let peak = app.vm_hwm();
    let bound = 2 * (LIMIT as u64 + 2 * largest + 2 * MIB);
    eprintln!(
        "bombs: 4 concurrent pairs refused, slowest answer {slowest:?}; peak {} (+{}), bound +{}",
        mib(peak),
        mib(peak.saturating_sub(baseline)),
        mib(bound)
    );
    assert!(
        peak < baseline + bound,
        "concurrent bombs raised the peak RSS from {} to {} (+{}), more than two limits, two bodies read twice and 4 MiB ({})",
        mib(baseline),
        mib(peak),
        mib(peak - baseline),
        mib(bound)
    );

    let started = Instant::now();
    for proto in [Proto::Grpc, Proto::HttpProtobuf] {
        for encoding in [None, Some("gzip"), Some("zstd")] {
            let compress = |body: Vec<u8>| match encoding {
                Some("gzip") => gzip(&body),
                Some("zstd") => zstd(&body),
                _ => body,
            };
            let what = format!("{proto:?} {encoding:?} exactly {LIMIT} bytes");
            let reply = client
                .send(proto, encoding, compress(proto_of_size(LIMIT, 2)))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(reply.accepted() && reply.rejected == 0, "{what}: {reply:?}");
            accepted += 2;
            let what = format!("{proto:?} {encoding:?} {} bytes", LIMIT + 1);
            let reply = client
                .send(proto, encoding, compress(proto_of_size(LIMIT + 1, 2)))
                .await;
            refused(what, reply);
        }
    }
    eprintln!("limit checks took {:?}", started.elapsed());

    let scraped = app.scrape().await;
    assert_accepted_and_observed(&scraped, accepted);
    assert_eq!(
        scraped.sum(REQUESTS_REFUSED, &[("reason", "too_large")]),
        (20 + 8 + 6) as f64,
        "requests refused as too large"
    );
    assert!(app.alive(), "spanlens died");
    let status = app.terminate();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn the_bombs_are_valid_streams() {
    use std::io::Read;
    // The same construction as the 1 GiB gzip bomb, small enough to inflate here: gzip's
    // decoder checks the CRC-32 and the length in the trailer.
    let size = 24 << 20;
    let bomb = gzip_bomb(size);
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&bomb[..])
        .read_to_end(&mut inflated)
        .expect("a valid gzip stream");
    assert_eq!(inflated.len(), size);
    assert!(inflated.iter().all(|&b| b == 0));
    for window_log in [20, 27] {
        let zstd = zstd_bomb(size, window_log);
        assert_eq!(zstd::decode_all(&zstd[..]).unwrap().len(), size);
    }
}
