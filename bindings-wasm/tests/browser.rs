//! The binding in headless Chromium (`cargo xtask wasm-test` runs these with wasm-bindgen-test-runner and
//! chromedriver). The engine's behaviour is tested in the core; these check the browser driver around it:
//! outputs, relayed frames, snapshots, the push path, the socket lifecycle and timers.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Promise};
use tidings_wasm::{Core, merge_snapshots, push_through};
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
    let core = Core::new(url.into(), Some("d-test".into()), None, function, None, None, None, None);
    (core, log, f)
}

fn events(log: &Log, needle: &str) -> Vec<String> {
    log.borrow().iter().filter(|(k, p)| k == "event" && p.contains(needle)).map(|(_, p)| p.clone()).collect()
}

async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        web_sys::window().unwrap().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms).unwrap();
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
    core.relayed(r#"{"op":"subscribed","ref":1,"stream":"user:alice","epoch":"e1","offset":0,"continuity":"fresh"}"#)
        .unwrap();
    assert_eq!(events(&log, r#""type":"continuity""#).len(), 1);
    core.relayed(&notification("n1", 1)).unwrap();
    core.relayed(&notification("n2", 2)).unwrap();
    core.relayed(&notification("n2", 2)).unwrap(); // stale duplicate
    let got = events(&log, r#""type":"notification""#);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].contains(r#""id":"n1""#));
    assert_eq!(core.cursor("user:alice").unwrap(), r#"{"epoch":"e1","offset":2}"#);
    assert!(core.relayed("not json").is_err());
}

#[wasm_bindgen_test]
fn snapshots_restore_cursor_and_dedup() {
    let (a, _log, _f) = core("ws://127.0.0.1:9/v1/ws");
    a.relayed(&notification("n1", 1)).unwrap();
    let snapshot = a.snapshot();
    assert!(snapshot.contains(r#""device_id":"d-test""#), "{snapshot}");
    let (b, log, _g) = core("ws://127.0.0.1:9/v1/ws");
    b.restore(&snapshot).unwrap();
    b.relayed(&notification("n1", 1)).unwrap();
    assert!(events(&log, "n1").is_empty(), "a restored id is not delivered again");
    let outcome = b.ingest_push(&format!(r#"{{"tidings":{}}}"#, envelope("n1", 1))).unwrap();
    assert!(outcome.starts_with(r#"{"show":false"#), "{outcome}");
    assert!(b.restore("{").is_err());
    let merged = merge_snapshots(&snapshot, "").unwrap();
    assert!(merged.contains("e1"));
}

#[wasm_bindgen_test]
fn push_through_dedups_against_the_stored_snapshot() {
    let payload = format!(r#"{{"tidings":{}}}"#, envelope("p1", 7));
    let first = push_through("", &payload).unwrap();
    assert!(first.starts_with(r#"{"show":true"#), "{first}");
    let start = first.find(r#""snapshot":"#).unwrap() + 11;
    let snapshot = &first[start..first.len() - 1];
    let second = push_through(snapshot, &payload).unwrap();
    assert!(second.starts_with(r#"{"show":false,"id":"p1""#), "{second}");
    assert!(push_through("", "{}").is_err());
}

#[wasm_bindgen_test]
fn invalid_arguments_are_errors() {
    let (core, _log, _f) = core("ws://127.0.0.1:9/v1/ws");
    assert!(core.subscribe("nope").is_err());
    assert!(core.subscribe("topic:news").is_ok());
    assert!(core.register_push("carrier-pigeon", "x").is_err());
    assert!(core.register_push("web_push", r#"{"endpoint":"https://push.example/1"}"#).is_ok());
}

#[wasm_bindgen_test]
async fn a_refused_socket_backs_off_on_timers_and_releases_the_socket() {
    let (core, log, _f) = core("ws://127.0.0.1:9/v1/ws");
    core.watch_environment();
    core.connect();
    assert!(log.borrow().iter().any(|(k, p)| k == "token" && p == "false"), "the engine asks for a token");
    core.token("t".into());
    assert!(core.state().contains("connecting"));
    for _ in 0..100 {
        if core.stats().contains(r#""connectionAttempts":2"#) {
            break;
        }
        sleep(50).await;
    }
    let stats = core.stats();
    assert!(stats.contains(r#""connectionAttempts":2"#), "retried from a setTimeout timer: {stats}");
    assert!(!events(&log, r#""kind":"reconnecting""#).is_empty());
    core.close();
    sleep(20).await;
    let stats = core.stats();
    assert!(stats.contains(r#""liveSockets":0"#), "no socket or callbacks held after close: {stats}");
    assert!(stats.contains(r#""listeners":3"#), "{stats}");
    core.dispose();
    assert!(core.stats().contains(r#""listeners":0"#));
}
