/**
 * Finite-difference gradient checks for the training ops (reusable by every test/train test).
 *
 *  - `gradCheck`: central differences of any scalar function of a Float64Array against an analytic gradient.
 *  - `checkOpGrads`: the same for a TrainBackend forward/backward pair, with the scalar loss L = Σ_o ⟨r_o, out_o⟩
 *    (+ an optional extra term) for fixed random r_o; the backward receives the r_o as its upstream gradients.
 *
 * The error reported is max_i |analytic_i − numeric_i| / max_i max(|analytic_i|, |numeric_i|): relative to the
 * gradient's largest component, so components that are (near) zero do not blow it up.
 */

import type { TTensor, TrainBackend } from '../../../src/train/backend.js';

/** A seeded uniform [0, 1) generator (mulberry32), so failures reproduce. */
export function makeRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n standard normal values (Box–Muller) times `scale`. */
export function randn(rng: () => number, n: number, scale = 1): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - rng(), v = rng();
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`dot: lengths ${a.length} and ${b.length}`);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export interface GradCheckResult {
  /** max_i |analytic_i − numeric_i| / scale. */
  readonly relErr: number;
  readonly maxAbsErr: number;
  /** The largest gradient component (analytic or numeric): the error's denominator. */
  readonly scale: number;
  /** The index with the largest absolute error. */
  readonly worst: number;
  readonly checked: number;
}

export interface GradCheckOptions {
  /** Central-difference step (default 1e-5: truncation ~h² and round-off ~1e-16/h balance near 1e-10 in f64). */
  readonly h?: number;
  /** Check only these components (default: all). */
  readonly indices?: Iterable<number>;
}

/** Compares `analytic` with (loss(x + h·e_i) − loss(x − h·e_i)) / 2h. `x` is restored before returning. */
export function gradCheck(loss: (x: Float64Array) => number, x: Float64Array, analytic: ArrayLike<number>, opts: GradCheckOptions = {}): GradCheckResult {
  if (analytic.length !== x.length) throw new Error(`gradCheck: ${analytic.length} gradient components for ${x.length} inputs`);
  const h = opts.h ?? 1e-5;
  const indices = opts.indices ?? x.keys();
  let maxAbsErr = 0, scale = 0, worst = -1, checked = 0;
  for (const i of indices) {
    const x0 = x[i];
    x[i] = x0 + h;
    const up = loss(x);
    x[i] = x0 - h;
    const down = loss(x);
    x[i] = x0;
    const numeric = (up - down) / (2 * h);
    const err = Math.abs(numeric - analytic[i]);
    if (err > maxAbsErr || worst < 0) {
      maxAbsErr = err;
      worst = i;
    }
    scale = Math.max(scale, Math.abs(numeric), Math.abs(analytic[i]));
    checked++;
  }
  return { relErr: scale > 0 ? maxAbsErr / scale : maxAbsErr, maxAbsErr, scale, worst, checked };
}

export interface OpGradCase {
  /** The float tensors to differentiate with respect to, by name; their current contents are the point. */
  readonly inputs: Readonly<Record<string, TTensor>>;
  /** Float outputs of the forward; L = Σ_o ⟨r_o, out_o⟩. */
  readonly outputs: readonly TTensor[];
  /** Runs the forward from the inputs' contents; must overwrite (or reset and refill) every output. */
  forward(): void;
  /** An extra scalar added to L after each forward (e.g. auxiliary losses); its gradient belongs in backward's. */
  extraLoss?(): number;
  /**
   * The analytic dL/d(input) for each name in `inputs`, given upstream gradients dOuts (one per output, holding
   * r_o). Called once, right after a forward at the unperturbed point.
   */
  backward(dOuts: readonly TTensor[]): Readonly<Record<string, Float64Array>>;
}

/** Runs the FD check of every input of `c`; inputs and outputs are left as at the unperturbed point. */
export function checkOpGrads(be: TrainBackend, c: OpGradCase, rng: () => number, opts: GradCheckOptions = {}): Record<string, GradCheckResult> {
  c.forward();
  const rs = c.outputs.map((o) => randn(rng, be.read(o).length));
  const dOuts = c.outputs.map((o, i) => be.upload(o.shape, 'float', rs[i]));
  const analytic = c.backward(dOuts);
  const loss = (): number => {
    c.forward();
    let l = c.extraLoss ? c.extraLoss() : 0;
    c.outputs.forEach((o, i) => (l += dot(rs[i], be.read(o))));
    return l;
  };
  const results: Record<string, GradCheckResult> = {};
  for (const [name, t] of Object.entries(c.inputs)) {
    const grad = analytic[name];
    if (!grad) throw new Error(`checkOpGrads: backward returned no gradient for ${name}`);
    const x = be.read(t);
    results[name] = gradCheck((xp) => (be.write(t, xp), loss()), x, grad, opts);
    be.write(t, x);
  }
  c.forward();
  return results;
}
