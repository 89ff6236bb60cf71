/**
 * Training tensors on the GPU: 'float' is f32, 'i32' is int32 (both 4 bytes), row-major, contiguous. Views share
 * their owner's storage.
 */

import { ShapeError } from '../../util/errors.js';
import type { DevicePtr } from '../../backend/cuda/driver.js';
import type { TrainDType, TTensor } from '../backend.js';

export class CudaTTensor implements TTensor {
  constructor(
    readonly shape: readonly number[],
    readonly dtype: TrainDType,
    readonly ptr: DevicePtr,
    /** True for the tensor that owns the allocation (views do not). */
    readonly owner: boolean,
  ) {}

  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get bytes(): number {
    return this.size * 4;
  }
}

export function cu(t: TTensor, what: string): CudaTTensor {
  if (!(t instanceof CudaTTensor)) throw new ShapeError(`${what}: expected a CUDA training tensor`);
  return t;
}

/** `t` with exactly these dims (undefined = any) and dtype. */
export function dims(t: TTensor, what: string, want: readonly (number | undefined)[], dtype: TrainDType = 'float'): CudaTTensor {
  const c = cu(t, what);
  const ok = c.shape.length === want.length && want.every((d, i) => d === undefined || d === c.shape[i]);
  if (!ok) throw new ShapeError(`${what}: expected shape [${want.map((d) => d ?? '?').join(', ')}], got [${c.shape.join(', ')}]`);
  if (c.dtype !== dtype) throw new ShapeError(`${what}: expected ${dtype}, got ${c.dtype}`);
  return c;
}

/** `t` read as rows of `cols` elements (any shape whose size is a multiple of cols): the row count. */
export function rowsOf(t: CudaTTensor, cols: number, what: string): number {
  if (t.dtype !== 'float') throw new ShapeError(`${what}: expected float, got ${t.dtype}`);
  if (cols <= 0 ? t.size !== 0 : t.size % cols !== 0) throw new ShapeError(`${what}: shape [${t.shape.join(', ')}] is not rows of ${cols}`);
  return cols > 0 ? t.size / cols : 0;
}

/** `t` has `n` elements and dtype. */
export function sized(t: TTensor, what: string, n: number, dtype: TrainDType = 'float'): CudaTTensor {
  const c = cu(t, what);
  if (c.size !== n) throw new ShapeError(`${what}: expected ${n} elements, got shape [${c.shape.join(', ')}]`);
  if (c.dtype !== dtype) throw new ShapeError(`${what}: expected ${dtype}, got ${c.dtype}`);
  return c;
}
