//! The server's handling of a client frame, as far as it is not I/O: the entry point demo-server's connection calls
//! for every text message (`tidings_core::protocol::decode_client_request`, which classifies what it refuses), the
//! checks the server then applies to a decoded frame (device and notification ids, stream names, push tokens),
//! and the error frame it answers with. Invariants: no panic; a refusal is fatal exactly when it is not a
//! `bad_request`; `bad_request` answers a request's readable `ref` (or, for `ack` and `heartbeat`, none);
//! `unauthorized` is only for `auth`; the answer encodes to a server frame that decodes back; and whatever decodes
//! encodes back to the same frame. (This target stays thin on purpose: the server is being restructured into a
//! sans-IO session, which will be its own target.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::protocol::{
    ClientFrame, ErrorCode, ErrorFrame, ServerFrame, StreamName, decode_client_frame, decode_client_request,
    decode_server_frame, encode_client_frame, encode_server_frame, validate_id, validate_op_id,
    validate_push_registration, validate_push_token,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match decode_client_request(text) {
        Ok(frame) => {
            match &frame {
                ClientFrame::Auth { device, .. } => {
                    let _ = validate_id(device);
                }
                ClientFrame::Subscribe { streams, .. } => {
                    for e in streams {
                        let _ = StreamName::parse(&e.stream);
                    }
                }
                ClientFrame::Unsubscribe { streams, .. } => {
                    for s in streams {
                        let _ = StreamName::parse(s);
                    }
                }
                ClientFrame::Ack { ids } => {
                    for id in ids {
                        let _ = validate_id(id);
                    }
                }
                ClientFrame::RegisterPush { platform, token, .. } => {
                    let basic = validate_push_token(token);
                    let full = validate_push_registration(*platform, token);
                    assert!(basic.is_ok() || full.is_err(), "a token refused by the size check passed the full one");
                }
                ClientFrame::Heartbeat { .. } | ClientFrame::InboxWatch { .. } => {}
                ClientFrame::InboxList { query, .. } => {
                    let _ = query.validate();
                }
                ClientFrame::InboxMark { op_id, ids, .. } => {
                    let _ = validate_op_id(op_id);
                    for id in ids {
                        let _ = validate_id(id);
                    }
                }
                ClientFrame::InboxMarkAll { op_id, .. } => {
                    let _ = validate_op_id(op_id);
                }
                ClientFrame::History { stream, .. } => {
                    let _ = StreamName::parse(stream);
                }
            }
            let encoded = encode_client_frame(&frame);
            assert_eq!(decode_client_frame(&encoded).as_ref(), Ok(&frame), "client frame round trip: {encoded}");
        }
        Err(r) => {
            assert_eq!(r.fatal, r.code != ErrorCode::BadRequest, "{r:?}");
            assert!(!r.message.is_empty());
            match r.code {
                ErrorCode::BadRequest => match r.op {
                    Some(
                        "subscribe" | "unsubscribe" | "register_push" | "inbox_watch" | "inbox_list" | "inbox_mark"
                        | "inbox_mark_all" | "history",
                    ) => assert!(r.reference.is_some(), "{r:?}"),
                    Some("ack" | "heartbeat") => assert!(r.reference.is_none(), "{r:?}"),
                    other => panic!("bad_request for {other:?}: {r:?}"),
                },
                ErrorCode::Unauthorized => assert_eq!(r.op, Some("auth"), "{r:?}"),
                ErrorCode::ProtocolError => assert!(r.reference.is_none(), "{r:?}"),
                other => panic!("unexpected code {other:?}: {r:?}"),
            }
            let answer = ServerFrame::Error(ErrorFrame {
                reference: r.reference,
                stream: None,
                code: r.code,
                message: r.message.clone(),
                retry_after_ms: None,
            });
            let encoded = encode_server_frame(&answer);
            assert_eq!(decode_server_frame(&encoded).as_ref(), Ok(&answer), "error frame round trip: {encoded}");
        }
    }
});
