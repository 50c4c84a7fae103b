//! The HTTP API an SDK calls with the user's token (protocol §9.5, §9.6): preferences, quiet hours, the fetch of
//! a notification a push was too large to carry, and acks from a push handler. Sans-IO like the rest of the
//! core: [`ApiRequest`]s to send and parsers of the answers; each platform's driver moves the bytes (the native
//! driver with its own HTTP/1.1 client, the browser with `fetch`) and adds `Authorization: Bearer <token>`.

use super::json::{ObjectWriter, Reader};
use super::{DecodeError, Notification, decode_notification, push_json_str};

/// A delivery channel a preference applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Live delivery over the WebSocket (and replay).
    Socket,
    /// Push (APNs, FCM, Web Push), digests and quiet-hours summaries included.
    Push,
}

impl Channel {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Socket => "socket",
            Channel::Push => "push",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "socket" => Some(Channel::Socket),
            "push" => Some(Channel::Push),
            _ => None,
        }
    }
}

/// What a preference rule is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// Notifications whose `type` matches (exact, or a prefix ending in `*`).
    Type(String),
    /// Notifications published to a topic whose name matches (exact, or a prefix ending in `*`).
    Topic(String),
}

/// One preference: a channel on or off for a type or topic. Deny wins; `critical` is never denied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PreferenceRule {
    /// What it is about.
    pub selector: Selector,
    /// Which channel.
    pub channel: Channel,
    /// On or off.
    pub enabled: bool,
}

/// A user's preferences as the server holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preferences {
    /// The rules.
    pub rules: Vec<PreferenceRule>,
    /// Counts the changes of the user's settings (0: never set).
    pub version: u64,
    /// When they last changed (ms since the Unix epoch).
    pub updated_at: u64,
}

/// One weekly quiet range, in the user's local time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuietRange {
    /// `mon` … `sun`.
    pub day: String,
    /// `HH:MM`, inclusive.
    pub start: String,
    /// `HH:MM`, exclusive (`24:00` allowed); at or before `start`: on the next day.
    pub end: String,
}

/// Quiet hours: an IANA time zone and weekly ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuietHours {
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub time_zone: String,
    /// The ranges.
    pub ranges: Vec<QuietRange>,
}

/// A user's quiet hours as the server holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuietHoursSettings {
    /// The quiet hours, if any.
    pub quiet_hours: Option<QuietHours>,
    /// Counts the changes of the user's settings.
    pub version: u64,
    /// When they last changed (ms since the Unix epoch).
    pub updated_at: u64,
}

/// An HTTP request to send to the server, relative to its base URL ([`api_base`]), with the user's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    /// `GET`, `PUT`, `PATCH`, `DELETE` or `POST`.
    pub method: &'static str,
    /// The path, e.g. `/v1/me/preferences`.
    pub path: String,
    /// A JSON body, when the request has one.
    pub body: Option<String>,
}

/// Why an API call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The token was refused (`401`): fetch a fresh one and try again.
    #[error("unauthorized ({code}): {message}")]
    Unauthorized {
        /// `unauthorized` or `token_expired`.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server refused the request (`4xx`): retrying the same request will not help.
    #[error("refused ({status} {code}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error code (`bad_request`, `not_found`, …).
        code: String,
        /// The server's message, naming what is wrong.
        message: String,
    },
    /// The server could not answer now (`5xx`, or the request did not get through): retry later.
    #[error("unavailable: {message}")]
    Unavailable {
        /// The HTTP status, if there was an answer.
        status: Option<u16>,
        /// What happened.
        message: String,
        /// How long to wait, when the server said.
        retry_after_ms: Option<u64>,
    },
    /// The answer was not what the protocol says.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        ApiError::Malformed(e.message().to_owned())
    }
}

/// The HTTP base URL of the server whose WebSocket endpoint is `ws_url`: `ws://h/v1/ws` → `http://h`,
/// `wss://h/p/v1/ws` → `https://h/p`. `None` for a URL that is not `ws://` or `wss://`.
pub fn api_base(ws_url: &str) -> Option<String> {
    let (scheme, rest) = if let Some(rest) = ws_url.strip_prefix("wss://") {
        ("https://", rest)
    } else {
        ("http://", ws_url.strip_prefix("ws://")?)
    };
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let rest = rest.strip_suffix("/v1/ws").or_else(|| rest.strip_suffix("/v1/ws/")).unwrap_or(rest);
    Some(format!("{scheme}{}", rest.trim_end_matches('/')))
}

fn rules_body(rules: &[PreferenceRule]) -> String {
    let mut out = String::from(r#"{"rules":["#);
    for (i, rule) in rules.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut w = ObjectWriter::new(&mut out);
        match &rule.selector {
            Selector::Type(p) => w.str("type", p),
            Selector::Topic(p) => w.str("topic", p),
        };
        w.str("channel", rule.channel.as_str()).bool("enabled", rule.enabled);
        w.finish();
    }
    out.push_str("]}");
    out
}

/// `GET /v1/me/preferences`.
pub fn get_preferences() -> ApiRequest {
    ApiRequest { method: "GET", path: "/v1/me/preferences".into(), body: None }
}

/// `PUT /v1/me/preferences`: replaces every rule with `rules`.
pub fn replace_preferences(rules: &[PreferenceRule]) -> ApiRequest {
    ApiRequest { method: "PUT", path: "/v1/me/preferences".into(), body: Some(rules_body(rules)) }
}

/// `PATCH /v1/me/preferences`: adds `rules`, each replacing a rule with the same selector and channel.
pub fn update_preferences(rules: &[PreferenceRule]) -> ApiRequest {
    ApiRequest { method: "PATCH", path: "/v1/me/preferences".into(), body: Some(rules_body(rules)) }
}

/// `GET /v1/me/quiet-hours`.
pub fn get_quiet_hours() -> ApiRequest {
    ApiRequest { method: "GET", path: "/v1/me/quiet-hours".into(), body: None }
}

/// `PUT /v1/me/quiet-hours` (or `DELETE` for `None`).
pub fn set_quiet_hours(quiet: Option<&QuietHours>) -> ApiRequest {
    let Some(q) = quiet else {
        return ApiRequest { method: "DELETE", path: "/v1/me/quiet-hours".into(), body: None };
    };
    let mut out = String::from(r#"{"time_zone":"#);
    push_json_str(&mut out, &q.time_zone);
    out.push_str(r#","ranges":["#);
    for (i, r) in q.ranges.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        ObjectWriter::new(&mut out).str("day", &r.day).str("start", &r.start).str("end", &r.end).finish();
    }
    out.push_str("]}");
    ApiRequest { method: "PUT", path: "/v1/me/quiet-hours".into(), body: Some(out) }
}

/// `GET /v1/me/notifications/{id}`: the notification a lightweight push stood for.
pub fn fetch_notification(id: &str) -> ApiRequest {
    ApiRequest { method: "GET", path: format!("/v1/me/notifications/{id}"), body: None }
}

/// `POST /v1/me/acks`: `device` received `ids` (from a push handler that has no socket).
pub fn post_acks(device: &str, ids: &[&str]) -> ApiRequest {
    let mut out = String::new();
    ObjectWriter::new(&mut out).str("device", device).str_array("ids", ids.iter().copied()).finish();
    ApiRequest { method: "POST", path: "/v1/me/acks".into(), body: Some(out) }
}

/// The error of a non-2xx answer (`{"error":{"code","message","retry_after_ms"}}`).
pub fn error_of(status: u16, body: &str) -> ApiError {
    let (mut code, mut message, mut retry): (String, String, Option<u64>) = (String::new(), String::new(), None);
    if let Some(err) = super::raw_member(body, "error") {
        let mut r = Reader::new(err);
        let _ = (|| -> Result<(), DecodeError> {
            r.begin_object()?;
            let mut first = true;
            while let Some(key) = r.next_key(&mut first)? {
                match &*key {
                    "code" => code = r.string()?.into_owned(),
                    "message" => message = r.string()?.into_owned(),
                    "retry_after_ms" => retry = Some(r.u64()?),
                    _ => {
                        r.raw_value()?;
                    }
                }
            }
            Ok(())
        })();
    }
    classify(status, code, message, retry)
}

/// The error of a non-2xx answer whose body said `code`, `message` and `retry_after_ms` (for drivers that read
/// the body with their platform's JSON parser).
pub fn classify(status: u16, code: String, message: String, retry_after_ms: Option<u64>) -> ApiError {
    let message = if message.is_empty() { format!("HTTP {status}") } else { message };
    match status {
        401 => ApiError::Unauthorized { code: if code.is_empty() { "unauthorized".into() } else { code }, message },
        400..=499 if status != 408 && status != 429 => ApiError::Refused { status, code, message },
        _ => ApiError::Unavailable { status: Some(status), message, retry_after_ms },
    }
}

fn ok(status: u16, body: &str) -> Result<(), ApiError> {
    if (200..300).contains(&status) { Ok(()) } else { Err(error_of(status, body)) }
}

fn read_rule(r: &mut Reader<'_>) -> Result<PreferenceRule, DecodeError> {
    let (mut selector, mut channel, mut enabled) = (None, None, None);
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        match &*key {
            "type" => selector = Some(Selector::Type(r.string()?.into_owned())),
            "topic" => selector = Some(Selector::Topic(r.string()?.into_owned())),
            "channel" => {
                let c = r.string()?;
                channel =
                    Some(Channel::parse(&c).ok_or_else(|| DecodeError::new("unknown value of member `channel`"))?);
            }
            "enabled" => enabled = Some(r.bool()?),
            _ => {
                r.raw_value()?;
            }
        }
    }
    Ok(PreferenceRule {
        selector: selector.ok_or_else(|| DecodeError::new("a rule needs `type` or `topic`"))?,
        channel: channel.ok_or_else(|| DecodeError::new("missing member `channel`"))?,
        enabled: enabled.ok_or_else(|| DecodeError::new("missing member `enabled`"))?,
    })
}

/// The answer to the preferences requests.
pub fn parse_preferences(status: u16, body: &str) -> Result<Preferences, ApiError> {
    ok(status, body)?;
    let mut r = Reader::new(body);
    let mut p = Preferences::default();
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        match &*key {
            "rules" => {
                r.begin_array()?;
                let mut first = true;
                while r.next_element(&mut first)? {
                    p.rules.push(read_rule(&mut r)?);
                }
            }
            "version" => p.version = r.u64()?,
            "updated_at" => p.updated_at = r.u64()?,
            _ => {
                r.raw_value()?;
            }
        }
    }
    r.end()?;
    Ok(p)
}

fn read_quiet_hours(r: &mut Reader<'_>) -> Result<QuietHours, DecodeError> {
    let mut q = QuietHours { time_zone: String::new(), ranges: Vec::new() };
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        match &*key {
            "time_zone" => q.time_zone = r.string()?.into_owned(),
            "ranges" => {
                r.begin_array()?;
                let mut first = true;
                while r.next_element(&mut first)? {
                    let mut range = QuietRange { day: String::new(), start: String::new(), end: String::new() };
                    r.begin_object()?;
                    let mut first = true;
                    while let Some(key) = r.next_key(&mut first)? {
                        match &*key {
                            "day" => range.day = r.string()?.into_owned(),
                            "start" => range.start = r.string()?.into_owned(),
                            "end" => range.end = r.string()?.into_owned(),
                            _ => {
                                r.raw_value()?;
                            }
                        }
                    }
                    q.ranges.push(range);
                }
            }
            _ => {
                r.raw_value()?;
            }
        }
    }
    Ok(q)
}

/// The answer to the quiet-hours requests.
pub fn parse_quiet_hours(status: u16, body: &str) -> Result<QuietHoursSettings, ApiError> {
    ok(status, body)?;
    let mut r = Reader::new(body);
    let mut s = QuietHoursSettings::default();
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(&mut first)? {
        match &*key {
            "quiet_hours" => {
                if !r.null() {
                    s.quiet_hours = Some(read_quiet_hours(&mut r)?);
                }
            }
            "version" => s.version = r.u64()?,
            "updated_at" => s.updated_at = r.u64()?,
            _ => {
                r.raw_value()?;
            }
        }
    }
    r.end()?;
    Ok(s)
}

/// The answer to [`fetch_notification`]: the notification `id`, checked.
pub fn parse_notification(status: u16, body: &str, id: &str) -> Result<Notification, ApiError> {
    ok(status, body)?;
    let n = decode_notification(body)?;
    n.validate()?;
    if n.id() != id {
        return Err(ApiError::Malformed(format!("asked for notification {id}, got {}", n.id())));
    }
    Ok(n)
}

/// The answer to [`post_acks`].
pub fn parse_acks(status: u16, body: &str) -> Result<(), ApiError> {
    ok(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_comes_from_the_socket_url() {
        assert_eq!(api_base("ws://127.0.0.1:8080/v1/ws").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            api_base("wss://push.example.com/tidings/v1/ws?x=1").as_deref(),
            Some("https://push.example.com/tidings")
        );
        assert_eq!(api_base("wss://h.example").as_deref(), Some("https://h.example"));
        assert_eq!(api_base("https://h.example/v1/ws"), None);
    }

    #[test]
    fn requests_carry_the_documented_bodies() {
        let rules = [
            PreferenceRule { selector: Selector::Type("comment.*".into()), channel: Channel::Push, enabled: false },
            PreferenceRule { selector: Selector::Topic("news".into()), channel: Channel::Socket, enabled: true },
        ];
        let r = update_preferences(&rules);
        assert_eq!((r.method, r.path.as_str()), ("PATCH", "/v1/me/preferences"));
        assert_eq!(
            r.body.as_deref(),
            Some(
                r#"{"rules":[{"type":"comment.*","channel":"push","enabled":false},{"topic":"news","channel":"socket","enabled":true}]}"#
            )
        );
        assert_eq!(replace_preferences(&[]).body.as_deref(), Some(r#"{"rules":[]}"#));
        let q = QuietHours {
            time_zone: "Europe/Berlin".into(),
            ranges: vec![QuietRange { day: "mon".into(), start: "22:00".into(), end: "07:00".into() }],
        };
        assert_eq!(
            set_quiet_hours(Some(&q)).body.as_deref(),
            Some(r#"{"time_zone":"Europe/Berlin","ranges":[{"day":"mon","start":"22:00","end":"07:00"}]}"#)
        );
        assert_eq!(set_quiet_hours(None).method, "DELETE");
        assert_eq!(post_acks("d-1", &["a", "b"]).body.as_deref(), Some(r#"{"device":"d-1","ids":["a","b"]}"#));
        assert_eq!(fetch_notification("n:1").path, "/v1/me/notifications/n:1");
    }

    #[test]
    fn answers_are_parsed_and_errors_classified() {
        let body = r#"{"rules":[{"type":"a","channel":"push","enabled":false,"x":1}],"version":2,"updated_at":7}"#;
        let p = parse_preferences(200, body).unwrap();
        assert_eq!((p.rules.len(), p.version, p.updated_at), (1, 2, 7));
        let q = parse_quiet_hours(200, r#"{"quiet_hours":null,"version":0,"updated_at":0}"#).unwrap();
        assert_eq!(q, QuietHoursSettings::default());
        let q = parse_quiet_hours(
            200,
            r#"{"quiet_hours":{"time_zone":"UTC","ranges":[{"day":"sat","start":"00:00","end":"24:00"}]},"version":3,"updated_at":9}"#,
        )
        .unwrap();
        assert_eq!(q.quiet_hours.unwrap().ranges[0].end, "24:00");
        let e = parse_preferences(
            400,
            r#"{"error":{"code":"bad_request","message":"rule 0: `*` may only end a pattern"}}"#,
        );
        assert_eq!(
            e.unwrap_err(),
            ApiError::Refused {
                status: 400,
                code: "bad_request".into(),
                message: "rule 0: `*` may only end a pattern".into()
            }
        );
        assert!(
            matches!(error_of(401, r#"{"error":{"code":"token_expired","message":"m"}}"#), ApiError::Unauthorized { code, .. } if code == "token_expired")
        );
        assert!(matches!(
            error_of(503, r#"{"error":{"code":"unavailable","message":"m","retry_after_ms":5000}}"#),
            ApiError::Unavailable { retry_after_ms: Some(5000), .. }
        ));
        assert!(matches!(error_of(502, "<html>"), ApiError::Unavailable { status: Some(502), .. }));
        assert!(matches!(parse_notification(200, r#"{"id":"x"}"#, "x"), Err(ApiError::Malformed(_))));
    }
}
