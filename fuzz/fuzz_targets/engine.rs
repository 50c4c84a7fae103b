//! The client engine driven by an arbitrary sequence of inputs against the model server of the engine tests
//! (`core/tests/sim`): publishes (live, buffered, ephemeral, grouped), push copies, drops with any close code,
//! history loss with and without the gap replay, time, network and lifecycle changes, (un)subscriptions, app
//! restarts through the merging store, and arbitrary text on the socket. Invariants: no panic, no notification id
//! surfaced to the app twice (notifications, digests and push outcomes together, across restarts), and within a
//! stream's epoch the offsets the app sees increase.
#![no_main]

#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../../core/tests/sim/mod.rs"]
mod sim;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sim::Harness;
use tidings_core::engine::{BatchConfig, Event, Lifecycle, NetworkEvent, PushOutcome};
use tidings_core::protocol::{Persistence, Priority, close};

const STREAMS: [&str; 3] = ["user:alice", "topic:a", "topic:b"];
const CODES: [Option<u16>; 8] = [
    None,
    Some(1000),
    Some(1006),
    Some(close::DROPPED),
    Some(close::SERVER_SHUTDOWN),
    Some(close::SLOW_CONSUMER),
    Some(close::TRY_AGAIN_LATER),
    Some(close::UNAUTHORIZED),
];

#[derive(Arbitrary, Debug)]
enum Op {
    Publish { stream: u8, also: Option<u8>, priority: u8, grouped: bool, ephemeral: bool },
    Push { pick: u16 },
    Drop { code: u8 },
    Advance { ms: u16 },
    LoseHistory { replay: bool },
    Network(u8),
    Background,
    Foreground,
    Subscribe(u8),
    Unsubscribe(u8),
    Restart,
    ForegroundRestore,
    Garbage(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    batching: bool,
    buffer_cap: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let mut config = Harness::config();
    config.persistence = true;
    config.batch = if input.batching {
        BatchConfig { window: Duration::from_millis(1500), max_items: 4 }
    } else {
        BatchConfig { window: Duration::ZERO, max_items: 1 }
    };
    let mut h = Harness::new(config, "alice");
    h.server.buffer_cap = usize::from(input.buffer_cap.max(1));
    h.connect();
    let mut published: Vec<(String, usize)> = Vec::new();
    let mut surfaced: Vec<String> = Vec::new();
    for (i, op) in input.ops.iter().take(200).enumerate() {
        match op {
            Op::Publish { stream, also, priority, grouped, ephemeral } => {
                let id = format!("n{i}");
                let priority =
                    [Priority::Critical, Priority::Important, Priority::Informational][*priority as usize % 3];
                let persistence = if *ephemeral { Persistence::Ephemeral } else { Persistence::Bufferable };
                let group = grouped.then_some("g");
                let first = *stream as usize % 3;
                let mut streams = vec![first];
                if let Some(a) = also.map(|a| a as usize % 3)
                    && a != first
                {
                    streams.push(a);
                }
                for s in &streams {
                    let frame = h.server.publish_with(STREAMS[*s], &id, priority, group, persistence);
                    h.deliver(frame);
                }
                if !*ephemeral {
                    published.push((id, first));
                }
            }
            Op::Push { pick } => {
                if published.is_empty() {
                    continue;
                }
                let (id, stream) = &published[*pick as usize % published.len()];
                let stream = STREAMS[*stream];
                let held = h.server.streams.get(stream).is_some_and(|s| s.buffer.iter().any(|n| n.id() == id));
                if held {
                    let payload = h.server.push_payload(stream, id);
                    if let PushOutcome::Show(n) = h.engine.ingest_push(h.now, &payload).expect("a valid payload") {
                        surfaced.push(n.id().to_owned());
                    }
                    h.pump();
                }
            }
            Op::Drop { code } => h.server_close(CODES[*code as usize % CODES.len()]),
            Op::Advance { ms } => h.advance(Duration::from_millis(u64::from(*ms) * 4)),
            Op::LoseHistory { replay } => {
                h.server.replay_on_gap = *replay;
                h.server.lose_history();
                h.server_close(Some(close::SERVER_SHUTDOWN));
            }
            Op::Network(n) => {
                let event =
                    [NetworkEvent::Available, NetworkEvent::Unavailable, NetworkEvent::Changed][*n as usize % 3];
                h.engine.handle_network(h.now, event);
                h.pump();
            }
            Op::Background => {
                h.engine.handle_lifecycle(h.now, Lifecycle::Background);
                h.pump();
            }
            Op::Foreground => {
                h.engine.handle_lifecycle(h.now, Lifecycle::Foreground);
                h.pump();
            }
            Op::Subscribe(s) => {
                let _ = h.engine.subscribe(h.now, STREAMS[*s as usize % 3]);
                h.pump();
            }
            Op::Unsubscribe(s) => {
                let _ = h.engine.unsubscribe(h.now, STREAMS[*s as usize % 3]);
                h.pump();
            }
            Op::Restart => h.restart(),
            Op::ForegroundRestore => h.foreground_restore(),
            Op::Garbage(text) => {
                if let Some(conn) = h.conn {
                    h.engine.handle_text(h.now, conn, text);
                    h.pump();
                }
            }
        }
    }
    h.engine.handle_network(h.now, NetworkEvent::Available);
    h.engine.handle_lifecycle(h.now, Lifecycle::Foreground);
    h.advance(Duration::from_secs(60));

    let mut last_offset: HashMap<(String, String), u64> = HashMap::new();
    for e in &h.events {
        match e {
            Event::Notification(n) => {
                surfaced.push(n.id().to_owned());
                if n.priority != Priority::Informational
                    && let Some(o) = n.offset
                {
                    let key = (n.stream().to_owned(), n.epoch().to_owned());
                    if let Some(prev) = last_offset.insert(key, o) {
                        assert!(prev < o, "{}: offset {o} after {prev}", n.stream());
                    }
                }
            }
            Event::Digest(d) => surfaced.extend(d.ids.iter().cloned()),
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    for id in &surfaced {
        assert!(seen.insert(id), "{id} surfaced twice");
    }
});
