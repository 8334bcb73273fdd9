//! Long polls: `GET /vms/:id?wait=N` answers as soon as what a coordinator acts on
//! changes (status, IP address, error, lease, or the VM going), so one request replaces
//! sixty polls. Provisioning progress (phase, bytes) does not end a wait unless the client
//! asks for it with `progress=true`, and then at most once a second.
//!
//! A waiting request holds one HTTP thread (tiny_http has no way to park a request), so
//! the waiters are counted and capped below the number of HTTP threads: past the cap a
//! long poll answers at once, as a plain GET, and creates, deletes and plain GETs always
//! find a free thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::vm::VmId;

use crate::service::Error;
use crate::vm::{Status, Vm, VmStore};

/// The longest wait; longer asks are shortened to it. Under the idle timeouts of common
/// proxies and HTTP clients (often 60 to 120 s), so a wait ends with an answer rather than
/// a dropped connection.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How long a waiter sleeps at most before looking at the shutdown flag: a stopping server
/// finishes the requests in flight, and must not wait a minute for idle long polls.
const SLICE: Duration = Duration::from_millis(250);

/// A `progress=true` wait answers a change of progress alone no sooner than this after
/// the request came: a download moves every 250 ms, and a client in a loop would
/// otherwise get four answers a second.
pub const PROGRESS_GAP: Duration = Duration::from_secs(1);

/// FNV-1a: equal objects have equal tags; a 64-bit hash makes a collision between two
/// states of one VM negligible.
fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A VM object's tag in two halves, `"<object>-<state>"`: the hash of the whole object,
/// and the hash of what a coordinator acts on. From the tag a client sends back, a long
/// poll tells "the client is behind on progress only" from "behind on the state".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VmTag {
    object: u64,
    state: u64,
}

impl VmTag {
    fn of(json: &[u8], state: u64) -> Self {
        Self {
            object: fnv(json),
            state,
        }
    }

    fn header(self) -> String {
        format!("\"{:016x}-{:016x}\"", self.object, self.state)
    }

    fn parse(text: &str) -> Option<Self> {
        let inner = text.strip_prefix("W/").unwrap_or(text);
        let inner = inner.strip_prefix('"')?.strip_suffix('"')?;
        let (object, state) = inner.split_once('-')?;
        Some(Self {
            object: u64::from_str_radix(object, 16).ok()?,
            state: u64::from_str_radix(state, 16).ok()?,
        })
    }
}

/// The hash of the fields whose change ends a wait. `status` counts once provisioning has
/// settled: before that, `running` only means "booted, still waiting for an IP", and a
/// coordinator waiting for the VM to be ready has nothing to do with it. The phase counts
/// where it ends provisioning without an IP (`ip-timeout`) or begins a delete.
pub fn state_of(vm: &Vm) -> u64 {
    let settled = vm.is_settled();
    let status = if settled {
        vm.status
    } else {
        Status::Provisioning
    };
    let deleting = vm.progress.phase == crate::vm::Phase::Deleting;
    let fields = serde_json::to_vec(&(
        status,
        settled,
        deleting,
        &vm.ip_address,
        &vm.error,
        vm.ttl,
        &vm.expires_at,
    ));
    // Encoding these plain fields cannot fail; if it ever did, every change would count.
    fnv(&fields.unwrap_or_default())
}

/// How the object now differs from the one the client has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    None,
    Progress,
    State,
}

/// The client's object is the one named by `If-None-Match` (any of its tags, `*` for
/// any), or else the one the wait began with.
fn change(known: Option<&str>, first: VmTag, now: VmTag) -> Change {
    let compare = |had: VmTag| {
        if had == now {
            Change::None
        } else if had.state == now.state {
            Change::Progress
        } else {
            Change::State
        }
    };
    match known {
        None => compare(first),
        Some(header) => header
            .split(',')
            .map(str::trim)
            .map(|candidate| {
                if candidate == "*" {
                    Change::None
                } else {
                    VmTag::parse(candidate).map_or(Change::State, compare)
                }
            })
            .min()
            .unwrap_or(Change::State),
    }
}

/// True when an `If-None-Match` value names `etag` (or is `*`). Weak tags compare as
/// strong ones: our tags are never weak, and a proxy may have weakened them.
pub fn if_none_match(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// A VM object and its `ETag`.
pub struct Polled {
    pub json: Arc<[u8]>,
    pub etag: String,
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

    /// The VM's object once what a coordinator acts on differs from what the client has
    /// (with `progress`, any difference, but progress alone not before [`PROGRESS_GAP`]),
    /// or when `wait` is over. What the client has is the object whose tag is in `known`
    /// (`If-None-Match`), or else the object as it is now. A deleted VM is a change:
    /// `VmNotFound`.
    pub fn poll(
        &self,
        store: &VmStore,
        id: VmId,
        known: Option<&str>,
        wait: Duration,
        progress: bool,
    ) -> Result<Polled, Error> {
        let started = Instant::now();
        let read = || {
            store
                .json_with_state(id)
                .map(|(json, state)| (VmTag::of(&json, state), json))
                .ok_or(Error::VmNotFound)
        };
        let (first_tag, first) = read()?;
        let answer_now = |tag: VmTag, now: Instant| match change(known, first_tag, tag) {
            Change::State => true,
            Change::Progress => progress && now >= started + PROGRESS_GAP,
            Change::None => false,
        };
        let polled = |tag: VmTag, json| {
            Ok(Polled {
                json,
                etag: tag.header(),
            })
        };
        if wait.is_zero() || answer_now(first_tag, started) {
            return polled(first_tag, first);
        }
        let Some(_place) = self.enter() else {
            return polled(first_tag, first);
        };
        let deadline = started + wait.min(MAX_WAIT);
        loop {
            // The generation first: a change between the two reads is then not missed.
            let seen = store.generation();
            let (tag, json) = read()?;
            let now = Instant::now();
            if answer_now(tag, now) || now >= deadline || crate::sys::shutdown::requested() {
                return polled(tag, json);
            }
            let mut until = deadline;
            if progress && change(known, first_tag, tag) == Change::Progress {
                // Held back until the gap is over, unless the state changes first.
                until = until.min(started + PROGRESS_GAP);
            }
            store.wait_for_change(seen, (until - now).min(SLICE));
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
    use crate::vm::Status;

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
        let a = VmTag::of(b"{\"a\":1}", 7).header();
        assert_eq!(a.len(), 35);
        assert_ne!(a, VmTag::of(b"{\"a\":2}", 7).header());
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
            .poll(
                &store,
                id,
                Some("\"stale\""),
                Duration::from_secs(60),
                false,
            )
            .unwrap()
            .json;
        assert_eq!(json, before);
        assert!(started.elapsed() < Duration::from_secs(30));

        // No change: the wait runs out.
        let started = Instant::now();
        waiters
            .poll(&store, id, None, Duration::from_millis(300), false)
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));

        // A change wakes the waiter long before its minute is up.
        let poller = {
            let (store, waiters) = (store.clone(), waiters.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let json = waiters
                    .poll(&store, id, None, Duration::from_secs(60), false)
                    .unwrap()
                    .json;
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

    /// Polls on its own thread once the store has `waiting` waiters; returns the answer and
    /// how long it took.
    fn poll_in_background(
        store: &Arc<VmStore>,
        waiters: &Arc<Waiters>,
        id: VmId,
        known: Option<String>,
        progress: bool,
    ) -> std::thread::JoinHandle<(Arc<[u8]>, Duration)> {
        let before = waiters.active();
        let handle = std::thread::spawn({
            let (store, waiters) = (store.clone(), waiters.clone());
            move || {
                let started = Instant::now();
                let json = waiters
                    .poll(
                        &store,
                        id,
                        known.as_deref(),
                        Duration::from_secs(20),
                        progress,
                    )
                    .unwrap()
                    .json;
                (json, started.elapsed())
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while waiters.active() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        handle
    }

    fn set_bytes(store: &VmStore, id: VmId, bytes: u64) {
        store
            .update(id, Durability::MemoryOnly, |vm| {
                vm.progress.phase = crate::vm::Phase::Downloading;
                vm.progress.bytes_downloaded = bytes;
            })
            .unwrap();
    }

    #[test]
    fn progress_ends_a_wait_only_when_asked_for_and_not_before_a_second() {
        let (store, id, root) = store("progress");
        let waiters = Arc::new(Waiters::new(4));

        // Without progress=true: a download moving does not answer; the IP does.
        let plain = poll_in_background(&store, &waiters, id, None, false);
        let with_progress = poll_in_background(&store, &waiters, id, None, true);
        for n in 1..=8 {
            set_bytes(&store, id, n * 1000);
            std::thread::sleep(Duration::from_millis(200));
        }
        let (json, took) = with_progress.join().unwrap();
        assert!(String::from_utf8_lossy(&json).contains("downloading"));
        assert!(took >= PROGRESS_GAP, "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(!plain.is_finished(), "progress alone ended a plain wait");
        store
            .update(id, Durability::MemoryOnly, |vm| {
                vm.ip_address = "172.16.1.2".into();
                vm.status = Status::Running;
                vm.progress.phase = crate::vm::Phase::Ready;
            })
            .unwrap();
        let (json, _) = plain.join().unwrap();
        assert!(String::from_utf8_lossy(&json).contains("172.16.1.2"));

        // A tag behind on progress only: a plain wait holds, a progress wait answers
        // after the gap; a tag behind on the state answers at once.
        let (json, state) = store.json_with_state(id).unwrap();
        let old = VmTag::of(&json, state).header();
        set_bytes(&store, id, 99_000);
        store
            .update(id, Durability::MemoryOnly, |vm| {
                vm.progress.phase = crate::vm::Phase::Ready
            })
            .unwrap();
        let started = Instant::now();
        let json = waiters
            .poll(&store, id, Some(&old), Duration::from_millis(1500), true)
            .unwrap()
            .json;
        assert!(started.elapsed() >= PROGRESS_GAP);
        assert!(String::from_utf8_lossy(&json).contains("99000"));
        let started = Instant::now();
        waiters
            .poll(&store, id, Some(&old), Duration::from_millis(400), false)
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(400));
        let started = Instant::now();
        waiters
            .poll(
                &store,
                id,
                Some("\"0000000000000000-0000000000000000\""),
                Duration::from_secs(20),
                true,
            )
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn vm_tags_parse_back() {
        let vm = sample();
        let json = serde_json::to_vec(&vm).unwrap();
        let tag = VmTag::of(&json, state_of(&vm)).header();
        let parsed = VmTag::of(&json, state_of(&vm));
        assert_eq!(VmTag::parse(&tag), Some(parsed));
        assert_eq!(VmTag::parse(&format!("W/{tag}")), Some(parsed));
        for bad in ["", "\"abc\"", "\"1-x\"", "abc-def"] {
            assert_eq!(VmTag::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_state_is_what_a_coordinator_acts_on() {
        let mut vm = sample();
        let queued = state_of(&vm);
        vm.progress.phase = crate::vm::Phase::Downloading;
        vm.progress.bytes_downloaded = 5;
        assert_eq!(state_of(&vm), queued, "progress is not state");
        vm.status = Status::Running;
        vm.progress.phase = crate::vm::Phase::WaitingForIp;
        assert_eq!(
            state_of(&vm),
            queued,
            "running without an IP is still provisioning"
        );
        let mut ready = vm.clone();
        ready.ip_address = "172.16.1.2".into();
        ready.progress.phase = crate::vm::Phase::Ready;
        assert_ne!(state_of(&ready), queued);
        let mut timed_out = vm.clone();
        timed_out.progress.phase = crate::vm::Phase::IpTimeout;
        assert_ne!(state_of(&timed_out), queued);
        let mut failed = vm.clone();
        failed.fail("clone-failed", "boom");
        assert_ne!(state_of(&failed), queued);
        let mut renewed = ready.clone();
        renewed.expires_at = Some("2026-12-01T00:00:00.000Z".into());
        assert_ne!(state_of(&renewed), state_of(&ready));
        let mut stopped = ready.clone();
        stopped.status = Status::Stopped;
        assert_ne!(state_of(&stopped), state_of(&ready));
        let mut deleting = ready.clone();
        deleting.progress.phase = crate::vm::Phase::Deleting;
        assert_ne!(state_of(&deleting), state_of(&ready));
    }

    #[test]
    fn past_the_cap_a_wait_answers_at_once() {
        let (store, id, root) = store("cap");
        let waiters = Waiters::new(0);
        let started = Instant::now();
        waiters
            .poll(&store, id, None, Duration::from_secs(60), false)
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        let unknown = VmId::new();
        assert_eq!(
            waiters
                .poll(&store, unknown, None, Duration::from_secs(1), false)
                .err(),
            Some(Error::VmNotFound)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
