//! Fuzz target: the response state machine (`src/client/tracker/pending.rs`).
//!
//! Owns: driving the pure tracker with an arbitrary interleaving of frontend frames (what a
//! session forwards to a server) and backend frames (what a server answers), and checking its
//! invariants: it never panics; it never forwards more ReadyForQuery than the client asked
//! for (one per Sync, Query or FunctionCall); a server is reusable only when nothing is owed
//! and no batch or COPY is open; once out of step it stays out of step.
//!
//! Must not: do I/O.
//!
//! Input layout: a stream of records `[dir, tag, len_be32, body]`: `dir` even = frontend
//! frame, odd = backend frame; frames are split with `protocol::split_frame`, so the seeds can
//! be real traffic (fuzz/corpus/response_tracker/).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgvane::client::tracker::{Owed, Pending, Step};
use pgvane::protocol;

/// What the session records for a frontend frame it forwards.
fn sent(t: &mut Pending, frame: &Bytes) -> usize {
    match frame[0] {
        b'Q' => {
            t.sent(Owed::Query { set: None, ok: false });
            1
        }
        b'P' => {
            t.sent(Owed::Parse { stmt: None, swallow: frame.len() % 7 == 0 });
            0
        }
        b'B' => {
            t.sent(Owed::Bind { stmt: None, frame: frame.clone(), retried: false });
            0
        }
        b'D' => {
            t.sent(Owed::Describe { frame: frame.clone() });
            0
        }
        b'E' => {
            t.sent(Owed::Execute { set: None, frame: frame.clone() });
            0
        }
        b'C' => {
            t.sent(Owed::Close { stmt: None, swallow: false });
            0
        }
        b'S' => {
            t.sent(Owed::Sync);
            1
        }
        b'F' => {
            t.sent(Owed::Function);
            1
        }
        b'H' => {
            t.sent_flush();
            0
        }
        b'c' | b'f' => {
            t.sent_copy_end();
            0
        }
        b'1' => {
            // Use a frontend-impossible tag to exercise synthetic answers.
            let _ = t.synthetic(frame.clone());
            0
        }
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut t = Pending::new();
    let mut asked = 0usize; // ReadyForQuery the client may expect (upper bound)
    let mut answered = 0usize;
    let mut rest = data;
    while let Some((&dir, tail)) = rest.split_first() {
        let mut buf = BytesMut::from(tail);
        let Ok(Some(frame)) = protocol::split_frame(&mut buf, 1 << 20) else {
            break;
        };
        rest = &tail[frame.len()..];
        if dir & 1 == 0 {
            asked += sent(&mut t, &frame);
            continue;
        }
        while t.take_synthetic().is_some() {}
        let was_desynced = t.desync().is_some();
        match t.on_server(&frame) {
            Ok(step) => {
                assert!(!was_desynced, "a desynced tracker accepted a message");
                if let Step::Ready { forward: true, .. } = step {
                    answered += 1;
                    assert!(answered <= asked, "more ReadyForQuery than Syncs/Queries");
                }
            }
            Err(_) => assert!(t.desync().is_some()),
        }
        if t.reusable() {
            assert!(t.is_empty() && !t.open_batch() && t.desync().is_none());
        }
    }
    let (readies, _) = t.abandon();
    assert!(answered + readies <= asked);
    assert!(t.reusable());
});
