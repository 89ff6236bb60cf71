/**
 * Lightning and softmax attention, forward and backward, in float64 on packed documents (the CPU training
 * reference). PLACEHOLDER: signatures fixed, bodies to be written (owned by the cpu-sequence work).
 */

import { UnsupportedError } from '../../util/errors.js';

/** out[T, H·Dh] from qkv[T, H·3·Dh]; offsets: document boundaries [count + 1]. */
export function lightningForward64(out: Float64Array, qkv: Float64Array, slopes: Float64Array, offsets: Int32Array, H: number, Dh: number, blockSize: number): void {
  void out, qkv, slopes, offsets, H, Dh, blockSize;
  throw new UnsupportedError('lightningForward64 is not written yet');
}

/** dQkv[T, H·3·Dh] (overwritten) from dOut[T, H·Dh]. */
export function lightningBackward64(dQkv: Float64Array, dOut: Float64Array, qkv: Float64Array, slopes: Float64Array, offsets: Int32Array, H: number, Dh: number, blockSize: number): void {
  void dQkv, dOut, qkv, slopes, offsets, H, Dh, blockSize;
  throw new UnsupportedError('lightningBackward64 is not written yet');
}

/** out[T, H, Dh], lse[T, H] from q[T, H, Dh], k/v[T, Hkv, Dh]; causal within each document. */
export function attentionForward64(out: Float64Array, lse: Float64Array, q: Float64Array, k: Float64Array, v: Float64Array, offsets: Int32Array, H: number, Hkv: number, Dh: number, scale: number): void {
  void out, lse, q, k, v, offsets, H, Hkv, Dh, scale;
  throw new UnsupportedError('attentionForward64 is not written yet');
}

/** dq[T, H, Dh], dk/dv[T, Hkv, Dh] (overwritten). */
export function attentionBackward64(dq: Float64Array, dk: Float64Array, dv: Float64Array, dOut: Float64Array, q: Float64Array, k: Float64Array, v: Float64Array, out: Float64Array, lse: Float64Array, offsets: Int32Array, H: number, Hkv: number, Dh: number, scale: number): void {
  void dq, dk, dv, dOut, q, k, v, out, lse, offsets, H, Hkv, Dh, scale;
  throw new UnsupportedError('attentionBackward64 is not written yet');
}
