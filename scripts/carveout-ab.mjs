#!/usr/bin/env node
// Does the L1/shared-memory split move a graph step's device time? (diagnostic; GPU machine)
// An SM runs a block only in a carveout that holds the block's shared memory; a kernel with a
// different preference (the bench's 1×1 spin kernel, which uses none) can leave an SM in another
// split, and the SM must drain and reconfigure before the step's block lands there. This sets
// CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT on every kernel the process fetches
// (CARVEOUT=percent; CARVEOUT_ON=all|spin|step selects which), then runs the select bench's seed row
// (its graph, resident and chained steps), and with FLOORS=1 the empty-graph floor at the step's
// launch shape. Run alternating processes, one per setting:
//   bash scripts/device-run.sh node scripts/carveout-ab.mjs          # the driver's default
//   CARVEOUT=100 bash scripts/device-run.sh node scripts/carveout-ab.mjs
import { join } from 'node:path';
const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { Module } = await import(join(app, 'cuda/module.js'));
const { check, driver } = await import(join(app, 'cuda/driver.js'));
const { SEED_BENCH, benchSelectCuda } = await import(join(app, 'bench/select-bench.js'));

const CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9;
const carveout = process.env.CARVEOUT === undefined ? undefined : Number(process.env.CARVEOUT);
const on = process.env.CARVEOUT_ON ?? 'all';
const wanted = (name) => on === 'all' || (on === 'spin' ? name === 'pq_spin_ns' : name !== 'pq_spin_ns');
const set = new Set();
const fetch = Module.prototype.kernel;
Module.prototype.kernel = function (name) {
  const k = fetch.call(this, name);
  if (carveout !== undefined && wanted(name) && !set.has(k)) {
    check(`cuFuncSetAttribute(${name}, carveout)`, driver().cuFuncSetAttribute(k.handle, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, carveout));
    set.add(k);
  }
  return k;
};

const tag = carveout === undefined ? 'default' : `${carveout}% on ${on}`;
const { rows } = benchSelectCuda(SEED_BENCH, { iters: Number(process.env.ITERS ?? 300), warmup: 100, seed: 3 }, 1);
const out = { carveout: tag };
for (const r of rows) {
  const name = r.impl.replace('pqcache-cuda', '').trim() || 'graph';
  out[`${name} wall`] = r.wall_us?.median;
  if (r.gpu_us) out[`${name} gpu`] = r.gpu_us.median;
}
out.kernels = [...set].map((k) => k.name).join(' ');

if (process.env.FLOORS === '1') {
  // The empty kernel at the seed step's shape: 96 blocks of 1024 threads, with and without the
  // step's shared-memory footprint (a block of the row kernel holds ≈ 100+ KB), in one-kernel graphs.
  const { emptyGraphFloors } = await import('./empty-graph-floor.mjs');
  const floors = await emptyGraphFloors(app, [
    ['empty 1x1', 'pq_empty', { grid: [1, 1, 1], block: [1, 1, 1] }],
    ['empty 96x1024', 'pq_empty', { grid: [96, 1, 1], block: [1024, 1, 1] }],
    ['empty 96x1024 smem 200K', 'pq_empty', { grid: [96, 1, 1], block: [1024, 1, 1], sharedBytes: 200 << 10 }],
  ], { iters: 1300, rounds: 1 });
  for (const [what, us] of Object.entries(floors)) if (what !== 'events alone') out[`${what} gpu`] = us;
}
console.log(`CARVEOUT ${JSON.stringify(out)}`);
