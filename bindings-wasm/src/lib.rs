//! Tidings for browsers: the core engine (`tidings-core`) driven by the browser.
//!
//! This crate is the *driver* half of the browser SDK. It owns no behaviour of its own — connection states,
//! backoff, heartbeats, cursors, replay, dedup, digests and acks all live in the core [`Engine`] — it only moves
//! bytes and time between the engine and the platform:
//!
//! - the browser `WebSocket` is the transport: one socket per [`Action::Open`]; its four callbacks are
//!   detached and released when the socket ends, so reconnecting never accumulates closures;
//! - timers come from `setTimeout` (one reusable callback, re-armed at the engine's next deadline ([`tidings_core::engine::Output::Timeout`])), time from
//!   `performance.now()`, the engine's seed from `crypto.getRandomValues`;
//! - `online` / `offline` and `visibilitychange` (listened to by the JavaScript wrapper, handed over with
//!   [`Core::set_environment`]) are fed to the engine ([`NetworkEvent`], [`Lifecycle`]).
//!
//! Everything the page must do — fetch a token, persist a snapshot, show an event, relay a server frame to the
//! other tabs — is handed to one JavaScript callback `output(kind, payload)`. The JavaScript wrapper
//! (`js/tidings.js`) adds storage (IndexedDB + localStorage), leader election across tabs (Web Locks) and the
//! BroadcastChannel relay; follower tabs feed relayed frames to [`Core::relayed`] (the engine's
//! `handle_relayed`: same cursors, dedup and digests, never acked).
//!
//! JSON towards JavaScript is written by hand (`json.rs`, the core's codec for envelopes): no serializer is
//! linked into the module. JSON from JavaScript and the server (frames, push payloads, stored snapshots) is
//! parsed by the browser's `JSON.parse` and built into the core's types (`decode.rs`), which feed the engine's
//! decoded-frame inputs: no JSON decoder is linked in either.

pub mod decode;
mod holders;
mod json;

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use js_sys::Function;
use tidings_core::engine::Config;
use tidings_core::engine::Output as EngineOutput;
use tidings_core::protocol::{
    ArchivedFilter, DecodeError, InboxAction, InboxQuery, MarkAllAction, PushPlatform, SUBPROTOCOL, StatusFilter,
};
use tidings_core::store::encode_snapshot;
use tidings_core::{Action, ConnId, Engine, Instant, Lifecycle, NetworkEvent, TokenError, TransportFailure};
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

/// Every callback the driver hands to the browser has this one type (one invoke shim in the module and the glue
/// instead of one per event type); handlers cast the event they know they get.
type Callback = Closure<dyn FnMut(JsValue)>;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
    fn get_random_values(buf: &mut [u8]);
}

/// The engine's clock: `performance.now()` in whole milliseconds.
fn now() -> Instant {
    Instant::from_millis(performance_now() as u64)
}

/// 64 bits from the platform's entropy source.
fn seed() -> u64 {
    let mut buf = [0u8; 8];
    get_random_values(&mut buf);
    u64::from_le_bytes(buf)
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A string argument from JavaScript (taken as a value, so the glue passes it through unconverted; anything
/// else reads as empty, which every caller refuses or treats as absent).
fn text(v: &JsValue) -> String {
    v.as_string().unwrap_or_default()
}

/// A snapshot as the JSON text stored and merged.
fn snapshot_text(s: &tidings_core::Snapshot) -> String {
    String::from_utf8(encode_snapshot(s)).unwrap_or_default()
}

fn decode_err(e: DecodeError) -> JsError {
    JsError::new(e.message())
}

/// One WebSocket and the callbacks attached to it.
struct Sock {
    conn: ConnId,
    ws: WebSocket,
    opened: bool,
    _onopen: Callback,
    _onmessage: Callback,
    _onclose: Callback,
}

impl Sock {
    fn shut(&self, code: u16, reason: &str) {
        self.detach();
        if self.ws.ready_state() <= WebSocket::OPEN {
            let _ = self.ws.close_with_code_and_reason(code, reason);
        }
    }

    fn detach(&self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        self.shut(1000, "");
    }
}

struct Inner {
    engine: Engine,
    output: Function,
    me: Weak<RefCell<Inner>>,
    sock: Option<Sock>,
    /// Sockets that ended inside one of their own callbacks: released at the next timer tick, never while a
    /// callback of theirs runs.
    dead: Vec<Sock>,
    timer: Option<JsValue>,
    timer_fn: Option<Callback>,
    online: bool,
    visible_here: bool,
    visible_elsewhere: bool,
    foreground: bool,
    sockets_opened: u32,
    /// Which tabs want which stream (the leader subscribes the union).
    holders: holders::Holders,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(id) = self.timer.take() {
            clear_timeout(&id);
        }
    }
}

type Output = (&'static str, String);

impl Inner {
    /// Drains the engine in its order ([`Engine::poll_output`]): writes frames, performs actions, collects what
    /// JavaScript must see, re-arms the timer.
    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        loop {
            match self.engine.poll_output() {
                EngineOutput::Transmit(frame) => {
                    if let Some(s) = self.sock.as_ref().filter(|s| s.opened) {
                        let _ = s.ws.send_with_str(&frame);
                    }
                }
                EngineOutput::Action(Action::Open { conn, url }) => self.open(conn, &url),
                EngineOutput::Action(Action::Close { conn, code, reason }) => {
                    if self.sock.as_ref().is_some_and(|s| s.conn == conn)
                        && let Some(s) = self.sock.take()
                    {
                        s.shut(code, reason);
                        self.dead.push(s);
                    }
                }
                EngineOutput::Action(Action::FetchToken { force_refresh }) => {
                    out.push(("token", String::from(if force_refresh { "true" } else { "false" })))
                }
                EngineOutput::Action(Action::Persist(snapshot)) => out.push(("persist", snapshot_text(&snapshot))),
                EngineOutput::Event(event) => {
                    // The engine dropped a stream the server refused or ended: no tab holds it any more.
                    if let tidings_core::Event::SubscriptionFailed { stream, .. } = &event {
                        self.holders.forget(stream);
                    }
                    out.push(("event", json::event(&event)))
                }
                EngineOutput::Reply { request, result } => out.push(("reply", json::reply(request.0, &result))),
                EngineOutput::Timeout(at) => {
                    self.schedule(at);
                    return out;
                }
            }
        }
    }

    fn schedule(&mut self, at: Option<Instant>) {
        if let Some(id) = self.timer.take() {
            clear_timeout(&id);
        }
        let now = now();
        let mut delay = at.map(|t| t.as_millis().saturating_sub(now.as_millis()));
        if !self.dead.is_empty() {
            delay = Some(0);
        }
        if let (Some(ms), Some(f)) = (delay, &self.timer_fn) {
            // +1: `performance.now()` is fractional; never wake up a hair before the deadline.
            let ms = i32::try_from(ms + 1).unwrap_or(i32::MAX);
            self.timer = Some(set_timeout(f.as_ref().unchecked_ref(), ms));
        }
    }

    fn open(&mut self, conn: ConnId, url: &str) {
        let ws = match WebSocket::new_with_str(url, SUBPROTOCOL) {
            Ok(ws) => ws,
            Err(e) => {
                let message = e.as_string().unwrap_or_else(|| String::from("invalid WebSocket URL"));
                let failure = TransportFailure { message, ..TransportFailure::default() };
                self.engine.handle_transport_failed(now(), conn, failure);
                return;
            }
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        self.sockets_opened += 1;
        let w = self.me.clone();
        let onopen = Callback::new(move |_: JsValue| {
            with(&w, |i| {
                if let Some(s) = i.sock.as_mut().filter(|s| s.conn == conn) {
                    s.opened = true;
                }
                i.engine.handle_transport_open(now(), conn);
            })
        });
        let w = self.me.clone();
        let onmessage = Callback::new(move |e: JsValue| {
            let e: MessageEvent = e.unchecked_into();
            let Some(rc) = w.upgrade() else { return };
            match e.data().as_string() {
                Some(text) => {
                    // Relayed to the other tabs before this engine handles it: if this tab dies right after,
                    // the frame has left already and the next leader's cursor includes it.
                    let output = rc.borrow().output.clone();
                    let _ = output.call2(&JsValue::NULL, &JsValue::from_str("frame"), &JsValue::from_str(&text));
                    let mut i = rc.borrow_mut();
                    for frame in decode::frames(&text) {
                        match frame {
                            Ok(frame) => i.engine.handle_frame(now(), conn, frame),
                            Err(error) => {
                                // The link is replaced; what followed in this message belongs to it.
                                i.engine.handle_undecodable(now(), conn, &error);
                                break;
                            }
                        }
                    }
                }
                None => {
                    let error = DecodeError::new("binary message");
                    rc.borrow_mut().engine.handle_undecodable(now(), conn, &error);
                }
            }
            pump(&rc);
        });
        let w = self.me.clone();
        let onclose = Callback::new(move |e: JsValue| {
            let e: CloseEvent = e.unchecked_into();
            with(&w, |i| {
                let Some(s) = i.sock.take_if(|s| s.conn == conn) else { return };
                s.detach();
                if s.opened {
                    i.engine.handle_transport_closed(now(), conn, Some(e.code()), &e.reason());
                } else {
                    // Browsers hide the handshake's HTTP status: a failed open is a plain transport failure.
                    let message = format!("WebSocket could not connect (close {})", e.code());
                    i.engine.handle_transport_failed(now(), conn, TransportFailure { message, ..Default::default() });
                }
                i.dead.push(s);
            })
        });
        ws.set_onopen(Some(onopen.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
        ws.set_onclose(Some(onclose.as_ref().unchecked_ref()));
        if let Some(old) = self.sock.replace(Sock {
            conn,
            ws,
            opened: false,
            _onopen: onopen,
            _onmessage: onmessage,
            _onclose: onclose,
        }) {
            old.shut(1000, "replaced");
            self.dead.push(old);
        }
    }

    fn feed_lifecycle(&mut self) {
        let foreground = self.visible_here || self.visible_elsewhere;
        if foreground != self.foreground {
            self.foreground = foreground;
            let l = if foreground { Lifecycle::Foreground } else { Lifecycle::Background };
            self.engine.handle_lifecycle(now(), l);
        }
    }
}

/// Hands outputs to JavaScript with no borrow held (its handlers may call back into the driver).
fn deliver(rc: &RefCell<Inner>, outputs: Vec<Output>) {
    if outputs.is_empty() {
        return;
    }
    let output = rc.borrow().output.clone();
    for (kind, payload) in outputs {
        let _ = output.call2(&JsValue::NULL, &JsValue::from_str(kind), &JsValue::from_str(&payload));
    }
}

fn pump(rc: &RefCell<Inner>) {
    let outputs = rc.borrow_mut().drain();
    deliver(rc, outputs);
}

/// Runs `f` on the driver (if it still exists), then pumps.
fn with(w: &Weak<RefCell<Inner>>, f: impl FnOnce(&mut Inner)) {
    if let Some(rc) = w.upgrade() {
        f(&mut rc.borrow_mut());
        pump(&rc);
    }
}

/// The engine of one page (or worker), driven by the browser.
#[wasm_bindgen]
pub struct Core {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl Core {
    /// A driver for a server at `url` (`ws(s)://…/v1/ws`). `output(kind, payload)` receives `"event"` (JSON),
    /// `"token"` (`"true"` when a fresh token is required; answer with `token`/`tokenError`), `"persist"`
    /// (snapshot JSON to store) and `"frame"` (a server frame, for the other tabs). `background_grace_ms`: how
    /// long the socket stays open once no tab of the browser is visible (engine default 30 s).
    /// `batch_window_ms`: how long a batch of informational notifications stays open (0: no batching; engine
    /// default 3 s). `backoff_base_ms` / `backoff_cap_ms`: the reconnect backoff (engine default 500 ms / 20 s).
    #[wasm_bindgen(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: JsValue,
        device_id: JsValue,
        client_name: JsValue,
        output: Function,
        background_grace_ms: JsValue,
        batch_window_ms: JsValue,
        backoff_base_ms: JsValue,
        backoff_cap_ms: JsValue,
    ) -> Core {
        // A duration in ms, when given (as a number of at most `u32::MAX`).
        let ms = |v: &JsValue| {
            v.as_f64()
                .filter(|ms| (0.0..=f64::from(u32::MAX)).contains(ms))
                .map(|ms| std::time::Duration::from_millis(ms as u64))
        };
        let mut config = Config::new(text(&url));
        config.device_id = device_id.as_string();
        if let Some(v) = ms(&background_grace_ms) {
            config.background_grace = v;
        }
        if let Some(v) = ms(&batch_window_ms) {
            config.batch.window = v;
        }
        if let Some(v) = ms(&backoff_base_ms) {
            config.backoff.base = v;
        }
        if let Some(v) = ms(&backoff_cap_ms) {
            config.backoff.cap = v;
        }
        config.client_name =
            client_name.as_string().unwrap_or_else(|| concat!("tidings-web/", env!("CARGO_PKG_VERSION")).into());
        let inner = Rc::new_cyclic(|me: &Weak<RefCell<Inner>>| {
            let w = me.clone();
            let timer_fn = Callback::new(move |_: JsValue| {
                if let Some(rc) = w.upgrade() {
                    {
                        let mut i = rc.borrow_mut();
                        i.timer = None;
                        i.dead.clear();
                        i.engine.handle_timeout(now());
                    }
                    pump(&rc);
                }
            });
            RefCell::new(Inner {
                engine: Engine::new(config, seed()),
                output,
                me: me.clone(),
                sock: None,
                dead: Vec::new(),
                timer: None,
                timer_fn: Some(timer_fn),
                online: true,
                visible_here: true,
                visible_elsewhere: false,
                foreground: true,
                sockets_opened: 0,
                holders: holders::Holders::default(),
            })
        });
        Core { inner }
    }

    fn run<T>(&self, f: impl FnOnce(&mut Engine, Instant) -> T) -> T {
        let r = f(&mut self.inner.borrow_mut().engine, now());
        pump(&self.inner);
        r
    }

    /// The page's environment, from its `online`/`offline` and `visibilitychange` events: whether the browser is
    /// online (`navigator.onLine`) and whether this tab is visible. Changes are fed to the engine
    /// ([`NetworkEvent`], and [`Lifecycle`]: foreground while any tab of the browser is visible).
    #[wasm_bindgen(js_name = setEnvironment)]
    pub fn set_environment(&self, online: bool, visible: bool) {
        let mut i = self.inner.borrow_mut();
        if online != i.online {
            i.online = online;
            let event = if online { NetworkEvent::Available } else { NetworkEvent::Unavailable };
            i.engine.handle_network(now(), event);
        }
        i.visible_here = visible;
        i.feed_lifecycle();
        drop(i);
        pump(&self.inner);
    }

    /// Whether another tab of this browser is visible (the leader's engine stays in the foreground while any
    /// tab is).
    #[wasm_bindgen(js_name = setVisibleElsewhere)]
    pub fn set_visible_elsewhere(&self, visible: bool) {
        self.inner.borrow_mut().visible_elsewhere = visible;
        self.inner.borrow_mut().feed_lifecycle();
        pump(&self.inner);
    }

    /// Restores a stored snapshot (JSON from a `"persist"` output): the engine's `restore` — seen ids always,
    /// cursors and open batches only from the first full snapshot (restore the newest first: localStorage, then
    /// IndexedDB).
    pub fn restore(&self, snapshot: JsValue) -> Result<(), JsError> {
        let snapshot = decode::snapshot(&text(&snapshot)).map_err(decode_err)?;
        self.run(|e, now| e.restore(now, &snapshot));
        Ok(())
    }

    /// Takes the state of the tab that leads (its snapshot, sent to a joining tab): the engine's `mirror`.
    pub fn mirror(&self, snapshot: JsValue) -> Result<(), JsError> {
        let snapshot = decode::snapshot(&text(&snapshot)).map_err(decode_err)?;
        self.run(|e, now| e.mirror(now, &snapshot));
        Ok(())
    }

    /// Starts connecting (the leader tab).
    pub fn connect(&self) {
        self.run(|e, now| e.connect(now));
    }

    /// Closes the connection (acks go out first).
    pub fn close(&self) {
        self.run(|e, now| e.close(now));
    }

    /// Persist snapshots (only the leader tab does).
    #[wasm_bindgen(js_name = setPersistence)]
    pub fn set_persistence(&self, enabled: bool) {
        self.run(|e, now| e.set_persistence(now, enabled));
    }

    /// Subscribes to `topic:<name>` or `user:<id>`.
    pub fn subscribe(&self, stream: JsValue) -> Result<(), JsError> {
        self.run(|e, now| e.subscribe(now, &text(&stream))).map_err(js_err)
    }

    /// Unsubscribes and forgets the stream's cursor.
    pub fn unsubscribe(&self, stream: JsValue) -> Result<(), JsError> {
        self.run(|e, now| e.unsubscribe(now, &text(&stream))).map_err(js_err)
    }

    /// Tab `tab` of this browser wants `stream` (the leader holds one subscription for all tabs that want it).
    #[wasm_bindgen(js_name = subscribeFor)]
    pub fn subscribe_for(&self, tab: JsValue, stream: JsValue) -> Result<(), JsError> {
        let stream = text(&stream);
        self.run(|e, now| e.subscribe(now, &stream)).map_err(js_err)?;
        self.inner.borrow_mut().holders.hold(&text(&tab), &stream);
        Ok(())
    }

    /// Tab `tab` no longer wants `stream`; it is unsubscribed (and its cursor forgotten) when no tab wants it.
    #[wasm_bindgen(js_name = unsubscribeFor)]
    pub fn unsubscribe_for(&self, tab: JsValue, stream: JsValue) -> Result<(), JsError> {
        let stream = text(&stream);
        tidings_core::protocol::StreamName::parse(&stream).map_err(|e| JsError::new(&e))?;
        let last = self.inner.borrow_mut().holders.release(&text(&tab), &stream);
        if last {
            self.run(|e, now| e.unsubscribe(now, &stream)).map_err(js_err)?;
        }
        Ok(())
    }

    /// Tab `tab` wants exactly `streams` (an array of stream names, from its `hello`); streams no tab wants any
    /// more are unsubscribed. Invalid names are skipped (the tab that asked was told).
    #[wasm_bindgen(js_name = tabStreams)]
    pub fn tab_streams(&self, tab: JsValue, streams: js_sys::Array) {
        let tab = text(&tab);
        let streams: Vec<String> = streams.iter().map(|s| text(&s)).collect();
        let valid: Vec<String> =
            streams.into_iter().filter(|s| self.run(|e, now| e.subscribe(now, s)).is_ok()).collect();
        let released = self.inner.borrow_mut().holders.set(&tab, &valid);
        for s in released {
            let _ = self.run(|e, now| e.unsubscribe(now, &s));
        }
    }

    /// The streams tab `tab` holds, as a JSON array: those it subscribed, less those it unsubscribed and those the
    /// server refused or ended (what its `hello` tells a new leader).
    #[wasm_bindgen(js_name = streamsOf)]
    pub fn streams_of(&self, tab: JsValue) -> String {
        json::strs(&self.inner.borrow().holders.held_by(&text(&tab)))
    }

    /// Tab `tab` left: streams no other tab wants are unsubscribed.
    #[wasm_bindgen(js_name = tabGone)]
    pub fn tab_gone(&self, tab: JsValue) {
        let released = self.inner.borrow_mut().holders.gone(&text(&tab));
        for s in released {
            let _ = self.run(|e, now| e.unsubscribe(now, &s));
        }
    }

    /// A message another tab's socket received: its frames, one per line (`handle_relayed_frame`: processed,
    /// never acked).
    pub fn relayed(&self, message: JsValue) -> Result<(), JsError> {
        for frame in decode::frames(&text(&message)) {
            let frame = frame.map_err(decode_err)?;
            self.run(|e, now| e.handle_relayed_frame(now, frame));
        }
        Ok(())
    }

    /// A push payload (Web Push, or relayed by another tab), any form of protocol §11.1: the outcome as
    /// `json::push_outcome` writes it. A `fetch` outcome carries the request to send; its answer goes to
    /// [`Core::complete_push_fetch`].
    #[wasm_bindgen(js_name = ingestPush)]
    pub fn ingest_push(&self, payload: JsValue) -> Result<JsValue, JsError> {
        let p = decode::push(&text(&payload)).map_err(decode_err)?;
        let outcome = self.run(|e, now| e.ingest_push_payload(now, p)).map_err(js_err)?;
        Ok(json::push_outcome(&outcome).end().into())
    }

    /// The answer to the fetch a `fetch` outcome asked for (`status` 0: no answer, `body` says why): the
    /// final outcome.
    #[wasm_bindgen(js_name = completePushFetch)]
    pub fn complete_push_fetch(&self, id: JsValue, title: JsValue, status: u16, body: JsValue) -> JsValue {
        let (id, body) = (text(&id), text(&body));
        let fetched = fetched(&id, status, &body);
        let title = title.as_string();
        let outcome = self.run(|e, now| e.complete_push_fetch(now, &id, title, fetched));
        json::push_outcome(&outcome).end().into()
    }

    /// Registers this device's push address (`web_push`: the subscription JSON).
    #[wasm_bindgen(js_name = registerPush)]
    pub fn register_push(&self, platform: JsValue, token: JsValue) -> Result<(), JsError> {
        let platform = PushPlatform::parse(&text(&platform)).ok_or_else(|| JsError::new("unknown push platform"))?;
        self.run(|e, now| e.register_push(now, platform, &text(&token))).map_err(js_err)
    }

    /// The answer to a `"token"` output.
    pub fn token(&self, token: JsValue) {
        self.run(|e, now| e.handle_token(now, Ok(text(&token))));
    }

    /// The token provider failed; `transient`: retrying later may help.
    #[wasm_bindgen(js_name = tokenError)]
    pub fn token_error(&self, transient: bool, message: JsValue) {
        self.run(|e, now| e.handle_token(now, Err(TokenError { transient, message: text(&message) })));
    }

    /// Starts an inbox or history request (protocol §13, §14); its answer comes as a `"reply"` output
    /// (`{"id":…,"frame":{…}}` or `{"id":…,"error":{"code","message"}}`). `op`: `more` (the next page of the view;
    /// `a`: limit), `list` (`a`: `[before, limit, status, archived, type, topic]`), `mark` (`a`: action, `b`: ids),
    /// `all` (`a`: `read` or `seen`), `history` (`a`: stream, `b`: epoch, `c`: after, `d`: limit). Returns its id.
    pub fn request(&self, op: JsValue, a: JsValue, b: JsValue, c: JsValue, d: JsValue) -> Result<f64, JsError> {
        let num = |v: &JsValue| v.as_f64().filter(|n| *n >= 0.0).map(|n| n as u64);
        let limit = |v: &JsValue| num(v).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let id = match text(&op).as_str() {
            "more" => self.run(|e, now| e.inbox_load_more(now, limit(&a))),
            "list" => {
                let q = js_sys::Array::from(&a);
                let name = |i: u32| q.get(i).as_string();
                let query = InboxQuery {
                    before: num(&q.get(0)),
                    limit: limit(&q.get(1)),
                    status: name(2)
                        .map_or(Some(StatusFilter::All), |s| StatusFilter::parse(&s))
                        .ok_or_else(|| JsError::new("unknown status"))?,
                    archived: name(3)
                        .map_or(Some(ArchivedFilter::Exclude), |s| ArchivedFilter::parse(&s))
                        .ok_or_else(|| JsError::new("unknown archived filter"))?,
                    kind: name(4),
                    topic: name(5),
                };
                self.run(|e, now| e.inbox_list(now, query))
            }
            "mark" => {
                let action = InboxAction::parse(&text(&a)).ok_or_else(|| JsError::new("unknown action"))?;
                let ids = js_sys::Array::from(&b).iter().map(|v| text(&v)).collect();
                self.run(|e, now| e.inbox_mark(now, action, ids))
            }
            "all" => {
                let action = MarkAllAction::parse(&text(&a)).ok_or_else(|| JsError::new("unknown action"))?;
                Ok(self.run(|e, now| e.inbox_mark_all(now, action)))
            }
            "history" => {
                let after = b.as_string().zip(num(&c)).map(|(epoch, offset)| tidings_core::Cursor { epoch, offset });
                self.run(|e, now| e.history(now, &text(&a), after, limit(&d)))
            }
            _ => return Err(JsError::new("unknown request")),
        };
        id.map(|id| id.0 as f64).map_err(js_err)
    }

    /// The inbox counts (JSON), if known.
    #[wasm_bindgen(js_name = inboxCounts)]
    pub fn inbox_counts(&self) -> JsValue {
        self.inner.borrow().engine.inbox_counts().map(|c| JsValue::from(json::counts(&c))).unwrap_or(JsValue::NULL)
    }

    /// The inbox view (a JSON array of items, newest first) and whether it reaches the oldest item:
    /// `{"items":[…],"complete":true}`.
    #[wasm_bindgen(js_name = inboxItems)]
    pub fn inbox_items(&self) -> JsValue {
        let i = self.inner.borrow();
        let mut out = String::from("{\"items\":[");
        for (n, item) in i.engine.inbox_items().enumerate() {
            if n > 0 {
                out.push(',');
            }
            tidings_core::protocol::write_item(&mut out, item);
        }
        out.push_str("],\"complete\":");
        out.push_str(if i.engine.inbox_complete() { "true}" } else { "false}" });
        out.into()
    }

    /// The view's oldest item `seq` (a follower tab asks the leader for the page before it).
    #[wasm_bindgen(js_name = inboxOldest)]
    pub fn inbox_oldest(&self) -> JsValue {
        self.inner.borrow().engine.inbox_items().last().map(|i| JsValue::from(i.seq as f64)).unwrap_or(JsValue::NULL)
    }

    /// An `inbox_page` frame another tab's socket answered for this one: merged into this tab's view.
    #[wasm_bindgen(js_name = inboxMergePage)]
    pub fn inbox_merge_page(&self, frame: JsValue) -> Result<(), JsError> {
        match decode::frame::<JsValue>(&text(&frame)).map_err(decode_err)? {
            tidings_core::protocol::ServerFrame::InboxPage(page) => {
                self.run(|e, now| e.inbox_merge_page(now, &page));
                Ok(())
            }
            _ => Err(JsError::new("not an inbox_page frame")),
        }
    }

    /// Takes the queued inbox changes of a stored snapshot this engine does not hold (a tab that starts to lead).
    #[wasm_bindgen(js_name = adoptQueue)]
    pub fn adopt_queue(&self, snapshot: JsValue) -> Result<(), JsError> {
        let s = decode::snapshot(&text(&snapshot)).map_err(decode_err)?;
        self.run(|e, now| e.adopt_inbox_queue(now, &s));
        Ok(())
    }

    /// The persistent state now (snapshot JSON).
    pub fn snapshot(&self) -> JsValue {
        let s = self.inner.borrow_mut().engine.snapshot();
        snapshot_text(&s).into()
    }

    /// The device id.
    #[wasm_bindgen(js_name = deviceId)]
    pub fn device_id(&self) -> JsValue {
        self.inner.borrow_mut().engine.device_id().into()
    }

    /// The cursor of a stream as `{"epoch":…,"offset":…}`, or `null`.
    pub fn cursor(&self, stream: JsValue) -> JsValue {
        let i = self.inner.borrow();
        match i.engine.cursor(&text(&stream)) {
            Some(c) => json::Obj::new().str("epoch", &c.epoch).num("offset", c.offset).end().into(),
            None => JsValue::NULL,
        }
    }

    /// Counters and driver facts as JSON (for tests and metrics).
    pub fn stats(&self) -> JsValue {
        let i = self.inner.borrow();
        let s = i.engine.stats();
        let mut reconnects = json::Obj::new();
        for (reason, n) in s.reconnects.by_reason() {
            reconnects = reconnects.num(reason, n);
        }
        // Written as u64 (no u128 formatting code in the module; 2^64 µs is 584,000 years).
        let micros = |d: Option<std::time::Duration>| {
            let mut out = String::new();
            match d {
                Some(d) => {
                    tidings_core::protocol::push_json_u64(&mut out, u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
                }
                None => out.push_str("null"),
            }
            out
        };
        json::Obj::new()
            .num("connectionAttempts", s.connection_attempts)
            .num("connections", s.connections)
            .num("notificationsReceived", s.notifications_received)
            .num("delivered", s.delivered)
            .num("duplicatesDropped", s.duplicates_dropped)
            .num("staleDropped", s.stale_dropped)
            .num("digests", s.digests)
            .num("pushIngested", s.push_ingested)
            .num("gaps", s.gaps)
            .num("duplicatesSocket", s.duplicates_socket)
            .num("duplicatesReplay", s.duplicates_replay)
            .num("duplicatesPush", s.duplicates_push)
            .num("digested", s.digested)
            .num("fresh", s.fresh)
            .num("resumed", s.resumed)
            .num("replays", s.replays)
            .num("replayed", s.replayed)
            .num("replayMax", s.replay_max)
            .raw("reconnects", &reconnects.end())
            .num("rttSamples", s.rtt.samples)
            .raw("rttLastMicros", &micros(s.rtt.last))
            .raw("rttSmoothedMicros", &micros(s.rtt.smoothed))
            .raw("rttMinMicros", &micros(s.rtt.min))
            .num("socketsOpened", u64::from(i.sockets_opened))
            .num("liveSockets", u64::from(i.sock.is_some()) + i.dead.len() as u64)
            .end()
            .into()
    }

    /// Releases the socket and the timer (the engine is closed first).
    pub fn dispose(&self) {
        self.close();
        let mut i = self.inner.borrow_mut();
        i.sock = None;
        i.dead.clear();
        if let Some(id) = i.timer.take() {
            clear_timeout(&id);
        }
    }
}

/// What a fetch answered (`status` 0: it failed, `body` says why).
fn fetched(id: &str, status: u16, body: &str) -> Result<tidings_core::Notification, String> {
    if status == 0 {
        return Err(body.to_owned());
    }
    decode::api_notification_with::<JsValue>(status, body, id).map_err(|e| e.to_string())
}

fn stored_snapshot(snapshot: &JsValue) -> Result<Option<tidings_core::Snapshot>, JsError> {
    let snapshot = text(snapshot);
    if snapshot.is_empty() { Ok(None) } else { decode::snapshot(&snapshot).map(Some).map_err(decode_err) }
}

/// The outcome of the push path without a page, with the snapshot to store, the ids to ack and the stored
/// device id (for `POST /v1/me/acks`).
fn push_through_json(outcome: &tidings_core::PushOutcome, seen: &tidings_core::Snapshot) -> JsValue {
    let ids: Vec<String> = outcome.ids().into_iter().map(str::to_owned).collect();
    // `snapshot` last (readers may cut it off the end).
    let mut o = json::push_outcome(outcome).strs("ack", &ids);
    if let Some(device) = &seen.device_id {
        o = o.str("device", device);
    }
    o.raw("snapshot", &snapshot_text(seen)).end().into()
}

/// The push path without a page (a service worker): the core's `ingest_push_without_client`, seeded from
/// `crypto.getRandomValues`. Takes the stored snapshot (may be empty) and the payload; returns the outcome (as
/// [`Core::ingest_push`]) with `"snapshot":{…}`, which carries only the seen ids (`"scope":"seen_ids"`): store it
/// with `mergeSnapshots(it, stored)` so the pages' cursors and batches stay. `ack` lists the ids to ack and
/// `device` the device they are acked for (when the store has one). A `fetch` outcome is completed with
/// [`complete_push_through`].
#[wasm_bindgen(js_name = pushThrough)]
pub fn push_through(snapshot: JsValue, payload: JsValue) -> Result<JsValue, JsError> {
    let stored = stored_snapshot(&snapshot)?;
    let p = decode::push(&text(&payload)).map_err(decode_err)?;
    let (outcome, seen) =
        tidings_core::engine::ingest_push_without_client(Config::new(""), seed(), stored.as_ref(), now(), p)
            .map_err(js_err)?;
    Ok(push_through_json(&outcome, &seen))
}

/// The answer to a `fetch` outcome of [`push_through`] (`status` 0: no answer): the final outcome, as
/// [`push_through`] writes it, against the snapshot stored now.
#[wasm_bindgen(js_name = completePushThrough)]
pub fn complete_push_through(
    snapshot: JsValue,
    id: JsValue,
    title: JsValue,
    status: u16,
    body: JsValue,
) -> Result<JsValue, JsError> {
    let stored = stored_snapshot(&snapshot)?;
    let id = text(&id);
    let fetched = fetched(&id, status, &text(&body));
    let (outcome, seen) = tidings_core::engine::complete_push_fetch_without_client(
        Config::new(""),
        seed(),
        stored.as_ref(),
        now(),
        &id,
        title.as_string(),
        fetched,
    );
    Ok(push_through_json(&outcome, &seen))
}

/// The HTTP base URL of the server whose WebSocket URL is `url` (`ws://h/v1/ws` → `http://h`).
#[wasm_bindgen(js_name = apiBase)]
pub fn api_base(url: JsValue) -> JsValue {
    tidings_core::protocol::api::api_base(&text(&url)).map(JsValue::from).unwrap_or(JsValue::NULL)
}

/// The request of an HTTP API call (protocol §9.5, §9.6) as `{"method","path","body"}`: `kind` is
/// `preferences`, `setPreferences` / `updatePreferences` (`arg`: the rules, JSON), `quietHours`,
/// `setQuietHours` (`arg`: the quiet hours or `null`, JSON), or `acks` (`arg`: `{"device","ids"}`).
#[wasm_bindgen(js_name = apiRequest)]
pub fn api_request(kind: JsValue, arg: JsValue) -> Result<JsValue, JsError> {
    use tidings_core::protocol::api;
    let arg = text(&arg);
    let request = match text(&kind).as_str() {
        "preferences" => api::get_preferences(),
        "setPreferences" => api::replace_preferences(&decode::rules_with::<JsValue>(&arg).map_err(decode_err)?),
        "updatePreferences" => api::update_preferences(&decode::rules_with::<JsValue>(&arg).map_err(decode_err)?),
        "quietHours" => api::get_quiet_hours(),
        "setQuietHours" => {
            api::set_quiet_hours(decode::quiet_hours_with::<JsValue>(&arg).map_err(decode_err)?.as_ref())
        }
        "acks" => {
            let (device, ids) = decode::acks_with::<JsValue>(&arg).map_err(decode_err)?;
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            api::post_acks(&device, &ids)
        }
        other => return Err(JsError::new(&format!("unknown API call {other:?}"))),
    };
    Ok(json::request(&request).into())
}

/// The answer to an [`api_request`] of `kind`: the result as JSON (`preferences`: `{"rules","version",
/// "updatedAt"}`; `quietHours`: `{"quietHours","version","updatedAt"}`; `acks`: `{}`), or `{"error":{…}}`.
#[wasm_bindgen(js_name = apiResponse)]
pub fn api_response(kind: JsValue, status: u16, body: JsValue) -> JsValue {
    let body = text(&body);
    let result = match text(&kind).as_str() {
        "preferences" | "setPreferences" | "updatePreferences" => {
            decode::api_preferences_with::<JsValue>(status, &body).map(|p| json::preferences(&p))
        }
        "quietHours" | "setQuietHours" => {
            decode::api_quiet_hours_with::<JsValue>(status, &body).map(|q| json::quiet_hours(&q))
        }
        _ => decode::api_acks_with::<JsValue>(status, &body).map(|()| "{}".to_owned()),
    };
    result.unwrap_or_else(|e| json::api_error(&e)).into()
}

/// Merges two stored snapshots (JSON; either may be empty): `ours`, about to be stored, over `theirs`, what the
/// store holds (`Snapshot::merge`: seen ids unioned; cursors, batches and push address from `ours` unless it only
/// carries seen ids). Used wherever a page or the service worker writes the shared store.
#[wasm_bindgen(js_name = mergeSnapshots)]
pub fn merge_snapshots(ours: JsValue, theirs: JsValue) -> Result<JsValue, JsError> {
    let decode = |s: &JsValue| -> Result<tidings_core::Snapshot, JsError> {
        let s = text(s);
        if s.is_empty() {
            Ok(tidings_core::Snapshot { version: 1, ..Default::default() })
        } else {
            decode::snapshot(&s).map_err(decode_err)
        }
    };
    let mut a = decode(&ours)?;
    a.merge(&decode(&theirs)?);
    Ok(snapshot_text(&a).into())
}

/// The allocator: Talc instead of std's dlmalloc (single-threaded wasm, memory grown on demand) — about 7 KiB
/// less code in the module, and faster.
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
