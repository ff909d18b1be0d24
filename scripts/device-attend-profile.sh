#!/usr/bin/env bash
# Nsight Compute view of the attention kernels (one sparse, one dense launch) on the attend bench's
# first config: duration, throughput, occupancy, instruction count and the warp stall reasons.
#   bash scripts/device-run.sh bash scripts/device-attend-profile.sh
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; mkdir -p "$OUT"
for k in sparse dense; do
  ncu --target-processes all -k "regex:pq_attend_$k" --launch-skip 30 --launch-count 1 \
    --metrics "gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__grid_size,launch__occupancy_limit_registers,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    pqcache bench --backend cuda --kind attend --config seed --iters 20 --warmup 10 --json /tmp/a.json > "$OUT/ncu-$k.log" 2>&1
  awk '/pq_attend/ {print} /gpu__time|dram__|inst_executed|warps_active|grid_size|limit_registers/ {print} /issue_stalled/ && $NF+0 > 0.2 {print}' "$OUT/ncu-$k.log" | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//'
done
