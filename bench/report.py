#!/usr/bin/env python3
"""Helpers for bench/compare.sh: per-run numbers from pgbench, connection-scale numbers from
examples/conn_scale, and the final markdown/CSV report with medians and ratios.

  report.py run --out F --log-prefix P --rc N --cpu-s S --rss-kib K --repeat R --mode M --clients C --system S
  report.py brief CSV_LINE
  report.py conn --out F --system S --connections N --rss A B C --cpu A B C --clk-tck T
  report.py summary --runs RUNS.csv --conn CONN.csv --meta META.txt --md OUT.md --csv OUT.csv
"""

import argparse
import csv
import glob
import io
import math
import os
import re
import statistics
import sys

RUN_FIELDS = [
    "repeat", "mode", "clients", "system", "status", "tps", "latency_mean_ms",
    "latency_p99_ms", "transactions", "failed_tx", "proxy_cpu_s", "proxy_cpu_us_per_tx",
    "proxy_rss_kib", "connect_ms", "error",
]
CONN_FIELDS = [
    "system", "connections", "opened", "open_failed", "open_secs", "rss_before_kib",
    "rss_idle_kib", "rss_after_active_kib", "proxy_cpu_open_s", "active", "qps",
    "lat_mean_ms", "lat_p99_ms", "query_errors", "proxy_cpu_us_per_query", "open_at_end",
    "errors",
]
SYSTEM_ORDER = ["direct", "pgbouncer", "pgvane", "pgvane-split", "pgvane-cache"]
SYSTEM_LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "pgvane": "pgvane",
                "pgvane-split": "pgvane-split", "pgvane-cache": "pgvane-cache"}
MODE_ORDER = ["select-simple", "select-extended", "select-prepared", "tpcb-simple",
              "tpcb-extended", "tpcb-prepared"]


def csv_line(values):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def fnum(s):
    try:
        v = float(s)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def fmt(v, digits=2):
    if v is None:
        return ""
    return f"{v:.{digits}f}"


def percentile(sorted_vals, p):
    """Nearest-rank percentile."""
    if not sorted_vals:
        return None
    k = max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[k]


# ---------------------------------------------------------------------------------------------
# run: one pgbench run -> one CSV line
# ---------------------------------------------------------------------------------------------

def first_error(text):
    for line in text.splitlines():
        if re.search(r"error|fatal|aborted|could not|timeout", line, re.I):
            return re.sub(r"\s+", " ", line.strip())[:300]
    return ""


def cmd_run(a):
    text = open(a.out, errors="replace").read() if os.path.exists(a.out) else ""
    m = re.search(r"^tps = ([0-9.]+)", text, re.M)
    tps = float(m.group(1)) if m else None
    m = re.search(r"number of transactions actually processed: (\d+)", text)
    processed = int(m.group(1)) if m else None
    m = re.search(r"number of failed transactions: (\d+)", text)
    failed = int(m.group(1)) if m else 0
    m = re.search(r"initial connection time = ([0-9.]+) ms", text)
    connect_ms = float(m.group(1)) if m else None

    lat = []
    for path in glob.glob(glob.escape(a.log_prefix) + ".*"):
        suffix = path[len(a.log_prefix) + 1:]
        if not suffix[:1].isdigit():
            continue  # the .out file
        with open(path, errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    lat.sort()
    mean_ms = sum(lat) / len(lat) / 1000.0 if lat else None
    p99 = percentile(lat, 99)
    p99_ms = p99 / 1000.0 if p99 is not None else None

    rc = int(a.rc)
    if rc == 124 or rc == 137:
        status, error = "failed", f"timed out (pgbench exit {rc})"
    elif rc != 0:
        status, error = "failed", first_error(text) or f"pgbench exit {rc}"
    elif tps is None and processed == 0:
        status, error = "failed", ("0 transactions: connecting the clients took the whole run "
                                   "(raise DURATION)")
    elif tps is None:
        status, error = "failed", first_error(text) or "no tps line in pgbench output"
    else:
        status, error = "ok", ""
    if status == "ok" and failed:
        error = f"{failed} failed transactions"

    cpu_s = fnum(a.cpu_s)
    n_tx = processed if processed is not None else len(lat)
    cpu_us = cpu_s * 1e6 / n_tx if cpu_s is not None and n_tx else None
    print(csv_line([
        a.repeat, a.mode, a.clients, a.system, status, fmt(tps, 1), fmt(mean_ms, 3),
        fmt(p99_ms, 3), n_tx if n_tx is not None else "", failed, fmt(cpu_s, 2),
        fmt(cpu_us, 1), a.rss_kib or "", fmt(connect_ms, 0), error,
    ]))


def cmd_brief(a):
    row = dict(zip(RUN_FIELDS, next(csv.reader([a.line]))))
    if row["status"] != "ok":
        print(f"FAILED: {row['error']}")
        return
    s = f"tps {row['tps']}, mean {row['latency_mean_ms']} ms, p99 {row['latency_p99_ms']} ms"
    if row["proxy_cpu_us_per_tx"]:
        s += f", proxy {row['proxy_cpu_us_per_tx']} us/tx, rss {int(row['proxy_rss_kib']) // 1024} MiB"
    if row["error"]:
        s += f" ({row['error']})"
    print(s)


# ---------------------------------------------------------------------------------------------
# conn: one conn_scale run -> one CSV line
# ---------------------------------------------------------------------------------------------

def cmd_conn(a):
    text = open(a.out, errors="replace").read() if os.path.exists(a.out) else ""
    kv = {}
    for line in text.splitlines():
        for k, v in re.findall(r"(\w+)=(\S+)", line):
            kv.setdefault(k, v)
    errors = [l.strip() for l in text.splitlines() if " error x" in l or l.startswith("warning")
              or "panicked" in l or l.startswith("no connection")]
    rss = [fnum(x) for x in a.rss]
    cpu = [fnum(x) for x in a.cpu]
    tck = float(a.clk_tck)
    cpu_open = (cpu[1] - cpu[0]) / tck if cpu[0] is not None and cpu[1] is not None else None
    queries = fnum(kv.get("queries"))
    cpu_q = ((cpu[2] - cpu[1]) / tck * 1e6 / queries
             if cpu[1] is not None and cpu[2] is not None and queries else None)
    print(csv_line([
        a.system, a.connections, kv.get("opened", ""), kv.get("failed", ""), kv.get("open_secs", ""),
        a.rss[0], a.rss[1], a.rss[2], fmt(cpu_open, 2), kv.get("active", ""), kv.get("qps", ""),
        kv.get("lat_mean_ms", ""), kv.get("lat_p99_ms", ""), kv.get("query_errors", ""),
        fmt(cpu_q, 1), kv.get("open_at_end", ""), " | ".join(errors)[:500],
    ]))


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

def read_csv(path):
    if not path or not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def median_of(rows, key):
    vals = [fnum(r[key]) for r in rows]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def order_key(order):
    return lambda v: (order.index(v) if v in order else len(order), v)


def cmd_summary(a):
    runs = read_csv(a.runs)
    conns = read_csv(a.conn)
    meta, excerpts = {}, []
    for line in open(a.meta) if a.meta and os.path.exists(a.meta) else []:
        k, _, v = line.rstrip("\n").partition("=")
        if k == "log_excerpt":
            excerpts.append(v)
        else:
            meta[k] = v

    groups = {}
    for r in runs:
        groups.setdefault((r["mode"], int(r["clients"]), r["system"]), []).append(r)
    modes = sorted({k[0] for k in groups}, key=order_key(MODE_ORDER))
    clients = sorted({k[1] for k in groups})
    systems = sorted({k[2] for k in groups}, key=order_key(SYSTEM_ORDER))

    summary = {}
    for key, rows in groups.items():
        ok = [r for r in rows if r["status"] == "ok"]
        d = {"runs": len(rows), "ok": len(ok)}
        for f in ["tps", "latency_mean_ms", "latency_p99_ms", "proxy_cpu_us_per_tx", "proxy_rss_kib"]:
            d[f] = median_of(ok, f)
        errs = [r["error"] for r in rows if r["error"]]
        d["error"] = errs[0] if errs else ""
        summary[key] = d

    def tps_cell(d):
        if d is None:
            return "-"
        if d["ok"] == 0:
            return "n/a (fails)"
        s = f"{d['tps']:,.0f}"
        if d["ok"] < d["runs"]:
            s += f" ({d['runs'] - d['ok']}/{d['runs']} failed)"
        return s

    def rcell(x):
        return "-" if x is None else f"{x:.2f}"

    out = []
    title_date = meta.get("date", "")
    out.append(f"# pgvane vs PgBouncer vs direct: {title_date}")
    out.append("")
    out.append(f"- Machine: {meta.get('host_cores', '?')} cores ({meta.get('cpu', '?')}), "
               f"kernel {meta.get('kernel', '?')}, load average before the run {meta.get('load_before', '?')}")
    out.append(f"- {meta.get('postgres', '?')}; {meta.get('pgbench', '?')}; {meta.get('pgbouncer', '?')}; "
               f"{meta.get('pgvane', '?')}")
    out.append(f"- pgbench scale {meta.get('scale', '?')}, {meta.get('duration', '?')} s per run, "
               f"{meta.get('repeats', '?')} repeat(s) (systems interleaved, medians shown), "
               f"-j {meta.get('jobs', '?')}; both proxies: transaction mode, pool size "
               f"{meta.get('pool_size', '?')}, SCRAM-SHA-256 client auth; PostgreSQL with fsync off")
    out.append("- pgvane = read/write split off (primary only); pgvane-split = split on "
               f"(primary + one streaming replica); pgvane workers = {meta.get('pgvane_workers', '0')} "
               "(0 = one per core); pgvane-cache = cache_unnamed_statements on")
    out.append("")

    # Compact TPS table.
    out.append("## Throughput (TPS, median)")
    out.append("")
    hdr = ["mode", "clients"] + [SYSTEM_LABEL.get(s, s) for s in systems]
    ratio_cols = []
    if "pgvane" in systems and "pgbouncer" in systems:
        ratio_cols.append(("pgvane", "pgbouncer", "pgvane/PgBouncer"))
    if "pgvane" in systems and "direct" in systems:
        ratio_cols.append(("pgvane", "direct", "pgvane/direct"))
    if "pgvane-split" in systems and "pgbouncer" in systems:
        ratio_cols.append(("pgvane-split", "pgbouncer", "split/PgBouncer"))
    if "pgvane-split" in systems and "direct" in systems:
        ratio_cols.append(("pgvane-split", "direct", "split/direct"))
    if "pgvane-cache" in systems and "pgbouncer" in systems:
        ratio_cols.append(("pgvane-cache", "pgbouncer", "cache/PgBouncer"))
    hdr += [c[2] for c in ratio_cols]
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(hdr) - 2)) + "|")
    for m in modes:
        for c in clients:
            if not any((m, c, s) in summary for s in systems):
                continue
            cells = [m, str(c)] + [tps_cell(summary.get((m, c, s))) for s in systems]
            for num, den, _ in ratio_cols:
                dn, dd = summary.get((m, c, num)), summary.get((m, c, den))
                cells.append(rcell(ratio(dn and dn["tps"], dd and dd["tps"])))
            out.append("| " + " | ".join(cells) + " |")
    out.append("")

    # Long table.
    out.append("## Every configuration (medians)")
    out.append("")
    out.append("| mode | clients | system | runs ok | TPS | mean ms | p99 ms | proxy CPU us/tx | "
               "proxy RSS MiB | TPS vs PgBouncer | TPS vs direct | p99 vs PgBouncer |")
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    csv_rows = []
    for m in modes:
        for c in clients:
            for s in systems:
                d = summary.get((m, c, s))
                if d is None:
                    continue
                pb, dr = summary.get((m, c, "pgbouncer")), summary.get((m, c, "direct"))
                vs_pb = ratio(d["tps"], pb and pb["tps"]) if s != "pgbouncer" else None
                vs_dr = ratio(d["tps"], dr and dr["tps"]) if s != "direct" else None
                p99_pb = ratio(d["latency_p99_ms"], pb and pb["latency_p99_ms"]) if s != "pgbouncer" else None
                rss_mib = d["proxy_rss_kib"] / 1024 if d["proxy_rss_kib"] is not None else None
                note = "n/a (fails)" if d["ok"] == 0 else ""
                out.append("| " + " | ".join([
                    m, str(c), SYSTEM_LABEL.get(s, s), f"{d['ok']}/{d['runs']}",
                    tps_cell(d), fmt(d["latency_mean_ms"], 3) or "-", fmt(d["latency_p99_ms"], 3) or "-",
                    fmt(d["proxy_cpu_us_per_tx"], 1) or "-", fmt(rss_mib, 1) or "-",
                    rcell(vs_pb), rcell(vs_dr), rcell(p99_pb),
                ]) + " |")
                csv_rows.append([
                    m, c, s, d["runs"], d["ok"], fmt(d["tps"], 1), fmt(d["latency_mean_ms"], 3),
                    fmt(d["latency_p99_ms"], 3), fmt(d["proxy_cpu_us_per_tx"], 1), fmt(rss_mib, 1),
                    fmt(vs_pb, 3), fmt(vs_dr, 3), fmt(p99_pb, 3), note or d["error"],
                ])
    out.append("")

    failures = sorted({(r["mode"], r["system"], r["error"]) for r in runs if r["status"] != "ok"})
    if failures:
        out.append("## Failed runs")
        out.append("")
        for m, s, e in failures:
            out.append(f"- {m} via {SYSTEM_LABEL.get(s, s)}: `{e}`")
        out.append("")

    if conns:
        out.append(f"## Connection scale ({meta.get('conn_scale', '?')} idle clients, then "
                   f"{meta.get('conn_active', '?')} running SELECT 1 for {meta.get('conn_seconds', '?')} s)")
        out.append("")
        out.append("| proxy | opened | failed | open s | RSS before MiB | RSS idle MiB | KiB per conn | "
                   "proxy CPU to open s | active qps | mean ms | p99 ms | query errors | proxy CPU us/query |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in conns:
            r0, r1 = fnum(r["rss_before_kib"]), fnum(r["rss_idle_kib"])
            opened = fnum(r["opened"])
            per = (r1 - r0) / opened if r0 is not None and r1 is not None and opened else None
            out.append("| " + " | ".join([
                SYSTEM_LABEL.get(r["system"], r["system"]), r["opened"] or "-", r["open_failed"] or "-",
                r["open_secs"] or "-", fmt(r0 / 1024 if r0 is not None else None, 1) or "-",
                fmt(r1 / 1024 if r1 is not None else None, 1) or "-", fmt(per, 1) or "-",
                r["proxy_cpu_open_s"] or "-", r["qps"] or "-", r["lat_mean_ms"] or "-",
                r["lat_p99_ms"] or "-", r["query_errors"] or "-", r["proxy_cpu_us_per_query"] or "-",
            ]) + " |")
        errs = [(r["system"], r["errors"]) for r in conns if r["errors"]]
        if errs:
            out.append("")
            for s, e in errs:
                out.append(f"- {SYSTEM_LABEL.get(s, s)}: `{e}`")
        out.append("")

    if excerpts:
        out.append("## Proxy log excerpts (warnings/errors)")
        out.append("")
        out.append("```")
        out.extend(excerpts)
        out.append("```")
        out.append("")

    with open(a.md, "w") as f:
        f.write("\n".join(out))
    with open(a.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "clients", "system", "runs", "runs_ok", "tps_median",
                    "latency_mean_ms_median", "latency_p99_ms_median", "proxy_cpu_us_per_tx_median",
                    "proxy_rss_mib_median", "tps_vs_pgbouncer", "tps_vs_direct",
                    "p99_vs_pgbouncer", "note"])
        w.writerows(csv_rows)
        w.writerow([])
        w.writerow(["# machine", f"cores={meta.get('host_cores', '')}", meta.get("date", ""),
                    meta.get("postgres", ""), meta.get("pgbouncer", ""), meta.get("pgvane", "")])


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    for k in ["out", "log-prefix", "rc", "cpu-s", "rss-kib", "repeat", "mode", "clients", "system"]:
        r.add_argument("--" + k, default="")
    b = sub.add_parser("brief")
    b.add_argument("line")
    c = sub.add_parser("conn")
    c.add_argument("--out", required=True)
    c.add_argument("--system", required=True)
    c.add_argument("--connections", required=True)
    c.add_argument("--rss", nargs=3, default=["", "", ""])
    c.add_argument("--cpu", nargs=3, default=["", "", ""])
    c.add_argument("--clk-tck", default="100")
    s = sub.add_parser("summary")
    for k in ["runs", "conn", "meta", "md", "csv"]:
        s.add_argument("--" + k, default="")
    a = p.parse_args()
    {"run": cmd_run, "brief": cmd_brief, "conn": cmd_conn, "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
