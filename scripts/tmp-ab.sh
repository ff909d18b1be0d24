#!/usr/bin/env bash
# temp: session 24 run 1
set -uo pipefail
mkdir -p $OUT/x
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cuobjdump -sass .device/app/kernels/dist/build.fatbin | grep -oE "(ATOMS|CALL)[A-Z0-9._]*" | sort | uniq -c
PQCACHE_REQUIRE_GPU=1 node --test .device/app/dist/test/gpu/build.test.js 2>&1 | grep -E "^# (pass|fail)|^not ok|Error|assert" | head -20
B=$(ls .device/app/bases)
for i in 1 2 3; do
  pqcache@$B bench --backend cuda --kind build --config seed --json $OUT/x/base-$i.json > $OUT/x/base-$i.log 2>&1
  pqcache bench --backend cuda --kind build --config seed --json $OUT/x/new4-$i.json > $OUT/x/new4-$i.log 2>&1
  PQCACHE_BUILD_BLOCKS=3 pqcache bench --backend cuda --kind build --config seed --json $OUT/x/new3-$i.json > $OUT/x/new3-$i.log 2>&1
  PQCACHE_BUILD_LOCAL_SUMS=0 pqcache bench --backend cuda --kind build --config seed --json $OUT/x/off4-$i.json > $OUT/x/off4-$i.log 2>&1
done
python3 - <<'PY'
import json,glob,os,statistics as st
out=os.environ['OUT']+'/x'
for v in ['base','new4','new3','off4']:
    meds=[];ex=None
    for f in sorted(glob.glob(f'{out}/{v}-*.json')):
        d=json.load(open(f)); r=d['rows'][0]; meds.append(r['gpu_us']['median']); ex=r['extra']
    print(v, 'gpu med ms', [round(m/1000,3) for m in meds], 'qe', ex and ex['quantization_error'], ex and ex.get('round_kernel'), ex and ex.get('round_shared'), ex and ex.get('local_sum_groups_per_round'))
    if ex: print('   changed', ex['changed_share_per_round'], 'flagged', ex['flagged_share_per_round'])
PY
tail -3 $OUT/x/new4-1.log
tar -C $OUT -cJf $OUT/res.tar.xz x && rm -rf $OUT/x
