//! The binding in headless Chromium (`cargo xtask wasm-test` runs these with wasm-bindgen-test-runner and
//! chromedriver). The engine's behaviour is tested in the core; these check the browser driver around it:
//! outputs, relayed frames, snapshots, the push path, the socket lifecycle and timers.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Promise};
use tidings_wasm::{Core, merge_snapshots, push_through};

/// A string for the exports (they take JavaScript values).
fn js(s: &str) -> JsValue {
    JsValue::from_str(s)
}

/// A string an export returned.
fn text(v: JsValue) -> String {
    v.as_string().expect("a string")
}
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

type Log = Rc<RefCell<Vec<(String, String)>>>;
type Output = Closure<dyn FnMut(String, String)>;

/// A core whose outputs are recorded.
fn core(url: &str) -> (Core, Log, Output) {
    let log: Log = Rc::default();
    let l = log.clone();
    let f = Closure::<dyn FnMut(String, String)>::new(move |kind: String, payload: String| {
        l.borrow_mut().push((kind, payload));
    });
    let function: Function = f.as_ref().unchecked_ref::<Function>().clone();
    let core = Core::new(
        js(url),
        js("d-test"),
        JsValue::UNDEFINED,
        function,
        JsValue::UNDEFINED,
        JsValue::UNDEFINED,
        JsValue::UNDEFINED,
        JsValue::UNDEFINED,
    );
    (core, log, f)
}

fn events(log: &Log, needle: &str) -> Vec<String> {
    log.borrow().iter().filter(|(k, p)| k == "event" && p.contains(needle)).map(|(_, p)| p.clone()).collect()
}

#[wasm_bindgen]
extern "C" {
    // Not the library's own `setTimeout` binding (the same import twice would be a duplicate symbol).
    #[wasm_bindgen(js_namespace = globalThis, js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: i32) -> JsValue;
}

async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, ms);
    });
    JsFuture::from(p).await.unwrap();
}

/// A notification envelope.
fn envelope(id: &str, offset: u64) -> String {
    format!(
        r#"{{"id":"{id}","stream":"user:alice","offset":{offset},"epoch":"e1","type":"t","priority":"important","persistence":"bufferable","title":"hi {id}","created_at":1}}"#
    )
}

/// The envelope as a `notification` frame.
fn notification(id: &str, offset: u64) -> String {
    format!(r#"{{"op":"notification",{}"#, &envelope(id, offset)[1..])
}

#[wasm_bindgen_test]
fn relayed_frames_are_delivered_once_and_advance_the_cursor() {
    let (core, log, _f) = core("ws://127.0.0.1:9/v1/ws");
    core.relayed(js(
        r#"{"op":"subscribed","ref":1,"stream":"user:alice","epoch":"e1","offset":0,"continuity":"fresh"}"#,
    ))
    .unwrap();
    assert_eq!(events(&log, r#""type":"continuity""#).len(), 1);
    core.relayed(js(&notification("n1", 1))).unwrap();
    core.relayed(js(&notification("n2", 2))).unwrap();
    core.relayed(js(&notification("n2", 2))).unwrap(); // stale duplicate
    let got = events(&log, r#""type":"notification""#);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].contains(r#""id":"n1""#));
    assert_eq!(core.cursor(js("user:alice")).as_string().unwrap(), r#"{"epoch":"e1","offset":2}"#);
    assert!(core.relayed(js("not json")).is_err());
}

#[wasm_bindgen_test]
fn snapshots_restore_cursor_and_dedup() {
    let (a, _log, _f) = core("ws://127.0.0.1:9/v1/ws");
    a.relayed(js(&notification("n1", 1))).unwrap();
    let snapshot = text(a.snapshot());
    assert!(snapshot.contains(r#""device_id":"d-test""#), "{snapshot}");
    let (b, log, _g) = core("ws://127.0.0.1:9/v1/ws");
    b.restore(js(&snapshot)).unwrap();
    b.relayed(js(&notification("n1", 1))).unwrap();
    assert!(events(&log, "n1").is_empty(), "a restored id is not delivered again");
    let outcome = b.ingest_push(js(&format!(r#"{{"tidings":{}}}"#, envelope("n1", 1)))).map(text).unwrap();
    assert!(outcome.starts_with(r#"{"show":false"#), "{outcome}");
    assert!(b.restore(js("{")).is_err());
    let merged = merge_snapshots(js(&snapshot), js("")).map(text).unwrap();
    assert!(merged.contains("e1"));
}

#[wasm_bindgen_test]
fn push_through_dedups_against_the_stored_snapshot() {
    let payload = format!(r#"{{"tidings":{}}}"#, envelope("p1", 7));
    let first = push_through(js(""), js(&payload)).map(text).unwrap();
    assert!(first.starts_with(r#"{"show":true"#), "{first}");
    let start = first.find(r#""snapshot":"#).unwrap() + 11;
    let snapshot = &first[start..first.len() - 1];
    let second = push_through(js(snapshot), js(&payload)).map(text).unwrap();
    assert!(second.starts_with(r#"{"show":false,"id":"p1""#), "{second}");
    assert!(push_through(js(""), js("{}")).is_err());
}

#[wasm_bindgen_test]
fn invalid_arguments_are_errors() {
    let (core, _log, _f) = core("ws://127.0.0.1:9/v1/ws");
    assert!(core.subscribe(js("nope")).is_err());
    assert!(core.subscribe(js("topic:news")).is_ok());
    assert!(core.register_push(js("carrier-pigeon"), js("x")).is_err());
    // Defect 4 of issue 12: a subscription without keys is refused here, as the server would.
    assert!(core.register_push(js("web_push"), js(r#"{"endpoint":"https://push.example/1"}"#)).is_err());
    let p256dh = format!("B{}", "A".repeat(86));
    let complete = format!(
        r#"{{"endpoint":"https://push.example/1","keys":{{"p256dh":"{p256dh}","auth":"AAECAwQFBgcICQoLDA0ODw"}}}}"#
    );
    assert!(core.register_push(js("web_push"), js(&complete)).is_ok());
}

#[wasm_bindgen_test]
async fn a_refused_socket_backs_off_on_timers_and_releases_the_socket() {
    let (core, log, _f) = core("ws://127.0.0.1:9/v1/ws");
    core.set_environment(true, true);
    core.connect();
    assert!(log.borrow().iter().any(|(k, p)| k == "token" && p == "false"), "the engine asks for a token");
    core.token("t".into());
    assert!(!events(&log, r#""kind":"connecting""#).is_empty());
    // Full jitter may retry again within one poll: at least one retry, not exactly one.
    let attempts = |stats: &str| -> u32 {
        let rest = &stats[stats.find(r#""connectionAttempts":"#).unwrap() + 21..];
        rest[..rest.find(',').unwrap()].parse().unwrap()
    };
    for _ in 0..100 {
        if attempts(&text(core.stats())) >= 2 {
            break;
        }
        sleep(50).await;
    }
    let stats = text(core.stats());
    assert!(attempts(&stats) >= 2, "retried from a setTimeout timer: {stats}");
    assert!(!events(&log, r#""kind":"reconnecting""#).is_empty());
    core.close();
    sleep(20).await;
    let stats = text(core.stats());
    assert!(stats.contains(r#""liveSockets":0"#), "no socket or callbacks held after close: {stats}");
    core.dispose();
}

#[wasm_bindgen_test]
async fn the_environment_is_fed_to_the_engine() {
    let log: Log = Rc::default();
    let l = log.clone();
    let f = Closure::<dyn FnMut(String, String)>::new(move |kind: String, payload: String| {
        l.borrow_mut().push((kind, payload));
    });
    // No background grace: hidden means suspended at the next timer tick.
    let none = || JsValue::UNDEFINED;
    let output = f.as_ref().unchecked_ref::<Function>().clone();
    let core = Core::new(js("ws://127.0.0.1:9/v1/ws"), none(), none(), output, 0.into(), none(), none(), none());
    core.connect();
    core.token("t".into());
    core.set_environment(false, true);
    assert_eq!(events(&log, r#""reason":"offline""#).len(), 1, "offline suspends");
    core.set_environment(false, true);
    assert_eq!(events(&log, r#""reason":"offline""#).len(), 1, "only changes are fed");
    let connecting = events(&log, r#""kind":"connecting""#).len();
    core.set_environment(true, true);
    assert_eq!(events(&log, r#""kind":"connecting""#).len(), connecting + 1, "back online: connects at once");
    core.set_environment(true, false);
    sleep(30).await;
    assert_eq!(events(&log, r#""reason":"background""#).len(), 1, "hidden (and no other tab visible): background");
    core.dispose();
}

#[wasm_bindgen_test]
fn frames_are_decoded_with_the_codec_rules_one_per_line() {
    let (core, log, _f) = core("ws://127.0.0.1:9/v1/ws");
    // Several frames in one message, one per line (a trailing newline is no frame).
    let two = format!("{}\n{}\n", notification("n1", 1), notification("n2", 2));
    core.relayed(js(&two)).unwrap();
    let got = events(&log, r#""type":"notification""#);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[1].contains(r#""id":"n2""#) && got[1].contains(r#""title":"hi n2""#), "{got:?}");
    assert_eq!(core.cursor(js("user:alice")).as_string().unwrap(), r#"{"epoch":"e1","offset":2}"#);
    // Members in any order, unknown ones ignored, null as absent, `data` carried as JSON.
    let reordered = r#"{"created_at":5,"x":[1,{"y":null}],"title":null,"data":{"post":"p-1","n":[1,2]},"persistence":"bufferable","priority":"informational","type":"t","epoch":"e1","offset":3,"stream":"user:alice","id":"n3","op":"notification"}"#;
    core.relayed(js(reordered)).unwrap();
    let got = events(&log, r#""id":"n3""#);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains(r#""data":{"post":"p-1","n":[1,2]}"#) && !got[0].contains("title"), "{got:?}");
    // `data` is handed on verbatim: JSON.parse's doubles would turn this id into 12345678901234567000.
    let big = notification("big1", 4)
        .replace(r#""created_at""#, r#""data":{"id":12345678901234567891,"f":1.0},"created_at""#);
    core.relayed(js(&big)).unwrap();
    let got = events(&log, r#""id":"big1""#);
    assert!(got[0].contains(r#""data":{"id":12345678901234567891,"f":1.0}"#), "{got:?}");
    // Refused: wrong types, missing members, unknown enum names and ops, non-objects, unsafe integers.
    let bad = [
        r#"{"op":"notification","id":5}"#.to_string(),
        notification("n4", 4).replace(r#""created_at":1"#, r#""created_at":"1""#),
        notification("n4", 4).replace(r#","epoch":"e1""#, ""),
        notification("n4", 4).replace("important", "urgent"),
        notification("n4", 4).replace(r#""offset":4"#, r#""offset":-4"#),
        notification("n4", 4).replace(r#""offset":4"#, r#""offset":9007199254740993"#),
        r#"{"op":"subscribed","ref":1,"stream":"user:alice","epoch":"e1","offset":0,"continuity":"later"}"#.into(),
        r#"{"op":"shout"}"#.into(),
        r#"{"op":""}"#.into(),
        r#"{"heartbeat":true}"#.into(),
        r#"["op","heartbeat"]"#.into(),
        "not json".into(),
    ];
    for frame in &bad {
        assert!(core.relayed(js(frame)).is_err(), "accepted {frame}");
    }
    assert!(events(&log, "n4").is_empty());
    // A bad frame after a good one in one message: the good one was handled.
    assert!(core.relayed(js(&format!("{}\n{{}}", notification("n5", 5)))).is_err());
    assert_eq!(events(&log, r#""id":"n5""#).len(), 1);
}

#[wasm_bindgen_test]
fn push_payloads_and_snapshots_are_decoded() {
    // The envelope bare, wrapped as an object, or wrapped as JSON text.
    let bare = envelope("p1", 1);
    let message = format!(r#"{{"tidings":"{}"}}"#, bare.replace('"', "\\\""));
    let first = push_through(js(""), js(&message)).map(text).unwrap();
    assert!(first.starts_with(r#"{"show":true,"notification":{"id":"p1""#), "{first}");
    let start = first.find(r#""snapshot":"#).unwrap() + 11;
    let snapshot = &first[start..first.len() - 1];
    assert!(push_through(js(snapshot), js(&bare)).map(text).unwrap().starts_with(r#"{"show":false,"id":"p1""#));
    // Wrapped as an object: `data` still verbatim.
    let with_data = envelope("p2", 2).replace(r#""created_at""#, r#""data":[12345678901234567891],"created_at""#);
    let shown = push_through(js(""), js(&format!(r#"{{"x":1,"tidings":{with_data}}}"#))).map(text).unwrap();
    assert!(shown.contains(r#""data":[12345678901234567891]"#), "{shown}");
    assert!(push_through(js(""), js(r#"{"tidings":5}"#)).is_err());
    assert!(push_through(js(""), js("[]")).is_err());
    // Snapshots: version 1 only, cursors need epoch and offset, a pending batch survives the round trip.
    let stored = format!(
        r#"{{"version":1,"device_id":"d-9","cursors":{{"user:alice":{{"epoch":"e1","offset":4}}}},"seen":["a","b"],"pending":[{{"group":"g","first":{},"last":null,"ids":["p1"]}}],"push":{{"platform":"web_push","token":"tok"}}}}"#,
        envelope("p1", 1)
    );
    let merged = merge_snapshots(js(&stored), js("")).map(text).unwrap();
    let stored_big = stored.replace(r#""created_at""#, r#""data":{"n":12345678901234567891},"created_at""#);
    let merged_big = merge_snapshots(js(&stored_big), js("")).map(text).unwrap();
    assert!(merged_big.contains(r#"12345678901234567891"#), "a pending notification's data survives: {merged_big}");
    for part in
        [r#""device_id":"d-9""#, r#""user:alice":{"epoch":"e1","offset":4}"#, r#""group":"g""#, r#""token":"tok""#]
    {
        assert!(merged.contains(part), "{part} in {merged}");
    }
    assert!(merge_snapshots(js(&stored.replace(r#""version":1"#, r#""version":2"#)), js("")).is_err());
    assert!(merge_snapshots(js(r#"{"version":1,"cursors":{"user:alice":{"epoch":"e1"}}}"#), js("")).is_err());
    assert!(merge_snapshots(js(r#"{"version":1,"seen":[1]}"#), js("")).is_err());
}

/// Defect 6 of issue 12: the service worker's write used to replace the stored snapshot with the one it read before
/// (a page's newer cursor was lost). Its result now carries only seen ids and is merged over what is stored then.
#[wasm_bindgen_test]
fn a_service_worker_write_keeps_what_a_page_saved_meanwhile() {
    let cursor = |offset: u64| format!(r#""user:alice":{{"epoch":"e1","offset":{offset}}}"#);
    let older = format!(r#"{{"version":1,"device_id":"d-1","cursors":{{{}}},"seen":["a"]}}"#, cursor(3));
    // The worker read `older`…
    let result = push_through(js(&older), js(&envelope("p9", 9))).map(text).unwrap();
    let start = result.find(r#""snapshot":"#).unwrap() + 11;
    let seen_only = &result[start..result.len() - 1];
    assert!(seen_only.contains(r#""scope":"seen_ids""#), "{seen_only}");
    assert!(!seen_only.contains("user:alice"), "the worker does not write stream state: {seen_only}");
    // …a page saved a newer cursor meanwhile; the worker's write merges over it.
    let newer = format!(r#"{{"version":1,"device_id":"d-1","cursors":{{{}}},"seen":["a","b"]}}"#, cursor(7));
    let stored = merge_snapshots(js(seen_only), js(&newer)).map(text).unwrap();
    assert!(stored.contains(&cursor(7)), "the page's cursor stays: {stored}");
    assert!(!stored.contains("seen_ids"), "the result is a full snapshot again: {stored}");
    let (b, log, _) = core("ws://127.0.0.1:9/v1/ws");
    b.restore(js(&stored)).unwrap();
    b.relayed(js(&notification("p9", 8))).unwrap();
    assert!(events(&log, "p9").is_empty(), "the worker's id is seen: {stored}");
}

/// The per-tab subscription calls refuse invalid stream names (the counting itself: `holders.rs` unit tests, and
/// the end-to-end test with two tabs in `e2e/run.mjs`).
#[wasm_bindgen_test]
fn per_tab_subscriptions_refuse_invalid_streams() {
    let (c, _, _) = core("ws://127.0.0.1:9/v1/ws");
    c.subscribe_for(js("tab-a"), js("topic:x")).unwrap();
    c.subscribe_for(js("tab-b"), js("topic:x")).unwrap();
    c.unsubscribe_for(js("tab-a"), js("topic:x")).unwrap();
    let streams = js_sys::Array::new();
    streams.push(&js("topic:y"));
    streams.push(&js("chat:skipped"));
    c.tab_streams(js("tab-b"), streams);
    assert!(c.subscribe_for(js("tab-a"), js("chat:1")).is_err(), "invalid names are refused");
    assert!(c.unsubscribe_for(js("tab-a"), js("chat:1")).is_err());
    c.tab_gone(js("tab-b"));
}
