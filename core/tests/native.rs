//! The native driver against a scripted WebSocket peer on loopback.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tidings_core::engine::{ConnectionState, Event, FailureReason, PushOutcome};
use tidings_core::native::{Client, ClientConfig, FileStore, StaticToken};
use tidings_core::protocol::{self, ClientFrame, Persistence, Priority, ServerFrame, WireContinuity};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

const WAIT: Duration = Duration::from_secs(10);

fn note(id: &str, offset: u64) -> String {
    protocol::encode_server_frame(&ServerFrame::Notification(protocol::Notification::from(
        protocol::NotificationFields {
            id: id.into(),
            stream: "user:alice".into(),
            offset: Some(offset),
            epoch: "e1".into(),
            kind: "t".into(),
            priority: Priority::Important,
            persistence: Persistence::Bufferable,
            title: Some("hi".into()),
            body: None,
            data: None,
            group: None,
            created_at: 1,
        },
    )))
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
/// Accepts connections; answers auth/subscribe; forwards every client frame to `seen`; sends whatever the
/// test pushes into the returned sender.
async fn scripted_server(
    select_subprotocol: bool,
) -> (String, mpsc::UnboundedReceiver<ClientFrame>, mpsc::UnboundedSender<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (push_tx, mut push_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, mut resp: Response| {
                let offered = req.headers().get("Sec-WebSocket-Protocol").cloned();
                if select_subprotocol && offered.as_ref().and_then(|v| v.to_str().ok()) == Some("tidings.v1") {
                    resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tidings.v1"));
                }
                Ok(resp)
            })
            .await;
            let Ok(mut ws) = ws else { continue };
            loop {
                tokio::select! {
                    msg = ws.next() => {
                        let Some(Ok(Message::Text(text))) = msg else { break };
                        let frame = protocol::decode_client_frame(text.as_str()).unwrap();
                        let reply = match &frame {
                            ClientFrame::Auth { device, .. } => Some(ServerFrame::Welcome {
                                session: "s".into(), user: "alice".into(), device: device.clone(),
                                heartbeat_ms: 25_000, max_frame_bytes: 65_536, token_expires_in_ms: None,
                            }),
                            ClientFrame::Subscribe { reference, streams } => Some(ServerFrame::Subscribed {
                                reference: *reference, stream: streams[0].stream.clone(), epoch: "e1".into(),
                                offset: 0, continuity: WireContinuity::Fresh,
                            }),
                            _ => None,
                        };
                        let _ = seen_tx.send(frame);
                        if let Some(reply) = reply {
                            ws.send(Message::text(protocol::encode_server_frame(&reply))).await.unwrap();
                        }
                    }
                    out = push_rx.recv() => {
                        let Some(out) = out else { return };
                        ws.send(Message::text(out)).await.unwrap();
                    }
                }
            }
        }
    });
    (url, seen_rx, push_tx)
}

async fn next_matching(events: &mut tidings_core::native::Events, pred: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = events.next().await.expect("events ended");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

#[tokio::test]
async fn delivers_acks_and_closes_cleanly() {
    let (url, mut seen, push) = scripted_server(true).await;
    let (client, mut events) =
        Client::builder(ClientConfig::new(url)).token_provider(StaticToken::new("tok")).connect().unwrap();
    client.wait_for_state(WAIT, |s| *s == ConnectionState::Connected).await.unwrap();
    push.send(note("n1", 1)).unwrap();
    let Event::Notification(n) = next_matching(&mut events, |e| matches!(e, Event::Notification(_))).await else {
        unreachable!()
    };
    assert_eq!(n.id(), "n1");
    let ack = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(ClientFrame::Ack { ids }) = seen.recv().await {
                return ids;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ack, ["n1"]);
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
    // A closed client says so before it looks at a push payload (even an invalid one).
    assert!(matches!(client.ingest_push("{}").await, Err(tidings_core::native::ClientError::Closed)));
    // The driver task ended: the event stream drains and ends.
    let rest: Vec<Event> = tokio::time::timeout(WAIT, async {
        let mut v = Vec::new();
        while let Some(e) = events.next().await {
            v.push(e);
        }
        v
    })
    .await
    .expect("event stream ends after close");
    assert!(rest.contains(&Event::State(ConnectionState::Closed)));
}

#[tokio::test]
async fn push_dedup_survives_a_restart_through_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidings.json");
    let (url, _seen, push) = scripted_server(true).await;
    let payload = r#"{"tidings":{"id":"p1","stream":"user:alice","offset":1,"epoch":"e1","type":"t","priority":"critical","persistence":"bufferable","created_at":1}}"#;
    {
        let (client, _events) = Client::builder(ClientConfig::new(url.clone()))
            .token_provider(StaticToken::new("tok"))
            .store(Arc::new(FileStore::new(&path)))
            .connect()
            .unwrap();
        assert!(matches!(client.ingest_push(payload).await.unwrap(), PushOutcome::Show(_)));
        // Killed right after the push handler returned: no close, the state is already on disk.
        drop(client);
    }
    let (client, mut events) = Client::builder(ClientConfig::new(url))
        .token_provider(StaticToken::new("tok"))
        .store(Arc::new(FileStore::new(&path)))
        .connect()
        .unwrap();
    assert_eq!(client.ingest_push(payload).await.unwrap(), PushOutcome::Duplicate { id: "p1".into() });
    client.wait_for_state(WAIT, |s| *s == ConnectionState::Connected).await.unwrap();
    // The socket copy is suppressed too; a new one gets through.
    push.send(note("p1", 1)).unwrap();
    push.send(note("n2", 2)).unwrap();
    let Event::Notification(n) = next_matching(&mut events, |e| matches!(e, Event::Notification(_))).await else {
        unreachable!()
    };
    assert_eq!(n.id(), "n2");
    client.close().await;
}

#[tokio::test]
async fn a_server_that_does_not_select_the_subprotocol_is_refused_without_retrying() {
    let (url, mut seen, _push) = scripted_server(false).await;
    let (client, _events) =
        Client::builder(ClientConfig::new(url)).token_provider(StaticToken::new("tok")).connect().unwrap();
    let state = client.wait_for_state(WAIT, |s| matches!(s, ConnectionState::Failed { .. })).await.unwrap();
    let ConnectionState::Failed { reason, message } = state else { unreachable!() };
    assert_eq!(reason, FailureReason::Rejected);
    assert!(message.contains("subprotocol"), "{message}");
    assert!(seen.try_recv().is_err(), "no frame was sent");
    assert_eq!(client.stats().connection_attempts, 1);
    client.close().await;
}

#[tokio::test]
async fn an_unreachable_server_is_retried_with_backoff() {
    // Bind and drop to get a port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let mut config = ClientConfig::new(format!("ws://127.0.0.1:{port}/v1/ws"));
    config.engine.backoff.base = Duration::from_millis(20);
    let (client, _events) = Client::builder(config).token_provider(StaticToken::new("tok")).connect().unwrap();
    client.wait_for_state(WAIT, |s| matches!(s, ConnectionState::Reconnecting { attempt: 3.., .. })).await.unwrap();
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed);
}

/// A server that refuses the handshake with `status` and a `Retry-After` header, to every connection.
async fn refusing_server(status: &'static str, retry_after: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            let retry_after = retry_after.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"code":"try_again_later","message":"busy"}"#;
                let response = format!(
                    "HTTP/1.1 {status}\r\nRetry-After: {retry_after}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

/// Defect 8 of issue 12: the handshake's `Retry-After` (HTTP 429 and 503) was never exercised. It is a floor for the
/// next attempt, as delay-seconds and as an HTTP date.
#[tokio::test]
async fn a_handshake_refused_with_retry_after_waits_at_least_that_long() {
    let in_four_seconds = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(4));
    for (status, retry_after, floor) in [
        ("429 Too Many Requests", "3".to_string(), Duration::from_secs(3)),
        ("503 Service Unavailable", in_four_seconds, Duration::from_secs(2)),
    ] {
        let mut config = ClientConfig::new(refusing_server(status, retry_after).await);
        config.engine.backoff.base = Duration::from_millis(10);
        config.engine.backoff.cap = Duration::from_millis(10);
        let (client, _events) = Client::builder(config).token_provider(StaticToken::new("tok")).connect().unwrap();
        let state = client.wait_for_state(WAIT, |s| matches!(s, ConnectionState::Reconnecting { .. })).await.unwrap();
        let ConnectionState::Reconnecting { delay, reason, .. } = state else { unreachable!() };
        assert!(delay >= floor, "{status}: waits {delay:?}, at least {floor:?} expected");
        assert!(delay <= floor + Duration::from_secs(3), "{status}: {delay:?}");
        assert!(reason.contains(&status[..3]), "{reason}");
        assert_eq!(client.stats().connection_attempts, 1, "{status}: no attempt before the floor");
        client.close().await;
    }
}

/// An application that stops reading events stops the driver from reading the socket (the events waiting are
/// bounded by `event_capacity`, not the server's sending rate); once it reads again, everything arrives, in
/// order, and is acked.
#[tokio::test]
async fn a_lagging_application_holds_back_the_socket_and_loses_nothing() {
    const N: u64 = 3000;
    let (url, mut seen, push) = scripted_server(true).await;
    let mut config = ClientConfig::new(url);
    config.event_capacity = 8;
    let (client, mut events) = Client::builder(config).token_provider(StaticToken::new("tok")).connect().unwrap();
    client.wait_for_state(WAIT, |s| *s == ConnectionState::Connected).await.unwrap();
    for i in 1..=N {
        push.send(note(&format!("n{i}"), i)).unwrap();
    }
    let acked = |seen: &mut mpsc::UnboundedReceiver<ClientFrame>| {
        let mut n = 0;
        while let Ok(f) = seen.try_recv() {
            if let ClientFrame::Ack { ids } = f {
                n += ids.len();
            }
        }
        n
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let early = acked(&mut seen);
    assert!(early < N as usize / 2, "the driver kept reading while nobody read events: {early} acked");
    let mut next = 1;
    tokio::time::timeout(WAIT, async {
        while next <= N {
            if let Some(Event::Notification(n)) = events.next().await {
                assert_eq!(n.id(), format!("n{next}"), "in order, nothing lost or repeated: {:?}", client.stats());
                next += 1;
            }
        }
    })
    .await
    .expect("every notification arrives once the application reads");
    let mut total = early;
    tokio::time::timeout(WAIT, async {
        while total < N as usize {
            if let Some(ClientFrame::Ack { ids }) = seen.recv().await {
                total += ids.len();
            }
        }
    })
    .await
    .expect("everything is acked");
    client.close().await;
}

/// The app gets a notification before its ack is written: the write (tens of µs on loopback, where the kernel
/// hands the frame to the peer inside `send`) must not delay the app. The peer is a blocking tungstenite server
/// on its own thread; when the app sees the notification, the test peeks at the peer's socket: on loopback a
/// written frame is in the peer's receive queue as soon as `send` returns, so nothing may be there yet. The ack
/// itself is prompt (the first after a quiet ack delay) and arrives afterwards.
#[tokio::test]
async fn the_app_has_a_notification_before_its_ack_is_written() {
    use std::io::ErrorKind;
    use tokio_tungstenite::tungstenite;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let (peek_tx, peek_rx) = std::sync::mpsc::channel::<std::net::TcpStream>();
    let (peeked_tx, peeked_rx) = std::sync::mpsc::channel::<()>();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Vec<String>>();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        peek_tx.send(tcp.try_clone().unwrap()).unwrap();
        #[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
        let mut ws = tungstenite::accept_hdr(tcp, |_: &Request, mut resp: Response| {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tidings.v1"));
            Ok(resp)
        })
        .unwrap();
        let reply = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>, frame: ServerFrame| {
            ws.send(Message::text(protocol::encode_server_frame(&frame))).unwrap();
        };
        loop {
            let Message::Text(text) = ws.read().unwrap() else { continue };
            match protocol::decode_client_frame(text.as_str()).unwrap() {
                ClientFrame::Auth { device, .. } => reply(
                    &mut ws,
                    ServerFrame::Welcome {
                        session: "s".into(),
                        user: "alice".into(),
                        device,
                        heartbeat_ms: 25_000,
                        max_frame_bytes: 65_536,
                        token_expires_in_ms: None,
                    },
                ),
                ClientFrame::Subscribe { reference, streams } => {
                    reply(
                        &mut ws,
                        ServerFrame::Subscribed {
                            reference,
                            stream: streams[0].stream.clone(),
                            epoch: "e1".into(),
                            offset: 0,
                            continuity: WireContinuity::Fresh,
                        },
                    );
                    ws.send(Message::text(note("n1", 1))).unwrap();
                    // Read nothing more until the test has peeked.
                    peeked_rx.recv_timeout(WAIT).expect("the test peeks");
                }
                ClientFrame::Ack { ids } => {
                    ack_tx.send(ids).unwrap();
                    return;
                }
                _ => {}
            }
        }
    });
    // Only the ack may follow the notification on the wire (no inbox_watch after the subscribe).
    let mut config = ClientConfig::new(url);
    config.engine.watch_inbox = false;
    let (client, mut events) = Client::builder(config).token_provider(StaticToken::new("tok")).connect().unwrap();
    let peer =
        tokio::task::spawn_blocking(move || peek_rx.recv_timeout(WAIT).expect("the client connects")).await.unwrap();
    let Event::Notification(n) = next_matching(&mut events, |e| matches!(e, Event::Notification(_))).await else {
        unreachable!()
    };
    assert_eq!(n.id(), "n1");
    // O_NONBLOCK is shared with the server thread's copy, which waits on `peeked_rx` meanwhile.
    peer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let waiting = peer.peek(&mut buf);
    peer.set_nonblocking(false).unwrap();
    assert!(
        matches!(&waiting, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the ack was written before the app had the notification: {waiting:?}"
    );
    peeked_tx.send(()).unwrap();
    let ids = tokio::time::timeout(WAIT, ack_rx.recv()).await.expect("the ack arrives").unwrap();
    assert_eq!(ids, ["n1"]);
    server.join().unwrap();
    client.close().await;
}
