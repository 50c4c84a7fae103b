//! The SQLite statements of push delivery: settings, pending pushes, digest windows and the deliveries log.
//! Writes run on the writer thread inside its group-commit transaction; reads on the read pool.

use rusqlite::{Connection, OptionalExtension, params};
use tidings_core::protocol::Priority;

use crate::planner::{
    Channel, DigestWindow, PendingPush, PendingReason, Policy, PublishPlan, RowKey, UnixMs, plan_publish,
};
use crate::store::push::{
    DeliveryRecord, DeliveryStatus, PendingSummary, PlanItem, SettingsChange, Settlement, StoredPush, UserSettings,
    cancelled, plan_log, window_group,
};

fn reason_of(s: &str) -> PendingReason {
    match s {
        "awaiting_ack" => PendingReason::AwaitingAck,
        "digest" => PendingReason::Digest,
        "quiet_hours" => PendingReason::QuietHours,
        _ => PendingReason::Immediate,
    }
}

fn channel_of(s: &str) -> Channel {
    if s == "socket" { Channel::Socket } else { Channel::Push }
}

fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::Socket => "socket",
        Channel::Push => "push",
    }
}

/// Appends entries to the deliveries log.
pub(super) fn log(tx: &Connection, records: &[DeliveryRecord]) -> rusqlite::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO delivery_log (id, user, device, channel, status, reason, provider, form, due_at, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for r in records {
        insert.execute(params![
            r.id,
            r.user,
            r.device,
            channel_name(r.channel),
            r.status.as_str(),
            r.reason,
            r.provider,
            r.form,
            r.due_at,
            r.at
        ])?;
    }
    Ok(())
}

/// [`PushStore::plan`](crate::store::PushStore::plan) inside the writer's transaction.
pub(super) fn plan(
    tx: &Connection,
    policy: &Policy,
    now: UnixMs,
    items: &[PlanItem],
) -> rusqlite::Result<Vec<PublishPlan>> {
    let mut plans = Vec::with_capacity(items.len());
    for item in items {
        let window: Option<DigestWindow> = tx
            .prepare_cached(
                "SELECT opened_at, closes_at FROM digest_window WHERE user = ?1 AND grp = ?2 AND closes_at > ?3",
            )?
            .query_row(params![item.meta.user, window_group(&item.meta), now], |r| {
                Ok(DigestWindow {
                    user: item.meta.user.clone(),
                    group: window_group(&item.meta).to_owned(),
                    opened_at: r.get(0)?,
                    closes_at: r.get(1)?,
                })
            })
            .optional()?;
        let plan = plan_publish(policy, now, &item.context, &item.meta, window.as_ref());
        if let Some(w) = &plan.open_window {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO digest_window (user, grp, opened_at, closes_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![w.user, w.group, w.opened_at, w.closes_at])?;
        }
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO pending_push (user, notification, device, due_at, ready_at, reason, cancel_on_ack, \
             bypass_quiet_hours, priority, type, topic, grp, title, created_at, envelope) \
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for row in &plan.rows {
            insert.execute(params![
                row.key.user,
                row.key.notification,
                row.key.device,
                row.due_at,
                row.reason.as_str(),
                row.cancel_on_ack,
                row.bypass_quiet_hours,
                row.priority.as_str(),
                row.kind,
                row.topic,
                row.group,
                row.title,
                row.created_at,
                item.envelope,
            ])?;
        }
        log(tx, &plan_log(&plan, now))?;
        plans.push(plan);
    }
    Ok(plans)
}

const ROW_COLUMNS: &str = "user, notification, device, due_at, reason, cancel_on_ack, bypass_quiet_hours, priority, \
                           type, topic, grp, title, created_at, envelope, attempts";

fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredPush> {
    let reason: String = r.get(4)?;
    let priority: String = r.get(7)?;
    Ok(StoredPush {
        row: PendingPush {
            key: RowKey { user: r.get(0)?, notification: r.get(1)?, device: r.get(2)? },
            due_at: r.get(3)?,
            reason: reason_of(&reason),
            cancel_on_ack: r.get(5)?,
            bypass_quiet_hours: r.get(6)?,
            priority: Priority::parse(&priority).unwrap_or(Priority::Important),
            kind: r.get(8)?,
            topic: r.get(9)?,
            group: r.get(10)?,
            title: r.get(11)?,
            created_at: r.get(12)?,
        },
        envelope: r.get(13)?,
        attempts: r.get(14)?,
    })
}

/// [`PushStore::claim_due`](crate::store::PushStore::claim_due) inside the writer's transaction.
pub(super) fn claim(
    tx: &Connection,
    claim: u64,
    now: UnixMs,
    until: UnixMs,
    max_users: usize,
) -> rusqlite::Result<Vec<StoredPush>> {
    let users: Vec<String> = tx
        .prepare_cached(
            "SELECT user FROM (SELECT user, MIN(ready_at) AS first FROM pending_push WHERE ready_at <= ?1 \
             GROUP BY user ORDER BY first LIMIT ?2) ORDER BY user",
        )?
        .query_map(params![now, max_users as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    let mut select = tx.prepare_cached(&format!(
        "SELECT {ROW_COLUMNS} FROM pending_push WHERE user = ?1 AND ready_at <= ?2 ORDER BY notification, device"
    ))?;
    let mut mark = tx.prepare_cached(
        "UPDATE pending_push SET claim = ?1, claimed_until = ?2, ready_at = MAX(due_at, ?2) \
         WHERE user = ?3 AND ready_at <= ?4",
    )?;
    for user in users {
        let rows: Vec<StoredPush> = select.query_map(params![user, now], stored)?.collect::<rusqlite::Result<_>>()?;
        mark.execute(params![claim as i64, until, user, now])?;
        out.extend(rows);
    }
    Ok(out)
}

/// [`PushStore::settle`](crate::store::PushStore::settle) inside the writer's transaction.
pub(super) fn settle(tx: &Connection, s: &Settlement) -> rusqlite::Result<()> {
    let mut delete = tx.prepare_cached(
        "DELETE FROM pending_push WHERE user = ?1 AND notification = ?2 AND device = ?3 AND claim = ?4",
    )?;
    for k in &s.delete {
        delete.execute(params![k.user, k.notification, k.device, s.claim as i64])?;
    }
    let mut reschedule = tx.prepare_cached(
        "UPDATE pending_push SET due_at = ?5, ready_at = ?5, reason = ?6, attempts = ?7, claim = 0, claimed_until = 0 \
         WHERE user = ?1 AND notification = ?2 AND device = ?3 AND claim = ?4",
    )?;
    for (k, due_at, reason, attempts) in &s.reschedule {
        reschedule.execute(params![
            k.user,
            k.notification,
            k.device,
            s.claim as i64,
            due_at,
            reason.as_str(),
            attempts
        ])?;
    }
    log(tx, &s.log)
}

/// [`PushStore::expedite`](crate::store::PushStore::expedite) inside the writer's transaction.
pub(super) fn expedite(tx: &Connection, user: &str, reason: PendingReason, now: UnixMs) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE pending_push SET due_at = ?3, ready_at = MAX(?3, claimed_until) \
         WHERE user = ?1 AND reason = ?2 AND due_at > ?3",
    )?
    .execute(params![user, reason.as_str(), now])
}

/// Deletes `user`'s cancellable rows of `ids` (in the transaction that records their acks) and logs it.
pub(super) fn cancel(tx: &Connection, user: &str, ids: &[String], now: UnixMs) -> rusqlite::Result<Vec<RowKey>> {
    let any: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM pending_push WHERE user = ?1 LIMIT 1")?
        .query_row([user], |r| r.get(0))
        .optional()?;
    if any.is_none() {
        return Ok(Vec::new());
    }
    let mut delete = tx.prepare_cached(
        "DELETE FROM pending_push WHERE user = ?1 AND notification = ?2 AND cancel_on_ack RETURNING device",
    )?;
    let mut gone = Vec::new();
    for id in ids {
        let devices: Vec<String> =
            delete.query_map(params![user, id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        gone.extend(devices.into_iter().map(|device| RowKey {
            user: user.to_owned(),
            notification: id.clone(),
            device,
        }));
    }
    let records: Vec<DeliveryRecord> = gone.iter().map(|k| cancelled(k, now)).collect();
    log(tx, &records)?;
    Ok(gone)
}

/// The stored settings of `user`.
pub(super) fn read_settings(conn: &Connection, user: &str) -> rusqlite::Result<UserSettings> {
    let json: Option<String> = conn
        .prepare_cached("SELECT settings FROM user_settings WHERE user = ?1")?
        .query_row([user], |r| r.get(0))
        .optional()?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default())
}

/// Applies a settings change inside the writer's transaction: the new settings, or why the change was refused
/// (nothing written then).
pub(super) fn update_settings(
    tx: &Connection,
    user: &str,
    change: &SettingsChange,
    at: UnixMs,
) -> rusqlite::Result<Result<UserSettings, String>> {
    let mut settings = read_settings(tx, user)?;
    if let Err(e) = settings.apply(change.clone(), at) {
        return Ok(Err(e));
    }
    let json = serde_json::to_string(&settings).unwrap_or_default();
    tx.prepare_cached("INSERT OR REPLACE INTO user_settings (user, settings) VALUES (?1, ?2)")?
        .execute(params![user, json])?;
    Ok(Ok(settings))
}

/// When the earliest row can be claimed.
pub(super) fn next_due(conn: &Connection) -> rusqlite::Result<Option<UnixMs>> {
    conn.prepare_cached("SELECT MIN(ready_at) FROM pending_push")?.query_row([], |r| r.get(0))
}

/// What is pending at `now` (one scan of `pending_push`, at each scrape of `/metrics`).
pub(super) fn pending_summary(conn: &Connection, now: UnixMs) -> rusqlite::Result<PendingSummary> {
    let mut summary = PendingSummary::default();
    let mut by_reason = conn.prepare_cached("SELECT reason, COUNT(*) FROM pending_push GROUP BY reason")?;
    let rows = by_reason.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (reason, n) = row?;
        let (reason, n) = (reason_of(&reason), n.max(0) as u64);
        match summary.by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += n,
            None => summary.by_reason.push((reason, n)),
        }
    }
    let (due, oldest): (i64, Option<i64>) = conn
        .prepare_cached("SELECT COUNT(*), MIN(due_at) FROM pending_push WHERE due_at <= ?1")?
        .query_row([now as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    summary.due = due.max(0) as u64;
    summary.oldest_due = oldest.map(|o| o.max(0) as u64);
    Ok(summary)
}

/// The deliveries log of `id`, oldest first.
pub(super) fn deliveries(conn: &Connection, id: &str) -> rusqlite::Result<Vec<DeliveryRecord>> {
    let mut select = conn.prepare_cached(
        "SELECT id, user, device, channel, status, reason, provider, form, due_at, at FROM delivery_log \
         WHERE id = ?1 ORDER BY at, rowid",
    )?;
    let rows = select.query_map([id], |r| {
        let channel: String = r.get(3)?;
        let status: String = r.get(4)?;
        Ok(DeliveryRecord {
            id: r.get(0)?,
            user: r.get(1)?,
            device: r.get(2)?,
            channel: channel_of(&channel),
            status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Failed),
            reason: r.get(5)?,
            provider: r.get(6)?,
            form: r.get(7)?,
            due_at: r.get(8)?,
            at: r.get(9)?,
        })
    })?;
    rows.collect()
}
