import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { checkSelect } from '../src/pq/brute-force.js';
import { CpuPQCache } from '../src/pq/cache.js';
import { fullAttentionThreshold, makeLayout } from '../src/pq/config.js';
import { selectCpu } from '../src/pq/cpu-select.js';
import { codeOffset, emptyIndexState, type PQIndexState } from '../src/pq/index-state.js';
import { HostTensor } from '../src/tensor/host-tensor.js';

interface Spec {
  B: number; Hkv: number; G: number; D: number; M: number; bits: number; K: number; S: number; W: number; O: number;
  ip: boolean; skDelta: number; skMode: number; seed: number; fewCodes: boolean;
}

/** Integer-valued index + query: every fp32 score is exact, so the oracle must equal the brute force. */
function integerCase(s: Spec): { state: PQIndexState; query: Float32Array } {
  const layout = makeLayout(
    { batch: s.B, heads: s.Hkv * s.G, kvHeads: s.Hkv, headDim: s.D },
    { pqGroupFactor: s.M, pqBits: s.bits, heavySize: s.K, sinkSize: s.S, windowSize: s.W, initOffset: s.O, metric: s.ip ? 'ip' : 'euclidean', kmeansIters: 0 },
  );
  const thr = fullAttentionThreshold(layout.config, layout.numCentroids);
  const sk = Math.max(s.O + 1, s.skMode === 0 ? thr + s.skDelta : thr + 1 + Math.abs(s.skDelta) * 37);
  const st = emptyIndexState(layout, sk);
  let r = s.seed >>> 0;
  const rnd = (lo: number, hi: number): number => {
    r = (Math.imul(r ^ (r >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0;
    return lo + (r % (hi - lo + 1));
  };
  for (let i = 0; i < st.centroids.length; i++) st.centroids[i] = rnd(-8, 8);
  const C = layout.numCentroids;
  for (let bh = 0; bh < s.B * s.Hkv; bh++) {
    for (let p = s.O; p < sk; p++) for (let m = 0; m < s.M; m++) st.codes[codeOffset(layout, sk, 0, bh, p) + m] = s.fewCodes ? rnd(0, Math.min(1, C - 1)) : rnd(0, C - 1);
  }
  st.seqLen = sk;
  const query = new Float32Array(s.B * s.Hkv * s.G * s.D).map(() => rnd(-8, 8));
  return { state: st, query };
}

const specArb = fc.record({
  B: fc.integer({ min: 1, max: 4 }),
  Hkv: fc.constantFrom(1, 2, 3),
  G: fc.constantFrom(1, 2, 4),
  D: fc.constantFrom(8, 16, 32),
  M: fc.constantFrom(1, 2, 4, 8),
  bits: fc.oneof(fc.constantFrom(1, 8), fc.integer({ min: 1, max: 8 })),
  K: fc.integer({ min: 1, max: 80 }),
  S: fc.integer({ min: 0, max: 60 }),
  W: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 200, max: 2000 })), // sometimes wider than the middle
  O: fc.integer({ min: 0, max: 90 }), // sometimes below S
  ip: fc.boolean(),
  skDelta: fc.integer({ min: -3, max: 3 }),
  skMode: fc.integer({ min: 0, max: 1 }), // 0: at and around the full-attention threshold
  seed: fc.nat(),
  fewCodes: fc.boolean(), // many exactly equal scores: ties go to the lower position
}).filter((s) => s.M <= s.D);

test('select (CPU oracle) equals the float64 brute force on integer inputs (property)', () => {
  fc.assert(
    fc.property(specArb, (s) => {
      const { state, query } = integerCase(s);
      for (const dtype of ['f32', 'bf16'] as const) {
        const out = selectCpu(state, query, dtype);
        const errors = checkSelect(state, query, { ...out, weightsDType: dtype }, 'exact');
        assert.deepEqual(errors, [], JSON.stringify(s));
      }
    }),
    { numRuns: 250, seed: 7 },
  );
});

test('select: ties go to the lower position, full attention at the threshold, −1 padding', () => {
  const layout = makeLayout({ batch: 1, heads: 1, kvHeads: 1, headDim: 4 }, { pqGroupFactor: 1, pqBits: 1, heavySize: 3, sinkSize: 2, windowSize: 2, initOffset: 0, kmeansIters: 0 });
  const thr = fullAttentionThreshold(layout.config, layout.numCentroids); // 3 + 0 + 1 + 2 = 6
  assert.equal(thr, 6);
  const st = emptyIndexState(layout, 40);
  st.centroids.set([1, 0, 0, 0, 0, 0, 0, 0]); // code 0 scores q0, code 1 scores 0
  const query = new Float32Array([1, 0, 0, 0]);
  st.seqLen = 6;
  let out = selectCpu(st, query, 'f32');
  assert.deepEqual([...out.sparseList.subarray(0, 6)], [0, 1, 2, 3, 4, 5]);
  assert.equal(out.sparseLen[0], 6);
  st.seqLen = 20; // all codes 0 → all scores equal → the three lowest eligible positions win
  out = selectCpu(st, query, 'f32');
  assert.deepEqual([...out.sparseList.subarray(0, out.sparseLen[0])], [0, 1, 2, 3, 4, 18, 19]);
  assert.ok(out.sparseList.subarray(out.sparseLen[0]).every((v) => v === -1));
  st.codes[7] = 0;
  for (const p of [5, 6, 8]) st.codes[p] = 1; // lower scores: skipped
  out = selectCpu(st, query, 'f32');
  assert.deepEqual([...out.sparseList.subarray(0, out.sparseLen[0])], [0, 1, 2, 3, 4, 18, 19]);
  for (const p of [2, 3, 4]) st.codes[p] = 1;
  out = selectCpu(st, query, 'f32');
  assert.deepEqual([...out.sparseList.subarray(0, out.sparseLen[0])], [0, 1, 7, 9, 10, 18, 19]);
  assert.equal(out.weights.length, 20);
  assert.deepEqual([...out.weights].map((w, p) => (w === 1 ? p : -1)).filter((p) => p >= 0), [0, 1, 7, 9, 10, 18, 19]);
});

test('select: NaN scores rank below every number; equal scores go to the lower position', () => {
  const layout = makeLayout({ batch: 1, heads: 1, kvHeads: 1, headDim: 1 }, { pqGroupFactor: 1, pqBits: 2, heavySize: 5, sinkSize: 0, windowSize: 0, initOffset: 0, kmeansIters: 0 });
  const st = emptyIndexState(layout, 20);
  st.centroids.set([-0, 0, NaN, -1]);
  st.seqLen = 20;
  const codes = [2, 3, 0, 2, 1, 0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3];
  st.codes.set(codes);
  const out = selectCpu(st, new Float32Array([1]), 'f32');
  // Scores: p0, p3 NaN; p2, p4, p5 zero (codes 0 = −0·1 and 1 = +0); the rest −1.
  assert.deepEqual([...out.sparseList.subarray(0, out.sparseLen[0])], [1, 2, 4, 5, 6]);
});

test('CpuPQCache: a failed call leaves no partial state', () => {
  const shape = { batch: 1, heads: 2, kvHeads: 1, headDim: 8 };
  const config = { pqGroupFactor: 2, pqBits: 2, heavySize: 2, sinkSize: 1, windowSize: 1, initOffset: 1, kmeansIters: 2 };
  const cache = new CpuPQCache({ shape, config, capacity: 12 });
  const keys = new HostTensor('f32', [1, 1, 10, 8], new Float32Array(80).map((_, i) => Math.sin(i)));
  cache.build(keys);
  const before = cache.exportState();
  assert.throws(() => cache.append(new HostTensor('f32', [1, 1, 3, 8])), { name: 'CapacityError' });
  const bad = new Float32Array(8);
  bad[3] = NaN;
  assert.throws(() => cache.append(new HostTensor('f32', [1, 1, 1, 8], bad)), { name: 'NonFiniteError' });
  assert.throws(() => cache.build(new HostTensor('f32', [1, 2, 10, 8])), { name: 'ShapeError' });
  const after = cache.exportState();
  assert.equal(after.seqLen, before.seqLen);
  assert.deepEqual(after.codes, before.codes);
  assert.deepEqual(after.centroids, before.centroids);
  cache.append(new HostTensor('f32', [1, 1, 2, 8], new Float32Array(16).fill(0.5)));
  assert.equal(cache.seqLen, 12);
});
