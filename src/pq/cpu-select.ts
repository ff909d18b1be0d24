/**
 * The CPU select (SPEC §2 rules 1–5): the reference every GPU result is compared with.
 *
 * Scores are fp32: LUT[m][c] = Σ_j q_mj · centroid_cj accumulated j = 0 … dsub−1, then
 * s(p) = Σ_m LUT[m][code(p, m)] accumulated m = 0 … M−1. Ranking uses the order-preserving
 * uint32 key of the score (scoreKey), highest first, ties to the lower position; NaN ranks
 * below everything and −0 equals +0, exactly as the CUDA kernel ranks.
 */
import { type FloatDType, ONE_BITS, f32Bits } from '../tensor/dtype.js';
import { type Layout, usesFullAttention } from './config.js';
import { type PQIndexState, centroidOffset, codeOffset } from './index-state.js';

const fr = Math.fround;

/** Order-preserving uint32 key of an fp32 score: larger score → larger key; NaN → 0; −0 → +0. */
export function scoreKey(s: number): number {
  if (Number.isNaN(s)) return 0;
  const u = f32Bits(s === 0 ? 0 : s);
  return (u & 0x80000000) !== 0 ? ~u >>> 0 : (u | 0x80000000) >>> 0;
}

export interface SelectOutputArrays {
  /** [B, H, L] ascending positions, −1 padded */
  readonly sparseList: Int32Array;
  /** [B, H] */
  readonly sparseLen: Int32Array;
  /** [B, H, sk] in the query dtype's storage */
  readonly weights: Float32Array | Uint16Array;
}

/** The eligible range for heavy hitters: [max(O, S), sk − W). Empty when hi ≤ lo. */
export function eligibleRange(layout: Layout, seqLen: number): { lo: number; hi: number } {
  const { initOffset: O, sinkSize: S, windowSize: W } = layout.config;
  return { lo: Math.max(O, S), hi: seqLen - W };
}

/** Sink end and window start of the list: [0, sinkEnd) ∪ heavy ∪ [windowStart, sk). */
export function sinkWindowBounds(layout: Layout, seqLen: number): { sinkEnd: number; windowStart: number } {
  const { sinkSize: S, windowSize: W } = layout.config;
  const sinkEnd = Math.min(S, seqLen);
  return { sinkEnd, windowStart: Math.max(seqLen - Math.min(W, seqLen), sinkEnd) };
}

/** LUT of one query head: M × C fp32 dot products in canonical order. */
export function buildLut(state: PQIndexState, q: Float32Array, qOff: number, b: number, kvh: number, lut: Float32Array): void {
  const layout = state.layout;
  const M = layout.config.pqGroupFactor;
  const C = layout.numCentroids;
  const dsub = layout.subDim;
  const cdim = layout.centroidDim;
  for (let m = 0; m < M; m++) {
    const cBase = centroidOffset(layout, b, kvh, m, 0);
    for (let c = 0; c < C; c++) {
      const co = cBase + c * cdim;
      let acc = 0;
      for (let j = 0; j < dsub; j++) acc = fr(acc + fr(q[qOff + m * dsub + j] * state.centroids[co + j]));
      lut[m * C + c] = acc;
    }
  }
}

/**
 * Top-K of eligible positions by (score key desc, position asc), returned ascending by position.
 * A bounded min-heap of the K best so far: O(n log K) worst case, and since most positions do not
 * beat the heap's root, about n comparisons in practice.
 */
export function topKPositions(keys: Uint32Array, positions: Int32Array, n: number, k: number): Int32Array {
  const size = Math.min(k, n);
  const hk = new Uint32Array(size);
  const hp = new Int32Array(size);
  // Heap order: the root is the worst kept element (lowest key; among equal keys the highest position).
  const worse = (i: number, j: number): boolean => hk[i] < hk[j] || (hk[i] === hk[j] && hp[i] > hp[j]);
  for (let filled = 0; filled < size; filled++) {
    hk[filled] = keys[filled];
    hp[filled] = positions[filled];
    for (let j = filled; j > 0; ) {
      const parent = (j - 1) >> 1;
      if (!worse(j, parent)) break;
      const tk = hk[j];
      hk[j] = hk[parent];
      hk[parent] = tk;
      const tp = hp[j];
      hp[j] = hp[parent];
      hp[parent] = tp;
      j = parent;
    }
  }
  let rootKey = size > 0 ? hk[0] : 0;
  let rootPos = size > 0 ? hp[0] : 0;
  for (let i = size; i < n; i++) {
    const key = keys[i];
    if (key < rootKey) continue;
    const pos = positions[i];
    if (key === rootKey && pos > rootPos) continue;
    // Sift the new element down from the root (hole method: move children up, place once).
    let j = 0;
    for (;;) {
      const l = 2 * j + 1;
      if (l >= size) break;
      let w = l;
      const r = l + 1;
      if (r < size && (hk[r] < hk[l] || (hk[r] === hk[l] && hp[r] > hp[l]))) w = r;
      const wk = hk[w];
      const wp = hp[w];
      if (!(wk < key || (wk === key && wp > pos))) break;
      hk[j] = wk;
      hp[j] = wp;
      j = w;
    }
    hk[j] = key;
    hp[j] = pos;
    rootKey = hk[0];
    rootPos = hp[0];
  }
  return hp.sort();
}

const pairScratch = new Float32Array(1 << 16);

function pairTable(lut: Float32Array, C: number): Float32Array {
  for (let c1 = 0; c1 < C; c1++) {
    const b = lut[C + c1];
    const row = c1 << 8;
    for (let c0 = 0; c0 < C; c0++) pairScratch[row | c0] = lut[c0] + b + 0;
  }
  return pairScratch;
}

/**
 * Scores of positions lo … lo+n−1 of one (b, kvh) into `scores` (fp32: a Float32Array store
 * rounds the float64 sum of two fp32 values exactly as an fp32 add; `+ 0` turns −0 into +0),
 * then their keys into `keys`, branch-free unless a score is NaN.
 */
export function scorePositions(
  lut: Float32Array,
  codes: Uint8Array,
  codeBase: number,
  M: number,
  C: number,
  lo: number,
  n: number,
  scores: Float32Array,
  keys: Uint32Array,
): void {
  if (n <= 0) return;
  let nan = false;
  if (M === 2 && (codes.byteOffset + codeBase) % 2 === 0) {
    // Pair table: pair[c0 | c1 << 8] = fp32(LUT[0][c0] + LUT[1][c1]), the very sum the loop
    // below would compute, so one 16-bit code load and one lookup score a position.
    const pair = pairTable(lut, C);
    const codes16 = new Uint16Array(codes.buffer, codes.byteOffset + codeBase + lo * 2, n);
    for (let i = 0; i < n; i++) scores[i] = pair[codes16[i]];
    for (let c = 0; c < C && !nan; c++) nan = lut[c] !== lut[c] || lut[C + c] !== lut[C + c];
  } else {
    for (let i = 0, co = codeBase + lo * M; i < n; i++, co += M) {
      let s = 0;
      for (let m = 0; m < M; m++) s = fr(s + lut[m * C + codes[co + m]]);
      scores[i] = s + 0;
      nan ||= s !== s;
    }
  }
  const bits = new Int32Array(scores.buffer, scores.byteOffset, n);
  for (let i = 0; i < n; i++) {
    const u = bits[i];
    keys[i] = (u ^ ((u >> 31) | 0x80000000)) >>> 0;
  }
  if (nan) for (let i = 0; i < n; i++) if (scores[i] !== scores[i]) keys[i] = 0;
}

/** SPEC §2 select over every (b, h) of a query [B, H, D] given as fp32 storage. */
export function selectCpu(state: PQIndexState, query: Float32Array, weightsDType: FloatDType): SelectOutputArrays {
  const layout = state.layout;
  const { batch: B, heads: H, headDim: D } = layout.shape;
  const G = layout.groupSize;
  const M = layout.config.pqGroupFactor;
  const C = layout.numCentroids;
  const L = layout.listCapacity;
  const sk = state.seqLen;
  const sparseList = new Int32Array(B * H * L).fill(-1);
  const sparseLen = new Int32Array(B * H);
  const weights = weightsDType === 'f32' ? new Float32Array(B * H * sk) : new Uint16Array(B * H * sk);
  const one = weightsDType === 'f32' ? 1 : ONE_BITS[weightsDType];
  const full = usesFullAttention(layout, sk);
  const { lo, hi } = eligibleRange(layout, sk);
  const nElig = Math.max(0, hi - lo);
  const { sinkEnd, windowStart } = sinkWindowBounds(layout, sk);
  const lut = new Float32Array(M * C);
  const keys = new Uint32Array(nElig);
  const scores = new Float32Array(nElig);
  const positions = new Int32Array(nElig);
  for (let i = 0; i < nElig; i++) positions[i] = lo + i;

  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const row = b * H + h;
      const listOff = row * L;
      let len = 0;
      if (full) {
        for (let p = 0; p < sk; p++) sparseList[listOff + len++] = p;
      } else {
        const kvh = Math.floor(h / G);
        buildLut(state, query, row * D, b, kvh, lut);
        scorePositions(lut, state.codes, codeOffset(layout, state.capacity, b, kvh, 0), M, C, lo, nElig, scores, keys);
        const heavy = topKPositions(keys, positions, nElig, layout.config.heavySize);
        for (let p = 0; p < sinkEnd; p++) sparseList[listOff + len++] = p;
        for (let i = 0; i < heavy.length; i++) sparseList[listOff + len++] = heavy[i];
        for (let p = windowStart; p < sk; p++) sparseList[listOff + len++] = p;
      }
      sparseLen[row] = len;
      const wOff = row * sk;
      for (let i = 0; i < len; i++) weights[wOff + sparseList[listOff + i]] = one;
    }
  }
  return { sparseList, sparseLen, weights };
}
