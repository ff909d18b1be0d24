#!/usr/bin/env bash
# Where the seed-config step kernel waits, instruction by instruction (ncu PC sampling), plus the
# in-kernel phase stamps. Prints the hottest SASS lines with their stall reasons.
#   bash scripts/device-run.sh bash scripts/device-select-hotspots.sh [cluster]
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; mkdir -p "$OUT"
CL="${1:-8}"
pqcache bench --backend cuda --config seed --cluster "$CL" --phases --iters 200 --json /tmp/phases.json > "$OUT/phases.log" 2>&1
grep -A14 "^phases" "$OUT/phases.log"
ncu --clock-control none --target-processes all -k regex:pq_step_pairs --launch-skip 30 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section LaunchStats --section Occupancy --import-source no \
  -f -o /tmp/hot pqcache bench --backend cuda --config seed --cluster "$CL" --iters 20 --warmup 20 --json /tmp/p.json > "$OUT/ncu-hot.log" 2>&1
tail -3 "$OUT/ncu-hot.log"
ncu -i /tmp/hot.ncu-rep --page details > "$OUT/ncu-details.log" 2>&1
grep -E "Duration|Warp Cycles Per Issued|Issued Warp|Registers|Stall|Shared Memory Configuration|Achieved Occupancy|Theoretical Occupancy|Block Limit" "$OUT/ncu-details.log" | head -30
ncu -i /tmp/hot.ncu-rep --page source --csv --print-source sass > "$OUT/ncu-sass.csv" 2>&1
python3 - "$OUT/ncu-sass.csv" <<'PY'
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
top = sorted(body, key=lambda r: -num(r[allc]))[:45]
for r in top:
    reasons = sorted(((num(r[i]), hdr[i]) for i in stall_cols), reverse=True)[:2]
    rs = " ".join(f"{n.replace('smsp__pcsamp_warps_issue_stalled_','')}={v:.0f}" for v, n in reasons if v > 0)
    print(f"{100*num(r[allc])/tot:5.1f}%  {r[0][:8]:>8}  {r[src][:60]:60}  {rs}")
PY
