//! The conformance scenarios (`tests/conformance/scenarios.json`) run against the native Rust client.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tidings_core::engine::{ConnectionState, Continuity, Event, Lifecycle, NetworkEvent, PushOutcome, PushPlatform};
use tidings_core::native::ClientError;
use tidings_core::protocol::api::{ApiError, Channel, PreferenceRule, QuietHours, QuietRange, Selector};
use tidings_core::protocol::{InboxAction, MarkAllAction, PushPayload, decode_push};
use tidings_core::store::MemoryStore;
use tidings_push_mocks::harness::PushHarness;
use tidings_tests::{TestClient, TestServer};

const SCENARIOS: &str = include_str!("../../conformance/scenarios.json");

fn file() -> Value {
    serde_json::from_str(SCENARIOS).expect("scenarios.json is valid JSON")
}

static RUN: AtomicU64 = AtomicU64::new(0);

struct Runner<'s> {
    /// The server (taken out for a moment while it restarts).
    server_slot: Option<TestServer>,
    prefix: String,
    clients: HashMap<String, TestClient>,
    token_fetches: HashMap<String, Arc<AtomicU32>>,
    deliveries: HashMap<String, Value>,
    /// Clients whose app takes no events now (`pause_events`).
    paused: std::collections::HashSet<String>,
    /// The mock push services the server pushes to.
    push: &'s PushHarness,
    /// Each client's user and push token (`register_push`).
    users: HashMap<String, String>,
    push_tokens: HashMap<String, String>,
    /// Pushes the server sent, by (client, id) (`wait_push`).
    sent: HashMap<(String, String), String>,
}

/// Preference rules as a scenario writes them (protocol §9.5).
fn rules_of(v: &Value) -> Vec<PreferenceRule> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| PreferenceRule {
            selector: match (r["type"].as_str(), r["topic"].as_str()) {
                (Some(t), _) => Selector::Type(t.to_owned()),
                (None, Some(t)) => Selector::Topic(t.to_owned()),
                _ => panic!("a rule needs type or topic: {r}"),
            },
            channel: Channel::parse(r["channel"].as_str().unwrap()).unwrap(),
            enabled: r["enabled"].as_bool().unwrap(),
        })
        .collect()
}

/// Quiet ranges as a scenario writes them.
fn ranges_of(v: &Value) -> Vec<QuietRange> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| QuietRange {
            day: r["day"].as_str().unwrap().to_owned(),
            start: r["start"].as_str().unwrap().to_owned(),
            end: r["end"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// The ids a push payload stands for, and its form.
fn push_ids(payload: &str) -> (Vec<String>, &'static str) {
    match decode_push(payload) {
        Ok(PushPayload::Full(n)) => (vec![n.id().to_owned()], "full"),
        Ok(PushPayload::Fetch { id, .. }) => (vec![id], "lightweight"),
        Ok(PushPayload::Summary(s)) => (s.ids, "summary"),
        Err(_) => (Vec::new(), "invalid"),
    }
}

impl<'s> Runner<'s> {
    fn server(&self) -> &TestServer {
        self.server_slot.as_ref().expect("the server runs")
    }

    fn name(&self, s: &str) -> String {
        format!("{}-{s}", self.prefix)
    }

    fn stream(&self, s: &str) -> String {
        let (kind, name) = s.split_once(':').expect("stream has a kind");
        format!("{kind}:{}", self.name(name))
    }

    fn names(&self, v: &Value) -> Vec<String> {
        v.as_array().map(|a| a.iter().map(|x| self.name(x.as_str().unwrap())).collect()).unwrap_or_default()
    }

    /// `ids`, or `count` ids `<id_prefix><i>`.
    fn ids(&self, step: &Value) -> Vec<String> {
        match step["count"].as_u64() {
            Some(n) => {
                let p = step["id_prefix"].as_str().expect("id_prefix with count");
                (0..n).map(|i| self.name(&format!("{p}{i}"))).collect()
            }
            None => self.names(&step["ids"]),
        }
    }

    fn client(&mut self, step: &Value) -> &mut TestClient {
        let key = step["client"].as_str().expect("step names a client");
        self.clients.get_mut(key).unwrap_or_else(|| panic!("no client {key}"))
    }

    async fn step(&mut self, step: &Value) {
        let op = step["op"].as_str().expect("step has op");
        match op {
            "connect" => {
                let user = self.name(step["user"].as_str().unwrap());
                let topics = self.names(&step["topics"]);
                let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                let token = match step["token"].as_str().unwrap_or("valid") {
                    "valid" => self.server().token(&user, &topic_refs),
                    "invalid" => "not-a-jwt".to_string(),
                    other => panic!("unknown token kind {other}"),
                };
                let fetches = Arc::new(AtomicU32::new(0));
                let f = fetches.clone();
                let provider = move |_force: bool| {
                    f.fetch_add(1, Ordering::SeqCst);
                    let t = token.clone();
                    async move { Ok::<_, tidings_core::TokenError>(t) }
                };
                let batch = step["batch_window_ms"].as_u64().unwrap_or(0);
                let grace = step["background_grace_ms"].as_u64();
                let capacity = step["event_capacity"].as_u64();
                let client =
                    TestClient::connect_with(self.server(), provider, Some(Arc::new(MemoryStore::new())), |c| {
                        c.engine.batch.window = Duration::from_millis(batch);
                        if let Some(g) = grace {
                            c.engine.background_grace = Duration::from_millis(g);
                        }
                        if let Some(n) = capacity {
                            c.event_capacity = n as usize;
                        }
                    });
                let key = step["client"].as_str().unwrap().to_string();
                self.token_fetches.insert(key.clone(), fetches);
                self.users.insert(key.clone(), user);
                self.clients.insert(key, client);
            }
            "register_push" => {
                // The Rust runner registers an APNs address (hex device token).
                let key = step["client"].as_str().unwrap().to_string();
                let token: String = self.name(&key).bytes().map(|b| format!("{b:02x}")).collect();
                self.client(step).client.register_push(PushPlatform::Apns, &token).unwrap();
                let user = self.users[&key].clone();
                let deadline = tokio::time::Instant::now() + tidings_tests::WAIT;
                loop {
                    let devices = self.server().get(&format!("/v1/users/{user}/devices")).await;
                    let stored = devices["devices"].as_array().unwrap().iter().any(|d| d["push"]["token"] == token);
                    if stored {
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "the push address was never stored");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.push_tokens.insert(key, token);
            }
            "wait_offline" => {
                let user = self.name(step["user"].as_str().unwrap());
                let deadline = tokio::time::Instant::now() + tidings_tests::WAIT;
                while !self.server().get(&format!("/v1/presence/{user}")).await["devices"]
                    .as_array()
                    .unwrap()
                    .is_empty()
                {
                    assert!(tokio::time::Instant::now() < deadline, "{user} never went offline");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "wait_push" => {
                let key = step["client"].as_str().unwrap().to_string();
                let id = self.name(step["id"].as_str().unwrap());
                let token = self.push_tokens.get(&key).expect("register_push first").clone();
                let deadline = tokio::time::Instant::now() + tidings_tests::WAIT;
                let payload = loop {
                    let found = self
                        .push
                        .pushes()
                        .into_iter()
                        .find(|p| p.target == token && push_ids(&p.payload).0.contains(&id));
                    if let Some(p) = found {
                        break p.payload;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "no push of {id} reached {key}'s device");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                if let Some(form) = step["form"].as_str() {
                    assert_eq!(push_ids(&payload).1, form, "the push's form: {payload}");
                }
                self.sent.insert((key, id), payload);
            }
            "ingest_sent_push" => {
                let from = step["from"].as_str().or(step["client"].as_str()).unwrap().to_string();
                let id = self.name(step["id"].as_str().unwrap());
                let payload = self.sent.get(&(from, id.clone())).expect("wait_push first").clone();
                let want_ids = self.names(&step["ids"]);
                let outcome = self.client(step).client.ingest_push(&payload).await.expect("the server's push is valid");
                match (step["expect"].as_str().unwrap(), &outcome) {
                    ("show", PushOutcome::Show(n)) => {
                        assert_eq!(n.id(), id);
                        if let Some(len) = step["body_bytes"].as_u64() {
                            assert_eq!(n.body().map(str::len), Some(len as usize), "the whole notification");
                        }
                    }
                    ("duplicate", PushOutcome::Duplicate { .. }) => {}
                    ("summary", PushOutcome::Summary(s)) => {
                        assert_eq!(s.count, step["count"].as_u64().unwrap());
                        assert_eq!(s.ids, want_ids);
                    }
                    ("title", PushOutcome::ShowTitle { id: got, .. }) => assert_eq!(*got, id),
                    (want, got) => panic!("expected {want}, got {got:?}"),
                }
            }
            "update_preferences" => {
                let rules = rules_of(&step["rules"]);
                self.client(step).client.update_preferences(&rules).await.expect("the server takes the rules");
            }
            "set_quiet_hours" => {
                let quiet = QuietHours {
                    time_zone: step["time_zone"].as_str().unwrap().to_owned(),
                    ranges: ranges_of(&step["ranges"]),
                };
                let result = self.client(step).client.set_quiet_hours(Some(&quiet)).await;
                match (step["expect"].as_str(), result) {
                    (None, Ok(_)) => {}
                    (Some("refused"), Err(ClientError::Api(ApiError::Refused { status: 400, .. }))) => {}
                    (want, got) => panic!("set_quiet_hours: expected {want:?}, got {got:?}"),
                }
            }
            "assert_settings" => {
                let client = &self.client(step).client;
                let prefs = client.preferences().await.expect("preferences");
                let quiet = client.quiet_hours().await.expect("quiet hours");
                let sorted = |mut v: Vec<PreferenceRule>| {
                    v.sort_by_key(|r| format!("{r:?}"));
                    v
                };
                assert_eq!(sorted(prefs.rules), sorted(rules_of(&step["rules"])), "the rules");
                let want = QuietHours {
                    time_zone: step["time_zone"].as_str().unwrap().to_owned(),
                    ranges: ranges_of(&step["ranges"]),
                };
                assert_eq!(quiet.quiet_hours, Some(want), "the quiet hours");
                if let Some(v) = step["version"].as_u64() {
                    assert_eq!((prefs.version, quiet.version), (v, v), "the settings' version");
                }
            }
            "wait_state" | "assert_state" => {
                let want = step["state"].as_str().unwrap().to_string();
                let reason = step["reason"].as_str().map(String::from);
                let matches = move |s: &ConnectionState| {
                    state_name(s) == want
                        && reason.as_deref().is_none_or(|r| match s {
                            ConnectionState::Failed { reason, .. } => reason.as_str() == r,
                            _ => false,
                        })
                };
                let c = self.client(step);
                if op == "wait_state" {
                    c.wait_state(matches).await;
                } else {
                    let s = c.client.state();
                    assert!(matches(&s), "state is {s:?}, expected {step}");
                }
            }
            "subscribe" => {
                let stream = self.stream(step["stream"].as_str().unwrap());
                self.client(step).client.subscribe(&stream).unwrap();
            }
            "wait_continuity" => {
                let stream = self.stream(step["stream"].as_str().unwrap());
                let kind = step["kind"].as_str().unwrap().to_string();
                let replayed = step["replayed"].as_u64();
                let reason = step["reason"].as_str().map(String::from);
                let missed = step["missed"].as_u64();
                let what = format!("continuity {step}");
                self.client(step)
                    .until(&what, |log| {
                        log.iter().any(|e| match e {
                            Event::Continuity { stream: s, continuity } if *s == stream => match continuity {
                                Continuity::Fresh => kind == "fresh",
                                Continuity::Resumed { replayed: r } => {
                                    kind == "resumed" && replayed.is_none_or(|want| want == *r)
                                }
                                Continuity::Gap { reason: why, missed: m, replayed: r } => {
                                    kind == "gap"
                                        && reason.as_deref().is_none_or(|want| want == why.as_str())
                                        && missed.is_none_or(|want| Some(want) == *m)
                                        && replayed.is_none_or(|want| want == *r)
                                }
                            },
                            _ => false,
                        })
                    })
                    .await;
            }
            "publish" => {
                let ids = self.ids(step);
                let users = self.names(&step["users"]);
                let topics = self.names(&step["topics"]);
                for id in ids {
                    let mut body = json!({
                        "users": users, "topics": topics, "id": id, "type": "conformance",
                        "priority": step["priority"].as_str().unwrap_or("important"),
                        "title": format!("title {id}"),
                    });
                    if let Some(g) = step["group"].as_str() {
                        body["group"] = json!(g);
                    }
                    if let Some(p) = step["persistence"].as_str() {
                        body["persistence"] = json!(p);
                    }
                    if let Some(n) = step["body_bytes"].as_u64() {
                        body["body"] = json!("x".repeat(n as usize));
                    }
                    let reply = self.server().publish(body).await;
                    self.deliveries.insert(id, reply["deliveries"][0].clone());
                }
            }
            "wait_notifications" => {
                let ids = self.ids(step);
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.client(step).until_ids(&refs).await;
            }
            "assert_order" => {
                let ids = self.ids(step);
                let delivered = self.client(step).delivered_ids();
                let positions: Vec<usize> =
                    ids.iter().map(|id| delivered.iter().position(|d| d == id).expect("delivered")).collect();
                assert!(positions.windows(2).all(|w| w[0] < w[1]), "order {ids:?} in {delivered:?}");
            }
            "assert_notification" => {
                let id = self.name(step["id"].as_str().unwrap());
                let stream = step["stream"].as_str().map(|s| self.stream(s));
                let c = self.client(step);
                let n = c.notifications().into_iter().find(|n| n.id() == id).expect("delivered").clone();
                if let Some(s) = stream {
                    assert_eq!(n.stream(), s);
                }
                if let Some(p) = step["priority"].as_str() {
                    assert_eq!(n.priority.as_str(), p);
                }
                if let Some(o) = step["offset"].as_u64() {
                    assert_eq!(n.offset, Some(o));
                }
            }
            "assert_delivered_exactly" => {
                let mut want = self.ids(step);
                let mut got = self.client(step).delivered_ids();
                want.sort();
                got.sort();
                assert_eq!(got, want, "delivered set");
            }
            "wait_digest" => {
                let group = step["group"].as_str().unwrap().to_string();
                let count = step["count"].as_u64().unwrap() as u32;
                let first = self.name(step["first"].as_str().unwrap());
                let last = self.name(step["last"].as_str().unwrap());
                self.client(step)
                    .until("digest", |log| {
                        log.iter().any(|e| {
                            matches!(e, Event::Digest(d) if d.group == group && d.count == count && d.first.id() == first && d.last.id() == last)
                        })
                    })
                    .await;
            }
            "assert_no_digest" => {
                let c = self.client(step);
                assert!(!c.log.iter().any(|e| matches!(e, Event::Digest(_))), "no digest yet");
            }
            "ingest_push" => {
                let id = self.name(step["id"].as_str().unwrap());
                let d = self.deliveries.get(&id).expect("published").clone();
                let payload = json!({"tidings": {
                    "id": id, "stream": d["stream"], "offset": d["offset"], "epoch": d["epoch"],
                    "type": "conformance", "priority": "critical", "persistence": "bufferable",
                    "title": format!("title {id}"), "created_at": 1
                }})
                .to_string();
                let outcome = self.client(step).client.ingest_push(&payload).await.expect("valid payload");
                let got = match outcome {
                    PushOutcome::Show(_) => "show",
                    PushOutcome::Duplicate { .. } => "duplicate",
                    other => panic!("a full payload gives show or duplicate, got {other:?}"),
                };
                assert_eq!(got, step["expect"].as_str().unwrap(), "push outcome for {id}");
            }
            "set_network" => {
                let online = step["online"].as_bool().unwrap();
                let event = if online { NetworkEvent::Available } else { NetworkEvent::Unavailable };
                self.client(step).client.network_changed(event);
            }
            "background" => self.client(step).client.set_lifecycle(Lifecycle::Background),
            "foreground" => self.client(step).client.set_lifecycle(Lifecycle::Foreground),
            "drop_connections" => {
                self.server().drop_all().await;
            }
            "server_unsubscribe" => {
                let user = self.name(step["user"].as_str().unwrap());
                let stream = self.stream(step["stream"].as_str().unwrap());
                self.server().unsubscribe(&user, &stream).await;
            }
            "wait_subscription_failed" => {
                let stream = self.stream(step["stream"].as_str().unwrap());
                let code = step["code"].as_str().unwrap().to_owned();
                self.client(step)
                    .until(&format!("subscription of {stream} failed with {code}"), |log| {
                        log.iter().any(|e| {
                            matches!(e, Event::SubscriptionFailed { stream: s, code: c, .. }
                                if *s == stream && c.to_string() == code)
                        })
                    })
                    .await;
            }
            "settle" => {
                let ms = Duration::from_millis(step["ms"].as_u64().unwrap());
                // A paused client's app takes no events: its events wait in the SDK.
                let (paused, reading): (Vec<_>, Vec<_>) =
                    self.clients.iter_mut().partition(|(key, _)| self.paused.contains(key.as_str()));
                if reading.is_empty() || !paused.is_empty() {
                    tokio::time::sleep(ms).await;
                }
                for (_, c) in reading {
                    c.settle(ms).await;
                }
            }
            "pause_events" => {
                self.paused.insert(step["client"].as_str().unwrap().to_string());
            }
            "resume_events" => {
                self.paused.remove(step["client"].as_str().unwrap());
            }
            "assert_stopped_reading" => {
                let published = step["published"].as_u64().unwrap();
                let received = self.client(step).client.stats().notifications_received;
                assert!(received < published, "the SDK kept reading: {received} of {published} received while paused");
            }
            "assert_connection_attempts" => {
                let want = step["count"].as_u64().unwrap();
                assert_eq!(self.client(step).client.stats().connection_attempts, want);
            }
            "assert_stats" => {
                let s = self.client(step).client.stats();
                let mut names: Vec<(String, u64)> = vec![
                    ("duplicates_dropped".into(), s.duplicates_dropped),
                    ("duplicates_socket".into(), s.duplicates_socket),
                    ("duplicates_replay".into(), s.duplicates_replay),
                    ("duplicates_push".into(), s.duplicates_push),
                    ("digests".into(), s.digests),
                    ("digested".into(), s.digested),
                    ("gaps".into(), s.gaps),
                    ("fresh".into(), s.fresh),
                    ("resumed".into(), s.resumed),
                    ("replays".into(), s.replays),
                    ("replayed".into(), s.replayed),
                    ("replay_max".into(), s.replay_max),
                    ("rtt_samples".into(), s.rtt.samples),
                ];
                names.extend(s.reconnects.by_reason().iter().map(|(r, n)| (format!("reconnects.{r}"), *n)));
                let value = |name: &str| {
                    names.iter().find(|(k, _)| k == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no stat {name}"))
                };
                for (name, want) in step["equals"].as_object().into_iter().flatten() {
                    assert_eq!(value(name), want.as_u64().unwrap(), "stat {name}: {s:?}");
                }
                for (name, least) in step["at_least"].as_object().into_iter().flatten() {
                    assert!(value(name) >= least.as_u64().unwrap(), "stat {name} below {least}: {s:?}");
                }
            }
            "assert_token_fetches" => {
                let key = step["client"].as_str().unwrap();
                assert_eq!(u64::from(self.token_fetches[key].load(Ordering::SeqCst)), step["count"].as_u64().unwrap());
            }
            "close" => {
                let key = step["client"].as_str().unwrap();
                let c = self.clients.remove(key).expect("client");
                c.close().await;
            }
            "wait_inbox" | "assert_inbox" => {
                let want = |name: &str| step[name].as_u64();
                let (unread, unseen, total) = (want("unread"), want("unseen"), want("total"));
                let matches = move |log: &[Event]| {
                    let latest = log.iter().rev().find_map(|e| match e {
                        Event::InboxCounts(c) => Some(*c),
                        _ => None,
                    });
                    latest.is_some_and(|c| {
                        unread.is_none_or(|u| u == c.unread)
                            && unseen.is_none_or(|u| u == c.unseen)
                            && total.is_none_or(|t| t == c.total)
                    })
                };
                let what = format!("inbox counts {step}");
                let c = self.client(step);
                if op == "wait_inbox" {
                    c.until(&what, matches).await;
                } else {
                    assert!(matches(&c.log), "{what}: counts are {:?}", c.client.inbox_counts());
                    let now = c.client.inbox_counts().expect("counts");
                    assert!(unread.is_none_or(|u| u == now.unread), "{what}: {now:?}");
                }
            }
            "inbox_mark" | "inbox_mark_all" => {
                let ids = self.ids(step);
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let action = step["action"].as_str().unwrap();
                let wait = step["wait"].as_bool().unwrap_or(true);
                let client = &self.client(step).client;
                let request = async {
                    if op == "inbox_mark_all" {
                        client.inbox_mark_all(MarkAllAction::parse(action).expect("read or seen")).await
                    } else {
                        client.inbox_mark(InboxAction::parse(action).expect("an inbox action"), &ids).await
                    }
                };
                if wait {
                    let update = request.await.expect("the server answers");
                    assert!(!update.duplicate, "{update:?}");
                } else {
                    // Started (the SDK queues the change) without waiting for its answer.
                    use futures_util::FutureExt as _;
                    assert!(request.now_or_never().is_none(), "answered at once while offline?");
                }
            }
            "history" => {
                let stream = self.stream(step["stream"].as_str().unwrap());
                let want = self.ids(step);
                let after_id = self.name(step["after_id"].as_str().unwrap());
                let limit = step["limit"].as_u64().map(|l| l as u32);
                let c = self.client(step);
                let mut after = c
                    .log
                    .iter()
                    .find_map(|e| match e {
                        Event::Notification(n) if n.id() == after_id => {
                            Some(tidings_core::Cursor { epoch: n.epoch().to_owned(), offset: n.offset.unwrap() })
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("{after_id} was not delivered"));
                let mut got = Vec::new();
                loop {
                    let page = c.client.history(&stream, Some(after.clone()), limit).await.expect("a history page");
                    assert!(limit.is_none_or(|l| page.items.len() <= l as usize), "page larger than the limit");
                    got.extend(page.items.iter().map(|n| n.id().to_owned()));
                    let Some(next) = page.next else { break };
                    after = tidings_core::Cursor { epoch: page.epoch.clone(), offset: next };
                }
                assert_eq!(got, want, "history after {after_id}");
            }
            "restart_server" => {
                let server = self.server_slot.take().expect("the server runs");
                self.server_slot = Some(server.restart().await);
            }
            other => panic!("unknown step op {other:?}"),
        }
    }
}

fn state_name(s: &ConnectionState) -> &'static str {
    match s {
        ConnectionState::Idle => "idle",
        ConnectionState::Connecting { .. } => "connecting",
        ConnectionState::Connected => "connected",
        ConnectionState::Reconnecting { .. } => "reconnecting",
        ConnectionState::Suspended { .. } => "suspended",
        ConnectionState::Closed => "closed",
        ConnectionState::Failed { .. } => "failed",
    }
}

async fn run_scenario(name: &str) {
    run_scenario_on(name, false).await;
}

/// Runs `name` on one server (SQLite), or on a deployment of three OS processes on Redis and PostgreSQL
/// (`deployment`; returns without running when those are not available outside xtask).
async fn run_scenario_on(name: &str, deployment: bool) {
    let file = file();
    let scenario = file["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("scenario {name} is not in scenarios.json"))
        .clone();
    let max_items = file["server"]["replay_max_items"].as_u64().unwrap() as usize;
    let push_after = Duration::from_millis(file["server"]["push_after_ms"].as_u64().unwrap());
    let digest_window = Duration::from_secs(file["server"]["digest_window_secs"].as_u64().unwrap());
    let keys = tempfile::tempdir().unwrap();
    let push = PushHarness::start(keys.path()).await.expect("the mock push services start");
    let p = push.settings().clone();
    // The server's default store: SQLite (or a deployment); its pushes go to the mock services.
    let tweak = |c: &mut tidings_server::ServerConfig| {
        c.replay_max_items = max_items;
        c.push_policy.push_after = push_after;
        c.push_policy.digest_window = digest_window;
        c.vapid_public_key = Some(p.vapid_public_key);
        c.push.vapid_private_key = Some(p.vapid_private_key);
        c.push.vapid_subject = Some(p.vapid_subject);
        c.push.apns_key_file = Some(p.apns_key_file);
        c.push.apns_key_id = Some(p.apns_key_id);
        c.push.apns_team_id = Some(p.apns_team_id);
        c.push.apns_topic = Some(p.apns_topic);
        c.push.apns_url = p.apns_url.clone();
        c.push.apns_sandbox_url = p.apns_url;
        c.push.fcm_service_account = Some(p.fcm_service_account);
        c.push.fcm_url = p.fcm_url;
        c.push.push_ca_file = Some(p.push_ca_file);
    };
    let server = if deployment {
        match TestServer::start_deployment_with(tweak).await {
            Some(server) => server,
            None => return,
        }
    } else {
        TestServer::start_sqlite_with(tweak).await
    };
    let mut runner = Runner {
        server_slot: Some(server),
        prefix: format!("r{}x{}", std::process::id(), RUN.fetch_add(1, Ordering::SeqCst)),
        clients: HashMap::new(),
        token_fetches: HashMap::new(),
        deliveries: HashMap::new(),
        paused: std::collections::HashSet::new(),
        push: &push,
        users: HashMap::new(),
        push_tokens: HashMap::new(),
        sent: HashMap::new(),
    };
    for (i, step) in scenario["steps"].as_array().unwrap().iter().enumerate() {
        eprintln!("[{name}] step {i}: {step}");
        runner.step(step).await;
    }
    for (_, c) in runner.clients.drain() {
        c.close().await;
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                run_scenario(stringify!($name)).await;
            }
        )*

        /// Every scenario against a deployment of three `tidings-server` OS processes on one Redis and one
        /// PostgreSQL database (issue 15), one scenario after the other; each client connects to the next process
        /// and each request goes to the next one.
        #[tokio::test]
        async fn every_scenario_against_three_server_processes_on_redis_and_postgres() {
            $(
                run_scenario_on(stringify!($name), true).await;
            )*
        }

        #[test]
        fn every_scenario_in_the_file_has_a_test() {
            let file = file();
            let mut in_file: Vec<String> =
                file["scenarios"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
            let mut here: Vec<String> = vec![$(stringify!($name).to_string()),*];
            in_file.sort();
            here.sort();
            assert_eq!(in_file, here);
        }
    };
}

scenarios!(
    live_delivery,
    reconnect_with_replay,
    gap,
    dedup_push_then_socket,
    dedup_socket_then_push,
    batching_digest,
    client_stats,
    auth_failure_without_storm,
    background_foreground_resume,
    slow_app_backpressure,
    real_push_then_socket_shown_once,
    lightweight_push_is_fetched,
    digest_push_summary,
    user_settings,
    gap_refetch_from_history,
    inbox_two_devices,
    inbox_offline_change_converges,
    inbox_mark_all_leaves_new_items_unread,
    inbox_counts_survive_a_server_restart,
    server_unsubscribe,
);
