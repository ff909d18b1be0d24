import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { makeLayout } from '../src/pq/config.js';
import {
  BUCKET_CHUNKED_WORDS, BUCKET_MAX_SPAN, BUCKET_PACKED_MAX_SPAN, BUCKET_WORDS_PER_THREAD, MAX_BITS_TILES, ROW_THREADS, SELECT_TILE, cudaLayoutProblem, eligibleSpan, maxSlicesFor, pairTableSize, planBucket, planPairs, planRow, planSelect,
  selectKernelName, stepBucketKernelName, stepPairsKernelName, stepRowKernelName,
} from '../src/pq/cuda-plan.js';

test('select plan: slices cover the eligible span for every sk up to the plan limit, aligned', () => {
  fc.assert(
    fc.property(
      fc.record({ B: fc.integer({ min: 1, max: 8 }), H: fc.constantFrom(1, 8, 32, 64), sk: fc.integer({ min: 1, max: 600000 }), M: fc.constantFrom(1, 2, 4, 8), K: fc.integer({ min: 1, max: 2048 }), O: fc.integer({ min: 0, max: 500 }), S: fc.integer({ min: 0, max: 500 }), W: fc.integer({ min: 0, max: 500 }), sms: fc.constantFrom(108, 132), override: fc.option(fc.integer({ min: 256, max: 70000 })) }),
      (c) => {
        const layout = makeLayout({ batch: c.B, heads: c.H, kvHeads: c.H, headDim: 128 }, { pqGroupFactor: c.M, heavySize: c.K, initOffset: c.O, sinkSize: c.S, windowSize: c.W });
        const maxSlices = maxSlicesFor(layout, c.sms);
        const plan = planSelect(layout, c.sk, c.sms, maxSlices, c.override ?? undefined);
        assert.ok(plan.maxSeqLen >= c.sk && plan.maxSeqLen % SELECT_TILE === 0);
        assert.ok(plan.numSlices >= 1 && plan.numSlices <= maxSlices);
        assert.equal(plan.sliceLen % 256, 0);
        assert.ok(plan.numSlices * plan.sliceLen >= eligibleSpan(layout, plan.maxSeqLen));
      },
    ),
    { numRuns: 500, seed: 3 },
  );
});

test('cuda layout limits and kernel names', () => {
  const l = (c: object, D = 128) => makeLayout({ batch: 1, heads: 1, kvHeads: 1, headDim: D }, c);
  assert.equal(cudaLayoutProblem(l({ pqGroupFactor: 2 })), undefined);
  assert.match(String(cudaLayoutProblem(l({ pqGroupFactor: 16 }))), /pqGroupFactor/);
  assert.match(String(cudaLayoutProblem(l({ pqGroupFactor: 8 }, 40))), /multiple of 4/);
  assert.match(String(cudaLayoutProblem(l({ heavySize: 4096 }))), /heavySize/);
  assert.equal(selectKernelName(l({ pqGroupFactor: 4, heavySize: 256 })), 'pq_select_m4_c1');
  assert.equal(selectKernelName(l({ pqGroupFactor: 2, pqBits: 8, heavySize: 257 })), 'pq_select_m2_c8'); // C² = 65536: general path
  assert.equal(pairTableSize(l({ pqGroupFactor: 2, pqBits: 6 })), 4096);
  assert.equal(pairTableSize(l({ pqGroupFactor: 1, pqBits: 8 })), 256);
  assert.equal(pairTableSize(l({ pqGroupFactor: 4, pqBits: 2 })), 0);
  assert.equal(stepPairsKernelName(l({ pqGroupFactor: 2 }), 8), 'pq_step_pairs_m2_p8');
  assert.equal(stepPairsKernelName(l({ pqGroupFactor: 1 }), 2, true), 'pq_step_pairs_long_m1_p2');
});

test('pair plan: one power-of-two cluster per head whose slices cover the span', () => {
  fc.assert(
    fc.property(
      fc.record({ B: fc.integer({ min: 1, max: 8 }), H: fc.constantFrom(1, 8, 32), sk: fc.integer({ min: 1, max: 600000 }), bits: fc.integer({ min: 1, max: 7 }), M: fc.constantFrom(1, 2), W: fc.integer({ min: 0, max: 300 }), clusters: fc.boolean() }),
      (c) => {
        const layout = makeLayout({ batch: c.B, heads: c.H, kvHeads: c.H, headDim: 128 }, { pqGroupFactor: c.M, pqBits: c.bits, windowSize: c.W });
        const plan = planPairs(layout, c.sk, 132, c.clusters);
        assert.ok([1, 2, 4, 8].includes(plan.cluster) && (c.clusters || plan.cluster === 1));
        assert.ok(plan.cluster <= pairTableSize(layout));
        assert.ok(plan.cluster * plan.sliceLen >= eligibleSpan(layout, plan.maxSeqLen) && plan.sliceLen % 256 === 0);
        const tiles = Math.ceil(plan.sliceLen / SELECT_TILE);
        assert.equal(plan.long, tiles > 3);
        assert.equal(plan.bitsTiles, Math.min(tiles, plan.long ? MAX_BITS_TILES : 2));
        assert.equal(plan.sharedBytes, plan.long ? (plan.bitsTiles * 512 + tiles * 16) * 4 : 0);
        // Class bits fit whenever the cluster can grow to make them fit.
        if (plan.long && c.clusters && plan.cluster < 8 && plan.cluster < pairTableSize(layout)) assert.equal(plan.bitsTiles, tiles);
      },
    ),
    { numRuns: 300, seed: 5 },
  );
  const seed = makeLayout({ batch: 1, heads: 32, kvHeads: 32, headDim: 128 }, {});
  assert.deepEqual(planPairs(seed, 32000, 132, true), { cluster: 4, sliceLen: 8192, maxSeqLen: 32768, long: false, bitsTiles: 2, sharedBytes: 0 });
});

test('row plan: the smallest positions-per-thread instance that holds the span, valid exactly while it does', () => {
  fc.assert(
    fc.property(
      fc.record({ B: fc.integer({ min: 1, max: 8 }), H: fc.constantFrom(1, 8, 32), M: fc.constantFrom(1, 2), bits: fc.integer({ min: 1, max: 8 }), sk: fc.integer({ min: 1, max: 80000 }), O: fc.integer({ min: 0, max: 500 }), S: fc.integer({ min: 0, max: 500 }), W: fc.integer({ min: 0, max: 500 }), choice: fc.constantFrom('auto', 'row', 'cluster') as fc.Arbitrary<'auto' | 'row' | 'cluster'> }),
      (c) => {
        const layout = makeLayout({ batch: c.B, heads: c.H, kvHeads: c.H, headDim: 128 }, { pqGroupFactor: c.M, pqBits: c.bits, initOffset: c.O, sinkSize: c.S, windowSize: c.W });
        const plan = planRow(layout, c.sk, 132, c.choice);
        const pairs = pairTableSize(layout);
        const cluster = 2 * c.B * c.H + c.B * c.H <= 132 ? 2 : 1; // kvHeads = heads here
        const fits = pairs > 0 && pairs <= 4 * ROW_THREADS && eligibleSpan(layout, c.sk) <= cluster * 64 * ROW_THREADS;
        const wanted = c.choice === 'row' || (c.choice === 'auto' && c.B * c.H <= 132);
        assert.equal(plan !== undefined, fits && wanted);
        if (plan === undefined) return;
        assert.equal(plan.cluster, cluster);
        const cap = plan.cluster * plan.positionsPerThread * ROW_THREADS;
        assert.ok(plan.maxSeqLen >= c.sk);
        assert.ok(eligibleSpan(layout, plan.maxSeqLen) <= cap && eligibleSpan(layout, plan.maxSeqLen + 1) > cap);
        if (plan.positionsPerThread > 16) assert.ok(eligibleSpan(layout, c.sk) > (cap / 2));
      },
    ),
    { numRuns: 500, seed: 5 },
  );
  const seed = makeLayout({ batch: 1, heads: 32, kvHeads: 32, headDim: 128 }, { pqGroupFactor: 2, pqBits: 6, sinkSize: 128, windowSize: 128, heavySize: 128, initOffset: 128 });
  const plan = planRow(seed, 32000, 132);
  assert.deepEqual(plan, { cluster: 2, positionsPerThread: 16, maxSeqLen: 2 * 16 * 1024 + 128 + 128 });
  assert.equal(stepRowKernelName(seed, plan!), 'pq_step_row_m2_e16_c2');
  assert.equal(stepRowKernelName(seed, planRow(seed, 32000, 132, 'auto', false)!), 'pq_step_row_m2_e32'); // no clusters before sm_90
  assert.equal(planRow(makeLayout({ batch: 8, heads: 32, kvHeads: 32, headDim: 128 }, { pqGroupFactor: 2, pqBits: 6 }), 32000, 132), undefined); // B·H > SMs
  assert.equal(planRow(makeLayout({ batch: 1, heads: 1, kvHeads: 1, headDim: 128 }, { pqGroupFactor: 2, pqBits: 7 }), 32000, 132, 'row'), undefined); // C² = 16384
});

test('bucket plan: the smallest bitmap instance holding the span from max(O, S) rounded down to 32, valid up to its limit', () => {
  fc.assert(
    fc.property(
      fc.record({ B: fc.integer({ min: 1, max: 8 }), H: fc.constantFrom(1, 8, 32), sk: fc.integer({ min: 1, max: 4300000 }), M: fc.constantFrom(1, 2, 4), bits: fc.integer({ min: 1, max: 8 }), O: fc.integer({ min: 0, max: 500 }), S: fc.integer({ min: 0, max: 500 }), W: fc.integer({ min: 0, max: 500 }), choice: fc.constantFrom('auto', 'bucket', 'row', 'cluster') as fc.Arbitrary<'auto' | 'bucket' | 'row' | 'cluster'>, smem: fc.constantFrom(20000, 100000, 200000) }),
      (c) => {
        const layout = makeLayout({ batch: c.B, heads: c.H, kvHeads: c.H, headDim: 128 }, { pqGroupFactor: c.M, pqBits: c.bits, initOffset: c.O, sinkSize: c.S, windowSize: c.W });
        const plan = planBucket(layout, c.sk, c.choice, c.smem);
        const pairs = pairTableSize(layout);
        const start = Math.floor(Math.max(c.O, c.S) / 32) * 32;
        const span = (sk: number): number => Math.max(0, sk - c.W - start);
        const single = BUCKET_WORDS_PER_THREAD.find((n) => n * 32 * ROW_THREADS >= span(c.sk));
        // Past the largest instance, 16 words in chunks up to 2^22 − 1 positions.
        const w = single ?? (span(c.sk) < 2 ** 22 ? BUCKET_CHUNKED_WORDS : undefined);
        const fits = pairs > 0 && pairs <= 4 * ROW_THREADS && w !== undefined && 8 * ROW_THREADS * w <= c.smem;
        assert.equal(plan !== undefined, fits && (c.choice === 'auto' || c.choice === 'bucket'));
        if (plan === undefined) return;
        assert.equal(plan.wordsPerThread, w);
        assert.equal(plan.wide, span(c.sk) > BUCKET_PACKED_MAX_SPAN);
        assert.equal(plan.sharedBytes, 8 * ROW_THREADS * plan.wordsPerThread);
        const cap = single !== undefined ? plan.wordsPerThread * 32 * ROW_THREADS : plan.wide ? BUCKET_MAX_SPAN : BUCKET_PACKED_MAX_SPAN;
        assert.ok(plan.maxSeqLen >= c.sk && span(plan.maxSeqLen) <= cap && span(plan.maxSeqLen + 1) > cap);
      },
    ),
    { numRuns: 500, seed: 6 },
  );
  const seed = makeLayout({ batch: 1, heads: 32, kvHeads: 32, headDim: 128 }, { pqGroupFactor: 2, pqBits: 6, sinkSize: 128, windowSize: 128, heavySize: 128, initOffset: 128 });
  const plan = planBucket(seed, 32000, 'auto', 200000);
  assert.deepEqual(plan, { wordsPerThread: 1, wide: false, maxSeqLen: 32 * 1024 + 128 + 128, sharedBytes: 8192 });
  assert.equal(stepBucketKernelName(seed, plan!), 'pq_step_bucket_m2_w1');
  assert.equal(planBucket(seed, 131072, 'auto', 200000)?.wordsPerThread, 4);
  assert.equal(planBucket(seed, 131072, 'auto', 20000), undefined); // the bitmaps do not fit
  // Past 2^18 positions: 16 and 20 words (an H100's 227 KB a block less the kernel's static arrays).
  assert.equal(planBucket(seed, 524288, 'auto', 190000)?.wordsPerThread, 16);
  assert.equal(planBucket(seed, 524288 + 300, 'auto', 190000)?.wordsPerThread, 20);
  // Past the largest instance: 16 words in chunks, packed weights to 2^20 − 1 positions from
  // max(O, S), then the wide instance to 2^22 − 1.
  assert.deepEqual(planBucket(seed, 20 * 32 * 1024 + 256 + 1, 'auto', 190000), { wordsPerThread: 16, wide: false, maxSeqLen: 2 ** 20 - 1 + 256, sharedBytes: 131072 });
  const million = planBucket(seed, 2 ** 20 + 256, 'auto', 190000); // a context of 1,048,832
  assert.deepEqual(million, { wordsPerThread: 16, wide: true, maxSeqLen: 2 ** 22 - 1 + 256, sharedBytes: 131072 });
  assert.equal(stepBucketKernelName(seed, million!), 'pq_step_bucket_m2_w16_wide');
  assert.equal(planBucket(seed, 2 ** 22 + 256, 'auto', 190000), undefined); // past eight chunks: the pair clusters
  assert.equal(planBucket(seed, 524288 + 300, 'auto', 120000), undefined); // an A100's 163 KB: no room for 160 KB
});
