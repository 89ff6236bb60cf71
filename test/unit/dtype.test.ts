/**
 * Tests for src/util/dtype.ts: bf16 rounding (ties to even, NaN, overflow), exact f16 decoding (subnormals, inf,
 * NaN), f64 narrowing, and byte decoding from unaligned buffers, as used by the safetensors loader (SERVING.md §9).
 */

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  bf16BitsToF32,
  bf16ToF32,
  decodeToFloat32,
  f16BitsToF32,
  f16ToF32,
  f32ToBf16,
  f32ToBf16Bits,
  f64ToF32,
  roundBf16,
} from '../../src/util/dtype.js';
import { InvalidArgumentError, UnsupportedError } from '../../src/util/errors.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** The float32 whose bit pattern is `bits`. */
function fromBits(bits: number): number {
  u32[0] = bits;
  return f32[0];
}

test('f32ToBf16Bits rounds exact halfway cases to the even neighbour', () => {
  assert.equal(f32ToBf16Bits(1), 0x3f80);
  // 0x3f80_8000 is exactly between 0x3f80 (even) and 0x3f81 (odd).
  assert.equal(f32ToBf16Bits(fromBits(0x3f808000)), 0x3f80);
  // 0x3f81_8000 is exactly between 0x3f81 (odd) and 0x3f82 (even).
  assert.equal(f32ToBf16Bits(fromBits(0x3f818000)), 0x3f82);
  assert.equal(f32ToBf16Bits(fromBits(0x3f808001)), 0x3f81, 'just above half rounds up');
  assert.equal(f32ToBf16Bits(fromBits(0x3f807fff)), 0x3f80, 'just below half rounds down');
  assert.equal(f32ToBf16Bits(fromBits(0xbf808000)), 0xbf80, 'negative tie to even');
  assert.equal(f32ToBf16Bits(fromBits(0xbf818000)), 0xbf82);
  // Subnormals: a tie at the very bottom goes to zero, the next one up to 2.
  assert.equal(f32ToBf16Bits(fromBits(0x00008000)), 0x0000);
  assert.equal(f32ToBf16Bits(fromBits(0x00018000)), 0x0002);
  assert.equal(f32ToBf16Bits(fromBits(0x00000001)), 0x0000);
  // A carry out of the mantissa bumps the exponent.
  assert.equal(f32ToBf16Bits(fromBits(0x3fffffff)), 0x4000);
});

test('roundBf16 returns the rounded value', () => {
  assert.equal(roundBf16(1 + 2 ** -8), 1, 'tie between 1 and 1+2^-7 goes to 1');
  assert.equal(roundBf16(1 + 3 * 2 ** -8), 1 + 2 ** -6, 'tie between 1+2^-7 and 1+2^-6 goes to 1+2^-6');
  assert.equal(roundBf16(-(1 + 3 * 2 ** -8)), -(1 + 2 ** -6));
  assert.equal(roundBf16(3.140625), 3.140625, 'a bf16 value is unchanged');
  assert.equal(roundBf16(Math.PI), 3.140625);
  assert.ok(Object.is(roundBf16(-0), -0));
});

test('f32ToBf16Bits: infinities, overflow and NaN', () => {
  assert.equal(f32ToBf16Bits(Infinity), 0x7f80);
  assert.equal(f32ToBf16Bits(-Infinity), 0xff80);
  assert.equal(f32ToBf16Bits(fromBits(0x7f7fffff)), 0x7f80, 'max float32 rounds up to inf');
  assert.equal(f32ToBf16Bits(fromBits(0x7f7f7fff)), 0x7f7f, 'below the midpoint stays finite');
  assert.equal(f32ToBf16Bits(-0), 0x8000);
  const isBf16NaN = (b: number): boolean => (b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0;
  const nan = f32ToBf16Bits(NaN);
  assert.ok(isBf16NaN(nan) && (nan & 0x40) !== 0, `NaN -> quiet NaN, got 0x${nan.toString(16)}`);
  // A float32 NaN whose payload sits only in the low 16 bits would truncate to inf; it must stay NaN.
  const low = f32ToBf16Bits(fromBits(0x7f800001));
  assert.ok(isBf16NaN(low), `signalling NaN stays NaN, got 0x${low.toString(16)}`);
  const neg = f32ToBf16Bits(fromBits(0xffc12345));
  assert.ok(isBf16NaN(neg) && (neg & 0x8000) !== 0, 'NaN keeps its sign');
  assert.ok(Number.isNaN(roundBf16(NaN)));
  assert.equal(roundBf16(Infinity), Infinity);
  assert.equal(roundBf16(3.5e38), Infinity, 'overflow rounds to inf');
});

test('bf16 decode is exact and round-trips every non-NaN pattern', () => {
  const src = new Uint16Array(65536);
  for (let i = 0; i < 65536; i++) src[i] = i;
  const dst = new Float32Array(65536);
  bf16ToF32(src, dst);
  const dstBits = new Uint32Array(dst.buffer);
  for (let b = 0; b < 65536; b++) {
    assert.equal(dstBits[b], b << 16 >>> 0);
    const isNaN = (b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0;
    if (!isNaN) assert.equal(f32ToBf16Bits(bf16BitsToF32(b)), b);
  }
  // The bulk encoder matches the scalar one.
  const back = new Uint16Array(65536);
  f32ToBf16(dst, back);
  const vals = [0, 1, fromBits(0x3f808000), fromBits(0x3f818000), NaN, -Infinity, fromBits(0x7f7fffff), 1e-40];
  const enc = new Uint16Array(vals.length);
  f32ToBf16(Float32Array.from(vals), enc);
  assert.deepEqual([...enc], vals.map((v) => f32ToBf16Bits(v)));
});

test('f16 decode: normals, subnormals, zeros, infinities, NaN', () => {
  assert.equal(f16BitsToF32(0x3c00), 1);
  assert.equal(f16BitsToF32(0xc000), -2);
  assert.equal(f16BitsToF32(0x7bff), 65504, 'max half');
  assert.equal(f16BitsToF32(0x0400), 2 ** -14, 'min normal');
  assert.equal(f16BitsToF32(0x0001), 2 ** -24, 'min subnormal');
  assert.equal(f16BitsToF32(0x0200), 2 ** -15);
  assert.equal(f16BitsToF32(0x03ff), 1023 * 2 ** -24, 'max subnormal');
  assert.equal(f16BitsToF32(0x8001), -(2 ** -24));
  assert.ok(Object.is(f16BitsToF32(0x8000), -0));
  assert.ok(Object.is(f16BitsToF32(0x0000), 0));
  assert.equal(f16BitsToF32(0x7c00), Infinity);
  assert.equal(f16BitsToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16BitsToF32(0x7e00)));
  assert.ok(Number.isNaN(f16BitsToF32(0x7c01)), 'signalling half NaN is not inf');
});

test('bulk f16ToF32 matches an independent formula for all 65536 patterns', () => {
  const src = new Uint16Array(65536);
  for (let i = 0; i < 65536; i++) src[i] = i;
  const dst = new Float32Array(65536 + 3);
  f16ToF32(src, dst, 3);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    const want = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
    const got = dst[h + 3];
    if (Number.isNaN(want)) assert.ok(Number.isNaN(got), `0x${h.toString(16)}`);
    else assert.ok(Object.is(got, want), `0x${h.toString(16)}: expected ${want}, got ${got}`);
  }
});

test('f64ToF32 rounds to nearest even and overflows to inf', () => {
  const src = Float64Array.from([1 + 2 ** -24, 1 + 3 * 2 ** -24, 1e40, -1e40, NaN, 0.1]);
  const dst = new Float32Array(src.length);
  f64ToF32(src, dst);
  assert.equal(dst[0], 1, 'tie goes to even (1)');
  assert.equal(dst[1], 1 + 2 ** -22, 'tie goes to even (1+2^-22)');
  assert.equal(dst[2], Infinity);
  assert.equal(dst[3], -Infinity);
  assert.ok(Number.isNaN(dst[4]));
  assert.equal(dst[5], Math.fround(0.1));
});

test('decodeToFloat32 reads little-endian bytes at any alignment', () => {
  const values = [1.5, -2.25, 3.140625, 0, -0.5, 65504, 2 ** -24];
  const cases: { dtype: string; size: number; put: (dv: DataView, at: number, v: number) => void }[] = [
    { dtype: 'F32', size: 4, put: (dv, at, v) => dv.setFloat32(at, v, true) },
    { dtype: 'F64', size: 8, put: (dv, at, v) => dv.setFloat64(at, v, true) },
    { dtype: 'BF16', size: 2, put: (dv, at, v) => dv.setUint16(at, f32ToBf16Bits(v), true) },
    { dtype: 'F16', size: 2, put: (dv, at, v) => dv.setUint16(at, f16Bits(v), true) },
  ];
  for (const { dtype, size, put } of cases) {
    for (const misalign of [0, 1, 3]) {
      const buf = new ArrayBuffer(misalign + values.length * size);
      const dv = new DataView(buf, misalign);
      values.forEach((v, i) => put(dv, i * size, v));
      const bytes = new Uint8Array(buf, misalign);
      const dst = new Float32Array(values.length + 2).fill(7);
      const n = decodeToFloat32(bytes, dtype, dst, 1);
      assert.equal(n, values.length);
      assert.equal(dst[0], 7, 'nothing written before dstOffset');
      assert.equal(dst[values.length + 1], 7, 'nothing written after the decoded values');
      const want = dtype === 'BF16' ? values.map(roundBf16) : values;
      assert.deepEqual([...dst.subarray(1, 1 + values.length)], want, `${dtype} at byte offset ${misalign}`);
    }
  }
});

/** Half bit patterns for the exactly-representable test values above. */
function f16Bits(v: number): number {
  const table: Record<string, number> = {
    '1.5': 0x3e00,
    '-2.25': 0xc080,
    '3.140625': 0x4248,
    '0': 0x0000,
    '-0.5': 0xb800,
    '65504': 0x7bff,
    [String(2 ** -24)]: 0x0001,
  };
  const b = table[String(v)];
  assert.ok(b !== undefined, `no half pattern for ${v}`);
  assert.equal(f16BitsToF32(b), v);
  return b;
}

test('decodeToFloat32 refuses bad input with typed errors', () => {
  const dst = new Float32Array(4);
  assert.throws(() => decodeToFloat32(new Uint8Array(8), 'I64', dst), UnsupportedError);
  assert.throws(() => decodeToFloat32(new Uint8Array(3), 'BF16', dst), InvalidArgumentError);
  assert.throws(() => decodeToFloat32(new Uint8Array(20), 'F32', dst), InvalidArgumentError, 'dst too small');
  assert.throws(() => decodeToFloat32(new Uint8Array(8), 'F32', dst, 3), InvalidArgumentError, 'offset too far');
  assert.throws(() => bf16ToF32(new Uint16Array(5), dst), InvalidArgumentError);
});
