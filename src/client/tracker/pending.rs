//! The responses a server connection owes, and the one rule for reusing it.
//!
//! Owns: the ordered queue of answers the server still owes for messages pgvane sent it, the
//! grammar of what may answer each of them (PostgreSQL's frontend/backend protocol: a Parse is
//! answered by ParseComplete or an error, an Execute by rows then CommandComplete, EmptyQuery,
//! PortalSuspended, a COPY sub-protocol or an error, ...), the extended protocol's error rule
//! (after an ErrorResponse the server skips everything up to the next Sync), COPY modes, the
//! transaction status of the last ReadyForQuery, and whether a batch is open (extended messages
//! sent since the last Sync). From these follows the invariant of [`Pending::reusable`]: a
//! server goes back to a pool only when every response it owes was accounted for up to a
//! ReadyForQuery outside a transaction. A message that fits none of this is a desync: the
//! server must be closed and the client told (08P01).
//!
//! Must not: do I/O, touch sockets or tokio, or know about pools and routing. Frames in,
//! decisions out; every sequence is unit-tested with byte frames.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::client::prepared::StmtDef;
use crate::params::SetCmd;
use crate::protocol;

/// Transaction status of a ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// 'I': not in a transaction block.
    Idle,
    /// 'T': in a transaction block.
    InBlock,
    /// 'E': in a failed transaction block.
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InBlock),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InBlock => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Why pgvane must not run a client's Bind on the held server: the statement's result shape
/// changed since the client was told it (PostgreSQL's 0A000), or it reads sequence state
/// that lives on another server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: &'static str,
}

/// One response (or response sequence) the server owes, in the order the messages were sent.
#[derive(Debug)]
pub enum Owed {
    /// A simple Query: any results, then ReadyForQuery. `set` is a SET/RESET to record if it
    /// succeeds; `ok` turns true at its CommandComplete and false at an error.
    Query {
        set: Option<SetCmd>,
        ok: bool,
    },
    /// Parse: `stmt` is the shared statement it prepares; `swallow` hides ParseComplete from
    /// the client (pgvane injected it).
    Parse {
        stmt: Option<Arc<StmtDef>>,
        swallow: bool,
    },
    /// Bind; `stmt` is the shared statement (for a transparent re-prepare), `frame` the
    /// client's original message, `retried` once it was replayed. `refuse`: pgvane sent a
    /// Bind the server refuses (nothing runs, it skips to Sync) and the client is told this
    /// error instead (see [`Refusal`]).
    Bind {
        stmt: Option<Arc<StmtDef>>,
        frame: Bytes,
        retried: bool,
        refuse: Option<Refusal>,
        /// The client's first use of its statement since its Parse.
        first_use: bool,
    },
    /// Describe of a statement ('S': ParameterDescription first) or a portal. `stmt`: the
    /// shared statement described (its shape is recorded); `probe`: pgvane's own, to learn
    /// the shape (answers swallowed).
    Describe {
        frame: Bytes,
        stmt: Option<Arc<StmtDef>>,
        probe: bool,
    },
    Execute {
        set: Option<SetCmd>,
        frame: Bytes,
    },
    /// Close; `stmt`: a shared statement pgvane closes on this server (LRU eviction).
    Close {
        stmt: Option<Arc<StmtDef>>,
        swallow: bool,
    },
    Sync,
    /// A ReadyForQuery that answers a Sync the client already got an answer for.
    SwallowReady,
    /// FunctionCall: FunctionCallResponse or an error, then ReadyForQuery.
    Function,
    /// An answer pgvane gives itself, released once everything before it has answered.
    Synthetic(Bytes),
    /// A simple query pgvane sent itself (a deferred BEGIN): all its answers are swallowed.
    Internal,
    /// Not an answer: the client ended a COPY (CopyDone/CopyFail) before the server said it
    /// started one. If a COPY starts before this point, the server reads the Syncs sent
    /// before the marker while in COPY mode (ignoring them) and those after it normally.
    CopyEnd,
}

impl Owed {
    /// A short name for logs (never the message contents, which may be large).
    pub fn name(&self) -> &'static str {
        match self {
            Owed::Query { .. } => "Query",
            Owed::Parse { .. } => "Parse",
            Owed::Bind { .. } => "Bind",
            Owed::Describe { .. } => "Describe",
            Owed::Execute { .. } => "Execute",
            Owed::Close { .. } => "Close",
            Owed::Sync => "Sync",
            Owed::SwallowReady => "Sync (replayed)",
            Owed::Function => "FunctionCall",
            Owed::Synthetic(_) => "pgvane's own answer",
            Owed::Internal => "pgvane's BEGIN",
            Owed::CopyEnd => "CopyDone/CopyFail",
        }
    }

    /// Answered by a ReadyForQuery (the end of a Sync, Query, FunctionCall).
    fn ends_with_ready(&self) -> bool {
        matches!(
            self,
            Owed::Query { .. } | Owed::Sync | Owed::SwallowReady | Owed::Function | Owed::Internal
        )
    }
}

/// COPY sub-protocol in progress on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    None,
    /// CopyInResponse seen: the client streams CopyData until CopyDone/CopyFail.
    In,
    /// CopyOutResponse seen: the server streams CopyData until CopyDone.
    Out,
}

/// What to do with one server message.
#[derive(Debug)]
pub enum Step {
    /// Pass it to the client.
    Forward,
    /// Drop it (the answer to something pgvane sent itself).
    Swallow,
    /// Pass it on: it completes `0` (popped from the queue).
    ForwardDone(Owed),
    /// Drop it: it completes `0` (popped from the queue).
    SwallowDone(Owed),
    /// An ErrorResponse. `skipped` are the owed answers the server will now never send
    /// (extended protocol: everything up to the next Sync). Forward the error unless the
    /// caller recovers from it.
    Error { skipped: Vec<Owed> },
    /// ReadyForQuery answering `owed`; `forward` tells whether the client asked for it.
    Ready {
        owed: Owed,
        status: TxStatus,
        forward: bool,
    },
}

/// The server sent something that answers nothing pgvane sent: it cannot be trusted further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desync(pub String);

/// Responses owed by one server connection (see the module doc).
#[derive(Debug)]
pub struct Pending {
    queue: VecDeque<Owed>,
    tx: TxStatus,
    copy: Copy,
    /// Extended-protocol messages were sent since the last Sync: the server is inside an
    /// implicit transaction (or skipping after an error) until a Sync reaches it.
    open_batch: bool,
    /// The server reported an extended-protocol error and discards messages until Sync.
    skipping: bool,
    /// A Describe of a statement got its ParameterDescription; RowDescription/NoData follows.
    described_params: bool,
    desync: Option<Desync>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending::new()
    }
}

impl Pending {
    pub fn new() -> Pending {
        Pending {
            queue: VecDeque::new(),
            tx: TxStatus::Idle,
            copy: Copy::None,
            open_batch: false,
            skipping: false,
            described_params: false,
            desync: None,
        }
    }

    /// The invariant: nothing owed, no open batch, no COPY, not in a transaction, in step.
    pub fn reusable(&self) -> bool {
        self.queue.is_empty()
            && !self.open_batch
            && !self.skipping
            && self.copy == Copy::None
            && self.tx == TxStatus::Idle
            && self.desync.is_none()
    }

    /// Nothing is owed (the server may still be in a transaction or an open batch).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn front(&self) -> Option<&Owed> {
        self.queue.front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Owed> {
        self.queue.iter()
    }

    pub fn tx(&self) -> TxStatus {
        self.tx
    }

    /// The transaction status the client was last told about (pgvane answers BEGIN itself
    /// when it defers choosing a server).
    pub fn set_tx(&mut self, tx: TxStatus) {
        self.tx = tx;
    }

    pub fn copy(&self) -> Copy {
        self.copy
    }

    pub fn open_batch(&self) -> bool {
        self.open_batch
    }

    pub fn desync(&self) -> Option<&Desync> {
        self.desync.as_ref()
    }

    /// The server discards messages until a Sync (after an extended-protocol error).
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// The state in one bounded line, for diagnostics (names only, never contents).
    pub fn summary(&self) -> String {
        let mut names: Vec<&str> = self.queue.iter().take(16).map(Owed::name).collect();
        if self.queue.len() > 16 {
            names.push("...");
        }
        format!(
            "owed {} [{}] tx {:?} copy {:?} open_batch {} skipping {} desync {}",
            self.queue.len(),
            names.join(", "),
            self.tx,
            self.copy,
            self.open_batch,
            self.skipping,
            self.desync.is_some()
        )
    }

    /// A message was sent that the server answers with `owed`.
    pub fn sent(&mut self, owed: Owed) {
        match &owed {
            Owed::Parse { .. }
            | Owed::Bind { .. }
            | Owed::Describe { .. }
            | Owed::Execute { .. }
            | Owed::Close { .. } => self.open_batch = true,
            // A Sync of the client's or one pgvane sent itself (answer swallowed).
            Owed::Sync | Owed::SwallowReady => {
                if self.copy == Copy::In {
                    // The server ignores Sync while in COPY IN mode.
                    return;
                }
                self.open_batch = false;
                // The server stops skipping when it reads this Sync: what follows is run.
                if self.skipping {
                    self.skipping = false;
                    self.queue.push_back(owed);
                    return;
                }
            }
            _ => {}
        }
        if self.skipping && !matches!(owed, Owed::Sync | Owed::SwallowReady) {
            // PostgreSQL discards every message until the Sync (simple queries and function
            // calls included); pgvane's own answers likewise.
            return;
        }
        self.queue.push_back(owed);
    }

    /// A Flush was sent: nothing is owed for it, but the batch stays open.
    pub fn sent_flush(&mut self) {}

    /// The client ended COPY IN (CopyDone or CopyFail was sent).
    pub fn sent_copy_end(&mut self) {
        if self.copy == Copy::In {
            self.copy = Copy::None;
        } else if !self.queue.is_empty() && !self.skipping {
            // Sent ahead of a CopyInResponse that may still come (a pipelining client).
            self.queue.push_back(Owed::CopyEnd);
        }
    }

    /// Markers at the head are stale: everything before them completed without a COPY.
    fn drop_leading_markers(&mut self) {
        while matches!(self.queue.front(), Some(Owed::CopyEnd)) {
            self.queue.pop_front();
        }
    }

    /// An answer pgvane gives itself, in order with the server's answers. Returns it back when
    /// it can go to the client at once. While the server skips to Sync it is dropped, since
    /// PostgreSQL would not have answered the message either.
    pub fn synthetic(&mut self, msg: Bytes) -> Option<Bytes> {
        if self.skipping {
            return None;
        }
        if self.queue.is_empty() {
            Some(msg)
        } else {
            self.queue.push_back(Owed::Synthetic(msg));
            None
        }
    }

    /// Synthetic answers now at the head of the queue, in order.
    pub fn take_synthetic(&mut self) -> Option<Bytes> {
        if let Some(Owed::Synthetic(_)) = self.queue.front() {
            if let Some(Owed::Synthetic(m)) = self.queue.pop_front() {
                self.drop_leading_markers();
                return Some(m);
            }
        }
        None
    }

    /// Account for one server message (whole frame, type byte first).
    pub fn on_server(&mut self, frame: &[u8]) -> Result<Step, Desync> {
        if let Some(d) = &self.desync {
            return Err(d.clone());
        }
        let r = self.step(frame);
        self.drop_leading_markers();
        if let Err(d) = &r {
            self.desync = Some(d.clone());
        }
        r
    }

    fn fail(&self, tag: u8) -> Result<Step, Desync> {
        Err(Desync(format!(
            "server sent message type {:?} while owing {} ({} answers owed, copy {:?})",
            tag as char,
            self.queue.front().map(Owed::name).unwrap_or("nothing"),
            self.queue.len(),
            self.copy,
        )))
    }

    fn step(&mut self, frame: &[u8]) -> Result<Step, Desync> {
        let Some(&tag) = frame.first() else {
            return self.fail(0);
        };
        // Asynchronous messages may arrive at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            return Ok(Step::Forward);
        }
        if tag == b'E' {
            return self.on_error();
        }
        if tag == b'Z' {
            return self.on_ready(frame);
        }
        // COPY sub-protocol.
        match (self.copy, tag) {
            (Copy::Out, b'd') => return Ok(self.forward_or_swallow()),
            (Copy::Out, b'c') => {
                self.copy = Copy::None;
                return Ok(self.forward_or_swallow());
            }
            (Copy::Out, _) => return self.fail(tag),
            (Copy::In, _) if tag != b'C' => return self.fail(tag),
            _ => {}
        }
        let Some(head) = self.queue.front_mut() else {
            return self.fail(tag);
        };
        let done = match head {
            Owed::Query { set, ok } => {
                match tag {
                    b'C' => {
                        let t = protocol::command_tag(frame);
                        if set.is_some() && (t == b"SET" || t == b"RESET") {
                            *ok = true;
                        }
                        self.copy = Copy::None;
                    }
                    b'T' | b'D' | b'I' => {}
                    b'G' => self.enter_copy_in(),
                    b'H' => self.copy = Copy::Out,
                    _ => return self.fail(tag),
                }
                return Ok(Step::Forward);
            }
            Owed::Internal => {
                match tag {
                    b'C' | b'T' | b'D' | b'I' => {}
                    _ => return self.fail(tag),
                }
                return Ok(Step::Swallow);
            }
            Owed::Parse { .. } => match tag {
                b'1' => true,
                _ => return self.fail(tag),
            },
            Owed::Bind { .. } => match tag {
                b'2' => true,
                _ => return self.fail(tag),
            },
            Owed::Describe {
                frame: d, probe, ..
            } => {
                let statement = d.get(5) == Some(&b'S');
                match tag {
                    b't' if statement && !self.described_params => {
                        self.described_params = true;
                        return Ok(if *probe { Step::Swallow } else { Step::Forward });
                    }
                    b'T' | b'n' if !statement || self.described_params => {
                        self.described_params = false;
                        true
                    }
                    _ => return self.fail(tag),
                }
            }
            Owed::Execute { .. } => match tag {
                b'D' => return Ok(Step::Forward),
                b'C' => {
                    self.copy = Copy::None;
                    true
                }
                b'I' | b's' => true,
                b'G' => {
                    self.enter_copy_in();
                    return Ok(Step::Forward);
                }
                b'H' => {
                    self.copy = Copy::Out;
                    return Ok(Step::Forward);
                }
                _ => return self.fail(tag),
            },
            Owed::Close { .. } => match tag {
                b'3' => true,
                _ => return self.fail(tag),
            },
            Owed::Function => match tag {
                b'V' => return Ok(Step::Forward),
                _ => return self.fail(tag),
            },
            Owed::Sync | Owed::SwallowReady | Owed::Synthetic(_) | Owed::CopyEnd => {
                return self.fail(tag)
            }
        };
        debug_assert!(done);
        let Some(owed) = self.queue.pop_front() else {
            return self.fail(tag);
        };
        let swallow = matches!(
            owed,
            Owed::Parse { swallow: true, .. }
                | Owed::Close { swallow: true, .. }
                | Owed::Describe { probe: true, .. }
        );
        Ok(if swallow {
            Step::SwallowDone(owed)
        } else {
            Step::ForwardDone(owed)
        })
    }

    fn forward_or_swallow(&self) -> Step {
        if matches!(self.queue.front(), Some(Owed::Internal)) {
            Step::Swallow
        } else {
            Step::Forward
        }
    }

    /// CopyInResponse. What the client sent behind the COPY before this arrived is read by
    /// the server in COPY mode: Syncs (and Flushes) are ignored; a CopyDone/CopyFail ends the
    /// COPY (answered with CommandComplete or an error) and what follows is read normally;
    /// any other message makes the server report "unexpected message type during COPY from
    /// stdin" and end the connection (FATAL 08P01): nothing after it is answered.
    fn enter_copy_in(&mut self) {
        self.copy = Copy::In;
        let rest: VecDeque<Owed> = self.queue.drain(1..).collect();
        let mut kept = VecDeque::with_capacity(rest.len());
        for o in rest {
            if self.copy == Copy::None {
                kept.push_back(o);
                continue;
            }
            match o {
                Owed::Sync | Owed::SwallowReady => {}
                Owed::CopyEnd => self.copy = Copy::None,
                // pgvane's own answer to a message it did not send: the server never sees it.
                Owed::Synthetic(_) => kept.push_back(o),
                _ => {
                    self.copy = Copy::None;
                    break;
                }
            }
        }
        self.queue.extend(kept);
    }

    fn on_error(&mut self) -> Result<Step, Desync> {
        self.copy = Copy::None;
        self.described_params = false;
        match self.queue.front_mut() {
            None => {
                // Only a FATAL can come unasked (the caller checks the severity).
                Ok(Step::Error {
                    skipped: Vec::new(),
                })
            }
            Some(Owed::Query { ok, .. }) => {
                *ok = false;
                Ok(Step::Error {
                    skipped: Vec::new(),
                })
            }
            // A function call's error, or an error at Sync (the implicit COMMIT of the batch
            // failed): ReadyForQuery follows.
            Some(Owed::Function | Owed::Internal | Owed::Sync | Owed::SwallowReady) => {
                Ok(Step::Error {
                    skipped: Vec::new(),
                })
            }
            Some(Owed::Synthetic(_) | Owed::CopyEnd) => self.fail(b'E'),
            Some(_) => {
                // Extended protocol: the server skips every message up to the next Sync,
                // simple queries and function calls included.
                let mut skipped = Vec::new();
                while let Some(o) = self.queue.front() {
                    if matches!(o, Owed::Sync | Owed::SwallowReady) {
                        break;
                    }
                    if let Some(o) = self.queue.pop_front() {
                        skipped.push(o);
                    }
                }
                if self.queue.is_empty() {
                    self.skipping = true;
                }
                Ok(Step::Error { skipped })
            }
        }
    }

    fn on_ready(&mut self, frame: &[u8]) -> Result<Step, Desync> {
        let Some(status) = frame.get(5).copied().and_then(TxStatus::from_byte) else {
            return self.fail(b'Z');
        };
        if self.copy != Copy::None {
            return self.fail(b'Z');
        }
        match self.queue.front() {
            Some(o) if o.ends_with_ready() => {}
            _ => return self.fail(b'Z'),
        }
        let Some(owed) = self.queue.pop_front() else {
            return self.fail(b'Z');
        };
        self.skipping = false;
        self.described_params = false;
        self.tx = status;
        let forward = !matches!(owed, Owed::SwallowReady | Owed::Internal);
        Ok(Step::Ready {
            owed,
            status,
            forward,
        })
    }

    /// The server is gone: every owed answer is dropped. Returns how many ReadyForQuery the
    /// client still expects (its Syncs, Queries and FunctionCalls) and whether other answers
    /// were outstanding.
    pub fn abandon(&mut self) -> (usize, bool) {
        let mut readies = 0;
        let mut other = false;
        for o in self.queue.drain(..) {
            match o {
                Owed::Sync | Owed::Query { .. } | Owed::Function => readies += 1,
                Owed::Synthetic(_) | Owed::SwallowReady | Owed::Internal | Owed::CopyEnd => {}
                _ => other = true,
            }
        }
        let open = self.open_batch || self.skipping;
        *self = Pending::new();
        (readies, other || open)
    }

    /// The owed Sync at the head is answered with a ReadyForQuery the client already has (a
    /// transparent replay follows).
    pub fn swallow_head_ready(&mut self) -> bool {
        match self.queue.front_mut() {
            Some(o @ Owed::Sync) => {
                *o = Owed::SwallowReady;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
#[path = "pending_tests.rs"]
mod tests;
