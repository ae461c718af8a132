"""psycopg 3 pipeline habits through pgvane (run by tests/drivers.rs with a DSN).

Each check mirrors what psycopg's own test suite does (tests/test_pipeline.py): a batch that
errors before a Flush, an explicit rollback after an error in a pipeline, and plain queries
afterwards on the same connection. Exits non-zero with a message on any wrong answer.
"""
import sys

import psycopg
from psycopg import errors

dsn = sys.argv[1]


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)


# Reproduction 1: an error in a batch that ends with Flush; then a new query.
with psycopg.connect(dsn, autocommit=True) as conn:
    try:
        with conn.pipeline():
            conn.execute("select 1 / %s", [0])
        check(False, "division by zero was not raised")
    except errors.DivisionByZero:
        pass
    check(conn.execute("select 42").fetchone()[0] == 42, "select 42 after the failed pipeline")

# psycopg's test_rollback_explicit.
with psycopg.connect(dsn, autocommit=True) as conn:
    with conn.pipeline():
        try:
            conn.execute("select 1 / %s", [0])
            conn.rollback()
        except errors.DivisionByZero:
            pass
        cur = conn.execute("select 1")
    check(cur.fetchone()[0] == 1, "select 1 after rollback in a pipeline")

# Transactions in a pipeline, with an error and a recovery.
with psycopg.connect(dsn) as conn:
    with conn.pipeline():
        conn.execute("select 1")
        conn.commit()
        try:
            with conn.transaction():
                conn.execute("select 1 / 0")
        except errors.DivisionByZero:
            pass
        cur = conn.execute("select %s::int + 1", [41])
    check(cur.fetchone()[0] == 42, "query after a failed transaction in a pipeline")
    conn.commit()

# Many pipelined statements with parameters: every answer in order.
with psycopg.connect(dsn, autocommit=True) as conn:
    with conn.pipeline():
        curs = [conn.execute("select %s::int * 2", [i]) for i in range(200)]
    vals = [c.fetchone()[0] for c in curs]
    check(vals == [i * 2 for i in range(200)], "pipelined answers in order")

# Prepared statements (psycopg prepares after prepare_threshold uses) across transactions.
with psycopg.connect(dsn, autocommit=True, prepare_threshold=1) as conn:
    for i in range(20):
        check(conn.execute("select %s::int + 100", [i]).fetchone()[0] == i + 100, "prepared")

print("ok")
