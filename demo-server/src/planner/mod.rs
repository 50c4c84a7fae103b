//! The delivery planner: who gets what, by which path, and when. Deterministic and sans-IO — no clock, no
//! sockets: every input carries `now` (ms since the Unix epoch, a wall clock, because quiet hours are wall-clock
//! rules and pending pushes outlive a process), and decisions come out as [`Outcome`]s to poll.
//!
//! # Default policy
//! - `critical`: live to every connected device **and** pushed at once to every device with a push address,
//!   whatever its presence and whatever is acked; preferences cannot turn it off. During the user's quiet hours
//!   its pushes wait until they end (each is then sent on its own), unless the publisher bypasses quiet hours.
//! - `important`: live; pushed to every push device unless a device of the user acks it within `push_after`
//!   (default 5 s). A user with no live session is pushed at once. An ack from any device of the user cancels
//!   the pending pushes; acks are the delivery evidence, presence only shortens the wait (when the user's last
//!   session ends, pushes waiting for an ack go at once).
//! - `informational`: live only while the user has a live session; otherwise collected per (user, group) into
//!   one digest push per window (default 10 min; the group is the `type` when the notification has none), or
//!   nothing when the publisher turns digests off.
//! - `ephemeral` notifications are never pushed (protocol §3).
//! - Quiet hours ([`QuietHours`]): non-critical pushes due during them are held and, when they end, collapsed
//!   into one summary push per device (a lone held notification is sent as itself); an ack meanwhile drops it.
//! - Preferences ([`Preferences`]): a channel turned off for the notification's type or topic gets nothing —
//!   no live delivery for `socket`, no push, digest or summary for `push`. Deny wins; `critical` is exempt.
//!
//! # State as rows
//! Everything the planner remembers between inputs is a [`PendingPush`] row (key: user, notification,
//! device; `due_at`; reason) or a [`DigestWindow`] row (key: user, group). [`plan_publish`] and [`plan_due`]
//! are pure functions over a user's [`UserContext`] and those rows, so a durable store can run them inside its
//! own transactions; [`Planner`] is the same policy with the rows kept in memory (for tests, and for servers
//! without a durable store). Cancellation by an ack is `DELETE FROM pending_push WHERE user = ? AND
//! notification IN (…) AND cancel_on_ack`, done in the transaction that records the ack.

mod model;
mod policy;
mod prefs;
mod quiet;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

pub use model::{
    Cancellation, Device, DigestWindow, NotificationMeta, Outcome, Overrides, PendingPush, PendingReason, PushContent,
    PushOrder, PushTarget, RowKey, Suppression, UserContext,
};
pub use policy::{DuePlan, Policy, PublishPlan, plan_due, plan_publish};
pub use prefs::{Channel, MAX_RULES, Preferences, Rule, Selector};
pub use quiet::{LocalTime, MAX_RANGES, QuietHours, QuietHoursError, QuietHoursSpec, RangeSpec, WeeklyRange};

/// Milliseconds since the Unix epoch.
pub type UnixMs = u64;

/// The planner with its rows in memory: feed it publishes, acks, presence and context changes, drive its timer
/// with [`Planner::poll_timeout`] / [`Planner::handle_timeout`], and take its decisions with
/// [`Planner::poll_output`].
#[derive(Debug, Default)]
pub struct Planner {
    policy: Policy,
    users: HashMap<String, UserContext>,
    rows: BTreeMap<RowKey, PendingPush>,
    due: BTreeSet<(UnixMs, RowKey)>,
    windows: BTreeMap<(String, String), DigestWindow>,
    out: VecDeque<Outcome>,
}

impl Planner {
    /// An empty planner.
    pub fn new(policy: Policy) -> Self {
        Planner { policy, ..Planner::default() }
    }

    /// A planner that resumes from stored rows (after a restart). Rows already due are acted on at the first
    /// [`Planner::handle_timeout`].
    pub fn restore(
        policy: Policy,
        rows: impl IntoIterator<Item = PendingPush>,
        windows: impl IntoIterator<Item = DigestWindow>,
    ) -> Self {
        let mut planner = Planner::new(policy);
        for row in rows {
            planner.insert(row);
        }
        for w in windows {
            planner.windows.insert((w.user.clone(), w.group.clone()), w);
        }
        planner
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The pending pushes, in key order (what a store would hold).
    pub fn pending(&self) -> impl Iterator<Item = &PendingPush> {
        self.rows.values()
    }

    /// The open digest windows.
    pub fn digest_windows(&self) -> impl Iterator<Item = &DigestWindow> {
        self.windows.values()
    }

    /// The context of `user` (empty when never set: no devices, everything on, no quiet hours).
    pub fn user(&self, user: &str) -> Option<&UserContext> {
        self.users.get(user)
    }

    /// Replaces what is known about `user` (devices, presence, preferences, quiet hours). Pushes held by quiet
    /// hours are decided again at once when the preferences or quiet hours changed, and pushes waiting for an
    /// ack go at once when the user no longer has a live session.
    pub fn set_user(&mut self, now: UnixMs, user: &str, ctx: UserContext) {
        let old = self.users.insert(user.to_owned(), ctx);
        let ctx = &self.users[user];
        let rules_changed =
            old.as_ref().is_none_or(|o| o.preferences != ctx.preferences || o.quiet_hours != ctx.quiet_hours);
        let offline = !ctx.has_live_session();
        self.expedite(now, user, |r| {
            (rules_changed && r.reason == PendingReason::QuietHours)
                || (offline && r.reason == PendingReason::AwaitingAck)
        });
        self.handle_timeout(now);
    }

    /// A device's session opened (`live`) or its last session closed.
    pub fn set_live(&mut self, now: UnixMs, user: &str, device: &str, live: bool) {
        let mut ctx = self.users.get(user).cloned().unwrap_or_default();
        match ctx.devices.iter_mut().find(|d| d.id == device) {
            Some(d) => d.live = live,
            None => ctx.devices.push(Device { id: device.to_owned(), push: None, live }),
        }
        self.set_user(now, user, ctx);
    }

    /// A notification for `n.user`. Returns whether it goes to the user's live sessions (the socket channel);
    /// immediate pushes come out of [`Planner::poll_output`] at once.
    pub fn publish(&mut self, now: UnixMs, n: &NotificationMeta) -> bool {
        let empty = UserContext::default();
        let ctx = self.users.get(&n.user).unwrap_or(&empty);
        let group = n.group.as_ref().unwrap_or(&n.kind);
        let window = self.windows.get(&(n.user.clone(), group.clone()));
        let plan = plan_publish(&self.policy, now, ctx, n, window);
        if let Some(w) = plan.open_window {
            self.windows.insert((w.user.clone(), w.group.clone()), w);
        }
        for row in plan.rows {
            if !self.rows.contains_key(&row.key) {
                self.insert(row);
            }
        }
        self.out.extend(plan.outcomes);
        self.handle_timeout(now);
        plan.socket
    }

    /// `device` of `user` acked `ids`: every pending push of those notifications to the user that an ack
    /// cancels is dropped.
    pub fn ack(&mut self, _now: UnixMs, user: &str, ids: &[&str]) {
        for id in ids {
            let from = RowKey { user: user.to_owned(), notification: (*id).to_owned(), device: String::new() };
            let keys: Vec<RowKey> = self
                .rows
                .range(from..)
                .take_while(|(k, _)| k.user == user && k.notification == *id)
                .filter(|(_, r)| r.cancel_on_ack)
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                self.remove(&key);
                self.out.push_back(Outcome::Cancelled { key, reason: Cancellation::Acked });
            }
        }
    }

    /// When [`Planner::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<UnixMs> {
        let rows = self.due.first().map(|(at, _)| *at);
        let windows = self.windows.values().map(|w| w.closes_at).min();
        rows.into_iter().chain(windows).min()
    }

    /// Acts on everything due at `now`.
    pub fn handle_timeout(&mut self, now: UnixMs) {
        self.windows.retain(|_, w| w.closes_at > now);
        let mut due: BTreeMap<String, Vec<PendingPush>> = BTreeMap::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.due.pop_first() else { break };
            if let Some(row) = self.rows.remove(&key) {
                due.entry(key.user.clone()).or_default().push(row);
            }
        }
        let empty = UserContext::default();
        for (user, rows) in due {
            let ctx = self.users.get(&user).unwrap_or(&empty);
            let plan = plan_due(now, ctx, rows);
            self.out.extend(plan.outcomes);
            self.out.extend(plan.pushes.into_iter().map(Outcome::Push));
            for row in plan.rescheduled {
                self.insert(row);
            }
        }
    }

    /// The next decision.
    pub fn poll_output(&mut self) -> Option<Outcome> {
        self.out.pop_front()
    }

    fn insert(&mut self, row: PendingPush) {
        self.remove(&row.key);
        self.due.insert((row.due_at, row.key.clone()));
        self.rows.insert(row.key.clone(), row);
    }

    fn remove(&mut self, key: &RowKey) {
        if let Some(row) = self.rows.remove(key) {
            self.due.remove(&(row.due_at, row.key));
        }
    }

    /// Makes `user`'s rows that `which` selects due at `now` (at the latest).
    fn expedite(&mut self, now: UnixMs, user: &str, which: impl Fn(&PendingPush) -> bool) {
        let from = RowKey { user: user.to_owned(), notification: String::new(), device: String::new() };
        let rows: Vec<PendingPush> = self
            .rows
            .range(from..)
            .take_while(|(k, _)| k.user == user)
            .filter(|(_, r)| r.due_at > now && which(r))
            .map(|(_, r)| r.clone())
            .collect();
        for mut row in rows {
            row.due_at = now;
            self.insert(row);
        }
    }
}
