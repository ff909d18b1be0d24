/**
 * A seeded generator of LLM-like keys, values and queries (SPEC §6), since no model weights can
 * be downloaded. Per (b, kv-head):
 *   key(p) = R(p) · (μ + U z + ε) with outlier channels scaled 5–10×
 *     μ: a per-head mean (keys of real models are not centred),
 *     U z: low-rank structure (r directions with decaying scales),
 *     R(p): rotary-like rotation of channel pairs (2i, 2i+1) by p · 10000^(−2i/D);
 *   planted heavy hitters: a few positions whose keys are shifted along the group's query direction
 *   so that they score 4–8 bulk standard deviations above the bulk (the attention sinks of
 *   real models look like this).
 * Queries of a GQA group share that direction plus a per-head deviation, scaled so the bulk's
 * logits ⟨q, k⟩/√D have an LLM-like spread (std 1.5). Every value is a pure
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
  /** Standard deviation of the bulk's attention logits ⟨q, k⟩/√D (default 1.5, LLM-like). */
  readonly logitStd?: number;
  /** Planted keys score this many bulk standard deviations above the bulk mean, drawn uniformly (default [4, 8]). */
  readonly plantedMargin?: readonly [number, number];
}

interface HeadModel {
  readonly mean: Float32Array;
  readonly basis: Float32Array; // rank × D, unit rows
  readonly scales: Float32Array; // rank
  readonly channelScale: Float32Array; // D (outliers 5–10×, else 1)
  readonly queryDir: Float32Array; // D, unit: the group's query direction
  readonly planted: Map<number, number>; // position → margin in bulk standard deviations
  /** Query scale a (q = a·u + noise) and the bulk's spread along u (key units), set by calibrate(). */
  queryScale: number;
  projStd: number;
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
      const planted = new Map<number, number>();
      const [mlo, mhi] = options.plantedMargin ?? [4, 8];
      if (plantedCount > 0 && phi > plo) {
        const want = Math.min(plantedCount, phi - plo);
        while (planted.size < want) planted.set(plo + Math.floor(rng.next() * (phi - plo)), mlo + (mhi - mlo) * rng.next());
      }
      this.heads.push({ mean, basis, scales, channelScale, queryDir: unit(qd), planted, queryScale: 1, projStd: 1 });
    }
    this.calibrate(options.logitStd ?? 1.5, phi > 0 ? phi : 32768);
  }

  /**
   * Measure the bulk keys' spread along each head's query direction (1024 positions spread over
   * the planted range, or 32K) and
   * scale the queries so the bulk logits have the requested standard deviation; planted keys are
   * then shifted along the query direction by their margin in those units.
   */
  private calibrate(logitStd: number, span: number): void {
    const { batch: B, kvHeads: Hkv, headDim: D } = this.shape;
    const k = new Float32Array(D);
    for (let bh = 0; bh < B * Hkv; bh++) {
      const hm = this.heads[bh];
      let s1 = 0;
      let s2 = 0;
      const n = 1024;
      for (let i = 0; i < n; i++) {
        this.bulkKeyAt(Math.floor(bh / Hkv), bh % Hkv, Math.floor((i * span) / n), k, 0);
        let proj = 0;
        for (let j = 0; j < D; j++) proj += k[j] * hm.queryDir[j];
        s1 += proj;
        s2 += proj * proj;
      }
      hm.projStd = Math.sqrt(Math.max(s2 / n - (s1 / n) ** 2, 1e-12));
      hm.queryScale = (logitStd * Math.sqrt(D)) / hm.projStd;
    }
  }

  plantedPositions(b: number, kvh: number): number[] {
    return [...this.heads[b * this.shape.kvHeads + kvh].planted.keys()].sort((x, y) => x - y);
  }

  /** Write key (b, kvh, p) into out[off … off+D): a bulk key, plus the planted shift along the query direction. */
  keyAt(b: number, kvh: number, p: number, out: Float32Array, off: number): void {
    this.bulkKeyAt(b, kvh, p, out, off);
    const hm = this.heads[b * this.shape.kvHeads + kvh];
    const margin = hm.planted.get(p);
    if (margin !== undefined) {
      for (let j = 0; j < this.shape.headDim; j++) out[off + j] += margin * hm.projStd * hm.queryDir[j];
    }
  }

  private bulkKeyAt(b: number, kvh: number, p: number, out: Float32Array, off: number): void {
    const D = this.shape.headDim;
    const hm = this.heads[b * this.shape.kvHeads + kvh];
    const rng = new SplitMix32(mix32(this.seed ^ mix32(((b * this.shape.kvHeads + kvh) * 0x10001 + p) >>> 0)));
    const v = new Float64Array(D);
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
        // Per-head deviation: 20% of the query's norm, spread over all dims.
        const dev = (0.2 * hm.queryScale) / Math.sqrt(D);
        for (let j = 0; j < D; j++) out[(b * H + h) * D + j] = hm.queryScale * hm.queryDir[j] + dev * rng.normal();
      }
    }
    return out;
  }
}
