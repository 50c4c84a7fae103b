//! The PostgreSQL schema, versioned in the table `schema_version` and migrated at startup under an advisory lock
//! (several processes starting at once migrate once; the others wait and find the schema current).
//!
//! Each entry of [`MIGRATIONS`] takes the schema from version `i` to `i + 1`; a new release appends entries and
//! never edits old ones. A database of a newer version than this server knows is refused.
//!
//! The tables mirror the SQLite store's (`store/sqlite/schema.rs`); columns named `user` and `offset` there are
//! `usr` and `off` here (reserved words in PostgreSQL). Times are milliseconds since the Unix epoch (`BIGINT`).

/// The key of the advisory lock held while migrating.
pub(crate) const MIGRATION_LOCK: i64 = 0x7469_6469_6e67_7301;

/// The migrations, in order. Version `n` is the schema after the first `n` of them.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: everything of the SQLite store's version 3.
    r#"
    -- Facts about the database: its epoch (drawn when it was created; new streams start in it).
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    -- One row per stream that was ever published to: its epoch and head offset. Appends lock the rows of their
    -- streams (in name order) for the length of their transaction: offsets are assigned by the commit.
    CREATE TABLE streams (
        sid   BIGSERIAL PRIMARY KEY,
        name  TEXT NOT NULL UNIQUE,
        epoch TEXT NOT NULL,
        head  BIGINT NOT NULL
    );

    -- Notification contents, once per publish however many streams it went to; `refs` counts its entries.
    CREATE TABLE notifications (
        seq         BIGSERIAL PRIMARY KEY,
        id          TEXT NOT NULL,
        kind        TEXT NOT NULL,
        priority    TEXT NOT NULL,
        persistence TEXT NOT NULL,
        title       TEXT,
        body        TEXT,
        data        TEXT,
        grp         TEXT,
        created_at  BIGINT NOT NULL,
        refs        BIGINT NOT NULL
    );
    CREATE INDEX notifications_by_id ON notifications (id);

    -- The notifications of each stream, by offset.
    CREATE TABLE entries (
        sid         BIGINT NOT NULL,
        off         BIGINT NOT NULL,
        seq         BIGINT NOT NULL,
        persistence TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        PRIMARY KEY (sid, off)
    );
    CREATE INDEX entries_by_age ON entries (persistence, created_at);
    CREATE INDEX entries_by_seq ON entries (seq);

    -- Caller-supplied publish ids seen within the idempotency window, with what their publish delivered.
    CREATE TABLE idempotency (
        key        TEXT PRIMARY KEY,
        at         BIGINT NOT NULL,
        deliveries TEXT NOT NULL
    );
    CREATE INDEX idempotency_by_age ON idempotency (at);

    -- The first ack of each device for each notification id, in the order they arrived.
    CREATE TABLE acks (
        seq    BIGSERIAL PRIMARY KEY,
        id     TEXT NOT NULL,
        usr    TEXT NOT NULL,
        device TEXT NOT NULL,
        at     BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX acks_by_id ON acks (id, usr, device);
    CREATE INDEX acks_by_age ON acks (at);

    -- One push address per device.
    CREATE TABLE push_addresses (
        usr           TEXT NOT NULL,
        device        TEXT NOT NULL,
        platform      TEXT NOT NULL,
        token         TEXT NOT NULL,
        registered_at BIGINT NOT NULL,
        PRIMARY KEY (usr, device)
    );
    CREATE INDEX push_addresses_by_token ON push_addresses (usr, token);

    -- Each user's preferences and quiet hours, as the JSON of `UserSettings`.
    CREATE TABLE user_settings (
        usr      TEXT PRIMARY KEY,
        settings TEXT NOT NULL
    );

    -- Pushes waiting to be sent (see store/push.rs). Claim tokens come from `push_claims`, unique across processes.
    CREATE TABLE pending_push (
        usr                TEXT NOT NULL,
        notification       TEXT NOT NULL,
        device             TEXT NOT NULL,
        due_at             BIGINT NOT NULL,
        ready_at           BIGINT NOT NULL,
        claimed_until      BIGINT NOT NULL DEFAULT 0,
        claim              BIGINT NOT NULL DEFAULT 0,
        reason             TEXT NOT NULL,
        cancel_on_ack      BOOLEAN NOT NULL,
        bypass_quiet_hours BOOLEAN NOT NULL,
        priority           TEXT NOT NULL,
        kind               TEXT NOT NULL,
        topic              TEXT,
        grp                TEXT,
        title              TEXT,
        created_at         BIGINT NOT NULL,
        attempts           BIGINT NOT NULL DEFAULT 0,
        envelope           TEXT NOT NULL,
        PRIMARY KEY (usr, notification, device)
    );
    CREATE INDEX pending_push_by_ready ON pending_push (ready_at);
    CREATE SEQUENCE push_claims;

    -- Open digest windows.
    CREATE TABLE digest_window (
        usr       TEXT NOT NULL,
        grp       TEXT NOT NULL,
        opened_at BIGINT NOT NULL,
        closes_at BIGINT NOT NULL,
        PRIMARY KEY (usr, grp)
    );
    CREATE INDEX digest_window_by_close ON digest_window (closes_at);

    -- What happened to each notification per user and device.
    CREATE TABLE delivery_log (
        seq      BIGSERIAL PRIMARY KEY,
        id       TEXT NOT NULL,
        usr      TEXT NOT NULL,
        device   TEXT,
        channel  TEXT NOT NULL,
        status   TEXT NOT NULL,
        reason   TEXT,
        provider TEXT,
        form     TEXT,
        due_at   BIGINT,
        at       BIGINT NOT NULL
    );
    CREATE INDEX delivery_log_by_id ON delivery_log (id, at);
    CREATE INDEX delivery_log_by_age ON delivery_log (at);

    -- Inboxes (store/inbox.rs has the model).
    CREATE TABLE inbox_users (
        uid        BIGSERIAL PRIMARY KEY,
        usr        TEXT NOT NULL UNIQUE,
        version    BIGINT NOT NULL,
        head       BIGINT NOT NULL,
        unseen     BIGINT NOT NULL,
        unread     BIGINT NOT NULL,
        total      BIGINT NOT NULL,
        items      BIGINT NOT NULL,
        read_marks TEXT NOT NULL,
        seen_marks TEXT NOT NULL
    );
    CREATE TABLE inbox_items (
        uid         BIGINT NOT NULL,
        seq         BIGINT NOT NULL,
        id          TEXT NOT NULL,
        kind        TEXT NOT NULL,
        topic       TEXT,
        inserted_at BIGINT NOT NULL,
        v           BIGINT NOT NULL,
        seen_at     BIGINT,
        seen_v      BIGINT NOT NULL,
        read_at     BIGINT,
        read_v      BIGINT NOT NULL,
        archived_at BIGINT,
        envelope    TEXT NOT NULL,
        PRIMARY KEY (uid, seq)
    );
    CREATE UNIQUE INDEX inbox_items_by_id ON inbox_items (uid, id);
    CREATE INDEX inbox_items_by_age ON inbox_items (inserted_at);
    CREATE INDEX inbox_items_marked_unread ON inbox_items (uid, read_v) WHERE read_at IS NULL AND read_v > 0;
    CREATE INDEX inbox_items_marked_unseen ON inbox_items (uid, seen_v) WHERE seen_at IS NULL AND seen_v > 0;
    CREATE TABLE inbox_ops (
        uid   BIGINT NOT NULL,
        op_id TEXT NOT NULL,
        at    BIGINT NOT NULL,
        PRIMARY KEY (uid, op_id)
    );
    CREATE INDEX inbox_ops_by_age ON inbox_ops (at);
    CREATE TABLE inbox_follows (
        topic TEXT NOT NULL,
        usr   TEXT NOT NULL,
        since BIGINT NOT NULL,
        PRIMARY KEY (topic, usr)
    );
    CREATE INDEX inbox_follows_by_user ON inbox_follows (usr, topic);
    "#,
    // 2: each stream's greatest server-generated notification id, so that ids drawn by different processes stay
    // ordered in the stream (model.rs `IdFloor`); empty for streams written before.
    r#"
    ALTER TABLE streams ADD COLUMN last_id TEXT NOT NULL DEFAULT '';
    "#,
];

/// The schema version this server writes.
pub(crate) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}
