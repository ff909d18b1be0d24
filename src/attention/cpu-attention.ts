/**
 * CPU attention (SPEC §2 attend): the oracle for the GPU kernels, accumulated in float64.
 *   out[b,h] = Σ_{p∈list} w_p e^{s_p − m} v_p / Σ_{p∈list} w_p e^{s_p − m},  s_p = ⟨q, k_p⟩ / √D
 * with K/V of kv-head h / G. Dense attention is the same over every position with weight 1.
 */
import { StateError } from '../errors.js';
import type { CacheShape } from '../pq/config.js';

export interface AttentionInputs {
  readonly shape: CacheShape;
  /** [B, H, D] */
  readonly query: Float32Array;
  /** [B, Hkv, seqStride, D]; positions 0 … sk−1 are used */
  readonly keys: Float32Array;
  readonly values: Float32Array;
  /** The position stride of keys/values (their capacity, ≥ sk). */
  readonly seqStride: number;
  readonly seqLen: number;
}

export interface SparseSelection {
  /** [B, H, L] */
  readonly sparseList: Int32Array;
  /** [B, H] */
  readonly sparseLen: Int32Array;
  /** [B, H, sk] as numbers (0 or 1 from select, any non-negative value accepted) */
  readonly weight: (row: number, p: number) => number;
  readonly listCapacity: number;
}

function attendRow(inp: AttentionInputs, b: number, h: number, positions: ArrayLike<number>, count: number, weightOf: (p: number) => number, out: Float32Array): void {
  // Locals, not inp.* in the loops: callers pass objects of different shapes, and property loads of
  // a megamorphic site inside the D-loops cost several times the arithmetic.
  const { query, keys, values, seqLen } = inp;
  const { heads: H, kvHeads: Hkv, headDim: D } = inp.shape;
  const kvh = Math.floor(h / (H / Hkv));
  const qOff = (b * H + h) * D;
  const kvBase = (b * Hkv + kvh) * inp.seqStride;
  const scale = 1 / Math.sqrt(D);
  const s = new Float64Array(count);
  const w = new Float64Array(count);
  let mx = -Infinity;
  for (let i = 0; i < count; i++) {
    const p = positions[i];
    if (p < 0 || p >= seqLen) throw new StateError('attend', `list positions in [0, ${seqLen})`, `${p}`);
    const kOff = (kvBase + p) * D;
    let dot = 0;
    for (let j = 0; j < D; j++) dot += query[qOff + j] * keys[kOff + j];
    s[i] = dot * scale;
    w[i] = weightOf(p);
    if (w[i] > 0 && s[i] > mx) mx = s[i];
  }
  const acc = new Float64Array(D);
  let den = 0;
  for (let i = 0; i < count; i++) {
    if (w[i] === 0) continue;
    const e = w[i] * Math.exp(s[i] - mx);
    den += e;
    const vOff = (kvBase + positions[i]) * D;
    for (let j = 0; j < D; j++) acc[j] += e * values[vOff + j];
  }
  for (let j = 0; j < D; j++) out[qOff + j] = den > 0 ? acc[j] / den : 0;
}

/** Sparse attention over each row's list → [B, H, D] fp32. */
export function attendCpu(inp: AttentionInputs, sel: SparseSelection): Float32Array {
  const { batch: B, heads: H, headDim: D } = inp.shape;
  const out = new Float32Array(B * H * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const row = b * H + h;
      const len = sel.sparseLen[row];
      const list = sel.sparseList.subarray(row * sel.listCapacity, row * sel.listCapacity + len);
      attendRow(inp, b, h, list, len, (p) => sel.weight(row, p), out);
    }
  }
  return out;
}

/** Dense attention over positions 0 … sk−1 → [B, H, D] fp32 (the reference for attend). */
export function denseAttentionCpu(inp: AttentionInputs): Float32Array {
  const { batch: B, heads: H, headDim: D } = inp.shape;
  const out = new Float32Array(B * H * D);
  const all = new Int32Array(inp.seqLen);
  for (let p = 0; p < inp.seqLen; p++) all[p] = p;
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) attendRow(inp, b, h, all, inp.seqLen, () => 1, out);
  return out;
}
