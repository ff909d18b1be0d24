#!/usr/bin/env bash
# One device call's worth of diagnosis for the seed-config step (session 6): SASS of the seed
# instance, launch floor (with the cuGraphLaunch host time), the per-call RSS bisect, ncu hotspots
# of the row kernel, then the device-check steps given (e.g. baseab tests verify). Everything lands
# in $OUT/diag.tgz; a short summary is printed last.
#   bash scripts/device-run.sh bash scripts/device-diag.sh [device-check steps…]
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; mkdir -p "$OUT"
if command -v cuobjdump >/dev/null; then
  cuobjdump -sass -fun pq_step_row_m2_e16_c2 .device/app/kernels/dist/select_row.fatbin | gzip > "$OUT/row-m2-e16-c2.sass.gz"
fi
timeout 120 node scripts/launch-floor.mjs 3000 > "$OUT/floor.log" 2>&1
timeout 120 node --expose-gc scripts/rss-bisect.mjs 4000 > "$OUT/rss.log" 2>&1
timeout 200 bash scripts/device-select-hotspots.sh row > "$OUT/hot.log" 2>&1
bash scripts/device-check.sh "$@" > "$OUT/check.log" 2>&1
echo "== launch floor"; cat "$OUT/floor.log"
echo "== rss bisect"; cat "$OUT/rss.log"
echo "== hotspots (row)"; grep -E "Duration|SM Frequency|Issued Warp|Warp Cycles Per Issued|Executed Ipc|Executed Instructions|total samples" "$OUT/hot.log" "$OUT/ncu-details.log" 2>/dev/null | head -20
sed -n '/^phases/,/^$/p' "$OUT/hot.log" | head -16
echo "== check"; sed -n '/^== summary/,$p' "$OUT/check.log"
grep -A12 "^record " "$OUT/check.log" | head -14
(cd "$OUT" && tar czf diag.tgz --exclude=diag.tgz $(ls | grep -v '^diag.tgz$') && find . -maxdepth 1 ! -name diag.tgz ! -name . -exec rm -rf {} +)
