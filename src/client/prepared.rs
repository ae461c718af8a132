//! Named prepared statements under transaction and statement pooling.
//!
//! Owns: the process-wide registry that gives each distinct (query text, parameter types) one
//! pgvane name (`pgvane_<id>`), shared by all servers, and the per-client map from the names a
//! client chose to those shared statements.
//!
//! Memory is bounded by who uses a statement: the registry keeps only a weak reference, the
//! holders (a client's name for it, a server's prepared-statement cache, a response still
//! owed) keep it alive, and when the last holder lets go the statement leaves the registry at
//! once (counted in `pgvane_prepared_evictions_total`). So the registry never holds more than
//! the statements clients have open plus `max_prepared_statements` per server connection.
//! Ids are never reused: a text prepared again after its eviction gets a new name, so no
//! server can hold a `pgvane_<id>` under another text.
//!
//! Must not: do I/O. The session decides when to prepare a statement on a server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::Bytes;

/// A statement as the server must be told about it.
#[derive(Debug)]
pub struct StmtDef {
    pub id: u64,
    /// `pgvane_<id>`
    pub name: Vec<u8>,
    pub query: Bytes,
    /// The Parse message's parameter-type section, as on the wire.
    pub param_types: Bytes,
    /// A server accepted this statement once (ParseComplete): later Parses of the same text
    /// need no server to be answered.
    pub validated: AtomicBool,
    /// Running it may change session state (see `tracker::state::touches_session`).
    pub touches_session: bool,
    /// It reads sequence state (`currval`, `lastval`), or may set it (`nextval` and the
    /// statements that may call it); see `tracker::state`.
    pub reads_sequence: bool,
    pub sets_sequence: bool,
    /// The registry it is entered in, left when the last holder drops it.
    registry: &'static Registry,
}

/// A client's name for a shared statement, and what the client has learned of it since its
/// Parse. PostgreSQL fixes a named statement's result shape at Parse: a later schema change
/// that alters it fails the statement (0A000), while a statement parsed after the change
/// just has the new shape. pgvane answers many Parses from a server's existing statement, so
/// it tells the two cases apart by what the client has seen.
#[derive(Debug, Clone)]
pub struct ClientStmt {
    pub def: Arc<StmtDef>,
    /// The result shape ([`crate::protocol::row_shape`]) a Describe of the statement told
    /// the client: it decodes rows by it.
    pub told: Option<u64>,
    /// A Describe or Bind of it succeeded: the client has seen the plan PostgreSQL would have
    /// fixed at its Parse.
    pub used: bool,
    /// The server connection (id) where pgvane prepared it afresh for this client's Parse.
    pub fresh_on: Option<u64>,
}

impl ClientStmt {
    pub fn new(def: Arc<StmtDef>) -> ClientStmt {
        ClientStmt {
            def,
            told: None,
            used: false,
            fresh_on: None,
        }
    }
}

impl Drop for StmtDef {
    fn drop(&mut self) {
        self.registry.forget(self);
    }
}

type Key = (Bytes, Bytes);

struct Entry {
    id: u64,
    def: Weak<StmtDef>,
}

#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<Key, Entry>>,
    next: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        match self.map.lock() {
            Ok(m) => m,
            Err(e) => e.into_inner(),
        }
    }

    /// The shared statement for this text and parameter types, created on first sight (or
    /// again, under a new id, after every holder of the previous one let go).
    pub fn intern(&'static self, query: Bytes, param_types: Bytes) -> Arc<StmtDef> {
        let key = (query, param_types);
        let mut map = self.lock();
        if let Some(def) = map.get(&key).and_then(|e| e.def.upgrade()) {
            return def;
        }
        // An entry that cannot be upgraded is being dropped right now; its `forget` sees the
        // new id and leaves this entry alone.
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut name = Vec::with_capacity(24);
        crate::server::statement_name(id, &mut name);
        // Own copies: a slice of the client's frame would keep its whole read buffer alive.
        let query = Bytes::copy_from_slice(&key.0);
        let param_types = Bytes::copy_from_slice(&key.1);
        let text = String::from_utf8_lossy(&query);
        use crate::client::tracker::state;
        let def = Arc::new(StmtDef {
            id,
            name,
            query: query.clone(),
            param_types: param_types.clone(),
            validated: AtomicBool::new(false),
            touches_session: state::touches_session(&text),
            reads_sequence: state::reads_sequence_state(&text),
            sets_sequence: state::may_set_sequence_state(&text),
            registry: self,
        });
        map.insert(
            (query, param_types),
            Entry {
                id,
                def: Arc::downgrade(&def),
            },
        );
        def
    }

    /// The statement for this text and types, if something holds it.
    pub fn get(&self, query: &Bytes, param_types: &Bytes) -> Option<Arc<StmtDef>> {
        let map = self.lock();
        map.get(&(query.clone(), param_types.clone()))?
            .def
            .upgrade()
    }

    /// The last holder of `def` let go: remove its entry (unless a newer statement with the
    /// same text already replaced it) and give back the map's memory once mostly empty.
    fn forget(&self, def: &StmtDef) {
        let mut map = self.lock();
        let key = (def.query.clone(), def.param_types.clone());
        if map.get(&key).is_some_and(|e| e.id == def.id) {
            map.remove(&key);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            // Shrinking costs O(len) and happens after at least `capacity / 2` removals.
            if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
                let len = map.len();
                map.shrink_to(len * 2);
                drop(map);
                give_back_to_os();
            }
        }
    }

    /// Statements currently held by some client or server.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Statements that left the registry because nothing held them any more.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// Most of what the registry held is free again: ask the allocator to return its free pages to
/// the system (glibc keeps them otherwise, fragmented among the pages still in use). That walks
/// the heap (about 20 ms after 100,000 statements), so it runs on a blocking thread, one at a
/// time.
fn give_back_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Requests since the running trim started; the first one starts it, and it runs again
        // if more arrived meanwhile (their memory may have been freed after its walk).
        static REQUESTS: AtomicU64 = AtomicU64::new(0);
        if REQUESTS.fetch_add(1, Ordering::AcqRel) > 0 {
            return;
        }
        let trim = || loop {
            let seen = REQUESTS.load(Ordering::Acquire);
            // SAFETY: malloc_trim only releases memory the allocator considers free.
            unsafe {
                libc::malloc_trim(0);
            }
            if REQUESTS
                .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(trim)),
            Err(_) => trim(),
        }
    }
}

/// The registry shared by every session in the process.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> &'static Registry {
        Box::leak(Box::default())
    }

    fn q(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    const NO_TYPES: &[u8] = &[0, 0];

    #[test]
    fn same_text_same_statement() {
        let r = fresh();
        let a = r.intern(q("select 1"), Bytes::from_static(NO_TYPES));
        let b = r.intern(q("select 1"), Bytes::from_static(NO_TYPES));
        let c = r.intern(q("select 1"), Bytes::from_static(&[0, 1, 0, 0, 0, 23]));
        assert_eq!(a.id, b.id);
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id);
        assert_eq!(a.name, format!("pgvane_{}", a.id).into_bytes());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn evicted_when_the_last_holder_lets_go() {
        let r = fresh();
        let a = r.intern(q("select 1"), Bytes::from_static(NO_TYPES));
        let held_by_server = a.clone();
        drop(a);
        assert_eq!(r.len(), 1, "a server still holds it");
        assert!(r
            .get(&q("select 1"), &Bytes::from_static(NO_TYPES))
            .is_some());
        let id = held_by_server.id;
        drop(held_by_server);
        assert_eq!(r.len(), 0);
        assert_eq!(r.evictions(), 1);
        assert!(r
            .get(&q("select 1"), &Bytes::from_static(NO_TYPES))
            .is_none());
        // Prepared again: a new name, never one a server may still know under another text.
        let again = r.intern(q("select 1"), Bytes::from_static(NO_TYPES));
        assert_ne!(again.id, id);
        assert!(!again.validated.load(Ordering::Relaxed));
    }

    #[test]
    fn a_stale_entry_does_not_remove_its_successor() {
        let r = fresh();
        let old = r.intern(q("select 2"), Bytes::from_static(NO_TYPES));
        // The entry of `old` as seen mid-drop (strong count 0, forget not yet run): a new
        // intern replaces it; the late forget of `old` must leave the new entry in place.
        let new_id = {
            let mut map = r.lock();
            let e = map
                .get_mut(&(q("select 2"), Bytes::from_static(NO_TYPES)))
                .unwrap();
            e.id += 1000;
            e.id
        };
        drop(old);
        assert_eq!(r.len(), 1);
        assert_eq!(r.evictions(), 0);
        let map = r.lock();
        assert_eq!(map.values().next().map(|e| e.id), Some(new_id));
    }

    #[test]
    fn memory_is_given_back() {
        let r = fresh();
        let held: Vec<_> = (0..20_000)
            .map(|i| {
                r.intern(
                    Bytes::from(format!("select {i}")),
                    Bytes::from_static(NO_TYPES),
                )
            })
            .collect();
        assert_eq!(r.len(), 20_000);
        let big = r.lock().capacity();
        drop(held);
        assert_eq!(r.len(), 0);
        assert_eq!(r.evictions(), 20_000);
        assert!(r.lock().capacity() <= 2048, "map capacity stayed at {big}");
    }

    #[test]
    fn keys_do_not_pin_the_client_frame() {
        let r = fresh();
        let frame = Bytes::from(vec![b'x'; 8192]);
        let def = r.intern(frame.slice(10..20), Bytes::from_static(NO_TYPES));
        let query_ptr = def.query.as_ptr();
        assert!(
            !(frame.as_ptr()..frame.as_ptr().wrapping_add(8192)).contains(&query_ptr),
            "the registry shares the frame's buffer"
        );
    }

    #[test]
    fn concurrent_intern_and_release_never_share_an_id_across_texts() {
        let r = fresh();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    for i in 0..5_000 {
                        let text = format!("select {}", (i + t) % 50);
                        let d = r.intern(Bytes::from(text.clone()), Bytes::from_static(NO_TYPES));
                        assert_eq!(d.query, text.as_bytes());
                        seen.push((d.id, text));
                    }
                    seen
                })
            })
            .collect();
        let mut by_id = HashMap::new();
        for t in threads {
            for (id, text) in t.join().unwrap() {
                let prev = by_id.insert(id, text.clone());
                assert!(prev.is_none_or(|p| p == text), "id {id} named two texts");
            }
        }
        assert_eq!(r.len(), 0, "nothing holds any statement any more");
    }
}
