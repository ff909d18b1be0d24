#!/usr/bin/env bash
# Runs a command on the GPU machine with the packed Node.js and app (see pack-device.sh):
#   bash scripts/device-run.sh pqcache info
#   bash scripts/device-run.sh node --test .device/app/dist/test/gpu/
# `pqcache` is the packed CLI; `node` is the packed Node.js. Run from the repository root.
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
export PATH="$bin:$PATH"
export PQCACHE_COMMIT="$(cat .device/COMMIT)"
exec "$@"
