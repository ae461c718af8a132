//! Fuzz target: the startup and SCRAM-SHA-256 login exchange as a client drives it.
//!
//! Owns: `protocol::parse_startup` on an arbitrary startup packet body, the startup
//! parameters' `options` decoding, `protocol::parse_sasl_initial` on an arbitrary
//! SASLInitialResponse, and `auth::ScramServer` client-first / client-final handling with
//! arbitrary messages; checks nothing panics and no forged exchange is accepted.
//!
//! Must not: do I/O or keep state between runs (the verifier is built once, read-only).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgvane::auth::{ScramServer, ScramVerifier};
use pgvane::protocol;

/// Fuzz input layout: three parts separated by the byte pair `0xFF 0x00`
/// (startup body, SASLInitialResponse frame, client-final). In the client-final the token
/// `@N` is replaced by the exchange's real nonce, so the fuzzer gets past the nonce check
/// (the server nonce is random) and exercises attribute and proof handling.
const SEP: &[u8] = b"\xff\x00";

fn verifier() -> ScramVerifier {
    static V: OnceLock<ScramVerifier> = OnceLock::new();
    V.get_or_init(|| ScramVerifier::from_password("fuzz-secret"))
        .clone()
}

fn split_parts(data: &[u8]) -> [&[u8]; 3] {
    let mut parts = [&[][..]; 3];
    let mut rest = data;
    for slot in parts.iter_mut().take(2) {
        match rest.windows(2).position(|w| w == SEP) {
            Some(i) => {
                *slot = &rest[..i];
                rest = &rest[i + 2..];
            }
            None => {
                *slot = rest;
                rest = &[];
            }
        }
    }
    parts[2] = rest;
    parts
}

fuzz_target!(|data: &[u8]| {
    let [startup, sasl_initial, client_final] = split_parts(data);

    if let Ok(protocol::Startup::Startup { params, .. }) = protocol::parse_startup(startup) {
        let _ = pgvane::params::from_startup(&params);
        for (k, v) in &params {
            if k == "options" {
                let _ = pgvane::params::parse_options(v);
            }
        }
    }

    // SASLInitialResponse: the frame as pgvane's login reads it ('p' + length + body).
    let mut frame = Vec::with_capacity(sasl_initial.len() + 5);
    frame.push(b'p');
    frame.extend_from_slice(&(sasl_initial.len() as i32 + 4).to_be_bytes());
    frame.extend_from_slice(sasl_initial);
    let client_first = match protocol::parse_sasl_initial(&frame) {
        Ok((_, data)) => data,
        Err(_) => sasl_initial,
    };

    let mut server = ScramServer::new(verifier());
    let Ok(server_first) = server.handle_client_first(client_first) else {
        // An error is terminal: a client-final must be refused afterwards.
        assert!(server.handle_client_final(client_final).is_err());
        return;
    };
    let sf = std::str::from_utf8(&server_first).expect("server-first is UTF-8");
    let nonce = sf
        .strip_prefix("r=")
        .and_then(|s| s.split(',').next())
        .expect("server-first starts with r=<nonce>");
    let fin = replace_token(client_final, b"@N", nonce.as_bytes());
    // No valid proof can be built without the password: a fuzzer that "logs in" found a bug.
    assert!(
        server.handle_client_final(&fin).is_err(),
        "forged SCRAM client-final accepted: {:?}",
        String::from_utf8_lossy(&fin)
    );
    assert!(server.handle_client_final(&fin).is_err(), "replay accepted");
    assert!(
        server.handle_client_first(client_first).is_err(),
        "restart accepted"
    );
});

fn replace_token(hay: &[u8], token: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len() + with.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(token) {
            out.extend_from_slice(with);
            i += token.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}
