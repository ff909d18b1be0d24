/**
 * `pqcache soak`: many decode steps on long-lived indexes, watching device memory, host RSS and
 * latency over time. A serving process reuses an index across requests, so the steps come as
 * requests: the index state is reset to the same prefill (uploadState) and then `requestLen`
 * decode steps (append + select, one graph launch, synchronized) run on it. Latency therefore
 * compares like with like from the first request to the last, and any growth is a leak.
 *   one index:   the seed config, `steps` steps in all;
 *   N indexes:   N caches, each on its own stream, stepped round-robin (interleaved).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { CudaContext } from '../cuda/context.js';
import { DeviceArena, allocationStats, copies } from '../cuda/memory.js';
import { CudaPQCache } from '../pq/cuda-cache.js';
import { SplitMix32 } from '../pq/rng.js';
import { deviceTensor } from '../tensor/device-tensor.js';
import { type RecordRow, latencyFields } from './record.js';
import { SEED_BENCH, benchLayout, randomState } from './select-bench.js';
import { cpusAllowed, nowUs, percentile, round3, summarize } from './stats.js';

export interface SoakOptions {
  readonly steps: number;
  readonly requestLen: number;
  readonly indexes: number;
  /** Steps of the interleaved run (over all its indexes). */
  readonly interleavedSteps: number;
  readonly onProgress?: (done: number, total: number) => void;
}

interface Sample {
  readonly step: number;
  readonly deviceFreeMiB: number;
  readonly ourDeviceMiB: number;
  readonly rssMiB: number;
  /** V8 heap in use after a full collection: what a JS-side leak would grow. */
  readonly heapMiB: number;
  /** V8 heap reserved (heapTotal): includes the young generation, which V8 grows once under load. */
  readonly heapTotalMiB: number;
  readonly p50: number;
  readonly p99: number;
}

const MiB = 1024 * 1024;

/** A full garbage collection before each memory sample, so the numbers show live memory only. */
const collect: () => void = (() => {
  setFlagsFromString('--expose_gc');
  return runInNewContext('gc') as () => void;
})();

function sample(step: number, window: ArrayLike<number>): Sample {
  const s = Array.from(window).sort((a, b) => a - b);
  collect();
  return {
    step,
    deviceFreeMiB: round3(CudaContext.primary().memInfo().free / MiB),
    ourDeviceMiB: round3(allocationStats().deviceBytes / MiB),
    rssMiB: round3(process.memoryUsage().rss / MiB),
    heapMiB: round3(process.memoryUsage().heapUsed / MiB),
    heapTotalMiB: round3(process.memoryUsage().heapTotal / MiB),
    p50: round3(percentile(s, 0.5)),
    p99: round3(percentile(s, 0.99)),
  };
}

/** Least-squares slope of ys over xs. */
function slope(xs: readonly number[], ys: readonly number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  return sxx === 0 ? 0 : sxy / sxx;
}

/** Run `total` steps over `count` caches round-robin; reset each cache every requestLen of its steps. */
function soakRun(name: string, count: number, total: number, o: SoakOptions, done0: number, grandTotal: number): RecordRow {
  const c = { ...SEED_BENCH, H: count > 1 ? 8 : SEED_BENCH.H, Hkv: count > 1 ? 8 : SEED_BENCH.Hkv };
  const layout = benchLayout(c);
  const capacity = c.sk + o.requestLen + 8;
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  const sets = 8;
  const rng = new SplitMix32(11);
  CudaContext.primary(); // current before the first allocation
  const arena = DeviceArena.allocate({ q: sets * B * H * D * 4, k: sets * B * Hkv * D * 4 });
  const caches: CudaPQCache[] = [];
  const windows: Sample[] = [];
  // Written through once before the first sample: a fresh typed array is zero-mapped by the OS and
  // each page becomes resident on its first write, which read as +8 bytes of RSS per step (the
  // "leak" of sessions 5–6) when the latencies were stored step by step.
  const all = new Float64Array(total).fill(-1);
  try {
    copies.fromHost(arena.slices.q, Float32Array.from({ length: sets * B * H * D }, () => rng.normal()));
    copies.fromHost(arena.slices.k, Float32Array.from({ length: sets * B * Hkv * D }, () => rng.normal()));
    const q = Array.from({ length: sets }, (_, i) => deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr + BigInt(i * B * H * D * 4)));
    const k = Array.from({ length: sets }, (_, i) => deviceTensor('f32', [B, Hkv, 1, D], arena.slices.k.ptr + BigInt(i * B * Hkv * D * 4)));
    const prefill = randomState(layout, c.sk - 1, capacity, 5);
    for (let i = 0; i < count; i++) caches.push(new CudaPQCache({ shape: layout.shape, config: layout.config, capacity }));
    const stepsOf = new Array<number>(count).fill(0);
    const windowLen = Math.max(o.requestLen, Math.floor(total / 50));
    let from = 0;
    windows.push(sample(0, [0]));
    for (let s = 0; s < total; s++) {
      const i = s % count;
      const cache = caches[i];
      if (stepsOf[i] % o.requestLen === 0) cache.uploadState(prefill); // a new request (uploadState copies, never mutates)
      stepsOf[i]++;
      const t0 = nowUs();
      cache.step(q[s % sets], k[(s + i) % sets]);
      cache.synchronize();
      all[s] = nowUs() - t0;
      if (s + 1 - from === windowLen || s + 1 === total) {
        windows.push(sample(s + 1, all.subarray(from, s + 1)));
        from = s + 1;
        o.onProgress?.(done0 + s + 1, grandTotal);
      }
    }
  } finally {
    for (const cache of caches) cache.dispose();
    arena.dispose();
  }
  // Drift: the p99 of the last five windows against windows 2–6 (the first holds the graph
  // captures and JIT warm-up), each as the median of its five window p99s.
  const med = (xs: Sample[]): number => summarize(xs.map((w) => w.p99)).median;
  const early = windows.slice(2, 7);
  const late = windows.slice(-5);
  const first = windows[2] ?? windows[1];
  const last = windows[windows.length - 1];
  const wall = summarize(Array.from(all));
  const drift = (med(late) - med(early)) / med(early);
  const half = windows.slice(Math.floor(windows.length / 2));
  return {
    impl: name,
    config: { ...c, indexes: count, steps: total, request_len: o.requestLen },
    wall_us: latencyFields(wall),
    extra: {
      device: CudaContext.primary().device.name,
      cpus_allowed: cpusAllowed(),
      device_free_mib: { start: windows[0].deviceFreeMiB, end: last.deviceFreeMiB },
      our_device_mib: { start: windows[0].ourDeviceMiB, end: last.ourDeviceMiB },
      rss_mib: { start: first.rssMiB, end: last.rssMiB },
      // A leak is a slope; a one-off step (allocator arenas, JIT code) is not.
      rss_bytes_per_step_second_half: round3(slope(half.map((w) => w.step), half.map((w) => w.rssMiB * MiB))),
      heap_mib: { start: first.heapMiB, end: last.heapMiB },
      heap_total_mib: { start: first.heapTotalMiB, end: last.heapTotalMiB },
      p99_us: { early_windows: round3(med(early)), late_windows: round3(med(late)) },
      p99_drift: round3(drift),
      windows,
    },
  };
}

export function runSoak(o: SoakOptions): RecordRow[] {
  const grand = o.steps + o.interleavedSteps;
  const rows = [soakRun('soak-1-index', 1, o.steps, o, 0, grand)];
  if (o.indexes > 1 && o.interleavedSteps > 0) rows.push(soakRun(`soak-${o.indexes}-indexes-interleaved`, o.indexes, o.interleavedSteps, o, o.steps, grand));
  return rows;
}
