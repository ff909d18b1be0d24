import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { assignAll, distanceF32, kmeansGroup, nearestCentroid, squaredNormF32 } from '../src/pq/kmeans.js';
import { drawIndex, initStream, initialSampleIndices } from '../src/pq/rng.js';
import { makeLayout } from '../src/pq/config.js';
import { buildIndexCpu } from '../src/pq/cpu-build.js';
import { centroidOffset, codeOffset } from '../src/pq/index-state.js';

const points = (n: number, dim: number, seed: number, integer: boolean): Float32Array => {
  let s = seed >>> 0;
  const next = (): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  return new Float32Array(n * dim).map(() => (integer ? Math.floor(next() * 17) - 8 : (next() - 0.5) * 10));
};

test('k-means: the objective never increases and every code is its point nearest centroid', () => {
  fc.assert(
    fc.property(
      fc.record({ n: fc.integer({ min: 1, max: 300 }), dim: fc.integer({ min: 1, max: 9 }), bits: fc.integer({ min: 1, max: 6 }), iters: fc.integer({ min: 0, max: 8 }), seed: fc.nat(), integer: fc.boolean() }),
      ({ n, dim, bits, iters, seed, integer }) => {
        const pts = points(n, dim, seed, integer);
        const objectives: number[] = [];
        const res = kmeansGroup({ points: pts, n, dim, numCentroids: 1 << bits, iters, seed, group: 3, onRound: (_r, o) => objectives.push(o) });
        for (let i = 1; i < objectives.length; i++) {
          assert.ok(objectives[i] <= objectives[i - 1] * (1 + 1e-6) + 1e-9, `round ${i}: ${objectives[i]} > ${objectives[i - 1]}`);
        }
        for (let p = 0; p < n; p++) {
          const best = nearestCentroid(pts, p * dim, res.centroids, 0, 1 << bits, dim);
          assert.equal(res.codes[p], best);
          const dBest = distanceF32(pts, p * dim, res.centroids, best * dim, dim);
          for (let c = 0; c < 1 << bits; c++) assert.ok(distanceF32(pts, p * dim, res.centroids, c * dim, dim) >= dBest);
        }
      },
    ),
    { numRuns: 60, seed: 42 },
  );
});

test('k-means: the initial draw is distinct when n ≥ C and deterministic per seed and group', () => {
  for (const [n, C] of [[10, 8], [64, 64], [1000, 256], [5, 8]]) {
    const a = initialSampleIndices(99, 7, n, C);
    assert.deepEqual(a, initialSampleIndices(99, 7, n, C));
    assert.ok([...a].every((i) => i >= 0 && i < n));
    if (n >= C) assert.equal(new Set(a).size, C);
    else assert.equal(new Set(a).size, n);
  }
  assert.notDeepEqual(initialSampleIndices(99, 7, 1000, 16), initialSampleIndices(99, 8, 1000, 16));
});

test('k-means: the initial draw is the partial Fisher–Yates shuffle of an explicit array [0, n)', () => {
  for (const [n, C, seed, group] of [[10, 8, 1, 0], [64, 64, 2, 3], [1000, 256, 3, 9], [5, 8, 4, 1], [31872, 64, 0x5eed, 63], [300, 256, 5, 2], [1, 4, 6, 0]]) {
    const a = Int32Array.from({ length: n }, (_, i) => i);
    const want = new Int32Array(C);
    const distinct = Math.min(C, n);
    for (let i = 0; i < distinct; i++) {
      const j = i + drawIndex(seed, initStream(group), i, n - i);
      [a[i], a[j]] = [a[j], a[i]];
      want[i] = a[i];
    }
    for (let i = distinct; i < C; i++) want[i] = a[drawIndex(seed, initStream(group), i, n)];
    assert.deepEqual(initialSampleIndices(seed, group, n, C), want, `n ${n} C ${C}`);
  }
});

test('k-means: an empty cluster is re-seeded with a sample (duplicate points)', () => {
  const n = 40;
  const pts = new Float32Array(n * 2); // all points at two locations → most of 8 clusters empty
  for (let p = 0; p < n; p++) pts[p * 2] = p % 2 === 0 ? 0 : 10;
  const res = kmeansGroup({ points: pts, n, dim: 2, numCentroids: 8, iters: 3, seed: 1, group: 0 });
  for (let c = 0; c < 8; c++) {
    const x = res.centroids[c * 2];
    assert.ok(x === 0 || x === 10, `centroid ${c} = ${x} is one of the samples`);
  }
  assert.equal(assignAll(pts, n, 2, res.centroids, 8, new Uint8Array(n)), 0);
});

test('build: ip augments with φ = max |x|² and codes every position from O', () => {
  const layout = makeLayout({ batch: 2, heads: 2, kvHeads: 1, headDim: 8 }, { pqGroupFactor: 2, pqBits: 3, initOffset: 5, kmeansIters: 4, metric: 'ip', sinkSize: 0, windowSize: 0, heavySize: 4 });
  const sk = 70;
  const keys = points(2 * sk * 8, 1, 5, false);
  const st = buildIndexCpu(layout, keys, sk, 80);
  assert.equal(st.seqLen, sk);
  for (let b = 0; b < 2; b++) {
    for (let m = 0; m < 2; m++) {
      let phi = 0;
      for (let p = 5; p < sk; p++) phi = Math.max(phi, squaredNormF32(keys, (b * sk + p) * 8 + m * 4, 4));
      assert.equal(st.phi[b * 2 + m], phi);
      // The augmented coordinate of every centroid is non-negative (means of sqrt(...) ≥ 0).
      for (let c = 0; c < 8; c++) assert.ok(st.centroids[centroidOffset(layout, b, 0, m, c) + 4] >= 0);
    }
    for (let p = 0; p < 5; p++) assert.equal(st.codes[codeOffset(layout, 80, b, 0, p)], 0);
  }
});
