//! Fuzz target: the frontend message decoder.
//!
//! Owns: feeding arbitrary bytes through `protocol::split_frame` (as the session reads a
//! client's stream) and every frontend parse function on each frame, checking that nothing
//! panics and that what is decoded re-encodes to the very bytes it came from (pgvane
//! rebuilds Parse/Bind/Describe/Close frames with renamed statements, so a lossy decode
//! would send a server something the client never sent).
//!
//! Must not: do I/O or keep state between runs.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgvane::protocol;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the frame size limit, so both the "too large" path and the
    // normal one are reached (pgvane's default is 256 MiB; 64 bytes makes small inputs hit it).
    let (limit, stream) = match data.split_first() {
        Some((&b, rest)) if b & 1 == 1 => (64, rest),
        Some((_, rest)) => (1 << 20, rest),
        None => return,
    };
    // Feed the stream in two chunks, like two socket reads, to exercise "need more bytes".
    let cut = stream.len() / 2;
    let mut buf = BytesMut::from(&stream[..cut]);
    let mut fed_rest = false;
    let mut total = 0usize;
    loop {
        match protocol::split_frame(&mut buf, limit) {
            Ok(Some(frame)) => {
                let declared = i32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
                assert_eq!(frame.len(), declared as usize + 1, "frame length mismatch");
                assert!(frame.len() <= limit + 1, "frame over the limit");
                total += frame.len();
                decode_frame(&frame);
            }
            Ok(None) if !fed_rest => {
                buf.extend_from_slice(&stream[cut..]);
                fed_rest = true;
            }
            Ok(None) => {
                // Whatever is left is an incomplete frame: nothing was lost or invented.
                assert_eq!(total + buf.len(), stream.len(), "bytes lost in framing");
                break;
            }
            Err(_) => break,
        }
    }
});

/// Every decoder pgvane applies to a client frame, whatever its tag (the session picks one
/// by tag, but none of them may panic on any frame). Round trips are checked where pgvane
/// re-encodes.
fn decode_frame(frame: &[u8]) {
    if let Ok(p) = protocol::parse_parse(frame) {
        let mut out = BytesMut::new();
        protocol::parse_msg(&mut out, p.name, p.query, p.param_types);
        if frame[0] == b'P' {
            assert_eq!(&out[..], frame, "Parse does not round-trip");
        }
    }
    if let Ok(b) = protocol::parse_bind(frame) {
        let mut out = BytesMut::new();
        protocol::bind_msg(&mut out, b.portal, b.statement, b.rest);
        if frame[0] == b'B' {
            assert_eq!(&out[..], frame, "Bind does not round-trip");
        }
        if let Ok(params) = protocol::bind_params(b.rest) {
            for (_, v) in params {
                if let Some(v) = v {
                    assert!(v.len() <= b.rest.len());
                }
            }
        }
    }
    let _ = protocol::bind_params(protocol::body(frame));
    if let Ok((kind, name)) = protocol::parse_target(frame) {
        assert!(kind == b'S' || kind == b'P');
        let mut out = BytesMut::new();
        protocol::target_msg(&mut out, frame[0], kind, name);
        // Describe/Close end at the name's terminator; a re-encoded frame is the prefix.
        assert!(out.len() <= frame.len());
        assert_eq!(
            &out[5..],
            &frame[5..out.len()],
            "Describe/Close name mangled"
        );
    }
    if let Ok(sql) = protocol::query_text(frame) {
        assert!(!sql.contains(&0));
    }
    let _ = protocol::parse_sasl_initial(frame);
    // PasswordMessage as the cleartext/md5 paths read it.
    let mut b = protocol::body(frame);
    let _ = protocol::read_cstr(&mut b);
    // Backend-message readers run on server frames; a broken server must not panic us either.
    let _ = protocol::parse_error(frame);
    let mut out = BytesMut::new();
    protocol::downgrade_fatal(frame, &mut out);
    let mut copy = out.clone();
    let again = protocol::split_frame(&mut copy, usize::MAX >> 1);
    assert!(
        matches!(again, Ok(Some(ref f)) if f.len() == out.len()),
        "downgrade_fatal frame"
    );
    let _ = protocol::parse_auth_request(frame);
    let _ = protocol::parse_parameter_status(frame);
    let _ = protocol::parse_backend_key(frame);
    let _ = protocol::command_tag(frame);
}
