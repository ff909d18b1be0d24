#!/usr/bin/env node
// Where a decode stack's token goes on the host clock (diagnostic; GPU machine): a sparse stack of
// LAYERS layers (bf16, B = 1, H = 32, Hkv = 8, D = 128, sk = SK; the step bench's first config), two
// device input sets per layer alternating by token (as the step bench), and per token the medians of
// call → cuGraphLaunch (GraphExec.launch wrapped), the launch itself, its return → step() return, and
// call → synchronize() done. Under `node --cpu-prof --cpu-prof-dir DIR` the profile shows which
// JavaScript the per-token path runs (read it with PROF_DIR=DIR node scripts/graph-step-split.mjs).
//   bash scripts/device-run.sh node scripts/stack-host-split.mjs
import { join } from 'node:path';
const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { stepMatrix, DeviceInputs, fillHash } = await import(join(app, 'bench/attend-bench.js'));
const { benchLayout, randomState } = await import(join(app, 'bench/select-bench.js'));
const { CudaDecodeStack } = await import(join(app, 'attention/decode-stack.js'));
const { GraphExec } = await import(join(app, 'cuda/graph.js'));
const { summarize } = await import(join(app, 'bench/stats.js'));
const { stampCalls } = await import('./stamp-calls.mjs');

const layers = Number(process.env.LAYERS ?? 32);
const tokens = Number(process.env.TOKENS ?? 1500);
const c = { ...stepMatrix(layers)[0], ...(process.env.SK ? { sk: Number(process.env.SK) } : {}) };
const layout = benchLayout(c);
const capacity = c.sk + tokens + 600;
const stack = new CudaDecodeStack({ shape: layout.shape, config: layout.config, capacity, kvDType: c.dtype, numLayers: layers });
const n = layout.shape.batch * layout.shape.kvHeads * capacity * layout.shape.headDim;
stack.layers.forEach((l, i) => {
  fillHash(l.kv.keys, c.dtype, n, 10 * i, 1, stack.stream);
  fillHash(l.kv.values, c.dtype, n, 10 * i + 1, 1, stack.stream);
});
const inputs = new DeviceInputs(layout.shape, c.dtype, 2 * layers, 3, stack.stream);
stack.stream.synchronize();
stack.layers.forEach((l, i) => l.adoptPrefilled(c.sk, randomState(layout, c.sk, capacity, 1 + i)));
const sets = [0, 1].map((p) => Array.from({ length: layers }, (_, l) => inputs.sets[2 * l + p]));

const at = { t0: 0, t1: 0, self: undefined };
stampCalls(GraphExec.prototype, 'launch', at);
for (let i = 0; i < 500; i++) {
  stack.step(sets[i & 1]);
  stack.synchronize();
}
const split = { call_to_launch: [], launch: [], launch_to_return: [], call_to_done: [] };
for (let i = 0; i < tokens; i++) {
  const t0 = performance.now();
  stack.step(sets[i & 1]);
  const t1 = performance.now();
  stack.synchronize();
  const t2 = performance.now();
  split.call_to_launch.push((at.t0 - t0) * 1000);
  split.launch.push((at.t1 - at.t0) * 1000);
  split.launch_to_return.push((t1 - at.t1) * 1000);
  split.call_to_done.push((t2 - t0) * 1000);
}
const out = { layers, sk: c.sk, dtype: c.dtype };
for (const [k, v] of Object.entries(split)) out[k] = Math.round(summarize(v).median * 100) / 100;
console.log(`STACK ${JSON.stringify(out)}`);
inputs.dispose();
stack.dispose();
