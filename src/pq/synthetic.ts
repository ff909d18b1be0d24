/**
 * A seeded generator of LLM-like keys, values and queries (SPEC §6), since no model weights can
 * be downloaded. Per (b, kv-head):
 *   key(p) = R(p) · (μ + U z + ε) with outlier channels scaled 5–10×
 *     μ: a per-head mean (keys of real models are not centred),
 *     U z: low-rank structure (r directions with decaying scales),
 *     R(p): rotary-like rotation of channel pairs (2i, 2i+1) by p · 10000^(−2i/D);
 *   planted heavy hitters: a few positions whose keys align with the group's query direction.
 * Queries of a GQA group share that direction plus a per-head deviation. Every value is a pure
 * function of (seed, b, kvh or h, position), so decode steps can draw new keys on the fly.
 */
import type { CacheShape } from './config.js';
import { SplitMix32, mix32 } from './rng.js';

export interface SyntheticOptions {
  readonly shape: CacheShape;
  readonly seed: number;
  /** Planted heavy hitters per (b, kv-head), placed in [lo, hi). */
  readonly plantedCount?: number;
  readonly plantedRange?: readonly [number, number];
  /** Rank of the shared structure. */
  readonly rank?: number;
}

interface HeadModel {
  readonly mean: Float32Array;
  readonly basis: Float32Array; // rank × D, unit rows
  readonly scales: Float32Array; // rank
  readonly channelScale: Float32Array; // D (outliers 5–10×, else 1)
  readonly queryDir: Float32Array; // D, unit: the group's query direction
  readonly planted: Set<number>;
}

function unit(v: Float32Array): Float32Array {
  let n = 0;
  for (const x of v) n += x * x;
  n = Math.sqrt(n) || 1;
  for (let i = 0; i < v.length; i++) v[i] /= n;
  return v;
}

export class SyntheticLLM {
  readonly shape: CacheShape;
  readonly seed: number;
  private readonly heads: HeadModel[] = [];
  private readonly rank: number;
  private readonly theta: Float64Array;
  private readonly keyNorm: number;

  constructor(options: SyntheticOptions) {
    this.shape = options.shape;
    this.seed = options.seed >>> 0;
    this.rank = options.rank ?? 6;
    const { batch: B, kvHeads: Hkv, headDim: D } = this.shape;
    this.theta = new Float64Array(D >> 1);
    for (let i = 0; i < D >> 1; i++) this.theta[i] = 10000 ** ((-2 * i) / D);
    const [plo, phi] = options.plantedRange ?? [0, 0];
    const plantedCount = options.plantedCount ?? 0;
    for (let bh = 0; bh < B * Hkv; bh++) {
      const rng = new SplitMix32(mix32(this.seed ^ Math.imul(bh + 1, 0x9e3779b1)));
      const mean = new Float32Array(D).map(() => 0.5 * rng.normal());
      const basis = new Float32Array(this.rank * D);
      for (let r = 0; r < this.rank; r++) basis.set(unit(new Float32Array(D).map(() => rng.normal())), r * D);
      const scales = new Float32Array(this.rank).map((_, r) => 3 * Math.sqrt(D) * 0.8 ** r * 0.25);
      const channelScale = new Float32Array(D).fill(1);
      for (let i = 0; i < 4; i++) channelScale[rng.int(0, D - 1)] = 5 + 5 * rng.next();
      const qd = new Float32Array(D);
      for (let r = 0; r < this.rank; r++) {
        const w = rng.normal() * 0.8 ** r;
        for (let j = 0; j < D; j++) qd[j] += w * basis[r * D + j];
      }
      for (let j = 0; j < D; j++) qd[j] += 0.2 * rng.normal();
      const planted = new Set<number>();
      if (plantedCount > 0 && phi > plo) {
        const want = Math.min(plantedCount, phi - plo);
        while (planted.size < want) planted.add(plo + Math.floor(rng.next() * (phi - plo)));
      }
      this.heads.push({ mean, basis, scales, channelScale, queryDir: unit(qd), planted });
    }
    this.keyNorm = Math.sqrt(D) * 2;
  }

  plantedPositions(b: number, kvh: number): number[] {
    return [...this.heads[b * this.shape.kvHeads + kvh].planted].sort((x, y) => x - y);
  }

  /** Write key (b, kvh, p) into out[off … off+D). */
  keyAt(b: number, kvh: number, p: number, out: Float32Array, off: number): void {
    const D = this.shape.headDim;
    const hm = this.heads[b * this.shape.kvHeads + kvh];
    const rng = new SplitMix32(mix32(this.seed ^ mix32(((b * this.shape.kvHeads + kvh) * 0x10001 + p) >>> 0)));
    const v = new Float64Array(D);
    if (hm.planted.has(p)) {
      // Aligned with the group's query (in the rotated frame), 1.5× a typical key norm.
      for (let j = 0; j < D; j++) v[j] = 1.5 * this.keyNorm * hm.queryDir[j] + 0.1 * rng.normal();
      for (let j = 0; j < D; j++) out[off + j] = v[j];
      return;
    }
    for (let j = 0; j < D; j++) v[j] = hm.mean[j] + 0.3 * rng.normal();
    for (let r = 0; r < this.rank; r++) {
      const z = hm.scales[r] * rng.normal() / Math.sqrt(D);
      for (let j = 0; j < D; j++) v[j] += z * hm.basis[r * D + j] * Math.sqrt(D) * 0.5;
    }
    for (let j = 0; j < D; j++) v[j] *= hm.channelScale[j];
    for (let i = 0; i < D >> 1; i++) {
      const a = p * this.theta[i];
      const c = Math.cos(a);
      const s = Math.sin(a);
      const x = v[2 * i];
      const y = v[2 * i + 1];
      v[2 * i] = c * x - s * y;
      v[2 * i + 1] = s * x + c * y;
    }
    for (let j = 0; j < D; j++) out[off + j] = v[j];
  }

  /** Value (b, kvh, p): standard normal entries. */
  valueAt(b: number, kvh: number, p: number, out: Float32Array, off: number): void {
    const rng = new SplitMix32(mix32(this.seed ^ 0x7a1e ^ mix32(((b * this.shape.kvHeads + kvh) * 0x10001 + p) >>> 0)));
    for (let j = 0; j < this.shape.headDim; j++) out[off + j] = rng.normal();
  }

  /** Keys (or values) [B, Hkv, to − from, D] of positions [from, to). */
  block(kind: 'keys' | 'values', from: number, to: number): Float32Array {
    const { batch: B, kvHeads: Hkv, headDim: D } = this.shape;
    const n = to - from;
    const out = new Float32Array(B * Hkv * n * D);
    for (let b = 0; b < B; b++) {
      for (let kvh = 0; kvh < Hkv; kvh++) {
        for (let i = 0; i < n; i++) {
          const off = ((b * Hkv + kvh) * n + i) * D;
          if (kind === 'keys') this.keyAt(b, kvh, from + i, out, off);
          else this.valueAt(b, kvh, from + i, out, off);
        }
      }
    }
    return out;
  }

  /** Query [B, H, D] of decode step `step`: the group's direction, scaled, plus a per-head deviation. */
  query(step: number): Float32Array {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = this.shape;
    const G = H / Hkv;
    const out = new Float32Array(B * H * D);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const hm = this.heads[b * Hkv + Math.floor(h / G)];
        const rng = new SplitMix32(mix32(this.seed ^ 0x0e4e ^ mix32(((b * H + h) * 0x10001 + step) >>> 0)));
        for (let j = 0; j < D; j++) out[(b * H + h) * D + j] = this.keyNorm * hm.queryDir[j] + 0.4 * rng.normal();
      }
    }
    return out;
  }
}
