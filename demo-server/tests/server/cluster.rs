//! Several servers on one Redis and one store (issue 15): each server is a process of a deployment with its own
//! Redis broker, and all of them share one `Stores` (the durable store's part). Redis comes from
//! `TIDINGS_TEST_REDIS_URL` (`cargo xtask test` starts Debian's `redis-server` for the run); tests that restart
//! Redis start their own `redis-server` (`TIDINGS_REDIS_SERVER`, default `/usr/bin/redis-server`). Run by hand
//! without either, the tests print a note and skip; under xtask (`TIDINGS_XTASK`) a missing Redis fails them.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis::*;
use common::*;
use serde_json::{Value, json};
use tidings_core::protocol::Persistence;
use tidings_server::{MemoryStore, PublishRequest, RunningServer, ServerConfig, StoreLimits, Stores};

fn shared_stores() -> Stores {
    Stores::memory(MemoryStore::new(StoreLimits::from_config(&ServerConfig::for_tests())))
}

/// `n` servers on `stores`, each with its own Redis broker on `url` under `prefix`.
async fn cluster(n: usize, url: &str, prefix: &str, stores: &Stores) -> Vec<RunningServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        let mut config = ServerConfig::for_tests();
        config.redis = Some(redis_config(url, prefix));
        servers.push(tidings_server::start_with_stores(config, stores.clone()).await.expect("a server starts"));
    }
    servers
}

/// Receives notification frames until `n` arrived (heartbeats and other frames skipped), then whatever else
/// arrives within `settle` (a duplicate would).
async fn notifications(client: &mut Client, n: usize, settle: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = client.recv().await;
        if frame["op"] == "notification" {
            got.push(frame);
        }
    }
    tokio::time::sleep(settle).await;
    got.extend(client.sync().await.into_iter().filter(|f| f["op"] == "notification"));
    got
}

/// Counts of one fault scenario.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    acknowledged: usize,
    received: usize,
    lost: usize,
    duplicated: usize,
}

fn counts(acknowledged: &[String], received: &[Value]) -> Counts {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for frame in received {
        *seen.entry(frame["id"].as_str().unwrap()).or_default() += 1;
    }
    Counts {
        acknowledged: acknowledged.len(),
        received: received.len(),
        lost: acknowledged.iter().filter(|id| !seen.contains_key(id.as_str())).count(),
        duplicated: seen.values().map(|n| n - 1).sum(),
    }
}

fn redis_sample(server: &RunningServer, name: &str) -> u64 {
    let text = server.metrics().render();
    sample(&text, name, &[]).unwrap_or(0.0) as u64
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishes_through_any_server_reach_every_subscriber_exactly_once_in_stream_order() {
    let Some(redis) = TestRedis::get() else { return };
    let stores = shared_stores();
    let servers = cluster(3, &redis.url(), &prefix("fanout"), &stores).await;
    // On each server: a subscriber of the topic, and one of alice's devices.
    let mut topic = Vec::new();
    let mut alice = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let (mut t, _) = Client::login(server, &format!("reader{i}"), "d", &["news"]).await;
        t.subscribe_one(1, json!({"stream":"topic:news"})).await;
        topic.push(t);
        let (mut a, _) = Client::login(server, "alice", &format!("device{i}"), &[]).await;
        a.subscribe_one(1, json!({"stream":"user:alice"})).await;
        alice.push(a);
    }
    // 3 publishers at once, one per server, 60 notifications each to both streams.
    const EACH: usize = 60;
    let mut tasks = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let publisher = server.publisher();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..EACH {
                let receipt = publisher
                    .publish(PublishRequest::new("t").topic("news").user("alice").title(format!("{i}-{n}")))
                    .await
                    .expect("published");
                ids.push(receipt.id);
            }
            ids
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let total = EACH * servers.len();
    for client in topic.iter_mut().chain(alice.iter_mut()) {
        let got = notifications(client, total, Duration::from_millis(500)).await;
        assert_eq!(offsets(&got), (1..=total as u64).collect::<Vec<_>>(), "every offset once, in order");
        let ids: Vec<&str> = got.iter().map(|n| n["id"].as_str().expect("an id")).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "server-generated ids follow the offsets: {ids:?}");
        assert_eq!(
            counts(&acknowledged, &got),
            Counts { acknowledged: total, received: total, lost: 0, duplicated: 0 }
        );
    }
    let received: u64 = servers.iter().map(|s| redis_sample(s, "tidings_redis_received_total")).sum();
    assert!(received >= 2 * total as u64 * 3, "every server heard both streams through Redis: {received}");
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_mixing_ephemeral_and_stored_notifications_reaches_another_server_in_its_order() {
    let Some(redis) = TestRedis::get() else { return };
    let stores = shared_stores();
    let servers = cluster(2, &redis.url(), &prefix("mixed"), &stores).await;
    let (mut reader, _) = Client::login(&servers[1], "alice", "phone", &[]).await;
    reader.subscribe_one(1, json!({"stream":"user:alice"})).await;
    let kinds = [Persistence::Bufferable, Persistence::Ephemeral, Persistence::Ephemeral, Persistence::Persistent];
    let batch = kinds
        .iter()
        .enumerate()
        .map(|(i, p)| PublishRequest::new("t").user("alice").persistence(*p).title(i.to_string()))
        .collect();
    let receipts: Vec<_> =
        servers[0].publisher().publish_batch(batch).await.into_iter().map(|r| r.expect("published")).collect();
    let got = notifications(&mut reader, 4, Duration::from_millis(300)).await;
    let titles: Vec<&str> = got.iter().map(|n| n["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["0", "1", "2", "3"], "in the batch's order");
    let offsets: Vec<Option<u64>> = got.iter().map(|n| n["offset"].as_u64()).collect();
    assert_eq!(offsets, [Some(1), None, None, Some(2)], "ephemeral ones without an offset");
    let ids: Vec<String> = receipts.into_iter().map(|r| r.id).collect();
    assert_eq!(counts(&ids, &got), Counts { acknowledged: 4, received: 4, lost: 0, duplicated: 0 });
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_pub_sub_message_is_re_read_on_the_next_one_and_a_lost_last_one_by_the_position_check() {
    let Some(redis) = TestRedis::get() else { return };
    let stores = shared_stores();
    let name = prefix("repair");
    let servers = cluster(2, &redis.url(), &name, &stores).await;
    // A server on the same store whose broker publishes under another prefix: what it publishes is committed,
    // but its pub/sub message never reaches the others — a lost message.
    let lossy = cluster(1, &redis.url(), &format!("{name}-elsewhere"), &stores).await.pop().unwrap();
    let (mut reader, _) = Client::login(&servers[1], "alice", "phone", &[]).await;
    reader.subscribe_one(1, json!({"stream":"user:alice"})).await;
    let publish = |server: &RunningServer, title: &str| {
        let publisher = server.publisher();
        let title = title.to_owned();
        async move { publisher.publish(PublishRequest::new("t").user("alice").title(title)).await.unwrap().id }
    };
    let mut acknowledged = vec![publish(&servers[0], "1").await];
    acknowledged.push(publish(&lossy, "2 (its message is lost)").await);
    acknowledged.push(publish(&servers[0], "3").await);
    let got = notifications(&mut reader, 3, Duration::from_millis(100)).await;
    assert_eq!(offsets(&got), [1, 2, 3], "the skip from 1 to 3 re-read 2");
    assert!(redis_sample(&servers[1], "tidings_redis_skips_repaired_total") >= 1);
    // A lost last message: nothing follows it; the position check finds it (two checks, 200 ms apart).
    acknowledged.push(publish(&lossy, "4 (lost, and the last)").await);
    let mut all = got;
    all.extend(notifications(&mut reader, 1, Duration::from_millis(300)).await);
    assert_eq!(offsets(&all), [1, 2, 3, 4]);
    assert_eq!(counts(&acknowledged, &all), Counts { acknowledged: 4, received: 4, lost: 0, duplicated: 0 });
    assert!(redis_sample(&servers[1], "tidings_redis_position_repairs_total") >= 1);
    lossy.shutdown().await;
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_replacement_operator_drop_and_presence_work_across_servers() {
    let Some(redis) = TestRedis::get() else { return };
    let stores = shared_stores();
    let servers = cluster(2, &redis.url(), &prefix("control"), &stores).await;
    let (mut old, _) = Client::login(&servers[0], "alice", "phone", &[]).await;
    let (mut bob, _) = Client::login(&servers[1], "bob", "laptop", &[]).await;
    // Presence: both servers see both users.
    for server in &servers {
        eventually("both users online in GET /v1/presence", || async {
            let (status, body) = get(server, "/v1/presence").await;
            let users: Vec<&str> =
                body["users"].as_array().map_or(vec![], |u| u.iter().map(|u| u["user"].as_str().unwrap()).collect());
            status == 200 && users == ["alice", "bob"]
        })
        .await;
    }
    let (_, alice) = get(&servers[1], "/v1/presence/alice").await;
    assert_eq!(alice["devices"][0]["device"], "phone", "{alice}");
    // The same device connecting to the other server replaces the older session: 4011.
    let (mut new, _) = Client::login(&servers[1], "alice", "phone", &[]).await;
    let closed = old.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("session_replaced", Some(4011)));
    new.sync().await;
    // The operator drop on one server drops bob's connection on the other: 4015, counted by the process that
    // had it.
    let (status, body) = post(&servers[0], "/v1/admin/drop", json!({"user":"bob"})).await;
    assert_eq!((status, body), (200, json!({"dropped":1,"processes":2,"complete":true})));
    let closed = bob.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("dropped", Some(4015)));
    new.sync().await; // alice's session is untouched
    // Bob left: presence shows only alice's new session, everywhere.
    for server in &servers {
        eventually("bob offline everywhere", || async {
            let (_, body) = get(server, "/v1/presence").await;
            body["users"].as_array().is_some_and(|u| u.len() == 1 && u[0]["devices"].as_array().unwrap().len() == 1)
        })
        .await;
    }
    drop(new);
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_unsubscribe_on_one_server_ends_the_subscription_on_another() {
    let Some(redis) = TestRedis::get() else { return };
    let stores = shared_stores();
    let servers = cluster(2, &redis.url(), &prefix("unsub"), &stores).await;
    let (mut alice, _) = Client::login(&servers[1], "alice", "phone", &["news", "sport"]).await;
    alice.subscribe_one(1, json!({"stream":"topic:news"})).await;
    alice.subscribe_one(2, json!({"stream":"topic:sport"})).await;
    let (mut bob, _) = Client::login(&servers[1], "bob", "laptop", &["news"]).await;
    bob.subscribe_one(1, json!({"stream":"topic:news"})).await;
    // Through server 0, which has none of these connections.
    let (status, body) =
        post(&servers[0], "/v1/admin/unsubscribe", json!({"user":"alice","stream":"topic:news"})).await;
    assert_eq!(
        (status, body),
        (200, json!({"unsubscribed":1,"processes":2,"complete":true})),
        "alice's connection on the other server"
    );
    let frame = alice.recv().await;
    assert_eq!(
        (frame["op"].as_str(), frame["code"].as_str(), frame["stream"].as_str(), frame.get("ref")),
        (Some("error"), Some("forbidden"), Some("topic:news"), None),
        "{frame}"
    );
    // The news no longer reach alice; sport still does; bob still gets the news.
    let publisher = servers[0].publisher();
    let news = publisher.publish(PublishRequest::new("t").topic("news").title("n")).await.unwrap().id;
    let sport = publisher.publish(PublishRequest::new("t").topic("sport").title("s")).await.unwrap().id;
    let got = notifications(&mut alice, 1, Duration::from_millis(300)).await;
    let ids: Vec<&str> = got.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [sport.as_str()], "only sport after the unsubscribe");
    let got = notifications(&mut bob, 1, Duration::from_millis(100)).await;
    assert_eq!(got[0]["id"].as_str(), Some(news.as_str()), "bob keeps the news");
    // Without a user: every connection on the stream, in every process (bob's, here; none on server 0).
    let (status, body) = post(&servers[1], "/v1/admin/unsubscribe", json!({"stream":"topic:news"})).await;
    assert_eq!((status, body), (200, json!({"unsubscribed":1,"processes":2,"complete":true})));
    assert_eq!(bob.recv().await["code"], "forbidden");
    // Bad input: a clear 400 that names the problem.
    for (bad, says) in [
        (json!({}), "stream is missing"),
        (json!({"stream":"news"}), "stream:"),
        (json!({"stream":"topic:news","user":7}), "user: must be a string"),
        (json!(["topic:news"]), "not a JSON object"),
    ] {
        let (status, body) = post(&servers[0], "/v1/admin/unsubscribe", bad.clone()).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(status == 400 && message.contains(says), "{bad}: {status} {body}");
    }
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_drop_counts_what_answered_and_says_when_a_process_did_not() {
    let Some(redis) = TestRedis::get() else { return };
    let stores = shared_stores();
    let prefix = prefix("silent");
    let servers = cluster(2, &redis.url(), &prefix, &stores).await;
    let (mut bob, _) = Client::login(&servers[1], "bob", "laptop", &[]).await;
    let (mut carol, _) = Client::login(&servers[0], "carol", "phone", &[]).await;
    // A third subscriber of the control channel that never answers: a process that hangs, or dies before it
    // answers. Redis counts it among the receivers, so the answer cannot be complete.
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut silent = client.get_async_pubsub().await.unwrap();
    silent.subscribe(format!("{prefix}:control")).await.unwrap();
    let (status, body) = post(&servers[0], "/v1/admin/drop", json!({})).await;
    assert_eq!((status, body), (200, json!({"dropped":2,"processes":2,"complete":false})));
    for (client, who) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        let closed = client.closed().await;
        assert_eq!((closed.error_code(), closed.code), ("dropped", Some(4015)), "{who}");
    }
    // Once it is gone, the answer is complete again.
    drop(silent);
    let (status, body) = post(&servers[1], "/v1/admin/drop", json!({})).await;
    assert_eq!((status, body), (200, json!({"dropped":0,"processes":2,"complete":true})));
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbox_frames_reach_watchers_on_every_server() {
    let Some(redis) = TestRedis::get() else { return };
    let stores = shared_stores();
    let servers = cluster(2, &redis.url(), &prefix("inbox"), &stores).await;
    let (mut watcher, _) = Client::login(&servers[1], "alice", "phone", &[]).await;
    watcher.send(json!({"op":"inbox_watch","ref":1})).await;
    let reply = watcher.recv_skipping_heartbeats().await;
    assert_eq!(reply["ref"], 1, "{reply}");
    servers[0]
        .publisher()
        .publish(
            PublishRequest::new("t")
                .user("alice")
                .title("kept")
                .persistence(tidings_core::protocol::Persistence::Persistent),
        )
        .await
        .unwrap();
    let frame = loop {
        let frame = watcher.recv_skipping_heartbeats().await;
        if frame["op"] == "inbox" {
            break frame;
        }
    };
    assert_eq!(frame["counts"]["unread"], 1, "{frame}");
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_is_red_while_redis_is_gone_and_delivery_resumes_after_it_restarts() {
    let Some(mut redis) = OwnRedis::start() else { return };
    let stores = shared_stores();
    let servers = cluster(2, &redis.url(), &prefix("ready"), &stores).await;
    let (status, body) = get(&servers[0], "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"]["ok"], true, "{body}");
    let (mut reader, _) = Client::login(&servers[1], "alice", "phone", &[]).await;
    reader.subscribe_one(1, json!({"stream":"user:alice"})).await;
    redis.kill();
    eventually("/readyz red without Redis", || async {
        let (status, body) = get(&servers[0], "/readyz").await;
        status == 503 && body["checks"]["redis"]["ok"] == false && body["checks"]["redis"]["error"].is_string()
    })
    .await;
    // Presence lives in Redis: without it the presence API answers 503 with a retry hint (as documented).
    for path in ["/v1/presence", "/v1/presence/alice"] {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", servers[1].http_url()))
            .bearer_auth(tidings_server::TEST_API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}: Retry-After");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{path}: {body}");
    }
    // Publishing still commits (the store is up): the notification is acknowledged, delivered once Redis is back.
    let id = servers[0].publisher().publish(PublishRequest::new("t").user("alice").title("during")).await.unwrap().id;
    redis.restart();
    eventually("/readyz green again", || async { get(&servers[0], "/readyz").await.0 == 200 }).await;
    eventually("/readyz green on the other server", || async { get(&servers[1], "/readyz").await.0 == 200 }).await;
    let after = servers[0].publisher().publish(PublishRequest::new("t").user("alice").title("after")).await.unwrap().id;
    let got = notifications(&mut reader, 2, Duration::from_millis(300)).await;
    assert_eq!(offsets(&got), [1, 2]);
    assert_eq!(counts(&[id, after], &got), Counts { acknowledged: 2, received: 2, lost: 0, duplicated: 0 });
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_under_load_loses_and_duplicates_nothing_acknowledged() {
    let Some(mut redis) = OwnRedis::start() else { return };
    let stores = shared_stores();
    let servers = Arc::new(cluster(2, &redis.url(), &prefix("restart"), &stores).await);
    let mut readers = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let (mut r, _) = Client::login(server, &format!("reader{i}"), "d", &["load"]).await;
        r.subscribe_one(1, json!({"stream":"topic:load"})).await;
        readers.push(r);
    }
    // 400 publishes, alternating servers, one every ~2 ms; Redis is killed after 100 and restarted 300 ms later.
    let publishing = {
        let servers = servers.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut failed = 0;
            for n in 0..400usize {
                let publisher = servers[n % 2].publisher();
                match publisher.publish(PublishRequest::new("t").topic("load").title(n.to_string())).await {
                    Ok(receipt) => acknowledged.push(receipt.id),
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acknowledged, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let (acknowledged, failed) = publishing.await.unwrap();
    assert_eq!(failed, 0, "publishes commit to the store whatever Redis does");
    for reader in &mut readers {
        let got = notifications(reader, acknowledged.len(), Duration::from_millis(500)).await;
        let c = counts(&acknowledged, &got);
        eprintln!("redis restarted under load: {c:?}");
        assert_eq!(c, Counts { acknowledged: 400, received: 400, lost: 0, duplicated: 0 });
        assert_eq!(offsets(&got), (1..=400).collect::<Vec<_>>(), "in order");
    }
    for server in servers.iter() {
        assert!(redis_sample(server, "tidings_redis_pubsub_connects_total") >= 2, "the pub/sub connection came back");
    }
    let repaired: u64 = servers.iter().map(|s| redis_sample(s, "tidings_redis_repaired_notifications_total")).sum();
    assert!(repaired > 0, "what was published while Redis was down came by re-reads");
    let servers = Arc::try_unwrap(servers).unwrap();
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_process_s_presence_expires_while_a_live_one_s_is_refreshed() {
    let Some(redis) = TestRedis::get() else { return };
    let stores = shared_stores();
    let name = prefix("expiry");
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut config = ServerConfig::for_tests();
        let mut redis = redis_config(&redis.url(), &name);
        redis.presence_ttl = Duration::from_millis(900);
        config.redis = Some(redis);
        servers.push(tidings_server::start_with_stores(config, stores.clone()).await.unwrap());
    }
    let (_alice, _) = Client::login(&servers[0], "alice", "phone", &[]).await;
    let (_bob, _) = Client::login(&servers[1], "bob", "phone", &[]).await;
    eventually("both online", || async { online(&servers[1]).await == ["alice", "bob"] }).await;
    // Server 0 "dies" as far as Redis can tell: its broker stops (no refresh, no goodbye).
    servers[0].redis_broker().unwrap().stop();
    // Three TTLs later alice is gone, while bob (refreshed by a live process every TTL/3) stays.
    tokio::time::sleep(Duration::from_millis(2700)).await;
    assert_eq!(online(&servers[1]).await, ["bob"]);
}

async fn online(server: &RunningServer) -> Vec<String> {
    let (_, body) = get(server, "/v1/presence").await;
    body["users"].as_array().unwrap().iter().map(|u| u["user"].as_str().unwrap().to_owned()).collect()
}
