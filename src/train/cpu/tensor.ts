/**
 * CPU training tensors: a typed array plus an element offset and a shape, as src/backend/cpu/tensor.ts but in
 * float64 (the training reference): `float` tensors hold Float64Array storage, `i32` tensors Int32Array. Views share
 * the storage of the tensor they were cut from.
 */

import type { TTensor, TrainDType } from '../backend.js';
import { ShapeError } from '../../util/errors.js';

export class CpuTrainTensor implements TTensor {
  constructor(
    readonly shape: readonly number[],
    readonly dtype: TrainDType,
    /** The whole storage; this tensor covers [offset, offset + size). */
    readonly storage: Float64Array | Int32Array,
    readonly offset: number,
  ) {}

  get size(): number {
    return numel(this.shape);
  }

  /** The tensor's elements as a subarray view (no copy). */
  get data(): Float64Array {
    if (!(this.storage instanceof Float64Array)) throw new ShapeError(`expected a float tensor, got ${this.dtype}`);
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

export function checkDims(shape: readonly number[]): void {
  for (const s of shape) {
    if (!Number.isSafeInteger(s) || s < 0) throw new ShapeError(`invalid tensor shape [${shape.join(', ')}]`);
  }
}

export function asTrain(t: TTensor, what = 'tensor'): CpuTrainTensor {
  if (!(t instanceof CpuTrainTensor)) throw new ShapeError(`${what}: expected a CPU training tensor`);
  return t;
}

/** Checks rank and the given dims (undefined = any) and returns the tensor's float data. */
export function f64(t: TTensor, what: string, dims?: readonly (number | undefined)[]): Float64Array {
  const c = asTrain(t, what);
  if (dims) checkShape(c, what, dims);
  if (c.dtype !== 'float') throw new ShapeError(`${what}: expected a float tensor, got ${c.dtype}`);
  return c.data;
}

/** Checks rank and the given dims (undefined = any) and returns the tensor's integers. */
export function i32(t: TTensor, what: string, dims?: readonly (number | undefined)[]): Int32Array {
  const c = asTrain(t, what);
  if (dims) checkShape(c, what, dims);
  if (c.dtype !== 'i32') throw new ShapeError(`${what}: expected an i32 tensor, got ${c.dtype}`);
  return c.ints;
}

export function checkShape(t: TTensor, what: string, dims: readonly (number | undefined)[]): void {
  const ok = t.shape.length === dims.length && dims.every((d, i) => d === undefined || d === t.shape[i]);
  if (!ok) {
    const want = dims.map((d) => (d === undefined ? '?' : String(d))).join(', ');
    throw new ShapeError(`${what}: expected shape [${want}], got [${t.shape.join(', ')}]`);
  }
}

/** The dims of a tensor of the given rank (for ops whose sizes are read off one operand). */
export function dimsOf(t: TTensor, what: string, rank: number): number[] {
  if (t.shape.length !== rank) throw new ShapeError(`${what}: expected rank ${rank}, got shape [${t.shape.join(', ')}]`);
  return [...t.shape];
}
