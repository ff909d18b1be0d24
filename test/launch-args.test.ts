import assert from 'node:assert/strict';
import test from 'node:test';
import koffi from 'koffi';
import { LaunchArgs } from '../src/cuda/launch.js';
import { DisposedError } from '../src/errors.js';

test('LaunchArgs: kernelParams holds one pointer per argument, each at its value', () => {
  const kinds = ['ptr', 'u64', 'i32', 'u32', 'f32'] as const;
  const args = new LaunchArgs(kinds).setAll([0x1234_5678_9abcn, 7n, -3, 0xffff_fffe, 1.5]);
  const ptrs = koffi.decode(args.address, 'uint64_t', kinds.length) as BigUint64Array;
  assert.equal(BigInt(koffi.decode(ptrs[0], 'uint64_t') as number), 0x1234_5678_9abcn); // koffi decodes u64 as a number when it fits
  assert.equal(BigInt(koffi.decode(ptrs[1], 'uint64_t') as number), 7n);
  assert.equal(koffi.decode(ptrs[2], 'int32_t'), -3);
  assert.equal(koffi.decode(ptrs[3], 'uint32_t'), 0xffff_fffe);
  assert.equal(koffi.decode(ptrs[4], 'float'), 1.5);
  args.set(2, 41);
  assert.equal(koffi.decode(ptrs[2], 'int32_t'), 41, 'set() writes in place: the pointers stay valid');
  args.dispose();
  assert.throws(() => args.address, DisposedError);
});
