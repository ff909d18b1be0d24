#!/usr/bin/env python3
"""Gaps between consecutive GPU activities in an nsys cuda_gpu_trace CSV (diagnostic).
   python3 scripts/graph-gaps.py trace.csv   → per kernel→kernel transition: count, median gap (μs)
   Groups activities into bursts (gap < 40 μs) and prints each burst's span, busy time and gaps."""
import csv, sys, statistics
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1])))
def col(r, *names):
    for n in names:
        if n in r: return r[n]
    raise KeyError(names)
acts = sorted((int(col(r, 'Start (ns)')), int(col(r, 'Duration (ns)')), col(r, 'Name')) for r in rows)
bursts, cur = [], [acts[0]]
for a in acts[1:]:
    p = cur[-1]
    if a[0] - (p[0] + p[1]) < 40000: cur.append(a)
    else: bursts.append(cur); cur = [a]
bursts.append(cur)
trans = defaultdict(list)
print(f"{'burst':>5} {'n':>4} {'span us':>9} {'busy us':>9} {'gaps us':>9}")
for i, b in enumerate(bursts):
    span = (b[-1][0] + b[-1][1] - b[0][0]) / 1e3
    busy = sum(x[1] for x in b) / 1e3
    gaps = 0.0
    for p, a in zip(b, b[1:]):
        g = (a[0] - (p[0] + p[1])) / 1e3
        gaps += g
        trans[(p[2][:40], a[2][:40])].append(g)
    if len(b) > 3: print(f"{i:>5} {len(b):>4} {span:9.1f} {busy:9.1f} {gaps:9.1f}")
print('\ntransition (first 40 chars of names): count, median gap us, min')
for k, v in sorted(trans.items(), key=lambda kv: -statistics.median(kv[1]) * len(kv[1]))[:25]:
    print(f"{len(v):5d} {statistics.median(v):7.2f} {min(v):7.2f}  {k[0]} -> {k[1]}")
