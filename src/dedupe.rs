//! Recognising what was seen before (contract section 2), with no I/O.
//!
//! - [`Window`]: the last N `messageId`s, so a notification sent again with the same id is
//!   acknowledged and not emitted twice.
//! - [`Unsettled`]: fingerprints of messages without `messageId` that were appended to the
//!   stream (or emitted) and whose ack has not yet gone out. Only a broker redelivery of one of
//!   those is dropped: two genuine identical notifications ("station ST-1 offline" twice) both go
//!   out, even when one of them comes back as a redelivery after a connection loss.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A bounded set that forgets its oldest keys first.
pub struct Window<K> {
    set: HashSet<K>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Window<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn contains(&self, key: &K) -> bool {
        self.set.contains(key)
    }

    /// `true` if `key` was already there; otherwise remembers it.
    pub fn check_and_insert(&mut self, key: K) -> bool {
        if self.set.contains(&key) {
            return true;
        }
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(key.clone());
        self.order.push_back(key);
        false
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

/// Identifies a message without `messageId`, to recognise broker redeliveries of it.
pub fn fingerprint(routing_key: &str, body: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    routing_key.hash(&mut hasher);
    body.hash(&mut hasher);
    hasher.finish()
}

/// A multiset of fingerprints of messages that were handled (appended) but not yet acked.
///
/// After a connection loss, the broker redelivers exactly the unacked ones, flagged
/// `redelivered`: each of those matches one entry here and is dropped once. A redelivery that
/// matches nothing was never handled (it was only prefetched), so it is new. Entries whose ack
/// did reach the broker before the loss are never redelivered; the oldest are forgotten beyond
/// `capacity`.
pub struct Unsettled {
    counts: HashMap<u64, u32>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl Unsettled {
    pub fn new(capacity: usize) -> Self {
        Self {
            counts: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// A message with this fingerprint was handled; its ack is pending.
    pub fn handled(&mut self, fingerprint: u64) {
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.remove(old);
        }
        *self.counts.entry(fingerprint).or_default() += 1;
        self.order.push_back(fingerprint);
    }

    /// Its ack went out: a later redelivery of the same body is a new message.
    pub fn settled(&mut self, fingerprint: u64) {
        if self.remove(fingerprint)
            && let Some(at) = self.order.iter().position(|f| *f == fingerprint)
        {
            self.order.remove(at);
        }
    }

    /// For a redelivered message: `true` (and forgets one entry) when it was already handled.
    pub fn take_redelivery(&mut self, fingerprint: u64) -> bool {
        let handled = self.remove(fingerprint);
        if handled && let Some(at) = self.order.iter().position(|f| *f == fingerprint) {
            self.order.remove(at);
        }
        handled
    }

    fn remove(&mut self, fingerprint: u64) -> bool {
        match self.counts.get_mut(&fingerprint) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            Some(_) => {
                self.counts.remove(&fingerprint);
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The consumer's memory of what it appended, across sessions of one process.
pub struct AppendState {
    /// `messageId`s whose records were confirmed by the stream.
    pub(crate) appended: Window<Arc<str>>,
    /// Fingerprints of messages without `messageId` appended but not yet acked.
    pub(crate) unsettled: Unsettled,
    /// Appends of the current session waiting for their confirm, in order (`None`: a message
    /// with `messageId`, which the reader's dedupe covers).
    pub(crate) publishing: VecDeque<Option<u64>>,
    /// Appends whose session ended before their confirm: they may or may not be in the stream.
    in_doubt: Unsettled,
    /// Stream-less mode: the last id this instance gave a record.
    last_id: u64,
}

impl AppendState {
    pub fn new(dedupe_window: usize, prefetch: u16) -> Self {
        Self {
            appended: Window::new(dedupe_window),
            unsettled: Unsettled::new(usize::from(prefetch).max(64) * 4),
            publishing: VecDeque::new(),
            in_doubt: Unsettled::new(usize::from(prefetch).max(64) * 4),
            last_id: 0,
        }
    }

    /// Stream-less mode: the id of the next record, above every id this instance has given or
    /// read (`head`), and at least the time in µs, so that an instance that took over with
    /// empty memory still numbers after every id given before it (contract v3 section 3).
    pub fn next_id(&mut self, head: u64) -> u64 {
        let now = u64::try_from(crate::record::unix_micros()).unwrap_or(0);
        self.last_id = (self.last_id + 1).max(head + 1).max(now);
        self.last_id
    }

    /// A new session: what the last one was still publishing is in doubt.
    pub fn new_session(&mut self) {
        for print in self.publishing.drain(..).flatten() {
            self.in_doubt.handled(print);
        }
    }

    /// The reader found the record of an in-doubt append: it is appended, not yet acked.
    pub fn landed(&mut self, print: u64) {
        if self.in_doubt.take_redelivery(print) {
            self.unsettled.handled(print);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_oldest_first() {
        let mut w = Window::new(2);
        assert!(!w.check_and_insert(1));
        assert!(w.check_and_insert(1));
        assert!(!w.check_and_insert(2));
        assert!(!w.check_and_insert(3));
        assert!(!w.check_and_insert(1), "1 was forgotten when 3 came in");
        assert!(w.check_and_insert(3));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn fingerprints_tell_bodies_and_keys_apart() {
        assert_eq!(fingerprint("a", b"x"), fingerprint("a", b"x"));
        assert_ne!(fingerprint("a", b"x"), fingerprint("b", b"x"));
        assert_ne!(fingerprint("a", b"x"), fingerprint("a", b"y"));
    }

    #[test]
    fn a_redelivery_is_dropped_only_while_its_twin_is_unacked() {
        let offline = fingerprint("notification.station", br#"{"type":"station.offline"}"#);
        let mut unsettled = Unsettled::new(100);
        // The first "offline" was handled and acked: an identical one redelivered later (it was
        // prefetched, never handled, when the connection dropped) is a real notification.
        unsettled.handled(offline);
        unsettled.settled(offline);
        assert!(!unsettled.take_redelivery(offline));
        // Handled, then the connection dropped before the ack: its redelivery is the same one.
        unsettled.handled(offline);
        assert!(unsettled.take_redelivery(offline));
        assert!(
            !unsettled.take_redelivery(offline),
            "dropped once, not forever"
        );
        assert!(unsettled.is_empty());
    }

    #[test]
    fn identical_unacked_messages_are_each_matched_once() {
        let mut unsettled = Unsettled::new(100);
        unsettled.handled(7);
        unsettled.handled(7);
        assert!(unsettled.take_redelivery(7));
        assert!(unsettled.take_redelivery(7));
        assert!(!unsettled.take_redelivery(7));
    }

    #[test]
    fn unsettled_entries_are_bounded() {
        let mut unsettled = Unsettled::new(3);
        for f in 0..10 {
            unsettled.handled(f);
        }
        assert_eq!(unsettled.len(), 3);
        assert!(!unsettled.take_redelivery(0), "the oldest were forgotten");
        assert!(unsettled.take_redelivery(9));
    }
}
