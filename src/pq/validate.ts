/**
 * Argument checks shared by every backend. Each throws before any state is touched, so a
 * failed call leaves the index exactly as it was.
 */
import { CapacityError, ConfigError, NonFiniteError, ShapeError, StateError } from '../errors.js';
import { type FloatDType, FLOAT_DTYPES, readFloat } from '../tensor/dtype.js';
import { HostTensor, expectDType, expectShape } from '../tensor/host-tensor.js';
import type { Layout } from './config.js';

/** Exponent bits of the 16-bit formats: all ones means Inf or NaN. */
const NONFINITE_EXPONENT: Readonly<Record<'f16' | 'bf16', number>> = { f16: 0x7c00, bf16: 0x7f80 };

/**
 * x · 0 is ±0 for finite x and NaN for NaN or ±Inf: eight independent sums (each add waits for the
 * one before it in its own chain only), no branch per element. A step checks 2·B·H·D values before
 * every launch; 4096 floats take 1.9 μs this way, 2.6 μs with four sums of x − x, 3.9 μs with
 * Number.isFinite per element (scripts/finite-check-bench.mjs; Node 20 on the CPU machine).
 */
function allFinite(data: Float32Array): boolean {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let s4 = 0;
  let s5 = 0;
  let s6 = 0;
  let s7 = 0;
  const n = data.length & ~7;
  let i = 0;
  for (; i < n; i += 8) {
    s0 += data[i] * 0;
    s1 += data[i + 1] * 0;
    s2 += data[i + 2] * 0;
    s3 += data[i + 3] * 0;
    s4 += data[i + 4] * 0;
    s5 += data[i + 5] * 0;
    s6 += data[i + 6] * 0;
    s7 += data[i + 7] * 0;
  }
  for (; i < data.length; i++) s0 += data[i] * 0;
  return s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 === 0;
}

export function checkFinite(argument: string, t: HostTensor): void {
  const dtype = t.dtype as FloatDType;
  // Every decode step checks its inputs: one tight loop per dtype, no per-element conversion.
  if (dtype === 'f32') {
    const data = t.data as Float32Array;
    if (allFinite(data)) return;
    for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) throw new NonFiniteError(argument, i, data[i]);
    return;
  }
  const data = t.data as Uint16Array;
  const mask = NONFINITE_EXPONENT[dtype];
  for (let i = 0; i < data.length; i++) {
    if ((data[i] & mask) === mask) throw new NonFiniteError(argument, i, readFloat(dtype, data, i));
  }
}

/** query [B, H, 1, D], float dtype, finite. */
export function checkQuery(layout: Layout, query: HostTensor, argument = 'query'): asserts query is HostTensor<FloatDType> {
  const { batch: B, heads: H, headDim: D } = layout.shape;
  expectDType(argument, query, FLOAT_DTYPES);
  expectShape(argument, query, [B, H, 1, D], `[B=${B}, H=${H}, 1, D=${D}]`);
  checkFinite(argument, query);
}

/** keys [B, Hkv, n, D] with n ≥ minLen, float dtype, finite; returns n. */
export function checkKeys(layout: Layout, keys: HostTensor, argument: string, minLen: number): number {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  expectDType(argument, keys, FLOAT_DTYPES);
  expectShape(argument, keys, [B, Hkv, -1, D], `[B=${B}, Hkv=${Hkv}, n, D=${D}]`);
  const n = keys.shape[2];
  if (n < minLen) throw new ShapeError(argument, `[B=${B}, Hkv=${Hkv}, n ≥ ${minLen}, D=${D}]`, keys.shape);
  checkFinite(argument, keys);
  return n;
}

/** The key of one decode step: [B, Hkv, 1, D], float dtype, finite. */
export function checkStepKey(layout: Layout, key: HostTensor, argument = 'key'): void {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  expectDType(argument, key, FLOAT_DTYPES);
  expectShape(argument, key, [B, Hkv, 1, D], `[B=${B}, Hkv=${Hkv}, 1, D=${D}]`);
  checkFinite(argument, key);
}

export function checkCapacity(argument: string, capacity: number, requested: number): void {
  if (requested > capacity) throw new CapacityError(argument, capacity, requested);
}

export function checkCapacityOption(capacity: unknown): number {
  if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < 1 || capacity > 2 ** 31 - 1) {
    throw new ConfigError('capacity', 'an integer in [1, 2^31 − 1]', capacity);
  }
  return capacity;
}

export function checkBuilt(operation: string, built: boolean): void {
  if (!built) throw new StateError(operation, 'an index built with build() or loaded', 'an empty index');
}
