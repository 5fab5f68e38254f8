//! Round messages from peers, kept until the session they belong to takes them.
//!
//! A peer may be a layer ahead, or may have received its ticket or order first: a message for
//! a session this custodian has not started yet is buffered, not refused. The buffer is bounded
//! (sessions, bytes, and age: a message nobody claims is dropped after [`Limits::max_age`]).
//!
//! A session id is used once. When a local session ends, a tombstone of its id stays behind
//! for `max_age`: messages that come late are refused (the sender learns the session is over),
//! and a second session under the same id is refused, so a message from one attempt can never
//! be taken by another attempt that reuses its id. Tombstones are a few bytes and bounded
//! apart (oldest dropped first), so that finished sessions never crowd out running ones.
//!
//! An abort marks the slot (created if need be, so that a session that starts after its abort
//! ends at once) and wakes the session waiting on it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
// tokio's clock, not std's: a simulation advances it, so expiry follows simulated time.
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Sessions buffered or running at once.
    pub max_sessions: usize,
    /// Tombstones of ended sessions kept at once.
    pub max_closed: usize,
    /// How long an unclaimed slot, or a tombstone, is kept.
    pub max_age: Duration,
    /// Bytes of messages buffered at once.
    pub max_bytes: usize,
}

pub(crate) const LIMITS: Limits = Limits {
    max_sessions: 10_000,
    max_closed: 100_000,
    max_age: Duration::from_secs(60),
    max_bytes: 1 << 30,
};

/// Sweeping is O(slots): done at most this often, or when the mailbox is full.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeliverError {
    #[error("a message for this session, layer and sender was already delivered")]
    Duplicate,
    #[error("this session has ended here")]
    Closed,
    #[error("the mailbox is full")]
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("the session id is already in use here (session ids are single-use)")]
    InUse,
    #[error("the session was aborted")]
    Aborted,
    #[error("too many sessions are open here")]
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WaitError {
    #[error("the session was aborted")]
    Aborted,
    #[error("no message for layer {layer} from custodian(s) {missing:?} in time")]
    TimedOut { layer: u32, missing: Vec<u32> },
}

pub(crate) struct Mailbox {
    limits: Limits,
    inner: Mutex<Inner>,
}

struct Inner {
    slots: HashMap<String, Slot>,
    /// Tombstones: session id → when it ended, and the same in order of ending.
    closed: HashMap<String, Instant>,
    closed_order: VecDeque<(Instant, String)>,
    bytes: usize,
    last_sweep: Instant,
}

struct Slot {
    /// Whether a local session holds the slot's [`Inbox`] (then it is never swept).
    running: bool,
    /// When the slot was created, or claimed by its session: what `max_age` is measured from.
    since: Instant,
    aborted: bool,
    /// (layer, sender) → body.
    messages: HashMap<(u32, u32), Vec<u8>>,
    /// Every (layer, sender) ever delivered, taken or not.
    seen: HashSet<(u32, u32)>,
    wake: watch::Sender<()>,
}

impl Slot {
    fn new(running: bool) -> Slot {
        Slot {
            running,
            since: Instant::now(),
            aborted: false,
            messages: HashMap::new(),
            seen: HashSet::new(),
            wake: watch::Sender::new(()),
        }
    }
}

impl Inner {
    fn sweep_if_due(&mut self, limits: &Limits) {
        if self.slots.len() >= limits.max_sessions || self.last_sweep.elapsed() >= SWEEP_INTERVAL {
            let mut freed = 0;
            self.slots.retain(|_, slot| {
                let keep = slot.running || slot.since.elapsed() <= limits.max_age;
                if !keep {
                    freed += slot.messages.values().map(Vec::len).sum::<usize>();
                }
                keep
            });
            self.bytes -= freed;
            self.trim_closed(limits);
            self.last_sweep = Instant::now();
        }
    }

    /// Drops tombstones past their age, and the oldest beyond the cap.
    fn trim_closed(&mut self, limits: &Limits) {
        while let Some((at, _)) = self.closed_order.front() {
            if self.closed_order.len() <= limits.max_closed && at.elapsed() <= limits.max_age {
                break;
            }
            if let Some((at, session)) = self.closed_order.pop_front()
                && self.closed.get(&session) == Some(&at)
            {
                self.closed.remove(&session);
            }
        }
    }

    fn close(&mut self, session: &str, limits: &Limits) {
        if let Some(slot) = self.slots.remove(session) {
            self.bytes -= slot.messages.values().map(Vec::len).sum::<usize>();
        }
        let now = Instant::now();
        self.closed.insert(session.to_string(), now);
        self.closed_order.push_back((now, session.to_string()));
        self.trim_closed(limits);
    }
}

impl Mailbox {
    pub fn new(limits: Limits) -> Mailbox {
        Mailbox {
            limits,
            inner: Mutex::new(Inner {
                slots: HashMap::new(),
                closed: HashMap::new(),
                closed_order: VecDeque::new(),
                bytes: 0,
                last_sweep: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the counters consistent before anything can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Buffers one authenticated message.
    pub fn deliver(
        &self,
        session: &str,
        layer: u32,
        sender: u32,
        body: Vec<u8>,
    ) -> Result<(), DeliverError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.sweep_if_due(&self.limits);
        if inner.closed.contains_key(session) {
            return Err(DeliverError::Closed);
        }
        let len = body.len();
        if inner.bytes + len > self.limits.max_bytes {
            return Err(DeliverError::Full);
        }
        let full = inner.slots.len() >= self.limits.max_sessions;
        let slot = match inner.slots.entry(session.to_string()) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(_) if full => return Err(DeliverError::Full),
            Entry::Vacant(slot) => slot.insert(Slot::new(false)),
        };
        if !slot.seen.insert((layer, sender)) {
            return Err(DeliverError::Duplicate);
        }
        slot.messages.insert((layer, sender), body);
        slot.wake.send_replace(());
        inner.bytes += len;
        Ok(())
    }

    /// Aborts a session, whether it is running or yet to start (one that is over has nothing
    /// left to stop).
    pub fn abort(&self, session: &str) {
        let mut inner = self.lock();
        inner.sweep_if_due(&self.limits);
        if inner.closed.contains_key(session) {
            return;
        }
        // Past the session cap on purpose: aborts come only in orders signed by the
        // coordinator, and dropping one could leave a session waiting for its full timeout.
        let slot = inner
            .slots
            .entry(session.to_string())
            .or_insert_with(|| Slot::new(false));
        slot.aborted = true;
        slot.wake.send_replace(());
    }

    /// Claims a session id for a local session. The slot is this session's until the returned
    /// [`Inbox`] is dropped.
    pub fn open(&self, session: &str) -> Result<Inbox<'_>, OpenError> {
        let mut inner = self.lock();
        inner.sweep_if_due(&self.limits);
        if inner.closed.contains_key(session) {
            return Err(OpenError::InUse);
        }
        let full = inner.slots.len() >= self.limits.max_sessions;
        match inner.slots.get_mut(session) {
            Some(slot) if slot.running => return Err(OpenError::InUse),
            Some(slot) if slot.aborted => return Err(OpenError::Aborted),
            Some(slot) => {
                slot.running = true;
                slot.since = Instant::now();
            }
            None if full => return Err(OpenError::Full),
            None => {
                inner.slots.insert(session.to_string(), Slot::new(true));
            }
        }
        Ok(Inbox {
            mailbox: self,
            session: session.to_string(),
        })
    }

    #[cfg(test)]
    fn buffered_bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// A local session's claim on its slot. Dropping it ends the session here: the slot, with
/// whatever is still buffered in it, gives way to a tombstone.
pub(crate) struct Inbox<'a> {
    mailbox: &'a Mailbox,
    session: String,
}

impl Inbox<'_> {
    /// Waits until a message for `layer` from every one of `senders` is here, and takes them
    /// (in the order of `senders`).
    pub async fn wait(
        &self,
        layer: u32,
        senders: &[u32],
        timeout: Duration,
    ) -> Result<Vec<(u32, Vec<u8>)>, WaitError> {
        let deadline = Instant::now() + timeout;
        // Subscribed before the first look, so that no delivery between a look and the wait
        // that follows it goes unnoticed.
        let mut woken = match self.mailbox.lock().slots.get(&self.session) {
            Some(slot) => slot.wake.subscribe(),
            None => return Err(WaitError::Aborted),
        };
        loop {
            let missing = {
                let mut inner = self.mailbox.lock();
                let Some(slot) = inner.slots.get_mut(&self.session) else {
                    return Err(WaitError::Aborted);
                };
                if slot.aborted {
                    return Err(WaitError::Aborted);
                }
                let missing: Vec<u32> = senders
                    .iter()
                    .copied()
                    .filter(|s| !slot.messages.contains_key(&(layer, *s)))
                    .collect();
                if missing.is_empty() {
                    let taken: Vec<(u32, Vec<u8>)> = senders
                        .iter()
                        .filter_map(|&s| slot.messages.remove(&(layer, s)).map(|m| (s, m)))
                        .collect();
                    inner.bytes -= taken.iter().map(|(_, m)| m.len()).sum::<usize>();
                    return Ok(taken);
                }
                missing
            };
            match tokio::time::timeout_at(deadline, woken.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in the slot, which outlives this inbox: unreachable, but
                // the session ends either way.
                Ok(Err(_)) => return Err(WaitError::Aborted),
                Err(_) => return Err(WaitError::TimedOut { layer, missing }),
            }
        }
    }
}

impl Drop for Inbox<'_> {
    fn drop(&mut self) {
        self.mailbox
            .lock()
            .close(&self.session, &self.mailbox.limits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn early_messages_wait_for_their_session_and_duplicates_are_refused() {
        let mailbox = Mailbox::new(LIMITS);
        mailbox.deliver("s", 1, 2, vec![2; 16]).unwrap();
        assert_eq!(
            mailbox.deliver("s", 1, 2, vec![7; 16]),
            Err(DeliverError::Duplicate)
        );
        let inbox = mailbox.open("s").unwrap();
        assert!(matches!(mailbox.open("s"), Err(OpenError::InUse)));
        // Custodian 3's message comes while the session waits.
        let (got, ()) = tokio::join!(inbox.wait(1, &[3, 2], Duration::from_secs(5)), async {
            tokio::time::sleep(SHORT).await;
            mailbox.deliver("s", 1, 3, vec![3; 32]).unwrap();
        });
        assert_eq!(got.unwrap(), vec![(3, vec![3; 32]), (2, vec![2; 16])]);
        assert_eq!(mailbox.buffered_bytes(), 0);
        // Taken messages still count as delivered.
        assert_eq!(
            mailbox.deliver("s", 1, 3, vec![]),
            Err(DeliverError::Duplicate)
        );
        mailbox.deliver("s", 2, 3, vec![1; 16]).unwrap();
        assert_eq!(
            inbox.wait(2, &[2, 3], SHORT).await,
            Err(WaitError::TimedOut {
                layer: 2,
                missing: vec![2]
            })
        );
        drop(inbox);
        assert_eq!(mailbox.buffered_bytes(), 0, "closing drops what is left");
        assert_eq!(
            mailbox.deliver("s", 2, 2, vec![]),
            Err(DeliverError::Closed)
        );
        assert!(matches!(mailbox.open("s"), Err(OpenError::InUse)));
    }

    #[tokio::test]
    async fn an_abort_ends_a_wait_and_a_session_not_yet_started() {
        let mailbox = Mailbox::new(LIMITS);
        let inbox = mailbox.open("s").unwrap();
        let (got, ()) = tokio::join!(inbox.wait(1, &[2], Duration::from_secs(5)), async {
            tokio::time::sleep(SHORT).await;
            mailbox.abort("s");
        });
        assert_eq!(got, Err(WaitError::Aborted));
        mailbox.abort("t");
        assert!(matches!(mailbox.open("t"), Err(OpenError::Aborted)));
    }

    #[test]
    fn the_buffer_is_bounded_and_unclaimed_slots_expire() {
        let mailbox = Mailbox::new(Limits {
            max_sessions: 2,
            max_closed: 1,
            max_age: SHORT,
            max_bytes: 100,
        });
        mailbox.deliver("a", 1, 2, vec![0; 60]).unwrap();
        assert_eq!(
            mailbox.deliver("a", 1, 3, vec![0; 60]),
            Err(DeliverError::Full)
        );
        mailbox.deliver("b", 1, 2, vec![0; 10]).unwrap();
        assert_eq!(mailbox.deliver("c", 1, 2, vec![]), Err(DeliverError::Full));
        assert!(matches!(mailbox.open("c"), Err(OpenError::Full)));
        let running = mailbox.open("b").unwrap();
        std::thread::sleep(SHORT * 2);
        // "a" expired and freed its bytes; "b" is running and stays.
        mailbox.deliver("c", 1, 2, vec![0; 80]).unwrap();
        assert_eq!(mailbox.buffered_bytes(), 90);
        assert_eq!(
            mailbox.deliver("b", 1, 2, vec![]),
            Err(DeliverError::Duplicate)
        );
        drop(running);
        assert_eq!(mailbox.buffered_bytes(), 80);
        // Tombstones take no session room, and beyond their cap the oldest goes first.
        assert_eq!(
            mailbox.deliver("b", 2, 2, vec![]),
            Err(DeliverError::Closed)
        );
        drop(mailbox.open("d").unwrap());
        assert!(matches!(mailbox.open("d"), Err(OpenError::InUse)));
        let _b = mailbox.open("b").expect("b's tombstone gave way to d's");
        assert!(matches!(mailbox.open("e"), Err(OpenError::Full)));
    }
}
