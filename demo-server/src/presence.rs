//! Presence: which devices of which users are connected right now (`GET /v1/presence`). Kept apart from the local
//! connection registry (`registry`): presence is what a deployment of several processes shares, while
//! connections belong to the process that holds their sockets.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

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

    /// Records a newly authenticated session; a session of the same user and device is replaced.
    pub(crate) fn register(&self, user: &Arc<str>, device: &Arc<str>, session: &Arc<str>, connected_at: u64) {
        let mut users = self.lock();
        let entries = users.entry(user.clone()).or_default();
        entries.retain(|e| e.device != *device);
        entries.push(Entry { device: device.clone(), session: session.clone(), connected_at });
    }

    /// Forgets a connection, unless its device has been taken over by a newer session already. Returns whether
    /// the user has no session left.
    pub(crate) fn unregister(&self, user: &str, session: &str) -> bool {
        let mut users = self.lock();
        if let Some(entries) = users.get_mut(user) {
            entries.retain(|e| &*e.session != session);
            if entries.is_empty() {
                users.remove(user);
                return true;
            }
            return false;
        }
        true
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
        presence.register(&arc("alice"), &arc("phone"), &arc("s-1"), 10);
        presence.register(&arc("alice"), &arc("laptop"), &arc("s-2"), 20);
        presence.register(&arc("alice"), &arc("phone"), &arc("s-3"), 30);
        presence.unregister("alice", "s-1");
        let alice = presence.user("alice");
        let sessions: Vec<&str> = alice.devices.iter().map(|d| d.session.as_str()).collect();
        assert_eq!(sessions, ["s-2", "s-3"]);
        presence.unregister("alice", "s-2");
        presence.unregister("alice", "s-3");
        assert!(presence.user("alice").devices.is_empty());
        assert!(presence.all().is_empty());
    }
}
