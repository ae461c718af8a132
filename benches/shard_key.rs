//! Benchmarks of shard-key routing: planning a parsed statement, resolving the plan with a
//! literal value, and the partition hash of one bigint.
//!
//! Run with `cargo bench --bench shard_key`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use pgvane::sharding::hash::{partition_for, KeyType, KeyValue};
use pgvane::sharding::key::{plan_statement, ShardedTable};
use pgvane::sharding::plan::{resolve, Values};

fn tables() -> Vec<ShardedTable> {
    vec![ShardedTable {
        schema: None,
        table: "orders".to_string(),
        column: "customer_id".to_string(),
        key_type: KeyType::Int8,
    }]
}

fn no_columns(_: &str) -> Option<Vec<String>> {
    None
}

fn bench(c: &mut Criterion) {
    let tables = tables();
    let stmts = match Parser::parse_sql(
        &PostgreSqlDialect {},
        "SELECT * FROM orders WHERE customer_id = $10001",
    ) {
        Ok(s) => s,
        Err(e) => panic!("benchmark SQL does not parse: {e}"),
    };
    let stmt = &stmts[0];

    c.bench_function("plan_statement select by key", |b| {
        b.iter(|| plan_statement(black_box(stmt), black_box(&tables), &no_columns))
    });

    let plan = plan_statement(stmt, &tables, &no_columns);
    let literals = vec!["123456789".to_string()];
    let values = Values {
        literals: &literals,
        params: &[],
        param_types: &[],
    };
    c.bench_function("resolve literal key (4 shards)", |b| {
        b.iter(|| resolve(black_box(&plan), black_box(&tables), black_box(&values), 4))
    });

    c.bench_function("partition_for int8", |b| {
        b.iter(|| {
            partition_for(
                black_box(&KeyValue::Int(123_456_789)),
                KeyType::Int8,
                black_box(4),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
