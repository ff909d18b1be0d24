#!/usr/bin/env bash
# Runs a command on the GPU machine with the packed Node.js and app (see pack-device.sh):
#   bash scripts/device-run.sh pqcache info
#   bash scripts/device-run.sh node --test .device/app/dist/test/gpu/
# `pqcache` is the packed CLI (`pqcache-base` the BASE one, when packed); `node` is the packed
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
cat > "$bin/pqcache" <<SH
#!/usr/bin/env bash
exec "$bin/node" "$root/.device/app/dist/src/cli/main.js" "\$@"
SH
chmod +x "$bin/pqcache"
# The BASE build of pack-device.sh, when packed: the same CLI at another commit (same-run A/B).
if [ -d .device/app/base/dist ]; then
  cat > "$bin/pqcache-base" <<SH
#!/usr/bin/env bash
PQCACHE_COMMIT="$(cat "$root/.device/app/base/COMMIT")" exec "$bin/node" "$root/.device/app/base/dist/src/cli/main.js" "\$@"
SH
  chmod +x "$bin/pqcache-base"
fi
export PATH="$bin:$PATH"
export PQCACHE_COMMIT="$(cat .device/COMMIT)"
exec "$@"
