/**
 * CPU tensors: a typed array plus an element offset and a shape. f32 tensors hold Float32Array storage; i32 tensors
 * Int32Array. The CPU backend is the fp32 reference, so bf16/f16 requests are stored as f32 too (values that came
 * from bf16 checkpoints stay exact).
 */

import type { DType, Tensor } from '../backend.js';
import { ShapeError } from '../../util/errors.js';

export class CpuTensor implements Tensor {
  constructor(
    readonly shape: readonly number[],
    readonly dtype: DType,
    /** The whole storage; this tensor covers [offset, offset + size). */
    readonly storage: Float32Array | Int32Array,
    readonly offset: number,
  ) {}

  get size(): number {
    return numel(this.shape);
  }

  /** The tensor's elements as a subarray view (no copy). */
  get data(): Float32Array {
    if (!(this.storage instanceof Float32Array)) throw new ShapeError(`expected a float tensor, got ${this.dtype}`);
    return this.storage.subarray(this.offset, this.offset + this.size);
  }

  get ints(): Int32Array {
    if (!(this.storage instanceof Int32Array)) throw new ShapeError(`expected an i32 tensor, got ${this.dtype}`);
    return this.storage.subarray(this.offset, this.offset + this.size);
  }
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

export function asCpu(t: Tensor, what = 'tensor'): CpuTensor {
  if (!(t instanceof CpuTensor)) throw new ShapeError(`${what}: expected a CPU tensor`);
  return t;
}

/** Checks rank and the given dims (undefined = any) and returns the tensor's f32 data. */
export function f32(t: Tensor, what: string, dims?: readonly (number | undefined)[]): Float32Array {
  const c = asCpu(t, what);
  if (dims) checkShape(c, what, dims);
  return c.data;
}

export function i32(t: Tensor, what: string, dims?: readonly (number | undefined)[]): Int32Array {
  const c = asCpu(t, what);
  if (dims) checkShape(c, what, dims);
  return c.ints;
}

export function checkShape(t: Tensor, what: string, dims: readonly (number | undefined)[]): void {
  const ok = t.shape.length === dims.length && dims.every((d, i) => d === undefined || d === t.shape[i]);
  if (!ok) {
    const want = dims.map((d) => (d === undefined ? '?' : String(d))).join(', ');
    throw new ShapeError(`${what}: expected shape [${want}], got [${t.shape.join(', ')}]`);
  }
}
