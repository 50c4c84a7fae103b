//! Demo mode: a publisher that sends a varied notification every few seconds, so that a fresh checkout shows
//! something without any setup.

use std::time::Duration;

use tidings_core::protocol::{Persistence, Priority, RawJson};
use tracing::{info, warn};

use crate::publish::{PublishRequest, Publisher};

/// What the demo needs to know about the running server.
#[derive(Clone, Debug)]
pub struct DemoContext {
    /// In-process publishing handle.
    pub publisher: Publisher,
    /// `ws://…/v1/ws` of the server.
    pub ws_url: String,
    /// `http://…` of the server.
    pub http_url: String,
    /// The secret tokens are signed with (for a demo client's token source).
    pub jwt_secret: String,
    /// Interval between demo notifications.
    pub interval: Duration,
}

/// Runs the demo until the task is cancelled (the server aborts it on shutdown): the publisher, and a
/// subscriber — the native Rust client signed in as `alice`, reading topic `news` — that logs everything it
/// receives.
pub async fn run_demo(ctx: DemoContext) {
    info!(ws_url = %ctx.ws_url, http_url = %ctx.http_url, every = ?ctx.interval, "demo publisher started");
    let token = crate::issue_token(&ctx.jwt_secret, "alice", &["news"], Some(Duration::from_secs(24 * 3600)));
    tokio::join!(run_demo_publisher(ctx.publisher, ctx.interval), run_demo_subscriber(ctx.ws_url, token));
}

/// A native client as `alice`, subscribed to `topic:news`, logging its events with the target
/// `demo_subscriber`. Batching uses the default window, so bursts of likes show up as digests.
pub async fn run_demo_subscriber(ws_url: String, token: String) {
    use tidings_core::engine::Event;
    use tidings_core::native::{Client, ClientConfig, StaticToken};

    let started = Client::builder(ClientConfig::new(ws_url)).token_provider(StaticToken::new(token)).connect();
    let (client, mut events) = match started {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "demo subscriber could not start");
            return;
        }
    };
    if let Err(e) = client.subscribe("topic:news") {
        warn!(error = %e, "demo subscriber could not subscribe");
    }
    while let Some(event) = events.next().await {
        match event {
            Event::Notification(n) => info!(
                target: "demo_subscriber",
                stream = %n.stream(), offset = ?n.offset, priority = n.priority.as_str(), kind = %n.kind(),
                "alice got: {}", n.title().unwrap_or("(no title)")
            ),
            Event::Digest(d) => info!(
                target: "demo_subscriber",
                group = %d.group, "alice got a digest: {} notifications, first {:?}, last {:?}",
                d.count, d.first.title().unwrap_or(""), d.last.title().unwrap_or("")
            ),
            Event::State(s) => info!(target: "demo_subscriber", "alice's connection: {s:?}"),
            Event::Continuity { stream, continuity } => {
                info!(target: "demo_subscriber", %stream, "alice's stream continuity: {continuity:?}")
            }
            Event::PushRegistered { platform } => {
                info!(target: "demo_subscriber", "alice's push address registered ({})", platform.as_str())
            }
            Event::SubscriptionFailed { stream, code, message } => {
                warn!(target: "demo_subscriber", %stream, %code, "alice's subscription refused: {message}")
            }
            Event::PushRegistrationFailed { platform, code, message } => {
                warn!(target: "demo_subscriber", %code, "alice's push address ({}) refused: {message}", platform.as_str())
            }
            Event::InboxCounts(c) => {
                info!(target: "demo_subscriber", "alice's inbox: {} unread of {} (version {})", c.unread, c.total, c.version)
            }
            Event::InboxChanged => {}
        }
    }
}

/// Publishes one notification of the demo script every `interval`, forever.
pub async fn run_demo_publisher(publisher: Publisher, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    for step in 0u64.. {
        ticker.tick().await;
        let request = demo_notification(step);
        match publisher.publish(request).await {
            Ok(receipt) => info!(id = %receipt.id, streams = receipt.deliveries.len(), "demo notification published"),
            Err(e) => warn!(error = %e, "demo publish failed"),
        }
    }
}

fn data(json: String) -> RawJson {
    RawJson::from_string(json).expect("demo data is valid JSON")
}

/// The `step`-th notification of the demo script: comments, messages, news, bursts of likes that clients
/// batch into digests, a security alert and an ephemeral typing indicator.
pub fn demo_notification(step: u64) -> PublishRequest {
    let likers = ["bob", "carol", "dave", "erin", "frank"];
    match step % 10 {
        0 => PublishRequest::new("comment.created")
            .user("alice")
            .title("Bob commented on your post")
            .body(format!("Looks great! (#{step})"))
            .data(data(format!(r#"{{"post":"post-1","comment":"c-{step}"}}"#))),
        1..=3 => {
            let who = likers[(step as usize / 10 + step as usize) % likers.len()];
            PublishRequest::new("post.liked")
                .user("alice")
                .priority(Priority::Informational)
                .group("likes:post-1")
                .title(format!("{who} liked your post"))
                .data(data(format!(r#"{{"post":"post-1","by":"{who}"}}"#)))
        }
        4 => PublishRequest::new("news.published")
            .topic("news")
            .priority(Priority::Informational)
            .title("Tidings 0.1 released")
            .body(format!("Release notes, part {step}"))
            .data(data(format!(r#"{{"article":"a-{step}"}}"#))),
        5 => PublishRequest::new("message.received")
            .user("bob")
            .title("Alice sent you a message")
            .body("Lunch at noon?")
            .data(data(format!(r#"{{"thread":"t-1","message":"m-{step}"}}"#))),
        6 => PublishRequest::new("typing")
            .user("alice")
            .persistence(Persistence::Ephemeral)
            .priority(Priority::Informational)
            .data(data(r#"{"thread":"t-1","who":"bob"}"#.to_owned())),
        7 => PublishRequest::new("security.login")
            .user("alice")
            .priority(Priority::Critical)
            .title("New sign-in to your account")
            .body("A new device signed in. Was it you?"),
        8 => PublishRequest::new("news.breaking")
            .topic("news")
            .user("bob")
            .priority(Priority::Critical)
            .title("Breaking: the demo works")
            .body("Both a topic and a user stream receive this one, with one id."),
        _ => PublishRequest::new("post.liked")
            .user("bob")
            .priority(Priority::Informational)
            .group("likes:post-2")
            .title("alice liked your post")
            .data(data(r#"{"post":"post-2","by":"alice"}"#.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_script_is_valid_and_varied() {
        let script: Vec<PublishRequest> = (0..10).map(demo_notification).collect();
        for request in &script {
            request.validate().unwrap();
        }
        assert!(script.iter().any(|r| r.priority == Priority::Critical));
        assert!(script.iter().any(|r| r.priority == Priority::Informational && r.group.is_some()));
        assert!(script.iter().any(|r| r.persistence == Persistence::Ephemeral));
        assert!(script.iter().any(|r| r.topics.contains(&"news".to_owned())));
        assert!(script.iter().any(|r| r.users.contains(&"bob".to_owned())));
    }
}
