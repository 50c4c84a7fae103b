//! The one dedup window every delivery path goes through: a bounded set of recently seen notification ids,
//! least recently seen forgotten first.
//!
//! Ids are kept as their 128-bit xxh3 hash: no allocation per entry, 16 bytes instead of a boxed string, and a
//! chance of two different ids colliding in a 10 000-entry window of about 10⁻³⁴ per notification. The hash is
//! fixed (not seeded per process), so two processes sharing a store — an app and its push extension — agree.
//!
//! Layout: a queue of sightings in order (16 bytes each: the key) and an open-addressing index (linear probing,
//! at most half full) of 8-byte slots, one per key in the window: 32 bits of the key's hash, which place the slot
//! and tell keys apart, and the sequence number of the key's latest sighting (the whole key is read from the queue
//! only when those 32 bits match). A key seen again leaves a tombstone at its old place in the queue, which
//! eviction skips; tombstones are compacted away once the queue is twice the capacity. For 10 000 ids this holds
//! about 512 KiB (a map from key to stamp plus a queue of (key, stamp) held about 900 KiB). A new id costs one
//! index slot read and written and, once the window is full, the evicted id's slot — two places in memory that are
//! likely cold when a process holds many windows (the S2 and S6 benchmarks hold 1,000) or the app was idle, where
//! `hashbrown`'s table, used before, touched four (its control bytes and its slots, for both ids). With a warm
//! cache `hashbrown` is faster (its probes compare 16 control bytes at once; linear probing branches per slot):
//! the trade is measured in the README's design notes. Nothing is allocated per insert once the window
//! is full. (The `lru` crate, used before that, allocated a node per entry and chased pointers to rehash while
//! the window grew: 17 % of an S2 client's CPU, see BENCHMARKS.md.)
//!
//! The index is written here rather than taken from a crate: what makes it cheap is that a slot holds a hash
//! prefix and a queue position, not the key, and that eviction finds a slot by position without reading the key
//! — neither fits a general-purpose map's interface.

use std::collections::VecDeque;

use xxhash_rust::xxh3::xxh3_128;

/// A key as two words (the queue entry is 16 bytes with 8-byte alignment; `u128` would align to 16).
type Key = [u64; 2];

/// Marks a queue entry whose key was seen again later. No key equals it: a hash of 0 is stored as 1 (two ids
/// hashing to 0 and 1 merge, at a chance of 2⁻¹²⁷, the order of any other collision).
const TOMBSTONE: Key = [0, 0];

fn key(id: &str) -> Key {
    split(xxh3_128(id.as_bytes()))
}

fn split(k: u128) -> Key {
    let k = k.max(1);
    [(k >> 64) as u64, k as u64]
}

fn join(k: Key) -> u128 {
    (u128::from(k[0]) << 64) | u128::from(k[1])
}

/// The index's 32 bits of a key: the low half of its low word (already a uniform hash), never 0 (0 marks an empty
/// slot; a key whose bits are 0 shares 1 with others, which only lengthens a probe).
fn tag(k: &Key) -> u32 {
    (k[1] as u32).max(1)
}

/// Issues a prefetch of `slot`'s cache line (x86-64's `PREFETCHT0`).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn prefetch_slot(slot: &Slot) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: a prefetch is a hint: it reads nothing into the program, cannot fault, and writes nothing; the
    // pointer comes from a reference anyway. SSE, which the intrinsic requires, is part of the x86-64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(slot).cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch_slot(_slot: &Slot) {}

/// An index slot: the key's [`tag`] and the sequence number of its latest sighting; a tag of 0 is an empty slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    tag: u32,
    seq: u32,
}

const EMPTY: Slot = Slot { tag: 0, seq: 0 };

/// Bounded set of recently seen notification ids. When full, the id seen least recently is forgotten. Memory
/// grows with use rather than being allocated at full capacity up front (`core/tests/dedup_memory.rs`).
#[derive(Debug)]
pub struct DedupWindow {
    /// Sightings, oldest first: the key, or [`TOMBSTONE`] where the key was seen again later.
    ring: VecDeque<Key>,
    /// The sequence number of `ring[0]`. Sequence numbers wrap at 2³²; the queue never holds that many.
    head: u32,
    /// One slot per key in the window, at the first free place from `tag & (len - 1)` on. The length is 0 or a
    /// power of two, and at most half of the slots are used: a probe always ends at an empty slot, and runs of
    /// used slots stay short (three quarters made warm inserts markedly slower: README, design notes).
    index: Vec<Slot>,
    /// Keys in the window (entries of `ring` that are not tombstones, and used slots of `index`).
    live: usize,
    capacity: usize,
}

/// Where sequence number `seq` sits in a queue starting at `head`.
fn at(head: u32, seq: u32) -> usize {
    seq.wrapping_sub(head) as usize
}

impl DedupWindow {
    /// Whether [`DedupWindow::prefetch`] does anything on this target (callers skip finding the id otherwise).
    pub(crate) const PREFETCHES: bool = cfg!(target_arch = "x86_64");

    /// A window holding at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        DedupWindow {
            ring: VecDeque::new(),
            head: 0,
            index: Vec::new(),
            live: 0,
            capacity: capacity.clamp(1, u32::MAX as usize / 4),
        }
    }

    /// Records `id`; returns `true` if it was new, `false` if it was already in the window (it is then
    /// refreshed as most recently seen).
    pub fn insert(&mut self, id: &str) -> bool {
        self.insert_key(key(id))
    }

    /// Asks the CPU to fetch, without waiting for them, the index slots the next insert will read: where `id`'s
    /// lookup starts and, once the window is full, the slot of the id it would evict. A driver that knows the next
    /// id while it still has work to do (the next notification of a message, see `Engine::handle_text`) overlaps
    /// those memory reads with that work; the window is unchanged. Only on x86-64 (the one target whose prefetch
    /// intrinsic is stable Rust); elsewhere it does nothing.
    pub fn prefetch(&self, id: &str) {
        if !Self::PREFETCHES || self.index.is_empty() {
            return;
        }
        let mask = self.index.len() - 1;
        prefetch_slot(&self.index[tag(&key(id)) as usize & mask]);
        if self.live >= self.capacity {
            self.prefetch_oldest();
        }
    }

    /// Prefetches the slot of the oldest key (the next to be evicted), unless the queue starts with a tombstone.
    fn prefetch_oldest(&self) {
        if Self::PREFETCHES
            && let Some(oldest) = self.ring.front()
            && *oldest != TOMBSTONE
        {
            prefetch_slot(&self.index[tag(oldest) as usize & (self.index.len() - 1)]);
        }
    }

    /// The slot holding `k`, or the empty slot where it would go.
    fn probe(&self, k: &Key) -> Result<usize, usize> {
        let mask = self.index.len() - 1;
        let t = tag(k);
        let mut i = t as usize & mask;
        loop {
            let slot = self.index[i];
            if slot.tag == 0 {
                return Err(i);
            }
            if slot.tag == t && self.ring[at(self.head, slot.seq)] == *k {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    fn insert_key(&mut self, k: Key) -> bool {
        let seq = self.head.wrapping_add(self.ring.len() as u32);
        if (self.live + 1) * 2 > self.index.len() {
            self.grow();
        }
        match self.probe(&k) {
            Ok(i) => {
                // Seen again: the old sighting becomes a tombstone and the key moves to the back.
                let old = at(self.head, self.index[i].seq);
                self.ring[old] = TOMBSTONE;
                self.index[i].seq = seq;
                self.ring.push_back(k);
                if self.ring.len() > 2 * self.capacity {
                    // Many refreshes left tombstones behind: drop them (amortised over `capacity` refreshes).
                    self.compact();
                }
                false
            }
            Err(i) => {
                self.index[i] = Slot { tag: tag(&k), seq };
                self.ring.push_back(k);
                self.live += 1;
                if self.live > self.capacity {
                    self.evict_oldest();
                    // The next new id evicts the key now oldest: its slot is fetched ahead, while the window is
                    // idle until that id arrives (with many windows in one process, the slot is cold by then).
                    self.prefetch_oldest();
                }
                true
            }
        }
    }

    /// Doubles the index (from 16 slots) and places every slot again; the tags say where, no key is read.
    fn grow(&mut self) {
        let len = (self.index.len() * 2).max(16);
        let old = std::mem::replace(&mut self.index, vec![EMPTY; len]);
        let mask = len - 1;
        for slot in old.into_iter().filter(|s| s.tag != 0) {
            let mut i = slot.tag as usize & mask;
            while self.index[i].tag != 0 {
                i = (i + 1) & mask;
            }
            self.index[i] = slot;
        }
    }

    /// Forgets the least recently seen key.
    fn evict_oldest(&mut self) {
        while let Some(k) = self.ring.pop_front() {
            let seq = self.head;
            self.head = self.head.wrapping_add(1);
            if k == TOMBSTONE {
                continue;
            }
            // The key's slot is the one with its tag and this sequence number (sequence numbers of live keys
            // are distinct), so the key itself need not be compared.
            let mask = self.index.len() - 1;
            let wanted = Slot { tag: tag(&k), seq };
            let mut i = wanted.tag as usize & mask;
            while self.index[i] != wanted {
                debug_assert!(self.index[i].tag != 0, "every key in the queue has a slot");
                i = (i + 1) & mask;
            }
            self.remove_slot(i);
            self.live -= 1;
            return;
        }
    }

    /// Empties slot `i`, moving later slots of the same run back so that every probe still finds its key
    /// (deletion without markers for linear probing, Knuth's Algorithm R).
    fn remove_slot(&mut self, mut i: usize) {
        let mask = self.index.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let slot = self.index[j];
            if slot.tag == 0 {
                break;
            }
            let home = slot.tag as usize & mask;
            // The slot at `j` may move to `i` when `i` lies on its probe path, from `home` to `j`.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(i) & mask {
                self.index[i] = slot;
                i = j;
            }
        }
        self.index[i] = EMPTY;
    }

    /// Drops the tombstones from the queue and renumbers from 0. Slots stay where they are (their place depends
    /// on the tag only); each one's sequence number moves down by the tombstones before it.
    fn compact(&mut self) {
        let head = self.head;
        let mut renumbered = Vec::with_capacity(self.ring.len());
        let mut next = 0u32;
        for k in &self.ring {
            renumbered.push(next);
            next += u32::from(*k != TOMBSTONE);
        }
        for slot in self.index.iter_mut().filter(|s| s.tag != 0) {
            slot.seq = renumbered[at(head, slot.seq)];
        }
        self.ring.retain(|k| *k != TOMBSTONE);
        self.head = 0;
    }

    fn contains_key(&self, k: Key) -> bool {
        !self.index.is_empty() && self.probe(&k).is_ok()
    }

    /// Whether `id` is in the window (does not refresh it).
    pub fn contains(&self, id: &str) -> bool {
        self.contains_key(key(id))
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The entries, least recently seen first, in the form [`DedupWindow::restore`] takes (32 hex digits each).
    pub fn entries_oldest_first(&self) -> Vec<String> {
        self.ring.iter().filter(|k| **k != TOMBSTONE).map(|k| format!("{:032x}", join(*k))).collect()
    }

    /// Re-inserts saved entries, oldest first, so the newest stay when the window is smaller than the list.
    /// Entries are hashes as [`DedupWindow::entries_oldest_first`] writes them; anything else is taken as a
    /// notification id.
    pub fn restore<I: IntoIterator<Item = S>, S: AsRef<str>>(&mut self, entries: I) {
        for entry in entries {
            let entry = entry.as_ref();
            let k = if entry.len() == 32 && entry.bytes().all(|b| b.is_ascii_hexdigit()) {
                u128::from_str_radix(entry, 16).map(split).unwrap_or_else(|_| key(entry))
            } else {
                key(entry)
            };
            self.insert_key(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_sighting_is_a_duplicate() {
        let mut w = DedupWindow::new(4);
        assert!(w.insert("a"));
        assert!(!w.insert("a"));
        assert!(w.contains("a"));
        assert!(!w.contains("b"));
    }

    #[test]
    fn window_is_bounded_and_forgets_least_recently_seen() {
        let mut w = DedupWindow::new(3);
        for id in ["a", "b", "c"] {
            w.insert(id);
        }
        assert!(!w.insert("a")); // refreshes a
        assert!(w.insert("d")); // evicts b
        assert_eq!(w.len(), 3);
        assert!(!w.contains("b"));
        let mut copy = DedupWindow::new(3);
        copy.restore(w.entries_oldest_first());
        assert_eq!(copy.entries_oldest_first(), w.entries_oldest_first(), "c, a, d in that order");
        assert!(copy.contains("a") && copy.contains("c") && copy.contains("d"));
    }

    #[test]
    fn prefetching_changes_nothing() {
        let mut w = DedupWindow::new(3);
        w.prefetch("a"); // empty: no index yet
        for id in ["a", "b", "c", "b"] {
            w.insert(id);
            w.prefetch("d");
        }
        w.prefetch("a"); // full, with a tombstone in the queue
        assert_eq!(w.len(), 3);
        assert!(w.insert("d") && !w.contains("a") && w.contains("b") && w.contains("c"));
    }

    #[test]
    fn restore_keeps_the_newest_and_accepts_plain_ids() {
        let mut w = DedupWindow::new(2);
        w.restore(["x", "y", "z"]);
        assert!(!w.contains("x") && w.contains("y") && w.contains("z"));
    }

    #[test]
    fn refreshing_one_id_over_and_over_keeps_the_others_and_bounded_memory() {
        let mut w = DedupWindow::new(3);
        w.insert("a");
        w.insert("b");
        for _ in 0..1000 {
            assert!(!w.insert("b"));
        }
        assert!(w.ring.len() <= 6, "tombstones are compacted away");
        assert!(w.insert("c"));
        assert!(w.insert("d"), "evicts a, the least recently seen");
        assert!(!w.contains("a") && w.contains("b") && w.contains("c") && w.contains("d"));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut w = DedupWindow::new(3);
        w.head = u32::MAX - 4;
        for i in 0..20 {
            assert!(w.insert(&format!("n{i}")));
            assert!(!w.insert(&format!("n{i}")), "refresh across the wrap");
            assert_eq!(w.len(), (i + 1).min(3));
        }
        assert!(w.contains("n17") && w.contains("n18") && w.contains("n19") && !w.contains("n16"));
        let mut copy = DedupWindow::new(3);
        copy.restore(w.entries_oldest_first());
        assert_eq!(copy.entries_oldest_first(), w.entries_oldest_first());
    }

    #[test]
    fn a_full_window_uses_a_fraction_of_the_memory_of_a_key_to_stamp_map() {
        let mut w = DedupWindow::new(10_000);
        for i in 0..25_000 {
            w.insert(&format!("01JDZ3K5W8Q2M4N6P8{i:08}"));
        }
        assert_eq!(w.len(), 10_000);
        let bytes = w.ring.capacity() * size_of::<Key>() + w.index.capacity() * size_of::<Slot>();
        assert!(bytes < 600_000, "{bytes} bytes");
    }

    proptest::proptest! {
        /// The window answers exactly like a plain least-recently-seen list of the same capacity.
        #[test]
        fn behaves_like_a_least_recently_seen_list(
            capacity in 1usize..8,
            ops in proptest::collection::vec(0u8..12, 0..300),
        ) {
            let mut w = DedupWindow::new(capacity);
            let mut model: Vec<String> = Vec::new(); // oldest first
            for op in ops {
                let id = format!("n{op}");
                let was_known = model.contains(&id);
                model.retain(|m| *m != id);
                model.push(id.clone());
                if model.len() > capacity {
                    model.remove(0);
                }
                proptest::prop_assert_eq!(w.insert(&id), !was_known);
                proptest::prop_assert_eq!(w.len(), model.len());
            }
            let mut copy = DedupWindow::new(capacity);
            copy.restore(model.iter());
            proptest::prop_assert_eq!(copy.entries_oldest_first(), w.entries_oldest_first());
            for id in &model {
                proptest::prop_assert!(w.contains(id));
            }
        }

        /// The same with keys made to share index tags (as two real ids do once in 2³² pairs): long probe runs
        /// that wrap past the end of the index, a tag match that is not the key, and removals that move slots
        /// back across the wrap.
        #[test]
        fn colliding_tags_answer_like_a_least_recently_seen_list(
            capacity in 1usize..12,
            ops in proptest::collection::vec(0u64..40, 0..400),
        ) {
            // Tags 13, 14 and 15 (the last slots of a 16-slot index) and 31 (the last of 32); distinct keys.
            let crafted = |op: u64| -> Key { [op + 1, [13u64, 14, 15, 31][(op % 4) as usize] | (op << 32)] };
            let mut w = DedupWindow::new(capacity);
            let mut model: Vec<u64> = Vec::new(); // oldest first
            for op in ops {
                let was_known = model.contains(&op);
                model.retain(|m| *m != op);
                model.push(op);
                if model.len() > capacity {
                    model.remove(0);
                }
                proptest::prop_assert_eq!(w.insert_key(crafted(op)), !was_known);
                proptest::prop_assert_eq!(w.len(), model.len());
                for o in 0..40 {
                    proptest::prop_assert_eq!(w.contains_key(crafted(o)), model.contains(&o), "key {}", o);
                }
            }
            proptest::prop_assert_eq!(w.index.iter().filter(|s| s.tag != 0).count(), model.len());
        }
    }
}
