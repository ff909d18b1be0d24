/**
 * Host tensors: a dtype, a shape and a contiguous row-major typed array. No strides, no views
 * with offsets: the library only ever needs dense host data, and that keeps every index obvious.
 */
import { DTypeError, ShapeError } from '../errors.js';
import {
  allocStorage,
  type DType,
  type FloatDType,
  type StorageOf,
  isFloatDType,
  readFloat,
  writeFloat,
} from './dtype.js';

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function shapeText(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export class HostTensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: StorageOf[D];

  constructor(dtype: D, shape: readonly number[], data?: StorageOf[D]) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new ShapeError('shape', 'non-negative integer dimensions', shape);
    }
    const n = numel(shape);
    const storage = data ?? allocStorage(dtype, n);
    if (storage.length !== n) {
      throw new ShapeError('data', `${n} elements for shape ${shapeText(shape)}`, `${storage.length} elements`);
    }
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.data = storage;
  }

  get size(): number {
    return this.data.length;
  }

  static zeros<D extends DType>(dtype: D, shape: readonly number[]): HostTensor<D> {
    return new HostTensor(dtype, shape);
  }

  /** A float tensor from JS numbers (rounded to the dtype). */
  static fromNumbers<D extends FloatDType>(dtype: D, shape: readonly number[], values: ArrayLike<number>): HostTensor<D> {
    const t = new HostTensor(dtype, shape);
    if (values.length !== t.size) {
      throw new ShapeError('values', `${t.size} elements for shape ${shapeText(shape)}`, `${values.length} elements`);
    }
    const data = t.data as Float32Array | Uint16Array;
    for (let i = 0; i < values.length; i++) writeFloat(dtype, data, i, values[i]);
    return t;
  }

  /** Element i of a float tensor as a number. */
  getFloat(i: number): number {
    if (!isFloatDType(this.dtype)) throw new DTypeError('tensor', 'f32, f16 or bf16', this.dtype);
    return readFloat(this.dtype, this.data as Float32Array | Uint16Array, i);
  }

  /** The whole float tensor as fp32 (a copy for f16/bf16, the same storage for f32). */
  toFloat32(): Float32Array {
    if (this.dtype === 'f32') return this.data as Float32Array;
    if (!isFloatDType(this.dtype)) throw new DTypeError('tensor', 'f32, f16 or bf16', this.dtype);
    const out = new Float32Array(this.size);
    const src = this.data as Uint16Array;
    for (let i = 0; i < out.length; i++) out[i] = readFloat(this.dtype, src, i);
    return out;
  }

  /** A float tensor converted to another float dtype (rounded to nearest even). */
  toDType<T extends FloatDType>(dtype: T): HostTensor<T> {
    const src = this.toFloat32();
    return HostTensor.fromNumbers(dtype, this.shape, src);
  }
}

/** An expected shape and its label in errors, made once for checks that run on every step. */
export interface ExpectedShape {
  readonly dims: readonly number[];
  readonly label: string;
}

export function expectedShape(dims: readonly number[], label: string): ExpectedShape {
  return Object.freeze({ dims: Object.freeze([...dims]), label });
}

/** Check a tensor argument's shape exactly; `expected` entries of -1 match any size. */
export function expectShape(argument: string, t: { shape: readonly number[] }, expected: readonly number[], label?: string): void {
  let ok = t.shape.length === expected.length;
  for (let i = 0; ok && i < expected.length; i++) ok = expected[i] === -1 || expected[i] === t.shape[i];
  if (!ok) {
    const exp = label ?? shapeText(expected.map((d) => (d === -1 ? NaN : d))).replace(/NaN/g, '*');
    throw new ShapeError(argument, exp, t.shape);
  }
}

export function expectDType<D extends DType>(argument: string, t: { dtype: DType }, allowed: readonly D[]): asserts t is { dtype: D } {
  if (!(allowed as readonly DType[]).includes(t.dtype)) {
    throw new DTypeError(argument, allowed.join(' | '), t.dtype);
  }
}
