/**
 * Argument checks shared by every backend. Each throws before any state is touched, so a
 * failed call leaves the index exactly as it was.
 */
import { CapacityError, ConfigError, NonFiniteError, ShapeError, StateError } from '../errors.js';
import { type FloatDType, FLOAT_DTYPES, readFloat } from '../tensor/dtype.js';
import { firstNonFinite } from '../tensor/finite.js';
import type { DeviceTensor } from '../tensor/device-tensor.js';
import { HostTensor, expectDType, expectShape } from '../tensor/host-tensor.js';
import type { Layout } from './config.js';

export function checkFinite(argument: string, t: HostTensor): void {
  const dtype = t.dtype as FloatDType;
  const data = t.data as Float32Array | Uint16Array;
  // Every host-input decode step checks its inputs (src/tensor/finite.ts: WebAssembly SIMD).
  const at = firstNonFinite(data, dtype);
  if (at >= 0) throw new NonFiniteError(argument, at, readFloat(dtype, data, at));
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

/**
 * Device keys [B, Hkv, n, D] with n ≥ minLen and a float dtype; returns n. Strides: the last
 * dimension contiguous and the others nested without overlap ([s0, s1, s2, 1], s2 ≥ D, s1 ≥ n·s2,
 * s0 ≥ Hkv·s1: a K cache with room for more positions qualifies, or its slice of positions).
 * Their values are checked on the device.
 */
export function checkDeviceKeys(layout: Layout, keys: DeviceTensor, argument: string, minLen: number): number {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  expectDType(argument, keys, FLOAT_DTYPES);
  expectShape(argument, keys, [B, Hkv, -1, D], `[B=${B}, Hkv=${Hkv}, n, D=${D}]`);
  const n = keys.shape[2];
  if (n < minLen) throw new ShapeError(argument, `[B=${B}, Hkv=${Hkv}, n ≥ ${minLen}, D=${D}]`, keys.shape);
  const [s0, s1, s2, s3] = keys.strides;
  if (!(keys.strides.length === 4 && s3 === 1 && s2 >= D && s1 >= n * s2 && s0 >= Hkv * s1)) {
    throw new ShapeError(`${argument}.strides`, '[s0 ≥ Hkv·s1, s1 ≥ n·s2, s2 ≥ D, 1]', [...keys.strides]);
  }
  return n;
}

/** Rows (b, h) of a [B, heads, 1, D] device tensor at (b·heads + h)·D: strides [heads·D, D, any, 1]. */
export function hasContiguousRows(t: DeviceTensor, heads: number, D: number): boolean {
  const st = t.strides;
  return st.length === 4 && st[3] === 1 && st[1] === D && st[0] === heads * D;
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
