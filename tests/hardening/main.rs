//! Hardening: the spanlens binary against hostile and careless clients, and its decoding path
//! against arbitrary bytes.
//!
//! Every end-to-end test here runs the real binary (`CARGO_BIN_EXE_spanlens`) on a config
//! built from the embedded default profile with every listener on 127.0.0.1:0, reads its
//! addresses and final words from its stderr and its memory from /proc/PID/status, and stops
//! it with SIGTERM. Each waits by polling with a deadline, never by a fixed sleep alone, and
//! each can fail: the bounds are the ones the configuration promises.
//!
//! | module | what |
//! | --- | --- |
//! | `bombs` | gzip/zstd bombs over HTTP and gRPC: 413 / RESOURCE_EXHAUSTED, peak RSS, the limit to the byte |
//! | `flood` | 10,000 malformed requests alongside valid traffic: exact answers and counts |
//! | `overload` | max_pending_requests (503 + Retry-After / UNAVAILABLE + RetryInfo, retries) and memory_limit_bytes |
//! | `cardinality` | a million distinct values: caps, overflow, RSS, /metrics size; idle series expiry |
//! | `slow` | slowloris (header_read_timeout), HTTP/2 max_concurrent_streams, body_read_timeout |
//! | `connections` | receivers.max_connections; 10,000 idle connections at a 1,024 file limit while requests are served |
//! | `memory` | every cap full: peak RSS under `check-config --memory`'s bound, and within 4 times of it |
//! | `deadline` | gRPC grpc-timeout: DEADLINE_EXCEEDED at the deadline and nothing counted; malformed values ignored |
//! | `access` | loopback defaults, bearer auth (file, env), no token in logs or check-config, TLS, mTLS |
//! | `shutdown` | SIGTERM under load: exit 0 and `stopped spans_accepted=N` exact |
//! | `props` | property tests of json::to_protobuf, body::decode, decode::Batch, Pipeline::ingest |
//!
//! Helpers: `support::process` (config, process, RSS, scrape), `otlp` (requests, clients, on
//! top of `support::otlp`), `tls` (rustls clients; the material is `support::pki`). `fuzz/`
//! holds the cargo-fuzz targets of the same code.

#[path = "../support/mod.rs"]
mod support;

mod otlp;
mod tls;

mod access;
mod bombs;
mod cardinality;
mod connections;
mod deadline;
mod flood;
mod memory;
mod overload;
mod props;
mod shutdown;
mod slow;
