/**
 * The PQ build benchmark (issue 5): k-means of the seed config on the GPU, GPU time of the k-means
 * kernels from events (the key upload excluded) and wall-clock of the whole build (upload included),
 * plus the quantization error, on keys that bench/torch_build_baseline.py regenerates.
 */
import { CudaContext } from '../cuda/context.js';
import { DeviceBuffer, copies } from '../cuda/memory.js';
import { Event, Stream } from '../cuda/stream.js';
import { type Layout, makeLayout } from '../pq/config.js';
import { type BuildStats, type BuildTuning, BuildWorkspace, type DeviceBuildTarget, allocateBuildTarget, buildOnDevice, readBuildTarget } from '../pq/cuda-build.js';
import { groupId } from '../pq/index-state.js';
import { mix32 } from '../pq/rng.js';
import { type RecordRow, latencyFields } from './record.js';
import { BusyQueue } from './busy-queue.js';
import { type LatencySummary, nowUs, round3, summarize } from './stats.js';
import { type DeviceTensor, deviceTensor } from '../tensor/device-tensor.js';
import { HostTensor } from '../tensor/host-tensor.js';

export interface BuildBenchConfig {
  readonly B: number;
  readonly Hkv: number;
  readonly D: number;
  readonly sk: number;
  readonly M: number;
  readonly pqBits: number;
  readonly O: number;
  readonly iters: number;
}

export const SEED_BUILD: BuildBenchConfig = { B: 1, Hkv: 32, D: 128, sk: 32000, M: 2, pqBits: 6, O: 128, iters: 10 };

/**
 * Keys uniform in [−4, 4) as a pure function of the flat index: key[i] = mix32(i ^ 0x5eed5eed) / 2^32 · 8 − 4,
 * so bench/torch_build_baseline.py regenerates the very same inputs (and the initial draw from
 * rng.ts) without a multi-gigabyte dump.
 */
export function benchKeys(n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (mix32((i ^ 0x5eed5eed) >>> 0) / 4294967296) * 8 - 4;
  return out;
}

/** Where the timed builds read their keys: the host array (uploaded by every build), or a device copy made once. */
export type BuildKeySource = 'host-f32' | 'device-f32' | 'device-bf16' | 'device-f16';
const KEY_SOURCES: readonly BuildKeySource[] = ['host-f32', 'device-f32', 'device-bf16', 'device-f16'];

/** Untimed builds before the timed ones of each key source. */
export const BUILD_WARMUPS = 3;

/** The index layout a build bench config describes (H = Hkv: the build reads keys only). */
export function buildBenchLayout(c: BuildBenchConfig): Layout {
  return makeLayout({ batch: c.B, heads: c.Hkv, kvHeads: c.Hkv, headDim: c.D }, { pqGroupFactor: c.M, pqBits: c.pqBits, initOffset: c.O, kmeansIters: c.iters });
}

/** The busy queue ahead of a timed build graph: longer than the host's launch of it. */
const BUILD_BUSY_NS = 500_000;

/**
 * The seed build from each key source in one process: `reps` timed builds after BUILD_WARMUPS untimed ones each,
 * with a kept workspace as CudaPQCache.build has, then 3 builds without one. Wall-clock is call →
 * return of buildOnDevice (upload, or a staging copy where needed; the k-means graph with its
 * NaN/Inf check; the sync; without a workspace also the temporaries and the capture); GPU time is
 * the k-means graph between events, in builds of their own with the stream kept busy ahead. The quantization error is measured against the fp32 keys in every
 * row (the bf16 and f16 rows' indexes are built on rounded keys).
 */
export function benchBuildCuda(c: BuildBenchConfig, reps: number, tuning: BuildTuning = {}, sources: readonly BuildKeySource[] = KEY_SOURCES): RecordRow[] {
  const layout = buildBenchLayout(c);
  const keys = benchKeys(c.B * c.Hkv * c.sk * c.D);
  CudaContext.primary();
  const stream = new Stream();
  const e0 = new Event();
  const e1 = new Event();
  const busy = new BusyQueue(BUILD_BUSY_NS);
  const { arena, target: t } = allocateBuildTarget(layout, c.sk);
  try {
    const rows: RecordRow[] = [];
    for (const source of sources) {
      // Device keys: uploaded once, outside the timed builds.
      const host = new HostTensor('f32', [c.B, c.Hkv, c.sk, c.D], keys);
      const onDevice = source === 'host-f32' ? undefined : source === 'device-f32' ? host : host.toDType(source === 'device-bf16' ? 'bf16' : 'f16');
      const buf = onDevice && new DeviceBuffer(onDevice.data.byteLength);
      // As CudaPQCache.build: a kept workspace, so the timed builds (same sk and keys) replay one graph.
      const workspace = new BuildWorkspace(layout, c.sk);
      try {
        let input: Float32Array | DeviceTensor = keys;
        if (onDevice && buf) {
          copies.fromHost(buf, onDevice.data);
          input = deviceTensor(onDevice.dtype, onDevice.shape, buf.ptr);
        }
        // Warm-up: module load, first touch and capture, then a few more calls so that the timed
        // ones do not run the path's JavaScript before V8 has compiled it (bench/NOTES.md session 45).
        for (let w = 0; w < BUILD_WARMUPS; w++) buildOnDevice(layout, input, c.sk, t, stream, undefined, undefined, tuning, workspace);
        const wall: number[] = [];
        let stats: BuildStats | undefined;
        for (let r = 0; r < reps; r++) {
          const t0 = nowUs();
          stats = buildOnDevice(layout, input, c.sk, t, stream, undefined, undefined, tuning, workspace);
          wall.push(nowUs() - t0);
        }
        // GPU time in builds of their own: the stream kept busy ahead of the start event, so the
        // events time the device (the graph's nodes) and not the host's launch of it.
        const gpu: number[] = [];
        for (let r = 0; r < reps; r++) {
          buildOnDevice(layout, input, c.sk, t, stream, undefined, { start: e0, end: e1, beforeStart: (s) => busy.fill(s) }, tuning, workspace);
          gpu.push(e1.elapsedSince(e0) * 1000);
        }
        // A build that keeps nothing: allocation, capture and free of its own (a new index's first build, or a new sk).
        const fresh: number[] = [];
        for (let r = 0; r < 3; r++) {
          const t0 = nowUs();
          buildOnDevice(layout, input, c.sk, t, stream, undefined, undefined, tuning);
          fresh.push(nowUs() - t0);
        }
        rows.push(buildRow(c, layout, keys, t, source, summarize(wall), summarize(gpu), stats, summarize(fresh).median));
      } finally {
        workspace.dispose();
        buf?.dispose();
      }
    }
    return rows;
  } finally {
    arena.dispose();
    busy.dispose();
    e0.dispose();
    e1.dispose();
    stream.dispose();
  }
}

function buildRow(c: BuildBenchConfig, layout: Layout, keys: Float32Array, t: DeviceBuildTarget, source: BuildKeySource, w: LatencySummary, g: LatencySummary,
  stats: BuildStats | undefined, unkeptWallUs: number): RecordRow {
  const C = layout.numCentroids;
  const { centroidStride: cstride, capPad } = t;
  // Quantization error of the last build, on the host (float64 sums), against the fp32 keys.
  const { centroids: cent, codes } = readBuildTarget(t);
  const dsub = layout.subDim;
  let err = 0;
  for (let bkv = 0; bkv < c.B * c.Hkv; bkv++) {
    for (let m = 0; m < c.M; m++) {
      const grp = groupId(layout, 0, bkv, m);
      for (let p = c.O; p < c.sk; p++) {
        const code = codes[(bkv * capPad + p) * c.M + m];
        const co = (grp * C + code) * cstride;
        const ko = (bkv * c.sk + p) * c.D + m * dsub;
        for (let j = 0; j < dsub; j++) err += (keys[ko + j] - cent[co + j]) ** 2;
      }
    }
  }
  return {
    impl: source === 'host-f32' ? 'pqcache-cuda' : `pqcache-cuda-${source}`,
    config: { ...c, keys: source },
    wall_us: latencyFields(w),
    gpu_us: latencyFields(g),
    extra: {
      quantization_error: err,
      gpu_ms_kmeans: round3(g.median / 1000),
      // wall_us: builds with a kept workspace (temporaries and the graph for this sk and keys), as
      // CudaPQCache.build repeats; this: builds that allocate, capture and free their own (median of 3).
      wall_us_without_workspace: round3(unkeptWallUs),
      note: source === 'host-f32'
        ? 'wall includes the host→device key upload; gpu covers the k-means graph on the device'
        : `keys already on the device (${source.slice(7)}), ${stats?.keysRead === 'staged' ? 'staged' : 'read in place'}: wall covers ${stats?.keysRead === 'staged' ? 'the fp32 staging copy (with the NaN/Inf check), ' : ''}the k-means graph (with the NaN/Inf check), the sync and the read-back; gpu covers the k-means graph on the device`,
      gpu_method: `CUDA events around the graph, stream kept busy ${BUILD_BUSY_NS / 1000} μs ahead (the host's launch outside), builds of their own`,
      round_kernel: stats?.roundKernel,
      recomputed_rounds: stats?.recomputedRounds,
      first_sums_chunk: stats?.firstSumsChunk,
      keys_read: stats?.keysRead,
      // Share of points re-scored in the canonical order (near ties of the tensor-core estimate)
      // and share whose code changed, per assignment pass (last: the final assignment).
      flagged_share_per_round: shares(stats?.flaggedPerRound, stats?.points),
      changed_share_per_round: shares(stats?.changedPerRound, stats?.points),
    },
  };
}

function shares(counts: readonly number[] | undefined, points: number | undefined): number[] {
  return counts && points ? counts.map((c) => Math.round((c / points) * 1e5) / 1e5) : [];
}
