//! Shard-key extraction: finds the sharding key in a parsed statement and turns the
//! statement into a [`ShardPlan`].
//!
//! This module owns the rules that decide which rows of which sharded table a statement
//! can touch: `WHERE key = v` (also inside `AND`, under casts, either operand order,
//! qualified or aliased), `key IN (...)`, `OR` chains of key equalities, `key = ANY($n)`,
//! `key IS NULL`, key equalities between co-located sharded tables in joins and
//! correlated subqueries, and the key column of `INSERT ... VALUES` rows. A plan refers
//! to values only by reference ([`KeyRef`]); turning it into shard numbers is
//! [`super::plan`]'s job.
//!
//! Must not: do I/O, hash, or look at parameter values. It is a pure function of the
//! AST and the sharded-table configuration. It must never panic on any AST.
//!
//! Soundness rule: a plan may name more shards than needed, never fewer. Whenever the
//! analysis cannot prove that every sharded table occurrence in the statement is
//! pinned to known keys, the plan is [`ShardPlan::AllShards`].

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_relations, AssignmentTarget, BinaryOperator, CopySource, Delete, Expr, FromTable, Ident,
    Insert, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, OnConflictAction, OnInsert,
    Query, Select, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator,
    Update, UpdateTableFromKind, Value, Visit, Visitor,
};

use super::hash::KeyType;

/// Normalized literals appear as the placeholder `$N` with `N = LITERAL_PARAM_BASE + 1 + i`
/// for literal `i` (0-based). Must equal `router::LITERAL_PARAM_BASE`.
pub const LITERAL_PARAM_BASE: usize = 10000;

/// Configuration of one sharded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedTable {
    /// Schema, when the configuration names one (matched case-insensitively when the SQL
    /// qualifies the table; an unqualified name in SQL matches any configured schema).
    pub schema: Option<String>,
    /// Unqualified table name, lower-case.
    pub table: String,
    /// Sharding key column, lower-case.
    pub column: String,
    /// Type of the key column.
    pub key_type: KeyType,
}

/// Where a key value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// `$n`, 1-based: a real bind parameter.
    Param(usize),
    /// Index into the normalized literal list.
    Literal(usize),
    /// `-` before a normalized literal (`= -5`: the normalizer keeps the sign out).
    NegLiteral(usize),
    /// A literal left in the AST (raw text parse): its text (string content, unescaped,
    /// or number text).
    Const(String),
    /// SQL NULL.
    Null,
}

/// How a statement maps onto shards.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardPlan {
    /// No sharded table involved: `write` says whether it modifies (-> every shard) or
    /// reads (-> any one shard).
    Unsharded { write: bool },
    /// A sharded table with the key pinned to one of these values (WHERE key = v,
    /// key IN (...), OR of equalities on the key).
    Keys { table: usize, keys: Vec<KeyRef> },
    /// key = ANY($n) with an array parameter.
    AnyArray { table: usize, param: usize },
    /// INSERT ... VALUES with one key per row (in row order).
    InsertRows { table: usize, rows: Vec<KeyRef> },
    /// INSERT into a sharded table without a column list: the lead must look up the
    /// table's column order and call `plan_statement` again with `columns_of` answering.
    NeedColumns { table: usize },
    /// A sharded table without a usable key (or INSERT ... SELECT, subqueries we cannot
    /// see into): every shard.
    ///
    /// For an INSERT into a sharded table this means the rows could not be routed (key
    /// column missing from the column list, `DEFAULT` or a computed expression as key,
    /// `INSERT ... SELECT`, `ON CONFLICT DO UPDATE SET key = ...`): running it on every
    /// shard inserts the rows on every shard, so a caller should refuse it unless it
    /// knows the statement is a co-located `INSERT ... SELECT`. The same holds for an
    /// `UPDATE` that sets the key column: it is planned here (every shard), but the row
    /// keeps living on its old shard; callers may prefer to refuse it.
    AllShards { write: bool },
    /// DDL and other utility statements: every shard.
    Broadcast,
}

/// Plan one statement.
///
/// `columns_of(table)` is asked for the column order of a sharded table (called with the
/// configured, lower-case, unqualified table name) when an INSERT has no column list; if
/// it answers `None` the plan is [`ShardPlan::NeedColumns`].
pub fn plan_statement(
    stmt: &Statement,
    tables: &[ShardedTable],
    columns_of: &dyn Fn(&str) -> Option<Vec<String>>,
) -> ShardPlan {
    plan_with_write(stmt, tables, columns_of).0
}

/// Combine plans of several statements in one query string (conservative union).
///
/// - any `NeedColumns` wins (the caller must fetch columns and plan again);
/// - any `Broadcast` -> `Broadcast`; any `AllShards` -> `AllShards`;
/// - only unsharded statements -> `Unsharded` (write if any writes);
/// - an unsharded write next to a sharded statement -> `AllShards { write: true }`;
/// - sharded plans with keys of one type family are merged into one `Keys` (an
///   `InsertRows` contributes its row keys: a multi-row INSERT inside a multi-statement
///   string is sent whole to every shard of the union, so callers should refuse it when
///   that union has more than one shard); identical `AnyArray` plans stay `AnyArray`;
///   anything else -> `AllShards`.
pub fn plan_statements(
    stmts: &[Statement],
    tables: &[ShardedTable],
    columns_of: &dyn Fn(&str) -> Option<Vec<String>>,
) -> ShardPlan {
    let planned: Vec<(ShardPlan, bool)> = stmts
        .iter()
        .map(|s| plan_with_write(s, tables, columns_of))
        .collect();
    match planned.len() {
        0 => return ShardPlan::Unsharded { write: false },
        1 => {
            if let Some((p, _)) = planned.into_iter().next() {
                return p;
            }
            return ShardPlan::Unsharded { write: false };
        }
        _ => {}
    }
    if let Some((p, _)) = planned
        .iter()
        .find(|(p, _)| matches!(p, ShardPlan::NeedColumns { .. }))
    {
        return p.clone();
    }
    let write = planned.iter().any(|(_, w)| *w);
    if planned.iter().any(|(p, _)| *p == ShardPlan::Broadcast) {
        return ShardPlan::Broadcast;
    }
    if planned
        .iter()
        .any(|(p, _)| matches!(p, ShardPlan::AllShards { .. }))
    {
        return ShardPlan::AllShards { write };
    }
    let mut unsharded_write = false;
    let mut sharded: Vec<&ShardPlan> = Vec::new();
    for (p, _) in &planned {
        match p {
            ShardPlan::Unsharded { write } => unsharded_write |= *write,
            other => sharded.push(other),
        }
    }
    if sharded.is_empty() {
        return ShardPlan::Unsharded { write };
    }
    if unsharded_write {
        return ShardPlan::AllShards { write: true };
    }
    merge_sharded(&sharded, tables).unwrap_or(ShardPlan::AllShards { write })
}

/// Merge `Keys` / `InsertRows` / `AnyArray` plans; `None` when they cannot be merged.
fn merge_sharded(plans: &[&ShardPlan], tables: &[ShardedTable]) -> Option<ShardPlan> {
    let mut first_table: Option<usize> = None;
    let mut keys: Vec<KeyRef> = Vec::new();
    let mut any: Option<usize> = None;
    let mut saw_keys = false;
    for p in plans {
        let (table, ks, a) = match p {
            ShardPlan::Keys { table, keys } => (*table, Some(keys), None),
            ShardPlan::InsertRows { table, rows } => (*table, Some(rows), None),
            ShardPlan::AnyArray { table, param } => (*table, None, Some(*param)),
            _ => return None,
        };
        let ty = tables.get(table)?.key_type;
        match first_table {
            None => first_table = Some(table),
            Some(f) => {
                if family(tables.get(f)?.key_type) != family(ty) {
                    return None;
                }
            }
        }
        if let Some(ks) = ks {
            saw_keys = true;
            push_unique(&mut keys, ks);
        }
        if let Some(a) = a {
            if any.is_some_and(|x| x != a) {
                return None;
            }
            any = Some(a);
        }
    }
    let table = first_table?;
    match (saw_keys, any) {
        (true, None) => Some(ShardPlan::Keys { table, keys }),
        (false, Some(param)) => Some(ShardPlan::AnyArray { table, param }),
        _ => None,
    }
}

/// Plan a statement and say whether it modifies data.
fn plan_with_write(
    stmt: &Statement,
    tables: &[ShardedTable],
    columns_of: &dyn Fn(&str) -> Option<Vec<String>>,
) -> (ShardPlan, bool) {
    match stmt {
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_) => {
            let mut an = Analyzer::new(tables, columns_of);
            an.statement(stmt);
            // Safety net: every relation with a sharded table's name must have been seen
            // by the walker; if some construct hid one, plan for every shard.
            let mut expected = 0usize;
            let _ = visit_relations(stmt, |name| {
                if lookup_table(tables, name).is_some() {
                    expected += 1;
                }
                ControlFlow::<()>::Continue(())
            });
            let write = an.write;
            if expected != an.seen {
                return (ShardPlan::AllShards { write }, write);
            }
            (an.finish(), write)
        }
        Statement::Explain {
            statement, analyze, ..
        } => {
            let (inner, write) = plan_with_write(statement, tables, columns_of);
            let plan = match inner {
                // A plain EXPLAIN runs nothing: any shard of the rows is fine. EXPLAIN
                // ANALYZE executes the INSERT, so it keeps the row plan.
                ShardPlan::InsertRows { table, rows } if !*analyze => {
                    let mut keys = Vec::new();
                    push_unique(&mut keys, &rows);
                    ShardPlan::Keys { table, keys }
                }
                other => other,
            };
            (plan, write && *analyze)
        }
        Statement::Copy { source, to, .. } => {
            let write = !*to;
            match source {
                CopySource::Table { table_name, .. } => {
                    if lookup_table(tables, table_name).is_some() {
                        (ShardPlan::AllShards { write }, write)
                    } else {
                        (ShardPlan::Unsharded { write }, write)
                    }
                }
                CopySource::Query(q) => {
                    let q = Statement::Query(q.clone());
                    plan_with_write(&q, tables, columns_of)
                }
            }
        }
        // PREPARE must exist wherever a later EXECUTE may go; EXECUTE's body is unknown.
        Statement::Prepare { .. } | Statement::Deallocate { .. } => (ShardPlan::Broadcast, true),
        Statement::Execute { .. } => (ShardPlan::AllShards { write: true }, true),
        Statement::Call(_) => (ShardPlan::Unsharded { write: true }, true),
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowCollation { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ExplainTable { .. } => (ShardPlan::Unsharded { write: false }, false),
        // DDL, TRUNCATE, SET, transaction control, cursors, LISTEN/NOTIFY, ...
        _ => (ShardPlan::Broadcast, true),
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Key types that compare and hash alike (integers of every width hash equal values to
/// the same partition).
pub(crate) fn family(t: KeyType) -> u8 {
    match t {
        KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => 0,
        KeyType::Text => 1,
        KeyType::Uuid => 2,
    }
}

fn push_unique(into: &mut Vec<KeyRef>, from: &[KeyRef]) {
    for k in from {
        if !into.contains(k) {
            into.push(k.clone());
        }
    }
}

/// The identifiers of a name, or `None` if a part is not a plain identifier.
fn name_parts(name: &ObjectName) -> Option<Vec<&Ident>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => Some(id),
            _ => None,
        })
        .collect()
}

fn last_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => Some(id),
        _ => None,
    }
}

fn eq_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Index of the sharded table `name` refers to.
pub(crate) fn lookup_table(tables: &[ShardedTable], name: &ObjectName) -> Option<usize> {
    let parts = name_parts(name)?;
    let (table, rest) = parts.split_last()?;
    let schema = rest.last();
    tables.iter().position(|t| {
        eq_name(&t.table, &table.value)
            && match (&t.schema, schema) {
                (Some(cs), Some(s)) => eq_name(cs, &s.value),
                _ => true,
            }
    })
}

/// `$N` -> parameter or normalized literal reference.
fn placeholder(p: &str) -> Option<KeyRef> {
    let n: usize = p.strip_prefix('$')?.parse().ok()?;
    if n == 0 {
        None
    } else if n > LITERAL_PARAM_BASE {
        Some(KeyRef::Literal(n - LITERAL_PARAM_BASE - 1))
    } else {
        Some(KeyRef::Param(n))
    }
}

fn value_ref(v: &Value) -> Option<KeyRef> {
    match v {
        Value::Number(n, _) => Some(KeyRef::Const(n.to_string())),
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::NationalStringLiteral(s)
        | Value::UnicodeStringLiteral(s) => Some(KeyRef::Const(s.clone())),
        Value::DollarQuotedString(d) => Some(KeyRef::Const(d.value.clone())),
        Value::Null => Some(KeyRef::Null),
        Value::Placeholder(p) => placeholder(p),
        _ => None,
    }
}

/// A key value expression: a literal, `$n`, NULL, possibly cast or parenthesized.
fn key_ref(e: &Expr) -> Option<KeyRef> {
    match e {
        Expr::Nested(x) => key_ref(x),
        Expr::Cast { expr, .. } => key_ref(expr),
        Expr::Value(v) => value_ref(&v.value),
        Expr::TypedString(ts) => value_ref(&ts.value.value),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match strip(expr) {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(KeyRef::Const(format!("-{n}"))),
                Value::Placeholder(p) => match placeholder(p) {
                    Some(KeyRef::Literal(i)) => Some(KeyRef::NegLiteral(i)),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => match strip(expr) {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(KeyRef::Const(n.to_string())),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Strip parentheses and casts.
fn strip(mut e: &Expr) -> &Expr {
    loop {
        match e {
            Expr::Nested(x) => e = x,
            Expr::Cast { expr, .. } => e = expr,
            _ => return e,
        }
    }
}

/// Flatten a chain of `op` (AND / OR) without recursion on the chain itself.
fn flatten<'e>(e: &'e Expr, op: &BinaryOperator, out: &mut Vec<&'e Expr>) {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(x) if matches!(&**x, Expr::BinaryOp { op: o, .. } if o == op) => {
                stack.push(x);
            }
            other => out.push(other),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The analysis
// ---------------------------------------------------------------------------------------

/// What is known about the keys of one occurrence.
#[derive(Debug, Clone, PartialEq)]
enum Pin {
    Keys(Vec<KeyRef>),
    Any(usize),
}

/// The more precise of two pins on the same occurrence (both hold, so either is sound).
fn better(a: Option<Pin>, b: Pin) -> Pin {
    match (a, b) {
        (None, b) => b,
        (Some(Pin::Keys(x)), Pin::Keys(y)) => Pin::Keys(if y.len() < x.len() { y } else { x }),
        (Some(Pin::Any(_)), Pin::Keys(y)) => Pin::Keys(y),
        (Some(a), _) => a,
    }
}

/// A FROM item visible in a scope.
#[derive(Debug)]
struct Item {
    /// Visible name: alias or unqualified table name.
    name: String,
    /// The table's unqualified name when it has no alias (for `schema.table.col`).
    table: Option<String>,
    /// Sharded-table occurrence, if it is one.
    occ: Option<usize>,
}

#[derive(Debug, Default)]
struct Scope {
    items: Vec<Item>,
    /// Sharded occurrences of this scope.
    occs: Vec<usize>,
    /// CTE names defined here.
    ctes: Vec<String>,
    /// Columns merged by `JOIN ... USING`: unqualified name -> occurrence it denotes.
    merged: Vec<(String, Option<usize>)>,
}

#[derive(Debug)]
enum InsertKeys {
    Rows(Vec<KeyRef>),
    NeedColumns,
    Unroutable,
}

#[derive(Default)]
struct CondOut {
    pins: Vec<(usize, Pin)>,
    /// `(from, to)`: rows of `to` that matter have a key equal to a row of `from`.
    edges: Vec<(usize, usize)>,
}

struct Analyzer<'a> {
    tables: &'a [ShardedTable],
    columns_of: &'a dyn Fn(&str) -> Option<Vec<String>>,
    /// Occurrence -> sharded table index.
    occs: Vec<usize>,
    /// Occurrence -> best direct pin.
    pins: Vec<Option<Pin>>,
    edges: Vec<(usize, usize)>,
    scopes: Vec<Scope>,
    write: bool,
    writes_unsharded: bool,
    force_all: bool,
    /// Relations with a sharded table's name the walker saw (safety-net count).
    seen: usize,
    insert: Option<(usize, InsertKeys)>,
    /// Statement nesting (data-modifying CTEs are nested).
    nesting: usize,
}

/// Finds the subqueries directly below a node (not inside another subquery) and analyzes
/// each as a child scope of the current scope.
struct Finder<'x, 'a> {
    an: &'x mut Analyzer<'a>,
    depth: usize,
}

impl Visitor for Finder<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.an.query(query);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }
}

impl<'a> Analyzer<'a> {
    fn new(
        tables: &'a [ShardedTable],
        columns_of: &'a dyn Fn(&str) -> Option<Vec<String>>,
    ) -> Self {
        Analyzer {
            tables,
            columns_of,
            occs: Vec::new(),
            pins: Vec::new(),
            edges: Vec::new(),
            scopes: Vec::new(),
            write: false,
            writes_unsharded: false,
            force_all: false,
            seen: 0,
            insert: None,
            nesting: 0,
        }
    }

    fn find_subqueries<V: Visit + ?Sized>(&mut self, node: &V) {
        let mut f = Finder { an: self, depth: 0 };
        let _ = node.visit(&mut f);
    }

    fn family_of(&self, occ: usize) -> Option<u8> {
        let t = self.occs.get(occ)?;
        Some(family(self.tables.get(*t)?.key_type))
    }

    fn key_column(&self, occ: usize) -> Option<&str> {
        let t = self.occs.get(occ)?;
        Some(self.tables.get(*t)?.column.as_str())
    }

    fn new_occ(&mut self, table: usize) -> usize {
        self.occs.push(table);
        self.pins.push(None);
        self.occs.len() - 1
    }

    fn is_cte(&self, name: &ObjectName) -> bool {
        let Some(parts) = name_parts(name) else {
            return false;
        };
        let [only] = parts.as_slice() else {
            return false;
        };
        self.scopes
            .iter()
            .rev()
            .any(|s| s.ctes.iter().any(|c| eq_name(c, &only.value)))
    }

    fn add_item(&mut self, item: Item) {
        if let Some(scope) = self.scopes.last_mut() {
            if let Some(o) = item.occ {
                scope.occs.push(o);
            }
            scope.items.push(item);
        }
    }

    // --- statements --------------------------------------------------------------

    fn statement(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Query(q) => self.query(q),
            Statement::Insert(ins) => self.insert(ins),
            Statement::Update(u) => self.update(u),
            Statement::Delete(d) => self.delete(d),
            other => {
                // MERGE and anything else nested: every shard if it names a sharded table.
                self.write = true;
                let tables = self.tables;
                let mut found = 0usize;
                let _ = visit_relations(other, |name| {
                    if lookup_table(tables, name).is_some() {
                        found += 1;
                    }
                    ControlFlow::<()>::Continue(())
                });
                self.seen += found;
                if found > 0 {
                    self.force_all = true;
                    // Register an unpinned occurrence so the plan is sharded.
                    self.new_occ(0);
                } else {
                    self.writes_unsharded = true;
                }
            }
        }
    }

    fn query(&mut self, q: &Query) {
        let pushed = q.with.is_some();
        if let Some(with) = &q.with {
            self.scopes.push(Scope::default());
            for cte in &with.cte_tables {
                let name = cte.alias.name.value.clone();
                if with.recursive {
                    self.push_cte(name.clone());
                }
                self.query(&cte.query);
                if !with.recursive {
                    self.push_cte(name);
                }
            }
        }
        self.set_expr(&q.body);
        self.find_subqueries(&q.order_by);
        self.find_subqueries(&q.limit_clause);
        self.find_subqueries(&q.fetch);
        if pushed {
            self.scopes.pop();
        }
    }

    fn push_cte(&mut self, name: String) {
        if let Some(s) = self.scopes.last_mut() {
            s.ctes.push(name);
        }
    }

    fn set_expr(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(s) => self.select(s),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            SetExpr::Values(v) => self.find_subqueries(v),
            SetExpr::Insert(st)
            | SetExpr::Update(st)
            | SetExpr::Delete(st)
            | SetExpr::Merge(st) => {
                self.nesting += 1;
                self.statement(st);
                self.nesting -= 1;
            }
            SetExpr::Table(t) => {
                // `TABLE name`: every row of the table.
                let name = t.table_name.as_deref().map(|n| {
                    let mut parts = Vec::new();
                    if let Some(s) = &t.schema_name {
                        parts.push(Ident::new(s.clone()));
                    }
                    parts.push(Ident::new(n.to_string()));
                    ObjectName::from(parts)
                });
                if let Some(name) = name {
                    if let Some(t) = lookup_table(self.tables, &name) {
                        if !self.is_cte(&name) {
                            self.new_occ(t);
                        }
                    }
                }
            }
        }
    }

    fn select(&mut self, s: &Select) {
        self.scopes.push(Scope::default());
        if s.into.is_some() {
            // SELECT INTO creates a table.
            self.write = true;
            self.writes_unsharded = true;
        }
        for twj in &s.from {
            self.table_with_joins(twj);
        }
        if let Some(w) = &s.selection {
            let all = self.current_occs();
            self.condition(w, &all);
        }
        self.find_subqueries(s);
        self.scopes.pop();
    }

    fn insert(&mut self, ins: &Insert) {
        self.write = true;
        let top = self.nesting == 0;
        let target = match &ins.table {
            TableObject::TableName(n) => lookup_table(self.tables, n),
            _ => None,
        };
        match target {
            None => self.writes_unsharded = true,
            Some(t) => {
                self.seen += 1;
                if !top || self.insert.is_some() {
                    // A nested INSERT (data-modifying CTE) is sent whole to the shards of
                    // the statement: only a single routable row makes that correct.
                    let occ = self.new_occ(t);
                    match self.insert_keys(ins, t) {
                        InsertKeys::Rows(rows) if rows.len() == 1 => {
                            if let Some(slot) = self.pins.get_mut(occ) {
                                *slot = Some(Pin::Keys(rows));
                            }
                        }
                        _ => self.force_all = true,
                    }
                } else {
                    let keys = self.insert_keys(ins, t);
                    self.insert = Some((t, keys));
                }
            }
        }
        self.scopes.push(Scope::default());
        self.find_subqueries(ins);
        self.scopes.pop();
    }

    fn insert_keys(&self, ins: &Insert, t: usize) -> InsertKeys {
        let Some(cfg) = self.tables.get(t) else {
            return InsertKeys::Unroutable;
        };
        let key_col = cfg.column.as_str();
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            if let OnConflictAction::DoUpdate(du) = &oc.action {
                if du
                    .assignments
                    .iter()
                    .any(|a| assigns_column(&a.target, key_col))
                {
                    return InsertKeys::Unroutable;
                }
            }
        }
        let Some(src) = &ins.source else {
            return InsertKeys::Unroutable;
        };
        if src.with.is_some()
            || src.order_by.is_some()
            || src.limit_clause.is_some()
            || src.fetch.is_some()
        {
            return InsertKeys::Unroutable;
        }
        let SetExpr::Values(v) = &*src.body else {
            return InsertKeys::Unroutable;
        };
        let pos = if !ins.columns.is_empty() {
            ins.columns
                .iter()
                .position(|c| last_ident(c).is_some_and(|id| eq_name(&id.value, key_col)))
        } else {
            match (self.columns_of)(&cfg.table) {
                Some(cols) => cols.iter().position(|c| eq_name(c, key_col)),
                None => return InsertKeys::NeedColumns,
            }
        };
        let Some(pos) = pos else {
            return InsertKeys::Unroutable;
        };
        let mut rows = Vec::with_capacity(v.rows.len());
        for row in &v.rows {
            match row.content.get(pos).and_then(key_ref) {
                Some(k) => rows.push(k),
                None => return InsertKeys::Unroutable,
            }
        }
        InsertKeys::Rows(rows)
    }

    fn update(&mut self, u: &Update) {
        self.write = true;
        self.scopes.push(Scope::default());
        let target = self.table_with_joins(&u.table);
        if target.is_empty() {
            self.writes_unsharded = true;
        }
        if let Some(from) = &u.from {
            let list = match from {
                UpdateTableFromKind::BeforeSet(l) | UpdateTableFromKind::AfterSet(l) => l,
            };
            for twj in list {
                self.table_with_joins(twj);
            }
        }
        if let Some(&occ) = target.first() {
            if let Some(col) = self.key_column(occ) {
                if u.assignments.iter().any(|a| assigns_column(&a.target, col)) {
                    // The key changes: the row would have to move to another shard.
                    self.force_all = true;
                }
            }
        }
        if let Some(w) = &u.selection {
            let all = self.current_occs();
            self.condition(w, &all);
        }
        self.find_subqueries(u);
        self.scopes.pop();
    }

    fn delete(&mut self, d: &Delete) {
        self.write = true;
        self.scopes.push(Scope::default());
        let from = match &d.from {
            FromTable::WithFromKeyword(l) | FromTable::WithoutKeyword(l) => l,
        };
        for (i, twj) in from.iter().enumerate() {
            let occs = self.table_with_joins(twj);
            if i == 0 && occs.is_empty() {
                self.writes_unsharded = true;
            }
        }
        if from.is_empty() {
            self.writes_unsharded = true;
        }
        if let Some(using) = &d.using {
            for twj in using {
                self.table_with_joins(twj);
            }
        }
        if let Some(w) = &d.selection {
            let all = self.current_occs();
            self.condition(w, &all);
        }
        self.find_subqueries(d);
        self.scopes.pop();
    }

    fn current_occs(&self) -> Vec<usize> {
        self.scopes
            .last()
            .map(|s| s.occs.clone())
            .unwrap_or_default()
    }

    // --- FROM ---------------------------------------------------------------------

    /// Register the items of a FROM entry in the current scope, analyze its join
    /// conditions, and return its sharded occurrences.
    fn table_with_joins(&mut self, twj: &TableWithJoins) -> Vec<usize> {
        let mut left = self.table_factor(&twj.relation);
        for join in &twj.joins {
            let right = self.table_factor(&join.relation);
            let (constraint, pin_left, pin_right) = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::StraightJoin(c) => (Some(c), true, true),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (Some(c), false, true),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (Some(c), true, false),
                _ => (None, false, false),
            };
            let mut pinnable = Vec::new();
            if pin_left {
                pinnable.extend_from_slice(&left);
            }
            if pin_right {
                pinnable.extend_from_slice(&right);
            }
            match constraint {
                Some(JoinConstraint::On(e)) => self.condition(e, &pinnable),
                Some(JoinConstraint::Using(cols)) => {
                    for c in cols {
                        if let Some(id) = last_ident(c) {
                            self.using_column(&id.value, &left, &right, pin_left, pin_right);
                        }
                    }
                }
                _ => {}
            }
            left.extend(right);
        }
        left
    }

    /// `JOIN ... USING (col)`: the two sides' `col` are equal.
    fn using_column(
        &mut self,
        col: &str,
        left: &[usize],
        right: &[usize],
        pin_left: bool,
        pin_right: bool,
    ) {
        let l = self.side_column(col, left);
        let r = self.side_column(col, right);
        if let (Some(l), Some(r)) = (l, r) {
            if self.family_of(l) == self.family_of(r) {
                if pin_right {
                    self.edges.push((l, r));
                }
                if pin_left {
                    self.edges.push((r, l));
                }
            }
        }
        let merged = match (pin_left, pin_right) {
            (true, true) | (false, true) => l,
            (true, false) => r,
            (false, false) => None,
        };
        if let Some(s) = self.scopes.last_mut() {
            s.merged.push((col.to_string(), merged));
        }
    }

    /// The occurrence among `side` whose key column is `col` (a merged USING column of
    /// that side first).
    fn side_column(&self, col: &str, side: &[usize]) -> Option<usize> {
        if let Some(s) = self.scopes.last() {
            if let Some((_, Some(m))) = s.merged.iter().rev().find(|(n, _)| eq_name(n, col)) {
                if side.contains(m) {
                    return Some(*m);
                }
            }
        }
        let mut found = side
            .iter()
            .copied()
            .filter(|&o| self.key_column(o).is_some_and(|c| eq_name(c, col)));
        match (found.next(), found.next()) {
            (Some(o), None) => Some(o),
            _ => None,
        }
    }

    fn table_factor(&mut self, tf: &TableFactor) -> Vec<usize> {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let sharded = lookup_table(self.tables, name);
                if sharded.is_some() {
                    self.seen += 1;
                }
                let table_name = last_ident(name).map(|i| i.value.clone());
                let visible = alias
                    .as_ref()
                    .map(|a| a.name.value.clone())
                    .or_else(|| table_name.clone())
                    .unwrap_or_default();
                let occ = match sharded {
                    Some(t) if args.is_none() && !self.is_cte(name) => Some(self.new_occ(t)),
                    _ => None,
                };
                self.add_item(Item {
                    name: visible,
                    table: if alias.is_none() { table_name } else { None },
                    occ,
                });
                occ.into_iter().collect()
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins),
            TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. } => {
                if let Some(a) = alias {
                    self.add_item(Item {
                        name: a.name.value.clone(),
                        table: None,
                        occ: None,
                    });
                }
                Vec::new()
            }
            // Anything else: a sharded table inside it is caught by the safety net.
            _ => Vec::new(),
        }
    }

    // --- conditions ---------------------------------------------------------------

    /// Analyze a condition; pins and edges only land on occurrences in `pinnable` (the
    /// ones whose surviving rows must satisfy it).
    fn condition(&mut self, e: &Expr, pinnable: &[usize]) {
        let mut out = CondOut::default();
        self.cond(e, pinnable, &mut out);
        for (occ, pin) in out.pins {
            if let Some(slot) = self.pins.get_mut(occ) {
                *slot = Some(better(slot.take(), pin));
            }
        }
        self.edges.extend(out.edges);
    }

    fn cond(&self, e: &Expr, pinnable: &[usize], out: &mut CondOut) {
        match e {
            Expr::Nested(x) => self.cond(x, pinnable, out),
            Expr::BinaryOp {
                op: BinaryOperator::And,
                ..
            } => {
                let mut parts = Vec::new();
                flatten(e, &BinaryOperator::And, &mut parts);
                for p in parts {
                    self.cond(p, pinnable, out);
                }
            }
            Expr::BinaryOp {
                op: BinaryOperator::Or,
                ..
            } => {
                let mut parts = Vec::new();
                flatten(e, &BinaryOperator::Or, &mut parts);
                let mut acc: Option<Vec<(usize, Pin)>> = None;
                for p in parts {
                    let mut sub = CondOut::default();
                    self.cond(p, pinnable, &mut sub);
                    // Best pin per occurrence within this disjunct.
                    let mut map: Vec<(usize, Pin)> = Vec::new();
                    for (o, pin) in sub.pins {
                        match map.iter_mut().find(|(x, _)| *x == o) {
                            Some(slot) => {
                                let old = std::mem::replace(&mut slot.1, Pin::Any(0));
                                slot.1 = better(Some(old), pin);
                            }
                            None => map.push((o, pin)),
                        }
                    }
                    acc = Some(match acc {
                        None => map,
                        Some(prev) => prev
                            .into_iter()
                            .filter_map(|(o, pin)| {
                                let (_, other) = map.iter().find(|(x, _)| *x == o)?;
                                match (pin, other) {
                                    (Pin::Keys(mut a), Pin::Keys(b)) => {
                                        push_unique(&mut a, b);
                                        Some((o, Pin::Keys(a)))
                                    }
                                    (Pin::Any(a), Pin::Any(b)) if a == *b => Some((o, Pin::Any(a))),
                                    _ => None,
                                }
                            })
                            .collect(),
                    });
                    if acc.as_ref().is_some_and(|a| a.is_empty()) {
                        break;
                    }
                }
                out.pins.extend(acc.unwrap_or_default());
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (self.key_col(left), self.key_col(right)) {
                (Some(a), Some(b)) => {
                    if a != b && self.family_of(a) == self.family_of(b) {
                        if pinnable.contains(&b) {
                            out.edges.push((a, b));
                        }
                        if pinnable.contains(&a) {
                            out.edges.push((b, a));
                        }
                    }
                }
                (Some(a), None) => {
                    if pinnable.contains(&a) {
                        if let Some(k) = key_ref(right) {
                            out.pins.push((a, Pin::Keys(vec![k])));
                        }
                    }
                }
                (None, Some(b)) => {
                    if pinnable.contains(&b) {
                        if let Some(k) = key_ref(left) {
                            out.pins.push((b, Pin::Keys(vec![k])));
                        }
                    }
                }
                (None, None) => {}
            },
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                if let Some(a) = self.key_col(expr).filter(|a| pinnable.contains(a)) {
                    let keys: Option<Vec<KeyRef>> = list.iter().map(key_ref).collect();
                    if let Some(keys) = keys {
                        let mut uniq = Vec::new();
                        push_unique(&mut uniq, &keys);
                        out.pins.push((a, Pin::Keys(uniq)));
                    }
                }
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => {
                if let Some(a) = self.key_col(left).filter(|a| pinnable.contains(a)) {
                    if let Some(pin) = any_pin(right) {
                        out.pins.push((a, pin));
                    }
                }
            }
            Expr::IsNull(x) => {
                if let Some(a) = self.key_col(x).filter(|a| pinnable.contains(a)) {
                    out.pins.push((a, Pin::Keys(vec![KeyRef::Null])));
                }
            }
            _ => {}
        }
    }

    /// The occurrence whose key column `e` names (a bare, possibly qualified column).
    fn key_col(&self, e: &Expr) -> Option<usize> {
        match e {
            Expr::Nested(x) => self.key_col(x),
            Expr::Identifier(id) => self.unqualified(&id.value),
            Expr::CompoundIdentifier(parts) => self.qualified(parts),
            _ => None,
        }
    }

    fn unqualified(&self, col: &str) -> Option<usize> {
        let scope = self.scopes.last()?;
        if let Some((_, m)) = scope.merged.iter().rev().find(|(n, _)| eq_name(n, col)) {
            return *m;
        }
        let mut found = scope
            .occs
            .iter()
            .copied()
            .filter(|&o| self.key_column(o).is_some_and(|c| eq_name(c, col)));
        match (found.next(), found.next()) {
            (Some(o), None) => Some(o),
            _ => None,
        }
    }

    fn qualified(&self, parts: &[Ident]) -> Option<usize> {
        let (col, rest) = parts.split_last()?;
        let (qual, schema_part) = rest.split_last()?;
        for scope in self.scopes.iter().rev() {
            let hit = scope.items.iter().rev().find(|it| {
                if schema_part.is_empty() {
                    eq_name(&it.name, &qual.value)
                } else {
                    it.table.as_deref().is_some_and(|t| eq_name(t, &qual.value))
                }
            });
            if let Some(it) = hit {
                let occ = it.occ?;
                return self
                    .key_column(occ)
                    .filter(|c| eq_name(c, &col.value))
                    .map(|_| occ);
            }
        }
        None
    }

    // --- result -------------------------------------------------------------------

    /// Best pin reachable from `occ` through edges (inherited keys).
    fn reachable_pin(&self, occ: usize) -> Option<Pin> {
        let mut visited = vec![false; self.occs.len()];
        let mut stack = vec![occ];
        let mut best: Option<Pin> = None;
        while let Some(o) = stack.pop() {
            match visited.get_mut(o) {
                Some(v) if !*v => *v = true,
                _ => continue,
            }
            if let Some(Some(p)) = self.pins.get(o) {
                best = Some(better(best, p.clone()));
            }
            for &(from, to) in &self.edges {
                if to == o {
                    stack.push(from);
                }
            }
        }
        best
    }

    fn finish(self) -> ShardPlan {
        let write = self.write;
        if self.occs.is_empty() && self.insert.is_none() {
            return ShardPlan::Unsharded { write };
        }
        if self.force_all {
            return ShardPlan::AllShards { write };
        }
        if self.writes_unsharded {
            // A replicated (unsharded) table written from sharded data.
            return ShardPlan::AllShards { write: true };
        }
        if let Some((table, keys)) = self.insert {
            if !self.occs.is_empty() {
                return ShardPlan::AllShards { write: true };
            }
            return match keys {
                InsertKeys::Rows(rows) => ShardPlan::InsertRows { table, rows },
                InsertKeys::NeedColumns => ShardPlan::NeedColumns { table },
                InsertKeys::Unroutable => ShardPlan::AllShards { write: true },
            };
        }
        let all = ShardPlan::AllShards { write };
        let Some(&first_table) = self.occs.first() else {
            return all;
        };
        let Some(first_family) = self.family_of(0) else {
            return all;
        };
        let mut keys: Vec<KeyRef> = Vec::new();
        let mut any: Option<usize> = None;
        for occ in 0..self.occs.len() {
            if self.family_of(occ) != Some(first_family) {
                return all;
            }
            match self.reachable_pin(occ) {
                None => return all,
                Some(Pin::Keys(k)) => push_unique(&mut keys, &k),
                Some(Pin::Any(p)) => {
                    if any.is_some_and(|a| a != p) {
                        return all;
                    }
                    any = Some(p);
                }
            }
        }
        match any {
            None => ShardPlan::Keys {
                table: first_table,
                keys,
            },
            Some(param) if keys.is_empty() => ShardPlan::AnyArray {
                table: first_table,
                param,
            },
            Some(_) => all,
        }
    }
}

/// Does an assignment target name column `col` (qualified or not)?
fn assigns_column(target: &AssignmentTarget, col: &str) -> bool {
    let hit = |n: &ObjectName| last_ident(n).is_some_and(|id| eq_name(&id.value, col));
    match target {
        AssignmentTarget::ColumnName(n) => hit(n),
        AssignmentTarget::Tuple(ns) => ns.iter().any(hit),
    }
}

/// `key = ANY(<right>)`.
fn any_pin(right: &Expr) -> Option<Pin> {
    match strip(right) {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => match placeholder(p)? {
                KeyRef::Param(n) => Some(Pin::Any(n)),
                _ => None,
            },
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::NationalStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => const_array(s),
            Value::DollarQuotedString(d) => const_array(&d.value),
            _ => None,
        },
        Expr::Array(arr) => {
            let keys: Option<Vec<KeyRef>> = arr.elem.iter().map(key_ref).collect();
            let mut uniq = Vec::new();
            push_unique(&mut uniq, &keys?);
            Some(Pin::Keys(uniq))
        }
        _ => None,
    }
}

/// A constant array literal such as `'{1,2,3}'` written in the SQL text.
fn const_array(text: &str) -> Option<Pin> {
    let elems = super::plan::parse_text_array(text).ok()?;
    let mut keys = Vec::new();
    for e in elems {
        let k = match e {
            Some(s) => KeyRef::Const(s),
            None => KeyRef::Null,
        };
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    Some(Pin::Keys(keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn tables() -> Vec<ShardedTable> {
        vec![
            ShardedTable {
                schema: None,
                table: "orders".into(),
                column: "customer_id".into(),
                key_type: KeyType::Int8,
            },
            ShardedTable {
                schema: Some("public".into()),
                table: "items".into(),
                column: "customer_id".into(),
                key_type: KeyType::Int4,
            },
            ShardedTable {
                schema: None,
                table: "users".into(),
                column: "email".into(),
                key_type: KeyType::Text,
            },
        ]
    }

    fn no_cols(_: &str) -> Option<Vec<String>> {
        None
    }

    fn parse(sql: &str) -> Vec<Statement> {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn plan(sql: &str) -> ShardPlan {
        let stmts = parse(sql);
        assert_eq!(stmts.len(), 1, "{sql}");
        plan_statement(&stmts[0], &tables(), &no_cols)
    }

    fn keys(table: usize, keys: Vec<KeyRef>) -> ShardPlan {
        ShardPlan::Keys { table, keys }
    }

    fn c(s: &str) -> KeyRef {
        KeyRef::Const(s.into())
    }

    const ALL_R: ShardPlan = ShardPlan::AllShards { write: false };
    const ALL_W: ShardPlan = ShardPlan::AllShards { write: true };

    #[test]
    fn placeholders_map_to_params_and_literals() {
        assert_eq!(placeholder("$1"), Some(KeyRef::Param(1)));
        assert_eq!(placeholder("$10000"), Some(KeyRef::Param(10000)));
        assert_eq!(placeholder("$10001"), Some(KeyRef::Literal(0)));
        assert_eq!(placeholder("$10003"), Some(KeyRef::Literal(2)));
        assert_eq!(placeholder("$0"), None);
        assert_eq!(placeholder("?"), None);
        assert_eq!(placeholder("$x"), None);
        assert_eq!(placeholder("$99999999999999999999999"), None);
    }

    #[test]
    fn where_equality_normalized_and_raw() {
        let lit0 = keys(0, vec![KeyRef::Literal(0)]);
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = $10001"),
            lit0
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE $10001 = customer_id"),
            lit0
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = 42"),
            keys(0, vec![c("42")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE 42 = customer_id"),
            keys(0, vec![c("42")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = -42"),
            keys(0, vec![c("-42")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = $1"),
            keys(0, vec![KeyRef::Param(1)])
        );
        assert_eq!(
            plan("SELECT * FROM users WHERE email = 'O''Brien'"),
            keys(2, vec![c("O'Brien")])
        );
        assert_eq!(
            plan("SELECT * FROM users WHERE email = E'a\\'b'"),
            keys(2, vec![c("a'b")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id IS NULL"),
            keys(0, vec![KeyRef::Null])
        );
    }

    #[test]
    fn and_chains_casts_and_qualifiers() {
        let p1 = keys(0, vec![KeyRef::Param(1)]);
        assert_eq!(
            plan("SELECT * FROM orders WHERE status = 'x' AND customer_id = $1 AND total > 5"),
            p1
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = $1::bigint"),
            p1
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = CAST($1 AS bigint)"),
            p1
        );
        assert_eq!(plan("SELECT * FROM orders WHERE (customer_id) = ($1)"), p1);
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = 42::bigint"),
            keys(0, vec![c("42")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = $10001::bigint"),
            keys(0, vec![KeyRef::Literal(0)])
        );
        assert_eq!(plan("SELECT * FROM orders o WHERE o.customer_id = $1"), p1);
        assert_eq!(
            plan("SELECT * FROM orders AS o WHERE $1 = o.customer_id"),
            p1
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE orders.customer_id = $1"),
            p1
        );
        assert_eq!(
            plan("SELECT * FROM public.orders WHERE public.orders.customer_id = $1"),
            p1
        );
        assert_eq!(
            plan(r#"SELECT * FROM "Orders" WHERE "CUSTOMER_ID" = $1"#),
            p1
        );
        assert_eq!(plan("SELECT * FROM ORDERS WHERE Customer_Id = $1"), p1);
        // Aliased: the table name is no longer visible; a non-key column is no pin.
        assert_eq!(
            plan("SELECT * FROM orders o WHERE orders.customer_id = $1"),
            ALL_R
        );
        assert_eq!(plan("SELECT * FROM orders WHERE id = $1"), ALL_R);
        // A cast on the column side is not the key itself.
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id::text = '5'"),
            ALL_R
        );
    }

    #[test]
    fn in_lists_and_or_chains() {
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id IN ($10001, $10002, $1)"),
            keys(
                0,
                vec![KeyRef::Literal(0), KeyRef::Literal(1), KeyRef::Param(1)]
            )
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id IN (1, 2, 2)"),
            keys(0, vec![c("1"), c("2")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id NOT IN (1, 2)"),
            ALL_R
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = 1 OR customer_id = 2 OR customer_id IN (3, 4)"),
            keys(0, vec![c("1"), c("2"), c("3"), c("4")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE (customer_id = 1 AND x = 2) OR customer_id = 3"),
            keys(0, vec![c("1"), c("3")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE (customer_id = $10001 OR customer_id = $10002) AND status = $10003"),
            keys(0, vec![KeyRef::Literal(0), KeyRef::Literal(1)])
        );
        // A key condition under OR with a non-key condition is unusable.
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = 1 OR status = 'x'"),
            ALL_R
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE NOT (customer_id = 1)"),
            ALL_R
        );
        assert_eq!(plan("SELECT * FROM orders WHERE customer_id <> 1"), ALL_R);
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = other_col"),
            ALL_R
        );
        assert_eq!(plan("SELECT * FROM orders WHERE customer_id = f(1)"), ALL_R);
    }

    #[test]
    fn any_array() {
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = ANY($1)"),
            ShardPlan::AnyArray { table: 0, param: 1 }
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = ANY($2::bigint[]) AND x = $1"),
            ShardPlan::AnyArray { table: 0, param: 2 }
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = ANY(ARRAY[1, $1, $10001])"),
            keys(0, vec![c("1"), KeyRef::Param(1), KeyRef::Literal(0)])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = ANY('{1,5,9}'::bigint[])"),
            keys(0, vec![c("1"), c("5"), c("9")])
        );
        // A normalized array literal cannot be expressed: every shard.
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = ANY($10001::bigint[])"),
            ALL_R
        );
        // A key list wins over an array on the same occurrence.
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = ANY($1) AND customer_id = 4"),
            keys(0, vec![c("4")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = ANY($1) OR customer_id = ANY($1)"),
            ShardPlan::AnyArray { table: 0, param: 1 }
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = ANY($1) OR customer_id = 4"),
            ALL_R
        );
    }

    #[test]
    fn joins() {
        // Sharded table joined with an unsharded one: planned by the sharded table.
        assert_eq!(
            plan("SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = $1"),
            keys(0, vec![KeyRef::Param(1)])
        );
        assert_eq!(
            plan("SELECT * FROM customers c, orders o WHERE c.id = o.customer_id AND o.customer_id = 7"),
            keys(0, vec![c("7")])
        );
        // Key condition in the ON clause of an inner join.
        assert_eq!(
            plan("SELECT * FROM customers c JOIN orders o ON o.customer_id = $1"),
            keys(0, vec![KeyRef::Param(1)])
        );
        // Co-located join: the pin propagates through the key equality.
        assert_eq!(
            plan("SELECT * FROM orders o JOIN items i ON i.customer_id = o.customer_id WHERE o.customer_id = 5"),
            keys(0, vec![c("5")])
        );
        assert_eq!(
            plan("SELECT * FROM orders o JOIN items i USING (customer_id) WHERE customer_id = 5"),
            keys(0, vec![c("5")])
        );
        // LEFT JOIN: the nullable side follows the preserved side, not the reverse.
        assert_eq!(
            plan("SELECT * FROM orders o LEFT JOIN items i ON i.customer_id = o.customer_id WHERE o.customer_id = 5"),
            keys(0, vec![c("5")])
        );
        assert_eq!(
            plan("SELECT * FROM orders o LEFT JOIN items i ON i.customer_id = o.customer_id AND i.customer_id = 5"),
            ALL_R
        );
        assert_eq!(
            plan("SELECT * FROM orders o LEFT JOIN customers c ON o.customer_id = 5"),
            ALL_R
        );
        assert_eq!(
            plan("SELECT * FROM orders o FULL JOIN items i ON i.customer_id = o.customer_id WHERE o.customer_id = 5"),
            ALL_R
        );
        // Two sharded tables with separate pins: union of keys.
        assert_eq!(
            plan("SELECT * FROM orders o, items i WHERE o.customer_id = 1 AND i.customer_id = 2"),
            keys(0, vec![c("1"), c("2")])
        );
        // One sharded occurrence unpinned.
        assert_eq!(
            plan("SELECT * FROM orders o JOIN items i ON i.id = o.id WHERE o.customer_id = 5"),
            ALL_R
        );
        // Ambiguous unqualified key column (both tables have it).
        assert_eq!(
            plan("SELECT * FROM orders o, items i WHERE customer_id = 5"),
            ALL_R
        );
        // Different key families cannot be combined.
        assert_eq!(
            plan("SELECT * FROM orders o, users u WHERE o.customer_id = 1 AND u.email = 'a'"),
            ALL_R
        );
    }

    #[test]
    fn subqueries_and_ctes() {
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = 5 AND id IN (SELECT order_id FROM items WHERE customer_id = 5)"),
            keys(0, vec![c("5")])
        );
        assert_eq!(
            plan("SELECT * FROM orders o WHERE o.customer_id = 5 AND EXISTS (SELECT 1 FROM items i WHERE i.customer_id = o.customer_id)"),
            keys(0, vec![c("5")])
        );
        // A subquery on a sharded table without key.
        assert_eq!(
            plan(
                "SELECT * FROM orders WHERE customer_id = 5 AND id IN (SELECT order_id FROM items)"
            ),
            ALL_R
        );
        // A condition on an outer column inside a subquery does not pin the outer table.
        assert_eq!(
            plan("SELECT * FROM orders o WHERE NOT EXISTS (SELECT 1 FROM items i WHERE o.customer_id = 5 AND i.customer_id = 5)"),
            ALL_R
        );
        assert_eq!(
            plan("WITH x AS (SELECT * FROM orders WHERE customer_id = $1) SELECT * FROM x"),
            keys(0, vec![KeyRef::Param(1)])
        );
        // A CTE shadowing a sharded table's name.
        assert_eq!(
            plan("WITH orders AS (SELECT 1 AS customer_id) SELECT * FROM orders"),
            ShardPlan::Unsharded { write: false }
        );
        assert_eq!(
            plan("SELECT * FROM (SELECT * FROM orders WHERE customer_id = 3) s"),
            keys(0, vec![c("3")])
        );
        assert_eq!(
            plan("SELECT * FROM (SELECT * FROM orders) s WHERE s.customer_id = 3"),
            ALL_R
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = 1 UNION ALL SELECT * FROM orders WHERE customer_id = 2"),
            keys(0, vec![c("1"), c("2")])
        );
        assert_eq!(
            plan("SELECT * FROM orders WHERE customer_id = 1 UNION SELECT * FROM orders"),
            ALL_R
        );
        assert_eq!(
            plan("SELECT (SELECT count(*) FROM orders) FROM customers"),
            ALL_R
        );
        // Sharded table plus unsharded reads in subqueries.
        assert_eq!(
            plan(
                "SELECT * FROM orders WHERE customer_id = 9 AND region IN (SELECT id FROM regions)"
            ),
            keys(0, vec![c("9")])
        );
        // A data-modifying CTE.
        assert_eq!(
            plan(
                "WITH d AS (DELETE FROM orders WHERE customer_id = 4 RETURNING *) SELECT * FROM d"
            ),
            keys(0, vec![c("4")])
        );
        assert_eq!(
            plan("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d"),
            ALL_W
        );
        assert_eq!(
            plan("WITH i AS (INSERT INTO orders (customer_id) VALUES ($1) RETURNING id) SELECT * FROM i"),
            keys(0, vec![KeyRef::Param(1)])
        );
        assert_eq!(
            plan("WITH i AS (INSERT INTO orders (customer_id) VALUES (1), (2) RETURNING id) SELECT * FROM i"),
            ALL_W
        );
        assert_eq!(
            plan("WITH i AS (INSERT INTO log (a) VALUES (1)) SELECT * FROM orders WHERE customer_id = 1"),
            ALL_W
        );
    }

    #[test]
    fn unsharded_and_broadcast() {
        let read = ShardPlan::Unsharded { write: false };
        let write = ShardPlan::Unsharded { write: true };
        assert_eq!(plan("SELECT 1"), read);
        assert_eq!(plan("SELECT now(), $1"), read);
        assert_eq!(plan("SELECT * FROM customers WHERE id = 5"), read);
        assert_eq!(
            plan("SELECT * FROM other.orders WHERE customer_id = 5"),
            plan("SELECT * FROM orders WHERE customer_id = 5")
        );
        assert_eq!(
            plan("SELECT * FROM other.items WHERE customer_id = 5"),
            read
        );
        assert_eq!(plan("INSERT INTO customers (id) VALUES (1)"), write);
        assert_eq!(plan("UPDATE customers SET name = 'x' WHERE id = 1"), write);
        assert_eq!(plan("DELETE FROM customers"), write);
        assert_eq!(plan("SHOW search_path"), read);
        assert_eq!(plan("CALL do_it()"), write);
        for ddl in [
            "CREATE TABLE t (id int)",
            "CREATE TABLE orders (customer_id bigint, id bigint)",
            "ALTER TABLE orders ADD COLUMN x int",
            "DROP TABLE orders",
            "CREATE INDEX ON orders (id)",
            "DROP INDEX orders_id_idx",
            "TRUNCATE orders",
            "SET search_path = public",
            "BEGIN",
            "COMMIT",
            "PREPARE p AS SELECT * FROM orders WHERE customer_id = $1",
            "VACUUM orders",
        ] {
            assert_eq!(plan(ddl), ShardPlan::Broadcast, "{ddl}");
        }
        assert_eq!(plan("EXECUTE p(1)"), ALL_W);
        assert_eq!(plan("COPY orders TO STDOUT"), ALL_R);
        assert_eq!(plan("COPY orders FROM STDIN"), ALL_W);
        assert_eq!(plan("COPY customers FROM STDIN"), write);
        assert_eq!(
            plan("COPY (SELECT * FROM orders WHERE customer_id = 3) TO STDOUT"),
            keys(0, vec![c("3")])
        );
        assert_eq!(
            plan("EXPLAIN SELECT * FROM orders WHERE customer_id = 3"),
            keys(0, vec![c("3")])
        );
        // Writing an unsharded table from sharded data.
        assert_eq!(
            plan("INSERT INTO log SELECT * FROM orders WHERE customer_id = 5"),
            ALL_W
        );
        assert_eq!(
            plan("SELECT * INTO new_t FROM orders WHERE customer_id = 5"),
            ALL_W
        );
    }

    #[test]
    fn update_and_delete() {
        assert_eq!(
            plan("UPDATE orders SET status = 'x' WHERE customer_id = $2"),
            keys(0, vec![KeyRef::Param(2)])
        );
        assert_eq!(
            plan("UPDATE orders o SET status = $10001 WHERE o.customer_id = $10002::bigint"),
            keys(0, vec![KeyRef::Literal(1)])
        );
        assert_eq!(
            plan("UPDATE orders SET status = 'x' WHERE customer_id IN (1, 2)"),
            keys(0, vec![c("1"), c("2")])
        );
        assert_eq!(plan("UPDATE orders SET status = 'x'"), ALL_W);
        // Setting the key column: every shard (documented).
        assert_eq!(
            plan("UPDATE orders SET customer_id = 7 WHERE customer_id = 5"),
            ALL_W
        );
        assert_eq!(
            plan("UPDATE orders SET (status, customer_id) = ('a', 7) WHERE customer_id = 5"),
            ALL_W
        );
        assert_eq!(
            plan("UPDATE orders o SET status = c.s FROM customers c WHERE c.id = o.customer_id AND o.customer_id = 5"),
            keys(0, vec![c("5")])
        );
        // Unsharded target written from a sharded table.
        assert_eq!(
            plan("UPDATE customers c SET n = 1 FROM orders o WHERE o.customer_id = 5"),
            ALL_W
        );
        assert_eq!(
            plan("DELETE FROM orders WHERE customer_id = 5"),
            keys(0, vec![c("5")])
        );
        assert_eq!(
            plan("DELETE FROM orders WHERE 5 = customer_id OR customer_id = $1"),
            keys(0, vec![c("5"), KeyRef::Param(1)])
        );
        assert_eq!(
            plan("DELETE FROM orders o USING customers c WHERE c.id = o.customer_id AND o.customer_id = $1"),
            keys(0, vec![KeyRef::Param(1)])
        );
        assert_eq!(plan("DELETE FROM orders"), ALL_W);
        assert_eq!(plan("DELETE FROM orders WHERE id = 1"), ALL_W);
    }

    #[test]
    fn inserts() {
        assert_eq!(
            plan("INSERT INTO orders (id, customer_id) VALUES ($10001, $10002), ($10003, $10004)"),
            ShardPlan::InsertRows {
                table: 0,
                rows: vec![KeyRef::Literal(1), KeyRef::Literal(3)]
            }
        );
        assert_eq!(
            plan("INSERT INTO orders (customer_id, id) VALUES (1, 2), (3::bigint, 4), ($1, 5), (NULL, 6)"),
            ShardPlan::InsertRows {
                table: 0,
                rows: vec![c("1"), c("3"), KeyRef::Param(1), KeyRef::Null]
            }
        );
        assert_eq!(
            plan("INSERT INTO public.items AS i (\"Customer_Id\") VALUES (1) RETURNING *"),
            ShardPlan::InsertRows {
                table: 1,
                rows: vec![c("1")]
            }
        );
        assert_eq!(
            plan("INSERT INTO orders VALUES (1, 2)"),
            ShardPlan::NeedColumns { table: 0 }
        );
        let cols = |t: &str| -> Option<Vec<String>> {
            (t == "orders").then(|| vec!["id".into(), "Customer_ID".into()])
        };
        let stmt = parse("INSERT INTO orders VALUES (1, 2), (3, 4)");
        assert_eq!(
            plan_statement(&stmt[0], &tables(), &cols),
            ShardPlan::InsertRows {
                table: 0,
                rows: vec![c("2"), c("4")]
            }
        );
        // Rows too short for the key position: DEFAULT applies, not routable.
        let stmt = parse("INSERT INTO orders VALUES (1)");
        assert_eq!(plan_statement(&stmt[0], &tables(), &cols), ALL_W);
        // Unroutable inserts.
        for sql in [
            "INSERT INTO orders (id) VALUES (1)",
            "INSERT INTO orders (customer_id) VALUES (DEFAULT)",
            "INSERT INTO orders (customer_id) VALUES (1), (nextval('s'))",
            "INSERT INTO orders (customer_id) SELECT 1",
            "INSERT INTO orders SELECT * FROM orders_old",
            "INSERT INTO orders DEFAULT VALUES",
            "INSERT INTO orders VALUES (1, 2) ORDER BY 1",
            "INSERT INTO orders (customer_id, s) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET customer_id = 2",
            "INSERT INTO orders (customer_id, s) VALUES (1, (SELECT max(s) FROM items))",
        ] {
            assert_eq!(plan(sql), ALL_W, "{sql}");
        }
        // ON CONFLICT that does not touch the key is fine.
        assert_eq!(
            plan("INSERT INTO orders (customer_id, s) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET s = EXCLUDED.s"),
            ShardPlan::InsertRows {
                table: 0,
                rows: vec![c("1")]
            }
        );
        // Unsharded reads inside VALUES are fine.
        assert_eq!(
            plan("INSERT INTO orders (customer_id, s) VALUES (1, (SELECT max(s) FROM customers))"),
            ShardPlan::InsertRows {
                table: 0,
                rows: vec![c("1")]
            }
        );
    }

    #[test]
    fn multiple_statements() {
        let run = |sql: &str| plan_statements(&parse(sql), &tables(), &no_cols);
        assert_eq!(run(""), ShardPlan::Unsharded { write: false });
        assert_eq!(
            run("SELECT 1; SELECT * FROM customers"),
            ShardPlan::Unsharded { write: false }
        );
        assert_eq!(
            run("SELECT 1; UPDATE customers SET a = 1"),
            ShardPlan::Unsharded { write: true }
        );
        assert_eq!(
            run("SELECT * FROM orders WHERE customer_id = 1; SELECT * FROM customers"),
            keys(0, vec![c("1")])
        );
        assert_eq!(
            run("SELECT * FROM orders WHERE customer_id = 1; UPDATE customers SET a = 1"),
            ALL_W
        );
        assert_eq!(
            run("SELECT * FROM orders WHERE customer_id = 1; DELETE FROM items WHERE customer_id = 2"),
            keys(0, vec![c("1"), c("2")])
        );
        assert_eq!(
            run("BEGIN; SELECT * FROM orders WHERE customer_id = 1; COMMIT"),
            ShardPlan::Broadcast
        );
        assert_eq!(
            run("SELECT * FROM orders WHERE customer_id = 1; SELECT * FROM orders"),
            ALL_R
        );
        assert_eq!(
            run("SELECT * FROM orders WHERE customer_id = 1; DELETE FROM orders"),
            ALL_W
        );
        assert_eq!(
            run(
                "SELECT * FROM orders WHERE customer_id = 1; SELECT * FROM users WHERE email = 'a'"
            ),
            ALL_R
        );
        assert_eq!(
            run("SELECT 1; INSERT INTO orders VALUES (1, 2)"),
            ShardPlan::NeedColumns { table: 0 }
        );
        assert_eq!(
            run("INSERT INTO orders (customer_id) VALUES (1); SELECT * FROM orders WHERE customer_id = $1"),
            keys(0, vec![c("1"), KeyRef::Param(1)])
        );
        assert_eq!(
            run("SELECT * FROM orders WHERE customer_id = ANY($1); SELECT * FROM items WHERE customer_id = ANY($1)"),
            ShardPlan::AnyArray { table: 0, param: 1 }
        );
    }

    /// Mutated SQL (dropped, duplicated and swapped tokens) must never make planning or
    /// splitting panic.
    #[test]
    fn mutated_sql_never_panics() {
        let corpus = [
            "SELECT * FROM orders o JOIN items i USING (customer_id) WHERE customer_id = $1 OR customer_id IN (1, $10001)",
            "WITH x AS (DELETE FROM orders WHERE customer_id = ANY($2) RETURNING *) SELECT * FROM x, (SELECT 1) s",
            "INSERT INTO orders (customer_id, s) VALUES (1, 'a'), ($1, (SELECT 1 FROM items WHERE customer_id = 2)) ON CONFLICT (id) DO UPDATE SET s = EXCLUDED.s RETURNING *",
            "UPDATE orders o SET s = c.s FROM customers c LEFT JOIN items i ON i.customer_id = c.id WHERE o.customer_id = 5 AND EXISTS (SELECT 1 FROM orders p WHERE p.customer_id = o.customer_id)",
            "DELETE FROM orders USING items WHERE orders.customer_id = items.customer_id AND items.customer_id IS NULL",
            "SELECT (SELECT max(x) FROM orders WHERE customer_id = t.c) FROM t RIGHT JOIN orders USING (customer_id) FULL JOIN users u ON u.email = 'x' ORDER BY (SELECT 1 FROM items) LIMIT (SELECT 1)",
            "COPY (SELECT * FROM orders WHERE customer_id = 1) TO STDOUT; EXPLAIN ANALYZE INSERT INTO orders VALUES (1, 2)",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let cols = |_: &str| Some(vec!["customer_id".to_string(), "s".to_string()]);
        let mut planned = 0usize;
        for sql in corpus {
            let words: Vec<&str> = sql.split(' ').collect();
            for _ in 0..300 {
                let mut w = words.clone();
                for _ in 0..(1 + next() % 3) {
                    let i = (next() as usize) % w.len();
                    let j = (next() as usize) % w.len();
                    let k = (next() as usize) % words.len();
                    match next() % 3 {
                        0 => {
                            w.remove(i);
                        }
                        1 => w.insert(i, words[k]),
                        _ => w.swap(i, j),
                    }
                    if w.is_empty() {
                        w.push("SELECT");
                    }
                }
                let text = w.join(" ");
                if let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, &text) {
                    planned += 1;
                    let _ = plan_statements(&stmts, &tables(), &no_cols);
                    let _ = plan_statements(&stmts, &tables(), &cols);
                    let _ = super::super::plan::split_insert(&text, &tables(), 3, &cols);
                }
            }
        }
        assert!(planned > 100, "only {planned} mutations parsed");
    }

    #[test]
    fn long_and_chain_does_not_overflow() {
        let mut sql = String::from("SELECT * FROM orders WHERE customer_id = 1");
        for i in 0..2000 {
            sql.push_str(&format!(" AND c{i} = {i}"));
        }
        assert_eq!(plan(&sql), keys(0, vec![c("1")]));
    }

    #[test]
    fn schema_config_is_respected() {
        // items is configured in schema public.
        assert_eq!(
            plan("SELECT * FROM items WHERE customer_id = 1"),
            keys(1, vec![c("1")])
        );
        assert_eq!(
            plan("SELECT * FROM PUBLIC.items WHERE customer_id = 1"),
            keys(1, vec![c("1")])
        );
        assert_eq!(
            plan("SELECT * FROM archive.items WHERE customer_id = 1"),
            ShardPlan::Unsharded { write: false }
        );
    }
}
