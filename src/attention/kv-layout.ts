/**
 * Where a K/V cache's rows lie. Row p of (b, kv-head) starts at element b·batch + kvh·head + p·position
 * of the keys (and of the values, laid out alike), and its D elements are contiguous. Our KVCache lays
 * them [B, Hkv, positions, D]; a caller's cache may be [B, positions, Hkv, D] (FlashAttention's order),
 * one half of a [B, positions, 2, Hkv, D] buffer, or any layout whose distinct rows do not overlap.
 */
import { ConfigError } from '../errors.js';

/** Element strides of a batch, a kv-head and a position (kernels/attention.cu PqKVRows). */
export interface KVRows {
  readonly batch: number;
  readonly head: number;
  readonly position: number;
}

/** The shape a K/V cache serves. */
export interface KVShape {
  readonly batch: number;
  readonly kvHeads: number;
  readonly headDim: number;
}

/** [B, Hkv, positions, D], contiguous: our KVCache's rows, and a view's without `strides`. */
export function headMajorRows(shape: KVShape, positions: number): KVRows {
  const { batch: B, kvHeads: Hkv, headDim: D } = shape;
  checkRowIndices(B * Hkv * positions, 'kv.positions', positions);
  return { batch: Hkv * positions * D, head: positions * D, position: D };
}

/**
 * Check a caller's strides [batch, head, position] for a cache of `positions` positions and return
 * them as rows: non-negative integers, each a multiple of D (the kernels count in rows of D elements,
 * so a row starts 16-byte aligned when the base does: D % 8 == 0), no two rows overlapping (each
 * stride, in ascending order over the axes of extent > 1, at least the span of the axes below it, the
 * innermost at least D), the last row's index below 2^31. ConfigError naming `argument` otherwise.
 */
export function checkKVRows(strides: readonly number[], shape: KVShape, positions: number, argument: string): KVRows {
  const { batch: B, kvHeads: Hkv, headDim: D } = shape;
  if (strides.length !== 3 || !strides.every((s) => Number.isSafeInteger(s) && s >= 0)) {
    throw new ConfigError(argument, '3 non-negative integer element strides [batch, head, position]', strides);
  }
  const [batch, head, position] = strides as [number, number, number];
  if (strides.some((s) => s % D !== 0)) throw new ConfigError(argument, `multiples of D = ${D} elements`, strides);
  const axes = [
    { stride: batch, extent: B },
    { stride: head, extent: Hkv },
    { stride: position, extent: positions },
  ].filter((a) => a.extent > 1).sort((a, b) => a.stride - b.stride);
  let span = D; // elements the axes below cover
  for (const a of axes) {
    if (a.stride < span) throw new ConfigError(argument, `strides whose rows do not overlap (a stride of ${a.stride} is below the ${span} elements of the axes inside it)`, strides);
    span = a.stride * (a.extent - 1) + span;
  }
  checkRowIndices(span / D, argument, strides);
  return { batch, head, position };
}

/** The kernels' row indices are int32 (kernels/attention.cu PqKVRows): the rows a cache spans stay within. */
function checkRowIndices(rows: number, argument: string, actual: unknown): void {
  if (rows > 2 ** 31) throw new ConfigError(argument, `a cache of at most 2^31 rows of D elements (got ${rows})`, actual);
}

/** A layout's strides in rows of D elements, as the kernels take them (kernels/attention.cu PqKVRows). */
export function kvRowsInRows(rows: KVRows, D: number): [number, number, number] {
  return [rows.batch / D, rows.head / D, rows.position / D];
}

/** What kvRowsOf reads of a K/V cache view (cuda-attention.ts KVCacheView). */
interface KVRowsSource {
  readonly positions: number;
  readonly strides?: readonly number[];
}

/** A view's rows: its `strides`, checked (checkKVRows, as `kv.strides`), or [B, Hkv, positions, D] without them. */
export function kvRowsOf(view: KVRowsSource, shape: KVShape): KVRows {
  return view.strides === undefined ? headMajorRows(shape, view.positions) : checkKVRows(view.strides, shape, view.positions, 'kv.strides');
}
