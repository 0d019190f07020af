//! The in-memory window of each room, for polling and replay (contract sections 3, 5, 6).
//!
//! [`HistoryStore`] is what the [`crate::ledger`] needs from a store; [`MemoryStore`] is the
//! one implementation, used in both modes (with RabbitMQ it is the window in front of the
//! stream). A notification is held once, whatever its number of rooms: every room's window
//! points at the same [`Held`] value.
//!
//! Memory is bounded four ways: `HISTORY_PER_ROOM` items per room, `HISTORY_MAX_ROOMS` rooms
//! (least recently written dropped first), `HISTORY_MAX_TOTAL` room entries and
//! `HISTORY_MAX_BYTES` bytes (oldest notification evicted first, from all its rooms);
//! rooms idle for `HISTORY_ROOM_IDLE_SECS` are dropped.
//!
//! What was evicted is never forgotten silently: each window remembers the last id it lost
//! (`evicted_upto`), a dropped room leaves a small tombstone with its last id, and ids at or
//! below `floor` may be missing from any room that has neither. [`HistoryStore::after`] turns
//! that into "everything after cursor C is here" or "ids in (C, upto] may be missing".

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::config::HistoryConfig;
use crate::envelope::Envelope;
use crate::rooms::Room;

/// One notification as read back: its id and its (shared) content.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: u64,
    pub envelope: Arc<Envelope>,
}

/// A notification held by the store. Its bytes count against `HISTORY_MAX_BYTES` from the
/// moment it is stored until the last room lets go of it.
struct Held {
    item: Item,
    _charge: Charge,
}

/// Adds `bytes` to the store's meter for as long as it lives.
struct Charge {
    bytes: usize,
    meter: Arc<AtomicUsize>,
}

impl Charge {
    fn new(bytes: usize, meter: &Arc<AtomicUsize>) -> Self {
        meter.fetch_add(bytes, Ordering::Relaxed);
        Self {
            bytes,
            meter: meter.clone(),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.meter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Bytes each room entry costs on top of the notification it points at.
const ENTRY_BYTES: usize = 32;
/// Tombstones of dropped rooms kept per room the store may hold: a dropped room's cursor still
/// gets an honest answer long after its window is gone.
const TOMBSTONES_PER_ROOM: usize = 4;

/// What a room holds after a cursor.
#[derive(Debug, Default)]
pub struct Slice {
    /// Held items with an id above the cursor (and above `missing`'s range), oldest first.
    pub items: Vec<Item>,
    /// `Some(upto)`: ids in (cursor, upto] may have gone to this room and are no longer held.
    pub missing_upto: Option<u64>,
}

/// Sizes, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSize {
    pub rooms: usize,
    pub entries: usize,
    pub bytes: usize,
}

/// What the ledger needs from a history store.
pub trait HistoryStore: Send {
    /// Stores `item` in each of its rooms. Ids must increase.
    fn append(&mut self, item: Item, now: Instant);
    /// Up to `limit` items of `room` after `after`, and whether anything after it is missing.
    fn after(&self, room: &Room, after: u64, limit: usize) -> Slice;
    /// Everything `room` still holds, oldest first (for a reset).
    fn retained(&self, room: &Room, limit: usize) -> Vec<Item>;
    /// Declares every id up to `id` possibly missing from every room (an instance that starts
    /// reading mid-stream, records expired unread, a stream-less reconnect).
    fn forget_through(&mut self, id: u64);
    /// Keeps everything of `room` after `id` past the per-room cap until [`Self::unpin`].
    fn pin(&mut self, room: &Room, id: u64);
    fn unpin(&mut self, room: &Room, id: u64);
    /// Drops rooms that nothing was written to for `HISTORY_ROOM_IDLE_SECS`.
    fn evict_idle(&mut self, now: Instant) -> usize;
    fn size(&self) -> StoreSize;
}

struct RoomWindow {
    items: VecDeque<Arc<Held>>,
    /// The last id this room lost (0: none); ids above it that went to the room are all held.
    evicted_upto: u64,
    /// Id of the last item written; key of this room in [`MemoryStore::by_last_write`].
    last_id: u64,
    last_write: Instant,
}

pub struct MemoryStore {
    config: HistoryConfig,
    rooms: HashMap<Room, RoomWindow>,
    /// `(last_id, room)`: the first entry is the least recently written room.
    by_last_write: BTreeSet<(u64, Room)>,
    /// Every stored notification, oldest first, for the total and byte caps. An entry whose
    /// notification every room has already let go of is skipped, and compacted away.
    order: VecDeque<Weak<Held>>,
    /// Bytes of the notifications held right now.
    meter: Arc<AtomicUsize>,
    /// Room entries held (a notification in 3 rooms is 3 entries).
    entries: usize,
    /// Last id of each dropped room (its window is gone, what it lost is remembered).
    tombstones: HashMap<Room, u64>,
    tombstone_order: BTreeSet<(u64, Room)>,
    /// Ids up to here may be missing from any room without a window or a tombstone.
    floor: u64,
    /// Replays in progress: per room, the ids after which they need everything kept.
    pins: HashMap<Room, Vec<u64>>,
}

impl MemoryStore {
    pub fn new(config: HistoryConfig) -> Self {
        Self {
            config,
            rooms: HashMap::new(),
            by_last_write: BTreeSet::new(),
            order: VecDeque::new(),
            meter: Arc::new(AtomicUsize::new(0)),
            entries: 0,
            tombstones: HashMap::new(),
            tombstone_order: BTreeSet::new(),
            floor: 0,
            pins: HashMap::new(),
        }
    }

    /// Up to which id a room may be missing items, window or not.
    fn lost_upto(&self, room: &Room) -> u64 {
        match self.rooms.get(room) {
            Some(window) => window.evicted_upto,
            None => self
                .tombstones
                .get(room)
                .copied()
                .unwrap_or(0)
                .max(self.floor),
        }
    }

    fn window_for(&mut self, room: &Room, now: Instant) -> &mut RoomWindow {
        if !self.rooms.contains_key(room) {
            while self.rooms.len() >= self.config.max_rooms {
                let Some((_, lru)) = self.by_last_write.pop_first() else {
                    break;
                };
                self.drop_room(&lru);
            }
            // A room that was dropped before comes back knowing what it lost then.
            let evicted_upto = self.lost_upto(room);
            if let Some(last) = self.tombstones.remove(room) {
                self.tombstone_order.remove(&(last, room.clone()));
            }
            let window = RoomWindow {
                items: VecDeque::new(),
                evicted_upto,
                last_id: 0,
                last_write: now,
            };
            self.rooms.insert(room.clone(), window);
            self.by_last_write.insert((0, room.clone()));
        }
        // Inserted just above when it was missing.
        self.rooms.get_mut(room).expect("window present")
    }

    fn drop_room(&mut self, room: &Room) {
        let Some(window) = self.rooms.remove(room) else {
            return;
        };
        self.by_last_write.remove(&(window.last_id, room.clone()));
        self.entries -= window.items.len();
        let lost = window.last_id.max(window.evicted_upto);
        if lost > self.lost_upto(room) {
            self.tombstones.insert(room.clone(), lost);
            self.tombstone_order.insert((lost, room.clone()));
            let cap = self.config.max_rooms.saturating_mul(TOMBSTONES_PER_ROOM);
            while self.tombstones.len() > cap {
                let Some((last, oldest)) = self.tombstone_order.pop_first() else {
                    break;
                };
                self.tombstones.remove(&oldest);
                // Forgetting a tombstone makes every quiet room conservative up to it.
                self.floor = self.floor.max(last);
            }
        }
    }

    /// Evicts the oldest notification from every room that still holds it.
    fn evict_oldest(&mut self) -> Option<usize> {
        let held = loop {
            let weak = self.order.pop_front()?;
            if let Some(held) = weak.upgrade() {
                break held;
            }
        };
        let id = held.item.id;
        for room in held.item.envelope.rooms.iter() {
            if let Some(window) = self.rooms.get_mut(room)
                && window
                    .items
                    .front()
                    .is_some_and(|first| first.item.id == id)
            {
                window.items.pop_front();
                window.evicted_upto = window.evicted_upto.max(id);
                self.entries -= 1;
            }
        }
        Some(held._charge.bytes)
    }

    fn enforce_caps(&mut self) {
        // Bytes still held by a reader of an evicted notification are counted as freed here,
        // so a slow poll cannot make the loop evict more than the cap asks for.
        let mut bytes = self.meter.load(Ordering::Relaxed);
        while bytes > self.config.max_bytes || self.entries > self.config.max_total {
            match self.evict_oldest() {
                Some(freed) => bytes = bytes.saturating_sub(freed),
                None => break,
            }
        }
        // Keep the order queue proportional to what is held.
        if self.order.len() > 2 * self.entries + 1024 {
            self.order.retain(|weak| weak.strong_count() > 0);
        }
    }
}

impl HistoryStore for MemoryStore {
    fn append(&mut self, item: Item, now: Instant) {
        let id = item.id;
        if self.config.per_room == 0 {
            // Nothing is kept, so everything up to here is missing everywhere.
            self.floor = self.floor.max(id);
            return;
        }
        let rooms = item.envelope.rooms.len();
        let bytes = item.envelope.held_bytes() + rooms * ENTRY_BYTES;
        let held = Arc::new(Held {
            _charge: Charge::new(bytes, &self.meter),
            item,
        });
        let per_room = self.config.per_room;
        for room in held.item.envelope.rooms.iter() {
            let pinned_after = self
                .pins
                .get(room)
                .and_then(|pins| pins.iter().min().copied());
            let previous = {
                let window = self.window_for(room, now);
                let previous = window.last_id;
                window.last_id = id;
                window.last_write = now;
                window.items.push_back(held.clone());
                // A replay in progress needs what follows its pin: the window grows past its
                // cap for it, within the byte and total caps.
                let needed = |first: u64| pinned_after.is_some_and(|pin| first > pin);
                if window.items.len() > per_room
                    && !window
                        .items
                        .front()
                        .is_some_and(|first| needed(first.item.id))
                    && let Some(evicted) = window.items.pop_front()
                {
                    window.evicted_upto = window.evicted_upto.max(evicted.item.id);
                    self.entries -= 1;
                }
                previous
            };
            self.entries += 1;
            self.by_last_write.remove(&(previous, room.clone()));
            self.by_last_write.insert((id, room.clone()));
        }
        self.order.push_back(Arc::downgrade(&held));
        drop(held);
        self.enforce_caps();
    }

    fn after(&self, room: &Room, after: u64, limit: usize) -> Slice {
        let lost = self.lost_upto(room);
        let missing_upto = (lost > after).then_some(lost);
        let from = after.max(lost);
        let items = self
            .rooms
            .get(room)
            .map(|window| {
                let start = window.items.partition_point(|held| held.item.id <= from);
                window
                    .items
                    .range(start..)
                    .take(limit)
                    .map(|held| held.item.clone())
                    .collect()
            })
            .unwrap_or_default();
        Slice {
            items,
            missing_upto,
        }
    }

    fn retained(&self, room: &Room, limit: usize) -> Vec<Item> {
        self.rooms
            .get(room)
            .map(|window| {
                window
                    .items
                    .iter()
                    .take(limit)
                    .map(|held| held.item.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn forget_through(&mut self, id: u64) {
        self.floor = self.floor.max(id);
        // Every room may have lost something up to `id`, those holding older items too: a
        // cursor at a room's last item before the gap must answer `reset`. What a window holds
        // stays, for the reset's retained history.
        for window in self.rooms.values_mut() {
            window.evicted_upto = window.evicted_upto.max(id);
        }
    }

    fn pin(&mut self, room: &Room, id: u64) {
        self.pins.entry(room.clone()).or_default().push(id);
    }

    fn unpin(&mut self, room: &Room, id: u64) {
        if let Some(pins) = self.pins.get_mut(room) {
            if let Some(at) = pins.iter().position(|p| *p == id) {
                pins.swap_remove(at);
            }
            if pins.is_empty() {
                self.pins.remove(room);
            }
        }
        // What the replay kept beyond the cap goes now.
        let per_room = self.config.per_room;
        let still_pinned = self
            .pins
            .get(room)
            .and_then(|pins| pins.iter().min().copied());
        if let Some(window) = self.rooms.get_mut(room) {
            while window.items.len() > per_room {
                if still_pinned.is_some_and(|pin| window.items[0].item.id > pin) {
                    break;
                }
                let Some(evicted) = window.items.pop_front() else {
                    break;
                };
                window.evicted_upto = window.evicted_upto.max(evicted.item.id);
                self.entries -= 1;
            }
        }
    }

    fn evict_idle(&mut self, now: Instant) -> usize {
        let idle: Duration = self.config.room_idle;
        let stale: Vec<Room> = self
            .rooms
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.last_write) >= idle)
            .map(|(room, _)| room.clone())
            .collect();
        for room in &stale {
            self.drop_room(room);
        }
        self.enforce_caps();
        stale.len()
    }

    fn size(&self) -> StoreSize {
        StoreSize {
            rooms: self.rooms.len(),
            entries: self.entries,
            bytes: self.meter.load(Ordering::Relaxed),
        }
    }
}
