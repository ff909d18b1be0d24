#!/usr/bin/env node
// Which host-side call of a new request (CudaPQCache.uploadState) keeps host memory: each
// candidate runs alone many times, after a warm-up, and the RSS growth of each batch is printed.
//   bash scripts/device-run.sh node scripts/rss-bisect.mjs [calls]   (device; reads .device/app/dist)
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = existsSync(`${root}.device/app/dist`) ? `${root}.device/app/dist` : `${root}dist`;
process.env.PQCACHE_KERNELS_DIR ??= `${dist}/../kernels/dist/`;
const koffi = createRequire(`${dist}/../package.json`)('koffi'); // the app's own copy
const { CudaContext } = await import(`${dist}/src/cuda/context.js`);
const { LaunchArgs, launch } = await import(`${dist}/src/cuda/launch.js`);
const { DeviceBuffer, copies } = await import(`${dist}/src/cuda/memory.js`);
const { Stream } = await import(`${dist}/src/cuda/stream.js`);
const { loadKernels } = await import(`${dist}/src/pq/kernels.js`);
const { CudaPQCache } = await import(`${dist}/src/pq/cuda-cache.js`);
const { SEED_BENCH, benchLayout, randomState } = await import(`${dist}/src/bench/select-bench.js`);
const { deviceTensor } = await import(`${dist}/src/tensor/device-tensor.js`);

const calls = Number(process.argv[2] ?? 8000);
CudaContext.primary();
const stream = new Stream();
const dev = new DeviceBuffer(4 << 20);
const host = new Float32Array(1 << 20); // 4 MiB pageable
const small = new Int32Array([1, 2, 3, 4]);
const layout = benchLayout(SEED_BENCH);
const capacity = SEED_BENCH.sk + 64;
const state = randomState(layout, SEED_BENCH.sk - 1, capacity, 5);
const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity });
const empty = loadKernels('runtime').kernel('pq_empty');
const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
const q = deviceTensor('f32', [B, H, 1, D], dev.ptr); // zeros are valid inputs
const k = deviceTensor('f32', [B, Hkv, 1, D], dev.ptr + 65536n);
cache.uploadState(state);
const steps = (n) => { for (let i = 0; i < n; i++) cache.step(q, k); cache.synchronize(); };
const selects = (n) => { for (let i = 0; i < n; i++) cache.select(q); cache.synchronize(); };
const none = new LaunchArgs([]);

const candidates = [
  ['koffi.address(typed array)', () => koffi.address(host)],
  ['fromHost 16 B (cuMemcpyHtoD)', () => copies.fromHost(dev, small)],
  ['fromHost2D 1 MiB (cuMemcpy2DAsync, struct)', () => copies.fromHost2D(dev, 4096, host, 4096, 4096, 256, stream)],
  ['fromHost2D 4 MiB', () => copies.fromHost2D(dev, 4096, host, 4096, 4096, 1024, stream)],
  ['fill32Async + sync', () => { copies.fill32Async(dev, 0, 1024, stream); stream.synchronize(); }],
  ['eager launch, kept args + sync', () => { launch(empty, { grid: [1, 1, 1], block: [32, 1, 1] }, none, stream); stream.synchronize(); }],
  ['eager launch, new args + dispose', () => { const a = new LaunchArgs(['ptr', 'i32']); a.setAll([dev.ptr, 1]); launch(empty, { grid: [1, 1, 1], block: [32, 1, 1] }, a, stream); a.dispose(); stream.synchronize(); }],
  ['new Int32Array(4) + fromHost', () => copies.fromHost(dev, new Int32Array([1, 2, 3, 4]))],
  ['uploadState (seed config)', () => cache.uploadState(state)],
  ['10 selects (graph launches)', () => selects(10)],
  ['uploadState + 10 selects', () => { cache.uploadState(state); selects(10); }],
  ['uploadState + 10 steps (a request)', () => { cache.uploadState(state); steps(10); }],
  ['eager launch + 10 selects', () => { launch(empty, { grid: [1, 1, 1], block: [32, 1, 1] }, none, cache.stream); selects(10); }],
  ['fill32Async + 10 selects', () => { copies.fill32Async(dev, 0, 1024, cache.stream); selects(10); }],
];
// Four batches each: growth that stops after the first is the allocator or V8 settling; growth in
// every batch is a leak.
const mem = () => process.memoryUsage();
const kb = (x) => (x / 1024).toFixed(0).padStart(6);
console.log('candidate'.padEnd(46), 'calls/batch', ' RSS growth per batch (KiB)        ', ' heapTotal, external at the end (KiB)');
for (const [name, f] of candidates) {
  const n = Math.floor((/uploadState|selects|steps/.test(name) ? Math.min(calls, 2000) : calls) / 4);
  for (let i = 0; i < 200; i++) f();
  globalThis.gc?.();
  const growth = [];
  for (let b = 0; b < 4; b++) {
    const r0 = mem().rss;
    for (let i = 0; i < n; i++) f();
    globalThis.gc?.();
    growth.push(mem().rss - r0);
  }
  const m = mem();
  console.log(name.padEnd(46), String(n).padStart(11), growth.map(kb).join(' '), '   ', kb(m.heapTotal), kb(m.external));
}
cache.dispose();
dev.dispose();
