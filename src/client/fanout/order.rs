//! PostgreSQL's sort order for values in binary format, for the types whose default btree
//! order pgvane can reproduce exactly: the k-way merge of shards' sorted rows compares them
//! here.
//!
//! Owns: per-type comparison of binary values (integers, oid, bool, floats with NaN above
//! every number and -0 = +0, date/time/timestamp, uuid, bytea, numeric with NaN and
//! infinities, and text compared byte by byte, which is PostgreSQL's order only under a
//! byte-order collation: the caller checks that), and one ORDER BY key's direction and NULL
//! placement.
//! Must not: guess: [`comparable`] says which types are handled, every other type is left
//! to PostgreSQL. Never panics on any bytes (malformed values compare as equal).

use std::cmp::Ordering;

/// Text-like types: byte order is PostgreSQL's only under a C-like collation.
pub fn is_text(oid: u32) -> bool {
    matches!(oid, 25 | 1043 | 19)
}

/// Can pgvane compare this type's binary values as PostgreSQL's default btree order does?
pub fn comparable(oid: u32) -> bool {
    matches!(
        oid,
        16 | 17 | 20 | 21 | 23 | 26 | 700 | 701 | 1082 | 1083 | 1114 | 1184 | 1700 | 2950
    ) || is_text(oid)
}

fn int(b: &[u8]) -> Option<i64> {
    Some(match b.len() {
        2 => i16::from_be_bytes([b[0], b[1]]) as i64,
        4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
        8 => i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        _ => return None,
    })
}

fn float(b: &[u8]) -> Option<f64> {
    Some(match b.len() {
        4 => f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64,
        8 => f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        _ => return None,
    })
}

/// PostgreSQL's float order: NaN equals NaN and sorts above everything.
fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// A numeric in binary: (class, weight, digits) with class -2 = -Infinity, -1 negative,
/// 0 zero, 1 positive, 2 +Infinity, 3 NaN.
fn numeric(b: &[u8]) -> Option<(i8, i16, Vec<i16>)> {
    if b.len() < 8 {
        return None;
    }
    let rd = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
    let n = rd(0).max(0) as usize;
    let weight = rd(2);
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let digits: Vec<i16> = (0..n)
        .filter_map(|i| {
            b.get(8 + 2 * i..10 + 2 * i)
                .map(|d| i16::from_be_bytes([d[0], d[1]]))
        })
        .collect();
    let class = match sign {
        0xC000 => 3,
        0xD000 => 2,
        0xF000 => -2,
        _ if digits.iter().all(|d| *d == 0) => 0,
        0x4000 => -1,
        _ => 1,
    };
    Some((class, weight, digits))
}

fn numeric_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (Some((ca, wa, da)), Some((cb, wb, db))) = (numeric(a), numeric(b)) else {
        return Ordering::Equal;
    };
    if ca != cb || !matches!(ca, -1 | 1) {
        return ca.cmp(&cb);
    }
    // Same sign: compare magnitudes (weight of the first non-zero digit, then digits).
    let strip = |w: i16, d: &[i16]| -> (i16, Vec<i16>) {
        let lead = d.iter().take_while(|x| **x == 0).count();
        let mut v = d[lead..].to_vec();
        while v.last() == Some(&0) {
            v.pop();
        }
        (w - lead as i16, v)
    };
    let (wa, da) = strip(wa, &da);
    let (wb, db) = strip(wb, &db);
    let mag = wa.cmp(&wb).then_with(|| da.cmp(&db));
    if ca < 0 {
        mag.reverse()
    } else {
        mag
    }
}

/// Compare two non-NULL binary values of type `oid` (only for [`comparable`] types).
pub fn compare(oid: u32, a: &[u8], b: &[u8]) -> Ordering {
    match oid {
        16 => a.cmp(b),
        20 | 21 | 23 | 1082 | 1083 | 1114 | 1184 => match (int(a), int(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => Ordering::Equal,
        },
        26 => match (int(a), int(b)) {
            (Some(x), Some(y)) => (x as u32).cmp(&(y as u32)),
            _ => Ordering::Equal,
        },
        700 | 701 => match (float(a), float(b)) {
            (Some(x), Some(y)) => float_cmp(x, y),
            _ => Ordering::Equal,
        },
        1700 => numeric_cmp(a, b),
        // bytea, uuid, and text under a byte-order collation: bytes, then length.
        _ => a.cmp(b),
    }
}

/// One ORDER BY key: its type, direction and NULL placement (PostgreSQL's default: NULLS
/// LAST for ASC, NULLS FIRST for DESC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub oid: u32,
    pub desc: bool,
    pub nulls_first: bool,
}

impl Key {
    pub fn cmp(&self, a: Option<&[u8]>, b: Option<&[u8]>) -> Ordering {
        match (a, b) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if self.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if self.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(x), Some(y)) => {
                let o = compare(self.oid, x, y);
                if self.desc {
                    o.reverse()
                } else {
                    o
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(sign: u16, weight: i16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&0i16.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numbers_compare_as_postgresql_orders_them() {
        let i = |x: i32| x.to_be_bytes().to_vec();
        assert_eq!(compare(23, &i(-5), &i(3)), Ordering::Less);
        let f = |x: f64| x.to_be_bytes().to_vec();
        assert_eq!(
            compare(701, &f(f64::NAN), &f(f64::INFINITY)),
            Ordering::Greater
        );
        assert_eq!(compare(701, &f(-0.0), &f(0.0)), Ordering::Equal);
        assert_eq!(compare(701, &f(f64::NAN), &f(f64::NAN)), Ordering::Equal);
        // numeric: 12.5 = weight 0 digits [12, 5000]; 3 = [3]; -7 = negative [7]; 0 = no digits
        let a = num(0, 0, &[12, 5000]);
        let b = num(0, 0, &[3]);
        let neg = num(0x4000, 0, &[7]);
        let zero = num(0, 0, &[]);
        let big = num(0, 1, &[1]);
        let nan = num(0xC000, 0, &[]);
        let ninf = num(0xF000, 0, &[]);
        assert_eq!(compare(1700, &a, &b), Ordering::Greater);
        assert_eq!(compare(1700, &neg, &zero), Ordering::Less);
        assert_eq!(compare(1700, &big, &a), Ordering::Greater);
        assert_eq!(compare(1700, &nan, &big), Ordering::Greater);
        assert_eq!(compare(1700, &ninf, &neg), Ordering::Less);
        assert_eq!(
            compare(1700, &num(0x4000, 0, &[7]), &num(0x4000, 0, &[8])),
            Ordering::Greater
        );
        assert_eq!(compare(1700, &num(0, 0, &[3, 0]), &b), Ordering::Equal);
    }

    #[test]
    fn keys_place_nulls_and_directions() {
        let k = Key {
            oid: 25,
            desc: false,
            nulls_first: false,
        };
        assert_eq!(k.cmp(None, Some(b"a")), Ordering::Greater);
        assert_eq!(k.cmp(Some(b"ab"), Some(b"b")), Ordering::Less);
        let d = Key {
            oid: 25,
            desc: true,
            nulls_first: true,
        };
        assert_eq!(d.cmp(None, Some(b"a")), Ordering::Less);
        assert_eq!(d.cmp(Some(b"ab"), Some(b"b")), Ordering::Greater);
        assert!(!comparable(1186));
    }
}
