/**
 * Where a K/V cache's rows lie. Row p of (b, kv-head) starts at element b·batch + kvh·head + p·position
 * of the keys (and of the values, laid out alike), and its D elements are contiguous. Our KVCache lays
 * them [B, Hkv, positions, D]; a caller's cache may be [B, positions, Hkv, D] (FlashAttention's order),
 * one half of a [B, positions, 2, Hkv, D] buffer, or any layout whose distinct rows do not overlap.
 */
import { ConfigError } from '../errors.js';
import { BYTES_PER_ELEMENT, type FloatDType } from '../tensor/dtype.js';

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
  const { kvHeads: Hkv, headDim: D } = shape;
  return { batch: Hkv * positions * D, head: positions * D, position: D };
}

/**
 * Check a caller's strides [batch, head, position] for a cache of `positions` positions and the
 * view's dtype, and return them as rows: non-negative integers, each a multiple of 16 bytes (the
 * kernels' vector loads), no two rows overlapping (each stride, in ascending order over the axes of
 * extent > 1, at least the span of the axes below it, the innermost at least D), every element
 * below 2^53. ConfigError naming `argument` otherwise.
 */
export function checkKVRows(strides: readonly number[], shape: KVShape, positions: number, dtype: FloatDType, argument: string): KVRows {
  const { batch: B, kvHeads: Hkv, headDim: D } = shape;
  if (strides.length !== 3 || !strides.every((s) => Number.isSafeInteger(s) && s >= 0)) {
    throw new ConfigError(argument, '3 non-negative integer element strides [batch, head, position]', strides);
  }
  const [batch, head, position] = strides as [number, number, number];
  const unit = 16 / BYTES_PER_ELEMENT[dtype];
  if (strides.some((s) => s % unit !== 0)) throw new ConfigError(argument, `multiples of ${unit} elements (16 bytes of ${dtype})`, strides);
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
  if (span > Number.MAX_SAFE_INTEGER) throw new ConfigError(argument, 'a cache below 2^53 elements', strides);
  return { batch, head, position };
}

/** What kvRowsOf reads of a K/V cache view (cuda-attention.ts KVCacheView). */
interface KVRowsSource {
  readonly dtype: FloatDType;
  readonly positions: number;
  readonly strides?: readonly number[];
}

/** A view's rows: its `strides`, checked (checkKVRows, as `kv.strides`), or [B, Hkv, positions, D] without them. */
export function kvRowsOf(view: KVRowsSource, shape: KVShape): KVRows {
  return view.strides === undefined ? headMajorRows(shape, view.positions) : checkKVRows(view.strides, shape, view.positions, view.dtype, 'kv.strides');
}
