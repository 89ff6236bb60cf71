/**
 * Errors of the CUDA backend: every driver / NVRTC / cuBLAS status other than success becomes one of these, naming
 * the API call, so "cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)" is what a user reads.
 */

import { LightningMoeError, type ErrorOptions } from '../../util/errors.js';

/** A CUDA driver call failed, or no usable driver / GPU / library was found. */
export class CudaError extends LightningMoeError {
  constructor(
    message: string,
    readonly call?: string,
    readonly status?: number,
    options: ErrorOptions = {},
  ) {
    super('CUDA', message, options);
  }
}

/** A kernel source failed to compile. `log` is NVRTC's program log. */
export class NvrtcCompileError extends LightningMoeError {
  constructor(
    message: string,
    readonly file: string,
    readonly log: string,
    readonly compileOptions: readonly string[],
  ) {
    super('CUDA', message);
  }
}

/** A cuBLAS call failed. */
export class CublasError extends LightningMoeError {
  constructor(message: string, readonly call: string, readonly status: number) {
    super('CUDA', message);
  }
}

/** A device allocation failed even after the allocator released its cached blocks. */
export class OutOfMemoryError extends LightningMoeError {
  constructor(
    readonly requestedBytes: number,
    readonly usedBytes: number,
    readonly freeBytes: number,
  ) {
    super(
      'OUT_OF_MEMORY',
      `out of GPU memory: could not allocate ${fmt(requestedBytes)} (${fmt(usedBytes)} in use by lightning-moe, ${fmt(freeBytes)} free on the device)`,
      { hint: 'use a smaller model, fewer sequences or a shorter context' },
    );
  }
}

function fmt(bytes: number): string {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}
