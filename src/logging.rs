//! Helpers for log lines that outsiders can trigger (failed logins, protocol errors).
//!
//! Owns: [`RateLimit`], a lock-free "at most N lines per window" gate usable from a `static`,
//! and [`bounded`], which cuts a string for a log line and says how much was cut.
//!
//! Must not: log anything itself, depend on tokio, or allocate on the hot path (checking a
//! limit is a few atomic operations; `bounded` borrows unless it has to cut).
//!
//! Usage:
//! ```
//! use pgvane::logging::{bounded, RateLimit};
//! static LOGIN_FAILED: RateLimit = RateLimit::per_second(10);
//! fn on_failure(user: &str) {
//!     if let Some(suppressed) = LOGIN_FAILED.check() {
//!         // log it; when `suppressed > 0`, say "suppressed {suppressed} similar messages"
//!         let _ = (bounded(user, 64), suppressed);
//!     }
//! }
//! ```
//! The count of suppressed lines is reported with the next line that gets through, so a
//! flood that stops is summed up by the first line after it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Bits of the packed state that hold the count of lines in the current window.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// At most `max` lines per `window_ms` milliseconds, counted in fixed windows.
///
/// `const`-constructible, so one `static` per kind of message is enough. Thread-safe
/// without locks: the window number and the count in it share one atomic word.
#[derive(Debug)]
pub struct RateLimit {
    max: u64,
    window_ms: u64,
    /// (window number << COUNT_BITS) | lines let through in that window.
    state: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// At most `max` lines per `window_ms` ms (`max` is capped at 2^24 - 1; a zero window is
    /// taken as 1 ms).
    pub const fn new(max: u32, window_ms: u64) -> RateLimit {
        let max = if (max as u64) > COUNT_MASK {
            COUNT_MASK
        } else {
            max as u64
        };
        RateLimit {
            max,
            window_ms: if window_ms == 0 { 1 } else { window_ms },
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// At most `max` lines per second.
    pub const fn per_second(max: u32) -> RateLimit {
        RateLimit::new(max, 1000)
    }

    /// May a line be logged now? `Some(k)`: yes, and `k` lines were suppressed since the
    /// last one that got through (mention them when `k > 0`). `None`: suppress it (it is
    /// counted for the next summary).
    pub fn check(&self) -> Option<u64> {
        self.check_at(now_ms())
    }

    /// [`check`](Self::check) at a given time in milliseconds (monotonic; for tests).
    pub fn check_at(&self, now_ms: u64) -> Option<u64> {
        if self.max == 0 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let window = (now_ms / self.window_ms) & (u64::MAX >> COUNT_BITS);
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (w, n) = (cur >> COUNT_BITS, cur & COUNT_MASK);
            let next = if w != window {
                (window << COUNT_BITS) | 1
            } else if n < self.max {
                cur + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Milliseconds since the first call in this process (monotonic).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// `s` cut to at most `max` bytes (at a character boundary) with `... (N bytes more)`
/// appended when it was longer; borrowed when it fits. For user-controlled text in log
/// lines (log it with `{:?}` so control characters are escaped too).
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes more)", &s[..end], s.len() - end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_max_lines_through_per_window_then_reports_the_rest() {
        let r = RateLimit::new(3, 1000);
        assert_eq!(r.check_at(10), Some(0));
        assert_eq!(r.check_at(20), Some(0));
        assert_eq!(r.check_at(999), Some(0));
        assert_eq!(r.check_at(999), None);
        assert_eq!(r.check_at(999), None);
        // Next window: the first line carries the count of suppressed ones, once.
        assert_eq!(r.check_at(1000), Some(2));
        assert_eq!(r.check_at(1001), Some(0));
        assert_eq!(r.check_at(1002), Some(0));
        assert_eq!(r.check_at(1003), None);
        // A long quiet gap starts a fresh window.
        assert_eq!(r.check_at(50_000), Some(1));
    }

    #[test]
    fn zero_max_suppresses_everything() {
        let r = RateLimit::new(0, 1000);
        assert_eq!(r.check_at(0), None);
        assert_eq!(r.check_at(5000), None);
    }

    #[test]
    fn usable_from_a_static_across_threads() {
        static R: RateLimit = RateLimit::per_second(100);
        let passed: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).filter(|_| R.check_at(7).is_some()).count() as u64))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(passed, 100, "exactly max lines pass in one window");
        assert_eq!(R.check_at(1000), Some(3900));
    }

    #[test]
    fn bounded_borrows_short_and_cuts_long() {
        assert!(matches!(bounded("abc", 3), Cow::Borrowed("abc")));
        assert_eq!(bounded("abcdef", 4), "abcd... (2 bytes more)");
        assert_eq!(bounded("", 0), "");
        assert_eq!(bounded("abc", 0), "... (3 bytes more)");
        // Never splits a character: "é" is 2 bytes.
        assert_eq!(bounded("aé", 2), "a... (2 bytes more)");
        assert_eq!(bounded("éé", 3), "é... (2 bytes more)");
    }
}
