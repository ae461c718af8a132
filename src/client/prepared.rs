//! Named prepared statements under transaction and statement pooling.
//!
//! Owns: the process-wide registry that gives each distinct (query text, parameter types) one
//! pgvane name (`pgvane_<id>`), shared by all servers, and the per-client map from the names a
//! client chose to those shared statements.
//!
//! Must not: do I/O. The session decides when to prepare a statement on a server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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
    pub validated: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<(Bytes, Bytes), Arc<StmtDef>>>,
    next: AtomicU64,
}

impl Registry {
    /// The shared statement for this text and parameter types, created on first sight.
    pub fn intern(&self, query: Bytes, param_types: Bytes) -> Arc<StmtDef> {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(e) => e.into_inner(),
        };
        let key = (query, param_types);
        if let Some(d) = map.get(&key) {
            return d.clone();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut name = Vec::with_capacity(24);
        crate::server::statement_name(id, &mut name);
        let def = Arc::new(StmtDef {
            id,
            name,
            query: key.0.clone(),
            param_types: key.1.clone(),
            validated: std::sync::atomic::AtomicBool::new(false),
        });
        map.insert(key, def.clone());
        def
    }

    /// The statement for this text and types, if it exists.
    pub fn get(&self, query: &Bytes, param_types: &Bytes) -> Option<Arc<StmtDef>> {
        let map = self.map.lock().ok()?;
        map.get(&(query.clone(), param_types.clone())).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn same_text_same_statement() {
        let r = Registry::default();
        let a = r.intern(Bytes::from_static(b"select 1"), Bytes::from_static(&[0, 0]));
        let b = r.intern(Bytes::from_static(b"select 1"), Bytes::from_static(&[0, 0]));
        let c = r.intern(
            Bytes::from_static(b"select 1"),
            Bytes::from_static(&[0, 1, 0, 0, 0, 23]),
        );
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.name, format!("pgvane_{}", a.id).into_bytes());
        assert_eq!(r.len(), 2);
    }
}
