/**
 * AdamW with decoupled weight decay over a ParamSet, global-norm gradient clipping, and the learning-rate schedule
 * (linear warmup, then cosine decay to a floor). Moments are fp32 on the GPU / f64 on the CPU, like the master
 * weights.
 */

import type { TrainBackend } from './backend.js';
import { ParamSet } from './params.js';

export interface AdamWOptions {
  readonly lr: number;
  readonly minLr: number;
  readonly warmupSteps: number;
  readonly totalSteps: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** Clip the global gradient norm to this (0 = no clipping). */
  readonly clip: number;
}

/** Learning rate at 1-based step `step`: linear warmup to lr, cosine to minLr at totalSteps, minLr after. */
export function learningRate(o: Pick<AdamWOptions, 'lr' | 'minLr' | 'warmupSteps' | 'totalSteps'>, step: number): number {
  if (o.warmupSteps > 0 && step <= o.warmupSteps) return (o.lr * step) / o.warmupSteps;
  const span = Math.max(1, o.totalSteps - o.warmupSteps);
  const t = Math.min(1, (step - o.warmupSteps) / span);
  return o.minLr + 0.5 * (o.lr - o.minLr) * (1 + Math.cos(Math.PI * t));
}

export class AdamW {
  readonly m: ParamSet;
  readonly v: ParamSet;
  private readonly normSq;

  constructor(
    private readonly backend: TrainBackend,
    private readonly params: ParamSet,
    private readonly grads: ParamSet,
    readonly options: AdamWOptions,
    moments?: { m: readonly Float64Array[]; v: readonly Float64Array[] },
  ) {
    this.m = new ParamSet(backend, params.config, params.specs, moments?.m);
    this.v = new ParamSet(backend, params.config, params.specs, moments?.v);
    this.normSq = backend.zeros([1], 'float');
  }

  /** The global L2 norm of the gradients (one host sync). */
  gradNorm(): number {
    const b = this.backend;
    b.fillZero(this.normSq);
    for (const g of this.grads.tensors) b.sumSquares(this.normSq, g);
    return Math.sqrt(b.read(this.normSq)[0]);
  }

  /** One update at 1-based `step`; returns the learning rate used and the gradient norm before clipping. */
  step(step: number): { lr: number; gradNorm: number } {
    const o = this.options;
    const gradNorm = this.gradNorm();
    const clipScale = o.clip > 0 && gradNorm > o.clip ? o.clip / gradNorm : 1;
    const lr = learningRate(o, step);
    // A non-finite norm means a diverged step: skip the update rather than write NaNs into the weights.
    if (!Number.isFinite(gradNorm)) return { lr, gradNorm };
    // One tensor per spec: a tied lm_head is the embedding itself, not a second parameter (params.ts).
    this.params.specs.forEach((s, i) => {
      this.backend.adamw(this.params.tensors[i], this.grads.tensors[i], this.m.tensors[i], this.v.tensors[i], {
        lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: s.noDecay ? 0 : o.weightDecay, step, gradScale: clipScale,
      });
    });
    return { lr, gradNorm };
  }

  free(): void {
    this.m.free();
    this.v.free();
    this.backend.free(this.normSq);
  }
}
