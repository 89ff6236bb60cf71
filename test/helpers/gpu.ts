/**
 * GPU test support: a CUDA backend when one can be created (skip reason otherwise), random data, and relative-error
 * comparison against the CPU backend / float64 references. GPU tests live in test/gpu/ and run with
 * `npm run test:gpu`; without a driver or GPU every test skips with the reason.
 */
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import type { Backend, DType, Tensor } from '../../src/backend/backend.js';
import { Rng } from '../../src/engine/sampling.js';
import { roundBf16 } from '../../src/util/dtype.js';

export interface Gpu {
  readonly backend: Backend & { synchronize(): void };
}

let cached: { gpu?: Gpu; reason?: string } | undefined;

/** The process-wide CUDA backend, or the reason there is none. */
export async function getGpu(): Promise<{ gpu?: Gpu; reason?: string }> {
  if (cached) return cached;
  if (process.env.LMOE_SKIP_GPU) return (cached = { reason: 'LMOE_SKIP_GPU is set' });
  try {
    const { CudaBackend } = await import('../../src/backend/cuda/cuda-backend.js');
    const backend = new CudaBackend();
    cached = { gpu: { backend } };
  } catch (e) {
    cached = { reason: `no usable CUDA device: ${(e as Error).message}` };
  }
  return cached;
}

export const cpu = new CpuBackend();

/** Standard normal values (Box–Muller), scaled. */
export function randn(rng: Rng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(rng.next(), 1e-12), v = rng.next();
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

/** Values rounded to bf16, so the GPU and the CPU start from identical inputs. */
export function bf16Values(a: Float32Array): Float32Array {
  return a.map(roundBf16);
}

/** Uploads the same (bf16-representable) data to the GPU as `dtype` and to the CPU as f32. */
export function pair(gpu: Gpu, shape: number[], dtype: DType, data: Float32Array | Int32Array): { g: Tensor; c: Tensor } {
  const g = gpu.backend.upload(shape, dtype, data);
  const c = cpu.upload(shape, dtype === 'i32' ? 'i32' : 'f32', data);
  return { g, c };
}

/** ‖a − b‖ / ‖b‖ with NaN counting as failure (returns Infinity). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    if (Number.isNaN(d)) return Infinity;
    num += d * d;
    den += b[i] * b[i];
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

/** Max |a − b| / max |b|. */
export function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0, s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (Number.isNaN(d)) return Infinity;
    m = Math.max(m, d);
    s = Math.max(s, Math.abs(b[i]));
  }
  return m / Math.max(s, 1e-30);
}

/** Fills a GPU tensor with NaN bits (0xFFFF per 16-bit half) so unwritten outputs are caught. */
export function poison(gpu: Gpu, t: Tensor): void {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const bytes = n * (t.dtype === 'bf16' || t.dtype === 'f16' ? 2 : 4);
  const c = t as unknown as { ptr: bigint };
  const b = gpu.backend as unknown as { ctx: { memsetD8(p: bigint, v: number, n: number): void } };
  b.ctx.memsetD8(c.ptr, 0xff, bytes);
}

export { Rng };
