//! Which function calls make a statement a write.
//!
//! Owns: the built-in lists (pg_catalog functions with side effects, and well-known
//! side-effect-free pg_catalog functions that need no lookup), and [`FunctionCatalog`], the
//! cache of `pg_proc` answers for every other name.
//! This is the only router file that does I/O (one query through a client the caller
//! provides); it must not open connections itself or block inside the cache lock.

use std::collections::HashMap;
use std::sync::Mutex;

/// pg_catalog functions with side effects, or bound to the session (so they must run on the
/// primary). `name` is lower-case and unqualified.
#[rustfmt::skip]
pub fn is_builtin_write(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "pg_advisory_",
        "pg_try_advisory_",
        "lo_",
        "pg_stat_reset",
        "pg_create_",
        "pg_drop_replication_slot",
        "pg_copy_",
        "pg_replication_origin_",
        "pg_logical_",
        "binary_upgrade_",
    ];
    matches!(
        name,
        "nextval" | "setval" | "currval" | "lastval" | "setseed" | "pg_notify" | "set_config" |
        "loread" | "lowrite" | "txid_current" | "txid_current_if_assigned" |
        "pg_current_xact_id" | "pg_current_xact_id_if_assigned" | "pg_switch_wal" |
        "pg_switch_xlog" | "pg_current_wal_lsn" | "pg_current_wal_insert_lsn" |
        "pg_current_wal_flush_lsn" | "pg_current_xlog_location" | "pg_terminate_backend" |
        "pg_cancel_backend" | "pg_reload_conf" | "pg_rotate_logfile" | "pg_promote" |
        "pg_backup_start" | "pg_backup_stop" | "pg_start_backup" | "pg_stop_backup" |
        "pg_replication_slot_advance" | "pg_log_backend_memory_contexts" |
        "pg_import_system_collations" | "pg_nextoid" | "pg_stat_statements_reset" |
        "pg_file_write" | "pg_file_rename" | "pg_file_unlink"
    ) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Well-known pg_catalog functions without side effects: no catalog lookup needed.
/// (Any pg_catalog function missing here is still a read; it just costs one lookup.)
#[rustfmt::skip]
pub fn is_builtin_read(name: &str) -> bool {
    matches!(
        name,
        // aggregates and window functions
        "count" | "sum" | "avg" | "min" | "max" | "array_agg" | "string_agg" | "json_agg"
            | "jsonb_agg" | "json_object_agg" | "jsonb_object_agg" | "bool_and" | "bool_or"
            | "every" | "bit_and" | "bit_or" | "stddev" | "stddev_pop" | "stddev_samp"
            | "variance" | "var_pop" | "var_samp" | "percentile_cont" | "percentile_disc"
            | "mode" | "corr" | "covar_pop" | "covar_samp" | "row_number" | "rank"
            | "dense_rank" | "percent_rank" | "cume_dist" | "ntile" | "lag" | "lead"
            | "first_value" | "last_value" | "nth_value" | "any_value" | "grouping"
            // conditional
            | "coalesce" | "nullif" | "greatest" | "least"
            // math
            | "abs" | "ceil" | "ceiling" | "floor" | "round" | "trunc" | "mod" | "power"
            | "pow" | "sqrt" | "cbrt" | "exp" | "ln" | "log" | "log10" | "sign" | "pi"
            | "random" | "random_normal" | "width_bucket" | "div" | "degrees" | "radians"
            | "sin" | "cos" | "tan" | "asin" | "acos" | "atan" | "atan2" | "gcd" | "lcm"
            | "factorial" | "scale"
            // strings
            | "length" | "char_length" | "character_length" | "octet_length" | "bit_length"
            | "lower" | "upper" | "initcap" | "substring" | "substr" | "position" | "strpos"
            | "trim" | "btrim" | "ltrim" | "rtrim" | "lpad" | "rpad" | "concat" | "concat_ws"
            | "replace" | "translate" | "split_part" | "left" | "right" | "repeat"
            | "reverse" | "format" | "md5" | "sha256" | "sha512" | "encode" | "decode"
            | "to_hex" | "ascii" | "chr" | "quote_ident" | "quote_literal" | "quote_nullable"
            | "regexp_replace" | "regexp_matches" | "regexp_match" | "regexp_split_to_array"
            | "regexp_split_to_table" | "regexp_like" | "regexp_count" | "regexp_substr"
            | "starts_with" | "overlay" | "string_to_array" | "array_to_string"
            | "to_char" | "to_number" | "to_date" | "to_timestamp" | "convert_from"
            | "convert_to" | "unaccent" | "normalize" | "gen_random_uuid" | "uuid_generate_v4"
            // date/time
            | "now" | "current_date" | "current_time" | "current_timestamp" | "localtime"
            | "localtimestamp" | "clock_timestamp" | "statement_timestamp"
            | "transaction_timestamp" | "timeofday" | "date_trunc" | "date_part" | "extract"
            | "age" | "make_date" | "make_time" | "make_timestamp" | "make_timestamptz"
            | "make_interval" | "date_bin" | "justify_days" | "justify_hours"
            | "justify_interval" | "isfinite" | "timezone" | "pg_sleep" | "pg_sleep_for"
            // arrays, sets, json
            | "array_length" | "array_upper" | "array_lower" | "array_dims" | "cardinality"
            | "array_append" | "array_prepend" | "array_cat" | "array_remove"
            | "array_replace" | "array_position" | "array_positions" | "unnest"
            | "generate_series" | "generate_subscripts" | "to_json" | "to_jsonb"
            | "row_to_json" | "array_to_json" | "json_build_object" | "jsonb_build_object"
            | "json_build_array" | "jsonb_build_array" | "json_object" | "jsonb_object"
            | "json_extract_path" | "json_extract_path_text" | "jsonb_extract_path"
            | "jsonb_extract_path_text" | "json_array_length" | "jsonb_array_length"
            | "json_each" | "jsonb_each" | "json_each_text" | "jsonb_each_text"
            | "json_array_elements" | "jsonb_array_elements" | "json_array_elements_text"
            | "jsonb_array_elements_text" | "json_typeof" | "jsonb_typeof" | "jsonb_set"
            | "jsonb_insert" | "jsonb_pretty" | "jsonb_strip_nulls" | "json_strip_nulls"
            | "jsonb_path_query" | "jsonb_path_exists" | "jsonb_path_match"
            | "json_object_keys" | "jsonb_object_keys" | "json_populate_record"
            | "jsonb_populate_record" | "json_to_record" | "jsonb_to_record"
            | "json_to_recordset" | "jsonb_to_recordset"
            // system information
            | "current_user" | "session_user" | "user" | "current_role" | "current_schema"
            | "current_schemas" | "current_database" | "current_catalog" | "current_setting"
            | "version" | "pg_backend_pid" | "pg_is_in_recovery" | "pg_postmaster_start_time"
            | "pg_conf_load_time" | "inet_client_addr" | "inet_client_port"
            | "inet_server_addr" | "inet_server_port" | "pg_last_wal_receive_lsn"
            | "pg_last_wal_replay_lsn" | "pg_last_xact_replay_timestamp"
            | "pg_wal_lsn_diff" | "pg_typeof" | "col_description" | "obj_description"
            | "format_type" | "pg_get_expr" | "pg_get_indexdef" | "pg_get_viewdef"
            | "pg_get_constraintdef" | "pg_get_functiondef" | "pg_get_userbyid"
            | "pg_get_serial_sequence" | "pg_table_is_visible" | "pg_relation_size"
            | "pg_total_relation_size" | "pg_table_size" | "pg_indexes_size"
            | "pg_database_size" | "pg_size_pretty" | "pg_column_size" | "has_table_privilege"
            | "has_schema_privilege" | "has_database_privilege" | "has_column_privilege"
            | "has_function_privilege" | "pg_has_role" | "to_regclass" | "to_regproc"
            | "to_regtype" | "pg_encoding_to_char" | "txid_current_snapshot"
            | "pg_current_snapshot" | "pg_snapshot_xmin" | "pg_xact_commit_timestamp"
    )
}

/// Per-name cache of "is this a volatile function outside pg_catalog/information_schema?",
/// filled from `pg_proc` on the primary and kept until [`FunctionCatalog::clear`].
#[derive(Debug, Default)]
pub struct FunctionCatalog {
    known: Mutex<HashMap<String, bool>>,
}

/// The lookup: every overload of the given names, with schema and volatility.
pub const VOLATILITY_QUERY: &str = "SELECT p.proname, n.nspname, p.provolatile \
     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.proname = ANY($1)";

impl FunctionCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fast path: `Some(true)` if `name` is known to make a statement a write,
    /// `Some(false)` if known not to, `None` if never looked up.
    pub fn cached(&self, name: &str) -> Option<bool> {
        self.lock().get(name).copied()
    }

    /// Forget every answer (call after DDL that may create or alter functions).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of names cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record answers from `(proname, nspname, provolatile)` rows for the looked-up
    /// `names`. A name with no row at all is recorded as a write: the primary is where such
    /// a statement will fail (or where a function created later will be found).
    pub fn record<'r>(
        &self,
        names: &[String],
        rows: impl IntoIterator<Item = (&'r str, &'r str, i8)>,
    ) {
        let mut found: HashMap<&str, bool> = HashMap::new();
        for (proname, nspname, volatile) in rows {
            let outside = nspname != "pg_catalog" && nspname != "information_schema";
            let write = outside && volatile == b'v' as i8;
            *found.entry(proname).or_insert(false) |= write;
        }
        let mut known = self.lock();
        for name in names {
            let write = found.get(name.as_str()).copied().unwrap_or(true);
            known.insert(name.clone(), write);
        }
    }

    /// The subset of `names` that make a statement a write. Names not cached yet are looked
    /// up with one query on `client` and cached. If the query fails, the unknown names are
    /// returned as writes (not cached), so the statement goes to the primary.
    pub async fn volatile_functions(
        &self,
        names: &[String],
        client: &tokio_postgres::Client,
    ) -> Vec<String> {
        let unknown: Vec<String> = {
            let known = self.lock();
            let mut u: Vec<String> = names
                .iter()
                .filter(|n| !known.contains_key(n.as_str()))
                .cloned()
                .collect();
            u.sort();
            u.dedup();
            u
        };
        let mut failed = false;
        if !unknown.is_empty() {
            match client.query(VOLATILITY_QUERY, &[&unknown]).await {
                Ok(rows) => {
                    let mut parsed = Vec::with_capacity(rows.len());
                    for row in &rows {
                        match (row.try_get(0), row.try_get(1), row.try_get(2)) {
                            (Ok(p), Ok(n), Ok(v)) => parsed.push((p, n, v)),
                            _ => failed = true,
                        }
                    }
                    if !failed {
                        self.record(&unknown, parsed);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pg_proc volatility lookup failed");
                    failed = true;
                }
            }
        }
        let known = self.lock();
        names
            .iter()
            .filter(|n| match known.get(n.as_str()) {
                Some(&w) => w,
                None => failed,
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lists() {
        for w in [
            "nextval",
            "setval",
            "currval",
            "lastval",
            "pg_advisory_lock",
            "pg_advisory_xact_lock_shared",
            "pg_try_advisory_lock",
            "pg_advisory_unlock_all",
            "pg_notify",
            "set_config",
            "lo_import",
            "lo_unlink",
            "lo_create",
            "txid_current",
            "pg_current_xact_id",
            "pg_switch_wal",
            "pg_create_restore_point",
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_reload_conf",
            "pg_stat_reset",
            "pg_stat_reset_shared",
        ] {
            assert!(is_builtin_write(w), "{w}");
            assert!(!is_builtin_read(w), "{w}");
        }
        for r in [
            "now",
            "random",
            "pg_is_in_recovery",
            "count",
            "coalesce",
            "lower",
        ] {
            assert!(is_builtin_read(r), "{r}");
            assert!(!is_builtin_write(r), "{r}");
        }
        assert!(!is_builtin_read("my_func") && !is_builtin_write("my_func"));
    }

    #[test]
    fn record_and_cached() {
        let c = FunctionCatalog::new();
        assert_eq!(c.cached("f"), None);
        let names: Vec<String> = ["f", "g", "h", "missing", "now"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let v = b'v' as i8;
        let s = b's' as i8;
        c.record(
            &names,
            [
                ("f", "public", v),     // volatile user function: write
                ("g", "public", s),     // stable: read
                ("g", "pg_catalog", v), // pg_catalog overload does not count
                ("h", "app", s),        // all overloads must be non-volatile...
                ("h", "other", v),      // ...so h is a write
                ("now", "pg_catalog", s),
            ],
        );
        assert_eq!(c.cached("f"), Some(true));
        assert_eq!(c.cached("g"), Some(false));
        assert_eq!(c.cached("h"), Some(true));
        assert_eq!(c.cached("missing"), Some(true));
        assert_eq!(c.cached("now"), Some(false));
        assert_eq!(c.len(), 5);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.cached("f"), None);
    }
}
