//! The planner's inputs, its rows (the state a store keeps) and its outputs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings_core::protocol::{Persistence, Priority, PushPlatform};

use super::{Channel, Preferences, QuietHours, UnixMs};

/// What the planner needs to know about a notification for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationMeta {
    /// The notification id (the same on the socket, in replay and in every push).
    pub id: String,
    /// The recipient.
    pub user: String,
    /// Delivery tier.
    pub priority: Priority,
    /// Retention class: `ephemeral` notifications are never pushed (protocol §3).
    pub persistence: Persistence,
    /// `type`.
    pub kind: String,
    /// The topic it was published to, when the user receives it through a topic (for topic preferences).
    pub topic: Option<String>,
    /// Batching key; digests of informational notifications are per group (the `type` when absent).
    pub group: Option<String>,
    /// Title, kept with pending pushes for summaries.
    pub title: Option<String>,
    /// When the server accepted the publish (ms since the Unix epoch).
    pub created_at: UnixMs,
    /// The publisher's overrides.
    pub overrides: Overrides,
}

/// What a publisher may change per publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overrides {
    /// How long to wait for an ack before pushing an `important` notification to a user with a live session;
    /// `None`: the policy's default.
    pub push_after: Option<Duration>,
    /// Push even during the user's quiet hours (2FA codes, security alerts).
    pub bypass_quiet_hours: bool,
    /// `false`: an `informational` notification gets no digest push at all.
    pub digest: bool,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides { push_after: None, bypass_quiet_hours: false, digest: true }
    }
}

/// Where a device can be pushed to (the token itself stays with the sender).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushTarget {
    /// The push service.
    pub platform: PushPlatform,
    /// When the address was registered (ms since the Unix epoch).
    pub registered_at: UnixMs,
}

/// One of the user's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The device id (from the client's `auth` frame).
    pub id: String,
    /// Its push address, if it registered one.
    pub push: Option<PushTarget>,
    /// Whether it has a live (authenticated) session now.
    pub live: bool,
}

/// Everything about the recipient that the decisions depend on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserContext {
    /// The user's devices.
    pub devices: Vec<Device>,
    /// The user's preferences.
    pub preferences: Preferences,
    /// The user's quiet hours.
    pub quiet_hours: Option<QuietHours>,
}

impl UserContext {
    /// Whether any device has a live session.
    pub fn has_live_session(&self) -> bool {
        self.devices.iter().any(|d| d.live)
    }

    /// The devices with a push address.
    pub fn push_devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(|d| d.push.is_some())
    }

    /// The device `id`.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == id)
    }
}

/// Why a push is pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingReason {
    /// To be sent now (the row makes an immediate push durable until the provider accepts it).
    Immediate,
    /// Waiting `push_after` for an ack from any of the user's devices.
    AwaitingAck,
    /// Collected into the digest of its group, sent when the digest window closes.
    Digest,
    /// Held during quiet hours, sent when they end (non-critical rows collapse into one summary).
    QuietHours,
}

impl PendingReason {
    /// The row value.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingReason::Immediate => "immediate",
            PendingReason::AwaitingAck => "awaiting_ack",
            PendingReason::Digest => "digest",
            PendingReason::QuietHours => "quiet_hours",
        }
    }
}

/// The key of a pending push: one per notification, user and device. (A device id is the user's: two users
/// signed in on one browser share a device id, so the user is part of the key.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RowKey {
    /// The recipient.
    pub user: String,
    /// The notification id.
    pub notification: String,
    /// The device.
    pub device: String,
}

/// A pending push: the durable row (`pending_push`, primary key [`RowKey`], indexed by `due_at`, and by
/// `(user, notification)` for cancellation by acks). Everything needed to decide again when it is due is in
/// the row, so a restarted server sends it once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPush {
    /// Primary key.
    #[serde(flatten)]
    pub key: RowKey,
    /// When to act (ms since the Unix epoch).
    pub due_at: UnixMs,
    /// Why it waits.
    pub reason: PendingReason,
    /// Whether an ack from any of the user's devices deletes it (false for `critical`, which goes to every
    /// device whatever was seen where).
    pub cancel_on_ack: bool,
    /// Whether quiet hours are bypassed (publisher override).
    pub bypass_quiet_hours: bool,
    /// Delivery tier (its wire name in the row).
    #[serde(with = "priority_name")]
    pub priority: Priority,
    /// `type`, for preferences evaluated again when due.
    pub kind: String,
    /// The topic, for topic preferences.
    pub topic: Option<String>,
    /// The digest group (digest rows and digest rows held by quiet hours).
    pub group: Option<String>,
    /// Title, for summaries.
    pub title: Option<String>,
    /// When the notification was published (ms); summaries list the newest first.
    pub created_at: UnixMs,
}

/// An open digest window (`digest_window`, primary key `(user, group)`): informational notifications of the
/// group that arrive before `closes_at` share one digest push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestWindow {
    /// The recipient.
    pub user: String,
    /// The group.
    pub group: String,
    /// When the first notification of the window arrived.
    pub opened_at: UnixMs,
    /// When the digest is due.
    pub closes_at: UnixMs,
}

/// What one push carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushContent {
    /// One notification, in full (or lightweight when too large; the payload builder decides).
    Single {
        /// The notification.
        id: String,
    },
    /// Several informational notifications of one group, collected over a digest window.
    Digest {
        /// The group.
        group: String,
        /// The ids, newest first.
        ids: Vec<String>,
        /// The newest one's title.
        title: Option<String>,
    },
    /// What was held during quiet hours, collapsed into one push when they ended.
    QuietHoursSummary {
        /// The ids, newest first.
        ids: Vec<String>,
        /// The newest one's title.
        title: Option<String>,
    },
}

impl PushContent {
    /// The notification ids this push covers.
    pub fn ids(&self) -> Vec<&str> {
        match self {
            PushContent::Single { id } => vec![id.as_str()],
            PushContent::Digest { ids, .. } | PushContent::QuietHoursSummary { ids, .. } => {
                ids.iter().map(String::as_str).collect()
            }
        }
    }
}

/// A push to send now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushOrder {
    /// The recipient.
    pub user: String,
    /// The device.
    pub device: String,
    /// What it carries.
    pub content: PushContent,
    /// The highest priority among what it carries (maps to APNs priority / interruption level, FCM priority,
    /// Web Push urgency).
    pub priority: Priority,
}

/// Why nothing is pushed (or shown live).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suppression {
    /// The user turned this channel off for the notification's type or topic.
    Preference,
    /// `ephemeral` notifications are live only.
    Ephemeral,
    /// `informational` notifications are live only while the user has a live session.
    LiveOnly,
    /// The publisher turned digests off for this notification.
    DigestOff,
    /// The device (or every device of the user) has no push address.
    NoPushAddress,
}

/// Why a pending push was dropped before it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancellation {
    /// A device of the user acked the notification.
    Acked,
}

/// What the planner decided, for the deliveries log (`GET /v1/notifications/{id}/deliveries`, phase 2) and
/// for tests. Pushes themselves come as [`Outcome::Push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this push now.
    Push(PushOrder),
    /// A push was scheduled (or moved: a pending push due during quiet hours is held until they end).
    Scheduled {
        /// The row's key.
        key: RowKey,
        /// When.
        due_at: UnixMs,
        /// Why.
        reason: PendingReason,
    },
    /// Nothing goes on `channel` for this notification (for one device, or for the user when `device` is
    /// `None`).
    Suppressed {
        /// The notification.
        id: String,
        /// The recipient.
        user: String,
        /// The device, when the decision is about one.
        device: Option<String>,
        /// The channel.
        channel: Channel,
        /// Why.
        reason: Suppression,
    },
    /// A pending push was dropped.
    Cancelled {
        /// The row's key.
        key: RowKey,
        /// Why.
        reason: Cancellation,
    },
}

/// A [`Priority`] as its wire name in rows.
mod priority_name {
    use serde::{Deserialize as _, Deserializer, Serializer};
    use tidings_core::protocol::Priority;

    pub(super) fn serialize<S: Serializer>(p: &Priority, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Priority, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        Priority::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown priority `{name}`")))
    }
}
