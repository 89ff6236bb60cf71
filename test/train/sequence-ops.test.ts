/**
 * The float64 sequence ops of the CPU training backend (src/train/cpu/sequence.ts) on packed documents:
 *  - lightning forward == the per-token recurrence for many block sizes, uneven documents and large slopes, and
 *    == the f32 inference CpuBackend on one document (same decay and layout conventions);
 *  - lightning backward == the exact gradient of the recurrence (explicit double sums) and central finite
 *    differences of L = Σ r ⊙ out;
 *  - softmax attention forward == a naive per-document softmax (lse too), documents isolated, backward == finite
 *    differences with GQA (H = 4, Hkv = 2 and 1).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lightningForward64, lightningBackward64, attentionForward64, attentionBackward64 } from '../../src/train/cpu/sequence.js';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { lightningSlopes } from '../../src/model/slopes.js';
import { Rng } from '../../src/engine/sampling.js';

function randn(rng: Rng, n: number, scale = 1): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(rng.next(), 1e-12), v = rng.next();
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

const silu = (x: number): number => x / (1 + Math.exp(-x));

function offsetsOf(lengths: readonly number[]): Int32Array {
  const o = new Int32Array(lengths.length + 1);
  for (let i = 0; i < lengths.length; i++) o[i + 1] = o[i] + lengths[i];
  return o;
}

/** max |a − b| / max |b|. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    const x = Math.abs(a[i] - b[i]);
    if (Number.isNaN(x) || x > d) d = Number.isNaN(x) ? Infinity : x;
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / Math.max(m, 1e-300);
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

// ---------------------------------------------------------------- lightning

/** Per-token recurrence S_t = e^(−s)·S_(t−1) + k_tᵀv_t, o_t = q_t·S_t, per document from zero. */
function lightningNaive(qkv: Float64Array, slopes: ArrayLike<number>, offsets: Int32Array, H: number, Dh: number): Float64Array {
  const T = offsets[offsets.length - 1], R = 3 * H * Dh;
  const out = new Float64Array(T * H * Dh);
  for (let h = 0; h < H; h++) {
    const g = Math.exp(-slopes[h]);
    for (let d = 0; d + 1 < offsets.length; d++) {
      const S = new Float64Array(Dh * Dh);
      for (let t = offsets[d]; t < offsets[d + 1]; t++) {
        const base = t * R + h * 3 * Dh;
        for (let a = 0; a < Dh; a++) for (let c = 0; c < Dh; c++) S[a * Dh + c] = g * S[a * Dh + c] + qkv[base + Dh + a] * qkv[base + 2 * Dh + c];
        for (let c = 0; c < Dh; c++) {
          let acc = 0;
          for (let a = 0; a < Dh; a++) acc += qkv[base + a] * S[a * Dh + c];
          out[t * H * Dh + h * Dh + c] = acc;
        }
      }
    }
  }
  return out;
}

/**
 * Exact gradient of the recurrence by its explicit sums (o_t = Σ_(j≤t) γ^(t−j) (q_t·k_j) v_j):
 * dq_t = Σ_(j≤t) γ^(t−j) (dO_t·v_j) k_j, dk_j = Σ_(t≥j) γ^(t−j) (dO_t·v_j) q_t, dv_j = Σ_(t≥j) γ^(t−j) (q_t·k_j) dO_t.
 */
function lightningNaiveBackward(dOut: Float64Array, qkv: Float64Array, slopes: ArrayLike<number>, offsets: Int32Array, H: number, Dh: number): Float64Array {
  const R = 3 * H * Dh, O = H * Dh;
  const dQkv = new Float64Array(qkv.length);
  const row = (a: Float64Array, off: number): Float64Array => a.subarray(off, off + Dh);
  for (let h = 0; h < H; h++) {
    const s = slopes[h];
    for (let d = 0; d + 1 < offsets.length; d++) {
      for (let t = offsets[d]; t < offsets[d + 1]; t++) {
        for (let j = offsets[d]; j <= t; j++) {
          const w = Math.exp(-s * (t - j));
          const qt = row(qkv, t * R + h * 3 * Dh), kj = row(qkv, j * R + h * 3 * Dh + Dh), vj = row(qkv, j * R + h * 3 * Dh + 2 * Dh);
          const dOt = row(dOut, t * O + h * Dh);
          const ov = w * dot(dOt, vj), qk = w * dot(qt, kj);
          for (let e = 0; e < Dh; e++) {
            dQkv[t * R + h * 3 * Dh + e] += ov * kj[e];
            dQkv[j * R + h * 3 * Dh + Dh + e] += ov * qt[e];
            dQkv[j * R + h * 3 * Dh + 2 * Dh + e] += qk * dOt[e];
          }
        }
      }
    }
  }
  return dQkv;
}

function lightningInputs(seed: number, lengths: readonly number[], H: number, Dh: number): { qkv: Float64Array; offsets: Int32Array; T: number } {
  const offsets = offsetsOf(lengths);
  const T = offsets[lengths.length];
  // SiLU outputs like the model's (mostly positive), so sums do not cancel and relative checks are strict.
  const qkv = randn(new Rng(seed), T * 3 * H * Dh).map(silu);
  return { qkv, offsets, T };
}

const LENGTHS = [1, 7, 16, 1, 33, 2, 0, 19]; // uneven, with one-token and empty documents
const SLOPES = Float64Array.from([0.003906289115548134, 0.25, 0.9170132279396057, 3, 40]); // up to e^(−40) per step

test('lightning forward (blocked) == per-token recurrence: blockSize 1, 3, 4, 16, 32, ≥ doc length', (ctx) => {
  const H = SLOPES.length, Dh = 5;
  const { qkv, offsets, T } = lightningInputs(1, LENGTHS, H, Dh);
  const want = lightningNaive(qkv, SLOPES, offsets, H, Dh);
  for (const B of [1, 2, 3, 4, 16, 32, 33, 256]) {
    const out = new Float64Array(T * H * Dh).fill(NaN);
    lightningForward64(out, qkv, SLOPES, offsets, H, Dh, B);
    const e = relErr(out, want);
    ctx.diagnostic(`blockSize ${B}: rel err ${e.toExponential(2)}`);
    assert.ok(e <= 1e-12, `blockSize ${B}: rel err ${e}`);
  }
});

test('lightning forward: documents are independent (state restarts at each document)', (ctx) => {
  const H = 2, Dh = 4, B = 4;
  const slopes = Float64Array.from([0.01, 0.5]);
  const { qkv, offsets, T } = lightningInputs(2, [5, 9, 3], H, Dh);
  const out = new Float64Array(T * H * Dh);
  lightningForward64(out, qkv, slopes, offsets, H, Dh, B);
  // each document alone
  for (let d = 0; d < 3; d++) {
    const a = offsets[d], b = offsets[d + 1];
    const one = new Float64Array((b - a) * H * Dh);
    lightningForward64(one, qkv.slice(a * 3 * H * Dh, b * 3 * H * Dh), slopes, Int32Array.from([0, b - a]), H, Dh, B);
    assert.deepEqual(Array.from(out.subarray(a * H * Dh, b * H * Dh)), Array.from(one), `document ${d}`);
  }
});

test('lightning backward == exact gradient of the recurrence, all block sizes', (ctx) => {
  const H = SLOPES.length, Dh = 5;
  const { qkv, offsets, T } = lightningInputs(3, LENGTHS, H, Dh);
  const dOut = randn(new Rng(4), T * H * Dh);
  const want = lightningNaiveBackward(dOut, qkv, SLOPES, offsets, H, Dh);
  for (const B of [1, 2, 3, 4, 16, 32, 33, 256]) {
    const dQkv = new Float64Array(qkv.length).fill(NaN);
    lightningBackward64(dQkv, dOut, qkv, SLOPES, offsets, H, Dh, B);
    const e = relErr(dQkv, want);
    ctx.diagnostic(`blockSize ${B}: rel err ${e.toExponential(2)}`);
    assert.ok(e <= 1e-12, `blockSize ${B}: rel err ${e}`);
  }
});

test('lightning backward == central finite differences of Σ r ⊙ out', (ctx) => {
  const H = 3, Dh = 3;
  const slopes = Float64Array.from([0.05, 0.7, 6]);
  const { qkv, offsets, T } = lightningInputs(5, [6, 1, 9, 4], H, Dh);
  const r = randn(new Rng(6), T * H * Dh);
  const loss = (x: Float64Array, B: number): number => {
    const out = new Float64Array(T * H * Dh);
    lightningForward64(out, x, slopes, offsets, H, Dh, B);
    return dot(out, r);
  };
  for (const B of [1, 4, 64]) {
    const dQkv = new Float64Array(qkv.length);
    lightningBackward64(dQkv, r, qkv, slopes, offsets, H, Dh, B);
    const fd = new Float64Array(qkv.length), eps = 1e-5, x = qkv.slice();
    for (let i = 0; i < x.length; i++) {
      x[i] = qkv[i] + eps;
      const lp = loss(x, B);
      x[i] = qkv[i] - eps;
      const lm = loss(x, B);
      x[i] = qkv[i];
      fd[i] = (lp - lm) / (2 * eps);
    }
    const e = relErr(dQkv, fd);
    ctx.diagnostic(`blockSize ${B}: FD rel err ${e.toExponential(2)}`);
    assert.ok(e <= 1e-6, `blockSize ${B}: FD rel err ${e}`);
  }
});

test('lightning forward f64 == inference CpuBackend (f32) on one document', (ctx) => {
  const H = 4, Dh = 8, T = 45, B = 16;
  const slopes32 = lightningSlopes(H, 0, 4);
  const slopes = Float64Array.from(slopes32);
  // f32-representable inputs so both see the same numbers
  const qkv = Float64Array.from(new Float32Array(lightningInputs(7, [T], H, Dh).qkv));
  const out = new Float64Array(T * H * Dh);
  lightningForward64(out, qkv, slopes, Int32Array.from([0, T]), H, Dh, B);
  const b = new CpuBackend();
  const o32 = b.zeros([T, H * Dh], 'f32');
  const state = b.zeros([H, Dh, Dh], 'f32');
  b.lightningAttention(o32, b.upload([T, 3 * H * Dh], 'f32', new Float32Array(qkv)), b.upload([H], 'f32', slopes32), [{ start: 0, length: T, state }], 256);
  const e = relErr(b.toFloat32(o32), out);
  ctx.diagnostic(`f32 vs f64 rel err ${e.toExponential(2)}`);
  assert.ok(e <= 1e-5, `f32 vs f64 rel err ${e}`);
});

test('lightning: shape and offsets checks', (ctx) => {
  const out = new Float64Array(2 * 4), qkv = new Float64Array(2 * 12), sl = new Float64Array(2);
  assert.throws(() => lightningForward64(out, qkv, sl, Int32Array.from([0, 3]), 2, 2, 4), /offsets/);
  assert.throws(() => lightningForward64(out, qkv, sl, Int32Array.from([0, 2]), 2, 2, 0), /blockSize/);
  assert.throws(() => lightningForward64(out, qkv, new Float64Array(3), Int32Array.from([0, 2]), 2, 2, 4), /slopes/);
});

// ---------------------------------------------------------------- softmax attention

function attentionNaive(q: Float64Array, k: Float64Array, v: Float64Array, offsets: Int32Array, H: number, Hkv: number, Dh: number, scale: number): { out: Float64Array; lse: Float64Array } {
  const T = offsets[offsets.length - 1], group = H / Hkv;
  const out = new Float64Array(T * H * Dh), lse = new Float64Array(T * H);
  for (let d = 0; d + 1 < offsets.length; d++) {
    const a = offsets[d];
    for (let i = a; i < offsets[d + 1]; i++) {
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / group), qi = q.subarray((i * H + h) * Dh, (i * H + h + 1) * Dh);
        const z: number[] = [];
        for (let j = a; j <= i; j++) z.push(scale * dot(qi, k.subarray((j * Hkv + g) * Dh, (j * Hkv + g + 1) * Dh)));
        const m = Math.max(...z);
        const w = z.map((x) => Math.exp(x - m));
        const sum = w.reduce((x, y) => x + y, 0);
        lse[i * H + h] = m + Math.log(sum);
        for (let j = a; j <= i; j++) {
          for (let e = 0; e < Dh; e++) out[(i * H + h) * Dh + e] += (w[j - a] / sum) * v[(j * Hkv + g) * Dh + e];
        }
      }
    }
  }
  return { out, lse };
}

function attentionInputs(seed: number, T: number, H: number, Hkv: number, Dh: number): { q: Float64Array; k: Float64Array; v: Float64Array } {
  const rng = new Rng(seed);
  return { q: randn(rng, T * H * Dh), k: randn(rng, T * Hkv * Dh), v: randn(rng, T * Hkv * Dh) };
}

const ATT_LENGTHS = [5, 1, 12, 0, 3, 8];

for (const [H, Hkv] of [[4, 4], [4, 2], [4, 1]] as const) {
  test(`attention forward == naive per-document softmax, lse too (H=${H}, Hkv=${Hkv})`, (ctx) => {
    const Dh = 6, offsets = offsetsOf(ATT_LENGTHS), T = offsets[ATT_LENGTHS.length], scale = 1.7 / Math.sqrt(Dh);
    const { q, k, v } = attentionInputs(10 + Hkv, T, H, Hkv, Dh);
    const out = new Float64Array(T * H * Dh).fill(NaN), lse = new Float64Array(T * H).fill(NaN);
    attentionForward64(out, lse, q, k, v, offsets, H, Hkv, Dh, scale);
    const want = attentionNaive(q, k, v, offsets, H, Hkv, Dh, scale);
    const eo = relErr(out, want.out), el = relErr(lse, want.lse);
    ctx.diagnostic(`out ${eo.toExponential(2)}, lse ${el.toExponential(2)}`);
    assert.ok(eo <= 1e-13 && el <= 1e-13, `out ${eo}, lse ${el}`);
    // a one-token document: lse = scale·q·k, out = v
    const t = offsets[1], g = 0;
    assert.ok(Math.abs(lse[t * H] - scale * dot(q.subarray(t * H * Dh, t * H * Dh + Dh), k.subarray((t * Hkv + g) * Dh, (t * Hkv + g + 1) * Dh))) < 1e-13);
  });

  test(`attention: documents do not see each other (H=${H}, Hkv=${Hkv})`, (ctx) => {
    const Dh = 4, offsets = offsetsOf(ATT_LENGTHS), T = offsets[ATT_LENGTHS.length], scale = 0.5;
    const { q, k, v } = attentionInputs(20, T, H, Hkv, Dh);
    const run = (qq: Float64Array, kk: Float64Array, vv: Float64Array): [Float64Array, Float64Array] => {
      const out = new Float64Array(T * H * Dh), lse = new Float64Array(T * H);
      attentionForward64(out, lse, qq, kk, vv, offsets, H, Hkv, Dh, scale);
      return [out, lse];
    };
    const [o0, l0] = run(q, k, v);
    // change every input of document 2 (rows [offsets[2], offsets[3]))
    const a = offsets[2], b = offsets[3];
    const q2 = q.slice(), k2 = k.slice(), v2 = v.slice();
    for (let i = a * H * Dh; i < b * H * Dh; i++) q2[i] += 1;
    for (let i = a * Hkv * Dh; i < b * Hkv * Dh; i++) { k2[i] -= 2; v2[i] *= 3; }
    const [o1, l1] = run(q2, k2, v2);
    let changed = false;
    for (let t = 0; t < T; t++) {
      const inside = t >= a && t < b;
      for (let e = 0; e < H * Dh; e++) {
        if (inside) changed ||= o0[t * H * Dh + e] !== o1[t * H * Dh + e];
        else assert.equal(o1[t * H * Dh + e], o0[t * H * Dh + e], `row ${t} changed`);
      }
      if (!inside) for (let h = 0; h < H; h++) assert.equal(l1[t * H + h], l0[t * H + h]);
    }
    assert.ok(changed, 'document 2 itself should change');
  });

  test(`attention backward == central finite differences (H=${H}, Hkv=${Hkv})`, (ctx) => {
    const Dh = 4, lengths = [4, 1, 7, 3], offsets = offsetsOf(lengths), T = 15, scale = 0.8;
    const { q, k, v } = attentionInputs(30 + Hkv, T, H, Hkv, Dh);
    const r = randn(new Rng(31), T * H * Dh);
    const loss = (qq: Float64Array, kk: Float64Array, vv: Float64Array): number => {
      const out = new Float64Array(T * H * Dh), lse = new Float64Array(T * H);
      attentionForward64(out, lse, qq, kk, vv, offsets, H, Hkv, Dh, scale);
      return dot(out, r);
    };
    const out = new Float64Array(T * H * Dh), lse = new Float64Array(T * H);
    attentionForward64(out, lse, q, k, v, offsets, H, Hkv, Dh, scale);
    const dq = new Float64Array(q.length).fill(NaN), dk = new Float64Array(k.length).fill(NaN), dv = new Float64Array(v.length).fill(NaN);
    attentionBackward64(dq, dk, dv, r, q, k, v, out, lse, offsets, H, Hkv, Dh, scale);
    const fdOf = (which: 0 | 1 | 2): Float64Array => {
      const xs = [q.slice(), k.slice(), v.slice()], x = xs[which], x0 = [q, k, v][which];
      const fd = new Float64Array(x.length), eps = 1e-5;
      for (let i = 0; i < x.length; i++) {
        x[i] = x0[i] + eps;
        const lp = loss(xs[0], xs[1], xs[2]);
        x[i] = x0[i] - eps;
        const lm = loss(xs[0], xs[1], xs[2]);
        x[i] = x0[i];
        fd[i] = (lp - lm) / (2 * eps);
      }
      return fd;
    };
    const eq = relErr(dq, fdOf(0)), ek = relErr(dk, fdOf(1)), ev = relErr(dv, fdOf(2));
    ctx.diagnostic(`FD rel err dq ${eq.toExponential(2)}, dk ${ek.toExponential(2)}, dv ${ev.toExponential(2)}`);
    assert.ok(eq <= 1e-6 && ek <= 1e-6 && ev <= 1e-6, `FD rel err dq ${eq}, dk ${ek}, dv ${ev}`);
  });
}
