import assert from 'node:assert/strict';
import test from 'node:test';
import { CudaContext } from '../../src/cuda/context.js';
import { DeviceArena, allocationStats, copies } from '../../src/cuda/memory.js';
import { Stream } from '../../src/cuda/stream.js';
import { CapacityError, ConfigError, DeviceInputError, ShapeError } from '../../src/errors.js';
import { checkSelect } from '../../src/pq/brute-force.js';
import { CpuPQCache, type SelectResult } from '../../src/pq/cache.js';
import { fullAttentionThreshold, makeLayout } from '../../src/pq/config.js';
import { CudaPQCache } from '../../src/pq/cuda-cache.js';
import { BUCKET_CHUNKED_WORDS, BUCKET_WORDS_PER_THREAD, type StepKernelChoice, planBucket, planRow } from '../../src/pq/cuda-plan.js';
import { type PQIndexState, codeOffset, emptyIndexState } from '../../src/pq/index-state.js';
import { CUDA_LIMITS, makeCase, runCase } from '../../src/pq/verify.js';
import { type DeviceTensor, deviceTensor } from '../../src/tensor/device-tensor.js';
import type { FloatDType } from '../../src/tensor/dtype.js';
import { HostTensor } from '../../src/tensor/host-tensor.js';
import { gpuSkip } from './gpu.js';

const skip = gpuSkip();

function cudaFromState(state: PQIndexState, stepKernel: StepKernelChoice = 'auto', cluster?: number, bucketTail?: number): CudaPQCache {
  const c = new CudaPQCache({ shape: state.layout.shape, config: state.layout.config, capacity: state.capacity, stepKernel, cluster, bucketTail });
  c.uploadState(state);
  return c;
}

test('cuda select and append agree with the oracle on random configs (integer: bit-exact; real: near-ties only)', { skip }, () => {
  const n = Number(process.env.PQCACHE_GPU_CASES ?? 150);
  const failures: string[] = [];
  // The planned kernel (mostly the row kernel in clusters of two), bucket mode, the row kernel one
  // block per head, and the pair clusters.
  const kernels: [StepKernelChoice, number | undefined][] = [['auto', undefined], ['bucket', undefined], ['row', 1], ['cluster', undefined]];
  for (let i = 0; i < n; i++) {
    const [stepKernel, cluster] = kernels[i % kernels.length];
    const r = runCase(makeCase(i, 4242, CUDA_LIMITS), (st) => cudaFromState(st, stepKernel, cluster));
    if (r.errors.length > 0) failures.push(`${stepKernel}/${cluster ?? 'planned'}: ${r.description}\n  ${r.errors.slice(0, 3).join('\n  ')}`);
  }
  assert.deepEqual(failures, []);
});

/** Integer-valued index for multi-step tests: exact scores, so CPU and GPU must agree exactly. */
function integerState(seqLen: number, capacity: number, config: object, shape = { batch: 2, heads: 4, kvHeads: 2, headDim: 64 }, seed = 12345): PQIndexState {
  const layout = makeLayout(shape, { kmeansIters: 0, ...config });
  const st = emptyIndexState(layout, capacity);
  let r = seed;
  const rnd = (lo: number, hi: number): number => {
    r = (Math.imul(r, 1103515245) + 12345) >>> 0;
    return lo + ((r >>> 8) % (hi - lo + 1));
  };
  for (let i = 0; i < st.centroids.length; i++) st.centroids[i] = rnd(-6, 6);
  const M = layout.config.pqGroupFactor;
  for (let bh = 0; bh < shape.batch * shape.kvHeads; bh++) {
    for (let p = layout.config.initOffset; p < seqLen; p++) {
      for (let m = 0; m < M; m++) st.codes[codeOffset(layout, capacity, 0, bh, p) + m] = rnd(0, layout.numCentroids - 1);
    }
  }
  st.seqLen = seqLen;
  return st;
}

test('incremental weights stay exact over many steps, across the full-attention threshold and a re-plan', { skip }, () => {
  const config = { sinkSize: 4, windowSize: 8, heavySize: 16, pqGroupFactor: 2, pqBits: 4, initOffset: 6 };
  const thr = fullAttentionThreshold(makeLayout({ batch: 1, heads: 1, kvHeads: 1, headDim: 64 }, config).config, 16);
  const start = thr - 5;
  const steps = 4200; // crosses sk = 4096: the plan (and graph) changes
  const st = integerState(start, start + steps + 1, config);
  const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
  const gpu = cudaFromState(st);
  try {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = st.layout.shape;
    let r = 99;
    const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
    for (let s = 0; s < steps; s++) {
      const q = HostTensor.fromNumbers(s % 3 === 2 ? 'bf16' : 'f32', [B, H, 1, D], Array.from({ length: B * H * D }, rnd));
      const k = HostTensor.fromNumbers('f32', [B, Hkv, 1, D], Array.from({ length: B * Hkv * D }, rnd));
      const check = s < 40 || s % 97 === 0 || s > steps - 5;
      if (!check) {
        cpu.append(k);
        gpu.step(q, k);
        continue;
      }
      const want = cpu.stepToHost(q, k);
      const got = gpu.stepToHost(q, k);
      assert.deepEqual(got.sparseLen.data, want.sparseLen.data, `step ${s} sparseLen`);
      assert.deepEqual(got.sparseList.data, want.sparseList.data, `step ${s} sparseList`);
      assert.deepEqual(got.weights.data, want.weights.data, `step ${s} weights (${q.dtype})`);
    }
    gpu.synchronize();
    assert.deepEqual(gpu.exportState().codes, cpu.exportState().codes);
  } finally {
    gpu.dispose();
  }
});

test('new requests on one index (uploadState, longer and shorter prefills, both dtypes) replay its graphs and stay exact', { skip }, () => {
  const config = { sinkSize: 8, windowSize: 16, heavySize: 32, pqGroupFactor: 2, pqBits: 5, initOffset: 8 };
  const shape = { batch: 2, heads: 4, kvHeads: 2, headDim: 64 };
  const capacity = 6000;
  const gpu = new CudaPQCache({ shape, config: makeLayout(shape, { kmeansIters: 0, ...config }).config, capacity });
  try {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
    let r = 7;
    const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
    // 5000 → 1200 keeps the plan made for the longer prefill; the seeds change every code.
    for (const [req, seqLen] of [5000, 1200, 3000, 1200].entries()) {
      const st = integerState(seqLen, capacity, config, shape, 1000 + req);
      gpu.uploadState(st);
      const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
      for (let s = 0; s < 12; s++) {
        const q = HostTensor.fromNumbers((s + req) % 2 === 0 ? 'f32' : 'bf16', [B, H, 1, D], Array.from({ length: B * H * D }, rnd));
        const k = HostTensor.fromNumbers('f32', [B, Hkv, 1, D], Array.from({ length: B * Hkv * D }, rnd));
        const want = cpu.stepToHost(q, k);
        const got = gpu.stepToHost(q, k);
        const at = `request ${req} step ${s} (${q.dtype})`;
        assert.deepEqual(got.sparseLen.data, want.sparseLen.data, `${at} sparseLen`);
        assert.deepEqual(got.sparseList.data, want.sparseList.data, `${at} sparseList`);
        assert.deepEqual(got.weights.data, want.weights.data, `${at} weights`);
      }
      assert.deepEqual(gpu.exportState().codes, cpu.exportState().codes, `request ${req} codes`);
    }
  } finally {
    gpu.dispose();
  }
});

test('device-tensor inputs give the same result as host inputs; non-finite device queries are reported', { skip }, () => {
  const st = integerState(3000, 3100, { sinkSize: 16, windowSize: 16, heavySize: 64, pqGroupFactor: 4, pqBits: 6, initOffset: 16 });
  const gpu = cudaFromState(st);
  const { batch: B, heads: H, headDim: D } = st.layout.shape;
  const arena = DeviceArena.allocate({ q: B * H * D * 4 });
  try {
    const qv = new Float32Array(B * H * D).map((_, i) => ((i * 7) % 13) - 6);
    const host = gpu.selectToHost(new HostTensor('f32', [B, H, 1, D], qv));
    copies.fromHost(arena.slices.q, qv);
    const out = gpu.select(deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr));
    gpu.synchronize();
    const list = new Int32Array(host.sparseList.size);
    copies.toHost(list, { ptr: out.sparseList.ptr, bytes: list.byteLength });
    assert.deepEqual(list, host.sparseList.data);
    qv[5] = NaN;
    copies.fromHost(arena.slices.q, qv);
    gpu.select(deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr));
    assert.throws(() => gpu.synchronize(), (e: unknown) => e instanceof DeviceInputError && /query: expected finite values/.test((e as Error).message));
    qv[5] = 1;
    const again = gpu.selectToHost(new HostTensor('f32', [B, H, 1, D], qv)); // still usable
    assert.equal(again.sparseLen.size, B * H);
  } finally {
    arena.dispose();
    gpu.dispose();
  }
});

test('creating and disposing caches leaks no device memory', { skip }, () => {
  const ctx = CudaContext.primary();
  ctx.synchronize();
  const stats = allocationStats();
  const free = ctx.memInfo().free;
  for (let i = 0; i < 5; i++) {
    const st = integerState(2000, 2100, { sinkSize: 8, windowSize: 8, heavySize: 32, pqGroupFactor: 2, pqBits: 5, initOffset: 8 });
    const gpu = cudaFromState(st);
    gpu.selectToHost(new HostTensor('f32', [2, 4, 1, 64], new Float32Array(512).fill(1)));
    gpu.dispose();
  }
  assert.deepEqual(allocationStats(), stats);
  assert.ok(ctx.memInfo().free >= free, `free ${ctx.memInfo().free} < ${free}`);
});

test('large K (> 256, the CE = 8 kernel) and long contexts agree with the brute force', { skip }, () => {
  for (const [K, sk, M] of [[2048, 70000, 2], [700, 20000, 8], [256, 140000, 1]] as const) {
    const st = integerState(sk, sk + 2, { sinkSize: 64, windowSize: 64, heavySize: K, pqGroupFactor: M, pqBits: 8, initOffset: 64 }, { batch: 1, heads: 2, kvHeads: 1, headDim: 64 });
    const gpu = cudaFromState(st);
    try {
      const q = new Float32Array(2 * 64).map((_, i) => ((i * 5) % 11) - 5);
      const got = gpu.selectToHost(new HostTensor('f32', [1, 2, 1, 64], q));
      const errors = checkSelect(st, q, { sparseList: got.sparseList.data as Int32Array, sparseLen: got.sparseLen.data as Int32Array, weights: got.weights.data as Float32Array, weightsDType: 'f32' }, 'exact');
      assert.deepEqual(errors, [], `K=${K} sk=${sk} M=${M}`);
    } finally {
      gpu.dispose();
    }
  }
});

test('pair path over many tiles: class bits kept or re-read, heavy ties split across tiles and cluster blocks', { skip }, () => {
  // C = 16 with M = 2: 256 code pairs over 300,000 positions, so the threshold pair has ~1,000 tied
  // positions and the quota of ties spans tiles and blocks. Cluster 1 gives one block 74 tiles (32
  // kept in shared memory, 42 re-read by the write pass); 2 and 8 split them; undefined: the planner.
  for (const cluster of [1, 2, 8, undefined]) {
    const st = integerState(300000, 300002, { sinkSize: 32, windowSize: 32, heavySize: 2048, pqGroupFactor: 2, pqBits: 4, initOffset: 32 }, { batch: 1, heads: 2, kvHeads: 1, headDim: 64 }, 77);
    const gpu = new CudaPQCache({ shape: st.layout.shape, config: st.layout.config, capacity: st.capacity, cluster });
    try {
      gpu.uploadState(st);
      for (const salt of [0, 1, 2]) {
        const q = new Float32Array(2 * 64).map((_, i) => ((i * (5 + salt)) % 11) - 5);
        const got = gpu.selectToHost(new HostTensor('f32', [1, 2, 1, 64], q));
        const errors = checkSelect(st, q, { sparseList: got.sparseList.data as Int32Array, sparseLen: got.sparseLen.data as Int32Array, weights: got.weights.data as Float32Array, weightsDType: 'f32' }, 'exact');
        assert.deepEqual(errors, [], `cluster ${cluster ?? 'planned'} query ${salt}`);
      }
    } finally {
      gpu.dispose();
    }
  }
});

test('tiny code books (C = 2 or 4, M = 1 or 2: pair tables smaller than a 16-byte word) match exactly', { skip }, () => {
  for (const [M, bits] of [[1, 1], [1, 2], [2, 1]] as const) {
    const st = integerState(3000, 3002, { sinkSize: 8, windowSize: 8, heavySize: 40, pqGroupFactor: M, pqBits: bits, initOffset: 8 });
    const gpu = cudaFromState(st);
    try {
      const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = st.layout.shape;
      const q = new Float32Array(B * H * D).map((_, i) => ((i * 3) % 7) - 3);
      const k = new Float32Array(B * Hkv * D).map((_, i) => ((i * 5) % 9) - 4);
      const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
      const want = cpu.stepToHost(new HostTensor('f32', [B, H, 1, D], q), new HostTensor('f32', [B, Hkv, 1, D], k));
      const got = gpu.stepToHost(new HostTensor('f32', [B, H, 1, D], q), new HostTensor('f32', [B, Hkv, 1, D], k));
      assert.deepEqual(got.sparseList.data, want.sparseList.data, `M=${M} bits=${bits}`);
      assert.deepEqual(got.weights.data, want.weights.data, `M=${M} bits=${bits}`);
    } finally {
      gpu.dispose();
    }
  }
});

/** Step a CPU oracle and a GPU index together on integer inputs; every output must match exactly. */
function stepTogether(st: PQIndexState, gpu: CudaPQCache, steps: number, label: string, seed = 5, query?: () => number, eachStep?: (at: string) => void): void {
  const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = st.layout.shape;
  let r = seed;
  const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
  for (let s = 0; s < steps; s++) {
    const q = HostTensor.fromNumbers('f32', [B, H, 1, D], Array.from({ length: B * H * D }, query ?? rnd));
    const k = HostTensor.fromNumbers('f32', [B, Hkv, 1, D], Array.from({ length: B * Hkv * D }, rnd));
    const want = cpu.stepToHost(q, k);
    const got = gpu.stepToHost(q, k);
    const at = `${label} step ${s} (sk ${gpu.seqLen})`;
    assert.deepEqual(got.sparseLen.data, want.sparseLen.data, `${at} sparseLen`);
    assert.deepEqual(got.sparseList.data, want.sparseList.data, `${at} sparseList`);
    assert.deepEqual(got.weights.data, want.weights.data, `${at} weights`);
    eachStep?.(at);
  }
  gpu.synchronize();
  assert.deepEqual(gpu.exportState().codes, cpu.exportState().codes, `${label} codes`);
}

test('row kernel, graph and resident steps: every code-book size of the pair classes (M = 1: C = 2, 16, 256; M = 2: C = 2 … 64), clusters of 1 and 2', { skip }, () => {
  const shape = { batch: 1, heads: 2, kvHeads: 1, headDim: 32 };
  const cases = [[1, 1], [1, 4], [1, 8], [2, 1], [2, 2], [2, 3], [2, 4], [2, 5], [2, 6]] as const;
  for (const [M, bits] of cases) {
    for (const cluster of [1, 2]) {
      for (const resident of [false, true]) {
        const config = { sinkSize: 8, windowSize: 8, heavySize: 40, pqGroupFactor: M, pqBits: bits, initOffset: 8 };
        const st = integerState(2500, 2520, config, shape, 700 + 16 * M + bits);
        const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel: 'row', cluster, resident: resident ? { idleMs: 60000 } : undefined });
        try {
          gpu.uploadState(st);
          stepTogether(st, gpu, 5, `M=${M} bits=${bits} cluster ${cluster}${resident ? ' resident' : ''}`, 40 + bits, undefined, (at) => {
            assert.equal(gpu.residentActive, resident, `${at}: served by the resident kernel`);
          });
        } finally {
          gpu.dispose();
        }
      }
    }
  }
});

test('row kernel: exact across its 16 → 32 → 64 positions-per-thread instances and the hand-over to clusters', { skip }, () => {
  const config = { sinkSize: 24, windowSize: 40, heavySize: 300, pqGroupFactor: 2, pqBits: 6, initOffset: 30 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const layout = makeLayout(shape, { kmeansIters: 0, ...config });
  for (const cluster of [1, 2]) {
    let sk = 1;
    for (const e of [16, 32, 64]) {
      // Start three steps below the instance's limit: the run re-plans (and re-captures) mid-way,
      // the last one onto the pair clusters.
      const plan = planRow(layout, sk, 132, 'row', true, cluster);
      assert.equal(plan?.positionsPerThread, e);
      const start = (plan?.maxSeqLen ?? 0) - 3;
      sk = (plan?.maxSeqLen ?? 0) + 1;
      const st = integerState(start, start + 8, config, shape, 300 + e);
      const gpu = cudaFromState(st, 'row', cluster);
      try {
        stepTogether(st, gpu, 6, `cluster ${cluster} e${e}`);
      } finally {
        gpu.dispose();
      }
    }
  }
});

test('bucket mode: exact across rebuilds, its 1 → 2 → 4 → 8 → 16 → 20 bitmap-words instances, 16 in chunks (packed and wide weights) and the hand-over past them', { skip }, () => {
  const config = { sinkSize: 24, windowSize: 40, heavySize: 300, pqGroupFactor: 2, pqBits: 6, initOffset: 30 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const layout = makeLayout(shape, { kmeansIters: 0, ...config });
  // 16 and 20 words need an sm_90 multiprocessor's shared memory (cuda-plan.ts): every instance must
  // be planned where the device holds it, and the test says which it could not run.
  const holds = (w: number): boolean => w <= 8 || CudaContext.primary().device.maxSharedPerBlockOptin >= 227 * 1024;
  let sk = 1;
  // Each instance in one pass, then 16 words in chunks past the largest (two of 524,288 positions,
  // to 2^20 − 1), then the _wide instance (eight, to 2^22 − 1, BUCKET_MAX_SPAN): the last steps go
  // to the pair clusters.
  const instances = [
    ...BUCKET_WORDS_PER_THREAD.map((n) => [n, false, `w${n}`] as const),
    [BUCKET_CHUNKED_WORDS, false, `w${BUCKET_CHUNKED_WORDS} in chunks`] as const,
    [BUCKET_CHUNKED_WORDS, true, `w${BUCKET_CHUNKED_WORDS} wide in chunks`] as const,
  ];
  for (const [w, wide, label] of instances) {
    // Three steps below the instance's limit: the run re-plans (and re-captures) mid-way, the last
    // one onto the next instance or off bucket mode; a tail of 2 rebuilds the buckets every other step.
    const plan = planBucket(layout, sk, 'bucket', 1 << 20);
    assert.equal(plan?.wordsPerThread, w);
    assert.equal(plan?.wide, wide);
    const start = (plan?.maxSeqLen ?? 0) - 3;
    sk = (plan?.maxSeqLen ?? 0) + 1;
    if (!holds(w)) {
      console.log(`bucket ${label}: not on this device (${CudaContext.primary().device.maxSharedPerBlockOptin} bytes of shared memory a block)`);
      continue;
    }
    const st = integerState(start, start + 8, config, shape, 400 + w);
    const gpu = cudaFromState(st, 'bucket', undefined, 2);
    try {
      assert.equal(gpu.planFor(start + 1).bucket?.wordsPerThread, w);
      assert.equal(gpu.planFor(start + 1).bucket?.wide, wide);
      stepTogether(st, gpu, 6, `bucket ${label}`);
    } finally {
      gpu.dispose();
    }
  }
  assert.equal(planBucket(layout, sk, 'bucket', 1 << 20), undefined, 'past BUCKET_MAX_SPAN: no bucket plan');
  // Every score equal over the largest instance's span: all 4,096 pairs in one bin and every
  // position tied (≈ 655,000 > 2^19: the 20-bit weight and tie fields), the lowest K taken.
  if (holds(20)) {
    const start = (planBucket(layout, 19 * 32 * 1024, 'bucket', 1 << 20)?.maxSeqLen ?? 0) - 2;
    const st = integerState(start, start + 4, config, shape, 420);
    st.centroids.fill(0);
    const gpu = cudaFromState(st, 'bucket', undefined, 2);
    try {
      assert.equal(gpu.planFor(start + 1).bucket?.wordsPerThread, 20);
      stepTogether(st, gpu, 2, 'bucket w20, every score equal', 5, () => 0);
    } finally {
      gpu.dispose();
    }
  }
  if (holds(BUCKET_CHUNKED_WORDS)) {
    // Every score equal over two chunks (1,000,000 positions: ≈ 10^6 ties, near the packed 20-bit
    // weights' limit) and eight (4,000,000, the _wide instance: one bin weighs 4·10^6); the lowest K
    // all in the first chunk, so the others are never gathered.
    let gpu: CudaPQCache;
    for (const [skEqual, wide] of [[1_000_000, false], [4_000_000, true]] as const) {
      const st = integerState(skEqual, skEqual + 4, config, shape, 430);
      st.centroids.fill(0);
      gpu = cudaFromState(st, 'bucket', undefined, 2);
      try {
        assert.equal(gpu.planFor(skEqual + 1).bucket?.wordsPerThread, BUCKET_CHUNKED_WORDS);
        assert.equal(gpu.planFor(skEqual + 1).bucket?.wide, wide);
        stepTogether(st, gpu, 2, `bucket w16${wide ? ' wide' : ''} in chunks, every score equal`, 5, () => 0);
      } finally {
        gpu.dispose();
      }
    }
    // Eight chunks (4,000,000 positions, the _wide instance), the first seven's positions all one
    // code pair (almost never heavy) and the last's random: its takes and ties come after seven
    // chunks of nothing.
    const sk8 = 4_000_000;
    const st8 = integerState(sk8, sk8 + 4, config, shape, 431);
    const { initOffset, pqGroupFactor: M } = layout.config;
    const lastChunk = Math.floor(Math.max(initOffset, layout.config.sinkSize) / 32) * 32 + 7 * BUCKET_CHUNKED_WORDS * 32 * 1024;
    for (let bh = 0; bh < shape.batch * shape.kvHeads; bh++) {
      for (let p = initOffset; p < lastChunk; p++) for (let m = 0; m < M; m++) st8.codes[codeOffset(layout, st8.capacity, 0, bh, p) + m] = 0;
    }
    gpu = cudaFromState(st8, 'bucket', undefined, 2);
    try {
      assert.equal(gpu.planFor(sk8 + 1).bucket?.wide, true);
      stepTogether(st8, gpu, 3, 'bucket w16 wide in chunks, seven chunks one pair', 9);
    } finally {
      gpu.dispose();
    }
  }
  // Many steps on one tail of 1024 (the default): rebuilds inside the run, every step checked.
  const st = integerState(5000, 8200, config, { batch: 2, heads: 8, kvHeads: 2, headDim: 64 }, 77);
  const gpu = cudaFromState(st, 'bucket');
  try {
    assert.ok(gpu.planFor(5001).bucket !== undefined, 'bucket mode planned');
    stepTogether(st, gpu, 3100, 'bucket default tail');
  } finally {
    gpu.dispose();
  }
});

test('bucket mode: a chunked append longer than the block merged into buckets of several move chunks', { skip }, () => {
  // 20,000 eligible positions (three of pq_bucket_merge's 8,192-entry chunks) and 3,000 appended
  // keys (three passes of the block over the tail); rebuildBuckets() merges them, then steps merge
  // their own tails of 2. Every step against the oracle (given the same append), which never buckets.
  const config = { sinkSize: 16, windowSize: 24, heavySize: 200, pqGroupFactor: 2, pqBits: 5, initOffset: 16 };
  const shape = { batch: 2, heads: 4, kvHeads: 2, headDim: 64 };
  const st = integerState(20000, 23100, config, shape, 91);
  const gpu = cudaFromState(st, 'bucket', undefined, 2);
  try {
    let r = 17;
    const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
    const n = 3000;
    const keys = HostTensor.fromNumbers('f32', [shape.batch, shape.kvHeads, n, shape.headDim], Array.from({ length: shape.batch * shape.kvHeads * n * shape.headDim }, rnd));
    const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
    cpu.append(keys);
    gpu.append(keys);
    gpu.rebuildBuckets();
    assert.ok(gpu.planFor(gpu.seqLen + 1).bucket !== undefined, 'bucket mode planned');
    stepTogether(cpu.exportState(), gpu, 5, 'after a chunked append', r);
  } finally {
    gpu.dispose();
  }
});

test('row kernel: more query heads than SMs, GQA, ip, K = 2048 with split ties, M = 1 with C = 256', { skip }, () => {
  const cases: [object, { batch: number; heads: number; kvHeads: number; headDim: number }, number][] = [
    [{ sinkSize: 8, windowSize: 8, heavySize: 64, pqGroupFactor: 2, pqBits: 5, initOffset: 8 }, { batch: 8, heads: 32, kvHeads: 8, headDim: 64 }, 3000],
    [{ sinkSize: 16, windowSize: 16, heavySize: 2048, pqGroupFactor: 2, pqBits: 2, initOffset: 16, metric: 'ip' }, { batch: 2, heads: 4, kvHeads: 1, headDim: 64 }, 20000],
    [{ sinkSize: 4, windowSize: 4, heavySize: 500, pqGroupFactor: 1, pqBits: 8, initOffset: 0 }, { batch: 1, heads: 2, kvHeads: 2, headDim: 128 }, 30000],
  ];
  for (const [i, [config, shape, sk]] of cases.entries()) {
    for (const [stepKernel, cluster] of [['row', 1], ['row', 2], ['bucket', undefined]] as const) {
      const st = integerState(sk, sk + 4, config, shape, 50 + i);
      for (let p = 0; p < st.phi.length; p++) st.phi[p] = 200 + p;
      const gpu = cudaFromState(st, stepKernel, cluster, 2);
      try {
        stepTogether(st, gpu, 3, `case ${i} ${stepKernel} ${cluster ?? ''}`);
      } finally {
        gpu.dispose();
      }
    }
  }
});

test('row and cluster kernels: a boundary bin of thousands of pairs (radix refinement) and all-equal scores', { skip }, () => {
  const config = { sinkSize: 8, windowSize: 8, heavySize: 200, pqGroupFactor: 2, pqBits: 6, initOffset: 8 };
  const shape = { batch: 1, heads: 2, kvHeads: 1, headDim: 64 };
  for (const [stepKernel, cluster] of [['row', 1], ['row', 2], ['bucket', undefined], ['cluster', undefined]] as const) {
    // One centroid of sub-space 0 far out: the linear bins span ±5e6, so the 4032 ordinary pairs
    // (integer scores in a few dozen values) share one bin and the exact keys are refined by radix.
    const st = integerState(12000, 12004, config, shape, 9);
    const C = st.layout.numCentroids;
    for (let j = 0; j < 32; j++) st.centroids[5 * 32 + j] = 10000;
    const gpu = cudaFromState(st, stepKernel, cluster);
    try {
      stepTogether(st, gpu, 2, `${stepKernel} ${cluster} outlier`);
      stepTogether({ ...gpu.exportState() }, gpu, 2, `${stepKernel} ${cluster} zero query`, 7, () => 0); // every score 0: ties by position
    } finally {
      gpu.dispose();
    }
    assert.equal(C, 64);
  }
});

test('phase timing: the step kernels\' timing builds stamp every select block\'s phases in order, results still exact', { skip }, () => {
  const config = { sinkSize: 24, windowSize: 40, heavySize: 300, pqGroupFactor: 2, pqBits: 6, initOffset: 30 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  for (const stepKernel of ['row', 'cluster'] as const) {
    const st = integerState(5000, 5010, config, shape, 77);
    const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel, phaseTiming: true });
    try {
      gpu.uploadState(st);
      stepTogether(st, gpu, 3, `${stepKernel} with phase timing`);
      const { grid, cycles } = gpu.phaseClocks();
      for (let b = 0; b < grid[0] * shape.batch * shape.heads; b++) {
        const at = (k: number): bigint => cycles[b * 16 + k];
        assert.ok(at(14) > 0n && at(15) >= at(14), `${stepKernel} block ${b}: start and end on the global timer`);
        assert.ok(at(0) > 0n && at(1) >= at(0) && at(8) >= at(1), `${stepKernel} block ${b}: start, LUT and end stamped in order`);
      }
    } finally {
      gpu.dispose();
    }
  }
});

test('resident steps: exact over many steps (appends, GQA, clusters of 1 and 2, a re-plan, select without append, a dtype change), then back to graphs', { skip }, () => {
  const config = { sinkSize: 24, windowSize: 40, heavySize: 300, pqGroupFactor: 2, pqBits: 6, initOffset: 30 };
  for (const [cluster, shape] of [[1, { batch: 2, heads: 8, kvHeads: 2, headDim: 64 }], [2, { batch: 1, heads: 4, kvHeads: 4, headDim: 64 }]] as const) {
    const layout = makeLayout(shape, { kmeansIters: 0, ...config });
    // Start 150 steps below the 16-positions instance's limit: the run re-plans onto the next one.
    const start = (planRow(layout, 1, 132, 'row', true, cluster)?.maxSeqLen ?? 0) - 150;
    const st = integerState(start, start + 700, config, shape, 600 + cluster);
    const before = allocationStats();
    const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel: 'row', cluster, resident: { idleMs: 60000 } });
    try {
      gpu.uploadState(st);
      const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
      const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
      let r = 31 + cluster;
      const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
      for (let s = 0; s < 400; s++) {
        const q = HostTensor.fromNumbers(s >= 300 && s < 310 ? 'bf16' : 'f32', [B, H, 1, D], Array.from({ length: B * H * D }, rnd));
        const k = HostTensor.fromNumbers('f32', [B, Hkv, 1, D], Array.from({ length: B * Hkv * D }, rnd));
        const appending = s % 7 !== 3; // some steps select only
        const want = appending ? cpu.stepToHost(q, k) : cpu.selectToHost(q);
        const got = appending ? gpu.stepToHost(q, k) : gpu.selectToHost(q);
        assert.ok(gpu.residentActive, `step ${s}: served by the resident kernel`);
        const at = `cluster ${cluster} step ${s} (sk ${gpu.seqLen})`;
        assert.deepEqual(got.sparseLen.data, want.sparseLen.data, `${at} sparseLen`);
        assert.deepEqual(got.sparseList.data, want.sparseList.data, `${at} sparseList`);
        assert.deepEqual(got.weights.data, want.weights.data, `${at} weights`);
        assert.ok(gpu.residentDeviceMicros > 0 && gpu.residentDeviceMicros < 5e6, `${at} device time ${gpu.residentDeviceMicros}`); // sanitizers: 1000× slower
      }
      assert.notEqual(gpu.planFor(gpu.seqLen).row?.positionsPerThread, 16, 're-planned past the first instance');
      // Other work on the index stops the kernel; resident steps resume exactly after it.
      const k1 = HostTensor.fromNumbers('f32', [B, Hkv, 1, D], Array.from({ length: B * Hkv * D }, rnd));
      gpu.append(k1);
      cpu.append(k1);
      assert.equal(gpu.residentActive, false);
      stepTogether(gpu.exportState(), gpu, 20, `cluster ${cluster} after append`);
      gpu.stopResident();
      assert.equal(gpu.residentActive, false);
    } finally {
      gpu.dispose();
    }
    assert.deepEqual(allocationStats(), before, 'no leak');
  }
});

test('resident steps report non-finite device queries and keys on the step that had them (the flag never trails done)', { skip }, () => {
  const config = { sinkSize: 24, windowSize: 40, heavySize: 300, pqGroupFactor: 2, pqBits: 6, initOffset: 30 };
  const shape = { batch: 1, heads: 4, kvHeads: 4, headDim: 64 };
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
  const st = integerState(5000, 5400, config, shape, 77);
  const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel: 'row', cluster: 2, resident: { idleMs: 60000 } });
  const { arena, q, k } = stepInputs(shape);
  try {
    gpu.uploadState(st);
    const qv = new Float32Array(B * H * D).map((_, i) => ((i * 7) % 13) - 6);
    const kv = new Float32Array(B * Hkv * D).map((_, i) => ((i * 5) % 11) - 5);
    for (let s = 0; s < 90; s++) {
      const bad = s % 3; // 0: none, 1: a query element, 2: a key element (each step at another place)
      const q2 = qv.slice();
      const k2 = kv.slice();
      if (bad === 1) q2[(s * 37) % q2.length] = s % 2 === 0 ? Number.NaN : Number.POSITIVE_INFINITY;
      if (bad === 2) k2[(s * 53) % k2.length] = Number.NaN;
      copies.fromHost(arena.slices.q, q2); // synchronous, on no stream the resident kernel waits for
      copies.fromHost(arena.slices.k, k2);
      const step = (): void => {
        gpu.step(q, k);
        gpu.synchronize();
      };
      if (bad === 0) step();
      else assert.throws(step, (e: unknown) => e instanceof DeviceInputError && (bad === 1 ? /^query/ : /^key/).test((e as Error).message), `step ${s}`);
      assert.ok(gpu.residentActive, `step ${s}: served by the resident kernel`);
    }
  } finally {
    arena.dispose();
    gpu.dispose();
  }
});

/**
 * One step (or select, without a key) on device inputs: fresh integer inputs written to the arena's
 * q and k, the result checked against the oracle (lists, lengths and every weight).
 */
/** A device query and key of one step for `shape`, in one arena (dispose it). */
function stepInputs(shape: { batch: number; heads: number; kvHeads: number; headDim: number }): { arena: DeviceArena<'q' | 'k'>; q: DeviceTensor; k: DeviceTensor } {
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
  const arena = DeviceArena.allocate({ q: B * H * D * 4, k: B * Hkv * D * 4 });
  return { arena, q: deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr), k: deviceTensor('f32', [B, Hkv, 1, D], arena.slices.k.ptr) };
}

function deviceStepChecker(gpu: CudaPQCache, st: PQIndexState): (s: number, query: DeviceTensor, key: DeviceTensor | undefined) => void {
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = st.layout.shape;
  const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
  let r = 17;
  const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
  const L = st.layout.listCapacity;
  return (s, query, key) => {
    const qv = new Float32Array(B * H * D).map(rnd);
    const kv = new Float32Array(B * Hkv * D).map(rnd);
    // Into the tensors' own memory (they may sit outside `arena`).
    copies.fromHost({ ptr: query.ptr, bytes: qv.byteLength }, qv);
    if (key !== undefined) copies.fromHost({ ptr: key.ptr, bytes: kv.byteLength }, kv);
    const hq = new HostTensor('f32', [B, H, 1, D], qv);
    const want = key === undefined ? cpu.selectToHost(hq) : cpu.stepToHost(hq, new HostTensor('f32', [B, Hkv, 1, D], kv));
    const got = key === undefined ? gpu.select(query) : gpu.step(query, key);
    assertStepEquals(gpu, got, want, `step ${s}`);
    assert.equal(L, gpu.listsToHost().sparseList.length / (B * H));
  };
}

/** The GPU cache's last step (lists, and every weights row of `got`, f32) equals the oracle's `want`, bit for bit. */
function assertStepEquals(gpu: CudaPQCache, got: SelectResult<DeviceTensor>, want: SelectResult<HostTensor>, label: string): void {
  const lists = gpu.listsToHost();
  assert.deepEqual(lists.sparseLen, want.sparseLen.data, `${label} sparseLen`);
  assert.deepEqual(lists.sparseList, want.sparseList.data, `${label} sparseList`);
  const sk = gpu.seqLen;
  assert.equal(got.weights.shape[2], sk, `${label}: the weights view has this step's sk`);
  const [B, H] = got.weights.shape;
  const row = new Float32Array(sk);
  for (let i = 0; i < (B as number) * (H as number); i++) {
    copies.toHost(row, { ptr: got.weights.ptr + BigInt(i * (got.weights.strides[1] as number) * 4), bytes: sk * 4 });
    assert.deepEqual(row, (want.weights.data as Float32Array).subarray(i * sk, (i + 1) * sk), `${label} weights row ${i}`);
  }
}

test('graph steps check a frozen device tensor once and an unfrozen one on every call (shape and row strides); exact either way', { skip }, () => {
  const config = { sinkSize: 16, windowSize: 24, heavySize: 200, pqGroupFactor: 2, pqBits: 6, initOffset: 16 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
  const st = integerState(6000, 6100, config, shape, 93);
  const gpu = cudaFromState(st, 'row', 2);
  const { arena, q, k } = stepInputs(shape);
  try {
    const check = deviceStepChecker(gpu, st);
    for (let s = 0; s < 6; s++) check(s, q, k);
    check(6, q, undefined);
    // A query known to this cache is no key: its shape [B, H, 1, D] is checked against the key's.
    assert.throws(() => gpu.step(q, deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr)), (e: unknown) => e instanceof ShapeError && /^key/.test((e as Error).message));
    assert.throws(() => gpu.step(k, k), (e: unknown) => e instanceof ShapeError && /^query/.test((e as Error).message));
    // Tensors that are not frozen can change between calls: checked every time.
    const loose = { ...q, shape: [B, H, 1, D] };
    const looseKey = { ...k, shape: [B, Hkv, 1, D] };
    check(7, loose, looseKey);
    loose.shape[2] = 2;
    assert.throws(() => gpu.step(loose, k), (e: unknown) => e instanceof ShapeError && /^query/.test((e as Error).message));
    looseKey.shape[1] = H;
    assert.throws(() => gpu.step(q, looseKey), (e: unknown) => e instanceof ShapeError && /^key/.test((e as Error).message));
    // Rows neither contiguous nor a K cache's (positions overlapping): refused by name.
    const overlapping = deviceTensor('f32', [B, Hkv, 1, D], arena.slices.k.ptr, [Hkv * 8 * D, 8 * D, D - 1, 1]);
    assert.throws(() => gpu.step(q, overlapping), (e: unknown) => e instanceof ShapeError && /^key\.strides/.test((e as Error).message));
    // A query's rows may be strided, but each row contiguous and every element below 2^31.
    for (const strides of [[H * D, D, D, 2], [H * D, 2 ** 30, D, 1]]) {
      const badQuery = deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr, strides);
      assert.throws(() => gpu.step(badQuery, k), (e: unknown) => e instanceof ShapeError && /^query\.strides/.test((e as Error).message));
    }
    // The refused calls left nothing behind.
    for (let s = 8; s < 12; s++) check(s, q, k);
  } finally {
    arena.dispose();
    gpu.dispose();
  }
});

test('a step reads its key from a K cache ([B, Hkv, cap, D] or [B, cap, Hkv, D]; f32, bf16, f16) at each step\'s position, or its query and key from a fused QKV buffer at a fixed address (strided rows): exact, one capture (or resident launch) for every step\'s slice, on every path', { skip }, () => {
  const shape = { batch: 2, heads: 4, kvHeads: 2, headDim: 64 };
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
  const base = { sinkSize: 16, windowSize: 24, heavySize: 200, pqGroupFactor: 2, pqBits: 6, initOffset: 16 };
  const start = 6000;
  const cap = 6200;
  const steps = 16;
  // QKV: the query and key parts of a fused projection output [B, 1, H + 2·Hkv, D], the same address
  // every step (B = 2: neither has contiguous rows).
  type Variant = { name: string; config?: object; options: object; layout: 'HND' | 'NHD' | 'QKV'; dtype: FloatDType };
  const variants: Variant[] = [
    { name: 'row, clusters of two', options: { stepKernel: 'row', cluster: 2 }, layout: 'HND', dtype: 'f32' },
    { name: 'bucket mode', options: { stepKernel: 'bucket', bucketTail: 64 }, layout: 'NHD', dtype: 'bf16' },
    { name: 'pair clusters', options: { stepKernel: 'cluster' }, layout: 'HND', dtype: 'f16' },
    { name: 'general path (M = 4: pq_append, then select)', config: { pqGroupFactor: 4, pqBits: 5 }, options: {}, layout: 'NHD', dtype: 'f32' },
    { name: 'no window (pq_append, then the row kernel)', config: { windowSize: 0 }, options: { stepKernel: 'row' }, layout: 'HND', dtype: 'bf16' },
    { name: 'resident', options: { stepKernel: 'row', cluster: 2, resident: true }, layout: 'NHD', dtype: 'f16' },
    { name: 'chained', options: { stepKernel: 'row', cluster: 2, chained: { length: 4 } }, layout: 'HND', dtype: 'f32' },
    { name: 'fused QKV buffer, graph steps', options: { stepKernel: 'row', cluster: 2 }, layout: 'QKV', dtype: 'bf16' },
    { name: 'fused QKV buffer, resident', options: { stepKernel: 'row', cluster: 2, resident: true }, layout: 'QKV', dtype: 'f32' },
    { name: 'fused QKV buffer, chained', options: { stepKernel: 'row', cluster: 2, chained: { length: 4 } }, layout: 'QKV', dtype: 'f16' },
    { name: 'fused QKV buffer, bucket mode', options: { stepKernel: 'bucket', bucketTail: 64 }, layout: 'QKV', dtype: 'f32' },
    { name: 'fused QKV buffer, pair clusters', options: { stepKernel: 'cluster' }, layout: 'QKV', dtype: 'bf16' },
    { name: 'fused QKV buffer, general path (M = 4)', config: { pqGroupFactor: 4, pqBits: 5 }, options: {}, layout: 'QKV', dtype: 'f16' },
  ];
  const Htot = H + 2 * Hkv;
  let seed = 300;
  // compute-sanitizer's initcheck waits for each graph launch to complete, which a chain's never does alone.
  for (const v of variants.filter((x) => process.env.PQCACHE_NO_CHAINED !== '1' || !('chained' in x.options))) {
    const st = integerState(start, cap, { ...base, ...v.config }, shape, seed++);
    const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: cap, ...v.options });
    gpu.uploadState(st);
    const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
    const eb = v.dtype === 'f32' ? 4 : 2;
    // The K cache, NaN wherever no step wrote its key (a misread row makes the step throw DeviceInputError).
    const kcache = DeviceArena.allocate({ k: B * Hkv * cap * D * eb, q: B * H * D * 4 });
    const strides = v.layout === 'HND' ? [Hkv * cap * D, cap * D, D, 1] : v.layout === 'NHD' ? [cap * Hkv * D, D, Hkv * D, 1] : [Htot * D, D, Htot * D, 1];
    // Element of the step's key row (b, h) at position p: the buffer's key part does not move.
    const moves = v.layout !== 'QKV';
    const element = (b: number, h: number, p: number): number => (moves ? p * strides[2] : H * D) + b * strides[0] + h * strides[1];
    // The query: its own contiguous buffer, or the fused buffer's query part (row (b, h) at (b·Htot + h)·D).
    const fusedQuery = v.layout === 'QKV';
    const qdtype = fusedQuery ? v.dtype : 'f32';
    const q = fusedQuery ? deviceTensor(v.dtype, [B, H, 1, D], kcache.slices.k.ptr, [Htot * D, D, D, 1]) : deviceTensor('f32', [B, H, 1, D], kcache.slices.q.ptr);
    let r = seed * 7919;
    const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
    try {
      copies.fromHost(kcache.slices.k, new Uint32Array(kcache.slices.k.bytes / 4).fill(0xffffffff));
      let captures = 0;
      let launches = 0;
      for (let s = 0; s < steps; s++) {
        const p = gpu.seqLen;
        const qv = new Float32Array(B * H * D).map(rnd);
        const kv = new Float32Array(B * Hkv * D).map(rnd);
        if (fusedQuery) {
          const qbits = HostTensor.fromNumbers(qdtype, [B, H, 1, D], Array.from(qv)).data;
          for (let i = 0; i < B * H; i++) {
            const at = Math.floor(i / H) * Htot * D + (i % H) * D;
            copies.fromHost({ ptr: q.ptr + BigInt(at * eb), bytes: D * eb }, qbits.subarray(i * D, (i + 1) * D));
          }
        } else {
          copies.fromHost({ ptr: q.ptr, bytes: qv.byteLength }, qv);
        }
        const bits = HostTensor.fromNumbers(v.dtype, [B, Hkv, 1, D], Array.from(kv)).data;
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < Hkv; h++) {
            const at = element(b, h, p);
            const row = bits.subarray((b * Hkv + h) * D, (b * Hkv + h + 1) * D);
            copies.fromHost({ ptr: kcache.slices.k.ptr + BigInt(at * eb), bytes: D * eb }, row);
          }
        }
        const slice = deviceTensor(v.dtype, [B, Hkv, 1, D], kcache.slices.k.ptr + BigInt(element(0, 0, p) * eb), strides);
        const want = cpu.stepToHost(new HostTensor('f32', [B, H, 1, D], qv), new HostTensor('f32', [B, Hkv, 1, D], kv));
        const got = gpu.step(q, slice);
        const lists = gpu.listsToHost();
        assert.deepEqual(lists.sparseLen, want.sparseLen.data, `${v.name}, step ${s}: sparseLen`);
        assert.deepEqual(lists.sparseList, want.sparseList.data, `${v.name}, step ${s}: sparseList`);
        // Weights in the query's dtype.
        const sk = gpu.seqLen;
        const row = new HostTensor(qdtype, [sk]);
        const wb = qdtype === 'f32' ? 4 : 2;
        for (let i = 0; i < B * H; i++) {
          copies.toHost(row.data, { ptr: got.weights.ptr + BigInt(i * got.weights.strides[1] * wb), bytes: sk * wb });
          assert.deepEqual(row.toFloat32(), (want.weights.data as Float32Array).subarray(i * sk, (i + 1) * sk), `${v.name}, step ${s}: weights row ${i}`);
        }
        // Graphs are captured per seq slot (steps alternate them), and two chains alternate; a fixed
        // buffer is first taken as a slice (the second step finds it in place): by step 8 all are.
        if (s === 7) {
          captures = gpu.stepCaptureCount;
          launches = gpu.residentLaunchCount;
          assert.ok(captures <= (moves ? 2 : 4), `${v.name}: ${captures} captures in 8 steps`);
        }
      }
      // The appended codes are the oracle's (listsToHost compared the lists; the codes decide later steps too).
      const codes = gpu.exportState().codes;
      assert.deepEqual(codes, cpu.exportState().codes, `${v.name}: codes`);
      assert.equal(gpu.stepCaptureCount, captures, `${v.name}: captured again for a later step's slice`);
      assert.equal(gpu.residentLaunchCount, launches, `${v.name}: resident launch started again for a later step's slice`);
      if ('resident' in v.options) assert.ok(launches === (moves ? 1 : 2), `${v.name}: ${launches} resident launches`);
      if ('chained' in v.options) assert.equal(gpu.chainedStepCount, steps);
    } finally {
      kcache.dispose();
      gpu.dispose();
    }
  }
});

test('chained steps: exact over several launches of the chain; a select, an allocation, new input tensors and dispose while a launch waits drain it (its skipped steps write nothing)', { skip }, () => {
  const config = { sinkSize: 16, windowSize: 24, heavySize: 200, pqGroupFactor: 2, pqBits: 6, initOffset: 16 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const st = integerState(6000, 6400, config, shape, 94);
  const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel: 'row', cluster: 2, chained: { length: 8 } });
  gpu.uploadState(st);
  const { arena, q, k } = stepInputs(shape);
  const other = stepInputs(shape); // a second pair at other addresses
  let extra: DeviceArena<'x'> | undefined;
  try {
    const check = deviceStepChecker(gpu, st);
    let s = 0;
    // 19 steps: two whole launches of 8 and 3 steps of a third, which then waits for its 4th.
    for (; s < 19; s++) check(s, q, k);
    assert.equal(gpu.chainedStepCount, 19);
    check(s++, q, undefined); // a select (graph step): drains the waiting launch first
    assert.equal(gpu.chainedStepCount, 19);
    // From the other seq slot now (19 steps): captured again, and exact.
    for (let i = 0; i < 5; i++) check(s++, q, k);
    // Another allocation may synchronize the device: it drains the waiting launch first (no hang).
    extra = DeviceArena.allocate({ x: 1 << 20 });
    for (let i = 0; i < 3; i++) check(s++, q, k);
    // Other input tensors: drained, captured for their addresses.
    const { q: q2, k: k2 } = other;
    for (let i = 0; i < 9; i++) check(s++, q2, k2);
    assert.equal(gpu.chainedStepCount, 19 + 5 + 3 + 9);
    check(s++, q, k);
  } finally {
    extra?.dispose();
    other.arena.dispose();
    arena.dispose();
    gpu.dispose(); // a launch still waits here: drained, not hung
  }
  assert.throws(() => new CudaPQCache({ shape, config, capacity: 100, chained: { length: 7 } }), ConfigError);
  assert.throws(() => new CudaPQCache({ shape, config, capacity: 100, chained: true, resident: true }), ConfigError);
});

test('chained steps: ringChainedBurst rings a whole chain at once, exact; false where no chain waits at its end or two chains do not fit', { skip }, () => {
  const config = { sinkSize: 16, windowSize: 24, heavySize: 200, pqGroupFactor: 2, pqBits: 6, initOffset: 16 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
  const length = 8;
  const st = integerState(6000, 6000 + 5 * length, config, shape, 96);
  const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel: 'row', cluster: 2, chained: { length } });
  gpu.uploadState(st);
  const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
  const { arena, q, k } = stepInputs(shape);
  let r = 23;
  const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
  // Fresh integer inputs into q and k; the oracle's twins.
  const inputs = (): [HostTensor, HostTensor] => {
    const qv = new Float32Array(B * H * D).map(rnd);
    const kv = new Float32Array(B * Hkv * D).map(rnd);
    copies.fromHost({ ptr: q.ptr, bytes: qv.byteLength }, qv);
    copies.fromHost({ ptr: k.ptr, bytes: kv.byteLength }, kv);
    return [new HostTensor('f32', [B, H, 1, D], qv), new HostTensor('f32', [B, Hkv, 1, D], kv)];
  };
  try {
    assert.equal(gpu.ringChainedBurst(), false, 'no chain yet');
    // One chain's steps through step(): its last leaves it at its end.
    for (let s = 0; s < length; s++) {
      const [hq, hk] = inputs();
      assertStepEquals(gpu, gpu.step(q, k), cpu.stepToHost(hq, hk), `step ${s}`);
      if (s === 0) assert.equal(gpu.ringChainedBurst(), false, 'a chain not at its end');
    }
    // Two bursts: each runs a chain's steps on the inputs as they stand (the same query and key each step).
    for (let burst = 0; burst < 2; burst++) {
      const [hq, hk] = inputs();
      assert.equal(gpu.ringChainedBurst(), true, `burst ${burst}`);
      let want = cpu.stepToHost(hq, hk);
      for (let s = 1; s < length; s++) want = cpu.stepToHost(hq, hk);
      assert.equal(gpu.seqLen, st.seqLen + (2 + burst) * length);
      assertStepEquals(gpu, gpu.outputs(), want, `burst ${burst}`);
    }
    assert.equal(gpu.chainedStepCount, 3 * length);
    // 2 chains' steps left in the capacity: a burst fits once more, then not (the graph path takes the rest).
    const [hq3, hk3] = inputs();
    assert.equal(gpu.ringChainedBurst(), true);
    let want3 = cpu.stepToHost(hq3, hk3);
    for (let s = 1; s < length; s++) want3 = cpu.stepToHost(hq3, hk3);
    assertStepEquals(gpu, gpu.outputs(), want3, 'burst 2');
    assert.equal(gpu.ringChainedBurst(), false, 'one chain left in the capacity');
    const [hq, hk] = inputs();
    assertStepEquals(gpu, gpu.step(q, k), cpu.stepToHost(hq, hk), 'a graph step after the bursts');
  } finally {
    arena.dispose();
    gpu.dispose();
  }
});

test('chained steps: near the end of the capacity the chains stop (a chain starts only when two fit) and graph steps take the last ones, exact to the last position', { skip }, () => {
  const config = { sinkSize: 16, windowSize: 24, heavySize: 200, pqGroupFactor: 2, pqBits: 6, initOffset: 16 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const steps = 37;
  const st = integerState(6000, 6000 + steps, config, shape, 95); // capacity: exactly `steps` appends
  const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel: 'row', cluster: 2, chained: { length: 8 } });
  gpu.uploadState(st);
  const { arena, q, k } = stepInputs(shape);
  try {
    const check = deviceStepChecker(gpu, st);
    const served: number[] = [];
    for (let s = 0; s < steps; s++) {
      const before = gpu.chainedStepCount;
      check(s, q, k);
      served.push(gpu.chainedStepCount - before);
    }
    // Chains start at 0, 8, 16 (16 more steps fit from each) and not at 24 (13 left): steps 24 … 36 are graph steps.
    assert.deepEqual(served, Array.from({ length: steps }, (_, s) => (s < 24 ? 1 : 0)));
    assert.equal(gpu.seqLen, st.capacity);
    assert.throws(() => gpu.step(q, k), CapacityError);
  } finally {
    arena.dispose();
    gpu.dispose();
  }
});

test('chained steps in bucket mode: chains between the bucket rebuilds (graph steps make them), exact', { skip }, () => {
  const config = { sinkSize: 24, windowSize: 40, heavySize: 300, pqGroupFactor: 2, pqBits: 6, initOffset: 30 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const st = integerState(5000, 5200, config, shape, 96);
  // A tail of 40 positions and chains of 4: a chain starts while 8 more steps need no rebuild.
  const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel: 'bucket', bucketTail: 40, chained: { length: 4 } });
  gpu.uploadState(st);
  const { arena, q, k } = stepInputs(shape);
  try {
    assert.ok(gpu.planFor(5001).bucket !== undefined, 'bucket mode planned');
    const check = deviceStepChecker(gpu, st);
    for (let s = 0; s < 150; s++) check(s, q, k);
    // Rebuilds every ≈ 40 steps; at most 8 + 3 steps around each fall to graph steps.
    assert.ok(gpu.chainedStepCount >= 100, `chained ${gpu.chainedStepCount} of 150`);
    assert.ok(gpu.chainedStepCount < 150, 'the rebuilds ran as graph steps');
  } finally {
    arena.dispose();
    gpu.dispose();
  }
});

test('resident steps with the same device tensors (served without validating them again): exact, and every other case takes the full path', { skip }, () => {
  const config = { sinkSize: 16, windowSize: 24, heavySize: 200, pqGroupFactor: 2, pqBits: 6, initOffset: 16 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
  const steps = 60;
  const st = integerState(6000, 6000 + steps, config, shape, 91); // capacity: exactly `steps` appends
  const gpu = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stepKernel: 'row', cluster: 2, resident: { idleMs: 60000 } });
  const { arena, q, k } = stepInputs(shape);
  // Counts the full path's validations (white box: the private method the repeat path skips).
  const inner = gpu as unknown as { enqueue: (...args: unknown[]) => unknown };
  const enqueue = inner.enqueue;
  let validated = 0;
  inner.enqueue = function (this: unknown, ...args: unknown[]): unknown {
    validated++;
    return enqueue.apply(this, args);
  };
  try {
    gpu.uploadState(st);
    const stepChecked = deviceStepChecker(gpu, st);
    const check = (s: number, query: typeof q, key: typeof k | undefined): void => {
      stepChecked(s, query, key);
      assert.ok(gpu.residentActive, `step ${s}: served by the resident kernel`);
    };
    check(0, q, k);
    assert.equal(validated, 1, 'the first step validates');
    for (let s = 1; s < 30; s++) check(s, q, k);
    assert.equal(validated, 1, 'the same tensors: no validation');
    // A new tensor object over the same memory, a select without a key, a tensor that is not frozen:
    // validated each time they are new (the unfrozen one always).
    const q2 = deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr);
    check(30, q2, k);
    check(31, q2, k);
    assert.equal(validated, 2);
    check(32, q2, undefined);
    check(33, q2, undefined);
    assert.equal(validated, 3);
    const loose = { ...q2 };
    check(34, loose, k);
    check(35, loose, k);
    assert.equal(validated, 5);
    // Stopped (as other work on the index does): the next step starts the kernel again.
    check(36, q, k);
    gpu.stopResident();
    check(37, q, k);
    check(38, q, k);
    assert.equal(validated, 7);
    for (let s = 39; gpu.seqLen < st.capacity; s++) check(s, q, k);
    // At the capacity the full path reports it, as without the repeat.
    const before = validated;
    assert.throws(() => gpu.step(q, k), (e: unknown) => e instanceof CapacityError);
    assert.equal(validated, before + 1);
  } finally {
    arena.dispose();
    gpu.dispose();
  }
});

test('resident steps: idle stop, and the graph path where the row kernel does not run', { skip }, async () => {
  const config = { sinkSize: 8, windowSize: 8, heavySize: 64, pqGroupFactor: 2, pqBits: 5, initOffset: 8 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const st = integerState(3000, 3100, config, shape, 71);
  const idle = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, resident: { idleMs: 20 } });
  try {
    idle.uploadState(st);
    stepTogether(st, idle, 3, 'idle');
    // stepTogether's exportState stopped it; one more step starts it again.
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
    idle.step(HostTensor.fromNumbers('f32', [B, H, 1, D], new Array(B * H * D).fill(1)), HostTensor.fromNumbers('f32', [B, Hkv, 1, D], new Array(B * Hkv * D).fill(1)));
    assert.equal(idle.residentActive, true);
    await new Promise((done) => setTimeout(done, 100));
    assert.equal(idle.residentActive, false, 'stopped after idleMs without a step');
  } finally {
    idle.dispose();
  }
  // Two resident caches: one kernel runs at a time, each step (re)starts its own, both stay exact.
  const pair = [st, integerState(3000, 3100, config, shape, 73)].map((s0) => {
    const c = new CudaPQCache({ shape, config: s0.layout.config, capacity: s0.capacity, resident: true });
    c.uploadState(s0);
    return { gpu: c, cpu: CpuPQCache.fromState({ ...s0, codes: s0.codes.slice() }) };
  });
  try {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
    let r = 5;
    const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
    for (let s = 0; s < 20; s++) {
      const { gpu, cpu } = pair[s % 2];
      const q = HostTensor.fromNumbers('f32', [B, H, 1, D], Array.from({ length: B * H * D }, rnd));
      const k = HostTensor.fromNumbers('f32', [B, Hkv, 1, D], Array.from({ length: B * Hkv * D }, rnd));
      assert.deepEqual(gpu.stepToHost(q, k).sparseList.data, cpu.stepToHost(q, k).sparseList.data, `alternating step ${s}`);
      assert.equal(gpu.residentActive, true);
      assert.equal(pair[1 - (s % 2)].gpu.residentActive, false, 'the other kernel was stopped');
    }
  } finally {
    for (const { gpu } of pair) gpu.dispose();
  }
  // The pair clusters and the general path: resident requested, graphs served, still exact.
  for (const [stepKernel, cfg] of [['cluster', config], ['auto', { ...config, pqGroupFactor: 4, pqBits: 4 }]] as const) {
    const s2 = integerState(3000, 3100, cfg, shape, 72);
    const gpu = new CudaPQCache({ shape, config: s2.layout.config, capacity: s2.capacity, stepKernel, resident: true });
    try {
      gpu.uploadState(s2);
      stepTogether(s2, gpu, 4, `resident requested, ${stepKernel} M ${cfg.pqGroupFactor}`);
      assert.equal(gpu.residentActive, false);
    } finally {
      gpu.dispose();
    }
  }
  assert.throws(() => new CudaPQCache({ shape, config: st.layout.config, capacity: 10, resident: { idleMs: 0 } }), /resident.idleMs/);
});

test('synchronize() after steps, selects and appends interleaved, host and device inputs: complete results (row, clusters, buckets, a stream the cache did not make)', { skip }, () => {
  const config = { sinkSize: 8, windowSize: 16, heavySize: 48, pqGroupFactor: 2, pqBits: 6, initOffset: 8 };
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
  // Each step kernel family, and a cache on a stream it did not make.
  const extStream = new Stream();
  const variants: [string, (st: PQIndexState) => CudaPQCache][] = [
    ['row', (st) => cudaFromState(st, 'row')],
    ['cluster', (st) => cudaFromState(st, 'cluster')],
    ['bucket', (st) => cudaFromState(st, 'bucket', undefined, 64)],
    ['own stream', (st) => {
      const c = new CudaPQCache({ shape, config: st.layout.config, capacity: st.capacity, stream: extStream });
      c.uploadState(st);
      return c;
    }],
  ];
  const arena = DeviceArena.allocate({ q: B * H * D * 4, k: B * Hkv * D * 4 });
  try {
    for (const [label, make] of variants) {
      const st = integerState(3000, 3400, config, shape, 91);
      const cpu = CpuPQCache.fromState({ ...st, codes: st.codes.slice() });
      const gpu = make(st);
      try {
        let r = 17;
        const rnd = (): number => ((r = (Math.imul(r, 69069) + 1) >>> 0) >>> 28) - 8;
        const query = (): HostTensor => HostTensor.fromNumbers('f32', [B, H, 1, D], Array.from({ length: B * H * D }, rnd));
        const key = (n = 1): HostTensor => HostTensor.fromNumbers('f32', [B, Hkv, n, D], Array.from({ length: B * Hkv * n * D }, rnd));
        for (let s = 0; s < 60; s++) {
          const at = `${label} round ${s} (sk ${gpu.seqLen})`;
          let want: SelectResult<HostTensor>;
          switch (s % 4) {
            case 0: { // two host-input steps back to back: the second restages once the first has read its inputs
              const [q1, k1, q2, k2] = [query(), key(), query(), key()];
              cpu.stepToHost(q1, k1);
              want = cpu.stepToHost(q2, k2);
              gpu.step(q1, k1);
              gpu.step(q2, k2);
              break;
            }
            case 1: { // device inputs
              const [q, k] = [query(), key()];
              want = cpu.stepToHost(q, k);
              copies.fromHost(arena.slices.q, q.data);
              copies.fromHost(arena.slices.k, k.data);
              gpu.step(deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr), deviceTensor('f32', [B, Hkv, 1, D], arena.slices.k.ptr));
              break;
            }
            case 2: { // a step, then other work with no wait between: append's own wait must cover its kernel
              const [q, k, keys, q2] = [query(), key(), key(3), query()];
              cpu.stepToHost(q, k);
              cpu.append(keys);
              want = cpu.selectToHost(q2);
              gpu.step(q, k);
              gpu.append(keys);
              gpu.select(q2);
              break;
            }
            default: { // selects only
              const [q1, q2] = [query(), query()];
              cpu.selectToHost(q1);
              want = cpu.selectToHost(q2);
              gpu.select(q1);
              gpu.select(q2);
            }
          }
          // listsToHost: synchronize(), then copies that do not wait for the cache's stream.
          const got = gpu.listsToHost();
          assert.deepEqual(got.sparseLen, want.sparseLen.data, `${at} sparseLen`);
          assert.deepEqual(got.sparseList, want.sparseList.data, `${at} sparseList`);
        }
        assert.deepEqual(gpu.exportState().codes, cpu.exportState().codes, `${label} codes`);
      } finally {
        gpu.dispose();
      }
    }
  } finally {
    arena.dispose();
    extStream.dispose();
  }
});
