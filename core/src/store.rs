//! Persistence of the engine's [`Snapshot`] (cursors, recently seen ids, open batches, device id).
//!
//! The engine never touches storage: it emits [`crate::Action::Persist`] and the driver hands the snapshot to a
//! [`Store`]. Stores shared between processes (an iOS app and its Notification Service Extension through an
//! App Group container) must merge on save rather than overwrite: [`Snapshot::merge`] does the merging.

use std::sync::Mutex;

use crate::engine::{Snapshot, SnapshotScope};

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

/// Encodes a snapshot for storage (JSON: `{"version":1,"device_id":…,"cursors":{stream:{"epoch":…,"offset":…}},
/// "seen":[…],"pending":[{"group":…,"first":{…},"last":{…},"ids":[…]}],"push":{"platform":…,"token":…}}`, and
/// `"scope":"seen_ids"` for a snapshot that only carries seen ids).
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    use crate::protocol::{push_json_str, write_notification};
    let mut out = String::with_capacity(64 + snapshot.seen.len() * 32);
    out.push_str("{\"version\":");
    out.push_str(&snapshot.version.to_string());
    if let Some(d) = &snapshot.device_id {
        out.push_str(",\"device_id\":");
        push_json_str(&mut out, d);
    }
    out.push_str(",\"cursors\":{");
    for (i, (stream, c)) in snapshot.cursors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, stream);
        out.push_str(":{\"epoch\":");
        push_json_str(&mut out, &c.epoch);
        out.push_str(&format!(",\"offset\":{}}}", c.offset));
    }
    out.push_str("},\"seen\":[");
    for (i, id) in snapshot.seen.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, id);
    }
    out.push_str("],\"pending\":[");
    for (i, b) in snapshot.pending.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"group\":");
        push_json_str(&mut out, &b.group);
        out.push_str(",\"first\":");
        write_notification(&mut out, &b.first);
        if let Some(last) = &b.last {
            out.push_str(",\"last\":");
            write_notification(&mut out, last);
        }
        out.push_str(",\"ids\":[");
        for (j, id) in b.ids.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_json_str(&mut out, id);
        }
        out.push_str("]}");
    }
    out.push(']');
    if snapshot.scope == SnapshotScope::SeenIds {
        out.push_str(",\"scope\":\"seen_ids\"");
    }
    if let Some(p) = &snapshot.push {
        out.push_str(",\"push\":{\"platform\":");
        push_json_str(&mut out, p.platform.as_str());
        out.push_str(",\"token\":");
        push_json_str(&mut out, &p.token);
        out.push('}');
    }
    if snapshot.inbox.is_some() || !snapshot.inbox_queue.is_empty() {
        write_inbox(&mut out, snapshot);
    }
    out.push('}');
    out.into_bytes()
}

/// `,"inbox":{"counts":{…},"queue":[{"op_id":…,"action":…,"ids":[…]} or {"op_id":…,"all":…,"up_to":…}]}`.
fn write_inbox(out: &mut String, snapshot: &Snapshot) {
    use crate::engine::InboxChange;
    use crate::protocol::{push_json_str, push_json_u64, write_counts};
    out.push_str(",\"inbox\":{\"counts\":");
    match &snapshot.inbox {
        Some(c) => write_counts(out, c),
        None => out.push_str("null"),
    }
    out.push_str(",\"queue\":[");
    for (i, q) in snapshot.inbox_queue.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"op_id\":");
        push_json_str(out, &q.op_id);
        match &q.change {
            InboxChange::Mark { action, ids } => {
                out.push_str(",\"action\":");
                push_json_str(out, action.as_str());
                out.push_str(",\"ids\":[");
                for (j, id) in ids.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    push_json_str(out, id);
                }
                out.push(']');
            }
            InboxChange::MarkAll { action, up_to } => {
                out.push_str(",\"all\":");
                push_json_str(out, action.as_str());
                if let Some(up_to) = up_to {
                    out.push_str(",\"up_to\":");
                    push_json_u64(out, *up_to);
                }
            }
        }
        out.push('}');
    }
    out.push_str("]}");
}

/// Decodes a stored snapshot; anything malformed is [`StoreError::Corrupt`] with the reason.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, StoreError> {
    let text = std::str::from_utf8(bytes).map_err(|e| StoreError::Corrupt(format!("not UTF-8: {e}")))?;
    let snapshot = snapshot_codec::decode(text).map_err(|e| StoreError::Corrupt(e.message().to_string()))?;
    if snapshot.version != 1 {
        return Err(StoreError::Corrupt(format!("unsupported snapshot version {}", snapshot.version)));
    }
    Ok(snapshot)
}

mod snapshot_codec {
    use crate::engine::{Cursor, InboxChange, PendingBatch, PushRegistration, QueuedChange, Snapshot, SnapshotScope};
    use crate::protocol::json::Reader;
    use crate::protocol::{DecodeError, InboxAction, InboxCounts, MarkAllAction, PushPlatform, decode_notification};
    use crate::time::Instant;

    type R<T> = Result<T, DecodeError>;

    fn strings(r: &mut Reader<'_>) -> R<Vec<String>> {
        r.begin_array()?;
        let mut out = Vec::new();
        let mut first = true;
        while r.next_element(&mut first)? {
            out.push(r.string()?.into_owned());
        }
        Ok(out)
    }

    fn u64_member(r: &mut Reader<'_>) -> R<Option<u64>> {
        if r.null() { Ok(None) } else { r.u64().map(Some) }
    }

    fn counts(r: &mut Reader<'_>) -> R<InboxCounts> {
        let mut c = [None; 5];
        r.begin_object()?;
        let mut first = true;
        while let Some(k) = r.next_key(&mut first)? {
            let slot = ["unseen", "unread", "total", "version", "head"].iter().position(|n| *n == k);
            match slot {
                Some(i) => c[i] = u64_member(r)?,
                None => {
                    r.raw_value()?;
                }
            }
        }
        let [Some(unseen), Some(unread), Some(total), Some(version), Some(head)] = c else {
            return Err(DecodeError::new("inbox counts lack a member"));
        };
        Ok(InboxCounts { unseen, unread, total, version, head })
    }

    fn change(r: &mut Reader<'_>) -> R<QueuedChange> {
        let (mut op_id, mut action, mut ids, mut all, mut up_to) = (None, None, None, None, None);
        r.begin_object()?;
        let mut first = true;
        while let Some(k) = r.next_key(&mut first)? {
            match &*k {
                // `null` counts as absent, as everywhere in snapshots.
                "op_id" | "action" | "ids" | "all" if r.null() => {}
                "op_id" => op_id = Some(r.string()?.into_owned()),
                "action" => action = Some(r.string()?.into_owned()),
                "ids" => ids = Some(strings(r)?),
                "all" => all = Some(r.string()?.into_owned()),
                "up_to" => up_to = u64_member(r)?,
                _ => {
                    r.raw_value()?;
                }
            }
        }
        let op_id = op_id.ok_or_else(|| DecodeError::new("a queued inbox change lacks op_id"))?;
        let unknown =
            |what: &str, v: &str| DecodeError::new(format!("a queued inbox change has an unknown {what} {v:?}"));
        let change = match (action, ids, all) {
            (Some(a), Some(ids), None) => {
                InboxChange::Mark { action: InboxAction::parse(&a).ok_or_else(|| unknown("action", &a))?, ids }
            }
            (None, None, Some(a)) => {
                InboxChange::MarkAll { action: MarkAllAction::parse(&a).ok_or_else(|| unknown("action", &a))?, up_to }
            }
            _ => return Err(DecodeError::new("a queued inbox change is neither a mark nor a mark all")),
        };
        Ok(QueuedChange { op_id, change })
    }

    fn inbox(r: &mut Reader<'_>) -> R<(Option<InboxCounts>, Vec<QueuedChange>)> {
        let (mut c, mut queue) = (None, Vec::new());
        r.begin_object()?;
        let mut first = true;
        while let Some(k) = r.next_key(&mut first)? {
            match &*k {
                "counts" => c = if r.null() { None } else { Some(counts(r)?) },
                "queue" if r.null() => {}
                "queue" => {
                    r.begin_array()?;
                    let mut f = true;
                    while r.next_element(&mut f)? {
                        queue.push(change(r)?);
                    }
                }
                _ => {
                    r.raw_value()?;
                }
            }
        }
        Ok((c, queue))
    }

    pub(super) fn decode(text: &str) -> R<Snapshot> {
        let mut r = Reader::new(text);
        let mut s = Snapshot { version: 0, ..Default::default() };
        r.begin_object()?;
        let mut first = true;
        while let Some(key) = r.next_key(&mut first)? {
            match &*key {
                "version" => s.version = u32::try_from(r.u64()?).map_err(|_| DecodeError::new("bad version"))?,
                "device_id" => s.device_id = if r.null() { None } else { Some(r.string()?.into_owned()) },
                // `null` counts as absent for every member, as in frames (and as the browser reads it).
                "cursors" if r.null() => {}
                "seen" | "pending" | "push" | "scope" | "inbox" if r.null() => {}
                "inbox" => {
                    let (counts, queue) = inbox(&mut r)?;
                    s.inbox = counts;
                    s.inbox_queue = queue;
                }
                "cursors" => {
                    r.begin_object()?;
                    let mut first = true;
                    while let Some(stream) = r.next_key(&mut first)? {
                        let (mut epoch, mut offset) = (None, None);
                        r.begin_object()?;
                        let mut f = true;
                        while let Some(k) = r.next_key(&mut f)? {
                            match &*k {
                                "epoch" => epoch = Some(r.string()?.into_owned()),
                                "offset" => offset = Some(r.u64()?),
                                _ => {
                                    r.raw_value()?;
                                }
                            }
                        }
                        let (Some(epoch), Some(offset)) = (epoch, offset) else {
                            return Err(DecodeError::new(format!("cursor of {stream} lacks epoch or offset")));
                        };
                        s.cursors.insert(stream.into_owned(), Cursor { epoch, offset });
                    }
                }
                "seen" => s.seen = strings(&mut r)?,
                "scope" => {
                    s.scope = match &*r.string()? {
                        "seen_ids" => SnapshotScope::SeenIds,
                        _ => SnapshotScope::Full,
                    }
                }
                "pending" => {
                    r.begin_array()?;
                    let mut first = true;
                    while r.next_element(&mut first)? {
                        let (mut group, mut batch_first, mut last, mut ids) = (None, None, None, None);
                        r.begin_object()?;
                        let mut f = true;
                        while let Some(k) = r.next_key(&mut f)? {
                            match &*k {
                                "group" => group = Some(r.string()?.into_owned()),
                                "first" => batch_first = Some(decode_notification(r.raw_value()?)?),
                                "last" => {
                                    last = if r.null() { None } else { Some(decode_notification(r.raw_value()?)?) }
                                }
                                "ids" => ids = Some(strings(&mut r)?),
                                _ => {
                                    r.raw_value()?;
                                }
                            }
                        }
                        let (Some(group), Some(first), Some(ids)) = (group, batch_first, ids) else {
                            return Err(DecodeError::new("pending batch lacks group, first or ids"));
                        };
                        s.pending.push(PendingBatch { group, first, last, ids, opened_at: Instant::ZERO });
                    }
                }
                "push" => {
                    let (mut platform, mut token) = (None, None);
                    r.begin_object()?;
                    let mut f = true;
                    while let Some(k) = r.next_key(&mut f)? {
                        match &*k {
                            "platform" | "token" if r.null() => {}
                            // An unknown platform (a newer version's) drops the registration, not the snapshot.
                            "platform" => platform = PushPlatform::parse(&r.string()?),
                            "token" => token = Some(r.string()?.into_owned()),
                            _ => {
                                r.raw_value()?;
                            }
                        }
                    }
                    if let (Some(platform), Some(token)) = (platform, token) {
                        s.push = Some(PushRegistration { platform, token });
                    }
                }
                _ => {
                    r.raw_value()?;
                }
            }
        }
        r.end()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Cursor, PendingBatch, PushRegistration};
    use crate::protocol::{Notification, NotificationFields, Persistence, Priority, PushPlatform, RawJson};

    #[test]
    fn snapshots_round_trip_and_are_valid_json() {
        let n = |id: &str| {
            Notification::from(NotificationFields {
                id: id.into(),
                stream: "user:a".into(),
                offset: Some(3),
                epoch: "e".into(),
                kind: "like".into(),
                priority: Priority::Informational,
                persistence: Persistence::Bufferable,
                title: Some("a \"quoted\" title\n".into()),
                body: None,
                data: Some(RawJson::from_string(r#"{"k":[1,2]}"#.into()).unwrap()),
                group: Some("g".into()),
                created_at: 7,
            })
        };
        let mut s = Snapshot { version: 1, device_id: Some("d-1".into()), ..Default::default() };
        s.cursors.insert("user:a".into(), Cursor { epoch: "e".into(), offset: 9 });
        s.cursors.insert("topic:x".into(), Cursor { epoch: "f\"".into(), offset: 0 });
        s.seen = vec!["a".into(), "b".into()];
        s.pending.push(PendingBatch {
            group: "g".into(),
            first: n("l1"),
            last: Some(n("l2")),
            ids: vec!["l1".into(), "l2".into()],
            opened_at: crate::Instant::ZERO,
        });
        s.push = Some(PushRegistration { platform: PushPlatform::Fcm, token: "tok".into() });
        s.inbox = Some(crate::protocol::InboxCounts { unseen: 1, unread: 2, total: 3, version: 4, head: 5 });
        s.inbox_queue = vec![
            crate::engine::QueuedChange {
                op_id: "o-1".into(),
                change: crate::engine::InboxChange::Mark {
                    action: crate::protocol::InboxAction::Archive,
                    ids: vec!["a".into(), "b\"".into()],
                },
            },
            crate::engine::QueuedChange {
                op_id: "o-2".into(),
                change: crate::engine::InboxChange::MarkAll {
                    action: crate::protocol::MarkAllAction::Seen,
                    up_to: Some(5),
                },
            },
            crate::engine::QueuedChange {
                op_id: "o-3".into(),
                change: crate::engine::InboxChange::MarkAll {
                    action: crate::protocol::MarkAllAction::Read,
                    up_to: None,
                },
            },
        ];
        let bytes = encode_snapshot(&s);
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("valid JSON");
        assert_eq!(decode_snapshot(&bytes).unwrap(), s);
        let empty = Snapshot { version: 1, ..Default::default() };
        assert_eq!(decode_snapshot(&encode_snapshot(&empty)).unwrap(), empty);
    }

    /// Found by the `browser_decoder` fuzz target (`fuzz/corpus/browser_decoder/regression-push-token-number`): the
    /// codec and the browser's decoder disagreed on what a malformed `push` member means. One rule now: `null` is
    /// absent for every member; a member of the wrong type makes the snapshot corrupt; an unknown platform drops
    /// the registration only.
    #[test]
    fn null_members_are_absent_and_wrong_types_are_corrupt() {
        let ok = decode_snapshot(
            br#"{"version":1,"cursors":null,"seen":null,"pending":null,"push":{"platform":null,"token":"t"},"scope":null}"#,
        )
        .unwrap();
        assert_eq!(ok, Snapshot { version: 1, ..Default::default() });
        let unknown = decode_snapshot(br#"{"version":1,"push":{"platform":"carrier_pigeon","token":"t"}}"#).unwrap();
        assert_eq!(unknown.push, None);
        for bad in [
            &br#"{"version":1,"push":{"platform":"fcm","token":990}}"#[..],
            br#"{"version":1,"push":5}"#,
            br#"{"version":1,"scope":7}"#,
        ] {
            assert!(decode_snapshot(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn corrupt_snapshots_say_why() {
        for (bytes, why) in [
            (&b"{\"version\":2}"[..], "version 2"),
            (b"{\"version\":1,\"cursors\":{\"user:a\":{}}}", "lacks epoch"),
            (b"[1]", "expected a JSON object"),
            (b"\xff", "not UTF-8"),
        ] {
            let err = decode_snapshot(bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
