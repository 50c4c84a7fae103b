//! What a provider's answer means: pure functions from (status, headers, body) to a [`Verdict`], one per
//! provider, and the guard against mass deletion of addresses. The tables in the tests are the specification
//! (Apple's and Google's error documents, RFC 8030, and the traps in `anchors-server.md` §2.2: never delete on
//! 5xx or 413; APNs 410 only for an address older than its timestamp; bad credentials stop the provider instead
//! of deleting tokens).

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::Value;

use crate::planner::UnixMs;

/// A provider's HTTP answer, as the classifiers read it.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    /// HTTP status.
    pub status: u16,
    /// The `Retry-After` header (seconds or an HTTP date).
    pub retry_after: Option<&'a str>,
    /// The provider's id for an accepted message: APNs `apns-id`, Web Push `Location` (FCM's is in the body).
    pub message_id: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// What to do after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The provider took it.
    Accepted {
        /// The provider's message id, for support (APNs `apns-id`, FCM `name`, Web Push `Location`).
        provider_id: Option<String>,
    },
    /// The address is dead: delete it (subject to the [`DeletionGuard`]).
    DeviceGone {
        /// The provider's reason.
        reason: String,
    },
    /// APNs says the token died before it was registered here: the device registered it again since, so keep
    /// the address and do not retry this push.
    Stale {
        /// The provider's reason.
        reason: String,
    },
    /// Try again later (429, 5xx, GOAWAY, connection failures).
    Retry {
        /// At least this long, when the provider said so (`Retry-After`).
        after: Option<Duration>,
        /// The provider's reason.
        reason: String,
        /// Renew the credential first (APNs provider token, FCM access token).
        renew_auth: bool,
        /// Replace the connection first.
        reconnect: bool,
    },
    /// The payload was refused (too large, 413). Never delete the address for it.
    PayloadRejected {
        /// The provider's reason.
        reason: String,
    },
    /// The request was refused for a reason retrying will not fix and that is not about the device (a bug on
    /// our side): log it, keep the address.
    Rejected {
        /// The provider's reason.
        reason: String,
    },
    /// Credentials or configuration are wrong. `certain`: the error is about the whole provider (bad key, wrong
    /// topic) — stop it; otherwise it may be about one address (a subscription made for another VAPID key, an
    /// FCM token of another sender) and the provider stops only when several come in a row.
    ConfigError {
        /// The provider's reason.
        reason: String,
        /// Whether it is surely about the whole provider.
        certain: bool,
    },
}

fn retry(after: Option<Duration>, reason: impl Into<String>) -> Verdict {
    Verdict::Retry { after, reason: reason.into(), renew_auth: false, reconnect: false }
}

fn config(reason: impl Into<String>, certain: bool) -> Verdict {
    Verdict::ConfigError { reason: reason.into(), certain }
}

/// `Retry-After` as a delay from `now`: delay-seconds, or an HTTP date (RFC 9110 §10.2.3). Dates in the past
/// mean "now"; unreadable values are ignored.
pub fn parse_retry_after(value: &str, now: UnixMs) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp().as_millisecond();
    let at = u64::try_from(at).unwrap_or(0);
    Some(Duration::from_millis(at.saturating_sub(now)))
}

fn text(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_owned()
    }
}

// ---- APNs -------------------------------------------------------------------------------------------------

/// Classifies an APNs answer. `registered_at`: when the device's token was registered here (ms), compared with
/// the `timestamp` APNs gives with 410.
pub fn classify_apns(a: &Answer<'_>, registered_at: UnixMs, now: UnixMs) -> Verdict {
    let json: Value = serde_json::from_slice(a.body).unwrap_or(Value::Null);
    let reason = json.get("reason").and_then(Value::as_str).unwrap_or("").to_owned();
    let after = a.retry_after.and_then(|v| parse_retry_after(v, now));
    let said = |what: &str| if reason.is_empty() { what.to_owned() } else { reason.clone() };
    match (a.status, reason.as_str()) {
        (200, _) => Verdict::Accepted { provider_id: a.message_id.map(str::to_owned) },
        (410, _) => {
            // `timestamp`: ms since the epoch when APNs learnt the token was no longer valid.
            match json.get("timestamp").and_then(Value::as_u64) {
                Some(dead_since) if registered_at >= dead_since => Verdict::Stale {
                    reason: format!(
                        "{} since {dead_since}, but the token was registered again at {registered_at}",
                        said("Unregistered")
                    ),
                },
                _ => Verdict::DeviceGone { reason: said("Unregistered") },
            }
        }
        (400, "BadDeviceToken") => Verdict::DeviceGone { reason },
        (400, "DeviceTokenNotForTopic") => config(reason, false),
        (400, "BadTopic" | "TopicDisallowed" | "MissingTopic" | "BadCertificateEnvironment" | "BadCertificate") => {
            config(reason, true)
        }
        (403, "ExpiredProviderToken") => Verdict::Retry { after: None, reason, renew_auth: true, reconnect: false },
        (403, _) => config(said("Forbidden"), true),
        (404, _) => config(format!("{} (is the APNs URL right?)", said("BadPath")), true),
        (413, _) => Verdict::PayloadRejected { reason: said("PayloadTooLarge") },
        (429, _) => retry(after, said("TooManyRequests")),
        (503, _) => Verdict::Retry { after, reason: said("ServiceUnavailable"), renew_auth: false, reconnect: true },
        (500..=599, _) => retry(after, said("InternalServerError")),
        (_, _) => Verdict::Rejected { reason: format!("HTTP {}: {}", a.status, said("rejected")) },
    }
}

// ---- FCM --------------------------------------------------------------------------------------------------

/// Classifies an FCM HTTP v1 answer (`{"error":{"code","message","status","details":[{"errorCode"}]}}`).
pub fn classify_fcm(a: &Answer<'_>, now: UnixMs) -> Verdict {
    let json: Value = serde_json::from_slice(a.body).unwrap_or(Value::Null);
    if a.status == 200 {
        let name = json.get("name").and_then(Value::as_str).map(str::to_owned);
        return Verdict::Accepted { provider_id: name };
    }
    let error = &json["error"];
    let status = error.get("status").and_then(Value::as_str).unwrap_or("");
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    // FcmError's errorCode (UNREGISTERED, SENDER_ID_MISMATCH, QUOTA_EXCEEDED, THIRD_PARTY_AUTH_ERROR, …); quota
    // errors may instead carry ErrorInfo{reason}.
    let code = error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|d| d.get("errorCode").or_else(|| d.get("reason")).and_then(Value::as_str))
        .unwrap_or(status);
    let reason = if message.is_empty() { format!("HTTP {}: {code}", a.status) } else { format!("{code}: {message}") };
    let after = a.retry_after.and_then(|v| parse_retry_after(v, now));
    match (a.status, code) {
        (404, "UNREGISTERED") | (400, "UNREGISTERED") => Verdict::DeviceGone { reason },
        // "The registration token is not a valid FCM registration token": a dead or malformed token.
        (400, _) if message.contains("registration token") => Verdict::DeviceGone { reason },
        (400, _) if message.contains("too big") || message.contains("too large") => Verdict::PayloadRejected { reason },
        (400, _) => Verdict::Rejected { reason },
        (401, "THIRD_PARTY_AUTH_ERROR") => config(reason, true),
        // The access token expired or was revoked: get a new one.
        (401, _) => Verdict::Retry { after: None, reason, renew_auth: true, reconnect: false },
        (403, "SENDER_ID_MISMATCH") => config(reason, false),
        (403, _) => config(reason, true),
        (404, _) => config(format!("{reason} (is the project id right?)"), true),
        (413, _) => Verdict::PayloadRejected { reason },
        (429, _) => retry(after, reason),
        (500..=599, _) => retry(after, reason),
        _ => Verdict::Rejected { reason },
    }
}

// ---- Web Push ---------------------------------------------------------------------------------------------

/// Classifies a push service's answer (RFC 8030; the services' documented errors).
pub fn classify_web_push(a: &Answer<'_>, now: UnixMs) -> Verdict {
    let after = a.retry_after.and_then(|v| parse_retry_after(v, now));
    let body = text(a.body);
    let reason = |what: &str| {
        if body.is_empty() { format!("HTTP {} {what}", a.status) } else { format!("HTTP {}: {body}", a.status) }
    };
    match a.status {
        200..=202 => Verdict::Accepted { provider_id: a.message_id.map(str::to_owned) },
        404 | 410 => Verdict::DeviceGone { reason: reason("subscription expired or unsubscribed") },
        413 => Verdict::PayloadRejected { reason: reason("payload too large") },
        // The VAPID key: wrong for the whole server, or not the key this subscription was made with.
        401 | 403 => config(reason("VAPID authorization refused"), false),
        429 => retry(after, reason("too many requests")),
        500..=599 => retry(after, reason("push service error")),
        _ => Verdict::Rejected { reason: reason("rejected") },
    }
}

// ---- Transport --------------------------------------------------------------------------------------------

/// A request that got no HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    /// The server sent an HTTP/2 GOAWAY that covered this request: the connection is going away.
    GoAway {
        /// The GOAWAY's error code and debug data.
        reason: String,
    },
    /// The stream was refused (`REFUSED_STREAM`): nothing was processed; safe to send again.
    RefusedStream,
    /// The connection closed under the request (end of stream, reset, broken pipe), e.g. right after a GOAWAY
    /// with an error: h2 fails streams the server had already taken this way.
    Closed(String),
    /// No connection (refused, TLS handshake, DNS).
    Connect(String),
    /// No answer in time.
    Timeout,
    /// Anything else on the wire.
    Other(String),
}

/// Classifies a request that got no answer: always a retry; replace the connection unless only the stream was
/// refused.
pub fn classify_transport(f: &TransportFailure) -> Verdict {
    let (reason, reconnect) = match f {
        TransportFailure::GoAway { reason } => (format!("GOAWAY: {reason}"), true),
        TransportFailure::RefusedStream => ("stream refused".to_owned(), false),
        TransportFailure::Closed(e) => (format!("connection closed: {e}"), true),
        TransportFailure::Connect(e) => (format!("cannot connect: {e}"), true),
        TransportFailure::Timeout => ("no answer in time".to_owned(), true),
        TransportFailure::Other(e) => (e.clone(), true),
    };
    Verdict::Retry { after: None, reason, renew_auth: false, reconnect }
}

// ---- Mass deletion guard ----------------------------------------------------------------------------------

/// Pauses address deletions when "device gone" answers come at a suspicious rate — the signature of a wrong
/// environment or credentials (every APNs token of a sandbox build looks dead to production), not of users
/// uninstalling apps. Over a sliding window of recent results per provider: at least `min_gone` gone answers
/// making up at least `max_ratio` of the results pause deletions for `pause`.
#[derive(Clone, Debug)]
pub struct DeletionGuard {
    window: Duration,
    min_gone: usize,
    max_ratio: f64,
    pause: Duration,
    recent: VecDeque<(UnixMs, bool)>,
    paused_until: Option<UnixMs>,
}

/// What the guard says about one gone answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardDecision {
    /// Delete the address.
    Delete,
    /// Keep it: deletions are paused. `newly`: this answer tripped the guard (warn once).
    Paused {
        /// Whether this answer started the pause.
        newly: bool,
    },
}

impl Default for DeletionGuard {
    /// One minute of results; 10 gone answers making up 20 % pause deletions for 10 minutes (sockudo's
    /// thresholds).
    fn default() -> Self {
        DeletionGuard::new(Duration::from_secs(60), 10, 0.2, Duration::from_secs(600))
    }
}

impl DeletionGuard {
    /// A guard with explicit thresholds.
    pub fn new(window: Duration, min_gone: usize, max_ratio: f64, pause: Duration) -> Self {
        DeletionGuard { window, min_gone, max_ratio, pause, recent: VecDeque::new(), paused_until: None }
    }

    /// Records a result that is not "device gone" (accepted, retried, …).
    pub fn record_ok(&mut self, now: UnixMs) {
        self.push(now, false);
    }

    /// Records a "device gone" answer and says whether to delete the address.
    pub fn record_gone(&mut self, now: UnixMs) -> GuardDecision {
        self.push(now, true);
        if self.paused_until.is_some_and(|until| now < until) {
            return GuardDecision::Paused { newly: false };
        }
        let gone = self.recent.iter().filter(|(_, g)| *g).count();
        if gone >= self.min_gone && gone as f64 >= self.max_ratio * self.recent.len() as f64 {
            self.paused_until = Some(now.saturating_add(u64::try_from(self.pause.as_millis()).unwrap_or(u64::MAX)));
            return GuardDecision::Paused { newly: true };
        }
        GuardDecision::Delete
    }

    /// Whether deletions are paused at `now`.
    pub fn is_paused(&self, now: UnixMs) -> bool {
        self.paused_until.is_some_and(|until| now < until)
    }

    fn push(&mut self, now: UnixMs, gone: bool) {
        let horizon = now.saturating_sub(u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX));
        while self.recent.front().is_some_and(|(at, _)| *at < horizon) {
            self.recent.pop_front();
        }
        self.recent.push_back((now, gone));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMs = 1_780_000_000_000;

    fn answer(status: u16, body: &str) -> Answer<'_> {
        Answer { status, retry_after: None, message_id: None, body: body.as_bytes() }
    }

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Accepted { .. } => "accepted",
            Verdict::DeviceGone { .. } => "gone",
            Verdict::Stale { .. } => "stale",
            Verdict::Retry { renew_auth: true, .. } => "retry+renew",
            Verdict::Retry { reconnect: true, .. } => "retry+reconnect",
            Verdict::Retry { .. } => "retry",
            Verdict::PayloadRejected { .. } => "payload",
            Verdict::Rejected { .. } => "rejected",
            Verdict::ConfigError { certain: true, .. } => "config",
            Verdict::ConfigError { certain: false, .. } => "config?",
        }
    }

    #[test]
    fn apns_table() {
        let registered = 1_700_000_000_000u64;
        #[rustfmt::skip]
        let table: &[(u16, &str, &str)] = &[
            (200, "", "accepted"),
            (400, r#"{"reason":"BadDeviceToken"}"#, "gone"),
            (400, r#"{"reason":"DeviceTokenNotForTopic"}"#, "config?"),
            (400, r#"{"reason":"BadTopic"}"#, "config"),
            (400, r#"{"reason":"TopicDisallowed"}"#, "config"),
            (400, r#"{"reason":"MissingTopic"}"#, "config"),
            (400, r#"{"reason":"BadCertificateEnvironment"}"#, "config"),
            (400, r#"{"reason":"BadCollapseId"}"#, "rejected"),
            (400, r#"{"reason":"PayloadEmpty"}"#, "rejected"),
            (403, r#"{"reason":"ExpiredProviderToken"}"#, "retry+renew"),
            (403, r#"{"reason":"InvalidProviderToken"}"#, "config"),
            (403, r#"{"reason":"MissingProviderToken"}"#, "config"),
            (404, r#"{"reason":"BadPath"}"#, "config"),
            (405, r#"{"reason":"MethodNotAllowed"}"#, "rejected"),
            (410, r#"{"reason":"Unregistered","timestamp":1710000000000}"#, "gone"),
            (410, r#"{"reason":"Unregistered","timestamp":1690000000000}"#, "stale"),
            (410, r#"{"reason":"ExpiredToken"}"#, "gone"),
            (413, r#"{"reason":"PayloadTooLarge"}"#, "payload"),
            (429, r#"{"reason":"TooManyRequests"}"#, "retry"),
            (429, r#"{"reason":"TooManyProviderTokenUpdates"}"#, "retry"),
            (500, r#"{"reason":"InternalServerError"}"#, "retry"),
            (503, r#"{"reason":"ServiceUnavailable"}"#, "retry+reconnect"),
            (503, r#"{"reason":"Shutdown"}"#, "retry+reconnect"),
            (502, "<html>bad gateway</html>", "retry"),
        ];
        for (status, body, expected) in table {
            let v = classify_apns(&answer(*status, body), registered, NOW);
            assert_eq!(kind(&v), *expected, "APNs {status} {body}: {v:?}");
        }
        let ok = Answer { message_id: Some("8E6D0C1A-0000"), ..answer(200, "") };
        assert_eq!(classify_apns(&ok, 0, NOW), Verdict::Accepted { provider_id: Some("8E6D0C1A-0000".into()) });
        let limited = Answer { retry_after: Some("120"), ..answer(429, r#"{"reason":"TooManyRequests"}"#) };
        assert!(
            matches!(classify_apns(&limited, 0, NOW), Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(120))
        );
    }

    #[test]
    fn fcm_table() {
        let err = |status: u16, st: &str, code: &str, message: &str| {
            format!(
                r#"{{"error":{{"code":{status},"message":"{message}","status":"{st}","details":[{{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"{code}"}}]}}}}"#
            )
        };
        #[rustfmt::skip]
        let table: Vec<(u16, String, &str)> = vec![
            (200, r#"{"name":"projects/p/messages/0:123"}"#.into(), "accepted"),
            (404, err(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."), "gone"),
            (400, err(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"), "gone"),
            (400, err(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Message is too big"), "payload"),
            (400, err(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'"), "rejected"),
            (401, err(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "APNs certificate or web push auth key was invalid"), "config"),
            (401, r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#.into(), "retry+renew"),
            (403, err(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"), "config?"),
            (403, r#"{"error":{"code":403,"message":"Permission 'cloudmessaging.messages.create' denied","status":"PERMISSION_DENIED"}}"#.into(), "config"),
            (404, r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}"#.into(), "config"),
            (429, err(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded"), "retry"),
            (429, r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED"}]}}"#.into(), "retry"),
            (500, err(500, "INTERNAL", "INTERNAL", "Internal error"), "retry"),
            (503, err(503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable"), "retry"),
            (502, "Bad Gateway".into(), "retry"),
        ];
        for (status, body, expected) in &table {
            let v = classify_fcm(&answer(*status, body), NOW);
            assert_eq!(kind(&v), *expected, "FCM {status} {body}: {v:?}");
        }
        assert_eq!(
            classify_fcm(&answer(200, r#"{"name":"projects/p/messages/0:123"}"#), NOW),
            Verdict::Accepted { provider_id: Some("projects/p/messages/0:123".into()) }
        );
        let v = classify_fcm(&answer(404, &err(404, "NOT_FOUND", "UNREGISTERED", "gone")), NOW);
        assert_eq!(v, Verdict::DeviceGone { reason: "UNREGISTERED: gone".into() });
    }

    #[test]
    fn web_push_table() {
        #[rustfmt::skip]
        let table: &[(u16, &str)] = &[
            (201, "accepted"), (200, "accepted"), (202, "accepted"),
            (400, "rejected"), (401, "config?"), (403, "config?"),
            (404, "gone"), (410, "gone"), (413, "payload"),
            (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"),
        ];
        for (status, expected) in table {
            let v = classify_web_push(&answer(*status, ""), NOW);
            assert_eq!(kind(&v), *expected, "Web Push {status}: {v:?}");
        }
        let created = Answer { message_id: Some("https://push.example/m/1"), ..answer(201, "") };
        assert_eq!(
            classify_web_push(&created, NOW),
            Verdict::Accepted { provider_id: Some("https://push.example/m/1".into()) }
        );
        let gone = classify_web_push(&answer(410, "push subscription has unsubscribed or expired.\n"), NOW);
        assert_eq!(
            gone,
            Verdict::DeviceGone { reason: "HTTP 410: push subscription has unsubscribed or expired.".into() }
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("30", NOW), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 0 ", NOW), Some(Duration::ZERO));
        // NOW = 2026-05-28T20:26:40Z.
        assert_eq!(parse_retry_after("Thu, 28 May 2026 20:27:10 GMT", NOW), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Thu, 28 May 2026 20:00:00 GMT", NOW), Some(Duration::ZERO), "in the past");
        assert_eq!(parse_retry_after("soon", NOW), None);
        assert_eq!(parse_retry_after("-5", NOW), None);
        let a = Answer { retry_after: Some("Thu, 28 May 2026 20:28:40 GMT"), ..answer(503, "") };
        assert!(
            matches!(classify_web_push(&a, NOW), Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(120))
        );
    }

    #[test]
    fn transport_failures_are_retried_and_replace_the_connection_unless_only_a_stream_was_refused() {
        for (f, expected) in [
            (TransportFailure::GoAway { reason: "NO_ERROR".into() }, "retry+reconnect"),
            (TransportFailure::RefusedStream, "retry"),
            (TransportFailure::Closed("broken pipe".into()), "retry+reconnect"),
            (TransportFailure::Connect("connection refused".into()), "retry+reconnect"),
            (TransportFailure::Timeout, "retry+reconnect"),
            (TransportFailure::Other("reset".into()), "retry+reconnect"),
        ] {
            assert_eq!(kind(&classify_transport(&f)), expected, "{f:?}");
        }
    }

    #[test]
    fn the_guard_pauses_deletions_when_a_batch_turns_bad() {
        let mut g = DeletionGuard::default();
        // Normal churn: a gone answer among many successes deletes.
        for i in 0..95 {
            g.record_ok(NOW + i);
        }
        for i in 0..5 {
            assert_eq!(g.record_gone(NOW + 100 + i), GuardDecision::Delete);
        }
        // A run of gone answers: the tenth makes 10 of 105 (9.5 %), still below 20 %…
        for i in 0..5 {
            assert_eq!(g.record_gone(NOW + 200 + i), GuardDecision::Delete);
        }
        // …and then it turns bad: 20 % reached at 24 gone of 119.
        let mut decisions = Vec::new();
        for i in 0..20 {
            decisions.push(g.record_gone(NOW + 300 + i));
        }
        let first_pause = decisions.iter().position(|d| *d != GuardDecision::Delete).unwrap();
        assert_eq!(decisions[first_pause], GuardDecision::Paused { newly: true });
        assert!(decisions[first_pause + 1..].iter().all(|d| *d == GuardDecision::Paused { newly: false }));
        assert!(g.is_paused(NOW + 400));
        // Ten minutes later, with the window drained, deletions resume.
        let later = NOW + 11 * 60_000;
        assert!(!g.is_paused(later));
        for i in 0..50 {
            g.record_ok(later + i);
        }
        assert_eq!(g.record_gone(later + 100), GuardDecision::Delete);
    }

    #[test]
    fn few_gone_answers_never_pause_even_at_a_high_ratio() {
        let mut g = DeletionGuard::default();
        for i in 0..9 {
            assert_eq!(g.record_gone(NOW + i), GuardDecision::Delete, "answer {i}");
        }
        assert_eq!(g.record_gone(NOW + 9), GuardDecision::Paused { newly: true }, "the tenth");
    }
}
