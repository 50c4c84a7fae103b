//! The one dedup window every delivery path goes through: a bounded LRU set of notification ids.

use lru::LruCache;

/// Bounded set of recently seen notification ids. When full, the id seen least recently is forgotten.
///
/// The map grows with use rather than being allocated at full capacity up front: a client that sees a few
/// notifications a day should not hold room for ten thousand ids.
#[derive(Debug)]
pub struct DedupWindow {
    seen: LruCache<Box<str>, ()>,
    capacity: usize,
}

impl DedupWindow {
    /// A window holding at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        DedupWindow { seen: LruCache::unbounded(), capacity: capacity.max(1) }
    }

    /// Records `id`; returns `true` if it was new, `false` if it was already in the window (it is then
    /// refreshed as most recently seen).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.seen.get(id).is_some() {
            return false;
        }
        if self.seen.len() >= self.capacity {
            self.seen.pop_lru();
        }
        self.seen.put(id.into(), ());
        true
    }

    /// Whether `id` is in the window (does not refresh it).
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The ids, least recently seen first (the order [`DedupWindow::restore`] expects).
    pub fn ids_oldest_first(&self) -> Vec<String> {
        self.seen.iter().rev().map(|(id, ())| id.to_string()).collect()
    }

    /// Re-inserts saved ids, oldest first, so the newest stay when the window is smaller than the list.
    pub fn restore<I: IntoIterator<Item = S>, S: AsRef<str>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id.as_ref());
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
        assert_eq!(w.ids_oldest_first(), ["c", "a", "d"]);
    }

    #[test]
    fn restore_keeps_the_newest_when_the_list_is_longer_than_the_window() {
        let mut w = DedupWindow::new(2);
        w.restore(["x", "y", "z"]);
        assert_eq!(w.ids_oldest_first(), ["y", "z"]);
    }
}
