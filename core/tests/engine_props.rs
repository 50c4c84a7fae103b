//! Property tests of the engine against the model server: whatever the interleaving of publishes, drops,
//! push deliveries, history loss and time, the app never sees an id twice and sees each stream's offsets in
//! increasing order; and when nothing was lost on the server, it sees every notification exactly once.

mod sim;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use sim::Harness;
use tidings_core::engine::{BatchConfig, Event, PushOutcome};
use tidings_core::protocol::{Priority, close};

const STREAMS: [&str; 3] = ["user:alice", "topic:a", "topic:b"];

#[derive(Clone, Debug)]
enum Op {
    /// Publish a new notification to one stream, or (`also`) the same id to a second stream too.
    Publish { stream: usize, also: Option<usize>, priority: u8, grouped: bool },
    /// Deliver the push copy of an earlier notification.
    Push { pick: usize },
    /// The server drops the connection.
    Drop { code: Option<u16> },
    /// Time passes.
    Advance { ms: u64 },
    /// The server restarts without history.
    LoseHistory,
    /// The network changes.
    NetworkChanged,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, proptest::option::weighted(0.2, 0..3usize), 0..3u8, any::<bool>())
            .prop_map(|(stream, also, priority, grouped)| Op::Publish { stream, also, priority, grouped }),
        2 => any::<usize>().prop_map(|pick| Op::Push { pick }),
        2 => prop_oneof![Just(None), Just(Some(1006u16)), Just(Some(close::DROPPED)), Just(Some(close::SERVER_SHUTDOWN))]
            .prop_map(|code| Op::Drop { code }),
        3 => (0..5_000u64).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::LoseHistory),
        1 => Just(Op::NetworkChanged),
    ]
}

struct Outcome {
    surfaced: Vec<String>,
    published: Vec<(String, Vec<usize>)>,
    violations: Vec<String>,
}

fn run(ops: &[Op], batching: bool, allow_loss: bool, buffer_cap: usize) -> Outcome {
    let mut config = Harness::config();
    config.batch = if batching {
        BatchConfig { window: Duration::from_millis(1500), max_items: 4 }
    } else {
        BatchConfig { window: Duration::ZERO, max_items: 1 }
    };
    let mut h = Harness::new(config, "alice");
    h.server.buffer_cap = buffer_cap;
    h.connect();
    for s in &STREAMS[1..] {
        h.engine.subscribe(h.now, s).unwrap();
    }
    h.pump();
    let mut published: Vec<(String, Vec<usize>)> = Vec::new();
    let mut surfaced_push: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Publish { stream, also, priority, grouped } => {
                let id = format!("n{i}");
                let priority = [Priority::Critical, Priority::Important, Priority::Informational][*priority as usize];
                let group = grouped.then_some("g");
                let mut streams = vec![*stream];
                if let Some(a) = also
                    && a != stream
                {
                    streams.push(*a);
                }
                for s in &streams {
                    h.publish(STREAMS[*s], &id, priority, group);
                }
                published.push((id, streams));
            }
            Op::Push { pick } => {
                if published.is_empty() {
                    continue;
                }
                let (id, streams) = &published[pick % published.len()];
                let stream = STREAMS[streams[0]];
                let in_buffer = h.server.streams.get(stream).is_some_and(|s| s.buffer.iter().any(|n| n.id() == id));
                if !in_buffer {
                    continue;
                }
                let payload = h.server.push_payload(stream, id);
                if let PushOutcome::Show(n) = h.engine.ingest_push(h.now, &payload).unwrap() {
                    surfaced_push.push(n.id().to_owned());
                }
                h.pump();
            }
            Op::Drop { code } => h.server_close(*code),
            Op::Advance { ms } => h.advance(Duration::from_millis(*ms)),
            Op::LoseHistory => {
                if allow_loss {
                    h.server.lose_history();
                    h.server_close(Some(close::SERVER_SHUTDOWN));
                }
            }
            Op::NetworkChanged => {
                h.engine.handle_network(h.now, tidings_core::NetworkEvent::Changed);
                h.pump();
            }
        }
    }
    // Let everything settle: reconnect, replay, flush batches.
    h.advance(Duration::from_secs(60));

    let mut violations = Vec::new();
    let mut surfaced = surfaced_push;
    let mut last_offset: HashMap<(String, String), u64> = HashMap::new();
    for e in &h.events {
        match e {
            Event::Notification(n) => {
                surfaced.push(n.id().to_owned());
                if n.priority != Priority::Informational
                    && let Some(o) = n.offset
                {
                    let key = (n.stream().to_owned(), n.epoch().to_owned());
                    if let Some(prev) = last_offset.insert(key, o)
                        && prev >= o
                    {
                        violations.push(format!("{}: offset {o} after {prev}", n.stream()));
                    }
                }
            }
            Event::Digest(d) => surfaced.extend(d.ids.iter().cloned()),
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    for id in &surfaced {
        if !seen.insert(id) {
            violations.push(format!("{id} surfaced twice"));
        }
    }
    Outcome { surfaced, published, violations }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_id_is_surfaced_twice_and_offsets_increase(ops in proptest::collection::vec(op(), 1..120), batching in any::<bool>()) {
        let out = run(&ops, batching, true, 8);
        prop_assert!(out.violations.is_empty(), "{:?}", out.violations);
    }

    #[test]
    fn without_server_loss_every_notification_arrives_exactly_once(ops in proptest::collection::vec(op(), 1..120), batching in any::<bool>()) {
        let out = run(&ops, batching, false, 100_000);
        prop_assert!(out.violations.is_empty(), "{:?}", out.violations);
        let surfaced: HashSet<&String> = out.surfaced.iter().collect();
        for (id, _) in &out.published {
            prop_assert!(surfaced.contains(id), "{id} never surfaced");
        }
    }
}
