#!/usr/bin/env node
// A few bucket-mode steps at one span, each checked against the CPU oracle: a small target for
// compute-sanitizer (racecheck over the bench or the select tests takes too long at 400,000+
// positions, where the bucket rebuilds dominate).
//   node scripts/bucket-steps.mjs [sk=600000] [steps=3] [equal]   (equal: every score equal, all tied)
import assert from 'node:assert/strict';
import { dist } from './local-dist.mjs';
const { CpuPQCache } = await import(`${dist}/src/pq/cache.js`);
const { CudaPQCache } = await import(`${dist}/src/pq/cuda-cache.js`);
const { makeLayout } = await import(`${dist}/src/pq/config.js`);
const { codeOffset, emptyIndexState } = await import(`${dist}/src/pq/index-state.js`);
const { HostTensor } = await import(`${dist}/src/tensor/host-tensor.js`);

const sk = Number(process.argv[2] ?? 600000);
const steps = Number(process.argv[3] ?? 3);
const equal = process.argv[4] === 'equal';
const shape = { batch: 1, heads: 2, kvHeads: 1, headDim: 64 };
const layout = makeLayout(shape, { kmeansIters: 0, sinkSize: 24, windowSize: 40, heavySize: 300, pqGroupFactor: 2, pqBits: 6, initOffset: 30 });
const st = emptyIndexState(layout, sk + steps);
let r = 99;
const rnd = (lo, hi) => lo + (((r = (Math.imul(r, 1103515245) + 12345) >>> 0) >>> 8) % (hi - lo + 1));
for (let i = 0; i < st.centroids.length; i++) st.centroids[i] = equal ? 0 : rnd(-6, 6);
for (let p = layout.config.initOffset; p < sk; p++) for (let m = 0; m < 2; m++) st.codes[codeOffset(layout, st.capacity, 0, 0, p) + m] = rnd(0, 63);
st.seqLen = sk;
const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
const gpu = new CudaPQCache({ shape, config: layout.config, capacity: st.capacity, stepKernel: 'bucket' });
try {
  gpu.uploadState(st);
  const plan = gpu.planFor(sk + 1).bucket;
  assert.ok(plan !== undefined, 'bucket mode planned');
  for (let s = 0; s < steps; s++) {
    const q = HostTensor.fromNumbers('f32', [1, 2, 1, 64], Array.from({ length: 128 }, () => (equal ? 0 : rnd(-8, 7))));
    const k = HostTensor.fromNumbers('f32', [1, 1, 1, 64], Array.from({ length: 64 }, () => rnd(-8, 7)));
    const want = cpu.stepToHost(q, k);
    const got = gpu.stepToHost(q, k);
    assert.deepEqual(got.sparseList.data, want.sparseList.data, `step ${s} sparseList`);
    assert.deepEqual(got.weights.data, want.weights.data, `step ${s} weights`);
  }
  const chunks = Math.ceil((sk + steps - layout.config.windowSize) / (plan.wordsPerThread * 32 * 1024)); // the span from position 0 (max(O, S) < 32)
  console.log(`bucket-steps: sk ${sk}, ${plan.wordsPerThread} bitmap words a thread${plan.wide ? ', wide weights' : ''} (${chunks} chunk${chunks > 1 ? 's' : ''}), ${steps} steps${equal ? ' (every score equal)' : ''}: exact`);
  console.log(`# pass ${steps}`); // read by scripts/merge-sanitizer.mjs as the run's completion
} finally {
  gpu.dispose();
}
