/**
 * The only module that names concrete backends. The CUDA backend is loaded through a dynamic import, so CPU-only
 * hosts never load koffi or look for CUDA libraries unless asked to (or 'auto' is used, which tries CUDA first
 * and falls back to the CPU, saying why).
 */

import type { Backend, DType } from './backend/backend.js';
import { CpuBackend } from './backend/cpu/cpu-backend.js';
import { LightningMoeError, UnsupportedError } from './util/errors.js';

/** Where a model runs: 'cuda' (an NVIDIA GPU), 'cpu' (the fp32 reference), or 'auto' (CUDA when usable). */
export type Device = 'cpu' | 'cuda' | 'auto';

export interface BackendChoice {
  readonly backend: Backend;
  /** Activation and KV-cache dtype of this backend. */
  readonly activationDType: DType;
  /** Storage dtype of the weights (routers stay fp32). */
  readonly weightDType: DType;
  /** Human-readable device name, e.g. "NVIDIA H200" or "cpu". */
  readonly deviceName: string;
  /** Set when 'auto' fell back to the CPU: why CUDA was not used. */
  readonly fallbackReason?: string;
}

export interface CreateBackendOptions {
  /** Weight storage: 'bf16' (the CUDA default; emulated exactly on the CPU) or 'f32' (the CPU default). */
  readonly weightDType?: 'bf16' | 'f32';
  /** Called once per kernel file NVRTC compiles or loads from its cache. */
  readonly onCompile?: (e: { file: string; cached: boolean; seconds: number }) => void;
}

export async function createBackend(device: Device, options: CreateBackendOptions = {}): Promise<BackendChoice> {
  if (device === 'cpu') return cpuChoice(options.weightDType);
  if (device !== 'cuda' && device !== 'auto') {
    throw new UnsupportedError(`unknown device "${String(device)}" (expected "cuda", "cpu" or "auto")`);
  }
  try {
    const { CudaBackend } = await import('./backend/cuda/cuda-backend.js');
    if (options.weightDType === 'f32') throw new UnsupportedError('weightDType "f32" is not supported on the CUDA backend (weights are bf16 there)');
    const backend = new CudaBackend({ onCompile: options.onCompile });
    return { backend, activationDType: 'bf16', weightDType: 'bf16', deviceName: backend.ctx.info.name };
  } catch (e) {
    if (device === 'cuda') throw e;
    const reason = e instanceof LightningMoeError ? e.message : `CUDA backend unavailable: ${(e as Error).message}`;
    return { ...cpuChoice(options.weightDType), fallbackReason: reason };
  }
}

function cpuChoice(weightDType: 'bf16' | 'f32' = 'f32'): BackendChoice {
  return { backend: new CpuBackend(), activationDType: 'f32', weightDType, deviceName: 'cpu' };
}
