//! PostgreSQL-compatible partition hash.
//!
//! This module owns the hash that decides which shard a key lives on. It reproduces
//! PostgreSQL's `PARTITION BY HASH` placement exactly: a key `v` goes to shard `r` of `N`
//! exactly when a native table partitioned `BY HASH (key)` would put it in the partition
//! `FOR VALUES WITH (MODULUS N, REMAINDER r)`. It covers keys of type `smallint`,
//! `integer`, `bigint`, `text`, `varchar` and `uuid` with their default operator classes,
//! and text in a deterministic collation (bytes hashed as stored, UTF-8 server encoding).
//!
//! Everything here is a pure function: no I/O and no SQL parsing. It also parses a single
//! key from PostgreSQL's text form or a Bind parameter's binary form. The per-row
//! functions ([`partition_for`] and the `hash_*_extended` functions) never allocate.
//!
//! The algorithm (see `shared/notes/pg-hash-partitioning.md`):
//!
//! ```text
//! h   = H_type(value, HASH_PARTITION_SEED)   // PostgreSQL's "extended" 64-bit hash
//! row = h + 0x49A0F4DD15E5A8E3  (mod 2^64)   // hash_combine64 for a one-column key
//! r   = row % N                  (unsigned)  // NULL keys: row = 0, so r = 0
//! ```
//!
//! `H_type` is PostgreSQL's variant of Bob Jenkins' lookup3 (`hash_bytes_extended`),
//! which differs from the published `hashlittle`; do not swap in a stock crate. Text and
//! uuid bytes are read as little-endian words, which is what a little-endian server
//! (x86_64, aarch64) does. The test vectors in `testdata/` came from PostgreSQL 15.18.

use std::fmt::Write as _;

/// Seed PostgreSQL passes to every extended hash function for hash partitioning
/// (`HASH_PARTITION_SEED` in `partition.h`).
pub const HASH_PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// Constant of `hash_combine64`, the step that folds a column hash into the row hash.
const HASH_COMBINE_K: u64 = 0x49A0_F4DD_15E5_A8E3;

/// lookup3's golden-ratio initial value.
const JENKINS_INIT: u32 = 0x9E37_79B9;

/// PostgreSQL's extra constant in the initial value (`3923095`).
const PG_INIT_SALT: u32 = 3_923_095;

/// Column type of a sharding key. `varchar` maps to [`KeyType::Text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `smallint`
    Int2,
    /// `integer`
    Int4,
    /// `bigint`
    Int8,
    /// `text` and `varchar` (same operator class, same hash)
    Text,
    /// `uuid`
    Uuid,
}

/// A key value ready to hash.
///
/// Integers of every width are carried as `i64`. Text is the value's bytes in the server
/// encoding (UTF-8). A uuid is its 16 bytes in text order (RFC 4122 network order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValue<'a> {
    /// An `int2`, `int4` or `int8` value.
    Int(i64),
    /// A `text` or `varchar` value: the stored bytes, no length header, no terminator.
    Text(&'a [u8]),
    /// A `uuid` value.
    Uuid([u8; 16]),
    /// SQL NULL: always remainder 0.
    Null,
}

/// An owned key, as produced by [`parse_key`] and [`decode_binary_key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OwnedKey {
    /// An `int2`, `int4` or `int8` value.
    Int(i64),
    /// A `text` or `varchar` value's bytes.
    Text(Vec<u8>),
    /// A `uuid` value's 16 bytes.
    Uuid([u8; 16]),
    /// SQL NULL.
    Null,
}

impl OwnedKey {
    /// Borrow this key as a [`KeyValue`] for hashing.
    pub fn as_key(&self) -> KeyValue<'_> {
        match self {
            OwnedKey::Int(v) => KeyValue::Int(*v),
            OwnedKey::Text(b) => KeyValue::Text(b),
            OwnedKey::Uuid(u) => KeyValue::Uuid(*u),
            OwnedKey::Null => KeyValue::Null,
        }
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL's lookup3 variant (src/common/hashfn.c)
// ---------------------------------------------------------------------------------------

/// lookup3 `mix(a, b, c)`.
#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// lookup3 `final(a, b, c)`.
#[inline(always)]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Initial state for a key of `len` bytes, perturbed by `seed` unless it is 0.
#[inline(always)]
fn seeded_state(len: u32, seed: u64) -> (u32, u32, u32) {
    let init = JENKINS_INIT.wrapping_add(len).wrapping_add(PG_INIT_SALT);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

/// Little-endian u32 at `i` (the caller guarantees `i + 4 <= b.len()`).
#[inline(always)]
fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// PostgreSQL's `hash_bytes_extended` on a little-endian machine.
fn hash_bytes_extended(key: &[u8], seed: u64) -> u64 {
    // Only the low 32 bits of the length matter (PostgreSQL keeps it in a uint32).
    let (mut a, mut b, mut c) = seeded_state(key.len() as u32, seed);

    // Every full 12-byte block, including one that ends exactly at the end of the key.
    let blocks = key.chunks_exact(12);
    let tail = blocks.remainder();
    for block in blocks {
        a = a.wrapping_add(le32(block, 0));
        b = b.wrapping_add(le32(block, 4));
        c = c.wrapping_add(le32(block, 8));
        mix(&mut a, &mut b, &mut c);
    }

    // 0..=11 tail bytes, zero-padded; bytes 8..=10 go into the high three bytes of `c`
    // (the low byte of `c` is reserved for the length in lookup3's design).
    let mut pad = [0u8; 12];
    pad[..tail.len()].copy_from_slice(tail);
    a = a.wrapping_add(le32(&pad, 0));
    b = b.wrapping_add(le32(&pad, 4));
    c = c.wrapping_add(le32(&pad, 8) << 8);

    // The final mix always runs, even for an empty tail.
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// PostgreSQL's `hash_uint32_extended`: `hash_bytes_extended` of the 4 bytes of `k`,
/// computed by value (so it is the same on every platform).
#[inline]
fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded_state(4, seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

// ---------------------------------------------------------------------------------------
// Per-type extended hash functions (support function 2 of the default hash opclasses)
// ---------------------------------------------------------------------------------------

/// `hashint8extended(v, seed)`: fold the value to 32 bits so equal int2/int4/int8
/// values hash alike, then hash the 32 bits. Returns the bits PostgreSQL prints as a
/// signed bigint.
pub fn hash_int8_extended(v: i64, seed: u64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    let k = if v >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_uint32_extended(k, seed)
}

/// `hashint4extended(v, seed)`.
pub fn hash_int4_extended(v: i32, seed: u64) -> u64 {
    hash_uint32_extended(v as u32, seed)
}

/// `hashint2extended(v, seed)`: the value is sign-extended to 32 bits first.
pub fn hash_int2_extended(v: i16, seed: u64) -> u64 {
    hash_uint32_extended(i32::from(v) as u32, seed)
}

/// `hashtextextended(b, seed)` for a deterministic collation: the stored bytes (server
/// encoding), hashed as they are.
pub fn hash_text_extended(b: &[u8], seed: u64) -> u64 {
    hash_bytes_extended(b, seed)
}

/// `uuid_hash_extended(u, seed)`: the 16 bytes in text (network) order.
pub fn hash_uuid_extended(u: &[u8; 16], seed: u64) -> u64 {
    hash_bytes_extended(u, seed)
}

// ---------------------------------------------------------------------------------------
// Row hash and remainder
// ---------------------------------------------------------------------------------------

/// Row hash of a single-column key: PostgreSQL's `compute_partition_hash_value`.
///
/// The hash function follows the value's variant; `key_type` selects the integer width
/// (which cannot change the result, since int2/int4/int8 hash equal values alike).
#[inline]
fn row_hash(key: &KeyValue, key_type: KeyType) -> u64 {
    let h = match *key {
        // NULL columns are skipped: nothing is combined into the initial 0.
        KeyValue::Null => return 0,
        KeyValue::Int(v) => match key_type {
            KeyType::Int2 => match i16::try_from(v) {
                Ok(v) => hash_int2_extended(v, HASH_PARTITION_SEED),
                Err(_) => hash_int8_extended(v, HASH_PARTITION_SEED),
            },
            KeyType::Int4 => match i32::try_from(v) {
                Ok(v) => hash_int4_extended(v, HASH_PARTITION_SEED),
                Err(_) => hash_int8_extended(v, HASH_PARTITION_SEED),
            },
            _ => hash_int8_extended(v, HASH_PARTITION_SEED),
        },
        KeyValue::Text(b) => hash_text_extended(b, HASH_PARTITION_SEED),
        KeyValue::Uuid(ref u) => hash_uuid_extended(u, HASH_PARTITION_SEED),
    };
    // hash_combine64(0, h) = 0 ^ (h + K + (0 << 54) + (0 >> 7)) = h + K.
    h.wrapping_add(HASH_COMBINE_K)
}

/// Row hash for a single-column key (combine step), then remainder for `modulus`:
/// the `REMAINDER` of the partition PostgreSQL would pick with `MODULUS modulus`.
/// Null -> 0.
///
/// The hash function follows the value's variant (`Int`, `Text`, `Uuid`); `key_type`
/// only selects the integer width, which does not change the result. A `modulus` of 0
/// is invalid in PostgreSQL; it returns 0 here rather than panicking.
pub fn partition_for(key: &KeyValue, key_type: KeyType, modulus: u32) -> u32 {
    if modulus == 0 {
        return 0;
    }
    // Unsigned 64-bit remainder; the result is < modulus, so it fits in u32.
    (row_hash(key, key_type) % u64::from(modulus)) as u32
}

// ---------------------------------------------------------------------------------------
// Key parsing
// ---------------------------------------------------------------------------------------

fn sql_type_name(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::Int2 => "smallint",
        KeyType::Int4 => "integer",
        KeyType::Int8 => "bigint",
        KeyType::Text => "text",
        KeyType::Uuid => "uuid",
    }
}

fn syntax_error(text: &str, key_type: KeyType) -> String {
    format!(
        "invalid input syntax for type {}: \"{}\"",
        sql_type_name(key_type),
        text.escape_debug()
    )
}

/// `isspace()` in the C locale.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// PostgreSQL's `pg_strtoint16/32/64`: optional whitespace, optional sign, at least one
/// decimal digit, optional whitespace, nothing else. Overflow is reported as soon as the
/// digits leave the range, like PostgreSQL does.
fn parse_int(text: &str, key_type: KeyType, min: i64, max: i64) -> Result<i64, String> {
    let s = text.as_bytes();
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let limit = if neg { min.unsigned_abs() } else { max as u64 };
    let digits_start = i;
    let mut magnitude: u64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        magnitude = magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_add(u64::from(s[i] - b'0')))
            .filter(|&m| m <= limit)
            .ok_or_else(|| {
                format!(
                    "value \"{}\" is out of range for type {}",
                    text.escape_debug(),
                    sql_type_name(key_type)
                )
            })?;
        i += 1;
    }
    if i == digits_start {
        return Err(syntax_error(text, key_type));
    }
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    if i != s.len() {
        return Err(syntax_error(text, key_type));
    }
    Ok(if neg {
        // magnitude <= |min| <= 2^63, so this wraps only for exactly i64::MIN.
        (magnitude as i64).wrapping_neg()
    } else {
        magnitude as i64
    })
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// PostgreSQL's `string_to_uuid`: 32 hex digits in either case, an optional hyphen after
/// any group of four digits (but not after the last), optionally wrapped in `{...}`.
/// No whitespace.
fn parse_uuid(text: &str) -> Result<[u8; 16], String> {
    let s = text.as_bytes();
    let err = || syntax_error(text, KeyType::Uuid);
    let braces = s.first() == Some(&b'{');
    let mut i = usize::from(braces);
    let mut out = [0u8; 16];
    for (n, byte) in out.iter_mut().enumerate() {
        let hi = s.get(i).copied().and_then(hex_digit).ok_or_else(err)?;
        let lo = s.get(i + 1).copied().and_then(hex_digit).ok_or_else(err)?;
        *byte = (hi << 4) | lo;
        i += 2;
        if n % 2 == 1 && n < 15 && s.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    if braces {
        if s.get(i) != Some(&b'}') {
            return Err(err());
        }
        i += 1;
    }
    if i != s.len() {
        return Err(err());
    }
    Ok(out)
}

/// Parse a key in PostgreSQL text form for the given type.
///
/// - Integers: optional surrounding whitespace, optional `+`/`-`, decimal digits, with
///   the type's range check (like PostgreSQL 15's `int2in`/`int4in`/`int8in`).
/// - uuid: the forms PostgreSQL accepts: canonical, upper case, without hyphens (or with
///   a hyphen after any group of four digits), in braces.
/// - text: the bytes as they are (no trimming, no unescaping).
///
/// Never returns [`OwnedKey::Null`]: the text form has no NULL.
pub fn parse_key(text: &str, key_type: KeyType) -> Result<OwnedKey, String> {
    match key_type {
        KeyType::Int2 => {
            parse_int(text, key_type, i16::MIN.into(), i16::MAX.into()).map(OwnedKey::Int)
        }
        KeyType::Int4 => {
            parse_int(text, key_type, i32::MIN.into(), i32::MAX.into()).map(OwnedKey::Int)
        }
        KeyType::Int8 => parse_int(text, key_type, i64::MIN, i64::MAX).map(OwnedKey::Int),
        KeyType::Text => Ok(OwnedKey::Text(text.as_bytes().to_vec())),
        KeyType::Uuid => parse_uuid(text).map(OwnedKey::Uuid),
    }
}

/// Decode a key from a Bind parameter in binary format (int2: 2 bytes BE, int4: 4,
/// int8: 8, text: raw bytes, uuid: 16 bytes). The length must match the type exactly.
///
/// Text is returned as received: the bytes are in the client encoding, and the caller
/// must ensure it equals the server encoding (UTF-8).
pub fn decode_binary_key(bytes: &[u8], key_type: KeyType) -> Result<OwnedKey, String> {
    let wrong_len = |want: usize| {
        format!(
            "binary {} parameter must be {} bytes, got {}",
            sql_type_name(key_type),
            want,
            bytes.len()
        )
    };
    match key_type {
        KeyType::Int2 => <[u8; 2]>::try_from(bytes)
            .map(|b| OwnedKey::Int(i16::from_be_bytes(b).into()))
            .map_err(|_| wrong_len(2)),
        KeyType::Int4 => <[u8; 4]>::try_from(bytes)
            .map(|b| OwnedKey::Int(i32::from_be_bytes(b).into()))
            .map_err(|_| wrong_len(4)),
        KeyType::Int8 => <[u8; 8]>::try_from(bytes)
            .map(|b| OwnedKey::Int(i64::from_be_bytes(b)))
            .map_err(|_| wrong_len(8)),
        KeyType::Text => Ok(OwnedKey::Text(bytes.to_vec())),
        KeyType::Uuid => <[u8; 16]>::try_from(bytes)
            .map(OwnedKey::Uuid)
            .map_err(|_| wrong_len(16)),
    }
}

/// Convenience: shard index of a key given in text form. `shards` must be at least 1.
pub fn shard_of_text(text: &str, key_type: KeyType, shards: u32) -> Result<u32, String> {
    if shards == 0 {
        return Err("shard count must be at least 1".to_string());
    }
    let key = parse_key(text, key_type)?;
    Ok(partition_for(&key.as_key(), key_type, shards))
}

/// For the CLI: one line per value, `value<TAB>shard\n`, in input order. Fails on the
/// first value that does not parse, with an error naming it.
pub fn shard_cli(shards: u32, key_type: KeyType, values: &[String]) -> Result<String, String> {
    if shards == 0 {
        return Err("shard count must be at least 1".to_string());
    }
    let mut out = String::new();
    for value in values {
        let shard = shard_of_text(value, key_type, shards)
            .map_err(|e| format!("bad key value \"{}\": {e}", value.escape_debug()))?;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{value}\t{shard}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS_CSV: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/pg_hash_partition_vectors.csv"
    );
    const RAW_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/pg_hash_raw.csv");

    /// Minimal RFC 4180 reader: quoted fields, doubled quotes, newlines inside quotes.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut records = Vec::new();
        let mut record = Vec::new();
        let mut field = String::new();
        let mut in_quotes = false;
        let mut chars = text.chars().peekable();
        while let Some(ch) = chars.next() {
            if in_quotes {
                if ch == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        in_quotes = false;
                    }
                } else {
                    field.push(ch);
                }
                continue;
            }
            match ch {
                '"' => {
                    assert!(field.is_empty(), "quote inside unquoted field {field:?}");
                    in_quotes = true;
                }
                ',' => record.push(std::mem::take(&mut field)),
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                c => field.push(c),
            }
        }
        assert!(!in_quotes, "unterminated quoted field");
        if !field.is_empty() || !record.is_empty() {
            record.push(field);
            records.push(record);
        }
        records
    }

    /// Data rows of a CSV file, after checking the header and the field count.
    fn load(path: &str, header: &[&str]) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut records = parse_csv(&text);
        assert!(!records.is_empty(), "{path}: empty");
        assert_eq!(records.remove(0), header, "{path}: header");
        for r in &records {
            assert_eq!(r.len(), header.len(), "{path}: bad record {r:?}");
        }
        records
    }

    fn key_type_of(name: &str) -> KeyType {
        match name {
            "int2" => KeyType::Int2,
            "int4" => KeyType::Int4,
            "int8" => KeyType::Int8,
            "text" | "varchar" => KeyType::Text,
            "uuid" => KeyType::Uuid,
            other => panic!("unknown type {other}"),
        }
    }

    #[test]
    fn csv_reader_handles_quoting() {
        let recs = parse_csv("a,b\n\"\",\"x,y\"\n\"q\"\"q\",\"line\nbreak\"\r\nlast,\n");
        assert_eq!(
            recs,
            vec![
                vec!["a", "b"],
                vec!["", "x,y"],
                vec!["q\"q", "line\nbreak"],
                vec!["last", ""],
            ]
        );
    }

    #[test]
    fn raw_hashes_match_postgres() {
        let rows = load(RAW_CSV, &["type", "value", "seed", "hash_i64", "hash_u64"]);
        let mut checked = 0usize;
        let mut seed0 = 0usize;
        let mut per_type = std::collections::BTreeMap::<&str, usize>::new();
        for r in &rows {
            let (ty, value) = (r[0].as_str(), r[1].as_str());
            let seed = r[2].parse::<i64>().unwrap() as u64;
            let want_i64 = r[3].parse::<i64>().unwrap();
            let want = r[4].parse::<u64>().unwrap();
            assert_eq!(want_i64 as u64, want, "file inconsistent: {r:?}");
            let got = match ty {
                "int2" => hash_int2_extended(value.parse().unwrap(), seed),
                "int4" => hash_int4_extended(value.parse().unwrap(), seed),
                "int8" => hash_int8_extended(value.parse().unwrap(), seed),
                "text" => hash_text_extended(value.as_bytes(), seed),
                "uuid" => match parse_key(value, KeyType::Uuid).unwrap() {
                    OwnedKey::Uuid(u) => hash_uuid_extended(&u, seed),
                    other => panic!("{other:?}"),
                },
                other => panic!("unknown type {other}"),
            };
            assert_eq!(got, want, "{ty} {value:?} seed {seed}: got {got:#018x}");
            // Integers: every width hashes like the same int8 value.
            if matches!(ty, "int2" | "int4") {
                assert_eq!(hash_int8_extended(value.parse().unwrap(), seed), want);
            }
            if seed == 0 {
                seed0 += 1;
            } else {
                assert_eq!(seed, HASH_PARTITION_SEED);
            }
            *per_type.entry(ty).or_default() += 1;
            checked += 1;
        }
        println!("checked {checked} raw hashes ({seed0} with seed 0): {per_type:?}");
        assert_eq!(checked, rows.len());
        assert_eq!(checked, 163, "expected 163 data rows in {RAW_CSV}");
        assert_eq!(seed0, 16);
        for ty in ["int2", "int4", "int8", "text", "uuid"] {
            assert!(per_type.get(ty).copied().unwrap_or(0) > 0, "no {ty} rows");
        }
    }

    #[test]
    fn partition_vectors_match_postgres() {
        let rows = load(VECTORS_CSV, &["type", "value", "modulus", "remainder"]);
        let mut checked = 0usize;
        let mut per_type = std::collections::BTreeMap::<&str, usize>::new();
        for r in &rows {
            let (ty, value) = (r[0].as_str(), r[1].as_str());
            let modulus: u32 = r[2].parse().unwrap();
            let want: u32 = r[3].parse().unwrap();
            let key_type = key_type_of(ty);
            let key = parse_key(value, key_type).unwrap_or_else(|e| panic!("{ty} {value:?}: {e}"));
            let got = partition_for(&key.as_key(), key_type, modulus);
            assert_eq!(got, want, "{ty} {value:?} modulus {modulus}");
            assert_eq!(shard_of_text(value, key_type, modulus), Ok(want));
            *per_type.entry(ty).or_default() += 1;
            checked += 1;
        }
        println!("checked {checked} partition vectors: {per_type:?}");
        assert_eq!(checked, rows.len());
        assert_eq!(checked, 4067, "expected 4067 data rows in {VECTORS_CSV}");
        let expected = [
            ("int2", 245),
            ("int4", 658),
            ("int8", 1162),
            ("text", 1148),
            ("uuid", 630),
            ("varchar", 224),
        ];
        assert_eq!(per_type.into_iter().collect::<Vec<_>>(), expected);
        // The tricky text values made it through the CSV reader intact.
        let texts: Vec<&str> = rows
            .iter()
            .filter(|r| r[0] == "text")
            .map(|r| r[1].as_str())
            .collect();
        for v in ["", " ", "newline\ninside", "quote\"inside", "comma,inside"] {
            assert!(texts.contains(&v), "missing text value {v:?}");
        }
        assert!(texts.iter().any(|v| v.len() == 3000));
    }

    #[test]
    fn worked_examples_from_notes() {
        assert_eq!(
            seeded_state(4, HASH_PARTITION_SEED),
            (0xE933_553E, 0xC5DA_07A8, 0xFDFD_95ED)
        );
        assert_eq!(
            seeded_state(3, HASH_PARTITION_SEED),
            (0x5FA5_4FBE, 0xB597_3A1A, 0xE17F_B01D)
        );
        let s = HASH_PARTITION_SEED;
        assert_eq!(hash_int8_extended(1, s), 0x52d6_2105_8124_e6d5);
        assert_eq!(hash_int8_extended(-1, s), 0xba5f_c748_0956_06c2);
        assert_eq!(hash_int8_extended(i64::MAX, s), 0x4489_3a0f_1e94_9193);
        assert_eq!(hash_text_extended(b"abc", s), 0x325c_02d1_6f43_e1c2);
        assert_eq!(hash_text_extended(b"", s), 0xb0e3_3d0b_543f_bfc3);
        assert_eq!(hash_uuid_extended(&[0; 16], s), 0xb6b5_d3c4_aa5d_92c2);
        // hash_bytes_extended on 4 LE bytes equals the by-value integer path.
        for k in [0u32, 1, 0xFFFF_FFFF, 0x1234_5678] {
            for seed in [0, s] {
                assert_eq!(
                    hash_bytes_extended(&k.to_le_bytes(), seed),
                    hash_uint32_extended(k, seed)
                );
            }
        }
        // Remainders for N = 2, 3, 4, 5, 7, 8, 16.
        let cases: [(KeyValue, KeyType, [u32; 7]); 4] = [
            (KeyValue::Int(1), KeyType::Int8, [0, 2, 0, 0, 5, 0, 8]),
            (KeyValue::Int(-1), KeyType::Int8, [1, 2, 1, 4, 0, 5, 5]),
            (KeyValue::Text(b"abc"), KeyType::Text, [1, 1, 1, 3, 3, 5, 5]),
            (
                KeyValue::Uuid([0; 16]),
                KeyType::Uuid,
                [1, 0, 1, 0, 2, 5, 5],
            ),
        ];
        for (key, ty, want) in cases {
            let got = [2, 3, 4, 5, 7, 8, 16].map(|m| partition_for(&key, ty, m));
            assert_eq!(got, want, "{key:?}");
        }
        // The int8 fold makes these collide on purpose.
        let zero = hash_int8_extended(0, s);
        assert_eq!(zero as i64, -4403592609991167795);
        assert_eq!(hash_int8_extended(4_294_967_297, s), zero);
        assert_eq!(hash_int8_extended(-4_294_967_296, s), zero);
    }

    #[test]
    fn integer_widths_agree() {
        let s = HASH_PARTITION_SEED;
        for v in [i16::MIN, -1, 0, 1, 255, 256, i16::MAX] {
            assert_eq!(hash_int2_extended(v, s), hash_int8_extended(v.into(), s));
        }
        for v in [i32::MIN, -65536, -1, 0, 1, 1 << 24, i32::MAX] {
            assert_eq!(hash_int4_extended(v, s), hash_int8_extended(v.into(), s));
            for m in [2, 3, 7, 16] {
                let key = KeyValue::Int(v.into());
                let p8 = partition_for(&key, KeyType::Int8, m);
                assert_eq!(partition_for(&key, KeyType::Int4, m), p8);
            }
        }
    }

    #[test]
    fn null_goes_to_remainder_zero() {
        for ty in [
            KeyType::Int2,
            KeyType::Int4,
            KeyType::Int8,
            KeyType::Text,
            KeyType::Uuid,
        ] {
            for m in 1..=16 {
                assert_eq!(partition_for(&KeyValue::Null, ty, m), 0);
                assert_eq!(partition_for(&OwnedKey::Null.as_key(), ty, m), 0);
            }
        }
        assert_eq!(OwnedKey::Null.as_key(), KeyValue::Null);
    }

    #[test]
    fn modulus_one_and_zero() {
        let key = KeyValue::Text(b"abc");
        assert_eq!(partition_for(&key, KeyType::Text, 1), 0);
        assert_eq!(partition_for(&key, KeyType::Text, 0), 0);
        assert!(shard_of_text("abc", KeyType::Text, 0).is_err());
    }

    #[test]
    fn parse_integers() {
        let int = |s: &str, t| parse_key(s, t);
        assert_eq!(int("32767", KeyType::Int2), Ok(OwnedKey::Int(32767)));
        assert_eq!(int("-32768", KeyType::Int2), Ok(OwnedKey::Int(-32768)));
        assert!(int("32768", KeyType::Int2)
            .unwrap_err()
            .contains("out of range"));
        assert!(int("-32769", KeyType::Int2)
            .unwrap_err()
            .contains("out of range"));
        assert!(int("99999x", KeyType::Int2)
            .unwrap_err()
            .contains("out of range"));
        assert_eq!(
            int("2147483647", KeyType::Int4),
            Ok(OwnedKey::Int(2147483647))
        );
        assert_eq!(
            int("-2147483648", KeyType::Int4),
            Ok(OwnedKey::Int(-2147483648))
        );
        assert!(int("2147483648", KeyType::Int4).is_err());
        assert!(int("-2147483649", KeyType::Int4).is_err());
        assert_eq!(
            int("-9223372036854775808", KeyType::Int8),
            Ok(OwnedKey::Int(i64::MIN))
        );
        assert_eq!(
            int("9223372036854775807", KeyType::Int8),
            Ok(OwnedKey::Int(i64::MAX))
        );
        assert!(int("9223372036854775808", KeyType::Int8)
            .unwrap_err()
            .contains("out of range"));
        assert!(int("-9223372036854775809", KeyType::Int8).is_err());
        assert!(int("99999999999999999999999", KeyType::Int8).is_err());
        // Sign, whitespace, leading zeros.
        assert_eq!(int("+42", KeyType::Int4), Ok(OwnedKey::Int(42)));
        assert_eq!(int("  42  ", KeyType::Int8), Ok(OwnedKey::Int(42)));
        assert_eq!(
            int("\t\n-7\r\x0b\x0c", KeyType::Int2),
            Ok(OwnedKey::Int(-7))
        );
        assert_eq!(int("007", KeyType::Int2), Ok(OwnedKey::Int(7)));
        assert_eq!(int("-0", KeyType::Int8), Ok(OwnedKey::Int(0)));
        assert_eq!(
            int("-000000000000000000000000001", KeyType::Int8),
            Ok(OwnedKey::Int(-1))
        );
        // Rejected, as by PostgreSQL 15.
        for bad in [
            "",
            " ",
            "+",
            "-",
            "- 1",
            "--1",
            "+-1",
            "1 2",
            "1.0",
            "1e3",
            "0x10",
            "1_000",
            "abc",
            "12a",
            "\u{00a0}1",
            "\u{0661}",
            "1\0",
        ] {
            let e = int(bad, KeyType::Int4).unwrap_err();
            assert!(
                e.contains("invalid input syntax for type integer"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn parse_uuids() {
        let want = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        // The input forms PostgreSQL's documentation lists, and a few more it accepts.
        for ok in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
            "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}",
            "a0EEbc99-9C0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert_eq!(
                parse_key(ok, KeyType::Uuid),
                Ok(OwnedKey::Uuid(want)),
                "{ok}"
            );
        }
        for bad in [
            "",
            "{}",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "(a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11)",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
            "a0eeb-c99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-}",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\0",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380aé",
        ] {
            let e = parse_key(bad, KeyType::Uuid).unwrap_err();
            assert!(
                e.starts_with("invalid input syntax for type uuid"),
                "{bad:?}: {e}"
            );
        }
        let nil = parse_key("00000000-0000-0000-0000-000000000000", KeyType::Uuid);
        assert_eq!(nil, Ok(OwnedKey::Uuid([0; 16])));
        let max = parse_key("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", KeyType::Uuid);
        assert_eq!(max, Ok(OwnedKey::Uuid([0xff; 16])));
    }

    #[test]
    fn parse_text_is_verbatim() {
        for s in [
            "",
            " abc ",
            "ABC",
            "caf\u{e9}",
            "cafe\u{301}",
            "a\tb\nc",
            "'\"\\",
        ] {
            assert_eq!(
                parse_key(s, KeyType::Text),
                Ok(OwnedKey::Text(s.as_bytes().to_vec()))
            );
        }
    }

    #[test]
    fn binary_round_trips_match_text() {
        for v in [i16::MIN, -256, -1, 0, 1, 255, i16::MAX] {
            let text = parse_key(&v.to_string(), KeyType::Int2).unwrap();
            assert_eq!(decode_binary_key(&v.to_be_bytes(), KeyType::Int2), Ok(text));
        }
        for v in [i32::MIN, -65536, -1, 0, 1, 1 << 24, i32::MAX] {
            let text = parse_key(&v.to_string(), KeyType::Int4).unwrap();
            assert_eq!(decode_binary_key(&v.to_be_bytes(), KeyType::Int4), Ok(text));
        }
        for v in [i64::MIN, -(1 << 32), -1, 0, 1, 4_294_967_297, i64::MAX] {
            let text = parse_key(&v.to_string(), KeyType::Int8).unwrap();
            assert_eq!(decode_binary_key(&v.to_be_bytes(), KeyType::Int8), Ok(text));
        }
        for u in [
            "00000000-0000-0000-0000-000000000000",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ] {
            let text = parse_key(u, KeyType::Uuid).unwrap();
            let hex: String = u.chars().filter(|c| *c != '-').collect();
            let bytes: Vec<u8> = (0..16)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let bin = decode_binary_key(&bytes, KeyType::Uuid).unwrap();
            assert_eq!(bin, text);
            assert_eq!(
                partition_for(&bin.as_key(), KeyType::Uuid, 7),
                shard_of_text(u, KeyType::Uuid, 7).unwrap()
            );
        }
        assert_eq!(
            decode_binary_key("café".as_bytes(), KeyType::Text),
            Ok(OwnedKey::Text("café".as_bytes().to_vec()))
        );
        // Wrong widths are rejected.
        assert!(decode_binary_key(&[0; 4], KeyType::Int2).is_err());
        assert!(decode_binary_key(&[0; 8], KeyType::Int4).is_err());
        assert!(decode_binary_key(&[0; 4], KeyType::Int8).is_err());
        assert!(decode_binary_key(&[], KeyType::Int8).is_err());
        assert!(decode_binary_key(&[0; 15], KeyType::Uuid).is_err());
        assert!(decode_binary_key(&[0; 17], KeyType::Uuid).is_err());
    }

    #[test]
    fn cli_output() {
        let values: Vec<String> = ["1", "-1", " 9223372036854775807"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shard_cli(4, KeyType::Int8, &values),
            Ok("1\t0\n-1\t1\n 9223372036854775807\t2\n".to_string())
        );
        let values = vec!["abc".to_string(), String::new()];
        assert_eq!(
            shard_cli(16, KeyType::Text, &values),
            Ok("abc\t5\n\t6\n".to_string())
        );
        assert_eq!(shard_cli(3, KeyType::Uuid, &[]), Ok(String::new()));
        let err = shard_cli(4, KeyType::Int2, &["1".to_string(), "40000".to_string()]).unwrap_err();
        assert!(err.contains("40000"), "{err}");
        let err = shard_cli(4, KeyType::Uuid, &["not-a-uuid".to_string()]).unwrap_err();
        assert!(err.contains("not-a-uuid"), "{err}");
        assert!(shard_cli(0, KeyType::Int8, &["1".to_string()]).is_err());
    }
}
