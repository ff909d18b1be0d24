import assert from 'node:assert/strict';
import test from 'node:test';
import { checkKVRows, headMajorRows, kvRowsOf } from '../src/attention/kv-layout.js';
import { ConfigError } from '../src/errors.js';

const shape = { batch: 2, kvHeads: 4, headDim: 64 };
const refused = (strides: readonly number[], why: RegExp, positions = 100): void =>
  assert.throws(() => checkKVRows(strides, shape, positions, 'kv.strides'), (e: unknown) => e instanceof ConfigError && /^kv\.strides/.test((e as Error).message) && why.test((e as Error).message));

test('K/V rows: the head-major default, and the layouts a caller may pass', () => {
  assert.deepEqual(headMajorRows(shape, 100), { batch: 4 * 100 * 64, head: 100 * 64, position: 64 });
  assert.deepEqual(kvRowsOf({ positions: 100 }, shape), headMajorRows(shape, 100));
  // [B, cap, Hkv, D]; K and V interleaved [B, cap, 2, Hkv, D]; the default's own strides; B = 1 with any batch stride.
  for (const strides of [[100 * 4 * 64, 64, 4 * 64], [100 * 8 * 64, 64, 8 * 64], [4 * 100 * 64, 100 * 64, 64]]) {
    assert.deepEqual(checkKVRows(strides, shape, 100, 'kv.strides'), { batch: strides[0], head: strides[1], position: strides[2] });
  }
  assert.deepEqual(checkKVRows([0, 64, 256], { ...shape, batch: 1 }, 100, 'kv.strides').batch, 0);
});

test('K/V rows: overlapping, misaligned or malformed strides are refused, naming the argument', () => {
  refused([100 * 4 * 64, 64, 64], /overlap/); // positions and heads share rows
  refused([100 * 4 * 64, 128, 4 * 64], /overlap/); // a head's rows run into the next position's
  refused([4 * 64 * 99, 64, 4 * 64], /overlap/); // a batch starts before the last position of the one before
  refused([100 * 4 * 64, 72, 4 * 64], /multiples of D = 64/); // rows are counted in D elements
  // At most 2^31 rows of D elements (the kernels' int32 row indices), ours and a caller's alike.
  assert.doesNotThrow(() => headMajorRows(shape, 2 ** 28));
  assert.throws(() => headMajorRows(shape, 2 ** 28 + 1), (e: unknown) => e instanceof ConfigError && /^kv\.positions/.test((e as Error).message));
  refused([(2 ** 28 + 1) * 4 * 64, 64, 4 * 64], /2\^31 rows/, 2 ** 28 + 1);
  refused([100 * 4 * 64, 64], /3 non-negative integer/);
  refused([100 * 4 * 64, -64, 4 * 64], /3 non-negative integer/);
  refused([100 * 4 * 64, 64.5, 4 * 64], /3 non-negative integer/);
  assert.throws(() => kvRowsOf({ positions: 100, strides: [0, 64, 64] }, shape), ConfigError);
});
