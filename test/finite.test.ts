import assert from 'node:assert/strict';
import test from 'node:test';
import { allFinite16, allFiniteF32, simdFiniteCheck } from '../src/tensor/finite.js';

// A reference by the definition, element by element.
const finiteF32 = (d: Float32Array): boolean => d.every((x) => Number.isFinite(x));
const finite16 = (d: Uint16Array, mask: number): boolean => d.every((b) => (b & mask) !== mask);

test('the WebAssembly SIMD check runs on this Node (the scalar loops are only a fallback)', () => {
  assert.equal(simdFiniteCheck(), true);
});

test('allFiniteF32 agrees with Number.isFinite across chunk boundaries, views at an offset, and every non-finite kind', () => {
  const chunk = (1 << 18) / 4; // floats per checked chunk
  let seed = 12345;
  const rand = (): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  for (const n of [0, 1, 16, 31, chunk - 1, chunk, chunk + 1, 2 * chunk + 17]) {
    const base = new Float32Array(n + 3).map(() => (rand() - 0.5) * 3.4e38);
    const view = base.subarray(3); // byteOffset 12: not 16-byte aligned
    assert.equal(allFiniteF32(view), true, `n=${n}`);
    if (n === 0) continue;
    for (const at of new Set([0, n - 1, Math.floor(rand() * n), chunk - 1, chunk, chunk + 1].filter((i) => i < n))) {
      for (const bad of [NaN, Infinity, -Infinity]) {
        const x = view.slice();
        x[at] = bad;
        assert.equal(allFiniteF32(x), finiteF32(x), `n=${n} at=${at} ${bad}`);
        assert.equal(allFiniteF32(x), false);
      }
    }
    // Bits just below the exponent mask (the largest finite) and subnormals stay finite.
    const edge = new Uint32Array(view.slice().buffer);
    edge[0] = 0x7f7fffff;
    edge[n - 1] = 0x80000001;
    assert.equal(allFiniteF32(new Float32Array(edge.buffer)), true);
  }
});

test('allFinite16 applies each format\'s exponent bits (f16 0x7c00, bf16 0x7f80)', () => {
  for (const n of [1, 8, 9, 40, 70000]) {
    const d = new Uint16Array(n).map((_, i) => (i * 2654435761) & 0x7bff); // finite in both formats
    assert.equal(allFinite16(d, 'f16'), true, `f16 n=${n}`);
    assert.equal(allFinite16(d, 'bf16'), true, `bf16 n=${n}`);
    for (const at of new Set([0, n - 1, n >> 1])) {
      for (const bits of [0x7c00, 0xfc00, 0x7e00, 0x7f80, 0xff80, 0x7fc0]) {
        const x = d.slice();
        x[at] = bits;
        assert.equal(allFinite16(x, 'f16'), finite16(x, 0x7c00), `f16 ${bits.toString(16)} n=${n} at=${at}`);
        assert.equal(allFinite16(x, 'bf16'), finite16(x, 0x7f80), `bf16 ${bits.toString(16)} n=${n} at=${at}`);
      }
    }
  }
});
