#!/usr/bin/env node
// What each node of a chained step costs the device when steps run back to back (diagnostic; GPU
// machine). A chained step is [wait until the doorbell ≥ i, the step, write done = i] inside one
// graph (src/cuda/step-chain.ts); rung a whole chain at once it took 12.5 μs a step on the H100
// against 9.1 for graph steps launched back to back (bench/NOTES.md, session 51). Here graphs of N
// units run with every wait already satisfied, timed by CUDA events with the stream kept busy ahead
// (the device alone), ÷ N (the graph's own launch, ≈ 3 μs, spread over the units):
//   kernel | wait, kernel | kernel, write | wait, kernel, write | wait, write |
//   kernel, write without the write's memory barrier | wait on a word in device memory, kernel, write
// for an empty kernel (2 × 48 blocks of 1024 threads) and for the seed config's step (device inputs).
//   bash scripts/device-run.sh node scripts/chain-node-costs.mjs
import { join } from 'node:path';

const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { seedConfig, seedDeviceInputs } = await import('./seed-inputs.mjs');
const { benchLayout, randomState } = await import(join(app, 'bench/select-bench.js'));
const { BusyQueue } = await import(join(app, 'bench/busy-queue.js'));
const { CudaPQCache } = await import(join(app, 'pq/cuda-cache.js'));
const { CudaContext } = await import(join(app, 'cuda/context.js'));
const { GraphExec } = await import(join(app, 'cuda/graph.js'));
const { LaunchArgs, launch } = await import(join(app, 'cuda/launch.js'));
const { DeviceArena, PinnedBuffer, copies } = await import(join(app, 'cuda/memory.js'));
const { Event, Stream } = await import(join(app, 'cuda/stream.js'));
const { check, driver } = await import(join(app, 'cuda/driver.js'));
const { loadKernels } = await import(join(app, 'pq/kernels.js'));
const { summarize } = await import(join(app, 'bench/stats.js'));

CudaContext.primary();
const { cuStreamWaitValue32_v2: waitValue, cuStreamWriteValue32_v2: writeValue } = driver();
const WAIT_GEQ = 0x0;
const WRITE_DEFAULT = 0x0; // with a memory barrier (the chain's): the step's writes are visible before `done`
const WRITE_NO_BARRIER = 0x1;
const N = Number(process.env.UNITS ?? 32); // units a graph (even: a step's seq slot parity returns)
const REPS = Number(process.env.REPS ?? 20);

const host = new PinnedBuffer(512); // word 0: the doorbell (rung for good), word 32: done
new Uint32Array(host.arrayBuffer, 0, 1)[0] = 1 << 30;
const devWords = DeviceArena.allocate({ w: 512 });
copies.fromHost(devWords.slices.w, new Uint32Array([1 << 30]));
const hostBell = host.ptr;
const hostDone = host.ptr + 128n;
const devBell = devWords.slices.w.ptr;

const stream = new Stream();
const busy = new BusyQueue();
const e0 = new Event();
const e1 = new Event();
/** μs a unit: a graph of N units replayed REPS times (after one untimed replay), events around each. */
function unitTimes(graph) {
  graph.launch(stream);
  stream.synchronize();
  const out = [];
  for (let r = 0; r < REPS; r++) {
    busy.fill(stream);
    e0.record(stream);
    graph.launch(stream);
    e1.record(stream);
    e1.synchronize();
    out.push((e1.elapsedSince(e0) * 1000) / N);
  }
  return summarize(out);
}

const wait = (addr) => check('cuStreamWaitValue32_v2', waitValue(stream.handle, addr, 1, WAIT_GEQ));
const write = (flags) => check('cuStreamWriteValue32_v2', writeValue(stream.handle, hostDone, 1, flags));
const UNITS = [
  ['kernel', (k) => k()],
  ['wait, kernel', (k) => (wait(hostBell), k())],
  ['kernel, write', (k) => (k(), write(WRITE_DEFAULT))],
  ['wait, kernel, write (the chain)', (k) => (wait(hostBell), k(), write(WRITE_DEFAULT))],
  ['wait, write (no kernel)', () => (wait(hostBell), write(WRITE_DEFAULT))],
  ['kernel, write without barrier', (k) => (k(), write(WRITE_NO_BARRIER))],
  ['wait on device word, kernel, write', (k) => (wait(devBell), k(), write(WRITE_DEFAULT))],
];

const rows = [];
function measure(what, enqueueKernel) {
  for (const [name, unit] of UNITS) {
    let graph;
    try {
      graph = GraphExec.capture(stream, () => {
        for (let i = 0; i < N; i++) unit(enqueueKernel);
      });
    } catch (e) {
      rows.push([`${what}: ${name}`, `n/a: ${e.message}`]); // e.g. a flag the driver refuses in a capture
      continue;
    }
    try {
      rows.push([`${what}: ${name}`, unitTimes(graph)]);
    } finally {
      graph.dispose();
    }
  }
}

{
  const kernel = loadKernels('runtime').kernel('pq_empty');
  const none = new LaunchArgs([]);
  measure('empty kernel', () => launch(kernel, { grid: [2, 48, 1], block: [1024, 1, 1] }, none, stream));
}

let listsNote = '';
{
  // The seed step from sk 26,000 (its plan holds past 32,768): every replay appends N keys on the
  // device (the kernels read sk from device memory), so 7 × (REPS + 1) × N more positions.
  const c = seedConfig(26000);
  const layout = benchLayout(c);
  const capacity = c.sk + UNITS.length * (REPS + 1) * N + 64;
  const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, stream });
  cache.uploadState(randomState(layout, c.sk - 1, capacity, 7));
  const { arena, q, k } = await seedDeviceInputs(app, 1);
  for (let i = 0; i < 50; i++) cache.step(q[0], k[0]);
  cache.synchronize();
  const query = cache.contiguousStepQuery(q[0].ptr, 'f32');
  const key = cache.contiguousStepKey(k[0].ptr, 'f32');
  const sk = cache.seqLen;
  measure('seed step', () => {
    cache.prepareStep('f32', true);
    cache.recordStep(query, key);
    cache.commitStep(true); // the host's sk runs ahead while capturing; the device's comes from its seq slots
  });
  cache.checkStatus();
  listsNote = `seed step: the host's sk ran from ${sk} to ${cache.seqLen} while capturing (the device's from its seq slots)`;
  arena.dispose();
  cache.dispose();
}

e0.dispose();
e1.dispose();
busy.dispose();
stream.dispose();
devWords.dispose();
host.dispose();

const f = (x) => x.toFixed(2).padStart(8);
console.log(listsNote);
console.log(`${`device μs a unit (graph of ${N} units, events, busy queue ahead; ${REPS} replays)`.padEnd(58)}  median      p90`);
for (const [name, s] of rows) console.log(`${name.padEnd(58)}${typeof s === 'string' ? `  ${s}` : `${f(s.median)} ${f(s.p90)}`}`);
