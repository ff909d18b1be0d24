#!/usr/bin/env bash
# Where the seed-config step kernel waits, instruction by instruction (ncu PC sampling), plus the
# in-kernel phase stamps. Prints the hottest SASS lines with their stall reasons.
#   bash scripts/device-run.sh bash scripts/device-select-hotspots.sh [cluster | row | auto] [bench args…]
# e.g. `… device-select-hotspots.sh auto --batch 8 --sk 131072` (the planned kernel of that config).
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; mkdir -p "$OUT"
CL="${1:-8}"
shift || true
if [ "$CL" = row ]; then PICK=(--step-kernel row); KREGEX=pq_step_row
elif [ "$CL" = auto ]; then PICK=("$@"); KREGEX=pq_step
else PICK=(--step-kernel cluster --cluster "$CL" "$@"); KREGEX=pq_step_pairs; fi
pqcache bench --backend cuda --config seed "${PICK[@]}" --phases --iters 200 --json /tmp/phases.json > "$OUT/phases.log" 2>&1
grep -A14 "^phases" "$OUT/phases.log"
# --cache-control none: the step replays the same kernel on data that stays in L2, so a profile with
# ncu's default flush of every cache before the kernel (instruction caches included) measures a cold
# step: 24% of the samples stall_no_inst and a 10.4 μs kernel, against 8.5% and 9.7 μs kept warm
# (H100, session 39).
ncu --clock-control none --cache-control none --target-processes all -k "regex:$KREGEX" --launch-skip 30 --launch-count 1 \
  --section SpeedOfLight --section SourceCounters --section WarpStateStats --section LaunchStats --section Occupancy \
  --warp-sampling-interval 0 --import-source no \
  -f -o /tmp/hot pqcache bench --backend cuda --config seed "${PICK[@]}" --iters 20 --warmup 20 --json /tmp/p.json > "$OUT/ncu-hot.log" 2>&1
tail -3 "$OUT/ncu-hot.log"
ncu -i /tmp/hot.ncu-rep --page details > "$OUT/ncu-details.log" 2>&1
grep -E "Duration|SM Frequency|DRAM Throughput|L2 Cache Throughput|Compute \(SM\)|Warp Cycles Per Issued|Issued Warp|Registers|Stall|Shared Memory Configuration|Achieved Occupancy|Theoretical Occupancy|Block Limit" "$OUT/ncu-details.log" | head -30
ncu -i /tmp/hot.ncu-rep --page source --csv --print-source sass > "$OUT/ncu-sass.csv" 2>&1
python3 scripts/ncu-hotspots.py "$OUT/ncu-sass.csv"
