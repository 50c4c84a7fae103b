//! Temporary load check: idle memory per connection and fan-out throughput against a running server.
//! Usage: loadcheck <ws_url> <http_url> <server_pid> <connections> <publishes>

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (ws_url, http_url, pid) = (args[1].clone(), args[2].clone(), args[3].clone());
    let n: usize = args[4].parse().unwrap();
    let publishes: usize = args[5].parse().unwrap();
    let secret = "bench-secret";
    let before = rss_kib(&pid);
    let mut clients = Vec::new();
    for i in 0..n {
        let mut request = ws_url.as_str().into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "tidings.v1".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let token = tidings_server::issue_token(secret, &format!("u{i}"), &["bench"], None);
        ws.send(Message::text(format!(r#"{{"op":"auth","token":"{token}","device":"d"}}"#))).await.unwrap();
        ws.next().await.unwrap().unwrap();
        ws.send(Message::text(format!(
            r#"{{"op":"subscribe","ref":1,"streams":[{{"stream":"user:u{i}"}},{{"stream":"topic:bench"}}]}}"#
        )))
        .await
        .unwrap();
        ws.next().await.unwrap().unwrap();
        ws.next().await.unwrap().unwrap();
        clients.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(&pid);
    println!(
        "{n} idle connections: RSS {before} KiB -> {after} KiB, {:.2} KiB per connection",
        (after - before) as f64 / n as f64
    );

    // Fan-out: every publish to topic:bench goes to all n connections.
    let mut readers = Vec::new();
    for ws in clients {
        readers.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut got = 0;
            while got < publishes {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.starts_with("{\"op\":\"notification\"") => got += 1,
                    Some(Ok(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            ws
        }));
    }
    let http = reqwest::Client::new();
    let start = Instant::now();
    let batch = 100;
    let mut sent = 0;
    while sent < publishes {
        let k = batch.min(publishes - sent);
        let items: Vec<String> =
            (0..k).map(|_| r#"{"topics":["bench"],"type":"bench","title":"hello world"}"#.to_owned()).collect();
        let body = format!(r#"{{"notifications":[{}]}}"#, items.join(","));
        let r =
            http.post(format!("{http_url}/v1/publish/batch")).bearer_auth("bench-key").body(body).send().await.unwrap();
        assert!(r.status().is_success());
        sent += k;
    }
    let published = start.elapsed();
    let mut kept = Vec::new();
    for r in readers {
        kept.push(r.await.unwrap());
    }
    let total = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("RSS after fan-out: {} KiB", rss_kib(&pid));
    let deliveries = (n * publishes) as f64;
    println!(
        "{publishes} publishes x {n} subscribers = {deliveries} deliveries: published in {published:?}, all received in {total:?} => {:.0} deliveries/s",
        deliveries / total.as_secs_f64()
    );
}
