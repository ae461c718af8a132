//! Shard-plan resolution: turns a [`ShardPlan`] plus the statement's literal and Bind
//! parameter values into a set of shards, and splits multi-row INSERTs by shard.
//!
//! This module owns [`ShardSet`], value decoding for routing (text and binary parameters,
//! PostgreSQL array literals and the binary array format), and [`split_insert`].
//!
//! Must not: do I/O. Everything here is a pure function of its arguments and must never
//! panic, whatever bytes a client sends.
//!
//! Integer keys of every width hash alike for equal values, so integer values are read
//! as `bigint` when they do not fit the column's own width (a comparison such as
//! `int2_col = 40000` is valid SQL that matches no row; routing it anywhere is fine).

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::hash::{decode_binary_key, parse_key, partition_for, KeyType, OwnedKey};
use super::key::{plan_statement, KeyRef, ShardPlan, ShardedTable};

/// Largest shard count a [`ShardSet`] can hold.
pub const MAX_SHARDS: u32 = 64;

/// A set of shard indexes (at most [`MAX_SHARDS`]) as a bitmask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardSet(pub u64);

impl ShardSet {
    /// Shards `0..n` (`n` is capped at 64).
    pub fn all(n: u32) -> Self {
        if n >= MAX_SHARDS {
            ShardSet(u64::MAX)
        } else {
            ShardSet((1u64 << n) - 1)
        }
    }

    /// Just shard `i` (empty if `i >= 64`).
    pub fn one(i: u32) -> Self {
        let mut s = ShardSet(0);
        s.insert(i);
        s
    }

    /// Add shard `i` (ignored if `i >= 64`).
    pub fn insert(&mut self, i: u32) {
        if i < MAX_SHARDS {
            self.0 |= 1u64 << i;
        }
    }

    /// Does the set hold shard `i`?
    pub fn contains(&self, i: u32) -> bool {
        i < MAX_SHARDS && self.0 & (1u64 << i) != 0
    }

    /// Number of shards in the set.
    pub fn len(&self) -> u32 {
        self.0.count_ones()
    }

    /// Is the set empty?
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Shard indexes in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> {
        let bits = self.0;
        (0..MAX_SHARDS).filter(move |i| bits & (1u64 << i) != 0)
    }

    /// The shard, if the set holds exactly one.
    pub fn single(&self) -> Option<u32> {
        (self.len() == 1).then(|| self.0.trailing_zeros())
    }
}

/// Values available for resolution.
pub struct Values<'a> {
    /// Literal texts in normalized order: unescaped string content or number text.
    pub literals: &'a [String],
    /// Bind parameters in order: (format: 0 text, 1 binary; value, `None` = NULL).
    pub params: &'a [(i16, Option<&'a [u8]>)],
    /// Parameter type OIDs from Parse; may be shorter than `params`; 0 = unknown.
    pub param_types: &'a [u32],
}

/// Where a statement must run.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// These shards.
    Shards(ShardSet),
    /// Any one shard (a read of unsharded tables).
    AnyOne,
    /// Every shard.
    All { write: bool },
    /// A key value that does not parse (or a missing value): SQLSTATE 22P02 material.
    Error(String),
}

/// Resolve a plan to shards.
///
/// A key list or array that is empty or NULL matches no row; the statement then goes to
/// shard 0 (any shard gives the same, empty, answer). `NeedColumns` is an error here:
/// the caller must plan again with the table's columns.
pub fn resolve(
    plan: &ShardPlan,
    tables: &[ShardedTable],
    values: &Values,
    shards: u32,
) -> Resolved {
    if let Err(e) = check_shards(shards) {
        return Resolved::Error(e);
    }
    let result = match plan {
        ShardPlan::Unsharded { write: false } => return Resolved::AnyOne,
        ShardPlan::Unsharded { write: true } => return Resolved::All { write: true },
        ShardPlan::AllShards { write } => return Resolved::All { write: *write },
        ShardPlan::Broadcast => return Resolved::All { write: true },
        ShardPlan::NeedColumns { .. } => {
            return Resolved::Error(
                "INSERT into a sharded table without a column list: column order unknown"
                    .to_string(),
            )
        }
        ShardPlan::Keys { table, keys } | ShardPlan::InsertRows { table, rows: keys } => {
            table_type(tables, *table).and_then(|kt| {
                let mut set = ShardSet(0);
                for k in keys {
                    let key = key_value(k, kt, values)?;
                    set.insert(partition_for(&key.as_key(), kt, shards));
                }
                Ok(set)
            })
        }
        ShardPlan::AnyArray { table, param } => table_type(tables, *table).and_then(|kt| {
            let mut set = ShardSet(0);
            for key in array_param(*param, kt, values)? {
                set.insert(partition_for(&key.as_key(), kt, shards));
            }
            Ok(set)
        }),
    };
    match result {
        Ok(set) if set.is_empty() => Resolved::Shards(ShardSet::one(0)),
        Ok(set) => Resolved::Shards(set),
        Err(e) => Resolved::Error(e),
    }
}

/// For `InsertRows`: which shard each row goes to (same order as rows).
pub fn row_shards(
    plan: &ShardPlan,
    tables: &[ShardedTable],
    values: &Values,
    shards: u32,
) -> Result<Vec<u32>, String> {
    check_shards(shards)?;
    let ShardPlan::InsertRows { table, rows } = plan else {
        return Err("not an INSERT ... VALUES plan".to_string());
    };
    let kt = table_type(tables, *table)?;
    rows.iter()
        .map(|k| {
            let key = key_value(k, kt, values)?;
            Ok(partition_for(&key.as_key(), kt, shards))
        })
        .collect()
}

/// Split a multi-row INSERT given as original (un-normalized) SQL text into one INSERT
/// per shard: `(shard, sql)` pairs in ascending shard order, rows kept in their original
/// order within each shard. When every row goes to one shard the original text is
/// returned unchanged; otherwise each part is rendered from the AST.
///
/// Errors when the text is not a single plain `INSERT ... VALUES` into a sharded table
/// with routable keys (constants or NULL; `$n` parameters have no values here).
pub fn split_insert(
    sql: &str,
    tables: &[ShardedTable],
    shards: u32,
    columns_of: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Vec<(u32, String)>, String> {
    let values = Values {
        literals: &[],
        params: &[],
        param_types: &[],
    };
    Ok(
        split_insert_bound(sql, tables, shards, columns_of, &values)?
            .into_iter()
            .map(|p| (p.shard, p.sql))
            .collect(),
    )
}

/// One shard's part of a split INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertPart {
    pub shard: u32,
    pub sql: String,
    /// The part's `$1, $2, ...` are the client's parameters with these (1-based) numbers.
    pub params: Vec<usize>,
}

/// [`split_insert`] of an extended-protocol INSERT whose keys may be `$n` parameters
/// (`values` holds the Bind's): each part's parameters are renumbered from `$1` in order
/// of appearance, and [`InsertPart::params`] says which client parameter each one is.
pub fn split_insert_bound(
    sql: &str,
    tables: &[ShardedTable],
    shards: u32,
    columns_of: &dyn Fn(&str) -> Option<Vec<String>>,
    values: &Values,
) -> Result<Vec<InsertPart>, String> {
    check_shards(shards)?;
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
    let [stmt] = stmts.as_slice() else {
        return Err(format!("expected one statement, got {}", stmts.len()));
    };
    let plan = plan_statement(stmt, tables, columns_of);
    if let ShardPlan::NeedColumns { .. } = plan {
        return Err("INSERT without a column list and the table's columns are unknown".into());
    }
    if !matches!(plan, ShardPlan::InsertRows { .. }) {
        return Err("not a plain INSERT ... VALUES into a sharded table".to_string());
    }
    let row_shard = row_shards(&plan, tables, values, shards)?;
    let mut used = ShardSet(0);
    for &s in &row_shard {
        used.insert(s);
    }
    if let Some(only) = used.single() {
        return Ok(vec![InsertPart {
            shard: only,
            sql: sql.to_string(),
            params: (1..=values.params.len()).collect(),
        }]);
    }
    let Statement::Insert(ins) = stmt else {
        return Err("not an INSERT".to_string());
    };
    let Some(SetExpr::Values(all_rows)) = ins.source.as_ref().map(|q| &*q.body) else {
        return Err("not an INSERT ... VALUES".to_string());
    };
    if all_rows.rows.len() != row_shard.len() {
        return Err("row count mismatch".to_string());
    }
    let mut out = Vec::with_capacity(used.len() as usize);
    for shard in used.iter() {
        let mut part = ins.clone();
        if let Some(src) = part.source.as_mut() {
            if let SetExpr::Values(v) = &mut *src.body {
                v.rows = all_rows
                    .rows
                    .iter()
                    .zip(&row_shard)
                    .filter(|(_, s)| **s == shard)
                    .map(|(r, _)| r.clone())
                    .collect();
            }
        }
        let mut stmt = Statement::Insert(part);
        let params = renumber_params(&mut stmt);
        out.push(InsertPart {
            shard,
            sql: stmt.to_string(),
            params,
        });
    }
    Ok(out)
}

/// Renumber a statement's `$n` parameters `$1, $2, ...` in order of first appearance;
/// returns the old number of each new one.
fn renumber_params(stmt: &mut Statement) -> Vec<usize> {
    use sqlparser::ast::{Expr, Value, VisitMut, VisitorMut};
    struct R(Vec<usize>);
    impl VisitorMut for R {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &mut Expr) -> std::ops::ControlFlow<()> {
            if let Expr::Value(v) = e {
                if let Value::Placeholder(p) = &mut v.value {
                    if let Some(old) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                        let new = match self.0.iter().position(|o| *o == old) {
                            Some(i) => i + 1,
                            None => {
                                self.0.push(old);
                                self.0.len()
                            }
                        };
                        *p = format!("${new}");
                    }
                }
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut r = R(Vec::new());
    let _ = stmt.visit(&mut r);
    r.0
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

// Type OIDs (pg_type.dat).
const OID_INT8: u32 = 20;
const OID_INT2: u32 = 21;
const OID_INT4: u32 = 23;
const OID_TEXT: u32 = 25;
const OID_NAME: u32 = 19;
const OID_BPCHAR: u32 = 1042;
const OID_VARCHAR: u32 = 1043;
const OID_UUID: u32 = 2950;

/// PostgreSQL's MAXDIM.
const MAX_DIMS: usize = 6;

fn check_shards(shards: u32) -> Result<(), String> {
    if shards == 0 || shards > MAX_SHARDS {
        Err(format!(
            "shard count must be between 1 and {MAX_SHARDS}, got {shards}"
        ))
    } else {
        Ok(())
    }
}

fn table_type(tables: &[ShardedTable], table: usize) -> Result<KeyType, String> {
    tables
        .get(table)
        .map(|t| t.key_type)
        .ok_or_else(|| format!("sharded table #{table} is not configured"))
}

fn is_int(t: KeyType) -> bool {
    matches!(t, KeyType::Int2 | KeyType::Int4 | KeyType::Int8)
}

/// Parse a key from text for the column type; integers that overflow the column's width
/// are read as bigint (the error names the column type when that fails too).
fn parse_text(text: &str, kt: KeyType) -> Result<OwnedKey, String> {
    match parse_key(text, kt) {
        Ok(k) => Ok(k),
        Err(e) if is_int(kt) && kt != KeyType::Int8 => {
            parse_key(text, KeyType::Int8).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// Key from raw text bytes (text format); text keys take the bytes as they are.
fn parse_text_bytes(bytes: &[u8], kt: KeyType) -> Result<OwnedKey, String> {
    if kt == KeyType::Text {
        return Ok(OwnedKey::Text(bytes.to_vec()));
    }
    let s = std::str::from_utf8(bytes).map_err(|_| {
        format!(
            "invalid input syntax for type {}: value is not valid UTF-8",
            type_name(kt)
        )
    })?;
    parse_text(s, kt)
}

fn type_name(kt: KeyType) -> &'static str {
    match kt {
        KeyType::Int2 => "smallint",
        KeyType::Int4 => "integer",
        KeyType::Int8 => "bigint",
        KeyType::Text => "text",
        KeyType::Uuid => "uuid",
    }
}

/// The type a binary value of declared type `oid` and length `len` has, for a key of
/// type `kt`. Integers: the declared width, else guessed from the length.
fn binary_type(oid: u32, len: usize, kt: KeyType) -> KeyType {
    if is_int(kt) {
        match oid {
            OID_INT2 => KeyType::Int2,
            OID_INT4 => KeyType::Int4,
            OID_INT8 => KeyType::Int8,
            _ => match len {
                2 => KeyType::Int2,
                4 => KeyType::Int4,
                _ => KeyType::Int8,
            },
        }
    } else {
        kt
    }
}

fn decode_binary(bytes: &[u8], oid: u32, kt: KeyType) -> Result<OwnedKey, String> {
    decode_binary_key(bytes, binary_type(oid, bytes.len(), kt))
}

fn key_value(k: &KeyRef, kt: KeyType, values: &Values) -> Result<OwnedKey, String> {
    match k {
        KeyRef::Null => Ok(OwnedKey::Null),
        KeyRef::Const(s) => parse_text(s, kt),
        KeyRef::Literal(i) => match values.literals.get(*i) {
            Some(s) => parse_text(s, kt),
            None => Err(format!("literal #{} has no value", i + 1)),
        },
        KeyRef::NegLiteral(i) => match values.literals.get(*i) {
            Some(s) => match s.strip_prefix('-') {
                Some(positive) => parse_text(positive, kt),
                None => parse_text(&format!("-{s}"), kt),
            },
            None => Err(format!("literal #{} has no value", i + 1)),
        },
        KeyRef::Param(n) => {
            let (format, value) = param(*n, values)?;
            let oid = param_oid(*n, values);
            match (format, value) {
                (_, None) => Ok(OwnedKey::Null),
                (0, Some(b)) => parse_text_bytes(b, kt),
                (1, Some(b)) => {
                    decode_binary(b, oid, kt).map_err(|e| format!("parameter ${n}: {e}"))
                }
                (f, _) => Err(format!("parameter ${n}: unsupported format code {f}")),
            }
        }
    }
}

fn param<'v>(n: usize, values: &Values<'v>) -> Result<(i16, Option<&'v [u8]>), String> {
    n.checked_sub(1)
        .and_then(|i| values.params.get(i))
        .copied()
        .ok_or_else(|| format!("there is no parameter ${n}"))
}

fn param_oid(n: usize, values: &Values) -> u32 {
    n.checked_sub(1)
        .and_then(|i| values.param_types.get(i))
        .copied()
        .unwrap_or(0)
}

/// Keys of an array parameter (`key = ANY($n)`).
fn array_param(n: usize, kt: KeyType, values: &Values) -> Result<Vec<OwnedKey>, String> {
    let (format, value) = param(n, values)?;
    let Some(bytes) = value else {
        // ANY(NULL) matches nothing.
        return Ok(Vec::new());
    };
    match format {
        0 => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("parameter ${n}: array value is not valid UTF-8"))?;
            parse_text_array(text)
                .map_err(|e| format!("parameter ${n}: {e}"))?
                .into_iter()
                .map(|e| match e {
                    None => Ok(OwnedKey::Null),
                    Some(s) => parse_text(&s, kt),
                })
                .collect()
        }
        1 => {
            let (elem_oid, elems) =
                decode_binary_array(bytes).map_err(|e| format!("parameter ${n}: {e}"))?;
            let elem_ok = match kt {
                KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => {
                    matches!(elem_oid, OID_INT2 | OID_INT4 | OID_INT8 | 0)
                }
                KeyType::Text => {
                    matches!(elem_oid, OID_TEXT | OID_VARCHAR | OID_BPCHAR | OID_NAME | 0)
                }
                KeyType::Uuid => matches!(elem_oid, OID_UUID | 0),
            };
            if !elem_ok {
                return Err(format!(
                    "parameter ${n}: array of type oid {elem_oid} cannot hold {} keys",
                    type_name(kt)
                ));
            }
            elems
                .into_iter()
                .map(|e| match e {
                    None => Ok(OwnedKey::Null),
                    Some(b) => decode_binary(b, elem_oid, kt)
                        .map_err(|e| format!("parameter ${n}: array element: {e}")),
                })
                .collect()
        }
        f => Err(format!("parameter ${n}: unsupported format code {f}")),
    }
}

/// Parse a PostgreSQL array literal in text form (`{1,2,3}`, `{"a b",NULL}`, nested
/// `{{1,2},{3,4}}`, optional `[1:3]=` dimension prefix) into its elements, flattened in
/// order; `None` is a NULL element. The delimiter is `,` (every key type's).
pub fn parse_text_array(text: &str) -> Result<Vec<Option<String>>, String> {
    let malformed = |why: &str| {
        format!(
            "malformed array literal: \"{}\": {why}",
            text.escape_debug()
        )
    };
    let b = text.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    // Dimension decoration: [lb:ub][lb:ub]...=
    if b.get(i) == Some(&b'[') {
        while b.get(i) == Some(&b'[') {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            if i >= b.len() {
                return Err(malformed("unterminated dimension"));
            }
            i += 1;
        }
        i = skip_ws(i);
        if b.get(i) != Some(&b'=') {
            return Err(malformed("missing \"=\" after array dimensions"));
        }
        i = skip_ws(i + 1);
    }
    if b.get(i) != Some(&b'{') {
        return Err(malformed("array value must start with \"{\""));
    }
    i += 1;
    let mut depth = 1usize;
    let mut out = Vec::new();
    // true: an element or sub-array is expected; `allow_close`: `}` may come instead.
    let mut expect_item = true;
    let mut allow_close = true;
    loop {
        i = skip_ws(i);
        let Some(&c) = b.get(i) else {
            return Err(malformed("unexpected end of input"));
        };
        if expect_item {
            match c {
                b'{' => {
                    depth += 1;
                    if depth > MAX_DIMS {
                        return Err(malformed("too many dimensions"));
                    }
                    i += 1;
                    allow_close = true;
                }
                b'}' if allow_close => {
                    depth -= 1;
                    i += 1;
                    expect_item = false;
                    if depth == 0 {
                        break;
                    }
                }
                b'}' | b',' => return Err(malformed("unexpected delimiter")),
                b'"' => {
                    i += 1;
                    let mut buf = Vec::new();
                    loop {
                        match b.get(i) {
                            None => return Err(malformed("unterminated quoted element")),
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(b'\\') => {
                                let Some(&e) = b.get(i + 1) else {
                                    return Err(malformed("unexpected end of input"));
                                };
                                buf.push(e);
                                i += 2;
                            }
                            Some(&x) => {
                                buf.push(x);
                                i += 1;
                            }
                        }
                    }
                    out.push(Some(
                        String::from_utf8(buf).map_err(|_| malformed("invalid UTF-8"))?,
                    ));
                    expect_item = false;
                }
                _ => {
                    let mut buf = Vec::new();
                    // Length of `buf` up to the last escaped or non-space byte.
                    let mut keep = 0usize;
                    let mut escaped = false;
                    loop {
                        match b.get(i) {
                            None => return Err(malformed("unexpected end of input")),
                            Some(b',') | Some(b'}') => break,
                            Some(b'{') | Some(b'"') => {
                                return Err(malformed("unexpected character"))
                            }
                            Some(b'\\') => {
                                let Some(&e) = b.get(i + 1) else {
                                    return Err(malformed("unexpected end of input"));
                                };
                                buf.push(e);
                                keep = buf.len();
                                escaped = true;
                                i += 2;
                            }
                            Some(&x) => {
                                buf.push(x);
                                if !x.is_ascii_whitespace() {
                                    keep = buf.len();
                                }
                                i += 1;
                            }
                        }
                    }
                    buf.truncate(keep);
                    if !escaped && buf.eq_ignore_ascii_case(b"NULL") {
                        out.push(None);
                    } else {
                        out.push(Some(
                            String::from_utf8(buf).map_err(|_| malformed("invalid UTF-8"))?,
                        ));
                    }
                    expect_item = false;
                }
            }
        } else {
            match c {
                b',' => {
                    i += 1;
                    expect_item = true;
                    allow_close = false;
                }
                b'}' => {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => return Err(malformed("junk after element")),
            }
        }
    }
    if skip_ws(i) != b.len() {
        return Err(malformed("junk after closing right brace"));
    }
    Ok(out)
}

/// A decoded binary array: element type OID and the elements (`None` = NULL).
pub type BinaryArray<'a> = (u32, Vec<Option<&'a [u8]>>);

fn read_i32(b: &[u8], pos: &mut usize) -> Result<i32, String> {
    let end = pos.checked_add(4).filter(|&e| e <= b.len());
    let Some(end) = end else {
        return Err("binary array value is truncated".to_string());
    };
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[*pos..end]);
    *pos = end;
    Ok(i32::from_be_bytes(w))
}

/// Decode PostgreSQL's binary array format (`array_send`): ndim, has-null flag, element
/// type OID, (dimension, lower bound) per dimension, then each element as a 32-bit length
/// (-1 = NULL) and its bytes. Returns the element type OID and the elements, flattened.
pub fn decode_binary_array(b: &[u8]) -> Result<BinaryArray<'_>, String> {
    let mut pos = 0usize;
    let ndim = read_i32(b, &mut pos)?;
    let flags = read_i32(b, &mut pos)?;
    let elem_oid = read_i32(b, &mut pos)? as u32;
    if !(0..=MAX_DIMS as i32).contains(&ndim) {
        return Err(format!("invalid number of array dimensions: {ndim}"));
    }
    if flags & !1 != 0 {
        return Err("invalid array flags".to_string());
    }
    let mut count: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let dim = read_i32(b, &mut pos)?;
        let _lower_bound = read_i32(b, &mut pos)?;
        let dim = usize::try_from(dim).map_err(|_| format!("invalid array dimension {dim}"))?;
        count = count
            .checked_mul(dim)
            .ok_or_else(|| "array size exceeds the maximum allowed".to_string())?;
    }
    // Every element takes at least its 4-byte length word.
    if count > (b.len() - pos) / 4 {
        return Err("binary array value is truncated".to_string());
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = read_i32(b, &mut pos)?;
        if len == -1 {
            out.push(None);
            continue;
        }
        let len =
            usize::try_from(len).map_err(|_| format!("invalid array element length {len}"))?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= b.len())
            .ok_or_else(|| "binary array value is truncated".to_string())?;
        out.push(Some(&b[pos..end]));
        pos = end;
    }
    if pos != b.len() {
        return Err("junk after binary array value".to_string());
    }
    Ok((elem_oid, out))
}

#[cfg(test)]
mod tests {
    use super::super::hash::{shard_of_text, KeyValue};
    use super::super::key::plan_statements;
    use super::*;

    fn tables() -> Vec<ShardedTable> {
        vec![
            ShardedTable {
                schema: None,
                table: "orders".into(),
                column: "customer_id".into(),
                key_type: KeyType::Int8,
            },
            ShardedTable {
                schema: None,
                table: "users".into(),
                column: "email".into(),
                key_type: KeyType::Text,
            },
            ShardedTable {
                schema: None,
                table: "sessions".into(),
                column: "id".into(),
                key_type: KeyType::Uuid,
            },
            ShardedTable {
                schema: None,
                table: "small".into(),
                column: "k".into(),
                key_type: KeyType::Int4,
            },
        ]
    }

    fn no_cols(_: &str) -> Option<Vec<String>> {
        None
    }

    fn plan(sql: &str) -> ShardPlan {
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("test SQL parses");
        plan_statements(&stmts, &tables(), &no_cols)
    }

    fn int_shard(v: i64, n: u32) -> u32 {
        partition_for(&KeyValue::Int(v), KeyType::Int8, n)
    }

    fn text_shard(s: &str, n: u32) -> u32 {
        partition_for(&KeyValue::Text(s.as_bytes()), KeyType::Text, n)
    }

    const UUID: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";

    fn uuid_bytes() -> [u8; 16] {
        match parse_key(UUID, KeyType::Uuid) {
            Ok(OwnedKey::Uuid(u)) => u,
            other => panic!("{other:?}"),
        }
    }

    fn no_values() -> Values<'static> {
        Values {
            literals: &[],
            params: &[],
            param_types: &[],
        }
    }

    fn set(shards: &[u32]) -> Resolved {
        let mut s = ShardSet(0);
        for &i in shards {
            s.insert(i);
        }
        Resolved::Shards(s)
    }

    /// Two keys that land on different shards of `n`.
    fn split_pair(n: u32) -> (i64, i64) {
        let a = 1;
        let b = (2..1000)
            .find(|&v| int_shard(v, n) != int_shard(a, n))
            .expect("exists");
        (a, b)
    }

    #[test]
    fn shard_set_basics() {
        assert_eq!(ShardSet::all(0), ShardSet(0));
        assert_eq!(ShardSet::all(4), ShardSet(0b1111));
        assert_eq!(ShardSet::all(64), ShardSet(u64::MAX));
        assert_eq!(ShardSet::all(100), ShardSet(u64::MAX));
        assert_eq!(ShardSet::one(3), ShardSet(0b1000));
        assert_eq!(ShardSet::one(64), ShardSet(0));
        let mut s = ShardSet::one(1);
        s.insert(5);
        s.insert(63);
        s.insert(99);
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert!(ShardSet(0).is_empty());
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 5, 63]);
        assert_eq!(s.single(), None);
        assert_eq!(ShardSet::one(7).single(), Some(7));
        assert_eq!(ShardSet(0).single(), None);
        assert!(s.contains(5) && !s.contains(2) && !s.contains(200));
    }

    #[test]
    fn resolve_literals_normalized_and_raw() {
        for n in [2u32, 4] {
            for v in [0i64, 1, 42, -7, i64::MAX] {
                let want = set(&[int_shard(v, n)]);
                let lits = [v.to_string()];
                let values = Values {
                    literals: &lits,
                    params: &[],
                    param_types: &[],
                };
                let p = plan("SELECT * FROM orders WHERE customer_id = $10001");
                assert_eq!(resolve(&p, &tables(), &values, n), want, "{v} / {n}");
                let p = plan(&format!("SELECT * FROM orders WHERE customer_id = {v}"));
                assert_eq!(resolve(&p, &tables(), &no_values(), n), want, "{v} / {n}");
                let p = plan(&format!(
                    "SELECT * FROM orders o WHERE o.customer_id = '{v}'::bigint AND x = 1"
                ));
                assert_eq!(resolve(&p, &tables(), &no_values(), n), want, "{v} / {n}");
            }
        }
        // Text keys, including a quote.
        let lits = ["O'Brien".to_string()];
        let values = Values {
            literals: &lits,
            params: &[],
            param_types: &[],
        };
        let want = set(&[text_shard("O'Brien", 4)]);
        let p = plan("SELECT * FROM users WHERE email = $10001");
        assert_eq!(resolve(&p, &tables(), &values, 4), want);
        let p = plan("SELECT * FROM users WHERE email = 'O''Brien'");
        assert_eq!(resolve(&p, &tables(), &no_values(), 4), want);
        // uuid literal.
        let p = plan(&format!("SELECT * FROM sessions WHERE id = '{UUID}'"));
        assert_eq!(
            resolve(&p, &tables(), &no_values(), 4),
            set(&[shard_of_text(UUID, KeyType::Uuid, 4).expect("uuid")])
        );
        // NULL key: remainder 0.
        let p = plan("SELECT * FROM orders WHERE customer_id IS NULL");
        assert_eq!(resolve(&p, &tables(), &no_values(), 4), set(&[0]));
        let p = plan("INSERT INTO orders (customer_id) VALUES (NULL)");
        assert_eq!(resolve(&p, &tables(), &no_values(), 4), set(&[0]));
    }

    /// Every key-finding rule, written once with normalized placeholders (plus the
    /// literal list) and once with raw literals: both must resolve to the shards the
    /// hash module gives for the expected keys.
    #[test]
    fn every_rule_normalized_and_raw() {
        let cases: &[(&str, &[&str], &str, &[i64])] = &[
            (
                "SELECT * FROM orders WHERE customer_id = $10001",
                &["42"],
                "SELECT * FROM orders WHERE customer_id = 42",
                &[42],
            ),
            (
                "SELECT * FROM orders WHERE $10001 = customer_id",
                &["43"],
                "SELECT * FROM orders WHERE 43 = customer_id",
                &[43],
            ),
            (
                "SELECT * FROM orders WHERE a = $10001 AND customer_id = $10002::bigint AND b = $10003",
                &["x", "44", "7"],
                "SELECT * FROM orders WHERE a = 'x' AND customer_id = 44::bigint AND b = 7",
                &[44],
            ),
            (
                "SELECT * FROM orders WHERE customer_id = CAST($10001 AS bigint)",
                &["45"],
                "SELECT * FROM orders WHERE customer_id = CAST('45' AS bigint)",
                &[45],
            ),
            (
                "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = $10001",
                &["46"],
                "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = 46",
                &[46],
            ),
            (
                "SELECT * FROM orders WHERE customer_id IN ($10001, $10002, $10003)",
                &["1", "2", "3"],
                "SELECT * FROM orders WHERE customer_id IN (1, 2, 3)",
                &[1, 2, 3],
            ),
            (
                "SELECT * FROM orders WHERE customer_id = $10001 OR (customer_id = $10002 OR customer_id = $10003)",
                &["4", "5", "6"],
                "SELECT * FROM orders WHERE customer_id = 4 OR (customer_id = 5 OR customer_id = 6)",
                &[4, 5, 6],
            ),
            (
                "SELECT * FROM orders WHERE customer_id = ANY(ARRAY[$10001, $10002])",
                &["7", "8"],
                "SELECT * FROM orders WHERE customer_id = ANY(ARRAY[7, 8])",
                &[7, 8],
            ),
            (
                "UPDATE orders SET note = $10001 WHERE customer_id = $10002",
                &["n", "9"],
                "UPDATE orders SET note = 'n' WHERE customer_id = 9",
                &[9],
            ),
            (
                "DELETE FROM orders WHERE customer_id IN ($10001, $10002)",
                &["10", "11"],
                "DELETE FROM orders WHERE customer_id IN (10, 11)",
                &[10, 11],
            ),
            (
                "INSERT INTO orders (note, customer_id) VALUES ($10001, $10002), ($10003, $10004)",
                &["a", "12", "b", "13"],
                "INSERT INTO orders (note, customer_id) VALUES ('a', 12), ('b', 13)",
                &[12, 13],
            ),
            (
                "SELECT * FROM orders WHERE customer_id = $10001 AND id IN (SELECT id FROM customers WHERE x = $10002)",
                &["14", "1"],
                "SELECT * FROM orders WHERE customer_id = 14 AND id IN (SELECT id FROM customers WHERE x = 1)",
                &[14],
            ),
        ];
        let t = tables();
        for &(normalized, lits, raw, keys) in cases {
            let lits: Vec<String> = lits.iter().map(|s| s.to_string()).collect();
            let values = Values {
                literals: &lits,
                params: &[],
                param_types: &[],
            };
            let pn = plan(normalized);
            let pr = plan(raw);
            for n in [2u32, 4] {
                let want = set(&keys.iter().map(|&v| int_shard(v, n)).collect::<Vec<_>>());
                assert_eq!(resolve(&pn, &t, &values, n), want, "{normalized}");
                assert_eq!(resolve(&pr, &t, &no_values(), n), want, "{raw}");
            }
        }
        // Rules that give no usable key, in both forms.
        for (normalized, raw) in [
            (
                "SELECT * FROM orders WHERE customer_id = $10001 OR note = $10002",
                "SELECT * FROM orders WHERE customer_id = 1 OR note = 'x'",
            ),
            (
                "SELECT * FROM orders WHERE customer_id > $10001",
                "SELECT * FROM orders WHERE customer_id > 1",
            ),
            (
                "INSERT INTO orders (customer_id) SELECT $10001",
                "INSERT INTO orders (customer_id) SELECT 1",
            ),
        ] {
            let lits = ["1".to_string(), "x".to_string()];
            let values = Values {
                literals: &lits,
                params: &[],
                param_types: &[],
            };
            let rn = resolve(&plan(normalized), &t, &values, 4);
            assert!(matches!(rn, Resolved::All { .. }), "{normalized}: {rn:?}");
            let rr = resolve(&plan(raw), &t, &no_values(), 4);
            assert!(matches!(rr, Resolved::All { .. }), "{raw}: {rr:?}");
        }
    }

    #[test]
    fn resolve_in_lists_and_or() {
        for n in [2u32, 4] {
            let vals = [3i64, 17, 99, 1000];
            let want = set(&vals.map(|v| int_shard(v, n)));
            let p = plan("SELECT * FROM orders WHERE customer_id IN (3, 17, 99, 1000)");
            assert_eq!(resolve(&p, &tables(), &no_values(), n), want);
            let p = plan(
                "SELECT * FROM orders WHERE customer_id = $10001 OR customer_id = $10002 \
                 OR customer_id IN ($10003, $10004)",
            );
            let lits = vals.map(|v| v.to_string());
            let values = Values {
                literals: &lits,
                params: &[],
                param_types: &[],
            };
            assert_eq!(resolve(&p, &tables(), &values, n), want);
        }
    }

    #[test]
    fn resolve_params_text_and_binary() {
        let p = plan("SELECT * FROM orders WHERE customer_id = $1");
        for n in [2u32, 4] {
            for v in [1i64, 2, 3, -99, 1 << 40] {
                let want = set(&[int_shard(v, n)]);
                let text = v.to_string();
                let params = [(0i16, Some(text.as_bytes()))];
                let values = Values {
                    literals: &[],
                    params: &params,
                    param_types: &[],
                };
                assert_eq!(resolve(&p, &tables(), &values, n), want);
                // Binary int8, declared and undeclared.
                let be = v.to_be_bytes();
                let params = [(1i16, Some(&be[..]))];
                for types in [&[][..], &[20u32][..], &[0u32][..]] {
                    let values = Values {
                        literals: &[],
                        params: &params,
                        param_types: types,
                    };
                    assert_eq!(resolve(&p, &tables(), &values, n), want);
                }
                // Binary int4 (a client that declared the parameter as integer).
                if let Ok(v4) = i32::try_from(v) {
                    let be4 = v4.to_be_bytes();
                    let params = [(1i16, Some(&be4[..]))];
                    for types in [&[23u32][..], &[][..]] {
                        let values = Values {
                            literals: &[],
                            params: &params,
                            param_types: types,
                        };
                        assert_eq!(resolve(&p, &tables(), &values, n), want);
                    }
                }
            }
        }
        // int4 key column with a binary int4 parameter.
        let p4 = plan("SELECT * FROM small WHERE k = $1");
        let be4 = 77i32.to_be_bytes();
        let params = [(1i16, Some(&be4[..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[23],
        };
        assert_eq!(
            resolve(&p4, &tables(), &values, 4),
            set(&[int_shard(77, 4)])
        );
        // Text key, text and binary format give the same shard.
        let p = plan("SELECT * FROM users WHERE email = $1");
        for n in [2u32, 4] {
            for s in ["alice@example.com", "bob", "", "caf\u{e9}"] {
                let want = set(&[text_shard(s, n)]);
                for fmt in [0i16, 1] {
                    let params = [(fmt, Some(s.as_bytes()))];
                    let values = Values {
                        literals: &[],
                        params: &params,
                        param_types: &[25],
                    };
                    assert_eq!(resolve(&p, &tables(), &values, n), want, "{s}");
                }
            }
        }
        // uuid: text and 16-byte binary.
        let p = plan("SELECT * FROM sessions WHERE id = $1");
        let want = set(&[shard_of_text(UUID, KeyType::Uuid, 4).expect("uuid")]);
        let ub = uuid_bytes();
        for (fmt, bytes) in [(0i16, UUID.as_bytes()), (1, &ub[..])] {
            let params = [(fmt, Some(bytes))];
            let values = Values {
                literals: &[],
                params: &params,
                param_types: &[2950],
            };
            assert_eq!(resolve(&p, &tables(), &values, 4), want);
        }
        // NULL parameter -> shard 0.
        let params = [(0i16, None)];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        let p = plan("SELECT * FROM orders WHERE customer_id = $1");
        assert_eq!(resolve(&p, &tables(), &values, 4), set(&[0]));
    }

    #[test]
    fn resolve_errors() {
        let p = plan("SELECT * FROM orders WHERE customer_id = $1");
        let params = [(0i16, Some(&b"12abc"[..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        match resolve(&p, &tables(), &values, 4) {
            Resolved::Error(e) => {
                assert!(e.contains("12abc") && e.contains("bigint"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Missing parameter, bad binary width, bad format, bad literal, bad uuid.
        type Case<'a> = (&'a str, Vec<(i16, Option<&'a [u8]>)>, Vec<String>);
        let bad: [Case; 6] = [
            (
                "SELECT * FROM orders WHERE customer_id = $2",
                vec![(0, Some(b"1"))],
                vec![],
            ),
            (
                "SELECT * FROM orders WHERE customer_id = $1",
                vec![(1, Some(&[1, 2, 3]))],
                vec![],
            ),
            (
                "SELECT * FROM orders WHERE customer_id = $1",
                vec![(2, Some(b"1"))],
                vec![],
            ),
            (
                "SELECT * FROM orders WHERE customer_id = $10001",
                vec![],
                vec!["x1".into()],
            ),
            (
                "SELECT * FROM orders WHERE customer_id = $10002",
                vec![],
                vec!["1".into()],
            ),
            (
                "SELECT * FROM sessions WHERE id = $10001",
                vec![],
                vec!["not-a-uuid".into()],
            ),
        ];
        for (sql, params, lits) in &bad {
            let values = Values {
                literals: lits,
                params,
                param_types: &[],
            };
            let r = resolve(&plan(sql), &tables(), &values, 4);
            assert!(matches!(r, Resolved::Error(_)), "{sql}: {r:?}");
        }
        match resolve(
            &plan("SELECT * FROM sessions WHERE id = 'zzz'"),
            &tables(),
            &no_values(),
            2,
        ) {
            Resolved::Error(e) => assert!(e.contains("zzz") && e.contains("uuid"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Integer overflow beyond bigint, non-UTF-8 text for an int key.
        let r = resolve(
            &plan("SELECT * FROM orders WHERE customer_id = 99999999999999999999"),
            &tables(),
            &no_values(),
            2,
        );
        assert!(
            matches!(r, Resolved::Error(ref e) if e.contains("out of range")),
            "{r:?}"
        );
        let params = [(0i16, Some(&[0xff, 0xfe][..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        assert!(matches!(
            resolve(&p, &tables(), &values, 2),
            Resolved::Error(_)
        ));
        // Bad shard counts.
        assert!(matches!(
            resolve(&p, &tables(), &no_values(), 0),
            Resolved::Error(_)
        ));
        assert!(matches!(
            resolve(&p, &tables(), &no_values(), 65),
            Resolved::Error(_)
        ));
        // Unknown table index.
        let bogus = ShardPlan::Keys {
            table: 9,
            keys: vec![KeyRef::Null],
        };
        assert!(matches!(
            resolve(&bogus, &tables(), &no_values(), 2),
            Resolved::Error(_)
        ));
        assert!(matches!(
            resolve(
                &ShardPlan::NeedColumns { table: 0 },
                &tables(),
                &no_values(),
                2
            ),
            Resolved::Error(_)
        ));
    }

    #[test]
    fn int4_column_accepts_wide_literals() {
        // int4 column compared with a value beyond int4: matches nothing, no error.
        let p = plan("SELECT * FROM small WHERE k = 5000000000");
        assert_eq!(
            resolve(&p, &tables(), &no_values(), 4),
            set(&[int_shard(5_000_000_000, 4)])
        );
        // A syntax error names the column's type.
        let p = plan("SELECT * FROM small WHERE k = 'abc'");
        match resolve(&p, &tables(), &no_values(), 4) {
            Resolved::Error(e) => assert!(e.contains("integer") && e.contains("abc"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolve_non_key_plans() {
        let t = tables();
        let v = no_values();
        assert_eq!(resolve(&plan("SELECT 1"), &t, &v, 4), Resolved::AnyOne);
        assert_eq!(
            resolve(&plan("UPDATE customers SET a = 1"), &t, &v, 4),
            Resolved::All { write: true }
        );
        assert_eq!(
            resolve(&plan("SELECT * FROM orders"), &t, &v, 4),
            Resolved::All { write: false }
        );
        assert_eq!(
            resolve(&plan("DELETE FROM orders"), &t, &v, 4),
            Resolved::All { write: true }
        );
        assert_eq!(
            resolve(&plan("CREATE TABLE x (a int)"), &t, &v, 4),
            Resolved::All { write: true }
        );
    }

    #[test]
    fn resolve_update_delete_insert() {
        let t = tables();
        for n in [2u32, 4] {
            let p = plan("UPDATE orders SET s = 1 WHERE customer_id = 12345");
            assert_eq!(
                resolve(&p, &t, &no_values(), n),
                set(&[int_shard(12345, n)])
            );
            let p = plan("DELETE FROM orders WHERE customer_id = $1");
            let params = [(0i16, Some(&b"777"[..]))];
            let values = Values {
                literals: &[],
                params: &params,
                param_types: &[],
            };
            assert_eq!(resolve(&p, &t, &values, n), set(&[int_shard(777, n)]));
            let (a, b) = split_pair(n);
            let p = plan(&format!(
                "INSERT INTO orders (customer_id, s) VALUES ({a}, 'x'), ({b}, 'y'), ({a}, 'z')"
            ));
            assert_eq!(
                row_shards(&p, &t, &no_values(), n),
                Ok(vec![int_shard(a, n), int_shard(b, n), int_shard(a, n)])
            );
            assert_eq!(
                resolve(&p, &t, &no_values(), n),
                set(&[int_shard(a, n), int_shard(b, n)])
            );
        }
        assert!(row_shards(&plan("SELECT 1"), &t, &no_values(), 2).is_err());
        // Rows from parameters and literals.
        let p = plan("INSERT INTO orders (customer_id) VALUES ($1), ($10001)");
        let params = [(1i16, Some(&5i64.to_be_bytes()[..]))];
        let lits = ["6".to_string()];
        let values = Values {
            literals: &lits,
            params: &params,
            param_types: &[20],
        };
        assert_eq!(
            row_shards(&p, &t, &values, 4),
            Ok(vec![int_shard(5, 4), int_shard(6, 4)])
        );
        let lits = ["six".to_string()];
        let values = Values {
            literals: &lits,
            params: &params,
            param_types: &[20],
        };
        assert!(row_shards(&p, &t, &values, 4).is_err());
    }

    /// PostgreSQL binary array: ndim, flags, elemtype, (dim, lbound)*, (len, bytes)*.
    fn binary_array(elem_oid: u32, elems: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes());
        let has_null = elems.iter().any(|e| e.is_none());
        b.extend_from_slice(&i32::from(has_null).to_be_bytes());
        b.extend_from_slice(&elem_oid.to_be_bytes());
        b.extend_from_slice(&(elems.len() as i32).to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        for e in elems {
            match e {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn any_array_text_and_binary() {
        let p = plan("SELECT * FROM orders WHERE customer_id = ANY($1)");
        assert_eq!(p, ShardPlan::AnyArray { table: 0, param: 1 });
        for n in [2u32, 4] {
            let want = set(&[int_shard(1, n), int_shard(5, n), int_shard(9, n)]);
            let params = [(0i16, Some(&b"{1,5,9}"[..]))];
            let values = Values {
                literals: &[],
                params: &params,
                param_types: &[1016],
            };
            assert_eq!(resolve(&p, &tables(), &values, n), want);
            // Binary int8[].
            let arr = binary_array(20, &[1i64, 5, 9].map(|v| Some(v.to_be_bytes().to_vec())));
            let params = [(1i16, Some(&arr[..]))];
            let values = Values {
                literals: &[],
                params: &params,
                param_types: &[1016],
            };
            assert_eq!(resolve(&p, &tables(), &values, n), want);
            // Binary int4[] for the bigint column.
            let arr = binary_array(23, &[1i32, 5, 9].map(|v| Some(v.to_be_bytes().to_vec())));
            let params = [(1i16, Some(&arr[..]))];
            let values = Values {
                literals: &[],
                params: &params,
                param_types: &[],
            };
            assert_eq!(resolve(&p, &tables(), &values, n), want);
        }
        // NULL element, NULL array, empty array.
        let arr = binary_array(20, &[None, Some(7i64.to_be_bytes().to_vec())]);
        let params = [(1i16, Some(&arr[..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        assert_eq!(
            resolve(&p, &tables(), &values, 4),
            set(&[0, int_shard(7, 4)])
        );
        for (fmt, bytes) in [(0i16, None), (0, Some(&b"{}"[..]))] {
            let params = [(fmt, bytes)];
            let values = Values {
                literals: &[],
                params: &params,
                param_types: &[],
            };
            assert_eq!(resolve(&p, &tables(), &values, 4), set(&[0]));
        }
        let empty = [0i32, 0, 20]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>();
        let params = [(1i16, Some(&empty[..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        assert_eq!(resolve(&p, &tables(), &values, 4), set(&[0]));
        // Text array of text keys with quoting.
        let pu = plan("SELECT * FROM users WHERE email = ANY($1)");
        let params = [(0i16, Some(&br#"{"a b","c\"d",e}"#[..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        assert_eq!(
            resolve(&pu, &tables(), &values, 4),
            set(&[
                text_shard("a b", 4),
                text_shard("c\"d", 4),
                text_shard("e", 4)
            ])
        );
        // Binary text[] and uuid[].
        let arr = binary_array(25, &[Some(b"x".to_vec()), Some(b"y".to_vec())]);
        let params = [(1i16, Some(&arr[..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        assert_eq!(
            resolve(&pu, &tables(), &values, 4),
            set(&[text_shard("x", 4), text_shard("y", 4)])
        );
        let ps = plan("SELECT * FROM sessions WHERE id = ANY($1)");
        let arr = binary_array(2950, &[Some(uuid_bytes().to_vec())]);
        let params = [(1i16, Some(&arr[..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        assert_eq!(
            resolve(&ps, &tables(), &values, 4),
            set(&[shard_of_text(UUID, KeyType::Uuid, 4).expect("uuid")])
        );
        // Garbage: bad text array, bad element, wrong element type, truncated binary.
        for (fmt, bytes) in [
            (0i16, &b"{1,2"[..]),
            (0, b"1,2"),
            (0, b"{1,x}"),
            (1, &[0, 0, 0, 1][..]),
        ] {
            let params = [(fmt, Some(bytes))];
            let values = Values {
                literals: &[],
                params: &params,
                param_types: &[],
            };
            assert!(
                matches!(resolve(&p, &tables(), &values, 4), Resolved::Error(_)),
                "{bytes:?}"
            );
        }
        let arr = binary_array(25, &[Some(b"x".to_vec())]);
        let params = [(1i16, Some(&arr[..]))];
        let values = Values {
            literals: &[],
            params: &params,
            param_types: &[],
        };
        assert!(matches!(
            resolve(&p, &tables(), &values, 4),
            Resolved::Error(_)
        ));
        // A constant array in the SQL text.
        let pc = plan("SELECT * FROM orders WHERE customer_id = ANY('{1,5,9}')");
        assert_eq!(
            resolve(&pc, &tables(), &no_values(), 4),
            set(&[int_shard(1, 4), int_shard(5, 4), int_shard(9, 4)])
        );
    }

    #[test]
    fn text_array_parser() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(parse_text_array("{}"), Ok(vec![]));
        assert_eq!(parse_text_array(" { } "), Ok(vec![]));
        assert_eq!(
            parse_text_array("{1,2,3}"),
            Ok(vec![s("1"), s("2"), s("3")])
        );
        assert_eq!(
            parse_text_array("{ 1 , NULL, null ,\"NULL\", \\NULL}"),
            Ok(vec![s("1"), None, None, s("NULL"), s("NULL")])
        );
        assert_eq!(
            parse_text_array(r#"{"a,b","c\\d","e\"f", g h ,i\ }"#),
            Ok(vec![s("a,b"), s("c\\d"), s("e\"f"), s("g h"), s("i ")])
        );
        assert_eq!(
            parse_text_array("{{1,2},{3,4}}"),
            Ok(vec![s("1"), s("2"), s("3"), s("4")])
        );
        assert_eq!(parse_text_array("[1:2]={7,8}"), Ok(vec![s("7"), s("8")]));
        assert_eq!(parse_text_array("{caf\u{e9}}"), Ok(vec![s("caf\u{e9}")]));
        for bad in [
            "",
            "{",
            "}",
            "1",
            "{1,}",
            "{,1}",
            "{1 2",
            "{1}x",
            "{\"a}",
            "{a\"b}",
            "[1:2]{1}",
            "{{{{{{{1}}}}}}}",
            "{1\\",
            "{\"a\\",
            "[1",
        ] {
            assert!(parse_text_array(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn binary_array_decoder_never_panics() {
        // Deterministic pseudo-random bytes (xorshift), plus mutations of a valid array.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = binary_array(20, &[Some(1i64.to_be_bytes().to_vec()), None]);
        for round in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                buf = valid.clone();
                let flips = 1 + next() % 4;
                for _ in 0..flips {
                    let i = (next() as usize) % buf.len();
                    buf[i] = next() as u8;
                }
                if round % 4 == 0 {
                    let cut = (next() as usize) % (buf.len() + 1);
                    buf.truncate(cut);
                }
            }
            let _ = decode_binary_array(&buf);
            let params = [(1i16, Some(&buf[..]))];
            let values = Values {
                literals: &[],
                params: &params,
                param_types: &[],
            };
            let p = ShardPlan::AnyArray { table: 0, param: 1 };
            let _ = resolve(&p, &tables(), &values, 4);
            let text = String::from_utf8_lossy(&buf);
            let _ = parse_text_array(&text);
        }
        // Huge declared sizes are rejected before allocating.
        let mut huge = Vec::new();
        for v in [6i32, 0, 20] {
            huge.extend_from_slice(&v.to_be_bytes());
        }
        for _ in 0..6 {
            huge.extend_from_slice(&i32::MAX.to_be_bytes());
            huge.extend_from_slice(&1i32.to_be_bytes());
        }
        assert!(decode_binary_array(&huge).is_err());
        assert!(decode_binary_array(&[]).is_err());
        // Exact decode of a valid value.
        assert_eq!(
            decode_binary_array(&valid),
            Ok((20, vec![Some(&1i64.to_be_bytes()[..]), None]))
        );
    }

    #[test]
    fn split_insert_six_rows_two_shards() {
        let t = tables();
        let values = [10i64, 11, 12, 13, 14, 15];
        let sql = format!(
            "INSERT INTO orders (id, customer_id, note) VALUES {}",
            values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("({i}, {v}, 'row{i}')"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let parts = split_insert(&sql, &t, 2, &no_cols).expect("splits");
        let mut seen = Vec::new();
        let mut last_shard = None;
        for (shard, part) in &parts {
            assert!(last_shard < Some(*shard), "ascending shard order");
            last_shard = Some(*shard);
            let stmts = Parser::parse_sql(&PostgreSqlDialect {}, part).expect("part parses");
            let ShardPlan::InsertRows { rows, .. } = plan_statement(&stmts[0], &t, &no_cols) else {
                panic!("{part}");
            };
            let mut prev_idx = None;
            for r in rows {
                let KeyRef::Const(v) = r else {
                    panic!("{part}")
                };
                let v: i64 = v.parse().expect("int");
                assert_eq!(int_shard(v, 2), *shard, "{v} on shard {shard}");
                let idx = values.iter().position(|x| *x == v).expect("known row");
                assert!(prev_idx < Some(idx), "original order kept");
                prev_idx = Some(idx);
                assert!(part.contains(&format!("'row{idx}'")), "{part}");
                seen.push(v);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, values.to_vec(), "every row exactly once");
        assert_eq!(parts.len(), 2, "these keys cover both shards");
    }

    #[test]
    fn split_insert_quoting_and_edge_cases() {
        let t = tables();
        let names = [
            "O'Brien",
            "plain",
            "back\\slash",
            "x\"y",
            "tab\there",
            "caf\u{e9}",
        ];
        let sql = format!(
            "INSERT INTO users (email, n) VALUES {}",
            names
                .iter()
                .map(|n| format!("('{}', 1)", n.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let n = 4;
        let parts = split_insert(&sql, &t, n, &no_cols).expect("splits");
        let mut seen = Vec::new();
        for (shard, part) in &parts {
            let stmts = Parser::parse_sql(&PostgreSqlDialect {}, part).expect("part parses");
            let ShardPlan::InsertRows { rows, .. } = plan_statement(&stmts[0], &t, &no_cols) else {
                panic!("{part}");
            };
            for r in rows {
                let KeyRef::Const(v) = r else {
                    panic!("{part}")
                };
                assert_eq!(text_shard(&v, n), *shard);
                seen.push(v);
            }
        }
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        seen.sort();
        assert_eq!(seen, want);
        assert!(
            parts.iter().any(|(_, p)| p.contains("'O''Brien'")),
            "{parts:?}"
        );
        // E'' strings survive too.
        let sql = "INSERT INTO users (email) VALUES (E'a\\'b'), ('c'), ('d'), ('e'), ('f')";
        let parts = split_insert(sql, &t, 4, &no_cols).expect("splits");
        let all: String = parts.iter().map(|(_, p)| p.as_str()).collect();
        assert!(all.contains("E'a\\'b'"), "{all}");
        // Everything on one shard: the text comes back unchanged.
        let sql = "insert into orders (customer_id) values (1), (1), (1)";
        assert_eq!(
            split_insert(sql, &t, 4, &no_cols),
            Ok(vec![(int_shard(1, 4), sql.to_string())])
        );
        // Column list from columns_of.
        let cols = |_: &str| Some(vec!["id".to_string(), "customer_id".to_string()]);
        let (a, b) = split_pair(2);
        let sql = format!("INSERT INTO orders VALUES (1, {a}), (2, {b}) RETURNING id");
        let parts = split_insert(&sql, &t, 2, &cols).expect("splits");
        assert_eq!(parts.len(), 2);
        for (_, p) in &parts {
            assert!(p.contains("RETURNING id"), "{p}");
        }
        // Errors.
        for bad in [
            "SELECT 1",
            "INSERT INTO customers (id) VALUES (1), (2)",
            "INSERT INTO orders VALUES (1, 2)",
            "INSERT INTO orders (customer_id) VALUES ($1), ($2)",
            "INSERT INTO orders (customer_id) VALUES ('x'), (2)",
            "INSERT INTO orders (customer_id) SELECT 1",
            "INSERT INTO orders (customer_id) VALUES (1); SELECT 1",
            "not sql at all",
        ] {
            assert!(split_insert(bad, &t, 2, &no_cols).is_err(), "{bad}");
        }
        assert!(split_insert(
            "INSERT INTO orders (customer_id) VALUES (1)",
            &t,
            0,
            &no_cols
        )
        .is_err());
    }
}
