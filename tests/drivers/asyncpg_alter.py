"""asyncpg's statement cache across ALTER TABLE through pgvane (run by tests/drivers.rs).

asyncpg prepares every query as a named statement and caches it; after ALTER TABLE changes
the result type, the next execution must return the new shape (directly, asyncpg re-prepares
after "cached plan must not change result type"; through pgvane the shared statement is
re-prepared transparently). Exits non-zero with a message on any wrong answer.
"""
import asyncio
import sys

import asyncpg

# The DSN is libpq's "key=value ..." form; asyncpg takes keyword arguments.
kw = dict(item.split("=", 1) for item in sys.argv[1].split())
args = dict(host=kw["host"], port=int(kw["port"]), user=kw["user"],
            password=kw.get("password"), database=kw["dbname"])


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)


async def main():
    conn = await asyncpg.connect(**args)
    other = await asyncpg.connect(**args)
    await conn.execute("DROP TABLE IF EXISTS drv_alter")
    await conn.execute("CREATE TABLE drv_alter (a int)")
    await conn.execute("INSERT INTO drv_alter VALUES (1), (2)")
    for _ in range(5):
        rows = await conn.fetch("SELECT * FROM drv_alter ORDER BY a")
        check([tuple(r) for r in rows] == [(1,), (2,)], "before ALTER")
        rows = await other.fetch("SELECT * FROM drv_alter WHERE a = $1", 2)
        check([tuple(r) for r in rows] == [(2,)], "other client before ALTER")
    await other.execute("ALTER TABLE drv_alter ADD COLUMN b text DEFAULT 'x'")
    for _ in range(5):
        rows = await conn.fetch("SELECT * FROM drv_alter ORDER BY a")
        check([tuple(r) for r in rows] == [(1, "x"), (2, "x")], f"after ALTER: {rows}")
        rows = await other.fetch("SELECT * FROM drv_alter WHERE a = $1", 2)
        check([tuple(r) for r in rows] == [(2, "x")], f"other after ALTER: {rows}")
    async with conn.transaction():
        v = await conn.fetchval("SELECT count(*) FROM drv_alter")
        check(v == 2, "count in a transaction")
    await conn.execute("DROP TABLE drv_alter")
    await conn.close()
    await other.close()
    print("ok")


asyncio.run(main())
