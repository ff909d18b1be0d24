import assert from 'node:assert/strict';
import test from 'node:test';
import {
  ATTEND_CLUSTER_POSITIONS_PER_WARP, ATTEND_CLUSTER_THREADS, attendGeometry, attentionProblem, denseGroupHeads, planDenseAttend, planSparseAttend, planSparseAttendCluster,
} from '../src/attention/cuda-attention.js';
import { CpuDecodeLayer } from '../src/attention/decode-layer.js';
import { CpuDecodeStack } from '../src/attention/decode-stack.js';
import { CapacityError, ConfigError, DisposedError, NonFiniteError, ShapeError, StateError } from '../src/errors.js';
import { SplitMix32 } from '../src/pq/rng.js';
import { HostTensor } from '../src/tensor/host-tensor.js';

const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 16 };
const config = { sinkSize: 2, windowSize: 4, heavySize: 4, pqGroupFactor: 2, pqBits: 2, initOffset: 2, kmeansIters: 3 };

function rand(rng: SplitMix32, dims: number[]): HostTensor<'f32'> {
  const n = dims.reduce((a, b) => a * b, 1);
  return HostTensor.fromNumbers('f32', dims, Array.from({ length: n }, () => rng.normal()));
}

function stepInputs(rng: SplitMix32): { query: HostTensor; key: HostTensor; value: HostTensor } {
  return { query: rand(rng, [1, 4, 1, 16]), key: rand(rng, [1, 2, 1, 16]), value: rand(rng, [1, 2, 1, 16]) };
}

test('below the full-attention threshold the sparse layer equals the dense layer exactly', () => {
  const rng = new SplitMix32(1);
  const sparse = new CpuDecodeLayer({ shape, config, capacity: 12 });
  const dense = new CpuDecodeLayer({ shape, config, capacity: 12, attention: 'dense' });
  const keys = rand(rng, [1, 2, 8, 16]);
  const values = rand(rng, [1, 2, 8, 16]);
  sparse.prefill(keys, values);
  dense.prefill(keys, values);
  // sk ≤ K + O + 1 + C = 11: every position is listed with weight 1.
  for (let s = 0; s < 3; s++) {
    const inputs = stepInputs(rng);
    assert.deepEqual(sparse.stepToHost(inputs).data, dense.stepToHost(inputs).data, `step ${s}`);
  }
  assert.equal(sparse.seqLen, 11);
});

test('above the threshold the sparse layer attends to its list only, and the K/V cache holds every row', () => {
  const rng = new SplitMix32(2);
  const layer = new CpuDecodeLayer({ shape, config, capacity: 80, kvDType: 'bf16' });
  const keys = rand(rng, [1, 2, 60, 16]);
  const values = rand(rng, [1, 2, 60, 16]);
  layer.prefill(keys, values);
  const inputs = stepInputs(rng);
  const out = layer.stepToHost(inputs);
  assert.equal(out.dtype, 'bf16');
  assert.deepEqual(out.shape, [1, 4, 16]);
  const lists = layer.listsToHost();
  assert.ok(lists.sparseLen.every((n) => n === 2 + 4 + 4), `lists of S + K + W: ${lists.sparseLen}`);
  const kv = layer.kvToHost();
  const rounded = (x: number): number => HostTensor.fromNumbers('bf16', [1], [x]).toFloat32()[0];
  assert.equal(kv.keys.length, 2 * 61 * 16);
  assert.equal(kv.keys[16 * 60 + 3], rounded(inputs.key.toFloat32()[3]), 'new key row of kv-head 0 at position 60');
  assert.equal(kv.values[61 * 16 + 5], rounded(values.toFloat32()[60 * 16 + 5]), 'prefilled value of kv-head 1');
});

test('decode layers reject bad input with typed errors and stay usable', () => {
  const rng = new SplitMix32(3);
  const layer = new CpuDecodeLayer({ shape, config, capacity: 41 });
  assert.throws(() => layer.stepToHost(stepInputs(rng)), StateError, 'step before prefill');
  assert.throws(() => new CpuDecodeLayer({ shape, config, capacity: 10, attention: 'banded' as 'dense' }), ConfigError);
  assert.throws(() => layer.prefill(rand(rng, [1, 2, 40, 16]), rand(rng, [1, 2, 39, 16])), ShapeError);
  layer.prefill(rand(rng, [1, 2, 40, 16]), rand(rng, [1, 2, 40, 16]));
  const bad = stepInputs(rng);
  assert.throws(() => layer.stepToHost({ ...bad, value: rand(rng, [1, 4, 1, 16]) }), (e: unknown) => e instanceof ShapeError && e.argument === 'value');
  const nan = rand(rng, [1, 2, 1, 16]);
  (nan.data as Float32Array)[3] = NaN;
  assert.throws(() => layer.stepToHost({ ...bad, value: nan }), (e: unknown) => e instanceof NonFiniteError && /value/.test(e.message));
  assert.equal(layer.seqLen, 40, 'failed steps leave sk alone');
  layer.stepToHost(stepInputs(rng));
  assert.throws(() => layer.stepToHost(stepInputs(rng)), CapacityError);
  layer.dispose();
  assert.throws(() => layer.stepToHost(stepInputs(rng)), DisposedError);
});

test('the CPU stack steps each layer with its own inputs', () => {
  const rng = new SplitMix32(4);
  const stack = new CpuDecodeStack({ shape, config, capacity: 50, numLayers: 2 });
  const solo = new CpuDecodeLayer({ shape, config, capacity: 50 });
  const kv = [rand(rng, [1, 2, 40, 16]), rand(rng, [1, 2, 40, 16]), rand(rng, [1, 2, 40, 16]), rand(rng, [1, 2, 40, 16])];
  stack.prefill([kv[0], kv[1]], [kv[2], kv[3]]);
  solo.prefill(kv[1], kv[3]);
  const inputs = [stepInputs(rng), stepInputs(rng)];
  const outs = stack.stepToHost(inputs);
  assert.deepEqual(outs[1].data, solo.stepToHost(inputs[1]).data);
  assert.throws(() => stack.stepToHost([inputs[0]]), ShapeError);
});

test('the host mirror of the kernels\' warp geometry', () => {
  // kernels/attention.cu: LP = clamp(GH·DMAX/32, 8, 32); U = max(1, 32 / (2·DPL·bytes/4)).
  assert.deepEqual(attendGeometry(128, 1, 'bf16'), { dmax: 128, lanesPerPosition: 8, dimsPerLane: 16, positionsPerWarp: 8 });
  assert.deepEqual(attendGeometry(128, 4, 'bf16'), { dmax: 128, lanesPerPosition: 16, dimsPerLane: 8, positionsPerWarp: 8 });
  assert.deepEqual(attendGeometry(128, 8, 'f32'), { dmax: 128, lanesPerPosition: 32, dimsPerLane: 4, positionsPerWarp: 4 });
  assert.deepEqual(attendGeometry(256, 1, 'f32'), { dmax: 256, lanesPerPosition: 8, dimsPerLane: 32, positionsPerWarp: 4 });
});

test('attention launch plans cover their rows and pick the kernel for D and G', () => {
  for (const D of [64, 96, 128, 200, 256]) assert.equal(attentionProblem(D), undefined, `D=${D}`);
  assert.ok(attentionProblem(320) instanceof ConfigError);
  assert.ok(attentionProblem(100) instanceof ConfigError, 'D must be a multiple of 8');
  assert.deepEqual([1, 2, 3, 4, 5, 8, 16].map(denseGroupHeads), [1, 2, 4, 4, 8, 8, 8]);
  const s = { batch: 1, heads: 32, kvHeads: 8, headDim: 128 };
  for (const L of [1, 384, 4097]) {
    const p = planSparseAttend(s, 'bf16', L, 132);
    assert.ok(p.splits * p.chunk >= L && p.chunk % (4 * attendGeometry(128, 1, 'bf16').positionsPerWarp) === 0, JSON.stringify(p));
    assert.equal(p.kernel, 'pq_attend_sparse_bf16_d128');
  }
  for (const sk of [1, 1000, 131072, 524288]) {
    const p = planDenseAttend({ ...s, batch: 8 }, 'f16', sk, 132);
    assert.ok(p.splits * p.chunk >= sk, JSON.stringify(p));
    assert.equal(p.rows, 8 * 8);
    assert.equal(p.kernel, 'pq_attend_dense_f16_d128_g4');
  }
  assert.equal(planDenseAttend({ batch: 1, heads: 64, kvHeads: 4, headDim: 256 }, 'f32', 5000, 132).rows, 4 * 2);
});

test('cluster-merged sparse plans: one pass a block where one wave allows, clusters of 1–8', () => {
  const s = { batch: 1, heads: 32, kvHeads: 8, headDim: 128 };
  const pass = (ATTEND_CLUSTER_THREADS / 32) * ATTEND_CLUSTER_POSITIONS_PER_WARP; // 64 positions
  // The seed lists (S + K + W = 384): 6 passes' worth → clusters of 8, 48 positions a block.
  const seed = planSparseAttendCluster(s, 'bf16', 384, 132, 2);
  assert.equal(planSparseAttendCluster({ ...s, batch: 8 }, 'bf16', 384, 132, 3).splits, 1, 'B = 8: one block a row (256 blocks ≤ one wave of 396)');
  assert.equal(planSparseAttendCluster({ ...s, batch: 8 }, 'bf16', 384, 132, 3, 2).splits, 2, 'two waves allowed: 512 blocks');
  assert.deepEqual([seed.splits, seed.chunk, seed.merge, seed.threads, seed.kernel], [8, 48, 'cluster', 256, 'pq_attend_sparse_bf16_d128_c8']);
  for (const L of [1, 37, 64, 65, 384, 512, 2304, 5000]) {
    for (const batch of [1, 4, 8, 64]) {
      const p = planSparseAttendCluster({ ...s, batch }, 'bf16', L, 132, 2);
      assert.ok([1, 2, 4, 8].includes(p.splits), JSON.stringify(p));
      assert.ok(p.splits * p.chunk >= L, `covers L=${L}: ${JSON.stringify(p)}`);
      assert.equal(p.kernel, `pq_attend_sparse_bf16_d128_c${p.splits}`);
      // Fewer blocks only where the grid would pass one wave (132 SMs × 2 blocks).
      if (p.splits < Math.min(8, Math.ceil(L / pass))) assert.ok(batch * 32 * p.splits * 2 > 132 * 2, JSON.stringify(p));
    }
  }
  assert.equal(planSparseAttendCluster(s, 'f32', 384, 132, 2).kernel, 'pq_attend_sparse_f32_d128_c8');
  assert.equal(planSparseAttendCluster({ ...s, headDim: 256 }, 'f16', 40, 132, 2).kernel, 'pq_attend_sparse_f16_d256_c1');
  assert.equal(planSparseAttendCluster({ ...s, headDim: 256 }, 'f16', 65, 132, 2).kernel, 'pq_attend_sparse_f16_d256_c2');
});
