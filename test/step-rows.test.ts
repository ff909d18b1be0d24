import assert from 'node:assert/strict';
import test from 'node:test';
import { DTypeError, ShapeError } from '../src/errors.js';
import { StepRowsReader, contiguousRows, sameStepInput, stepRows } from '../src/pq/step-rows.js';
import { deviceTensor } from '../src/tensor/device-tensor.js';
import { expectedShape } from '../src/tensor/host-tensor.js';

const B = 3;
const H = 4;
const Hkv = 2;
const D = 8;
const contiguous = contiguousRows(H, D);

test('a contiguous step query gets the shared contiguous rows; a fused QKV buffer\'s query part its own strides', () => {
  assert.deepEqual([contiguous.batch, contiguous.head], [H * D, D]);
  assert.equal(stepRows('query', deviceTensor('f32', [B, H, 1, D], 0x1000n), B, H, D, contiguous), contiguous);
  // [B, 1, H + 2·Hkv, D] viewed as [B, H, 1, D].
  const Htot = H + 2 * Hkv;
  const fused = stepRows('query', deviceTensor('bf16', [B, H, 1, D], 0x1000n, [Htot * D, D, Htot * D, 1]), B, H, D, contiguous);
  assert.deepEqual([fused.batch, fused.head], [Htot * D, D]);
  // Heads further apart than D, or overlapping (the kernels only read a query).
  assert.deepEqual([2, 0].map((k) => stepRows('query', deviceTensor('f16', [B, H, 1, D], 0n, [H * 3 * D, k * D, D, 1]), B, H, D, contiguous).head), [2 * D, 0]);
  // Graph keys and sameStepInput tell layouts apart by their strides.
  assert.notEqual(fused.graphKey, contiguous.graphKey);
  assert.equal(fused.graphKey, contiguousRows(Htot, D).graphKey);
  const bound = { ptr: 1n, dtype: 'f32' as const, rows: fused };
  assert.ok(sameStepInput(bound, 1n, 'f32', stepRows('query', deviceTensor('f32', [B, H, 1, D], 0n, [Htot * D, D, D, 1]), B, H, D, contiguous)));
  assert.ok(!sameStepInput(bound, 1n, 'f32', contiguous));
  assert.ok(!sameStepInput(bound, 1n, 'bf16', fused));
  assert.ok(!sameStepInput(bound, 2n, 'f32', fused));
});

test('step query strides with a strided last dimension, negative or fractional strides, or elements past 2^31 are a ShapeError naming query.strides', () => {
  const bad = [
    [H * D, D, D, 2],
    [H * D, -D, D, 1],
    [H * D, D + 0.5, D, 1],
    [H * D, D, D],
    [H * D, 2 ** 30, D, 1], // row (0, 3) starts at 3·2^30
    [2 ** 30, D, D, 1], // row (2, 0) starts at 2^31
  ];
  for (const strides of bad) {
    const t = { device: 'cuda' as const, dtype: 'f32' as const, shape: [B, H, 1, D], strides, ptr: 0n };
    assert.throws(() => stepRows('query', t, B, H, D, contiguous), (e: unknown) => e instanceof ShapeError && /^query\.strides/.test((e as Error).message), JSON.stringify(strides));
  }
  // The last element read may sit at 2^31 − 1 ((B − 1)·s0 + (H − 1)·D + D = 2^31), not at 2^31.
  const withBatchStride = (s0: number) => deviceTensor('f32', [B, H, 1, D], 0n, [s0, D, D, 1]);
  assert.equal(stepRows('query', withBatchStride(2 ** 30 - 2 * D), B, H, D, contiguous).batch, 2 ** 30 - 2 * D);
  assert.throws(() => stepRows('query', withBatchStride(2 ** 30 - 2 * D + 1), B, H, D, contiguous), ShapeError);
});

test('the query reader checks dtype and shape, remembers frozen tensors and checks a loose one at every call', () => {
  const reader = new StepRowsReader(B, H, D, expectedShape([B, H, 1, D], `[B=${B}, H=${H}, 1, D=${D}]`));
  assert.equal(reader.rowsOf(deviceTensor('f32', [B, H, 1, D], 0n), 'query'), reader.contiguous);
  assert.throws(() => reader.rowsOf(deviceTensor('i32', [B, H, 1, D], 0n), 'query'), DTypeError);
  assert.throws(() => reader.rowsOf(deviceTensor('f32', [B, Hkv, 1, D], 0n), 'query'), (e: unknown) => e instanceof ShapeError && /^query/.test((e as Error).message));
  const loose = { device: 'cuda' as const, dtype: 'f32' as const, shape: [B, H, 1, D], strides: [H * D, D, D, 1], ptr: 0n };
  assert.equal(reader.rowsOf(loose, 'query'), reader.contiguous);
  loose.strides[3] = 2;
  assert.throws(() => reader.rowsOf(loose, 'query'), (e: unknown) => e instanceof ShapeError && /^query\.strides/.test((e as Error).message));
});
