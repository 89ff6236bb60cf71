/**
 * Token sampling on the GPU (kernels/sampling.cu): one CTA of 1024 threads per row of fp32 logits. Temperature 0
 * (or topK 1) is argmax with ties to the lower id; otherwise temperature → top-k → top-p over the row (thresholds
 * found by histogram + radix selection, no sort), then a draw from a counter-based RNG keyed by (seed, step), so
 * the same seed and step give the same token on every run. The distribution is the CPU Sampler's
 * (src/engine/sampling.ts); only the sampled ids come back to the host.
 */

import type { SampleParams } from '../../backend.js';
import type { CudaTensor } from '../cuda-backend.js';
import { i32, type OpRuntime } from '../runtime.js';

/** Threads per row; the kernel is written for this block size. */
const SAMPLE_THREADS = 1024;

export function sampleTokens(rt: OpRuntime, out: CudaTensor, logits: CudaTensor, R: number, V: number, params: readonly SampleParams[]): void {
  const temps = rt.metaF32(params.map((p) => p.temperature));
  const topK = rt.metaI32(params.map((p) => p.topK));
  const topP = rt.metaF32(params.map((p) => p.topP));
  const seeds = rt.metaPtrs(params.map((p) => BigInt.asUintN(64, BigInt(p.seed))));
  const steps = rt.metaI32(params.map((p) => p.step));
  if (R === 0) return;
  rt.launch('sampling', 'sample_f32', [R], [SAMPLE_THREADS], 0, [out.ptr, logits.ptr, i32(V), temps, topK, topP, seeds, steps]);
}
