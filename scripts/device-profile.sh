#!/usr/bin/env bash
# Per-kernel GPU durations and stall breakdown of the decode step on the seed config (ncu).
#   bash scripts/device-run.sh bash scripts/device-profile.sh [slice-len]
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; mkdir -p "$OUT"
SL="${1:-4096}"
NCU="ncu --clock-control none --cache-control none --target-processes all"  # caches kept: steady-state steps (device-select-hotspots.sh)
$NCU --metrics gpu__time_duration.sum,sm__cycles_active.avg,launch__grid_size,launch__registers_per_thread \
  -k regex:pq_ --launch-skip 40 --launch-count 6 \
  pqcache bench --backend cuda --config seed --iters 10 --warmup 10 --slice-len "$SL" --json /tmp/p.json > "$OUT/ncu-durations.log" 2>&1
grep -E "pq_|gpu__time|sm__cycles|grid_size|registers" "$OUT/ncu-durations.log" | head -40
$NCU --section WarpStateStats --section SpeedOfLight --section Occupancy --section LaunchStats -k regex:pq_select --launch-skip 20 --launch-count 1 \
  pqcache bench --backend cuda --config seed --iters 5 --warmup 10 --slice-len "$SL" --json /tmp/p.json > "$OUT/ncu-select.log" 2>&1
grep -vE "^==PROF==|^bench|^ *$" "$OUT/ncu-select.log" | grep -E "Stall|Duration|Throughput|Occupancy|Warp Cycles|Issued|Eligible|Active Warps|Registers|Block Size|Grid Size|Waves" | head -50
