/**
 * A typed view of device memory: dtype, shape, element strides and the device pointer.
 * Views never own memory; the object that allocated it (a cache, an arena) frees it.
 */
import type { DevicePtr } from '../cuda/driver.js';
import { BYTES_PER_ELEMENT, type DType } from './dtype.js';

export interface DeviceTensor<D extends DType = DType> {
  readonly device: 'cuda';
  readonly dtype: D;
  readonly shape: readonly number[];
  /** Element strides per dimension (row-major contiguous unless a dimension is padded). */
  readonly strides: readonly number[];
  readonly ptr: DevicePtr;
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** Shape and strides are copied unless already frozen (views made per decode step pass frozen ones). */
export function deviceTensor<D extends DType>(dtype: D, shape: readonly number[], ptr: DevicePtr, strides?: readonly number[]): DeviceTensor<D> {
  return Object.freeze({
    device: 'cuda' as const,
    dtype,
    shape: frozenCopy(shape),
    strides: frozenCopy(strides ?? contiguousStrides(shape)),
    ptr,
  });
}

/**
 * A device tensor none of whose fields can change (it, its shape and its strides frozen, as
 * deviceTensor() makes them): checked once, it stays valid for every later call that passes it.
 */
export function isFrozenDeviceTensor(t: object): t is DeviceTensor {
  return 'device' in t && Object.isFrozen(t) && Object.isFrozen((t as DeviceTensor).shape) && Object.isFrozen((t as DeviceTensor).strides);
}

function frozenCopy(xs: readonly number[]): readonly number[] {
  return Object.isFrozen(xs) ? xs : Object.freeze([...xs]);
}

export function elementBytes(t: { dtype: DType }): number {
  return BYTES_PER_ELEMENT[t.dtype];
}
