#!/usr/bin/env python3
"""Markdown table (medians per cell) and the DESIGN.md section 10 ratios from the JSON lines
benches/gateway_vs_peers.sh prints: python3 benches/gateway_table.py < results.jsonl"""
import collections
import json
import statistics
import sys

rows = collections.OrderedDict()
for line in sys.stdin:
    if line.startswith("{"):
        d = json.loads(line)
        key = ("SSE" if d["stream"] else "JSON", d["result"]["clients"], d["label"])
        rows.setdefault(key, []).append(d)


def med(ds, f, part="result"):
    return statistics.median(d[part][f] for d in ds)


print("| mode | conns | target | req/s | p50 ms | p99 ms | TTFB p50 ms | p50 added vs direct "
      "| proxy CPU µs/req | upstream / store / load µs/req | runs |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
for (mode, conns, target), ds in rows.items():
    direct = rows.get((mode, conns, "direct"))
    added = "–" if target == "direct" or not direct else \
        f"+{med(ds, 'p50_ms') - med(direct, 'p50_ms'):.3f}"
    proxy = "–" if target == "direct" else f"{med(ds, 'proxy', 'cpu_us_per_req'):.1f}"
    others = " / ".join(f"{med(ds, f, 'cpu_us_per_req'):.1f}" for f in ("mock", "store", "load"))
    runs = ", ".join(str(int(d["result"]["requests_per_s"])) for d in ds)
    print(f"| {mode} | {conns} | {target} | {med(ds, 'requests_per_s'):,.0f} | "
          f"{med(ds, 'p50_ms'):.3f} | {med(ds, 'p99_ms'):.2f} | {med(ds, 'ttfb_p50_ms'):.3f} | "
          f"{added} | {proxy} | {others} | {runs} |")
print()
for mode in ("JSON", "SSE"):
    tg = rows.get((mode, 50, "tollgate"))
    for peer in ("nginx", "tensorzero"):
        other = rows.get((mode, 50, peer))
        if tg and other:
            ratio = med(tg, "requests_per_s") / med(other, "requests_per_s")
            print(f"{mode} at 50 connections: tollgate / {peer} = {ratio:.2f}x")
