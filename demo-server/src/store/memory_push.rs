//! The memory store's push tables: settings, pending pushes, digest windows and the deliveries log, all under one
//! lock (so that cancelling by an ack, claiming and planning are atomic with respect to each other). Nothing
//! survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use super::push::{
    DeliveryRecord, PendingSummary, PlanItem, PushStore, SettingsChange, SettingsError, SettingsStore, Settlement,
    StoredPush, UserSettings, cancelled, plan_log, window_group,
};
use super::{BoxFuture, MemoryStore, StoreError, ready};
use crate::planner::{DigestWindow, PendingReason, Policy, PublishPlan, RowKey, UnixMs, plan_publish};

/// Most log entries kept per notification.
const MAX_LOG_PER_ID: usize = 1000;

struct Row {
    stored: StoredPush,
    claim: u64,
    claimed_until: UnixMs,
}

impl Row {
    /// When the row can next be claimed: when it is due and no claim holds it.
    fn ready_at(&self) -> UnixMs {
        self.stored.row.due_at.max(self.claimed_until)
    }
}

/// Everything push delivery keeps in the memory store.
#[derive(Default)]
pub(crate) struct PushTables {
    settings: HashMap<String, UserSettings>,
    rows: BTreeMap<RowKey, Row>,
    /// `(ready_at, key)` of every row.
    ready: BTreeSet<(UnixMs, RowKey)>,
    /// Rows per user, so that an ack of a user without pending pushes costs one lookup.
    per_user: HashMap<String, usize>,
    windows: HashMap<(String, String), DigestWindow>,
    log: HashMap<String, Vec<DeliveryRecord>>,
    log_order: VecDeque<String>,
    next_claim: u64,
}

impl PushTables {
    fn insert(&mut self, row: Row) {
        let key = row.stored.row.key.clone();
        self.remove(&key);
        *self.per_user.entry(key.user.clone()).or_default() += 1;
        self.ready.insert((row.ready_at(), key.clone()));
        self.rows.insert(key, row);
    }

    fn remove(&mut self, key: &RowKey) -> Option<Row> {
        let row = self.rows.remove(key)?;
        self.ready.remove(&(row.ready_at(), key.clone()));
        if let Some(n) = self.per_user.get_mut(&key.user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&key.user);
            }
        }
        Some(row)
    }

    /// The keys of `user`'s rows (of notification `id` when given).
    fn keys_of(&self, user: &str, id: Option<&str>) -> Vec<RowKey> {
        if !self.per_user.contains_key(user) {
            return Vec::new();
        }
        let from = RowKey { user: user.to_owned(), notification: id.unwrap_or("").to_owned(), device: String::new() };
        self.rows
            .range(from..)
            .take_while(|(k, _)| k.user == user && id.is_none_or(|id| k.notification == id))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn log(&mut self, records: impl IntoIterator<Item = DeliveryRecord>, max_ids: usize) {
        for record in records {
            match self.log.get_mut(&record.id) {
                Some(list) => {
                    if list.len() < MAX_LOG_PER_ID {
                        list.push(record);
                    }
                }
                None => {
                    self.log_order.push_back(record.id.clone());
                    self.log.insert(record.id.clone(), vec![record]);
                    while self.log.len() > max_ids.max(1) {
                        let Some(old) = self.log_order.pop_front() else { break };
                        self.log.remove(&old);
                    }
                }
            }
        }
    }

    /// Deletes `user`'s cancellable rows of `ids`; returns their keys.
    pub(crate) fn cancel(&mut self, user: &str, ids: &[String], now: UnixMs, max_ids: usize) -> Vec<RowKey> {
        if !self.per_user.contains_key(user) {
            return Vec::new();
        }
        let mut gone = Vec::new();
        for id in ids {
            for key in self.keys_of(user, Some(id)) {
                if self.rows.get(&key).is_some_and(|r| r.stored.row.cancel_on_ack) {
                    self.remove(&key);
                    gone.push(key);
                }
            }
        }
        let log: Vec<DeliveryRecord> = gone.iter().map(|k| cancelled(k, now)).collect();
        self.log(log, max_ids);
        gone
    }
}

impl MemoryStore {
    fn plan_now(&self, policy: &Policy, now: UnixMs, items: Vec<PlanItem>) -> Vec<PublishPlan> {
        let mut t = self.push_tables();
        t.windows.retain(|_, w| w.closes_at > now);
        let mut plans = Vec::with_capacity(items.len());
        for item in items {
            let window_key = (item.meta.user.clone(), window_group(&item.meta).to_owned());
            let plan = plan_publish(policy, now, &item.context, &item.meta, t.windows.get(&window_key));
            if let Some(w) = &plan.open_window {
                t.windows.insert((w.user.clone(), w.group.clone()), w.clone());
            }
            for row in &plan.rows {
                if !t.rows.contains_key(&row.key) {
                    let stored = StoredPush { row: row.clone(), envelope: item.envelope.clone(), attempts: 0 };
                    t.insert(Row { stored, claim: 0, claimed_until: 0 });
                }
            }
            t.log(plan_log(&plan, now), self.limits.acks_max_ids);
            plans.push(plan);
        }
        plans
    }

    fn claim_now(&self, now: UnixMs, lease: Duration, max_users: usize) -> (u64, Vec<StoredPush>) {
        let mut t = self.push_tables();
        t.next_claim += 1;
        let claim = t.next_claim;
        let mut users: Vec<String> = Vec::new();
        for (ready_at, key) in &t.ready {
            if *ready_at > now || users.len() >= max_users {
                break;
            }
            if !users.contains(&key.user) {
                users.push(key.user.clone());
            }
        }
        users.sort();
        let until = now.saturating_add(lease.as_millis() as u64);
        let mut out = Vec::new();
        for user in users {
            for key in t.keys_of(&user, None) {
                let ready = t.rows.get(&key).is_some_and(|r| r.ready_at() <= now);
                if !ready {
                    continue;
                }
                let Some(mut row) = t.remove(&key) else { continue };
                row.claim = claim;
                row.claimed_until = until;
                out.push(row.stored.clone());
                t.insert(row);
            }
        }
        (claim, out)
    }

    fn settle_now(&self, s: Settlement) {
        let mut t = self.push_tables();
        for key in &s.delete {
            if t.rows.get(key).is_some_and(|r| r.claim == s.claim) {
                t.remove(key);
            }
        }
        for (key, due_at, reason, attempts) in s.reschedule {
            if t.rows.get(&key).is_none_or(|r| r.claim != s.claim) {
                continue;
            }
            if let Some(mut row) = t.remove(&key) {
                row.stored.row.due_at = due_at;
                row.stored.row.reason = reason;
                row.stored.attempts = attempts;
                row.claim = 0;
                row.claimed_until = 0;
                t.insert(row);
            }
        }
        t.log(s.log, self.limits.acks_max_ids);
    }

    fn expedite_now(&self, user: &str, reason: PendingReason, now: UnixMs) -> usize {
        let mut t = self.push_tables();
        let mut moved = 0;
        for key in t.keys_of(user, None) {
            let hit = t.rows.get(&key).is_some_and(|r| r.stored.row.reason == reason && r.stored.row.due_at > now);
            if hit && let Some(mut row) = t.remove(&key) {
                row.stored.row.due_at = now;
                t.insert(row);
                moved += 1;
            }
        }
        moved
    }
}

impl SettingsStore for MemoryStore {
    fn settings<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<UserSettings, StoreError>> {
        ready(Ok(self.push_tables().settings.get(user).cloned().unwrap_or_default()))
    }

    fn update_settings<'a>(
        &'a self,
        user: &'a str,
        change: SettingsChange,
        at: UnixMs,
    ) -> BoxFuture<'a, Result<UserSettings, SettingsError>> {
        let mut t = self.push_tables();
        let mut settings = t.settings.get(user).cloned().unwrap_or_default();
        let result = match settings.apply(change, at) {
            Ok(()) => {
                t.settings.insert(user.to_owned(), settings.clone());
                Ok(settings)
            }
            Err(e) => Err(SettingsError::Invalid(e)),
        };
        ready(result)
    }
}

impl PushStore for MemoryStore {
    fn plan<'a>(
        &'a self,
        policy: &'a Policy,
        now: UnixMs,
        items: Vec<PlanItem>,
    ) -> BoxFuture<'a, Result<Vec<PublishPlan>, StoreError>> {
        ready(Ok(self.plan_now(policy, now, items)))
    }

    fn pending_summary(&self, now: UnixMs) -> BoxFuture<'_, Result<PendingSummary, StoreError>> {
        let tables = self.push_tables();
        let rows = tables.rows.values().map(|r| (r.stored.row.reason, r.stored.row.due_at));
        ready(Ok(PendingSummary::of(rows, now)))
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<UnixMs>, StoreError>> {
        ready(Ok(self.push_tables().ready.first().map(|(at, _)| *at)))
    }

    fn claim_due(
        &self,
        now: UnixMs,
        lease: Duration,
        max_users: usize,
    ) -> BoxFuture<'_, Result<(u64, Vec<StoredPush>), StoreError>> {
        ready(Ok(self.claim_now(now, lease, max_users)))
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<(), StoreError>> {
        self.settle_now(settlement);
        ready(Ok(()))
    }

    fn expedite<'a>(
        &'a self,
        user: &'a str,
        reason: PendingReason,
        now: UnixMs,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        ready(Ok(self.expedite_now(user, reason, now)))
    }

    fn deliveries<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<DeliveryRecord>, StoreError>> {
        ready(Ok(self.push_tables().log.get(id).cloned().unwrap_or_default()))
    }
}
