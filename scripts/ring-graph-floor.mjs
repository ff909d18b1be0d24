#!/usr/bin/env node
// Could a graph step start from a doorbell instead of cuGraphLaunch, and end with a word the host
// reads instead of cuStreamSynchronize? (diagnostic; GPU machine)
// A chain graph of N × [wait until the doorbell (pinned host memory) ≥ i, the step, write done = i],
// launched once per N steps: the host rings by a store and spins on `done`, so no driver call sits
// between call and result, and no multiprocessor is held between steps (unlike resident steps).
//   bash scripts/device-run.sh node scripts/ring-graph-floor.mjs
// Rows (wall per step on the host clock, μs):
//   empty kernel (2, 48) × 1024: one-kernel graph launch + sync | chain | chain of the memops alone
//   seed step (device inputs): cache.step + synchronize (a twin cache, same inputs) | chain
// The chain's lists are compared with the twin's at the end (both must equal).
import { createRequire } from 'node:module';
import { join } from 'node:path';

const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const koffi = createRequire(join(app, 'index.js'))('koffi'); // the app's node_modules (none at the repository root there)
const { benchLayout, randomState } = await import(join(app, 'bench/select-bench.js'));
const { CudaPQCache } = await import(join(app, 'pq/cuda-cache.js'));
const { CudaContext } = await import(join(app, 'cuda/context.js'));
const { GraphExec } = await import(join(app, 'cuda/graph.js'));
const { LaunchArgs, launch } = await import(join(app, 'cuda/launch.js'));
const { DeviceArena, PinnedBuffer, copies } = await import(join(app, 'cuda/memory.js'));
const { Stream } = await import(join(app, 'cuda/stream.js'));
const { check, driverLibraryPath } = await import(join(app, 'cuda/driver.js'));
const { loadKernels } = await import(join(app, 'pq/kernels.js'));
const { deviceTensor } = await import(join(app, 'tensor/device-tensor.js'));
const { nowUs, summarize } = await import(join(app, 'bench/stats.js'));

CudaContext.primary();
const lib = koffi.load(driverLibraryPath());
const waitValue = lib.func('int cuStreamWaitValue32_v2(void *stream, uint64_t addr, uint32_t value, unsigned int flags)');
const writeValue = lib.func('int cuStreamWriteValue32_v2(void *stream, uint64_t addr, uint32_t value, unsigned int flags)');
const WAIT_GEQ = 0x0;
const WRITE_DEFAULT = 0x0; // with a memory barrier: the step's writes are visible before `done`

const N = Number(process.env.CHAIN ?? 64); // steps per chain graph (even: the step's slot parity returns)
const ROUNDS = Number(process.env.ROUNDS ?? 20);
const words = new PinnedBuffer(256);
const u32 = new Uint32Array(words.arrayBuffer, 0, 64);
const BELL = 0;
const DONE = 32; // its own 128-byte line
const bellAddr = words.ptr;
const doneAddr = words.ptr + 128n;

function spinUntil(value) {
  const start = nowUs();
  for (;;) {
    for (let i = 0; i < 1024; i++) if (Atomics.load(u32, DONE) === value) return;
    if (nowUs() - start > 200_000) throw new Error(`done stuck at ${Atomics.load(u32, DONE)}, waiting for ${value}`);
  }
}

/** A chain of N steps (`enqueueStep(i)` on `stream`) between doorbell waits and done writes. */
function captureChain(stream, enqueueStep) {
  return GraphExec.capture(stream, () => {
    for (let i = 1; i <= N; i++) {
      check('cuStreamWaitValue32_v2', waitValue(stream.handle, bellAddr, i, WAIT_GEQ));
      enqueueStep(i);
      check('cuStreamWriteValue32_v2', writeValue(stream.handle, doneAddr, i, WRITE_DEFAULT));
    }
  });
}

/** Rings each step of `rounds` chains (a new one each round, from makeGraph) and times ring → done seen; round 0 warms up. */
const launchUs = [];
const firstStepUs = [];
function runChain(stream, makeGraph, rounds) {
  const wall = [];
  for (let r = 0; r < rounds; r++) {
    const graph = makeGraph(r);
    Atomics.store(u32, BELL, 0);
    Atomics.store(u32, DONE, 0);
    const tl = nowUs();
    graph.launch(stream);
    if (r > 0) launchUs.push(nowUs() - tl);
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
  return summarize(wall);
}

const rows = [];
const row = (name, s) => rows.push([name, s.median, s.p90, s.p99, s.samples]);

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
  row('empty kernel: graph launch + sync', summarize(wall));
  row('empty kernel: chain (wait, kernel, write)', runChain(stream, () => captureChain(stream, () => launch(kernel, shape, none, stream)), ROUNDS + 1));
  row('memops alone: chain (wait, write)', runChain(stream, () => captureChain(stream, () => {}), ROUNDS + 1));
  stream.dispose();
}

// ---- seed step, device inputs ----
{
  const c = { B: 1, H: 32, Hkv: 32, D: 128, sk: 26000, S: 128, W: 128, K: 128, M: 2, pqBits: 6, O: 128, metric: 'euclidean' };
  const layout = benchLayout(c);
  const steps = 300 + N * (ROUNDS + 1);
  const capacity = c.sk + steps + 400; // sk stays under the E = 16 → 32 hand-over (33,024)
  const stream = new Stream();
  const chained = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, stream });
  const twin = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity });
  const state = randomState(layout, c.sk - 1, capacity, 7);
  chained.uploadState(state);
  twin.uploadState(state);
  const sets = 8;
  const bytes = 32 * 128 * 4;
  const arena = DeviceArena.allocate({ q: bytes * sets, k: bytes * sets });
  for (let s = 0; s < sets; s++) {
    copies.fromHost(arena.slices.q, new Float32Array(4096).map((_, i) => Math.sin(i + 3 * s)), s * bytes);
    copies.fromHost(arena.slices.k, new Float32Array(4096).map((_, i) => Math.cos(i + 5 * s)), s * bytes);
  }
  const q = Array.from({ length: sets }, (_, s) => deviceTensor('f32', [1, 32, 1, 128], arena.slices.q.ptr + BigInt(s * bytes)));
  const k = Array.from({ length: sets }, (_, s) => deviceTensor('f32', [1, 32, 1, 128], arena.slices.k.ptr + BigInt(s * bytes)));
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
  row('seed step: graph (step + synchronize)', summarize(wall));
  const seed = runChain(stream, (r) => captureChain(stream, (i) => {
    const s = (base + r * N + i - 1) % sets;
    chained.prepareStep('f32', true);
    chained.recordStep({ ptr: q[s].ptr, dtype: 'f32' }, { ptr: k[s].ptr, dtype: 'f32' });
    chained.commitStep(true);
  }), ROUNDS + 1);
  row('seed step: chain (wait, step, write)', seed);
  chained.checkStatus();
  const a = chained.listsToHost();
  const b = twin.listsToHost();
  const same = chained.seqLen === twin.seqLen && a.sparseList.every((v, i) => v === b.sparseList[i]) && a.sparseLen.every((v, i) => v === b.sparseLen[i]);
  console.log(`chain vs twin after ${chained.seqLen - c.sk + 1} steps each: sk ${chained.seqLen} / ${twin.seqLen}, lists ${same ? 'equal' : 'DIFFER'}`);
  arena.dispose();
  chained.dispose();
  twin.dispose();
  stream.dispose();
}

const f = (x) => (typeof x === 'number' ? x.toFixed(2).padStart(8) : String(x).padStart(8));
console.log(`${'wall per step, μs'.padEnd(44)}  median      p90      p99  samples`);
for (const [name, ...v] of rows) console.log(`${name.padEnd(44)}${v.map(f).join(' ')}`);
const m = (x) => summarize(x);
console.log(`chain launch (cuGraphLaunch of ${N} steps, host): median ${m(launchUs).median.toFixed(1)} p90 ${m(launchUs).p90.toFixed(1)} μs; a launch's first step: median ${m(firstStepUs).median.toFixed(1)} p90 ${m(firstStepUs).p90.toFixed(1)} μs`);
words.dispose();
