//! Long polls: `GET /vms/:id?wait=N` answers as soon as the VM's object changes, so a
//! coordinator needs one request where it would poll sixty times.
//!
//! A waiting request holds one HTTP thread (tiny_http has no way to park a request), so
//! the waiters are counted and capped below the number of HTTP threads: past the cap a
//! long poll answers at once, as a plain GET, and creates, deletes and plain GETs always
//! find a free thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::vm::VmId;

use crate::api::error::ApiError;
use crate::vm::VmStore;

/// The longest wait; longer asks are shortened to it. Under the idle timeouts of common
/// proxies and HTTP clients (often 60 to 120 s), so a wait ends with an answer rather than
/// a dropped connection.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How long a waiter sleeps at most before looking at the shutdown flag: a stopping server
/// finishes the requests in flight, and must not wait a minute for idle long polls.
const SLICE: Duration = Duration::from_millis(250);

/// The entity tag of a VM object: FNV-1a of its JSON. Equal objects have equal tags; a
/// 64-bit hash makes a collision between two states of one VM negligible.
pub fn etag(json: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in json {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

/// True when an `If-None-Match` value names `etag` (or is `*`). Weak tags compare as
/// strong ones: our tags are never weak, and a proxy may have weakened them.
pub fn if_none_match(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

pub struct Waiters {
    active: AtomicUsize,
    max: usize,
}

impl Waiters {
    /// `max` waiters at once; 0 turns long polls into plain GETs.
    pub fn new(max: usize) -> Self {
        Self {
            active: AtomicUsize::new(0),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests waiting now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// The VM's object once it differs from what the client has, or when `wait` is over.
    /// What the client has is the object whose tag is in `known` (`If-None-Match`), or
    /// else the object as it is now. A deleted VM is a change: `VmNotFound`.
    pub fn poll(
        &self,
        store: &VmStore,
        id: VmId,
        known: Option<&str>,
        wait: Duration,
    ) -> Result<Arc<[u8]>, ApiError> {
        let first = store.json(id).ok_or(ApiError::VmNotFound)?;
        let first_tag = etag(&first);
        let unchanged = |json: &[u8]| {
            let tag = etag(json);
            match known {
                Some(header) => if_none_match(header, &tag),
                None => tag == first_tag,
            }
        };
        if wait.is_zero() || !unchanged(&first) {
            return Ok(first);
        }
        let Some(_place) = self.enter() else {
            return Ok(first);
        };
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        loop {
            // The generation first: a change between the two reads is then not missed.
            let seen = store.generation();
            let json = store.json(id).ok_or(ApiError::VmNotFound)?;
            let now = Instant::now();
            if !unchanged(&json) || now >= deadline || crate::shutdown::requested() {
                return Ok(json);
            }
            store.wait_for_change(seen, (deadline - now).min(SLICE));
        }
    }

    fn enter(&self) -> Option<Place<'_>> {
        let taken = self
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            });
        taken.ok().map(|_| Place(&self.active))
    }
}

/// A waiter's place, given back however the wait ends.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::model::tests::sample;
    use crate::vm::store::Durability;

    fn store(tag: &str) -> (Arc<VmStore>, VmId, std::path::PathBuf) {
        let root = std::env::temp_dir().join(format!("osxb-poll-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (store, _) = VmStore::open(&root).unwrap();
        let mut vm = sample();
        vm.id = VmId::new();
        let id = vm.id;
        store.insert(vm).unwrap();
        (Arc::new(store), id, root)
    }

    #[test]
    fn tags_and_preconditions() {
        let a = etag(b"{\"a\":1}");
        assert_eq!(a.len(), 18);
        assert_ne!(a, etag(b"{\"a\":2}"));
        assert!(if_none_match(&a, &a));
        assert!(if_none_match(&format!("\"x\", W/{a}"), &a));
        assert!(if_none_match("*", &a));
        assert!(!if_none_match("\"0000000000000000\"", &a));
    }

    #[test]
    fn answers_on_change_on_a_stale_tag_and_at_the_deadline() {
        let (store, id, root) = store("change");
        let waiters = Arc::new(Waiters::new(2));
        let before = store.json(id).unwrap();

        // A tag the client has that is already stale: at once.
        let started = Instant::now();
        let json = waiters
            .poll(&store, id, Some("\"stale\""), Duration::from_secs(60))
            .unwrap();
        assert_eq!(json, before);
        assert!(started.elapsed() < Duration::from_secs(30));

        // No change: the wait runs out.
        let started = Instant::now();
        waiters
            .poll(&store, id, None, Duration::from_millis(300))
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));

        // A change wakes the waiter long before its minute is up.
        let poller = {
            let (store, waiters) = (store.clone(), waiters.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let json = waiters
                    .poll(&store, id, None, Duration::from_secs(60))
                    .unwrap();
                (json, started.elapsed())
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while waiters.active() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        store
            .update(id, Durability::MemoryOnly, |vm| {
                vm.ip_address = "172.16.1.2".into()
            })
            .unwrap();
        let (json, took) = poller.join().unwrap();
        assert!(String::from_utf8_lossy(&json).contains("172.16.1.2"));
        assert!(took < Duration::from_secs(30), "{took:?}");
        assert_eq!(waiters.active(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn past_the_cap_a_wait_answers_at_once() {
        let (store, id, root) = store("cap");
        let waiters = Waiters::new(0);
        let started = Instant::now();
        waiters
            .poll(&store, id, None, Duration::from_secs(60))
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        let unknown = VmId::new();
        assert_eq!(
            waiters.poll(&store, unknown, None, Duration::from_secs(1)),
            Err(ApiError::VmNotFound)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
