//! How the answers of a read that runs on several shards become the answer one database
//! holding all the rows would give.
//!
//! Owns: deciding, from a parsed SELECT, whether the shards' rows can simply be concatenated
//! ([`Combine::Concat`]), must be finished by pgvane ([`Combine::Finish`]: aggregates, GROUP
//! BY, HAVING, DISTINCT, ORDER BY, LIMIT/OFFSET), or cannot be answered exactly
//! ([`Combine::Refuse`], with the reason and a workaround); the SQL each shard runs then (the
//! partial query: `avg(x)` becomes `sum(x), count(x)`, `count(DISTINCT x)` groups by `x`,
//! `LIMIT l OFFSET o` becomes `LIMIT l+o`, ORDER BY expressions outside the select list become
//! extra columns); and the finishing query over the shards' partial rows.
//!
//! The finishing query runs on PostgreSQL itself (on one of the shards' connections, over
//! the partial rows passed back as one binary array parameter per column, `unnest`ed), so
//! PostgreSQL's own types, rounding, NULL ordering, collations and errors apply; its output
//! is cast to the types a direct `Describe` of the client's query reports.
//!
//! Must not: do I/O, or answer anything it cannot answer exactly: everything not understood
//! is refused. Never panics on any AST.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_relations, Distinct, DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, Ident, LimitClause, ObjectName, ObjectNamePart, OrderByExpr,
    OrderByKind, Query, Select, SelectItem, SetExpr, SetOperator, SetQuantifier, Statement,
    TableFactor, Value, Visit, VisitMut, Visitor, VisitorMut,
};

use super::key::{lookup_table, ShardedTable};

/// How a multi-shard read is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Combine {
    /// Every shard's rows, one shard after the other, are the answer.
    Concat,
    /// Shards run a partial query; pgvane finishes.
    Finish(Box<Finish>),
    /// Cannot be answered exactly across shards (SQLSTATE 0A000 with this message).
    Refuse(String),
}

/// A partial query and how to finish it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// What every shard runs (its rows are fetched in binary).
    pub partial: String,
    /// Aggregate form: the final select items over the partial columns `_p1.._pN`, and the
    /// number of partial columns. None: row form (the partial's first columns are the
    /// client's, followed by `extras` ORDER BY columns).
    agg: Option<(Vec<String>, usize)>,
    group: Vec<String>,
    having: Option<String>,
    distinct: bool,
    order: Vec<FinalOrder>,
    limit: Option<u64>,
    offset: u64,
    with_ties: bool,
    extras: usize,
    /// Row form with ORDER BY: the shards' sorted rows can also be merged as they stream,
    /// when pgvane can compare the sort keys' types (decided when their types are known).
    pub stream: Option<Stream>,
}

/// A streaming k-way merge of shards' sorted rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// What every shard runs: the client's select list, then each ORDER BY key as an extra
    /// column (fetched in binary, compared by pgvane, dropped before the client sees the
    /// row), the client's ORDER BY, and `LIMIT limit + offset` if it has a LIMIT.
    pub partial: String,
    pub keys: Vec<StreamKey>,
    pub limit: Option<u64>,
    pub offset: u64,
}

/// One ORDER BY key of a [`Stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamKey {
    pub desc: bool,
    pub nulls_first: bool,
    /// `COLLATE "C"` / `"POSIX"` written on the key: byte order is its order.
    pub byte_collation: bool,
}

/// One final ORDER BY item.
#[derive(Debug, Clone, PartialEq)]
enum FinalOrder {
    /// Output column n (1-based), then the options text (` DESC NULLS FIRST`).
    Position(usize, String),
    /// A bare name: the output column of that name if there is exactly one, else the
    /// expression (rewritten over the partial columns).
    Name(String, String, String),
    Expr(String, String),
}

/// Aggregates pgvane can finish, as (name, partial columns, final expression over
/// `{0}`, `{1}`).
fn known_aggregate(name: &str) -> Option<&'static str> {
    Some(match name {
        "count" => "count",
        "sum" => "sum",
        "min" => "min",
        "max" => "max",
        "avg" => "avg",
        "bool_and" => "bool_and",
        "every" => "every",
        "bool_or" => "bool_or",
        "bit_and" => "bit_and",
        "bit_or" => "bit_or",
        "stddev" | "stddev_samp" => "stddev_samp",
        "stddev_pop" => "stddev_pop",
        "variance" | "var_samp" => "var_samp",
        "var_pop" => "var_pop",
        _ => return None,
    })
}

/// Aggregates PostgreSQL has that pgvane cannot finish exactly across shards.
const OTHER_AGGREGATES: &[&str] = &[
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "json_objectagg",
    "json_arrayagg",
    "xmlagg",
    "covar_pop",
    "covar_samp",
    "corr",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "bit_xor",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

fn function_name(f: &Function) -> Option<String> {
    let parts: Vec<&Ident> = f
        .name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [n] => Some(n.value.to_ascii_lowercase()),
        [s, n] if s.value.eq_ignore_ascii_case("pg_catalog") => Some(n.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// Is this call an aggregate (known or not)? Some(name) for one.
fn aggregate_name(f: &Function) -> Option<String> {
    let name = function_name(f)?;
    if f.over.is_some() {
        return None; // a window function; refused separately
    }
    (known_aggregate(&name).is_some() || OTHER_AGGREGATES.contains(&name.as_str())).then_some(name)
}

/// Plan the combination of a read that runs on several shards.
pub fn plan(stmt: &Statement, tables: &[ShardedTable]) -> Combine {
    plan_bound(stmt, tables, &[])
}

/// [`plan`] of an extended-protocol statement: `params` are its Bind's values, which a
/// `LIMIT $n` / `OFFSET $n` is read from.
pub fn plan_bound(stmt: &Statement, tables: &[ShardedTable], params: &[Param<'_>]) -> Combine {
    let Statement::Query(q) = stmt else {
        return Combine::Concat;
    };
    match plan_query(q, tables, params) {
        Ok(c) => c,
        Err(reason) => Combine::Refuse(reason),
    }
}

/// Does the select list, HAVING or ORDER BY of `stmt` call one of `names` (functions that
/// are not known built-ins, lower-case, as the router lists them)? Such a function may be
/// a user-defined aggregate, which no merge can combine: the caller refuses the fan-out.
pub fn calls_unknown_outside_where(stmt: &Statement, names: &[String]) -> bool {
    if names.is_empty() {
        return false;
    }
    struct Find<'a>(&'a [String], bool);
    impl Visitor for Find<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                let full = f.name.to_string().to_ascii_lowercase();
                let last = full.rsplit('.').next().unwrap_or(&full).to_string();
                if self.0.iter().any(|n| {
                    let n = n.to_ascii_lowercase();
                    n == full || n == last || n.rsplit('.').next() == Some(last.as_str())
                }) {
                    self.1 = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let Statement::Query(q) = stmt else {
        return false;
    };
    let SetExpr::Select(s) = q.body.as_ref() else {
        return false;
    };
    let mut f = Find(names, false);
    for it in &s.projection {
        let _ = it.visit(&mut f);
    }
    if let Some(h) = &s.having {
        let _ = h.visit(&mut f);
    }
    if let Some(o) = &q.order_by {
        let _ = o.visit(&mut f);
    }
    f.1
}

fn touches_sharded<V: Visit>(v: &V, tables: &[ShardedTable]) -> bool {
    visit_relations(v, |name: &ObjectName| {
        if lookup_table(tables, name).is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

const HINT: &str = "run it on one shard (a key in the WHERE clause, or /* pgvane: shard=N */) or \
     compute it in the application from per-shard results";

fn refuse(what: &str) -> String {
    format!("{what} cannot be computed exactly across shards; {HINT}")
}

/// Walks a query for what no merge can fix: window functions, aggregates pgvane cannot
/// combine inside nested queries, subqueries over sharded tables in expressions.
struct Scan<'a> {
    tables: &'a [ShardedTable],
    problem: Option<String>,
}

impl Visitor for Scan<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        let nested = match e {
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => Some(q),
            Expr::InSubquery { subquery, .. } => Some(subquery),
            Expr::Function(f) if f.over.is_some() => {
                self.problem = Some(refuse("a window function over sharded rows"));
                return ControlFlow::Break(());
            }
            _ => None,
        };
        if let Some(q) = nested {
            if touches_sharded(q.as_ref(), self.tables) {
                self.problem = Some(refuse("a subquery over a sharded table"));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

/// Nested queries in FROM (derived tables) and CTEs over sharded tables must themselves be
/// concatenable: each shard's part of them is then a part of the whole.
fn check_nested(q: &Query, tables: &[ShardedTable]) -> Result<(), String> {
    if let Some(with) = &q.with {
        for cte in &with.cte_tables {
            if touches_sharded(cte.query.as_ref(), tables)
                && plan_query(&cte.query, tables, &[])? != Combine::Concat
            {
                return Err(refuse(
                    "a WITH query that aggregates, sorts or limits sharded rows",
                ));
            }
        }
    }
    if let SetExpr::Select(s) = q.body.as_ref() {
        for twj in &s.from {
            let factors =
                std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation));
            for f in factors {
                if let TableFactor::Derived { subquery, .. } = f {
                    if touches_sharded(subquery.as_ref(), tables)
                        && plan_query(subquery, tables, &[])? != Combine::Concat
                    {
                        return Err(refuse(
                            "a subquery in FROM that aggregates, sorts or limits sharded rows",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn plan_query(q: &Query, tables: &[ShardedTable], params: &[Param<'_>]) -> Result<Combine, String> {
    let mut scan = Scan {
        tables,
        problem: None,
    };
    let _ = q.visit(&mut scan);
    if let Some(p) = scan.problem {
        return Err(p);
    }
    check_nested(q, tables)?;
    if !q.locks.is_empty() && (q.limit_clause.is_some() || q.fetch.is_some()) {
        return Err(refuse("FOR UPDATE/SHARE with LIMIT"));
    }
    let select = match q.body.as_ref() {
        SetExpr::Select(s) => s.as_ref(),
        SetExpr::SetOperation {
            op: SetOperator::Union,
            set_quantifier: SetQuantifier::All,
            left,
            right,
        } if q.order_by.is_none() && q.limit_clause.is_none() && q.fetch.is_none() => {
            for side in [left, right] {
                let sub = Query {
                    body: side.clone(),
                    ..q.clone()
                };
                if plan_query(&sub, tables, &[])? != Combine::Concat {
                    return Err(refuse("UNION ALL of queries that aggregate, sort or limit"));
                }
            }
            return Ok(Combine::Concat);
        }
        SetExpr::SetOperation { .. } => {
            return Err(refuse("UNION, INTERSECT or EXCEPT over sharded tables"))
        }
        SetExpr::Query(inner) => return plan_query(inner, tables, params),
        _ => return Ok(Combine::Concat),
    };
    if matches!(select.distinct, Some(Distinct::On(_))) {
        return Err(refuse("DISTINCT ON"));
    }
    check_colocated(select, tables)?;
    let group: Vec<Expr> = match &select.group_by {
        GroupByExpr::Expressions(e, mods) if mods.is_empty() => e.clone(),
        _ => return Err(refuse("GROUP BY ALL, ROLLUP, CUBE or GROUPING SETS")),
    };
    if group
        .iter()
        .any(|e| matches!(e, Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)))
    {
        return Err(refuse("ROLLUP, CUBE or GROUPING SETS"));
    }
    let Lim {
        limit,
        offset,
        shard_limit,
        params: limit_params,
    } = limit_offset(q, params)?;
    let mut has_agg = !group.is_empty() || select.having.is_some();
    for item in &select.projection {
        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
            has_agg |= contains_aggregate(e);
        }
    }
    let distinct = matches!(select.distinct, Some(Distinct::Distinct));
    let order = match &q.order_by {
        None => Vec::new(),
        Some(o) => match &o.kind {
            OrderByKind::Expressions(v) => v.clone(),
            OrderByKind::All(_) => return Err(refuse("ORDER BY ALL")),
        },
    };
    if order
        .iter()
        .any(|o| matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Using(_))))
    {
        return Err(refuse("ORDER BY ... USING"));
    }
    if !has_agg
        && !distinct
        && order.is_empty()
        && limit.is_none()
        && offset == 0
        && q.fetch.is_none()
    {
        return Ok(Combine::Concat);
    }
    let b = Bounds {
        limit,
        offset,
        with_ties: q.fetch.as_ref().is_some_and(|f| f.with_ties),
        shard_limit,
        params: limit_params,
    };
    if has_agg {
        aggregate_form(q, select, &group, &order, &b, distinct)
    } else {
        row_form(q, select, &order, &b, distinct)
    }
}

/// The LIMIT side of a plan.
struct Bounds {
    limit: Option<u64>,
    offset: u64,
    with_ties: bool,
    shard_limit: Option<Expr>,
    params: Vec<usize>,
}

impl Bounds {
    /// The shards' LIMIT clause: `limit + offset`, or, when the shards must not limit but
    /// LIMIT/OFFSET were parameters, a LIMIT that is always NULL (no limit) and still names
    /// them (the shards get the client's Bind, whose parameters must all be used).
    fn shard_clause(&self, shards_limit: bool) -> Result<Option<LimitClause>, String> {
        let clause = |e: Expr| LimitClause::LimitOffset {
            limit: Some(e),
            offset: None,
            limit_by: Vec::new(),
        };
        if shards_limit {
            if let Some(e) = &self.shard_limit {
                return Ok(Some(clause(e.clone())));
            }
        }
        if self.params.is_empty() {
            return Ok(None);
        }
        let any: Vec<String> = self
            .params
            .iter()
            .map(|n| format!("${n}::bigint IS NULL"))
            .collect();
        Ok(Some(clause(parse_expr(&format!(
            "(CASE WHEN {} THEN NULL::bigint END)",
            any.join(" OR ")
        ))?)))
    }
}

/// A Bind parameter: (format, value; None = NULL).
pub type Param<'a> = (i16, Option<&'a [u8]>);

/// Two or more sharded tables in one FROM run per shard correctly only when they are joined
/// on their sharding keys (equal keys live on the same shard): every occurrence must be
/// linked to the others by `a.key = b.key` in an ON clause or the WHERE clause's AND chain,
/// or by `USING (key)`, and the keys must hash alike. Anything else is refused.
fn check_colocated(select: &Select, tables: &[ShardedTable]) -> Result<(), String> {
    use sqlparser::ast::{BinaryOperator, JoinConstraint, JoinOperator};
    // (name or alias, lower-case; sharded table index or None for a derived table over one)
    let mut occ: Vec<(String, Option<usize>)> = Vec::new();
    let mut conds: Vec<&Expr> = Vec::new();
    let mut links: Vec<(usize, usize)> = Vec::new();
    let factor = |f: &TableFactor, occ: &mut Vec<(String, Option<usize>)>| -> Option<usize> {
        match f {
            TableFactor::Table { name, alias, .. } => {
                let t = lookup_table(tables, name)?;
                let n = match alias {
                    Some(a) => a.name.value.to_ascii_lowercase(),
                    None => tables[t].table.clone(),
                };
                occ.push((n, Some(t)));
                Some(occ.len() - 1)
            }
            TableFactor::Derived { subquery, .. } if touches_sharded(subquery.as_ref(), tables) => {
                occ.push((String::new(), None));
                Some(occ.len() - 1)
            }
            _ => None,
        }
    };
    for twj in &select.from {
        factor(&twj.relation, &mut occ);
        for j in &twj.joins {
            let new = factor(&j.relation, &mut occ);
            let c = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c) => Some(c),
                _ => None,
            };
            match c {
                Some(JoinConstraint::On(e)) => conds.push(e),
                Some(JoinConstraint::Using(cols)) => {
                    if let Some(Some(t)) = new.map(|i| occ[i].1) {
                        let key = &tables[t].column;
                        if cols.iter().any(|c| c.to_string().eq_ignore_ascii_case(key)) {
                            let n = new.unwrap_or(0);
                            for (i, (_, t)) in occ.iter().enumerate().take(n) {
                                if t.is_some_and(|u| tables[u].column == *key) {
                                    links.push((i, n));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if occ.len() < 2 {
        return Ok(());
    }
    if let Some(w) = &select.selection {
        conds.push(w);
    }
    // `alias.key` -> its occurrence.
    let key_of = |e: &Expr| -> Option<usize> {
        let Expr::CompoundIdentifier(parts) = e else {
            return None;
        };
        let [q, col] = parts.as_slice() else {
            return None;
        };
        occ.iter().position(|(n, t)| {
            t.is_some_and(|t| {
                n.eq_ignore_ascii_case(&q.value)
                    && tables[t].column.eq_ignore_ascii_case(&col.value)
            })
        })
    };
    let mut stack = conds;
    while let Some(e) = stack.pop() {
        match e {
            Expr::Nested(x) => stack.push(x),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                stack.push(left);
                stack.push(right);
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                if let (Some(a), Some(b)) = (key_of(left), key_of(right)) {
                    links.push((a, b));
                }
            }
            _ => {}
        }
    }
    // Every occurrence connected to the first through key equalities.
    let mut reached = vec![false; occ.len()];
    reached[0] = true;
    loop {
        let mut grew = false;
        for &(a, b) in &links {
            if reached[a] != reached[b] {
                reached[a] = true;
                reached[b] = true;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let same_family = occ.iter().all(|(_, t)| {
        t.is_some_and(|t| {
            occ[0].1.is_some_and(|f| {
                super::key::family(tables[t].key_type) == super::key::family(tables[f].key_type)
            })
        })
    });
    if reached.iter().all(|r| *r) && same_family {
        Ok(())
    } else {
        Err(refuse(
            "a join of sharded tables that is not on their sharding keys (rows that match may be on different shards)",
        ))
    }
}

/// LIMIT / OFFSET of a query.
struct Lim {
    /// LIMIT (None: none, ALL or NULL).
    limit: Option<u64>,
    offset: u64,
    /// What each shard gets as its LIMIT (limit + offset), when there is a limit.
    shard_limit: Option<Expr>,
    /// The parameters LIMIT and OFFSET were read from (kept referenced in every partial).
    params: Vec<usize>,
}

/// The whole number in a LIMIT/OFFSET parameter (text, or binary int2/int4/int8).
fn param_number(p: Option<&Param<'_>>) -> Result<Option<u64>, String> {
    let bad = || refuse("a LIMIT or OFFSET parameter that is not a whole number");
    let Some((format, value)) = p else {
        return Err(refuse("a LIMIT or OFFSET parameter without a value"));
    };
    let Some(v) = value else { return Ok(None) };
    let n: i64 = match (format, v.len()) {
        (0, _) => std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(bad)?,
        (1, 8) => i64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]),
        (1, 4) => i32::from_be_bytes([v[0], v[1], v[2], v[3]]) as i64,
        (1, 2) => i16::from_be_bytes([v[0], v[1]]) as i64,
        _ => return Err(bad()),
    };
    // A negative value: PostgreSQL's own error comes from the shards.
    Ok(Some(n.max(0) as u64))
}

fn limit_offset(q: &Query, params: &[Param<'_>]) -> Result<Lim, String> {
    let mut refs: Vec<usize> = Vec::new();
    let mut konst = |e: &Expr| -> Result<Option<u64>, String> {
        let e = match e {
            Expr::Nested(x) => x.as_ref(),
            Expr::Cast { expr, .. } => expr.as_ref(),
            e => e,
        };
        match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| refuse("a LIMIT or OFFSET that is not a whole number")),
                Value::Null => Ok(None),
                Value::Placeholder(p) => {
                    let n: usize = p
                        .strip_prefix('$')
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| refuse("this LIMIT or OFFSET placeholder"))?;
                    refs.push(n);
                    param_number(n.checked_sub(1).and_then(|i| params.get(i)))
                }
                _ => Err(refuse("a LIMIT or OFFSET that is not a constant")),
            },
            _ => Err(refuse(
                "a LIMIT or OFFSET that is not a constant or a parameter (an expression)",
            )),
        }
    };
    let (mut limit, mut offset) = (None, 0);
    match &q.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit: l,
            offset: o,
            limit_by,
        }) if limit_by.is_empty() => {
            if let Some(l) = l {
                limit = konst(l)?;
            }
            if let Some(o) = o {
                offset = konst(&o.value)?.unwrap_or(0);
            }
        }
        Some(_) => return Err(refuse("this LIMIT form")),
    }
    if let Some(f) = &q.fetch {
        if f.percent {
            return Err(refuse("FETCH FIRST ... PERCENT"));
        }
        limit = match &f.quantity {
            Some(e) => konst(e)?,
            None => Some(1),
        };
    }
    let shard_limit = match limit {
        None => None,
        Some(l) if refs.is_empty() => Some(Expr::value(Value::Number(
            l.saturating_add(offset).to_string(),
            false,
        ))),
        // Keep the parameters in the shards' text (their Bind carries them): the sum of
        // what was written, each as bigint.
        Some(_) => {
            let mut parts: Vec<String> = Vec::new();
            if let Some(LimitClause::LimitOffset {
                limit: l,
                offset: o,
                ..
            }) = &q.limit_clause
            {
                parts.extend(l.iter().map(|e| format!("({e})::bigint")));
                parts.extend(o.iter().map(|o| format!("({})::bigint", o.value)));
            }
            if let Some(Some(e)) = q.fetch.as_ref().map(|f| f.quantity.as_ref()) {
                parts.push(format!("({e})::bigint"));
            }
            Some(parse_expr(&format!("({})", parts.join(" + ")))?)
        }
    };
    Ok(Lim {
        limit,
        offset,
        shard_limit,
        params: refs,
    })
}

fn contains_aggregate(e: &Expr) -> bool {
    struct Find(bool);
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            // Aggregates of a subquery belong to it.
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if aggregate_name(f).is_some() {
                    self.0 = true;
                    return ControlFlow::Break(());
                }
            }
            if matches!(
                e,
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. }
            ) {
                return ControlFlow::Continue(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Find(false);
    let _ = e.visit(&mut f);
    f.0
}

fn options_text(o: &OrderByExpr) -> String {
    o.options.to_string()
}

fn output_expr(item: &SelectItem) -> Option<(&Expr, Option<&Ident>)> {
    match item {
        SelectItem::UnnamedExpr(e) => Some((e, None)),
        SelectItem::ExprWithAlias { expr, alias } => Some((expr, Some(alias))),
        _ => None,
    }
}

fn position(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn bare_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) if i.quote_style.is_none() => Some(i.value.to_ascii_lowercase()),
        Expr::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

fn alias_position(select: &Select, name: &str) -> Option<usize> {
    select.projection.iter().position(|it| {
        matches!(it, SelectItem::ExprWithAlias { alias, .. }
            if (alias.quote_style.is_none() && alias.value.eq_ignore_ascii_case(name))
                || alias.value == name)
    })
}

/// Rows without aggregates: each shard sorts and limits (to `limit + offset`), pgvane
/// finishes with the client's ORDER BY, DISTINCT, OFFSET and LIMIT.
fn row_form(
    q: &Query,
    select: &Select,
    order: &[OrderByExpr],
    b: &Bounds,
    distinct: bool,
) -> Result<Combine, String> {
    let (limit, offset, with_ties) = (b.limit, b.offset, b.with_ties);
    let wildcard = select.projection.iter().any(|i| {
        matches!(
            i,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    });
    let mut partial = q.clone();
    let mut extras: Vec<Expr> = Vec::new();
    let mut final_order = Vec::new();
    for o in order {
        let opts = options_text(o);
        let (inner, collate) = match &o.expr {
            Expr::Collate { expr, collation } => (expr.as_ref(), Some(collation.to_string())),
            e => (e, None),
        };
        let with_collate = |s: String| match &collate {
            Some(c) => format!("{s} COLLATE {c}"),
            None => s,
        };
        if let (Some(n), None) = (position(inner), &collate) {
            final_order.push(FinalOrder::Position(n, opts));
            continue;
        }
        if !wildcard {
            let found = bare_name(inner)
                .and_then(|n| alias_position(select, &n))
                .or_else(|| {
                    select
                        .projection
                        .iter()
                        .position(|it| output_expr(it).is_some_and(|(e, _)| e == inner))
                });
            if let Some(i) = found {
                final_order.push(FinalOrder::Expr(with_collate(format!("_p{}", i + 1)), opts));
                continue;
            }
        }
        if distinct {
            return Err(refuse(
                "SELECT DISTINCT ordered by an expression outside its select list",
            ));
        }
        extras.push(inner.clone());
        final_order.push(FinalOrder::Expr(
            with_collate(format!("_pgvane_o{}", extras.len())),
            opts,
        ));
    }
    if let SetExpr::Select(s) = partial.body.as_mut() {
        for (i, e) in extras.iter().enumerate() {
            s.projection.push(SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::new(format!("_pgvane_o{}", i + 1)),
            });
        }
    }
    // Each shard returns at most limit + offset rows; without ORDER BY any such rows do.
    partial.limit_clause = b.shard_clause(!with_ties)?;
    if with_ties {
        if let Some(f) = partial.fetch.as_mut() {
            f.quantity = b.shard_limit.clone();
        }
    } else {
        partial.fetch = None;
    }
    if limit.is_none() {
        // Sorting is pgvane's job then; the shards need not.
        partial.order_by = None;
    }
    let stream = if distinct || with_ties || order.is_empty() {
        None
    } else {
        stream_plan(q, select, order, b)
    };
    Ok(Combine::Finish(Box::new(Finish {
        partial: partial.to_string(),
        agg: None,
        group: Vec::new(),
        having: None,
        distinct,
        order: final_order,
        limit,
        offset,
        with_ties,
        extras: extras.len(),
        stream,
    })))
}

/// The streaming form of a sorted row query (None when a key cannot be named as an
/// expression: a position into `SELECT *`).
fn stream_plan(q: &Query, select: &Select, order: &[OrderByExpr], b: &Bounds) -> Option<Stream> {
    let (limit, offset) = (b.limit, b.offset);
    let mut partial = q.clone();
    let mut keys = Vec::new();
    let mut exprs = Vec::new();
    for o in order {
        let (inner, collation) = match &o.expr {
            Expr::Collate { expr, collation } => (expr.as_ref(), Some(collation.to_string())),
            e => (e, None),
        };
        let item = |i: usize| {
            select
                .projection
                .get(i)
                .and_then(output_expr)
                .map(|(e, _)| e)
        };
        let e = if let Some(n) = position(inner) {
            item(n.checked_sub(1)?)?.clone()
        } else if let Some(i) = bare_name(inner).and_then(|n| alias_position(select, &n)) {
            item(i)?.clone()
        } else {
            inner.clone()
        };
        let e = match &collation {
            Some(_) => match &o.expr {
                Expr::Collate { collation, .. } => Expr::Collate {
                    expr: Box::new(e),
                    collation: collation.clone(),
                },
                _ => e,
            },
            None => e,
        };
        let desc = matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Desc));
        let byte = collation.is_some_and(|c| {
            let c = c.trim_matches('"').to_ascii_lowercase();
            c == "c" || c == "posix" || c.ends_with(".\"c\"") || c.ends_with(".\"posix\"")
        });
        keys.push(StreamKey {
            desc,
            nulls_first: o.options.nulls_first.unwrap_or(desc),
            byte_collation: byte,
        });
        exprs.push(e);
    }
    if let SetExpr::Select(s) = partial.body.as_mut() {
        for (i, e) in exprs.into_iter().enumerate() {
            s.projection.push(SelectItem::ExprWithAlias {
                expr: e,
                alias: Ident::new(format!("_pgvane_k{}", i + 1)),
            });
        }
    }
    partial.fetch = None;
    partial.limit_clause = b.shard_clause(true).ok()?;
    Some(Stream {
        partial: partial.to_string(),
        keys,
        limit,
        offset,
    })
}

/// Rewrites an expression of the client's query into one over the partial columns, and
/// collects what the shards must compute.
struct Rewrite<'a> {
    /// Group keys (the client's GROUP BY expressions, then DISTINCT aggregate arguments).
    keys: &'a mut Vec<Expr>,
    /// Partial aggregate expressions (after the keys in the partial select list).
    partials: &'a mut Vec<Expr>,
    n_client_keys: usize,
    problem: Option<String>,
    /// Combined aggregate texts, for the `__pgvane_cN__` markers.
    combined: Vec<String>,
}

fn ident(s: String) -> Expr {
    Expr::Identifier(Ident::new(s))
}

impl Rewrite<'_> {
    /// The text of a rewritten expression, markers replaced (last first: `c1` is a prefix
    /// of `c10`).
    fn text(&self, e: &Expr) -> String {
        let mut s = e.to_string();
        for (i, c) in self.combined.iter().enumerate().rev() {
            s = s.replace(&format!("__pgvane_c{}__", i + 1), &format!("({c})"));
        }
        s
    }

    fn key_ref(&self, i: usize) -> Expr {
        ident(format!("_p{}", i + 1))
    }

    /// Column of partial aggregate `e` (added if new).
    fn partial_col(&mut self, e: Expr) -> String {
        let i = match self.partials.iter().position(|p| *p == e) {
            Some(i) => i,
            None => {
                self.partials.push(e);
                self.partials.len() - 1
            }
        };
        format!("_p{}", self.n_keys_total() + i + 1)
    }

    /// Keys are fixed before partials are numbered: [`aggregate_form`] collects DISTINCT
    /// arguments in a first pass.
    fn n_keys_total(&self) -> usize {
        self.keys.len()
    }

    fn combine(&mut self, f: &Function, name: &str) -> Result<Expr, String> {
        let list = match &f.args {
            FunctionArguments::List(l) => l,
            FunctionArguments::None => return Err(refuse(&format!("{name} without arguments"))),
            FunctionArguments::Subquery(_) => return Err(refuse(&format!("{name}(subquery)"))),
        };
        let Some(canonical) = known_aggregate(name) else {
            return Err(refuse(&format!("the aggregate {name}()")));
        };
        if !list.clauses.is_empty() || !f.within_group.is_empty() {
            return Err(refuse(&format!("{name}() with ORDER BY or other clauses")));
        }
        let distinct = matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
        let arg = match list.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if name == "count" => None,
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => Some(e.clone()),
            _ => return Err(refuse(&format!("{name}() with these arguments"))),
        };
        let filter = f.filter.as_ref().map(|e| format!(" FILTER (WHERE {e})"));
        if distinct {
            if filter.is_some() {
                return Err(refuse(&format!("{name}(DISTINCT ...) FILTER (...)")));
            }
            let Some(arg) = arg else {
                return Err(refuse("count(DISTINCT *)"));
            };
            let Some(k) = self.keys.iter().position(|k| *k == arg) else {
                return Err(refuse(&format!("{name}(DISTINCT ...)")));
            };
            return parse_expr(&format!("{name}(DISTINCT _p{})", k + 1));
        }
        let filter = filter.unwrap_or_default();
        let agg = |fname: &str, arg: &Option<Expr>| -> Result<Expr, String> {
            let a = arg
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "*".into());
            parse_expr(&format!("{fname}({a}){filter}"))
        };
        let text = match canonical {
            "count" => {
                let c = self.partial_col(agg("count", &arg)?);
                format!("coalesce(sum({c}), 0)::int8")
            }
            "avg" => {
                let s = self.partial_col(agg("sum", &arg)?);
                let n = self.partial_col(agg("count", &arg)?);
                // PostgreSQL's avg is sum / count in the sum's arithmetic (numeric for
                // integers and numeric, float8 for floats, interval for intervals).
                format!("(sum({s}) / nullif(sum({n}), 0))::__pgvane_avg_{s}")
            }
            "sum" => {
                let s = self.partial_col(agg("sum", &arg)?);
                format!("sum({s})::__pgvane_type_{s}")
            }
            "stddev_samp" | "stddev_pop" | "var_samp" | "var_pop" => {
                // PostgreSQL's numeric formula (numeric_stddev_internal) over exact sums:
                // (N * sum(x*x) - sum(x)^2) / (N * (N - 1)) (or N * N), 0 when the
                // numerator is not positive, the square root at the division's scale.
                let Some(a) = arg.as_ref() else {
                    return Err(refuse(&format!("{name}(*)")));
                };
                let n = self.partial_col(agg("count", &arg)?);
                let s = self.partial_col(agg("sum", &arg)?);
                let q = self.partial_col(parse_expr(&format!(
                    "sum(({a})::numeric * ({a})::numeric){filter}"
                ))?);
                let num = format!(
                    "(sum({n})::numeric * sum({q}) - sum({s})::__pgvane_num_{s} * sum({s})::numeric)"
                );
                let sample = canonical.ends_with("_samp");
                let den = if sample {
                    format!("(sum({n})::numeric * (sum({n})::numeric - 1))")
                } else {
                    format!("(sum({n})::numeric * sum({n})::numeric)")
                };
                let var = format!("({num} / {den})");
                let value = if canonical.starts_with("stddev") {
                    format!("round(sqrt({var} * 1.00000000000000000000), scale({var}))")
                } else {
                    var
                };
                let min = if sample { 1 } else { 0 };
                format!(
                    "CASE WHEN sum({n}) <= {min} THEN NULL WHEN {num} <= 0 THEN 0::numeric ELSE {value} END"
                )
            }
            // Combined by themselves: the minimum of minimums, the AND of ANDs, ...
            same @ ("min" | "max" | "bool_and" | "bool_or" | "every" | "bit_and" | "bit_or") => {
                let c = self.partial_col(agg(same, &arg)?);
                format!("{same}({c})")
            }
            other => return Err(refuse(&format!("the aggregate {other}()"))),
        };
        parse_expr(&text)
    }
}

/// Does this SQL text hold a `$n` parameter?
fn mentions_param(t: &str) -> bool {
    t.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'$' && w[1].is_ascii_digit())
}

fn parse_expr(s: &str) -> Result<Expr, String> {
    let dialect = sqlparser::dialect::PostgreSqlDialect {};
    sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(s)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| format!("internal: cannot build the merge ({e})"))
}

impl VisitorMut for Rewrite<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Some(i) = self.keys[..self.n_client_keys].iter().position(|k| k == e) {
            *e = self.key_ref(i);
            return ControlFlow::Continue(());
        }
        if let Expr::Function(f) = e {
            if let Some(name) = aggregate_name(f) {
                match self.combine(f, &name) {
                    Ok(x) => {
                        // A marker, replaced by the text after the walk: the combined
                        // expression holds aggregates the walk must not visit again.
                        self.combined.push(x.to_string());
                        *e = ident(format!("__pgvane_c{}__", self.combined.len()));
                    }
                    Err(p) => {
                        self.problem = Some(p);
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Collects DISTINCT aggregate arguments (they become partial group keys).
fn distinct_args(e: &Expr, out: &mut Vec<Expr>) {
    struct D<'a>(&'a mut Vec<Expr>);
    impl Visitor for D<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if aggregate_name(f).is_some() {
                    if let FunctionArguments::List(l) = &f.args {
                        if matches!(l.duplicate_treatment, Some(DuplicateTreatment::Distinct)) {
                            if let [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] =
                                l.args.as_slice()
                            {
                                if !self.0.contains(a) {
                                    self.0.push(a.clone());
                                }
                            }
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = e.visit(&mut D(out));
}

fn aggregate_form(
    q: &Query,
    select: &Select,
    group: &[Expr],
    order: &[OrderByExpr],
    b: &Bounds,
    distinct: bool,
) -> Result<Combine, String> {
    let (limit, offset, with_ties) = (b.limit, b.offset, b.with_ties);
    // GROUP BY items may name output columns by position or alias.
    let mut keys: Vec<Expr> = Vec::new();
    for g in group {
        let e = if let Some(n) = position(g) {
            match select
                .projection
                .get(n.wrapping_sub(1))
                .and_then(output_expr)
            {
                Some((e, _)) => e.clone(),
                None => return Err(refuse("this GROUP BY position")),
            }
        } else if let Some(i) = bare_name(g).and_then(|n| alias_position(select, &n)) {
            match select.projection.get(i).and_then(output_expr) {
                Some((e, _)) => e.clone(),
                None => g.clone(),
            }
        } else {
            g.clone()
        };
        if contains_aggregate(&e) {
            return Err(refuse("GROUP BY an aggregate"));
        }
        if !keys.contains(&e) {
            keys.push(e);
        }
    }
    let n_client_keys = keys.len();
    let mut items: Vec<Expr> = Vec::new();
    for it in &select.projection {
        match output_expr(it) {
            Some((e, _)) => items.push(e.clone()),
            None => return Err(refuse("SELECT * with aggregates or GROUP BY")),
        }
    }
    for e in items.iter().chain(select.having.iter()) {
        distinct_args(e, &mut keys);
    }
    for o in order {
        distinct_args(&o.expr, &mut keys);
    }
    let mut partials = Vec::new();
    let mut rw = Rewrite {
        keys: &mut keys,
        partials: &mut partials,
        n_client_keys,
        problem: None,
        combined: Vec::new(),
    };
    let mut final_items = Vec::new();
    for mut e in items {
        let _ = VisitMut::visit(&mut e, &mut rw);
        final_items.push(rw.text(&e));
    }
    let having = select.having.clone().map(|mut h| {
        let _ = VisitMut::visit(&mut h, &mut rw);
        rw.text(&h)
    });
    let mut final_order = Vec::new();
    for o in order {
        let opts = options_text(o);
        if let Some(n) = position(&o.expr) {
            final_order.push(FinalOrder::Position(n, opts));
            continue;
        }
        if let Some(i) = bare_name(&o.expr).and_then(|n| alias_position(select, &n)) {
            final_order.push(FinalOrder::Position(i + 1, opts));
            continue;
        }
        let mut e = o.expr.clone();
        let _ = VisitMut::visit(&mut e, &mut rw);
        let text = rw.text(&e);
        match bare_name(&o.expr) {
            Some(n) => final_order.push(FinalOrder::Name(n, text, opts)),
            None => final_order.push(FinalOrder::Expr(text, opts)),
        }
    }
    if let Some(p) = rw.problem.take() {
        return Err(p);
    }
    let n_keys = keys.len();
    // Every column reference left over must be a group key: PostgreSQL reports others
    // when the client's query is described on a shard before anything runs.
    let mut partial = q.clone();
    partial.order_by = None;
    partial.limit_clause = b.shard_clause(false)?;
    partial.fetch = None;
    if let SetExpr::Select(s) = partial.body.as_mut() {
        s.distinct = None;
        s.having = None;
        s.projection = keys
            .iter()
            .chain(partials.iter())
            .enumerate()
            .map(|(i, e)| SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::new(format!("_p{}", i + 1)),
            })
            .collect();
        s.group_by = if n_keys == 0 {
            GroupByExpr::Expressions(Vec::new(), Vec::new())
        } else {
            GroupByExpr::Expressions(
                (1..=n_keys)
                    .map(|i| Expr::value(Value::Number(i.to_string(), false)))
                    .collect(),
                Vec::new(),
            )
        };
    }
    if partials.is_empty() && n_keys == 0 {
        return Err(refuse("this aggregate query"));
    }
    let finished = final_items
        .iter()
        .chain(having.iter())
        .chain(final_order.iter().map(|o| match o {
            FinalOrder::Position(_, t) => t,
            FinalOrder::Name(_, t, _) | FinalOrder::Expr(t, _) => t,
        }));
    if finished.into_iter().any(|t| mentions_param(t)) {
        return Err(refuse(
            "a parameter ($n) in the select list, HAVING or ORDER BY of a merged query",
        ));
    }
    let n_cols = n_keys + partials.len();
    Ok(Combine::Finish(Box::new(Finish {
        partial: partial.to_string(),
        agg: Some((final_items, n_cols)),
        group: (1..=n_client_keys).map(|i| format!("_p{i}")).collect(),
        having,
        distinct,
        order: final_order,
        limit,
        offset,
        with_ties,
        extras: 0,
        stream: None,
    })))
}

/// A column of the shards' partial result or of the client's described result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// SQL type name (`format_type(oid, NULL)`).
    pub type_name: String,
}

impl Finish {
    /// Trailing partial columns the client does not see (row form).
    pub fn extras(&self) -> usize {
        self.extras
    }

    /// Number of partial columns, when the plan knows it (aggregate form).
    pub fn partial_columns(&self) -> Option<usize> {
        self.agg.as_ref().map(|(_, n)| *n)
    }

    /// The finishing query over `unnest($1::t1[], ...)` of the partial columns. `partial`:
    /// the shards' columns; `out`: the client's query as a shard describes it.
    pub fn final_sql(&self, partial: &[Column], out: &[Column]) -> Result<String, String> {
        let cols: Vec<String> = (1..=partial.len())
            .map(|i| col_name(self, i, partial.len()))
            .collect();
        let source = format!(
            "unnest({}) AS _pgvane({})",
            partial
                .iter()
                .enumerate()
                .map(|(i, c)| format!("${}::{}[]", i + 1, c.type_name))
                .collect::<Vec<_>>()
                .join(", "),
            cols.join(", ")
        );
        let items: Vec<String> = match &self.agg {
            Some((items, n)) => {
                if *n != partial.len() || items.len() != out.len() {
                    return Err("the shards' partial results do not have the planned shape".into());
                }
                items
                    .iter()
                    .zip(out)
                    .map(|(e, o)| Ok(format!("({})::{}", fill_types(e, partial)?, o.type_name)))
                    .collect::<Result<_, String>>()?
            }
            None => {
                let visible = partial.len().saturating_sub(self.extras);
                (1..=visible).map(|i| format!("_p{i}")).collect()
            }
        };
        let mut sql = format!(
            "SELECT {}{} FROM {source}",
            if self.distinct { "DISTINCT " } else { "" },
            items.join(", ")
        );
        if !self.group.is_empty() {
            sql.push_str(&format!(" GROUP BY {}", self.group.join(", ")));
        }
        if let Some(h) = &self.having {
            sql.push_str(&format!(" HAVING {}", fill_types(h, partial)?));
        }
        if !self.order.is_empty() {
            let parts: Vec<String> = self
                .order
                .iter()
                .map(|o| -> Result<String, String> {
                    Ok(match o {
                        FinalOrder::Position(n, opts) => format!("{n}{opts}"),
                        FinalOrder::Name(name, e, opts) => {
                            let hits: Vec<usize> = out
                                .iter()
                                .enumerate()
                                .filter(|(_, c)| c.name == *name)
                                .map(|(i, _)| i + 1)
                                .collect();
                            match hits.as_slice() {
                                [i] => format!("{i}{opts}"),
                                _ => format!("{}{opts}", fill_types(e, partial)?),
                            }
                        }
                        FinalOrder::Expr(e, opts) => format!("{}{opts}", fill_types(e, partial)?),
                    })
                })
                .collect::<Result<_, String>>()?;
            sql.push_str(&format!(" ORDER BY {}", parts.join(", ")));
        }
        if self.offset > 0 {
            sql.push_str(&format!(" OFFSET {}", self.offset));
        }
        if let Some(l) = self.limit {
            if self.with_ties {
                sql.push_str(&format!(" FETCH FIRST {l} ROWS WITH TIES"));
            } else {
                sql.push_str(&format!(" LIMIT {l}"));
            }
        }
        Ok(sql)
    }

    /// What EXPLAIN ROUTE shows.
    pub fn explain(&self) -> String {
        let mut s = format!("each shard runs: {}", self.partial);
        let finish: Vec<String> = [
            self.agg
                .as_ref()
                .map(|(i, _)| format!("combine {}", i.join(", "))),
            (!self.group.is_empty()).then(|| format!("group by {}", self.group.join(", "))),
            self.having.as_ref().map(|h| format!("having {h}")),
            self.distinct.then(|| "distinct".to_string()),
            (!self.order.is_empty()).then(|| "sort".to_string()),
            (self.offset > 0).then(|| format!("offset {}", self.offset)),
            self.limit.map(|l| format!("limit {l}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        s.push_str(&format!("; pgvane finishes: {}", finish.join(", ")));
        s
    }
}

fn col_name(f: &Finish, i: usize, n: usize) -> String {
    if f.agg.is_none() && i > n.saturating_sub(f.extras) {
        format!("_pgvane_o{}", i - (n - f.extras))
    } else {
        format!("_p{i}")
    }
}

/// Put the partial columns' types into the `__pgvane_type_pN` / `__pgvane_avg_pN` /
/// `__pgvane_num_pN` markers. Err for stddev/variance of floating-point values, whose
/// float8 arithmetic (Youngs-Cramer, in row order) cannot be reproduced across shards.
fn fill_types(e: &str, partial: &[Column]) -> Result<String, String> {
    let mut s = e.to_string();
    for (i, c) in partial.iter().enumerate().rev() {
        let n = i + 1;
        let marker = format!("__pgvane_num__p{n}");
        if s.contains(&marker) {
            if matches!(c.type_name.as_str(), "real" | "double precision") {
                return Err(refuse("stddev or variance of a floating-point column"));
            }
            s = s.replace(&marker, "numeric");
        }
        s = s.replace(&format!("__pgvane_type__p{n}"), &c.type_name);
        let avg = match c.type_name.as_str() {
            "real" | "double precision" => "double precision",
            "interval" => "interval",
            _ => "numeric",
        };
        s = s.replace(&format!("__pgvane_avg__p{n}"), avg);
    }
    Ok(s)
}

#[cfg(test)]
#[path = "combine_tests.rs"]
mod tests;
