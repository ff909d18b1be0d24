#!/usr/bin/env bash
# Runs a command on the GPU machine with the packed Node.js and app (see pack-device.sh):
#   bash scripts/device-run.sh pqcache info
#   bash scripts/device-run.sh node --test .device/app/dist/test/gpu/
# `pqcache` is the packed CLI (`pqcache@<sha>` the BASE ones, when packed); `node` is the packed
# Node.js. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=/tmp/pqcache-node/bin
if [ ! -x "$bin/node" ]; then
  mkdir -p "$bin"
  xz -dc .device/node.xz > "$bin/node"
  chmod +x "$bin/node"
fi
# The fatbins travel xz-packed (pack-device.sh): unpack them into .device/app once.
if [ -f .device/kernels.tar.xz ] && [ ! -f .device/app/kernels/dist/select_row.fatbin ]; then
  tar -xJf .device/kernels.tar.xz -C .device/app
fi
cat > "$bin/pqcache" <<SH
#!/usr/bin/env bash
exec "$bin/node" "$root/.device/app/dist/src/cli/main.js" "\$@"
SH
chmod +x "$bin/pqcache"
# The BASE builds of pack-device.sh, when packed: the same CLI at other commits (same-run A/B).
for dir in .device/app/bases/*/; do
  [ -d "$dir/dist" ] || continue
  sha=$(basename "$dir")
  cat > "$bin/pqcache@$sha" <<SH
#!/usr/bin/env bash
PQCACHE_COMMIT=$sha exec "$bin/node" "$root/$dir/dist/src/cli/main.js" "\$@"
SH
  chmod +x "$bin/pqcache@$sha"
done
export PATH="$bin:$PATH"
export PQCACHE_COMMIT="$(cat .device/COMMIT)"
exec "$@"
