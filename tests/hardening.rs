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
//! | `access` | loopback defaults, bearer auth (file, env), no token in logs or check-config, TLS, mTLS |
//! | `shutdown` | SIGTERM under load: exit 0 and `stopped spans_accepted=N` exact |
//! | `props` | property tests of json::to_protobuf, body::decode, decode::Batch, Pipeline::ingest |
//!
//! Helpers: `harness` (config, process, RSS, scrape), `otlp` (requests, clients), `tls`
//! (rcgen material, rustls clients). `fuzz/` holds the cargo-fuzz targets of the same code.

mod support;

#[path = "hardening/harness.rs"]
mod harness;
#[path = "hardening/otlp.rs"]
mod otlp;
#[path = "hardening/tls.rs"]
mod tls;

#[path = "hardening/access.rs"]
mod access;
#[path = "hardening/bombs.rs"]
mod bombs;
#[path = "hardening/cardinality.rs"]
mod cardinality;
#[path = "hardening/flood.rs"]
mod flood;
#[path = "hardening/overload.rs"]
mod overload;
#[path = "hardening/props.rs"]
mod props;
#[path = "hardening/shutdown.rs"]
mod shutdown;
#[path = "hardening/slow.rs"]
mod slow;
