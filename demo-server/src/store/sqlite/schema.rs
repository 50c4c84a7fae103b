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
];

/// The schema version this server writes.
pub(crate) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}
