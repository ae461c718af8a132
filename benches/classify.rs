//! Benchmarks of the router's statement analysis: normalizing a statement, a cache hit,
//! a cache miss (parse + classify), and reading hints.
//!
//! Run with `cargo bench --bench classify`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use pgvane::router::{analyze, normalize, parse_hints, pgvane_command, AnalysisCache};

/// pgbench's select-only statement (`pgbench -S`), as a client sends it in a simple query.
const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
const PGBENCH_UPDATE: &str =
    "UPDATE pgbench_accounts SET abalance = abalance + -4018 WHERE aid = 48213;";

fn bench(c: &mut Criterion) {
    c.bench_function("normalize/pgbench_select", |b| {
        b.iter(|| normalize(black_box(PGBENCH_SELECT)))
    });
    c.bench_function("normalize/pgbench_update", |b| {
        b.iter(|| normalize(black_box(PGBENCH_UPDATE)))
    });

    let cache = AnalysisCache::new(10_000);
    let write_functions: Vec<String> = Vec::new();
    cache.get_or_analyze(PGBENCH_SELECT, &write_functions);
    c.bench_function("get_or_analyze/hit", |b| {
        b.iter(|| cache.get_or_analyze(black_box(PGBENCH_SELECT), &write_functions))
    });

    // A miss: analyze (parse + classify) without any cache in front of it.
    let key = normalize(PGBENCH_SELECT).key;
    c.bench_function("analyze/miss_pgbench_select", |b| {
        b.iter(|| analyze(black_box(&key), &write_functions))
    });
    let complex = normalize(
        "WITH recent AS (SELECT o.id, o.customer_id, sum(i.qty * i.price) AS total \
         FROM orders o JOIN items i ON i.order_id = o.id \
         WHERE o.created_at > now() - INTERVAL '1 day' AND o.status IN ('paid', 'shipped') \
         GROUP BY o.id, o.customer_id) \
         SELECT c.name, r.total FROM recent r JOIN customers c ON c.id = r.customer_id \
         WHERE r.total > 100 ORDER BY r.total DESC LIMIT 20",
    )
    .key;
    c.bench_function("analyze/miss_cte_join", |b| {
        b.iter(|| analyze(black_box(&complex), &write_functions))
    });

    c.bench_function("parse_hints/no_hints", |b| {
        b.iter(|| parse_hints(black_box(PGBENCH_SELECT)))
    });
    c.bench_function("parse_hints/with_hints", |b| {
        b.iter(|| parse_hints(black_box("/* pgvane: replica, max_lag=100ms */ SELECT 1")))
    });
    c.bench_function("pgvane_command/ordinary_sql", |b| {
        b.iter(|| pgvane_command(black_box(PGBENCH_SELECT)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
