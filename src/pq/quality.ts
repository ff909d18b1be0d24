/**
 * Quality of a selection against exact attention (SPEC §6): recall@K of the PQ heavy hitters
 * against the exact top-K by ⟨q, k⟩ (same eligibility), the share of the true softmax mass the
 * final list captures, and the relative error of sparse attention against dense attention.
 */
import { attendCpu, denseAttentionCpu } from '../attention/cpu-attention.js';
import type { Layout } from './config.js';
import { eligibleRange } from './cpu-select.js';

export interface QualityInputs {
  readonly layout: Layout;
  /** [B, H, D] fp32 */
  readonly query: Float32Array;
  /** [B, Hkv, seqStride, D] fp32, positions 0 … sk−1 */
  readonly keys: Float32Array;
  readonly values: Float32Array;
  readonly seqStride: number;
  readonly seqLen: number;
  /** [B, H, L] and [B, H] from select */
  readonly sparseList: Int32Array;
  readonly sparseLen: Int32Array;
}

export interface QualityResult {
  /** Mean over heads of |PQ heavy ∩ exact top-K| / |exact top-K|. */
  readonly recall: number;
  /** Mean over heads of Σ_{p ∈ list} softmax(q·k/√D)_p. */
  readonly softmaxMass: number;
  /** ‖sparse − dense‖ / ‖dense‖ over all heads. */
  readonly attendRelError: number;
}

export function measureQuality(x: QualityInputs): QualityResult {
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = x.layout.shape;
  const G = H / Hkv;
  const L = x.layout.listCapacity;
  const K = x.layout.config.heavySize;
  const sk = x.seqLen;
  const { lo, hi } = eligibleRange(x.layout, sk);
  const scale = 1 / Math.sqrt(D);
  let recallSum = 0;
  let massSum = 0;
  const scores = new Float64Array(sk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const row = b * H + h;
      const kvBase = (b * Hkv + Math.floor(h / G)) * x.seqStride;
      let mx = -Infinity;
      for (let p = 0; p < sk; p++) {
        let dot = 0;
        for (let j = 0; j < D; j++) dot += x.query[row * D + j] * x.keys[(kvBase + p) * D + j];
        scores[p] = dot;
        if (dot * scale > mx) mx = dot * scale;
      }
      const eligible: number[] = [];
      for (let p = Math.max(lo, 0); p < hi; p++) eligible.push(p);
      eligible.sort((a, c) => scores[c] - scores[a] || a - c);
      const exact = new Set(eligible.slice(0, Math.min(K, eligible.length)));
      const list = x.sparseList.subarray(row * L, row * L + x.sparseLen[row]);
      let hit = 0;
      for (const p of list) if (exact.has(p)) hit++;
      recallSum += exact.size > 0 ? hit / exact.size : 1;
      let total = 0;
      for (let p = 0; p < sk; p++) total += Math.exp(scores[p] * scale - mx);
      let kept = 0;
      for (const p of list) kept += Math.exp(scores[p] * scale - mx);
      massSum += kept / total;
    }
  }
  const attn = { shape: x.layout.shape, query: x.query, keys: x.keys, values: x.values, seqStride: x.seqStride, seqLen: sk };
  const dense = denseAttentionCpu(attn);
  const sparse = attendCpu(attn, { sparseList: x.sparseList, sparseLen: x.sparseLen, listCapacity: L, weight: () => 1 });
  let num = 0;
  let den = 0;
  for (let i = 0; i < dense.length; i++) {
    num += (sparse[i] - dense[i]) ** 2;
    den += dense[i] ** 2;
  }
  return { recall: recallSum / (B * H), softmaxMass: massSum / (B * H), attendRelError: Math.sqrt(num / den) };
}
