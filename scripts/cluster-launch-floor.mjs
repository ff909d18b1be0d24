#!/usr/bin/env node
// What does a clustered launch cost the device? (diagnostic; GPU machine)
// The seed step's row kernel runs in clusters of two blocks (_c2). Earlier floors timed only plain
// one-kernel graphs (2.8–3.1 μs by events, whatever the grid). This times, by CUDA events with the
// stream kept busy ahead (as the select bench's GPU column), one-kernel graphs of an empty kernel:
// plain, in clusters of 2 and of 4, at 1 block a cluster's worth and at the seed step's 64 select
// blocks (+ 32 append blocks: 96), with and without 200 KB of dynamic shared memory; a plain one
// with 48 64-bit parameters; and the events alone. If clusters cost the launch more than a plain grid does, a step of unclustered blocks
// would get that back.
//   bash scripts/device-run.sh node scripts/cluster-launch-floor.mjs
import { join } from 'node:path';
const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { CudaContext } = await import(join(app, 'cuda/context.js'));
const { loadKernels } = await import(join(app, 'pq/kernels.js'));
const { GraphExec } = await import(join(app, 'cuda/graph.js'));
const { LaunchArgs, launch } = await import(join(app, 'cuda/launch.js'));
const { Stream } = await import(join(app, 'cuda/stream.js'));
const { BusyQueue, eventTimes } = await import(join(app, 'bench/busy-queue.js'));
const { summarize } = await import(join(app, 'bench/stats.js'));

const ITERS = Number(process.env.ITERS ?? 3000);
const WARMUP = 300;
CudaContext.primary(); // current on this thread before any module loads
const mod = loadKernels('runtime');
const stream = new Stream();
const none = new LaunchArgs([]);
const params48 = new LaunchArgs(Array(48).fill('u64')).setAll(Array.from({ length: 48 }, (_, i) => BigInt(i)));
const busy = new BusyQueue();
const smem = 200 << 10;
const cases = [
  ['plain 2x1', 'pq_empty', 2, 0],
  ['c2 2x1', 'pq_empty_c2', 2, 0],
  ['c4 4x1', 'pq_empty_c4', 4, 0],
  ['plain 96x1024', 'pq_empty', 96, 0],
  ['c2 96x1024', 'pq_empty_c2', 96, 0],
  ['c4 96x1024', 'pq_empty_c4', 96, 0],
  ['plain 96x1024 smem 200K', 'pq_empty', 96, smem],
  ['c2 96x1024 smem 200K', 'pq_empty_c2', 96, smem],
  ['plain 64x1024 smem 200K', 'pq_empty', 64, smem],
  ['c2 64x1024 smem 200K', 'pq_empty_c2', 64, smem],
  ['plain 96x1024, 48 u64 parameters', 'pq_empty_params48', 96, 0],
];
const out = {};
// Alternate the cases over rounds, so a drift of the device's clocks reads on all of them alike.
const graphs = cases.map(([what, name, blocks, sharedBytes]) => {
  const k = mod.kernel(name);
  const shape = { grid: [blocks, 1, 1], block: [blocks > 4 ? 1024 : 1, 1, 1], sharedBytes };
  const args = name === 'pq_empty_params48' ? params48 : none;
  return { what, g: GraphExec.capture(stream, () => launch(k, shape, args, stream)), times: [] };
});
const eventsAlone = [];
for (let round = 0; round < 3; round++) {
  eventsAlone.push(...eventTimes(stream, ITERS, () => {}, busy).slice(WARMUP));
  for (const c of graphs) c.times.push(...eventTimes(stream, ITERS, () => c.g.launch(stream), busy).slice(WARMUP));
}
out['events alone'] = Math.round(summarize(eventsAlone).median * 1000) / 1000;
for (const c of graphs) {
  out[c.what] = Math.round(summarize(c.times).median * 1000) / 1000;
  c.g.dispose();
}
busy.dispose();
none.dispose();
params48.dispose();
stream.dispose();
console.log(`CLUSTER_FLOOR ${JSON.stringify(out)}`);
