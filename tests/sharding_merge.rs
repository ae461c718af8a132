//! Cross-shard reads answer exactly what one database holding all the rows answers. The same
//! generated rows go into one unsharded database (the oracle) and, through pgvane, into 4
//! shards; every query of the corpus runs on both and the answers (column names and rows;
//! in order when the query orders) must be equal. Queries pgvane cannot merge exactly must
//! fail with 0A000. The corpus is data: add a line to extend it.

mod common;

use common::*;
use tokio_postgres::SimpleQueryMessage;

const SHARDS: usize = 4;
const ROWS: i64 = 1200;

/// Queries whose answers must match the oracle's. A leading `=` marks an ordered
/// comparison (the query's ORDER BY determines the order completely).
const CORPUS: &[&str] = &[
    // aggregates without GROUP BY
    "SELECT count(*) FROM orders",
    "SELECT count(amount), count(note) FROM orders",
    "SELECT sum(amount) FROM orders",
    "SELECT sum(customer_id), sum(price) FROM orders",
    "SELECT min(amount), max(amount), min(note), max(note) FROM orders",
    "SELECT avg(amount), avg(price), avg(customer_id) FROM orders",
    "SELECT bool_and(flag), bool_or(flag), every(flag) FROM orders",
    "SELECT bit_and(amount), bit_or(amount) FROM orders WHERE amount > 0",
    "SELECT region, bit_or(id), bit_and(id | 1) FROM orders GROUP BY region",
    "SELECT count(*) AS n, sum(amount) / count(*) AS ratio FROM orders",
    "SELECT count(*) FROM orders WHERE amount > 500",
    "SELECT sum(amount) FROM orders WHERE amount IS NULL",
    "SELECT avg(amount) FROM orders WHERE false",
    "SELECT count(*) FILTER (WHERE flag), sum(amount) FILTER (WHERE region = 'eu') FROM orders",
    "SELECT count(DISTINCT region), count(DISTINCT customer_id) FROM orders",
    "SELECT sum(DISTINCT amount), avg(DISTINCT amount) FROM orders",
    "SELECT count(*) FROM orders WHERE customer_id IN (1, 2, 3, 500, 777)",
    "SELECT count(*) + 1, 'x' AS label FROM orders",
    "SELECT max(created), min(created) FROM orders",
    "SELECT stddev(amount), variance(amount), stddev_pop(price), var_pop(price), var_samp(customer_id) FROM orders",
    "SELECT stddev_samp(amount) FILTER (WHERE flag), variance(price) FROM orders WHERE customer_id < 5",
    "SELECT stddev(amount) FROM orders WHERE customer_id = 1 AND id < 0",
    "SELECT region, stddev(price), var_samp(amount) FROM orders GROUP BY region",
    // GROUP BY, HAVING
    "SELECT region, count(*) FROM orders GROUP BY region",
    "SELECT region, count(*), sum(amount), avg(amount), min(note) FROM orders GROUP BY 1",
    "SELECT region AS r, flag, count(*) FROM orders GROUP BY r, flag",
    "SELECT customer_id % 7 AS m, sum(amount) FROM orders GROUP BY customer_id % 7",
    "SELECT region, count(*) FROM orders GROUP BY region HAVING count(*) > 250",
    "SELECT region, avg(price) FROM orders GROUP BY region HAVING sum(amount) > 1000 AND min(amount) < 50",
    "SELECT region, count(DISTINCT customer_id) FROM orders GROUP BY region",
    "SELECT upper(region), count(*) FROM orders WHERE region IS NOT NULL GROUP BY region",
    "SELECT flag, count(*) FROM orders GROUP BY flag HAVING bool_or(amount > 900)",
    // GROUP BY + ORDER BY + LIMIT
    "=SELECT region, count(*) FROM orders GROUP BY region ORDER BY region NULLS FIRST",
    "=SELECT region, count(*) FROM orders GROUP BY region ORDER BY count(*) DESC, region",
    "=SELECT region, sum(amount) AS s FROM orders GROUP BY region ORDER BY s DESC NULLS LAST LIMIT 2",
    "=SELECT customer_id % 10 AS m, count(*) FROM orders GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3 OFFSET 2",
    "=SELECT region, count(*) FROM orders GROUP BY region HAVING count(*) > 100 ORDER BY region DESC NULLS LAST LIMIT 2",
    "=SELECT created, count(*) FROM orders GROUP BY created ORDER BY count(*) DESC, created LIMIT 5",
    // ORDER BY / LIMIT / OFFSET on rows
    "=SELECT customer_id, id, amount FROM orders ORDER BY customer_id, id LIMIT 10",
    "=SELECT customer_id, id FROM orders ORDER BY customer_id DESC, id DESC LIMIT 7 OFFSET 3",
    "=SELECT id, customer_id FROM orders ORDER BY amount NULLS FIRST, customer_id, id LIMIT 12",
    "=SELECT id, customer_id FROM orders ORDER BY amount DESC NULLS LAST, customer_id, id LIMIT 12",
    "=SELECT note, customer_id, id FROM orders WHERE note IS NOT NULL ORDER BY note, customer_id, id LIMIT 9",
    "=SELECT * FROM orders ORDER BY price DESC, customer_id, id LIMIT 5",
    "=SELECT customer_id, id FROM orders WHERE amount < 100 ORDER BY customer_id, id",
    "=SELECT customer_id, id FROM orders ORDER BY customer_id, id OFFSET 1190",
    "=SELECT customer_id, id FROM orders ORDER BY customer_id, id FETCH FIRST 4 ROWS ONLY",
    "SELECT * FROM orders LIMIT 0",
    // sort keys of every kind: merged as the shards stream (integers, numeric, dates,
    // booleans, floats, text under a byte-order collation) or finished by PostgreSQL
    // (expressions over text, intervals)
    "=SELECT customer_id, id FROM orders ORDER BY lower(note) NULLS FIRST, customer_id, id LIMIT 8",
    "=SELECT note, customer_id, id FROM orders ORDER BY note COLLATE \"C\" DESC NULLS LAST, customer_id, id LIMIT 5",
    "=SELECT price, id, customer_id FROM orders ORDER BY price, id, customer_id LIMIT 20 OFFSET 5",
    "=SELECT created, id, customer_id FROM orders ORDER BY created DESC, id, customer_id LIMIT 10",
    "=SELECT flag, id, customer_id FROM orders ORDER BY flag NULLS FIRST, id, customer_id LIMIT 10",
    "=SELECT id, customer_id, amount::float8 / 7 AS f FROM orders ORDER BY f DESC NULLS LAST, id, customer_id LIMIT 10",
    "=SELECT id, customer_id FROM orders ORDER BY 2 DESC, 1 LIMIT 10",
    "=SELECT id, customer_id, (created - date '2026-01-01') * interval '1 day' AS iv FROM orders ORDER BY iv, id, customer_id LIMIT 5",
    "=SELECT customer_id, id, note FROM orders ORDER BY customer_id, id",
    // DISTINCT
    "SELECT DISTINCT region FROM orders",
    "SELECT DISTINCT region, flag FROM orders",
    "=SELECT DISTINCT region FROM orders ORDER BY region NULLS LAST",
    "=SELECT DISTINCT amount FROM orders WHERE amount IS NOT NULL ORDER BY amount DESC LIMIT 5",
    // joins with a reference table
    "SELECT r.name, count(*) FROM orders o JOIN regions r ON r.code = o.region GROUP BY r.name",
    "=SELECT o.customer_id, o.id, r.name FROM orders o JOIN regions r ON r.code = o.region ORDER BY o.customer_id, o.id LIMIT 6",
    "SELECT count(*) FROM orders o LEFT JOIN regions r ON r.code = o.region WHERE r.code IS NULL",
    // sharded tables joined on their key: per shard is exact
    "SELECT count(*), sum(b.amount) FROM orders a JOIN orders b ON a.customer_id = b.customer_id WHERE a.id < 300",
    // concatenated as before
    "SELECT customer_id, id, amount FROM orders WHERE amount > 990",
    "SELECT * FROM orders WHERE customer_id = 42",
];

/// Queries pgvane cannot merge exactly: refused with 0A000.
const REFUSED: &[&str] = &[
    "SELECT string_agg(note, ',') FROM orders",
    "SELECT array_agg(id) FROM orders",
    "SELECT stddev(amount::float8) FROM orders",
    "SELECT id, rank() OVER (ORDER BY amount) FROM orders",
    "SELECT DISTINCT ON (region) region, id FROM orders",
    "SELECT region FROM orders UNION SELECT region FROM orders",
    "SELECT * FROM orders WHERE amount > (SELECT avg(amount) FROM orders)",
    "SELECT count(*) FROM (SELECT DISTINCT region FROM orders) s",
    "WITH t AS (SELECT * FROM orders ORDER BY id LIMIT 3) SELECT * FROM t",
    "SELECT region, count(*) FROM orders GROUP BY ROLLUP (region)",
    // sharded tables joined on something else than their key
    "SELECT count(*) FROM orders a JOIN orders b ON a.amount = b.amount",
    // a user-defined aggregate (created on every shard): pgvane cannot know how to combine it
    "SELECT merge_test_sum(amount) FROM orders",
    "SELECT region, merge_test_sum(amount) FROM orders GROUP BY region",
];

fn config(listen: u16, pg_port: u16, dbs: &[String]) -> String {
    config_with(listen, pg_port, dbs, "")
}

fn config_with(listen: u16, pg_port: u16, dbs: &[String], general: &str) -> String {
    let mut s = format!(
        "[general]\nlisten_addr = \"127.0.0.1:{listen}\"\ndefault_pool_size = 4\nauth_type = \"trust\"\n{general}\n\n\
         [[users]]\nname = \"app\"\npassword = \"app-secret\"\n\n\
         [[users]]\nname = \"trustuser\"\n\n[[databases]]\nname = \"shop\"\n"
    );
    for db in dbs {
        s.push_str(&format!(
            "  [[databases.shards]]\n  primary = {{ host = \"127.0.0.1\", port = {pg_port}, dbname = \"{db}\" }}\n"
        ));
    }
    s.push_str(
        "  [[databases.sharded_tables]]\n  table = \"orders\"\n  column = \"customer_id\"\n  type = \"bigint\"\n",
    );
    s
}

const SCHEMA: &str = "CREATE TABLE orders(customer_id bigint NOT NULL, id int NOT NULL, \
     amount int, price numeric(10,2), note text, region text, flag bool, created date, \
     PRIMARY KEY (customer_id, id))";
const REGIONS: &str = "CREATE TABLE regions(code text PRIMARY KEY, name text); \
     INSERT INTO regions VALUES ('eu', 'Europe'), ('us', 'Americas'), ('ap', 'Asia')";

/// Deterministic rows with NULLs in every nullable column.
fn values(from: i64, to: i64) -> String {
    (from..to)
        .map(|i| {
            let amount = if i % 13 == 0 {
                "NULL".to_string()
            } else {
                ((i * 37) % 1000).to_string()
            };
            let note = if i % 11 == 0 {
                "NULL".to_string()
            } else {
                format!("'n{}'", (i * 7919) % 500)
            };
            let region = ["'eu'", "'us'", "'ap'", "'xx'", "NULL"][(i % 5) as usize];
            let flag = ["true", "false", "NULL"][(i % 3) as usize];
            format!(
                "({c}, {id}, {amount}, {p}.{cents:02}, {note}, {region}, {flag}, date '2026-01-01' + {d})",
                c = (i * 31) % 400 + 1,
                id = i,
                p = (i * 17) % 300,
                cents = i % 100,
                d = i % 40
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Column names and rows (NULL as None) of a simple query.
async fn answer(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                names = cols.iter().map(|c| c.name().to_string()).collect()
            }
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => {}
        }
    }
    Ok((names, rows))
}

/// Parse/Bind (every result column in `format`)/Describe/Execute/Sync: the description
/// (names, types, modifiers, formats), the rows' bytes (sorted unless `ordered`), the tag,
/// or the error's SQLSTATE.
fn extended(w: &mut wire::Wire, sql: &str, format: i16, ordered: bool) -> String {
    let mut bind = Vec::new();
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // portal, statement, no formats, no params
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&format.to_be_bytes());
    w.send_all(&[
        wire::parse("", sql),
        wire::frame(b'B', &bind),
        wire::describe(b'P', ""),
        wire::execute("", 0),
        wire::sync(),
    ]);
    let msgs = w.until_ready(std::time::Duration::from_secs(30));
    let mut rows: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    for m in &msgs {
        match m.tag {
            b'T' => out.push(format!("{:?}", description(&m.body))),
            b'D' => rows.push(m.body.clone()),
            b'C' => out.push(m.tag_text()),
            b'E' => out.push(format!("error {:?}", m.code())),
            _ => {}
        }
    }
    if !ordered {
        rows.sort();
    }
    out.push(format!("{rows:?}"));
    out.join(" ")
}

/// Parse/Bind (text parameters and results)/Describe/Execute/Sync, as [`extended`] reports it.
fn extended_with(w: &mut wire::Wire, sql: &str, params: &[Option<&str>], ordered: bool) -> String {
    w.send_all(&[
        wire::parse("", sql),
        wire::bind("", "", params),
        wire::describe(b'P', ""),
        wire::execute("", 0),
        wire::sync(),
    ]);
    let msgs = w.until_ready(std::time::Duration::from_secs(30));
    let mut rows: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    for m in &msgs {
        match m.tag {
            b'T' => out.push(format!("{:?}", description(&m.body))),
            b'D' => rows.push(m.body.clone()),
            b'C' => out.push(m.tag_text()),
            b'E' => out.push(format!("error {:?} {:?}", m.code(), m.field(b'M'))),
            _ => {}
        }
    }
    if !ordered {
        rows.sort();
    }
    out.push(format!("{} rows {rows:?}", rows.len()));
    out.join(" ")
}

/// RowDescription fields without the table OID and column number (they differ per database).
fn description(body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut b = &body[2..];
    let mut out = Vec::new();
    for _ in 0..n {
        let z = b.iter().position(|c| *c == 0).unwrap();
        let name = String::from_utf8_lossy(&b[..z]).into_owned();
        out.push((name, b[z + 1 + 6..z + 1 + 18].to_vec()));
        b = &b[z + 1 + 18..];
    }
    out
}

#[tokio::test]
async fn cross_shard_reads_answer_what_one_database_answers() {
    let pg = shared();
    let mut dbs = Vec::new();
    for name in std::iter::once("merge_oracle".to_string())
        .chain((0..SHARDS).map(|i| format!("merge_s{i}")))
    {
        pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
        dbs.push(name);
    }
    let shards = dbs[1..].to_vec();
    let oracle = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=merge_oracle",
        pg.port()
    ))
    .await;
    let p = Pgvane::start(&config(free_port(), pg.port(), &shards));
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=shop",
        p.port()
    ))
    .await;
    oracle.batch_execute(SCHEMA).await.unwrap();
    oracle.batch_execute(REGIONS).await.unwrap();
    c.batch_execute(SCHEMA).await.unwrap();
    // The reference table is created on every shard directly (reference-table writes
    // through pgvane are not in this test).
    for db in &shards {
        pg.psql(db, REGIONS);
        pg.psql(
            db,
            "CREATE AGGREGATE merge_test_sum(int) (sfunc = int4pl, stype = int)",
        );
    }
    for chunk in (0..ROWS).step_by(200) {
        let sql = format!("INSERT INTO orders VALUES {}", values(chunk, chunk + 200));
        oracle.batch_execute(&sql).await.unwrap();
        c.batch_execute(&sql).await.unwrap();
    }
    let mut wrong = Vec::new();
    for q in CORPUS {
        let (ordered, sql) = match q.strip_prefix('=') {
            Some(s) => (true, s),
            None => (false, *q),
        };
        let want = answer(&oracle, sql)
            .await
            .unwrap_or_else(|e| panic!("oracle: {sql}: {e}"));
        let got = match answer(&c, sql).await {
            Ok(g) => g,
            Err(e) => {
                wrong.push(format!("{sql}\n   error through pgvane: {e}"));
                continue;
            }
        };
        let (mut w, mut g) = (want.clone(), got.clone());
        if !ordered {
            w.1.sort();
            g.1.sort();
        }
        if w != g {
            wrong.push(format!(
                "{sql}\n   oracle: {:?} {:?}\n   pgvane: {:?} {:?}",
                want.0,
                &want.1[..want.1.len().min(8)],
                got.0,
                &got.1[..got.1.len().min(8)]
            ));
        }
    }
    for sql in REFUSED {
        match c.simple_query(sql).await {
            Err(e) if e.code().map(|c| c.code()) == Some("0A000") => {}
            Err(e) => wrong.push(format!("{sql}\n   refused with another error: {e}")),
            Ok(_) => wrong.push(format!("{sql}\n   answered instead of refused")),
        }
    }
    // The extended protocol, results in text and in binary: the same bytes as one database.
    let grant = "GRANT SELECT ON orders, regions TO trustuser";
    pg.psql("merge_oracle", grant);
    for db in &shards {
        pg.psql(db, grant);
    }
    let mut direct = wire::Wire::login(pg.port(), "trustuser", "merge_oracle");
    let mut through = wire::Wire::login(p.port(), "trustuser", "shop");
    for q in CORPUS {
        let (ordered, sql) = match q.strip_prefix('=') {
            Some(s) => (true, s),
            None => (false, *q),
        };
        for format in [0i16, 1] {
            let want = extended(&mut direct, sql, format, ordered);
            let got = extended(&mut through, sql, format, ordered);
            if want != got {
                wrong.push(format!(
                    "{sql} (extended, format {format})\n   oracle: {want:?}\n   pgvane: {got:?}"
                ));
            }
        }
    }
    // Parameters, LIMIT and OFFSET among them (text parameters, text results).
    let with_params: &[(&str, &[Option<&str>])] = &[
        ("=SELECT customer_id, id FROM orders ORDER BY customer_id, id LIMIT $1 OFFSET $2", &[Some("7"), Some("3")]),
        ("=SELECT region, count(*) FROM orders GROUP BY region ORDER BY 2 DESC, 1 LIMIT $1", &[Some("2")]),
        ("SELECT count(*), avg(amount) FROM orders WHERE amount > $1", &[Some("500")]),
        ("=SELECT id, customer_id FROM orders WHERE amount < $1 ORDER BY amount DESC, id, customer_id LIMIT $2", &[Some("300"), Some("5")]),
        ("=SELECT customer_id, id FROM orders ORDER BY customer_id, id OFFSET $1", &[Some("1195")]),
        ("=SELECT customer_id, id FROM orders WHERE customer_id < 3 ORDER BY customer_id, id LIMIT $1", &[None]),
        ("=SELECT DISTINCT region FROM orders ORDER BY region NULLS FIRST LIMIT $1", &[Some("3")]),
        ("=SELECT lower(note), id, customer_id FROM orders ORDER BY 1, 2, 3 LIMIT $1", &[Some("4")]),
    ];
    for (q, params) in with_params {
        let (ordered, sql) = match q.strip_prefix('=') {
            Some(s) => (true, s),
            None => (false, *q),
        };
        let want = extended_with(&mut direct, sql, params, ordered);
        let got = extended_with(&mut through, sql, params, ordered);
        if want != got || want.contains("error") {
            wrong.push(format!(
                "{sql} {params:?}\n   oracle: {want}\n   pgvane: {got}"
            ));
        }
    }
    for sql in REFUSED {
        let got = extended(&mut through, sql, 0, false);
        if !got.starts_with("error Some(\"0A000\")") {
            wrong.push(format!("{sql} (extended)\n   not refused: {got}"));
        }
    }
    // EXPLAIN ROUTE shows the merge: what each shard runs, what pgvane finishes.
    let explained = c
        .simple_query("EXPLAIN ROUTE SELECT region, avg(amount) FROM orders GROUP BY region ORDER BY 2 LIMIT 3")
        .await
        .unwrap();
    let reason = explained
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(2).map(str::to_string),
            _ => None,
        })
        .unwrap();
    assert!(
        reason.contains(
            "each shard runs: SELECT region AS _p1, sum(amount) AS _p2, count(amount) AS _p3"
        ) && reason.contains("pgvane finishes")
            && reason.contains("limit 3"),
        "{reason}"
    );
    // The session is still usable after every refusal.
    assert_eq!(
        answer(&c, "SELECT 1").await.unwrap().1,
        [[Some("1".to_string())]]
    );
    assert!(
        wrong.is_empty(),
        "{} of {} queries differ from one database:\n{}",
        wrong.len(),
        3 * CORPUS.len() + 2 * REFUSED.len(),
        wrong.join("\n")
    );
}

/// A table that is not sharded is a reference table: present on every shard with the same
/// rows. Writes go to every shard, each in a transaction committed only if every shard
/// succeeded, and answer as one database would (one count, one RETURNING row); reads go to
/// one shard.
#[tokio::test]
async fn reference_tables_are_written_on_every_shard_and_answer_once() {
    let pg = shared();
    let mut shards = Vec::new();
    for i in 0..3 {
        let name = format!("ref_s{i}");
        pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
        shards.push(name);
    }
    let p = Pgvane::start(&config(free_port(), pg.port(), &shards));
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=shop",
        p.port()
    ))
    .await;
    c.batch_execute("CREATE TABLE countries (code text PRIMARY KEY, name text)")
        .await
        .unwrap();
    let tag = |msgs: &[SimpleQueryMessage]| {
        msgs.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .unwrap()
    };
    let m = c
        .simple_query("INSERT INTO countries VALUES ('de', 'Germany')")
        .await
        .unwrap();
    assert_eq!(tag(&m), 1, "one row inserted, as in one database");
    let m = c
        .simple_query("INSERT INTO countries (code, name) VALUES ('fr', 'France'), ('it', 'Italy') RETURNING code")
        .await
        .unwrap();
    assert_eq!(tag(&m), 2);
    let returned = m
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(returned, 2, "RETURNING rows once");
    // The extended protocol too.
    let n = c
        .execute("INSERT INTO countries VALUES ($1, $2)", &[&"es", &"Spain"])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = c
        .execute(
            "UPDATE countries SET name = upper(name) WHERE code <> $1",
            &[&"es"],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    for db in &shards {
        assert_eq!(
            pg.psql(
                db,
                "SELECT string_agg(code || '=' || name, ',' ORDER BY code) FROM countries"
            )
            .trim(),
            "de=GERMANY,es=Spain,fr=FRANCE,it=ITALY",
            "{db} holds every row"
        );
    }
    // A write that fails on one shard changes none.
    pg.psql(&shards[2], "INSERT INTO countries VALUES ('pl', 'Poland')");
    let err = c
        .batch_execute("INSERT INTO countries VALUES ('nl', 'Netherlands'), ('pl', 'Poland')")
        .await
        .expect_err("duplicate key on one shard");
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));
    for db in &shards {
        assert_eq!(
            pg.psql(db, "SELECT count(*) FROM countries WHERE code = 'nl'")
                .trim(),
            "0",
            "{db}: rolled back"
        );
    }
    // Reads answer once.
    pg.psql(&shards[2], "DELETE FROM countries WHERE code = 'pl'");
    for _ in 0..3 {
        let rows = c.query("SELECT code FROM countries", &[]).await.unwrap();
        assert_eq!(rows.len(), 4);
    }
}

/// A negative key, written as `-5` or as a cast string, goes to its one shard.
#[tokio::test]
async fn negative_and_cast_literal_keys_route_to_one_shard() {
    let pg = shared();
    let mut shards = Vec::new();
    for i in 0..3 {
        let name = format!("neg_s{i}");
        pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
        shards.push(name);
    }
    let p = Pgvane::start(&config(free_port(), pg.port(), &shards));
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=shop",
        p.port()
    ))
    .await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute("INSERT INTO orders (customer_id, id) VALUES (-5, 1), (-7, 2), (5, 3)")
        .await
        .unwrap();
    for sql in [
        "SELECT id FROM orders WHERE customer_id = -5",
        "SELECT id FROM orders WHERE customer_id = '-5'::bigint",
        "SELECT id FROM orders WHERE customer_id = (-5)",
        "SELECT id FROM orders WHERE customer_id IN (-5, -7)",
    ] {
        let route = c
            .simple_query(&format!("EXPLAIN ROUTE {sql}"))
            .await
            .unwrap();
        let target = route
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap();
        let expect_one = !sql.contains("IN (");
        assert_eq!(
            target.starts_with("shard "),
            expect_one,
            "{sql}: routed to {target}"
        );
        let rows = answer(&c, sql).await.unwrap().1;
        assert!(
            rows.contains(&vec![Some("1".to_string())]),
            "{sql}: {rows:?}"
        );
    }
    // Every row is on the shard PostgreSQL's hash partitioning places it.
    for (i, db) in shards.iter().enumerate() {
        pg.psql(
            db,
            &format!(
                "CREATE TABLE IF NOT EXISTS hp(customer_id bigint) PARTITION BY HASH (customer_id); \
                 CREATE TABLE IF NOT EXISTS hp_x PARTITION OF hp FOR VALUES WITH (MODULUS 3, REMAINDER {i})"
            ),
        );
        let misplaced = pg.psql(
            db,
            &format!("SELECT count(*) FROM orders WHERE NOT satisfies_hash_partition('hp'::regclass, 3, {i}, customer_id)"),
        );
        assert_eq!(misplaced.trim(), "0", "{db}");
    }
}

/// SHOW STATS counts a multi-shard statement once for its database, SHOW SHARDS and
/// /metrics' pgvane_queries_total once on every shard it ran on.
#[tokio::test]
async fn multi_shard_statements_are_counted_once_and_on_every_shard() {
    let pg = shared();
    let mut shards = Vec::new();
    for i in 0..3 {
        let name = format!("stat_s{i}");
        pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
        shards.push(name);
    }
    let mport = free_port();
    let p = Pgvane::start(&config_with(
        free_port(),
        pg.port(),
        &shards,
        &format!("admin_users = [\"app\"]\nmetrics_addr = \"127.0.0.1:{mport}\""),
    ));
    let url = |db: &str| {
        format!(
            "host=127.0.0.1 port={} user=app password=app-secret dbname={db}",
            p.port()
        )
    };
    let c = connect(&url("shop")).await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute("CREATE TABLE tags (t text)").await.unwrap();
    let admin = connect(&url("pgvane")).await;
    let stat = |rows: Vec<SimpleQueryMessage>, key: &str, col: &str| -> Vec<u64> {
        rows.iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) if r.get("database") == Some(key) => {
                    r.get(col).and_then(|v| v.parse().ok())
                }
                _ => None,
            })
            .collect()
    };
    let before = stat(
        admin.simple_query("SHOW STATS").await.unwrap(),
        "shop",
        "total_query_count",
    );
    let shards_before = stat(
        admin.simple_query("SHOW SHARDS").await.unwrap(),
        "shop",
        "queries",
    );
    let statements = [
        "SELECT * FROM orders",
        "SELECT count(*) FROM orders",
        "SELECT customer_id FROM orders ORDER BY customer_id LIMIT 3",
        "INSERT INTO tags VALUES ('a')",
        "SELECT sum(amount) FROM orders GROUP BY region",
    ];
    for sql in statements {
        c.simple_query(sql).await.unwrap();
    }
    let after = stat(
        admin.simple_query("SHOW STATS").await.unwrap(),
        "shop",
        "total_query_count",
    );
    let shards_after = stat(
        admin.simple_query("SHOW SHARDS").await.unwrap(),
        "shop",
        "queries",
    );
    assert_eq!(
        after[0] - before[0],
        statements.len() as u64,
        "SHOW STATS: once per statement"
    );
    assert_eq!(shards_after.len(), 3);
    for i in 0..3 {
        assert_eq!(
            shards_after[i] - shards_before[i],
            statements.len() as u64,
            "SHOW SHARDS shard {i}: once per statement that ran on it"
        );
    }
    // /metrics: the same counts.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("database=\"shop\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(sum("pgvane_database_queries_total") as u64, after[0]);
    assert_eq!(
        sum("pgvane_queries_total{") as u64,
        shards_after.iter().sum::<u64>()
    );
}

/// An extended-protocol multi-row INSERT whose rows belong to different shards is split by
/// shard, each part with its own parameters; the client sees one count (and every
/// RETURNING row), and every row lands on the shard PostgreSQL's hash partitioning names.
#[tokio::test]
async fn extended_protocol_multi_row_inserts_are_split_by_shard() {
    let pg = shared();
    let mut shards = Vec::new();
    for i in 0..3 {
        let name = format!("xins_s{i}");
        pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
        shards.push(name);
    }
    let p = Pgvane::start(&config(free_port(), pg.port(), &shards));
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=shop",
        p.port()
    ))
    .await;
    c.batch_execute(SCHEMA).await.unwrap();
    let keys: Vec<i64> = (1..=12).collect();
    let ids: Vec<i32> = (1..=12).collect();
    let notes: Vec<String> = (1..=12).map(|i| format!("x{i}")).collect();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    let mut rows = Vec::new();
    for i in 0..12 {
        rows.push(format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
        params.push(&keys[i]);
        params.push(&ids[i]);
        params.push(&notes[i]);
    }
    let sql = format!(
        "INSERT INTO orders (customer_id, id, note) VALUES {}",
        rows.join(", ")
    );
    assert_eq!(c.execute(sql.as_str(), &params).await.unwrap(), 12);
    // Prepared once, run twice; with RETURNING; a parameter used twice.
    let st = c
        .prepare("INSERT INTO orders (customer_id, id, note) VALUES ($1, 100, $3), ($2, 100, $3) RETURNING customer_id")
        .await
        .unwrap();
    for (a, b) in [(20i64, 21i64), (30, 31)] {
        let got = c.query(&st, &[&a, &b, &"twice"]).await.unwrap();
        let mut got: Vec<i64> = got.iter().map(|r| r.get(0)).collect();
        got.sort();
        assert_eq!(got, [a, b]);
    }
    let total: i64 = c
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 16);
    let notes_back = c
        .query("SELECT note FROM orders WHERE customer_id = 7", &[])
        .await
        .unwrap();
    assert_eq!(notes_back[0].get::<_, String>(0), "x7");
    for (i, db) in shards.iter().enumerate() {
        pg.psql(
            db,
            &format!(
                "CREATE TABLE IF NOT EXISTS hp(customer_id bigint) PARTITION BY HASH (customer_id); \
                 CREATE TABLE IF NOT EXISTS hp_x PARTITION OF hp FOR VALUES WITH (MODULUS 3, REMAINDER {i})"
            ),
        );
        let misplaced = pg.psql(
            db,
            &format!("SELECT count(*) FROM orders WHERE NOT satisfies_hash_partition('hp'::regclass, 3, {i}, customer_id)"),
        );
        assert_eq!(misplaced.trim(), "0", "{db}");
        let n = pg.psql(db, "SELECT count(*) FROM orders");
        assert!(n.trim() != "16", "{db}: rows are split, not copied");
    }
}
