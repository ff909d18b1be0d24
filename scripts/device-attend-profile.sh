#!/usr/bin/env bash
# Nsight Compute sections of the attention kernels (one sparse, one dense launch) on the attend
# bench's first config, to see where their time goes:
#   bash scripts/device-run.sh bash scripts/device-attend-profile.sh
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; mkdir -p "$OUT"
for k in sparse dense; do
  ncu --target-processes all -k "regex:pq_attend_$k" --launch-skip 30 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats \
    pqcache bench --backend cuda --kind attend --config seed --iters 20 --warmup 10 --json /tmp/a.json > "$OUT/ncu-$k.log" 2>&1
  grep -E "pq_attend|Duration|Throughput|Memory \[%\]|DRAM|L2 Hit|L1/TEX Hit|Achieved Occupancy|Theoretical Occupancy|Registers|Block Limit|Stall|Warp Cycles|Eligible|Issued Warp|No Eligible|One or More|Active Warps|Grid Size|Waves" "$OUT/ncu-$k.log" | head -60
done
