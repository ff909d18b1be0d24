import assert from 'node:assert/strict';
import test from 'node:test';
import { bf16ToF32, bitsToF32, f16ToF32, f32Bits, f32ToBf16, f32ToF16 } from '../src/tensor/dtype.js';
import { HostTensor } from '../src/tensor/host-tensor.js';

test('f16: every finite bit pattern round-trips through f32 exactly', () => {
  for (let h = 0; h < 0x10000; h++) {
    const x = f16ToF32(h);
    if (Number.isNaN(x)) {
      assert.ok(Number.isNaN(f16ToF32(f32ToF16(x))), `NaN pattern ${h.toString(16)} stays NaN`);
      continue;
    }
    assert.equal(f32ToF16(x), h, `0x${h.toString(16)} → ${x}`);
  }
});

test('bf16: every bit pattern round-trips through f32 exactly', () => {
  for (let h = 0; h < 0x10000; h++) {
    const x = bf16ToF32(h);
    if (Number.isNaN(x)) {
      assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(x))));
      continue;
    }
    assert.equal(f32ToBf16(x), h, `0x${h.toString(16)} → ${x}`);
  }
});

test('f16: rounds to nearest, ties to even, with subnormals and overflow', () => {
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // tie between 1 and 1+2^-10: even (1)
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02); // tie: rounds up to even
  assert.equal(f32ToF16(1 + 2 ** -11 + 2 ** -20), 0x3c01); // above the tie
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(65520), 0x7c00); // halfway to the next binade: overflows to Inf
  assert.equal(f32ToF16(-1e9), 0xfc00);
  assert.equal(f32ToF16(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(f32ToF16(2 ** -25), 0x0000); // tie with zero: even
  assert.equal(f32ToF16(3 * 2 ** -26), 0x0001);
  assert.equal(f32ToF16(-0), 0x8000);
  assert.equal(f16ToF32(0x0001), 2 ** -24);
  assert.equal(f16ToF32(0x7c00), Infinity);
});

test('bf16: rounds to nearest even on the dropped 16 bits', () => {
  assert.equal(f32ToBf16(bitsToF32(0x3f808000)), 0x3f80); // tie, even stays
  assert.equal(f32ToBf16(bitsToF32(0x3f818000)), 0x3f82); // tie, odd rounds up
  assert.equal(f32ToBf16(bitsToF32(0x3f808001)), 0x3f81);
  assert.equal(f32ToBf16(bitsToF32(0x7f7fffff)), 0x7f80); // max float rounds to Inf
  assert.equal(f32Bits(bf16ToF32(0xff80)), 0xff800000);
});

test('HostTensor converts between float dtypes and checks sizes', () => {
  const t = HostTensor.fromNumbers('f32', [2, 2], [1, -2.5, 3.25, 1e-3]);
  const h = t.toDType('bf16');
  assert.deepEqual([...h.toFloat32()].slice(0, 3), [1, -2.5, 3.25]);
  assert.equal(t.toDType('f16').getFloat(3), f16ToF32(f32ToF16(1e-3)));
  assert.throws(() => new HostTensor('f32', [2, 3], new Float32Array(5)), /expected shape 6 elements|data: expected/);
});
