/**
 * Element types and exact conversions between fp32 and the 16-bit float formats.
 * Both narrowing conversions round to nearest, ties to even, as the hardware does.
 */

export type FloatDType = 'f32' | 'f16' | 'bf16';
export type DType = FloatDType | 'i32' | 'u8';

export interface StorageOf {
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  i32: Int32Array;
  u8: Uint8Array;
}

export const BYTES_PER_ELEMENT: Readonly<Record<DType, number>> = {
  f32: 4,
  f16: 2,
  bf16: 2,
  i32: 4,
  u8: 1,
};

export const FLOAT_DTYPES: readonly FloatDType[] = ['f32', 'f16', 'bf16'];

export function isFloatDType(d: DType): d is FloatDType {
  return d === 'f32' || d === 'f16' || d === 'bf16';
}

export function allocStorage<D extends DType>(dtype: D, length: number): StorageOf[D] {
  switch (dtype) {
    case 'f32':
      return new Float32Array(length) as StorageOf[D];
    case 'f16':
    case 'bf16':
      return new Uint16Array(length) as StorageOf[D];
    case 'i32':
      return new Int32Array(length) as StorageOf[D];
    case 'u8':
      return new Uint8Array(length) as StorageOf[D];
  }
  throw new Error(`unreachable dtype ${String(dtype)}`);
}

// One shared scratch word for bit casts (module-level: no allocation per conversion).
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

export function f32Bits(x: number): number {
  scratchF32[0] = x;
  return scratchU32[0];
}

export function bitsToF32(bits: number): number {
  scratchU32[0] = bits >>> 0;
  return scratchF32[0];
}

/** fp32 → bf16 bits, round to nearest even; NaN stays NaN (quiet). */
export function f32ToBf16(x: number): number {
  const u = f32Bits(x);
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) {
    return ((u >>> 16) | 0x0040) & 0xffff;
  }
  const lsb = (u >>> 16) & 1;
  return ((u + 0x7fff + lsb) >>> 16) & 0xffff;
}

export function bf16ToF32(h: number): number {
  return bitsToF32((h & 0xffff) << 16);
}

/** fp32 → fp16 bits, round to nearest even, with subnormals, overflow to ±Inf, NaN kept. */
export function f32ToF16(x: number): number {
  const u = f32Bits(x);
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  // Unbiased exponent e; fp16 normal range is e in [-14, 15].
  const e = exp - 127;
  if (e > 15) return sign | 0x7c00;
  if (e >= -14) {
    // Normal: keep 10 mantissa bits, round the 13 dropped bits to nearest even.
    let h = ((e + 15) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h += 1; // may carry into exponent: still correct
    return sign | h;
  }
  if (e < -25) return sign; // below half the smallest subnormal: rounds to zero
  // Subnormal: value = mant24 * 2^(e-23), fp16 subnormal unit is 2^-24.
  mant |= 0x800000;
  const shift = -e - 1; // number of bits dropped from the 24-bit significand: (e-23) - (-24) = e + 1 → shift = -(e+1)
  const h = mant >>> shift;
  const rest = mant & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  let r = h;
  if (rest > half || (rest === half && (h & 1) === 1)) r += 1;
  return sign | r;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Read element i of a float tensor's storage as a JS number (exactly the stored value). */
export function readFloat(dtype: FloatDType, data: Float32Array | Uint16Array, i: number): number {
  if (dtype === 'f32') return data[i];
  if (dtype === 'f16') return f16ToF32(data[i]);
  return bf16ToF32(data[i]);
}

/** Store x into element i of a float tensor's storage, rounding to the dtype. */
export function writeFloat(dtype: FloatDType, data: Float32Array | Uint16Array, i: number, x: number): void {
  if (dtype === 'f32') data[i] = x;
  else if (dtype === 'f16') data[i] = f32ToF16(x);
  else data[i] = f32ToBf16(x);
}

/** The bit pattern of 1.0 in each float dtype (weights are 0 or 1). */
export const ONE_BITS: Readonly<Record<FloatDType, number>> = { f32: 0x3f800000, f16: 0x3c00, bf16: 0x3f80 };
