#!/usr/bin/env node
// Could a graph step start from a doorbell instead of cuGraphLaunch, and end with a word the host
// reads instead of cuStreamSynchronize? (diagnostic; GPU machine)
// A chain graph of N × [wait until the doorbell (pinned host memory) ≥ i, the step, write done = i],
// launched once per N steps: the host rings by a store and spins on `done`, so no driver call sits
// between call and result, and no multiprocessor is held between steps (unlike resident steps).
//   bash scripts/device-run.sh node scripts/ring-graph-floor.mjs
// Rows (wall per step on the host clock, μs):
//   empty kernel (2, 48) × 1024: one-kernel graph launch + sync | chain | chain of the memops alone
//   seed step (device inputs): cache.step + synchronize (a twin cache, same inputs) | chain | two
//   chains alternating, the next one launched by a worker thread while the other is rung
// The mean column adds each chain's launch (host time) where the stepping thread pays it. The chains'
// lists are compared with the twin's at the end (both must equal).
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';

const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { seedConfig, seedDeviceInputs } = await import('./seed-inputs.mjs');
const requireApp = createRequire(join(app, 'index.js')); // the worker's koffi: the app's node_modules (none at the repository root there)
const { benchLayout, randomState } = await import(join(app, 'bench/select-bench.js'));
const { CudaPQCache } = await import(join(app, 'pq/cuda-cache.js'));
const { CudaContext } = await import(join(app, 'cuda/context.js'));
const { GraphExec } = await import(join(app, 'cuda/graph.js'));
const { LaunchArgs, launch } = await import(join(app, 'cuda/launch.js'));
const { PinnedBuffer } = await import(join(app, 'cuda/memory.js'));
const { Stream } = await import(join(app, 'cuda/stream.js'));
const { check, driver, driverLibraryPath } = await import(join(app, 'cuda/driver.js'));
const { loadKernels } = await import(join(app, 'pq/kernels.js'));
const { nowUs, summarize } = await import(join(app, 'bench/stats.js'));

CudaContext.primary();
const { cuStreamWaitValue32_v2: waitValue, cuStreamWriteValue32_v2: writeValue } = driver();
const WAIT_GEQ = 0x0;
const WRITE_DEFAULT = 0x0; // with a memory barrier: the step's writes are visible before `done`

const N = Number(process.env.CHAIN ?? 64); // steps per chain graph (even: the step's slot parity returns)
const ROUNDS = Number(process.env.ROUNDS ?? 20);
// Chain k's doorbell at u32[64k], its done at u32[64k + 32] (128-byte lines of their own).
const words = new PinnedBuffer(512);
const u32 = new Uint32Array(words.arrayBuffer, 0, 128);
const BELL = 0;
const DONE = 32;
const wordAddr = (index) => words.ptr + BigInt(4 * index);

function spinUntil(value, k = 0) {
  const start = nowUs();
  for (;;) {
    for (let i = 0; i < 1024; i++) if (Atomics.load(u32, 64 * k + DONE) === value) return;
    if (nowUs() - start > 200_000) throw new Error(`done stuck at ${Atomics.load(u32, 64 * k + DONE)}, waiting for ${value}`);
  }
}

/** A chain of N steps (`enqueueStep(i)` on `stream`) between waits on doorbell k and writes of its done. */
function captureChain(stream, enqueueStep, k = 0) {
  return GraphExec.capture(stream, () => {
    for (let i = 1; i <= N; i++) {
      check('cuStreamWaitValue32_v2', waitValue(stream.handle, wordAddr(64 * k + BELL), i, WAIT_GEQ));
      enqueueStep(i);
      check('cuStreamWriteValue32_v2', writeValue(stream.handle, wordAddr(64 * k + DONE), i, WRITE_DEFAULT));
    }
  });
}

/** Rings each step of `rounds` chains (a new one each round, from makeGraph) and times ring → done seen; round 0 warms up. */
const launchUs = [];
const firstStepUs = [];
/** Returns the steps' summary and their mean with each launch's host time added (the stepping thread pays it). */
function runChain(stream, makeGraph, rounds) {
  const wall = [];
  let launched = 0;
  for (let r = 0; r < rounds; r++) {
    const graph = makeGraph(r);
    Atomics.store(u32, BELL, 0);
    Atomics.store(u32, DONE, 0);
    const tl = nowUs();
    graph.launch(stream);
    if (r > 0) launchUs.push(nowUs() - tl);
    if (r > 0) launched += nowUs() - tl;
    for (let i = 1; i <= N; i++) {
      const t0 = nowUs();
      Atomics.store(u32, BELL, i);
      spinUntil(i);
      if (r > 0) wall.push(nowUs() - t0);
      if (r > 0 && i === 1) firstStepUs.push(nowUs() - t0);
    }
    stream.synchronize();
    graph.dispose();
  }
  return [summarize(wall), (wall.reduce((a, b) => a + b, 0) + launched) / wall.length];
}

const rows = [];
const mean = (x) => x.reduce((a, b) => a + b, 0) / x.length;
const row = (name, s, m = NaN) => rows.push([name, s.median, s.p90, s.p99, m, s.samples]);

// ---- empty kernel ----
{
  const stream = new Stream();
  const kernel = loadKernels('runtime').kernel('pq_empty');
  const shape = { grid: [2, 48, 1], block: [1024, 1, 1] };
  const none = new LaunchArgs([]);
  const one = GraphExec.capture(stream, () => launch(kernel, shape, none, stream));
  const wall = [];
  for (let i = 0; i < 300 + N * ROUNDS; i++) {
    const t0 = nowUs();
    one.launch(stream);
    stream.synchronize();
    if (i >= 300) wall.push(nowUs() - t0);
  }
  one.dispose();
  row('empty kernel: graph launch + sync', summarize(wall), mean(wall));
  row('empty kernel: chain (wait, kernel, write)', ...runChain(stream, () => captureChain(stream, () => launch(kernel, shape, none, stream)), ROUNDS + 1));
  row('memops alone: chain (wait, write)', ...runChain(stream, () => captureChain(stream, () => {}), ROUNDS + 1));
  stream.dispose();
}

// ---- seed step, device inputs ----
{
  const c = seedConfig(26000);
  const layout = benchLayout(c);
  const steps = 300 + N * (2 * ROUNDS + 3); // the worker run's host sk runs 2N ahead
  const capacity = c.sk + steps + 400; // sk stays under the E = 16 → 32 hand-over (33,024) at N = 64
  const stream = new Stream();
  const chained = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, stream });
  const twin = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity });
  const state = randomState(layout, c.sk - 1, capacity, 7);
  chained.uploadState(state);
  twin.uploadState(state);
  const sets = 8;
  const { arena, q, k } = await seedDeviceInputs(app, sets);
  // The same 300 warm-up steps on both (graph path), then the twin times its graph steps.
  let n = 0;
  for (; n < 300; n++) {
    chained.step(q[n % sets], k[n % sets]);
    twin.step(q[n % sets], k[n % sets]);
  }
  chained.synchronize();
  twin.synchronize();
  const base = n;
  const wall = [];
  for (let i = 0; i < N * (ROUNDS + 1); i++) {
    const t0 = nowUs();
    twin.step(q[(base + i) % sets], k[(base + i) % sets]);
    twin.synchronize();
    if (i >= N) wall.push(nowUs() - t0);
  }
  row('seed step: graph (step + synchronize)', summarize(wall), mean(wall));
  const seed = runChain(stream, (r) => captureChain(stream, (i) => {
    const s = (base + r * N + i - 1) % sets;
    chained.prepareStep('f32', true);
    chained.recordStep(chained.contiguousStepQuery(q[s].ptr, 'f32'), chained.contiguousStepKey(k[s].ptr, 'f32'));
    chained.commitStep(true);
  }), ROUNDS + 1);
  row('seed step: chain (wait, step, write)', ...seed);

  // Two chains alternating, the next one launched by a worker thread while this one is rung: the
  // stepping thread makes no driver call at all (the launch's host time moves off it).
  const base2 = base + N * (ROUNDS + 1);
  for (let i = 0; i < N * ROUNDS; i++) {
    twin.step(q[(base2 + i) % sets], k[(base2 + i) % sets]);
    twin.synchronize();
  }
  const stepInto = (i) => {
    const s = (base2 + i - 1) % sets;
    chained.prepareStep('f32', true);
    chained.recordStep(chained.contiguousStepQuery(q[s].ptr, 'f32'), chained.contiguousStepKey(k[s].ptr, 'f32'));
    chained.commitStep(true); // the host's sk runs 2N ahead of the device's from here: only the lists are compared
  };
  const chains = [captureChain(stream, stepInto, 0), captureChain(stream, stepInto, 1)];
  const sab = new SharedArrayBuffer(32);
  const cmd = new Int32Array(sab, 0, 4); // [0] 0 idle | 1 launch | 2 quit, [1] rc, [2] ready
  const handles = new BigInt64Array(sab, 16, 2);
  const worker = new Worker(`
    const { workerData } = require('node:worker_threads');
    const koffi = require(workerData.koffiPath);
    const lib = koffi.load(workerData.libcuda);
    const setCurrent = lib.func('int cuCtxSetCurrent(void *ctx)');
    const graphLaunch = lib.func('int cuGraphLaunch(void *exec, void *stream)');
    const cmd = new Int32Array(workerData.sab, 0, 4);
    const handles = new BigInt64Array(workerData.sab, 16, 2);
    Atomics.store(cmd, 1, setCurrent(workerData.ctx));
    Atomics.store(cmd, 2, 1);
    for (;;) {
      Atomics.wait(cmd, 0, 0);
      if (Atomics.load(cmd, 0) === 2) break;
      Atomics.store(cmd, 1, graphLaunch(handles[0], handles[1]));
      Atomics.store(cmd, 0, 0);
    }`, { eval: true, workerData: { koffiPath: requireApp.resolve('koffi'), libcuda: driverLibraryPath(), ctx: CudaContext.primary().handle, sab } });
  const idle = () => {
    const start = nowUs();
    while (Atomics.load(cmd, 0) !== 0 || Atomics.load(cmd, 2) !== 1) if (nowUs() - start > 2_000_000) throw new Error('launcher worker stuck');
    if (Atomics.load(cmd, 1) !== 0) throw new Error(`launcher worker: driver error ${Atomics.load(cmd, 1)}`);
  };
  const launchBehind = (graph) => {
    idle();
    handles[0] = graph.handle;
    handles[1] = stream.handle;
    Atomics.store(cmd, 0, 1);
    Atomics.notify(cmd, 0);
  };
  const wall2 = [];
  Atomics.store(u32, BELL, 0);
  Atomics.store(u32, DONE, 0);
  chains[0].launch(stream);
  for (let r = 0; r < ROUNDS; r++) {
    const kk = r % 2;
    const t0 = nowUs();
    idle(); // this round's chain was launched (the worker's launch in the last round): time it with step 1
    if (r + 1 < ROUNDS) {
      Atomics.store(u32, 64 * (1 - kk) + BELL, 0); // the other chain's last launch is complete (its last done was seen)
      Atomics.store(u32, 64 * (1 - kk) + DONE, 0);
      launchBehind(chains[1 - kk]);
    }
    let t = t0;
    for (let i = 1; i <= N; i++) {
      Atomics.store(u32, 64 * kk + BELL, i);
      spinUntil(i, kk);
      const t1 = nowUs();
      if (r > 0) wall2.push(t1 - t);
      t = t1;
    }
  }
  stream.synchronize();
  Atomics.store(cmd, 0, 2);
  Atomics.notify(cmd, 0);
  await worker.terminate();
  chains.forEach((g) => g.dispose());
  row('seed step: 2 chains, next launched by a worker', summarize(wall2), mean(wall2));
  chained.checkStatus();
  const a = chained.listsToHost();
  const b = twin.listsToHost();
  const same = a.sparseList.every((v, i) => v === b.sparseList[i]) && a.sparseLen.every((v, i) => v === b.sparseLen[i]);
  console.log(`chains vs twin after ${twin.seqLen - c.sk + 1} steps each: lists ${same ? 'equal' : 'DIFFER'}`);
  arena.dispose();
  chained.dispose();
  twin.dispose();
  stream.dispose();
}

const f = (x) => (typeof x === 'number' ? x.toFixed(2).padStart(8) : String(x).padStart(8));
console.log(`${'wall per step, μs (mean: chain launches included)'.padEnd(44)}  median      p90      p99     mean  samples`);
for (const [name, ...v] of rows) console.log(`${name.padEnd(44)}${v.map(f).join(' ')}`);
const m = (x) => summarize(x);
console.log(`chain launch (cuGraphLaunch of ${N} steps, host): median ${m(launchUs).median.toFixed(1)} p90 ${m(launchUs).p90.toFixed(1)} μs; a launch's first step: median ${m(firstStepUs).median.toFixed(1)} p90 ${m(firstStepUs).p90.toFixed(1)} μs`);
words.dispose();
