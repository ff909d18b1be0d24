/**
 * Launch planning for the fused select kernel (kernels/select.cu): how many slices each query
 * head's eligible span is cut into, and which template instance runs. Pure functions of the
 * layout and sk, so they are testable without a GPU.
 */
import { ConfigError } from '../errors.js';
import type { Layout } from './config.js';

/** Threads per block and positions per thread per tile: must match kernels/select.cu. */
export const SELECT_THREADS = 256;
export const SELECT_TILE = SELECT_THREADS * 16;
/** Slice lengths are multiples of this (≥ 16 / M, the positions of one 16-byte code chunk). */
export const SLICE_ALIGN = 256;
/** Largest supported D, M·C and K (kernel shared-memory arrays). */
export const MAX_HEAD_DIM = 1024;
export const MAX_LUT = 2048;
export const MAX_HEAVY = 2048;

/** Why the CUDA backend cannot run a layout (undefined when it can). */
export function cudaLayoutProblem(layout: Layout): ConfigError | undefined {
  const { pqGroupFactor: M, heavySize: K } = layout.config;
  if (![1, 2, 4, 8].includes(M)) return new ConfigError('pqGroupFactor', '1, 2, 4 or 8 on the cuda backend', M);
  if (layout.subDim % 4 !== 0) return new ConfigError('headDim / pqGroupFactor', 'a multiple of 4 on the cuda backend', layout.subDim);
  if (layout.shape.headDim > MAX_HEAD_DIM) return new ConfigError('headDim', `at most ${MAX_HEAD_DIM} on the cuda backend`, layout.shape.headDim);
  if (M * layout.numCentroids > MAX_LUT) return new ConfigError('pqGroupFactor · 2^pqBits', `at most ${MAX_LUT} on the cuda backend`, M * layout.numCentroids);
  if (K > MAX_HEAVY) return new ConfigError('heavySize', `at most ${MAX_HEAVY} on the cuda backend`, K);
  return undefined;
}

/** Largest C^M of the pair-table fast path (kernels/select_pairs.cu). */
export const MAX_PAIRS = 16384;
/** Most slices per row of the general select (bounds its candidate scratch). */
export const MAX_GENERAL_SLICES = 64;

/** Code combinations per kv-head when the pair-table fast path applies (M ≤ 2, C^M ≤ 16384), else 0. */
export function pairTableSize(layout: Layout): number {
  const M = layout.config.pqGroupFactor;
  const pairs = M === 1 ? layout.numCentroids : M === 2 ? layout.numCentroids ** 2 : Infinity;
  return pairs <= MAX_PAIRS ? pairs : 0;
}

/** The general select kernel: candidates per thread (CE) K ≤ 256 → 1, K ≤ 2048 → 8. */
export function selectKernelName(layout: Layout): string {
  const ce = layout.config.heavySize <= SELECT_THREADS ? 1 : 8;
  return `pq_select_m${layout.config.pqGroupFactor}_c${ce}`;
}

export interface SelectPlan {
  readonly numSlices: number;
  readonly sliceLen: number;
  /** The plan is valid for every sk ≤ this (a multiple of SELECT_TILE). */
  readonly maxSeqLen: number;
}

/** n rounded up to a multiple of a. */
export function roundUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Positions of the eligible span (from its 16-aligned start) at sequence length sk. */
export function eligibleSpan(layout: Layout, seqLen: number): number {
  const { initOffset: O, sinkSize: S, windowSize: W } = layout.config;
  // Kernels start their first slice at max(O, S) rounded down to 16 (or to 16 / M ≥ that).
  const start = Math.floor(Math.max(O, S) / 16) * 16;
  return Math.max(0, seqLen - W - start);
}

/**
 * Slices per row so that about two blocks per SM run (two fit at 128 registers), each slice at
 * least 1024 positions; valid for sk up to the next multiple of SELECT_TILE so growth by one
 * position per step re-plans (and re-captures) only every 4096 steps.
 */
export function planSelect(layout: Layout, seqLen: number, multiprocessors: number, maxSlices: number, sliceLenOverride?: number): SelectPlan {
  const maxSeqLen = roundUp(Math.max(seqLen, 1), SELECT_TILE);
  const span = eligibleSpan(layout, maxSeqLen);
  const rows = layout.shape.batch * layout.shape.heads;
  const wanted = Math.max(1, Math.min(maxSlices, Math.ceil((2 * multiprocessors) / rows)));
  let sliceLen = sliceLenOverride ?? Math.max(1024, roundUp(Math.ceil(span / wanted), SLICE_ALIGN));
  sliceLen = roundUp(Math.max(sliceLen, SLICE_ALIGN), SLICE_ALIGN);
  let numSlices = Math.max(1, Math.ceil(span / sliceLen));
  if (numSlices > maxSlices) {
    numSlices = maxSlices;
    sliceLen = roundUp(Math.ceil(span / numSlices), SLICE_ALIGN);
  }
  return { numSlices, sliceLen, maxSeqLen };
}

/** Scratch capacity (slices per row) of the general select: enough for any of its plans. */
export function maxSlicesFor(layout: Layout, multiprocessors: number): number {
  const rows = layout.shape.batch * layout.shape.heads;
  return Math.min(MAX_GENERAL_SLICES, Math.max(1, Math.ceil((2 * multiprocessors) / rows)) + 1);
}

export interface PairsPlan {
  /** Blocks per query head: one thread-block cluster (1, 2, 4 or 8), one slice each. */
  readonly cluster: number;
  readonly sliceLen: number;
  readonly maxSeqLen: number;
  /** Slices of more than SHORT_SLICE_TILES tiles run the long-slice kernel (see select_pairs.cu). */
  readonly long: boolean;
  /** Tiles of a slice whose class bits stay in shared memory from the scan to the write pass. */
  readonly bitsTiles: number;
  /** The step kernel's dynamic shared memory: those class bits and per-(tile, warp) count prefixes. */
  readonly sharedBytes: number;
}

/** Class-bit tiles a block keeps (64 KB of shared memory); longer slices re-read their later tiles. */
export const MAX_BITS_TILES = 32;
/**
 * Up to this many tiles a slice runs the short-slice kernel: on the H100 the long-slice one (tile
 * prefetch, per-warp prefixes) was 1.5–3.4 μs slower at 1–2 tiles per block and faster from 8 on
 * (select record, session 3; NOTES.md).
 */
export const SHORT_SLICE_TILES = 3;

/**
 * The pair path's cluster size and slice length: the largest power of two such that the select
 * blocks plus the append blocks (one per kv-head) fit in two blocks per SM (the kernel fits three,
 * but on the seed config cluster 4 measured faster than 8: each block repeats the pair work), raised
 * when needed so a slice's class bits fit in shared memory (MAX_BITS_TILES: the write pass then
 * reads no codes again); clusters need sm_90 (before that one block per head), at most 8 (the
 * portable cluster size) and at most the pair count. Slices cover the eligible span up to the next
 * multiple of SELECT_TILE.
 */
export function planPairs(layout: Layout, seqLen: number, multiprocessors: number, clusters: boolean, clusterOverride?: number): PairsPlan {
  const maxSeqLen = roundUp(Math.max(seqLen, 1), SELECT_TILE);
  const span = eligibleSpan(layout, maxSeqLen);
  const rows = layout.shape.batch * layout.shape.heads;
  const pairs = pairTableSize(layout);
  const appendBlocks = layout.shape.batch * layout.shape.kvHeads;
  const fit = Math.max(1, Math.floor((2 * multiprocessors - appendBlocks) / rows));
  const forBits = 2 ** Math.ceil(Math.log2(Math.max(1, Math.ceil(span / SELECT_TILE / MAX_BITS_TILES))));
  let cluster = clusterOverride ?? Math.max(2 ** Math.floor(Math.log2(fit)), forBits);
  cluster = clusters ? Math.max(1, Math.min(8, cluster, 2 ** Math.floor(Math.log2(pairs)))) : 1;
  const sliceLen = Math.max(SLICE_ALIGN, roundUp(Math.ceil(span / cluster), SLICE_ALIGN));
  const tiles = Math.ceil(sliceLen / SELECT_TILE);
  const long = tiles > SHORT_SLICE_TILES;
  // The short-slice kernel keeps 2 tiles of bits in static shared memory and needs no dynamic memory.
  const bitsTiles = Math.min(tiles, long ? MAX_BITS_TILES : 2);
  const sharedBytes = long ? (bitsTiles * 2 * SELECT_THREADS + tiles * 2 * (SELECT_THREADS / 32)) * 4 : 0;
  return { cluster, sliceLen, maxSeqLen, long, bitsTiles, sharedBytes };
}

/** Threads per block of the one-block-per-head step kernel (kernels/select_row.cu NT). */
export const ROW_THREADS = 1024;
/** Its limits: C^M ≤ 4 pairs per thread, ≤ 64 positions per thread. */
export const ROW_MAX_PAIRS = 4 * ROW_THREADS;
export const ROW_POSITIONS_PER_THREAD = [16, 32, 64] as const;

/** Which step kernel the pair path runs: planned, or one forced (tuning, tests). */
export type StepKernelChoice = 'auto' | 'bucket' | 'row' | 'cluster';

export interface RowPlan {
  /** Blocks per query head: 1, or a thread-block cluster of 2 (sm_90) splitting the positions (each computes the whole LUT). */
  readonly cluster: 1 | 2;
  /** Positions per thread (a template instance of the kernel). */
  readonly positionsPerThread: (typeof ROW_POSITIONS_PER_THREAD)[number];
  /** The plan is valid for every sk ≤ this: the eligible span still fits the block. */
  readonly maxSeqLen: number;
}

/**
 * The row kernel (kernels/select_row.cu) when it applies: C^M ≤ 4096, the eligible span at sk fits
 * the blocks of a head (1024 threads × ≤ 64 positions each), and (unless forced) every query head
 * gets an SM of its own (B·H ≤ SMs; beyond that the pair clusters spread the work). Two blocks per
 * head (a cluster, sm_90) when the select and append blocks still fit one wave, else one; the
 * smallest positions-per-thread instance that holds the span, valid until the span outgrows it.
 * `clusterOverride` (1 or 2) forces the blocks per head (tuning).
 */
export function planRow(
  layout: Layout, seqLen: number, multiprocessors: number, choice: StepKernelChoice = 'auto', clusters = true, clusterOverride?: number,
): RowPlan | undefined {
  const pairs = pairTableSize(layout);
  if (choice === 'cluster' || pairs === 0 || pairs > ROW_MAX_PAIRS) return undefined;
  const rows = layout.shape.batch * layout.shape.heads;
  if (choice === 'auto' && rows > multiprocessors) return undefined;
  const appendBlocks = layout.shape.batch * layout.shape.kvHeads;
  const cluster: 1 | 2 = clusterOverride === 1 || clusterOverride === 2
    ? (clusters ? clusterOverride : 1)
    : clusters && 2 * rows + appendBlocks <= multiprocessors ? 2 : 1;
  const span = eligibleSpan(layout, seqLen);
  const e = ROW_POSITIONS_PER_THREAD.find((n) => cluster * n * ROW_THREADS >= span);
  if (e === undefined) return undefined;
  // eligibleSpan(sk) = sk − W − start ≤ cluster · e · NT  ⇔  sk ≤ cluster · e · NT + W + start.
  const { initOffset: O, sinkSize: S, windowSize: W } = layout.config;
  const start = Math.floor(Math.max(O, S) / 16) * 16;
  return { cluster, positionsPerThread: e, maxSeqLen: cluster * e * ROW_THREADS + W + start };
}

/** The instance suffix of the row kernels (kernels/select_row.cu PQ_ROW_INSTANCES): m{M}_e{E}[_c2]. */
function rowInstance(layout: Layout, plan: RowPlan): string {
  return `m${layout.config.pqGroupFactor}_e${plan.positionsPerThread}${plan.cluster === 2 ? '_c2' : ''}`;
}

/** The row kernel's name (kernels/select_row.cu). */
export function stepRowKernelName(layout: Layout, plan: RowPlan): string {
  return `pq_step_row_${rowInstance(layout, plan)}`;
}

/** The resident form of the row kernel (kernels/select_row.cu resident_row): same plan, served per ring. */
export function residentRowKernelName(layout: Layout, plan: RowPlan): string {
  return `pq_resident_row_${rowInstance(layout, plan)}`;
}

/**
 * Dynamic shared memory of the resident row kernel: the step-to-step cache of each block (its code
 * chunks, pair counts and LUT rows, one uint4 per thread each; kernels/select_row.cu ResidentState).
 */
export function residentCacheBytes(layout: Layout, plan: RowPlan): number {
  return ((plan.positionsPerThread * layout.config.pqGroupFactor) / 16 + 3) * ROW_THREADS * 16;
}

/** The fused step kernel of the pair path. */
export function stepPairsKernelName(layout: Layout, cluster: number, long = false): string {
  return `pq_step_pairs_${long ? 'long_' : ''}m${layout.config.pqGroupFactor}_p${cluster}`;
}

/**
 * Bitmap words per thread of the bucket-mode row kernel (its instances: positions ≤ 1024 · 32 · w in
 * one pass). 16 and 20 (spans to 655,360) take 128 and 160 KB of dynamic shared memory: beside the
 * kernel's 41 KB of static arrays they need an sm_90 multiprocessor (227 KB a block); 24 would not
 * fit there.
 */
export const BUCKET_WORDS_PER_THREAD = [1, 2, 4, 8, 16, 20] as const;
/**
 * Longer spans than the largest instance holds: 16 words a thread, chunk by chunk (the kernel walks
 * the span in chunks of 524,288 positions, each gathered again), spans from max(O, S) rounded down
 * to 32. Up to 2^20 − 1 positions its histogram packs 20-bit weights with the pair counts; from
 * 2^20 the _wide instance keeps them apart (≈ 1 μs slower at B = 1), to 2^22 − 1: eight chunks,
 * the span the GPU tests step over (the kernel's own bound is 2^31). Beyond: the pair clusters.
 */
export const BUCKET_CHUNKED_WORDS = 16;
export const BUCKET_PACKED_MAX_SPAN = 2 ** 20 - 1;
export const BUCKET_MAX_SPAN = 2 ** 22 - 1;
/** With more query heads than SMs, 'auto' plans the pair clusters up to this eligible span, bucket mode beyond. */
export const BUCKET_MIN_SPAN_MANY_HEADS = 16384;
/** Most tail positions (appended since the buckets were built) the bucket kernel classifies: one per thread. */
export const BUCKET_MAX_TAIL = ROW_THREADS;

export interface BucketPlan {
  /** Bitmap words per thread (a template instance of the kernel). */
  readonly wordsPerThread: (typeof BUCKET_WORDS_PER_THREAD)[number];
  /** The _wide instance: histogram weights unpacked, for spans past BUCKET_PACKED_MAX_SPAN. */
  readonly wide: boolean;
  /** The plan is valid for every sk ≤ this: the eligible span still fits the bitmaps. */
  readonly maxSeqLen: number;
  /** Dynamic shared memory: the take and tie bitmaps. */
  readonly sharedBytes: number;
}

/**
 * The row kernel in bucket mode (kernels/select_row.cu: heavy hitters gathered from per-kv-head
 * position buckets instead of a pass over every code) when it applies: C^M ≤ 4096, and the smallest
 * instance whose bitmaps hold the eligible span (from max(O, S) rounded down to 32) in one pass, or
 * past them BUCKET_CHUNKED_WORDS in chunks up to BUCKET_MAX_SPAN (_wide past BUCKET_PACKED_MAX_SPAN),
 * has dynamic shared memory within `maxDynamicShared` (the device's per-block opt-in minus the
 * kernel's static shared memory). Any number of query heads: one block each. Not with 'row' or
 * 'cluster' forced.
 */
export function planBucket(layout: Layout, seqLen: number, choice: StepKernelChoice, maxDynamicShared: number): BucketPlan | undefined {
  const pairs = pairTableSize(layout);
  if (choice === 'row' || choice === 'cluster' || pairs === 0 || pairs > ROW_MAX_PAIRS) return undefined;
  const { initOffset: O, sinkSize: S, windowSize: W } = layout.config;
  const start = Math.floor(Math.max(O, S) / 32) * 32;
  const span = Math.max(0, seqLen - W - start);
  const single = BUCKET_WORDS_PER_THREAD.find((n) => n * ROW_THREADS * 32 >= span);
  if (single === undefined && span > BUCKET_MAX_SPAN) return undefined;
  const w = single ?? BUCKET_CHUNKED_WORDS;
  const sharedBytes = 2 * ROW_THREADS * w * 4;
  if (sharedBytes > maxDynamicShared) return undefined;
  const wide = span > BUCKET_PACKED_MAX_SPAN;
  const maxSpan = single !== undefined ? w * ROW_THREADS * 32 : wide ? BUCKET_MAX_SPAN : BUCKET_PACKED_MAX_SPAN;
  return { wordsPerThread: w, wide, maxSeqLen: maxSpan + W + start, sharedBytes };
}

/** The bucket-mode kernel's name (kernels/select_row.cu). */
export function stepBucketKernelName(layout: Layout, plan: Pick<BucketPlan, 'wordsPerThread' | 'wide'>): string {
  return `pq_step_bucket_m${layout.config.pqGroupFactor}_w${plan.wordsPerThread}${plan.wide ? '_wide' : ''}`;
}
