//! Differential property tests: the crate's protocol codec against serde_json, a maintained reference
//! implementation of RFC 8259.
//!
//! - every frame the codec encodes is JSON serde_json accepts, with the members the protocol defines;
//! - the codec decodes whatever serde_json writes for a frame, in any member order, with unknown members and
//!   explicit nulls, to the same frame;
//! - on arbitrary input the codec never panics, and it accepts only what serde_json accepts as JSON.

use proptest::prelude::*;
use serde_json::{Value, json};
use tidings_core::protocol::*;

fn text() -> impl Strategy<Value = String> {
    // Plain, escapes, control characters, quotes, non-ASCII and astral characters.
    prop_oneof![
        "[a-zA-Z0-9_.:-]{1,20}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
        Just("quote\"back\\slash\nline\ttab\u{1}\u{1f}é😀/".to_string()),
    ]
}

fn notification() -> impl Strategy<Value = Notification> {
    (
        ("[A-Za-z0-9_.:-]{1,40}", "[a-z0-9]{1,20}", proptest::option::of(1..u64::MAX), "[a-z0-9]{1,12}"),
        (text(), 0..3u8, 0..3u8),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(text()),
        ),
        any::<u64>(),
    )
        .prop_map(|((id, user, offset, epoch), (kind, p, s), (title, body, data, group), created_at)| {
            Notification::from(NotificationFields {
                id,
                stream: format!("user:{user}"),
                offset,
                epoch,
                kind,
                priority: [Priority::Critical, Priority::Important, Priority::Informational][p as usize],
                persistence: [Persistence::Ephemeral, Persistence::Bufferable, Persistence::Persistent][s as usize],
                title,
                body,
                data: data
                    .map(|d| RawJson::from_string(json!({"n": d, "list": [1, "two", null]}).to_string()).unwrap()),
                group,
                created_at,
            })
        })
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (text(), text(), proptest::option::of(text())).prop_map(|(token, device, client)| ClientFrame::Auth {
            token,
            device,
            client
        }),
        (any::<u64>(), proptest::collection::vec((text(), proptest::option::of((text(), any::<u64>()))), 0..4))
            .prop_map(|(reference, s)| {
                ClientFrame::Subscribe {
                    reference,
                    streams: s
                        .into_iter()
                        .map(|(stream, pos)| SubscribeEntry {
                            stream,
                            epoch: pos.as_ref().map(|p| p.0.clone()),
                            offset: pos.map(|p| p.1),
                        })
                        .collect(),
                }
            }),
        (any::<u64>(), proptest::collection::vec(text(), 0..4))
            .prop_map(|(reference, streams)| ClientFrame::Unsubscribe { reference, streams }),
        proptest::collection::vec(text(), 0..5).prop_map(|ids| ClientFrame::Ack { ids }),
        any::<bool>().prop_map(|echo| ClientFrame::Heartbeat { echo }),
        (any::<u64>(), text()).prop_map(|(reference, token)| ClientFrame::RegisterPush {
            reference,
            platform: PushPlatform::Fcm,
            token
        }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        notification().prop_map(ServerFrame::Notification),
        Just(ServerFrame::Heartbeat),
        (text(), text(), text(), any::<u64>(), proptest::option::of(any::<u64>())).prop_map(
            |(session, user, device, hb, exp)| {
                ServerFrame::Welcome {
                    session,
                    user,
                    device,
                    heartbeat_ms: hb,
                    max_frame_bytes: 65536,
                    token_expires_in_ms: exp,
                }
            }
        ),
        (any::<u64>(), text(), text(), any::<u64>(), 0..3u8, any::<u64>(), proptest::option::of(any::<u64>()))
            .prop_map(|(reference, stream, epoch, offset, k, n, missed)| ServerFrame::Subscribed {
                reference,
                stream,
                epoch,
                offset,
                continuity: match k {
                    0 => WireContinuity::Fresh,
                    1 => WireContinuity::Resumed { replayed: n },
                    _ => WireContinuity::Gap { reason: GapReason::OutOfBuffer, missed, replayed: n % 3 },
                },
            }),
        (any::<u64>(), text()).prop_map(|(reference, stream)| ServerFrame::Unsubscribed { reference, stream }),
        proptest::option::of(any::<u64>()).prop_map(|t| ServerFrame::TokenRefreshed { token_expires_in_ms: t }),
        (proptest::option::of(any::<u64>()), proptest::option::of(text()), text(), proptest::option::of(any::<u64>()))
            .prop_map(|(reference, stream, message, retry)| ServerFrame::Error(ErrorFrame {
                reference,
                stream,
                code: ErrorCode::TryAgainLater,
                message,
                retry_after_ms: retry,
            })),
    ]
}

/// Re-serializes an object with its members shuffled (by `seed`), an unknown member and nulls for absent ones.
fn rewrite(v: &Value, seed: u64, nulls: &[&str]) -> String {
    let Value::Object(map) = v else { unreachable!() };
    let mut entries: Vec<(String, Value)> = map.clone().into_iter().collect();
    let mut rng = seed;
    for i in (1..entries.len()).rev() {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        entries.swap(i, (rng >> 33) as usize % (i + 1));
    }
    entries.push(("x_future_member".into(), json!({"nested": [1, {"deep": "value"}]})));
    for n in nulls {
        if !map.contains_key(*n) {
            entries.push((n.to_string(), Value::Null));
        }
    }
    // Written by hand: serde_json's Map would sort the members again.
    let members: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), serde_json::to_string(v).unwrap()))
        .collect();
    format!("{{{}}}", members.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The frames of a message are its non-empty lines, exactly as `str::split('\n')` cuts them (the splitter
    /// searches with SIMD; newlines at the ends, runs of them, long lines and multi-byte characters).
    #[test]
    fn message_frames_are_the_non_empty_lines(text in "(\n{0,3}[a-zé{}\":,€]{0,80}){0,8}\n{0,2}") {
        let ours: Vec<&str> = tidings_core::protocol::message_frames(&text).collect();
        let split: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
        prop_assert_eq!(ours, split);
    }

    #[test]
    fn server_frames_encode_to_valid_json_and_decode_back_in_any_order(frame in server_frame(), seed in any::<u64>()) {
        let text = encode_server_frame(&frame);
        let value: Value = serde_json::from_str(&text).expect("encoder output is JSON");
        prop_assert!(text.starts_with("{\"op\":"), "op comes first: {}", text);
        prop_assert_eq!(decode_server_frame(&text).unwrap(), frame.clone());
        let shuffled = rewrite(&value, seed, &["title", "body", "data", "group", "token_expires_in_ms", "missed", "retry_after_ms"]);
        prop_assert_eq!(decode_server_frame(&shuffled).unwrap(), frame);
    }

    #[test]
    fn client_frames_encode_to_valid_json_and_decode_back_in_any_order(frame in client_frame(), seed in any::<u64>()) {
        let text = encode_client_frame(&frame);
        let value: Value = serde_json::from_str(&text).expect("encoder output is JSON");
        prop_assert!(text.starts_with("{\"op\":"), "op comes first: {}", text);
        prop_assert_eq!(decode_client_frame(&text).unwrap(), frame.clone());
        prop_assert_eq!(decode_client_frame(&rewrite(&value, seed, &["client"])).unwrap(), frame);
    }

    #[test]
    fn strings_decode_exactly_as_serde_json_reads_them(s in any::<String>()) {
        let frame = ServerFrame::Unsubscribed { reference: 1, stream: s.clone() };
        // serde_json writes it (its escaping), the codec reads it.
        let text = serde_json::to_string(&json!({"op": "unsubscribed", "ref": 1, "stream": s})).unwrap();
        prop_assert_eq!(decode_server_frame(&text).unwrap(), frame);
        // \u escapes for everything, including astral characters as surrogate pairs.
        let escaped: String = s.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
        let text = format!(r#"{{"op":"unsubscribed","ref":1,"stream":"{escaped}"}}"#);
        prop_assert_eq!(decode_server_frame(&text).unwrap(), ServerFrame::Unsubscribed { reference: 1, stream: s });
    }

    #[test]
    fn arbitrary_input_never_panics_and_invalid_json_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        let ours = decode_server_frame(&text);
        let _ = decode_client_frame(&text);
        let _ = decode_push_payload(&text);
        if serde_json::from_str::<Value>(&text).is_err() {
            prop_assert!(ours.is_err());
        }
    }

    #[test]
    fn mutated_frames_are_refused_when_not_json(frame in server_frame(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut text = encode_server_frame(&frame).into_bytes();
        let i = cut.index(text.len());
        text[i] = byte;
        let Ok(text) = String::from_utf8(text) else { return Ok(()) };
        let ours = decode_server_frame(&text);
        let json_ok = serde_json::from_str::<Value>(&text).is_ok();
        if !json_ok {
            prop_assert!(ours.is_err(), "accepted invalid JSON: {text}");
        }
    }
}

#[test]
fn raw_json_data_is_kept_verbatim_and_validated_like_serde_json() {
    for ok in [
        r#"{"a":1}"#,
        "[]",
        "\"s\"",
        "12.5e3",
        "null",
        "true",
        "1e-400",
        "1.7976931348623157e308",
        "123456789012345678901234567890",
    ] {
        assert_eq!(RawJson::from_string(ok.into()).unwrap().get(), ok);
        serde_json::from_str::<Value>(ok).unwrap();
    }
    for bad in ["{", "{'a':1}", "[1,]", "01", "nul", "\"\u{1}\"", "{} {}", "1e400", "-1e24542910376199295", "[1E+309]"]
    {
        assert!(RawJson::from_string(bad.into()).is_err(), "{bad}");
        assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
    }
}
