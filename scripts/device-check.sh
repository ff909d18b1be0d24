#!/usr/bin/env bash
# The full GPU battery, run on the device machine through device-run.sh:
#   bash scripts/device-run.sh bash scripts/device-check.sh [steps…]
# Steps (default: info tests verify sanitize runtime select torch; also demo phases build buildab (BUILDAB_VARIANTS) sanbuild hostwait exitcurve rowvar seedtune rowab kab baseab sanrow sanbucket
# attend step attsan sanbigbucket bucketvar chunkab fuzz soak quality report sanall sanrace saninit sanfast resident sanresident). Logs and records go to
# $OUT (when set) and bench/results/. Each step has its own time limit so one hang cannot eat the run.
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"
mkdir -p "$OUT" bench/results
marker=$(mktemp); touch "$marker"  # records written after this came from this run
steps="${*:-info tests verify sanitize runtime select torch}"
summary=()
run() { # name limit cmd…
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-10s rc=%-3s %4ss  %s' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$(grep -E 'passed|# (pass|fail)|ERROR SUMMARY|wrote|merged|mismatches' "$OUT/$name.log" | tr '\n' ' ' | cut -c1-150)")")
  tail -25 "$OUT/$name.log"
}
unpack_variants() { # the packed kernel variants (pack-device.sh ROW_BASE, ROW_DEFS, …) into /tmp/variants/<name>/,
  # each beside this build's other fatbins, so PQCACHE_KERNELS_DIR=<variant> swaps only the variant's
  rm -rf /tmp/variants && tar -C /tmp -xJf .device/variants.tar.xz
  for d in /tmp/variants/*; do for f in .device/app/kernels/dist/*.fatbin; do [ -f "$d/$(basename "$f")" ] || cp "$f" "$d/"; done; done
}
for s in $steps; do
  case $s in
    info) run info 60 pqcache info; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv ;;
    tests) run tests 300 env PQCACHE_REQUIRE_GPU=1 PQCACHE_GPU_CASES=60 node scripts/run-tests.mjs .device/app/dist/test/gpu ;;
    verify) run verify 240 pqcache verify --backend cuda --cases 500 --seed 11; grep -E "^FAIL" -A2 "$OUT/verify.log" | head -20 ;;
    demo) run demo 300 pqcache demo --backend cuda --steps 100 --seq-len 16384 ;;
    sanitize)
      run memcheck-tests 300 env PQCACHE_REQUIRE_GPU=1 PQCACHE_NO_FAULT_TEST=1 PQCACHE_GPU_CASES=20 compute-sanitizer --tool memcheck --report-api-errors no --target-processes all node scripts/run-tests.mjs .device/app/dist/test/gpu
      run memcheck 200 compute-sanitizer --tool memcheck --target-processes all pqcache verify --backend cuda --cases 12 --seed 3
      run racecheck 200 compute-sanitizer --tool racecheck --target-processes all pqcache verify --backend cuda --cases 6 --seed 4
      run initcheck 200 compute-sanitizer --tool initcheck --target-processes all pqcache verify --backend cuda --cases 6 --seed 5
      run synccheck 200 compute-sanitizer --tool synccheck --target-processes all pqcache verify --backend cuda --cases 6 --seed 6 ;;
    runtime) run runtime 120 pqcache bench --backend cuda --kind runtime --iters 3000 ;;
    select) run select 300 pqcache bench --backend cuda --config matrix --dump-dir /tmp/pqdump ;;
    phases) run phases 120 pqcache bench --backend cuda --config seed --phases --iters 100 --json /tmp/phases.json
            run phases-large 120 pqcache bench --backend cuda --config matrix --phases --iters 50 --json /tmp/phases-matrix.json ;;
    build) run build 300 pqcache bench --backend cuda --kind build --config matrix
           run torchbuild 300 python3 bench/torch_build_baseline.py --record "$(ls -t bench/results/build-*.json | head -1)" ;;
    rowab) # same-run A/B of the seed config: cluster kernel vs the planned (row) kernel, alternating
      for i in 1 2; do for k in cluster:8 row:1 row:2; do
        run "ab-${k/:/}-$i" 120 pqcache bench --backend cuda --config seed --step-kernel "${k%:*}" --cluster "${k#*:}" --iters 2000 --json "$OUT/ab-${k/:/}-$i.json"
      done; done
      for cl in 1 2; do run "phases-row$cl" 120 pqcache bench --backend cuda --config seed --step-kernel row --cluster $cl --phases --iters 100 --json "$OUT/phases-row$cl.json"; done ;;
    kab) # same-run A/B of the step kernels, alternating: bucket mode against the row kernel (seed config)
      # and against the pair clusters (B = 8, sk = 131072); then both row modes' phase stamps
      for i in 1 2 3; do for k in bucket row; do
        run "kab-seed-$k-$i" 120 pqcache bench --backend cuda --config seed --step-kernel $k --iters 300 --json "$OUT/kab-seed-$k-$i.json"
      done; done
      for i in 1 2; do for k in bucket cluster; do
        run "kab-b8-$k-$i" 120 pqcache bench --backend cuda --config seed --batch 8 --sk 131072 --step-kernel $k --iters 300 --json "$OUT/kab-b8-$k-$i.json"
      done; done
      for k in bucket row; do run phases-$k 120 pqcache bench --backend cuda --config seed --step-kernel $k --phases --iters 100 --json "$OUT/phases-$k.json"; done
      node scripts/ab-table.mjs "$OUT"/kab-*.json ;;
    baseab) # same-run A/B of the seed config: each BASE build (pack-device.sh BASE="…") and this one, alternating
      for i in 1 2 3; do for cli in $(cd /tmp/pqcache-node/bin && ls -d pqcache@* 2>/dev/null) pqcache; do
        v=${cli#pqcache@}; [ "$cli" = pqcache ] && v=new
        run "ab-$v-$i" 120 "$cli" bench --backend cuda --config seed --iters 3000 --json "$OUT/ab-$v-$i.json"
      done; done
      node scripts/ab-table.mjs "$OUT"/ab-*.json ;;
    buildab) # same-run A/B of the seed build: each BASE build and this one's round-kernel variants, alternating
      for i in 1 2 3; do
        for cli in $(cd /tmp/pqcache-node/bin && ls -d pqcache@* 2>/dev/null); do
          run "bab-${cli#pqcache@}-$i" 120 "$cli" bench --backend cuda --kind build --config seed --json "$OUT/bab-${cli#pqcache@}-$i.json"
        done
        for v in ${BUILDAB_VARIANTS:-2 3 4}; do  # round-kernel blocks per SM
          name="bab-new-b$v-$i"
          run "$name" 120 env PQCACHE_BUILD_BLOCKS="$v" pqcache bench --backend cuda --kind build --config seed --json "$OUT/$name.json"
        done
      done
      node scripts/ab-table.mjs "$OUT"/bab-*.json ;;
    sanbuild) # the build kernels (build.test.js: every round-kernel variant, k-step count and the largest tables): every tool
      for tool in ${SAN_TOOLS:-memcheck racecheck initcheck synccheck}; do  # racecheck takes ≈ 400 s (H100): SAN_TOOLS=racecheck alone
        run "san-$tool-build" 480 env PQCACHE_REQUIRE_GPU=1 compute-sanitizer --tool "$tool" --report-api-errors no --target-processes all node --test --test-concurrency=1 .device/app/dist/test/gpu/build.test.js
      done
      SAN_OVER="build tests (node --test test/gpu/build.test.js): the tensor-core k-means round kernels (mma.sync: KS 1-9, 2, 3 and 4 blocks per SM, 1-4 centroid chunks; the warp-specialized wgmma kernels of build_ws.cu on cc 9.0, bf16 and f16 keys; moving and recomputing rounds), init (block draw, check of positions < O), first sums (8192-, 4096- and 333-point blocks; check of positions >= O), finalize (NT/2 blocks a group), norms, publish, pq_build_check_keys (0 rounds) and pq_build_stage_keys, with non-finite keys planted" \
        node scripts/merge-sanitizer.mjs "$OUT" ;;
    hostwait) # same-run A/B of the seed config: the driver's host wait mode (PQCACHE_HOST_WAIT) unpinned and pinned to one core
      for i in 1 2; do for w in auto spin blocking; do for pin in all 2; do
        name="hw-$w-cpu$pin-$i"
        if [ $pin = all ]; then run "$name" 120 env PQCACHE_HOST_WAIT=$w pqcache bench --backend cuda --config seed --iters 3000 --json "$OUT/$name.json"
        else run "$name" 120 env PQCACHE_HOST_WAIT=$w taskset -c $pin pqcache bench --backend cuda --config seed --iters 3000 --json "$OUT/$name.json"; fi
      done; done; done
      node scripts/ab-table.mjs "$OUT"/hw-*.json ;;
    exitcurve|rowvar) # same-run A/B of the seed step: this build against the packed row-kernel variants
      # (pack with ROW_BASE / DIAG_EXIT); exitcurve: the exit-<phase> ones, rowvar: the base-<sha> ones
      unpack_variants
      if [ $s = exitcurve ]; then pat=exit-; else pat=${VAR_PAT:-base-}; fi  # VAR_PAT=def-: the ROW_DEFS ones
      for i in 1 2 3; do
        run "$s-this-$i" 120 pqcache bench --backend cuda --config seed --sk "${VAR_SK:-20000}" --iters 3000 --json "$OUT/$s-this-$i.json"
        for d in /tmp/variants/$pat*; do
          name="$s-$(basename "$d")-$i"
          run "$name" 120 env PQCACHE_KERNELS_DIR="$d" pqcache bench --backend cuda --config seed --sk "${VAR_SK:-20000}" --iters 3000 --json "$OUT/$name.json"
        done
      done
      node scripts/ab-table.mjs "$OUT"/$s-*.json ;;
    bucketvar) # same-run A/B of bucket mode's long spans: this build against the packed row-kernel
      # variants (pack with ROW_BASE), alternating, at VAR_ROWS ("B:sk …"); VAR_ONE_PASS names the
      # variants whose bucket kernels end at 655,360 positions (they skip longer rows)
      unpack_variants
      for i in 1 2; do for row in ${VAR_ROWS:-1:524288 8:524288 1:1000000 8:1000000}; do
        B=${row%:*} sk=${row#*:}
        run "bv-b$B-s$sk-this-$i" 120 pqcache bench --backend cuda --config seed --batch "$B" --sk "$sk" --iters 300 --json "$OUT/bv-b$B-s$sk-this-$i.json"
        for d in /tmp/variants/base-*; do
          v=$(basename "$d")
          [ "$sk" -gt 655616 ] && [[ " ${VAR_ONE_PASS:-} " == *" ${v#base-} "* ]] && continue
          run "bv-b$B-s$sk-$v-$i" 120 env PQCACHE_KERNELS_DIR="$d" pqcache bench --backend cuda --config seed --batch "$B" --sk "$sk" --iters 300 --json "$OUT/bv-b$B-s$sk-$v-$i.json"
        done
      done; done
      node scripts/ab-table.mjs "$OUT"/bv-*.json ;;
    seedtune) for cl in 1 2 4 8; do run "tune$cl" 60 pqcache bench --backend cuda --config seed --cluster "$cl" --json "/tmp/tune$cl.json"; done ;;
    attend) run attend 400 pqcache bench --backend cuda --kind attend --config matrix --iters 200 --warmup 30
            run torchattend 400 python3 bench/torch_attend_baseline.py --record "$(ls -t bench/results/attend-*.json | head -1)" ;;
    step) run step 400 pqcache bench --backend cuda --kind step --config matrix --layers 32 --iters 100 --warmup 20
          run torchstep 400 python3 bench/torch_attend_baseline.py --record "$(ls -t bench/results/step-*.json | head -1)" --iters 50 ;;
    attsan) run attsan 300 env PQCACHE_REQUIRE_GPU=1 compute-sanitizer --tool memcheck --report-api-errors no --target-processes all node --test .device/app/dist/test/gpu/attention.test.js
            run attrace 300 env PQCACHE_REQUIRE_GPU=1 compute-sanitizer --tool racecheck --target-processes all node --test .device/app/dist/test/gpu/attention.test.js ;;
    fuzz) run fuzz 560 pqcache fuzz --backend cuda --cases "${FUZZ_CASES:-100000}" --seed "${FUZZ_SEED:-2026}" ;;
    soak) # pinned to two cores: a migration of the stepping thread moves p50/p99 by 1.5/6 μs for the rest of a run
      run soak 240 taskset -c 2,3 pqcache soak --steps 1000000 --interleaved-steps 1000000 ;;
    quality) run quality 300 pqcache quality --backend cuda ;;
    report) run report 300 pqcache demo --backend cuda --report "$OUT/report" ;;
    sanall)
      for tool in ${SAN_TOOLS:-memcheck racecheck initcheck synccheck}; do
        run "san-$tool" "${SAN_LIMIT:-400}" env PQCACHE_REQUIRE_GPU=1 PQCACHE_NO_FAULT_TEST=1 PQCACHE_GPU_CASES=10 compute-sanitizer --tool "$tool" --report-api-errors no --target-processes all node --test --test-concurrency=1 ${SAN_FILES:-$(ls .device/app/dist/test/gpu/*.test.js)}
      done
      node scripts/merge-sanitizer.mjs "$OUT" ;;
    sanrace|saninit|sanfast) # the tools too slow over the whole suite: racecheck over the kernels' own tests
      if [ "$s" != saninit ]; then
        run san-racecheck 200 env PQCACHE_REQUIRE_GPU=1 compute-sanitizer --tool racecheck --target-processes all node --test --test-concurrency=1 .device/app/dist/test/gpu/attention.test.js .device/app/dist/test/gpu/build.test.js
        run san-racecheck-select 150 compute-sanitizer --tool racecheck --target-processes all pqcache verify --backend cuda --cases 6 --seed 4
      fi
      if [ "$s" != sanrace ]; then
        run san-initcheck 200 env PQCACHE_REQUIRE_GPU=1 PQCACHE_NO_FAULT_TEST=1 PQCACHE_GPU_CASES=5 compute-sanitizer --tool initcheck --report-api-errors no --target-processes all node --test --test-concurrency=1 $(ls .device/app/dist/test/gpu/*.test.js)
        run san-synccheck 200 env PQCACHE_REQUIRE_GPU=1 PQCACHE_NO_FAULT_TEST=1 PQCACHE_GPU_CASES=5 compute-sanitizer --tool synccheck --report-api-errors no --target-processes all node --test --test-concurrency=1 $(ls .device/app/dist/test/gpu/*.test.js)
      fi
      SAN_OVER_racecheck="attention + decode-layer and build tests" SAN_OVER_racecheck_select="6 verify cases (select and append kernels)" \
        SAN_OVER="every GPU test (PQCACHE_GPU_CASES=5)" node scripts/merge-sanitizer.mjs "$OUT" ;;
    resident) # resident steps: their tests, whether the resident kernels' bell acquire drops the L1
      # (CCTL.IVALL in the SASS), the seed config's graph and resident rows, and the runtime floors
      run resident-tests 200 env PQCACHE_REQUIRE_GPU=1 node --test --test-concurrency=1 --test-name-pattern 'resident' .device/app/dist/test/gpu/runtime.test.js .device/app/dist/test/gpu/select.test.js
      run resident-sass 60 bash -c 'cuobjdump -sass -fun pq_resident_row_m2_e16_c2 .device/app/kernels/dist/select_row.fatbin | grep -E "CCTL|LDG.*STRONG.SYS|ST.*STRONG.SYS|MEMBAR|FENCE" | sort | uniq -c'
      run resident-seed 120 pqcache bench --backend cuda --config seed --iters 300 ${RESIDENT_PHASES:+--phases} --json "$OUT/resident-seed.json"
      run resident-runtime 120 pqcache bench --backend cuda --kind runtime --iters 3000 --json "$OUT/resident-runtime.json" ;;
    sanresident) # resident steps (their tests): every tool
      for tool in memcheck racecheck initcheck synccheck; do
        run "san-$tool-resident" 400 env PQCACHE_REQUIRE_GPU=1 compute-sanitizer --tool "$tool" --report-api-errors no --target-processes all node --test --test-concurrency=1 --test-name-pattern 'resident' .device/app/dist/test/gpu/runtime.test.js .device/app/dist/test/gpu/select.test.js
      done
      SAN_OVER="resident steps (the resident tests of runtime.test.js and select.test.js)" node scripts/merge-sanitizer.mjs "$OUT" ;;
    sanrow) # the row step kernel (select.test.js has its instances, hand-overs and edge cases): every tool
      for tool in memcheck initcheck synccheck; do
        run "san-$tool-row" 300 env PQCACHE_REQUIRE_GPU=1 PQCACHE_NO_FAULT_TEST=1 compute-sanitizer --tool "$tool" --report-api-errors no --target-processes all node --test --test-concurrency=1 .device/app/dist/test/gpu/select.test.js
      done
      # racecheck over the whole select file takes > 140 s: the seed config on both cluster sizes, and 4 verify cases
      run san-racecheck-row 300 bash -c 'for cl in 1 2; do compute-sanitizer --tool racecheck --target-processes all pqcache bench --backend cuda --config seed --step-kernel row --cluster $cl --iters 2 --warmup 1 --json /tmp/rc$cl.json; done; compute-sanitizer --tool racecheck --target-processes all pqcache verify --backend cuda --cases 4 --seed 9'
      SAN_OVER="select.test.js (row kernel instances, hand-overs, GQA, ip, K=2048 ties, radix refinement)" \
        SAN_OVER_racecheck_row="seed config with clusters of 1 and 2 (bench, 3 steps each) + 4 verify cases" node scripts/merge-sanitizer.mjs "$OUT" ;;
    sanbucket) # bucket mode (its rebuild kernel too: the bench times 30 rebuilds): every tool on the seed
      # config, B = 8 at sk = 131072, and 8 verify cases (two of them forced onto bucket mode)
      for tool in memcheck racecheck initcheck synccheck; do
        run "san-$tool-bucket" 140 bash -c "set -e; for a in '' '--batch 8 --sk 131072'; do compute-sanitizer --tool $tool --target-processes all pqcache bench --backend cuda --config seed \$a --step-kernel bucket --iters 2 --warmup 1 --json /tmp/sb.json; done; compute-sanitizer --tool $tool --target-processes all pqcache verify --backend cuda --cases 8 --seed 21"
      done
      SAN_OVER="bucket mode: bench seed config and B=8 sk=131072 (steps and 30 bucket rebuilds each) + 8 verify cases" node scripts/merge-sanitizer.mjs "$OUT" ;;
    sanbigbucket) # bucket mode past 2^18 positions (16 and 20 bitmap words, 16 in chunks): memcheck over the
      # select test that steps each instance against the oracle (every score equal over 655,000 and
      # 1,000,000 positions included, eight chunks to 4,194,303); racecheck (too slow over that test,
      # or the bench, at these spans) over the step kernels only (--kernel-name) in
      # scripts/bucket-steps.mjs: 3 steps at each instance and in two chunks, 2 in eight, 1 all tied
      run san-memcheck-bigbucket 450 env PQCACHE_REQUIRE_GPU=1 compute-sanitizer --tool memcheck --report-api-errors no --target-processes all node --test --test-name-pattern 'bucket mode: exact across' .device/app/dist/test/gpu/select.test.js
      run san-racecheck-bigbucket 450 bash -c "set -e; for a in '400000 3' '600000 3' '600000 1 equal' '1000000 3' '1000000 1 equal' '4000000 2' '4000000 1 equal'; do compute-sanitizer --tool racecheck --kernel-name kns=pq_step_bucket --target-processes all node scripts/bucket-steps.mjs \$a; done"
      SAN_OVER_memcheck_bigbucket="select.test.js 'bucket mode: exact across rebuilds' (instances of 1-20 bitmap words and 16 in chunks, every score equal at 20 and in chunks, eight chunks of the wide instance)" \
        SAN_OVER_racecheck_bigbucket="pq_step_bucket kernels only: scripts/bucket-steps.mjs, 3 steps at sk 400000 (16 words), 600000 (20) and 1000000 (16 in two chunks), 2 at 4000000 (eight chunks, the wide instance), 1 step with every score equal at 600000, 1000000 and 4000000" node scripts/merge-sanitizer.mjs "$OUT" ;;
    chunkab) # bucket mode in chunks at sk = 1,000,000 (B = 1, 8; two chunks) and 4,000,000 (B = 1; eight; CHUNK_ROWS="B:sk …" for others):
      # the planned kernel (16 words) against the pair clusters, alternating processes; PyTorch on
      # the same inputs. Rows merged into bench/results/select-chunks-ab-<device>.json, then a table.
      for i in 1 2; do for row in ${CHUNK_ROWS:-1:1000000 8:1000000 1:4000000}; do for k in auto cluster; do
        B=${row%:*} sk=${row#*:}
        dump=(); [ "$i$k" = 1auto ] && dump=(--dump-dir /tmp/pqdump-chunks)
        run "cab-b$B-s$sk-$k-$i" 200 pqcache bench --backend cuda --config seed --batch "$B" --sk "$sk" --step-kernel $k --iters 300 "${dump[@]}" --json "$OUT/cab-b$B-s$sk-$k-$i.json"
      done; done; done
      rec=$(node scripts/merge-ab.mjs select-chunks-ab "bash scripts/device-run.sh bash scripts/device-check.sh chunkab (pqcache bench --backend cuda --config seed --batch B --sk SK --step-kernel auto|cluster --iters 300 for B:SK in 1:1000000 8:1000000 1:4000000, 2 alternating processes each; PyTorch on the first auto run's inputs)" "$OUT"/cab-*.json)
      run torch-chunks 400 python3 bench/torch_select_baseline.py --dump-dir /tmp/pqdump-chunks --record "$rec"
      node scripts/ab-table.mjs "$OUT"/cab-*.json ;;
    torch) run torch 400 python3 bench/torch_select_baseline.py --dump-dir /tmp/pqdump --record "$(ls -t bench/results/select-*.json | head -1)" ;;
  esac
done
find bench/results -name '*.json' -newer "$marker" -exec cp {} "$OUT/" \;
# At most 8 files come back from $OUT: fold the logs (and the report) into one archive, then the
# records into another, while there are more.
count() { find "$OUT" -type f | wc -l; }
if [ "$(count)" -gt 8 ]; then (cd "$OUT" && tar czf logs.tgz $(ls *.log 2>/dev/null) $( [ -d report ] && echo report) && rm -rf *.log report); fi
if [ "$(count)" -gt 8 ]; then (cd "$OUT" && tar czf records.tgz *.json && rm -f *.json); fi
echo; echo "== summary"; printf '%s\n' "${summary[@]}"
