//! Microbenchmarks of the client login path: decoding the startup packet, the server side of
//! a SCRAM-SHA-256 exchange against a stored verifier (what pgvane does for every client
//! login), the client side pgvane runs when it logs in to a backend with a password, and md5.
//!
//! Run with `cargo bench --bench auth`.

use std::hint::black_box;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, Mac};
use pgvane::auth::{
    md5_client_response, md5_stored, md5_verify, ScramClient, ScramServer, ScramVerifier,
};
use pgvane::protocol;
use sha2::{Digest, Sha256};

const PASSWORD: &str = "bench-secret";
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// What a client derives from the password once (PBKDF2 with the verifier's salt and
/// iterations): the ClientKey. Real clients pay this on every login; the benchmark pays it
/// once so that only the server's work is measured.
fn client_key(v: &ScramVerifier) -> [u8; 32] {
    // Hi(password, salt, i) = PBKDF2-HMAC-SHA256, one block.
    let mut u = {
        let mut m = Hmac::<Sha256>::new_from_slice(PASSWORD.as_bytes()).unwrap();
        m.update(&v.salt);
        m.update(&1u32.to_be_bytes());
        let r: [u8; 32] = m.finalize().into_bytes().into();
        r
    };
    let mut salted = u;
    for _ in 1..v.iterations {
        u = hmac_sha256(PASSWORD.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let ck = hmac_sha256(&salted, b"Client Key");
    assert_eq!(
        <[u8; 32]>::from(Sha256::digest(ck)),
        v.stored_key,
        "derived key matches verifier"
    );
    ck
}

/// client-final-message for a server-first-message, given the precomputed ClientKey.
fn client_final(client_first_bare: &str, server_first: &str, ck: &[u8; 32]) -> Vec<u8> {
    let nonce = server_first
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .expect("server nonce");
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let stored_key: [u8; 32] = Sha256::digest(ck).into();
    let sig = hmac_sha256(&stored_key, auth_message.as_bytes());
    let mut proof = *ck;
    for (p, s) in proof.iter_mut().zip(sig) {
        *p ^= s;
    }
    format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
}

fn bench_startup(c: &mut Criterion) {
    let mut pkt = BytesMut::new();
    protocol::startup_message(
        &mut pkt,
        &[
            ("user", "app"),
            ("database", "app"),
            ("application_name", "pgbench"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
        ],
    );
    let body = pkt[4..].to_vec();
    c.bench_function("startup/parse_startup", |b| {
        b.iter(|| black_box(protocol::parse_startup(black_box(&body)).unwrap()))
    });
}

fn bench_scram(c: &mut Criterion) {
    let stored = postgres_protocol::password::scram_sha_256(PASSWORD.as_bytes());
    let verifier = ScramVerifier::parse(&stored).unwrap();
    let ck = client_key(&verifier);
    let client_first_bare = format!("n=,r={CLIENT_NONCE}");
    let client_first = format!("n,,{client_first_bare}");

    let mut g = c.benchmark_group("scram");
    g.bench_function("verifier_parse", |b| {
        b.iter(|| black_box(ScramVerifier::parse(black_box(&stored)).unwrap()))
    });

    // The server's whole exchange: client-first → server-first → client-final → verify
    // (plus building the client's proof, one HMAC, which is part of the loop).
    g.bench_function("server_exchange", |b| {
        b.iter(|| {
            let mut server = ScramServer::new(verifier.clone());
            let sf = server.handle_client_first(client_first.as_bytes()).unwrap();
            let sf = std::str::from_utf8(&sf).unwrap();
            let cf = client_final(&client_first_bare, sf, &ck);
            black_box(server.handle_client_final(&cf).unwrap())
        })
    });

    // Both sides with pgvane's ScramClient, which derives the salted password (PBKDF2, 4096
    // iterations) every time: what a backend login with a plain `server_password` costs.
    g.sample_size(20);
    g.bench_function("client_and_server_with_pbkdf2", |b| {
        b.iter(|| {
            let mut server = ScramServer::new(verifier.clone());
            let mut client = ScramClient::new(PASSWORD);
            let sf = server.handle_client_first(&client.client_first()).unwrap();
            let cf = client.handle_server_first(&sf).unwrap();
            let fin = server.handle_client_final(&cf).unwrap();
            client.handle_server_final(&fin).unwrap();
        })
    });
    g.finish();
}

fn bench_md5(c: &mut Criterion) {
    let stored = md5_stored("app", PASSWORD);
    let salt = [0x1f, 0x2e, 0x3d, 0x4c];
    let response = md5_client_response("app", PASSWORD, salt);
    assert!(md5_verify(&stored, salt, response.as_bytes()));
    c.bench_function("md5/verify", |b| {
        b.iter(|| {
            black_box(md5_verify(
                black_box(&stored),
                salt,
                black_box(response.as_bytes()),
            ))
        })
    });
}

criterion_group!(benches, bench_startup, bench_scram, bench_md5);
criterion_main!(benches);
