use super::*;
use crate::sharding::hash::KeyType;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

fn tables() -> Vec<ShardedTable> {
    let t = |table: &str, column: &str, key_type| ShardedTable {
        schema: None,
        table: table.into(),
        column: column.into(),
        key_type,
    };
    vec![
        t("orders", "customer_id", KeyType::Int8),
        t("items", "customer_id", KeyType::Int8),
        t("accounts", "email", KeyType::Text),
    ]
}

fn combine(sql: &str) -> Combine {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect(sql);
    plan(&stmts[0], &tables())
}

fn finish(sql: &str) -> Finish {
    match combine(sql) {
        Combine::Finish(f) => *f,
        other => panic!("{sql}: {other:?}"),
    }
}

fn col(name: &str, t: &str) -> Column {
    Column {
        name: name.into(),
        type_name: t.into(),
    }
}

#[test]
fn rows_that_need_no_merge_are_concatenated() {
    for sql in [
        "SELECT * FROM orders",
        "SELECT id, amount FROM orders WHERE amount > 10",
        "SELECT * FROM orders UNION ALL SELECT * FROM orders",
        "SELECT o.* FROM orders o JOIN countries c ON c.code = o.country",
        "SELECT * FROM (SELECT * FROM orders WHERE amount > 1) s",
        "SELECT * FROM orders WHERE country IN (SELECT code FROM countries)",
    ] {
        assert_eq!(combine(sql), Combine::Concat, "{sql}");
    }
}

#[test]
fn aggregates_become_partials_and_a_final_combine() {
    let f = finish("SELECT count(*), sum(amount), avg(amount), min(note), max(amount) FROM orders");
    assert_eq!(
        f.partial,
        "SELECT count(*) AS _p1, sum(amount) AS _p2, count(amount) AS _p3, min(note) AS _p4, \
         max(amount) AS _p5 FROM orders"
    );
    let partial = [
        col("_p1", "bigint"),
        col("_p2", "bigint"),
        col("_p3", "bigint"),
        col("_p4", "text"),
        col("_p5", "integer"),
    ];
    let out = [
        col("count", "bigint"),
        col("sum", "bigint"),
        col("avg", "numeric"),
        col("min", "text"),
        col("max", "integer"),
    ];
    assert_eq!(
        f.final_sql(&partial, &out).unwrap(),
        "SELECT ((coalesce(sum(_p1), 0)::INT8))::bigint, ((sum(_p2)::bigint))::bigint, \
         (((sum(_p2) / nullif(sum(_p3), 0))::numeric))::numeric, ((min(_p4)))::text, \
         ((max(_p5)))::integer FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], \
         $4::text[], $5::integer[]) AS _pgvane(_p1, _p2, _p3, _p4, _p5)"
    );
}

#[test]
fn group_by_having_order_and_limit_are_finished_after_the_merge() {
    let f = finish(
        "SELECT customer_id % 3 AS g, count(*) FROM orders WHERE amount > 0 \
         GROUP BY 1 HAVING sum(amount) > 10 ORDER BY count(*) DESC, g LIMIT 2 OFFSET 1",
    );
    assert_eq!(
        f.partial,
        "SELECT customer_id % 3 AS _p1, count(*) AS _p2, sum(amount) AS _p3 FROM orders \
         WHERE amount > 0 GROUP BY 1"
    );
    let partial = [
        col("_p1", "integer"),
        col("_p2", "bigint"),
        col("_p3", "bigint"),
    ];
    let out = [col("g", "integer"), col("count", "bigint")];
    let sql = f.final_sql(&partial, &out).unwrap();
    assert!(sql.ends_with(
        "GROUP BY _p1 HAVING (sum(_p3)::bigint) > 10 ORDER BY (coalesce(sum(_p2), 0)::INT8) DESC, \
         1 OFFSET 1 LIMIT 2"
    ), "{sql}");
}

#[test]
fn distinct_aggregate_arguments_become_partial_group_keys() {
    let f = finish("SELECT count(DISTINCT customer_id), count(*) FROM orders");
    assert_eq!(
        f.partial,
        "SELECT customer_id AS _p1, count(*) AS _p2 FROM orders GROUP BY 1"
    );
    let sql = f
        .final_sql(
            &[col("_p1", "bigint"), col("_p2", "bigint")],
            &[col("count", "bigint"), col("count", "bigint")],
        )
        .unwrap();
    assert!(
        sql.starts_with("SELECT ((count(DISTINCT _p1)))::bigint"),
        "{sql}"
    );
    assert!(!sql.contains("GROUP BY"), "{sql}");
}

#[test]
fn sorted_and_limited_rows_are_limited_per_shard_and_finished() {
    let f =
        finish("SELECT id, note FROM orders ORDER BY amount DESC NULLS LAST, 1 LIMIT 3 OFFSET 2");
    assert_eq!(
        f.partial,
        "SELECT id, note, amount AS _pgvane_o1 FROM orders ORDER BY amount DESC NULLS LAST, 1 LIMIT 5"
    );
    assert_eq!(f.extras(), 1);
    let sql = f
        .final_sql(
            &[
                col("id", "integer"),
                col("note", "text"),
                col("_pgvane_o1", "integer"),
            ],
            &[col("id", "integer"), col("note", "text")],
        )
        .unwrap();
    assert_eq!(
        sql,
        "SELECT _p1, _p2 FROM unnest($1::integer[], $2::text[], $3::integer[]) AS \
         _pgvane(_p1, _p2, _pgvane_o1) ORDER BY _pgvane_o1 DESC NULLS LAST, 1 OFFSET 2 LIMIT 3"
    );
    // Without LIMIT the shards do not sort; pgvane does.
    let f = finish("SELECT * FROM orders ORDER BY id");
    assert_eq!(f.partial, "SELECT *, id AS _pgvane_o1 FROM orders");
    let f = finish("SELECT DISTINCT note FROM orders");
    assert_eq!(f.partial, "SELECT DISTINCT note FROM orders");
}

#[test]
fn parameters_in_the_partial_query_stay_there() {
    let f = finish("SELECT count(*) FROM orders WHERE amount > $1 AND note = $2");
    assert_eq!(
        f.partial,
        "SELECT count(*) AS _p1 FROM orders WHERE amount > $1 AND note = $2"
    );
}

#[test]
fn what_cannot_be_merged_exactly_is_refused() {
    for sql in [
        "SELECT string_agg(note, ',') FROM orders",
        "SELECT array_agg(id ORDER BY id) FROM orders",
        "SELECT id, row_number() OVER (ORDER BY id) FROM orders",
        "SELECT DISTINCT ON (customer_id) * FROM orders",
        "SELECT id FROM orders UNION SELECT id FROM orders",
        "SELECT * FROM orders WHERE amount > (SELECT avg(amount) FROM orders)",
        "SELECT * FROM (SELECT count(*) FROM orders) s",
        "WITH t AS (SELECT * FROM orders LIMIT 3) SELECT * FROM t",
        "SELECT customer_id, count(*) FROM orders GROUP BY ROLLUP (customer_id)",
        "SELECT count(DISTINCT id) FILTER (WHERE amount > 1) FROM orders",
        "SELECT count(*) + $1 FROM orders",
        "SELECT region, count(*) FROM orders GROUP BY region HAVING count(*) > $1",
    ] {
        match combine(sql) {
            Combine::Refuse(why) => assert!(why.contains("across shards"), "{sql}: {why}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn every_spelling_of_an_aggregate_is_combined_by_its_own_rule() {
    // stddev is stddev_samp, variance is var_samp: never the stddev of per-shard stddevs.
    for sql in [
        "SELECT stddev(amount) FROM orders",
        "SELECT variance(amount) FROM orders",
        "SELECT pg_catalog.stddev_pop(amount) FROM orders",
    ] {
        let f = finish(sql);
        assert!(
            f.partial.contains("count(amount)")
                && !f.partial.contains("stddev")
                && !f.partial.contains("var"),
            "{sql}: {}",
            f.partial
        );
    }
}

#[test]
fn limit_and_offset_parameters_are_read_from_the_bind_and_kept_in_the_shards_text() {
    let stmts = Parser::parse_sql(
        &PostgreSqlDialect {},
        "SELECT id FROM orders ORDER BY id LIMIT $1 OFFSET $2",
    )
    .unwrap();
    let params: [Param; 2] = [(0, Some(b"3")), (1, Some(&5i64.to_be_bytes()))];
    let Combine::Finish(f) = plan_bound(&stmts[0], &tables(), &params) else {
        panic!("not finished");
    };
    assert_eq!(
        f.partial,
        "SELECT id FROM orders ORDER BY id LIMIT (($1)::BIGINT + ($2)::BIGINT)"
    );
    let st = f.stream.as_ref().unwrap();
    assert_eq!((st.limit, st.offset), (Some(3), 5));
    // Without the Bind's values it is refused, never guessed.
    assert!(matches!(plan(&stmts[0], &tables()), Combine::Refuse(_)));
}

#[test]
fn sharded_tables_join_per_shard_only_on_their_keys() {
    for sql in [
        "SELECT * FROM orders o JOIN items i ON i.customer_id = o.customer_id",
        "SELECT * FROM orders o LEFT JOIN items i ON o.customer_id = i.customer_id AND i.id > 3",
        "SELECT * FROM orders JOIN items USING (customer_id)",
        "SELECT * FROM orders o, items i WHERE o.customer_id = i.customer_id AND o.amount > 1",
        "SELECT * FROM orders a JOIN orders b ON a.customer_id = b.customer_id",
    ] {
        assert_eq!(combine(sql), Combine::Concat, "{sql}");
    }
    for sql in [
        "SELECT * FROM orders o JOIN items i ON i.id = o.id",
        "SELECT * FROM orders o, items i",
        "SELECT * FROM orders o JOIN items i ON i.customer_id = o.customer_id JOIN orders x ON x.id = o.id",
        "SELECT * FROM orders o JOIN accounts a ON a.email = o.note",
        "SELECT * FROM orders o JOIN (SELECT * FROM items) i ON i.customer_id = o.customer_id",
    ] {
        assert!(matches!(combine(sql), Combine::Refuse(_)), "{sql}");
    }
}
