//! The store interfaces of push delivery: users' notification settings ([`SettingsStore`]), and pending pushes,
//! digest windows and the deliveries log ([`PushStore`]).
//!
//! # Pending pushes
//! A pending push is one row per (user, notification, device) — the delivery planner's
//! [`PendingPush`](crate::planner::PendingPush) — kept with the envelope it will carry, how many times sending
//! it was tried, and a claim. Rows come from [`PushStore::plan`], which runs the planner's
//! [`plan_publish`](crate::planner::plan_publish) for each recipient *inside the store's transaction*, against
//! the recipient's open digest window, so that two publishes racing for one window cannot both open it.
//!
//! The timer worker claims what is due ([`PushStore::claim_due`]): every due row of a few users at a time (a
//! user's due rows are decided together, so that digests and quiet-hours summaries collapse into one push), each
//! claimed row invisible to other claims until its lease runs out. It then settles each row
//! ([`PushStore::settle`]): deleted once sent or dropped, or rescheduled (quiet hours, `Retry-After`). A settle
//! only touches rows that still carry the claim it names, so a row an ack cancelled meanwhile stays cancelled and a
//! row whose lease ran out and was claimed again is not settled twice. A process that dies between claiming and
//! settling leaves its rows to be claimed again once the lease ends: delivery is at least once, and a push sent
//! twice replaces itself on the device (APNs collapse id and Web Push `Topic` are the notification id) and is
//! shown once by the SDK, which dedups by id.
//!
//! Cancellation by an ack is atomic with recording the ack: [`AckStore::record`](super::AckStore::record)
//! deletes the user's cancellable rows of the acked notifications in the same commit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BoxFuture, StoreError};
use crate::planner::{
    Channel, NotificationMeta, PendingPush, PendingReason, Policy, Preferences, PublishPlan, QuietHoursSpec, RowKey,
    Rule, UnixMs, UserContext,
};

/// A user's notification settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSettings {
    /// Preferences: which channel each notification type or topic may use.
    pub preferences: Preferences,
    /// Quiet hours, if the user has any.
    pub quiet_hours: Option<QuietHoursSpec>,
    /// Counts the changes: 0 for a user who never changed anything.
    pub version: u64,
    /// When they last changed (ms since the Unix epoch; 0 when never).
    pub updated_at: UnixMs,
}

/// A change to a user's settings, applied atomically by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingsChange {
    /// Replace every preference rule.
    ReplacePreferences(Preferences),
    /// Add these rules, replacing any rule with the same selector and channel (so two devices changing different
    /// rules at once both keep their change).
    MergePreferences(Vec<Rule>),
    /// Set (or, with `None`, remove) the quiet hours.
    QuietHours(Option<QuietHoursSpec>),
}

/// Why a settings change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The change would make the settings invalid (too many rules); nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UserSettings {
    /// Applies `change` at `at`, checking the result.
    pub fn apply(&mut self, change: SettingsChange, at: UnixMs) -> Result<(), String> {
        match change {
            SettingsChange::ReplacePreferences(p) => {
                p.validate()?;
                self.preferences = p;
            }
            SettingsChange::MergePreferences(rules) => {
                let mut merged = self.preferences.clone();
                for rule in rules {
                    merged.rules.retain(|r| !(r.selector == rule.selector && r.channel == rule.channel));
                    merged.rules.push(rule);
                }
                merged.validate()?;
                self.preferences = merged;
            }
            SettingsChange::QuietHours(q) => self.quiet_hours = q,
        }
        self.version += 1;
        self.updated_at = at;
        Ok(())
    }
}

/// Users' preferences and quiet hours.
pub trait SettingsStore: Send + Sync + 'static {
    /// `user`'s settings (the defaults — everything on, no quiet hours, version 0 — for a user never set).
    fn settings<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<UserSettings, StoreError>>;

    /// Applies `change` to `user`'s settings at `at` (read, change and write in one commit) and returns the
    /// result. A change that would leave invalid settings is refused and changes nothing. A quiet-hours
    /// specification is checked by the caller before it gets here.
    fn update_settings<'a>(
        &'a self,
        user: &'a str,
        change: SettingsChange,
        at: UnixMs,
    ) -> BoxFuture<'a, Result<UserSettings, SettingsError>>;
}

/// One recipient of a committed notification, to plan.
#[derive(Clone, Debug)]
pub struct PlanItem {
    /// What the planner knows of the recipient (devices with their presence, preferences, quiet hours).
    pub context: UserContext,
    /// The notification, for this recipient.
    pub meta: NotificationMeta,
    /// The notification envelope (protocol §3, JSON) a push of it carries.
    pub envelope: String,
}

/// A pending push as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPush {
    /// The planner's row.
    pub row: PendingPush,
    /// The envelope a push of this notification carries.
    pub envelope: String,
    /// Send attempts that ended in "try again later" so far.
    pub attempts: u32,
}

/// What became of claimed rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// The claim the rows were taken under ([`PushStore::claim_due`]); rows no longer under it are left alone.
    pub claim: u64,
    /// Rows sent or dropped: delete them.
    pub delete: Vec<RowKey>,
    /// Rows to keep for later, with their new `due_at`, reason and attempts (the claim is released).
    pub reschedule: Vec<(RowKey, UnixMs, PendingReason, u32)>,
    /// What happened, for the deliveries log.
    pub log: Vec<DeliveryRecord>,
}

impl Settlement {
    /// An empty settlement under `claim`.
    pub fn new(claim: u64) -> Self {
        Settlement { claim, ..Settlement::default() }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.reschedule.is_empty() && self.log.is_empty()
    }
}

/// What happened to a notification for a user or one of their devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// A push was scheduled (`reason` says why it waits; `due_at` until when).
    Scheduled,
    /// A provider accepted a push.
    Pushed,
    /// Nothing goes on the channel (`reason`: preference, quiet hours, digest off …).
    Suppressed,
    /// A pending push was dropped before it was sent (`reason`: acked).
    Cancelled,
    /// A push could not be delivered (`reason`: the provider's answer).
    Failed,
}

impl DeliveryStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Scheduled => "scheduled",
            DeliveryStatus::Pushed => "pushed",
            DeliveryStatus::Suppressed => "suppressed",
            DeliveryStatus::Cancelled => "cancelled",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "scheduled" => DeliveryStatus::Scheduled,
            "pushed" => DeliveryStatus::Pushed,
            "suppressed" => DeliveryStatus::Suppressed,
            "cancelled" => DeliveryStatus::Cancelled,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }
}

/// One entry of the deliveries log (`GET /v1/notifications/{id}/deliveries`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The notification.
    pub id: String,
    /// The recipient.
    pub user: String,
    /// The device, when the entry is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The channel.
    pub channel: Channel,
    /// What happened.
    pub status: DeliveryStatus,
    /// Why (a planner reason, or the provider's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The push provider (`apns`, `fcm`, `web_push`), for pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// For `pushed`: the payload form (`full`, `lightweight`, `summary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// For `scheduled`: when the push is due (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<UnixMs>,
    /// When it happened (ms since the Unix epoch).
    pub at: UnixMs,
}

/// Pending pushes, digest windows and the deliveries log. See the module documentation.
pub trait PushStore: Send + Sync + 'static {
    /// Plans `items` at `now` in one commit: for each, reads the recipient's open digest window for the
    /// notification's group, runs [`plan_publish`](crate::planner::plan_publish), inserts the plan's rows (a row
    /// whose key exists is left as it is) and window, and logs its decisions. Returns one plan per item, in order.
    fn plan<'a>(
        &'a self,
        policy: &'a Policy,
        now: UnixMs,
        items: Vec<PlanItem>,
    ) -> BoxFuture<'a, Result<Vec<PublishPlan>, StoreError>>;

    /// When the earliest unclaimed row is due (`None`: no rows).
    fn next_due(&self) -> BoxFuture<'_, Result<Option<UnixMs>, StoreError>>;

    /// Claims the rows due at `now` that no live claim holds, for at most `max_users` users (every due row of each
    /// of them), until `now + lease`. Returns the claim token and the rows, ordered by user.
    fn claim_due(
        &self,
        now: UnixMs,
        lease: Duration,
        max_users: usize,
    ) -> BoxFuture<'_, Result<(u64, Vec<StoredPush>), StoreError>>;

    /// Deletes and reschedules claimed rows and writes the log entries, in one commit.
    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Makes `user`'s unclaimed rows with `reason` due at `now` at the latest (the user's last session ended:
    /// pushes waiting for an ack go at once; the user changed preferences or quiet hours: held pushes are decided
    /// again). Returns how many rows moved.
    fn expedite<'a>(
        &'a self,
        user: &'a str,
        reason: PendingReason,
        now: UnixMs,
    ) -> BoxFuture<'a, Result<usize, StoreError>>;

    /// The deliveries log of notification `id`, oldest first.
    fn deliveries<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<DeliveryRecord>, StoreError>>;

    /// What is pending at `now`, for the metrics (`tidings_push_pending`, the `push` queue).
    fn pending_summary(&self, now: UnixMs) -> BoxFuture<'_, Result<PendingSummary, StoreError>>;
}

/// Pending pushes at one instant (see [`PushStore::pending_summary`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingSummary {
    /// Rows by why they wait (reasons without rows are left out).
    pub by_reason: Vec<(PendingReason, u64)>,
    /// Rows due (`due_at <= now`): waiting for the worker, or being sent.
    pub due: u64,
    /// The earliest `due_at` of those.
    pub oldest_due: Option<UnixMs>,
}

impl PendingSummary {
    /// The summary of `rows` (`(reason, due_at)` of each pending row) at `now`.
    pub fn of(rows: impl IntoIterator<Item = (PendingReason, UnixMs)>, now: UnixMs) -> Self {
        let mut summary = PendingSummary::default();
        for (reason, due_at) in rows {
            match summary.by_reason.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => summary.by_reason.push((reason, 1)),
            }
            if due_at <= now {
                summary.due += 1;
                summary.oldest_due = Some(summary.oldest_due.map_or(due_at, |o| o.min(due_at)));
            }
        }
        summary
    }
}

/// The log entries of a plan's decisions (what a store writes in [`PushStore::plan`]). "No push address"
/// decisions are not logged: a user without push devices is the common case and has nothing to explain.
pub fn plan_log(plan: &PublishPlan, now: UnixMs) -> Vec<DeliveryRecord> {
    outcomes_log(&plan.outcomes, now)
}

/// The log entries of planner decisions (see [`plan_log`]).
pub fn outcomes_log(outcomes: &[crate::planner::Outcome], now: UnixMs) -> Vec<DeliveryRecord> {
    use crate::planner::{Outcome, Suppression};
    let mut out = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Scheduled { key, due_at, reason } => out.push(DeliveryRecord {
                id: key.notification.clone(),
                user: key.user.clone(),
                device: Some(key.device.clone()),
                channel: Channel::Push,
                status: DeliveryStatus::Scheduled,
                reason: Some(reason.as_str().to_owned()),
                provider: None,
                form: None,
                due_at: Some(*due_at),
                at: now,
            }),
            Outcome::Suppressed { reason: Suppression::NoPushAddress, .. } => {}
            Outcome::Suppressed { id, user, device, channel, reason } => out.push(DeliveryRecord {
                id: id.clone(),
                user: user.clone(),
                device: device.clone(),
                channel: *channel,
                status: DeliveryStatus::Suppressed,
                reason: Some(suppression_name(*reason).to_owned()),
                provider: None,
                form: None,
                due_at: None,
                at: now,
            }),
            Outcome::Cancelled { key, .. } => out.push(cancelled(key, now)),
            Outcome::Push(_) => {}
        }
    }
    out
}

/// The log entry of a pending push cancelled by an ack.
pub fn cancelled(key: &RowKey, now: UnixMs) -> DeliveryRecord {
    DeliveryRecord {
        id: key.notification.clone(),
        user: key.user.clone(),
        device: Some(key.device.clone()),
        channel: Channel::Push,
        status: DeliveryStatus::Cancelled,
        reason: Some("acked".into()),
        provider: None,
        form: None,
        due_at: None,
        at: now,
    }
}

/// The wire name of a suppression reason.
pub fn suppression_name(reason: crate::planner::Suppression) -> &'static str {
    use crate::planner::Suppression;
    match reason {
        Suppression::Preference => "preference",
        Suppression::Ephemeral => "ephemeral",
        Suppression::LiveOnly => "live_only",
        Suppression::DigestOff => "digest_off",
        Suppression::NoPushAddress => "no_push_address",
    }
}

/// The digest window key of a notification: its group, else its type.
pub fn window_group(meta: &NotificationMeta) -> &str {
    meta.group.as_deref().unwrap_or(&meta.kind)
}
