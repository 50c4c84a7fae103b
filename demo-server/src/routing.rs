//! Push routing: the delivery planner ([`crate::planner`]) joined to the node — after a publish commits, before
//! live delivery (socket preferences), on acks, on presence changes and settings changes — and the timer worker
//! that sends what is due through the push [`Dispatcher`].
//!
//! - **Publish.** Before the broker commits a notification, each user recipient whose preferences turn the
//!   socket channel off for it is taken out of its streams (it is neither delivered live nor replayed to them).
//!   After the commit, each user recipient with a push address is planned ([`PushStore::plan`]): the planner's
//!   rows and digest windows are written in one commit, with the envelope the push will carry. The publish is
//!   answered after that commit, so a `2xx` means its pushes are scheduled.
//! - **Acks** cancel pending pushes in the commit that records them ([`crate::store::AckStore::record`]).
//! - **Presence.** When a user's last session ends, their pushes waiting for an ack go at once. A device is "live"
//!   while it has an authenticated session in this process.
//! - **Settings.** A change of preferences or quiet hours decides the user's held pushes again at once.
//! - **The worker** (one task per process) sleeps until the earliest row is due (woken early when an earlier one
//!   is written), claims what is due, decides each user's due rows with [`plan_due`] (so digests and quiet-hours
//!   summaries collapse into one push), sends through the [`Dispatcher`] and settles the rows: deleted once sent
//!   or dropped, rescheduled on "try again later" (at the provider's `Retry-After`), the address deleted when the
//!   provider says the device is gone (if it is still the token that was pushed to).
//!
//! What each user's planning needs — push addresses and settings — is cached in a [`Directory`] that this
//! process invalidates when it changes them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tidings_core::protocol::{
    Notification, NotificationFields, Persistence, PushPlatform, decode_notification, encode_notification,
};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::WallClock;
use crate::metrics::Transport;
use crate::model::{Delivery as StreamDelivery, Publication, PushRecord};
use crate::node::Node;
use crate::planner::{
    Channel, Device, NotificationMeta, Overrides, PendingReason, Policy, PushOrder, PushTarget, QuietHours, RowKey,
    UserContext, plan_due,
};
use crate::push::{Delivery, Dispatcher, Provider, PushAddress, message_for};
use crate::store::push::outcomes_log;
use crate::store::{
    DeliveryRecord, DeliveryStatus, PlanItem, SettingsChange, SettingsError, Settlement, StoreError, StoredPush,
    UserSettings,
};

/// How long a claim on due pushes lasts: longer than any send (the dispatcher waits at most a minute in place).
const LEASE: Duration = Duration::from_secs(10 * 60);
/// Users whose due pushes are sent at once.
const MAX_CONCURRENT_USERS: usize = 64;
/// The longest the worker sleeps without looking at the store (other processes may write rows, issue 15).
const IDLE: Duration = Duration::from_secs(30);
/// Users whose addresses and settings are cached.
const MAX_CACHED_USERS: usize = 100_000;

/// What planning needs to know about a user.
#[derive(Debug, Default)]
pub(crate) struct UserInfo {
    /// Push addresses, oldest registration first.
    pub(crate) addresses: Vec<PushRecord>,
    /// Preferences and quiet hours, as stored.
    pub(crate) settings: UserSettings,
    /// The quiet hours, ready to evaluate (`None` also when the stored ones no longer parse).
    pub(crate) quiet: Option<QuietHours>,
}

/// A cache of [`UserInfo`]s. A load that raced with an invalidation is not kept.
#[derive(Default)]
struct Directory {
    users: std::sync::Mutex<Cached>,
    generation: AtomicU64,
}

/// The cached users, and the order they were cached in (the oldest are dropped first).
type Cached = (foldhash::HashMap<String, Arc<UserInfo>>, VecDeque<String>);

impl Directory {
    fn get(&self, user: &str) -> Option<Arc<UserInfo>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner()).0.get(user).cloned()
    }

    fn put(&self, user: &str, info: Arc<UserInfo>, generation: u64) {
        let mut guard = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let (map, order) = &mut *guard;
        if map.insert(user.to_owned(), info).is_none() {
            order.push_back(user.to_owned());
        }
        while map.len() > MAX_CACHED_USERS {
            let Some(old) = order.pop_front() else { break };
            map.remove(&old);
        }
    }

    fn invalidate(&self, user: &str) {
        let mut guard = self.users.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        guard.0.remove(user);
    }
}

/// Push routing state of a node.
pub(crate) struct Routing {
    pub(crate) policy: Policy,
    pub(crate) dispatcher: Option<Arc<Dispatcher>>,
    pub(crate) clock: WallClock,
    max_reschedules: u32,
    directory: Directory,
    wake: Notify,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Routing {
    pub(crate) fn new(config: &crate::ServerConfig, metrics: &crate::metrics::Metrics) -> Self {
        let dispatcher = match config.push.load(config.vapid_public_key.as_deref()) {
            Ok(credentials)
                if credentials.vapid.is_some() || credentials.apns.is_some() || credentials.fcm.is_some() =>
            {
                let clock = Arc::new(crate::push::http::SystemClock);
                let dispatcher = Dispatcher::from_credentials(credentials, config.push_retry, clock);
                Some(Arc::new(dispatcher.with_metrics(metrics.push.clone())))
            }
            Ok(_) => None,
            Err(e) => {
                // `ServerConfig::validate` refuses this before a node is built.
                warn!(error = %e, "push providers not configured");
                None
            }
        };
        Routing {
            policy: config.push_policy.clone(),
            dispatcher,
            clock: config.clock.clone(),
            max_reschedules: config.push_max_reschedules,
            directory: Directory::default(),
            wake: Notify::new(),
            stop: watch::Sender::new(false),
        }
    }

    /// Whether pushes to `platform` can be sent.
    fn configured(&self, platform: PushPlatform) -> bool {
        let Some(d) = &self.dispatcher else { return false };
        match Provider::of(platform) {
            Provider::WebPush => d.web_push().is_some(),
            Provider::Apns => d.apns().is_some(),
            Provider::Fcm => d.fcm().is_some(),
        }
    }

    /// Wakes the worker (rows were written or moved).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Asks the worker to stop.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// What the pipeline keeps of one request for routing.
#[derive(Debug)]
pub(crate) struct Recipients {
    /// The user recipients, without duplicates.
    pub(crate) users: Vec<String>,
    /// The first topic, for topic preferences.
    pub(crate) topic: Option<String>,
    /// The publisher's push options.
    pub(crate) overrides: Overrides,
}

impl Node {
    /// What planning needs to know about `user` (cached).
    pub(crate) async fn user_info(&self, user: &str) -> Result<Arc<UserInfo>, StoreError> {
        let directory = &self.routing.directory;
        if let Some(info) = directory.get(user) {
            return Ok(info);
        }
        let generation = directory.generation.load(Ordering::SeqCst);
        let (addresses, settings) =
            tokio::try_join!(self.stores.devices.push_addresses(user), self.stores.settings.settings(user))?;
        let quiet = settings.quiet_hours.as_ref().and_then(|spec| match QuietHours::from_spec(spec) {
            Ok(q) => Some(q),
            Err(e) => {
                warn!(user, error = %e, "stored quiet hours no longer parse; ignored");
                None
            }
        });
        let info = Arc::new(UserInfo { addresses, settings, quiet });
        directory.put(user, info.clone(), generation);
        Ok(info)
    }

    /// Forgets what is cached about `user` (their addresses or settings changed).
    pub(crate) fn forget_user(&self, user: &str) {
        self.routing.directory.invalidate(user);
    }

    /// The planner's view of `user`: devices with a push address this server can reach, and every device with a
    /// live session here.
    async fn user_context(&self, user: &str, info: &UserInfo) -> UserContext {
        let live: HashSet<String> = self.live_devices(user).await;
        let mut devices: Vec<Device> = info
            .addresses
            .iter()
            .filter(|a| self.routing.configured(a.platform))
            .map(|a| Device {
                id: a.device.to_string(),
                push: Some(PushTarget { platform: a.platform, registered_at: a.registered_at }),
                live: live.contains(&*a.device),
            })
            .collect();
        for device in live {
            if !devices.iter().any(|d| d.id == device) {
                devices.push(Device { id: device, push: None, live: true });
            }
        }
        UserContext { devices, preferences: info.settings.preferences.clone(), quiet_hours: info.quiet.clone() }
    }

    /// Takes the users whose socket channel is off for `publication` out of its streams; returns them.
    pub(crate) async fn apply_socket_preferences(
        &self,
        publication: &mut Publication,
        users: &[String],
        topic: Option<&str>,
    ) -> Vec<String> {
        // The users' settings come from the directory: after the first publish to a user, no store read.
        let mut off = Vec::new();
        for user in users {
            let info = match self.user_info(user).await {
                Ok(info) => info,
                Err(e) => {
                    // Delivering is the safe side: preferences that cannot be read deny nothing.
                    warn!(user, error = %e, "preferences could not be read; the notification is delivered");
                    continue;
                }
            };
            let f = &publication.fields;
            if !info.settings.preferences.allows(Channel::Socket, f.priority, &f.kind, topic) {
                off.push(user.clone());
            }
        }
        if !off.is_empty() {
            publication.streams.retain(|s| !s.strip_prefix("user:").is_some_and(|u| off.iter().any(|o| o == u)));
        }
        off
    }

    /// Plans the pushes of committed publications (their deliveries as committed), in one store commit.
    pub(crate) async fn plan_pushes(&self, committed: Vec<(Arc<Publication>, Vec<StreamDelivery>, Recipients)>) {
        if self.routing.dispatcher.is_none() {
            return;
        }
        let now = self.routing.clock.now_ms();
        let mut items = Vec::new();
        for (publication, deliveries, recipients) in committed {
            if publication.persistence() == Persistence::Ephemeral {
                continue;
            }
            for user in &recipients.users {
                let info = match self.user_info(user).await {
                    Ok(info) => info,
                    Err(e) => {
                        warn!(user, id = %publication.id, error = %e, "push addresses could not be read; not pushed");
                        continue;
                    }
                };
                if !info.addresses.iter().any(|a| self.routing.configured(a.platform)) {
                    continue;
                }
                let stream = format!("user:{user}");
                let envelope = match deliveries.iter().find(|d| d.stream == stream) {
                    Some(d) => envelope(&publication, &stream, &d.epoch, d.offset),
                    None => {
                        // Not in the user's stream (their socket channel is off for it): pushed as what it is for
                        // them, a notification with no place in the stream.
                        let epoch = deliveries.first().map(|d| d.epoch.clone()).unwrap_or_else(|| "-".into());
                        envelope_ephemeral(&publication, &stream, &epoch)
                    }
                };
                let f = &publication.fields;
                let meta = NotificationMeta {
                    id: publication.id.to_string(),
                    user: user.clone(),
                    priority: f.priority,
                    persistence: f.persistence,
                    kind: f.kind.clone(),
                    topic: recipients.topic.clone(),
                    group: f.group.clone(),
                    title: f.title.clone(),
                    created_at: f.created_at,
                    overrides: recipients.overrides.clone(),
                };
                items.push(PlanItem { context: self.user_context(user, &info).await, meta, envelope });
            }
        }
        if items.is_empty() {
            return;
        }
        match self.stores.push.plan(&self.routing.policy, now, items).await {
            Ok(plans) => {
                for outcome in plans.iter().flat_map(|p| &p.outcomes) {
                    self.metrics.push.planner_outcome(outcome);
                }
                if plans.iter().any(|p| !p.rows.is_empty()) {
                    self.routing.wake();
                }
            }
            Err(e) => warn!(error = %e, "pushes could not be scheduled"),
        }
    }

    /// A user's last session in this process ended: their pushes waiting for an ack go at once.
    pub(crate) async fn user_went_offline(&self, user: &str) {
        let now = self.routing.clock.now_ms();
        match self.stores.push.expedite(user, PendingReason::AwaitingAck, now).await {
            Ok(0) => {}
            Ok(n) => {
                debug!(user, pushes = n, "last session ended: pushes waiting for an ack go now");
                self.routing.wake();
            }
            Err(e) => warn!(user, error = %e, "pending pushes could not be moved"),
        }
    }

    /// Changes `user`'s settings; held pushes are decided again at once.
    pub(crate) async fn update_settings(
        &self,
        user: &str,
        change: SettingsChange,
    ) -> Result<UserSettings, SettingsError> {
        let now = self.routing.clock.now_ms();
        let result = self.stores.settings.update_settings(user, change, now).await;
        self.forget_user(user);
        if result.is_ok() {
            match self.stores.push.expedite(user, PendingReason::QuietHours, now).await {
                Ok(0) => {}
                Ok(_) => self.routing.wake(),
                Err(e) => warn!(user, error = %e, "held pushes could not be decided again"),
            }
        }
        result
    }
}

/// The envelope of `publication` as placed in `stream`.
fn envelope(publication: &Publication, stream: &str, epoch: &str, offset: Option<u64>) -> String {
    let mut fields: NotificationFields = publication.fields.clone();
    stream.clone_into(&mut fields.stream);
    epoch.clone_into(&mut fields.epoch);
    fields.offset = offset;
    encode_notification(&Notification::from(fields))
}

/// The envelope of a notification that has no place in `stream`: no offset, `ephemeral`.
fn envelope_ephemeral(publication: &Publication, stream: &str, epoch: &str) -> String {
    let mut fields: NotificationFields = publication.fields.clone();
    fields.persistence = Persistence::Ephemeral;
    stream.clone_into(&mut fields.stream);
    epoch.clone_into(&mut fields.epoch);
    fields.offset = None;
    encode_notification(&Notification::from(fields))
}

/// The worker: sleeps until something is due, claims it, sends it. Ends when [`Routing::stop`] is called, after
/// the sends in flight (rows whose send did not finish stay claimed; the next run sends them).
pub(crate) async fn run_worker(node: Arc<Node>) {
    let Some(dispatcher) = node.routing.dispatcher.clone() else { return };
    let mut stop = node.routing.stop.subscribe();
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_USERS));
    let mut tasks = JoinSet::new();
    info!("push worker started");
    while !*stop.borrow() {
        while tasks.try_join_next().is_some() {}
        let now = node.routing.clock.now_ms();
        let next = match node.stores.push.next_due().await {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "pending pushes could not be read; trying again in a second");
                Some(now + 1000)
            }
        };
        let wait = match next {
            Some(at) if at <= now => None,
            Some(at) => Some(Duration::from_millis(at - now).min(IDLE)),
            None => Some(IDLE),
        };
        if let Some(wait) = wait {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = node.routing.wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let free = permits.available_permits();
        if free == 0 {
            tasks.join_next().await;
            continue;
        }
        let (claim, rows) = match node.stores.push.claim_due(now, LEASE, free).await {
            Ok(claimed) => claimed,
            Err(e) => {
                warn!(error = %e, "due pushes could not be claimed; trying again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut by_user: Vec<(String, Vec<StoredPush>)> = Vec::new();
        for row in rows {
            match by_user.last_mut() {
                Some((user, list)) if *user == row.row.key.user => list.push(row),
                _ => by_user.push((row.row.key.user.clone(), vec![row])),
            }
        }
        for (user, rows) in by_user {
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let (node, dispatcher) = (node.clone(), dispatcher.clone());
            tasks.spawn(async move {
                node.send_due(&dispatcher, claim, &user, rows).await;
                drop(permit);
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    info!("push worker stopped");
}

impl Node {
    /// Decides and sends `user`'s claimed due rows, then settles them.
    async fn send_due(&self, dispatcher: &Dispatcher, claim: u64, user: &str, rows: Vec<StoredPush>) {
        let now = self.routing.clock.now_ms();
        let mut s = Settlement::new(claim);
        let info = match self.user_info(user).await {
            Ok(info) => info,
            Err(e) => {
                warn!(user, error = %e, "push addresses could not be read; due pushes retried in 5 s");
                s.reschedule = rows.iter().map(|r| (r.row.key.clone(), now + 5000, r.row.reason, r.attempts)).collect();
                self.settle(s).await;
                return;
            }
        };
        let ctx = self.user_context(user, &info).await;
        let stored: HashMap<RowKey, StoredPush> = rows.into_iter().map(|r| (r.row.key.clone(), r)).collect();
        let plan = plan_due(now, &ctx, stored.values().map(|r| r.row.clone()).collect());
        for outcome in &plan.outcomes {
            self.metrics.push.due_outcome(outcome);
        }
        s.log.extend(outcomes_log(&plan.outcomes, now));
        let mut settled: HashSet<RowKey> = HashSet::new();
        for row in &plan.rescheduled {
            let attempts = stored.get(&row.key).map_or(0, |r| r.attempts);
            s.reschedule.push((row.key.clone(), row.due_at, row.reason, attempts));
            settled.insert(row.key.clone());
        }
        let badge = match &self.stores.badges {
            Some(source) if !plan.pushes.is_empty() => source.badge(user).await.unwrap_or_else(|e| {
                warn!(user, error = %e, "badge count could not be read; pushes carry none");
                None
            }),
            _ => None,
        };
        for order in &plan.pushes {
            let keys: Vec<RowKey> = order
                .content
                .ids()
                .into_iter()
                .map(|id| RowKey { user: user.to_owned(), notification: id.to_owned(), device: order.device.clone() })
                .collect();
            settled.extend(keys.iter().cloned());
            self.send_one(dispatcher, &info, &stored, order, &keys, badge, now, &mut s).await;
        }
        // Everything else was dropped by the decision (its reason is in the log): delete it.
        s.delete.extend(stored.into_keys().filter(|k| !settled.contains(k)));
        self.settle(s).await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_one(
        &self,
        dispatcher: &Dispatcher,
        info: &UserInfo,
        stored: &HashMap<RowKey, StoredPush>,
        order: &PushOrder,
        keys: &[RowKey],
        badge: Option<u32>,
        now: u64,
        s: &mut Settlement,
    ) {
        let record = |status: DeliveryStatus, reason: Option<String>, provider: Option<&str>, form: Option<&str>| {
            keys.iter()
                .map(|k| DeliveryRecord {
                    id: k.notification.clone(),
                    user: k.user.clone(),
                    device: Some(k.device.clone()),
                    channel: Channel::Push,
                    status,
                    reason: reason.clone(),
                    provider: provider.map(str::to_owned),
                    form: form.map(str::to_owned),
                    due_at: None,
                    at: now,
                })
                .collect::<Vec<_>>()
        };
        let Some(address) = info.addresses.iter().find(|a| *a.device == order.device) else {
            s.log.extend(record(DeliveryStatus::Failed, Some("no push address".into()), None, None));
            self.metrics.push.cancelled("no_push_address", keys.len() as u64);
            s.delete.extend(keys.iter().cloned());
            return;
        };
        let provider = Provider::of(address.platform).as_str();
        let single = match &order.content {
            crate::planner::PushContent::Single { id } => keys
                .iter()
                .find(|k| k.notification == *id)
                .and_then(|k| stored.get(k))
                .and_then(|r| decode_notification(&r.envelope).ok()),
            _ => None,
        };
        let Some(msg) = message_for(order, single, badge) else {
            s.log.extend(record(DeliveryStatus::Failed, Some("the notification is gone".into()), None, None));
            self.metrics.push.cancelled("notification_gone", keys.len() as u64);
            s.delete.extend(keys.iter().cloned());
            return;
        };
        let target =
            PushAddress { platform: address.platform, token: &address.token, registered_at: address.registered_at };
        let delivery = dispatcher.deliver(&target, &msg).await;
        let now = self.routing.clock.now_ms();
        match delivery {
            Delivery::Accepted { form, attempts, .. } => {
                let form = match form {
                    crate::push::Form::Full => "full",
                    crate::push::Form::Lightweight => "lightweight",
                    crate::push::Form::Summary => "summary",
                };
                debug!(user = %order.user, device = %order.device, provider, form, attempts, ids = keys.len(), "pushed");
                self.metrics.delivered(Transport::Push, "pushed", keys.len() as u64);
                let mut records = record(DeliveryStatus::Pushed, None, Some(provider), Some(form));
                records.iter_mut().for_each(|r| r.at = now);
                s.log.extend(records);
                s.delete.extend(keys.iter().cloned());
            }
            Delivery::RetryLater { after, reason } => {
                let attempts = keys.iter().filter_map(|k| stored.get(k)).map(|r| r.attempts).max().unwrap_or(0) + 1;
                if attempts > self.routing.max_reschedules {
                    let reason = format!("gave up after {attempts} attempts: {reason}");
                    s.log.extend(record(DeliveryStatus::Failed, Some(reason), Some(provider), None));
                    s.delete.extend(keys.iter().cloned());
                    self.metrics.push.cancelled("retries_exhausted", keys.len() as u64);
                    self.metrics.delivered(Transport::Push, "failed", keys.len() as u64);
                    return;
                }
                let due = now.saturating_add(after.as_millis() as u64);
                for k in keys {
                    let reason = stored.get(k).map_or(PendingReason::Immediate, |r| r.row.reason);
                    s.reschedule.push((k.clone(), due, reason, attempts));
                }
                let mut records =
                    record(DeliveryStatus::Scheduled, Some(format!("retry: {reason}")), Some(provider), None);
                records.iter_mut().for_each(|r| r.due_at = Some(due));
                s.log.extend(records);
            }
            Delivery::DeleteAddress { reason } => {
                match self.stores.devices.delete_push(&order.user, &order.device, &address.token).await {
                    Ok(deleted) => {
                        info!(user = %order.user, device = %order.device, provider, %reason, deleted, "push address gone")
                    }
                    Err(e) => warn!(user = %order.user, error = %e, "a gone push address could not be deleted"),
                }
                self.forget_user(&order.user);
                self.metrics.delivered(Transport::Push, "failed", keys.len() as u64);
                let reason = format!("device gone (address deleted): {reason}");
                s.log.extend(record(DeliveryStatus::Failed, Some(reason), Some(provider), None));
                s.delete.extend(keys.iter().cloned());
            }
            other => {
                let reason = match other {
                    Delivery::KeepAddress { reason }
                    | Delivery::PayloadRejected { reason }
                    | Delivery::Rejected { reason }
                    | Delivery::ProviderStopped { reason, .. } => reason,
                    Delivery::NotConfigured { provider } => format!("{} is not configured", provider.as_str()),
                    _ => String::new(),
                };
                warn!(user = %order.user, device = %order.device, provider, %reason, "push not delivered");
                self.metrics.delivered(Transport::Push, "failed", keys.len() as u64);
                s.log.extend(record(DeliveryStatus::Failed, Some(reason), Some(provider), None));
                s.delete.extend(keys.iter().cloned());
            }
        }
    }

    async fn settle(&self, s: Settlement) {
        if s.is_empty() {
            return;
        }
        let rescheduled = !s.reschedule.is_empty();
        match self.stores.push.settle(s).await {
            // The worker may be asleep until a lease ends: the rescheduled rows may be due sooner.
            Ok(()) if rescheduled => self.routing.wake(),
            Ok(()) => {}
            // The rows stay claimed until the lease ends, then they are sent again (at least once).
            Err(e) => warn!(error = %e, "sent pushes could not be settled; they are retried when their claim ends"),
        }
    }
}
