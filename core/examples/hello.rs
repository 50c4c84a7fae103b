//! The first hour's Rust client: connects to a reference server in demo mode as `ada` (a user the demo publisher
//! never writes to) and prints what arrives. `cargo run -p tidings-core --example hello [-- ws://host:port/v1/ws]`

use tidings_core::{Client, ClientConfig, Event, TokenError};

/// Asks the demo server for a token (`POST /v1/demo/token`, demo mode only). Your app asks your backend instead.
async fn demo_token(http: &str, user: &str) -> Result<String, TokenError> {
    let fail = |e: reqwest::Error| TokenError { transient: true, message: e.to_string() };
    let reply: serde_json::Value = reqwest::Client::new()
        .post(format!("{http}/v1/demo/token"))
        .json(&serde_json::json!({ "user": user, "topics": ["news"], "ttl_secs": 3600 }))
        .send()
        .await
        .map_err(fail)?
        .error_for_status()
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)?; // {"token":"eyJ…"}
    Ok(reply["token"].as_str().unwrap_or_default().to_owned())
}

#[tokio::main] // the client runs on a tokio runtime: features "macros" and "rt-multi-thread"
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ws = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/v1/ws".into());
    let http = ws.replacen("ws", "http", 1).trim_end_matches("/v1/ws").to_owned();
    let (client, mut events) = Client::builder(ClientConfig::new(&ws))
        .token_provider(move |_force_refresh: bool| {
            let http = http.clone();
            async move { demo_token(&http, "ada").await }
        })
        .connect()?; // no store: positions and seen ids live in memory (FileStore keeps them across runs)
    client.subscribe("topic:news")?; // the user's own stream, user:ada, is subscribed automatically
    while let Some(event) = events.next().await {
        match event {
            Event::Notification(n) => println!("notification: {} ({})", n.title().unwrap_or("-"), n.stream()),
            // Informational notifications of one `group` arriving within 3 s come as ONE digest ("3 new").
            Event::Digest(d) => println!("digest: {} new in {}", d.count, d.group),
            Event::State(state) => println!("state: {state:?}"),
            Event::Continuity { stream, continuity } => println!("{stream}: {continuity:?}"),
            Event::SubscriptionFailed { stream, code, message } => println!("{stream} refused: {code} {message}"),
            _ => {} // push registrations, and kinds of event added later
        }
    }
    Ok(())
}
