/**
 * A decode step's input [B, heads, 1, D] read in place by rows (kernels/common.cuh PqStepRows): row
 * (b, h) at element b·batch + h·head of its address, its D elements contiguous. The select kernels
 * read a step's query so, and a decode layer's K/V append and attention kernels its query, new key
 * and new value.
 *
 * - Contiguous rows (`[heads·D, D, any, 1]`) are the common case, and what host inputs are staged as.
 * - Any other non-negative strides with a contiguous last dimension are read in place too, e.g. the
 *   parts of a fused QKV projection output `[B, 1, H + 2·Hkv, D]`: its query viewed as
 *   `[B, H, 1, D]` with strides `[(H + 2·Hkv)·D, D, any, 1]`, its key and value as `[B, Hkv, 1, D]`
 *   with the same strides at offsets H·D and (H + Hkv)·D. No copy of them before a step.
 * - The kernels compute a row's offset in 32 bits, so every element a step reads must lie below
 *   element 2^31 of the address.
 */
import type { DevicePtr } from '../cuda/driver.js';
import { ShapeError } from '../errors.js';
import { type DeviceTensor, isFrozenDeviceTensor } from '../tensor/device-tensor.js';
import { FLOAT_DTYPES, type FloatDType } from '../tensor/dtype.js';
import { type ExpectedShape, expectDType, expectShape } from '../tensor/host-tensor.js';
import { hasContiguousRows } from './validate.js';

/** Element strides of a step input's rows (numbers: 32-bit kernel arguments). */
export interface StepRows {
  readonly batch: number;
  readonly head: number;
  /** Both strides in one graph-key part: batch · 2^32 + head. */
  readonly graphKey: bigint;
}

/** A step input (a query, or a decode layer's new key or value) as its kernels are launched with it. */
export interface StepInput {
  readonly ptr: DevicePtr;
  readonly dtype: FloatDType;
  readonly rows: StepRows;
}

/** The largest element offset + 1 the kernels' 32-bit row offsets reach. */
const OFFSET_LIMIT = 2 ** 31;

function rowsOf(batch: number, head: number): StepRows {
  return { batch, head, graphKey: (BigInt(batch) << 32n) | BigInt(head) };
}

/** The rows of a contiguous step input [B, heads, 1, D]. */
export function contiguousRows(heads: number, D: number): StepRows {
  return rowsOf(heads * D, D);
}

/**
 * The rows of a device step input [B, heads, 1, D] (shape and dtype checked before): `contiguous`
 * for contiguous rows; otherwise strides [s0, s1, any, 1] with s0, s1 non-negative integers and every
 * element read below 2^31, or it throws a ShapeError naming `<argument>.strides`.
 */
export function stepRows(argument: string, input: DeviceTensor, batch: number, heads: number, D: number, contiguous: StepRows): StepRows {
  if (hasContiguousRows(input, heads, D)) return contiguous;
  const st = input.strides;
  const fits = st.length === 4 && st[3] === 1 && st.slice(0, 2).every((s) => Number.isSafeInteger(s) && s >= 0) &&
    (batch - 1) * st[0] + (heads - 1) * st[1] + D <= OFFSET_LIMIT;
  if (!fits) {
    throw new ShapeError(`${argument}.strides`, `[s0, s1, any, 1] with s0, s1 non-negative integers and every element below 2^31 (D = ${D})`, [...st]);
  }
  return rowsOf(st[0], st[1]);
}

/**
 * Device step inputs of one shape [B, heads, 1, D] (a cache's queries; a decode layer's queries, or
 * its new keys and values): each one's dtype, shape and strides checked once per frozen tensor.
 */
export class StepRowsReader {
  /** The rows of a contiguous input (host inputs are staged so). */
  readonly contiguous: StepRows;
  private readonly known = new WeakMap<DeviceTensor, StepRows>();

  constructor(private readonly batch: number, private readonly heads: number, private readonly D: number, private readonly shape: ExpectedShape) {
    this.contiguous = contiguousRows(heads, D);
  }

  /** The rows of device input `input`, checked (DTypeError, ShapeError naming `argument`). */
  rowsOf(input: DeviceTensor, argument: string): StepRows {
    const known = this.known.get(input);
    if (known !== undefined) return known;
    expectDType(argument, input, FLOAT_DTYPES);
    expectShape(argument, input, this.shape.dims, this.shape.label);
    const rows = stepRows(argument, input, this.batch, this.heads, this.D, this.contiguous);
    if (isFrozenDeviceTensor(input)) this.known.set(input, rows);
    return rows;
  }
}

/** `input` is read at `ptr` as `dtype` with `rows` (compared field by field: a step allocates no StepInput to ask). */
export function sameStepInput(input: StepInput, ptr: DevicePtr, dtype: FloatDType, rows: StepRows): boolean {
  return input.ptr === ptr && input.dtype === dtype && input.rows.graphKey === rows.graphKey;
}
