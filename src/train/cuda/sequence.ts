/**
 * Lightning and softmax attention, forward and backward, for training on the GPU (kernels/train_sequence.cu):
 * fp32 tensors, packed documents (offsets: i32 [docs + 1] on the device). PLACEHOLDER: signatures fixed, bodies
 * to be written (owned by the cuda-sequence work).
 */

import { UnsupportedError } from '../../util/errors.js';
import type { DevicePtr } from '../../backend/cuda/driver.js';
import type { OpRuntime } from '../../backend/cuda/runtime.js';

/** Shapes shared by the four entry points. T tokens in `docs` documents, the longest `maxLength`. */
export interface SequenceShape {
  readonly T: number;
  readonly docs: number;
  readonly maxLength: number;
  readonly H: number;
  readonly Hkv: number;
  readonly Dh: number;
}

/** out[T, H·Dh] from qkv[T, H·3·Dh] (per head q | k | v); slopes f32 [H]. */
export function lightningForwardCuda(rt: OpRuntime, s: SequenceShape, out: DevicePtr, qkv: DevicePtr, slopes: DevicePtr, offsets: DevicePtr, blockSize: number): void {
  void rt, s, out, qkv, slopes, offsets, blockSize;
  throw new UnsupportedError('lightningForwardCuda is not written yet');
}

/** dQkv[T, H·3·Dh] (overwritten) from dOut[T, H·Dh]. */
export function lightningBackwardCuda(rt: OpRuntime, s: SequenceShape, dQkv: DevicePtr, dOut: DevicePtr, qkv: DevicePtr, slopes: DevicePtr, offsets: DevicePtr, blockSize: number): void {
  void rt, s, dQkv, dOut, qkv, slopes, offsets, blockSize;
  throw new UnsupportedError('lightningBackwardCuda is not written yet');
}

/** out[T, H, Dh], lse f32 [T, H] from q[T, H, Dh], k/v[T, Hkv, Dh]; causal within each document. */
export function attentionForwardCuda(rt: OpRuntime, s: SequenceShape, out: DevicePtr, lse: DevicePtr, q: DevicePtr, k: DevicePtr, v: DevicePtr, offsets: DevicePtr, scale: number): void {
  void rt, s, out, lse, q, k, v, offsets, scale;
  throw new UnsupportedError('attentionForwardCuda is not written yet');
}

/** dq[T, H, Dh], dk/dv[T, Hkv, Dh] (overwritten). */
export function attentionBackwardCuda(rt: OpRuntime, s: SequenceShape, dq: DevicePtr, dk: DevicePtr, dv: DevicePtr, dOut: DevicePtr, q: DevicePtr, k: DevicePtr, v: DevicePtr, out: DevicePtr, lse: DevicePtr, offsets: DevicePtr, scale: number): void {
  void rt, s, dq, dk, dv, dOut, q, k, v, out, lse, offsets, scale;
  throw new UnsupportedError('attentionBackwardCuda is not written yet');
}
