/**
 * Numeric conversions between the float formats found in checkpoints (BF16, F16, F64, F32) and float32.
 *
 * Used by the safetensors loader (SERVING.md §9) to decode tensor bytes, and by anything that needs to emulate
 * bf16 storage on the CPU (`roundBf16`). Bulk converters write into a caller-provided Float32Array and allocate
 * nothing per element. Checkpoint bytes are little-endian; the typed-array fast paths are used only on
 * little-endian hosts and on aligned input, everything else goes through a DataView.
 */

import { InvalidArgumentError, UnsupportedError } from './errors.js';

/** The float dtypes `decodeToFloat32` understands (safetensors spelling). */
export type FloatDType = 'F32' | 'BF16' | 'F16' | 'F64';

/** Bytes per element of each `FloatDType`. */
export const FLOAT_DTYPE_BYTES: Readonly<Record<FloatDType, number>> = Object.freeze({ F32: 4, BF16: 2, F16: 2, F64: 8 });

/** Whether `dtype` is one of the float dtypes `decodeToFloat32` decodes. */
export function isFloatDType(dtype: string): dtype is FloatDType {
  return dtype === 'F32' || dtype === 'BF16' || dtype === 'F16' || dtype === 'F64';
}

/** True on little-endian hosts, where typed arrays can view checkpoint bytes directly. */
export const HOST_LITTLE_ENDIAN: boolean = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// One scratch word shared by the scalar helpers: reinterpreting float bits through it avoids an allocation per call.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

function checkRange(what: string, dst: Float32Array, dstOffset: number, count: number): void {
  if (!Number.isInteger(dstOffset) || dstOffset < 0 || dstOffset + count > dst.length) {
    throw new InvalidArgumentError(
      `${what}: destination too small: expected room for ${count} values at offset ${dstOffset}, got length ${dst.length}`,
      { param: 'dstOffset' },
    );
  }
}

/** A Uint32Array over the same memory as `dst[dstOffset .. dstOffset + count)`, for writing float bit patterns. */
function bitsView(dst: Float32Array, dstOffset: number, count: number): Uint32Array {
  return new Uint32Array(dst.buffer, dst.byteOffset + dstOffset * 4, count);
}

// ---------------------------------------------------------------------------------------------------------------
// Scalar conversions
// ---------------------------------------------------------------------------------------------------------------

/** The float32 value of a bf16 bit pattern (exact: bf16 is the top half of a float32). */
export function bf16BitsToF32(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

/** The float32 bit pattern of an IEEE half, exact for every input (subnormals, ±inf, NaN payloads). */
function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0; // inf, or NaN with its payload kept
  if (exp !== 0) return (sign | ((exp + (127 - 15)) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0; // ±0
  // Subnormal half: mant × 2^-24, which is a normal float32. Normalize the mantissa so its leading 1 is bit 10.
  let e = 127 - 15 + 1;
  let m = mant;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** The value of an IEEE half-precision bit pattern, exact. */
export function f16BitsToF32(bits: number): number {
  scratchU32[0] = f16BitsToF32Bits(bits & 0xffff);
  return scratchF32[0];
}

/**
 * The bf16 bit pattern nearest to `x`, rounding to nearest with ties to even; NaN stays NaN (quieted, sign and
 * top payload bits kept), overflow rounds to ±inf. `x` is first rounded to float32, as storing it in a
 * Float32Array would: this matches a float32 pipeline that rounds to bf16 (torch's `.to(bfloat16)`), which is
 * what the kernels we compare against do.
 */
export function f32ToBf16Bits(x: number): number {
  scratchF32[0] = x;
  const b = scratchU32[0];
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x0040) & 0xffff;
  // Adding 0x7fff plus the lowest kept bit rounds half-way cases towards the even neighbour. No NaN reaches here,
  // so the sum stays below 2^32 and a carry into the exponent is the correct round-up (to inf at the top).
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** `x` rounded to the nearest bf16 value (ties to even), as a number. */
export function roundBf16(x: number): number {
  scratchU32[0] = f32ToBf16Bits(x) << 16;
  return scratchF32[0];
}

// ---------------------------------------------------------------------------------------------------------------
// Bulk conversions from typed arrays (host byte order)
// ---------------------------------------------------------------------------------------------------------------

/** Writes the float32 values of the bf16 bit patterns in `src` to `dst` starting at `dstOffset`. */
export function bf16ToF32(src: Uint16Array, dst: Float32Array, dstOffset = 0): void {
  const n = src.length;
  checkRange('bf16ToF32', dst, dstOffset, n);
  const out = bitsView(dst, dstOffset, n);
  for (let i = 0; i < n; i++) out[i] = src[i] << 16;
}

// 65536 float32 bit patterns, one per half; built on first use. A table lookup is exact and the fastest decode.
let f16Table: Uint32Array | undefined;

function getF16Table(): Uint32Array {
  if (f16Table === undefined) {
    const t = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) t[h] = f16BitsToF32Bits(h);
    f16Table = t;
  }
  return f16Table;
}

/** Writes the float32 values of the IEEE half bit patterns in `src` to `dst` starting at `dstOffset` (exact). */
export function f16ToF32(src: Uint16Array, dst: Float32Array, dstOffset = 0): void {
  const n = src.length;
  checkRange('f16ToF32', dst, dstOffset, n);
  const table = getF16Table();
  const out = bitsView(dst, dstOffset, n);
  for (let i = 0; i < n; i++) out[i] = table[src[i]];
}

/** Writes `src` rounded to float32 (nearest, ties to even) to `dst` starting at `dstOffset`. */
export function f64ToF32(src: Float64Array, dst: Float32Array, dstOffset = 0): void {
  checkRange('f64ToF32', dst, dstOffset, src.length);
  dst.set(src, dstOffset); // TypedArray.set converts each element with the float32 rounding of the spec
}

/** Writes the bf16 bit patterns of `src` (round to nearest even, see `f32ToBf16Bits`) to `dst` at `dstOffset`. */
export function f32ToBf16(src: Float32Array, dst: Uint16Array, dstOffset = 0): void {
  const n = src.length;
  if (!Number.isInteger(dstOffset) || dstOffset < 0 || dstOffset + n > dst.length) {
    throw new InvalidArgumentError(
      `f32ToBf16: destination too small: expected room for ${n} values at offset ${dstOffset}, got length ${dst.length}`,
      { param: 'dstOffset' },
    );
  }
  const bits = new Uint32Array(src.buffer, src.byteOffset, n);
  for (let i = 0; i < n; i++) {
    const b = bits[i];
    dst[dstOffset + i] =
      (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x0040 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding raw little-endian bytes (checkpoint data)
// ---------------------------------------------------------------------------------------------------------------

/**
 * Decodes little-endian `dtype` values (safetensors spelling: F32, BF16, F16 or F64) from `bytes` into `dst`
 * starting at `dstOffset`; returns the number of values written. `bytes` may start at any byte offset: unaligned
 * input is copied once (typed arrays need alignment) and big-endian hosts read through a DataView.
 * Other dtypes throw `UnsupportedError`.
 */
export function decodeToFloat32(bytes: Uint8Array, dtype: string, dst: Float32Array, dstOffset = 0): number {
  if (!isFloatDType(dtype)) {
    throw new UnsupportedError(`decodeToFloat32: expected dtype F32, BF16, F16 or F64, got ${String(dtype)}`);
  }
  const size = FLOAT_DTYPE_BYTES[dtype];
  if (bytes.byteLength % size !== 0) {
    throw new InvalidArgumentError(
      `decodeToFloat32: expected a byte length that is a multiple of ${size} for ${dtype}, got ${bytes.byteLength}`,
      { param: 'bytes' },
    );
  }
  const n = bytes.byteLength / size;
  checkRange('decodeToFloat32', dst, dstOffset, n);
  if (!HOST_LITTLE_ENDIAN) {
    decodeViaDataView(bytes, dtype, dst, dstOffset, n);
    return n;
  }
  let buf = bytes.buffer;
  let off = bytes.byteOffset;
  if (off % size !== 0) {
    const copy = bytes.slice(); // a fresh ArrayBuffer starting at offset 0, so aligned for any element size
    buf = copy.buffer;
    off = 0;
  }
  switch (dtype) {
    case 'F32':
      dst.set(new Float32Array(buf, off, n), dstOffset);
      break;
    case 'BF16':
      bf16ToF32(new Uint16Array(buf, off, n), dst, dstOffset);
      break;
    case 'F16':
      f16ToF32(new Uint16Array(buf, off, n), dst, dstOffset);
      break;
    case 'F64':
      f64ToF32(new Float64Array(buf, off, n), dst, dstOffset);
      break;
  }
  return n;
}

function decodeViaDataView(bytes: Uint8Array, dtype: FloatDType, dst: Float32Array, dstOffset: number, n: number): void {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'F32':
      for (let i = 0; i < n; i++) dst[dstOffset + i] = dv.getFloat32(i * 4, true);
      break;
    case 'BF16':
      for (let i = 0; i < n; i++) dst[dstOffset + i] = bf16BitsToF32(dv.getUint16(i * 2, true));
      break;
    case 'F16': {
      const table = getF16Table();
      for (let i = 0; i < n; i++) {
        scratchU32[0] = table[dv.getUint16(i * 2, true)];
        dst[dstOffset + i] = scratchF32[0];
      }
      break;
    }
    case 'F64':
      for (let i = 0; i < n; i++) dst[dstOffset + i] = dv.getFloat64(i * 8, true);
      break;
  }
}
