/**
 * Quality of a selection against exact attention (SPEC §6): recall@K of the selected heavy
 * hitters against the exact top-K by ⟨q, k⟩ (same eligibility), the share of the true softmax mass
 * the final list captures, and the relative error of sparse attention against dense attention.
 *
 * QualityReference computes the exact side once per (keys, query) — scores, the eligible order,
 * the softmax normaliser, dense attention — so any number of lists (PQ settings, baselines) are
 * scored cheaply against it.
 */
import { attendCpu, denseAttentionCpu } from '../attention/cpu-attention.js';
import type { Layout } from './config.js';
import { eligibleRange } from './cpu-select.js';
import { SplitMix32 } from './rng.js';

export interface QualityInputs {
  readonly layout: Layout;
  /** [B, H, D] fp32 */
  readonly query: Float32Array;
  /** [B, Hkv, seqStride, D] fp32, positions 0 … sk−1 */
  readonly keys: Float32Array;
  readonly values: Float32Array;
  readonly seqStride: number;
  readonly seqLen: number;
}

export interface SparseLists {
  /** [B, H, L] and [B, H] */
  readonly sparseList: Int32Array;
  readonly sparseLen: Int32Array;
  readonly listCapacity: number;
}

export interface QualityResult {
  /** Mean over heads of |list ∩ exact top-K| / |exact top-K|. */
  readonly recall: number;
  /** Mean over heads of Σ_{p ∈ list} softmax(q·k/√D)_p. */
  readonly softmaxMass: number;
  /** ‖sparse − dense‖ / ‖dense‖ over all heads. */
  readonly attendRelError: number;
}

export class QualityReference {
  private readonly rows: number;
  /** Per row: logits q·k/√D of every position, their max and Σ e^{s − max}. */
  private readonly logits: Float64Array[];
  private readonly maxLogit: Float64Array;
  private readonly total: Float64Array;
  /** Per row: eligible positions by descending score (ties → lower position). */
  private readonly order: Int32Array[];
  private readonly dense: Float32Array;

  constructor(readonly x: QualityInputs) {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = x.layout.shape;
    const G = H / Hkv;
    const sk = x.seqLen;
    const { lo, hi } = eligibleRange(x.layout, sk);
    const scale = 1 / Math.sqrt(D);
    this.rows = B * H;
    this.logits = [];
    this.order = [];
    this.maxLogit = new Float64Array(this.rows);
    this.total = new Float64Array(this.rows);
    for (let row = 0; row < this.rows; row++) {
      const b = Math.floor(row / H);
      const kvBase = (b * Hkv + Math.floor((row % H) / G)) * x.seqStride;
      const s = new Float64Array(sk);
      let mx = -Infinity;
      for (let p = 0; p < sk; p++) {
        let dot = 0;
        for (let j = 0; j < D; j++) dot += x.query[row * D + j] * x.keys[(kvBase + p) * D + j];
        s[p] = dot * scale;
        if (s[p] > mx) mx = s[p];
      }
      let total = 0;
      for (let p = 0; p < sk; p++) total += Math.exp(s[p] - mx);
      const eligible = Int32Array.from({ length: Math.max(0, hi - Math.max(lo, 0)) }, (_, i) => Math.max(lo, 0) + i);
      eligible.sort((a, c) => s[c] - s[a] || a - c);
      this.logits.push(s);
      this.order.push(eligible);
      this.maxLogit[row] = mx;
      this.total[row] = total;
    }
    this.dense = denseAttentionCpu({ ...x, shape: x.layout.shape });
  }

  /** The exact top-k eligible positions of a row (descending score). */
  exactTop(row: number, k: number): Int32Array {
    return this.order[row].subarray(0, Math.min(k, this.order[row].length));
  }

  /** Score a selection; recall is against the exact top-K with K = the layout's heavySize. */
  evaluate(lists: SparseLists, K = this.x.layout.config.heavySize): QualityResult {
    const L = lists.listCapacity;
    let recallSum = 0;
    let massSum = 0;
    for (let row = 0; row < this.rows; row++) {
      const list = lists.sparseList.subarray(row * L, row * L + lists.sparseLen[row]);
      const exact = new Set(this.exactTop(row, K));
      let hit = 0;
      let kept = 0;
      for (const p of list) {
        if (exact.has(p)) hit++;
        kept += Math.exp(this.logits[row][p] - this.maxLogit[row]);
      }
      recallSum += exact.size > 0 ? hit / exact.size : 1;
      massSum += kept / this.total[row];
    }
    const sparse = attendCpu({ ...this.x, shape: this.x.layout.shape }, { sparseList: lists.sparseList, sparseLen: lists.sparseLen, listCapacity: L, weight: () => 1 });
    let num = 0;
    let den = 0;
    for (let i = 0; i < this.dense.length; i++) {
      num += (sparse[i] - this.dense[i]) ** 2;
      den += this.dense[i] ** 2;
    }
    return { recall: recallSum / this.rows, softmaxMass: massSum / this.rows, attendRelError: Math.sqrt(num / den) };
  }

  /**
   * The baseline lists of the quality report, with the layout's S and W: sink + exact top-K +
   * window (the upper bound), sink + window only (StreamingLLM-style), sink + K random eligible
   * positions + window.
   */
  baselineLists(kind: 'exact' | 'sink-window' | 'random', K: number, seed = 1): SparseLists {
    const { sinkSize: S, windowSize: W } = this.x.layout.config;
    const sk = this.x.seqLen;
    const L = Math.min(sk, S + K + W);
    const sparseList = new Int32Array(this.rows * L).fill(-1);
    const sparseLen = new Int32Array(this.rows);
    const rng = new SplitMix32(seed);
    for (let row = 0; row < this.rows; row++) {
      const chosen = new Set<number>();
      for (let p = 0; p < Math.min(S, sk); p++) chosen.add(p);
      for (let p = Math.max(0, sk - W); p < sk; p++) chosen.add(p);
      if (kind === 'exact') {
        for (const p of this.exactTop(row, K)) chosen.add(p);
      } else if (kind === 'random') {
        const pool = this.order[row].slice();
        for (let i = 0; i < Math.min(K, pool.length); i++) {
          const j = i + Math.floor(rng.next() * (pool.length - i));
          [pool[i], pool[j]] = [pool[j], pool[i]];
          chosen.add(pool[i]);
        }
      }
      const sorted = [...chosen].sort((a, b) => a - b);
      sparseList.set(sorted, row * L);
      sparseLen[row] = sorted.length;
    }
    return { sparseList, sparseLen, listCapacity: L };
  }
}

/** One-off quality of a selection (the demo's sampled steps). */
export function measureQuality(x: QualityInputs & { readonly sparseList: Int32Array; readonly sparseLen: Int32Array }): QualityResult {
  return new QualityReference(x).evaluate({ sparseList: x.sparseList, sparseLen: x.sparseLen, listCapacity: x.layout.listCapacity });
}
