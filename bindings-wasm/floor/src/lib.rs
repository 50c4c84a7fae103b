//! The floor of the browser module's size: every engine entry point the browser binding calls
//! (`bindings-wasm/src/lib.rs`), reached with inputs the compiler cannot see through, and every output consumed,
//! so that nothing the engine does is optimised away, and nothing else is linked: no JSON decoder, no
//! wasm-bindgen, no JavaScript.
//!
//! Decoded inputs (a server frame, a push notification, a snapshot) are read by value from linear memory at an
//! address the host passes in. That is undefined behaviour unless the host wrote a valid value there, which no
//! host does: this module is measured, never run.
#![cfg(target_family = "wasm")]
#![allow(unsafe_code)]

use std::cell::RefCell;

use tidings_core::protocol::{
    InboxAction, InboxPage, InboxQuery, MarkAllAction, PushPayload, PushPlatform, ServerFrame,
};
use tidings_core::store::encode_snapshot;
use tidings_core::{
    Action, ConnId, ConnectionState, Engine, Event, Instant, Lifecycle, NetworkEvent, Notification, PushOutcome,
    Snapshot, TransportFailure,
    engine::{Config, Output},
};

#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

// Named as an import (the linker refuses an undefined symbol otherwise).
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    /// Where every output goes (the host).
    fn sink(kind: u32, ptr: *const u8, len: usize);
}

fn out(kind: u32, s: &[u8]) {
    // SAFETY: the host reads `len` bytes at `ptr` during the call.
    unsafe { sink(kind, s.as_ptr(), s.len()) }
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

fn text(ptr: *const u8, len: usize) -> String {
    // SAFETY: measured, never run (see the crate docs).
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    String::from_utf8_lossy(bytes).into_owned()
}

fn opaque<T>(ptr: *const u8) -> T {
    // SAFETY: measured, never run (see the crate docs).
    unsafe { std::ptr::read(ptr.cast::<T>()) }
}

/// Runs `f` on the engine, then drains everything it produced, as the binding's pump does.
fn with(now: u64, f: impl FnOnce(&mut Engine, Instant) -> bool) -> u32 {
    ENGINE.with_borrow_mut(|engine| {
        let Some(e) = engine.as_mut() else { return 0 };
        let ok = f(e, Instant::from_millis(now));
        drain(e);
        ok as u32
    })
}

/// The drain loop, once: `with` is instantiated per export, and a loop inlined into each of them would count the
/// same code once per export (the binding has one `drain`).
#[inline(never)]
fn drain(e: &mut Engine) {
    loop {
        match e.poll_output() {
            Output::Transmit(frame) => out(1, frame.as_bytes()),
            Output::Action(Action::Open { url, .. }) => out(2, url.as_bytes()),
            Output::Action(Action::Close { reason, .. }) => out(3, reason.as_bytes()),
            Output::Action(Action::Persist(s)) => out(4, &encode_snapshot(&s)),
            Output::Action(_) => out(5, b""),
            Output::Event(Event::Notification(n)) => notification(6, &n),
            Output::Event(Event::Digest(d)) => {
                out(7, d.group.as_bytes());
                for id in &d.ids {
                    out(7, id.as_bytes());
                }
                notification(7, &d.first);
                notification(7, &d.last);
            }
            Output::Event(Event::Continuity { stream, .. }) => out(8, stream.as_bytes()),
            Output::Event(Event::SubscriptionFailed { message, .. }) => out(9, message.as_bytes()),
            Output::Event(Event::State(ConnectionState::Reconnecting { reason, .. })) => out(10, reason.as_bytes()),
            Output::Event(_) => out(11, b""),
            Output::Reply { .. } => out(14, b""),
            Output::Timeout(t) => {
                if let Some(t) = t {
                    out(12, &t.as_millis().to_le_bytes());
                }
                break;
            }
        }
    }
    out(13, &encode_snapshot(&e.snapshot()));
}

fn notification(kind: u32, n: &Notification) {
    out(kind, n.id().as_bytes());
    out(kind, n.data().unwrap_or_default().as_bytes());
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_new(url: *const u8, len: usize, seed: u64) {
    let engine = Engine::new(Config::new(text(url, len)), seed);
    ENGINE.with_borrow_mut(|e| *e = Some(engine));
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_frame(now: u64, conn: u64, frame: *const u8) -> u32 {
    with(now, |e, t| {
        e.handle_frame(t, ConnId(conn), opaque::<ServerFrame>(frame));
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_relayed(now: u64, frame: *const u8) -> u32 {
    with(now, |e, t| {
        e.handle_relayed_frame(t, opaque::<ServerFrame>(frame));
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_push(now: u64, n: *const u8) -> u32 {
    with(now, |e, t| matches!(e.ingest_push_notification(t, opaque::<Notification>(n)), Ok(PushOutcome::Show(_))))
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_restore(now: u64, s: *const u8) -> u32 {
    with(now, |e, t| {
        e.restore(t, &opaque::<Snapshot>(s));
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_open(now: u64, conn: u64) -> u32 {
    with(now, |e, t| {
        e.handle_transport_open(t, ConnId(conn));
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_closed(now: u64, conn: u64, code: u16, reason: *const u8, len: usize) -> u32 {
    with(now, |e, t| {
        e.handle_transport_closed(t, ConnId(conn), Some(code), &text(reason, len));
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_failed(now: u64, conn: u64, message: *const u8, len: usize) -> u32 {
    with(now, |e, t| {
        e.handle_transport_failed(
            t,
            ConnId(conn),
            TransportFailure { message: text(message, len), ..Default::default() },
        );
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_timeout(now: u64) -> u32 {
    with(now, |e, t| {
        e.handle_timeout(t);
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_network(now: u64, kind: u32) -> u32 {
    let event = match kind {
        0 => NetworkEvent::Available,
        1 => NetworkEvent::Unavailable,
        _ => NetworkEvent::Changed,
    };
    with(now, |e, t| {
        e.handle_network(t, event);
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_lifecycle(now: u64, hidden: u32) -> u32 {
    let l = if hidden == 0 { Lifecycle::Foreground } else { Lifecycle::Background };
    with(now, |e, t| {
        e.handle_lifecycle(t, l);
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_subscribe(now: u64, stream: *const u8, len: usize) -> u32 {
    with(now, |e, t| e.subscribe(t, &text(stream, len)).is_ok())
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_unsubscribe(now: u64, stream: *const u8, len: usize) -> u32 {
    with(now, |e, t| e.unsubscribe(t, &text(stream, len)).is_ok())
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_token(now: u64, token: *const u8, len: usize) -> u32 {
    with(now, |e, t| {
        e.handle_token(t, Ok(text(token, len)));
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_connect(now: u64) -> u32 {
    with(now, |e, t| {
        e.connect(t);
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_close(now: u64) -> u32 {
    with(now, |e, t| {
        e.close(t);
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_query(stream: *const u8, len: usize) -> u64 {
    ENGINE.with_borrow_mut(|engine| {
        let Some(e) = engine.as_mut() else { return 0 };
        let cursor = e.cursor(&text(stream, len)).map(|c| c.offset).unwrap_or_default();
        let delivered = e.stats().delivered;
        out(14, e.device_id().as_bytes());
        cursor ^ delivered
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_undecodable(now: u64, conn: u64, message: *const u8, len: usize) -> u32 {
    let error = tidings_core::protocol::DecodeError::new(text(message, len));
    with(now, |e, t| {
        e.handle_undecodable(t, ConnId(conn), &error);
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_mirror(now: u64, s: *const u8) -> u32 {
    with(now, |e, t| {
        e.mirror(t, &opaque::<Snapshot>(s));
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_adopt_queue(now: u64, s: *const u8) -> u32 {
    with(now, |e, t| {
        e.adopt_inbox_queue(t, &opaque::<Snapshot>(s));
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_persistence(now: u64, enabled: u32) -> u32 {
    with(now, |e, t| {
        e.set_persistence(t, enabled != 0);
        true
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_push_payload(now: u64, p: *const u8) -> u32 {
    with(now, |e, t| matches!(e.ingest_push_payload(t, opaque::<PushPayload>(p)), Ok(PushOutcome::Show(_))))
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_push_fetched(now: u64, id: *const u8, len: usize, n: *const u8) -> u32 {
    with(now, |e, t| {
        let fetched = opaque::<Result<Notification, String>>(n);
        matches!(e.complete_push_fetch(t, &text(id, len), None, fetched), PushOutcome::Show(_))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_register_push(now: u64, platform: *const u8, token: *const u8, len: usize) -> u32 {
    with(now, |e, t| e.register_push(t, opaque::<PushPlatform>(platform), &text(token, len)).is_ok())
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_inbox(now: u64, op: u32, arg: *const u8, len: usize) -> u32 {
    with(now, |e, t| {
        let id = match op {
            0 => e.inbox_load_more(t, Some(len as u32)),
            1 => e.inbox_list(t, opaque::<InboxQuery>(arg)),
            2 => e.inbox_mark(t, opaque::<InboxAction>(arg), vec![text(arg, len)]),
            3 => Ok(e.inbox_mark_all(t, opaque::<MarkAllAction>(arg))),
            4 => e.history(t, &text(arg, len), None, Some(len as u32)),
            _ => {
                e.inbox_merge_page(t, &opaque::<InboxPage>(arg));
                return true;
            }
        };
        id.is_ok()
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_inbox_view() -> u64 {
    ENGINE.with_borrow_mut(|engine| {
        let Some(e) = engine.as_mut() else { return 0 };
        let counts = e.inbox_counts().map(|c| c.unread).unwrap_or_default();
        let mut n = u64::from(e.inbox_complete());
        for item in e.inbox_items() {
            out(15, item.id.as_bytes());
            n += item.seq;
        }
        n ^ counts
    })
}

/// The push path without a page (the service worker): its own engine per payload.
#[unsafe(no_mangle)]
pub extern "C" fn floor_push_through(now: u64, stored: *const u8, p: *const u8, seed: u64) -> u32 {
    let stored = opaque::<Option<Snapshot>>(stored);
    let now = Instant::from_millis(now);
    match tidings_core::engine::ingest_push_without_client(
        Config::new(""),
        seed,
        stored.as_ref(),
        now,
        opaque::<PushPayload>(p),
    ) {
        Ok((outcome, seen)) => {
            out(16, &encode_snapshot(&seen));
            matches!(outcome, PushOutcome::Show(_)) as u32
        }
        Err(_) => 0,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_push_through_fetched(now: u64, stored: *const u8, n: *const u8, seed: u64) -> u32 {
    let stored = opaque::<Option<Snapshot>>(stored);
    let (outcome, seen) = tidings_core::engine::complete_push_fetch_without_client(
        Config::new(""),
        seed,
        stored.as_ref(),
        Instant::from_millis(now),
        "",
        None,
        opaque::<Result<Notification, String>>(n),
    );
    out(16, &encode_snapshot(&seen));
    matches!(outcome, PushOutcome::Show(_)) as u32
}

#[unsafe(no_mangle)]
pub extern "C" fn floor_merge(ours: *const u8, theirs: *const u8) {
    let mut a = opaque::<Snapshot>(ours);
    a.merge(&opaque::<Snapshot>(theirs));
    out(16, &encode_snapshot(&a));
}
