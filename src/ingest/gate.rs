//! What a request must pass before its body is read: the bearer token, the bound on requests
//! in progress, and the memory limit. Refusals for load are answered 503 / UNAVAILABLE with
//! Retry-After, so retrying clients lose nothing.

use crate::ingest::access::BearerToken;
use crate::otlp::refusal::{Busy, Refusal};
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct Gate {
    token: Option<BearerToken>,
    pending: Arc<Semaphore>,
    max_pending: usize,
    memory: Option<Memory>,
    retry_after: Duration,
    max_request_bytes: u64,
}

/// The memory limit: resident memory (read at each admission: a stale figure would miss
/// what finished requests left resident) plus what admitted requests may still take.
struct Memory {
    limit: u64,
    reserved: AtomicU64,
}

/// A request let through; dropping it frees its place and its memory reservation.
pub(crate) struct Pass {
    _permit: OwnedSemaphorePermit,
    gate: Arc<Gate>,
    reserved: u64,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some(memory) = &self.gate.memory {
            memory.reserved.fetch_sub(self.reserved, Ordering::Relaxed);
        }
    }
}

impl Gate {
    pub(crate) fn new(
        token: Option<BearerToken>,
        max_pending: usize,
        memory_limit: u64,
        retry_after: Duration,
        max_request_bytes: usize,
    ) -> Gate {
        Gate {
            token,
            pending: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            memory: (memory_limit > 0).then(|| Memory {
                limit: memory_limit,
                reserved: AtomicU64::new(0),
            }),
            retry_after,
            max_request_bytes: max_request_bytes as u64,
        }
    }

    /// Lets a request in, or says why not.
    pub(crate) fn enter(self: &Arc<Gate>, headers: &HeaderMap) -> Result<Pass, Refusal> {
        if let Some(token) = &self.token
            && !token.allows(headers)
        {
            return Err(Refusal::Unauthenticated);
        }
        let busy = |reason, message: String| {
            Refusal::Busy(Busy {
                reason,
                message,
                retry_after: self.retry_after,
            })
        };
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            return Err(busy(
                "overloaded",
                format!(
                    "spanlens is processing receivers.max_pending_requests ({}) requests; retry later",
                    self.max_pending
                ),
            ));
        };
        let mut pass = Pass {
            _permit: permit,
            gate: self.clone(),
            reserved: 0,
        };
        if let Some(memory) = &self.memory {
            let need = self.worst_case_bytes(headers);
            let reserved = memory.reserved.fetch_add(need, Ordering::Relaxed) + need;
            pass.reserved = need;
            let resident = resident_bytes().unwrap_or(0);
            if resident + reserved > memory.limit {
                return Err(busy(
                    "memory_limit",
                    format!(
                        "spanlens is near receivers.memory_limit_bytes ({} bytes; {} resident); retry later",
                        memory.limit, resident
                    ),
                ));
            }
        }
        Ok(pass)
    }

    /// What reading, decompressing and decoding the request may take at most: the body twice
    /// (its chunks as received, then collected into one buffer) and its decoded copy (JSON is
    /// converted through owned structures, several times its size).
    fn worst_case_bytes(&self, headers: &HeaderMap) -> u64 {
        let length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let compressed = headers
            .get(CONTENT_ENCODING)
            .or_else(|| headers.get("grpc-encoding"))
            .is_some_and(|v| v.as_bytes() != b"identity");
        let json = headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body = length
            .unwrap_or(self.max_request_bytes)
            .min(self.max_request_bytes + 5);
        let decoded = match (compressed, length) {
            (false, Some(length)) => length.min(self.max_request_bytes),
            _ => self.max_request_bytes,
        };
        request_bytes(body, decoded, json)
    }
}

/// What a request of `body` bytes as sent, `decoded` after decompression, may take while it
/// is read and decoded: the body twice (its chunks as received, then collected into one
/// buffer) and its decoded copy (JSON is converted through owned structures, several times
/// its size).
fn request_bytes(body: u64, decoded: u64, json: bool) -> u64 {
    2 * body + if json { 6 * decoded } else { decoded }
}

/// [`Gate`]'s reservation for the largest request `max_request_bytes` allows (compressed
/// JSON, a gRPC frame's 5 bytes over the limit).
pub(crate) fn largest_request_bytes(max_request_bytes: usize) -> u64 {
    let max = max_request_bytes as u64;
    request_bytes(max + 5, max, true)
}

/// VmRSS of this process (Linux), in bytes.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn pending_requests_are_bounded_and_places_come_back() {
        let gate = Arc::new(Gate::new(None, 2, 0, Duration::from_secs(1), 1 << 20));
        let a = gate.enter(&HeaderMap::new()).expect("first");
        let _b = gate.enter(&HeaderMap::new()).expect("second");
        match gate.enter(&HeaderMap::new()) {
            Err(Refusal::Busy(busy)) => assert_eq!(busy.reason, "overloaded"),
            _ => panic!("a third request must wait"),
        }
        drop(a);
        assert!(gate.enter(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn memory_reservations_refuse_before_the_limit() {
        let resident = resident_bytes().expect("Linux /proc");
        let limit = resident + (80 << 20);
        let gate = Arc::new(Gate::new(
            None,
            100,
            limit,
            Duration::from_secs(1),
            16 << 20,
        ));
        let big = headers(&[("content-length", "16777216")]);
        // Each reserves 48 MiB (the body twice and its decoded copy): one fits, two not.
        let first = gate.enter(&big).expect("fits");
        match gate.enter(&big) {
            Err(Refusal::Busy(busy)) => assert_eq!(busy.reason, "memory_limit"),
            _ => panic!("the second must be refused"),
        }
        drop(first);
        assert!(gate.enter(&big).is_ok(), "the reservation was returned");
    }

    #[test]
    fn worst_case_counts_compression_and_json() {
        let gate = Gate::new(None, 1, 0, Duration::from_secs(1), 1000);
        assert_eq!(
            gate.worst_case_bytes(&headers(&[("content-length", "100")])),
            300
        );
        assert_eq!(
            gate.worst_case_bytes(&headers(&[
                ("content-length", "100"),
                ("content-encoding", "gzip")
            ])),
            1200
        );
        assert_eq!(
            gate.worst_case_bytes(&headers(&[
                ("content-length", "100"),
                ("content-type", "application/json")
            ])),
            800
        );
        assert_eq!(gate.worst_case_bytes(&HeaderMap::new()), 3000);
    }
}
