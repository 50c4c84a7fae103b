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
    // 2: inboxes (store/inbox.rs has the model).
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
];

/// The schema version this server writes.
pub(crate) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}
