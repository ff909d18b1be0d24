// Where a resident step's host time goes (diagnostic; GPU machine): N seed-config resident steps on
// device inputs (INPUTS=host: host tensors, 8 sets, staged by the library) under the V8 sampling
// profiler, then self time per function, top 25.
//   bash scripts/device-run.sh node --cpu-prof --cpu-prof-dir /tmp/prof --cpu-prof-interval 20 scripts/resident-profile.mjs
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
const app = join(process.cwd(), '.device/app/dist/src');
const { benchLayout, randomState } = await import(join(app, 'bench/select-bench.js'));
const { CudaPQCache } = await import(join(app, 'pq/cuda-cache.js'));
const { DeviceArena, copies } = await import(join(app, 'cuda/memory.js'));
const { deviceTensor } = await import(join(app, 'tensor/device-tensor.js'));
const { HostTensor } = await import(join(app, 'tensor/host-tensor.js'));
const c = { B: 1, H: 32, Hkv: 32, D: 128, sk: 32000, S: 128, W: 128, K: 128, M: 2, pqBits: 6, O: 128, metric: 'euclidean' };
const layout = benchLayout(c);
const steps = Number(process.env.STEPS ?? 60000);
const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity: c.sk + steps + 10, resident: true });
cache.uploadState(randomState(layout, c.sk - 1, c.sk + steps + 10, 7));
const arena = DeviceArena.allocate({ q: 32 * 128 * 4, k: 32 * 128 * 4 });
copies.fromHost(arena.slices.q, new Float32Array(4096).map((_, i) => Math.sin(i)));
copies.fromHost(arena.slices.k, new Float32Array(4096).map((_, i) => Math.cos(i)));
const q = deviceTensor('f32', [1, 32, 1, 128], arena.slices.q.ptr);
const k = deviceTensor('f32', [1, 32, 1, 128], arena.slices.k.ptr);
const host = process.env.INPUTS === 'host';
const sets = Array.from({ length: 8 }, (_, s) => ({
  q: new HostTensor('f32', [1, 32, 1, 128], new Float32Array(4096).map((_, i) => Math.sin(i + s))),
  k: new HostTensor('f32', [1, 32, 1, 128], new Float32Array(4096).map((_, i) => Math.cos(i + s))),
}));
const wall = [];
for (let i = 0; i < steps; i++) {
  const t0 = performance.now();
  if (host) cache.step(sets[i & 7].q, sets[i & 7].k);
  else cache.step(q, k);
  cache.synchronize();
  wall.push(performance.now() - t0);
}
wall.sort((a, b) => a - b);
console.log(`resident steps (${host ? 'host' : 'device'} inputs): ${steps}, wall median ${(wall[steps >> 1] * 1000).toFixed(2)} us, device ${cache.residentDeviceMicros.toFixed(2)} us (last)`);
cache.dispose();
arena.dispose();
// The profile of this process is written at exit; report the previous run's (run twice) or read it after.
const dir = process.env.PROF_DIR;
if (dir) {
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.cpuprofile'))) {
    const p = JSON.parse(readFileSync(join(dir, f), 'utf8'));
    const self = new Map();
    const dt = p.timeDeltas;
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    p.samples.forEach((id, i) => {
      const n = byId.get(id);
      const key = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + (dt[i] ?? 0));
    });
    const total = [...self.values()].reduce((a, b) => a + b, 0);
    console.log(`profile ${f}: ${(total / 1000).toFixed(0)} ms sampled`);
    for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${((100 * us) / total).toFixed(1).padStart(5)}%  ${key}`);
  }
}
