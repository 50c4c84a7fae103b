//! Publishing (protocol §9.1): request parsing and validation, receipts and errors, and the in-process
//! [`Publisher`]. The publish pipeline itself is the node's (`Node::publish_batch`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tidings_core::protocol::{
    MAX_BODY_BYTES, MAX_DATA_BYTES, MAX_NAME_BYTES, MAX_SERVER_FRAME_BYTES, MAX_TITLE_BYTES, Notification,
    NotificationFields, Persistence, Priority, RawJson, ServerFrame, encode_server_frame, validate_id, validate_topic,
    validate_user_id,
};

use crate::config::MAX_PUSH_AFTER;
pub use crate::model::Delivery;
use crate::model::Publication;
use crate::node::Node;
use crate::store::{StoreError, StoreErrorKind};

/// Most recipients (users plus topics) of one publish.
pub const MAX_RECIPIENTS: usize = 10_000;
/// Most notifications in one `POST /v1/publish/batch`.
pub const MAX_BATCH: usize = 1000;

/// A notification to publish: the body of `POST /v1/publish`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishRequest {
    /// Users whose `user:<id>` streams receive it.
    pub users: Vec<String>,
    /// Topics whose `topic:<name>` streams receive it.
    pub topics: Vec<String>,
    /// Application-defined kind (`type` on the wire).
    pub kind: String,
    /// Delivery tier (default `important`).
    pub priority: Priority,
    /// Retention class (default `bufferable`).
    pub persistence: Persistence,
    /// Short text.
    pub title: Option<String>,
    /// Text.
    pub body: Option<String>,
    /// Application payload.
    pub data: Option<RawJson>,
    /// Batching key.
    pub group: Option<String>,
    /// Idempotency key and notification id; a ULID is generated when absent.
    pub id: Option<String>,
    /// The publisher's push options for this notification (`push` on the wire).
    pub push: PushOptions,
}

/// What a publisher may change about push delivery per publish (`"push": {…}` in the body, protocol §9.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushOptions {
    /// How long an `important` notification waits for an ack before it is pushed to a user with a live session
    /// (`after_ms`); `None`: the server's default.
    pub after: Option<Duration>,
    /// Push even during the user's quiet hours (`bypass_quiet_hours`): 2FA codes, security alerts.
    pub bypass_quiet_hours: bool,
    /// `false` (`"digest": false`): an `informational` notification gets no digest push.
    pub digest: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions { after: None, bypass_quiet_hours: false, digest: true }
    }
}

impl PushOptions {
    /// The planner's overrides.
    pub(crate) fn overrides(&self) -> crate::planner::Overrides {
        crate::planner::Overrides {
            push_after: self.after,
            bypass_quiet_hours: self.bypass_quiet_hours,
            digest: self.digest,
        }
    }

    fn parse(value: serde_json::Value) -> Result<Self, PublishError> {
        let serde_json::Value::Object(map) = value else {
            return Err(PublishError::bad_request(format!("push: expected an object, got {}", kind_of(&value))));
        };
        let mut options = PushOptions::default();
        for (key, v) in map {
            match (key.as_str(), v) {
                (_, serde_json::Value::Null) => {}
                ("after_ms", serde_json::Value::Number(n)) => {
                    // A whole number written with a fraction (`5000.0`) is a whole number, as JSON Schema says.
                    let whole = n.as_u64().or_else(|| {
                        n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64).map(|f| f as u64)
                    });
                    let ms = whole.filter(|ms| *ms <= MAX_PUSH_AFTER.as_millis() as u64).ok_or_else(|| {
                        PublishError::bad_request(format!(
                            "push.after_ms: expected milliseconds from 0 to {}, got {n}",
                            MAX_PUSH_AFTER.as_millis()
                        ))
                    })?;
                    options.after = Some(Duration::from_millis(ms));
                }
                ("bypass_quiet_hours", serde_json::Value::Bool(b)) => options.bypass_quiet_hours = b,
                ("digest", serde_json::Value::Bool(b)) => options.digest = b,
                ("after_ms" | "bypass_quiet_hours" | "digest", other) => {
                    let want = if key == "after_ms" { "a number" } else { "a boolean" };
                    return Err(PublishError::bad_request(format!(
                        "push.{key}: expected {want}, got {}",
                        kind_of(&other)
                    )));
                }
                // Unknown members are ignored, as everywhere in the protocol.
                _ => {}
            }
        }
        Ok(options)
    }
}

impl PublishRequest {
    /// A notification of `kind` with no recipients yet, `important` and `bufferable`.
    pub fn new(kind: impl Into<String>) -> Self {
        PublishRequest {
            users: Vec::new(),
            topics: Vec::new(),
            kind: kind.into(),
            priority: Priority::Important,
            persistence: Persistence::Bufferable,
            title: None,
            body: None,
            data: None,
            group: None,
            id: None,
            push: PushOptions::default(),
        }
    }

    /// Sets the push options.
    pub fn push(mut self, push: PushOptions) -> Self {
        self.push = push;
        self
    }

    /// Adds a user recipient.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.users.push(user.into());
        self
    }

    /// Adds a topic recipient (the name without `topic:`).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the persistence.
    pub fn persistence(mut self, persistence: Persistence) -> Self {
        self.persistence = persistence;
        self
    }

    /// Sets the title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets the data payload.
    pub fn data(mut self, data: RawJson) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the batching group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets the id (idempotency key).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Parses a publish body (a JSON object, see protocol §9.1). Unknown members are ignored; the error
    /// message names the offending field.
    pub fn from_json(text: &str) -> Result<Self, PublishError> {
        let fields: Members<'_> = serde_json::from_str(text)
            .map_err(|e| PublishError::bad_request(format!("the body must be a JSON object: {e}")))?;
        Self::from_fields(fields)
    }

    fn from_fields(mut fields: Members<'_>) -> Result<Self, PublishError> {
        let mut value = |name: &str| -> Result<Option<serde_json::Value>, PublishError> {
            match fields.remove(name) {
                None => Ok(None),
                Some(raw) => match serde_json::from_str(raw.get()) {
                    Ok(serde_json::Value::Null) => Ok(None),
                    Ok(v) => Ok(Some(v)),
                    Err(e) => Err(PublishError::bad_request(format!("{name}: {e}"))),
                },
            }
        };
        let users = string_list("users", value("users")?)?;
        let topics = string_list("topics", value("topics")?)?;
        let kind = string("type", value("type")?)?
            .ok_or_else(|| PublishError::bad_request("type: required (a string of 1 to 128 bytes)"))?;
        let priority = match string("priority", value("priority")?)?.as_deref() {
            None | Some("important") => Priority::Important,
            Some("critical") => Priority::Critical,
            Some("informational") => Priority::Informational,
            Some(other) => {
                return Err(PublishError::bad_request(format!(
                    "priority: expected critical, important or informational, got {other:?}"
                )));
            }
        };
        let persistence = match string("persistence", value("persistence")?)?.as_deref() {
            None | Some("bufferable") => Persistence::Bufferable,
            Some("ephemeral") => Persistence::Ephemeral,
            Some("persistent") => Persistence::Persistent,
            Some(other) => {
                return Err(PublishError::bad_request(format!(
                    "persistence: expected ephemeral, bufferable or persistent, got {other:?}"
                )));
            }
        };
        let title = string("title", value("title")?)?;
        let body = string("body", value("body")?)?;
        let group = string("group", value("group")?)?;
        let id = string("id", value("id")?)?;
        let push = match value("push")? {
            Some(v) => PushOptions::parse(v)?,
            None => PushOptions::default(),
        };
        let data = match fields.remove("data") {
            Some(raw) if raw.get() != "null" => Some(
                RawJson::from_string(raw.get().to_owned())
                    .map_err(|e| PublishError::bad_request(format!("data: {e}")))?,
            ),
            _ => None,
        };
        Ok(PublishRequest { users, topics, kind, priority, persistence, title, body, data, group, id, push })
    }

    /// Checks the request against the protocol's limits. Content that is too large (`type`, `group`, `title`,
    /// `body`, `data`, the encoded frame) is [`PublishErrorKind::TooLarge`]; everything else
    /// [`PublishErrorKind::BadRequest`].
    pub fn validate(&self) -> Result<(), PublishError> {
        if self.users.is_empty() && self.topics.is_empty() {
            return Err(PublishError::bad_request("users, topics: at least one recipient is required"));
        }
        if self.users.len() + self.topics.len() > MAX_RECIPIENTS {
            return Err(PublishError::too_large(format!(
                "users, topics: at most {MAX_RECIPIENTS} recipients per publish, got {}",
                self.users.len() + self.topics.len()
            )));
        }
        for (i, user) in self.users.iter().enumerate() {
            validate_user_id(user).map_err(|e| PublishError::bad_request(format!("users[{i}]: {e}")))?;
        }
        for (i, topic) in self.topics.iter().enumerate() {
            validate_topic(topic).map_err(|e| PublishError::bad_request(format!("topics[{i}]: {e}")))?;
        }
        // Empty is a bad request; over the limit is content too large, as for `title` and `body` (schemathesis
        // found the difference: JSON Schema counts characters, so only the status says a limit was hit).
        fn name_error(value: &str) -> impl Fn(String) -> PublishError {
            let too_large = value.len() > MAX_NAME_BYTES;
            move |message| if too_large { PublishError::too_large(message) } else { PublishError::bad_request(message) }
        }
        check_len("type", &self.kind, 1, MAX_NAME_BYTES).map_err(name_error(&self.kind))?;
        if let Some(group) = &self.group {
            check_len("group", group, 1, MAX_NAME_BYTES).map_err(name_error(group))?;
        }
        if let Some(id) = &self.id {
            validate_id(id).map_err(|e| PublishError::bad_request(format!("id: {e}")))?;
        }
        if let Some(title) = &self.title {
            check_len("title", title, 0, MAX_TITLE_BYTES).map_err(PublishError::too_large)?;
        }
        if let Some(body) = &self.body {
            check_len("body", body, 0, MAX_BODY_BYTES).map_err(PublishError::too_large)?;
        }
        if let Some(data) = &self.data
            && data.get().len() > MAX_DATA_BYTES
        {
            return Err(PublishError::too_large(format!(
                "data: must be at most {MAX_DATA_BYTES} bytes encoded, got {}",
                data.get().len()
            )));
        }
        self.check_frame_size()
    }

    /// Makes sure the encoded `notification` frame stays within the server frame limit on every target
    /// stream. JSON escaping grows a string at most sixfold (`\u00XX`), so a cheap bound settles it unless the
    /// content is close to the limit; then a worst-case frame is encoded and measured.
    fn check_frame_size(&self) -> Result<(), PublishError> {
        let longest_stream =
            self.users.iter().map(|u| u.len() + 5).chain(self.topics.iter().map(|t| t.len() + 6)).max().unwrap_or(0);
        let text_len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let bound = 6 * (self.kind.len() + text_len(&self.title) + text_len(&self.body) + text_len(&self.group))
            + 6 * (longest_stream + self.id.as_ref().map_or(26, String::len))
            + self.data.as_ref().map_or(0, |d| d.get().len())
            + 512;
        if bound <= MAX_SERVER_FRAME_BYTES {
            return Ok(());
        }
        let stream = self
            .users
            .iter()
            .map(|u| format!("user:{u}"))
            .chain(self.topics.iter().map(|t| format!("topic:{t}")))
            .max_by_key(String::len)
            .unwrap_or_default();
        let probe = self.notification(
            self.id.clone().unwrap_or_else(|| "0".repeat(26)),
            stream,
            "x".repeat(32),
            self.persistence.is_buffered().then_some(u64::MAX),
            u64::MAX,
        );
        let size = encode_server_frame(&ServerFrame::Notification(probe)).len();
        if size > MAX_SERVER_FRAME_BYTES {
            return Err(PublishError::too_large(format!(
                "the encoded notification frame would be {size} bytes, more than the limit of \
                 {MAX_SERVER_FRAME_BYTES}"
            )));
        }
        Ok(())
    }

    fn notification(&self, id: String, stream: String, epoch: String, offset: Option<u64>, at: u64) -> Notification {
        Notification::from(self.fields(id, stream, epoch, offset, at))
    }

    fn fields(&self, id: String, stream: String, epoch: String, offset: Option<u64>, at: u64) -> NotificationFields {
        NotificationFields {
            id,
            stream,
            offset,
            epoch,
            kind: self.kind.clone(),
            priority: self.priority,
            persistence: self.persistence,
            title: self.title.clone(),
            body: self.body.clone(),
            data: self.data.clone(),
            group: self.group.clone(),
            created_at: at,
        }
    }

    /// The accepted publication: `id` as its id (an idempotency key when `idempotent`), accepted at `now_ms`.
    pub(crate) fn into_publication(self, id: String, idempotent: bool, now_ms: u64) -> Publication {
        let streams = self.streams();
        let fields = self.fields(id.clone(), String::new(), String::new(), None, now_ms);
        Publication { id: Arc::from(id), idempotent, streams, fields, request_id: None }
    }

    /// The target streams, without duplicates, users first.
    fn streams(&self) -> Vec<String> {
        let all =
            self.users.iter().map(|u| format!("user:{u}")).chain(self.topics.iter().map(|t| format!("topic:{t}")));
        let mut seen = std::collections::HashSet::with_capacity(self.users.len() + self.topics.len());
        all.filter(|stream| seen.insert(stream.clone())).collect()
    }
}

fn check_len(field: &str, s: &str, min: usize, max: usize) -> Result<(), String> {
    if s.len() < min || s.len() > max {
        return Err(format!("{field}: must be {min} to {max} bytes, got {}", s.len()));
    }
    Ok(())
}

fn string(field: &str, value: Option<serde_json::Value>) -> Result<Option<String>, PublishError> {
    match value {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(PublishError::bad_request(format!("{field}: expected a string, got {}", kind_of(&other)))),
    }
}

fn string_list(field: &str, value: Option<serde_json::Value>) -> Result<Vec<String>, PublishError> {
    match value {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                serde_json::Value::String(s) => Ok(s),
                other => {
                    Err(PublishError::bad_request(format!("{field}[{i}]: expected a string, got {}", kind_of(&other))))
                }
            })
            .collect(),
        Some(other) => {
            Err(PublishError::bad_request(format!("{field}: expected an array of strings, got {}", kind_of(&other))))
        }
    }
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Parses the body of `POST /v1/publish/batch`: `{"notifications":[…]}`. Each item is parsed on its own, so
/// one bad item yields an error for that item only.
pub fn parse_batch(text: &str) -> Result<Vec<Result<PublishRequest, PublishError>>, PublishError> {
    let bad =
        |e: String| PublishError::bad_request(format!("the body must be an object {{\"notifications\":[…]}}: {e}"));
    // A map, not a struct: serde would also take a struct written as an array.
    let mut fields: HashMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let items: Vec<&RawValue> = match fields.remove("notifications") {
        None => return Err(PublishError::bad_request("notifications: required")),
        Some(raw) if raw.get() == "null" => return Err(PublishError::bad_request("notifications: required")),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| PublishError::bad_request(format!("notifications: must be an array: {e}")))?,
    };
    if items.len() > MAX_BATCH {
        return Err(PublishError::too_large(format!(
            "notifications: at most {MAX_BATCH} per batch, got {}",
            items.len()
        )));
    }
    Ok(items.into_iter().map(|raw| PublishRequest::from_json(raw.get())).collect())
}

/// The members of a JSON object, each value unparsed, the keys borrowed from the text unless they hold escapes:
/// what a `HashMap<String, &RawValue>` gave (a member given twice counts once, the last; the same errors), without
/// a map and an allocated key per member of every notification of a batch.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// Takes the value of member `name` (its last occurrence).
    fn remove(&mut self, name: &str) -> Option<&'a RawValue> {
        let i = self.0.iter().rposition(|(key, _)| key == name)?;
        Some(self.0.swap_remove(i).1)
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
                while let Some(Key(key)) = map.next_key()? {
                    members.push((key, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// An object's key, borrowed from the text when it can be.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visit(std::marker::PhantomData))
    }
}

/// The reply to a publish (protocol §9.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublishReceipt {
    /// The notification id (the caller's, or a generated ULID).
    pub id: String,
    /// Whether the id had been accepted before within the idempotency window (nothing was delivered now).
    pub duplicate: bool,
    /// One entry per target stream. For a duplicate: the original publish's deliveries, when known.
    pub deliveries: Vec<Delivery>,
}

/// Kinds of [`PublishError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// Invalid request: HTTP 400, code `bad_request`.
    BadRequest,
    /// Content over a size limit: HTTP 413, code `too_large`.
    TooLarge,
    /// The store failed (nothing was stored) or the server is shutting down: HTTP 503, code `unavailable`, with
    /// a retry hint.
    Unavailable,
}

impl PublishErrorKind {
    /// The `code` in the JSON error body.
    pub fn code(self) -> &'static str {
        match self {
            PublishErrorKind::BadRequest => "bad_request",
            PublishErrorKind::TooLarge => "too_large",
            PublishErrorKind::Unavailable => "unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            PublishErrorKind::BadRequest => 400,
            PublishErrorKind::TooLarge => 413,
            PublishErrorKind::Unavailable => 503,
        }
    }
}

/// A refused or failed publish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// What kind of failure.
    pub kind: PublishErrorKind,
    /// Human-readable detail naming the field at fault.
    pub message: String,
    /// For [`PublishErrorKind::Unavailable`]: how long to wait before retrying, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

/// How long to wait before retrying a publish refused during shutdown.
const SHUTDOWN_RETRY_MS: u64 = 5000;

impl PublishError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        PublishError { kind: PublishErrorKind::BadRequest, message: message.into(), retry_after_ms: None }
    }

    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        PublishError { kind: PublishErrorKind::TooLarge, message: message.into(), retry_after_ms: None }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        PublishError {
            kind: PublishErrorKind::Unavailable,
            message: message.into(),
            retry_after_ms: Some(SHUTDOWN_RETRY_MS),
        }
    }

    /// A publish the store could not commit: nothing of it was stored or delivered.
    pub(crate) fn from_store(error: &StoreError) -> Self {
        let message = match error.kind {
            StoreErrorKind::Full => format!(
                "the notification was not stored: the server's disk is full ({error}); nothing was delivered; \
                 retry once space is freed"
            ),
            StoreErrorKind::Unavailable => {
                format!("the notification was not stored ({error}); nothing was delivered; retry later")
            }
        };
        PublishError {
            kind: PublishErrorKind::Unavailable,
            message,
            retry_after_ms: Some(error.retry_after().as_millis() as u64),
        }
    }
}

/// In-process publishing handle: the same path `POST /v1/publish` takes after parsing the body. Cheap to
/// clone.
#[derive(Clone)]
pub struct Publisher {
    node: Arc<Node>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Publisher { node }
    }

    /// Validates and publishes `request` to every target stream. Returns once the notification is committed
    /// (on a durable store: written to disk as configured) and queued to every live subscriber in this process;
    /// a failure means nothing of it was stored or delivered ([`PublishErrorKind::Unavailable`]).
    pub async fn publish(&self, request: PublishRequest) -> Result<PublishReceipt, PublishError> {
        let mut results = self.node.publish_batch(vec![request]).await;
        results.pop().unwrap_or_else(|| Err(PublishError::unavailable("no result")))
    }

    /// Publishes several notifications at once, in order: what `POST /v1/publish/batch` does after parsing. A
    /// durable store commits them together (one transaction, one disk sync). One result per request.
    pub async fn publish_batch(&self, requests: Vec<PublishRequest>) -> Vec<Result<PublishReceipt, PublishError>> {
        self.node.publish_batch(requests).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_with_defaults() {
        let req = PublishRequest::from_json(
            r#"{"users":["alice","bob"],"topics":["news"],"type":"comment.created","priority":"important",
                "persistence":"bufferable","title":"Bob commented","body":"Looks great!","data":{"post":"p-981"},
                "group":null,"id":null,"future":1}"#,
        )
        .unwrap();
        assert_eq!(req.users, ["alice", "bob"]);
        assert_eq!(req.topics, ["news"]);
        assert_eq!(req.kind, "comment.created");
        assert_eq!(req.data.as_ref().unwrap().get(), r#"{"post":"p-981"}"#);
        assert_eq!(req.group, None);
        assert_eq!(req.id, None);
        req.validate().unwrap();
        let minimal = PublishRequest::from_json(r#"{"users":["a"],"type":"t"}"#).unwrap();
        assert_eq!((minimal.priority, minimal.persistence), (Priority::Important, Persistence::Bufferable));
    }

    fn error(body: &str) -> PublishError {
        PublishRequest::from_json(body).and_then(|r| r.validate()).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let e = error(r#"{"users":["alice","bob","no spaces"],"type":"t"}"#);
        assert_eq!(e.kind, PublishErrorKind::BadRequest);
        assert!(e.message.starts_with("users[2]: "), "{}", e.message);
        assert!(
            error(r#"{"users":["a"],"topics":"news","type":"t"}"#).message.starts_with("topics: expected an array")
        );
        assert!(error(r#"{"users":["a", 5],"type":"t"}"#).message.starts_with("users[1]: expected a string"));
        assert!(error(r#"{"users":["a"]}"#).message.starts_with("type: required"));
        assert!(error(r#"{"type":"t"}"#).message.contains("at least one recipient"));
        assert!(error(r#"{"users":["a"],"type":"t","priority":"urgent"}"#).message.starts_with("priority:"));
        assert!(error(r#"{"users":["a"],"type":"t","persistence":"forever"}"#).message.starts_with("persistence:"));
        assert!(error(r#"{"users":["a"],"type":"t","id":"has space"}"#).message.starts_with("id:"));
        assert!(error(r#"{"users":["a"],"type":""}"#).message.starts_with("type:"));
        assert_eq!(error(r#"{"users":["a"],"type":""}"#).kind, PublishErrorKind::BadRequest);
        // Over the limit is too large, as for the title: 65 two-byte characters are 130 bytes.
        let long = format!(r#"{{"users":["a"],"type":"t","group":"{}"}}"#, "é".repeat(65));
        assert_eq!((error(&long).kind, error(&long).message.starts_with("group:")), (PublishErrorKind::TooLarge, true));
        let long = format!(r#"{{"users":["a"],"type":"{}"}}"#, "k".repeat(129));
        assert_eq!(error(&long).kind, PublishErrorKind::TooLarge);
        assert!(error(r#"[1,2]"#).message.contains("JSON object"));
        assert!(error(r#"{"users":["a"],"type":"t","title":5}"#).message.starts_with("title: expected a string"));
    }

    #[test]
    fn push_options_are_parsed_and_checked() {
        let req = PublishRequest::from_json(
            r#"{"users":["a"],"type":"t","push":{"after_ms":2000,"bypass_quiet_hours":true,"digest":false,"x":1}}"#,
        )
        .unwrap();
        assert_eq!(
            req.push,
            PushOptions { after: Some(Duration::from_secs(2)), bypass_quiet_hours: true, digest: false }
        );
        assert_eq!(PublishRequest::from_json(r#"{"users":["a"],"type":"t"}"#).unwrap().push, PushOptions::default());
        assert!(error(r#"{"users":["a"],"type":"t","push":5}"#).message.starts_with("push: expected an object"));
        assert!(error(r#"{"users":["a"],"type":"t","push":{"after_ms":-1}}"#).message.starts_with("push.after_ms"));
        assert!(error(r#"{"users":["a"],"type":"t","push":{"after_ms":1.5}}"#).message.starts_with("push.after_ms"));
        // Found by schemathesis: `0.0` is a whole number to JSON Schema (and to JavaScript).
        let whole = PublishRequest::from_json(r#"{"users":["a"],"type":"t","push":{"after_ms":2000.0}}"#).unwrap();
        assert_eq!(whole.push.after, Some(Duration::from_secs(2)));
        // A whole number however many zeros follow the point.
        let long = r#"{"users":["a"],"type":"t","push":{"after_ms":2000.00000000000000000000000}}"#;
        assert_eq!(PublishRequest::from_json(long).unwrap().push.after, Some(Duration::from_secs(2)));
        assert!(
            error(r#"{"users":["a"],"type":"t","push":{"after_ms":86400001}}"#).message.starts_with("push.after_ms")
        );
        assert!(
            error(r#"{"users":["a"],"type":"t","push":{"digest":"no"}}"#)
                .message
                .starts_with("push.digest: expected a boolean")
        );
    }

    #[test]
    fn oversized_content_is_too_large() {
        let big = |field: &str, len: usize| format!(r#"{{"users":["a"],"type":"t","{field}":"{}"}}"#, "x".repeat(len));
        for (field, limit) in [("title", MAX_TITLE_BYTES), ("body", MAX_BODY_BYTES)] {
            assert!(PublishRequest::from_json(&big(field, limit)).unwrap().validate().is_ok());
            let e = error(&big(field, limit + 1));
            assert_eq!(e.kind, PublishErrorKind::TooLarge, "{field}");
            assert!(e.message.starts_with(field), "{}", e.message);
        }
        let data = format!(r#"{{"users":["a"],"type":"t","data":"{}"}}"#, "x".repeat(MAX_DATA_BYTES));
        let e = error(&data);
        assert_eq!(e.kind, PublishErrorKind::TooLarge);
        assert!(e.message.starts_with("data"), "{}", e.message);
    }

    #[test]
    fn maximal_content_with_heavy_escaping_still_fits_a_frame() {
        let mut req = PublishRequest::new("k".repeat(MAX_NAME_BYTES)).user("u".repeat(MAX_NAME_BYTES));
        req.title = Some("\u{1}".repeat(MAX_TITLE_BYTES));
        req.body = Some("\u{1}".repeat(MAX_BODY_BYTES));
        req.group = Some("\u{1}".repeat(MAX_NAME_BYTES));
        req.data = Some(RawJson::from_string(format!("\"{}\"", "d".repeat(MAX_DATA_BYTES - 2))).unwrap());
        req.validate().unwrap();
        let probe = req.notification(
            "i".repeat(128),
            format!("user:{}", req.users[0]),
            "e".repeat(32),
            Some(u64::MAX),
            u64::MAX,
        );
        assert!(encode_server_frame(&ServerFrame::Notification(probe)).len() <= MAX_SERVER_FRAME_BYTES);
    }

    #[test]
    fn streams_are_deduplicated() {
        let req = PublishRequest::new("t").user("a").user("a").topic("n").topic("n").user("b");
        assert_eq!(req.streams(), ["user:a", "user:b", "topic:n"]);
        let mut many = PublishRequest::new("t");
        for i in 0..40 {
            many = many.user(format!("u{}", i % 20));
        }
        assert_eq!(many.streams().len(), 20);
    }

    #[test]
    fn batches_are_parsed_item_by_item() {
        let items =
            parse_batch(r#"{"notifications":[{"users":["a"],"type":"t"},{"type":5},{"users":["b"],"type":"u"}]}"#)
                .unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[2].is_ok());
        assert!(items[1].as_ref().unwrap_err().message.starts_with("type:"));
        assert!(parse_batch("{}").unwrap_err().message.contains("notifications"));
        let too_many = format!(r#"{{"notifications":[{}]}}"#, vec!["{}"; MAX_BATCH + 1].join(","));
        assert_eq!(parse_batch(&too_many).unwrap_err().kind, PublishErrorKind::TooLarge);
    }
}
