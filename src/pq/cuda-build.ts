/**
 * PQ build on the GPU (kernels/build.cu): batched k-means over all B·Hkv·M groups at once, from the
 * oracle's seeded initial draw (rng.ts), with the oracle's distance order, means and re-seeding, so
 * that integer-valued data gives identical centroids and codes on both backends.
 */
import { LaunchArgs, launch } from '../cuda/launch.js';
import { DeviceArena, copies, type DeviceRange } from '../cuda/memory.js';
import type { Kernel } from '../cuda/module.js';
import type { Event, Stream } from '../cuda/stream.js';
import type { Layout } from './config.js';
import { groupId } from './index-state.js';
import { loadKernels } from './kernels.js';
import { initialSampleIndices } from './rng.js';

/** Sub-vector widths the register-resident assignment kernels are built for. */
const ASSIGN_WIDTHS = [8, 16, 32, 64, 128] as const;
const ACCUMULATE_CHUNK = 2048;

export interface DeviceBuildTarget {
  /** [G, C, cstride] f32 (G = B·Hkv·M) */
  readonly centroids: DeviceRange;
  readonly centroidStride: number;
  /** [B, Hkv, capPad, M] u8: the codes of positions O … sk−1 are written */
  readonly codes: DeviceRange;
  readonly capPad: number;
  /** [G] f32: φ for ip (left 0 for euclidean) */
  readonly phi: DeviceRange;
}

/** Whether kernels/build.cu handles this layout (else the CPU oracle builds). */
export function deviceBuildSupported(layout: Layout): boolean {
  return layout.subDim <= 128 && layout.numCentroids <= 256;
}

const NORMS_ARGS = ['ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const INIT_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const ASSIGN_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const ACCUMULATE_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
/** Shared memory the accumulation may use (f64 sums); beyond it, global atomics. */
const ACCUMULATE_SMEM_LIMIT = 200 * 1024;
const FINALIZE_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'u32', 'i32'] as const;

/**
 * Run the k-means of `keys` ([B, Hkv, sk, D] f32 on the host) into `target`, enqueued on `stream`
 * and synchronized at the end. `onRound(done, total)` reports progress after each round.
 */
export function buildOnDevice(
  layout: Layout,
  keys: Float32Array,
  seqLen: number,
  target: DeviceBuildTarget,
  stream: Stream,
  onRound?: (done: number, total: number) => void,
  /** Recorded around the k-means kernels (after the key upload) when given, for benchmarks. */
  events?: { readonly start: Event; readonly end: Event },
): void {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  const { pqGroupFactor: M, initOffset: O, kmeansIters: iters, seed, metric } = layout.config;
  const C = layout.numCentroids;
  const cdim = layout.centroidDim;
  const cstride = target.centroidStride;
  const G = B * Hkv * M;
  const n = seqLen - O;
  const mod = loadKernels('build');
  const width = ASSIGN_WIDTHS.find((w) => w >= layout.subDim) ?? 128;
  const assign = mod.kernel(`pq_build_assign_d${width}`);
  const accumulate = mod.kernel('pq_build_accumulate');
  const assignSmem = C * cstride * 4;
  const accumulateBytes = C * cdim * 8 + C * 4;
  const direct = accumulateBytes > ACCUMULATE_SMEM_LIMIT;
  const accumulateSmem = direct ? 0 : accumulateBytes;
  optIn(assign, assignSmem);
  optIn(accumulate, accumulateSmem);

  const init = new Int32Array(G * C);
  for (let b = 0; b < B; b++) {
    for (let kvh = 0; kvh < Hkv; kvh++) {
      for (let m = 0; m < M; m++) {
        const g = groupId(layout, b, kvh, m);
        init.set(initialSampleIndices(seed, g, n, C), g * C);
      }
    }
  }
  const tmp = DeviceArena.allocate({
    keys: keys.byteLength,
    norms: G * n * 4,
    init: init.byteLength,
    sums: G * C * cdim * 8,
    counts: G * C * 4,
    codes: G * n,
  });
  const argsList: LaunchArgs[] = [];
  const args = <K extends readonly ('ptr' | 'u64' | 'i32' | 'u32' | 'f32')[]>(kinds: K): LaunchArgs<K> => {
    const a = new LaunchArgs(kinds);
    argsList.push(a);
    return a;
  };
  try {
    const s = tmp.slices;
    copies.fromHost(s.keys, keys);
    copies.fromHost(s.init, init);
    copies.fill32Async(target.phi, 0, target.phi.bytes / 4, stream);
    copies.fill32Async(target.centroids, 0, target.centroids.bytes / 4, stream);
    events?.start.record(stream);
    const ip = metric === 'ip';
    if (ip) {
      launch(mod.kernel('pq_build_norms'), { grid: [Math.ceil(n / 256), G, 1], block: [256, 1, 1] }, args(NORMS_ARGS).setAll([s.keys.ptr, s.norms.ptr, target.phi.ptr, n, M, seqLen, D, O]), stream);
    }
    launch(
      mod.kernel('pq_build_init'),
      { grid: [G, 1, 1], block: [256, 1, 1] },
      args(INIT_ARGS).setAll([s.keys.ptr, s.norms.ptr, target.phi.ptr, s.init.ptr, target.centroids.ptr, n, M, seqLen, D, O, C, cdim, cstride]),
      stream,
    );
    const assignArgs = (indexCodes: bigint): LaunchArgs =>
      args(ASSIGN_ARGS).setAll([s.keys.ptr, s.norms.ptr, target.phi.ptr, target.centroids.ptr, s.codes.ptr, indexCodes, n, M, seqLen, D, O, C, cdim, cstride, target.capPad]);
    const assignShape = { grid: [Math.ceil(n / 128), G, 1] as const, block: [128, 1, 1] as const, sharedBytes: assignSmem };
    const roundAssign = assignArgs(0n);
    const accumulateArgs = args(ACCUMULATE_ARGS).setAll([s.keys.ptr, s.norms.ptr, target.phi.ptr, s.codes.ptr, s.sums.ptr, s.counts.ptr, n, M, seqLen, D, O, C, cdim, ACCUMULATE_CHUNK, direct ? 1 : 0]);
    const finalizeArgs = args(FINALIZE_ARGS);
    const finalize = mod.kernel('pq_build_finalize');
    for (let round = 0; round < iters; round++) {
      launch(assign, assignShape, roundAssign, stream);
      copies.fill32Async(s.sums, 0, s.sums.bytes / 4, stream);
      copies.fill32Async(s.counts, 0, s.counts.bytes / 4, stream);
      launch(accumulate, { grid: [Math.ceil(n / ACCUMULATE_CHUNK), G, 1], block: [256, 1, 1], sharedBytes: accumulateSmem }, accumulateArgs, stream);
      finalizeArgs.setAll([s.keys.ptr, s.norms.ptr, target.phi.ptr, s.sums.ptr, s.counts.ptr, target.centroids.ptr, n, M, seqLen, D, O, C, cdim, cstride, seed, round]);
      launch(finalize, { grid: [G, 1, 1], block: [256, 1, 1] }, finalizeArgs, stream);
      if (onRound) {
        stream.synchronize();
        onRound(round + 1, iters + 1);
      }
    }
    launch(assign, assignShape, assignArgs(target.codes.ptr), stream);
    events?.end.record(stream);
    stream.synchronize();
    onRound?.(iters + 1, iters + 1);
  } finally {
    for (const a of argsList) a.dispose();
    tmp.dispose();
  }
}

function optIn(kernel: Kernel, sharedBytes: number): void {
  if (sharedBytes > 48 * 1024) kernel.setMaxDynamicSharedBytes(sharedBytes);
}
