#!/usr/bin/env node
// What does a clustered launch cost the device? (diagnostic; GPU machine)
// The seed step's row kernel runs in clusters of two blocks (_c2). Earlier floors timed only plain
// one-kernel graphs (2.8–3.1 μs by events, whatever the grid). This times (empty-graph-floor.mjs)
// one-kernel graphs of an empty kernel: plain, in clusters of 2 and of 4, at a cluster's worth of
// 1-thread blocks and at the seed step's 64 select blocks (+ 32 append blocks: 96) of 1024 threads,
// with and without 200 KB of dynamic shared memory; a plain one with 48 64-bit parameters; and the
// events alone. If clusters cost the launch more than a plain grid does, a step of unclustered
// blocks would get that back (bench/NOTES.md, session 52: they do not).
//   bash scripts/device-run.sh node scripts/cluster-launch-floor.mjs
import { join } from 'node:path';
import { emptyGraphFloors } from './empty-graph-floor.mjs';

const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { LaunchArgs } = await import(join(app, 'cuda/launch.js'));
const params48 = new LaunchArgs(Array(48).fill('u64')).setAll(Array.from({ length: 48 }, (_, i) => BigInt(i)));
const smem = 200 << 10;
const shape = (blocks, threads, sharedBytes = 0) => ({ grid: [blocks, 1, 1], block: [threads, 1, 1], sharedBytes });
const out = await emptyGraphFloors(app, [
  ['plain 2x1', 'pq_empty', shape(2, 1)],
  ['c2 2x1', 'pq_empty_c2', shape(2, 1)],
  ['c4 4x1', 'pq_empty_c4', shape(4, 1)],
  ['plain 96x1024', 'pq_empty', shape(96, 1024)],
  ['c2 96x1024', 'pq_empty_c2', shape(96, 1024)],
  ['c4 96x1024', 'pq_empty_c4', shape(96, 1024)],
  ['plain 96x1024 smem 200K', 'pq_empty', shape(96, 1024, smem)],
  ['c2 96x1024 smem 200K', 'pq_empty_c2', shape(96, 1024, smem)],
  ['plain 64x1024 smem 200K', 'pq_empty', shape(64, 1024, smem)],
  ['c2 64x1024 smem 200K', 'pq_empty_c2', shape(64, 1024, smem)],
  ['plain 96x1024, 48 u64 parameters', 'pq_empty_params48', shape(96, 1024), params48],
], { iters: Number(process.env.ITERS ?? 3000) });
params48.dispose();
console.log(`CLUSTER_FLOOR ${JSON.stringify(out)}`);
