/**
 * GPU vs CPU for the small ops and the linear layers (kernels/elementwise.cu, cuBLAS): embedding, RMSNorm,
 * postnorm residual, SiLU, sigmoid gate, row gather, partial NeoX RoPE, KV append (into a paged cache), bf16 and
 * fp32-router GEMMs and the fp32-output lm_head, at the real MiniMax-01 widths. Inputs are bf16-representable random values (never
 * zeros), outputs are poisoned before each run; errors are norm-relative against the fp32 CPU reference, which
 * differs from the GPU only by the GPU's bf16 rounding points.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KV_BLOCK_SIZE, type AttentionSegment } from '../../src/backend/backend.js';
import { bf16Values, cpu, getGpu, maxRelErr, pair, poison, randn, relErr, Rng } from '../helpers/gpu.js';

const { gpu, reason } = await getGpu();
const skip = gpu ? false : reason;
const BF16_TOL = 8e-3; // a few bf16 ulps (2^-8 relative) of rounding points

test('embedding gathers bf16 rows (V = 200064 with D = 64; V = 512 with D = 6144)', { skip }, () => {
  const g = gpu!.backend, rng = new Rng(1);
  for (const [V, D, T] of [[200064, 64, 37], [512, 6144, 9]] as const) {
  const table = bf16Values(randn(rng, V * D, 1));
  const ids = Int32Array.from({ length: T }, () => Math.floor(rng.next() * V));
  ids[0] = V - 1;
  const tg = g.upload([V, D], 'bf16', table), tc = cpu.upload([V, D], 'f32', table);
  const out = g.alloc([T, D], 'bf16');
  poison(gpu!, out);
  g.embedding(out, tg, g.upload([T], 'i32', ids));
  const want = cpu.zeros([T, D], 'f32');
  cpu.embedding(want, tc, cpu.upload([T], 'i32', ids));
  assert.deepEqual(Array.from(g.toFloat32(out)), Array.from(cpu.toFloat32(want)));
  }
});

test('rmsNorm: D = 6144 (eps 1e-5) and the lightning output norm over 8192 channels (eps 1e-6), in place', { skip }, () => {
  const g = gpu!.backend, rng = new Rng(2);
  for (const [T, C, eps] of [[5, 6144, 1e-5], [300, 8192, 1e-6], [3, 48, 1e-5]] as const) {
    const x = bf16Values(randn(rng, T * C, 2));
    const w = bf16Values(randn(rng, C, 0.3).map((v) => 1 + v));
    const xs = pair(gpu!, [T, C], 'bf16', x), ws = pair(gpu!, [C], 'bf16', w);
    const out = g.alloc([T, C], 'bf16');
    poison(gpu!, out);
    g.rmsNorm(out, xs.g, ws.g, eps);
    g.rmsNorm(xs.g, xs.g, ws.g, eps); // aliasing out = x
    const want = cpu.zeros([T, C], 'f32');
    cpu.rmsNorm(want, xs.c, ws.c, eps);
    const e = relErr(g.toFloat32(out), cpu.toFloat32(want));
    assert.ok(e < BF16_TOL, `rmsNorm T=${T} C=${C}: rel err ${e}`);
    assert.deepEqual(Array.from(g.toFloat32(xs.g)), Array.from(g.toFloat32(out)), 'in place equals out of place');
  }
});

test('residualAdd, siluInPlace, sigmoidMul', { skip }, () => {
  const g = gpu!.backend, rng = new Rng(3);
  const T = 129, C = 6144, n = T * C;
  const a = pair(gpu!, [T, C], 'bf16', bf16Values(randn(rng, n, 1)));
  const b = pair(gpu!, [T, C], 'bf16', bf16Values(randn(rng, n, 1)));
  const out = g.alloc([T, C], 'bf16');
  poison(gpu!, out);
  g.residualAdd(out, a.g, 3.5565588200778455, b.g, 0.8);
  const want = cpu.zeros([T, C], 'f32');
  cpu.residualAdd(want, a.c, 3.5565588200778455, b.c, 0.8);
  let e = relErr(g.toFloat32(out), cpu.toFloat32(want));
  assert.ok(e < BF16_TOL, `residualAdd rel err ${e}`);

  g.sigmoidMul(out, a.g, b.g);
  cpu.sigmoidMul(want, a.c, b.c);
  e = relErr(g.toFloat32(out), cpu.toFloat32(want));
  assert.ok(e < BF16_TOL, `sigmoidMul rel err ${e}`);

  g.siluInPlace(a.g);
  cpu.siluInPlace(a.c);
  e = relErr(g.toFloat32(a.g), cpu.toFloat32(a.c));
  assert.ok(e < BF16_TOL, `silu rel err ${e}`);
});

test('gatherRows picks the last row of each sequence', { skip }, () => {
  const g = gpu!.backend, rng = new Rng(4);
  const x = bf16Values(randn(rng, 40 * 6144));
  const xs = pair(gpu!, [40, 6144], 'bf16', x);
  const rows = Int32Array.from([39, 0, 17]);
  const out = g.alloc([3, 6144], 'bf16');
  poison(gpu!, out);
  g.gatherRows(out, xs.g, g.upload([3], 'i32', rows));
  const want = cpu.zeros([3, 6144], 'f32');
  cpu.gatherRows(want, xs.c, cpu.upload([3], 'i32', rows));
  assert.deepEqual(Array.from(g.toFloat32(out)), Array.from(cpu.toFloat32(want)));
});

test('rope: partial NeoX (64 of 128 dims, θ = 1e7) at positions up to 1M; whole head (16 of 16)', { skip }, () => {
  const g = gpu!.backend, rng = new Rng(5);
  for (const [T, nh, Dh, rot, theta, p0] of [[33, 64, 128, 64, 1e7, 0], [8, 8, 128, 64, 1e7, 1_048_000], [20, 4, 16, 16, 1e4, 5]] as const) {
    const x = bf16Values(randn(rng, T * nh * Dh));
    const pos = Int32Array.from({ length: T }, (_, i) => p0 + i);
    const xs = pair(gpu!, [T, nh, Dh], 'bf16', x);
    g.rope(xs.g, g.upload([T], 'i32', pos), rot, theta);
    cpu.rope(xs.c, cpu.upload([T], 'i32', pos), rot, theta);
    const got = g.toFloat32(xs.g), want = cpu.toFloat32(xs.c);
    const e = relErr(got, want);
    // Large positions: fp32 angles differ in the last ulp between the GPU's powf/sincosf and the CPU's
    const tol = p0 > 1000 ? 2e-2 : BF16_TOL;
    assert.ok(e < tol, `rope T=${T} Dh=${Dh} from position ${p0}: rel err ${e}`);
    // dims past rotaryDim are untouched
    for (let t = 0; t < T; t++) for (let h = 0; h < nh; h++) for (let d = rot; d < Dh; d++) {
      const i = (t * nh + h) * Dh + d;
      assert.equal(got[i], x[i]);
    }
  }
});

test('kvAppend writes each segment at its past offset through its block table (shuffled blocks of a shared pool)', { skip }, () => {
  const g = gpu!.backend, rng = new Rng(6);
  const Hkv = 8, Dh = 128, row = Hkv * Dh;
  // rows [past, past + len): inside one block, across one boundary (60..71), over four blocks (100..269), exactly one
  // whole block (128..191)
  const lens = [5, 1, 12, 170, 64], pasts = [0, 40, 60, 100, 128];
  const T = lens.reduce((a, b) => a + b, 0);
  const k = pair(gpu!, [T, Hkv, Dh], 'bf16', bf16Values(randn(rng, T * row)));
  const v = pair(gpu!, [T, Hkv, Dh], 'bf16', bf16Values(randn(rng, T * row)));
  // One pool for all segments, 5 spare blocks; each segment takes a shuffled, non-contiguous set of block ids, and its
  // table ends with a spare entry (a block no segment owns): a write through it shows up as a difference below.
  const need = lens.map((l, i) => Math.ceil((pasts[i] + l) / KV_BLOCK_SIZE));
  const blocks = need.reduce((a, b) => a + b, 0) + 5, poolRows = blocks * KV_BLOCK_SIZE;
  const ids = Int32Array.from({ length: blocks }, (_, i) => i);
  for (let i = blocks - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  let next = 5;
  const tables = need.map((nb) => {
    const t = new Int32Array(nb + 1).fill(ids[0]);
    t.set(ids.subarray(next, next + nb));
    next += nb;
    return t;
  });
  // Pools start random (the same on both sides): rows that are not written must keep their values.
  const kp = pair(gpu!, [poolRows, Hkv, Dh], 'bf16', bf16Values(randn(rng, poolRows * row)));
  const vp = pair(gpu!, [poolRows, Hkv, Dh], 'bf16', bf16Values(randn(rng, poolRows * row)));
  let start = 0;
  const gs: AttentionSegment[] = [], cs: AttentionSegment[] = [];
  for (let i = 0; i < lens.length; i++) {
    const bt = pair(gpu!, [tables[i].length], 'i32', tables[i]);
    gs.push({ start, length: lens[i], past: pasts[i], k: kp.g, v: vp.g, blockTable: bt.g });
    cs.push({ start, length: lens[i], past: pasts[i], k: kp.c, v: vp.c, blockTable: bt.c });
    start += lens[i];
  }
  const before = g.toFloat32(kp.g);
  g.kvAppend(k.g, v.g, gs);
  cpu.kvAppend(k.c, v.c, cs);
  const gotK = g.toFloat32(kp.g);
  assert.deepEqual(Array.from(gotK), Array.from(cpu.toFloat32(kp.c)));
  assert.deepEqual(Array.from(g.toFloat32(vp.g)), Array.from(cpu.toFloat32(vp.c)));
  // and the rows really moved: every appended row differs from what the pool held before (random data)
  let changed = 0;
  for (let p = 0; p < poolRows; p++) if (gotK[p * row] !== before[p * row]) changed++;
  assert.ok(changed >= T - 2, `only ${changed} of ${T} appended rows changed`);
});

test('linear: bf16 GEMMs at real shapes, the fp32 router GEMM and the fp32-output lm_head', { skip }, () => {
  const g = gpu!.backend, rng = new Rng(7);
  for (const [T, N, K, wType, outType] of [
    [1, 24576, 6144, 'bf16', 'bf16'], // qkv, decode
    [64, 6144, 8192, 'bf16', 'bf16'], // out-proj
    [37, 32, 6144, 'f32', 'f32'], // router (fp32 weights)
    [3, 32768, 6144, 'bf16', 'f32'], // lm_head → fp32 logits (a 32K-row head: the same GEMM, affordable host data)
    [7, 40, 48, 'bf16', 'bf16'], // tiny odd shapes
  ] as const) {
    const x = bf16Values(randn(rng, T * K));
    const w = wType === 'bf16' ? bf16Values(randn(rng, N * K, 1 / Math.sqrt(K))) : randn(rng, N * K, 1 / Math.sqrt(K));
    const xs = pair(gpu!, [T, K], 'bf16', x), ws = pair(gpu!, [N, K], wType, w);
    const out = g.alloc([T, N], outType);
    poison(gpu!, out);
    g.linear(out, xs.g, ws.g);
    const want = cpu.zeros([T, N], 'f32');
    cpu.linear(want, xs.c, ws.c);
    const got = g.toFloat32(out), ref = cpu.toFloat32(want);
    const e = relErr(got, ref);
    const tol = outType === 'f32' && wType === 'f32' ? 1e-5 : outType === 'f32' ? 1e-4 : BF16_TOL;
    console.log(`linear T=${T} N=${N} K=${K} ${wType}→${outType}: rel err ${e.toExponential(2)}`);
    assert.ok(e < tol, `linear T=${T} N=${N} K=${K} (${wType} → ${outType}): rel err ${e}`);
    assert.ok(maxRelErr(got, ref) < 0.05, 'no element far off');
  }
});

test('postnormResidual on the fp32 stream, and norms from fp32 to bf16 / fp32 (D = 6144)', { skip }, () => {
  const g = gpu!.backend, rng = new Rng(8);
  const T = 65, C = 6144;
  const x = randn(rng, T * C, 3);
  const w = bf16Values(randn(rng, C, 0.3).map((v) => 1 + v));
  const br = bf16Values(randn(rng, T * C, 1));
  const xs = pair(gpu!, [T, C], 'f32', x), ws = pair(gpu!, [C], 'bf16', w), bs = pair(gpu!, [T, C], 'bf16', br);
  const hb = g.alloc([T, C], 'bf16'), hf = g.alloc([T, C], 'f32');
  poison(gpu!, hb);
  poison(gpu!, hf);
  g.rmsNorm(hb, xs.g, ws.g, 1e-5);
  g.rmsNorm(hf, xs.g, ws.g, 1e-5);
  const want = cpu.zeros([T, C], 'f32');
  cpu.rmsNorm(want, xs.c, ws.c, 1e-5);
  const ref = cpu.toFloat32(want);
  let e = relErr(g.toFloat32(hb), ref);
  assert.ok(e < 4e-3, `rmsNorm f32 → bf16: rel err ${e}`);
  e = relErr(g.toFloat32(hf), ref);
  assert.ok(e < 1e-6, `rmsNorm f32 → f32: rel err ${e}`);
  g.postnormResidual(xs.g, xs.g, ws.g, 1e-5, 3.5565588200778455, bs.g, 0.9);
  cpu.postnormResidual(xs.c, xs.c, ws.c, 1e-5, 3.5565588200778455, bs.c, 0.9);
  e = relErr(g.toFloat32(xs.g), cpu.toFloat32(xs.c));
  assert.ok(e < 1e-6, `postnormResidual (fp32 stream, in place): rel err ${e}`);
});
