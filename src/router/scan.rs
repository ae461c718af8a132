//! The AST walk behind classification of query-like statements.
//!
//! Owns: [`Scan`], a sqlparser `Visitor` that finds nested DML (writable CTEs), locking
//! clauses, `SELECT INTO`, called functions (split into side-effecting built-ins, configured
//! write functions and candidates for the catalog lookup) and referenced tables.
//! Must not: decide routes on its own beyond these facts, do I/O, or panic.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectName, Query, Select, Statement, TableFactor, Visit, Visitor};

use super::classify::{ident_name, name_parts, Reason, StatementKind, Verdict};
use super::functions::{is_builtin_read, is_builtin_write};

/// Walks a statement: nested DML, locking clauses, SELECT INTO, functions, tables.
pub(super) struct Scan<'a> {
    write_functions: &'a [String],
    depth: usize,
    writable_cte: bool,
    select_into: bool,
    locking: bool,
    write_function: Option<Reason>,
    functions: Vec<String>,
    pub(super) tables: Vec<String>,
    ctes: Vec<String>,
    next_relation_is_function: bool,
}

impl<'a> Scan<'a> {
    pub(super) fn run(stmt: &Statement, write_functions: &'a [String]) -> Self {
        let mut scan = Scan {
            write_functions,
            depth: 0,
            writable_cte: false,
            select_into: false,
            locking: false,
            write_function: None,
            functions: Vec::new(),
            tables: Vec::new(),
            ctes: Vec::new(),
            next_relation_is_function: false,
        };
        let _ = stmt.visit(&mut scan);
        let ctes = std::mem::take(&mut scan.ctes);
        scan.tables.retain(|t| !ctes.contains(t));
        scan
    }

    fn function(&mut self, name: &ObjectName) {
        let parts = name_parts(name);
        let Some(fname) = parts.last() else { return };
        let full = parts.join(".");
        let configured = self
            .write_functions
            .iter()
            .any(|w| w.eq_ignore_ascii_case(fname) || w.eq_ignore_ascii_case(&full));
        let schema = (parts.len() > 1).then(|| parts[parts.len() - 2].as_str());
        if configured {
            self.write_function
                .get_or_insert(Reason::WriteFunction(full));
            return;
        }
        match schema {
            None | Some("pg_catalog") if is_builtin_write(fname) => {
                self.write_function
                    .get_or_insert(Reason::VolatileFunction(full));
            }
            Some("pg_catalog") | Some("information_schema") => {}
            None if is_builtin_read(fname) => {}
            _ => {
                if !self.functions.contains(fname) {
                    self.functions.push(fname.clone());
                }
            }
        }
    }

    /// The read/write verdict of a scanned query-like statement.
    pub(super) fn verdict(self, kind: StatementKind) -> Verdict {
        let reason = if self.writable_cte {
            Some(Reason::WritableCte)
        } else if self.select_into {
            Some(Reason::SelectInto)
        } else if self.locking {
            Some(Reason::LockingClause)
        } else {
            self.write_function
        };
        let write = reason.is_some();
        Verdict {
            kind,
            write,
            reason: reason.unwrap_or(Reason::Read),
            functions: if write { Vec::new() } else { self.functions },
            tables: self.tables,
        }
    }
}

impl Visitor for Scan<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > 1
            && matches!(
                s,
                Statement::Insert(_)
                    | Statement::Update(_)
                    | Statement::Delete(_)
                    | Statement::Merge(_)
            )
        {
            self.writable_cte = true;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _s: &Statement) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.locks.is_empty() {
            self.locking = true;
        }
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.push(ident_name(&cte.alias.name));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            self.select_into = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table { args: Some(_), .. } => self.next_relation_is_function = true,
            TableFactor::Function { name, .. } => self.function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        if std::mem::take(&mut self.next_relation_is_function) {
            self.function(r);
        } else {
            let t = name_parts(r).join(".");
            if !self.tables.contains(&t) {
                self.tables.push(t);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            self.function(&f.name);
        }
        ControlFlow::Continue(())
    }
}
