/**
 * A decode step's query [B, H, 1, D] as the select kernels read it (kernels/select_common.cuh
 * PqStepQuery): row (b, h) at element b·batch + h·head of its address, its D elements contiguous.
 *
 * - Contiguous rows (`[H·D, D, any, 1]`) are the common case, and what host queries are staged as.
 * - Any other non-negative strides with a contiguous last dimension are read in place too, e.g. the
 *   query part of a fused QKV projection output `[B, 1, H + 2·Hkv, D]` viewed as `[B, H, 1, D]` with
 *   strides `[(H + 2·Hkv)·D, D, any, 1]`: no copy of the query before a step.
 * - The kernels compute a row's offset in 32 bits, so every element a step reads must lie below
 *   element 2^31 of the address.
 */
import type { DevicePtr } from '../cuda/driver.js';
import { ShapeError } from '../errors.js';
import { type DeviceTensor, isFrozenDeviceTensor } from '../tensor/device-tensor.js';
import { FLOAT_DTYPES, type FloatDType } from '../tensor/dtype.js';
import { type ExpectedShape, expectDType, expectShape } from '../tensor/host-tensor.js';
import { hasContiguousRows } from './validate.js';

/** Element strides of a step query's rows (numbers: 32-bit kernel arguments). */
export interface StepQueryRows {
  readonly batch: number;
  readonly head: number;
  /** Both strides in one graph-key part: batch · 2^32 + head. */
  readonly graphKey: bigint;
}

/** A step's query as its kernels are launched with it. */
export interface StepQuery {
  readonly ptr: DevicePtr;
  readonly dtype: FloatDType;
  readonly rows: StepQueryRows;
}

/** The largest element offset + 1 the kernels' 32-bit query offsets reach. */
const OFFSET_LIMIT = 2 ** 31;

function queryRows(batch: number, head: number): StepQueryRows {
  return { batch, head, graphKey: (BigInt(batch) << 32n) | BigInt(head) };
}

/** The rows of a contiguous step query [B, H, 1, D]. */
export function contiguousQueryRows(heads: number, D: number): StepQueryRows {
  return queryRows(heads * D, D);
}

/**
 * The rows of a device step query (shape and dtype checked before): `contiguous` for contiguous
 * rows; otherwise strides [s0, s1, any, 1] with s0, s1 non-negative integers and every element read
 * below 2^31, or it throws a ShapeError naming `<argument>.strides`.
 */
export function stepQueryRows(argument: string, query: DeviceTensor, batch: number, heads: number, D: number, contiguous: StepQueryRows): StepQueryRows {
  if (hasContiguousRows(query, heads, D)) return contiguous;
  const st = query.strides;
  const fits = st.length === 4 && st[3] === 1 && st.slice(0, 2).every((s) => Number.isSafeInteger(s) && s >= 0) &&
    (batch - 1) * st[0] + (heads - 1) * st[1] + D <= OFFSET_LIMIT;
  if (!fits) {
    throw new ShapeError(`${argument}.strides`, `[s0, s1, any, 1] with s0, s1 non-negative integers and every element below 2^31 (D = ${D})`, [...st]);
  }
  return queryRows(st[0], st[1]);
}

/** One cache's step queries: each device query's dtype, shape and strides checked once per frozen tensor. */
export class StepQueryReader {
  /** The rows of a contiguous query (host queries are staged so). */
  readonly contiguous: StepQueryRows;
  private readonly known = new WeakMap<DeviceTensor, StepQueryRows>();

  constructor(private readonly batch: number, private readonly heads: number, private readonly D: number, private readonly shape: ExpectedShape) {
    this.contiguous = contiguousQueryRows(heads, D);
  }

  /** The rows of device query `query` [B, H, 1, D], checked (DTypeError, ShapeError naming `argument`). */
  rowsOf(query: DeviceTensor, argument = 'query'): StepQueryRows {
    const known = this.known.get(query);
    if (known !== undefined) return known;
    expectDType(argument, query, FLOAT_DTYPES);
    expectShape(argument, query, this.shape.dims, this.shape.label);
    const rows = stepQueryRows(argument, query, this.batch, this.heads, this.D, this.contiguous);
    if (isFrozenDeviceTensor(query)) this.known.set(query, rows);
    return rows;
  }
}

/** `query` is read as the query at `ptr` of `dtype` with `rows` (compared field by field: a step allocates no StepQuery to ask). */
export function sameStepQuery(query: StepQuery, ptr: DevicePtr, dtype: FloatDType, rows: StepQueryRows): boolean {
  return query.ptr === ptr && query.dtype === dtype && query.rows.graphKey === rows.graphKey;
}
