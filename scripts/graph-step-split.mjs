#!/usr/bin/env node
// Where a graph step's wall-clock goes on the host clock (diagnostic; GPU machine): seed-config
// steps on device inputs, split at cuGraphLaunch (GraphExec.launch wrapped); then selects (no append),
// and the select's captured graph replayed with nothing around it (the floor the host path adds to;
// a step's graph cannot be replayed alone: its append would count the same position twice).
//   bash scripts/device-run.sh node scripts/graph-step-split.mjs
// ROUNDS × STEPS steps per loop (default 5 × 120: sk stays under the E = 16 → 32 hand-over at 33,024;
// SK sets the starting sk). With PROF_DIR: the self time per function of the V8 profiles found there
// (run once under node --cpu-prof --cpu-prof-dir DIR, then again with PROF_DIR=DIR).
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
const profDir = process.env.PROF_DIR;
if (profDir) {
  for (const f of readdirSync(profDir).filter((x) => x.endsWith('.cpuprofile'))) {
    const p = JSON.parse(readFileSync(join(profDir, f), 'utf8'));
    const self = new Map();
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    p.samples.forEach((id, i) => {
      const n = byId.get(id);
      const key = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + (p.timeDeltas[i] ?? 0));
    });
    const total = [...self.values()].reduce((a, b) => a + b, 0);
    console.log(`profile ${f}: ${(total / 1000).toFixed(0)} ms sampled`);
    for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 40)) console.log(`${((100 * us) / total).toFixed(1).padStart(5)}%  ${key}`);
  }
  process.exit(0);
}
const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { seedConfig, seedDeviceInputs } = await import('./seed-inputs.mjs');
const { stampCalls } = await import('./stamp-calls.mjs');
const { benchLayout, randomState } = await import(join(app, 'bench/select-bench.js'));
const { CudaPQCache } = await import(join(app, 'pq/cuda-cache.js'));
const { GraphCache, GraphExec } = await import(join(app, 'cuda/graph.js'));
const { summarize } = await import(join(app, 'bench/stats.js'));

const c = seedConfig(Number(process.env.SK ?? 32000));
const layout = benchLayout(c);
const rounds = Number(process.env.ROUNDS ?? 5);
const steps = Number(process.env.STEPS ?? 120);
const capacity = c.sk + rounds * steps * 4 + 400;
const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity });
cache.uploadState(randomState(layout, c.sk - 1, capacity, 7));
const sets = 8;
const { arena, q, k } = await seedDeviceInputs(app, sets);

const launched = { t0: 0, t1: 0, self: undefined };
const launch = stampCalls(GraphExec.prototype, 'launch', launched);
// With SPLIT=1, the path before cuGraphLaunch split too (prepareStep and the graph lookup wrapped).
const prepared = { t0: 0, t1: 0 };
const looked = { t0: 0, t1: 0 };
if (process.env.SPLIT === '1') {
  stampCalls(CudaPQCache.prototype, 'prepareStep', prepared);
  stampCalls(GraphCache.prototype, 'get', looked);
}

const rows = new Map();
const add = (name, v) => (rows.get(name) ?? rows.set(name, []).get(name)).push(v * 1000);
for (let i = 0; i < 200; i++) {
  cache.step(q[i % sets], k[i % sets]);
  cache.synchronize();
}
for (let r = 0; r < rounds; r++) {
  for (const [what, rotate] of [['step', false], ['step', true], ['select', false]]) {
    const tag = `${what}, ${rotate ? '8 input sets' : 'one input set'}`;
    for (let i = 0; i < steps; i++) {
      const s = rotate ? i % sets : 0;
      const t0 = performance.now();
      if (what === 'step') cache.step(q[s], k[s]);
      else cache.select(q[s]);
      const t1 = performance.now();
      cache.synchronize();
      const t2 = performance.now();
      add(`wall (${tag})`, t2 - t0);
      add(`call → cuGraphLaunch (${tag})`, launched.t0 - t0);
      if (process.env.SPLIT === '1') {
        add(`  call → prepareStep (${tag})`, prepared.t0 - t0);
        add(`  prepareStep (${tag})`, prepared.t1 - prepared.t0);
        add(`  prepareStep → graph lookup (${tag})`, looked.t0 - prepared.t1);
        add(`  graph lookup (${tag})`, looked.t1 - looked.t0);
        add(`  graph lookup → cuGraphLaunch (${tag})`, launched.t0 - looked.t1);
      }
      add(`cuGraphLaunch (${tag})`, launched.t1 - launched.t0);
      add(`cuGraphLaunch → return (${tag})`, t1 - launched.t1);
      add(`synchronize() (${tag})`, t2 - t1);
    }
  }
  // The last select's graph alone.
  const g = launched.self;
  const stream = cache.stream;
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    launch.call(g, stream);
    const t1 = performance.now();
    stream.synchronize();
    const t2 = performance.now();
    add('graph alone: wall (cuStreamSynchronize)', t2 - t0);
    add('graph alone: cuGraphLaunch', t1 - t0);
    add('graph alone: cuStreamSynchronize', t2 - t1);
  }
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    launch.call(g, stream);
    while (!stream.isIdle()) { /* poll */ }
    add('graph alone: wall (cuStreamQuery polled)', performance.now() - t0);
  }
}
console.log(`seed config, ${rounds} × ${steps} steps per row, sk ${c.sk} → ${cache.seqLen}`);
console.log('what'.padEnd(58), '  median     p90');
for (const [name, v] of rows) {
  const s = summarize(v);
  console.log(name.padEnd(58), s.median.toFixed(2).padStart(8), s.p90.toFixed(2).padStart(7));
}
GraphExec.prototype.launch = launch;
cache.dispose();
arena.dispose();
