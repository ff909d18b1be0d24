#!/usr/bin/env node
// Where the step graph's fixed cost comes from: wall-clock (launch → sync) and CUDA-event time of
// one-kernel graphs whose blocks all exit at once, for the launch shapes of the step kernels.
//   bash scripts/device-run.sh node scripts/launch-floor.mjs   (device; reads .device/app/dist)
//   node scripts/launch-floor.mjs                              (here, from dist/)
import { dist } from './local-dist.mjs';
const { CudaContext } = await import(`${dist}/src/cuda/context.js`);
const { GraphExec } = await import(`${dist}/src/cuda/graph.js`);
const { LaunchArgs, launch } = await import(`${dist}/src/cuda/launch.js`);
const { DeviceBuffer } = await import(`${dist}/src/cuda/memory.js`);
const { Event, Stream } = await import(`${dist}/src/cuda/stream.js`);
const { loadKernels } = await import(`${dist}/src/pq/kernels.js`);
const { nowUs, summarize } = await import(`${dist}/src/bench/stats.js`);

const iters = Number(process.argv[2] ?? 3000);
CudaContext.primary(); // current on this thread
const stream = new Stream();
const seq = new DeviceBuffer(16);
// The step kernels' argument list with B = 0: no select rows, no append blocks, so every block exits.
// (kernels/select_common.cuh PQ_STEP_PARAMS; src/pq/cuda-cache.ts STEP_PAIRS_ARGS).
const STEP = ['ptr', 'i32', 'i32', 'i32', 'ptr', 'i32', 'u64', 'u64', 'u64', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'ptr', 'ptr', 'ptr',
  'ptr', 'ptr', 'i32', 'u64', 'i32', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32',
  'i32', 'i32', 'ptr', 'ptr', 'ptr', 'ptr'];
const stepArgs = new LaunchArgs(STEP).setAll([0n, 0, 0, 0, 0n, 0, 0n, 0n, 0n, 0n, 0n, 0n, seq.ptr, seq.ptr, 0, 0n, 0n, 0n, 0n, 0n, 0, 0n, 0, 0n,
  0, 1, 1, 128, 64, 6, 64, 1, 128, 128, 128, 128, 0, 0, 0, 0, 0n, 0n, 0n, 0n]);
const none = new LaunchArgs([]);
const cases = [
  ['pq_empty 1x1', 'runtime', 'pq_empty', [1, 1, 1], [1, 1, 1], none],
  ['pq_empty (1,64)x1024', 'runtime', 'pq_empty', [1, 64, 1], [1024, 1, 1], none],
  ['pq_step_row_m2_e32 (1,64)x1024, all exit', 'select_row', 'pq_step_row_m2_e32', [1, 64, 1], [1024, 1, 1], stepArgs],
  ['pq_step_row_m2_e16_c2 (2,48)x1024 clusters, all exit', 'select_row', 'pq_step_row_m2_e16_c2', [2, 48, 1], [1024, 1, 1], stepArgs],
  ['pq_step_pairs_m2_p8 (8,36)x256 clusters, all exit', 'select_pairs', 'pq_step_pairs_m2_p8', [8, 36, 1], [256, 1, 1], stepArgs],
];
const ev0 = new Event();
const ev1 = new Event();
const f = (x) => x.toFixed(2).padStart(7);
console.log('launch shape'.padEnd(52), 'wall med    p90   gpu med    p90  launch med');
for (const [name, family, kname, grid, block, args] of cases) {
  const kernel = loadKernels(family).kernel(kname);
  const graph = GraphExec.capture(stream, () => launch(kernel, { grid, block }, args, stream));
  const wall = [];
  const gpu = [];
  const host = []; // cuGraphLaunch from call to return
  for (let i = 0; i < 300 + iters; i++) {
    const t0 = nowUs();
    graph.launch(stream);
    const tl = nowUs();
    stream.synchronize();
    const t1 = nowUs();
    ev0.record(stream);
    graph.launch(stream);
    ev1.record(stream);
    ev1.synchronize();
    if (i < 300) continue;
    wall.push(t1 - t0);
    host.push(tl - t0);
    gpu.push(ev1.elapsedSince(ev0) * 1000);
  }
  graph.dispose();
  const w = summarize(wall);
  const g = summarize(gpu);
  console.log(name.padEnd(52), f(w.median), f(w.p90), ' ', f(g.median), f(g.p90), '  ', f(summarize(host).median));
}
