//! Statement classification: read or write, what kind of statement, and why.
//!
//! Owns: [`analyze`] (sqlparser with `PostgreSqlDialect` over the AST; a keyword-level
//! fallback for what sqlparser rejects), [`Analysis`], [`StatementKind`] and [`Reason`].
//! Must not: do I/O (volatile user functions are only *collected* here, see `functions.rs`),
//! cache (see `cache.rs`), return errors, or panic on any input: whatever cannot be
//! classified is a write with reason [`Reason::ParseFailure`].

use std::fmt;

use sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, Set, SetExpr, Statement, TransactionAccessMode,
    TransactionMode, UtilityOption, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::fallback::{fallback, static_keyword};
use super::hints::RouteHint;
use super::lexer::{Lexer, Tok};
use super::scan::Scan;

/// What kind of statement this is (for multi-statement strings: the first one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE (and read-only CTEs).
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// `from_stdin`: `COPY ... FROM STDIN` (the client will send CopyData); `to`: COPY TO.
    Copy {
        from_stdin: bool,
        to: bool,
    },
    /// BEGIN / START TRANSACTION, with `READ ONLY` → `Some(true)`, `READ WRITE` → `Some(false)`.
    Begin {
        read_only: Option<bool>,
    },
    /// COMMIT / END.
    Commit,
    /// ROLLBACK / ABORT (not `ROLLBACK TO SAVEPOINT`, which is `Savepoint`).
    Rollback,
    /// SAVEPOINT, RELEASE [SAVEPOINT], ROLLBACK TO [SAVEPOINT].
    Savepoint,
    /// Any other SET.
    Set,
    /// `SET TRANSACTION ...`, `SET transaction_read_only = ...` (`session_default: false`);
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`,
    /// `SET default_transaction_read_only = ...` (`session_default: true`).
    SetTransaction {
        read_only: Option<bool>,
        session_default: bool,
    },
    Reset,
    Show,
    Discard,
    Deallocate,
    /// SQL-level `PREPARE name AS ...` (not PREPARE TRANSACTION, which is `Utility`).
    Prepare,
    /// SQL-level `EXECUTE name`.
    Execute,
    Explain {
        analyze: bool,
    },
    Ddl,
    Utility,
    Other,
}

/// Why a statement was routed the way it was.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A read-only statement.
    Read,
    /// BEGIN / COMMIT / ROLLBACK / SAVEPOINT ...
    TransactionControl,
    /// SET / RESET / DISCARD / DEALLOCATE / PREPARE: session state.
    Session,
    /// INSERT / UPDATE / DELETE / MERGE (the keyword).
    WriteStatement(&'static str),
    /// SELECT ... FOR UPDATE / SHARE / NO KEY UPDATE / KEY SHARE.
    LockingClause,
    /// A function with side effects: a built-in one, or a volatile function outside
    /// pg_catalog (from the catalog lookup).
    VolatileFunction(String),
    /// A function listed in the configured `write_functions`.
    WriteFunction(String),
    /// WITH x AS (INSERT/UPDATE/DELETE/MERGE ...).
    WritableCte,
    /// SELECT ... INTO new_table.
    SelectInto,
    Ddl,
    CopyFrom,
    /// A utility command (VACUUM, LOCK, CALL, DO, LISTEN, PREPARE TRANSACTION, ...).
    Utility(&'static str),
    /// sqlparser rejected it and the first keyword did not tell: primary, to be safe.
    ParseFailure,
    /// Forced by a `/* pgvane: ... */` hint (set by the session, not by `analyze`).
    Hint(RouteHint),
    /// Forced by `SET pgvane.route` (set by the session, not by `analyze`).
    SessionRoute,
}

impl Reason {
    /// Short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Read => "read",
            Reason::TransactionControl => "transaction_control",
            Reason::Session => "session",
            Reason::WriteStatement(_) => "write_statement",
            Reason::LockingClause => "locking_clause",
            Reason::VolatileFunction(_) => "volatile_function",
            Reason::WriteFunction(_) => "write_function",
            Reason::WritableCte => "writable_cte",
            Reason::SelectInto => "select_into",
            Reason::Ddl => "ddl",
            Reason::CopyFrom => "copy_from",
            Reason::Utility(_) => "utility",
            Reason::ParseFailure => "parse_failure",
            Reason::Hint(_) => "hint",
            Reason::SessionRoute => "session_route",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Read => f.write_str("read-only statement"),
            Reason::TransactionControl => f.write_str("transaction control"),
            Reason::Session => f.write_str("session statement"),
            Reason::WriteStatement(kw) => write!(f, "write statement ({kw})"),
            Reason::LockingClause => f.write_str("locking clause (FOR UPDATE/SHARE)"),
            Reason::VolatileFunction(n) => write!(f, "volatile function {n}"),
            Reason::WriteFunction(n) => write!(f, "configured write function {n}"),
            Reason::WritableCte => f.write_str("writable CTE"),
            Reason::SelectInto => f.write_str("SELECT INTO"),
            Reason::Ddl => f.write_str("DDL"),
            Reason::CopyFrom => f.write_str("COPY FROM"),
            Reason::Utility(kw) => write!(f, "utility {kw}"),
            Reason::ParseFailure => f.write_str("parse failure"),
            Reason::Hint(RouteHint::Primary) => f.write_str("hint pgvane: primary"),
            Reason::Hint(RouteHint::Replica) => f.write_str("hint pgvane: replica"),
            Reason::SessionRoute => f.write_str("SET pgvane.route"),
        }
    }
}

/// The verdict for one SQL string.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub kind: StatementKind,
    /// false = may go to a replica (subject to the volatility lookup of `functions`).
    pub write: bool,
    pub reason: Reason,
    /// Lower-cased (unless quoted) names of called functions that are not known pg_catalog
    /// built-ins: candidates for the volatility lookup. Empty for writes.
    pub functions: Vec<String>,
    /// Tables referenced (CTE names excluded), lower-cased unless quoted, qualified as written.
    pub tables: Vec<String>,
    /// The parsed AST (empty on parse failure).
    pub statements: Vec<Statement>,
    pub parse_failed: bool,
    pub multi_statement: bool,
    /// The sharding plan, computed once per cached analysis by the session (the cache is
    /// per database, so the plan matches that database's sharded tables).
    pub shard_plan: std::sync::OnceLock<crate::sharding::key::ShardPlan>,
}

impl Analysis {
    /// With the catalog answer (`volatile`: names known to be writes), is this a write?
    pub fn with_volatile(&self, volatile: &[String]) -> (bool, Reason) {
        if self.write {
            return (true, self.reason.clone());
        }
        match self.functions.iter().find(|f| volatile.contains(f)) {
            Some(f) => (true, Reason::VolatileFunction(f.clone())),
            None => (false, self.reason.clone()),
        }
    }
}

/// The classification of one statement.
pub(super) struct Verdict {
    pub(super) kind: StatementKind,
    pub(super) write: bool,
    pub(super) reason: Reason,
    pub(super) functions: Vec<String>,
    pub(super) tables: Vec<String>,
}

impl Verdict {
    pub(super) fn new(kind: StatementKind, write: bool, reason: Reason) -> Self {
        Verdict {
            kind,
            write,
            reason,
            functions: Vec::new(),
            tables: Vec::new(),
        }
    }
}

/// Statements with more operators than this are not parsed (they are classified by their
/// keywords): sqlparser builds one AST level per chained operator (`a OR b OR c ...`,
/// `1 + 1 + ...`) and recurses over it without a depth limit, which overflows a 2 MiB
/// stack somewhere past ~15,000 levels in debug builds.
pub const MAX_OPERATORS: usize = 3000;

/// Cheap pre-check against pathologically deep expressions (see [`MAX_OPERATORS`]).
fn too_deep(sql: &str) -> bool {
    let mut ops = 0usize;
    for (tok, r) in Lexer::new(sql) {
        let deepens = match tok {
            Tok::Op => !matches!(sql.get(r), Some("," | "(" | ")" | ";" | "." | "[" | "]")),
            Tok::Word => sql
                .get(r)
                .is_some_and(|w| w.eq_ignore_ascii_case("and") || w.eq_ignore_ascii_case("or")),
            _ => false,
        };
        ops += usize::from(deepens);
        if ops > MAX_OPERATORS {
            return true;
        }
    }
    false
}

/// Parse with sqlparser; `None` on any error, on pathologically deep input, or
/// (defensively) a parser panic.
pub(super) fn parse(sql: &str) -> Option<Vec<Statement>> {
    if too_deep(sql) {
        return None;
    }
    std::panic::catch_unwind(|| Parser::parse_sql(&PostgreSqlDialect {}, sql).ok())
        .ok()
        .flatten()
}

/// Analyze SQL text that has already been normalized (placeholders for literals), or raw SQL.
pub fn analyze(sql: &str, write_functions: &[String]) -> Analysis {
    match parse(sql) {
        Some(statements) => {
            let verdicts = statements
                .iter()
                .map(|s| classify(s, write_functions))
                .collect();
            combine(verdicts, statements, false)
        }
        None => combine(fallback(sql, write_functions), Vec::new(), true),
    }
}

fn combine(verdicts: Vec<Verdict>, statements: Vec<Statement>, parse_failed: bool) -> Analysis {
    let multi_statement = verdicts.len() > 1;
    let write = verdicts.iter().any(|v| v.write);
    let first = verdicts.first();
    let reason = verdicts
        .iter()
        .find(|v| v.write)
        .or(first)
        .map_or(Reason::Read, |v| v.reason.clone());
    let kind = first.map_or(StatementKind::Other, |v| v.kind);
    let (mut functions, mut tables) = (Vec::new(), Vec::new());
    for v in verdicts {
        if !write {
            push_unique(&mut functions, v.functions);
        }
        push_unique(&mut tables, v.tables);
    }
    Analysis {
        kind,
        write,
        reason,
        functions,
        tables,
        statements,
        parse_failed,
        multi_statement,
        shard_plan: std::sync::OnceLock::new(),
    }
}

fn push_unique(into: &mut Vec<String>, from: Vec<String>) {
    for s in from {
        if !into.contains(&s) {
            into.push(s);
        }
    }
}

/// PostgreSQL identifier folding: unquoted names are lower-cased.
pub(super) fn ident_name(id: &Ident) -> String {
    match id.quote_style {
        Some(_) => id.value.clone(),
        None => id.value.to_lowercase(),
    }
}

pub(super) fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => ident_name(id),
            other => other.to_string().to_lowercase(),
        })
        .collect()
}

fn truthy(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

fn expr_bool(e: &Expr) -> Option<bool> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => Some(*b),
            Value::Number(n, _) => truthy(n),
            Value::SingleQuotedString(s) => truthy(s),
            _ => None,
        },
        Expr::Identifier(id) => truthy(&id.value),
        _ => None,
    }
}

fn modes_read_only(modes: &[TransactionMode]) -> Option<bool> {
    modes.iter().rev().find_map(|m| match m {
        TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => Some(true),
        TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => Some(false),
        _ => None,
    })
}

/// EXPLAIN actually runs the statement with ANALYZE (keyword or option not set to false).
fn explain_runs(analyze: bool, options: &Option<Vec<UtilityOption>>) -> bool {
    analyze
        || options.iter().flatten().any(|o| {
            o.name.value.eq_ignore_ascii_case("analyze")
                && o.arg.as_ref().is_none_or(|a| expr_bool(a) != Some(false))
        })
}

pub(super) fn classify(stmt: &Statement, wf: &[String]) -> Verdict {
    use StatementKind as K;
    let write = |kind, reason| {
        let mut v = Verdict::new(kind, true, reason);
        v.tables = Scan::run(stmt, wf).tables;
        v
    };
    match stmt {
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Insert(_) => write(K::Insert, Reason::WriteStatement("INSERT")),
            SetExpr::Update(_) => write(K::Update, Reason::WriteStatement("UPDATE")),
            SetExpr::Delete(_) => write(K::Delete, Reason::WriteStatement("DELETE")),
            SetExpr::Merge(_) => write(K::Merge, Reason::WriteStatement("MERGE")),
            _ => Scan::run(stmt, wf).verdict(K::Select),
        },
        Statement::Insert(_) => write(K::Insert, Reason::WriteStatement("INSERT")),
        Statement::Update(_) => write(K::Update, Reason::WriteStatement("UPDATE")),
        Statement::Delete(_) => write(K::Delete, Reason::WriteStatement("DELETE")),
        Statement::Merge(_) => write(K::Merge, Reason::WriteStatement("MERGE")),
        Statement::Copy {
            to: false, target, ..
        } => {
            let from_stdin = matches!(target, sqlparser::ast::CopyTarget::Stdin);
            write(
                K::Copy {
                    from_stdin,
                    to: false,
                },
                Reason::CopyFrom,
            )
        }
        Statement::Copy { to: true, .. } => Scan::run(stmt, wf).verdict(K::Copy {
            from_stdin: false,
            to: true,
        }),
        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } => {
            let runs = explain_runs(*analyze, options);
            let mut inner = classify(statement, wf);
            inner.kind = K::Explain { analyze: runs };
            if !runs {
                inner.write = false;
                inner.reason = Reason::Read;
                inner.functions.clear();
            }
            inner
        }
        Statement::ExplainTable { .. } => {
            Verdict::new(K::Explain { analyze: false }, false, Reason::Read)
        }
        Statement::StartTransaction { modes, .. } => Verdict::new(
            K::Begin {
                read_only: modes_read_only(modes),
            },
            false,
            Reason::TransactionControl,
        ),
        Statement::Commit { .. } => Verdict::new(K::Commit, false, Reason::TransactionControl),
        Statement::Rollback {
            savepoint: None, ..
        } => Verdict::new(K::Rollback, false, Reason::TransactionControl),
        Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => {
            Verdict::new(K::Savepoint, false, Reason::TransactionControl)
        }
        Statement::Set(set) => Verdict::new(set_kind(set), false, Reason::Session),
        Statement::Reset(_) => Verdict::new(K::Reset, false, Reason::Session),
        Statement::Discard { .. } => Verdict::new(K::Discard, false, Reason::Session),
        Statement::Deallocate { .. } => Verdict::new(K::Deallocate, false, Reason::Session),
        Statement::Prepare { .. } => Verdict::new(K::Prepare, false, Reason::Session),
        Statement::Execute { .. } => Verdict::new(K::Execute, true, Reason::Utility("EXECUTE")),
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. }
        | Statement::ShowFunctions { .. } => Verdict::new(K::Show, false, Reason::Read),
        Statement::Declare { .. } => Scan::run(stmt, wf).verdict(K::Other),
        Statement::Fetch { .. } | Statement::Close { .. } => {
            Verdict::new(K::Other, false, Reason::Read)
        }
        Statement::Lock(_) | Statement::LockTables { .. } | Statement::UnlockTables => {
            write(K::Utility, Reason::Utility("LOCK"))
        }
        Statement::Call(_) => write(K::Utility, Reason::Utility("CALL")),
        Statement::Vacuum(_) => write(K::Utility, Reason::Utility("VACUUM")),
        Statement::Analyze(_) => write(K::Utility, Reason::Utility("ANALYZE")),
        Statement::LISTEN { .. } => write(K::Utility, Reason::Utility("LISTEN")),
        Statement::UNLISTEN { .. } => write(K::Utility, Reason::Utility("UNLISTEN")),
        Statement::NOTIFY { .. } => write(K::Utility, Reason::Utility("NOTIFY")),
        Statement::Load { .. } => write(K::Utility, Reason::Utility("LOAD")),
        s if is_ddl(s) => write(K::Ddl, Reason::Ddl),
        s => {
            let text = s.to_string();
            let kw = static_keyword(text.split_whitespace().next().unwrap_or(""));
            write(K::Other, Reason::Utility(kw))
        }
    }
}

fn set_kind(set: &Set) -> StatementKind {
    match set {
        Set::SingleAssignment {
            variable, values, ..
        } => {
            let var = name_parts(variable).join(".");
            let session_default = match var.as_str() {
                "default_transaction_read_only" => true,
                "transaction_read_only" => false,
                _ => return StatementKind::Set,
            };
            let read_only = values.first().and_then(expr_bool);
            StatementKind::SetTransaction {
                read_only,
                session_default,
            }
        }
        Set::SetTransaction { modes, session, .. } => StatementKind::SetTransaction {
            read_only: modes_read_only(modes),
            session_default: *session,
        },
        _ => StatementKind::Set,
    }
}

#[rustfmt::skip]
fn is_ddl(s: &Statement) -> bool {
    use Statement as S;
    matches!(
        s,
        S::CreateView { .. } | S::CreateTable { .. } | S::CreateVirtualTable { .. } |
        S::CreateIndex { .. } | S::CreateRole { .. } | S::CreateSecret { .. } |
        S::CreateServer { .. } | S::CreatePolicy { .. } | S::CreateConnector { .. } |
        S::CreateOperator { .. } | S::CreateOperatorFamily { .. } |
        S::CreateOperatorClass { .. } | S::CreateTextSearch { .. } | S::AlterTable { .. } |
        S::AlterSchema { .. } | S::AlterIndex { .. } | S::AlterView { .. } |
        S::AlterFunction { .. } | S::AlterType { .. } | S::AlterCollation { .. } |
        S::AlterOperator { .. } | S::AlterOperatorFamily { .. } |
        S::AlterOperatorClass { .. } | S::AlterTextSearch { .. } | S::AlterRole { .. } |
        S::AlterPolicy { .. } | S::AlterConnector { .. } | S::AlterUser { .. } |
        S::Drop { .. } | S::DropFunction { .. } | S::DropDomain { .. } |
        S::DropProcedure { .. } | S::DropSecret { .. } | S::DropPolicy { .. } |
        S::DropConnector { .. } | S::CreateExtension { .. } | S::CreateCollation { .. } |
        S::DropExtension { .. } | S::DropOperator { .. } | S::DropOperatorFamily { .. } |
        S::DropOperatorClass { .. } | S::Comment { .. } | S::CreateSchema { .. } |
        S::CreateDatabase { .. } | S::CreateFunction { .. } | S::CreateTrigger { .. } |
        S::DropTrigger { .. } | S::CreateProcedure { .. } | S::CreateMacro { .. } |
        S::CreateSequence { .. } | S::CreateDomain { .. } | S::CreateType { .. } |
        S::CreateUser { .. } | S::Grant { .. } | S::Revoke { .. } | S::RenameTable { .. } |
        S::Truncate { .. }
    )
}
