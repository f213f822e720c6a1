//! The open connections of every listener: `receivers.max_connections` over both receivers,
//! and what the process's file limit leaves room for. Past the first, a new connection is
//! closed as it arrives; near the second, the connection idle the longest (no request in
//! flight) is closed to make room for it, so a flood of idle connections cannot starve
//! clients that send requests, and a connection with a request in flight, or one whose
//! request is arriving (bytes sent and not read yet), is never closed for room.

use super::socket::{self, Pending};
use crate::metrics::store::{MetricKind, MetricSpec, Snapshot};
use axum::body::Body;
use http_body_util::BodyExt;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

/// How many of the longest idle connections are peeked at for one that can be closed.
const PEEK_AT_MOST: usize = 16;

/// Which listener a connection came to: the `listener` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Grpc,
    Http,
    Metrics,
}

impl Listener {
    const ALL: [Listener; 3] = [Listener::Grpc, Listener::Http, Listener::Metrics];

    fn label(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
            Listener::Metrics => "metrics",
        }
    }

    /// receivers.max_connections counts the receivers' connections, not scrapes'.
    fn receiver(self) -> bool {
        self != Listener::Metrics
    }
}

/// The open connections and what bounds them.
pub(crate) struct Connections {
    max_receiver_connections: usize,
    /// Connections the file limit leaves room for (see [`file_room`]).
    room: usize,
    registry: Mutex<Registry>,
    refused: [AtomicU64; 3],
    closed_idle: [AtomicU64; 3],
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Grows each time a connection becomes idle: the order of `idle`.
    next_idle: u64,
    open: HashMap<u64, Entry>,
    /// Idle connections, the longest idle first.
    idle: BTreeMap<u64, u64>,
    open_by_listener: [usize; 3],
}

struct Entry {
    listener: Listener,
    requests: usize,
    /// Its key in `idle` while idle.
    idle_since: Option<u64>,
    /// Closes it; set once its task runs. Until then it is not closed for room.
    abort: Option<AbortHandle>,
    /// Its socket, peeked at before it is closed for room.
    socket: Weak<TcpStream>,
}

impl Registry {
    fn become_idle(&mut self, id: u64) {
        let seq = self.next_idle;
        if let Some(entry) = self.open.get_mut(&id)
            && entry.requests == 0
            && entry.abort.is_some()
            && entry.idle_since.is_none()
        {
            entry.idle_since = Some(seq);
            self.idle.insert(seq, id);
            self.next_idle += 1;
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.open.remove(&id)?;
        if let Some(seq) = entry.idle_since {
            self.idle.remove(&seq);
        }
        self.open_by_listener[entry.listener as usize] -= 1;
        Some(entry)
    }

    fn receiver_connections(&self) -> usize {
        Listener::ALL
            .iter()
            .filter(|l| l.receiver())
            .map(|&l| self.open_by_listener[l as usize])
            .sum()
    }
}

/// An open connection; dropping it (its task ended) forgets it.
pub(crate) struct Slot {
    id: u64,
    connections: Arc<Connections>,
}

/// A request in flight on a connection: while it lives, the connection is not idle.
pub(crate) struct InFlight(Arc<Slot>);

impl Connections {
    pub(crate) fn new(max_receiver_connections: usize) -> Connections {
        let room = file_room();
        tracing::info!(
            max_connections = max_receiver_connections,
            file_limit_room = room,
            "connections: at most max_connections over the receivers; past file_limit_room (what the open-files limit leaves), idle ones are closed for new ones"
        );
        Connections {
            max_receiver_connections,
            room,
            registry: Mutex::default(),
            refused: Default::default(),
            closed_idle: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in a connection just accepted, closing the longest idle one when the file limit
    /// leaves no room; None (and counted) when it must be closed at once.
    pub(crate) fn open(
        self: &Arc<Self>,
        listener: Listener,
        socket: Weak<TcpStream>,
    ) -> Option<Arc<Slot>> {
        let mut registry = self.lock();
        let refused = || {
            self.refused[listener as usize].fetch_add(1, Ordering::Relaxed);
            None
        };
        if listener.receiver() && registry.receiver_connections() >= self.max_receiver_connections {
            return refused();
        }
        if registry.open.len() >= self.room && !self.close_longest_idle(&mut registry) {
            return refused();
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.open.insert(
            id,
            Entry {
                listener,
                requests: 0,
                idle_since: None,
                abort: None,
                socket,
            },
        );
        registry.open_by_listener[listener as usize] += 1;
        Some(Arc::new(Slot {
            id,
            connections: self.clone(),
        }))
    }

    /// Closes the connection idle the longest, to free a file descriptor (accept failed
    /// for want of one); false when no connection is idle.
    pub(crate) fn close_idle(&self) -> bool {
        self.close_longest_idle(&mut self.lock())
    }

    /// Closes the connection idle the longest among those whose request is not arriving (a
    /// peek finds bytes sent and not read yet: the server is behind, not the client idle).
    fn close_longest_idle(&self, registry: &mut Registry) -> bool {
        let arriving = |id: &u64| {
            registry
                .open
                .get(id)
                .is_some_and(|entry| socket::peek(&entry.socket) == Some(Pending::Bytes))
        };
        let Some(id) = registry
            .idle
            .values()
            .take(PEEK_AT_MOST)
            .copied()
            .find(|id| !arriving(id))
        else {
            return false;
        };
        let Some(entry) = registry.remove(id) else {
            return false;
        };
        if let Some(abort) = entry.abort {
            abort.abort();
        }
        self.closed_idle[entry.listener as usize].fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Adds the connection metrics to a scrape.
    pub(crate) fn contribute(&self, snapshot: &mut Snapshot) {
        const L: &[&str] = &["listener"];
        let open = snapshot.add_metric(MetricSpec::new(
            "spanlens_connections_open",
            "Connections open, by listener.",
            MetricKind::Gauge,
            L,
        ));
        let refused = snapshot.add_metric(MetricSpec::new(
            "spanlens_connections_refused_total",
            "Connections closed as they arrived: past receivers.max_connections, or at the file limit with no idle connection to close; by listener.",
            MetricKind::Counter,
            L,
        ));
        let closed_idle = snapshot.add_metric(MetricSpec::new(
            "spanlens_connections_closed_idle_total",
            "Idle connections closed to make room for new ones near the file limit, by listener.",
            MetricKind::Counter,
            L,
        ));
        let open_by_listener = self.lock().open_by_listener;
        for l in Listener::ALL {
            let i = l as usize;
            let label = &[l.label()];
            snapshot.set_gauge(open, label, open_by_listener[i] as f64);
            snapshot.set_counter(refused, label, self.refused[i].load(Ordering::Relaxed));
            snapshot.set_counter(
                closed_idle,
                label,
                self.closed_idle[i].load(Ordering::Relaxed),
            );
        }
    }
}

impl Slot {
    /// The connection's task runs: from now on it may be closed while idle.
    pub(crate) fn attach(&self, abort: AbortHandle) {
        let mut registry = self.connections.lock();
        if let Some(entry) = registry.open.get_mut(&self.id) {
            entry.abort = Some(abort);
            registry.become_idle(self.id);
        }
    }

    /// A request begins on this connection.
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        let mut registry = self.connections.lock();
        let registry = &mut *registry;
        if let Some(entry) = registry.open.get_mut(&self.id) {
            entry.requests += 1;
            if let Some(seq) = entry.idle_since.take() {
                registry.idle.remove(&seq);
            }
        }
        InFlight(self.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let slot = &self.0;
        let mut registry = slot.connections.lock();
        if let Some(entry) = registry.open.get_mut(&slot.id) {
            entry.requests -= 1;
            registry.become_idle(slot.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().remove(self.id);
    }
}

/// A connection's service: every request holds the connection busy until the last byte of
/// its answer is handed to the connection.
#[derive(Clone)]
pub(crate) struct Tracked<S> {
    pub(crate) inner: S,
    pub(crate) slot: Arc<Slot>,
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        let in_flight = self.slot.request();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _busy = &in_flight;
                    frame
                }))
            }))
        })
    }
}

/// Connections the process can hold: its soft file limit (RLIMIT_NOFILE), less the file
/// descriptors open now (the listeners, the persistent queue), less a reserve for what
/// opens files later (forwarding's connections, the persistent queue's segments, the
/// blocking pool): an eighth of the limit, at least 64. Unbounded when the limit is unknown.
fn file_room() -> usize {
    let Some(limit) = open_file_limit() else {
        return usize::MAX;
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let reserve = (limit / 8).max(64);
    limit.saturating_sub(open).saturating_sub(reserve).max(1)
}

/// The soft limit on open files, from /proc/self/limits (Linux); None when unlimited or
/// unknown.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(max: usize, room: usize) -> Arc<Connections> {
        Arc::new(Connections {
            room,
            ..Connections::new(max)
        })
    }

    /// A connection whose task runs (a sleeping task, so that closing it can be seen).
    fn open(
        connections: &Arc<Connections>,
        listener: Listener,
    ) -> Option<(Arc<Slot>, AbortHandle)> {
        open_over(connections, listener, Weak::new())
    }

    fn open_over(
        connections: &Arc<Connections>,
        listener: Listener,
        socket: Weak<TcpStream>,
    ) -> Option<(Arc<Slot>, AbortHandle)> {
        let slot = connections.open(listener, socket)?;
        let task = tokio::spawn(std::future::pending::<()>());
        let abort = task.abort_handle();
        slot.attach(abort.clone());
        Some((slot, abort))
    }

    #[tokio::test]
    async fn past_max_connections_new_receiver_connections_are_refused_and_counted() {
        let connections = connections(2, 100);
        let _a = open(&connections, Listener::Grpc).expect("first");
        let _b = open(&connections, Listener::Http).expect("second");
        assert!(open(&connections, Listener::Http).is_none());
        assert!(
            open(&connections, Listener::Metrics).is_some(),
            "scrapes are not capped"
        );
        assert_eq!(
            connections.refused[Listener::Http as usize].load(Ordering::Relaxed),
            1
        );
        drop(_a);
        assert!(
            open(&connections, Listener::Grpc).is_some(),
            "a place came back"
        );
    }

    #[tokio::test]
    async fn at_the_file_limit_the_longest_idle_is_closed_never_one_in_flight() {
        let connections = connections(100, 3);
        let closed = |l: Listener| connections.closed_idle[l as usize].load(Ordering::Relaxed);
        let (busy, busy_task) = open(&connections, Listener::Http).unwrap();
        let (_old, old_task) = open(&connections, Listener::Http).unwrap();
        let (newer, newer_task) = open(&connections, Listener::Grpc).unwrap();
        // The first connection, idle the longest, now has a request in flight.
        let _request = busy.request();
        let (_fresh, fresh_task) = open(&connections, Listener::Http).expect("room made");
        tokio::task::yield_now().await;
        assert!(old_task.is_finished(), "the longest idle was closed");
        assert!(!busy_task.is_finished() && !newer_task.is_finished());
        // A request on `newer` ended just now: `_fresh` has been idle longer.
        drop(newer.request());
        let (_x, _) = open(&connections, Listener::Grpc).expect("room made again");
        tokio::task::yield_now().await;
        assert!(
            fresh_task.is_finished(),
            "the connection idle longest went first"
        );
        assert!(!newer_task.is_finished());
        assert_eq!((closed(Listener::Http), closed(Listener::Grpc)), (2, 0));
        // With every connection busy, nothing can be closed for room: a new one is refused.
        let _second = newer.request();
        let _third = _x.request();
        assert!(open(&connections, Listener::Grpc).is_none(), "nothing idle");
        assert_eq!(
            connections.refused[Listener::Grpc as usize].load(Ordering::Relaxed),
            1
        );
        assert!(!busy_task.is_finished() && !newer_task.is_finished());
    }

    #[tokio::test]
    async fn a_connection_whose_request_is_arriving_is_not_closed_for_room() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(address).await.unwrap());
            accepted.push(socket::Socket::new(listener.accept().await.unwrap().0));
        }
        let connections = connections(100, 2);
        let (_sending, sending_task) =
            open_over(&connections, Listener::Http, accepted[0].watch()).unwrap();
        let (_silent, silent_task) =
            open_over(&connections, Listener::Http, accepted[1].watch()).unwrap();
        // The longest idle connection's client has sent its request's first bytes.
        clients[0].write_all(b"POST /v1/traces").await.unwrap();
        while socket::peek(&accepted[0].watch()) != Some(Pending::Bytes) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (_fresh, _) = open(&connections, Listener::Http).expect("room made");
        tokio::task::yield_now().await;
        assert!(silent_task.is_finished(), "the silent one was closed");
        assert!(
            !sending_task.is_finished(),
            "the one with a request arriving was not"
        );
        // Only the fresh connection (no socket: already let go of) is left to close; then,
        // with the newest busy, nothing is.
        let (another, _) = open(&connections, Listener::Http).expect("room made again");
        let _busy = another.request();
        assert!(open(&connections, Listener::Http).is_none(), "nothing idle");
        assert!(!sending_task.is_finished());
    }
}
