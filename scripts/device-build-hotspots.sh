#!/usr/bin/env bash
# Where the k-means round kernel spends its time on the seed build config: per-kernel durations
# of one build, then ncu PC sampling of the first round (all points move), of round 5 and of the
# final assignment (no moves), with the hottest SASS lines and their stall reasons. The keys come
# from SRC (build-hkv-scan.mjs: device-bf16, the wgmma rounds on Hopper, by default; device-f32 or
# host-f32 for the mma.sync rounds).
#   bash scripts/device-run.sh bash scripts/device-build-hotspots.sh      (SRC=device-f32 …)
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; mkdir -p "$OUT"
export HKV=32 REPS=1 SRC="${SRC:-device-bf16}"
bench=(node scripts/build-hkv-scan.mjs)
ncu --target-processes all --metrics gpu__time_duration.sum --csv "${bench[@]}" > "$OUT/ncu-times.csv" 2>/dev/null
python3 - "$OUT/ncu-times.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
h = next(r for r in rows if 'Kernel Name' in r)
ki, vi, ui = h.index('Kernel Name'), h.index('Metric Value'), h.index('Metric Unit')
scale = {'nsecond': 1e-3, 'ns': 1e-3, 'usecond': 1, 'us': 1, 'msecond': 1e3, 'ms': 1e3}
seq = [(r[ki].split('(')[0], float(r[vi].replace(',', '')) * scale.get(r[ui], 1)) for r in rows[rows.index(h) + 1:] if len(r) > vi]
last = max(i for i, (k, _) in enumerate(seq) if k.startswith('pq_build_init'))
for k, v in seq[last:]: print(f'{k:24s} {v:9.1f} us')
print(f'{"sum":24s} {sum(v for _, v in seq[last:]):9.1f} us')
PY
for spec in first:0 mid:5 final:10; do
  which=${spec%:*}; skip=${spec#*:}
  ncu --clock-control none --target-processes all -k regex:pq_build_round --launch-skip $skip --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section LaunchStats --section Occupancy --section SpeedOfLight --import-source no \
    -f -o /tmp/build-$which "${bench[@]}" > "$OUT/ncu-$which.log" 2>&1
  ncu -i /tmp/build-$which.ncu-rep --page details > "$OUT/ncu-details-$which.log" 2>&1
  echo "== $which round"
  grep -E "Duration|Memory Throughput|DRAM Throughput|Warp Cycles Per Issued|Issued Warp|Executed Ipc|Registers|Achieved Occupancy|Theoretical Occupancy|Block Limit|Executed Instructions " "$OUT/ncu-details-$which.log" | head -20
  ncu -i /tmp/build-$which.ncu-rep --page source --csv --print-source sass > "$OUT/ncu-sass-$which.csv" 2>&1
  python3 scripts/ncu-hotspots.py "$OUT/ncu-sass-$which.csv" 25
done
