/**
 * GPU lightning attention (kernels/lightning.cu through ops/lightning.ts) against the CPU backend's fp32 reference
 * (CpuBackend.lightningAttention, itself checked against a float64 recurrence in test/backend/lightning.test.ts):
 * decode from prior states, prefill at lengths around the block size up to 64K tokens, with and without a carried-in
 * state, chunked prefill, several segments in one call, the real slopes of a 64-head model, head dims 128 and 64
 * (tensor-core kernels) and 16, 12, 7 (generic kernels), odd block sizes, and the tensor-core kernels against the
 * generic ones (LMOE_LIGHTNING_GENERIC=1).
 *
 * Inputs are bf16-representable SiLU outputs of random normals (positive-leaning, never all zero, so sums do not
 * cancel); prior states are fp32 normals. The output is poisoned (NaN bits) before every run, so unwritten rows
 * fail. The GPU applies the remote code's bf16 rounding points (bf16 QKᵀ, bf16 K⊙decay and block KV, bf16 outer
 * products in decode, bf16 output) and the tensor-core path also rounds P to bf16; the CPU keeps fp32. Expected
 * errors, measured on an emulation of the kernels (same rounding points, float64 reference): outputs ≈ 2–2.5e-3
 * norm-relative, worst single row (one token, one head) ≈ 5–7e-3, states ≈ 2e-3. Bounds below leave a 3–4× margin.
 * The CPU reference runs at ~1 GFLOP/s: long or wide cases check a subset of heads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LightningSegment, Tensor } from '../../src/backend/backend.js';
import { lightningSlopes } from '../../src/model/slopes.js';
import { bf16Values, cpu, getGpu, poison, randn, relErr, Rng } from '../helpers/gpu.js';

const { gpu, reason } = await getGpu();
const skip = gpu ? false : reason;

const OUT_TOL = 1e-2; // norm-relative over all outputs; expected ≈ 2.5e-3 (bf16 output rounding alone ≈ 1.1e-3)
const ROW_TOL = 3e-2; // worst (token, head) row; expected ≤ 1e-2
const STATE_TOL = 5e-3; // final fp32 states; expected ≈ 2e-3 (bf16 block KV / outer products)

/** One call's segments: rows [start, start + length) of sequence `seq`. */
interface Seg {
  readonly start: number;
  readonly length: number;
  readonly seq: number;
}

interface Case {
  readonly H: number;
  readonly Dh: number;
  readonly T: number;
  readonly B: number;
  readonly nseq: number;
  readonly calls: readonly (readonly Seg[])[];
  readonly slopes: Float32Array;
  readonly prior: boolean;
  readonly seed: number;
  /** Heads the CPU reference computes (default: all). */
  readonly heads?: readonly number[];
}

interface Data {
  readonly qkv: Float32Array; // [T, H, 3, Dh], bf16-representable
  readonly priors: Float32Array[]; // per sequence [H, Dh, Dh]
}

interface Result {
  readonly out: Float32Array; // [T, H·Dh] (subset heads: [T, Hs·Dh])
  readonly states: Float32Array[];
}

function makeData(c: Case): Data {
  const rng = new Rng(c.seed);
  const x = randn(rng, c.T * 3 * c.H * c.Dh, 0.5);
  const qkv = bf16Values(x.map((v) => v / (1 + Math.exp(-v)))); // SiLU, as the layer applies before attention
  const priors = Array.from({ length: c.nseq }, () => (c.prior ? randn(rng, c.H * c.Dh * c.Dh, 0.3) : new Float32Array(c.H * c.Dh * c.Dh)));
  return { qkv, priors };
}

/** Keeps heads `hs` of a [rows, H, w] array. */
function sliceHeads(a: Float32Array, rows: number, H: number, w: number, hs: readonly number[]): Float32Array {
  const out = new Float32Array(rows * hs.length * w);
  for (let r = 0; r < rows; r++) {
    hs.forEach((h, i) => out.set(a.subarray((r * H + h) * w, (r * H + h + 1) * w), (r * hs.length + i) * w));
  }
  return out;
}

function runGpu(c: Case, d: Data, generic = false): Result {
  const g = gpu!.backend;
  const saved = process.env.LMOE_LIGHTNING_GENERIC;
  if (generic) process.env.LMOE_LIGHTNING_GENERIC = '1';
  else delete process.env.LMOE_LIGHTNING_GENERIC;
  const owned: Tensor[] = [];
  const keep = <T extends Tensor>(t: T): T => (owned.push(t), t);
  try {
    const qkv = keep(g.upload([c.T, 3 * c.H * c.Dh], 'bf16', d.qkv));
    const slopes = keep(g.upload([c.H], 'f32', c.slopes));
    const states = d.priors.map((p) => keep(g.upload([c.H, c.Dh, c.Dh], 'f32', p)));
    const out = keep(g.alloc([c.T, c.H * c.Dh], 'bf16'));
    poison(gpu!, out);
    for (const call of c.calls) {
      const segs: LightningSegment[] = call.map((s) => ({ start: s.start, length: s.length, state: states[s.seq] }));
      g.lightningAttention(out, qkv, slopes, segs, c.B);
    }
    g.synchronize();
    const hs = c.heads;
    const o = g.toFloat32(out);
    return {
      out: hs ? sliceHeads(o, c.T, c.H, c.Dh, hs) : o,
      states: states.map((s) => (hs ? sliceHeads(g.toFloat32(s), 1, c.H, c.Dh * c.Dh, hs) : g.toFloat32(s))),
    };
  } finally {
    for (const t of owned) g.free(t);
    if (saved === undefined) delete process.env.LMOE_LIGHTNING_GENERIC;
    else process.env.LMOE_LIGHTNING_GENERIC = saved;
  }
}

function runCpu(c: Case, d: Data): Result {
  const hs = c.heads ?? Array.from({ length: c.H }, (_, h) => h);
  const Hs = hs.length;
  const qkv = cpu.upload([c.T, 3 * Hs * c.Dh], 'f32', sliceHeads(d.qkv, c.T, c.H, 3 * c.Dh, hs));
  const slopes = cpu.upload([Hs], 'f32', Float32Array.from(hs, (h) => c.slopes[h]));
  const states = d.priors.map((p) => cpu.upload([Hs, c.Dh, c.Dh], 'f32', sliceHeads(p, 1, c.H, c.Dh * c.Dh, hs)));
  const out = cpu.zeros([c.T, Hs * c.Dh], 'f32');
  for (const call of c.calls) {
    cpu.lightningAttention(out, qkv, slopes, call.map((s) => ({ start: s.start, length: s.length, state: states[s.seq] })), c.B);
  }
  return { out: cpu.toFloat32(out), states: states.map((s) => cpu.toFloat32(s)) };
}

/** Max over rows of ‖a_r − b_r‖ / ‖b_r‖ (a row = one token of one head); NaN → Infinity. */
function worstRowErr(a: Float32Array, b: Float32Array, rowLen: number): number {
  let worst = 0;
  for (let r = 0; r < a.length / rowLen; r++) {
    let num = 0, den = 0;
    for (let i = r * rowLen; i < (r + 1) * rowLen; i++) {
      const d = a[i] - b[i];
      if (Number.isNaN(d)) return Infinity;
      num += d * d;
      den += b[i] * b[i];
    }
    worst = Math.max(worst, Math.sqrt(num / Math.max(den, 1e-30)));
  }
  return worst;
}

interface Errors {
  readonly out: number;
  readonly row: number;
  readonly state: number;
}

function compare(got: Result, want: Result, Dh: number): Errors {
  return {
    out: relErr(got.out, want.out),
    row: worstRowErr(got.out, want.out, Dh),
    state: Math.max(...got.states.map((s, i) => relErr(s, want.states[i]))),
  };
}

function assertErrors(e: Errors, what: string, tol = { out: OUT_TOL, row: ROW_TOL, state: STATE_TOL }): void {
  const msg = `${what}: out rel ${e.out.toExponential(2)} (< ${tol.out}), worst row ${e.row.toExponential(2)} (< ${tol.row}), state rel ${e.state.toExponential(2)} (< ${tol.state})`;
  assert.ok(e.out < tol.out && e.row < tol.row && e.state < tol.state, msg);
  console.log(`# ${msg}`);
}

/** GPU vs CPU for one case. */
function check(c: Case, what: string): Result {
  const d = makeData(c);
  const got = runGpu(c, d);
  assertErrors(compare(got, runCpu(c, d), c.Dh), what);
  return got;
}

/** A single sequence prefilled in one call. */
function prefill(H: number, Dh: number, T: number, B: number, slopes: Float32Array, prior: boolean, seed: number, heads?: number[]): Case {
  return { H, Dh, T, B, nseq: 1, calls: [[{ start: 0, length: T, seq: 0 }]], slopes, prior, seed, heads };
}

// Layer 0 of a 4-layer, 4-head model: s ≈ 0.25, 0.0625, 0.0156, 0.0039 (fast enough that a decay off by one token
// or one block shows far above bf16 noise).
const S4 = lightningSlopes(4, 0, 4);
const S2 = Float32Array.from([0.9, 0.02]);

test('decode: 5 sequences × 4 steps from prior states (Dh 128, 64, 12 and 7)', { skip }, () => {
  for (const Dh of [128, 64, 12, 7]) {
    const nseq = 5, steps = 4, H = 4;
    const calls = Array.from({ length: steps }, (_, k) => Array.from({ length: nseq }, (_, i) => ({ start: k * nseq + i, length: 1, seq: i })));
    check({ H, Dh, T: nseq * steps, B: 256, nseq, calls, slopes: S4, prior: true, seed: 100 + Dh }, `decode Dh=${Dh}`);
  }
});

test('prefill, one sequence, fresh state: T = 1, 2, 255, 256, 257, 1000, 4096 (Dh 128, B 256)', { skip }, () => {
  for (const T of [1, 2, 255, 256, 257, 1000, 4096]) check(prefill(2, 128, T, 256, S2, false, T), `prefill T=${T}`);
});

test('prefill with a carried-in state: T = 2, 257, 1000 (Dh 128)', { skip }, () => {
  for (const T of [2, 257, 1000]) check(prefill(2, 128, T, 256, S2, true, 10 + T), `prefill+state T=${T}`);
});

test('prefill, 65536 tokens (256 blocks), Dh 64, slow decay (head 1 checked)', { skip }, () => {
  // s = the slowest decays of a 64-head, 80-layer model: layer 0 head 63 and layer 78 head 63 (≈ 5e-5: the state
  // keeps nearly all 64K tokens). The CPU checks head 1 only (≈ 3 GFLOP of reference work).
  const slopes = Float32Array.from([lightningSlopes(64, 0, 80)[63], lightningSlopes(64, 78, 80)[63]]);
  check(prefill(2, 64, 65536, 256, slopes, true, 64, [1]), 'prefill T=65536');
});

test('chunked prefill (300 + 700 tokens in two calls) equals one call of 1000', { skip }, () => {
  const base = { H: 2, Dh: 128, T: 1000, B: 256, nseq: 1, slopes: S2, prior: true, seed: 77 };
  const one: Case = { ...base, calls: [[{ start: 0, length: 1000, seq: 0 }]] };
  const two: Case = { ...base, calls: [[{ start: 0, length: 300, seq: 0 }], [{ start: 300, length: 700, seq: 0 }]] };
  const d = makeData(one);
  const a = runGpu(one, d), b = runGpu(two, d);
  assertErrors(compare(b, runCpu(two, d), 128), 'chunked vs CPU');
  // Different block boundaries round differently (bf16 block KV): agreement within bf16 noise.
  assertErrors(compare(b, a, 128), 'chunked vs one call');
});

test('several segments in one call (decode and prefill mixed, each with its own state)', { skip }, () => {
  const lens = [5, 1, 300, 17, 1, 513, 256];
  const calls: Seg[] = [];
  let start = 0;
  lens.forEach((n, i) => {
    calls.push({ start, length: n, seq: i });
    start += n;
  });
  check({ H: 4, Dh: 128, T: start, B: 256, nseq: lens.length, calls: [calls], slopes: S4, prior: true, seed: 5 }, 'mixed segments Dh=128');
  check({ H: 4, Dh: 64, T: start, B: 256, nseq: lens.length, calls: [calls], slopes: S4, prior: true, seed: 6 }, 'mixed segments Dh=64');
});

test('64 heads, Dh 128, real slopes of layers 0 and 78 (L = 80): prefill 384 tokens, then 2 decode steps', { skip }, () => {
  const heads = [0, 1, 7, 31, 62, 63]; // the CPU reference checks these
  for (const layer of [0, 78]) {
    const slopes = lightningSlopes(64, layer, 80);
    const calls = [[{ start: 0, length: 384, seq: 0 }], [{ start: 384, length: 1, seq: 0 }], [{ start: 385, length: 1, seq: 0 }]];
    check({ H: 64, Dh: 128, T: 386, B: 256, nseq: 1, calls, slopes, prior: false, seed: 200 + layer, heads }, `64 heads layer ${layer}`);
  }
});

test('Dh 64 tensor-core path: T = 1000 with state; block sizes 100, 37 and 1', { skip }, () => {
  check(prefill(2, 64, 1000, 256, S2, true, 31), 'Dh=64 T=1000 B=256');
  check(prefill(2, 64, 450, 100, S2, true, 32), 'Dh=64 T=450 B=100');
  check(prefill(2, 64, 200, 37, S2, true, 33), 'Dh=64 T=200 B=37');
  check(prefill(2, 64, 5, 1, S2, true, 34), 'Dh=64 T=5 B=1');
  check(prefill(1, 128, 300, 200, S2.subarray(0, 1), false, 35), 'Dh=128 T=300 B=200 (row tiles 128..199)');
});

test('generic head dims: Dh 16 (T 700), Dh 12 (B 16, chunks 37 + 63), Dh 7', { skip }, () => {
  check(prefill(4, 16, 700, 256, S4, false, 41), 'Dh=16 T=700');
  check({ H: 3, Dh: 12, T: 100, B: 16, nseq: 1, calls: [[{ start: 0, length: 37, seq: 0 }], [{ start: 37, length: 63, seq: 0 }]], slopes: lightningSlopes(3, 1, 8), prior: true, seed: 42 }, 'Dh=12 B=16 37+63');
  check(prefill(2, 7, 300, 256, S2, true, 43), 'Dh=7 T=300');
});

test('tensor-core kernels agree with the generic kernels (Dh 128 and 64, T 1000, prior state)', { skip }, () => {
  for (const Dh of [128, 64]) {
    const c = prefill(2, Dh, 1000, 256, S2, true, 50 + Dh);
    const d = makeData(c);
    const tc = runGpu(c, d), gen = runGpu(c, d, true);
    assertErrors(compare(gen, runCpu(c, d), Dh), `generic Dh=${Dh} vs CPU`);
    // They differ by the tensor-core path's bf16 P and by accumulation order (occasional bf16 flips).
    assertErrors(compare(tc, gen, Dh), `tensor cores vs generic Dh=${Dh}`, { out: 5e-3, row: 2e-2, state: 1e-3 });
  }
});
