/**
 * Decode attention on the GPU (kernels/attention.cu): launch planning, the K/V cache, and the
 * launchers the decode layer captures into its graph.
 *
 * Split-K: a row's positions are cut into `splits` chunks, one block each. The blocks' partial
 * softmax states are merged either through global memory by the last block of the row to finish
 * (merge 'global', any GPU) or, for sparse rows on sm_90, inside a thread-block cluster of the row's
 * blocks through distributed shared memory (merge 'cluster'). Sparse rows are (b, h) over the
 * selected list; dense rows are (b, kvh, head group) over every position, so each K/V row is read
 * once for its query heads.
 */
import type { CudaContext } from '../cuda/context.js';
import type { DevicePtr } from '../cuda/driver.js';
import { launchWith } from '../cuda/launch.js';
import { DeviceArena, type DeviceRange, copies } from '../cuda/memory.js';
import type { Kernel } from '../cuda/module.js';
import { Stream } from '../cuda/stream.js';
import { ConfigError } from '../errors.js';
import type { CacheShape } from '../pq/config.js';
import { roundUp } from '../pq/cuda-plan.js';
import { DTYPE_CODE, loadKernels } from '../pq/kernels.js';
import type { StepInput } from '../pq/step-rows.js';
import { BYTES_PER_ELEMENT, type FloatDType } from '../tensor/dtype.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { kvRowsInRows, kvRowsOf } from './kv-layout.js';

/** Threads per block and warps of the attention kernels (kernels/attention.cu NT). */
export const ATTEND_THREADS = 128;
/** Threads per block of the cluster-merged sparse kernels (kernels/attention.cu CLUSTER_NT). */
export const ATTEND_CLUSTER_THREADS = 256;
/** Positions a warp of those kernels has in flight in one pass (kernels/attention.cu CLUSTER_PB), whatever D and dtype. */
export const ATTEND_CLUSTER_POSITIONS_PER_WARP = 8;
/** Cluster sizes the sparse kernels are built for (kernels/attention.cu PQ_ATTEND_SPARSE_CLUSTER). */
const ATTEND_CLUSTERS = [1, 2, 4, 8] as const;
const WARPS = ATTEND_THREADS / 32;
/** Largest head dimension of the attention kernels. */
export const MAX_ATTEND_HEAD_DIM = 256;
/** Blocks per SM the plans assume when the kernel's occupancy is not known. */
const DEFAULT_BLOCKS_PER_SM = 4;

/** Why the attention kernels cannot run this head dimension (undefined when they can). */
export function attentionProblem(headDim: number): ConfigError | undefined {
  if (headDim > MAX_ATTEND_HEAD_DIM) return new ConfigError('headDim', `at most ${MAX_ATTEND_HEAD_DIM} for CUDA attention`, headDim);
  // 16-byte K/V rows in every dtype: the kernels' vector loads stay aligned.
  if (headDim % 8 !== 0) return new ConfigError('headDim', 'a multiple of 8 for CUDA attention', headDim);
  return undefined;
}

/**
 * How a warp splits its work (kernels/attention.cu lanes_per_position, substeps): LP lanes per
 * position with DPL dims each, PW = 32 / LP positions per sub-step, U sub-steps loaded at once.
 */
export function attendGeometry(headDim: number, groupHeads: number, kvDType: FloatDType): { dmax: 128 | 256; lanesPerPosition: number; dimsPerLane: number; positionsPerWarp: number } {
  const dmax = headDim <= 128 ? 128 : 256;
  const lp = Math.min(32, Math.max(8, (groupHeads * dmax) / 32));
  const dpl = dmax / lp;
  const words = (dpl * BYTES_PER_ELEMENT[kvDType]) / 4;
  const substeps = Math.max(1, Math.floor(32 / (2 * words)));
  return { dmax, lanesPerPosition: lp, dimsPerLane: dpl, positionsPerWarp: (32 / lp) * substeps };
}

/** Query heads per dense row: the smallest of 1, 2, 4, 8 covering min(G, 8). */
export function denseGroupHeads(group: number): 1 | 2 | 4 | 8 {
  const g = Math.min(group, 8);
  return g <= 1 ? 1 : g <= 2 ? 2 : g <= 4 ? 4 : 8;
}

export interface AttendPlan {
  readonly kind: 'sparse' | 'dense';
  /** Rows of the grid (y) and splits per row (x). */
  readonly rows: number;
  readonly splits: number;
  /** Positions per split. */
  readonly chunk: number;
  /** Query heads per row (1 for sparse). */
  readonly groupHeads: number;
  /** How a row's splits are merged: partials in global memory and the last block, or one cluster per row (sm_90). */
  readonly merge: SparseMerge;
  /** Threads per block. */
  readonly threads: number;
  /** Longest row the plan covers (splits · chunk ≥ this). */
  readonly maxLen: number;
  readonly kernel: string;
}

/** Most splits per row (kernels/attention.cu MAX_SPLITS). */
export const MAX_ATTEND_SPLITS = 256;

/** Splits so that rows × splits fills one wave of resident blocks (no half-empty second wave). */
function splitPlan(rows: number, maxLen: number, step: number, sms: number, blocksPerSM: number): { chunk: number; splits: number } {
  const wantSplits = Math.min(MAX_ATTEND_SPLITS, Math.max(1, Math.floor((blocksPerSM * sms) / rows)));
  const chunk = Math.max(step, roundUp(Math.ceil(maxLen / wantSplits), step));
  return { chunk, splits: Math.max(1, Math.ceil(maxLen / chunk)) };
}

export type SparseMerge = 'global' | 'cluster';

/** Sparse attention over lists of up to `listCapacity` positions, merged through global memory. */
export function planSparseAttend(shape: CacheShape, kvDType: FloatDType, listCapacity: number, sms: number, blocksPerSM = DEFAULT_BLOCKS_PER_SM): AttendPlan {
  const geo = attendGeometry(shape.headDim, 1, kvDType);
  const rows = shape.batch * shape.heads;
  const { chunk, splits } = splitPlan(rows, listCapacity, WARPS * geo.positionsPerWarp, sms, blocksPerSM);
  return {
    kind: 'sparse', merge: 'global', threads: ATTEND_THREADS, rows, splits, chunk, groupHeads: 1, maxLen: listCapacity,
    kernel: `pq_attend_sparse_${kvDType}_d${geo.dmax}`,
  };
}

/**
 * Sparse attention merged inside one thread-block cluster per row (sm_90): the smallest cluster
 * (1, 2, 4, 8) whose blocks each gather their share of the list in one pass of their warps, halved
 * while the grid would exceed `waves` waves of resident blocks. Each pass costs a global round trip,
 * so fewer positions per block pays while the blocks fit at once; past one wave, more passes a block
 * cost less than more blocks (H100, 384 positions: B = 1 best at 8 blocks a row, 7.97 μs against 8.61
 * at 4; B = 8 best at 1, 27.8 μs against 30.5 at 2 and 39.7 at 8; scripts/attend-cluster-sizes.mjs).
 */
export function planSparseAttendCluster(shape: CacheShape, kvDType: FloatDType, listCapacity: number, sms: number, blocksPerSM = DEFAULT_BLOCKS_PER_SM, waves = 1): AttendPlan {
  const dmax = attendGeometry(shape.headDim, 1, kvDType).dmax;
  const rows = shape.batch * shape.heads;
  const perWarp = ATTEND_CLUSTER_POSITIONS_PER_WARP;
  const pass = (ATTEND_CLUSTER_THREADS / 32) * perWarp; // positions a block gathers in one pass
  const want = Math.ceil(Math.max(1, listCapacity) / pass);
  let cluster: number = ATTEND_CLUSTERS.find((c) => c >= want) ?? ATTEND_CLUSTERS[ATTEND_CLUSTERS.length - 1];
  while (cluster > 1 && rows * cluster > waves * sms * blocksPerSM) cluster /= 2;
  const chunk = roundUp(Math.ceil(Math.max(1, listCapacity) / cluster), perWarp);
  return {
    kind: 'sparse', merge: 'cluster', threads: ATTEND_CLUSTER_THREADS, rows, splits: cluster, chunk, groupHeads: 1, maxLen: listCapacity,
    kernel: `pq_attend_sparse_${kvDType}_d${dmax}_c${cluster}`,
  };
}

/** Dense attention over every position, valid while sk ≤ maxSeqLen. */
export function planDenseAttend(shape: CacheShape, kvDType: FloatDType, maxSeqLen: number, sms: number, blocksPerSM = DEFAULT_BLOCKS_PER_SM): AttendPlan {
  const gh = denseGroupHeads(shape.heads / shape.kvHeads);
  const geo = attendGeometry(shape.headDim, gh, kvDType);
  const rows = shape.batch * shape.kvHeads * Math.ceil(shape.heads / shape.kvHeads / gh);
  const { chunk, splits } = splitPlan(rows, maxSeqLen, WARPS * geo.positionsPerWarp, sms, blocksPerSM);
  return {
    kind: 'dense', merge: 'global', threads: ATTEND_THREADS, rows, splits, chunk, groupHeads: gh, maxLen: maxSeqLen,
    kernel: `pq_attend_dense_${kvDType}_d${geo.dmax}_g${gh}`,
  };
}

/** Per-split partial softmax states and per-row merge counters of one plan. */
export class AttendScratch {
  private readonly arena: DeviceArena<'partial' | 'counters'>;

  constructor(readonly plan: AttendPlan, headDim: number, stream: Stream) {
    const global = plan.merge === 'global'; // cluster plans merge in shared memory: no partials, no counters
    this.arena = DeviceArena.allocate({
      partial: global ? plan.rows * plan.splits * plan.groupHeads * (headDim + 4) * 4 : 0,
      counters: global ? plan.rows * 4 : 0,
    });
    if (global) copies.fill32Async(this.arena.slices.counters, 0, plan.rows, stream); // the kernels keep them zero between launches
  }

  get partial(): DevicePtr {
    return this.arena.slices.partial.ptr;
  }

  get counters(): DevicePtr {
    return this.arena.slices.counters.ptr;
  }

  dispose(): void {
    this.arena.dispose();
  }
}

/**
 * A K/V cache in device memory, in one dtype: ours (KVCache) or a caller's. Row p of (b, kv-head) lies
 * at element b·strides[0] + kvh·strides[1] + p·strides[2] of `keys` and of `values` (src/attention/kv-layout.ts),
 * its D elements contiguous; without `strides`, [B, Hkv, positions, D].
 */
export interface KVCacheView {
  readonly dtype: FloatDType;
  readonly keys: DevicePtr;
  readonly values: DevicePtr;
  /** Positions each (b, kv-head) holds. */
  readonly positions: number;
  /**
   * Element strides [batch, head, position], each a multiple of D, distinct rows not overlapping,
   * at most 2^31 rows of D elements spanned: e.g. [positions·Hkv·D, D, Hkv·D] for a cache laid out
   * [B, positions, Hkv, D].
   */
  readonly strides?: readonly [number, number, number];
}

/** A K/V cache in device memory with `capacity` positions reserved per (b, kv-head), [B, Hkv, capacity, D]. */
export class KVCache implements KVCacheView {
  private readonly arena: DeviceArena<'keys' | 'values'>;

  constructor(readonly shape: CacheShape, readonly capacity: number, readonly dtype: FloatDType) {
    const bytes = shape.batch * shape.kvHeads * capacity * shape.headDim * BYTES_PER_ELEMENT[dtype];
    this.arena = DeviceArena.allocate({ keys: bytes, values: bytes });
  }

  get keys(): DevicePtr {
    return this.arena.slices.keys.ptr;
  }

  get values(): DevicePtr {
    return this.arena.slices.values.ptr;
  }

  get positions(): number {
    return this.capacity;
  }

  /** Write host keys/values [B, Hkv, n, D] at positions 0 … n−1 (converted to the cache dtype). Synchronous. */
  upload(keys: HostTensor, values: HostTensor): void {
    uploadKVRows(this, this.shape, keys, values);
  }

  dispose(): void {
    this.arena.dispose();
  }
}

/**
 * Positions 0 … n−1 of each (b, kv-head) of a K/V cache, as 2D copies see them: `copy(r, rows, pitch)`
 * for r = b·Hkv + h, with `rows` the device range from its position 0 to its position n−1's end and
 * `pitch` the bytes between its positions; host rows are n·D elements a (b, kv-head), contiguous.
 * One stream for the copies, disposed after.
 */
function forEachHeadRows(kv: KVCacheView, shape: CacheShape, n: number, base: DevicePtr,
  copy: (r: number, rows: DeviceRange, pitch: number, stream: Stream) => void): void {
  if (n === 0) return;
  const { batch: B, kvHeads: Hkv, headDim: D } = shape;
  const at = kvRowsOf(kv, shape);
  const eb = BYTES_PER_ELEMENT[kv.dtype];
  const bytes = ((n - 1) * at.position + D) * eb;
  const stream = new Stream();
  try {
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < Hkv; h++) copy(b * Hkv + h, { ptr: base + BigInt((b * at.batch + h * at.head) * eb), bytes }, at.position * eb, stream);
    }
  } finally {
    stream.dispose();
  }
}

/** Write host keys/values [B, Hkv, n, D] at positions 0 … n−1 of a K/V cache (converted to its dtype): one 2D copy a (b, kv-head). Synchronous. */
export function uploadKVRows(kv: KVCacheView, shape: CacheShape, keys: HostTensor, values: HostTensor): void {
  const n = keys.shape[2] as number;
  const rowBytes = shape.headDim * BYTES_PER_ELEMENT[kv.dtype];
  const headBytes = n * rowBytes;
  for (const [t, base] of [[keys, kv.keys], [values, kv.values]] as const) {
    const data = t.dtype === kv.dtype ? t.data : HostTensor.fromNumbers(kv.dtype, t.shape, t.toFloat32()).data;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    forEachHeadRows(kv, shape, n, base, (r, rows, pitch, stream) =>
      copies.fromHost2D(rows, pitch, bytes.subarray(r * headBytes, (r + 1) * headBytes), rowBytes, rowBytes, n, stream));
  }
}

/** Positions 0 … n−1 of a K/V cache back on the host as f32 [B, Hkv, n, D] (one 2D copy a (b, kv-head)). Synchronous. */
export function kvRowsToHost(kv: KVCacheView, shape: CacheShape, n: number): { keys: Float32Array; values: Float32Array } {
  const { batch: B, kvHeads: Hkv, headDim: D } = shape;
  const rowBytes = D * BYTES_PER_ELEMENT[kv.dtype];
  const headBytes = n * rowBytes;
  const read = (base: DevicePtr): Float32Array => {
    const raw = new Uint8Array(B * Hkv * headBytes);
    forEachHeadRows(kv, shape, n, base, (r, rows, pitch, stream) =>
      copies.toHost2D(raw.subarray(r * headBytes, (r + 1) * headBytes), rowBytes, rows, pitch, rowBytes, n, stream));
    const storage = kv.dtype === 'f32' ? new Float32Array(raw.buffer) : new Uint16Array(raw.buffer);
    return new HostTensor(kv.dtype, [B, Hkv, n, D], storage).toFloat32();
  };
  return { keys: read(kv.keys), values: read(kv.values) };
}

/** sk as the kernels read it: *ptr + add (ptr 0n: sk = add). */
export interface SeqLenRef {
  readonly ptr: DevicePtr;
  readonly add: number;
}

export interface AttendIO {
  /** [B, H, 1, D] by rows (src/pq/step-rows.ts: contiguous, or e.g. a fused QKV output's query part). */
  readonly query: StepInput;
  readonly kv: KVCacheView;
  /** [B, H, D] in the K/V dtype. */
  readonly out: DevicePtr;
  readonly seqLen: SeqLenRef;
  /** Pinned status word (kernels/common.cuh PqStatus bits). */
  readonly status: DevicePtr;
}

export interface SparseIO extends AttendIO {
  /**
   * [rows, listStride] positions; row r's first sparseLen[r] are used. Cluster plans read a row's
   * entries up to min(plan.splits · plan.chunk, listStride) with its length and drop those past it, so
   * that memory must be allocated (its values may be anything).
   */
  readonly sparseList: DevicePtr;
  readonly sparseLen: DevicePtr;
  /** Elements between rows of sparseList. */
  readonly listStride: number;
  readonly weights: DevicePtr;
  readonly weightsDType: FloatDType;
  /** Elements between rows of weights. */
  readonly weightsStride: number;
}

/** A step input's kernel arguments (PqStepRows): pointer, dtype, batch and head strides. */
const ROWS_ARGS = ['ptr', 'i32', 'i32', 'i32'] as const;
/** The K/V caches' rows (PqKVRows): batch, head and position strides in rows of D elements. */
const KV_ROWS_ARGS = ['i32', 'i32', 'i32'] as const;
const SPARSE_ARGS = [
  ...ROWS_ARGS, 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'ptr', 'i32', 'u64', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', ...KV_ROWS_ARGS, 'i32',
] as const;
const DENSE_ARGS = [...ROWS_ARGS, 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', ...KV_ROWS_ARGS, 'i32'] as const;
const KV_APPEND_ARGS = [...ROWS_ARGS, ...ROWS_ARGS, 'ptr', 'ptr', 'ptr', 'ptr', ...KV_ROWS_ARGS, 'i32', 'i32', 'ptr'] as const;

/** A view's rows as kernel arguments (KV_ROWS_ARGS). */
function kvRowsArgs(kv: KVCacheView, shape: CacheShape): [number, number, number] {
  return kvRowsInRows(kvRowsOf(kv, shape), shape.headDim);
}

/** Launchers of the attention kernels for one shape (capturable: no sync, no copies). */
export class CudaAttention {
  constructor(readonly context: CudaContext, readonly shape: CacheShape) {
    const problem = attentionProblem(shape.headDim);
    if (problem) throw problem;
  }

  private kernel(name: string): Kernel {
    return loadKernels('attention').kernel(name);
  }

  /** Resident blocks per SM of a kernel (registers and shared memory decide). */
  private blocksPerSM(name: string, threads = ATTEND_THREADS): number {
    return Math.max(1, this.kernel(name).occupancy(threads));
  }

  /**
   * The sparse plan for lists of up to `listCapacity` positions: merged in a cluster where the GPU
   * has clusters (sm_90), else through global memory; `merge` forces one (tests, benchmarks).
   */
  sparsePlan(kvDType: FloatDType, listCapacity: number, merge?: SparseMerge): AttendPlan {
    const sms = this.context.device.multiprocessorCount;
    const clusters = this.context.device.computeCapability[0] >= 9;
    if (merge === 'cluster' && !clusters) throw new ConfigError('merge', 'a GPU with thread-block clusters (sm_90)', `sm_${this.context.device.computeCapability.join('')}`);
    if (merge === 'cluster' || (merge === undefined && clusters)) {
      const name = planSparseAttendCluster(this.shape, kvDType, listCapacity, sms).kernel;
      return planSparseAttendCluster(this.shape, kvDType, listCapacity, sms, this.blocksPerSM(name, ATTEND_CLUSTER_THREADS));
    }
    const name = planSparseAttend(this.shape, kvDType, listCapacity, sms).kernel;
    return planSparseAttend(this.shape, kvDType, listCapacity, sms, this.blocksPerSM(name));
  }

  densePlan(kvDType: FloatDType, maxSeqLen: number): AttendPlan {
    const sms = this.context.device.multiprocessorCount;
    const name = planDenseAttend(this.shape, kvDType, maxSeqLen, sms).kernel;
    return planDenseAttend(this.shape, kvDType, maxSeqLen, sms, this.blocksPerSM(name));
  }

  private grid(plan: AttendPlan): { grid: [number, number, number]; block: [number, number, number] } {
    return { grid: [plan.splits, plan.rows, 1], block: [plan.threads, 1, 1] };
  }

  /**
   * `overlapPrevious` (cluster plans only): launched with programmatic dependent launch, so its blocks
   * start while the kernel before it (the select step, which allows it) still runs, and wait for
   * that kernel before reading sk, the list, the weights or K/V (kernels/attention.cu).
   */
  launchSparse(plan: AttendPlan, scratch: AttendScratch, io: SparseIO, stream: Stream, overlapPrevious = false): void {
    const { heads: H, kvHeads: Hkv, headDim: D } = this.shape;
    if (overlapPrevious && plan.merge !== 'cluster') throw new ConfigError('overlapPrevious', "a cluster plan (its kernels wait for the previous one)", plan.merge);
    launchWith(this.kernel(plan.kernel), { ...this.grid(plan), overlapPrevious }, SPARSE_ARGS, [
      io.query.ptr, DTYPE_CODE[io.query.dtype], io.query.rows.batch, io.query.rows.head, io.kv.keys, io.kv.values, io.sparseList, io.sparseLen, io.listStride, io.weights,
      DTYPE_CODE[io.weightsDType], BigInt(io.weightsStride), io.out, scratch.partial, scratch.counters, io.status, io.seqLen.ptr,
      io.seqLen.add, H, Hkv, D, ...kvRowsArgs(io.kv, this.shape), plan.chunk,
    ], stream);
  }

  launchDense(plan: AttendPlan, scratch: AttendScratch, io: AttendIO, stream: Stream): void {
    const { heads: H, kvHeads: Hkv, headDim: D } = this.shape;
    launchWith(this.kernel(plan.kernel), this.grid(plan), DENSE_ARGS, [
      io.query.ptr, DTYPE_CODE[io.query.dtype], io.query.rows.batch, io.query.rows.head, io.kv.keys, io.kv.values, io.out, scratch.partial, scratch.counters, io.status,
      io.seqLen.ptr, io.seqLen.add, H, Hkv, D, ...kvRowsArgs(io.kv, this.shape), plan.chunk,
    ], stream);
  }

  /**
   * Write the new key and value rows [B, Hkv, 1, D] (each read by its rows) at position *seqRead of the cache; with
   * seqWrite (≠ 0n) also store sk + 1 there (layers without a PQ index advance sk this way).
   * `overlapPrevious`: launched with programmatic dependent launch, so its blocks are placed while
   * the kernel before it runs; they wait for that kernel before anything else (kernels/attention.cu).
   */
  launchKVAppend(
    kv: KVCacheView,
    key: StepInput,
    value: StepInput,
    seqRead: DevicePtr,
    seqWrite: DevicePtr,
    status: DevicePtr,
    stream: Stream,
    overlapPrevious = false,
  ): void {
    launchWith(
      this.kernel(`pq_kv_append_${kv.dtype}`), { grid: [this.shape.batch * this.shape.kvHeads, 1, 1], block: [ATTEND_THREADS, 1, 1], overlapPrevious }, KV_APPEND_ARGS,
      [
        key.ptr, DTYPE_CODE[key.dtype], key.rows.batch, key.rows.head, value.ptr, DTYPE_CODE[value.dtype], value.rows.batch, value.rows.head,
        kv.keys, kv.values, seqRead, seqWrite, ...kvRowsArgs(kv, this.shape), this.shape.kvHeads, this.shape.headDim, status,
      ],
      stream,
    );
  }
}
