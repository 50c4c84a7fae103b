//! The decisions, as pure functions of (policy, time, the recipient's context, rows): what a publish schedules,
//! and what pending rows that are due turn into. [`super::Planner`] keeps the rows in memory; a durable store
//! runs the same functions inside its transactions.

use std::collections::BTreeMap;
use std::time::Duration;

use tidings_core::protocol::{Persistence, Priority};

use super::model::{
    DigestWindow, NotificationMeta, Outcome, PendingPush, PendingReason, PushContent, PushOrder, RowKey, Suppression,
    UserContext,
};
use super::{Channel, UnixMs};

/// The operator's defaults (per server). Publishers override `push_after` per publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long an `important` notification waits for an ack before it is pushed to a user with a live session.
    pub push_after: Duration,
    /// The digest window: informational notifications of one group to a user without a live session get at
    /// most one digest push per window.
    pub digest_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { push_after: Duration::from_secs(5), digest_window: Duration::from_secs(10 * 60) }
    }
}

fn add(at: UnixMs, d: Duration) -> UnixMs {
    at.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a publish decides for one recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishPlan {
    /// Whether the notification goes to the user's live sessions (and replay). `false` only when the user
    /// turned the socket channel off for it.
    pub socket: bool,
    /// Rows to insert (`ON CONFLICT DO NOTHING`: a publish retried under the same id schedules nothing new).
    pub rows: Vec<PendingPush>,
    /// A digest window to open (insert), when this notification starts one.
    pub open_window: Option<DigestWindow>,
    /// The decisions, for the deliveries log.
    pub outcomes: Vec<Outcome>,
}

/// Decides what a notification does for its recipient at `now`. `window` is the recipient's open digest window
/// for the notification's group, if any (a window whose `closes_at` has passed counts as closed).
pub fn plan_publish(
    policy: &Policy,
    now: UnixMs,
    ctx: &UserContext,
    n: &NotificationMeta,
    window: Option<&DigestWindow>,
) -> PublishPlan {
    let critical = n.priority == Priority::Critical;
    let mut plan = PublishPlan { socket: true, ..PublishPlan::default() };
    let prefs = &ctx.preferences;
    let suppressed = |channel: Channel, reason: Suppression| Outcome::Suppressed {
        id: n.id.clone(),
        user: n.user.clone(),
        device: None,
        channel,
        reason,
    };
    if !prefs.allows(Channel::Socket, n.priority, &n.kind, n.topic.as_deref()) {
        plan.socket = false;
        plan.outcomes.push(suppressed(Channel::Socket, Suppression::Preference));
    }
    if n.persistence == Persistence::Ephemeral {
        plan.outcomes.push(suppressed(Channel::Push, Suppression::Ephemeral));
        return plan;
    }
    if !prefs.allows(Channel::Push, n.priority, &n.kind, n.topic.as_deref()) {
        plan.outcomes.push(suppressed(Channel::Push, Suppression::Preference));
        return plan;
    }
    // A live session that will not be shown the notification (socket turned off) cannot ack it: waiting for an
    // ack would only delay the push.
    let live = plan.socket && ctx.has_live_session();
    let quiet_end = match &ctx.quiet_hours {
        Some(q) if !n.overrides.bypass_quiet_hours => q.quiet_until(now),
        _ => None,
    };
    let (reason, due_at, group) = match n.priority {
        Priority::Critical => (PendingReason::Immediate, now, None),
        Priority::Important if live => {
            (PendingReason::AwaitingAck, add(now, n.overrides.push_after.unwrap_or(policy.push_after)), None)
        }
        Priority::Important => (PendingReason::Immediate, now, None),
        Priority::Informational => {
            if !n.overrides.digest {
                plan.outcomes.push(suppressed(Channel::Push, Suppression::DigestOff));
                return plan;
            }
            if live {
                plan.outcomes.push(suppressed(Channel::Push, Suppression::LiveOnly));
                return plan;
            }
            let group = n.group.clone().unwrap_or_else(|| n.kind.clone());
            let closes_at = match window {
                Some(w) if w.closes_at > now => w.closes_at,
                // During quiet hours the summary collects everything; no window opens.
                _ if quiet_end.is_some() => now,
                _ => {
                    let w = DigestWindow {
                        user: n.user.clone(),
                        group: group.clone(),
                        opened_at: now,
                        closes_at: add(now, policy.digest_window),
                    };
                    let closes_at = w.closes_at;
                    plan.open_window = Some(w);
                    closes_at
                }
            };
            (PendingReason::Digest, closes_at, Some(group))
        }
    };
    let (reason, due_at) = match quiet_end {
        Some(end) => (PendingReason::QuietHours, end),
        None => (reason, due_at),
    };
    let mut any = false;
    for device in ctx.push_devices() {
        any = true;
        let row = PendingPush {
            key: RowKey { user: n.user.clone(), notification: n.id.clone(), device: device.id.clone() },
            due_at,
            reason,
            cancel_on_ack: !critical,
            bypass_quiet_hours: n.overrides.bypass_quiet_hours,
            priority: n.priority,
            kind: n.kind.clone(),
            topic: n.topic.clone(),
            group: group.clone(),
            title: n.title.clone(),
            created_at: n.created_at,
        };
        plan.outcomes.push(Outcome::Scheduled { key: row.key.clone(), due_at, reason });
        plan.rows.push(row);
    }
    if !any {
        plan.outcomes.push(suppressed(Channel::Push, Suppression::NoPushAddress));
        plan.open_window = None;
    }
    plan
}

/// What a user's due rows turn into.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DuePlan {
    /// Pushes to send now. Every due row that is not in `rescheduled` is consumed by one of them or dropped (see
    /// `outcomes`): delete it.
    pub pushes: Vec<PushOrder>,
    /// Rows to keep with a new `due_at` and `reason` (held by quiet hours).
    pub rescheduled: Vec<PendingPush>,
    /// The decisions, for the deliveries log.
    pub outcomes: Vec<Outcome>,
}

/// Decides what `rows` — one user's rows, all due at `now` — become, given the user's context now (devices,
/// preferences and quiet hours may have changed since the rows were written).
pub fn plan_due(now: UnixMs, ctx: &UserContext, rows: Vec<PendingPush>) -> DuePlan {
    let mut plan = DuePlan::default();
    let quiet_end = ctx.quiet_hours.as_ref().and_then(|q| q.quiet_until(now));
    // Per device: rows sent one by one, digest rows by group, held rows for the summary.
    let mut per_device: BTreeMap<String, Batches> = BTreeMap::new();
    for mut row in rows {
        let suppress = |reason: Suppression, row: &PendingPush| Outcome::Suppressed {
            id: row.key.notification.clone(),
            user: row.key.user.clone(),
            device: Some(row.key.device.clone()),
            channel: Channel::Push,
            reason,
        };
        if ctx.device(&row.key.device).is_none_or(|d| d.push.is_none()) {
            plan.outcomes.push(suppress(Suppression::NoPushAddress, &row));
            continue;
        }
        if !ctx.preferences.allows(Channel::Push, row.priority, &row.kind, row.topic.as_deref()) {
            plan.outcomes.push(suppress(Suppression::Preference, &row));
            continue;
        }
        if let Some(end) = quiet_end
            && !row.bypass_quiet_hours
        {
            row.reason = PendingReason::QuietHours;
            row.due_at = end;
            plan.outcomes.push(Outcome::Scheduled { key: row.key.clone(), due_at: end, reason: row.reason });
            plan.rescheduled.push(row);
            continue;
        }
        let batches = per_device.entry(row.key.device.clone()).or_default();
        match row.reason {
            _ if row.priority == Priority::Critical => batches.single.push(row),
            PendingReason::Immediate | PendingReason::AwaitingAck => batches.single.push(row),
            PendingReason::Digest => {
                let group = row.group.clone().unwrap_or_else(|| row.kind.clone());
                batches.digests.entry(group).or_default().push(row);
            }
            PendingReason::QuietHours => batches.held.push(row),
        }
    }
    for (device, batches) in per_device {
        for row in batches.single {
            let content = PushContent::Single { id: row.key.notification.clone() };
            plan.pushes.push(PushOrder { user: row.key.user, device: device.clone(), content, priority: row.priority });
        }
        for (group, rows) in batches.digests {
            plan.pushes.extend(collapse(&device, rows, |ids, title| PushContent::Digest { group, ids, title }));
        }
        plan.pushes.extend(collapse(&device, batches.held, |ids, title| PushContent::QuietHoursSummary { ids, title }));
    }
    plan
}

/// One push for `rows` (one device's): the notification itself when there is one, else `many(ids, title)` with
/// the ids newest first and the newest title.
fn collapse(
    device: &str,
    mut rows: Vec<PendingPush>,
    many: impl FnOnce(Vec<String>, Option<String>) -> PushContent,
) -> Option<PushOrder> {
    let first = rows.first()?;
    let user = first.key.user.clone();
    let priority = rows.iter().map(|r| r.priority).min().unwrap_or(Priority::Informational);
    let content = if rows.len() == 1 {
        PushContent::Single { id: first.key.notification.clone() }
    } else {
        rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.key.cmp(&a.key)));
        let title = rows[0].title.clone();
        many(rows.into_iter().map(|r| r.key.notification).collect(), title)
    };
    Some(PushOrder { user, device: device.to_owned(), content, priority })
}

#[derive(Default)]
struct Batches {
    single: Vec<PendingPush>,
    digests: BTreeMap<String, Vec<PendingPush>>,
    held: Vec<PendingPush>,
}
