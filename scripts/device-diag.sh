#!/usr/bin/env bash
# One device call's worth of diagnosis for the seed-config step (session 6): SASS of the seed
# instance, launch floor (with the cuGraphLaunch host time), ncu hotspots of the row kernel, then
# the device-check steps given (e.g. baseab tests verify). Everything lands in $OUT/diag.tgz; a
# short summary is printed last.
#   bash scripts/device-run.sh bash scripts/device-diag.sh [device-check steps…]
set -uo pipefail
OUT="${OUT:-/tmp/pqcache-out}"; D="$OUT/diag-logs"; mkdir -p "$D"
if command -v cuobjdump >/dev/null; then
  cuobjdump -sass -fun pq_step_row_m2_e16_c2 .device/app/kernels/dist/select_row.fatbin | gzip > "$OUT/row-m2-e16-c2.sass.gz"
fi
timeout 120 node scripts/launch-floor.mjs 3000 > "$D/floor.txt" 2>&1
timeout 200 bash scripts/device-select-hotspots.sh row > "$D/hot.txt" 2>&1
bash scripts/device-check.sh "$@" > "$D/check.txt" 2>&1
echo "== launch floor"; cat "$D/floor.txt"
echo "== hotspots (row)"; grep -E "Duration|SM Frequency|Warp Cycles Per Issued|total samples" "$D/hot.txt" | head -8
grep -A6 "^phases" "$D/hot.txt" | head -8
echo "== check"; sed -n '/^== summary/,$p' "$D/check.txt"
grep -A14 "^record " "$D/check.txt" | head -16
(cd "$OUT" && tar czf diag.tgz --exclude=diag.tgz $(ls | grep -v '^diag.tgz$') && find . -maxdepth 1 ! -name diag.tgz ! -name . -exec rm -rf {} +)
