//! The one dedup window every delivery path goes through: a bounded LRU set (the `lru` crate) of notification
//! ids.
//!
//! Ids are kept as their 128-bit xxh3 hash: no allocation per entry, 16 bytes instead of a boxed string, and a
//! chance of two different ids colliding in a 10 000-entry window of about 10⁻³⁴ per notification. The hash is
//! fixed (not seeded per process), so two processes sharing a store — an app and its push extension — agree.

use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroUsize;

use lru::LruCache;
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

/// Bounded set of recently seen notification ids. When full, the id seen least recently is forgotten (its
/// entry is reused for the new id: no allocation once the window is full). The map grows with use rather than
/// being allocated at full capacity up front.
#[derive(Debug)]
pub struct DedupWindow {
    seen: LruCache<u128, (), BuildHasherDefault<FoldHasher>>,
    capacity: NonZeroUsize,
}

fn key(id: &str) -> u128 {
    xxh3_128(id.as_bytes())
}

impl DedupWindow {
    /// A window holding at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        DedupWindow {
            seen: LruCache::unbounded_with_hasher(BuildHasherDefault::default()),
            capacity: NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
        }
    }

    /// Records `id`; returns `true` if it was new, `false` if it was already in the window (it is then
    /// refreshed as most recently seen).
    pub fn insert(&mut self, id: &str) -> bool {
        self.insert_key(key(id))
    }

    fn insert_key(&mut self, k: u128) -> bool {
        if self.seen.len() == self.capacity.get() && self.seen.cap() != self.capacity {
            // Full for the first time: from now on the cache itself evicts, reusing the evicted entry.
            self.seen.resize(self.capacity);
        }
        let mut new = false;
        self.seen.get_or_insert(k, || new = true);
        new
    }

    /// Whether `id` is in the window (does not refresh it).
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(&key(id))
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
        self.seen.iter().rev().map(|(k, ())| format!("{k:032x}")).collect()
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
}
