#!/usr/bin/env python3
"""The hottest SASS lines of one ncu report (`ncu -i R --page source --csv --print-source sass`) with
their top stall reasons: python3 scripts/ncu-hotspots.py sass.csv [lines]."""
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
hdr_i = next(i for i, r in enumerate(rows) if any("Source" == c or "Address" in c for c in r))
hdr = rows[hdr_i]
body = [r for r in rows[hdr_i + 1:] if len(r) == len(hdr)]
def col(name):
    for i, h in enumerate(hdr):
        if h.strip() == name: return i
    for i, h in enumerate(hdr):
        if name.lower() in h.lower(): return i
    return None
src, allc, notiss = col("Source"), col("Warp Stall Sampling (All Samples)"), col("Warp Stall Sampling (Not-issued Samples)")
stall_cols = [i for i, h in enumerate(hdr) if h.startswith("stall_") or h.startswith("smsp__pcsamp_warps_issue_stalled")]
print("columns:", len(hdr), "| rows:", len(body), "| samples col:", hdr[allc] if allc is not None else None)
num = lambda v: float(v.replace(",", "") or 0) if v else 0.0
tot = sum(num(r[allc]) for r in body) or 1
print(f"total samples {tot:.0f}; instructions {len(body)}")
top = sorted(body, key=lambda r: -num(r[allc]))[:int(sys.argv[2]) if len(sys.argv) > 2 else 45]
for r in top:
    reasons = sorted(((num(r[i]), hdr[i]) for i in stall_cols), reverse=True)[:2]
    rs = " ".join(f"{n.replace('smsp__pcsamp_warps_issue_stalled_','')}={v:.0f}" for v, n in reasons if v > 0)
    print(f"{100*num(r[allc])/tot:5.1f}%  {r[0][:8]:>8}  {r[src][:60]:60}  {rs}")
# Totals per stall reason over every instruction: which wait dominates the kernel as a whole.
totals = sorted(((sum(num(r[i]) for r in body), hdr[i]) for i in stall_cols), reverse=True)
print("stall totals:", "  ".join(f"{n.replace('smsp__pcsamp_warps_issue_stalled_', '')}={100 * v / tot:.1f}%" for v, n in totals[:10] if v > 0))
