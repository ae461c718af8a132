//! Per-statement routing inside a session: which shard and which role (primary or replica)
//! the next server comes from, pgvane's own session commands (`SET pgvane.route`, `SHOW
//! pgvane.last_write_lsn`, `EXPLAIN ROUTE ...`), deferring `BEGIN` until the first statement
//! of the transaction shows where it belongs, and read-your-writes bookkeeping.
//!
//! Must not: do socket I/O beyond asking the database runtime for catalog facts; the policy
//! itself is the pure [`choose_role`] plus the replication and sharding modules.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::session::{End, Session};
use super::tracker::TxStatus;
use crate::config::ReadAfterWrite;
use crate::database::TableName;
use crate::protocol;
use crate::replication::{self, ReadRequirements};
use crate::router::{self, Analysis, Hints, PgvaneCommand, RouteHint, RouteSetting, StatementKind};
use crate::sharding::key::ShardPlan;
use crate::sharding::plan::{self as splan, Resolved, ShardSet, Values};

/// Primary or replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// Where the next server comes from, and why.
#[derive(Debug, Clone)]
pub struct Target {
    pub shard: u32,
    pub role: Role,
    /// Index of the replica in the shard, when `role` is Replica.
    pub replica: Option<usize>,
    pub reason: Cow<'static, str>,
}

/// The routing outcome of a statement.
#[derive(Debug)]
pub enum Plan {
    Single(Target),
    /// Several shards, each running `sql` (None: the client's own message) — a fan-out.
    Multi {
        shards: ShardSet,
        write: bool,
        split: Option<Vec<(u32, String)>>,
        /// A read that needs more than the shards' rows one after the other.
        finish: Option<Arc<crate::sharding::combine::Finish>>,
        /// A write to tables present on every shard (reference tables): every shard runs
        /// it, the client sees one shard's answer.
        replicated: bool,
        /// An extended-protocol split INSERT: for each part of `split`, the client's
        /// parameter numbers its `$1, $2, ...` stand for.
        split_params: Option<Vec<Vec<usize>>>,
    },
    /// Reply with this error instead of running the statement.
    Reject(&'static str, String),
}

/// Inputs of the role decision that are not in the statement.
#[derive(Debug, Clone, Copy)]
pub struct RoleContext {
    pub split: bool,
    pub session_route: RouteSetting,
    /// A deferred BEGIN: Some(read_only).
    pub begin: Option<bool>,
    /// Read-your-writes by time: the client wrote within the window.
    pub recent_write: bool,
}

/// The role for a statement (pure): hints first, then the session route, then the
/// transaction, then the statement itself.
pub fn choose_role(
    write: bool,
    write_reason: &str,
    hints: &Hints,
    ctx: &RoleContext,
) -> (Role, Cow<'static, str>) {
    if !ctx.split {
        return (Role::Primary, "read/write split off".into());
    }
    match hints.route {
        Some(RouteHint::Primary) => return (Role::Primary, "hint: primary".into()),
        Some(RouteHint::Replica) => return (Role::Replica, "hint: replica".into()),
        None => {}
    }
    match ctx.session_route {
        RouteSetting::Primary => return (Role::Primary, "session route: primary".into()),
        RouteSetting::Replica => return (Role::Replica, "session route: replica".into()),
        RouteSetting::Auto => {}
    }
    match ctx.begin {
        Some(false) => return (Role::Primary, "in a write transaction".into()),
        Some(true) if write => {
            return (
                Role::Primary,
                Cow::Owned(format!("write in a read-only transaction ({write_reason})")),
            )
        }
        Some(true) => return (Role::Replica, "read-only transaction".into()),
        None => {}
    }
    if write {
        return (Role::Primary, Cow::Owned(write_reason.to_string()));
    }
    if ctx.recent_write {
        return (
            Role::Primary,
            "read-your-writes: within read_after_write_window".into(),
        );
    }
    (Role::Replica, "read".into())
}

impl Session {
    /// Pick a replica of `shard` for a read, or fall back to the primary with the reason.
    pub(super) async fn pick_replica(
        &self,
        shard: u32,
        hints: &Hints,
        forced: bool,
    ) -> (Option<usize>, String) {
        let db = &self.ctx.db;
        let Some(sr) = db.shards.get(shard as usize) else {
            return (None, "no such shard".into());
        };
        if sr.weights.is_empty() {
            return (None, "no replicas".into());
        }
        let min_lsn = if !forced && db.ryw() == ReadAfterWrite::Lsn {
            self.min_lsn.max(self.last_write_lsn)
        } else {
            0
        };
        let req = ReadRequirements {
            min_lsn,
            max_lag: hints.max_lag,
        };
        let bal = crate::database::balancing(db.routing.load_balancing);
        match replication::pick_replica(&sr.state, &sr.weights, bal, &sr.rr, &db.repl, &req) {
            Ok(i) => (Some(i), String::new()),
            Err(why) => {
                let wait = db.routing.read_after_write_wait;
                if min_lsn > 0 && !wait.is_zero() && sr.state.wait_for_lsn(min_lsn, wait).await {
                    if let Ok(i) = replication::pick_replica(
                        &sr.state,
                        &sr.weights,
                        bal,
                        &sr.rr,
                        &db.repl,
                        &req,
                    ) {
                        return (Some(i), String::new());
                    }
                }
                let reason =
                    if min_lsn > 0 && matches!(why, replication::Ineligible::BehindLsn { .. }) {
                        format!("read-your-writes: replicas behind ({why})")
                    } else {
                        format!("no eligible replica ({why})")
                    };
                (None, reason)
            }
        }
    }

    /// The shard set for a statement on a sharded database.
    async fn shards_for(
        &self,
        analysis: &Analysis,
        hints: &Hints,
        literals: &[String],
        params: &[protocol::BindParam<'_>],
        param_types: &[u32],
    ) -> Result<(Resolved, Option<ShardPlan>, Option<Vec<String>>), (&'static str, String)> {
        let db = &self.ctx.db;
        let n = db.shards.len() as u32;
        if let Some(s) = hints.shard.or(self.session_shard) {
            if s >= n {
                return Err((
                    "22023",
                    format!("shard {s} does not exist (this database has {n} shards)"),
                ));
            }
            return Ok((Resolved::Shards(ShardSet::one(s)), None, None));
        }
        if let Some(key) = hints
            .sharding_key
            .as_ref()
            .or(self.session_sharding_key.as_ref())
        {
            let table = analysis
                .tables
                .iter()
                .find_map(|t| db.sharded_tables.iter().find(|st| st.matches(t)))
                .or_else(|| db.sharded_tables.first());
            let Some(table) = table else {
                return Err((
                    "0A000",
                    "sharding_key hint on a database without sharded tables".into(),
                ));
            };
            return match crate::sharding::hash::shard_of_text(key, table.key_type, n) {
                Ok(s) => Ok((Resolved::Shards(ShardSet::one(s)), None, None)),
                Err(e) => Err(("22P02", format!("invalid sharding_key hint: {e}"))),
            };
        }
        if analysis.parse_failed {
            return Err((
                "0A000",
                "pgvane cannot tell which shard this statement belongs to: add a /* pgvane: shard=N */ or /* pgvane: sharding_key=... */ hint".into(),
            ));
        }
        let mut plan = self.shard_plan(analysis, None);
        let mut cols = None;
        if let ShardPlan::NeedColumns { table } = plan {
            let name = db
                .sharded_tables
                .get(table)
                .map(|t| t.qualified())
                .unwrap_or_default();
            cols = db.columns_of(&name).await;
            plan = self.shard_plan(analysis, cols.clone());
        }
        let values = Values {
            literals,
            params,
            param_types,
        };
        let resolved = splan::resolve(&plan, &db.sharded_tables, &values, n);
        Ok((resolved, Some(plan), cols))
    }

    fn shard_plan(&self, analysis: &Analysis, cols: Option<Vec<String>>) -> ShardPlan {
        let db = &self.ctx.db;
        if cols.is_none() {
            if let Some(p) = analysis.shard_plan.get() {
                return p.clone();
            }
        }
        let lookup = |_: &str| cols.clone();
        let p = crate::sharding::key::plan_statements(
            &analysis.statements,
            &db.sharded_tables,
            &lookup,
        );
        if cols.is_none() && !matches!(p, ShardPlan::NeedColumns { .. }) {
            let _ = analysis.shard_plan.set(p.clone());
        }
        p
    }

    /// Decide where a statement goes. `params` are the Bind parameters (extended protocol).
    pub(super) async fn plan(
        &mut self,
        sql: &str,
        analysis: &Analysis,
        literals: &[String],
        params: &[protocol::BindParam<'_>],
        param_types: &[u32],
    ) -> Plan {
        let db = self.ctx.db.clone();
        let hints = router::parse_hints(sql);
        let mut write = analysis.write;
        let mut reason: Cow<'static, str> = if analysis.write {
            Cow::Owned(analysis.reason.to_string())
        } else {
            Cow::Borrowed("read")
        };
        if !write && !analysis.functions.is_empty() && db.split() {
            let volatile = db.volatile_functions(&analysis.functions).await;
            if let Some(f) = volatile.first() {
                write = true;
                reason = Cow::Owned(format!("volatile function {f}"));
            }
        }
        let mut shard = 0;
        if db.sharded() && std::mem::take(&mut self.describe_only) {
            shard = (db.any_rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % db.shards.len())
                as u32;
        } else if db.sharded() {
            let (resolved, plan, cols) = match self
                .shards_for(analysis, &hints, literals, params, param_types)
                .await
            {
                Err((code, msg)) => return Plan::Reject(code, msg),
                Ok(r) => r,
            };
            match resolved {
                Resolved::Error(msg) => return Plan::Reject("22P02", msg),
                Resolved::AnyOne => {
                    shard = (db.any_rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        % db.shards.len()) as u32;
                }
                Resolved::Shards(set) if set.len() == 1 => shard = set.single().unwrap_or(0),
                Resolved::Shards(set) => {
                    return self.multi(set, write, sql, analysis, plan, cols, (params, param_types))
                }
                Resolved::All { write: w } => {
                    let set = ShardSet::all(db.shards.len() as u32);
                    return self.multi(
                        set,
                        w || write,
                        sql,
                        analysis,
                        plan,
                        cols,
                        (params, param_types),
                    );
                }
            }
        }
        let ctx = RoleContext {
            split: db.split(),
            session_route: self.route,
            begin: self.deferred_begin.as_ref().map(|b| b.read_only),
            recent_write: db.ryw() == ReadAfterWrite::Time
                && self
                    .last_write_at
                    .is_some_and(|t| t.elapsed() < db.routing.read_after_write_window),
        };
        let (role, why) = if std::mem::take(&mut self.force_primary) {
            (
                Role::Primary,
                Cow::Borrowed("replica failed; read retried on the primary"),
            )
        } else {
            choose_role(write, &reason, &hints, &ctx)
        };
        let statement_label = if reason.starts_with("volatile function") {
            "volatile_function"
        } else {
            analysis.reason.label()
        };
        let mut label = reason_label(&why, statement_label);
        let target = match role {
            Role::Primary => Target {
                shard,
                role,
                replica: None,
                reason: why,
            },
            Role::Replica => {
                let forced =
                    hints.route == Some(RouteHint::Replica) || self.route == RouteSetting::Replica;
                match self.pick_replica(shard, &hints, forced).await {
                    (Some(i), _) => Target {
                        shard,
                        role,
                        replica: Some(i),
                        reason: why,
                    },
                    (None, fallback) => {
                        label = reason_label(&fallback, "no_healthy_replica");
                        Target {
                            shard,
                            role: Role::Primary,
                            replica: None,
                            reason: fallback.into(),
                        }
                    }
                }
            }
        };
        if db.split() {
            db.stats.count_reason(label);
        }
        Plan::Single(target)
    }

    #[allow(clippy::too_many_arguments)]
    fn multi(
        &self,
        shards: ShardSet,
        write: bool,
        sql: &str,
        analysis: &Analysis,
        plan: Option<ShardPlan>,
        cols: Option<Vec<String>>,
        (params, param_types): (&[protocol::BindParam<'_>], &[u32]),
    ) -> Plan {
        let db = &self.ctx.db;
        // A multi-row INSERT whose rows land on different shards is split per shard.
        let is_insert_rows = matches!(plan, Some(ShardPlan::InsertRows { .. }));
        // No sharded table written: reference tables, the same rows on every shard.
        let replicated = write && matches!(plan, Some(ShardPlan::Unsharded { write: true }));
        if is_insert_rows || (analysis.kind == StatementKind::Insert && write && !replicated) {
            if analysis.multi_statement {
                return Plan::Reject(
                    "0A000",
                    "a multi-statement query cannot write rows to several shards; send the INSERT on its own".into(),
                );
            }
            let lookup = |_: &str| cols.clone();
            if !params.is_empty() {
                let values = splan::Values {
                    literals: &[],
                    params,
                    param_types,
                };
                let n = db.shards.len() as u32;
                return match splan::split_insert_bound(sql, &db.sharded_tables, n, &lookup, &values) {
                    Ok(parts) => {
                        let mut set = ShardSet::default();
                        for p in &parts {
                            set.insert(p.shard);
                        }
                        Plan::Multi {
                            shards: set,
                            write: true,
                            split: Some(parts.iter().map(|p| (p.shard, p.sql.clone())).collect()),
                            split_params: Some(parts.into_iter().map(|p| p.params).collect()),
                            finish: None,
                            replicated: false,
                        }
                    }
                    Err(e) => Plan::Reject(
                        "0A000",
                        format!("cannot route this INSERT: its rows belong to several shards and it cannot be split ({e})"),
                    ),
                };
            }
            match splan::split_insert(sql, &db.sharded_tables, db.shards.len() as u32, &lookup) {
                Ok(parts) => return Plan::Multi { shards, write: true, split: Some(parts), finish: None, replicated: false, split_params: None },
                Err(e) => {
                    return Plan::Reject(
                        "0A000",
                        format!("cannot route this INSERT: its rows belong to several shards and it cannot be split ({e})"),
                    )
                }
            }
        }
        let finish = if write {
            None
        } else {
            match combine_read(sql, analysis, &db.sharded_tables, params) {
                Ok(f) => f,
                Err(msg) => return Plan::Reject("0A000", msg),
            }
        };
        Plan::Multi {
            shards,
            write,
            split: None,
            finish,
            replicated,
            split_params: None,
        }
    }

    /// Handle `SET pgvane.*`, `SHOW pgvane.*`, `EXPLAIN ROUTE`: answered by pgvane itself.
    pub(super) async fn pgvane_command(&mut self, cmd: Result<PgvaneCommand, String>) {
        let cmd = match cmd {
            Ok(c) => c,
            Err(msg) => {
                self.client_error("22023", &msg);
                return;
            }
        };
        match cmd {
            PgvaneCommand::SetRoute(r) => {
                self.route = r;
                protocol::command_complete(&mut self.cout, "SET");
            }
            PgvaneCommand::ShowRoute => self.show_value("pgvane.route", self.route.as_str()),
            PgvaneCommand::SetMinLsn(s) => match replication::parse_lsn(&s) {
                Some(l) => {
                    self.min_lsn = l;
                    protocol::command_complete(&mut self.cout, "SET");
                }
                None => self.client_error(
                    "22023",
                    &format!("invalid LSN {s:?}: expected the form 16/B374D848"),
                ),
            },
            PgvaneCommand::ShowLastWriteLsn => {
                let v = replication::format_lsn(self.last_write_lsn);
                self.show_value("pgvane.last_write_lsn", &v);
            }
            PgvaneCommand::SetShard(s) => {
                let n = self.ctx.db.shards.len() as u32;
                if s >= n {
                    self.client_error(
                        "22023",
                        &format!("shard {s} does not exist (this database has {n} shards)"),
                    );
                } else {
                    self.session_shard = Some(s);
                    protocol::command_complete(&mut self.cout, "SET");
                }
            }
            PgvaneCommand::SetShardingKey(k) => {
                self.session_sharding_key = Some(k);
                protocol::command_complete(&mut self.cout, "SET");
            }
            PgvaneCommand::Reset(name) => {
                match name.as_str() {
                    "route" => self.route = RouteSetting::Auto,
                    "shard" => self.session_shard = None,
                    "sharding_key" => self.session_sharding_key = None,
                    "min_lsn" => self.min_lsn = 0,
                    _ => {}
                }
                protocol::command_complete(&mut self.cout, "RESET");
            }
            PgvaneCommand::Show(name) => {
                let v = match name.as_str() {
                    "shard" => self
                        .session_shard
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    "sharding_key" => self.session_sharding_key.clone().unwrap_or_default(),
                    "min_lsn" => replication::format_lsn(self.min_lsn),
                    _ => {
                        self.client_error(
                            "42704",
                            &format!("unrecognized configuration parameter \"{name}\""),
                        );
                        return;
                    }
                };
                self.show_value(&format!("pgvane.{name}"), &v);
            }
            PgvaneCommand::ExplainRoute(inner) => self.explain_route(&inner).await,
        }
    }

    fn show_value(&mut self, name: &str, value: &str) {
        crate::protocol::row_description(&mut self.cout, &[name]);
        crate::protocol::data_row(&mut self.cout, &[Some(value)]);
        protocol::command_complete(&mut self.cout, "SHOW");
    }

    async fn explain_route(&mut self, sql: &str) {
        let db = self.ctx.db.clone();
        let (analysis, normalized) = db.cache.get_or_analyze(sql, &db.routing.write_functions);
        let literals = literal_texts(&normalized);
        let plan = self.plan(sql, &analysis, &literals, &[], &[]).await;
        let cols = ["target", "backend", "reason"];
        crate::protocol::row_description(&mut self.cout, &cols);
        match plan {
            Plan::Single(t) => {
                let sr = &db.shards[t.shard as usize];
                let (role, addr) = match (t.role, t.replica) {
                    (Role::Replica, Some(i)) => ("replica", sr.state.replicas[i].addr.clone()),
                    _ => ("primary", sr.state.primary.addr.clone()),
                };
                let target = if db.sharded() {
                    format!("shard {} {role}", t.shard)
                } else {
                    role.to_string()
                };
                crate::protocol::data_row(
                    &mut self.cout,
                    &[Some(&target), Some(&addr), Some(&t.reason)],
                );
            }
            Plan::Multi {
                shards,
                write,
                finish,
                ..
            } => {
                let list: Vec<String> = shards.iter().map(|s| s.to_string()).collect();
                let addrs: Vec<String> = shards
                    .iter()
                    .map(|s| db.shards[s as usize].state.primary.addr.clone())
                    .collect();
                let reason = match (&finish, write) {
                    (_, true) => "write to several shards".to_string(),
                    (Some(f), false) => format!("fan-out read, merged: {}", f.explain()),
                    (None, false) => "fan-out read".to_string(),
                };
                crate::protocol::data_row(
                    &mut self.cout,
                    &[
                        Some(&format!("shards {}", list.join(","))),
                        Some(&addrs.join(",")),
                        Some(&reason),
                    ],
                );
            }
            Plan::Reject(code, msg) => {
                crate::protocol::data_row(&mut self.cout, &[Some("error"), Some(code), Some(&msg)]);
            }
        }
        protocol::command_complete(&mut self.cout, "EXPLAIN ROUTE");
    }

    /// After a write transaction committed on a primary: remember the primary's WAL position
    /// for read-your-writes (lsn mode) or the time (time mode).
    pub(super) async fn capture_write_position(&mut self) {
        if !self.tx_wrote {
            return;
        }
        self.tx_wrote = false;
        let db = self.ctx.db.clone();
        match db.ryw() {
            ReadAfterWrite::Off => {}
            ReadAfterWrite::Time => self.last_write_at = Some(Instant::now()),
            ReadAfterWrite::Lsn => {
                if !db.split() {
                    return;
                }
                let Some(conn) = self.server.as_mut() else {
                    return;
                };
                let lsn = tokio::time::timeout(Duration::from_secs(2), conn.query_lsn()).await;
                match lsn {
                    Ok(Ok(Some(l))) => {
                        self.last_write_lsn = self.last_write_lsn.max(l);
                        if self.ctx.config.general.report_write_lsn {
                            protocol::parameter_status(
                                &mut self.cout,
                                "pgvane.last_write_lsn",
                                &replication::format_lsn(l),
                            );
                        }
                    }
                    _ => {
                        if let Some(c) = self.server.as_mut() {
                            c.broken = true;
                        }
                    }
                }
            }
        }
    }
}

/// A stable, low-cardinality label for a routing reason (for counters and metrics).
pub fn reason_label(reason: &str, statement_label: &'static str) -> &'static str {
    const PREFIXES: &[(&str, &str)] = &[
        ("hint", "hint"),
        ("session route", "session_route"),
        ("read/write split off", "split_off"),
        ("in a write transaction", "write_transaction"),
        ("write in a read-only transaction", "write_transaction"),
        ("read-only transaction", "read_only_transaction"),
        ("read-your-writes: within", "read_your_writes_window"),
        ("read-your-writes: replicas behind", "read_your_writes_lsn"),
        ("no eligible replica", "no_healthy_replica"),
        ("no replicas", "no_replicas"),
        ("replica unavailable", "replica_unavailable"),
    ];
    PREFIXES
        .iter()
        .find(|(p, _)| reason.starts_with(p))
        .map(|(_, l)| *l)
        .unwrap_or(statement_label)
}

/// Literal values of a normalized statement, as text, in order.
/// How the shards' answers to a multi-shard read become one database's answer: None to
/// concatenate them, Some to finish them; Err to refuse (0A000) what cannot be exact.
fn combine_read(
    sql: &str,
    analysis: &Analysis,
    tables: &[crate::sharding::key::ShardedTable],
    params: &[protocol::BindParam<'_>],
) -> Result<Option<Arc<crate::sharding::combine::Finish>>, String> {
    use crate::sharding::combine::{plan_bound, Combine};
    use sqlparser::dialect::PostgreSqlDialect;
    let first = crate::params::skip_ws_comments(sql).to_ascii_lowercase();
    let query_like = ["select", "with", "values", "table", "("]
        .iter()
        .any(|w| first.starts_with(w));
    let stmts = match sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(_) if !query_like => return Ok(None),
        Err(_) => {
            return Err("pgvane cannot parse this query, so it cannot merge its shards' answers exactly; run it on one shard (a key in the WHERE clause, or /* pgvane: shard=N */)".into())
        }
    };
    let mut finish = None;
    for s in &stmts {
        if crate::sharding::combine::calls_unknown_outside_where(s, &analysis.functions) {
            return Err("this read calls a function pgvane does not know in its select list, HAVING or ORDER BY; if it is an aggregate, the shards' answers cannot be combined exactly, so the statement is refused: run it on one shard (a key in the WHERE clause, or /* pgvane: shard=N */)".into());
        }
        match plan_bound(s, tables, params) {
            Combine::Concat => {}
            Combine::Refuse(why) => return Err(why),
            Combine::Finish(f) => {
                if analysis.multi_statement || stmts.len() > 1 {
                    return Err("a multi-statement query whose statements need their shards' answers merged; send them one at a time".into());
                }
                finish = Some(Arc::from(f));
            }
        }
    }
    Ok(finish)
}

pub fn literal_texts(n: &router::Normalized) -> Vec<String> {
    n.literals
        .iter()
        .map(|l| match &l.value {
            router::LiteralValue::Str(s) => s.clone(),
            router::LiteralValue::Num(s) => s.clone(),
        })
        .collect()
}

/// What routing needs to know about a statement: its analysis, the literal values pulled out
/// of its text, its declared parameter types and the text itself (for hints).
#[derive(Debug)]
pub struct RouteInfo {
    pub analysis: Arc<Analysis>,
    pub literals: Vec<String>,
    pub param_types: Vec<u32>,
    pub sql: String,
}

/// Parameter type OIDs from a Parse message's parameter-type section.
pub fn param_oids(raw: &[u8]) -> Vec<u32> {
    raw.get(2..)
        .unwrap_or(&[])
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Complete frames at the front of `buf`, without consuming them.
fn peek_frames(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let head = buf.get(pos..pos + 5)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len < 4 {
            return None;
        }
        let end = pos + 1 + len as usize;
        let f = buf.get(pos..end)?;
        pos = end;
        Some(f)
    })
}

impl Session {
    pub(super) fn route_info(&self, sql: &[u8], param_types: &[u8]) -> Arc<RouteInfo> {
        let db = &self.ctx.db;
        let text = String::from_utf8_lossy(sql);
        let (analysis, normalized) = db.cache.get_or_analyze(&text, &db.routing.write_functions);
        Arc::new(RouteInfo {
            analysis,
            literals: literal_texts(&normalized),
            param_types: param_oids(param_types),
            sql: text.into_owned(),
        })
    }

    fn held_primary(&self) -> bool {
        matches!(
            self.held,
            Some(Target {
                role: Role::Primary,
                ..
            })
        )
    }

    /// Route a simple Query (routing on). True: forward the frame to the held server.
    pub(super) async fn route_query(&mut self, frame: &Bytes) -> Result<bool, End> {
        let text = protocol::query_text(frame)?;
        // No per-statement copies on this path: the text is borrowed from the frame, and the
        // literal list is materialized only for sharded databases.
        let sql = String::from_utf8_lossy(text);
        let db = self.ctx.db.clone();
        let (analysis, normalized) = db.cache.get_or_analyze(&sql, &db.routing.write_functions);
        let literals = if db.sharded() {
            literal_texts(&normalized)
        } else {
            Vec::new()
        };
        let a = &analysis;
        if a.kind == StatementKind::Ddl {
            // CREATE/ALTER/DROP FUNCTION may change a function's volatility.
            self.ctx.db.catalog.clear();
        }
        if self.server.is_some() {
            if (a.write || !a.functions.is_empty()) && self.held_primary() {
                self.tx_wrote = true;
            }
            let touches_sharded = a
                .tables
                .iter()
                .any(|x| self.ctx.db.sharded_tables.iter().any(|st| st.matches(x)));
            if self.ctx.db.sharded() && touches_sharded {
                if let Some(t) = self.held.clone() {
                    let plan = self.plan(&sql, a, &literals, &[], &[]).await;
                    if let Plan::Single(p) = &plan {
                        if p.shard != t.shard
                            && !matches!(p.role, Role::Replica)
                            && a.tables
                                .iter()
                                .any(|x| self.ctx.db.sharded_tables.iter().any(|st| st.matches(x)))
                        {
                            return self.reject_cross_shard(a.write).await;
                        }
                    }
                    if let Plan::Multi {
                        shards,
                        write,
                        split,
                        finish,
                        replicated,
                        ..
                    } = plan
                    {
                        if write || self.tx_wrote {
                            return self.reject_cross_shard(true).await;
                        }
                        self.fanout_query(frame.clone(), shards, write, split, finish, replicated)
                            .await?;
                        return Ok(false);
                    }
                }
            }
            return Ok(true);
        }
        if self.ctx.mode == crate::config::PoolMode::Transaction && !a.multi_statement {
            match a.kind {
                StatementKind::Begin { read_only } => {
                    self.deferred_begin = Some(DeferredBegin {
                        sql: Bytes::copy_from_slice(text),
                        read_only: read_only.unwrap_or(false),
                    });
                    protocol::command_complete(&mut self.cout, "BEGIN");
                    protocol::ready_for_query(&mut self.cout, b'T');
                    self.pending.set_tx(TxStatus::InBlock);
                    return Ok(false);
                }
                StatementKind::Commit | StatementKind::Rollback
                    if self.deferred_begin.is_some() =>
                {
                    self.deferred_begin = None;
                    let tag = if matches!(a.kind, StatementKind::Commit)
                        && self.pending.tx() != TxStatus::Failed
                    {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    };
                    protocol::command_complete(&mut self.cout, tag);
                    protocol::ready_for_query(&mut self.cout, b'I');
                    self.pending.set_tx(TxStatus::Idle);
                    return Ok(false);
                }
                _ => {}
            }
        }
        match self.plan(&sql, a, &literals, &[], &[]).await {
            Plan::Single(t) => {
                // Read-your-writes pins only what may have written (a write, or a call to a
                // user function), not every statement of a transaction on the primary.
                if t.role == Role::Primary && (a.write || !a.functions.is_empty()) {
                    self.tx_wrote = true;
                }
                if t.role == Role::Replica && self.deferred_begin.is_none() {
                    self.retry = Some(super::session::Retry {
                        frames: vec![frame.clone()],
                        complete: true,
                        extended: false,
                    });
                    self.retry_mark = self.forwarded;
                    self.row_description_sent = false;
                }
                if !self.ensure_server_for(Some(t)).await? {
                    protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
                    return Ok(false);
                }
                Ok(true)
            }
            Plan::Multi {
                shards,
                write,
                split,
                finish,
                replicated,
                ..
            } => {
                self.fanout_query(frame.clone(), shards, write, split, finish, replicated)
                    .await?;
                Ok(false)
            }
            Plan::Reject(code, msg) => {
                self.client_error(code, &msg);
                if self.deferred_begin.is_some() {
                    self.pending.set_tx(TxStatus::Failed);
                }
                protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
                Ok(false)
            }
        }
    }

    async fn reject_cross_shard(&mut self, write: bool) -> Result<bool, End> {
        let msg = if write {
            "a write transaction cannot touch more than one shard (two-phase commit across shards is not supported yet)"
        } else {
            "this transaction is bound to one shard; the statement needs another"
        };
        self.client_error("0A000", msg);
        protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
        Ok(false)
    }

    /// Route the first extended-protocol message of a batch (routing on). False: the error
    /// is queued and the caller skips to Sync.
    pub(super) async fn route_extended(&mut self, frame: &Bytes) -> Result<bool, End> {
        let tag = frame[0];
        // What statement is this about?
        let info: Option<Arc<RouteInfo>> = match tag {
            b'P' => {
                let p = protocol::parse_parse(frame)?;
                Some(self.route_info(p.query, p.param_types))
            }
            b'B' => {
                let b = protocol::parse_bind(frame)?;
                self.stmt_route(b.statement)
            }
            b'D' => {
                let (kind, name) = protocol::parse_target(frame)?;
                if kind == b'S' {
                    self.stmt_route(name)
                } else {
                    None
                }
            }
            _ => None,
        };
        if self.server.is_some() {
            if tag == b'B' && info.as_ref().is_some_and(|i| i.analysis.write) && self.held_primary()
            {
                self.tx_wrote = true;
            }
            return Ok(true);
        }
        let Some(mut info) = info else {
            return self.ensure_server_for(None).await;
        };
        // BEGIN in a batch: the transaction goes where its next statement goes.
        if matches!(info.analysis.kind, StatementKind::Begin { .. }) {
            let next = peek_frames(&self.cin)
                .skip_while(|f| f[0] != b'P')
                .find(|f| f[0] == b'P')
                .map(Bytes::copy_from_slice);
            if let Some(next) = next {
                let p = protocol::parse_parse(&next)?;
                info = self.route_info(p.query, p.param_types);
            }
        }
        // The Bind that goes with this statement carries the parameter values.
        let bind = if tag == b'B' {
            Some(frame.clone())
        } else {
            peek_frames(&self.cin)
                .take_while(|f| f[0] != b'S')
                .find(|f| f[0] == b'B')
                .map(Bytes::copy_from_slice)
        };
        let params = match bind.as_ref().map(|b| protocol::parse_bind(b)) {
            Some(Ok(b)) => protocol::bind_params(b.rest).unwrap_or_default(),
            _ => Vec::new(),
        };
        // A batch that only prepares/describes (no Bind) runs nothing: any shard will do.
        self.describe_only = bind.is_none() && tag != b'B';
        match self
            .plan(
                &info.sql,
                &info.analysis,
                &info.literals,
                &params,
                &info.param_types,
            )
            .await
        {
            Plan::Single(t) => {
                if t.role == Role::Primary && info.analysis.write {
                    self.tx_wrote = true;
                }
                if t.role == Role::Replica && self.deferred_begin.is_none() {
                    // The rest of the batch is recorded as it arrives (on_client_frame).
                    self.retry = Some(super::session::Retry {
                        frames: vec![frame.clone()],
                        complete: tag == b'S',
                        extended: true,
                    });
                    self.retry_mark = self.forwarded;
                }
                self.ensure_server_for(Some(t)).await
            }
            Plan::Multi {
                shards,
                write,
                split,
                finish,
                replicated,
                split_params,
            } => {
                if let Some(f) = finish {
                    self.fanout_merged_extended(frame.clone(), shards, f)
                        .await?;
                    self.fanned_out = true;
                    return Ok(false);
                }
                let split = split.map(|parts| {
                    let maps = split_params.unwrap_or_else(|| vec![Vec::new(); parts.len()]);
                    (parts, maps)
                });
                self.fanout_extended(frame.clone(), shards, write, replicated, split)
                    .await?;
                self.fanned_out = true;
                Ok(false)
            }
            Plan::Reject(code, msg) => {
                self.client_error(code, &msg);
                Ok(false)
            }
        }
    }

    fn stmt_route(&self, name: &[u8]) -> Option<Arc<RouteInfo>> {
        if name.is_empty() {
            self.unnamed_route.clone()
        } else {
            self.routes.get(name).cloned()
        }
    }
}

/// A deferred BEGIN: sent to the server chosen by the transaction's first statement.
#[derive(Debug, Clone)]
pub struct DeferredBegin {
    pub sql: Bytes,
    pub read_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RoleContext {
        RoleContext {
            split: true,
            session_route: RouteSetting::Auto,
            begin: None,
            recent_write: false,
        }
    }

    #[test]
    fn roles() {
        let h = Hints::default();
        assert_eq!(choose_role(false, "", &h, &ctx()).0, Role::Replica);
        assert_eq!(
            choose_role(true, "write statement", &h, &ctx()),
            (Role::Primary, "write statement".into())
        );
        let off = RoleContext {
            split: false,
            ..ctx()
        };
        assert_eq!(choose_role(false, "", &h, &off).0, Role::Primary);
        let hint = Hints {
            route: Some(RouteHint::Primary),
            ..Hints::default()
        };
        assert_eq!(choose_role(false, "", &hint, &ctx()).0, Role::Primary);
        let hint = Hints {
            route: Some(RouteHint::Replica),
            ..Hints::default()
        };
        assert_eq!(choose_role(true, "w", &hint, &ctx()).0, Role::Replica);
        let sess = RoleContext {
            session_route: RouteSetting::Primary,
            ..ctx()
        };
        assert_eq!(choose_role(false, "", &h, &sess).0, Role::Primary);
        let tx = RoleContext {
            begin: Some(false),
            ..ctx()
        };
        assert_eq!(choose_role(false, "", &h, &tx).0, Role::Primary);
        let ro = RoleContext {
            begin: Some(true),
            ..ctx()
        };
        assert_eq!(choose_role(false, "", &h, &ro).0, Role::Replica);
        let recent = RoleContext {
            recent_write: true,
            ..ctx()
        };
        assert_eq!(choose_role(false, "", &h, &recent).0, Role::Primary);
    }
}
