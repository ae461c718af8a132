//! The analysis cache: normalized statement text → `Arc<Analysis>`, so a statement shape is
//! parsed once.
//!
//! Owns: a bounded LRU split into up to 16 mutex-protected shards (by key hash; the critical
//! section is one hash lookup plus a few index updates), hit/miss/parse-failure counters,
//! and [`AnalysisCache::get_or_analyze`], which ties normalization, analysis and caching
//! together. Must not: do I/O, hold a lock while parsing, or panic on any input.
//!
//! Cached verdicts depend on the `write_functions` passed in; call [`AnalysisCache::clear`]
//! when that configuration changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::classify::{analyze, Analysis};
use super::normalize::{normalize, Normalized};

const MAX_SHARDS: usize = 16;
const NIL: usize = usize::MAX;

#[derive(Clone)]
enum Entry {
    Done(Arc<Analysis>),
    /// The normalized text does not parse but the raw text does: look the raw text up.
    UseRaw,
}

struct Node {
    key: String,
    value: Entry,
    prev: usize,
    next: usize,
}

/// One LRU shard: a map to slots of an intrusive doubly-linked recency list.
struct Lru {
    map: HashMap<String, usize>,
    nodes: Vec<Node>,
    head: usize,
    tail: usize,
    cap: usize,
}

impl Lru {
    fn new(cap: usize) -> Self {
        Lru {
            map: HashMap::new(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            cap,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn get(&mut self, key: &str) -> Option<Entry> {
        let i = *self.map.get(key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(self.nodes[i].value.clone())
    }

    fn insert(&mut self, key: &str, value: Entry) {
        if self.cap == 0 {
            return;
        }
        if let Some(&i) = self.map.get(key) {
            self.nodes[i].value = value;
            self.unlink(i);
            self.push_front(i);
            return;
        }
        let i = if self.nodes.len() < self.cap {
            self.nodes.push(Node {
                key: key.to_owned(),
                value,
                prev: NIL,
                next: NIL,
            });
            self.nodes.len() - 1
        } else {
            let i = self.tail;
            self.unlink(i);
            let old = std::mem::replace(&mut self.nodes[i].key, key.to_owned());
            self.map.remove(&old);
            self.nodes[i].value = value;
            i
        };
        self.map.insert(key.to_owned(), i);
        self.push_front(i);
    }

    fn clear(&mut self) {
        self.map.clear();
        self.nodes.clear();
        self.head = NIL;
        self.tail = NIL;
    }
}

/// Bounded, thread-safe cache of statement analyses keyed by normalized text.
pub struct AnalysisCache {
    shards: Box<[Mutex<Lru>]>,
    hits: AtomicU64,
    misses: AtomicU64,
    parse_failures: AtomicU64,
}

impl std::fmt::Debug for AnalysisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalysisCache")
            .field("len", &self.len())
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish()
    }
}

/// FNV-1a, only to pick a shard.
fn shard_hash(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as usize
}

impl AnalysisCache {
    /// A cache holding at most `capacity` entries in total (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        let mut shards = 1;
        while shards * 2 <= capacity.min(MAX_SHARDS) {
            shards *= 2;
        }
        let per_shard = capacity / shards;
        AnalysisCache {
            shards: (0..shards)
                .map(|_| Mutex::new(Lru::new(per_shard)))
                .collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            parse_failures: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Lru> {
        let i = shard_hash(key) & (self.shards.len() - 1);
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, key: &str) -> Option<Entry> {
        self.shard(key).get(key)
    }

    fn store(&self, key: &str, value: Entry) {
        self.shard(key).insert(key, value);
    }

    /// Count a miss (and a parse failure) for a fresh analysis `a`.
    fn counted(&self, a: Analysis) -> Arc<Analysis> {
        self.misses.fetch_add(1, Ordering::Relaxed);
        if a.parse_failed {
            self.parse_failures.fetch_add(1, Ordering::Relaxed);
        }
        Arc::new(a)
    }

    /// Normalize `sql`, and return the cached analysis of its shape (analyzing it on a miss)
    /// together with the normalization (literal values for the placeholders).
    ///
    /// The analysis is of the normalized text, so its AST has `Placeholder("$10001")`...
    /// where literals were; if only the raw text parses, it is of the raw text (cached under
    /// the exact text) and the AST holds the literal values themselves.
    pub fn get_or_analyze(
        &self,
        sql: &str,
        write_functions: &[String],
    ) -> (Arc<Analysis>, Normalized) {
        let n = normalize(sql);
        match self.lookup(&n.key) {
            Some(Entry::Done(a)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                (a, n)
            }
            Some(Entry::UseRaw) => {
                if let Some(Entry::Done(a)) = self.lookup(sql) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return (a, n);
                }
                let a = self.counted(analyze(sql, write_functions));
                self.store(sql, Entry::Done(a.clone()));
                (a, n)
            }
            None => {
                let a = analyze(&n.key, write_functions);
                if a.parse_failed && n.key != sql {
                    let raw = analyze(sql, write_functions);
                    if !raw.parse_failed {
                        let raw = self.counted(raw);
                        self.store(&n.key, Entry::UseRaw);
                        self.store(sql, Entry::Done(raw.clone()));
                        return (raw, n);
                    }
                }
                let a = self.counted(a);
                self.store(&n.key, Entry::Done(a.clone()));
                (a, n)
            }
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Distinct statements (shapes) sqlparser could not parse in any form.
    pub fn parse_failures(&self) -> u64 {
        self.parse_failures.load(Ordering::Relaxed)
    }

    /// Entries currently cached.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every entry (counters are kept).
    pub fn clear(&self) {
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_and_misses() {
        let c = AnalysisCache::new(100);
        let (a, n) = c.get_or_analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 42", &[]);
        assert!(!a.write);
        assert_eq!((c.hits(), c.misses()), (0, 1));
        let (b, m) = c.get_or_analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 7", &[]);
        assert!(Arc::ptr_eq(&a, &b), "same shape shares one analysis");
        assert_eq!(n.key, m.key);
        assert_eq!(
            m.literals[0].value,
            crate::router::LiteralValue::Num("7".into())
        );
        assert_eq!((c.hits(), c.misses()), (1, 1));
        c.get_or_analyze("DELETE FROM t WHERE id = 1", &[]);
        assert_eq!((c.hits(), c.misses()), (1, 2));
        assert_eq!(c.len(), 2);
        assert_eq!(c.parse_failures(), 0);
        c.get_or_analyze("SELEC garbage", &[]);
        c.get_or_analyze("SELEC garbage", &[]);
        assert_eq!(c.parse_failures(), 1);
        assert_eq!((c.hits(), c.misses()), (2, 3));
        c.clear();
        assert!(c.is_empty());
        c.get_or_analyze("DELETE FROM t WHERE id = 2", &[]);
        assert_eq!(c.misses(), 4);
    }

    #[test]
    fn capacity_bound_evicts() {
        for cap in [1, 3, 16, 40] {
            let c = AnalysisCache::new(cap);
            for i in 0..200 {
                c.get_or_analyze(&format!("SELECT c{i} FROM t WHERE a = {i}"), &[]);
                assert!(c.len() <= cap, "cap {cap}: {}", c.len());
            }
            assert!(c.len() >= cap / 2, "cap {cap} mostly used: {}", c.len());
            // the oldest shape was evicted: asking again is a miss
            let misses = c.misses();
            c.get_or_analyze("SELECT c0 FROM t WHERE a = 5", &[]);
            assert_eq!(c.misses(), misses + 1);
        }
        let c = AnalysisCache::new(0);
        c.get_or_analyze("SELECT 1", &[]);
        c.get_or_analyze("SELECT 1", &[]);
        assert_eq!((c.len(), c.hits(), c.misses()), (0, 0, 2));
    }

    #[test]
    fn lru_order() {
        let mut l = Lru::new(2);
        let e = || Entry::UseRaw;
        l.insert("a", e());
        l.insert("b", e());
        assert!(l.get("a").is_some()); // a is now most recent
        l.insert("c", e()); // evicts b
        assert!(l.get("b").is_none());
        assert!(l.get("a").is_some() && l.get("c").is_some());
        l.insert("c", e()); // update in place
        assert_eq!(l.map.len(), 2);
    }

    #[test]
    fn raw_text_fallback() {
        // `$10001 $10002` does not parse, the raw text (string continuation) does: the
        // verdict comes from the raw text, cached under the exact text.
        let c = AnalysisCache::new(100);
        let sql = "SELECT 'a'\n'b' FROM t";
        let (a, n) = c.get_or_analyze(sql, &[]);
        assert!(!a.parse_failed && !a.write, "{a:?}");
        assert_eq!(n.key, "SELECT $10001 $10002 FROM t");
        let (b, _) = c.get_or_analyze(sql, &[]);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((c.hits(), c.misses(), c.parse_failures()), (1, 1, 0));
        // same shape, other literals: the key says "use the raw text", which is new
        let (d, _) = c.get_or_analyze("SELECT 'c'\n'd' FROM t", &[]);
        assert!(!d.parse_failed && !Arc::ptr_eq(&a, &d));
        assert_eq!((c.hits(), c.misses()), (1, 2));
    }

    #[test]
    fn shared_across_threads() {
        let c = Arc::new(AnalysisCache::new(1000));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let (a, _) = c.get_or_analyze(
                            &format!("SELECT a FROM t{} WHERE b = {i}", i % 7),
                            &[],
                        );
                        assert!(!a.write, "thread {t}");
                    }
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().is_ok());
        }
        assert_eq!(c.hits() + c.misses(), 800);
        assert!(c.misses() >= 7 && c.len() == 7);
    }
}
