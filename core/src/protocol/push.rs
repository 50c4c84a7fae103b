//! Push payloads (protocol §11): the three forms a push carries — the full envelope, the lightweight form of a
//! notification too large for the provider, and the summary of a digest or of what quiet hours held.

use std::borrow::Cow;

use super::json::Reader;
use super::{DecodeError, Notification, decode_notification, validate_id};

/// Most ids a summary lists (its `count` may be larger).
pub const MAX_SUMMARY_IDS: usize = 20;

/// What a push payload carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushPayload {
    /// `tidings`: the notification envelope.
    Full(Notification),
    /// `tidings_fetch`: the notification was too large for the provider; fetch it by id with the user's token
    /// (`GET /v1/me/notifications/{id}`), and show `title` if that fails.
    Fetch {
        /// The notification id.
        id: String,
        /// Its title, if it has one.
        title: Option<String>,
    },
    /// `tidings_summary`: several notifications in one push.
    Summary(PushSummary),
}

/// Which summary a push is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryKind {
    /// Informational notifications of one group, collected over a digest window.
    Digest,
    /// What was held during the user's quiet hours.
    QuietHours,
}

impl SummaryKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SummaryKind::Digest => "digest",
            SummaryKind::QuietHours => "quiet_hours",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "digest" => Some(SummaryKind::Digest),
            "quiet_hours" => Some(SummaryKind::QuietHours),
            _ => None,
        }
    }
}

/// A digest or quiet-hours summary push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSummary {
    /// Digest or quiet hours.
    pub kind: SummaryKind,
    /// The digest's group.
    pub group: Option<String>,
    /// How many notifications it stands for.
    pub count: u64,
    /// The ids, newest first (at most [`MAX_SUMMARY_IDS`]).
    pub ids: Vec<String>,
    /// The newest one's title.
    pub title: Option<String>,
}

impl PushSummary {
    /// Checks ids and sizes.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.ids.is_empty() || self.ids.len() > MAX_SUMMARY_IDS {
            return Err(DecodeError::new(format!("a summary lists 1 to {MAX_SUMMARY_IDS} ids")));
        }
        for id in &self.ids {
            validate_id(id).map_err(|e| DecodeError::new(format!("summary id: {e}")))?;
        }
        if self.count < self.ids.len() as u64 {
            return Err(DecodeError::new("a summary's count is at least the number of ids it lists"));
        }
        Ok(())
    }
}

/// The value of `key` in a push payload: an object, or (FCM `data` values are strings) the JSON text of one.
fn inner<'a>(r: &mut Reader<'a>) -> Result<Cow<'a, str>, DecodeError> {
    if r.peek() == Some(b'"') { r.string() } else { Ok(Cow::Borrowed(r.raw_value()?)) }
}

/// Decodes a push payload in any of its forms (protocol §11.1): `{"tidings": envelope}`, the bare envelope,
/// `{"tidings_fetch": {"id","title"}}` or `{"tidings_summary": {…}}` — each value an object, or its JSON text as
/// FCM `data` carries it. Whatever else the payload holds (`aps`, …) is ignored. The result is validated.
pub fn decode_push(payload: &str) -> Result<PushPayload, DecodeError> {
    let mut r = Reader::new(payload);
    let mut full: Option<Cow<'_, str>> = None;
    let mut fetch: Option<Cow<'_, str>> = None;
    let mut summary: Option<Cow<'_, str>> = None;
    let scan = (|| -> Result<(), DecodeError> {
        r.begin_object()?;
        let mut first = true;
        while let Some(key) = r.next_key(&mut first)? {
            match &*key {
                "tidings" => full = Some(inner(&mut r)?),
                "tidings_fetch" => fetch = Some(inner(&mut r)?),
                "tidings_summary" => summary = Some(inner(&mut r)?),
                _ => {
                    r.raw_value()?;
                }
            }
        }
        r.end()
    })();
    scan.map_err(|e| DecodeError::new(format!("push payload is not a JSON object: {}", e.message())))?;
    if let Some(text) = fetch {
        let (id, title) = decode_fetch(&text)
            .map_err(|e| DecodeError::new(format!("push payload: invalid tidings_fetch: {}", e.message())))?;
        return Ok(PushPayload::Fetch { id, title });
    }
    if let Some(text) = summary {
        let s = decode_summary(&text)
            .map_err(|e| DecodeError::new(format!("push payload: invalid tidings_summary: {}", e.message())))?;
        return Ok(PushPayload::Summary(s));
    }
    let envelope = full.as_deref().unwrap_or(payload);
    let n = decode_notification(envelope)
        .map_err(|e| DecodeError::new(format!("push payload: invalid envelope: {}", e.message())))?;
    n.validate()?;
    Ok(PushPayload::Full(n))
}

fn opt_string(r: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    if r.null() { Ok(None) } else { Ok(Some(r.string()?.into_owned())) }
}

fn decode_fetch(text: &str) -> Result<(String, Option<String>), DecodeError> {
    let mut r = Reader::new(text);
    let (mut id, mut title) = (None, None);
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        match &*key {
            "id" => id = opt_string(&mut r)?,
            "title" => title = opt_string(&mut r)?,
            _ => {
                r.raw_value()?;
            }
        }
    }
    r.end()?;
    let id = id.ok_or_else(|| DecodeError::new("missing member `id`"))?;
    validate_id(&id).map_err(|e| DecodeError::new(format!("id: {e}")))?;
    Ok((id, title))
}

fn decode_summary(text: &str) -> Result<PushSummary, DecodeError> {
    let mut r = Reader::new(text);
    let (mut kind, mut group, mut count, mut ids, mut title) = (None, None, None, None, None);
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        match &*key {
            "kind" => {
                let k = r.string()?;
                kind = Some(SummaryKind::parse(&k).ok_or_else(|| DecodeError::new("unknown value of member `kind`"))?);
            }
            "group" => group = opt_string(&mut r)?,
            "count" => count = Some(r.u64()?),
            "title" => title = opt_string(&mut r)?,
            "ids" => {
                let mut list = Vec::new();
                r.begin_array()?;
                let mut first = true;
                while r.next_element(&mut first)? {
                    list.push(r.string()?.into_owned());
                }
                ids = Some(list);
            }
            _ => {
                r.raw_value()?;
            }
        }
    }
    r.end()?;
    let ids = ids.ok_or_else(|| DecodeError::new("missing member `ids`"))?;
    let summary = PushSummary {
        kind: kind.ok_or_else(|| DecodeError::new("missing member `kind`"))?,
        group,
        count: count.unwrap_or(ids.len() as u64),
        ids,
        title,
    };
    summary.validate()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{NotificationFields, Persistence, Priority, encode_notification};

    fn sample() -> Notification {
        Notification::from(NotificationFields {
            id: "n1".into(),
            stream: "user:alice".into(),
            offset: Some(3),
            epoch: "e".into(),
            kind: "comment.created".into(),
            priority: Priority::Important,
            persistence: Persistence::Bufferable,
            title: Some("Hi".into()),
            body: None,
            data: None,
            group: None,
            created_at: 5,
        })
    }

    #[test]
    fn every_form_from_every_provider() {
        let env = encode_notification(&sample());
        let quoted = |s: &str| {
            let mut out = String::new();
            crate::protocol::push_json_str(&mut out, s);
            out
        };
        // APNs and Web Push carry objects, FCM data the JSON text of them.
        for full in [
            format!(r#"{{"aps":{{"alert":"x"}},"tidings":{env}}}"#),
            format!(r#"{{"tidings":{}}}"#, quoted(&env)),
            env.clone(),
        ] {
            assert_eq!(decode_push(&full).unwrap(), PushPayload::Full(sample()), "{full}");
        }
        let fetch = r#"{"id":"n.big:1","title":"A long one"}"#;
        for text in
            [format!(r#"{{"aps":{{}},"tidings_fetch":{fetch}}}"#), format!(r#"{{"tidings_fetch":{}}}"#, quoted(fetch))]
        {
            assert_eq!(
                decode_push(&text).unwrap(),
                PushPayload::Fetch { id: "n.big:1".into(), title: Some("A long one".into()) }
            );
        }
        assert_eq!(
            decode_push(r#"{"tidings_fetch":{"id":"x"}}"#).unwrap(),
            PushPayload::Fetch { id: "x".into(), title: None }
        );
        let summary = r#"{"kind":"digest","group":"likes:p1","count":25,"ids":["c","b","a"],"title":"Cid liked it"}"#;
        let want = PushSummary {
            kind: SummaryKind::Digest,
            group: Some("likes:p1".into()),
            count: 25,
            ids: vec!["c".into(), "b".into(), "a".into()],
            title: Some("Cid liked it".into()),
        };
        for text in
            [format!(r#"{{"tidings_summary":{summary}}}"#), format!(r#"{{"tidings_summary":{}}}"#, quoted(summary))]
        {
            assert_eq!(decode_push(&text).unwrap(), PushPayload::Summary(want.clone()));
        }
        let quiet = decode_push(r#"{"tidings_summary":{"kind":"quiet_hours","count":1,"ids":["a"]}}"#).unwrap();
        assert!(matches!(quiet, PushPayload::Summary(PushSummary { kind: SummaryKind::QuietHours, group: None, .. })));
    }

    #[test]
    fn malformed_forms_are_refused_with_what_is_wrong() {
        let err = |t: &str| decode_push(t).unwrap_err().message().to_string();
        assert!(err(r#"{"tidings_fetch":{"title":"x"}}"#).contains("missing member `id`"));
        assert!(err(r#"{"tidings_fetch":{"id":"has space"}}"#).contains("id:"));
        assert!(err(r#"{"tidings_summary":{"kind":"weekly","ids":["a"]}}"#).contains("kind"));
        assert!(err(r#"{"tidings_summary":{"kind":"digest","ids":[]}}"#).contains("1 to 20 ids"));
        assert!(err(r#"{"tidings_summary":{"kind":"digest","count":1,"ids":["a","b"]}}"#).contains("count"));
        assert!(err("[1]").contains("not a JSON object"));
        assert!(err(r#"{"aps":{}}"#).contains("invalid envelope"), "no Tidings key at all");
    }
}
