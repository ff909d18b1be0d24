#!/usr/bin/env node
// Does the graph cost the step device time? CUDA-event time with the stream kept busy ahead (the
// device alone) of: events alone, an empty kernel by cuLaunchKernel and as a one-node graph, and the
// seed step (device inputs) as its graph and launched directly; then the host's enqueue and wall.
//   bash scripts/device-run.sh node scripts/launch-vs-graph.mjs [iters]   (session 23)
import { dist } from './local-dist.mjs';
const I = (p) => import(`${dist}/src/${p}`);
const { CudaContext } = await I('cuda/context.js');
const { GraphExec } = await I('cuda/graph.js');
const { LaunchArgs, launch } = await I('cuda/launch.js');
const { DeviceArena, copies } = await I('cuda/memory.js');
const { Stream } = await I('cuda/stream.js');
const { loadKernels } = await I('pq/kernels.js');
const { summarize, nowUs } = await I('bench/stats.js');
const { BusyQueue, eventTimes } = await I('bench/busy-queue.js');
const { CudaPQCache } = await I('pq/cuda-cache.js');
const { SEED_BENCH, benchLayout, randomState } = await I('bench/select-bench.js');
const { deviceTensor } = await I('tensor/device-tensor.js');
const { SplitMix32 } = await I('pq/rng.js');

const N = Number(process.argv[2] ?? 2000);
CudaContext.primary();
const stream = new Stream();
const busy = new BusyQueue();
const empty = loadKernels('runtime').kernel('pq_empty');
const none = new LaunchArgs([]);
const one = { grid: [1, 1, 1], block: [1, 1, 1] };
const rows = [];
const med = (name, xs) => { const s = summarize(xs.slice(200)); rows.push([name, s.median, s.p90]); };
med('events only', eventTimes(stream, N, () => {}, busy));
med('empty kernel, cuLaunchKernel', eventTimes(stream, N, () => launch(empty, one, none, stream), busy));
const g = GraphExec.capture(stream, () => launch(empty, one, none, stream));
med('empty kernel, 1-node graph', eventTimes(stream, N, () => g.launch(stream), busy));
const g2 = GraphExec.capture(stream, () => { launch(empty, one, none, stream); launch(empty, one, none, stream); });
med('2 empty kernels, graph', eventTimes(stream, N, () => g2.launch(stream), busy));
med('2 empty kernels, cuLaunchKernel', eventTimes(stream, N, () => { launch(empty, one, none, stream); launch(empty, one, none, stream); }, busy));

const c = SEED_BENCH;
const layout = benchLayout(c);
const sets = 8;
const capacity = c.sk + 8 * N + 100;
const state = randomState(layout, c.sk - 1, capacity, 7);
const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity });
cache.uploadState(state);
const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
const rng = new SplitMix32(9);
const qBytes = B * H * D * 4, kBytes = B * Hkv * D * 4;
const arena = DeviceArena.allocate({ q: qBytes * sets, k: kBytes * sets });
for (let i = 0; i < sets; i++) {
  copies.fromHost(arena.slices.q, Float32Array.from({ length: B * H * D }, () => rng.normal()), i * qBytes);
  copies.fromHost(arena.slices.k, Float32Array.from({ length: B * Hkv * D }, () => rng.normal()), i * kBytes);
}
const qDev = Array.from({ length: sets }, (_, i) => deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr + BigInt(i * qBytes)));
const kDev = Array.from({ length: sets }, (_, i) => deviceTensor('f32', [B, Hkv, 1, D], arena.slices.k.ptr + BigInt(i * kBytes)));
const graphStep = (i) => void cache.step(qDev[i % sets], kDev[i % sets]);
const directStep = (i) => {
  cache.prepareStep('f32', true);
  cache.recordStep(cache.contiguousStepQuery(qDev[i % sets].ptr, 'f32'), cache.contiguousStepKey(kDev[i % sets].ptr, 'f32'));
  cache.commitStep(true);
};
for (let r = 0; r < 2; r++) {
  med(`seed step, graph (${r})`, eventTimes(cache.stream, N, graphStep, busy));
  med(`seed step, direct launch (${r})`, eventTimes(cache.stream, N, directStep, busy));
}
// host enqueue cost
for (const [name, f] of [['graph', graphStep], ['direct', directStep]]) {
  const h = [];
  for (let i = 0; i < N; i++) { const t0 = nowUs(); f(i); h.push(nowUs() - t0); cache.synchronize(); }
  med(`seed step host enqueue, ${name}`, h);
  const w = [];
  for (let i = 0; i < N; i++) { const t0 = nowUs(); f(i); cache.synchronize(); w.push(nowUs() - t0); }
  med(`seed step wall (enqueue+sync), ${name}`, w);
}
console.log(CudaContext.primary().device.name);
for (const [n, m, p] of rows) console.log(n.padEnd(44), m.toFixed(3).padStart(8), p.toFixed(3).padStart(8));
cache.dispose();
