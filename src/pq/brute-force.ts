/**
 * An independent brute-force select in float64 (full score vector, full sort, set union by
 * marks), and the checker that compares any backend's output with it.
 *
 * Exact mode (integer-valued queries and centroids, where every fp32 score is exact): lists,
 * lengths and weights must be identical. Tolerant mode (real-valued inputs): heavy hitters may
 * differ only by swaps between positions whose float64 scores lie within the fp32 rounding
 * bound of the K-th score.
 */
import { type FloatDType, readFloat } from '../tensor/dtype.js';
import { usesFullAttention } from './config.js';
import { type PQIndexState, centroidOffset, codeOffset } from './index-state.js';

export interface BruteForceRow {
  /** The expected list, ascending. */
  readonly list: number[];
  /** The expected heavy set, ascending. */
  readonly heavy: number[];
  /** float64 score of every position (NaN below O). */
  readonly scores: Float64Array;
  /** float64 score of the K-th heavy hitter (−Inf when none). */
  readonly kthScore: number;
  /** Absolute bound on the fp32 rounding of a score of this row. */
  readonly tolerance: number;
  readonly full: boolean;
}

export function bruteForceRow(state: PQIndexState, query: Float32Array, b: number, h: number): BruteForceRow {
  const layout = state.layout;
  const { heads: H, headDim: D } = layout.shape;
  const { sinkSize: S, windowSize: W, heavySize: K, initOffset: O, pqGroupFactor: M } = layout.config;
  const C = layout.numCentroids;
  const dsub = layout.subDim;
  const sk = state.seqLen;
  const kvh = Math.floor(h / layout.groupSize);
  const qOff = (b * H + h) * D;
  const scores = new Float64Array(sk).fill(NaN);
  if (usesFullAttention(layout, sk)) {
    const list = Array.from({ length: sk }, (_, i) => i);
    return { list, heavy: [], scores, kthScore: -Infinity, tolerance: 0, full: true };
  }
  const lut: number[][] = [];
  let scale = 0;
  for (let m = 0; m < M; m++) {
    const row: number[] = [];
    let maxAbs = 0;
    for (let c = 0; c < C; c++) {
      const co = centroidOffset(layout, b, kvh, m, c);
      let acc = 0;
      let abs = 0;
      for (let j = 0; j < dsub; j++) {
        const t = query[qOff + m * dsub + j] * state.centroids[co + j];
        acc += t;
        abs += Math.abs(t);
      }
      row.push(acc);
      maxAbs = Math.max(maxAbs, abs);
    }
    lut.push(row);
    scale += maxAbs;
  }
  const codeBase = codeOffset(layout, state.capacity, b, kvh, 0);
  for (let p = O; p < sk; p++) {
    let s = 0;
    for (let m = 0; m < M; m++) s += lut[m][state.codes[codeBase + p * M + m]];
    scores[p] = s;
  }
  const eligible: number[] = [];
  for (let p = 0; p < sk; p++) if (p >= O && p >= S && p < sk - W) eligible.push(p);
  eligible.sort((a, c) => (scores[c] !== scores[a] ? scores[c] - scores[a] : a - c));
  const heavy = eligible.slice(0, Math.min(K, eligible.length)).sort((a, c) => a - c);
  const kthScore = heavy.length > 0 ? scores[eligible[heavy.length - 1]] : -Infinity;
  const mark = new Uint8Array(sk);
  for (let p = 0; p < Math.min(S, sk); p++) mark[p] = 1;
  for (const p of heavy) mark[p] = 1;
  for (let p = Math.max(0, sk - W); p < sk; p++) mark[p] = 1;
  const list: number[] = [];
  for (let p = 0; p < sk; p++) if (mark[p]) list.push(p);
  // fp32 rounding of a sum of dsub products then M terms: generous bound 4·(dsub+M)·2^-24·Σ|terms|.
  const tolerance = 4 * (dsub + M) * 2 ** -24 * scale;
  return { list, heavy, scores, kthScore, tolerance, full: false };
}

export interface CandidateSelect {
  readonly sparseList: Int32Array;
  readonly sparseLen: Int32Array;
  readonly weights: Float32Array | Uint16Array;
  readonly weightsDType: FloatDType;
}

export type CheckMode = 'exact' | 'tolerant';

/** Compare a backend's select output with the brute force. Returns human-readable mismatches (empty = agree). */
export function checkSelect(state: PQIndexState, query: Float32Array, got: CandidateSelect, mode: CheckMode, maxReports = 10, maxRows = Infinity): string[] {
  const layout = state.layout;
  const { batch: B, heads: H } = layout.shape;
  const L = layout.listCapacity;
  const sk = state.seqLen;
  const errors: string[] = [];
  const report = (msg: string): boolean => {
    errors.push(msg);
    return errors.length >= maxReports;
  };
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const row = b * H + h;
      if (row >= maxRows) return errors;
      const exp = bruteForceRow(state, query, b, h);
      const len = got.sparseLen[row];
      const list = Array.from(got.sparseList.subarray(row * L, row * L + Math.max(0, Math.min(len, L))));
      const where = `(b=${b}, h=${h})`;
      // Structure: ascending, −1 tail, weights = marks of the list.
      for (let i = Math.max(0, len); i < L; i++) {
        if (got.sparseList[row * L + i] !== -1) {
          if (report(`${where}: sparseList[${i}] past sparseLen=${len} is ${got.sparseList[row * L + i]}, expected -1`)) return errors;
          break;
        }
      }
      for (let i = 1; i < list.length; i++) {
        if (!(list[i] > list[i - 1])) {
          if (report(`${where}: sparseList not strictly ascending at ${i}: ${list[i - 1]}, ${list[i]}`)) return errors;
          break;
        }
      }
      const inList = new Uint8Array(sk);
      for (const p of list) if (p >= 0 && p < sk) inList[p] = 1;
      for (let p = 0; p < sk; p++) {
        const w = readFloat(got.weightsDType, got.weights, row * sk + p);
        if (w !== inList[p]) {
          if (report(`${where}: weights[${p}] = ${w}, expected ${inList[p]}`)) return errors;
          break;
        }
      }
      if (mode === 'exact' || exp.full) {
        if (len !== exp.list.length || list.some((p, i) => p !== exp.list[i])) {
          const firstDiff = list.findIndex((p, i) => p !== exp.list[i]);
          if (report(`${where}: list differs (len ${len} vs ${exp.list.length}; first difference at ${firstDiff}: got ${list[firstDiff]}, expected ${exp.list[firstDiff]})`)) return errors;
        }
        continue;
      }
      // Tolerant: same size, sink and window present, heavy swaps only near the K-th score.
      if (len !== exp.list.length) {
        if (report(`${where}: sparseLen ${len}, expected ${exp.list.length}`)) return errors;
        continue;
      }
      const expSet = new Set(exp.list);
      const gotSet = new Set(list);
      const missing = exp.list.filter((p) => !gotSet.has(p));
      const extra = list.filter((p) => !expSet.has(p));
      const { initOffset: O, sinkSize: S, windowSize: W } = layout.config;
      const swappable = (p: number): boolean =>
        p >= Math.max(O, S) && p < sk - W && Math.abs(exp.scores[p] - exp.kthScore) <= exp.tolerance;
      const bad = [...missing, ...extra].filter((p) => !swappable(p));
      if (bad.length > 0) {
        if (report(`${where}: heavy set differs beyond rounding: missing [${missing.slice(0, 5)}], extra [${extra.slice(0, 5)}] (K-th score ${exp.kthScore}, tolerance ${exp.tolerance.toExponential(2)})`)) return errors;
      }
    }
  }
  return errors;
}
