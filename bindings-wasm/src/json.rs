//! The JSON the binding hands to its JavaScript wrapper: application events, connection states, push outcomes.
//! Written by hand (the core's codec writes the notification envelopes) so that no serializer is linked in.

use tidings_core::protocol::api::{ApiError, ApiRequest, Preferences, QuietHoursSettings, Selector};
use tidings_core::protocol::{encode_notification, push_json_str as push_str, push_json_u64 as push_u64};
use tidings_core::{ConnectionState, Continuity, Digest, Event, PushOutcome};

/// A JSON object being written.
pub(crate) struct Obj(String);

impl Obj {
    pub(crate) fn new() -> Self {
        Obj(String::from("{"))
    }

    fn key(&mut self, key: &str) -> &mut String {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(key);
        self.0.push_str("\":");
        &mut self.0
    }

    pub(crate) fn str(mut self, key: &str, value: &str) -> Self {
        let out = self.key(key);
        push_str(out, value);
        self
    }

    pub(crate) fn num(mut self, key: &str, value: u64) -> Self {
        let out = self.key(key);
        push_u64(out, value);
        self
    }

    pub(crate) fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }

    /// A member whose value is JSON text already.
    pub(crate) fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key).push_str(json);
        self
    }

    pub(crate) fn strs<'a>(mut self, key: &str, values: impl IntoIterator<Item = &'a String>) -> Self {
        push_strs(self.key(key), values);
        self
    }

    pub(crate) fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn push_strs<'a>(out: &mut String, values: impl IntoIterator<Item = &'a String>) {
    out.push('[');
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, v);
    }
    out.push(']');
}

/// A JSON array of strings.
pub(crate) fn strs(values: &[String]) -> String {
    let mut out = String::new();
    push_strs(&mut out, values);
    out
}

/// `{"kind":"connected"}`, `{"kind":"reconnecting","attempt":2,"delayMs":740,"reason":"…"}`, …
pub(crate) fn state(s: &ConnectionState) -> String {
    match s {
        ConnectionState::Idle => Obj::new().str("kind", "idle"),
        ConnectionState::Connecting { attempt } => {
            Obj::new().str("kind", "connecting").num("attempt", u64::from(*attempt))
        }
        ConnectionState::Connected => Obj::new().str("kind", "connected"),
        ConnectionState::Reconnecting { attempt, delay, reason } => Obj::new()
            .str("kind", "reconnecting")
            .num("attempt", u64::from(*attempt))
            .num("delayMs", u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .str("reason", reason),
        ConnectionState::Suspended { reason } => Obj::new().str("kind", "suspended").str("reason", reason.as_str()),
        ConnectionState::Closed => Obj::new().str("kind", "closed"),
        ConnectionState::Failed { reason, message } => {
            Obj::new().str("kind", "failed").str("reason", reason.as_str()).str("message", message)
        }
    }
    .end()
}

/// `{"kind":"fresh"}`, `{"kind":"resumed","replayed":4}`,
/// `{"kind":"gap","reason":"out_of_buffer","missed":57,"replayed":0}`.
pub(crate) fn continuity(c: &Continuity) -> String {
    match c {
        Continuity::Fresh => Obj::new().str("kind", "fresh"),
        Continuity::Resumed { replayed } => Obj::new().str("kind", "resumed").num("replayed", *replayed),
        Continuity::Gap { reason, missed, replayed } => {
            let o = Obj::new().str("kind", "gap").str("reason", reason.as_str());
            match missed {
                Some(m) => o.num("missed", *m),
                None => o,
            }
            .num("replayed", *replayed)
        }
    }
    .end()
}

/// An application event as JSON: `{"type":"notification","notification":{…}}`, `{"type":"state","state":{…}}`, …
pub(crate) fn event(e: &Event) -> String {
    match e {
        Event::State(s) => Obj::new().str("type", "state").raw("state", &state(s)),
        Event::Notification(n) => Obj::new().str("type", "notification").raw("notification", &encode_notification(n)),
        Event::Digest(d) => Obj::new().str("type", "digest").raw("digest", &digest(d)),
        Event::Continuity { stream, continuity: c } => {
            Obj::new().str("type", "continuity").str("stream", stream).raw("continuity", &continuity(c))
        }
        Event::PushRegistered { platform } => {
            Obj::new().str("type", "push_registered").str("platform", platform.as_str())
        }
        Event::SubscriptionFailed { stream, code, message } => Obj::new()
            .str("type", "subscription_failed")
            .str("stream", stream)
            .str("code", code.as_str())
            .str("message", message),
        Event::PushRegistrationFailed { platform, code, message } => Obj::new()
            .str("type", "push_registration_failed")
            .str("platform", platform.as_str())
            .str("code", code.as_str())
            .str("message", message),
        Event::InboxCounts(c) => Obj::new().str("type", "inbox_counts").raw("counts", &counts(c)),
        Event::InboxChanged => Obj::new().str("type", "inbox_changed"),
        // `Event` is non_exhaustive for apps; this crate is built with the core of its own workspace and encodes
        // every kind that core has (a new kind gets its own JSON form here and its event name in tidings.d.ts).
        other => unreachable!("the browser binding does not encode this kind of core event: {other:?}"),
    }
    .end()
}

/// `{"unseen":…,"unread":…,"total":…,"version":…,"head":…}`.
pub(crate) fn counts(c: &tidings_core::InboxCounts) -> String {
    let mut out = String::new();
    tidings_core::protocol::write_counts(&mut out, c);
    out
}

/// `{"id":…,"frame":{…the answer's frame…}}` or `{"id":…,"error":{"code":…,"message":…}}`.
pub(crate) fn reply(id: u64, result: &Result<tidings_core::Reply, tidings_core::RequestError>) -> String {
    use tidings_core::protocol::{ServerFrame, encode_server_frame};
    use tidings_core::{Reply, RequestError};
    let o = Obj::new().num("id", id);
    match result {
        Ok(reply) => {
            let frame = match reply.clone() {
                Reply::Page(p) => ServerFrame::InboxPage(p),
                Reply::Changed(u) => ServerFrame::Inbox(u),
                Reply::History(h) => ServerFrame::HistoryPage(h),
            };
            o.raw("frame", &encode_server_frame(&frame))
        }
        Err(RequestError::Refused { code, message }) => {
            o.raw("error", &Obj::new().str("code", code.as_str()).str("message", message).end())
        }
        Err(RequestError::TimedOut) => o.raw("error", r#"{"code":"timed_out","message":"no answer in time"}"#),
        Err(RequestError::Closed) => o.raw("error", r#"{"code":"closed","message":"the client was closed"}"#),
    }
    .end()
}

/// `{"group":…,"count":3,"first":{…},"last":{…},"ids":[…]}`.
pub(crate) fn digest(d: &Digest) -> String {
    Obj::new()
        .str("group", &d.group)
        .num("count", u64::from(d.count))
        .raw("first", &encode_notification(&d.first))
        .raw("last", &encode_notification(&d.last))
        .strs("ids", &d.ids)
        .end()
}

/// `{"show":true,"notification":{…}}`, `{"show":false,"id":"…"}`, `{"show":false,"fetch":{"id","title"},
/// "request":{…}}` (fetch the notification, then complete), `{"show":true,"summary":{…}}` or
/// `{"show":true,"titleOnly":{"id","title","reason"}}`.
pub(crate) fn push_outcome(o: &PushOutcome) -> Obj {
    let opt = |o: Obj, key: &str, v: &Option<String>| match v {
        Some(v) => o.str(key, v),
        None => o,
    };
    match o {
        PushOutcome::Show(n) => Obj::new().bool("show", true).raw("notification", &encode_notification(n)),
        PushOutcome::Duplicate { id } => Obj::new().bool("show", false).str("id", id),
        PushOutcome::Fetch { id, title } => {
            let fetch = opt(Obj::new().str("id", id), "title", title).end();
            let request = request(&tidings_core::protocol::api::fetch_notification(id));
            Obj::new().bool("show", false).raw("fetch", &fetch).raw("request", &request)
        }
        PushOutcome::Summary(s) => {
            let mut summary = Obj::new().str("kind", s.kind.as_str());
            summary = opt(summary, "group", &s.group).num("count", s.count).strs("ids", &s.ids);
            let summary = opt(summary, "title", &s.title).end();
            Obj::new().bool("show", true).str("id", &s.ids[0]).raw("summary", &summary)
        }
        PushOutcome::ShowTitle { id, title, reason } => {
            let t = opt(Obj::new().str("id", id), "title", title).str("reason", reason).end();
            Obj::new().bool("show", true).str("id", id).raw("titleOnly", &t)
        }
    }
}

/// `{"method":…,"path":…,"body":…}` (`body` absent without one).
pub(crate) fn request(r: &ApiRequest) -> String {
    let o = Obj::new().str("method", r.method).str("path", &r.path);
    match &r.body {
        Some(b) => o.str("body", b).end(),
        None => o.end(),
    }
}

/// `{"rules":[…],"version":…,"updatedAt":…}`.
pub(crate) fn preferences(p: &Preferences) -> String {
    let mut rules = String::from("[");
    for (i, r) in p.rules.iter().enumerate() {
        if i > 0 {
            rules.push(',');
        }
        let o = match &r.selector {
            Selector::Type(t) => Obj::new().str("type", t),
            Selector::Topic(t) => Obj::new().str("topic", t),
        };
        rules.push_str(&o.str("channel", r.channel.as_str()).bool("enabled", r.enabled).end());
    }
    rules.push(']');
    Obj::new().raw("rules", &rules).num("version", p.version).num("updatedAt", p.updated_at).end()
}

/// `{"quietHours":{"timeZone":…,"ranges":[…]}|null,"version":…,"updatedAt":…}`.
pub(crate) fn quiet_hours(q: &QuietHoursSettings) -> String {
    let quiet = match &q.quiet_hours {
        None => "null".to_owned(),
        Some(q) => {
            let mut ranges = String::from("[");
            for (i, r) in q.ranges.iter().enumerate() {
                if i > 0 {
                    ranges.push(',');
                }
                ranges.push_str(&Obj::new().str("day", &r.day).str("start", &r.start).str("end", &r.end).end());
            }
            ranges.push(']');
            Obj::new().str("timeZone", &q.time_zone).raw("ranges", &ranges).end()
        }
    };
    Obj::new().raw("quietHours", &quiet).num("version", q.version).num("updatedAt", q.updated_at).end()
}

/// An API failure as `{"error":{"kind","status","code","message","retryAfterMs"}}`.
pub(crate) fn api_error(e: &ApiError) -> String {
    let inner = match e {
        ApiError::Unauthorized { code, message } => {
            Obj::new().str("kind", "unauthorized").num("status", 401).str("code", code).str("message", message)
        }
        ApiError::Refused { status, code, message } => Obj::new()
            .str("kind", "refused")
            .num("status", u64::from(*status))
            .str("code", code)
            .str("message", message),
        ApiError::Unavailable { status, message, retry_after_ms } => {
            let mut o = Obj::new().str("kind", "unavailable").str("message", message);
            if let Some(s) = status {
                o = o.num("status", u64::from(*s));
            }
            if let Some(ms) = retry_after_ms {
                o = o.num("retryAfterMs", *ms);
            }
            o
        }
        ApiError::Malformed(m) => Obj::new().str("kind", "malformed").str("message", m),
    };
    Obj::new().raw("error", &inner.end()).end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers_are_escaped_and_written() {
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn states_are_tagged_objects() {
        let s = state(&ConnectionState::Reconnecting {
            attempt: 2,
            delay: std::time::Duration::from_millis(740),
            reason: "connection closed (1006)".into(),
        });
        assert_eq!(s, r#"{"kind":"reconnecting","attempt":2,"delayMs":740,"reason":"connection closed (1006)"}"#);
    }

    #[test]
    fn events_are_typed_objects() {
        let e = Event::Continuity {
            stream: "user:alice".into(),
            continuity: Continuity::Gap { reason: tidings_core::GapReason::OutOfBuffer, missed: Some(57), replayed: 0 },
        };
        assert_eq!(
            event(&e),
            r#"{"type":"continuity","stream":"user:alice","continuity":{"kind":"gap","reason":"out_of_buffer","missed":57,"replayed":0}}"#
        );
        assert_eq!(
            event(&Event::State(ConnectionState::Connected)),
            r#"{"type":"state","state":{"kind":"connected"}}"#
        );
        let dup = push_outcome(&PushOutcome::Duplicate { id: "n1".into() }).end();
        assert_eq!(dup, r#"{"show":false,"id":"n1"}"#);
    }
}
