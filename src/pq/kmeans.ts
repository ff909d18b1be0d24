/**
 * The k-means of one (b, kv-head, sub-space) group, in the exact fp32 operation order that the
 * CUDA kernels use (kernels/common.cuh), so that both produce identical codes and centroids:
 *   distance(x, c) = Σ_j (x_j − c_j)² as 8 interleaved partial sums P_r = Σ_{j ≡ r (mod 8)}
 *                    (ascending j, every op rounded to fp32), combined as
 *                    ((P0 + P1) + (P2 + P3)) + ((P4 + P5) + (P6 + P7)) — 8 lanes on the GPU;
 *   nearest = lowest index among the minimal distances;
 *   mean    = fp32(sum / count), sums accumulated exactly (float64) then rounded once.
 * Math.fround of a float64 op on fp32 inputs equals the fp32 op (+ − × ÷ √: 53 ≥ 2·24 + 2).
 */
import { drawIndex, initialSampleIndices, reseedCounter, reseedStream } from './rng.js';

const fr = Math.fround;

/** Combine 8 partial sums in the canonical tree order. */
function tree8(p: Float64Array): number {
  return fr(fr(fr(p[0] + p[1]) + fr(p[2] + p[3])) + fr(fr(p[4] + p[5]) + fr(p[6] + p[7])));
}

const partials = new Float64Array(8);

/** Squared L2 distance in the canonical fp32 order (8 interleaved partial sums, fixed tree). */
export function distanceF32(x: Float32Array, xOff: number, c: Float32Array, cOff: number, dim: number): number {
  partials.fill(0);
  for (let j = 0; j < dim; j++) {
    const t = fr(x[xOff + j] - c[cOff + j]);
    partials[j & 7] = fr(partials[j & 7] + fr(t * t));
  }
  return tree8(partials);
}

/** Index of the nearest centroid (ties → lower index). */
export function nearestCentroid(
  x: Float32Array,
  xOff: number,
  centroids: Float32Array,
  cBase: number,
  numCentroids: number,
  dim: number,
): number {
  let best = 0;
  let bestD = Infinity;
  for (let c = 0; c < numCentroids; c++) {
    const d = distanceF32(x, xOff, centroids, cBase + c * dim, dim);
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best;
}

/** |x|² in the canonical order (the distance to the origin). */
export function squaredNormF32(x: Float32Array, off: number, dim: number): number {
  partials.fill(0);
  for (let j = 0; j < dim; j++) partials[j & 7] = fr(partials[j & 7] + fr(x[off + j] * x[off + j]));
  return tree8(partials);
}

/** The ip augmentation coordinate sqrt(max(φ − |x|², 0)) in fp32. */
export function ipAugment(phi: number, sqNorm: number): number {
  const v = fr(phi - sqNorm);
  return v > 0 ? fr(Math.sqrt(v)) : 0;
}

export interface KMeansGroupInput {
  /** n points of `dim` floats each, row-major (already augmented for ip). */
  readonly points: Float32Array;
  readonly n: number;
  readonly dim: number;
  readonly numCentroids: number;
  readonly iters: number;
  readonly seed: number;
  /** Stream id of this group: (b·Hkv + kvh)·M + m. */
  readonly group: number;
  /** Called after each round with the objective Σ‖x − c(x)‖² of that round's assignment. */
  readonly onRound?: (round: number, objective: number) => void;
}

export interface KMeansGroupResult {
  /** numCentroids × dim */
  readonly centroids: Float32Array;
  /** n codes: the nearest final centroid of every point. */
  readonly codes: Uint8Array;
}

/** Initial centroids: the seeded distinct sample draw (rng.ts). */
export function initialCentroids(points: Float32Array, n: number, dim: number, numCentroids: number, seed: number, group: number): Float32Array {
  const idx = initialSampleIndices(seed, group, n, numCentroids);
  const cent = new Float32Array(numCentroids * dim);
  for (let c = 0; c < numCentroids; c++) cent.set(points.subarray(idx[c] * dim, idx[c] * dim + dim), c * dim);
  return cent;
}

/** One assignment pass; returns the objective (float64 sum of the fp32 distances). */
export function assignAll(points: Float32Array, n: number, dim: number, centroids: Float32Array, numCentroids: number, codes: Uint8Array): number {
  let objective = 0;
  for (let p = 0; p < n; p++) {
    let best = 0;
    let bestD = Infinity;
    const off = p * dim;
    for (let c = 0; c < numCentroids; c++) {
      const d = distanceF32(points, off, centroids, c * dim, dim);
      if (d < bestD) {
        bestD = d;
        best = c;
      }
    }
    codes[p] = best;
    objective += bestD;
  }
  return objective;
}

/** Update step: means of the assigned points; an empty cluster takes a seeded random sample. */
export function updateCentroids(
  points: Float32Array,
  n: number,
  dim: number,
  codes: Uint8Array,
  centroids: Float32Array,
  numCentroids: number,
  seed: number,
  group: number,
  round: number,
): void {
  const sums = new Float64Array(numCentroids * dim);
  const counts = new Int32Array(numCentroids);
  for (let p = 0; p < n; p++) {
    const c = codes[p];
    counts[c]++;
    const so = c * dim;
    const po = p * dim;
    for (let j = 0; j < dim; j++) sums[so + j] += points[po + j];
  }
  for (let c = 0; c < numCentroids; c++) {
    const co = c * dim;
    if (counts[c] === 0) {
      const s = drawIndex(seed, reseedStream(group), reseedCounter(round, c), n);
      centroids.set(points.subarray(s * dim, s * dim + dim), co);
    } else {
      for (let j = 0; j < dim; j++) centroids[co + j] = fr(fr(sums[co + j]) / counts[c]);
    }
  }
}

/**
 * Lloyd's k-means: `iters` rounds of assign-then-update from the seeded initial draw, then a final
 * assignment so every code is its point's nearest centroid.
 */
export function kmeansGroup(input: KMeansGroupInput): KMeansGroupResult {
  const { points, n, dim, numCentroids, iters, seed, group } = input;
  const centroids = initialCentroids(points, n, dim, numCentroids, seed, group);
  const codes = new Uint8Array(n);
  for (let round = 0; round < iters; round++) {
    const objective = assignAll(points, n, dim, centroids, numCentroids, codes);
    input.onRound?.(round, objective);
    updateCentroids(points, n, dim, codes, centroids, numCentroids, seed, group, round);
  }
  const finalObjective = assignAll(points, n, dim, centroids, numCentroids, codes);
  input.onRound?.(iters, finalObjective);
  return { centroids, codes };
}
