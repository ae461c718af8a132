//! PostgreSQL WAL positions (`pg_lsn`) as plain `u64`s: parsing and formatting of the
//! `XXXXXXXX/XXXXXXXX` text form.
//!
//! Must not: know about servers, lag policy or time. Pure functions only.

/// Parses the text form of a `pg_lsn` (`"16/B374D848"` → `0x16_B374_D848`), as
/// PostgreSQL's `pg_lsn_in` does: 1–8 hex digits (either case), `/`, 1–8 hex digits,
/// nothing else. Returns `None` for anything else.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((parse_half(hi)? << 32) | parse_half(lo)?)
}

fn parse_half(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Formats an LSN the way PostgreSQL prints it: upper-case hex, no padding (`"16/B374D848"`,
/// `"0/0"`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("16/b374d848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(format_lsn((0x16 << 32) | 0xB374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(format_lsn(u64::MAX), "FFFFFFFF/FFFFFFFF");
        assert_eq!(parse_lsn("0/1A"), Some(0x1A));
        assert_eq!(parse_lsn("00000000/00000001"), Some(1));
    }

    #[test]
    fn round_trips() {
        for v in [
            0,
            1,
            0xFFFF_FFFF,
            1 << 32,
            (0x16 << 32) | 0xB374_D848,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(parse_lsn(&format_lsn(v)), Some(v), "{v:#x}");
        }
        for s in [
            "0/0",
            "16/B374D848",
            "FFFFFFFF/FFFFFFFF",
            "1/0",
            "0/FFFFFFFF",
        ] {
            assert_eq!(format_lsn(parse_lsn(s).unwrap()), s);
        }
    }

    #[test]
    fn rejects_bad_input() {
        for s in [
            "",
            "/",
            "0/",
            "/0",
            "16",
            "16B374D848",
            "1/2/3",
            "G/0",
            "0/-1",
            "+1/0",
            " 0/0",
            "0/0 ",
            "100000000/0",
            "0/100000000",
            "0x1/0",
            "１/0",
        ] {
            assert_eq!(parse_lsn(s), None, "{s:?}");
        }
    }
}
