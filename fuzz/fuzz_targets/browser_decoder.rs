//! Differential: the browser binding's decoder (`bindings-wasm/src/decode.rs`, which builds the core's types from
//! `JSON.parse` output; here from serde_json values read the same way) against the core's codec, on server
//! frames, push payloads and stored snapshots. Whatever the codec accepts, the browser decoder accepts with the
//! same value, except for its one documented limit: an integer above 2^53 (a JavaScript number cannot hold it), which
//! it refuses; where only the browser decoder accepts, it is one of its documented leniencies: an integer written as
//! `1.0` or `1e2`, or a repeated member (`JSON.parse` keeps the last value, the codec refuses the text at whichever
//! occurrence it cannot take first, so texts that repeat a member are only checked not to panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tidings_core::protocol::{DecodeError, decode_push_payload, decode_server_frame, message_frames};
use tidings_core::store::decode_snapshot;
use tidings_wasm::decode::{frame, push_payload_with, snapshot_with};

/// A refusal the browser decoder may lift: the codec refused a number not written as an unsigned integer.
fn lenient(core_error: &str) -> bool {
    core_error.contains("unsigned integer")
}

/// Whether some object in `text` (valid JSON) repeats a member name.
fn repeats_a_member(text: &str) -> bool {
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    struct NoRepeat;
    impl<'de> Deserialize<'de> for NoRepeat {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(NoRepeat)
        }
    }
    impl<'de> Visitor<'de> for NoRepeat {
        type Value = NoRepeat;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<NoRepeat, E> {
            Ok(NoRepeat)
        }
        fn visit_i64<E>(self, _: i64) -> Result<NoRepeat, E> {
            Ok(NoRepeat)
        }
        fn visit_u64<E>(self, _: u64) -> Result<NoRepeat, E> {
            Ok(NoRepeat)
        }
        fn visit_f64<E>(self, _: f64) -> Result<NoRepeat, E> {
            Ok(NoRepeat)
        }
        fn visit_str<E>(self, _: &str) -> Result<NoRepeat, E> {
            Ok(NoRepeat)
        }
        fn visit_unit<E>(self) -> Result<NoRepeat, E> {
            Ok(NoRepeat)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoRepeat, A::Error> {
            while seq.next_element::<NoRepeat>()?.is_some() {}
            Ok(NoRepeat)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoRepeat, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                if !keys.insert(k) {
                    return Err(A::Error::custom("repeated member"));
                }
                map.next_value::<NoRepeat>()?;
            }
            Ok(NoRepeat)
        }
    }
    serde_json::from_str::<NoRepeat>(text).is_err()
}

/// Whether `text` holds an integer above 2^53 − 1 (the browser decoder refuses those: a double cannot hold them).
fn beyond_doubles(text: &str) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Number(n) => n.as_u64().is_some_and(|n| n > (1 << 53) - 1),
            Value::Array(a) => a.iter().any(walk),
            Value::Object(o) => o.values().any(walk),
            Value::String(s) => serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object() && walk(&v)),
            _ => false,
        }
    }
    serde_json::from_str::<Value>(text).is_ok_and(|v| walk(&v))
}

fn compare<T: PartialEq + std::fmt::Debug>(
    what: &str,
    text: &str,
    core: Result<T, String>,
    browser: Result<T, DecodeError>,
) {
    match (core, browser) {
        (Ok(c), Ok(b)) => assert_eq!(c, b, "{what}: the decoders disagree on {text}"),
        (Ok(_), Err(e)) if e.message().contains("unsigned integer") && beyond_doubles(text) => {}
        (Ok(c), Err(e)) => panic!("{what}: the codec accepts {text} as {c:?}, the browser decoder refuses: {e}"),
        (Err(e), Ok(b)) => assert!(lenient(&e), "{what}: only the browser decoder accepts {text} as {b:?}; codec: {e}"),
        (Err(_), Err(_)) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // serde_json and JSON.parse differ on a few texts that are not JSON to the codec either (lone surrogates,
    // 1e400); the comparison is about the decoding rules, on texts both parsers read.
    if serde_json::from_str::<Value>(text).is_err() && !text.contains('\n') {
        return;
    }
    for line in message_frames(text) {
        if serde_json::from_str::<Value>(line).is_err() {
            continue;
        }
        let browser = frame::<Value>(line);
        if !repeats_a_member(line) {
            compare("server frame", line, decode_server_frame(line).map_err(|e| e.to_string()), browser);
        }
    }
    if serde_json::from_str::<Value>(text).is_ok() {
        let payload = push_payload_with::<Value>(text).and_then(|n| n.validate().map(|()| n));
        let snapshot = snapshot_with::<Value>(text);
        // A text that repeats a member (and a push payload whose `tidings` text does) is read differently by
        // `JSON.parse` and the codec; stored snapshots and server frames never repeat one.
        let inner = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("tidings").and_then(Value::as_str).map(str::to_owned));
        if !repeats_a_member(text) && !inner.as_deref().is_some_and(repeats_a_member) {
            compare("push payload", text, decode_push_payload(text).map_err(|e| e.to_string()), payload);
            compare("snapshot", text, decode_snapshot(data).map_err(|e| e.to_string()), snapshot);
        }
    }
});
