/**
 * What an op wrapper (ops/*.ts) needs from the CUDA backend: kernel launches that turn into no-ops during graph
 * replay, per-call metadata tables in the pinned/device ring, named scratch buffers with stable addresses, cuBLAS,
 * and the device context. Wrappers compute grids and shared memory; kernels live in kernels/<family>.cu.
 */

import type { Cublas } from './cublas.js';
import type { CudaContext, DevicePtr, KernelArg } from './driver.js';

export interface OpRuntime {
  readonly ctx: CudaContext;
  readonly blas: Cublas;
  /** True while a graph replay re-runs the host side: launch() and cuBLAS calls must be skipped. */
  readonly replaying: boolean;
  /** Launches kernel `name` of kernels/<file>.cu (skipped while replaying). */
  launch(file: string, name: string, grid: readonly number[], block: readonly number[], sharedBytes: number, args: readonly KernelArg[]): void;
  /** Per-call tables: copied to device memory before the next kernel on the stream runs. */
  metaI32(values: ArrayLike<number>): DevicePtr;
  metaF32(values: ArrayLike<number>): DevicePtr;
  metaPtrs(values: readonly bigint[]): DevicePtr;
  /** A device buffer of at least `bytes`, reused across calls under `name` (contents undefined). */
  scratch(name: string, bytes: number): DevicePtr;
  /** Downloads `bytes` of device memory (synchronizes the stream). */
  download(dst: ArrayBufferView, src: DevicePtr, bytes: number): void;
}

export const i32 = (v: number): KernelArg => ({ i32: v });
export const f32 = (v: number): KernelArg => ({ f32: v });
export const i64 = (v: number): KernelArg => ({ i64: v });

/** Grid size for a grid-stride loop over n elements. */
export function gridFor(n: number, threads = 256): number {
  return Math.max(1, Math.min(Math.ceil(n / threads), 132 * 16));
}
