//! The database schema, versioned with `PRAGMA user_version` and migrated at startup.
//!
//! Each entry of [`MIGRATIONS`] takes the schema from version `i` to `i + 1`; a new release appends entries and
//! never edits old ones. A database of a newer version than this server knows is refused (see the store's
//! startup errors).

/// The migrations, in order. Version `n` is the schema after the first `n` of them.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: stream history, idempotency keys, acks, push addresses.
    r#"
    -- Facts about the database itself: its epoch, and whether the last run ended cleanly (and on which boot).
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    -- One row per stream that was ever published to: its head offset.
    CREATE TABLE streams (
        sid  INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        head INTEGER NOT NULL
    );

    -- Notification contents, once per publish however many streams it went to; `refs` counts its entries.
    CREATE TABLE notifications (
        seq         INTEGER PRIMARY KEY,
        id          TEXT NOT NULL,
        type        TEXT NOT NULL,
        priority    TEXT NOT NULL,
        persistence TEXT NOT NULL,
        title       TEXT,
        body        TEXT,
        data        TEXT,
        grp         TEXT,
        created_at  INTEGER NOT NULL,
        refs        INTEGER NOT NULL
    );

    -- The notifications of each stream, by offset.
    CREATE TABLE entries (
        sid         INTEGER NOT NULL,
        offset      INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        persistence TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (sid, offset)
    ) WITHOUT ROWID;
    CREATE INDEX entries_by_age ON entries (persistence, created_at);

    -- Caller-supplied publish ids seen within the idempotency window, with what their publish delivered.
    CREATE TABLE idempotency (
        key        TEXT PRIMARY KEY,
        at         INTEGER NOT NULL,
        deliveries TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_by_age ON idempotency (at);

    -- The first ack of each device for each notification id, in the order they arrived.
    CREATE TABLE acks (
        id     TEXT NOT NULL,
        user   TEXT NOT NULL,
        device TEXT NOT NULL,
        at     INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX acks_by_id ON acks (id, user, device);
    CREATE INDEX acks_by_age ON acks (at);

    -- One push address per device.
    CREATE TABLE push_addresses (
        user          TEXT NOT NULL,
        device        TEXT NOT NULL,
        platform      TEXT NOT NULL,
        token         TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        PRIMARY KEY (user, device)
    ) WITHOUT ROWID;
    CREATE INDEX push_addresses_by_token ON push_addresses (user, token);
    "#,
    // 2: push delivery — notifications found by id, users' settings, pending pushes, digest windows, the
    // deliveries log.
    r#"
    -- `GET /v1/me/notifications/{id}` finds a notification by id.
    CREATE INDEX notifications_by_id ON notifications (id);

    -- Each user's preferences and quiet hours, as the JSON of `UserSettings`.
    CREATE TABLE user_settings (
        user     TEXT PRIMARY KEY,
        settings TEXT NOT NULL
    ) WITHOUT ROWID;

    -- Pushes waiting to be sent: one per (user, notification, device). `ready_at` is when the row can next be
    -- claimed, MAX(due_at, claimed_until); a claim holds a row until `claimed_until` (see store/push.rs).
    CREATE TABLE pending_push (
        user               TEXT NOT NULL,
        notification       TEXT NOT NULL,
        device             TEXT NOT NULL,
        due_at             INTEGER NOT NULL,
        ready_at           INTEGER NOT NULL,
        claimed_until      INTEGER NOT NULL DEFAULT 0,
        claim              INTEGER NOT NULL DEFAULT 0,
        reason             TEXT NOT NULL,
        cancel_on_ack      INTEGER NOT NULL,
        bypass_quiet_hours INTEGER NOT NULL,
        priority           TEXT NOT NULL,
        type               TEXT NOT NULL,
        topic              TEXT,
        grp                TEXT,
        title              TEXT,
        created_at         INTEGER NOT NULL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        envelope           TEXT NOT NULL,
        PRIMARY KEY (user, notification, device)
    ) WITHOUT ROWID;
    CREATE INDEX pending_push_by_ready ON pending_push (ready_at);

    -- Open digest windows: informational notifications of one group share one digest push per window.
    CREATE TABLE digest_window (
        user      TEXT NOT NULL,
        grp       TEXT NOT NULL,
        opened_at INTEGER NOT NULL,
        closes_at INTEGER NOT NULL,
        PRIMARY KEY (user, grp)
    ) WITHOUT ROWID;
    CREATE INDEX digest_window_by_close ON digest_window (closes_at);

    -- What happened to each notification per user and device (GET /v1/notifications/{id}/deliveries).
    CREATE TABLE delivery_log (
        id       TEXT NOT NULL,
        user     TEXT NOT NULL,
        device   TEXT,
        channel  TEXT NOT NULL,
        status   TEXT NOT NULL,
        reason   TEXT,
        provider TEXT,
        form     TEXT,
        due_at   INTEGER,
        at       INTEGER NOT NULL
    );
    CREATE INDEX delivery_log_by_id ON delivery_log (id, at);
    CREATE INDEX delivery_log_by_age ON delivery_log (at);
    "#,
    // 3: inboxes (store/inbox.rs has the model). Developed beside push delivery as a second "version 2"; a
    // database of either earlier version reaches version 3 (see `migrate` in mod.rs).
    r#"
    -- One row per user with an inbox: its counts, version, newest seq, item count, and "mark all" marks
    -- (`up_to:at:version`, comma separated).
    CREATE TABLE inbox_users (
        uid        INTEGER PRIMARY KEY,
        user       TEXT NOT NULL UNIQUE,
        version    INTEGER NOT NULL,
        head       INTEGER NOT NULL,
        unseen     INTEGER NOT NULL,
        unread     INTEGER NOT NULL,
        total      INTEGER NOT NULL,
        items      INTEGER NOT NULL,
        read_marks TEXT NOT NULL,
        seen_marks TEXT NOT NULL
    );

    -- Inbox items, clustered by user and seq (a page is one range of one user's items). `envelope` is the
    -- notification as the user's copy was committed (JSON).
    CREATE TABLE inbox_items (
        uid         INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        id          TEXT NOT NULL,
        type        TEXT NOT NULL,
        topic       TEXT,
        inserted_at INTEGER NOT NULL,
        v           INTEGER NOT NULL,
        seen_at     INTEGER,
        seen_v      INTEGER NOT NULL,
        read_at     INTEGER,
        read_v      INTEGER NOT NULL,
        archived_at INTEGER,
        envelope    TEXT NOT NULL,
        PRIMARY KEY (uid, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX inbox_items_by_id ON inbox_items (uid, id);
    CREATE INDEX inbox_items_by_age ON inbox_items (inserted_at);
    -- Items marked unread / unseen one by one (few): what a "mark all" below the newest mark must visit.
    CREATE INDEX inbox_items_marked_unread ON inbox_items (uid, read_v) WHERE read_at IS NULL AND read_v > 0;
    CREATE INDEX inbox_items_marked_unseen ON inbox_items (uid, seen_v) WHERE seen_at IS NULL AND seen_v > 0;

    -- Op ids of applied inbox changes (idempotency), for a week.
    CREATE TABLE inbox_ops (
        uid   INTEGER NOT NULL,
        op_id TEXT NOT NULL,
        at    INTEGER NOT NULL,
        PRIMARY KEY (uid, op_id)
    ) WITHOUT ROWID;
    CREATE INDEX inbox_ops_by_age ON inbox_ops (at);

    -- Which users' inboxes get the persistent notifications of which topics.
    CREATE TABLE inbox_follows (
        topic TEXT NOT NULL,
        user  TEXT NOT NULL,
        since INTEGER NOT NULL,
        PRIMARY KEY (topic, user)
    ) WITHOUT ROWID;
    CREATE INDEX inbox_follows_by_user ON inbox_follows (user, topic);
    "#,
    // 4: fewer bytes written per notification. A stream's entries are its own range of `entries`, so a commit of
    // notifications to many streams rewrites one page per stream: the rows are now only what a read by offset needs
    // (stream, offset, notification), and their age index is gone (one more insert per entry). Age pruning finds
    // old notifications by `notifications_by_age` instead, and their entries by `placements`: the notification's
    // `sid:offset` pairs, comma separated. A stream's head is no longer written by every commit: it is the larger of
    // `streams.head` and the stream's newest entry, and `streams.head` is brought up to an entry's offset before age
    // pruning deletes the entry (a count limit never deletes the newest).
    r#"
    ALTER TABLE notifications ADD COLUMN placements TEXT;
    CREATE INDEX entries_v3_by_seq ON entries (seq);
    UPDATE notifications SET placements =
        (SELECT group_concat(e.sid || ':' || e.offset, ',') FROM entries e WHERE e.seq = notifications.seq);
    CREATE TABLE entries_v4 (
        sid    INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        seq    INTEGER NOT NULL,
        PRIMARY KEY (sid, offset)
    ) WITHOUT ROWID;
    INSERT INTO entries_v4 (sid, offset, seq) SELECT sid, offset, seq FROM entries;
    DROP TABLE entries;
    ALTER TABLE entries_v4 RENAME TO entries;
    CREATE INDEX notifications_by_age ON notifications (persistence, created_at);
    "#,
];

/// The index in [`MIGRATIONS`] of push delivery's tables (version 2).
pub(crate) const PUSH_DELIVERY: usize = 1;

/// The index in [`MIGRATIONS`] of the inbox's tables (version 3).
pub(crate) const INBOX: usize = 2;

/// The version a development build of the inbox wrote before push delivery and inboxes were merged: its version 2
/// holds the inbox tables of migration 3 instead of push delivery's.
pub(crate) const INBOX_FIRST_V2: i64 = 2;

/// The schema version this server writes.
pub(crate) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}
