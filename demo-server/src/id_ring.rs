//! A bounded table of recent notification ids in arrival order, looked up by id — the shape of the node's recent
//! ids and of the in-memory ack receipts.
//!
//! Entries sit in a queue (oldest first, each with a sequence number) and a hash index holds only their sequence
//! numbers, so an id is stored once. Lookups take a hint, the sequence number the previous lookup found: a
//! client acks a stream's notifications in the order they were published, which is the order they entered the
//! table, so the next id is usually the next entry, and it is found by one comparison with no hashing and no
//! probe of the index (cold when thousands of clients each ack a broadcast: S6 in bench/README.md).

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;

pub(crate) struct IdRing<K, V> {
    entries: VecDeque<(K, V)>,
    /// The sequence number of `entries[0]`.
    head: u64,
    /// Sequence numbers of `entries`, by the hash of their key.
    index: HashTable<u64>,
    hasher: foldhash::fast::RandomState,
}

impl<K, V> Default for IdRing<K, V> {
    fn default() -> Self {
        IdRing { entries: VecDeque::new(), head: 0, index: HashTable::new(), hasher: Default::default() }
    }
}

impl<K: Borrow<str>, V> IdRing<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The position in `entries` of sequence number `seq`.
    fn position(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.head)?).ok()
    }

    fn at(&self, seq: u64) -> Option<&(K, V)> {
        self.entries.get(self.position(seq)?)
    }

    /// The sequence number of `id`, if it is in the table. `hint`: the sequence number of the id looked up
    /// before it, if any (the entry after it is compared first).
    pub(crate) fn find(&self, id: &str, hint: Option<u64>) -> Option<u64> {
        if let Some(next) = hint.map(|h| h.wrapping_add(1))
            && self.at(next).is_some_and(|(k, _)| k.borrow() == id)
        {
            return Some(next);
        }
        let (entries, head) = (&self.entries, self.head);
        self.index.find(self.hash(id), |&s| entries[(s - head) as usize].0.borrow() == id).copied()
    }

    /// As [`IdRing::find`], and moves `hint` to the entry found (left as it was when `id` is not in the table), for
    /// a run of lookups in table order.
    pub(crate) fn find_next(&self, id: &str, hint: &mut Option<u64>) -> Option<u64> {
        let found = self.find(id, *hint);
        *hint = found.or(*hint);
        found
    }

    /// The value at `seq` (a sequence number [`IdRing::find`] or [`IdRing::push_back`] returned, still in the
    /// table).
    pub(crate) fn get(&self, seq: u64) -> Option<&V> {
        self.at(seq).map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut V> {
        let i = self.position(seq)?;
        self.entries.get_mut(i).map(|(_, v)| v)
    }

    /// The value of `id`, if it is in the table (a one-off lookup, without a hint).
    pub(crate) fn value(&self, id: &str) -> Option<&V> {
        self.get(self.find(id, None)?)
    }

    /// The newest entry's value.
    pub(crate) fn back(&self) -> Option<&V> {
        self.entries.back().map(|(_, v)| v)
    }

    /// Adds `id`, which must not be in the table, as the newest entry; returns its sequence number.
    pub(crate) fn push_back(&mut self, id: K, value: V) -> u64 {
        debug_assert!(self.find(id.borrow(), None).is_none(), "ids are added once");
        let seq = self.head + self.entries.len() as u64;
        let hash = self.hash(id.borrow());
        let (entries, head, hasher) = (&self.entries, self.head, &self.hasher);
        self.index.insert_unique(hash, seq, |&s| hasher.hash_one(entries[(s - head) as usize].0.borrow()));
        self.entries.push_back((id, value));
        seq
    }

    /// Removes and returns the oldest entry.
    pub(crate) fn pop_front(&mut self) -> Option<(K, V)> {
        let hash = self.hash(self.entries.front()?.0.borrow());
        let head = self.head;
        if let Ok(slot) = self.index.find_entry(hash, |&s| s == head) {
            slot.remove();
        }
        self.head += 1;
        self.entries.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_with_and_without_hints_and_forgets_the_oldest_first() {
        let mut ring: IdRing<String, u32> = IdRing::default();
        let seqs: Vec<u64> = (0..100).map(|i| ring.push_back(format!("id-{i}"), i)).collect();
        assert_eq!(seqs, (0..100).collect::<Vec<_>>());
        for i in 0..100u64 {
            let id = format!("id-{i}");
            // No hint, the right hint, and hints pointing elsewhere (or past the end) all find the same entry.
            for hint in [None, i.checked_sub(1), Some(57), Some(1_000), Some(u64::MAX)] {
                assert_eq!(ring.find(&id, hint), Some(i), "{id} with hint {hint:?}");
            }
            assert_eq!(ring.get(i), Some(&(i as u32)));
        }
        let mut hint = None;
        for (id, expect) in [("id-3", Some(3)), ("id-4", Some(4)), ("gone", None), ("id-5", Some(5))] {
            assert_eq!(ring.find_next(id, &mut hint), expect, "{id}");
            assert_eq!(hint, Some(expect.unwrap_or(4)), "the hint follows what was found, {id}");
        }
        assert_eq!(ring.find("id-100", Some(99)), None);
        assert_eq!(ring.find("other", None), None);
        *ring.get_mut(5).unwrap() = 500;
        assert_eq!(ring.get(5), Some(&500));
        assert_eq!((ring.value("id-5"), ring.value("other")), (Some(&500), None));
        for i in 0..30 {
            assert_eq!(ring.pop_front(), Some((format!("id-{i}"), if i == 5 { 500 } else { i })));
        }
        assert_eq!(ring.len(), 70);
        assert_eq!(ring.find("id-29", None), None, "forgotten");
        assert_eq!(ring.find("id-30", Some(28)), Some(30), "a stale hint falls back to the index");
        assert_eq!(ring.get(29), None);
        assert!(ring.get_mut(29).is_none());
        // Re-adding a forgotten id gives it a new place at the back.
        assert_eq!(ring.push_back("id-0".to_owned(), 7), 100);
        assert_eq!((ring.find("id-0", Some(99)), ring.back()), (Some(100), Some(&7)));
        while ring.pop_front().is_some() {}
        assert_eq!((ring.len(), ring.find("id-0", None), ring.back()), (0, None, None));
    }
}
