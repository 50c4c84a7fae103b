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

use tidings_core::protocol::ServerFrame;
use tidings_core::store::encode_snapshot;
use tidings_core::{
    Action, ConnId, ConnectionState, Engine, Event, Instant, Lifecycle, NetworkEvent, Notification, PushOutcome,
    Snapshot, TransportFailure,
    engine::{Config, Output},
};

#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

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
        ok as u32
    })
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
