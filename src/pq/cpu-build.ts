/**
 * CPU build and append (SPEC §2): per (b, kv-head, sub-space) k-means over positions O … sk−1,
 * ip augmentation with φ, and nearest-centroid codes for appended keys.
 */
import type { Layout } from './config.js';
import { type PQIndexState, centroidOffset, codeOffset, emptyIndexState, groupId } from './index-state.js';
import { ipAugment, kmeansGroup, nearestCentroid, squaredNormF32 } from './kmeans.js';

export interface BuildProgress {
  /** Work finished so far out of `total`: k-means groups (B · Hkv · M) on the CPU, rounds on the GPU. */
  readonly done: number;
  readonly total: number;
}

/**
 * Gather the sub-vectors of positions [from, to) of (b, kvh, m) into rows of `cdim` floats,
 * augmenting for ip with `phi` (computed from these rows when phi is undefined). Returns φ.
 */
export function gatherGroupPoints(
  layout: Layout,
  keys: Float32Array,
  keysSeqLen: number,
  b: number,
  kvh: number,
  m: number,
  from: number,
  to: number,
  out: Float32Array,
  phiIn?: number,
): number {
  const D = layout.shape.headDim;
  const dsub = layout.subDim;
  const cdim = layout.centroidDim;
  const base = (b * layout.shape.kvHeads + kvh) * keysSeqLen;
  const n = to - from;
  for (let i = 0; i < n; i++) {
    const src = (base + from + i) * D + m * dsub;
    for (let j = 0; j < dsub; j++) out[i * cdim + j] = keys[src + j];
  }
  if (layout.config.metric !== 'ip') return 0;
  let phi = phiIn ?? 0;
  const norms = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    norms[i] = squaredNormF32(out, i * cdim, dsub);
    if (phiIn === undefined && norms[i] > phi) phi = norms[i];
  }
  for (let i = 0; i < n; i++) out[i * cdim + dsub] = ipAugment(phi, norms[i]);
  return phi;
}

/**
 * Build the index from keys [B, Hkv, sk, D] (fp32 storage), reserving `capacity` positions.
 * The caller has validated shapes and finiteness.
 */
export function buildIndexCpu(
  layout: Layout,
  keys: Float32Array,
  seqLen: number,
  capacity: number,
  onProgress?: (p: BuildProgress) => void,
): PQIndexState {
  const state = emptyIndexState(layout, capacity);
  const { batch, kvHeads } = layout.shape;
  const { pqGroupFactor: M, initOffset: O, kmeansIters, seed } = layout.config;
  const C = layout.numCentroids;
  const cdim = layout.centroidDim;
  const n = seqLen - O;
  const points = new Float32Array(n * cdim);
  const total = batch * kvHeads * M;
  let done = 0;
  for (let b = 0; b < batch; b++) {
    for (let kvh = 0; kvh < kvHeads; kvh++) {
      for (let m = 0; m < M; m++) {
        const phi = gatherGroupPoints(layout, keys, seqLen, b, kvh, m, O, seqLen, points);
        const g = groupId(layout, b, kvh, m);
        const res = kmeansGroup({ points, n, dim: cdim, numCentroids: C, iters: kmeansIters, seed, group: g });
        state.centroids.set(res.centroids, centroidOffset(layout, b, kvh, m, 0));
        state.phi[g] = phi;
        for (let i = 0; i < n; i++) state.codes[codeOffset(layout, capacity, b, kvh, O + i) + m] = res.codes[i];
        onProgress?.({ done: ++done, total });
      }
    }
  }
  state.seqLen = seqLen;
  return state;
}

/** Codes for new keys [B, Hkv, n, D] at positions sk … sk+n−1 (positions below O get none). */
export function appendCodesCpu(state: PQIndexState, keys: Float32Array, n: number): void {
  const layout = state.layout;
  const { batch, kvHeads } = layout.shape;
  const M = layout.config.pqGroupFactor;
  const O = layout.config.initOffset;
  const C = layout.numCentroids;
  const cdim = layout.centroidDim;
  const row = new Float32Array(n * cdim);
  for (let b = 0; b < batch; b++) {
    for (let kvh = 0; kvh < kvHeads; kvh++) {
      for (let m = 0; m < M; m++) {
        const g = groupId(layout, b, kvh, m);
        gatherGroupPoints(layout, keys, n, b, kvh, m, 0, n, row, state.phi[g]);
        const cBase = centroidOffset(layout, b, kvh, m, 0);
        for (let i = 0; i < n; i++) {
          const p = state.seqLen + i;
          if (p < O) continue;
          state.codes[codeOffset(layout, state.capacity, b, kvh, p) + m] = nearestCentroid(row, i * cdim, state.centroids, cBase, C, cdim);
        }
      }
    }
  }
  state.seqLen += n;
}
