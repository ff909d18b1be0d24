import assert from 'node:assert/strict';
import test from 'node:test';
import { QUALITY_QUICK, orderingProblems, runQuality } from '../src/bench/quality-bench.js';
import { makeLayout } from '../src/pq/config.js';
import { QualityReference } from '../src/pq/quality.js';
import { SyntheticLLM } from '../src/pq/synthetic.js';

test('quick quality grid on the CPU: exact top-K ≥ PQ ≥ random on recall, baselines behave', () => {
  const rows = runQuality(QUALITY_QUICK, 'cpu');
  assert.deepEqual(orderingProblems(rows), []);
  const pq = rows.filter((r) => r.impl === 'pqcache-cpu');
  assert.equal(pq.length, QUALITY_QUICK.pqBits.length * QUALITY_QUICK.groupFactors.length * QUALITY_QUICK.heavySizes.length);
  for (const r of rows.filter((x) => x.impl === 'exact-topk')) assert.equal(r.recall, 1);
  for (const r of rows.filter((x) => x.impl === 'sink-window')) assert.equal(r.recall, 0);
  // More bits and sub-spaces resolve scores better: the finest PQ setting beats the coarsest.
  const best = pq.find((r) => r.pqBits === 6 && r.M === 2 && r.K === 64);
  const worst = pq.find((r) => r.pqBits === 4 && r.M === 1 && r.K === 64);
  assert.ok(best && worst && best.recall > worst.recall, `${best?.recall} vs ${worst?.recall}`);
});

test('synthetic data: bulk logits have the requested spread; planted keys score 4–8 spreads above', () => {
  const shape = { batch: 1, heads: 2, kvHeads: 1, headDim: 64 };
  const sk = 4096;
  const gen = new SyntheticLLM({ shape, seed: 3, plantedCount: 20, plantedRange: [100, 4000], logitStd: 1.5 });
  const keys = gen.block('keys', 0, sk);
  const q = gen.query(0);
  const planted = new Set(gen.plantedPositions(0, 0));
  assert.equal(planted.size, 20);
  const s = Array.from({ length: sk }, (_, p) => {
    let dot = 0;
    for (let j = 0; j < 64; j++) dot += q[j] * keys[p * 64 + j];
    return dot / 8;
  });
  const bulk = s.filter((_, p) => !planted.has(p));
  const mu = bulk.reduce((a, x) => a + x, 0) / bulk.length;
  const sd = Math.sqrt(bulk.reduce((a, x) => a + (x - mu) ** 2, 0) / bulk.length);
  assert.ok(sd > 1.2 && sd < 1.8, `bulk logit std ${sd}`);
  for (const p of planted) assert.ok(s[p] > mu + 2 * sd, `planted ${p}: ${s[p]} vs bulk ${mu} ± ${sd}`);
  // The exact reference ranks (most of) the planted keys first: the bulk has a heavy upper tail.
  const layout = makeLayout(shape, { sinkSize: 16, windowSize: 16, heavySize: 20, initOffset: 16 });
  const ref = new QualityReference({ layout, query: q, keys, values: gen.block('values', 0, sk), seqStride: sk, seqLen: sk });
  const top = new Set(ref.exactTop(0, 20));
  const found = [...planted].filter((p) => top.has(p)).length;
  assert.ok(found >= 15, `${found} of the 20 planted keys in the exact top-20`);
});
