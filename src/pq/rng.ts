/**
 * Counter-based random draws for k-means, defined on uint32 arithmetic only so that the CUDA
 * kernels (kernels/common.cuh: pq_mix32 / pq_draw) reproduce every draw bit for bit.
 *
 *   mix32(x)            = the "lowbias32" integer hash
 *   draw(seed, s, i)    = mix32(mix32(mix32(seed) ^ s) ^ i)
 *
 * Streams: group g = (b·Hkv + kvh)·M + m; initial draw i uses stream 2g; the re-seed of empty
 * cluster c in round r uses stream 2g + 1 and counter r·256 + c.
 */

export function mix32(x: number): number {
  x >>>= 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

export function draw(seed: number, stream: number, counter: number): number {
  return mix32((mix32((mix32(seed) ^ stream) >>> 0) ^ counter) >>> 0);
}

/** Index in [0, n) from a draw (n < 2^31). */
export function drawIndex(seed: number, stream: number, counter: number, n: number): number {
  return draw(seed, stream, counter) % n;
}

export function initStream(group: number): number {
  return (group * 2) >>> 0;
}

export function reseedStream(group: number): number {
  return (group * 2 + 1) >>> 0;
}

export function reseedCounter(round: number, cluster: number): number {
  return (round * 256 + cluster) >>> 0;
}

/**
 * The sample indices (into the group's n points) that seed the C initial centroids: a partial
 * Fisher–Yates shuffle, so they are distinct when n ≥ C; when n < C the remaining centroids
 * are further draws with replacement (the duplicates then empty out and get re-seeded).
 * kernels/build.cu (initial_sample_indices) draws the same indices on the GPU.
 */
export function initialSampleIndices(seed: number, group: number, n: number, numCentroids: number): Int32Array {
  const out = new Int32Array(numCentroids);
  // The shuffle's array [0, n) holds its identity but at the ≤ 2C positions a swap touched: those
  // live in an open-addressing table (a Map cost ≈ 0.2 μs a draw: 1 ms of a seed-config build).
  const swaps = new SwapTable(2 * Math.min(numCentroids, n));
  const stream = initStream(group);
  const distinct = Math.min(numCentroids, n);
  for (let i = 0; i < distinct; i++) {
    const j = i + drawIndex(seed, stream, i, n - i);
    const vi = swaps.get(i);
    const vj = swaps.get(j);
    swaps.set(i, vj);
    swaps.set(j, vi);
    out[i] = vj;
  }
  for (let i = distinct; i < numCentroids; i++) out[i] = swaps.get(drawIndex(seed, stream, i, n));
  return out;
}

/** Position → value of a partly shuffled identity array: linear probing over ≥ 2× the positions it will hold. */
class SwapTable {
  private readonly keys: Int32Array;
  private readonly values: Int32Array;
  private readonly mask: number;

  constructor(capacity: number) {
    let size = 16;
    while (size < 2 * capacity) size *= 2;
    this.keys = new Int32Array(size).fill(-1);
    this.values = new Int32Array(size);
    this.mask = size - 1;
  }

  private slot(position: number): number {
    let h = Math.imul(position, 0x9e3779b1) & this.mask;
    while (this.keys[h] !== -1 && this.keys[h] !== position) h = (h + 1) & this.mask;
    return h;
  }

  get(position: number): number {
    const h = this.slot(position);
    return this.keys[h] === -1 ? position : this.values[h];
  }

  set(position: number, value: number): void {
    const h = this.slot(position);
    this.keys[h] = position;
    this.values[h] = value;
  }
}

/** A small seeded PRNG for test data and synthetic keys (not used by the algorithm itself). */
export class SplitMix32 {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  nextU32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return mix32(this.state);
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }
  /** Integer in [lo, hi] inclusive. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  /** Standard normal (Box–Muller). */
  normal(): number {
    let u = this.next();
    if (u < 1e-12) u = 1e-12;
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}
