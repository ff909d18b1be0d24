#!/usr/bin/env bash
# Warp stall reasons (per issued instruction) and instruction counts of the decode-step kernels.
#   bash scripts/device-run.sh bash scripts/device-stalls.sh [slice-len]
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; mkdir -p "$OUT"
SL="${1:-4096}"
# caches kept: steady-state steps (device-select-hotspots.sh)
ncu --clock-control none --cache-control none --target-processes all -k regex:pq_ --launch-skip 40 --launch-count 2 \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,smsp__cycles_active.avg,gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active" \
  pqcache bench --backend cuda --config seed --iters 10 --warmup 10 --slice-len "$SL" --json /tmp/p.json > "$OUT/stalls.log" 2>&1
awk '/pq_/ {print} /gpu__time|inst_executed|cycles_active|warps_active/ {print} /issue_stalled/ && $NF+0 > 0.3 {print}' "$OUT/stalls.log" | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//'
