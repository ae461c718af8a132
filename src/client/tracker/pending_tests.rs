//! Every message sequence of the protocol, as byte frames, through [`Pending`].

use super::*;
use bytes::Bytes;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

fn complete(tag: &str) -> Vec<u8> {
    let mut b = tag.as_bytes().to_vec();
    b.push(0);
    msg(b'C', &b)
}

fn error() -> Vec<u8> {
    msg(b'E', b"SERROR\0C42601\0Msyntax error\0\0")
}

fn describe(kind: u8) -> Owed {
    Owed::Describe {
        frame: Bytes::from(msg(b'D', &[kind, 0])),
        stmt: None,
        probe: false,
    }
}

/// pgvane's own Describe of a statement, to learn its shape.
fn probe() -> Owed {
    Owed::Describe {
        frame: Bytes::from(msg(b'D', &[b'S', 0])),
        stmt: None,
        probe: true,
    }
}

fn parse() -> Owed {
    Owed::Parse {
        stmt: None,
        swallow: false,
    }
}

fn bind() -> Owed {
    Owed::Bind {
        stmt: None,
        frame: Bytes::new(),
        retried: false,
        refuse: None,
        first_use: false,
    }
}

fn execute() -> Owed {
    Owed::Execute {
        set: None,
        frame: Bytes::new(),
    }
}

fn query() -> Owed {
    Owed::Query {
        set: None,
        ok: false,
    }
}

/// Feed frames; return a compact trace: F forward, S swallow, f/s forward/swallow + done,
/// E(n) error skipping n, R/r ready forwarded/swallowed, ! desync.
fn feed(p: &mut Pending, frames: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for f in frames {
        match p.on_server(f) {
            Ok(Step::Forward) => out.push('F'),
            Ok(Step::Swallow) => out.push('S'),
            Ok(Step::ForwardDone(_)) => out.push('f'),
            Ok(Step::SwallowDone(_)) => out.push('s'),
            Ok(Step::Error { skipped }) => out.push_str(&format!("E{}", skipped.len())),
            Ok(Step::Ready { forward: true, .. }) => out.push('R'),
            Ok(Step::Ready { forward: false, .. }) => out.push('r'),
            Err(_) => out.push('!'),
        }
    }
    out
}

#[test]
fn simple_query_round_trip() {
    let mut p = Pending::new();
    p.sent(query());
    assert!(!p.reusable());
    let t = feed(
        &mut p,
        &[
            msg(b'T', &[0, 0]),
            msg(b'D', &[0, 0]),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "FFFR");
    assert!(p.reusable());
}

#[test]
fn parse_error_then_flush_then_sync_later() {
    // The reproduction: the error answers the Parse, but the server waits for a Sync.
    let mut p = Pending::new();
    p.sent(parse());
    p.sent_flush();
    assert_eq!(feed(&mut p, &[error()]), "E1");
    assert!(p.is_empty());
    assert!(p.skipping());
    assert!(
        !p.reusable(),
        "a server skipping to Sync must not be reused"
    );
    // Messages sent before the Sync are discarded by the server: nothing is owed for them.
    p.sent(bind());
    p.sent(execute());
    assert!(p.is_empty());
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[ready(b'I')]), "R");
    assert!(p.reusable());
}

#[test]
fn flush_without_sync_keeps_the_batch_open() {
    let mut p = Pending::new();
    for o in [parse(), bind(), describe(b'P'), execute()] {
        p.sent(o);
    }
    p.sent_flush();
    let t = feed(
        &mut p,
        &[
            msg(b'1', &[]),
            msg(b'2', &[]),
            msg(b'T', &[0, 0]),
            msg(b'D', &[0, 0]),
            complete("SELECT 1"),
        ],
    );
    assert_eq!(t, "fffFf");
    assert!(p.is_empty());
    assert!(p.open_batch());
    assert!(
        !p.reusable(),
        "an open implicit transaction must not be reused"
    );
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[ready(b'I')]), "R");
    assert!(p.reusable());
}

#[test]
fn error_skips_to_the_next_sync_of_pipelined_batches() {
    let mut p = Pending::new();
    for o in [
        parse(),
        bind(),
        execute(),
        Owed::Sync,
        parse(),
        bind(),
        execute(),
        Owed::Sync,
    ] {
        p.sent(o);
    }
    // First batch fails at Bind: Bind and Execute are skipped, the Sync still answers.
    let t = feed(&mut p, &[msg(b'1', &[]), error(), ready(b'I')]);
    assert_eq!(t, "fE2R");
    let t = feed(
        &mut p,
        &[
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "fffR");
    assert!(p.reusable());
}

#[test]
fn error_after_flush_with_more_messages_pipelined() {
    let mut p = Pending::new();
    for o in [parse(), bind(), execute()] {
        p.sent(o);
    }
    p.sent_flush();
    for o in [parse(), bind(), execute()] {
        p.sent(o);
    }
    let t = feed(&mut p, &[msg(b'1', &[]), msg(b'2', &[]), error()]);
    assert_eq!(t, "ffE4");
    assert!(p.skipping());
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[ready(b'I')]), "R");
    assert!(p.reusable());
}

#[test]
fn describe_statement_and_portal_and_unknown_names() {
    let mut p = Pending::new();
    p.sent(describe(b'S'));
    p.sent(Owed::Sync);
    let t = feed(&mut p, &[msg(b't', &[0, 0]), msg(b'n', &[]), ready(b'I')]);
    assert_eq!(t, "FfR");
    p.sent(describe(b'P'));
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[msg(b'T', &[0, 0]), ready(b'I')]), "fR");
    // Unknown name: an error, then the Sync.
    p.sent(describe(b'S'));
    p.sent(Owed::Close {
        stmt: None,
        swallow: false,
    });
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[error(), ready(b'I')]), "E2R");
    // A portal Describe answered with ParameterDescription is out of step.
    p.sent(describe(b'P'));
    assert_eq!(feed(&mut p, &[msg(b't', &[0, 0])]), "!");
    assert!(!p.reusable());
}

#[test]
fn a_shape_probe_is_swallowed_and_answers_in_order() {
    // pgvane's inline Parse and Describe before the client's Bind, all before one Flush.
    let mut p = Pending::new();
    p.sent(Owed::Parse {
        stmt: None,
        swallow: true,
    });
    p.sent(probe());
    p.sent(bind());
    p.sent(Owed::Sync);
    let t = feed(
        &mut p,
        &[
            msg(b'1', &[]),
            msg(b't', &[0, 0]),
            msg(b'T', &[0, 0]),
            msg(b'2', &[]),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "sSsfR");
    assert!(p.reusable());
    // A probe of a statement that fails (stale): the error skips the client's Bind too.
    p.sent(probe());
    p.sent(bind());
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[error(), ready(b'I')]), "E2R");
    assert!(p.reusable());
}

#[test]
fn execute_with_row_limit_and_portal_suspended() {
    let mut p = Pending::new();
    for o in [parse(), bind(), execute(), execute(), Owed::Sync] {
        p.sent(o);
    }
    let t = feed(
        &mut p,
        &[
            msg(b'1', &[]),
            msg(b'2', &[]),
            msg(b'D', &[0, 0]),
            msg(b'D', &[0, 0]),
            msg(b's', &[]),
            msg(b'D', &[0, 0]),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "ffFFfFfR");
    assert!(p.reusable());
}

#[test]
fn copy_in_simple_query() {
    let mut p = Pending::new();
    p.sent(query());
    assert_eq!(feed(&mut p, &[msg(b'G', &[0, 0, 0])]), "F");
    assert_eq!(p.copy(), Copy::In);
    assert!(!p.reusable());
    p.sent_copy_end();
    assert_eq!(feed(&mut p, &[complete("COPY 2"), ready(b'I')]), "FR");
    assert!(p.reusable());
}

#[test]
fn copy_in_extended_with_pipelined_sync() {
    let mut p = Pending::new();
    for o in [parse(), bind(), execute(), Owed::Sync] {
        p.sent(o);
    }
    // The server ignores the Sync it reads while in COPY IN mode.
    let t = feed(
        &mut p,
        &[msg(b'1', &[]), msg(b'2', &[]), msg(b'G', &[0, 0, 0])],
    );
    assert_eq!(t, "ffF");
    assert_eq!(p.len(), 1);
    p.sent(Owed::Sync); // during COPY: ignored too
    assert_eq!(p.len(), 1);
    p.sent_copy_end();
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[complete("COPY 3"), ready(b'I')]), "fR");
    assert!(p.reusable());
}

#[test]
fn copy_fail_is_an_error_then_ready() {
    let mut p = Pending::new();
    p.sent(query());
    assert_eq!(feed(&mut p, &[msg(b'G', &[0, 0, 0])]), "F");
    p.sent_copy_end();
    assert_eq!(feed(&mut p, &[error(), ready(b'I')]), "E0R");
    assert!(p.reusable());
}

#[test]
fn copy_out_simple_and_extended() {
    let mut p = Pending::new();
    p.sent(query());
    let t = feed(
        &mut p,
        &[
            msg(b'H', &[0, 0, 0]),
            msg(b'd', b"1\n"),
            msg(b'd', b"2\n"),
            msg(b'c', &[]),
            complete("COPY 2"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "FFFFFR");
    for o in [parse(), bind(), execute(), Owed::Sync] {
        p.sent(o);
    }
    let t = feed(
        &mut p,
        &[
            msg(b'1', &[]),
            msg(b'2', &[]),
            msg(b'H', &[0, 0, 0]),
            msg(b'd', b"5\n"),
            msg(b'c', &[]),
            complete("COPY 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "ffFFFfR");
    assert!(p.reusable());
    // ReadyForQuery in the middle of COPY OUT is out of step.
    p.sent(query());
    assert_eq!(feed(&mut p, &[msg(b'H', &[0, 0, 0]), ready(b'I')]), "F!");
}

#[test]
fn function_call_result_and_error() {
    let mut p = Pending::new();
    p.sent(Owed::Function);
    assert_eq!(
        feed(&mut p, &[msg(b'V', &[0, 0, 0, 1, 7]), ready(b'I')]),
        "FR"
    );
    p.sent(Owed::Function);
    assert_eq!(feed(&mut p, &[error(), ready(b'I')]), "E0R");
    assert!(p.reusable());
}

#[test]
fn empty_queries() {
    let mut p = Pending::new();
    p.sent(query());
    assert_eq!(feed(&mut p, &[msg(b'I', &[]), ready(b'I')]), "FR");
    for o in [parse(), bind(), execute(), Owed::Sync] {
        p.sent(o);
    }
    let t = feed(
        &mut p,
        &[msg(b'1', &[]), msg(b'2', &[]), msg(b'I', &[]), ready(b'I')],
    );
    assert_eq!(t, "fffR");
    assert!(p.reusable());
}

#[test]
fn unasked_messages_are_a_desync() {
    for frame in [
        ready(b'I'),
        msg(b'D', &[0, 0]),
        msg(b'1', &[]),
        complete("SELECT 1"),
    ] {
        let mut p = Pending::new();
        assert!(p.on_server(&frame).is_err(), "{frame:?}");
        assert!(p.desync().is_some());
        assert!(!p.reusable());
        // Once out of step, always out of step.
        p.sent(query());
        assert!(p.on_server(&ready(b'I')).is_err());
    }
    let mut p = Pending::new();
    p.sent(query());
    assert_eq!(feed(&mut p, &[msg(b'1', &[])]), "!");
    let mut p = Pending::new();
    p.sent(parse());
    assert_eq!(feed(&mut p, &[ready(b'I')]), "!");
    let mut p = Pending::new();
    p.sent(query());
    assert_eq!(feed(&mut p, &[msg(b'Z', b"X")]), "!", "bad status byte");
}

#[test]
fn async_messages_pass_anywhere() {
    let mut p = Pending::new();
    let t = feed(
        &mut p,
        &[
            msg(b'N', b"SNOTICE\0\0"),
            msg(b'S', b"a\0b\0"),
            msg(b'A', &[0, 0, 0, 1, b'c', 0, 0]),
        ],
    );
    assert_eq!(t, "FFF");
    assert!(p.reusable());
}

#[test]
fn set_success_is_reported_with_the_ready() {
    let mut p = Pending::new();
    let set = crate::params::parse_set("SET search_path = a");
    assert!(set.is_some());
    p.sent(Owed::Query { set, ok: false });
    feed(&mut p, &[complete("SET")]);
    match p.on_server(&ready(b'I')) {
        Ok(Step::Ready {
            owed: Owed::Query { ok: true, .. },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let set = crate::params::parse_set("SET search_path = a");
    p.sent(Owed::Query { set, ok: false });
    feed(&mut p, &[error()]);
    match p.on_server(&ready(b'I')) {
        Ok(Step::Ready {
            owed: Owed::Query { ok: false, .. },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn transaction_status_decides_reuse() {
    let mut p = Pending::new();
    p.sent(query());
    feed(&mut p, &[complete("BEGIN"), ready(b'T')]);
    assert_eq!(p.tx(), TxStatus::InBlock);
    assert!(!p.reusable());
    p.sent(query());
    feed(&mut p, &[error(), ready(b'E')]);
    assert_eq!(p.tx(), TxStatus::Failed);
    p.sent(query());
    feed(&mut p, &[complete("ROLLBACK"), ready(b'I')]);
    assert!(p.reusable());
}

#[test]
fn synthetic_answers_keep_their_place() {
    let mut p = Pending::new();
    // Nothing owed: goes out at once.
    assert!(p.synthetic(Bytes::from_static(b"x")).is_some());
    p.sent(parse());
    assert!(p.synthetic(Bytes::from_static(b"y")).is_none());
    assert_eq!(p.take_synthetic(), None, "behind the Parse");
    assert_eq!(feed(&mut p, &[msg(b'1', &[])]), "f");
    assert_eq!(p.take_synthetic(), Some(Bytes::from_static(b"y")));
    assert!(p.is_empty());
}

#[test]
fn synthetic_answers_are_dropped_with_the_failed_batch() {
    let mut p = Pending::new();
    p.sent(parse());
    p.synthetic(Bytes::from_static(b"pc"));
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[error()]), "E2");
    assert_eq!(p.take_synthetic(), None);
    // And while the server skips to Sync, none are queued.
    let mut p = Pending::new();
    p.sent(parse());
    feed(&mut p, &[error()]);
    assert!(p.synthetic(Bytes::from_static(b"pc")).is_none());
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[ready(b'I')]), "R");
}

#[test]
fn internal_statements_and_injected_parses_are_swallowed() {
    let mut p = Pending::new();
    p.sent(Owed::Internal);
    p.sent(Owed::Parse {
        stmt: None,
        swallow: true,
    });
    p.sent(bind());
    p.sent(Owed::Sync);
    let t = feed(
        &mut p,
        &[
            complete("BEGIN"),
            ready(b'T'),
            msg(b'1', &[]),
            msg(b'2', &[]),
            ready(b'T'),
        ],
    );
    assert_eq!(t, "SrsfR");
    assert_eq!(p.tx(), TxStatus::InBlock);
}

#[test]
fn abandon_counts_the_readies_the_client_expects() {
    let mut p = Pending::new();
    for o in [parse(), bind(), Owed::Sync, query()] {
        p.sent(o);
    }
    assert_eq!(p.abandon(), (2, true));
    assert!(p.reusable());
    let mut p = Pending::new();
    p.sent(parse());
    assert_eq!(p.abandon(), (0, true), "open batch without Sync");
}

#[test]
fn replay_swallows_the_original_ready() {
    let mut p = Pending::new();
    for o in [bind(), execute(), Owed::Sync] {
        p.sent(o);
    }
    assert_eq!(feed(&mut p, &[error()]), "E2");
    assert!(p.swallow_head_ready());
    for o in [bind(), execute(), Owed::Sync] {
        p.sent(o);
    }
    let t = feed(
        &mut p,
        &[
            ready(b'I'),
            msg(b'2', &[]),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "rffR");
    assert!(p.reusable());
}

#[test]
fn after_an_extended_error_queries_and_function_calls_are_skipped_too() {
    // PostgreSQL ignores every message until Sync after an extended-protocol error.
    let mut p = Pending::new();
    for o in [
        parse(),
        execute(),
        query(),
        Owed::Function,
        Owed::Sync,
        query(),
    ] {
        p.sent(o);
    }
    assert_eq!(feed(&mut p, &[error()]), "E4");
    let t = feed(
        &mut p,
        &[
            ready(b'I'),
            msg(b'T', &[0, 0]),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "RFFR");
    // And while skipping with nothing queued, a Query sent is not answered either.
    p.sent(parse());
    assert_eq!(feed(&mut p, &[error()]), "E1");
    p.sent(query());
    p.sent(Owed::Function);
    assert!(p.is_empty());
    p.sent(Owed::Sync);
    assert_eq!(feed(&mut p, &[ready(b'I')]), "R");
    assert!(p.reusable());
}

#[test]
fn an_error_at_sync_is_the_failed_implicit_commit() {
    let mut p = Pending::new();
    for o in [parse(), bind(), execute(), Owed::Sync] {
        p.sent(o);
    }
    let t = feed(
        &mut p,
        &[
            msg(b'1', &[]),
            msg(b'2', &[]),
            complete("INSERT 0 1"),
            error(),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "fffE0R");
    assert!(p.reusable());
}

#[test]
fn messages_after_the_sync_that_ends_skipping_are_answered() {
    // Found by the network fuzzer: Bind fails with nothing else queued; the client then
    // pipelines Sync, Sync, Query, Query — the queries run and must be owed.
    let mut p = Pending::new();
    for o in [bind(), Owed::Function, parse()] {
        p.sent(o);
    }
    assert_eq!(feed(&mut p, &[error()]), "E3");
    assert!(p.skipping());
    for o in [Owed::Sync, Owed::Sync, query(), query()] {
        p.sent(o);
    }
    assert_eq!(p.len(), 4);
    let t = feed(
        &mut p,
        &[
            ready(b'I'),
            ready(b'I'),
            complete("ROLLBACK"),
            ready(b'I'),
            msg(b'T', &[0, 0]),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "RRFRFFR");
    assert!(p.reusable());
}

#[test]
fn copy_data_pipelined_before_the_copy_in_response() {
    // Found by the network fuzzer: COPY, CopyData, CopyFail, an empty query, two Syncs and
    // two queries in one write. The Syncs after the CopyFail are answered normally.
    let mut p = Pending::new();
    p.sent(query());
    p.sent_copy_end();
    p.sent(query());
    p.sent(Owed::Sync);
    p.sent(Owed::Sync);
    p.sent(query());
    let t = feed(
        &mut p,
        &[
            msg(b'G', &[0, 0, 0]),
            error(),
            ready(b'I'),
            msg(b'I', &[]),
            ready(b'I'),
            ready(b'I'),
            ready(b'I'),
            complete("ROLLBACK"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "FE0RFRRRFR");
    assert!(p.reusable());
    // Extended: Execute of a COPY, Sync, CopyDone, Sync: the first Sync is read in COPY mode.
    for o in [parse(), bind(), execute(), Owed::Sync] {
        p.sent(o);
    }
    p.sent_copy_end();
    p.sent(Owed::Sync);
    let t = feed(
        &mut p,
        &[
            msg(b'1', &[]),
            msg(b'2', &[]),
            msg(b'G', &[0, 0, 0]),
            complete("COPY 0"),
            ready(b'I'),
        ],
    );
    assert_eq!(t, "ffFfR");
    assert!(p.reusable());
    // A CopyDone ahead of a statement that is no COPY is ignored by the server.
    p.sent(query());
    p.sent_copy_end();
    p.sent(Owed::Sync);
    let t = feed(&mut p, &[complete("SELECT 1"), ready(b'I'), ready(b'I')]);
    assert_eq!(t, "FRR");
    assert!(p.reusable());
}

#[test]
fn own_close_and_sync_after_a_batch_leave_the_server_reusable() {
    // A Bind failed (changed result type); pgvane closes the stale statement behind the
    // client's Sync with a Sync of its own, whose answer the client never sees.
    let mut p = Pending::new();
    for o in [bind(), execute(), Owed::Sync] {
        p.sent(o);
    }
    assert_eq!(feed(&mut p, &[error()]), "E2");
    p.sent(Owed::Close {
        stmt: None,
        swallow: true,
    });
    p.sent(Owed::SwallowReady);
    assert!(!p.open_batch(), "pgvane's own Sync ends the batch");
    assert_eq!(feed(&mut p, &[ready(b'I')]), "R");
    assert!(!p.reusable(), "the Close is still owed");
    assert_eq!(feed(&mut p, &[msg(b'3', &[]), ready(b'I')]), "sr");
    assert!(p.reusable());
}

#[test]
fn a_message_pipelined_behind_a_copy_ends_it_and_nothing_after_is_owed() {
    // Q(COPY ... FROM STDIN) then Q, or P B E S, sent together: PostgreSQL reads the next
    // message in COPY mode, reports it (ERROR 08P01) and ends the connection (FATAL), so
    // nothing after the COPY's own error is owed.
    for behind in [vec![query()], vec![parse(), bind(), execute(), Owed::Sync]] {
        let mut p = Pending::new();
        p.sent(query());
        for o in behind {
            p.sent(o);
        }
        assert_eq!(feed(&mut p, &[msg(b'G', &[0, 0, 0])]), "F");
        assert_eq!(p.copy(), Copy::None, "the COPY ends at that message");
        assert_eq!(p.len(), 1, "only the COPY's own answer is owed");
        assert_eq!(feed(&mut p, &[error()]), "E0");
    }
}
