//! [`StreamMap`]: a map keyed by stream name, kept as one sorted `Vec`.
//!
//! An engine holds a few streams (at most [`MAX_STREAMS_PER_CONNECTION`](crate::protocol::MAX_STREAMS_PER_CONNECTION)),
//! so binary search over a sorted vector is as fast as a B-tree and much smaller in code (it matters for the
//! browser module). Iteration is in key order (byte-wise, like `BTreeMap<String, _>`), so everything the engine
//! derives from it stays deterministic.

use std::fmt;
use std::ops::Index;

/// Values per stream name, iterated in name order.
#[derive(Clone, PartialEq, Eq)]
pub struct StreamMap<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for StreamMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> StreamMap<V> {
    /// An empty map.
    pub const fn new() -> Self {
        StreamMap { entries: Vec::new() }
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        // A client holds a few streams: comparing for equality (lengths first) finds a key without ordering
        // comparisons; the binary search gives a missing key's place.
        if self.entries.len() <= 4
            && let Some(i) = self.entries.iter().position(|(k, _)| k == key)
        {
            return Ok(i);
        }
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value of `key`, to change it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets the value of `key`; returns the previous one.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`, inserting `default` first if there is none.
    pub fn get_or_insert(&mut self, key: &str, default: V) -> &mut V {
        let i = match self.find(key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key.to_string(), default));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }
}

impl<'a, V> IntoIterator for &'a StreamMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, V)>, fn(&'a (String, V)) -> (&'a String, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<V> Index<&str> for StreamMap<V> {
    type Output = V;

    /// The value of `key`; panics if there is none (like `BTreeMap`).
    fn index(&self, key: &str) -> &V {
        self.get(key).expect("no entry for this stream")
    }
}

impl<V> FromIterator<(String, V)> for StreamMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut map = StreamMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<V: fmt::Debug> fmt::Debug for StreamMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn same_as_btreemap() {
        let mut ours = StreamMap::new();
        let mut theirs = BTreeMap::new();
        let keys = ["user:b", "topic:z", "topic:a", "user:a", "topic:é", "topic:Z", "topic:a", "user:b"];
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(ours.insert(k.to_string(), i), theirs.insert(k.to_string(), i));
            assert!(ours.iter().eq(theirs.iter()));
            // Lookups at every size: up to four entries by equality, beyond by binary search.
            for k in keys.iter().chain(&["nope", "user:", "user:bb", ""]) {
                assert_eq!(ours.get(k), theirs.get(*k), "{k} among {}", ours.len());
                assert_eq!(ours.contains_key(k), theirs.contains_key(*k));
            }
        }
        for k in ["topic:a", "nope", "user:b", "topic:a"] {
            assert_eq!(ours.remove(k), theirs.remove(k));
            assert!(ours.iter().eq(theirs.iter()));
        }
        *ours.get_or_insert("topic:m", 7) += 1;
        *theirs.entry("topic:m".to_string()).or_insert(7) += 1;
        *ours.get_or_insert("topic:m", 0) += 1;
        *theirs.entry("topic:m".to_string()).or_insert(0) += 1;
        assert!(ours.iter().eq(theirs.iter()));
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(ours["topic:m"], theirs["topic:m"]);
        assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
    }
}
