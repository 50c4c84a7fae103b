//! The one dedup window every delivery path goes through: a bounded set of recently seen notification ids,
//! least recently seen forgotten first.
//!
//! Ids are kept as their 128-bit xxh3 hash: no allocation per entry, 16 bytes instead of a boxed string, and a
//! chance of two different ids colliding in a 10 000-entry window of about 10⁻³⁴ per notification. The hash is
//! fixed (not seeded per process), so two processes sharing a store — an app and its push extension — agree.
//!
//! Layout: a flat hash map from key to the stamp of its latest sighting, and a queue of sightings in order.
//! A refreshed key leaves a stale sighting behind in the queue (its stamp no longer matches the map), which
//! eviction skips. Both live in contiguous memory: inserting, refreshing and evicting allocate nothing once the
//! window is full, and growing rehashes inline keys. (The `lru` crate, used before, allocated a node per entry
//! and chased pointers to rehash while the window grew: 17 % of an S2 client's CPU, see BENCHMARKS.md.)

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_128;

/// The keys are already xxh3 hashes: the map hashes them by folding their halves instead of running SipHash
/// over them again.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u128` keys; kept correct for any other input.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Bounded set of recently seen notification ids. When full, the id seen least recently is forgotten. Memory
/// grows with use rather than being allocated at full capacity up front.
#[derive(Debug)]
pub struct DedupWindow {
    /// Key → stamp of its latest sighting.
    seen: HashMap<u128, u64, BuildHasherDefault<FoldHasher>>,
    /// Sightings, oldest first. A sighting whose stamp differs from `seen` is stale (the key was seen again).
    order: VecDeque<Sighting>,
    /// The stamp of the next sighting.
    next: u64,
    capacity: usize,
}

/// One sighting of a key. The key is stored as two words so the entry is 24 bytes, not 32 (`u128` aligns to 16).
#[derive(Clone, Copy, Debug)]
struct Sighting {
    key: [u64; 2],
    stamp: u64,
}

impl Sighting {
    fn key(&self) -> u128 {
        (u128::from(self.key[0]) << 64) | u128::from(self.key[1])
    }
}

fn key(id: &str) -> u128 {
    xxh3_128(id.as_bytes())
}

impl DedupWindow {
    /// A window holding at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        DedupWindow { seen: HashMap::default(), order: VecDeque::new(), next: 0, capacity: capacity.max(1) }
    }

    /// Records `id`; returns `true` if it was new, `false` if it was already in the window (it is then
    /// refreshed as most recently seen).
    pub fn insert(&mut self, id: &str) -> bool {
        self.insert_key(key(id))
    }

    fn insert_key(&mut self, k: u128) -> bool {
        let stamp = self.next;
        self.next += 1;
        let new = self.seen.insert(k, stamp).is_none();
        self.order.push_back(Sighting { key: [(k >> 64) as u64, k as u64], stamp });
        if new && self.seen.len() > self.capacity {
            self.evict_oldest();
        }
        if self.order.len() > 2 * self.capacity {
            // Many refreshes left stale sightings behind: drop them (amortised over `capacity` refreshes).
            let seen = &self.seen;
            self.order.retain(|s| seen.get(&s.key()) == Some(&s.stamp));
        }
        new
    }

    /// Forgets the least recently seen key.
    fn evict_oldest(&mut self) {
        while let Some(s) = self.order.pop_front() {
            let k = s.key();
            if self.seen.get(&k) == Some(&s.stamp) {
                self.seen.remove(&k);
                return;
            }
        }
    }

    /// Whether `id` is in the window (does not refresh it).
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains_key(&key(id))
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The entries, least recently seen first, in the form [`DedupWindow::restore`] takes (32 hex digits each).
    pub fn entries_oldest_first(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|s| self.seen.get(&s.key()) == Some(&s.stamp))
            .map(|s| format!("{:032x}", s.key()))
            .collect()
    }

    /// Re-inserts saved entries, oldest first, so the newest stay when the window is smaller than the list.
    /// Entries are hashes as [`DedupWindow::entries_oldest_first`] writes them; anything else is taken as a
    /// notification id.
    pub fn restore<I: IntoIterator<Item = S>, S: AsRef<str>>(&mut self, entries: I) {
        for entry in entries {
            let entry = entry.as_ref();
            let k = if entry.len() == 32 && entry.bytes().all(|b| b.is_ascii_hexdigit()) {
                u128::from_str_radix(entry, 16).unwrap_or_else(|_| key(entry))
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
        assert!(w.order.len() <= 6, "stale sightings are compacted away");
        assert!(w.insert("c"));
        assert!(w.insert("d"), "evicts a, the least recently seen");
        assert!(!w.contains("a") && w.contains("b") && w.contains("c") && w.contains("d"));
        assert_eq!(w.len(), 3);
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
    }
}
