//! Core engine benchmarks (criterion): `cargo bench -p tidings-core --bench engine`.
//!
//! - `ingest/notification`: one notification frame through decode, cursor, dedup, dispatch to the event queue
//!   and ack batching — everything the engine does per notification on the socket path.
//! - `dedup/*`: the dedup window alone.
//! - `batching/informational_grouped`: informational notifications with a group, folded into digests.

use std::time::{Duration, Instant as StdInstant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidings_core::engine::{Action, BatchConfig, Config, ConnId, DedupWindow, Engine, Event};
use tidings_core::protocol::{
    self, Notification, NotificationFields, Persistence, Priority, ServerFrame, WireContinuity,
};
use tidings_core::time::Instant;

const BATCH: u64 = 10_000;

/// An engine that has authenticated and subscribed to `user:alice`.
fn connected_engine(batch: BatchConfig) -> (Engine, ConnId) {
    let mut config = Config::new("ws://bench/v1/ws");
    config.persistence = false;
    config.batch = batch;
    let mut e = Engine::new(config, 1);
    let now = Instant::from_millis(1);
    e.connect(now);
    let mut conn = None;
    while let Some(a) = e.poll_action() {
        match a {
            Action::FetchToken { .. } => e.handle_token(now, Ok("t".into())),
            Action::Open { conn: c, .. } => {
                conn = Some(c);
                e.handle_transport_open(now, c);
            }
            _ => {}
        }
    }
    let conn = conn.expect("opened");
    let welcome = protocol::encode_server_frame(&ServerFrame::Welcome {
        session: "s".into(),
        user: "alice".into(),
        device: "d".into(),
        heartbeat_ms: 25_000,
        max_frame_bytes: 65_536,
        token_expires_in_ms: None,
    });
    e.handle_text(now, conn, &welcome);
    let subscribed = protocol::encode_server_frame(&ServerFrame::Subscribed {
        reference: 1,
        stream: "user:alice".into(),
        epoch: "ep1".into(),
        offset: 0,
        continuity: WireContinuity::Fresh,
    });
    e.handle_text(now, conn, &subscribed);
    while e.poll_transmit().is_some() {}
    while e.poll_event().is_some() {}
    (e, conn)
}

/// Frames `from..from+n` as the reference server encodes them (64-byte data payload, realistic envelope).
fn frames(from: u64, n: u64, priority: Priority, group: Option<&str>) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            protocol::encode_server_frame(&ServerFrame::Notification(Notification::from(NotificationFields {
                id: format!("01JDZ3K5W8Q2M4N6P8{i:08}"),
                stream: "user:alice".into(),
                offset: Some(i + 1),
                epoch: "ep1".into(),
                kind: "comment.created".into(),
                priority,
                persistence: Persistence::Bufferable,
                title: Some("Bob commented on your post".into()),
                body: Some("Looks great!".into()),
                data: Some(
                    protocol::RawJson::from_string(
                        r#"{"post":"p-981","comment":"c-77","x":"0123456789abcdef01"}"#.into(),
                    )
                    .unwrap(),
                ),
                group: group.map(Into::into),
                created_at: 1_763_808_060_123,
            })))
        })
        .collect()
}

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("notification", |b| {
        b.iter_custom(|iters| {
            let (mut e, conn) = connected_engine(BatchConfig { window: Duration::ZERO, max_items: 1 });
            let now = Instant::from_millis(2);
            let mut elapsed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = BATCH.min(iters - done);
                let batch = frames(done, n, Priority::Important, None);
                let start = StdInstant::now();
                for f in &batch {
                    e.handle_text(now, conn, f);
                    while let Some(ev) = e.poll_event() {
                        std::hint::black_box(ev);
                    }
                }
                while let Some(t) = e.poll_transmit() {
                    std::hint::black_box(t);
                }
                elapsed += start.elapsed();
                done += n;
            }
            elapsed
        })
    });
    g.finish();
}

fn dedup(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(1));
    let ids: Vec<String> = (0..100_000u64).map(|i| format!("01JDZ3K5W8Q2M4N6P8{i:08}")).collect();
    g.bench_function("insert_new_evicting", |b| {
        let mut w = DedupWindow::new(10_000);
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % ids.len();
            std::hint::black_box(w.insert(&ids[i]))
        })
    });
    g.bench_function("lookup_duplicate", |b| {
        let mut w = DedupWindow::new(10_000);
        for id in &ids[..10_000] {
            w.insert(id);
        }
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % 10_000;
            std::hint::black_box(w.insert(&ids[i]))
        })
    });
    g.finish();
}

fn batching(c: &mut Criterion) {
    let mut g = c.benchmark_group("batching");
    g.throughput(Throughput::Elements(1));
    g.bench_function("informational_grouped", |b| {
        b.iter_custom(|iters| {
            let (mut e, conn) = connected_engine(BatchConfig { window: Duration::from_secs(3), max_items: 100 });
            let now = Instant::from_millis(2);
            let mut elapsed = Duration::ZERO;
            let mut done = 0;
            let mut digests = 0u64;
            while done < iters {
                let n = BATCH.min(iters - done);
                let batch = frames(done, n, Priority::Informational, Some("likes:post-1"));
                let start = StdInstant::now();
                for f in &batch {
                    e.handle_text(now, conn, f);
                    while let Some(ev) = e.poll_event() {
                        if matches!(ev, Event::Digest(_)) {
                            digests += 1;
                        }
                    }
                }
                elapsed += start.elapsed();
                done += n;
            }
            std::hint::black_box(digests);
            elapsed
        })
    });
    g.finish();
}

criterion_group!(benches, ingest, dedup, batching);
criterion_main!(benches);
