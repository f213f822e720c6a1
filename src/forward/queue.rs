//! One endpoint's bounded queue: requests waiting, being sent, or waiting out a retry's
//! backoff, bounded by count and bytes, mirrored to the write-ahead log when there is one.
//! A request waiting to be retried holds no sender: the senders go on with other requests
//! (the endpoint failing some calls does not slow the others down to the pace of backoffs).

use super::retry::Retrying;
use super::wal::{AppendError, RecordId, Wal};
use crate::config::forward::Compression;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A request on its way to one endpoint.
pub(crate) struct Item {
    pub(crate) body: Bytes,
    /// How `body` is compressed (a request from the persistent queue keeps the compression
    /// it was queued with, whatever the config says now).
    pub(crate) compression: Compression,
    pub(crate) spans: u64,
    record: Option<RecordId>,
    /// Set once an attempt failed and it is to be retried.
    pub(crate) retrying: Option<Retrying>,
}

/// Records a log held unacknowledged when it was opened.
pub(crate) type Unsent = Vec<(RecordId, Vec<u8>)>;

pub(crate) struct Queue {
    state: Mutex<State>,
    ready: Notify,
    max_requests: usize,
    max_bytes: usize,
}

pub(crate) struct State {
    waiting: VecDeque<Item>,
    /// Requests waiting out a retry's backoff, by when they are due (then a sequence number).
    retrying: BTreeMap<(Instant, u64), Item>,
    next_retry: u64,
    /// Requests and bytes waiting or being sent.
    requests: usize,
    bytes: usize,
    wal: Option<Wal>,
    closed: bool,
}

impl Queue {
    /// A queue, refilled from the log's unacknowledged records when there is one; also
    /// returns how many requests were refilled.
    pub(crate) fn new(
        max_requests: usize,
        max_bytes: usize,
        wal: Option<(Wal, Unsent)>,
    ) -> (Queue, u64) {
        let mut state = State {
            waiting: VecDeque::new(),
            retrying: BTreeMap::new(),
            next_retry: 0,
            requests: 0,
            bytes: 0,
            wal: None,
            closed: false,
        };
        let mut recovered = 0;
        if let Some((wal, records)) = wal {
            for (record, payload) in records {
                let Some((spans, compression, body)) = split_record(&payload) else {
                    continue;
                };
                state.requests += 1;
                state.bytes += body.len();
                state.waiting.push_back(Item {
                    body: Bytes::copy_from_slice(body),
                    compression,
                    spans,
                    record: Some(record),
                    retrying: None,
                });
                recovered += 1;
            }
            state.wal = Some(wal);
        }
        let queue = Queue {
            state: Mutex::new(state),
            ready: Notify::new(),
            max_requests,
            max_bytes,
        };
        (queue, recovered)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes a sender for an item pushed under the lock.
    pub(crate) fn pushed(&self) {
        self.ready.notify_one();
    }

    /// The next request to send: a retry that is due, else the oldest waiting request; None
    /// once closed with nothing waiting or to be retried.
    pub(crate) async fn pop(&self) -> Option<Item> {
        loop {
            // Created before the check so a push, retry or close in between is not missed.
            let notified = self.ready.notified();
            let next_due = {
                let mut state = self.lock();
                if let Some(due) = state.retrying.first_entry()
                    && due.key().0 <= Instant::now()
                {
                    return Some(due.remove());
                }
                if let Some(item) = state.waiting.pop_front() {
                    return Some(item);
                }
                if state.closed && state.retrying.is_empty() {
                    return None;
                }
                state.retrying.keys().next().map(|&(due, _)| due)
            };
            match next_due {
                Some(due) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(due.into()) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Puts a request whose attempt failed back, to be sent again after `wait`.
    pub(crate) fn retry_later(&self, item: Item, wait: Duration) {
        {
            let mut state = self.lock();
            let seq = state.next_retry;
            state.next_retry += 1;
            state.retrying.insert((Instant::now() + wait, seq), item);
        }
        // A sender waiting for a later retry, or for a push, looks again.
        self.ready.notify_one();
    }

    /// A request left the queue: delivered or given up (`settled`: forget it in the log too),
    /// or abandoned at shutdown (kept in the log for the next start).
    pub(crate) fn finish(&self, item: &Item, settled: bool) {
        let mut state = self.lock();
        state.release(item);
        if settled {
            state.forget(item);
        }
    }

    /// No more pushes; senders stop when the queue is empty.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Takes every request waiting or to be retried (at the end of a drain); each is still
    /// counted in the queue until [`Queue::finish`].
    pub(crate) fn take_waiting(&self) -> Vec<Item> {
        let mut state = self.lock();
        let retrying = std::mem::take(&mut state.retrying);
        state
            .waiting
            .drain(..)
            .chain(retrying.into_values())
            .collect()
    }

    pub(crate) fn has_log(&self) -> bool {
        self.lock().wal.is_some()
    }

    /// (requests, bytes) waiting or being sent, and bytes of the log on disk.
    pub(crate) fn sizes(&self) -> (usize, usize, Option<u64>) {
        let state = self.lock();
        (
            state.requests,
            state.bytes,
            state.wal.as_ref().map(Wal::disk_bytes),
        )
    }

    /// fsyncs the log.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        match &mut self.lock().wal {
            Some(wal) => wal.sync(),
            None => Ok(()),
        }
    }

    pub(crate) fn has_room(&self, state: &State, body: usize) -> bool {
        state.requests < self.max_requests && state.bytes + body <= self.max_bytes
    }
}

impl State {
    /// The drain has begun: nothing more is queued.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Queues a request (and logs it first: fails when the log is at its cap or cannot be
    /// written). Does not check the queue's bounds.
    pub(crate) fn push(
        &mut self,
        body: Bytes,
        compression: Compression,
        spans: u64,
    ) -> Result<(), AppendError> {
        let record = match &mut self.wal {
            Some(wal) => {
                let mut payload = Vec::with_capacity(5 + body.len());
                payload.extend_from_slice(&(spans as u32).to_le_bytes());
                payload.push(compression_code(compression));
                payload.extend_from_slice(&body);
                Some(wal.append(&payload)?)
            }
            None => None,
        };
        self.requests += 1;
        self.bytes += body.len();
        self.waiting.push_back(Item {
            body,
            compression,
            spans,
            record,
            retrying: None,
        });
        Ok(())
    }

    /// Takes back the request pushed last (when another endpoint refused the request).
    pub(crate) fn unpush(&mut self) {
        if let Some(item) = self.waiting.pop_back() {
            self.release(&item);
            self.forget(&item);
        }
    }

    /// Drops the oldest request not being sent: of those to be retried (all older than any
    /// waiting, as the queue is sent in order), the one retried the longest; else the oldest
    /// waiting. Returns its span count.
    pub(crate) fn drop_oldest(&mut self) -> Option<u64> {
        let longest_retried = self
            .retrying
            .iter()
            .min_by_key(|(_, item)| item.retrying.as_ref().map(|r| r.since))
            .map(|(&key, _)| key);
        let item = match longest_retried {
            Some(key) => self.retrying.remove(&key)?,
            None => self.waiting.pop_front()?,
        };
        self.release(&item);
        self.forget(&item);
        Some(item.spans)
    }

    fn release(&mut self, item: &Item) {
        self.requests -= 1;
        self.bytes -= item.body.len();
    }

    fn forget(&mut self, item: &Item) {
        if let (Some(wal), Some(record)) = (&mut self.wal, item.record)
            && let Err(e) = wal.ack(record)
        {
            tracing::warn!(error = %e, "cannot mark a forwarded request done in the persistent queue; it may be sent again after a restart");
        }
    }
}

fn compression_code(compression: Compression) -> u8 {
    match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Zstd => 2,
    }
}

/// A log record: the span count (u32, little-endian), the body's compression (one byte),
/// then the body.
fn split_record(payload: &[u8]) -> Option<(u64, Compression, &[u8])> {
    let (spans, rest) = payload.split_first_chunk::<4>()?;
    let (&code, body) = rest.split_first()?;
    let compression = match code {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Zstd,
        _ => return None,
    };
    Some((u64::from(u32::from_le_bytes(*spans)), compression, body))
}
