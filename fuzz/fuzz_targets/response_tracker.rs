//! Fuzz target (skeleton, not built yet): the response state machine in
//! `src/client/tracker/` (the lead adds it; this file is registered in Cargo.toml once
//! `src/client/tracker/pending.rs` exists — uncomment the `[[bin]]` there).
//!
//! Owns: driving the pure tracker with an arbitrary interleaving of frontend frames (what a
//! client sends) and backend frames (what a server answers), and checking its invariants:
//! it never panics; every frame the client sent is answered exactly once and in order (a
//! ReadyForQuery per Sync or Query, never one the client did not ask for); a server is
//! "released" only when nothing is pending; a server in an unknown state is retired, not
//! returned to the pool.
//!
//! Must not: do I/O.
//!
//! Input layout: a stream of records `[dir, tag, len_be32, body]`: `dir` even = frontend
//! frame, odd = backend frame; the frames are split with `protocol::split_frame`, so the
//! seed corpus can be real traffic (fuzz/corpus/frontend_decoder/ frames interleaved with
//! backend replies captured from PostgreSQL).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgvane::protocol;

fuzz_target!(|data: &[u8]| {
    // TODO(lead): let mut t = pgvane::client::tracker::Pending::new(...);
    let mut rest = data;
    while let Some((&dir, tail)) = rest.split_first() {
        let mut buf = BytesMut::from(tail);
        let Ok(Some(frame)) = protocol::split_frame(&mut buf, 1 << 20) else {
            break;
        };
        rest = &tail[frame.len()..];
        if dir & 1 == 0 {
            // TODO(lead): t.client_sent(&frame) — what the session forwards to the server.
        } else {
            // TODO(lead): let verdict = t.server_sent(&frame);
            // assert the verdict is consistent: forward / swallow / release / retire, e.g.
            //   if verdict.releases() { assert!(t.is_idle()); }
        }
    }
    // TODO(lead): at the end, t.is_idle() implies every Sync/Query got its ReadyForQuery.
});
