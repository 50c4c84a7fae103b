//! A [`Store`] in one JSON file, safe to share between processes.
//!
//! Saving takes an exclusive lock on `<file>.lock`, reads what is there, merges (see
//! [`Snapshot::merge`]), writes a temporary file and renames it over the old one, so a crash never leaves a
//! half-written file and two processes (an iOS app and its Notification Service Extension in one App Group
//! container, an Android app and its FCM service) never lose each other's seen ids. No `fsync`: the file
//! survives the process being killed, which is what apps face; it may not survive power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::engine::Snapshot;
use crate::store::{Store, StoreError, decode_snapshot, encode_snapshot};

/// A store in a JSON file.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    max_seen: usize,
}

impl FileStore {
    /// A store at `path` (the directory must exist) keeping at most 10 000 seen ids.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into(), max_seen: 10_000 }
    }

    /// Keeps at most `max_seen` ids (match the engine's `dedup_capacity`).
    pub fn with_max_seen(mut self, max_seen: usize) -> Self {
        self.max_seen = max_seen.max(1);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<File, StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(lock_path)?;
        file.lock()?; // std advisory lock (flock on Unix), released when the handle drops
        Ok(file)
    }

    fn read(&self) -> Result<Option<Snapshot>, StoreError> {
        match fs::read(&self.path) {
            Ok(bytes) if bytes.is_empty() => Ok(None),
            Ok(bytes) => match decode_snapshot(&bytes) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    // Keep the bad file for inspection instead of overwriting it.
                    let mut aside = self.path.clone().into_os_string();
                    aside.push(".corrupt");
                    let _ = fs::rename(&self.path, &aside);
                    Err(StoreError::Corrupt(format!("{e} (moved to {})", Path::new(&aside).display())))
                }
            },
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let _lock = self.lock()?;
        self.read()
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let lock = self.lock()?;
        let mut next = snapshot.clone();
        match self.read() {
            Ok(Some(prev)) => next.merge(&prev),
            Ok(None) => {}
            Err(StoreError::Corrupt(_)) => {} // moved aside; ours replaces it
            Err(e) => return Err(e),
        }
        if next.seen.len() > self.max_seen {
            let excess = next.seen.len() - self.max_seen;
            next.seen.drain(..excess);
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&encode_snapshot(&next))?;
        }
        fs::rename(&tmp, &self.path)?;
        drop(lock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Cursor, SnapshotScope};

    #[test]
    fn saves_load_back_and_merge_instead_of_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        assert_eq!(store.load().unwrap(), None);
        let mut app = Snapshot { version: 1, ..Default::default() };
        app.cursors.insert("user:a".into(), Cursor { epoch: "e".into(), offset: 7 });
        app.seen = vec!["a1".into(), "a2".into()];
        store.save(&app).unwrap();
        // Another process (the push extension) saves only the id it showed.
        let ext = Snapshot { version: 1, seen: vec!["p1".into()], scope: SnapshotScope::SeenIds, ..Default::default() };
        FileStore::new(dir.path().join("state.json")).save(&ext).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.cursors["user:a"].offset, 7, "the extension did not erase the app's cursor");
        assert_eq!(loaded.seen, ["a1", "a2", "p1"]);
        assert_eq!(loaded.scope, SnapshotScope::Full);
        // The app saves again, without the cursor (it unsubscribed): its stream state replaces the stored one,
        // the extension's id stays.
        let mut later = app.clone();
        later.cursors = Default::default();
        later.seen.push("a3".into());
        store.save(&later).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert!(loaded.cursors.is_empty(), "an unsubscribed stream's cursor does not come back");
        assert_eq!(loaded.seen, ["p1", "a1", "a2", "a3"]);
    }

    #[test]
    fn bounded_seen_list_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("s.json")).with_max_seen(3);
        let s = Snapshot { version: 1, seen: (0..10).map(|i| format!("n{i}")).collect(), ..Default::default() };
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap().unwrap().seen, ["n7", "n8", "n9"]);
    }

    #[test]
    fn a_corrupt_file_is_reported_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, b"{ not json").unwrap();
        let store = FileStore::new(&path);
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert_eq!(fs::read(dir.path().join("s.json.corrupt")).unwrap(), b"{ not json");
        store.save(&Snapshot { version: 1, ..Default::default() }).unwrap();
        assert!(store.load().unwrap().is_some());
    }
}
