//! The buffers scrapes render into, kept for the next scrape. A scrape of thousands of
//! histogram series is megabytes (of text, or of protobuf): rendered into a fresh
//! allocation, every page of it is faulted in again on every scrape, which costs several
//! times the rendering itself (most of it in the kernel).

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// The buffer kept between scrapes: one, for the one scraper a sidecar usually has (a
/// second scrape at the same time renders into a new buffer). It holds a scrape's size for
/// good, which is small beside the rest of the process's memory.
#[derive(Debug, Default)]
pub struct ScrapeBuffers {
    free: Mutex<Option<Vec<u8>>>,
}

impl ScrapeBuffers {
    /// A buffer to render into: one an earlier scrape gave back, or a new one.
    pub fn take(&self) -> Vec<u8> {
        self.lock().take().unwrap_or_default()
    }

    /// `rendered` as a response body; its buffer comes back here when the body is dropped
    /// (sent, or abandoned by a client that went away).
    pub fn body(self: &Arc<Self>, rendered: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            rendered,
            home: Arc::clone(self),
        })
    }

    /// Keeps `rendered`'s buffer if none is kept and it is sized for what it held (at most
    /// twice its length plus 64 KiB): one very large scrape does not pin its buffer for good.
    fn give_back(&self, rendered: Vec<u8>) {
        let mut free = self.lock();
        if free.is_none() && rendered.capacity() <= 2 * rendered.len() + (64 << 10) {
            *free = Some(rendered);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A rendered scrape on its way to a client.
struct Lent {
    rendered: Vec<u8>,
    home: Arc<ScrapeBuffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.rendered
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.rendered));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_body_gives_its_buffer_to_the_next_scrape() {
        let buffers = Arc::new(ScrapeBuffers::default());
        let mut rendered = buffers.take();
        rendered.extend_from_slice(b"a_total 1\n");
        let at = rendered.as_ptr();
        let body = buffers.body(rendered);
        assert_eq!(&body[..], b"a_total 1\n");
        assert!(
            buffers.take().is_empty(),
            "lent out until the body is dropped"
        );
        drop(body);
        let again = buffers.take();
        assert_eq!(again.as_ptr(), at, "the same memory");
        assert!(again.capacity() >= "a_total 1\n".len());
    }

    #[test]
    fn keeps_one_buffer_sized_for_what_it_held() {
        let buffers = Arc::new(ScrapeBuffers::default());
        let bodies: Vec<Bytes> = (0..3).map(|_| buffers.body(vec![b'x'; 100])).collect();
        drop(bodies);
        assert!(buffers.lock().is_some(), "one kept");
        buffers.lock().take();
        let mut oversized = Vec::with_capacity(1 << 20);
        oversized.push(b'x');
        drop(buffers.body(oversized));
        assert!(buffers.lock().is_none(), "1 MiB kept for one byte");
    }
}
