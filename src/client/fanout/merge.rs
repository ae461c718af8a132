//! Streaming merge of several shards' answers to one simple Query, or to one translated
//! extended-protocol batch, into what one server would have said: frames in, frames out.
//!
//! Owns: the order in which shard streams are consumed (the heads of every shard's result
//! first, so that RowDescriptions and CopyOutResponses are compared before anything is sent,
//! then each shard's rows in shard order), summing CommandComplete counts, COPY TO merging
//! (one CopyOutResponse, one header line for CSV/text HEADER, one binary file header and
//! trailer, one CopyDone), the extended protocol's single answers (ParseComplete,
//! BindComplete, ParameterDescription, NoData, CloseComplete: sent once; pgvane's own Parses
//! hidden), rows of an Execute without a RowDescription before them, and what happens after a
//! shard error (forward it once, then drain every shard to ReadyForQuery).
//!
//! Must not: do I/O or buffer rows: every DataRow/CopyData goes to the output as it is fed,
//! so memory stays bounded by what the caller holds. Never panics on any frame.

use bytes::{Bytes, BytesMut};

use crate::protocol;

/// COPY TO details that change how CopyData is merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyOut {
    /// The first CopyData of each shard is a header line (text/CSV HEADER).
    pub header: bool,
    /// Binary format: a file header on the first message, a trailer at the end.
    pub binary: bool,
}

/// What the merge needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The next frame of shard `i`.
    Read(usize),
    /// Every shard reached ReadyForQuery.
    Done,
}

#[derive(Debug)]
enum State {
    /// Waiting for every shard's first message of the next result.
    Heads,
    /// Streaming shard `cur`'s DataRows.
    Rows {
        cur: usize,
    },
    /// Streaming shard `cur`'s CopyData (`done`: its CopyDone arrived, its tag is next).
    Copy {
        cur: usize,
        done: bool,
    },
    /// After an error: reading every shard up to ReadyForQuery, discarding.
    Drain,
    Finished,
}

/// The streaming merge of `n` shards' answers.
#[derive(Debug)]
pub struct Merge {
    n: usize,
    state: State,
    heads: Vec<Option<Bytes>>,
    tags: Vec<Vec<u8>>,
    /// The shard reached ReadyForQuery.
    ready: Vec<bool>,
    copy: CopyOut,
    /// Per shard: its first CopyData of the current COPY was seen.
    copy_started: Vec<bool>,
    /// Binary COPY: a shard's last message, held back to strip its trailer.
    held: Option<Bytes>,
    /// Hold the last CommandComplete until [`Merge::take_tail`] (for wrapped writes).
    hold_tags: bool,
    tail: BytesMut,
    failed: bool,
    /// Extended protocol: for each ParseComplete to come, whether the client asked for it.
    parse_visible: std::collections::VecDeque<bool>,
    /// A write to a table present on every shard (a reference table): the client sees the
    /// first shard's rows and tags (every shard did the same), not their sum.
    replicated: bool,
}

const BINARY_HEADER: usize = 19;

/// Why an Execute with a row limit is refused on several shards.
pub const ROW_LIMIT: &str = "an Execute with a row limit (a driver's fetch size) cannot run on several shards at once; fetch all rows, or add a /* pgvane: shard=N */ hint";

impl Merge {
    pub fn new(n: usize, copy: CopyOut, hold_tags: bool) -> Self {
        Merge {
            n,
            state: if n == 0 {
                State::Finished
            } else {
                State::Heads
            },
            heads: vec![None; n],
            tags: vec![Vec::new(); n],
            ready: vec![false; n],
            copy,
            copy_started: vec![false; n],
            held: None,
            hold_tags,
            tail: BytesMut::new(),
            failed: false,
            parse_visible: Default::default(),
            replicated: false,
        }
    }

    /// See `replicated`: the answer is the first shard's.
    pub fn replicated(mut self, on: bool) -> Self {
        self.replicated = on;
        self
    }

    /// Extended protocol: the batch's ParseCompletes, in order, and whether each goes to the
    /// client (false for a Parse pgvane added to prepare a named statement inline).
    pub fn parse_completes(mut self, visible: impl IntoIterator<Item = bool>) -> Self {
        self.parse_visible = visible.into_iter().collect();
        self
    }

    /// A shard reported an error (forwarded) or the shards disagreed.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Draining after an error (the caller may close a shard instead of reading it all).
    pub fn draining(&self) -> bool {
        matches!(self.state, State::Drain)
    }

    pub fn next(&self) -> Need {
        match self.state {
            State::Heads => match self.heads.iter().position(|h| h.is_none()) {
                Some(i) => Need::Read(i),
                None => Need::Done, // unreachable: heads are handled as they complete
            },
            State::Rows { cur } | State::Copy { cur, .. } => Need::Read(cur),
            State::Drain => match self.ready.iter().position(|r| !r) {
                Some(i) => Need::Read(i),
                None => Need::Done,
            },
            State::Finished => Need::Done,
        }
    }

    /// The held-back final CommandComplete (see `hold_tags`).
    pub fn take_tail(&mut self) -> BytesMut {
        std::mem::take(&mut self.tail)
    }

    /// Shard `i` is gone (connection failed or closed by the caller): report `error` once
    /// (unless one was already forwarded) and stop waiting for it.
    pub fn lost(&mut self, i: usize, error: Option<&str>, out: &mut BytesMut) {
        if let Some(r) = self.ready.get_mut(i) {
            *r = true;
        }
        if let Some(msg) = error {
            self.fail_with(out, |o| protocol::error_response(o, "ERROR", "08006", msg));
        } else if !self.failed {
            self.fail_with(out, |_| {});
        }
        if self.ready.iter().all(|r| *r) {
            self.state = State::Finished;
        }
    }

    fn fail_with(&mut self, out: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) {
        if !self.failed {
            // A held tag belongs to an earlier statement that completed: PostgreSQL sent it.
            out.extend_from_slice(&self.tail);
            self.tail.clear();
            write(out);
        }
        self.failed = true;
        self.state = if self.ready.iter().all(|r| *r) {
            State::Finished
        } else {
            State::Drain
        };
    }

    fn fail_msg(&mut self, out: &mut BytesMut, code: &str, msg: &str) {
        self.fail_with(out, |o| protocol::error_response(o, "ERROR", code, msg));
    }

    /// Feed frame `f` from shard `i` (the one [`Merge::next`] asked for).
    pub fn feed(&mut self, i: usize, f: Bytes, out: &mut BytesMut) {
        let Some(&tag) = f.first() else { return };
        if i >= self.n {
            return;
        }
        if tag == b'Z' {
            self.ready[i] = true;
        }
        if matches!(tag, b'N' | b'S' | b'A') {
            return;
        }
        match self.state {
            State::Finished => {}
            State::Drain => {
                if self.ready.iter().all(|r| *r) {
                    self.state = State::Finished;
                }
            }
            State::Heads => {
                if tag == b'E' {
                    // Report the first error right away; the other shards are drained.
                    self.fail_with(out, |o| o.extend_from_slice(&f));
                    return;
                }
                self.heads[i] = Some(f);
                if self.heads.iter().all(|h| h.is_some()) {
                    self.on_heads(out);
                }
            }
            State::Rows { cur } => match tag {
                b'D' => {
                    if !self.replicated || cur == 0 {
                        out.extend_from_slice(&f)
                    }
                }
                b'C' => {
                    self.tags[cur] = protocol::command_tag(&f).to_vec();
                    self.rows_from(cur + 1, out);
                }
                b'E' => self.fail_with(out, |o| o.extend_from_slice(&f)),
                b's' => self.fail_msg(out, "0A000", ROW_LIMIT),
                _ => self.fail_msg(out, "XX000", "unexpected message from a shard in a result"),
            },
            State::Copy { cur, done } => match (tag, done) {
                (b'd', false) => self.copy_data(cur, f, out),
                (b'c', false) => {
                    if let Some(h) = self.held.take() {
                        // The shard's last message ends with the trailer (-1): strip it.
                        let keep = h.len().saturating_sub(2);
                        if keep > 5 {
                            copy_data_frame(out, &h[5..keep]);
                        }
                    }
                    self.state = State::Copy { cur, done: true };
                }
                (b'C', true) => {
                    self.tags[cur] = protocol::command_tag(&f).to_vec();
                    self.copy_started[cur] = false;
                    if cur + 1 < self.n {
                        self.state = State::Copy {
                            cur: cur + 1,
                            done: false,
                        };
                    } else {
                        if self.copy.binary {
                            copy_data_frame(out, &[0xff, 0xff]);
                        }
                        out.extend_from_slice(&[b'c', 0, 0, 0, 4]);
                        self.emit_tags(out);
                    }
                }
                (b'E', _) => self.fail_with(out, |o| o.extend_from_slice(&f)),
                _ => self.fail_msg(out, "XX000", "unexpected message from a shard in COPY"),
            },
        }
    }

    fn copy_data(&mut self, cur: usize, f: Bytes, out: &mut BytesMut) {
        let first = !std::mem::replace(&mut self.copy_started[cur], true);
        if self.copy.binary {
            let mut f = f;
            if first && cur > 0 {
                // Every shard starts with the file header; only the first one is sent.
                let ext = f
                    .get(5 + 15..5 + 19)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .unwrap_or(0);
                let skip = (5 + BINARY_HEADER).saturating_add(ext).min(f.len());
                let mut rest = BytesMut::new();
                copy_data_frame(&mut rest, &f[skip..]);
                f = rest.freeze();
            }
            if let Some(h) = self.held.replace(f) {
                if h.len() > 5 {
                    out.extend_from_slice(&h);
                }
            }
            return;
        }
        if first && cur > 0 && self.copy.header {
            return; // the header line once
        }
        out.extend_from_slice(&f);
    }

    /// Stream shard `cur`'s rows next; a head that is already a DataRow (an Execute without
    /// a RowDescription before it) is sent first, and a head that is the CommandComplete of
    /// a shard without rows completes that shard at once.
    fn rows_from(&mut self, mut cur: usize, out: &mut BytesMut) {
        while cur < self.n {
            match self.heads[cur].take() {
                Some(h) if h[0] == b'D' => {
                    if !self.replicated || cur == 0 {
                        out.extend_from_slice(&h);
                    }
                    break;
                }
                Some(h) if h[0] == b'C' => {
                    self.tags[cur] = protocol::command_tag(&h).to_vec();
                    cur += 1;
                }
                _ => break,
            }
        }
        if cur < self.n {
            self.state = State::Rows { cur };
        } else {
            self.emit_tags(out);
        }
    }

    fn emit_tags(&mut self, out: &mut BytesMut) {
        let tags: Vec<&[u8]> = self.tags.iter().map(|t| t.as_slice()).collect();
        let merged = if self.replicated {
            String::from_utf8_lossy(tags.first().copied().unwrap_or_default()).into_owned()
        } else {
            super::merge_tags(&tags)
        };
        if self.hold_tags {
            self.tail.clear();
            protocol::command_complete(&mut self.tail, &merged);
        } else {
            protocol::command_complete(out, &merged);
        }
        self.reset_heads();
    }

    fn reset_heads(&mut self) {
        for h in &mut self.heads {
            *h = None;
        }
        self.state = State::Heads;
    }

    fn on_heads(&mut self, out: &mut BytesMut) {
        let heads: Vec<Bytes> = self.heads.iter().flatten().cloned().collect();
        let Some(first) = heads.first().cloned() else {
            return;
        };
        let kind = first[0];
        let rows_without_description =
            heads.iter().all(|h| matches!(h[0], b'D' | b'C')) && heads.iter().any(|h| h[0] == b'D');
        if heads.iter().any(|h| h[0] == b's') {
            return self.fail_msg(out, "0A000", ROW_LIMIT);
        }
        if rows_without_description {
            if !self.tail.is_empty() {
                out.extend_from_slice(&self.tail);
                self.tail.clear();
            }
            return self.rows_from(0, out);
        }
        if heads.iter().any(|h| h[0] != kind) {
            return self.fail_msg(out, "XX000", "shards returned results of different shapes");
        }
        if kind != b'Z' && !self.tail.is_empty() {
            // A new result starts: the held tag was not the last one.
            out.extend_from_slice(&self.tail);
            self.tail.clear();
        }
        match kind {
            b'Z' => self.state = State::Finished,
            b'T' => {
                if heads.iter().any(|h| !super::same_columns(h, &first)) {
                    return self.fail_msg(out, "XX000", "shards returned different row descriptions");
                }
                out.extend_from_slice(&first);
                self.state = State::Rows { cur: 0 };
            }
            b'H' => {
                if heads.iter().any(|h| h[..] != first[..]) {
                    return self.fail_msg(out, "XX000", "shards returned different COPY formats");
                }
                out.extend_from_slice(&first);
                self.held = None;
                self.state = State::Copy { cur: 0, done: false };
            }
            b'C' => {
                for (t, h) in self.tags.iter_mut().zip(&heads) {
                    *t = protocol::command_tag(h).to_vec();
                }
                self.emit_tags(out);
            }
            b'I' | b'2' | b'n' | b'3' => {
                out.extend_from_slice(&first);
                self.reset_heads();
            }
            b'1' => {
                if self.parse_visible.pop_front().unwrap_or(true) {
                    out.extend_from_slice(&first);
                }
                self.reset_heads();
            }
            b't' => {
                if heads.iter().any(|h| h[..] != first[..]) {
                    return self.fail_msg(out, "XX000", "shards described different parameter types");
                }
                out.extend_from_slice(&first);
                self.reset_heads();
            }
            b's' => self.fail_msg(out, "0A000", ROW_LIMIT),
            _ => self.fail_msg(
                out,
                "0A000",
                "this statement cannot run on several shards at once (pgvane cannot merge its answers); add a /* pgvane: shard=N */ hint",
            ),
        }
    }
}

fn copy_data_frame(out: &mut BytesMut, payload: &[u8]) {
    out.extend_from_slice(b"d");
    out.extend_from_slice(&((payload.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(f: impl FnOnce(&mut BytesMut)) -> Bytes {
        let mut b = BytesMut::new();
        f(&mut b);
        b.freeze()
    }
    fn t(name: &str) -> Bytes {
        msg(|b| protocol::row_description(b, &[name]))
    }
    fn d(v: &str) -> Bytes {
        msg(|b| protocol::data_row(b, &[Some(v)]))
    }
    fn c(tag: &str) -> Bytes {
        msg(|b| protocol::command_complete(b, tag))
    }
    fn z() -> Bytes {
        msg(|b| protocol::ready_for_query(b, b'I'))
    }
    fn e(code: &str) -> Bytes {
        msg(|b| protocol::error_response(b, "ERROR", code, "boom"))
    }
    fn cd(p: &[u8]) -> Bytes {
        msg(|b| copy_data_frame(b, p))
    }

    /// Run the merge over fixed streams, feeding whatever it asks for.
    fn run(streams: Vec<Vec<Bytes>>, copy: CopyOut) -> (BytesMut, bool, Vec<usize>) {
        let mut m = Merge::new(streams.len(), copy, false);
        let mut pos = vec![0; streams.len()];
        let mut out = BytesMut::new();
        while let Need::Read(i) = m.next() {
            let f = streams[i][pos[i]].clone();
            pos[i] += 1;
            m.feed(i, f, &mut out);
        }
        (out, m.failed(), pos)
    }

    fn cat(frames: &[Bytes]) -> BytesMut {
        let mut b = BytesMut::new();
        for f in frames {
            b.extend_from_slice(f);
        }
        b
    }

    #[test]
    fn rows_stream_in_shard_order_with_one_description_and_summed_tag() {
        let s0 = vec![t("x"), d("a"), d("b"), c("SELECT 2"), z()];
        let s1 = vec![t("x"), d("c"), c("SELECT 1"), z()];
        let (out, failed, pos) = run(vec![s0, s1], CopyOut::default());
        assert!(!failed);
        assert_eq!(pos, vec![5, 4], "every stream read to ReadyForQuery");
        assert_eq!(out, cat(&[t("x"), d("a"), d("b"), d("c"), c("SELECT 3")]));
    }

    #[test]
    fn several_results_and_commands() {
        let s = |n: &str| vec![c("CREATE TABLE"), t("x"), d(n), c("SELECT 1"), z()];
        let (out, failed, _) = run(vec![s("1"), s("2")], CopyOut::default());
        assert!(!failed);
        assert_eq!(
            out,
            cat(&[c("CREATE TABLE"), t("x"), d("1"), d("2"), c("SELECT 2")])
        );
    }

    #[test]
    fn mismatched_descriptions_send_nothing_but_an_error() {
        let (out, failed, pos) = run(
            vec![
                vec![t("x"), d("a"), c("SELECT 1"), z()],
                vec![t("y"), c("SELECT 0"), z()],
            ],
            CopyOut::default(),
        );
        assert!(failed);
        assert_eq!(out[0], b'E');
        assert_eq!(protocol::parse_error(&out).code, "XX000");
        assert_eq!(pos, vec![4, 3], "both drained");
    }

    #[test]
    fn an_error_after_rows_is_forwarded_once_and_everything_drains() {
        let s0 = vec![t("x"), d("a"), c("SELECT 1"), z()];
        let s1 = vec![t("x"), d("b"), e("22012"), z()];
        let (out, failed, pos) = run(vec![s0, s1], CopyOut::default());
        assert!(failed);
        assert_eq!(out, cat(&[t("x"), d("a"), d("b"), e("22012")]));
        assert_eq!(pos, vec![4, 4]);
        // An error as the first answer of one shard: nothing of the others is sent.
        let s0 = vec![t("x"), d("a"), c("SELECT 1"), z()];
        let s1 = vec![e("42P01"), z()];
        let (out, _, pos) = run(vec![s0, s1], CopyOut::default());
        assert_eq!(out, cat(&[e("42P01")]));
        assert_eq!(pos, vec![4, 2]);
    }

    #[test]
    fn copy_out_once_with_one_header() {
        let h = msg(|b| {
            b.extend_from_slice(&[b'H', 0, 0, 0, 9, 0, 0, 1, 0, 0]);
        });
        let done = Bytes::from_static(&[b'c', 0, 0, 0, 4]);
        let s0 = vec![
            h.clone(),
            cd(b"k,v\n"),
            cd(b"1,a\n"),
            done.clone(),
            c("COPY 1"),
            z(),
        ];
        let s1 = vec![
            h.clone(),
            cd(b"k,v\n"),
            cd(b"2,b\n"),
            cd(b"3,c\n"),
            done.clone(),
            c("COPY 2"),
            z(),
        ];
        let copy = CopyOut {
            header: true,
            binary: false,
        };
        let (out, failed, _) = run(vec![s0, s1], copy);
        assert!(!failed);
        assert_eq!(
            out,
            cat(&[
                h,
                cd(b"k,v\n"),
                cd(b"1,a\n"),
                cd(b"2,b\n"),
                cd(b"3,c\n"),
                done,
                c("COPY 3")
            ])
        );
    }

    #[test]
    fn binary_copy_out_has_one_file_header_and_trailer() {
        let h = Bytes::from_static(&[b'H', 0, 0, 0, 7, 1, 0, 0]);
        let done = Bytes::from_static(&[b'c', 0, 0, 0, 4]);
        let mut fh = b"PGCOPY\n\xff\r\n\0".to_vec();
        fh.extend_from_slice(&[0; 8]);
        let tuple = |v: u8| vec![0, 1, 0, 0, 0, 1, v];
        let first = |v: u8| [fh.clone(), tuple(v)].concat();
        let s0 = vec![
            h.clone(),
            cd(&first(1)),
            cd(&tuple(2)),
            cd(&[0xff, 0xff]),
            done.clone(),
            c("COPY 2"),
            z(),
        ];
        // A shard without rows sends the header and trailer in one message.
        let s1 = vec![
            h.clone(),
            cd(&[fh.clone(), vec![0xff, 0xff]].concat()),
            done.clone(),
            c("COPY 0"),
            z(),
        ];
        let s2 = vec![
            h.clone(),
            cd(&first(3)),
            cd(&[0xff, 0xff]),
            done.clone(),
            c("COPY 1"),
            z(),
        ];
        let copy = CopyOut {
            header: false,
            binary: true,
        };
        let (out, failed, _) = run(vec![s0, s1, s2], copy);
        assert!(!failed);
        assert_eq!(
            out,
            cat(&[
                h,
                cd(&first(1)),
                cd(&tuple(2)),
                cd(&tuple(3)),
                cd(&[0xff, 0xff]),
                done,
                c("COPY 3")
            ])
        );
    }

    #[test]
    fn lost_shard_reports_once() {
        let mut m = Merge::new(2, CopyOut::default(), false);
        let mut out = BytesMut::new();
        m.feed(0, t("x"), &mut out);
        m.lost(1, Some("shard 1: gone"), &mut out);
        assert!(m.failed());
        assert_eq!(m.next(), Need::Read(0));
        m.feed(0, d("a"), &mut out);
        m.feed(0, c("SELECT 1"), &mut out);
        m.feed(0, z(), &mut out);
        assert_eq!(m.next(), Need::Done);
        assert_eq!(protocol::parse_error(&out).code, "08006");
    }

    #[test]
    fn held_tag_for_wrapped_writes() {
        let mut m = Merge::new(2, CopyOut::default(), true);
        let mut out = BytesMut::new();
        for i in 0..2 {
            m.feed(i, c("INSERT 0 1"), &mut out);
        }
        for i in 0..2 {
            m.feed(i, z(), &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(m.next(), Need::Done);
        assert_eq!(m.take_tail(), cat(&[c("INSERT 0 2")]));
    }

    fn tiny(tag: u8) -> Bytes {
        Bytes::from(vec![tag, 0, 0, 0, 4])
    }

    #[test]
    fn extended_batch_answers_once_and_hides_pgvane_parses() {
        // Translated batch: Parse (pgvane's, for a named statement) Bind Describe Execute Sync.
        let s0 = vec![tiny(b'1'), tiny(b'2'), t("x"), d("a"), c("SELECT 1"), z()];
        let s1 = vec![
            tiny(b'1'),
            tiny(b'2'),
            t("x"),
            d("b"),
            d("c"),
            c("SELECT 2"),
            z(),
        ];
        let mut m = Merge::new(2, CopyOut::default(), false).parse_completes([false]);
        let streams = [s0, s1];
        let mut pos = [0, 0];
        let mut out = BytesMut::new();
        while let Need::Read(i) = m.next() {
            m.feed(i, streams[i][pos[i]].clone(), &mut out);
            pos[i] += 1;
        }
        assert!(!m.failed());
        assert_eq!(
            out,
            cat(&[tiny(b'2'), t("x"), d("a"), d("b"), d("c"), c("SELECT 3")])
        );
    }

    #[test]
    fn execute_without_description_streams_rows_of_every_shard() {
        // tokio-postgres: Bind Execute Sync (described earlier); shard 1 has no rows.
        let s0 = vec![tiny(b'2'), d("a"), d("b"), c("SELECT 2"), z()];
        let s1 = vec![tiny(b'2'), c("SELECT 0"), z()];
        let s2 = vec![tiny(b'2'), d("c"), c("SELECT 1"), z()];
        let (out, failed, pos) = run(vec![s0, s1, s2], CopyOut::default());
        assert!(!failed);
        assert_eq!(pos, vec![5, 3, 4]);
        assert_eq!(
            out,
            cat(&[tiny(b'2'), d("a"), d("b"), d("c"), c("SELECT 3")])
        );
    }

    #[test]
    fn row_limited_execute_is_refused_clearly() {
        let s0 = vec![tiny(b'2'), d("a"), tiny(b's'), z()];
        let s1 = vec![tiny(b'2'), tiny(b's'), z()];
        let (out, failed, _) = run(vec![s0, s1], CopyOut::default());
        assert!(failed);
        let err = &out[5..];
        assert_eq!(protocol::parse_error(err).code, "0A000");
    }
}
