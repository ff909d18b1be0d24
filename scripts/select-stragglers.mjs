#!/usr/bin/env node
// Which select blocks end a graph step last, and whether their head took the boundary bin's members
// path (diagnostic; GPU machine). Seed config, the step kernels' timing builds (phase stamps, ≈ 0.3 μs
// slower), STEPS steps on the bench's random index and 8 random query/key sets; per step: every select
// block's end on the global timer, its head's path (members: two or more pairs in the boundary bin), the
// last block's path and its lead over the median block.
//   bash scripts/device-run.sh node scripts/select-stragglers.mjs
import { join } from 'node:path';
const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { benchLayout, randomState, SEED_BENCH } = await import(join(app, 'bench/select-bench.js'));
const { CudaPQCache } = await import(join(app, 'pq/cuda-cache.js'));
const { DeviceArena, copies } = await import(join(app, 'cuda/memory.js'));
const { deviceTensor } = await import(join(app, 'tensor/device-tensor.js'));
const { SplitMix32 } = await import(join(app, 'pq/rng.js'));
const { summarize } = await import(join(app, 'bench/stats.js'));

const PH_MEMBERS = 3; // kernels/select_common.cuh enum Phase
const steps = Number(process.env.STEPS ?? 400);
const c = SEED_BENCH;
const layout = benchLayout(c);
const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
const capacity = c.sk + steps + 64;
const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, phaseTiming: true });
const arena = DeviceArena.allocate({ q: 8 * B * H * D * 4, k: 8 * B * Hkv * D * 4 });
try {
  cache.uploadState(randomState(layout, c.sk - 1, capacity, 1));
  const rng = new SplitMix32(2);
  const q = [];
  const k = [];
  for (let s = 0; s < 8; s++) {
    copies.fromHost(arena.slices.q, new Float32Array(B * H * D).map(() => rng.normal()), s * B * H * D * 4);
    copies.fromHost(arena.slices.k, new Float32Array(B * Hkv * D).map(() => rng.normal()), s * B * Hkv * D * 4);
    q.push(deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr + BigInt(s * B * H * D * 4)));
    k.push(deviceTensor('f32', [B, Hkv, 1, D], arena.slices.k.ptr + BigInt(s * B * Hkv * D * 4)));
  }
  const rows = B * H;
  let stepsWithMembers = 0;
  let lastIsMembers = 0;
  const lead = { members: [], single: [] }; // last select end − median select end (μs), by the last block's path
  const end = { members: [], single: [] }; // each select block's end after the first start (μs), by its path
  let counted = 0;
  for (let i = 0; i < steps; i++) {
    cache.step(q[i % 8], k[i % 8]);
    if (i < 20) continue;
    const { grid, cycles } = cache.phaseClocks();
    const blocks = rows * grid[0];
    let first = cycles[14];
    for (let b = 0; b < grid[0] * grid[1]; b++) if (cycles[b * 16 + 14] < first) first = cycles[b * 16 + 14];
    const ends = [];
    let any = false;
    let last = -1;
    for (let b = 0; b < blocks; b++) {
      const members = cycles[b * 16 + PH_MEMBERS] !== 0n;
      any ||= members;
      const e = Number(cycles[b * 16 + 15] - first) / 1000;
      ends.push(e);
      (members ? end.members : end.single).push(e);
      if (last < 0 || e > ends[last]) last = b;
    }
    const lastMembers = cycles[last * 16 + PH_MEMBERS] !== 0n;
    const median = [...ends].sort((a, b) => a - b)[ends.length >> 1];
    (lastMembers ? lead.members : lead.single).push(ends[last] - median);
    stepsWithMembers += any ? 1 : 0;
    lastIsMembers += lastMembers ? 1 : 0;
    counted++;
  }
  const f = (xs) => (xs.length === 0 ? '-' : `${summarize(xs).median.toFixed(2)} (${xs.length})`);
  console.log(`seed config, ${counted} steps (timing build): steps with a members-path block ${stepsWithMembers}, the last block on it in ${lastIsMembers}`);
  console.log(`select block end after the first start, μs (blocks): members path ${f(end.members)}, single/whole ${f(end.single)}`);
  console.log(`last block's lead over the median block, μs (steps): last on the members path ${f(lead.members)}, not ${f(lead.single)}`);
} finally {
  arena.dispose();
  cache.dispose();
}
