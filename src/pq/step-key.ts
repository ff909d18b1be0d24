/**
 * A decode step's new key [B, Hkv, 1, D] as the kernels that append it read it
 * (kernels/append_block.cuh PqStepKey): row (b, kv-head) at element b·batch + kvh·head + sk·row of a
 * base address, sk being the index's length before the step, which the kernels read on the device.
 *
 * - A key whose rows are contiguous ([Hkv·D, D, any, 1]) is read where it is: row = 0, base = its
 *   address. Its graphs are keyed by that address, so a decode loop reuses one buffer.
 * - Any other layout is taken as a slice of a K cache at the step's position, e.g.
 *   `[Hkv·cap·D, cap·D, D, 1]` ([B, Hkv, cap, D]) or `[cap·Hkv·D, D, Hkv·D, 1]` ([B, cap, Hkv, D]):
 *   row = its position stride, base = its address − sk·row. A loop that passes the slice at
 *   position sk every step therefore has the same base every step, and replays one graph (or
 *   one chain, or one resident launch) with no copy of the key and no capture per step.
 * - Strides alone cannot tell such a slice from a strided buffer at a fixed address (the key part of
 *   a fused QKV output, `[(H + 2·Hkv)·D, D, any, 1]`): a key at the address of the last step's key
 *   is read as one (`atFixedAddress`: row = 0), so such a loop captures its graphs again once.
 */
import type { DevicePtr } from '../cuda/driver.js';
import { sameElements } from '../cuda/graph.js';
import { ShapeError } from '../errors.js';
import { type DeviceTensor, isFrozenDeviceTensor } from '../tensor/device-tensor.js';
import { BYTES_PER_ELEMENT, FLOAT_DTYPES, type FloatDType } from '../tensor/dtype.js';
import { type ExpectedShape, expectDType, expectShape } from '../tensor/host-tensor.js';
import type { StepInput } from './step-rows.js';
import { hasContiguousRows } from './validate.js';

/** Element strides of a step key's rows (bigints: kernel arguments and graph-key parts as they are). */
export interface StepKeyRows {
  readonly batch: bigint;
  readonly head: bigint;
  /** 0: the same rows every step; else the K cache's position stride. */
  readonly row: bigint;
  /** `row` in bytes of the key's dtype (stepKeyBase). */
  readonly rowBytes: bigint;
  /** The same rows read at a fixed address (row = 0), for a strided key that does not move. */
  readonly atFixedAddress: StepKeyRows;
}

/** A step's key as its kernels are launched with it. */
export interface StepKey {
  readonly base: DevicePtr;
  readonly dtype: FloatDType;
  readonly rows: StepKeyRows;
}

/** The rows of a contiguous step key [B, Hkv, 1, D]. */
export function contiguousKeyRows(kvHeads: number, D: number): StepKeyRows {
  return fixedRows(BigInt(kvHeads * D), BigInt(D));
}

function fixedRows(batch: bigint, head: bigint): StepKeyRows {
  const rows = { batch, head, row: 0n, rowBytes: 0n, atFixedAddress: undefined as unknown as StepKeyRows };
  rows.atFixedAddress = rows;
  return rows;
}

/**
 * A decode layer's new key (read by its rows: src/pq/step-rows.ts) as the PQ step's append reads
 * it: where it lies, the same rows every step (row = 0).
 */
export function fixedStepKey(key: StepInput): StepKey {
  return { base: key.ptr, dtype: key.dtype, rows: fixedRows(BigInt(key.rows.batch), BigInt(key.rows.head)) };
}

/**
 * The rows of a device step key (shape and dtype checked before). Contiguous rows give `fixed`;
 * otherwise every stride must be a non-negative integer, the last 1 and the position stride ≥ D
 * (positions of a K cache do not overlap), or it throws a ShapeError naming `<argument>.strides`.
 */
export function stepKeyRows(argument: string, key: DeviceTensor, kvHeads: number, D: number, fixed: StepKeyRows): StepKeyRows {
  if (hasContiguousRows(key, kvHeads, D)) return fixed;
  const st = key.strides;
  if (st.length !== 4 || st[3] !== 1 || !st.every((s) => Number.isSafeInteger(s) && s >= 0) || st[2] < D) {
    throw new ShapeError(`${argument}.strides`, `[${kvHeads}·D, D, any, 1] (rows contiguous) or a K cache slice's [s0, s1, s2 ≥ D, 1] (D = ${D})`, [...st]);
  }
  const batch = BigInt(st[0]);
  const head = BigInt(st[1]);
  return { batch, head, row: BigInt(st[2]), rowBytes: BigInt(st[2] * BYTES_PER_ELEMENT[key.dtype as FloatDType]), atFixedAddress: fixedRows(batch, head) };
}

/**
 * The rows of the last K cache slice validated, by its dtype, shape and strides: a decode loop makes
 * a new view of the next position every step, which then skips the checks (and is not remembered
 * per object, which a WeakMap entry per step would cost ≈ 1 μs of collection for).
 */
export class SliceLayoutMemo {
  private dtype: string | undefined;
  private shape: readonly number[] = [];
  private strides: readonly number[] = [];
  private rows: StepKeyRows | undefined;

  get(key: DeviceTensor): StepKeyRows | undefined {
    return key.dtype === this.dtype && sameElements(key.shape, this.shape) && sameElements(key.strides, this.strides) ? this.rows : undefined;
  }

  set(key: DeviceTensor, rows: StepKeyRows): void {
    this.dtype = key.dtype;
    this.shape = [...key.shape];
    this.strides = [...key.strides];
    this.rows = rows;
  }
}

/**
 * One cache's step keys: each device key checked (dtype, shape, strides) once per frozen tensor read
 * at a fixed address, and K cache slices (a new view every step) once per layout; and where a step
 * reads it, from the last step's key address.
 */
export class StepKeyReader {
  /** The rows of a contiguous key (host keys are staged so). */
  readonly contiguous: StepKeyRows;
  private readonly known = new WeakMap<DeviceTensor, StepKeyRows>();
  private readonly lastSlice = new SliceLayoutMemo();
  private lastPtr: DevicePtr = -1n;

  constructor(private readonly kvHeads: number, private readonly D: number, private readonly shape: ExpectedShape) {
    this.contiguous = contiguousKeyRows(kvHeads, D);
  }

  /** The rows of device key `key` [B, Hkv, 1, D], checked (DTypeError, ShapeError naming `key`). */
  rowsOf(key: DeviceTensor): StepKeyRows {
    const known = this.known.get(key) ?? this.lastSlice.get(key);
    if (known !== undefined) return known;
    expectDType('key', key, FLOAT_DTYPES);
    expectShape('key', key, this.shape.dims, this.shape.label);
    const rows = stepKeyRows('key', key, this.kvHeads, this.D, this.contiguous);
    if (rows.row !== 0n) this.lastSlice.set(key, rows);
    else if (isFrozenDeviceTensor(key)) this.known.set(key, rows);
    return rows;
  }

  /** The rows this step reads `key` (rowsOf's) with: a strided key where the last step's was does not move with sk. */
  placed(key: DeviceTensor, rows: StepKeyRows): StepKeyRows {
    const fixed = key.ptr === this.lastPtr;
    this.lastPtr = key.ptr;
    return fixed ? rows.atFixedAddress : rows;
  }
}

/** The base address of `key` with `rows` when the index holds `sk` positions before the step. */
export function stepKeyBase(key: DeviceTensor, rows: StepKeyRows, sk: number): DevicePtr {
  if (rows.row === 0n) return key.ptr;
  const base = key.ptr - BigInt(sk) * rows.rowBytes;
  // Below 0 it wraps modulo 2^64, as the kernel's unsigned arithmetic does (pq_key_row).
  return base >= 0n ? base : BigInt.asUintN(64, base);
}

/** `key` is read as the key at `base` of `dtype` with `rows` (compared field by field, as sameStepInput). */
export function sameStepKey(key: StepKey, base: DevicePtr, dtype: FloatDType, rows: StepKeyRows): boolean {
  return key.base === base && key.dtype === dtype && key.rows.batch === rows.batch && key.rows.head === rows.head && key.rows.row === rows.row;
}
