//! Presence: which devices of which users are connected right now, and the registry of all connections.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tidings_core::protocol::ErrorCode;
use tokio::sync::Notify;

use crate::outbox::ConnHandle;

/// One connected device of a user (an element of `devices` in `GET /v1/presence`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DevicePresence {
    /// The device id from `auth`.
    pub device: String,
    /// The connection's session id.
    pub session: String,
    /// When the connection authenticated (ms since the Unix epoch).
    pub connected_at: u64,
}

/// A user and their connected devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserPresence {
    /// The user id.
    pub user: String,
    /// Connected devices, oldest connection first; empty when the user is offline.
    pub devices: Vec<DevicePresence>,
}

struct Entry {
    device: Arc<str>,
    session: Arc<str>,
    connected_at: u64,
    conn: Arc<ConnHandle>,
}

/// Authenticated connections by user.
#[derive(Default)]
pub(crate) struct Presence {
    users: Mutex<HashMap<Arc<str>, Vec<Entry>>>,
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<Entry>>> {
        self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a newly authenticated connection. Returns the connection it replaces (same user and device).
    pub(crate) fn register(
        &self,
        user: &Arc<str>,
        device: &Arc<str>,
        session: &Arc<str>,
        connected_at: u64,
        conn: &Arc<ConnHandle>,
    ) -> Option<Arc<ConnHandle>> {
        let mut users = self.lock();
        let entries = users.entry(user.clone()).or_default();
        let replaced = entries.iter().position(|e| e.device == *device).map(|i| entries.remove(i).conn);
        entries.push(Entry { device: device.clone(), session: session.clone(), connected_at, conn: conn.clone() });
        replaced
    }

    /// Forgets a connection, unless its device has been taken over by a newer session already.
    pub(crate) fn unregister(&self, user: &str, session: &str) {
        let mut users = self.lock();
        if let Some(entries) = users.get_mut(user) {
            entries.retain(|e| &*e.session != session);
            if entries.is_empty() {
                users.remove(user);
            }
        }
    }

    fn user_presence(user: &str, entries: &[Entry]) -> UserPresence {
        UserPresence {
            user: user.to_owned(),
            devices: entries
                .iter()
                .map(|e| DevicePresence {
                    device: e.device.to_string(),
                    session: e.session.to_string(),
                    connected_at: e.connected_at,
                })
                .collect(),
        }
    }

    /// Everyone online, sorted by user id.
    pub(crate) fn all(&self) -> Vec<UserPresence> {
        let mut all: Vec<UserPresence> =
            self.lock().iter().map(|(user, entries)| Self::user_presence(user, entries)).collect();
        all.sort_by(|a, b| a.user.cmp(&b.user));
        all
    }

    /// One user's devices (empty when offline).
    pub(crate) fn user(&self, user: &str) -> UserPresence {
        match self.lock().get(user) {
            Some(entries) => Self::user_presence(user, entries),
            None => UserPresence { user: user.to_owned(), devices: Vec::new() },
        }
    }

    /// The connections of `user`.
    pub(crate) fn connections_of(&self, user: &str) -> Vec<Arc<ConnHandle>> {
        self.lock().get(user).map(|entries| entries.iter().map(|e| e.conn.clone()).collect()).unwrap_or_default()
    }
}

/// Every open connection, authenticated or not, so that shutdown and operator actions reach them all.
#[derive(Default)]
pub(crate) struct Connections {
    open: Mutex<HashMap<u64, Arc<ConnHandle>>>,
    emptied: Notify,
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnHandle>>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a connection; returns how many are open now.
    pub(crate) fn insert(&self, conn: Arc<ConnHandle>) -> usize {
        let mut open = self.lock();
        open.insert(conn.id(), conn);
        open.len()
    }

    pub(crate) fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        if open.is_empty() {
            open.shrink_to_fit();
            self.emptied.notify_waiters();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Asks every connection to close with `code`; returns how many were asked.
    pub(crate) fn close_all(&self, code: ErrorCode, message: &str) -> usize {
        let open: Vec<Arc<ConnHandle>> = self.lock().values().cloned().collect();
        open.iter().filter(|conn| conn.close(code, message)).count()
    }

    /// Completes once no connection is open.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn the_same_device_replaces_its_older_session_and_the_old_one_cannot_unregister_the_new() {
        let presence = Presence::default();
        let (c1, c2, c3) =
            (Arc::new(ConnHandle::new(1, 1)), Arc::new(ConnHandle::new(2, 1)), Arc::new(ConnHandle::new(3, 1)));
        assert!(presence.register(&arc("alice"), &arc("phone"), &arc("s-1"), 10, &c1).is_none());
        assert!(presence.register(&arc("alice"), &arc("laptop"), &arc("s-2"), 20, &c2).is_none());
        let replaced = presence.register(&arc("alice"), &arc("phone"), &arc("s-3"), 30, &c3).unwrap();
        assert_eq!(replaced.id(), 1);
        presence.unregister("alice", "s-1");
        let alice = presence.user("alice");
        let sessions: Vec<&str> = alice.devices.iter().map(|d| d.session.as_str()).collect();
        assert_eq!(sessions, ["s-2", "s-3"]);
        presence.unregister("alice", "s-2");
        presence.unregister("alice", "s-3");
        assert!(presence.user("alice").devices.is_empty());
        assert!(presence.all().is_empty());
    }

    #[tokio::test]
    async fn wait_empty_returns_once_the_last_connection_leaves() {
        let connections = Arc::new(Connections::default());
        connections.insert(Arc::new(ConnHandle::new(7, 1)));
        let waiter = tokio::spawn({
            let connections = connections.clone();
            async move { connections.wait_empty().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        connections.remove(7);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
