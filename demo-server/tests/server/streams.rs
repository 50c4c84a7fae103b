//! Subscriptions, delivery, offsets, epochs and replay (protocol §2.3–§2.6, §5).

use crate::common;

use std::collections::HashSet;

use common::*;
use serde_json::{Value, json};
use tidings_core::protocol::Persistence;
use tidings_server::{PublishRequest, ServerConfig};

#[tokio::test]
async fn own_stream_is_allowed_and_other_users_are_forbidden_without_closing() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let replies = client.subscribe(1, json!([{"stream":"user:alice"},{"stream":"user:bob"}])).await;
    assert_eq!(replies[0]["op"], "subscribed");
    assert_eq!(replies[0]["stream"], "user:alice");
    assert_eq!(replies[0]["continuity"], "fresh");
    assert_eq!(replies[0]["offset"], 0);
    assert_eq!(replies[0]["epoch"].as_str().unwrap().len(), 8);
    assert_eq!(replies[1]["op"], "error");
    assert_eq!(replies[1]["code"], "forbidden");
    assert_eq!(replies[1]["stream"], "user:bob");
    assert_eq!(replies[1]["ref"], 1);
    // Still usable: live delivery on the allowed stream works.
    server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    let n = client.recv().await;
    assert_eq!(
        (n["op"].as_str(), n["stream"].as_str(), n["offset"].as_u64()),
        (Some("notification"), Some("user:alice"), Some(1))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn topics_follow_the_claim_patterns() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &["news", "sports.*"]).await;
    let replies = client
        .subscribe(
            7,
            json!([{"stream":"topic:news"},{"stream":"topic:sports.eu"},{"stream":"topic:sports"},
                   {"stream":"topic:weather"},{"stream":"topic:newsroom"}]),
        )
        .await;
    let ops: Vec<(&str, &str)> =
        replies.iter().map(|r| (r["stream"].as_str().unwrap(), r["op"].as_str().unwrap())).collect();
    assert_eq!(
        ops,
        [
            ("topic:news", "subscribed"),
            ("topic:sports.eu", "subscribed"),
            ("topic:sports", "error"),
            ("topic:weather", "error"),
            ("topic:newsroom", "error")
        ]
    );
    assert!(replies[2..].iter().all(|r| r["code"] == "forbidden"));

    let (mut everything, _) = Client::login(&server, "bob", "d-1", &["*"]).await;
    let reply = everything.subscribe_one(1, json!({"stream":"topic:anything.at:all"})).await;
    assert_eq!(reply["continuity"], "fresh");
    let (mut nothing, _) = Client::login(&server, "carol", "d-1", &[]).await;
    let reply = nothing.subscribe(1, json!([{"stream":"topic:news"}])).await;
    assert_eq!(reply[0]["code"], "forbidden");
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_are_bad_requests_and_keep_the_connection() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &["*"]).await;
    let replies = client
        .subscribe(2, json!([{"stream":"room:1"},{"stream":"user:alice","epoch":"abc"},{"stream":"topic:bad name"}]))
        .await;
    assert!(replies.iter().all(|r| r["op"] == "error" && r["code"] == "bad_request"), "{replies:?}");
    assert!(replies[1]["message"].as_str().unwrap().contains("together"));

    let too_many: Vec<Value> = (0..65).map(|i| json!({"stream": format!("topic:t{i}")})).collect();
    client.send(json!({"op":"subscribe","ref":3,"streams":too_many})).await;
    let reply = client.recv().await;
    assert_eq!(
        (reply["op"].as_str(), reply["code"].as_str(), reply["ref"].as_u64()),
        (Some("error"), Some("bad_request"), Some(3))
    );
    assert!(client.sync().await.is_empty(), "one error for the whole frame");
    server.shutdown().await;
}

#[tokio::test]
async fn at_most_256_streams_per_connection() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &["*"]).await;
    for batch in 0..4 {
        let streams: Vec<Value> = (0..64).map(|i| json!({"stream": format!("topic:t{}", batch * 64 + i)})).collect();
        let replies = client.subscribe(batch, json!(streams)).await;
        assert!(replies.iter().all(|r| r["op"] == "subscribed"));
    }
    let replies = client.subscribe(9, json!([{"stream":"topic:one-more"},{"stream":"topic:t0"}])).await;
    assert_eq!(replies[0]["code"], "bad_request");
    assert_eq!(replies[1]["op"], "subscribed", "re-subscribing to a held stream is allowed");
    server.shutdown().await;
}

#[tokio::test]
async fn each_subscriber_gets_each_notification_once_with_increasing_offsets() {
    let server = start_default().await;
    let (mut phone, _) = Client::login(&server, "alice", "phone", &["news"]).await;
    let (mut laptop, _) = Client::login(&server, "alice", "laptop", &["news"]).await;
    let (mut bob, _) = Client::login(&server, "bob", "d-1", &["news"]).await;
    phone.subscribe(1, json!([{"stream":"user:alice"},{"stream":"topic:news"}])).await;
    laptop.subscribe_one(1, json!({"stream":"user:alice"})).await;
    bob.subscribe_one(1, json!({"stream":"topic:news"})).await;

    let mut ids = Vec::new();
    for i in 0..3 {
        let receipt = publish(
            &server,
            json!({"users":["alice"],"topics":["news"],"type":"comment.created","title":format!("n{i}")}),
        )
        .await;
        assert_eq!(receipt["duplicate"], false);
        let deliveries = receipt["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 2);
        assert_eq!(deliveries[0]["stream"], "user:alice");
        assert_eq!(deliveries[0]["offset"], i + 1);
        assert_eq!(deliveries[1]["stream"], "topic:news");
        ids.push(receipt["id"].as_str().unwrap().to_owned());
    }
    assert!(ids.iter().all(|id| id.len() == 26), "server ids are ULIDs: {ids:?}");

    let phone_frames = phone.sync().await;
    let on = |frames: &[Value], stream: &str| -> Vec<Value> {
        frames.iter().filter(|f| f["stream"] == stream).cloned().collect()
    };
    assert_eq!(offsets(&on(&phone_frames, "user:alice")), [1, 2, 3]);
    assert_eq!(offsets(&on(&phone_frames, "topic:news")), [1, 2, 3]);
    let phone_ids: Vec<String> =
        on(&phone_frames, "user:alice").iter().map(|f| f["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(phone_ids, ids, "one publish has one id on every stream");
    let laptop_frames = laptop.sync().await;
    assert_eq!(offsets(&laptop_frames), [1, 2, 3]);
    let bob_frames = bob.sync().await;
    assert_eq!(offsets(&bob_frames), [1, 2, 3]);
    assert!(bob_frames.iter().all(|f| f["stream"] == "topic:news"));
    let first = &laptop_frames[0];
    assert_eq!(first["type"], "comment.created");
    assert_eq!(first["priority"], "important");
    assert_eq!(first["persistence"], "bufferable");
    assert_eq!(first["title"], "n0");
    assert!(first["created_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(server.stats().deliveries, 12);
    server.shutdown().await;
}

#[tokio::test]
async fn resuming_replays_what_was_missed_then_continues_live() {
    let server = start_default().await;
    let publisher = server.publisher();
    for i in 0..5 {
        publisher.publish(PublishRequest::new("t").user("alice").title(format!("n{}", i + 1))).await.unwrap();
    }
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let fresh = client.subscribe_one(1, json!({"stream":"user:alice"})).await;
    let epoch = fresh["epoch"].as_str().unwrap().to_owned();
    assert_eq!(fresh["offset"], 5);
    let resumed = client.subscribe_one(2, json!({"stream":"user:alice","epoch":epoch,"offset":2})).await;
    assert_eq!(resumed["continuity"], "resumed");
    assert_eq!(resumed["replayed"], 3);
    assert_eq!(resumed["offset"], 5);
    let replay: Vec<Value> = vec![client.recv().await, client.recv().await, client.recv().await];
    assert_eq!(offsets(&replay), [3, 4, 5]);
    assert_eq!(replay[0]["title"], "n3");
    publisher.publish(PublishRequest::new("t").user("alice")).await.unwrap();
    assert_eq!(offsets(&client.sync().await), [6], "live delivery continues without duplicates");

    let (mut up_to_date, _) = Client::login(&server, "alice", "d-2", &[]).await;
    let reply = up_to_date.subscribe_one(1, json!({"stream":"user:alice","epoch":epoch,"offset":6})).await;
    assert_eq!((reply["continuity"].as_str(), reply["replayed"].as_u64()), (Some("resumed"), Some(0)));
    assert!(up_to_date.sync().await.is_empty());
    assert_eq!(server.stats().replayed, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn a_restart_changes_the_epoch() {
    let server = start_default().await;
    let receipt = publish(&server, json!({"users":["alice"],"type":"t"})).await;
    let old_epoch = receipt["deliveries"][0]["epoch"].as_str().unwrap().to_owned();
    server.shutdown().await;

    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let reply = client.subscribe_one(1, json!({"stream":"user:alice","epoch":old_epoch,"offset":1})).await;
    assert_eq!(reply["continuity"], "gap");
    assert_eq!(reply["reason"], "epoch_changed");
    assert_ne!(reply["epoch"], old_epoch.as_str());
    assert_eq!(reply["offset"], 0, "offsets restart in the new epoch");
    assert!(reply.get("missed").is_none());
    assert!(client.sync().await.is_empty(), "nothing is replayed after a gap");
    server.shutdown().await;
}

#[tokio::test]
async fn a_position_evicted_from_the_buffer_is_a_gap_with_the_missed_count() {
    let mut config = ServerConfig::for_tests();
    config.replay_max_items = 3;
    let server = start(config).await;
    let mut epoch = String::new();
    for _ in 0..6 {
        let receipt = server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
        epoch = receipt.deliveries[0].epoch.clone();
    }
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    // Buffer holds 4, 5, 6: from offset 1, offsets 2 and 3 are lost; what is held follows the gap.
    let reply = client.subscribe_one(1, json!({"stream":"user:alice","epoch":epoch,"offset":1})).await;
    assert_eq!((reply["continuity"].as_str(), reply["reason"].as_str()), (Some("gap"), Some("out_of_buffer")));
    assert_eq!((reply["missed"].as_u64(), reply["replayed"].as_u64()), (Some(2), Some(3)));
    assert_eq!(reply["offset"], 6);
    assert_eq!(offsets(&client.sync().await), [4, 5, 6]);
    // From offset 3 everything after it is still there.
    let reply = client.subscribe_one(2, json!({"stream":"user:alice","epoch":epoch,"offset":3})).await;
    assert_eq!((reply["continuity"].as_str(), reply["replayed"].as_u64()), (Some("resumed"), Some(3)));
    assert_eq!(offsets(&client.sync().await), [4, 5, 6]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_gap_is_followed_by_what_the_current_epoch_holds() {
    let server = start_default().await;
    for _ in 0..3 {
        server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    }
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    // A position in an epoch the server no longer has (as after a restart with the memory store).
    let reply = client.subscribe_one(1, json!({"stream":"user:alice","epoch":"lost1234","offset":17})).await;
    assert_eq!((reply["continuity"].as_str(), reply["reason"].as_str()), (Some("gap"), Some("epoch_changed")));
    assert_eq!((reply["offset"].as_u64(), reply["replayed"].as_u64()), (Some(3), Some(3)));
    let replayed = client.sync().await;
    assert_eq!(offsets(&replayed), [1, 2, 3]);
    assert!(replayed.iter().all(|n| n["epoch"] == reply["epoch"]));
    // Ahead of the stream in its own epoch (the server lost its newest notifications): likewise.
    let reply = client.subscribe_one(2, json!({"stream":"user:alice","epoch":reply["epoch"],"offset":9})).await;
    assert_eq!((reply["reason"].as_str(), reply["replayed"].as_u64()), (Some("ahead_of_stream"), Some(3)));
    assert_eq!(offsets(&client.sync().await), [1, 2, 3]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_position_ahead_of_the_stream_is_a_gap() {
    let server = start_default().await;
    let receipt = server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    let epoch = receipt.deliveries[0].epoch.clone();
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let reply = client.subscribe_one(1, json!({"stream":"user:alice","epoch":epoch,"offset":10})).await;
    assert_eq!((reply["continuity"].as_str(), reply["reason"].as_str()), (Some("gap"), Some("ahead_of_stream")));
    assert_eq!((reply["offset"].as_u64(), reply["replayed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(offsets(&client.sync().await), [1]);
    server.shutdown().await;
}

#[tokio::test]
async fn ephemeral_notifications_have_no_offset_and_are_never_replayed() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    let fresh = client.subscribe_one(1, json!({"stream":"user:alice"})).await;
    let epoch = fresh["epoch"].as_str().unwrap().to_owned();
    let receipt = server
        .publisher()
        .publish(PublishRequest::new("typing").user("alice").persistence(Persistence::Ephemeral))
        .await
        .unwrap();
    assert_eq!(receipt.deliveries[0].offset, None);
    let frame = client.recv().await;
    assert_eq!(frame["op"], "notification");
    assert_eq!(frame["persistence"], "ephemeral");
    assert_eq!(frame["epoch"], epoch.as_str());
    assert!(frame.get("offset").is_none(), "{frame}");

    let (mut later, _) = Client::login(&server, "alice", "d-2", &[]).await;
    let reply = later.subscribe_one(1, json!({"stream":"user:alice","epoch":epoch,"offset":0})).await;
    assert_eq!((reply["continuity"].as_str(), reply["replayed"].as_u64()), (Some("resumed"), Some(0)));
    assert_eq!(reply["offset"], 0, "ephemeral notifications do not move the head");
    assert!(later.sync().await.is_empty());
    let receipt = server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    assert_eq!(receipt.deliveries[0].offset, Some(1));
    server.shutdown().await;
}

#[tokio::test]
async fn unsubscribing_stops_delivery() {
    let server = start_default().await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.subscribe_one(1, json!({"stream":"user:alice"})).await;
    client.send(json!({"op":"unsubscribe","ref":2,"streams":["user:alice","topic:never"]})).await;
    let a = client.recv().await;
    let b = client.recv().await;
    assert_eq!(
        (a["op"].as_str(), a["stream"].as_str(), a["ref"].as_u64()),
        (Some("unsubscribed"), Some("user:alice"), Some(2))
    );
    assert_eq!((b["op"].as_str(), b["stream"].as_str()), (Some("unsubscribed"), Some("topic:never")));
    server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    assert!(client.sync().await.is_empty());
    server.shutdown().await;
}

/// Subscribe and publish race on the same stream; the subscriber must see every offset after its position
/// exactly once and in order, whichever way the race goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_is_atomic_with_respect_to_concurrent_publishes() {
    const TOTAL: u64 = 400;
    let server = start_default().await;
    let first = server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    let epoch = first.deliveries[0].epoch.clone();
    let publisher = server.publisher();
    let publishing = tokio::spawn(async move {
        for _ in 1..TOTAL {
            publisher.publish(PublishRequest::new("t").user("alice")).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut clients = Vec::new();
    for device in 0..4 {
        let (mut client, _) = Client::login(&server, "alice", &format!("d-{device}"), &[]).await;
        client
            .send(json!({"op":"subscribe","ref":1,"streams":[{"stream":"user:alice","epoch":epoch,"offset":1}]}))
            .await;
        clients.push(client);
    }
    publishing.await.unwrap();
    for mut client in clients {
        let subscribed = client.recv().await;
        assert_eq!(subscribed["continuity"], "resumed", "{subscribed}");
        let mut seen = Vec::new();
        while seen.last() != Some(&TOTAL) {
            let frame = client.recv().await;
            assert_eq!(frame["op"], "notification");
            seen.push(frame["offset"].as_u64().unwrap());
        }
        assert_eq!(seen, (2..=TOTAL).collect::<Vec<_>>());
        let (head, replayed) = (subscribed["offset"].as_u64().unwrap(), subscribed["replayed"].as_u64().unwrap());
        assert_eq!(replayed, head - 1, "the replay covers exactly the offsets up to the head at subscribe time");
        assert!(client.sync().await.is_empty(), "no duplicates after the last offset");
    }
    server.shutdown().await;
}

/// As above, for a position the server cannot continue: the gap's replayed tail and the live notifications that
/// follow it cover every offset after `offset - replayed` exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gap_subscribe_is_atomic_with_respect_to_concurrent_publishes() {
    const TOTAL: u64 = 400;
    let server = start_default().await;
    server.publisher().publish(PublishRequest::new("t").user("alice")).await.unwrap();
    let publisher = server.publisher();
    let publishing = tokio::spawn(async move {
        for _ in 1..TOTAL {
            publisher.publish(PublishRequest::new("t").user("alice")).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut clients = Vec::new();
    for device in 0..4 {
        let (mut client, _) = Client::login(&server, "alice", &format!("d-{device}"), &[]).await;
        client
            .send(json!({"op":"subscribe","ref":1,"streams":[{"stream":"user:alice","epoch":"gone0000","offset":7}]}))
            .await;
        clients.push(client);
    }
    publishing.await.unwrap();
    for mut client in clients {
        let subscribed = client.recv().await;
        assert_eq!(
            (subscribed["continuity"].as_str(), subscribed["reason"].as_str()),
            (Some("gap"), Some("epoch_changed"))
        );
        let (head, replayed) = (subscribed["offset"].as_u64().unwrap(), subscribed["replayed"].as_u64().unwrap_or(0));
        assert_eq!(replayed, head, "the whole stream is held (buffer of 1000)");
        let mut seen = Vec::new();
        while seen.last() != Some(&TOTAL) {
            let frame = client.recv().await;
            assert_eq!(frame["op"], "notification");
            seen.push(frame["offset"].as_u64().unwrap());
        }
        assert_eq!(seen, (head - replayed + 1..=TOTAL).collect::<Vec<_>>());
        assert!(client.sync().await.is_empty(), "no duplicates after the last offset");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4014() {
    let mut config = ServerConfig::for_tests();
    config.outbound_queue_limit = 16;
    let server = start(config).await;
    let (mut client, _) = Client::login(&server, "alice", "d-1", &[]).await;
    client.subscribe_one(1, json!({"stream":"user:alice"})).await;
    // The client reads nothing while far more is published than its socket buffers and queue can hold.
    let body = "x".repeat(4000);
    for _ in 0..6000 {
        server.publisher().publish(PublishRequest::new("t").user("alice").body(body.clone())).await.unwrap();
        if server.stats().slow_consumers > 0 {
            break;
        }
    }
    assert_eq!(server.stats().slow_consumers, 1);
    let closed = client.closed().await;
    assert_eq!((closed.error_code(), closed.code), ("slow_consumer", Some(4014)));
    let received = offsets(&closed.frames);
    let unique: HashSet<u64> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "no duplicates");
    assert!(received.windows(2).all(|w| w[0] + 1 == w[1]), "what was delivered is contiguous");
    server.shutdown().await;
}
