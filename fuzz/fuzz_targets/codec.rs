//! The core's protocol codec on arbitrary input: never panics, accepts only JSON that serde_json accepts, and
//! whatever it decodes encodes back to text that decodes to the same value (server frames, client frames,
//! notification envelopes, push payloads, stored snapshots).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::protocol::{
    decode_client_frame, decode_notification, decode_push_payload, decode_server_frame, encode_client_frame,
    encode_notification, encode_server_frame, message_frames, raw_elements, raw_member,
};
use tidings_core::store::{decode_snapshot, encode_snapshot};

fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = decode_snapshot(data) {
        let again = decode_snapshot(&encode_snapshot(&snapshot)).expect("an encoded snapshot decodes");
        assert_eq!(again, snapshot, "snapshot round trip");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    for line in message_frames(text) {
        if let Ok(frame) = decode_server_frame(line) {
            assert!(is_json(line), "the codec accepted a server frame serde_json refuses: {line}");
            let encoded = encode_server_frame(&frame);
            assert_eq!(decode_server_frame(&encoded).as_ref(), Ok(&frame), "server frame round trip: {encoded}");
        }
    }
    if let Ok(frame) = decode_client_frame(text) {
        assert!(is_json(text), "the codec accepted a client frame serde_json refuses: {text}");
        let encoded = encode_client_frame(&frame);
        assert_eq!(decode_client_frame(&encoded).as_ref(), Ok(&frame), "client frame round trip: {encoded}");
    }
    if let Ok(n) = decode_notification(text) {
        assert!(is_json(text), "the codec accepted an envelope serde_json refuses: {text}");
        let encoded = encode_notification(&n);
        assert_eq!(decode_notification(&encoded).as_ref(), Ok(&n), "envelope round trip: {encoded}");
    }
    if let Ok(n) = decode_push_payload(text) {
        assert!(is_json(text), "the codec accepted a push payload serde_json refuses: {text}");
        let wrapped = format!("{{\"tidings\":{}}}", encode_notification(&n));
        assert_eq!(decode_push_payload(&wrapped).as_ref(), Ok(&n), "push payload round trip: {wrapped}");
    }
    if let Some(raw) = raw_member(text, "data") {
        assert!(is_json(raw), "a raw member that is not JSON: {raw}");
    }
    if let Some(elements) = raw_elements(text) {
        for e in elements {
            assert!(is_json(e), "a raw element that is not JSON: {e}");
        }
    }
});
