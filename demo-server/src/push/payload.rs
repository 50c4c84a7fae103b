//! The push payload (protocol §11): one format for APNs, FCM and Web Push, carrying the same envelope (§3) the
//! socket carries, under the key `tidings` — what the client's `decode_push_payload` reads.
//!
//! | form | when | APNs (custom key) | FCM `data` (string values) | Web Push body |
//! |---|---|---|---|---|
//! | full | fits the provider's limit | `"tidings": {envelope}` | `"tidings": "{envelope}"` | `{"tidings": {envelope}}` |
//! | lightweight | too large | `"tidings_fetch": {"id","title"}` | `"tidings_fetch": "{…}"` | `{"tidings_fetch": {…}}` |
//! | summary | digests, quiet-hours summaries | `"tidings_summary": {…}` | `"tidings_summary": "{…}"` | `{"tidings_summary": {…}}` |
//!
//! APNs payloads also carry `aps` (an alert from the title and body, `badge` when the caller gives one,
//! `mutable-content: 1` so a Notification Service Extension can dedup, `interruption-level`, `thread-id` from the
//! group). FCM messages are data-only, so the app's `FirebaseMessagingService` sees every one and shows it after
//! `ingest_push`. Limits: APNs 4 096 bytes of payload; FCM 4 096 bytes of `data` keys and values; Web Push 3 993
//! bytes of plaintext (RFC 8291: 4 096 bytes of body with its 86-byte header, the padding delimiter and the tag).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tidings_core::protocol::{Notification, Priority, encode_notification};

/// APNs' payload limit for alert pushes.
pub const APNS_MAX_PAYLOAD: usize = 4096;
/// FCM's limit on a message's `data` (keys and values).
pub const FCM_MAX_DATA: usize = 4096;
/// The most plaintext one RFC 8291 record carries in a 4 096-byte body.
pub const WEB_PUSH_MAX_PLAINTEXT: usize = 3993;
/// Most ids listed in a summary (the count is exact).
pub const MAX_SUMMARY_IDS: usize = 20;

/// What a push carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushBody {
    /// One notification.
    Notification(Notification),
    /// A digest or a quiet-hours summary.
    Summary(Summary),
}

/// Which summary: the core's type, whose wire names the SDKs read back (protocol §11).
pub use tidings_core::protocol::SummaryKind;

/// Several notifications in one push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Digest or quiet-hours summary.
    pub kind: SummaryKind,
    /// The digest's group.
    pub group: Option<String>,
    /// The ids, newest first (at most [`MAX_SUMMARY_IDS`] are listed; `count` says how many there are).
    pub ids: Vec<String>,
    /// The newest notification's title.
    pub title: Option<String>,
}

/// One push to one device, provider-neutral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushMessage {
    /// What it carries.
    pub body: PushBody,
    /// Maps to APNs priority and interruption level, FCM Android priority, Web Push urgency.
    pub priority: Priority,
    /// How long the provider may keep it for an unreachable device.
    pub ttl: Duration,
    /// The app icon badge (APNs `aps.badge`), when the caller knows it.
    pub badge: Option<u32>,
    /// A replace group chosen by the caller: a newer push with the same key replaces an undelivered (or, on
    /// Apple platforms, a shown) older one. Sent as `apns-collapse-id`, FCM `collapse_key` and Web Push `Topic`.
    /// Without one, APNs and Web Push collapse by notification id ([`PushMessage::collapse_key`]); FCM gets none,
    /// because it keeps at most four collapse keys per device and an offline device would lose the rest.
    pub collapse: Option<String>,
}

/// The default time to live by priority: a day, four hours for informational digests.
pub fn default_ttl(priority: Priority) -> Duration {
    match priority {
        Priority::Critical | Priority::Important => Duration::from_secs(24 * 3600),
        Priority::Informational => Duration::from_secs(4 * 3600),
    }
}

impl PushMessage {
    /// A push of one notification, with its priority and the default TTL.
    pub fn notification(n: Notification) -> Self {
        let priority = n.priority;
        PushMessage {
            body: PushBody::Notification(n),
            priority,
            ttl: default_ttl(priority),
            badge: None,
            collapse: None,
        }
    }

    /// A summary push.
    pub fn summary(summary: Summary, priority: Priority) -> Self {
        PushMessage {
            body: PushBody::Summary(summary),
            priority,
            ttl: default_ttl(priority),
            badge: None,
            collapse: None,
        }
    }

    /// With an app icon badge count.
    pub fn with_badge(mut self, badge: u32) -> Self {
        self.badge = Some(badge);
        self
    }

    /// The key APNs (`apns-collapse-id`) and Web Push (`Topic`) collapse by: the caller's
    /// [`PushMessage::collapse`], else the notification id, so a copy sent twice replaces itself on the device or
    /// in the push service's queue. Summaries have none of their own (two digests are two messages).
    pub fn collapse_key(&self) -> Option<&str> {
        match (&self.collapse, &self.body) {
            (Some(key), _) => Some(key),
            (None, PushBody::Notification(n)) => Some(n.id()),
            (None, PushBody::Summary(_)) => None,
        }
    }
}

/// The message for one of the delivery planner's push orders. `notification` is the envelope of a
/// [`PushContent::Single`] order (the caller loads it by id; `None` when it is gone, and then there is nothing to
/// send); summaries need no envelope. `badge`: the app icon count, when the caller knows it.
pub fn message_for(
    order: &crate::planner::PushOrder,
    notification: Option<Notification>,
    badge: Option<u32>,
) -> Option<PushMessage> {
    use crate::planner::PushContent;
    let mut msg = match &order.content {
        PushContent::Single { id } => {
            let n = notification.filter(|n| n.id() == id)?;
            PushMessage::notification(n)
        }
        PushContent::Digest { group, ids, title } => {
            let summary = Summary {
                kind: SummaryKind::Digest,
                group: Some(group.clone()),
                ids: ids.clone(),
                title: title.clone(),
            };
            PushMessage::summary(summary, order.priority)
        }
        PushContent::QuietHoursSummary { ids, title } => {
            let summary =
                Summary { kind: SummaryKind::QuietHours, group: None, ids: ids.clone(), title: title.clone() };
            PushMessage::summary(summary, order.priority)
        }
    };
    msg.badge = badge;
    Some(msg)
}

/// Which form a payload took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The whole envelope.
    Full,
    /// Id and title only: the envelope did not fit.
    Lightweight,
    /// A digest or quiet-hours summary.
    Summary,
}

fn lightweight(n: &Notification) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), n.id().into());
    if let Some(t) = n.title() {
        m.insert("title".into(), t.into());
    }
    Value::Object(m)
}

fn summary_value(s: &Summary) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), s.kind.as_str().into());
    if let Some(g) = &s.group {
        m.insert("group".into(), g.as_str().into());
    }
    m.insert("count".into(), s.ids.len().into());
    m.insert("ids".into(), s.ids.iter().take(MAX_SUMMARY_IDS).map(|i| Value::from(i.as_str())).collect());
    if let Some(t) = &s.title {
        m.insert("title".into(), t.as_str().into());
    }
    Value::Object(m)
}

/// The text shown for a summary when the app does not rewrite it: the newest title, and the count.
fn summary_alert(s: &Summary) -> (String, String) {
    let n = s.ids.len();
    let count = if n == 1 { "1 new notification".to_string() } else { format!("{n} new notifications") };
    match &s.title {
        Some(t) => (t.clone(), count),
        None => (count, String::new()),
    }
}

/// `{"key":value}` with `value` spliced in verbatim (an encoded envelope).
fn wrap_raw(key: &str, raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + key.len() + 6);
    let _ = write!(out, "{{{}:{raw}}}", Value::from(key));
    out
}

// ---- APNs -------------------------------------------------------------------------------------------------

/// `interruption-level` by priority: `critical` breaks through Focus as `time-sensitive` (the `critical` level
/// needs an entitlement from Apple), informational is `passive` (no sound, no wake).
pub fn apns_interruption_level(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical => "time-sensitive",
        Priority::Important => "active",
        Priority::Informational => "passive",
    }
}

/// `apns-priority`: 10 (at once) for critical and important, 5 (power-aware) for informational.
pub fn apns_priority(priority: Priority) -> u8 {
    match priority {
        Priority::Critical | Priority::Important => 10,
        Priority::Informational => 5,
    }
}

fn aps(msg: &PushMessage, title: Option<&str>, body: Option<&str>, thread: Option<&str>) -> Value {
    let mut alert = Map::new();
    match (title, body) {
        (None, None) => {
            alert.insert("title".into(), "New notification".into());
        }
        _ => {
            if let Some(t) = title {
                alert.insert("title".into(), t.into());
            }
            if let Some(b) = body.filter(|b| !b.is_empty()) {
                alert.insert("body".into(), b.into());
            }
        }
    }
    let mut aps = Map::new();
    aps.insert("alert".into(), Value::Object(alert));
    if let Some(badge) = msg.badge {
        aps.insert("badge".into(), badge.into());
    }
    if msg.priority != Priority::Informational {
        aps.insert("sound".into(), "default".into());
    }
    aps.insert("mutable-content".into(), 1.into());
    aps.insert("interruption-level".into(), apns_interruption_level(msg.priority).into());
    if let Some(t) = thread {
        aps.insert("thread-id".into(), t.into());
    }
    Value::Object(aps)
}

/// The APNs payload (JSON) and its form.
pub fn apns_payload(msg: &PushMessage) -> (String, Form) {
    match &msg.body {
        PushBody::Notification(n) => {
            let aps = aps(msg, n.title(), n.body(), n.group()).to_string();
            let envelope = encode_notification(n);
            let full = format!(r#"{{"aps":{aps},"tidings":{envelope}}}"#);
            if full.len() <= APNS_MAX_PAYLOAD {
                return (full, Form::Full);
            }
            let aps = self::aps(msg, n.title(), None, n.group());
            (json!({"aps": aps, "tidings_fetch": lightweight(n)}).to_string(), Form::Lightweight)
        }
        PushBody::Summary(s) => {
            let (title, body) = summary_alert(s);
            let aps = aps(msg, Some(&title), Some(&body), s.group.as_deref());
            (json!({"aps": aps, "tidings_summary": summary_value(s)}).to_string(), Form::Summary)
        }
    }
}

// ---- FCM --------------------------------------------------------------------------------------------------

/// FCM Android priority: `HIGH` wakes the app to show the notification; informational digests go `NORMAL`.
pub fn fcm_android_priority(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical | Priority::Important => "HIGH",
        Priority::Informational => "NORMAL",
    }
}

/// The FCM `data` map (string values only, as FCM requires) and its form.
pub fn fcm_data(msg: &PushMessage) -> (Vec<(&'static str, String)>, Form) {
    let size = |data: &[(&str, String)]| data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    match &msg.body {
        PushBody::Notification(n) => {
            let full = vec![("tidings", encode_notification(n))];
            if size(&full) <= FCM_MAX_DATA {
                return (full, Form::Full);
            }
            (vec![("tidings_fetch", lightweight(n).to_string())], Form::Lightweight)
        }
        PushBody::Summary(s) => (vec![("tidings_summary", summary_value(s).to_string())], Form::Summary),
    }
}

// ---- Web Push ---------------------------------------------------------------------------------------------

/// RFC 8030 `Urgency` by priority.
pub fn web_push_urgency(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical => "high",
        Priority::Important => "normal",
        Priority::Informational => "low",
    }
}

/// The Web Push plaintext (JSON, encrypted by the sender) and its form.
pub fn web_push_payload(msg: &PushMessage) -> (String, Form) {
    match &msg.body {
        PushBody::Notification(n) => {
            let full = wrap_raw("tidings", &encode_notification(n));
            if full.len() <= WEB_PUSH_MAX_PLAINTEXT {
                return (full, Form::Full);
            }
            (json!({"tidings_fetch": lightweight(n)}).to_string(), Form::Lightweight)
        }
        PushBody::Summary(s) => (json!({"tidings_summary": summary_value(s)}).to_string(), Form::Summary),
    }
}

/// A provider-safe token for a collapse key: the key itself when it is short and in `allowed`, else a hash of it
/// (xxh3-128, base64url, 22 characters). APNs collapse ids allow 64 bytes; Web Push topics 32 characters of
/// the base64url alphabet.
pub fn collapse_token(key: &str, max: usize, allowed: impl Fn(char) -> bool) -> String {
    use base64::Engine as _;
    if !key.is_empty() && key.len() <= max && key.chars().all(allowed) {
        return key.to_owned();
    }
    let hash = xxhash_rust::xxh3::xxh3_128(key.as_bytes()).to_be_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)
}

#[cfg(test)]
mod tests {
    use tidings_core::protocol::{NotificationFields, Persistence, RawJson, decode_push_payload};

    use super::*;

    pub(crate) fn notification(id: &str, body_len: usize) -> Notification {
        NotificationFields {
            id: id.into(),
            stream: "user:alice".into(),
            offset: Some(42),
            epoch: "k3v9q2".into(),
            kind: "comment.created".into(),
            priority: Priority::Important,
            persistence: Persistence::Bufferable,
            title: Some("Bob commented".into()),
            body: Some("é".repeat(body_len / 2)),
            data: Some(RawJson::from_string(r#"{"post":"p-981","n":12345678901234567890}"#.into()).unwrap()),
            group: Some("post:p-981".into()),
            created_at: 1_763_808_060_123,
        }
        .into()
    }

    /// What an SDK hands `ingest_push` on each platform: the APNs `userInfo` and the Web Push body as JSON text,
    /// and FCM's `RemoteMessage.data` as an object of strings (the Kotlin binding's `pushPayloadJson`).
    fn fcm_as_json(data: &[(&str, String)]) -> String {
        Value::Object(data.iter().map(|(k, v)| ((*k).to_owned(), Value::from(v.as_str()))).collect()).to_string()
    }

    #[test]
    fn the_client_decodes_the_full_form_from_every_provider() {
        let n = notification("01JDZ3K5W8Q2M4N6P8R0T2V4X6", 100);
        let msg = PushMessage::notification(n.clone()).with_badge(3);
        let (apns, form) = apns_payload(&msg);
        assert_eq!(form, Form::Full);
        assert_eq!(decode_push_payload(&apns).unwrap(), n);
        let (data, form) = fcm_data(&msg);
        assert_eq!(form, Form::Full);
        assert_eq!(decode_push_payload(&fcm_as_json(&data)).unwrap(), n);
        let (web, form) = web_push_payload(&msg);
        assert_eq!(form, Form::Full);
        assert_eq!(decode_push_payload(&web).unwrap(), n);
        // The data's big integer survives verbatim (the envelope is spliced, not re-serialised).
        assert!(apns.contains("12345678901234567890") && web.contains("12345678901234567890"));
    }

    #[test]
    fn aps_carries_alert_badge_and_levels() {
        let n = notification("n1", 10);
        let (apns, _) = apns_payload(&PushMessage::notification(n).with_badge(7));
        let v: Value = serde_json::from_str(&apns).unwrap();
        assert_eq!(v["aps"]["alert"]["title"], "Bob commented");
        assert_eq!(v["aps"]["alert"]["body"], "ééééé");
        assert_eq!(v["aps"]["badge"], 7);
        assert_eq!(v["aps"]["mutable-content"], 1);
        assert_eq!(v["aps"]["interruption-level"], "active");
        assert_eq!(v["aps"]["thread-id"], "post:p-981");
        assert_eq!(v["aps"]["sound"], "default");
        let mut info = PushMessage::notification(notification("n2", 0));
        info.priority = Priority::Informational;
        let v: Value = serde_json::from_str(&apns_payload(&info).0).unwrap();
        assert_eq!(v["aps"]["interruption-level"], "passive");
        assert!(v["aps"].get("sound").is_none() && v["aps"].get("badge").is_none());
        assert_eq!(
            (apns_priority(Priority::Critical), apns_priority(Priority::Informational)),
            (10, 5),
            "apns-priority"
        );
        assert_eq!(apns_interruption_level(Priority::Critical), "time-sensitive");
    }

    #[test]
    fn too_large_for_the_provider_is_sent_lightweight() {
        // A 4 000-byte body fits no provider with its envelope.
        let n = notification("n-big", 4000);
        let msg = PushMessage::notification(n);
        let (apns, form) = apns_payload(&msg);
        assert_eq!(form, Form::Lightweight);
        assert!(apns.len() <= APNS_MAX_PAYLOAD);
        let v: Value = serde_json::from_str(&apns).unwrap();
        assert_eq!(v["tidings_fetch"], json!({"id": "n-big", "title": "Bob commented"}));
        assert_eq!(v["aps"]["alert"], json!({"title": "Bob commented"}));
        let (data, form) = fcm_data(&msg);
        assert_eq!(form, Form::Lightweight);
        assert_eq!(data, vec![("tidings_fetch", r#"{"id":"n-big","title":"Bob commented"}"#.to_string())]);
        let (web, form) = web_push_payload(&msg);
        assert_eq!(form, Form::Lightweight);
        assert_eq!(web, r#"{"tidings_fetch":{"id":"n-big","title":"Bob commented"}}"#);
        // Today's client refuses it rather than showing something wrong (fetching it is phase 2).
        assert!(decode_push_payload(&web).is_err());
    }

    #[test]
    fn each_limit_is_the_providers_own() {
        // Find the body size where each provider switches, and check the full payload just below it fits.
        for (limit, measure) in [
            (APNS_MAX_PAYLOAD, (&|m: &PushMessage| apns_payload(m)) as &dyn Fn(&PushMessage) -> (String, Form)),
            (WEB_PUSH_MAX_PLAINTEXT, &|m: &PushMessage| web_push_payload(m)),
            (FCM_MAX_DATA, &|m: &PushMessage| {
                let (d, f) = fcm_data(m);
                (d.iter().map(|(k, v)| format!("{k}{v}")).collect(), f)
            }),
        ] {
            let mut last_full = 0;
            for len in (0..4100).step_by(2) {
                let (text, form) = measure(&PushMessage::notification(notification("n", len)));
                if form == Form::Full {
                    assert!(text.len() <= limit);
                    last_full = text.len();
                } else {
                    break;
                }
            }
            assert!(last_full >= limit - 4, "limit {limit}: the last full payload was {last_full} bytes");
        }
    }

    #[test]
    fn summaries_list_newest_ids_and_the_exact_count() {
        let ids: Vec<String> = (0..25).map(|i| format!("id-{i}")).collect();
        let s = Summary {
            kind: SummaryKind::Digest,
            group: Some("likes:p1".into()),
            ids: ids.clone(),
            title: Some("Ann liked your post".into()),
        };
        let msg = PushMessage::summary(s, Priority::Informational);
        let (apns, form) = apns_payload(&msg);
        assert_eq!(form, Form::Summary);
        let v: Value = serde_json::from_str(&apns).unwrap();
        assert_eq!(v["tidings_summary"]["count"], 25);
        assert_eq!(v["tidings_summary"]["kind"], "digest");
        assert_eq!(v["tidings_summary"]["ids"].as_array().unwrap().len(), MAX_SUMMARY_IDS);
        assert_eq!(v["tidings_summary"]["ids"][0], "id-0");
        assert_eq!(v["aps"]["alert"], json!({"title": "Ann liked your post", "body": "25 new notifications"}));
        assert_eq!(v["aps"]["thread-id"], "likes:p1");
        let (data, _) = fcm_data(&msg);
        assert_eq!(data[0].0, "tidings_summary");
        let (web, _) = web_push_payload(&msg);
        let v: Value = serde_json::from_str(&web).unwrap();
        assert_eq!(v["tidings_summary"]["group"], "likes:p1");
        assert!(decode_push_payload(&web).is_err(), "today's client refuses summaries rather than misreading them");
        let quiet = Summary { kind: SummaryKind::QuietHours, group: None, ids: vec!["a".into()], title: None };
        let v: Value =
            serde_json::from_str(&apns_payload(&PushMessage::summary(quiet, Priority::Important)).0).unwrap();
        assert_eq!(v["aps"]["alert"], json!({"title": "1 new notification"}));
        assert_eq!(v["tidings_summary"]["kind"], "quiet_hours");
    }

    #[test]
    fn planner_orders_become_messages() {
        use crate::planner::{PushContent, PushOrder};
        let order =
            |content| PushOrder { user: "alice".into(), device: "d".into(), content, priority: Priority::Important };
        let n = notification("n1", 10);
        let single = order(PushContent::Single { id: "n1".into() });
        let msg = message_for(&single, Some(n.clone()), Some(2)).unwrap();
        assert_eq!(
            (msg.body, msg.badge, msg.priority),
            (PushBody::Notification(n.clone()), Some(2), Priority::Important)
        );
        assert_eq!(message_for(&single, None, None), None, "the notification is gone: nothing to send");
        assert_eq!(message_for(&order(PushContent::Single { id: "other".into() }), Some(n), None), None);
        let digest = order(PushContent::Digest { group: "g".into(), ids: vec!["b".into(), "a".into()], title: None });
        let msg = message_for(&digest, None, None).unwrap();
        assert!(matches!(&msg.body, PushBody::Summary(Summary { kind: SummaryKind::Digest, group: Some(g), ids, .. })
            if g == "g" && ids.len() == 2));
        assert_eq!(msg.ttl, default_ttl(Priority::Important));
        let quiet = order(PushContent::QuietHoursSummary { ids: vec!["a".into()], title: Some("t".into()) });
        let msg = message_for(&quiet, None, None).unwrap();
        assert!(matches!(&msg.body, PushBody::Summary(Summary { kind: SummaryKind::QuietHours, group: None, .. })));
    }

    #[test]
    fn collapse_tokens_fit_each_provider() {
        let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        assert_eq!(collapse_token("01JDZ3K5W8Q2M4N6P8R0T2V4X6", 32, base64url), "01JDZ3K5W8Q2M4N6P8R0T2V4X6");
        let hashed = collapse_token("order:42.shipped", 32, base64url);
        assert_eq!(hashed.len(), 22);
        assert!(hashed.chars().all(base64url));
        assert_eq!(hashed, collapse_token("order:42.shipped", 32, base64url), "stable");
        let long = "x".repeat(100);
        assert_eq!(collapse_token(&long, 64, |_| true).len(), 22);
        assert_eq!(collapse_token(&"x".repeat(64), 64, |_| true).len(), 64);
    }
}
