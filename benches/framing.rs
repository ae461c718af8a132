//! Microbenchmarks of pgvane's per-message hot path: splitting a byte stream into protocol
//! frames, reading what the pooler inspects in an extended-protocol batch, and the
//! hash-partition function used to route sharded queries.
//!
//! Run with `cargo bench --bench framing` (filter: `cargo bench --bench framing -- datarows`).

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgvane::protocol;
use pgvane::sharding::hash::{partition_for, KeyType, KeyValue};

const MAX_LEN: usize = 256 * 1024 * 1024;

/// A DataRow ('D') like `SELECT aid, bid, abalance, filler FROM pgbench_accounts` returns:
/// four text columns (the last one 84 bytes).
fn put_data_row(out: &mut BytesMut, i: u32) {
    let aid = i.to_string();
    let bid = (i / 100_000 + 1).to_string();
    let abalance = ((i as i64 * 37) % 5000 - 2500).to_string();
    let filler = [b' '; 84];
    let cols: [&[u8]; 4] = [aid.as_bytes(), bid.as_bytes(), abalance.as_bytes(), &filler];
    let len = 4 + 2 + cols.iter().map(|c| 4 + c.len()).sum::<usize>();
    out.put_u8(b'D');
    out.put_i32(len as i32);
    out.put_i16(cols.len() as i16);
    for c in cols {
        out.put_i32(c.len() as i32);
        out.put_slice(c);
    }
}

/// 1000 DataRows followed by CommandComplete and ReadyForQuery, as one read from a server.
fn thousand_data_rows() -> BytesMut {
    let mut b = BytesMut::new();
    for i in 0..1000 {
        put_data_row(&mut b, i + 1);
    }
    protocol::command_complete(&mut b, "SELECT 1000");
    protocol::ready_for_query(&mut b, b'I');
    b
}

/// What `pgbench -S -M extended` sends per transaction: Parse (unnamed), Bind with one text
/// parameter, Describe portal, Execute, Sync.
fn parse_bind_execute_sync() -> BytesMut {
    let mut b = BytesMut::new();
    let sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
    // Parameter types: 0 types.
    protocol::parse_msg(&mut b, b"", sql, &0i16.to_be_bytes());
    // Bind rest: 0 format codes, 1 parameter "48213" (text), 0 result format codes.
    let mut rest = BytesMut::new();
    rest.put_i16(0);
    rest.put_i16(1);
    rest.put_i32(5);
    rest.put_slice(b"48213");
    rest.put_i16(0);
    protocol::bind_msg(&mut b, b"", b"", &rest);
    protocol::target_msg(&mut b, b'D', b'P', b"");
    // Execute: portal "", max rows 0.
    b.put_u8(b'E');
    b.put_i32(4 + 1 + 4);
    b.put_u8(0);
    b.put_i32(0);
    protocol::sync(&mut b);
    b
}

/// The same request with a named statement, as `pgbench -M prepared` sends after the first
/// transaction (Bind/Execute/Sync only).
fn bind_execute_sync_named() -> BytesMut {
    let mut b = BytesMut::new();
    let mut rest = BytesMut::new();
    rest.put_i16(0);
    rest.put_i16(1);
    rest.put_i32(5);
    rest.put_slice(b"48213");
    rest.put_i16(0);
    protocol::bind_msg(&mut b, b"", b"P0_1", &rest);
    b.put_u8(b'E');
    b.put_i32(4 + 1 + 4);
    b.put_u8(0);
    b.put_i32(0);
    protocol::sync(&mut b);
    b
}

fn split_all(buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Some(frame) = protocol::split_frame(buf, MAX_LEN).expect("valid stream") {
        black_box(&frame);
        n += 1;
    }
    n
}

fn bench_split(c: &mut Criterion) {
    let rows = thousand_data_rows();
    let mut g = c.benchmark_group("split_frame");

    g.throughput(Throughput::Elements(1002));
    g.bench_function("1000_datarows", |b| {
        b.iter_batched_ref(
            || rows.clone(),
            |buf| assert_eq!(split_all(buf), 1002),
            BatchSize::SmallInput,
        )
    });

    let pbes = parse_bind_execute_sync();
    g.throughput(Throughput::Elements(5));
    g.bench_function("parse_bind_describe_execute_sync", |b| {
        b.iter_batched_ref(
            || pbes.clone(),
            |buf| assert_eq!(split_all(buf), 5),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Split plus the decoding the pooler does on a client batch: the statement names of
    // Parse/Bind/Describe (for prepared-statement tracking) and the Bind parameters (what
    // sharding reads to find a key).
    let mut g = c.benchmark_group("client_batch");
    for (name, batch) in [
        ("parse_bind_describe_execute_sync", pbes.clone()),
        ("bind_execute_sync_named", bind_execute_sync_named()),
    ] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || batch.clone(),
                |buf| {
                    while let Some(f) = protocol::split_frame(buf, MAX_LEN).unwrap() {
                        match f[0] {
                            b'P' => {
                                black_box(protocol::parse_parse(&f).unwrap());
                            }
                            b'B' => {
                                let m = protocol::parse_bind(&f).unwrap();
                                black_box(protocol::bind_params(m.rest).unwrap());
                            }
                            b'D' | b'C' => {
                                black_box(protocol::parse_target(&f).unwrap());
                            }
                            _ => {
                                black_box(&f);
                            }
                        }
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    // Encoding what pgvane itself writes on every transaction.
    let mut g = c.benchmark_group("encode");
    g.bench_function("query_select_1", |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            protocol::query(&mut out, black_box("SELECT 1"));
            black_box(&out);
        })
    });
    g.bench_function("ready_for_query", |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            protocol::ready_for_query(&mut out, black_box(b'I'));
            black_box(&out);
        })
    });
    g.finish();
}

fn bench_partition(c: &mut Criterion) {
    let mut g = c.benchmark_group("partition_for");
    g.bench_function("int8", |b| {
        let mut v: i64 = 1_234_567;
        b.iter(|| {
            v = v.wrapping_add(1);
            black_box(partition_for(
                &KeyValue::Int(black_box(v)),
                KeyType::Int8,
                8,
            ))
        })
    });
    let text = *b"customer-0000042"; // 16 bytes
    assert_eq!(text.len(), 16);
    g.bench_function("text_16_bytes", |b| {
        b.iter(|| {
            black_box(partition_for(
                &KeyValue::Text(black_box(&text[..])),
                KeyType::Text,
                8,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_split, bench_partition);
criterion_main!(benches);
