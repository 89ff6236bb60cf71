/**
 * The training sequence ops on the GPU (src/train/cuda/sequence.ts, kernels/train_sequence.cu) against float64
 * references written from the definitions (test/helpers/sequence64.ts: the naive per-token lightning recurrence and
 * its reverse recursion, naive causal GQA attention and its backward), themselves checked against central finite
 * differences in the first test (no GPU needed).
 *
 * Packed batches of uneven documents (length 1, lengths around and off the 32 / 64 tiles, up to 4096), H = 4,
 * Hkv ∈ {1, 2, 4}, Dh ∈ {32, 48, 64, 128}; fresh random inputs per case; every output poisoned (NaN bits) before
 * the run, so unwritten elements fail. fp32 throughout: the expected norm-relative error is ~1e-6 (measured on a
 * host emulation of the kernels: 2–5e-7); the bound is 1e-4. A 64K-token batch checks that every element is
 * written and compares selected documents.
 *
 * The ops take an OpRuntime: the CudaBackend is one (it implements OpRuntime), reached through a cast of the shared
 * test backend.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Tensor } from '../../src/backend/backend.js';
import type { CudaBackend, CudaTensor } from '../../src/backend/cuda/cuda-backend.js';
import { attentionBackwardCuda, attentionForwardCuda, lightningBackwardCuda, lightningForwardCuda, type SequenceShape } from '../../src/train/cuda/sequence.js';
import { getGpu, poison, randn, relErr, Rng } from '../helpers/gpu.js';
import { attentionBackwardRef, attentionForwardRef, lightningBackwardRef, lightningForwardRef } from '../helpers/sequence64.js';

const { gpu, reason } = await getGpu();
const skip = gpu ? false : reason;
const TOL = 1e-4;

/** Lengths with 1, tile multiples and tile ± 1 (lightning chunks and key tiles of 32, query tiles of 64). */
const LENGTHS = [1, 37, 64, 65, 200, 3, 513, 32, 31, 33];
const SLOPES = [1.5, 0.25, 0.0625, 0.0039];

function offsetsOf(lengths: readonly number[]): Int32Array {
  const o = new Int32Array(lengths.length + 1);
  lengths.forEach((l, i) => (o[i + 1] = o[i] + l));
  return o;
}

function shapeOf(lengths: readonly number[], H: number, Hkv: number, Dh: number): SequenceShape {
  return { T: lengths.reduce((a, b) => a + b, 0), docs: lengths.length, maxLength: Math.max(...lengths), H, Hkv, Dh };
}

/** Columns [part·w, (part + 1)·w) of every (row, head) of a [rows, H, parts·w] array. */
function part(a: ArrayLike<number>, H: number, w: number, p: number, parts: number): Float64Array {
  const rows = a.length / (H * parts * w);
  const out = new Float64Array(rows * H * w);
  for (let r = 0; r < rows * H; r++) for (let e = 0; e < w; e++) out[r * w + e] = a[r * parts * w + p * w + e];
  return out;
}

function countNonFinite(a: ArrayLike<number>): number {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) n++;
  return n;
}

function expectClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>): void {
  const bad = countNonFinite(got);
  assert.equal(bad, 0, `${what}: ${bad} non-finite (unwritten?) elements`);
  const e = relErr(got, want);
  assert.ok(e < TOL, `${what}: relative error ${e.toExponential(3)} (bound ${TOL})`);
}

// ------------------------------------------------------------------------------------------ device plumbing
class Dev {
  readonly rt: CudaBackend;
  private readonly owned: Tensor[] = [];
  constructor() {
    this.rt = gpu!.backend as unknown as CudaBackend;
  }
  upload(data: Float32Array | Int32Array): bigint {
    const t = this.rt.upload([data.length], data instanceof Int32Array ? 'i32' : 'f32', data);
    this.owned.push(t);
    return (t as CudaTensor).ptr;
  }
  /** A poisoned f32 output. */
  out(n: number): { t: Tensor; p: bigint } {
    const t = this.rt.alloc([n], 'f32');
    poison(gpu!, t);
    this.owned.push(t);
    return { t, p: (t as CudaTensor).ptr };
  }
  read(t: Tensor): Float32Array {
    return this.rt.toFloat32(t);
  }
  dispose(): void {
    for (const t of this.owned) this.rt.free(t);
  }
}

// ------------------------------------------------------------------------------------------ lightning
interface LightningRun {
  readonly out: Float32Array; // [T, H·Dh]
  readonly dQkv: Float32Array; // [T, H·3·Dh]
}

function runLightning(s: SequenceShape, offsets: Int32Array, qkv: Float32Array, dOut: Float32Array, slopes: Float32Array): LightningRun {
  const d = new Dev();
  try {
    const pq = d.upload(qkv), pd = d.upload(dOut), ps = d.upload(slopes), po = d.upload(offsets);
    const out = d.out(s.T * s.H * s.Dh), dQkv = d.out(s.T * 3 * s.H * s.Dh);
    lightningForwardCuda(d.rt, s, out.p, pq, ps, po, 256);
    lightningBackwardCuda(d.rt, s, dQkv.p, pd, pq, ps, po, 256);
    return { out: d.read(out.t), dQkv: d.read(dQkv.t) };
  } finally {
    d.dispose();
  }
}

function checkLightning(tag: string, H: number, Dh: number, offsets: ArrayLike<number>, qkv: ArrayLike<number>, dOut: ArrayLike<number>, slopes: Float32Array, got: LightningRun): void {
  expectClose(`${tag} out`, got.out, lightningForwardRef(qkv, slopes, offsets, H, Dh));
  const ref = lightningBackwardRef(dOut, qkv, slopes, offsets, H, Dh);
  ['dq', 'dk', 'dv'].forEach((name, p) => expectClose(`${tag} ${name}`, part(got.dQkv, H, Dh, p, 3), part(ref, H, Dh, p, 3)));
}

function lightningCase(lengths: readonly number[], Dh: number, slopes: readonly number[], seed: number): void {
  const H = slopes.length;
  const s = shapeOf(lengths, H, 1, Dh);
  const offsets = offsetsOf(lengths);
  const rng = new Rng(seed);
  const qkv = randn(rng, s.T * 3 * H * Dh, 0.7), dOut = randn(rng, s.T * H * Dh);
  const sl = Float32Array.from(slopes);
  checkLightning(`lightning Dh=${Dh} T=${s.T}`, H, Dh, offsets, qkv, dOut, sl, runLightning(s, offsets, qkv, dOut, sl));
}

// ------------------------------------------------------------------------------------------ attention
interface AttentionInputs {
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly dOut: Float32Array;
}

interface AttentionRun {
  readonly out: Float32Array;
  readonly lse: Float32Array;
  readonly dq: Float32Array;
  readonly dk: Float32Array;
  readonly dv: Float32Array;
}

function attentionInputs(s: SequenceShape, seed: number): AttentionInputs {
  const rng = new Rng(seed);
  return {
    q: randn(rng, s.T * s.H * s.Dh, 1.5),
    k: randn(rng, s.T * s.Hkv * s.Dh),
    v: randn(rng, s.T * s.Hkv * s.Dh),
    dOut: randn(rng, s.T * s.H * s.Dh),
  };
}

/** Forward, then the backward from the GPU's own out and lse (`backwards` times, for the determinism check). */
function runAttention(s: SequenceShape, offsets: Int32Array, x: AttentionInputs, scale: number, backwards = 1): AttentionRun[] {
  const d = new Dev();
  try {
    const pq = d.upload(x.q), pk = d.upload(x.k), pv = d.upload(x.v), pd = d.upload(x.dOut), po = d.upload(offsets);
    const out = d.out(s.T * s.H * s.Dh), lse = d.out(s.T * s.H);
    attentionForwardCuda(d.rt, s, out.p, lse.p, pq, pk, pv, po, scale);
    const runs: AttentionRun[] = [];
    for (let b = 0; b < backwards; b++) {
      const dq = d.out(s.T * s.H * s.Dh), dk = d.out(s.T * s.Hkv * s.Dh), dv = d.out(s.T * s.Hkv * s.Dh);
      attentionBackwardCuda(d.rt, s, dq.p, dk.p, dv.p, pd, pq, pk, pv, out.p, lse.p, po, scale);
      runs.push({ out: d.read(out.t), lse: d.read(lse.t), dq: d.read(dq.t), dk: d.read(dk.t), dv: d.read(dv.t) });
    }
    return runs;
  } finally {
    d.dispose();
  }
}

function checkAttention(tag: string, s: { H: number; Hkv: number; Dh: number }, offsets: ArrayLike<number>, x: AttentionInputs, scale: number, got: AttentionRun): void {
  const f = attentionForwardRef(x.q, x.k, x.v, offsets, s.H, s.Hkv, s.Dh, scale);
  expectClose(`${tag} out`, got.out, f.out);
  expectClose(`${tag} lse`, got.lse, f.lse);
  const b = attentionBackwardRef(x.dOut, x.q, x.k, x.v, offsets, s.H, s.Hkv, s.Dh, scale);
  expectClose(`${tag} dq`, got.dq, b.dq);
  expectClose(`${tag} dk`, got.dk, b.dk);
  expectClose(`${tag} dv`, got.dv, b.dv);
}

function attentionCase(lengths: readonly number[], Hkv: number, Dh: number, seed: number, backwards = 1): AttentionRun[] {
  const s = shapeOf(lengths, 4, Hkv, Dh);
  const offsets = offsetsOf(lengths);
  const x = attentionInputs(s, seed);
  const scale = 1 / Math.sqrt(Dh);
  const runs = runAttention(s, offsets, x, scale, backwards);
  checkAttention(`attention H=4 Hkv=${Hkv} Dh=${Dh} T=${s.T}`, s, offsets, x, scale, runs[0]);
  return runs;
}

// ------------------------------------------------------------------------------------------ tests
test('float64 references match central differences', () => {
  const rng = new Rng(5);
  const offsets = [0, 3, 4, 9], T = 9, H = 4, Hkv = 2, Dh = 4;
  const dot = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
    let s = 0;
    for (let i = 0; i < a.length; i++) s += a[i] * b[i];
    return s;
  };
  const fd = (what: string, loss: () => number, x: Float64Array, g: Float64Array): void => {
    for (let i = 0; i < x.length; i++) {
      const x0 = x[i], h = 1e-6;
      x[i] = x0 + h;
      const a = loss();
      x[i] = x0 - h;
      const b = loss();
      x[i] = x0;
      assert.ok(Math.abs((a - b) / (2 * h) - g[i]) < 1e-6 * Math.max(1, Math.abs(g[i])), `${what}[${i}]: ${(a - b) / (2 * h)} vs ${g[i]}`);
    }
  };
  const qkv = Float64Array.from(randn(rng, T * 3 * H * Dh)), dO = Float64Array.from(randn(rng, T * H * Dh));
  const slopes = [0.7, 0.1, 2.0, 0.01];
  fd('lightning dQkv', () => dot(lightningForwardRef(qkv, slopes, offsets, H, Dh), dO), qkv, lightningBackwardRef(dO, qkv, slopes, offsets, H, Dh));
  const q = Float64Array.from(randn(rng, T * H * Dh)), k = Float64Array.from(randn(rng, T * Hkv * Dh)), v = Float64Array.from(randn(rng, T * Hkv * Dh));
  const scale = 0.6;
  const g = attentionBackwardRef(dO, q, k, v, offsets, H, Hkv, Dh, scale);
  const loss = (): number => dot(attentionForwardRef(q, k, v, offsets, H, Hkv, Dh, scale).out, dO);
  fd('attention dq', loss, q, g.dq);
  fd('attention dk', loss, k, g.dk);
  fd('attention dv', loss, v, g.dv);
  // lse of one row (token 7, head 3 → kv head 1, document [4, 9)) from its definition.
  let sum = 0;
  for (let j = 4; j <= 7; j++) sum += Math.exp(scale * dot(q.subarray((7 * H + 3) * Dh, (7 * H + 4) * Dh), k.subarray((j * Hkv + 1) * Dh, (j * Hkv + 2) * Dh)));
  assert.ok(Math.abs(attentionForwardRef(q, k, v, offsets, H, Hkv, Dh, scale).lse[7 * H + 3] - Math.log(sum)) < 1e-12);
});

for (const Dh of [32, 48, 64, 128]) {
  test(`lightning forward and backward, H=4, Dh=${Dh}, ${LENGTHS.length} documents`, { skip }, () => {
    lightningCase(LENGTHS, Dh, SLOPES, 100 + Dh);
  });
}

test('lightning forward and backward, documents of 4096, 1500 and 1 tokens, slow decays', { skip }, () => {
  lightningCase([4096, 1500, 1], 64, [1.5, 0.05, 0.004, 0.0005], 7);
});

for (const Hkv of [1, 2, 4]) {
  for (const Dh of [32, 64, 128]) {
    test(`attention forward and backward, H=4, Hkv=${Hkv}, Dh=${Dh}, ${LENGTHS.length} documents`, { skip }, () => {
      attentionCase(LENGTHS, Hkv, Dh, 1000 + 10 * Dh + Hkv);
    });
  }
}

test('attention, Dh=48 (partial column groups), and the backward is deterministic', { skip }, () => {
  const runs = attentionCase(LENGTHS, 2, 48, 77, 2);
  for (const key of ['dq', 'dk', 'dv'] as const) {
    assert.ok(runs[0][key].every((x, i) => Object.is(x, runs[1][key][i])), `${key} differs between two identical backward runs`);
  }
});

test('attention, documents of 4096, 1000 and 1 tokens', { skip }, () => {
  attentionCase([4096, 1000, 1], 2, 32, 9);
});

test('a 64K-token batch: every element written, selected documents match', { skip }, () => {
  const rng = new Rng(2024);
  const T = 65536, H = 4, Hkv = 1, Dh = 64;
  const body: number[] = [];
  let rest = T - 300 - 129 - 77;
  while (rest > 4096) {
    const l = 1500 + Math.floor(rng.next() * 2597);
    body.push(Math.min(l, rest));
    rest -= Math.min(l, rest);
  }
  if (rest > 0) body.push(rest);
  const mid = Math.floor(body.length / 2);
  const lengths = [300, ...body.slice(0, mid), 129, ...body.slice(mid), 77];
  const check = [0, mid + 1, lengths.length - 1]; // the 300-, 129- and 77-token documents
  assert.equal(lengths.reduce((a, b) => a + b, 0), T);
  const offsets = offsetsOf(lengths);
  const s = shapeOf(lengths, H, Hkv, Dh);
  assert.ok(s.maxLength <= 4096);

  /** Rows of document `doc` of a [T, w] array. */
  const rows = (a: Float32Array, doc: number, w: number): Float32Array => a.subarray(offsets[doc] * w, offsets[doc + 1] * w);
  const single = (doc: number): number[] => [0, offsets[doc + 1] - offsets[doc]];

  const slopes = Float32Array.from([0.9, 0.1, 0.01, 0.002]);
  const qkv = randn(rng, T * 3 * H * Dh, 0.7), dOut = randn(rng, T * H * Dh);
  const lr = runLightning(s, offsets, qkv, dOut, slopes);
  assert.equal(countNonFinite(lr.out), 0, 'lightning out: non-finite elements');
  assert.equal(countNonFinite(lr.dQkv), 0, 'lightning dQkv: non-finite elements');
  for (const doc of check) {
    checkLightning(`lightning doc ${doc}`, H, Dh, single(doc), rows(qkv, doc, 3 * H * Dh), rows(dOut, doc, H * Dh), slopes, {
      out: rows(lr.out, doc, H * Dh),
      dQkv: rows(lr.dQkv, doc, 3 * H * Dh),
    });
  }

  const x = attentionInputs(s, 4242);
  const scale = 1 / Math.sqrt(Dh);
  const [ar] = runAttention(s, offsets, x, scale);
  for (const key of ['out', 'lse', 'dq', 'dk', 'dv'] as const) assert.equal(countNonFinite(ar[key]), 0, `attention ${key}: non-finite elements`);
  for (const doc of check) {
    const wq = H * Dh, wk = Hkv * Dh;
    const xd = { q: rows(x.q, doc, wq), k: rows(x.k, doc, wk), v: rows(x.v, doc, wk), dOut: rows(x.dOut, doc, wq) };
    checkAttention(`attention doc ${doc}`, s, single(doc), xd, scale, {
      out: rows(ar.out, doc, wq),
      lse: rows(ar.lse, doc, H),
      dq: rows(ar.dq, doc, wq),
      dk: rows(ar.dk, doc, wk),
      dv: rows(ar.dv, doc, wk),
    });
  }
});
