import assert from 'node:assert/strict';
import test from 'node:test';
import { ShapeError } from '../src/errors.js';
import { SliceLayoutMemo, contiguousKeyRows, stepKeyBase, stepKeyRows } from '../src/pq/step-key.js';
import { deviceTensor } from '../src/tensor/device-tensor.js';

const Hkv = 4;
const D = 8;
const cap = 100;
const fixed = contiguousKeyRows(Hkv, D);

test('a contiguous step key keeps its address; a K cache slice gets its position stride and the base sk rows before it', () => {
  const own = deviceTensor('bf16', [2, Hkv, 1, D], 0x1000n);
  assert.equal(stepKeyRows('key', own, Hkv, D, fixed), fixed);
  assert.equal(stepKeyBase(own, fixed, 57), 0x1000n);
  // [B, Hkv, cap, D] and [B, cap, Hkv, D] caches, sliced at position 57.
  for (const strides of [[Hkv * cap * D, cap * D, D, 1], [cap * Hkv * D, D, Hkv * D, 1]]) {
    const at = 0x100000n + BigInt(57 * strides[2] * 2);
    const slice = deviceTensor('f16', [2, Hkv, 1, D], at, strides);
    const rows = stepKeyRows('key', slice, Hkv, D, fixed);
    assert.deepEqual([rows.batch, rows.head, rows.row, rows.rowBytes], [BigInt(strides[0]), BigInt(strides[1]), BigInt(strides[2]), BigInt(strides[2] * 2)]);
    // The base is the same for the slice of every position, each at its step's sk.
    assert.equal(stepKeyBase(slice, rows, 57), 0x100000n);
    const next = deviceTensor('f16', [2, Hkv, 1, D], at + BigInt(strides[2] * 2), strides);
    assert.equal(stepKeyBase(next, rows, 58), 0x100000n);
    // Read at a fixed address instead (a strided buffer that did not move): the same rows, row 0.
    const fixedToo = rows.atFixedAddress;
    assert.deepEqual([fixedToo.batch, fixedToo.head, fixedToo.row, fixedToo.rowBytes], [rows.batch, rows.head, 0n, 0n]);
    assert.equal(stepKeyBase(slice, fixedToo, 57), at);
  }
  assert.equal(fixed.atFixedAddress, fixed);
  // A base below address 0 wraps modulo 2^64, as the kernels' unsigned arithmetic does.
  const low = deviceTensor('f32', [1, Hkv, 1, D], 64n, [Hkv * cap * D, cap * D, D, 1]);
  const rows = stepKeyRows('key', low, Hkv, D, fixed);
  assert.equal(stepKeyBase(low, rows, 3), 2n ** 64n + 64n - 3n * BigInt(D * 4));
});

test('step key strides that are neither contiguous rows nor a K cache slice are a ShapeError naming key.strides', () => {
  for (const strides of [[Hkv * cap * D, cap * D, D - 1, 1], [Hkv * cap * D, cap * D, D, 2], [Hkv * cap * D, -D, D, 1], [Hkv * cap * D, cap * D, D]]) {
    const t = { device: 'cuda' as const, dtype: 'f32' as const, shape: [1, Hkv, 1, D], strides, ptr: 0n };
    assert.throws(() => stepKeyRows('key', t, Hkv, D, fixed), (e: unknown) => e instanceof ShapeError && /^key\.strides/.test((e as Error).message));
  }
});

test('the slice memo answers only for the dtype, shape and strides it was given', () => {
  const memo = new SliceLayoutMemo();
  const strides = [Hkv * cap * D, cap * D, D, 1];
  const a = deviceTensor('f32', [1, Hkv, 1, D], 0x2000n, strides);
  assert.equal(memo.get(a), undefined);
  const rows = stepKeyRows('key', a, Hkv, D, fixed);
  memo.set(a, rows);
  assert.equal(memo.get(deviceTensor('f32', [1, Hkv, 1, D], 0x9000n, strides)), rows);
  assert.equal(memo.get(deviceTensor('bf16', [1, Hkv, 1, D], 0x2000n, strides)), undefined);
  assert.equal(memo.get(deviceTensor('f32', [1, Hkv, 2, D], 0x2000n, strides)), undefined);
  assert.equal(memo.get(deviceTensor('f32', [1, Hkv, 1, D], 0x2000n, [Hkv * cap * D, cap * D, 2 * D, 1])), undefined);
  // A tensor that is not frozen is compared by its values at each call.
  const loose = { device: 'cuda' as const, dtype: 'f32' as const, shape: [1, Hkv, 1, D], strides: [...strides], ptr: 0n };
  assert.equal(memo.get(loose), rows);
  loose.strides[2] = 3 * D;
  assert.equal(memo.get(loose), undefined);
});
