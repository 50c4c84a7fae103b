//! Persistence of the engine's [`Snapshot`] (cursors, recently seen ids, open batches, device id).
//!
//! The engine never touches storage: it emits [`crate::Action::Persist`] and the driver hands the snapshot to a
//! [`Store`]. Stores shared between processes (an iOS app and its Notification Service Extension through an
//! App Group container) must merge on save rather than overwrite: [`Snapshot::merge`] does the merging.

use std::sync::Mutex;

use crate::engine::Snapshot;

/// Why a store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The stored data is not a snapshot this version understands.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
}

/// Where snapshots live.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The saved snapshot, if any.
    fn load(&self) -> Result<Option<Snapshot>, StoreError>;
    /// Saves a snapshot, merging with whatever another process saved meanwhile.
    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
}

/// A store in memory (tests, or apps that want no persistence across restarts).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Option<Snapshot>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.inner.lock().expect("poisoned").clone())
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut guard = self.inner.lock().expect("poisoned");
        let mut next = snapshot.clone();
        if let Some(prev) = guard.as_ref() {
            next.merge(prev);
        }
        *guard = Some(next);
        Ok(())
    }
}

/// Encodes a snapshot for storage.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    serde_json::to_vec(snapshot).expect("snapshots always serialize")
}

/// Decodes a stored snapshot.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, StoreError> {
    let snapshot: Snapshot = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if snapshot.version != 1 {
        return Err(StoreError::Corrupt(format!("unsupported snapshot version {}", snapshot.version)));
    }
    Ok(snapshot)
}
