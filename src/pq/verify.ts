/**
 * Random verification cases: a random valid layout, an index state, a query and a new key, and
 * the check of a backend's step (append + select) against the float64 brute force and the CPU
 * oracle's appended codes.
 *
 * Integer cases draw centroids, queries and keys from small integers so that every fp32 score
 * and distance is exact: any correct backend must then agree bit for bit. Real cases draw
 * normal values: heavy hitters may then differ only within rounding of the K-th score.
 */
import type { FloatDType } from '../tensor/dtype.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { type CheckMode, checkSelect } from './brute-force.js';
import type { PQCache } from './cache.js';
import { type Layout, fullAttentionThreshold, makeLayout } from './config.js';
import { appendCodesCpu, buildIndexCpu } from './cpu-build.js';
import { type PQIndexState, codeOffset, emptyIndexState } from './index-state.js';
import { SplitMix32 } from './rng.js';

export interface VerifyLimits {
  readonly maxBatch: number;
  readonly maxSeqLen: number;
  readonly maxHeavy: number;
  /** Only layouts the CUDA kernels support (M ∈ {1,2,4,8}, dsub % 4 == 0). */
  readonly cudaLayouts: boolean;
}

export const CPU_LIMITS: VerifyLimits = { maxBatch: 4, maxSeqLen: 6000, maxHeavy: 300, cudaLayouts: false };
export const CUDA_LIMITS: VerifyLimits = { maxBatch: 8, maxSeqLen: 262144, maxHeavy: 2048, cudaLayouts: true };

export interface VerifyCase {
  readonly id: number;
  readonly mode: CheckMode;
  readonly state: PQIndexState;
  /** [B, H, 1, D] */
  readonly query: HostTensor<FloatDType>;
  /** [B, Hkv, 1, D] f32, appended before select */
  readonly key: HostTensor<'f32'>;
  readonly built: boolean;
}

function pick<T>(rng: SplitMix32, xs: readonly T[]): T {
  return xs[rng.int(0, xs.length - 1)];
}

export function describeCase(c: VerifyCase): string {
  const { shape, config } = c.state.layout;
  return `case ${c.id} [${c.mode}${c.built ? ', built' : ''}] B=${shape.batch} H=${shape.heads} Hkv=${shape.kvHeads} D=${shape.headDim} ` +
    `sk=${c.state.seqLen}+1 S=${config.sinkSize} W=${config.windowSize} K=${config.heavySize} O=${config.initOffset} ` +
    `M=${config.pqGroupFactor} bits=${config.pqBits} ${config.metric} q=${c.query.dtype}`;
}

function randomLayout(rng: SplitMix32, limits: VerifyLimits): Layout {
  const kvHeads = pick(rng, [1, 1, 2, 4]);
  const heads = kvHeads * pick(rng, [1, 1, 2, 4]);
  const batch = rng.int(1, limits.maxBatch);
  const M = pick(rng, [1, 2, 4, 8]);
  const headDim = pick(rng, limits.cudaLayouts ? [32, 64, 128] : [8, 16, 32, 64, 128]);
  const pqBits = rng.next() < 0.25 ? pick(rng, [1, 8]) : rng.int(1, 8);
  const heavyBig = rng.next() < 0.1;
  const heavySize = heavyBig ? rng.int(257, limits.maxHeavy) : rng.int(1, Math.min(256, limits.maxHeavy));
  return makeLayout(
    { batch, heads, kvHeads, headDim },
    {
      sinkSize: pick(rng, [0, rng.int(0, 16), rng.int(0, 200)]),
      windowSize: pick(rng, [0, rng.int(0, 16), rng.int(0, 200)]),
      heavySize,
      pqGroupFactor: Math.min(M, headDim / 4),
      pqBits,
      kmeansIters: rng.int(0, 3),
      initOffset: pick(rng, [0, rng.int(0, 16), rng.int(0, 300)]),
      metric: rng.next() < 0.3 ? 'ip' : 'euclidean',
      seed: rng.nextU32(),
    },
  );
}

function randomSeqLen(rng: SplitMix32, layout: Layout, limits: VerifyLimits): number {
  const thr = fullAttentionThreshold(layout.config, layout.numCentroids);
  const lo = layout.config.initOffset + 1;
  const r = rng.next();
  let sk: number;
  if (r < 0.2) sk = thr + rng.int(-3, 3) - 1; // around the fallback threshold (sk+1 after the step)
  else if (r < 0.45) sk = thr + rng.int(1, 600);
  else if (r < 0.85) sk = thr + rng.int(1, Math.min(limits.maxSeqLen, 20000));
  else sk = rng.int(lo, Math.max(lo, limits.maxSeqLen - 1));
  return Math.max(lo, Math.min(sk, limits.maxSeqLen - 1));
}

function fillNumbers(rng: SplitMix32, out: Float32Array, integer: boolean, scale = 1): void {
  for (let i = 0; i < out.length; i++) out[i] = integer ? rng.int(-8, 8) : scale * rng.normal();
}

export function makeCase(id: number, seed: number, limits: VerifyLimits): VerifyCase {
  const rng = new SplitMix32((seed ^ Math.imul(id + 1, 0x85ebca6b)) >>> 0);
  const layout = randomLayout(rng, limits);
  const mode: CheckMode = rng.next() < 0.6 ? 'exact' : 'tolerant';
  const integer = mode === 'exact';
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  // Keep B·H·sk moderate so the brute force stays quick.
  let sk = randomSeqLen(rng, layout, limits);
  const budget = limits.cudaLayouts ? 4_000_000 : 300_000;
  if (B * H * sk > budget) sk = Math.max(layout.config.initOffset + 1, Math.floor(budget / (B * H)));
  const capacity = sk + 1 + rng.int(0, 40);
  const built = !integer && B * Hkv * sk * D <= 200_000 && rng.next() < 0.5;
  let state: PQIndexState;
  if (built) {
    const keys = new Float32Array(B * Hkv * sk * D);
    fillNumbers(rng, keys, false);
    state = buildIndexCpu(layout, keys, sk, capacity);
  } else {
    state = emptyIndexState(layout, capacity);
    fillNumbers(rng, state.centroids, integer);
    if (layout.config.metric === 'ip') {
      for (let i = 0; i < state.phi.length; i++) state.phi[i] = integer ? rng.int(0, 300) : 50 * rng.next();
    }
    const M = layout.config.pqGroupFactor;
    const C = layout.numCentroids;
    for (let bh = 0; bh < B * Hkv; bh++) {
      // Few distinct codes in some cases: many exactly equal scores, ties decided by position.
      const distinct = rng.next() < 0.2 ? rng.int(1, 3) : C;
      for (let p = layout.config.initOffset; p < sk; p++) {
        const off = codeOffset(layout, capacity, 0, bh, p);
        for (let m = 0; m < M; m++) state.codes[off + m] = rng.int(0, Math.min(C, distinct) - 1);
      }
    }
    state.seqLen = sk;
  }
  const qdtype = pick(rng, ['f32', 'f32', 'f16', 'bf16'] as const);
  const q = new Float32Array(B * H * D);
  fillNumbers(rng, q, integer);
  const query = HostTensor.fromNumbers(qdtype, [B, H, 1, D], q);
  const k = new Float32Array(B * Hkv * D);
  fillNumbers(rng, k, integer);
  const key = new HostTensor('f32', [B, Hkv, 1, D], k);
  return { id, mode, state, query, key, built };
}

export interface CaseResult {
  readonly id: number;
  readonly description: string;
  readonly errors: readonly string[];
}

/**
 * Run one case on a backend created by `create` from the case's state: step(query, key) and
 * compare the appended codes with the CPU oracle and the selection with the brute force.
 */
export function runCase(c: VerifyCase, create: (state: PQIndexState) => PQCache): CaseResult {
  const oracle: PQIndexState = { ...c.state, codes: c.state.codes.slice(), seqLen: c.state.seqLen };
  appendCodesCpu(oracle, c.key.data, 1);
  const errors: string[] = [];
  const cache = create({ ...c.state, codes: c.state.codes.slice() });
  try {
    const res = cache.stepToHost(c.query, c.key);
    const after = cache.exportState();
    const { batch: B, kvHeads: Hkv } = c.state.layout.shape;
    const M = c.state.layout.config.pqGroupFactor;
    const p = c.state.seqLen;
    if (p >= c.state.layout.config.initOffset) {
      for (let bh = 0; bh < B * Hkv && errors.length < 5; bh++) {
        for (let m = 0; m < M; m++) {
          const at = codeOffset(c.state.layout, c.state.capacity, 0, bh, p) + m;
          const got = after.codes[codeOffset(after.layout, after.capacity, 0, bh, p) + m];
          if (got !== oracle.codes[at]) errors.push(`appended code (bh=${bh}, m=${m}) = ${got}, oracle ${oracle.codes[at]}`);
        }
      }
    }
    if (after.seqLen !== oracle.seqLen) errors.push(`seqLen ${after.seqLen} after the step, expected ${oracle.seqLen}`);
    errors.push(
      ...checkSelect(oracle, c.query.toFloat32(), {
        sparseList: res.sparseList.data as Int32Array,
        sparseLen: res.sparseLen.data as Int32Array,
        weights: res.weights.data as Float32Array | Uint16Array,
        weightsDType: c.query.dtype,
      }, c.mode),
    );
  } catch (e) {
    errors.push(`threw ${(e as Error).name}: ${(e as Error).message}`);
  } finally {
    cache.dispose();
  }
  return { id: c.id, description: describeCase(c), errors };
}
