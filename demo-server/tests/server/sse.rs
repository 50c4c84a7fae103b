//! Server-Sent Events end to end (protocol §15), with a small Rust SSE client: multiplexed streams, resume with
//! `Last-Event-ID` and `?cursor=`, gaps, auth failures, tickets, token expiry, heartbeats, acks over HTTP, inbox
//! events, and a buffering nginx in front (started by the test).

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::{PATIENCE, get, http, post, publish, start, token};
use serde_json::{Value, json};
use tidings_server::{RunningServer, ServerConfig, TEST_JWT_SECRET, TokenClaims, sign_claims};

/// One event as `EventSource` would dispatch it (comments kept, as `name == ":"`).
#[derive(Clone, Debug)]
struct Event {
    name: String,
    id: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// A minimal SSE client: reads the response body and splits it into events (WHATWG "event stream
/// interpretation": `event`, `id`, `data`, `retry` fields; comments; blank-line dispatch).
struct Sse {
    response: reqwest::Response,
    /// Set when the response is gzipped (through the proxy).
    gzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    buf: String,
    /// The last event id seen (as `EventSource.lastEventId`).
    last_id: Option<String>,
    retry: Option<u64>,
}

impl Sse {
    /// Opens `GET /v1/sse?{query}` with `headers`; the refusal's status and body when not `200`.
    async fn open(base: &str, query: &str, headers: &[(&str, &str)]) -> Result<Sse, (u16, Value)> {
        let mut request = http().get(format!("{base}/v1/sse?{query}")).timeout(Duration::from_secs(3600));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            return Err((status, serde_json::from_str(&text).unwrap_or(Value::String(text))));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let gzip = (response.headers().get("content-encoding").map(|v| v.as_bytes()) == Some(b"gzip"))
            .then(|| flate2::write::GzDecoder::new(Vec::new()));
        Ok(Sse { response, gzip, buf: String::new(), last_id: None, retry: None })
    }

    /// The next event (comments included); `None` when the stream ended. Panics after [`PATIENCE`].
    async fn next(&mut self) -> Option<Event> {
        self.next_within(PATIENCE).await.expect("timed out waiting for an event")
    }

    /// The next event within `wait`: `Err` when none came.
    async fn next_within(&mut self, wait: Duration) -> Result<Option<Event>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = Event { name: "message".into(), id: None, data: String::new() };
                let mut comment = None;
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        comment = Some(c.trim().to_owned());
                        continue;
                    }
                    let (field, value) =
                        line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
                    match field {
                        "event" => event.name = value.to_owned(),
                        "id" => {
                            event.id = Some(value.to_owned());
                            self.last_id = Some(value.to_owned());
                        }
                        "data" => {
                            if !event.data.is_empty() {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                        }
                        "retry" => self.retry = value.parse().ok(),
                        _ => {}
                    }
                }
                if let Some(c) = comment {
                    return Ok(Some(Event { name: ":".into(), id: None, data: c }));
                }
                if event.data.is_empty() {
                    continue; // an id-only event: lastEventId moves, nothing is dispatched
                }
                return Ok(Some(event));
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return Err(()),
                Ok(Ok(Some(chunk))) => match &mut self.gzip {
                    Some(gzip) => {
                        use std::io::Write as _;
                        gzip.write_all(&chunk).expect("gzip");
                        gzip.flush().expect("gzip");
                        let text = std::mem::take(gzip.get_mut());
                        self.buf.push_str(std::str::from_utf8(&text).expect("UTF-8"));
                    }
                    None => self.buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8")),
                },
                Ok(Ok(None)) | Ok(Err(_)) => return Ok(None),
            }
        }
    }

    /// The next event that is not a heartbeat comment.
    async fn event(&mut self) -> Event {
        loop {
            let e = self.next().await.expect("the stream ended");
            if e.name != ":" {
                return e;
            }
        }
    }

    /// Events until the stream ends.
    async fn rest(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn publish_to(server: &RunningServer, users: &[&str], topics: &[&str], title: &str) -> String {
    let r = publish(server, json!({"users":users,"topics":topics,"type":"t","title":title})).await;
    r["id"].as_str().unwrap().to_owned()
}

/// Reads the events of a fresh or resumed stream: `welcome`, then one `continuity` per stream, each before any
/// notification of its stream; returns the continuity frames and the notifications' titles, until `titles`
/// notifications arrived.
async fn read_until(sse: &mut Sse, streams: usize, titles: usize) -> (Vec<Value>, Vec<String>) {
    let welcome = sse.event().await;
    assert_eq!(welcome.name, "welcome");
    let mut continuity: Vec<Value> = Vec::new();
    let mut got = Vec::new();
    while continuity.len() < streams || got.len() < titles {
        let e = sse.event().await;
        match e.name.as_str() {
            "continuity" => continuity.push(e.json()),
            "message" => {
                let n = e.json();
                let stream = n["stream"].as_str().unwrap();
                assert!(
                    continuity.iter().any(|c| c["stream"] == stream),
                    "a notification of {stream} before its continuity event"
                );
                got.push(n["title"].as_str().unwrap().to_owned());
            }
            other => panic!("unexpected event {other}: {}", e.data),
        }
    }
    (continuity, got)
}

#[tokio::test]
async fn streams_are_multiplexed_and_a_dropped_stream_resumes_from_last_event_id_without_loss_or_repeat() {
    let server = start(ServerConfig::for_tests()).await;
    let base = server.http_url();
    let auth = bearer(&token("alice", &["news"]));
    let mut sse = Sse::open(&base, "topics=news&device=d1", &[("authorization", &auth)]).await.unwrap();
    let h = sse.response.headers();
    assert_eq!((h["x-accel-buffering"].to_str().unwrap(), h["cache-control"].to_str().unwrap()), ("no", "no-cache"));
    let (continuity, _) = read_until(&mut sse, 2, 0).await;
    assert!(continuity.iter().all(|c| c["continuity"] == "fresh"), "{continuity:?}");
    assert_eq!(sse.retry, Some(2000), "retry: comes with the first event");
    publish_to(&server, &["alice"], &[], "a1").await;
    publish_to(&server, &[], &["news"], "n1").await;
    // One notification on both streams arrives once.
    publish_to(&server, &["alice"], &["news"], "both").await;
    let mut titles = Vec::new();
    while titles.len() < 3 {
        let e = sse.event().await;
        assert_eq!(e.name, "message", "{}", e.data);
        assert!(e.id.is_some(), "buffered notifications carry the resume token");
        titles.push(e.json()["title"].as_str().unwrap().to_owned());
    }
    assert_eq!(titles, ["a1", "n1", "both"]);
    // The server drops the stream (an operator drop, a restart, a deploy).
    let (status, dropped) = post(&server, "/v1/admin/drop", json!({"user":"alice"})).await;
    assert_eq!((status, dropped["dropped"].as_u64()), (200, Some(1)));
    let rest = sse.rest().await;
    let error = rest.iter().find(|e| e.name == "error").expect("an error event before the end");
    assert_eq!(error.json()["code"], "dropped");
    assert!(rest.iter().all(|e| e.name != "message"), "the duplicate copy of `both` is not sent: {rest:?}");
    let last = sse.last_id.clone().expect("a last event id");
    // Meanwhile, while nobody listens.
    for t in ["a2", "a3"] {
        publish_to(&server, &["alice"], &[], t).await;
    }
    publish_to(&server, &[], &["news"], "n2").await;
    let mut resumed =
        Sse::open(&base, "topics=news&device=d1", &[("authorization", &auth), ("last-event-id", &last)]).await.unwrap();
    let (continuity, got) = read_until(&mut resumed, 2, 3).await;
    let by_stream = |s: &str| continuity.iter().find(|c| c["stream"] == s).unwrap().clone();
    assert_eq!(by_stream("user:alice")["continuity"], "resumed");
    assert_eq!(by_stream("user:alice")["replayed"], 2);
    assert_eq!(by_stream("topic:news")["replayed"], 1, "the duplicate's position on the topic moved too");
    let got: HashSet<String> = got.into_iter().collect();
    assert_eq!(got, HashSet::from(["a2".into(), "a3".into(), "n2".into()]));
    // Nothing else was queued: the next notification is the next one published.
    publish_to(&server, &["alice"], &[], "a4").await;
    assert_eq!(resumed.event().await.json()["title"], "a4");
    // `?cursor=` does the same for clients that cannot send headers.
    let cursor = resumed.last_id.clone().unwrap();
    drop(resumed);
    publish_to(&server, &["alice"], &[], "a5").await;
    let mut by_query =
        Sse::open(&base, &format!("topics=news&cursor={cursor}"), &[("authorization", &auth)]).await.unwrap();
    let (_, got) = read_until(&mut by_query, 2, 1).await;
    assert_eq!(got, ["a5"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_resume_after_the_buffer_moved_on_starts_with_a_gap() {
    let mut config = ServerConfig::for_tests();
    config.replay_max_items = 2;
    let server = start(config).await;
    let base = server.http_url();
    let auth = bearer(&token("alice", &[]));
    let mut sse = Sse::open(&base, "", &[("authorization", &auth)]).await.unwrap();
    read_until(&mut sse, 1, 0).await;
    publish_to(&server, &["alice"], &[], "seen").await;
    assert_eq!(sse.event().await.json()["title"], "seen");
    let last = sse.last_id.clone().unwrap();
    drop(sse);
    for i in 0..5 {
        publish_to(&server, &["alice"], &[], &format!("m{i}")).await;
    }
    let mut resumed = Sse::open(&base, "", &[("authorization", &auth), ("last-event-id", &last)]).await.unwrap();
    let (continuity, got) = read_until(&mut resumed, 1, 2).await;
    let c = &continuity[0];
    assert_eq!((c["continuity"].as_str(), c["reason"].as_str()), (Some("gap"), Some("out_of_buffer")), "{c}");
    assert_eq!((c["missed"].as_u64(), c["replayed"].as_u64()), (Some(3), Some(2)));
    assert_eq!(got, ["m3", "m4"], "what survived follows the gap");
    // The history endpoint is where the app refetches from.
    let (status, page) = get_as(&server, "/v1/streams/user:alice/history", &token("alice", &[])).await;
    assert_eq!(status, 200);
    assert_eq!(page["oldest"], 5);
    server.shutdown().await;
}

async fn get_as(server: &RunningServer, path: &str, user_token: &str) -> (u16, Value) {
    let r = http().get(format!("{}{path}", server.http_url())).bearer_auth(user_token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_as(server: &RunningServer, path: &str, user_token: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}{path}", server.http_url()))
        .bearer_auth(user_token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn credentials_are_refused_with_a_status_before_the_stream_starts() {
    let server = start(ServerConfig::for_tests()).await;
    let base = server.http_url();
    let code = |r: Result<Sse, (u16, Value)>| match r {
        Ok(_) => panic!("expected a refusal"),
        Err((status, body)) => (status, body["error"]["code"].as_str().unwrap_or("").to_owned()),
    };
    assert_eq!(code(Sse::open(&base, "", &[]).await), (401, "unauthorized".into()));
    assert_eq!(code(Sse::open(&base, "", &[("authorization", "Bearer nope")]).await), (401, "unauthorized".into()));
    let expired = sign_claims(
        TEST_JWT_SECRET,
        &TokenClaims { sub: "alice".into(), exp: Some(1_000_000), nbf: None, iat: None, topics: None },
    );
    assert_eq!(
        code(Sse::open(&base, "", &[("authorization", &bearer(&expired))]).await),
        (401, "token_expired".into())
    );
    let auth = bearer(&token("alice", &[]));
    assert_eq!(
        code(Sse::open(&base, "", &[("authorization", &auth), ("last-event-id", "forged")]).await),
        (400, "bad_request".into())
    );
    assert_eq!(code(Sse::open(&base, "topics=bad%20topic", &[("authorization", &auth)]).await).0, 400);

    // Tickets: obtained with the token, single use, reconnects bound to them.
    let alice = token("alice", &[]);
    let (status, t) = post_as(&server, "/v1/sse/tickets", &alice, json!({})).await;
    assert_eq!(status, 200, "{t}");
    assert!(t["expires_in_ms"].as_u64().unwrap() <= 60_000);
    let ticket = t["ticket"].as_str().unwrap();
    assert!(!ticket.contains(&alice) && ticket.len() < alice.len() * 2, "a ticket is not the token");
    let query = format!("ticket={ticket}");
    let mut first = Sse::open(&base, &query, &[]).await.expect("a ticket opens a stream");
    read_until(&mut first, 1, 0).await;
    let bound = first.last_id.clone().unwrap();
    assert_eq!(code(Sse::open(&base, &query, &[]).await), (401, "unauthorized".into()), "used already");
    drop(first);
    // EventSource's own reconnect: the same URL, with the Last-Event-ID this stream gave.
    let mut again = Sse::open(&base, &query, &[("last-event-id", &bound)]).await.expect("a reconnect of the stream");
    read_until(&mut again, 1, 0).await;
    // Another stream's id does not unlock the ticket.
    let mut other = Sse::open(&base, "", &[("authorization", &auth)]).await.unwrap();
    read_until(&mut other, 1, 0).await;
    let foreign = other.last_id.clone().unwrap();
    assert_eq!(code(Sse::open(&base, &query, &[("last-event-id", &foreign)]).await).0, 401);
    let mut tampered = ticket.to_owned();
    tampered.replace_range(3..4, if &ticket[3..4] == "A" { "B" } else { "A" });
    assert_eq!(code(Sse::open(&base, &format!("ticket={tampered}"), &[]).await).0, 401);
    let (status, _) = post_as(&server, "/v1/sse/tickets", "garbage", json!({})).await;
    assert_eq!(status, 401);
    server.shutdown().await;
}

#[tokio::test]
async fn the_stream_ends_at_token_expiry_with_an_error_event_first() {
    let server = start(ServerConfig::for_tests()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let short = sign_claims(
        TEST_JWT_SECRET,
        &TokenClaims { sub: "alice".into(), exp: Some(now + 2), nbf: None, iat: None, topics: None },
    );
    let mut sse = Sse::open(&server.http_url(), "", &[("authorization", &bearer(&short))]).await.unwrap();
    let welcome = sse.event().await.json();
    assert!(welcome["token_expires_in_ms"].as_u64().unwrap() <= 2000);
    let rest = sse.rest().await;
    let last = rest.iter().rev().find(|e| e.name != ":").expect("an event before the end");
    assert_eq!(last.name, "error");
    assert_eq!(last.json()["code"], "token_expired");
    server.shutdown().await;
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments_and_acks_come_over_http() {
    let mut config = ServerConfig::for_tests();
    config.sse_heartbeat = Duration::from_millis(200);
    let server = start(config).await;
    let alice = token("alice", &[]);
    let mut sse =
        Sse::open(&server.http_url(), "device=reader&inbox=1", &[("authorization", &bearer(&alice))]).await.unwrap();
    let mut names = Vec::new();
    while names.iter().filter(|n| *n == ":").count() < 2 {
        names.push(sse.next().await.unwrap().name);
    }
    assert!(names.contains(&"inbox".to_owned()), "inbox=1 watches the inbox: {names:?}");
    let welcome_heartbeat = names.iter().position(|n| n == ":").unwrap();
    assert!(welcome_heartbeat >= 2, "comments come once idle: {names:?}");
    let receipt = publish(&server, json!({"users":["alice"],"type":"t","persistence":"persistent","title":"x"})).await;
    let id = receipt["id"].as_str().unwrap();
    let mut inbox = None;
    while inbox.is_none() {
        let e = sse.next().await.unwrap();
        if e.name == "inbox" {
            inbox = Some(e.json());
        }
    }
    assert_eq!(inbox.unwrap()["counts"]["unread"], 1);
    let (status, r) = post_as(&server, "/v1/me/acks", &alice, json!({"device":"reader","ids":[id]})).await;
    assert_eq!((status, r["acked"].as_u64()), (200, Some(1)));
    let (_, acks) = get(&server, &format!("/v1/notifications/{id}/acks")).await;
    assert_eq!(acks["acks"][0]["device"], "reader");
    let (status, _) = post_as(&server, "/v1/me/acks", &alice, json!({"device":"bad device","ids":[id]})).await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

/// An nginx reverse proxy with its default response buffering and gzip for event streams (a common setup: a
/// compressing, buffering proxy holds small events until its buffers fill), started for one test in a temporary
/// directory.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nginx {
    /// Proxies `/` to `upstream` with buffering on (nginx's default) and gzip; `/ignoring/` does the same but
    /// ignores the upstream's `X-Accel-Buffering` header, to show that the header is what makes the difference.
    fn start(upstream: std::net::SocketAddr) -> Nginx {
        let nginx = std::env::var("TIDINGS_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        assert!(
            std::path::Path::new(&nginx).exists(),
            "nginx not found at {nginx}: install Debian's nginx (cargo xtask test does) or set TIDINGS_NGINX"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;
            events {{ worker_connections 64; }}
            http {{
              access_log off;
              client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
              uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
              gzip on; gzip_types text/event-stream; gzip_min_length 0; gzip_proxied any;
              server {{
                listen 127.0.0.1:{port};
                location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1; proxy_buffering on; }}
                location /ignoring/ {{
                  proxy_pass http://{upstream}/; proxy_http_version 1.1; proxy_buffering on;
                  proxy_ignore_headers X-Accel-Buffering;
                }}
              }}
            }}"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = std::process::Command::new(&nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx starts");
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, port, _dir: dir }
    }
}

#[tokio::test]
async fn behind_a_buffering_nginx_events_still_arrive_at_once() {
    let mut config = ServerConfig::for_tests();
    // No heartbeat during the test: a heartbeat would not push a buffered event through either, but keep the
    // stream quiet so that only the notification could arrive.
    config.sse_heartbeat = Duration::from_secs(300);
    let server = start(config).await;
    let nginx = Nginx::start(server.local_addr());
    let auth = bearer(&token("alice", &[]));
    let through = format!("http://127.0.0.1:{}", nginx.port);
    let gzip = ("accept-encoding", "gzip");
    let mut sse = Sse::open(&through, "", &[("authorization", &auth), gzip]).await.unwrap();
    assert!(sse.gzip.is_some(), "the proxy compresses the stream");
    read_until(&mut sse, 1, 0).await;
    publish_to(&server, &["alice"], &[], "through nginx").await;
    assert_eq!(sse.event().await.json()["title"], "through nginx");
    // The control: the same proxy told to ignore X-Accel-Buffering holds the small events back.
    let ignoring = format!("{through}/ignoring");
    let headers = [("authorization", auth.as_str()), gzip];
    assert!(
        tokio::time::timeout(Duration::from_secs(2), Sse::open(&ignoring, "", &headers)).await.is_err(),
        "without X-Accel-Buffering, the proxy holds back even the start of the stream"
    );
    drop(nginx);
    server.shutdown().await;
}

/// Issue 16 on SSE: the metrics label SSE streams `transport="sse"` (connections, deliveries, refusals, failed
/// authentications), and refused tokens of SSE requests count towards the per-address throttle of WebSocket `auth`
/// frames and API keys: past the burst the address gets `429` with `Retry-After`, even with a good token.
#[tokio::test]
async fn sse_streams_are_counted_as_sse_and_their_failed_tokens_are_throttled() {
    use common::{sample, scrape};
    let mut config = ServerConfig::for_tests();
    config.auth_failure_limit = tidings_server::limits::Rate { burst: 3, per_minute: 1 };
    let server = start(config).await;
    let base = server.http_url();
    let auth = bearer(&token("alice", &[]));
    let mut sse = Sse::open(&base, "device=d1", &[("authorization", &auth)]).await.unwrap();
    read_until(&mut sse, 1, 0).await;
    publish_to(&server, &["alice"], &[], "a1").await;
    let e = sse.event().await;
    assert_eq!(e.name, "message", "{}", e.data);
    let text = scrape(&server).await;
    let sse_label = [("transport", "sse")];
    assert_eq!(sample(&text, "tidings_connections", &sse_label), Some(1.0), "{text}");
    assert_eq!(sample(&text, "tidings_connections_accepted_total", &sse_label), Some(1.0));
    assert_eq!(sample(&text, "tidings_deliveries_total", &[("transport", "sse"), ("outcome", "live")]), Some(1.0));
    assert_eq!(sample(&text, "tidings_deliveries_total", &[("transport", "ws"), ("outcome", "live")]), Some(0.0));
    assert_eq!(sample(&text, "tidings_subscribes_total", &[("continuity", "fresh")]), Some(1.0));
    for _ in 0..3 {
        let refused = Sse::open(&base, "", &[("authorization", "Bearer nope")]).await.err().unwrap();
        assert_eq!(refused.0, 401, "{}", refused.1);
    }
    let (status, body) = Sse::open(&base, "", &[("authorization", &auth)]).await.err().unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    assert!(body["error"]["retry_after_ms"].as_u64().unwrap() >= 1000, "{body}");
    let text = scrape(&server).await;
    let failed = [("transport", "sse"), ("reason", "unauthorized")];
    assert_eq!(sample(&text, "tidings_auth_failures_total", &failed), Some(3.0), "{text}");
    let throttled = [("transport", "sse"), ("reason", "auth_throttled")];
    assert_eq!(sample(&text, "tidings_connections_refused_total", &throttled), Some(1.0));
    drop(sse);
    common::eventually("the stream closed", || async {
        sample(&scrape(&server).await, "tidings_connections", &[("transport", "sse")]) == Some(0.0)
    })
    .await;
    server.shutdown().await;
}
